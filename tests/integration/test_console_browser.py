"""The operator console in a real browser (Debian's chromium + chromedriver via Selenium) on the real stack.

One console process (`linewatch console`, started like any service) serves the module; a background thread
keeps verdicts flowing for a small plant (two lines, a camera, a silent source, one with dead letters) with
the pipeline's own builders, so tiles stay live. Set LINEWATCH_CONSOLE_SCREENSHOTS=docs/img to keep the
page screenshots the tests take (the docs' images come from here).
"""

from __future__ import annotations

import asyncio
import io
import os
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from PIL import Image
from pydantic import SecretStr
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from deploy.localstack import free_port
from stream_app.alerts.labels import labelled_records, read_labels
from stream_app.console import scene
from stream_app.console.auth import hash_secret
from stream_app.ops.connections import aiokafka_kwargs, ensure_topics, read_records
from stream_app.ops.processes import running, spawn, stop, worker_health, worker_ports
from stream_app.registry.versions import Registry
from stream_app.settings import RetrainSchedule, Settings, TopicSettings
from stream_app.wire.codecs import decode_vector, encode_vector

pytestmark = pytest.mark.integration

SOURCES = ["line-1/press-1", "line-1/press-2", "line-1/oven-1", "line-1/robot-1", "line-2/press-1", "line-2/cam-1"]
SILENT = "line-2/feeder-1"  # reports once, then goes quiet
LEAKY = "line-2/press-1"  # sends more dead letters every tick
THRESHOLD = 4.0
RED = (209, 36, 47)  # --incident in console.css
SHOTS = os.environ.get("LINEWATCH_CONSOLE_SCREENSHOTS")


