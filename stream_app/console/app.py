"""The console's web app: server-rendered pages, live updates over Server-Sent Events, guarded actions.

`create_app(settings)` builds a Starlette app whose lifespan owns the live feed (Kafka + Redis), the
worker scraper, the frame reader and the registry; `serve(settings)` runs it on uvicorn, bound to
127.0.0.1 unless the settings say otherwise. Pages work read-only without a login when
`console.anonymous_read` is on; POSTs (promote, rollback, labels) need a session and its CSRF token.
Every response carries a strict Content-Security-Policy: scripts only from /static, no framing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from stream_app.alerts.labels import LABELS, label_for_alert, publish_label
from stream_app.console import pages
from stream_app.console.auth import COOKIE, Authority, Session
from stream_app.console.fleet import Fleet
from stream_app.console.frames import FrameNotFound, FrameReader
from stream_app.console.live import LiveFeed
from stream_app.registry.announcements import announce_version
from stream_app.registry.versions import Registry
from stream_app.settings import Settings

log = logging.getLogger(__name__)
HERE = Path(__file__).parent
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)
MAX_FORM_BYTES = 16_384


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


templates = Jinja2Templates(directory=str(HERE / "templates"))
templates.env.filters["fmt"] = _fmt
templates.env.filters["when"] = _when
templates.env.filters["pct"] = lambda v: "-" if v is None else f"{100 * v:.1f}%"
templates.env.filters["tojson_safe"] = lambda v: (
    orjson.dumps(v, option=orjson.OPT_SERIALIZE_NUMPY).decode().replace("<", "\\u003c")
)


class Console:
    """The objects the routes share; created in the app's lifespan."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.auth = Authority(settings.console)
        self.feed = LiveFeed(settings)
        self.fleet = Fleet(settings)
        self.frames = FrameReader(settings)
        self.registry = Registry(settings.registry_dir)

    # ---------------------------------------------------------------- request helpers

    def session(self, request: Request) -> Session | None:
        return self.auth.read_cookie(request.cookies.get(COOKIE))

    def page(self, request: Request, name: str, status_code: int = 200, **context: Any) -> Response:
        session = self.session(request)
        if session is None and not self.settings.console.anonymous_read:
            return _to_login(request)
        context |= {
            "session": session,
            "csrf": self.auth.csrf_token(session) if session else "",
            "can_login": self.auth.can_login,
            "msg": request.query_params.get("msg", ""),
            "feed_error": self.feed.error,
            "settings": self.settings,
        }
        return templates.TemplateResponse(request, name, context, status_code=status_code)

    async def form(self, request: Request) -> dict[str, str]:
        body = await request.body()
        if len(body) > MAX_FORM_BYTES:
            return {}
        return {k: v[0] for k, v in parse_qs(body.decode(errors="replace"), keep_blank_values=True).items()}

    def actor(self, request: Request, form: dict[str, str]) -> tuple[Session | None, Response | None]:
        """The logged-in session for an action, or the refusal to send (403: no login, bad CSRF, foreign origin)."""
        session = self.session(request)
        if session is None:
            return None, _refuse("log in to do this (promote, rollback and labels need an operator login)")
        if refused := _foreign_origin(request):
            return None, refused
        if not self.auth.check_csrf(session, form.get("csrf")):
            return None, _refuse("missing or wrong CSRF token; reload the page and try again")
        return session, None


def _foreign_origin(request: Request) -> Response | None:
    """The refusal of a POST sent by another site's page (browsers name the page's origin), else None."""
    origin = request.headers.get("origin")
    if origin and origin != f"{request.url.scheme}://{request.url.netloc}":
        return _refuse(f"request from origin {origin} refused")
    return None


def _refuse(message: str) -> Response:
    return HTMLResponse(f"<!doctype html><title>refused</title><p>{_escape(message)}</p>", status_code=403)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _back(path: str, msg: str) -> RedirectResponse:
    return RedirectResponse(f"{path}?msg={quote(msg)}", status_code=303)


def _c(request: Request) -> Console:
    return request.app.state.console


# -------------------------------------------------------------------- pages


def _to_login(request: Request) -> Response:
    return RedirectResponse(f"/login?next={quote(request.url.path)}", status_code=303)


