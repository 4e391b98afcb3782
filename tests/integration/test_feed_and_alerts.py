"""The user-facing tools on the real stack: simulator, camera feeder, alerts client and `alerts tail`."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from PIL import Image
from typer.testing import CliRunner

from stream_app.alerts.subscribe import subscribe
from stream_app.alerts.tail import tail
from stream_app.cli import app
from stream_app.ops.connections import aiokafka_kwargs, ensure_topics
from stream_app.sim.producer import run_simulation
from stream_app.wire import codecs

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


async def consume(settings, topic: str, count: int, timeout_s: float = 30.0) -> list:
    consumer = AIOKafkaConsumer(topic, auto_offset_reset="earliest", **aiokafka_kwargs(settings.kafka))
    await consumer.start()
    records: list = []
    try:
        async with asyncio.timeout(timeout_s):
            while len(records) < count:
                for part in (await consumer.getmany(timeout_ms=500)).values():
                    records.extend(part)
        extra = await consumer.getmany(timeout_ms=500)  # nothing beyond what was expected
        records.extend(r for part in extra.values() for r in part)
    finally:
        await consumer.stop()
    return records


def config_file(settings, tmp_path: Path) -> Path:
    """The test's settings as a JSON file, so a CLI run (CliRunner or subprocess) uses its unique topics."""
    path = tmp_path / "settings.json"
    path.write_text(settings.model_dump_json())
    return path


def texture(seed: int, size: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)


async def test_run_simulation_produces_the_requested_counts_with_truth(make_settings):
    settings = make_settings()
    result = await run_simulation(
        settings, lines=1, machines=2, cameras=1, rate=100, fps=2, duration=2.0, fault_rate=0.2, seed=3
    )
    assert result["vectors"] == 200 and result["frames"] == 4
    assert sum(result["truth"]["vectors"].values()) == 200
    assert 1.5 < result["elapsed_s"] < 10

    vectors = await consume(settings, settings.topics.vectors, 200)
    assert len(vectors) == 200
    truths = [codecs.headers_dict(r.headers)["truth"].decode() for r in vectors]
    assert {t: truths.count(t) for t in set(truths)} == result["truth"]["vectors"]
    assert "normal" in truths and len(set(truths)) > 1  # fault_rate 0.2: some faults in 200 events
    events = [codecs.decode_vector(r.value) for r in vectors]
    assert {e.source for e in events} == {"line-1/press-1", "line-1/press-2"}
    assert all(r.key.decode() == e.source and e.values.shape == (8,) for r, e in zip(vectors, events, strict=True))

    frames = await consume(settings, settings.topics.frames, 4)
    assert len(frames) == 4
    for record in frames:
        headers = codecs.headers_dict(record.headers)
        assert headers["truth"].decode() in {"normal", "scratch", "spot", "crack"}
        frame = codecs.decode_frame(record.value, headers, settings.max_image_bytes)
        assert frame.source == "line-1/cam-1" and frame.image.shape == (64, 64)


async def test_run_simulation_stops_early_on_the_stop_event(make_settings):
    settings = make_settings()
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(1.0, stop.set)
    result = await run_simulation(settings, lines=1, machines=1, cameras=0, rate=50, duration=30, stop_event=stop)
    assert 30 <= result["vectors"] <= 80 and result["elapsed_s"] < 5


async def test_feed_camera_dir_sends_frames_and_skips_unreadable_files(make_settings, tmp_path):
    settings = make_settings()
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(texture(i)).save(folder / f"f{i}.png")
    Image.fromarray(texture(9)).convert("RGB").save(folder / "f3.jpg", quality=90)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (folder / "notes.txt").write_text("not an image, not fed")

    result = await asyncio.to_thread(
        CliRunner().invoke,
        app,
        ["--config", str(config_file(settings, tmp_path)), "feed", "camera", "--dir", str(folder), "--camera", "cam-7"],
    )
    assert result.exit_code == 0, result.output
    assert "sent 4 frames" in result.output and "skipped 1 unreadable" in result.output
    assert "broken.png" in result.output

    records = await consume(settings, settings.topics.frames, 4)
    assert len(records) == 4
    content_types = []
    for record in records:
        headers = codecs.headers_dict(record.headers)
        assert record.key == b"cam-7" and headers["source"] == b"cam-7" and "uri" not in headers
        assert abs(codecs.parse_ts(headers["ts"].decode()) - __import__("time").time()) < 60
        content_types.append(headers["content-type"].decode())
        assert codecs.decode_frame(record.value, headers, settings.max_image_bytes).image.shape[:2] == (64, 64)
    assert sorted(content_types) == ["image/jpeg", "image/png", "image/png", "image/png"]
    png0 = (folder / "f0.png").read_bytes()
    assert png0 in [r.value for r in records]  # files travel as they are


async def test_large_frames_go_as_claim_checks(make_settings, tmp_path):
    settings = make_settings()
    claims = tmp_path / "claims"
    folder = tmp_path / "frames"
    folder.mkdir()
    Image.fromarray(texture(1, size=32)).save(folder / "a_small.png")  # ~1 KB: inline
    Image.fromarray(texture(2, size=256)).save(folder / "b_large.png")  # ~65 KB: over the limit below
    args = ["feed", "camera", "--dir", str(folder), "--camera", "cam-1", "--claim-check-dir", str(claims)]
    args += ["--inline-limit", "20000"]
    result = await asyncio.to_thread(CliRunner().invoke, app, ["--config", str(config_file(settings, tmp_path)), *args])
    assert result.exit_code == 0, result.output
    assert "(1 as claim-checks)" in result.output

    records = sorted(await consume(settings, settings.topics.frames, 2), key=lambda r: len(r.value))
    large, small = records
    headers = codecs.headers_dict(large.headers)
    assert large.value == b"" and headers["uri"].startswith(b"file://")
    kept = list(claims.iterdir())
    assert len(kept) == 1 and kept[0].read_bytes() == (folder / "b_large.png").read_bytes()
    frame = codecs.decode_frame(large.value, headers, settings.max_image_bytes, claim_check_dirs=[claims])
    assert frame.image.shape == (256, 256)
    assert "uri" not in codecs.headers_dict(small.headers) and len(small.value) > 0