class Plant:
    """A thread with its own event loop publishing verdicts (and dead letters) for SOURCES every tick."""

    def __init__(self, settings: Settings, tick_s: float = 0.25):
        self.settings, self.tick_s = settings, tick_s
        self.faults: dict[str, str] = {}  # source -> incident id carried by its verdicts
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> Plant:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    async def _history(self, producer: AIOKafkaProducer, rng: np.random.Generator, seconds: int = 240) -> None:
        """The last few minutes, stamped in the past: the timeline has history, press-2 a closed incident."""
        s, now = self.settings, time.time()
        for back in range(seconds, 0, -1):
            outputs = []
            for source in SOURCES:
                past_fault = source == "line-1/press-2" and 150 >= back > 130
                scores = rng.gamma(2.0, 0.45, 8) + (5.0 if past_fault else 0.0)
                model = "camera" if "cam" in source else "sensors"
                incident = "past-incident-1" if past_fault else None
                outputs += scene.verdicts(s, source, scores, THRESHOLD, model, "0001", incident)
            await scene.send(producer, outputs, timestamp_ms=int((now - back) * 1000))

    async def _run(self) -> None:
        s, rng, k = self.settings, np.random.default_rng(0), 0
        async with AIOKafkaProducer(linger_ms=5, **aiokafka_kwargs(s.kafka)) as producer:
            await self._history(producer, rng)
            await scene.send(producer, scene.verdicts(s, SILENT, [1.0], THRESHOLD, "sensors", "0001"))
            while not self._stop.is_set():
                outputs = []
                for i, source in enumerate(SOURCES):
                    incident = self.faults.get(source)
                    scores = rng.gamma(2.0, 0.45, 25) + (6.0 if incident else 0.0)
                    model = "camera" if "cam" in source else "sensors"
                    outputs += scene.verdicts(s, source, scores, THRESHOLD, model, "0001", incident, k * 25 + i)
                await scene.send(producer, outputs)
                for _ in range(1 + k // 4):
                    await producer.send(s.topics.deadletter, key=LEAKY.encode(), value=b"{oops",
                                        headers=[("reason", b"malformed_json")])  # fmt: skip
                k += 1
                await asyncio.sleep(self.tick_s)


def _settings(stack_urls, tmp: Path, port: int) -> Settings:
    tag = f"console-{uuid.uuid4().hex[:10]}"
    s = Settings(
        app_id=f"lw-{tag}", topics=TopicSettings().prefixed(tag, partitions=2), registry_dir=tmp / "registry",
        state_dir=tmp / "state", metrics_port=0,
    )  # fmt: skip
    s.kafka.bootstrap, s.redis.url, s.redis.key_prefix = stack_urls.kafka_bootstrap, stack_urls.redis_url, tag
    s.retrain.schedules = [RetrainSchedule(model="sensors", cron="0 3 * * *")]
    c = s.console
    c.port, c.users, c.stale_after_s = port, {"op": SecretStr(hash_secret("pw"))}, 5
    c.update_interval_s, c.replay_s = 0.25, 300
    return s


def _get(url: str, timeout_s: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, ConnectionError):  # not listening (yet)
        return 0, b""


def wait_for(check, timeout_s: float = 20.0, every_s: float = 0.1):
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(every_s)


@pytest.fixture(scope="module")
def console(stack_urls, tmp_path_factory) -> Iterator[tuple[Settings, str, Plant]]:
    """A registry with two real versions, a running console, and verdicts flowing."""
    s = _settings(stack_urls, tmp_path_factory.mktemp("console"), free_port())
    t = s.topics
    asyncio.run(ensure_topics(s, [t.vectors, t.frames, t.alerts, t.scores, t.deadletter, t.model_updates, t.labels]))
    scene.build_registry(s)
    base = f"http://127.0.0.1:{s.console.port}"
    proc = spawn(s, "console")
    try:
        ready = wait_for(lambda: proc.poll() is None and _get(base + "/healthz")[0] == 200, 60, 0.3)
        assert ready, f"console did not start (exit {proc.poll()}); log in {s.state_dir}"
        with Plant(s) as plant:
            yield s, base, plant
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1000", "--force-device-scale-factor=1"):  # fmt: skip
        opts.add_argument(arg)
    service = webdriver.ChromeService(executable_path=os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
    driver = webdriver.Chrome(options=opts, service=service)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def shot(driver, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(SHOTS) / f"console-{name}.png"))


def tile_color(driver, source: str) -> tuple[int, int, int] | None:
    tiles = driver.find_elements(By.CSS_SELECTOR, f'.tile[data-source="{source}"]')
    if not tiles:
        return None
    rgb = tiles[0].value_of_css_property("background-color")  # "rgba(r, g, b, a)"
    return tuple(int(float(v)) for v in rgb[rgb.index("(") + 1 : -1].split(",")[:3])  # type: ignore[return-value]


def texts_of(driver, element_id: str, by: str = By.ID) -> list[str]:
    """The texts of the elements with this id (or `by` locator); none while the page is being replaced."""
    try:
        return [e.text for e in driver.find_elements(by, element_id)]
    except StaleElementReferenceException:
        return []
    except WebDriverException as exc:  # chromedriver's other word for a stale element, mid-navigation
        if "does not belong to the document" in str(exc):
            return []
        raise


def wait_text(driver, element_id: str, text: str, timeout_s: float = 10.0, by: str = By.ID) -> None:
    """Wait for `text` in an element of the page a click is loading (elements of the old page go stale)."""
    WebDriverWait(driver, timeout_s).until(lambda d: any(text in t for t in texts_of(d, element_id, by)))


def assert_no_browser_errors(driver) -> None:
    """No script error, CSP violation or failed request was logged since the last call."""
    errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors


def login(driver, base: str) -> None:
    driver.get(base + "/login?next=/")
    driver.find_element(By.ID, "user-field").send_keys("op")
    driver.find_element(By.ID, "password-field").send_keys("pw")
    driver.find_element(By.ID, "login-button").click()
    WebDriverWait(driver, 10).until(lambda d: d.find_elements(By.ID, "user"))


async def _publish(settings: Settings, make):
    async with AIOKafkaProducer(**aiokafka_kwargs(settings.kafka)) as producer:
        return await make(producer)


def test_overview_turns_a_source_red_within_seconds_of_an_injected_fault(console, browser):
    settings, base, plant = console
    browser.get(base + "/")
    target = "line-1/press-2"
    assert wait_for(lambda: tile_color(browser, target) == (27, 135, 63), 15), "the healthy source never showed green"
    assert wait_for(lambda: tile_color(browser, SILENT) == (140, 149, 159), 15), "the silent source is not grey"
    leaky = browser.find_element(By.CSS_SELECTOR, f'.tile[data-source="{LEAKY}"]')
    assert leaky.get_attribute("data-status") == "deadletters" and "dead letters rising" in leaky.text
    lines = [h.text for h in browser.find_elements(By.CSS_SELECTOR, "section.line h2")]
    assert lines == ["line-1", "line-2"]

    injected = time.monotonic()
    alert = asyncio.run(
        _publish(settings, lambda p: scene.vector_alert(p, settings, target, 11.0, THRESHOLD, "sensors", "0001"))
    )
    plant.faults[target] = alert["incident_id"]
    assert wait_for(lambda: tile_color(browser, target) == RED, 10, 0.05), "the faulty source did not turn red"
    took = time.monotonic() - injected
    assert took < 5.0, f"the tile turned red {took:.1f} s after the fault"
    tile = browser.find_element(By.CSS_SELECTOR, f'.tile[data-source="{target}"]')
    assert alert["incident_id"][:8] in tile.text
    assert tile_color(browser, "line-1/press-1") == (27, 135, 63)  # the neighbours stay green
    shot(browser, "overview")

    # the source page: a server-downsampled timeline with the alert marked, and the incident listed
    browser.get(base + "/source/" + target)
    svg = browser.find_element(By.ID, "timeline")
    assert wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, f'circle[data-alert="{alert["alert_id"]}"]'), 10)
    assert int(svg.get_attribute("data-points")) <= settings.console.timeline_s / settings.console.bucket_s + 1
    assert wait_for(lambda: alert["incident_id"] in browser.find_element(By.ID, "incidents").text, 10)
    updates = browser.execute_script("return window.lwUpdates || 0")
    time.sleep(2.0)
    assert browser.execute_script("return window.lwUpdates || 0") - updates >= 2, "the page stopped updating"
    shot(browser, "source")
    assert_no_browser_errors(browser)
    plant.faults.pop(target)