def login_first(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """A page refuses a visitor who may not read before it builds anything: a payload, or a /health call to every
    worker, costs the console CPU that an anonymous visitor must not be able to spend."""

    @functools.wraps(handler)
    async def guarded(request: Request) -> Response:
        return await handler(request) if _readable(_c(request), request) else _to_login(request)

    return guarded


@login_first
async def overview(request: Request) -> Response:
    c = _c(request)
    payload = pages.overview_payload(c.feed.state)
    return c.page(request, "overview.html", groups=pages.grouped_tiles(payload["tiles"]), payload=payload)


@login_first
async def source_page(request: Request) -> Response:
    c = _c(request)
    source = request.path_params["source"]
    payload = pages.source_payload(c.feed.state, source)
    status = 200 if source in c.feed.state.sources else 404
    return c.page(request, "source.html", status_code=status, source=source, payload=payload)


@login_first
async def alert_page(request: Request) -> Response:
    c = _c(request)
    alert_id = request.path_params["alert_id"]
    alert = c.feed.state.alerts.get(alert_id)
    if alert is None:
        return c.page(request, "missing.html", status_code=404, what=f"alert {alert_id}")
    return c.page(
        request, "alert.html", alert=alert, bars=pages.feature_bars(alert), label=c.feed.state.labels.get(alert_id),
        explanation=alert.get("explanation") or {}, label_kinds=LABELS,
    )  # fmt: skip


async def alert_frame(request: Request) -> Response:
    c = _c(request)
    if not _readable(c, request):
        return Response("log in to see frames", status_code=401)
    alert = c.feed.state.alerts.get(request.path_params["alert_id"])
    if alert is None or alert.get("kind") != "image":
        return Response("no image alert with this id", status_code=404, media_type="text/plain")
    try:
        png = await c.frames.png(alert)
    except (FrameNotFound, ValueError) as exc:
        return Response(str(exc), status_code=404, media_type="text/plain")
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})


@login_first
async def incident_page(request: Request) -> Response:
    c = _c(request)
    incident_id = request.path_params["incident_id"]
    incident = c.feed.state.incidents.get(incident_id)
    if incident is None:
        return c.page(request, "missing.html", status_code=404, what=f"incident {incident_id}")
    alerts = c.feed.state.incident_alerts(incident_id)
    return c.page(
        request, "incident.html", incident=incident, alerts=alerts, labels=c.feed.state.labels, label_kinds=LABELS
    )


@login_first
async def models_page(request: Request) -> Response:
    c = _c(request)
    await c.fleet.refresh()
    view = await asyncio.to_thread(pages.models_view, c.settings, c.registry, c.fleet, c.feed.state)
    return c.page(request, "models.html", models=view)


@login_first
async def fleet_page(request: Request) -> Response:
    c = _c(request)
    await c.fleet.refresh()
    return c.page(request, "fleet.html", fleet=pages.fleet_view(c.settings, c.fleet, c.feed.state))


# -------------------------------------------------------------------- actions


async def label_action(request: Request) -> Response:
    c = _c(request)
    form = await c.form(request)
    session, refused = c.actor(request, form)
    if refused:
        return refused
    alert_id = request.path_params["alert_id"]
    alert = c.feed.state.alerts.get(alert_id)
    if alert is None:
        return Response(f"alert {alert_id} is not in the console's memory", status_code=404)
    try:
        label = label_for_alert(alert, form.get("label", ""), form.get("note", ""), session.user)  # type: ignore[union-attr]
    except ValueError as exc:
        return Response(str(exc), status_code=400, media_type="text/plain")
    await publish_label(c.settings, label)
    c.feed.state.add_labels([label])  # shown at once; the topic copy arrives through the feed as well
    log.info("label %s on alert %s by %s", label.label, alert_id, label.user)
    return _back(f"/alert/{quote(alert_id)}", f"labelled {label.label.replace('_', ' ')}")


