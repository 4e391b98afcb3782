"""Who may act on the console: scrypt password/token hashes, signed session cookies and CSRF tokens.

Settings hold only hashes (`hash_secret`, printed by `linewatch console hash-password`), compared in constant
time. A session is a cookie `<payload>.<hmac>` signed with the console's secret, `HttpOnly` and
`SameSite=Strict`, so other sites cannot ride on it; every form also carries a CSRF token derived from the
session id (double submit: a forged POST has neither the cookie nor the token).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass

import orjson

from stream_app.settings import ConsoleSettings

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1  # ~16 MiB and tens of ms per check: slow for guessers
COOKIE = "lw_session"
TOKEN_USER = "token"  # the session user of a login by token
MAX_FAILURES, FAILURE_WINDOW_S = 10, 60.0  # per user name (the token counts as user ""): then refused a while


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_secret(secret: str, salt: bytes | None = None) -> str:
    """`scrypt:n:r:p:salt:hash` of a password or token (what goes into the settings; no `$`, so it survives
    shells, .env files and compose interpolation unquoted).

    >>> h = hash_secret("s3cret", salt=b"0123456789abcdef")
    >>> h.split(":")[:4], verify_secret("s3cret", h), verify_secret("guess", h)
    (['scrypt', '16384', '8', '1'], True, False)
    """
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(secret.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    return f"scrypt:{SCRYPT_N}:{SCRYPT_R}:{SCRYPT_P}:{_b64(salt)}:{_b64(digest)}"


def verify_secret(secret: str, stored: str) -> bool:
    """True when `secret` hashes to `stored`; a malformed stored hash never matches (ValueError would leak)."""
    try:
        scheme, n, r, p, salt, digest = stored.split(":")
        if scheme != "scrypt":
            return False
        expected = _unb64(digest)
        actual = hashlib.scrypt(
            secret.encode(), salt=_unb64(salt), n=int(n), r=int(r), p=int(p), dklen=len(expected), maxmem=2**27
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


@dataclass(frozen=True)
class Session:
    user: str
    sid: str
    expires: float


class Authority:
    """Checks logins against the settings and issues/reads session cookies and CSRF tokens.

    >>> from pydantic import SecretStr
    >>> a = Authority(ConsoleSettings(users={"op": hash_secret("pw")}, session_secret=SecretStr("k")))
    >>> a.login("op", "pw"), a.login("op", "nope"), a.login("", "pw")
    ('op', None, None)
    >>> s = a.read_cookie(a.cookie_for("op"))
    >>> s.user, a.check_csrf(s, a.csrf_token(s)), a.check_csrf(s, "forged")
    ('op', True, False)
    """

    def __init__(self, cfg: ConsoleSettings):
        self.cfg = cfg
        secret = cfg.session_secret.get_secret_value() if cfg.session_secret else secrets.token_hex(32)
        self._key = hashlib.sha256(b"linewatch-console\x00" + secret.encode()).digest()
        self._failures: dict[str, deque[float]] = {}  # per user name: when its tries in the window started
        self._lock = threading.Lock()
        self._revoked: dict[str, float] = {}  # session ids logged out -> when their cookie would have expired
        # An unknown name is checked against this, so it costs what a known one does: one scrypt.
        self._dummy = hash_secret(secrets.token_hex(8)) if cfg.users else ""

    @property
    def can_login(self) -> bool:
        return bool(self.cfg.users or self.cfg.token_hash)

    def login(self, user: str, password: str) -> str | None:
        """The user name on success; with an empty user name the password is checked as the token.

        After MAX_FAILURES wrong tries for a name within FAILURE_WINDOW_S, that name is refused unchecked
        until the window passes (guessing costs the guesser time, not the console CPU)."""
        now = time.monotonic()
        with self._lock:  # logins run in threads: a try counts as failed until it succeeds, so none slip past
            fails = self._failures.setdefault(user, deque())
            while fails and now - fails[0] > FAILURE_WINDOW_S:
                fails.popleft()
            if len(fails) >= MAX_FAILURES:
                return None
            fails.append(now)
            if len(self._failures) > 10_000:  # many names tried: forget those whose window has passed
                self._failures = {u: f for u, f in self._failures.items() if f and now - f[-1] <= FAILURE_WINDOW_S}
        found = self._check(user, password)
        if found is not None:
            with self._lock, contextlib.suppress(KeyError, ValueError):
                self._failures[user].remove(now)
        return found

    def _check(self, user: str, password: str) -> str | None:
        if not user:
            if self.cfg.token_hash and verify_secret(password, self.cfg.token_hash.get_secret_value()):
                return TOKEN_USER
            return None
        stored = self.cfg.users.get(user)
        if stored is None:
            verify_secret(password, self._dummy)  # the same work as for a known name: no timing oracle
            return None
        return user if verify_secret(password, stored.get_secret_value()) else None

    def _sign(self, payload: bytes) -> str:
        return _b64(hmac.new(self._key, payload, hashlib.sha256).digest())

    def cookie_for(self, user: str) -> str:
        body = orjson.dumps({"u": user, "s": secrets.token_hex(16), "e": time.time() + self.cfg.session_max_age_s})
        return f"{_b64(body)}.{self._sign(body)}"

    def read_cookie(self, value: str | None) -> Session | None:
        """The session in a cookie, or None when absent, tampered with or expired."""
        if not value or "." not in value:
            return None
        body_b64, sig = value.rsplit(".", 1)
        try:
            body = _unb64(body_b64)
        except ValueError:
            return None
        if not hmac.compare_digest(self._sign(body), sig):
            return None
        try:
            d = orjson.loads(body)
            session = Session(str(d["u"]), str(d["s"]), float(d["e"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None
        if session.expires <= time.time() or session.sid in self._revoked:
            return None
        # A user removed from the settings, or a token no longer configured, ends its sessions.
        allowed = bool(self.cfg.token_hash) if session.user == TOKEN_USER else session.user in self.cfg.users
        return session if allowed else None

    def logout(self, session: Session) -> None:
        """This session's cookie is refused from now on (kept until it would have expired anyway)."""
        now = time.time()
        self._revoked = {sid: exp for sid, exp in self._revoked.items() if exp > now}
        self._revoked[session.sid] = session.expires

    def csrf_token(self, session: Session) -> str:
        return self._sign(b"csrf\x00" + session.sid.encode())

    def check_csrf(self, session: Session, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(self.csrf_token(session), str(token))