def test_image_alert_page_shows_the_frame_with_its_heatmap(console, browser):
    settings, base, _ = console
    peak = (5, 2)
    alert = asyncio.run(
        _publish(settings, lambda p: scene.image_alert(p, settings, "line-2/cam-1", 3.4, 1.5, "camera", "0001", peak))
    )
    url = f"{base}/alert/{alert['alert_id']}"
    assert wait_for(lambda: _get(url)[0] == 200, 10), "the console never received the alert"
    browser.get(url)
    WebDriverWait(browser, 10).until(
        lambda d: (
            d.find_element(By.ID, "heatmap").get_attribute("data-drawn") == "1"
            and d.execute_script("return document.getElementById('frame').naturalWidth") > 0
        )
    )
    # the frame came back from the frames topic at the alert's origin: the very pixels that were published
    status, png = _get(f"{url}/frame.png")
    frame, _ = scene.defect_frame(peak=peak)
    assert status == 200 and np.array_equal(np.asarray(Image.open(io.BytesIO(png))), frame)
    assert browser.execute_script("return document.getElementById('frame').naturalWidth") == frame.shape[1]

    # what the browser rendered: heatmap red over the peak cell, the plain grey frame far from it
    wrap = browser.find_element(By.ID, "frame-wrap")
    rendered = np.asarray(Image.open(io.BytesIO(wrap.screenshot_as_png)).convert("RGB")).astype(int)
    h, w, _ = rendered.shape
    assert w > 300 and abs(h - w) < 8, f"frame rendered at {w}x{h}"

    def cell(r: int, c: int) -> np.ndarray:  # the middle of grid cell (r, c) of 8 x 8, as rendered
        return rendered[
            int((r + 0.3) * h / 8) : int((r + 0.7) * h / 8), int((c + 0.3) * w / 8) : int((c + 0.7) * w / 8)
        ]

    hot = cell(*peak).reshape(-1, 3).mean(0)
    cold = cell(0, 7).reshape(-1, 3).mean(0)
    assert hot[0] > hot[1] + 40 and hot[0] > hot[2] + 40, f"peak cell not red: {hot}"
    assert abs(cold[0] - cold[2]) < 30 and 90 < cold.mean() < 220, f"far cell does not show the grey frame: {cold}"
    shot(browser, "alert-image")
    assert_no_browser_errors(browser)


