"""The console's data paths on the real stack: frames read back, Redis states, the live Kafka feed."""

from __future__ import annotations

import io

import numpy as np
import pytest
from aiokafka import AIOKafkaProducer
from PIL import Image

from stream_app.console.frames import FrameNotFound, FrameReader
from stream_app.console.scene import defect_frame
from stream_app.ops.connections import aiokafka_kwargs, ensure_topics
from stream_app.wire.codecs import encode_image, frame_headers

pytestmark = pytest.mark.integration


def alert_at(topic: str, partition: int, offset: int) -> dict:
    return {"alert_id": "a", "kind": "image", "origin": {"topic": topic, "partition": partition, "offset": offset}}


async def test_frames_come_back_inline_or_by_claim_check_and_missing_ones_are_named(make_settings, tmp_path):
    settings = make_settings()
    frames_dir = tmp_path / "frames"
    frames_dir.mkdir()
    settings.claim_check_dirs = [frames_dir]
    await ensure_topics(settings, [settings.topics.frames])
    image, _ = defect_frame(size=64)
    (frames_dir / "f1.png").write_bytes(encode_image(image[::-1]))
    (tmp_path / "outside.png").write_bytes(encode_image(image))
    async with AIOKafkaProducer(**aiokafka_kwargs(settings.kafka)) as producer:
        send = lambda value, **h: producer.send_and_wait(  # noqa: E731
            settings.topics.frames, key=b"cam-1", value=value, partition=0, headers=frame_headers("cam-1", **h)
        )
        inline = await send(encode_image(image))
        claimed = await send(b"", uri=f"file://{frames_dir / 'f1.png'}")
        outside = await send(b"", uri=f"file://{tmp_path / 'outside.png'}")

    reader = FrameReader(settings)
    for meta, expected in ((inline, image), (claimed, image[::-1])):
        png = await reader.png(alert_at(meta.topic, meta.partition, meta.offset))
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), expected)
    with pytest.raises(FrameNotFound, match="outside the configured claim_check_dirs"):
        await reader.png(alert_at(outside.topic, outside.partition, outside.offset))
    with pytest.raises(FrameNotFound, match="no record at"):
        await reader.png(alert_at(settings.topics.frames, 0, 999))
    with pytest.raises(ValueError, match="expected origin"):
        await reader.png({"alert_id": "b"})


async def test_redis_states_give_each_sources_threshold_and_open_incident(make_settings):
    """What the workers' ThresholdStore writes is what the console reads back (read-only)."""
    from stream_app.console.live import read_redis_states
    from stream_app.judging.store import ThresholdStore
    from stream_app.ops.connections import redis_client
    from stream_app.settings import IncidentSettings

    settings = make_settings(incidents=IncidentSettings(open_k=2, open_n=3, close_m=5))
    redis = redis_client(settings.redis)
    try:
        store = ThresholdStore(redis, settings.thresholds, settings.incidents, settings.redis.key_prefix)
        calibration = np.random.default_rng(0).exponential(1.0, 2000)
        scores = np.array([0.5, 0.7, 50.0, 60.0, 0.4])
        sources = ["line-1/a", "line-1/a", "line-1/b", "line-1/b", "line-1/c"]
        judged = await store.judge("sensors", "0003", calibration, sources, scores, [f"k{i}" for i in range(5)])
        found = await read_redis_states(redis, settings.redis.key_prefix, settings)
        expected = await store.thresholds("sensors", "0003", ["line-1/a", "line-1/b", "line-1/c"])
    finally:
        await redis.aclose()
    assert set(found) == {"line-1/a", "line-1/b", "line-1/c"}
    for source, (entry,) in found.items():
        assert entry["model"] == "sensors" and entry["version"] == "0003"
        assert entry["threshold"] == pytest.approx(expected[source])
    assert found["line-1/b"][0]["open_id"] == judged[3].incident_id is not None
    assert found["line-1/a"][0]["open_id"] is None


async def test_live_feed_folds_verdicts_alerts_dead_letters_and_labels(make_settings):
    """The group-less feed, in process: replayed history, then live records, nothing committed."""
    import asyncio
    import time

    from stream_app.alerts.labels import label_for_alert, publish_label
    from stream_app.console import scene
    from stream_app.console.live import LiveFeed

    settings = make_settings()
    settings.console.replay_s = 60
    t = settings.topics
    await ensure_topics(settings, [t.vectors, t.scores, t.alerts, t.deadletter, t.labels])
    async with AIOKafkaProducer(**aiokafka_kwargs(settings.kafka)) as producer:
        old = scene.verdicts(settings, "line-1/a", [1.0] * 50, 4.0, "sensors", "0001")
        await scene.send(producer, old[:5], timestamp_ms=int((time.time() - 600) * 1000))  # before the replay
        await scene.send(producer, old, timestamp_ms=int((time.time() - 30) * 1000))  # within it
        async with LiveFeed(settings) as feed:
            await asyncio.wait_for(feed.ready.wait(), 30)
            assert feed.state.verdicts_seen == 50
            alert = await scene.vector_alert(producer, settings, "line-1/a", 9.0, 4.0, "sensors", "0001")
            await scene.send(producer, scene.verdicts(settings, "line-1/a", [9.0], 4.0, "sensors", "0001",
                                                      alert["incident_id"]))  # fmt: skip
            await producer.send_and_wait(t.deadletter, key=b"line-1/a", value=b"{oops")
            await publish_label(settings, label_for_alert(alert, "false_alarm", "", "op"))
            state = feed.state
            for _ in range(100):
                if state.labels and state.sources["line-1/a"].deadletters and state.verdicts_seen == 51:
                    break
                await asyncio.sleep(0.1)
            tile = state.tile("line-1/a", time.time())
            assert tile["status"] == "incident" and tile["incident_id"] == alert["incident_id"]
            assert alert["alert_id"] in state.alerts and state.labels[alert["alert_id"]].label == "false_alarm"
            assert state.deadletter_counts(state.sources["line-1/a"], time.time())[0] == 1
            assert state.precision()[("sensors", None)].value == 0.0
