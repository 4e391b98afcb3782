"""Console logins: scrypt hashes, signed session cookies, CSRF tokens (no servers)."""

from __future__ import annotations

import time

from pydantic import SecretStr

from stream_app.console.auth import Authority, hash_secret, verify_secret
from stream_app.settings import REVEAL_SECRETS, ConsoleSettings, Settings


def authority(**cfg) -> Authority:
    return Authority(ConsoleSettings(session_secret=SecretStr("k"), **cfg))


def test_hashes_are_salted_and_verify_only_the_right_secret():
    a, b = hash_secret("pw"), hash_secret("pw")
    assert a != b and verify_secret("pw", a) and verify_secret("pw", b)
    assert not verify_secret("pw2", a)
    assert not verify_secret("pw", "not-a-hash") and not verify_secret("pw", "bcrypt:1:2:3:4:5")


def test_login_by_user_or_token_and_nobody_without_settings():
    a = authority(users={"op": hash_secret("pw")}, token_hash=hash_secret("tok"))
    assert a.login("op", "pw") == "op" and a.login("", "tok") == "token"
    assert a.login("op", "tok") is None and a.login("other", "pw") is None and a.login("", "pw") is None
    nobody = authority()
    assert not nobody.can_login and nobody.login("", "") is None and nobody.login("op", "pw") is None


def test_session_cookie_rejects_tampering_other_keys_and_expiry():
    a = authority(users={"op": hash_secret("pw")})
    cookie = a.cookie_for("op")
    assert a.read_cookie(cookie).user == "op"
    body, sig = cookie.rsplit(".", 1)
    assert a.read_cookie(body + "." + sig[:-2] + "AA") is None
    assert a.read_cookie("x" + cookie) is None and a.read_cookie("") is None and a.read_cookie("nodot") is None
    assert Authority(ConsoleSettings(session_secret=SecretStr("other"))).read_cookie(cookie) is None
    short = authority(session_max_age_s=0.01)
    old = short.cookie_for("op")
    time.sleep(0.05)
    assert short.read_cookie(old) is None


def test_csrf_token_is_bound_to_the_session():
    a = authority(users={"op": hash_secret("pw")})
    s1, s2 = a.read_cookie(a.cookie_for("op")), a.read_cookie(a.cookie_for("op"))
    assert a.check_csrf(s1, a.csrf_token(s1))
    assert not a.check_csrf(s1, a.csrf_token(s2)) and not a.check_csrf(s1, None) and not a.check_csrf(s1, "")


def test_settings_keep_hashes_secret_in_repr_but_in_child_config_files():
    s = Settings(console={"users": {"op": "scrypt:1:2:3:a:b"}, "token_hash": "scrypt:t"})
    assert "scrypt" not in repr(s.console)
    assert "scrypt" not in s.model_dump_json()  # masked in any plain dump...
    dumped = Settings.model_validate_json(s.model_dump_json(context={REVEAL_SECRETS: True}))  # ...kept for children
    assert dumped.console.users["op"].get_secret_value() == "scrypt:1:2:3:a:b"
    assert dumped.console.token_hash.get_secret_value() == "scrypt:t"
    assert s.console.host == "127.0.0.1" and s.console.port == 8080


def test_repeated_wrong_passwords_lock_that_name_for_a_while():
    a = authority(users={"op": hash_secret("pw"), "other": hash_secret("pw2")})
    for _ in range(10):
        assert a.login("op", "guess") is None
    assert a.login("op", "pw") is None  # locked, even with the right password
    assert a.login("other", "pw2") == "other"  # other names are not


def test_unknown_and_known_user_names_cost_the_same_one_check(monkeypatch):
    """An unknown name hashed a dummy secret and then checked it (two scrypts), a known one checked once: twice
    as slow, which told a guesser which names exist."""
    import stream_app.console.auth as auth_module

    a = authority(users={"op": hash_secret("pw")})
    calls = {"hash": 0, "verify": 0}
    real_hash, real_verify = auth_module.hash_secret, auth_module.verify_secret

    def counting_hash(*args, **kwargs):
        calls["hash"] += 1
        return real_hash(*args, **kwargs)

    def counting_verify(*args, **kwargs):
        calls["verify"] += 1
        return real_verify(*args, **kwargs)

    monkeypatch.setattr(auth_module, "hash_secret", counting_hash)
    monkeypatch.setattr(auth_module, "verify_secret", counting_verify)
    for user in ("op", "nobody", "op", "nobody-else"):
        a.login(user, "wrong")
    assert calls == {"hash": 0, "verify": 4}


def test_a_session_ends_with_logout_and_with_its_user(monkeypatch):
    """A signed cookie stayed good until it expired: after logout, after its user was removed from the
    settings, even on a console where nobody can log in any more."""
    a = authority(users={"op": hash_secret("pw"), "old": hash_secret("pw")}, token_hash=hash_secret("tok"))
    op, old, token = (a.read_cookie(a.cookie_for(u)) for u in ("op", "old", "token"))
    assert op and old and token
    a.logout(op)
    assert a.read_cookie(a.cookie_for("op")) is not None  # a new login works
    kept = a.cfg.model_copy(update={"users": {"op": a.cfg.users["op"]}, "token_hash": None})
    b = Authority(kept)
    assert b.read_cookie(b.cookie_for("old")) is None and b.read_cookie(b.cookie_for("token")) is None
    assert b.read_cookie(b.cookie_for("op")) is not None


def test_the_logged_out_cookie_itself_is_refused():
    a = authority(users={"op": hash_secret("pw")})
    cookie = a.cookie_for("op")
    session = a.read_cookie(cookie)
    a.logout(session)
    assert a.read_cookie(cookie) is None


def test_concurrent_guesses_are_held_to_the_limit_too(monkeypatch):
    """Logins run in threads: every thread passed the limit check before any failure was recorded (29 guesses
    checked in one window against a limit of 10, with 20 threads)."""
    import threading

    import stream_app.console.auth as auth_module

    a = authority(users={"op": hash_secret("pw")})
    checked, gate = [], threading.Barrier(20)
    real_verify = auth_module.verify_secret

    def slow_verify(*args, **kwargs):
        checked.append(1)
        time.sleep(0.05)
        return real_verify(*args, **kwargs)

    monkeypatch.setattr(auth_module, "verify_secret", slow_verify)

    def guess() -> None:
        gate.wait()
        a.login("op", "guess")

    threads = [threading.Thread(target=guess) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(checked) == 10