def test_false_alarm_label_lands_on_the_labels_topic_and_in_model_precision(console, browser):
    settings, base, _ = console
    real, false = asyncio.run(
        _publish(
            settings,
            lambda p: asyncio.gather(
                scene.vector_alert(p, settings, "line-1/oven-1", 9.0, THRESHOLD, "sensors", "0001", seed=1),
                scene.vector_alert(p, settings, "line-1/robot-1", 6.5, THRESHOLD, "sensors", "0001", seed=2),
            ),
        )
    )
    for a in (real, false):
        assert wait_for(lambda a=a: _get(f"{base}/alert/{a['alert_id']}")[0] == 200, 10)
    browser.delete_all_cookies()
    login(browser, base)
    for alert, button, note in (
        (real, "mark-real", "bearing noise confirmed"),
        (false, "mark-false", "sensor cable loose"),
    ):
        browser.get(f"{base}/alert/{alert['alert_id']}")
        assert len(browser.find_elements(By.CSS_SELECTOR, "#bars rect.bar")) == 4  # top sensors as bars
        browser.find_element(By.NAME, "note").send_keys(note)
        browser.find_element(By.ID, button).click()
        WebDriverWait(browser, 10).until(lambda d: d.find_elements(By.ID, "current-label"))
    shot(browser, "alert-vector")

    labels = asyncio.run(read_labels(settings, model="sensors"))
    mine = {lab.alert_id: lab for lab in labels}
    assert mine[false["alert_id"]].label == "false_alarm" and mine[false["alert_id"]].note == "sensor cable loose"
    assert mine[false["alert_id"]].user == "op" and mine[real["alert_id"]].label == "real_defect"
    records = asyncio.run(read_records(settings, settings.topics.labels, lambda r: len(r) >= 2, 10))
    assert {r.key for r in records} == {b"line-1/oven-1", b"line-1/robot-1"}  # keyed by source
    # the labelled input events come back for retraining
    pairs = asyncio.run(labelled_records(settings, labels))
    assert {lab.alert_id for lab, _ in pairs} == set(mine)
    assert all(decode_vector(rec.value).source == lab.source for lab, rec in pairs)

    # the whole incident of the real defect, from its page: one label per alert, the newest wins
    browser.get(f"{base}/incident/{real['incident_id']}")
    browser.find_element(By.ID, "incident-real").click()
    wait_text(browser, "flash", "labelled 1 alert(s) real defect")
    again = asyncio.run(read_labels(settings, model="sensors"))
    assert len(again) == 2 and {lab.alert_id: lab.label for lab in again}[real["alert_id"]] == "real_defect"

    browser.get(base + "/models")
    precision = browser.find_element(By.ID, "precision-sensors").text
    assert "50.0%" in precision and "1 false alarms" in precision, precision
    row = browser.find_element(By.CSS_SELECTOR, '#model-sensors tr[data-source="line-1/robot-1"]')
    assert "0.0%" in row.text
    shot(browser, "models")
    assert_no_browser_errors(browser)


