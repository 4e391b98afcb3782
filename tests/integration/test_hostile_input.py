"""Hostile input against a running worker on the real stack: one bad message never stops a partition, junk on
the control topic never stops or misleads a worker, and dead letters always fit the broker."""

from __future__ import annotations

import asyncio
import hashlib
import io
import struct
import zlib

import numpy as np
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from models import RVAEScorer
from stream_app.ops.connections import aiokafka_kwargs, ensure_topics, read_records
from stream_app.ops.processes import running, worker_health, worker_ports
from stream_app.registry.versions import Registry
from stream_app.settings import Route, Settings
from stream_app.wire.codecs import encode_image, encode_vector, frame_headers
from stream_app.wire.outputs import deadletter_output
from stream_app.wire.records import Record

pytestmark = pytest.mark.integration
F = 4


def png_claiming(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 4)) + chunk(b"IEND", b"")
    )


def publish_sensor_model(settings: Settings) -> None:
    X = np.random.default_rng(0).normal(size=(256, F)).astype(np.float32) + 5.0
    scorer = RVAEScorer(n_features=F, n_layers=1, hidden=8, latent=2, device="cpu")
    scorer.fit(X, epochs=2, batch_size=128)
    registry = Registry(settings.registry_dir)
    registry.promote("sensors", registry.publish("sensors", scorer).version)
    registry.promote("camera", registry.publish("camera", scorer).version)  # another model's files, for the attack


async def health_of(settings: Settings) -> dict:
    for _ in range(100):
        if ports := worker_ports(settings):
            return await asyncio.to_thread(worker_health, ports[0])
        await asyncio.sleep(0.2)
    raise AssertionError("the worker never wrote its health port")


async def test_a_running_worker_dead_letters_hostile_frames_and_ignores_hostile_control_messages(
    make_settings, tmp_path
):
    settings = make_settings(routes=[Route(pattern="line-*", model="sensors")])
    settings.claim_check_dirs = [tmp_path]
    settings.batching.max_wait_ms = 20
    publish_sensor_model(settings)
    registry = Registry(settings.registry_dir)
    await ensure_topics(settings)
    near_limit = b"\x00" * (settings.kafka.max_message_bytes - 600)  # an undecodable frame ~600 bytes under the limit
    from PIL import Image

    tiff = io.BytesIO()
    Image.new("L", (16, 16)).save(tiff, format="TIFF")
    hostile = {  # in this order on one partition (same key), each followed by more traffic
        "image_too_large": png_claiming(20000, 20000),
        "bad_header": None,  # a claim-check uri with a NUL byte
        "undecodable_image": tiff.getvalue(),
    }
    bomb_8k = encode_image(np.zeros((8192, 8192), np.uint8))
    async with AIOKafkaProducer(
        max_request_size=2 * settings.kafka.max_message_bytes, **aiokafka_kwargs(settings.kafka)
    ) as producer:
        for reason, value in hostile.items():
            uri = "file:///tmp/a%00b" if reason == "bad_header" else None
            await producer.send(
                settings.topics.frames, key=b"cam", value=value or b"", headers=frame_headers("cam", uri=uri)
            )
        await producer.send(settings.topics.frames, key=b"cam", value=bomb_8k, headers=frame_headers("cam"))
        await producer.send(settings.topics.frames, key=b"cam", value=near_limit, headers=frame_headers("cam"))
        for i in range(20):
            await producer.send(
                settings.topics.vectors, key=b"line-1/a", value=encode_vector("line-1/a", [5.0] * F, seq=i)
            )
        await producer.flush()

    with running(settings, "worker", "-l", "info") as proc:
        dead = await read_records(settings, settings.topics.deadletter, lambda r: len(r) >= 5, timeout_s=120)
        verdicts = await read_records(settings, settings.topics.scores, lambda r: len(r) >= 20, timeout_s=60)
        # Control-plane junk, then the traversal attack with the camera model's real digest.
        camera_digest = registry.digest("camera", "0001")
        async with AIOKafkaProducer(**aiokafka_kwargs(settings.kafka)) as producer:
            for value in (b"[]", b"{", b'{"model": 1}', orjson.dumps(
                {"model": "sensors", "version": "../camera/0001", "sha256": camera_digest}
            )):  # fmt: skip
                await producer.send_and_wait(settings.topics.model_updates, key=b"sensors", value=value)
            for i in range(20, 30):
                await producer.send(
                    settings.topics.vectors, key=b"line-1/a", value=encode_vector("line-1/a", [5.0] * F, seq=i)
                )
            await producer.flush()
        more = await read_records(settings, settings.topics.scores, lambda r: len(r) >= 30, timeout_s=60)
        health = await health_of(settings)
        assert proc.poll() is None, "the worker must survive hostile frames and control messages"

    reasons = [dict(r.headers)["reason"].decode() for r in dead]
    assert reasons[:3] == list(hostile) and reasons[3] == "image_too_large"
    assert reasons[4] == "undecodable_image"
    truncated = dict(dead[4].headers)
    assert truncated["truncated"] == b"true" and int(truncated["original-size"]) == len(near_limit)
    assert truncated["original-sha256"].decode() == hashlib.sha256(near_limit).hexdigest()
    assert len(verdicts) >= 20 and len(more) == 30
    assert {orjson.loads(v.value)["version"] for v in more} == {"0001"}
    assert health["models"]["sensors"] == "0001"


async def test_a_dead_letter_of_a_near_limit_input_is_accepted_by_a_broker_with_that_limit(make_settings):
    """The broker's own limit, per topic: the untruncated copy is refused (the old stall), the built one is acked."""
    settings = make_settings()
    settings.kafka.max_message_bytes = 64 * 1024
    await ensure_topics(settings, [settings.topics.frames, settings.topics.deadletter])  # max.message.bytes 64 KiB
    rec = Record(settings.topics.frames, 0, 1, b"cam", b"\x07" * (64 * 1024 - 300), {"source": b"cam"})
    limit = settings.kafka.max_message_bytes - settings.limits.deadletter_margin_bytes
    kept = deadletter_output(settings.topics.deadletter, rec, "undecodable_image", "x" * 400, max_bytes=10**9)
    cut = deadletter_output(settings.topics.deadletter, rec, "undecodable_image", "x" * 400, max_bytes=limit)
    async with AIOKafkaProducer(max_request_size=10**6, **aiokafka_kwargs(settings.kafka)) as producer:
        await producer.send_and_wait(rec.topic, rec.value, key=rec.key, headers=list(rec.headers.items()))  # fits
        with pytest.raises(KafkaError):
            await producer.send_and_wait(kept.topic, kept.value, key=kept.key, headers=kept.headers)
        meta = await producer.send_and_wait(cut.topic, cut.value, key=cut.key, headers=cut.headers)
    assert meta.offset >= 0
    (got,) = await read_records(settings, settings.topics.deadletter, lambda r: len(r) >= 1, timeout_s=30)
    assert dict(got.headers)["original-size"] == str(len(rec.value)).encode()