async def test_feed_camera_video_reads_animated_gif_and_refuses_mp4(make_settings, tmp_path):
    settings = make_settings()
    gif = tmp_path / "clip.gif"
    frames = [Image.fromarray(texture(i)) for i in range(3)]
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=100)
    cfg = ["--config", str(config_file(settings, tmp_path))]
    result = await asyncio.to_thread(
        CliRunner().invoke, app, [*cfg, "feed", "camera", "--video", str(gif), "--camera", "cam-2"]
    )
    assert result.exit_code == 0, result.output
    assert "sent 3 frames" in result.output
    records = await consume(settings, settings.topics.frames, 3)
    assert all(codecs.headers_dict(r.headers)["content-type"] == b"image/png" for r in records)

    mp4 = tmp_path / "clip.mp4"
    mp4.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(100))
    result = CliRunner().invoke(app, [*cfg, "feed", "camera", "--video", str(mp4), "--camera", "cam-2"])
    assert result.exit_code == 2
    assert "animated GIF" in result.output and "--url" in result.output


def alert(source: str, i: int, event: str | None = None) -> dict:
    return {
        "alert_id": f"a-{source}-{i}",
        "incident_id": f"inc-{source}",
        "incident_event": event,
        "source": source,
        "kind": "sensor",
        "ts": 1_700_000_000.0 + i,
        "detected_at": 1_700_000_000.5 + i,
        "score": 12.0 + i,
        "threshold": 4.0,
        "severity": "high",
        "model": "sensors",
        "version": "v1",
        "explanation": {"top_features": [{"feature": "ch3", "contribution": 5.5, "value": 71.2}]},
        "origin": {"topic": "sensor.vectors", "partition": 0, "offset": i},
    }


async def produce_alerts(settings, alerts: list[dict]) -> None:
    await ensure_topics(settings, [settings.topics.alerts])
    async with AIOKafkaProducer(**aiokafka_kwargs(settings.kafka)) as producer:
        for a in alerts:
            await producer.send_and_wait(settings.topics.alerts, orjson.dumps(a), key=a["source"].encode())
        await producer.send_and_wait(settings.topics.alerts, b"not json", key=b"x")  # skipped, not fatal


ALERTS = [alert("line-1/press-1", 0, "opened"), alert("line-2/press-1", 1), alert("line-1/cam-1", 2, "closed")]


async def test_subscribe_yields_alerts_matching_the_pattern(make_settings):
    settings = make_settings()
    await produce_alerts(settings, ALERTS)
    got = []
    async with asyncio.timeout(30):
        async for a in subscribe(settings, "line-1/*", from_beginning=True):
            got.append(a)
            if len(got) == 2:
                break
    assert sorted(a["alert_id"] for a in got) == ["a-line-1/cam-1-2", "a-line-1/press-1-0"]
    assert got[0]["explanation"]["top_features"][0]["feature"] == "ch3"


async def test_subscribe_sees_alerts_produced_after_it_started(make_settings):
    settings = make_settings()
    await ensure_topics(settings, [settings.topics.alerts])
    alerts = subscribe(settings, "*")
    first = asyncio.ensure_future(anext(alerts))
    await asyncio.sleep(2.0)  # the consumer has its partitions and sits at the end
    await produce_alerts(settings, ALERTS[:1])
    async with asyncio.timeout(30):
        assert (await first)["alert_id"] == ALERTS[0]["alert_id"]
    await alerts.aclose()


async def test_tail_prints_readable_lines(make_settings):
    settings = make_settings()
    await produce_alerts(settings, ALERTS)
    lines: list[str] = []
    shown = await tail(settings, "line-1/*", from_beginning=True, idle_timeout=3.0, emit=lines.append)
    assert shown == 2
    press = next(line for line in lines if "line-1/press-1" in line)  # partitions interleave: no order
    camera = next(line for line in lines if "line-1/cam-1" in line)
    assert "opened" in press and "top: ch3 +5.5 (=71.2)" in press
    assert "score 12 > 4 (3.0x)" in press and "closed" in camera


def test_alerts_tail_json_prints_one_object_per_line(make_settings, tmp_path):
    settings = make_settings()
    asyncio.run(produce_alerts(settings, ALERTS))
    cmd = [sys.executable, "-m", "stream_app", "--config", str(config_file(settings, tmp_path))]
    cmd += ["alerts", "tail", "--json", "--from-beginning", "--source", "line-2/*", "--idle-timeout", "3"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr
    objects = [json.loads(line) for line in proc.stdout.splitlines()]
    assert objects == [ALERTS[1]]


async def test_run_simulation_can_send_binary_vectors_that_decode_like_json(make_settings):
    settings = make_settings()
    result = await run_simulation(settings, lines=1, machines=2, cameras=0, rate=100, duration=0.5, encoding="binary")
    vectors = await consume(settings, settings.topics.vectors, result["vectors"])
    assert all(codecs.headers_dict(r.headers)["content-type"] == b"application/vnd.linewatch.vector" for r in vectors)
    events = codecs.decode_vectors([r.value for r in vectors])
    assert all(isinstance(e, codecs.VectorEvent) and e.values.shape == (8,) for e in events)