async def incident_label_action(request: Request) -> Response:
    """One label per alert of the incident that the console holds (the incident's verdict, alert by alert)."""
    c = _c(request)
    form = await c.form(request)
    session, refused = c.actor(request, form)
    if refused:
        return refused
    incident_id = request.path_params["incident_id"]
    alerts = c.feed.state.incident_alerts(incident_id)
    if not alerts:
        return Response(f"no alert of incident {incident_id} is in the console's memory", status_code=404)
    try:
        labels = [label_for_alert(a, form.get("label", ""), form.get("note", ""), session.user) for a in alerts]  # type: ignore[union-attr]
    except ValueError as exc:
        return Response(str(exc), status_code=400, media_type="text/plain")
    for label in labels:
        await publish_label(c.settings, label)
    c.feed.state.add_labels(labels)
    kind = labels[0].label.replace("_", " ")
    return _back(f"/incident/{quote(incident_id)}", f"labelled {len(labels)} alert(s) {kind}")


async def promote_action(request: Request) -> Response:
    c = _c(request)
    form = await c.form(request)
    _, refused = c.actor(request, form)
    if refused:
        return refused
    model, version = request.path_params["model"], form.get("version", "")
    if version not in c.registry.versions(model):
        return _back("/models", f"{model} has no version {version!r}")
    try:
        mv = await asyncio.to_thread(c.registry.promote, model, version, form.get("force") == "1")
    except (ValueError, LookupError, OSError) as exc:
        return _back("/models", f"promote refused: {exc}")
    return await _announce(c, mv, f"{model} production -> {mv.version}")


async def rollback_action(request: Request) -> Response:
    c = _c(request)
    form = await c.form(request)
    _, refused = c.actor(request, form)
    if refused:
        return refused
    try:
        mv = await asyncio.to_thread(c.registry.rollback, request.path_params["model"])
    except (ValueError, LookupError, OSError) as exc:
        return _back("/models", f"rollback refused: {exc}")
    return await _announce(c, mv, f"{mv.model} rolled back to {mv.version}")


async def _announce(c: Console, mv: Any, done: str) -> Response:
    try:
        await announce_version(c.settings, c.registry, mv)
    except Exception as exc:
        return _back(
            "/models", f"{done}, but announcing it failed ({exc}); workers serve it at their next pointer check"
        )
    return _back("/models", f"{done}; announced to workers")


async def login_page(request: Request) -> Response:
    c = _c(request)
    context = {"next": _safe_next(request.query_params.get("next")), "error": "", "can_login": c.auth.can_login}
    return templates.TemplateResponse(request, "login.html", context)


async def login_action(request: Request) -> Response:
    c = _c(request)
    if refused := _foreign_origin(request):  # another site logging the browser in to an account of its choosing
        return refused
    form = await c.form(request)
    user = await asyncio.to_thread(c.auth.login, form.get("user", "").strip(), form.get("password", ""))
    target = _safe_next(form.get("next"))
    if user is None:
        context = {"next": target, "error": "wrong user name, password or token", "can_login": c.auth.can_login}
        return templates.TemplateResponse(request, "login.html", context, status_code=401)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        COOKIE, c.auth.cookie_for(user), max_age=int(c.settings.console.session_max_age_s), httponly=True,
        samesite="strict", secure=request.url.scheme == "https", path="/",
    )  # fmt: skip
    return response


