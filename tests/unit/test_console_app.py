"""The console's routes without servers: access rules, CSRF, security headers (the live feed is not started).

Starlette's TestClient without its lifespan: the app gets a `Console` whose feed never connects, so pages
render from an empty state. What needs Kafka (labels landing, promote announcing) is in
tests/integration/test_console_browser.py.
"""

from __future__ import annotations

import re

import pytest
from starlette.testclient import TestClient

from stream_app.console.app import Console, create_app
from stream_app.console.auth import COOKIE, hash_secret
from stream_app.settings import ConsoleSettings, Settings

BASE = "http://127.0.0.1:8080"


@pytest.fixture(scope="module")
def pw_hash() -> str:
    return hash_secret("pw")


def make_client(tmp_path, pw_hash: str, **console: object) -> TestClient:
    s = Settings(registry_dir=tmp_path / "registry", state_dir=tmp_path / "state")
    s.console = ConsoleSettings(session_secret="k", users={"op": pw_hash}, **console)
    app = create_app(s)
    app.state.console = Console(s)
    return TestClient(app, base_url=BASE, follow_redirects=False)


def login(client: TestClient) -> str:
    r = client.post("/login", data={"user": "op", "password": "pw", "next": "/models"})
    assert r.status_code == 303 and r.headers["location"] == "/models"
    page = client.get("/models").text
    return re.search(r'name="csrf" value="([^"]+)"', page).group(1)


def test_pages_are_readable_anonymously_with_strict_security_headers(tmp_path, pw_hash):
    client = make_client(tmp_path, pw_hash)
    for path in ("/", "/models", "/fleet", "/login"):
        r = client.get(path)
        assert r.status_code == 200, path
        assert (
            "script-src 'self'" in r.headers["content-security-policy"]
            and "frame-ancestors 'none'" in r.headers["content-security-policy"]
        )
        assert r.headers["x-content-type-options"] == "nosniff"
    assert client.get("/alert/nope").status_code == 404 and client.get("/source/line-9/x").status_code == 404
    assert client.get("/api/overview").json()["tiles"] == []


def test_without_anonymous_read_everything_needs_a_login(tmp_path, pw_hash):
    client = make_client(tmp_path, pw_hash, anonymous_read=False)
    r = client.get("/models")
    assert r.status_code == 303 and r.headers["location"] == "/login?next=/models"
    assert client.get("/api/overview").status_code == 401 and client.get("/events/overview").status_code == 401
    assert client.get("/alert/x/frame.png").status_code == 401
    login(client)
    assert client.get("/models").status_code == 200


def test_login_sets_a_strict_http_only_cookie_and_refuses_wrong_passwords(tmp_path, pw_hash):
    client = make_client(tmp_path, pw_hash)
    bad = client.post("/login", data={"user": "op", "password": "nope"})
    assert bad.status_code == 401 and COOKIE not in bad.cookies
    r = client.post("/login", data={"user": "op", "password": "pw", "next": "//evil.example/"})
    assert r.status_code == 303 and r.headers["location"] == "/"  # no open redirect
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    assert ">op<" in client.get("/").text


def test_actions_need_a_session_a_csrf_token_and_our_own_origin(tmp_path, pw_hash):
    client = make_client(tmp_path, pw_hash)
    for path in ("/models/sensors/promote", "/models/sensors/rollback", "/alert/a1/label", "/incident/i1/label"):
        assert client.post(path, data={"version": "0001"}).status_code == 403, path
    csrf = login(client)
    assert client.post("/models/sensors/promote", data={"version": "0001"}).status_code == 403
    assert client.post("/models/sensors/promote", data={"version": "0001", "csrf": "forged"}).status_code == 403
    foreign = client.post(
        "/models/sensors/promote", data={"version": "0001", "csrf": csrf}, headers={"Origin": "http://evil.example"}
    )
    assert foreign.status_code == 403
    ok = client.post("/models/sensors/promote", data={"version": "0001", "csrf": csrf})
    assert ok.status_code == 303 and "has%20no%20version" in ok.headers["location"]  # past the guard; no such model
    assert client.post("/alert/a1/label", data={"label": "false_alarm", "csrf": csrf}).status_code == 404
    # logging out needs the token too, then the session is gone
    assert client.post("/logout", data={}).status_code == 403
    assert client.post("/logout", data={"csrf": csrf}).status_code == 303
    client.cookies.clear()
    assert client.post("/models/sensors/rollback", data={"csrf": csrf}).status_code == 403


def test_without_anonymous_read_pages_are_refused_before_any_work(tmp_path, pw_hash, monkeypatch):
    """Pages built their whole payload (and asked every worker for /health) before checking the session."""
    import stream_app.console.app as app_module

    client = make_client(tmp_path, pw_hash, anonymous_read=False)
    built: list[str] = []
    for name in ("overview_payload", "fleet_view", "models_view"):
        real = getattr(app_module.pages, name)
        monkeypatch.setattr(
            app_module.pages, name, lambda *a, _n=name, _r=real, **k: (built.append(_n), _r(*a, **k))[1]
        )
    for path in ("/", "/fleet", "/models"):
        assert client.get(path).status_code == 303
    assert built == []


def test_behind_a_trusted_tls_proxy_actions_pass_the_origin_check_and_the_cookie_is_secure(tmp_path, pw_hash):
    """Without believing the proxy's X-Forwarded-Proto the console saw http, refused every action from the
    https page as a foreign origin, and set its cookie without Secure."""
    from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

    from stream_app.console.app import server_config

    s = Settings(registry_dir=tmp_path / "registry", state_dir=tmp_path / "state")
    s.console = ConsoleSettings(session_secret="k", users={"op": pw_hash}, trusted_proxies=["10.0.0.7"])
    app = create_app(s)
    app.state.console = Console(s)
    config = server_config(app, s, "127.0.0.1", 0)
    assert config.proxy_headers and config.forwarded_allow_ips == "10.0.0.7"
    behind = ProxyHeadersMiddleware(app, trusted_hosts=config.forwarded_allow_ips)
    proxy = {"x-forwarded-proto": "https", "x-forwarded-for": "203.0.113.9"}
    client = TestClient(behind, base_url="http://console.example", client=("10.0.0.7", 4000), follow_redirects=False)
    r = client.post("/login", data={"user": "op", "password": "pw", "next": "/"}, headers=proxy)
    assert r.status_code == 303 and "secure" in r.headers["set-cookie"].lower()


def test_healthz_tells_anonymous_visitors_no_internals_when_reads_need_a_login(tmp_path, pw_hash):
    client = make_client(tmp_path, pw_hash, anonymous_read=False)
    client.app.state.console.feed.error = "KafkaConnectionError: Unable to bootstrap from [('kafka.internal', 9093)]"
    r = client.get("/healthz")
    assert r.status_code == 503 and "kafka.internal" not in r.text and r.json()["error"] == "feed down"
    login(client)
    assert "kafka.internal" in client.get("/healthz").text


def test_another_site_cannot_log_the_browser_in(tmp_path, pw_hash):
    """Login CSRF: a foreign page posting its own credentials would give the operator's browser its session,
    and the operator's labels would be made under the other account."""
    client = make_client(tmp_path, pw_hash)
    r = client.post("/login", data={"user": "op", "password": "pw"}, headers={"origin": "https://evil.example"})
    assert r.status_code == 403 and COOKIE not in r.cookies
    assert client.post("/login", data={"user": "op", "password": "pw"}, headers={"origin": BASE}).status_code == 303
