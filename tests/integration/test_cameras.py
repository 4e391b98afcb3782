"""Real cameras in, on the real stack: a GigE Vision camera served by `arv-fake-gv-camera-0.8` on 127.0.0.1,
MP4 files written with PyAV, an RTSP URL nobody serves; frames through Kafka to a worker and its verdicts."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest
from typer.testing import CliRunner

from models import TransformalyScorer
from stream_app.cli import app
from stream_app.feed.captures import Capture
from stream_app.feed.sources import LiveOptions, feed_source
from stream_app.feed.video import VideoSource
from stream_app.ops.connections import read_records
from stream_app.ops.processes import running
from stream_app.registry.versions import Registry
from stream_app.wire import codecs
from tests.media import clip, web, with_defect

pytestmark = pytest.mark.integration
FAKE_GV = "arv-fake-gv-camera-0.8"


def config_file(settings, tmp_path: Path) -> Path:
    path = tmp_path / "settings.json"
    path.write_text(settings.model_dump_json())
    return path


def feed(settings, tmp_path: Path, *args: str):
    """`linewatch feed camera ...` with the test's settings, as a user runs it (CliRunner, in a thread)."""
    cmd = ["--config", str(config_file(settings, tmp_path)), "feed", "camera", *args]
    return CliRunner().invoke(app, cmd)


def headers(record) -> dict[str, str]:
    return {k: v.decode() for k, v in codecs.headers_dict(record.headers).items()}


