"""Workers on the real stack: killed mid-stream, scaled to two, and scoring fed camera frames."""

from __future__ import annotations

import asyncio
import os
import signal

import numpy as np
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from typer.testing import CliRunner

from models import TransformalyScorer
from stream_app.cli import app as cli
from stream_app.judging.store import ThresholdStore
from stream_app.ops.connections import aiokafka_kwargs, ensure_topics, redis_client
from stream_app.ops.processes import running, spawn, wait_consuming, worker_health
from stream_app.registry.versions import Registry
from stream_app.settings import Route
from stream_app.sim.simulator import LineSimulator, normal_images
from stream_app.wire.codecs import encode_image, encode_vector
from tests.integration.test_worker import consume_all, fit_sensor_model, normal_vectors, worker_settings

pytestmark = pytest.mark.integration


async def produce_vectors(settings, rows: np.ndarray, sources=("line-1/a", "line-1/b")) -> None:
    async with AIOKafkaProducer(linger_ms=5, **aiokafka_kwargs(settings.kafka)) as producer:
        for i, row in enumerate(rows):
            src = sources[i % len(sources)]
            await producer.send(settings.topics.vectors, key=src.encode(), value=encode_vector(src, row))
        await producer.flush()


def by_offset(records) -> dict[tuple[int, int], list[dict]]:
    out: dict[tuple[int, int], list[dict]] = {}
    for r in records:
        body = orjson.loads(r.value)
        out.setdefault((body["partition"], body["offset"]), []).append(body)
    return out


async def absorbed(settings, version: str = "0001") -> int:
    """Normal scores absorbed by the Redis threshold state of both sources (no lost updates means all)."""
    redis = redis_client(settings.redis)
    try:
        store = ThresholdStore(redis, settings.thresholds, settings.incidents, settings.redis.key_prefix)
        states = await store.states("sensors", version, ["line-1/a", "line-1/b"])
        return sum(st.threshold.count for st in states.values())
    finally:
        await redis.aclose()


async def test_a_worker_killed_mid_stream_loses_no_verdict_and_keeps_its_thresholds(make_settings, tmp_path):
    settings = worker_settings(make_settings, tmp_path)
    settings.batching.max_batch = 64
    fit_sensor_model(settings)
    await ensure_topics(settings)
    n = 4000
    await produce_vectors(settings, normal_vectors(np.random.default_rng(5), n))

    first = spawn(settings, "worker")
    try:
        partial = await consume_all(settings, settings.topics.scores, lambda r: len(r) >= 800)
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # no goodbye: uncommitted batches must be redelivered
        first.wait()
    assert 800 <= len(partial) < n, "the kill should land mid-stream"
    before = await absorbed(settings)
    assert before > 0

    with running(settings, "worker"):
        records = await consume_all(settings, settings.topics.scores, lambda r: len(by_offset(r)) >= n)
    verdicts = by_offset(records)
    assert len(verdicts) == n, "every input offset has a verdict"
    for copies in verdicts.values():  # redelivered events: same score and same judgement
        assert len({(c["score"], c["source"]) for c in copies}) == 1
    assert await absorbed(settings) >= before, "thresholds continue from Redis, not from scratch"


async def test_two_workers_share_partitions_and_thresholds_without_lost_updates(make_settings, tmp_path):
    settings = worker_settings(make_settings, tmp_path)
    fit_sensor_model(settings)
    await ensure_topics(settings)
    n = 3000
    with running(settings, "worker"), running(settings, "worker"):
        ports = await wait_consuming(settings, settings.topics.vectors, 2)  # the two workers split the partitions
        await produce_vectors(settings, normal_vectors(np.random.default_rng(6), n))
        records = await consume_all(settings, settings.topics.scores, lambda r: len(by_offset(r)) >= n)
        batches = [worker_health(port)["batches"] for port in ports]
    verdicts = by_offset(records)
    assert len(verdicts) == n
    assert len(ports) == 2 and all(b > 0 for b in batches), f"both workers scored batches: {batches}"
    normal = sum(1 for copies in verdicts.values() if not copies[0]["anomalous"])
    duplicates = len(records) - n
    assert normal <= await absorbed(settings) <= normal + duplicates, "no threshold update lost"


async def test_fed_camera_frames_are_scored_and_defects_alert_with_a_heatmap(make_settings, tmp_path):
    settings = make_settings(image_routes=[Route(pattern="line-*", model="camera")])
    settings.metrics_port = 0
    settings.batching.max_wait_ms = 20
    scorer = TransformalyScorer(
        backbone="vit_tiny_patch16_224", pretrained=False, img_size=64, epochs=6, seed=0, ts_pooling="max",
        terms="teacher_student", val_fraction=0.4, device="cpu",
    )  # fmt: skip
    scorer.fit(normal_images(160, size=64, seed=3))
    registry = Registry(settings.registry_dir)
    registry.promote("camera", registry.publish("camera", scorer).version)
    await ensure_topics(settings)

    camera = LineSimulator(1, 0, 1, defect_rate=0.3, seed=4).cameras[0]
    frames = [camera.next(float(i)) for i in range(30)]
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(frames):
        (folder / f"{i:03d}-{frame.truth}.png").write_bytes(encode_image(frame.image))
    config = tmp_path / "settings.json"
    config.write_text(settings.model_dump_json())
    args = ["--config", str(config), "feed", "camera", "--camera", "line-1/cam-1", "--dir", str(folder)]
    fed = await asyncio.to_thread(CliRunner().invoke, cli, args)  # the CLI runs its own event loop
    assert fed.exit_code == 0, fed.output

    with running(settings, "worker"):
        records = await consume_all(settings, settings.topics.scores, lambda r: len(r) >= len(frames))
        alerts = await consume_all(settings, settings.topics.alerts, lambda r: len(r) > 0, timeout_s=15)
    assert len(records) == len(frames)
    bodies = sorted((orjson.loads(r.value) for r in records), key=lambda b: b["offset"])
    scores = np.array([b["score"] for b in bodies])
    defect = np.array([f.truth != "normal" for f in frames])
    assert defect.any() and scores[defect].mean() > scores[~defect].mean()
    alert = orjson.loads(alerts[0].value)
    assert alert["kind"] == "image" and alert["source"] == "line-1/cam-1"
    grid = np.array(alert["explanation"]["heatmap"])
    assert grid.ndim == 2 and grid.shape[0] >= 2 and np.isfinite(grid).all()