async def logout_action(request: Request) -> Response:
    c = _c(request)
    form = await c.form(request)
    session = c.session(request)
    if session is not None and not c.auth.check_csrf(session, form.get("csrf")):
        return _refuse("missing or wrong CSRF token")
    if session is not None:
        c.auth.logout(session)  # the cookie itself stops working, wherever a copy of it is
    response = RedirectResponse("/", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


def _safe_next(target: str | None) -> str:
    """Only same-site paths: an open redirect would let a link send a fresh login elsewhere."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/"


# -------------------------------------------------------------------- live updates and JSON


def _readable(c: Console, request: Request) -> bool:
    return c.settings.console.anonymous_read or c.session(request) is not None


async def _sse(request: Request, snapshot: Any) -> AsyncIterator[bytes]:
    """One `data:` event per interval while the state changes (a comment as keep-alive otherwise)."""
    c = _c(request)
    interval = c.settings.console.update_interval_s
    last_change, last_sent = -1, 0.0
    closing = request.app.state.closing
    while not closing.is_set() and not await request.is_disconnected():
        state = c.feed.state
        now = time.monotonic()
        if state.changed != last_change or now - last_sent >= 1.0:  # ages and "no data" move on their own too
            last_change, last_sent = state.changed, now
            yield b"data: " + orjson.dumps(snapshot(), option=orjson.OPT_SERIALIZE_NUMPY) + b"\n\n"
        await asyncio.sleep(interval)


def _stream(request: Request, snapshot: Any) -> Response:
    if not _readable(_c(request), request):
        return Response("log in to watch", status_code=401)
    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return StreamingResponse(_sse(request, snapshot), media_type="text/event-stream", headers=headers)


async def overview_events(request: Request) -> Response:
    return _stream(request, lambda: pages.overview_payload(_c(request).feed.state))


async def source_events(request: Request) -> Response:
    source = request.path_params["source"]
    return _stream(request, lambda: pages.source_payload(_c(request).feed.state, source))


async def overview_json(request: Request) -> Response:
    c = _c(request)
    if not _readable(c, request):
        return Response("log in to read", status_code=401)
    return JSONResponse(pages.overview_payload(c.feed.state))


async def healthz(request: Request) -> Response:
    c = _c(request)
    feed = c.feed
    body = {"ok": feed.error is None, "ready": feed.ready.is_set(), "verdicts_seen": feed.state.verdicts_seen}
    error = feed.error if feed.error is None or _readable(c, request) else "feed down"  # hosts stay private
    return JSONResponse({**body, "error": error}, status_code=200 if feed.error is None else 503)


# -------------------------------------------------------------------- the app


class SecurityHeaders:
    """ASGI middleware adding CSP and friends to every HTTP response."""

    HEADERS = (
        (b"content-security-policy", CSP.encode()),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"same-origin"),
    )

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *self.HEADERS]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(settings: Settings, closing: threading.Event | None = None) -> Starlette:
    """The app; `closing` (set when the server is asked to stop) ends the live streams so shutdown is prompt."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        console = Console(settings)
        app.state.console = console
        async with console.feed:
            yield

    routes = [
        Route("/", overview),
        Route("/source/{source:path}", source_page),
        Route("/alert/{alert_id}", alert_page),
        Route("/alert/{alert_id}/frame.png", alert_frame),
        Route("/alert/{alert_id}/label", label_action, methods=["POST"]),
        Route("/incident/{incident_id}", incident_page),
        Route("/incident/{incident_id}/label", incident_label_action, methods=["POST"]),
        Route("/models", models_page),
        Route("/models/{model}/promote", promote_action, methods=["POST"]),
        Route("/models/{model}/rollback", rollback_action, methods=["POST"]),
        Route("/fleet", fleet_page),
        Route("/login", login_page),
        Route("/login", login_action, methods=["POST"]),
        Route("/logout", logout_action, methods=["POST"]),
        Route("/events/overview", overview_events),
        Route("/events/source/{source:path}", source_events),
        Route("/api/overview", overview_json),
        Route("/healthz", healthz),
        Route("/favicon.ico", lambda request: Response(status_code=204)),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.closing = closing or threading.Event()
    app.add_middleware(SecurityHeaders)
    return app


def serve(settings: Settings, host: str | None = None, port: int | None = None) -> None:
    """Run the console until interrupted (uvicorn, one process; the live feed lives in its event loop)."""
    import uvicorn

    host = host or settings.console.host
    port = settings.console.port if port is None else port
    if host not in ("127.0.0.1", "localhost", "::1") and not settings.console.users and not settings.console.token_hash:
        log.warning("console bound to %s with no login configured: pages are public, actions impossible", host)
    closing = threading.Event()

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            closing.set()  # live streams end at their next tick instead of holding the shutdown
            super().handle_exit(sig, frame)

    Server(server_config(create_app(settings, closing), settings, host, port)).run()


def server_config(app: Starlette, settings: Settings, host: str, port: int) -> Any:
    """uvicorn's settings for the console. Behind a TLS proxy the scheme and client come from its X-Forwarded-*
    headers, believed only from `console.trusted_proxies`: the Origin check of actions and the cookie's Secure
    flag need the scheme the browser used."""
    import uvicorn

    return uvicorn.Config(
        app, host=host, port=port, log_level="warning", access_log=False, timeout_graceful_shutdown=5,
        proxy_headers=True, forwarded_allow_ips=",".join(settings.console.trusted_proxies),
    )  # fmt: skip