class LineCamera:
    """A line-scan camera over a known web: strips of `strip` rows with consecutive frame ids."""

    name = "web"

    def __init__(self, rows: np.ndarray, strip: int = 8) -> None:
        self.rows, self.strip = rows, strip

    def captures(self, stop: threading.Event):
        for i in range(0, len(self.rows), self.strip):
            yield Capture(self.rows[i : i + self.strip], time.time(), 1000 + i // self.strip)


class FakeGigECamera:
    """`arv-fake-gv-camera-0.8 -i 127.0.0.1`: real GVCP/GVSP over UDP on loopback; start/stop at will."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([FAKE_GV, "-i", "127.0.0.1"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(0.5)  # it binds its GVCP port at once; give it a moment to answer
        if self.proc.poll() is not None:
            raise RuntimeError(f"{FAKE_GV} exited: {self.proc.stderr.read().decode()[-500:]}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def gige_camera() -> Iterator[FakeGigECamera]:
    assert shutil.which(FAKE_GV), f"{FAKE_GV} is missing: apt-get install aravis-tools"
    camera = FakeGigECamera()
    camera.start()
    try:
        yield camera
    finally:
        camera.stop()


@pytest.fixture(scope="module")
def normal_clip(tmp_path_factory) -> Path:
    return clip(tmp_path_factory.mktemp("media") / "normal.mp4", 60, seed=1)


@pytest.fixture(scope="module")
def camera_model(normal_clip: Path) -> TransformalyScorer:
    """A tiny Transformaly fitted on frames decoded from a normal MP4, as the product reads them."""
    frames = [c.image for c in VideoSource(str(normal_clip), mono=True).captures(threading.Event())]
    scorer = TransformalyScorer(
        backbone="vit_tiny_patch16_224", pretrained=False, img_size=64, n_blocks=3, device="cpu", val_fraction=0.5
    )
    scorer.fit(np.stack(frames), epochs=3, batch_size=16)
    return scorer


def anomalies(alerts: list) -> list:
    """Alert records of anomalous frames (an incident's closing record rides on a normal frame)."""
    return [a for a in alerts if orjson.loads(a.value)["incident_event"] != "closed"]


def worker_settings(make_settings, scorer: TransformalyScorer):
    settings = make_settings()
    settings.batching.max_wait_ms = 20
    # 30 calibration frames say little about a 1e-3 tail (SPOT extrapolates far above every normal frame);
    # a camera calibrated on so few frames runs at a 1e-2 risk.
    settings.thresholds.risk = 1e-2
    registry = Registry(settings.registry_dir)
    registry.promote("camera", registry.publish("camera", scorer).version)
    return settings


async def test_live_sources_reach_a_worker_one_verdict_per_frame_and_defects_alert(
    make_settings, tmp_path, gige_camera, camera_model
):
    """One worker scores four live sources at once: a GigE camera (20 frames, JPEG), an MP4 with three defect
    frames (40 frames, PNG), and a line-scan web with a defect across a frame boundary, assembled with and
    without overlap (7 and 4 frames of 64 lines)."""
    settings = worker_settings(make_settings, camera_model)
    n, defects = 20, {10, 21, 33}
    video = clip(tmp_path / "line.mp4", 40, defects=defects, seed=2)
    gige = ["--genicam", "127.0.0.1", "--camera", "line-1/cam-gv", "--roi", "0,0,64,64", "--frame-rate", "50"]
    scanned = with_defect(web(256), row=64)  # the disc spans lines 48-80: across the boundary at line 64
    total = n + 40 + 7 + 4
    with running(settings, "worker") as worker:

        def cli_feeds():  # one after the other: CliRunner swaps the process's stdout while it runs
            return (
                feed(settings, tmp_path, *gige, "--max-frames", str(n), "--encoding", "jpeg"),
                feed(settings, tmp_path, "--url", str(video), "--mono", "--camera", "line-1/cam-v"),
            )

        (gv, mp4), web_report, cut_report = await asyncio.gather(
            asyncio.to_thread(cli_feeds),
            feed_source(settings, LineCamera(scanned), "line-1/web", LiveOptions(lines_per_frame=64, overlap=32)),
            feed_source(settings, LineCamera(scanned), "line-1/web-cut", LiveOptions(lines_per_frame=64)),
        )
        assert gv.exit_code == 0 and mp4.exit_code == 0, gv.output + mp4.output
        assert f"sent {n} frames from genicam:127.0.0.1" in gv.output and "dropped 0 incomplete" in gv.output
        assert "sent 40 frames" in mp4.output and (web_report.sent, cut_report.sent) == (7, 4)
        verdicts = await read_records(settings, settings.topics.scores, lambda r: len(r) >= total, 120)
        alerts = await read_records(
            settings, settings.topics.alerts, lambda r: len(anomalies(r)) >= len(defects) + 1, 30
        )
        frames = await read_records(settings, settings.topics.frames, lambda r: len(r) >= total, 10)
        assert worker.poll() is None

    def of(records, camera: str) -> list:
        return [r for r in records if headers(r)["source"] == camera]

    assert len(frames) == len(verdicts) == total and len(of(verdicts, "line-1/cam-v")) == 40
    assert {orjson.loads(v.value)["model"] for v in verdicts} == {"camera"}

    # GenICam: one verdict per frame sent, carrying the camera's own consecutive block ids.
    gv_frames = of(frames, "line-1/cam-gv")
    sent_ids = sorted(int(headers(r)["frame-id"]) for r in gv_frames)
    assert len(gv_frames) == n and sent_ids == list(range(sent_ids[0], sent_ids[0] + n))
    assert sorted(int(headers(v)["frame-id"]) for v in of(verdicts, "line-1/cam-gv")) == sent_ids
    first = headers(gv_frames[0])
    assert first["content-type"] == "image/jpeg" and first["pixel-format"] == "Mono8" and int(first["camera-ts-ns"])
    image = codecs.decode_frame(gv_frames[0].value, codecs.headers_dict(gv_frames[0].headers), settings.max_image_bytes)
    assert image.image.shape == (64, 64)

    # MP4: the frames with a drawn defect alert, the normal ones (almost) never.
    flagged = {int(headers(a)["frame-id"]) for a in of(anomalies(alerts), "line-1/cam-v")}
    assert defects <= flagged, f"defect frames {sorted(defects)}, alerts on {sorted(flagged)}"
    assert len(flagged - defects) <= 2, f"false alarms on normal frames {sorted(flagged - defects)}"
    assert all(orjson.loads(a.value)["kind"] == "image" for a in alerts)

    # Line-scan: with overlap the frame holding the whole defect (lines 32-95) alerts; cut in two, it does not.
    assert [headers(a)["first-line"] for a in of(anomalies(alerts), "line-1/web")] == ["32"]
    assert of(anomalies(alerts), "line-1/web-cut") == [] and len(of(verdicts, "line-1/web-cut")) == 4
    assert {headers(a)["frame-id"] for a in of(anomalies(alerts), "line-1/web")} == {
        "1004"
    }  # the strip holding line 32


async def test_line_scan_strips_from_a_gige_camera_arrive_as_overlapping_frames(make_settings, tmp_path, gige_camera):
    settings = make_settings()
    args = ["--genicam", "127.0.0.1", "--camera", "web-1", "--roi", "0,0,128,8", "--frame-rate", "200"]
    args += ["--line-scan", "--lines-per-frame", "64", "--overlap", "16", "--max-frames", "4"]
    result = await asyncio.to_thread(feed, settings, tmp_path, *args)
    assert result.exit_code == 0, result.output
    frames = await read_records(settings, settings.topics.frames, lambda r: len(r) >= 4, 10)
    got = sorted((int(headers(r)["first-line"]), r) for r in frames)
    assert [g[0] for g in got] == [0, 48, 96, 144]
    ids = [int(headers(r)["frame-id"]) for _, r in got]
    assert [i - ids[0] for i in ids] == [0, 6, 12, 18]  # 8-line strips: line 48 arrived in the 7th strip
    for _, r in got:
        image = codecs.decode_frame(r.value, codecs.headers_dict(r.headers), settings.max_image_bytes).image
        assert image.shape == (64, 128) and headers(r)["lines"] == "64"


async def test_a_camera_vanishing_mid_stream_is_reopened_with_backoff(make_settings, tmp_path, gige_camera):
    settings = make_settings()
    settings.camera.reconnect_initial_s = 0.2
    args = ["--genicam", "127.0.0.1", "--camera", "cam-x", "--roi", "0,0,32,32", "--frame-rate", "20"]
    feeding = asyncio.ensure_future(asyncio.to_thread(feed, settings, tmp_path, *args, "--max-frames", "40"))
    await read_records(settings, settings.topics.frames, lambda r: len(r) >= 10, 30)
    gige_camera.stop()  # unplugged mid-stream
    await asyncio.sleep(2.0)
    gige_camera.start()  # and back
    result = await asyncio.wait_for(feeding, 90)
    assert result.exit_code == 0, result.output
    assert "camera 127.0.0.1 lost" in result.output and "retrying in 0.2 s" in result.output
    assert "sent 40 frames" in result.output and "Traceback" not in result.output
    frames = await read_records(settings, settings.topics.frames, lambda r: len(r) >= 40, 10)
    assert len(frames) == 40


async def test_a_camera_that_never_answers_ends_with_a_clear_error(make_settings, tmp_path):
    settings = make_settings()
    settings.camera.reconnect_initial_s = 2.0
    result = await asyncio.to_thread(
        feed, settings, tmp_path, "--genicam", "127.0.0.1", "--camera", "c", "--give-up-after", "1"
    )
    assert result.exit_code == 1
    assert "cannot open camera 127.0.0.1" in result.output and "gave up after retrying for 1 s" in result.output
    assert "sent 0 frames" in result.output and "Traceback" not in result.output


async def test_bad_video_inputs_end_with_clear_errors(make_settings, tmp_path):
    settings = make_settings()
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(100))
    result = await asyncio.to_thread(feed, settings, tmp_path, "--url", str(corrupt), "--camera", "c")
    assert result.exit_code == 1 and "Invalid data found when processing input" in result.output
    assert "Traceback" not in result.output

    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens once closed
    args = ["--url", f"rtsp://127.0.0.1:{port}/line", "--camera", "c", "--give-up-after", "1"]
    settings.camera.reconnect_initial_s = 0.2
    result = await asyncio.to_thread(feed, settings, tmp_path, *args)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.count("Connection refused") >= 3 and "reconnecting in 0.4 s" in result.output
    assert "gave up after retrying for 1 s" in result.output
