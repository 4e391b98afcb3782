"""Smoke tests of the real stack: Kafka round trips (aiokafka and a faust worker) and Redis."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from stream_app.ops.connections import aiokafka_kwargs, ensure_topics, read_records, redis_client

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


async def consume(settings, topic: str, count: int, timeout_s: float = 30.0) -> list:
    records = await read_records(settings, topic, lambda r: len(r) >= count, timeout_s)
    if len(records) < count:
        raise TimeoutError(f"{len(records)} of {count} records from {topic} in {timeout_s} s")
    return records


async def test_aiokafka_produce_consume_round_trip(make_settings):
    settings = make_settings()
    topic = settings.topics.vectors
    await ensure_topics(settings, [topic])
    async with AIOKafkaProducer(**aiokafka_kwargs(settings.kafka)) as producer:
        acks = [await producer.send(topic, key=f"k{i}".encode(), value=f"v{i}".encode()) for i in range(100)]
        await asyncio.gather(*acks)
    records = await consume(settings, topic, 100)
    assert sorted(r.value for r in records) == sorted(f"v{i}".encode() for i in range(100))


async def test_faust_worker_consumes_and_produces(make_settings, tmp_path):
    settings = make_settings()
    source, sink = settings.topics.vectors, settings.topics.scores
    await ensure_topics(settings, [source, sink], partitions=2)
    env = {
        **os.environ,
        "ECHO_APP_ID": settings.app_id,
        "ECHO_SOURCE": source,
        "ECHO_SINK": sink,
        "KAFKA_BOOTSTRAP": settings.kafka.bootstrap,
    }
    worker = subprocess.Popen(
        [sys.executable, str(ROOT / "tests/apps/faust_echo.py"), "worker", "-l", "info"],
        env=env,
        cwd=tmp_path,  # faust's data dir goes to the working directory
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        async with AIOKafkaProducer(**aiokafka_kwargs(settings.kafka)) as producer:
            for i in range(20):
                await producer.send_and_wait(source, key=f"s{i}".encode(), value=f"hello {i}".encode())
        try:
            records = await consume(settings, sink, 20, timeout_s=90)
        except TimeoutError:
            records = []
    finally:
        worker.terminate()
        output = worker.communicate(timeout=30)[0].decode(errors="replace")
    assert sorted(r.value for r in records) == sorted(f"HELLO {i}".encode() for i in range(20)), output[-3000:]


async def test_redis_round_trip(make_settings):
    settings = make_settings()
    client = redis_client(settings.redis)
    key = f"{settings.redis.key_prefix}:smoke"
    try:
        await client.hset(key, mapping={"a": "1", "b": "2"})
        assert await client.hgetall(key) == {b"a": b"1", b"b": b"2"}
    finally:
        await client.delete(key)
        await client.aclose()


def test_redis_data_survives_a_restart(tmp_path):
    """A dedicated redis-server (AOF on) is stopped and started again; the data is still there."""
    import redis

    from deploy.localstack import LocalStack

    port = int(os.environ.get("LINEWATCH_TEST_RESTART_REDIS_PORT", 26380))
    stack = LocalStack(state_dir=tmp_path / "state", cache_dir=tmp_path / "cache", redis_port=port)
    stack.up(services=("redis",))
    try:
        client = redis.Redis.from_url(stack.redis_url)
        client.set("threshold:line-1", "3.25")
        client.close()
        stack.down(services=("redis",))
        assert not stack.status()[1].running
        stack.up(services=("redis",))
        client = redis.Redis.from_url(stack.redis_url)
        assert client.get("threshold:line-1") == b"3.25"
        client.close()
    finally:
        stack.down(services=("redis",))