def test_promote_needs_a_login_and_a_csrf_token(console, browser):
    settings, base, _ = console
    registry = Registry(settings.registry_dir)
    browser.delete_all_cookies()
    browser.get(base + "/models")
    browser.find_element(By.ID, "promote-sensors-0002").click()
    wait_text(browser, "body", "log in to do this", by=By.TAG_NAME)
    assert registry.production("sensors").version == "0001"

    # a forged cross-site form: a valid session cookie but no CSRF token
    login(browser, base)
    cookie = browser.get_cookie("lw_session")
    assert cookie["sameSite"] == "Strict" and cookie["httpOnly"]
    forged = urllib.request.Request(
        f"{base}/models/sensors/promote", data=b"version=0002&force=1", method="POST",
        headers={"Cookie": f"lw_session={cookie['value']}", "Content-Type": "application/x-www-form-urlencoded"},
    )  # fmt: skip
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(forged, timeout=5)
    assert refused.value.code == 403 and registry.production("sensors").version == "0001"

    # logged in, through the page: promoted and announced to the workers
    browser.get(base + "/models")
    browser.find_element(By.ID, "promote-sensors-0002").click()
    wait_text(browser, "flash", "announced")
    assert registry.production("sensors").version == "0002"
    updates = asyncio.run(read_records(settings, settings.topics.model_updates, lambda r: len(r) >= 1, 10))
    assert orjson.loads(updates[-1].value)["version"] == "0002"
    browser.find_element(By.ID, "rollback-sensors").click()
    wait_text(browser, "flash", "rolled back")
    assert registry.production("sensors").version == "0001"


def test_fleet_and_models_pages_show_a_running_worker(console, browser):
    """A real worker (subprocess, production model from the registry): found by its port file, scraped. One
    process: by default a 2-core machine gets two, and the first row could be the one whose partition got no
    event (or that was still joining), which failed this test once."""
    settings, base, _ = console
    with running(settings, "worker", "-l", "warning", "--processes", "1"):
        ports = wait_for(lambda: worker_ports(settings), 90, 0.5)
        assert ports, "the worker never wrote its port file"
        assert wait_for(lambda: _health_ok(ports[0]), 60, 0.5), "the worker never became healthy"

        async def vectors(producer):
            rng = np.random.default_rng(3)
            for _ in range(300):
                await producer.send(settings.topics.vectors, key=b"line-1/press-1",
                                    value=encode_vector("line-1/press-1", rng.normal(size=6).tolist()))  # fmt: skip
            await producer.flush()

        asyncio.run(_publish(settings, vectors))
        browser.get(base + "/fleet")  # the page reloads itself every 5 s
        wait_text(browser, "workers", "sensors v0001", 30)
        wait_text(browser, "workers", " s ago", 30)  # it has scored a batch: /metrics now has latencies and lag
        row = browser.find_element(By.CSS_SELECTOR, "#workers tbody tr").text
        assert f"127.0.0.1:{ports[0]}" in row and "/" in row  # its address and the partitions it holds
        shot(browser, "fleet")
        browser.get(base + "/models")
        served = browser.find_element(By.CSS_SELECTOR, '#model-sensors tr[data-version="0001"]').text
        assert f"127.0.0.1:{ports[0]}" in served


def _health_ok(port: int) -> bool:
    try:
        return bool(worker_health(port, 2.0).get("ok"))
    except OSError:
        return False


def test_fleet_page_shows_the_retraining_schedule_and_the_console_itself(console, browser):
    _, base, _ = console
    browser.get(base + "/fleet")
    schedule = browser.find_element(By.ID, "schedules").text
    assert "sensors" in schedule and "0 3 * * *" in schedule
    assert "verdicts read" in browser.find_element(By.ID, "console-stats").text
