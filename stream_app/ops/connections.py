"""Kafka and Redis clients built from settings, so SASL/TLS and AUTH/TLS are configuration only."""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from typing import Any

import orjson
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import NoError, TopicAlreadyExistsError, for_code
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import parse_url
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool

from stream_app.settings import KafkaSettings, RedisSettings, Settings, secret_value


def kafka_ssl_context(kafka: KafkaSettings) -> ssl.SSLContext | None:
    if kafka.security_protocol not in ("SSL", "SASL_SSL"):
        return None
    context = ssl.create_default_context(cafile=kafka.ssl_cafile)
    if kafka.ssl_certfile:
        context.load_cert_chain(kafka.ssl_certfile, kafka.ssl_keyfile)
    return context


def aiokafka_kwargs(kafka: KafkaSettings) -> dict[str, Any]:
    """Connection keyword arguments shared by every aiokafka producer, consumer and admin client."""
    kwargs: dict[str, Any] = {
        "bootstrap_servers": kafka.bootstrap,
        "security_protocol": kafka.security_protocol,
        "request_timeout_ms": kafka.request_timeout_ms,  # aiokafka bounds connects by it too
    }
    if context := kafka_ssl_context(kafka):
        kwargs["ssl_context"] = context
    if kafka.sasl_mechanism:
        kwargs.update(
            sasl_mechanism=kafka.sasl_mechanism,
            sasl_plain_username=kafka.sasl_username,
            sasl_plain_password=secret_value(kafka.sasl_password),
        )
    return kwargs


def kafka_producer(kafka: KafkaSettings, **options: Any) -> AIOKafkaProducer:
    """The producer every part of linewatch writes with: a write counts once every in-sync replica has it (acks=all;
    topics ask for `min.insync.replicas` of them), and the producer is idempotent, so a batch it sends again after
    a lost ack or a leader change is not written twice. `options` are further AIOKafkaProducer arguments."""
    return AIOKafkaProducer(**{**aiokafka_kwargs(kafka), **options, "acks": "all", "enable_idempotence": True})


RedisClient = aioredis.Redis | RedisCluster


class SentinelRedis(aioredis.Redis):
    """The primary's client in sentinel mode; `aclose` also closes its connections to the sentinels."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        pool = self.connection_pool
        assert isinstance(pool, SentinelConnectionPool)
        for sentinel in pool.sentinel_manager.sentinels:
            await sentinel.aclose()


def _address(host_port: str) -> tuple[str, int]:
    host, _, port = host_port.rpartition(":")
    return host, int(port)


def redis_client(cfg: RedisSettings) -> RedisClient:
    """An asyncio Redis client for `cfg.mode`; `rediss://` URLs get TLS; credentials from settings or the URL.

    Socket timeouts are set so a Redis that accepts connections but never answers (paused, overloaded) fails
    the call instead of blocking a batch forever; the caller retries. `cluster`: a `RedisCluster` that routes
    each key to its slot's primary and re-reads the slot map after a failover. `sentinel`: a client whose
    connections ask the sentinels for the current primary, so a promoted replica is found on reconnect.
    """
    kwargs: dict[str, Any] = {
        "socket_timeout": cfg.socket_timeout_s,
        "socket_connect_timeout": cfg.socket_connect_timeout_s,
    }
    if cfg.username:
        kwargs["username"] = cfg.username
    if cfg.password is not None:
        kwargs["password"] = secret_value(cfg.password)
    tls = cfg.url.startswith("rediss://")
    if cfg.ssl_ca_certs and tls:
        kwargs["ssl_ca_certs"] = cfg.ssl_ca_certs
    if cfg.mode == "cluster":
        seeds = [ClusterNode(*_address(a)) for a in cfg.cluster_nodes]
        return RedisCluster.from_url(cfg.url, startup_nodes=seeds or None, **kwargs)
    if cfg.mode == "sentinel":
        url = parse_url(cfg.url)  # scheme, database and credentials; the sentinels say where the primary is
        on_sentinels = {k: v for k, v in kwargs.items() if k not in ("username", "password")}
        if tls:
            on_sentinels["ssl"] = kwargs["ssl"] = True
        if cfg.sentinel_password is not None:
            on_sentinels["password"] = secret_value(cfg.sentinel_password)
        for k in ("db", "username", "password"):
            if k in url:
                kwargs.setdefault(k, url[k])
        sentinel = Sentinel([_address(a) for a in cfg.sentinels], sentinel_kwargs=on_sentinels, **kwargs)
        return sentinel.master_for(cfg.sentinel_service, redis_class=SentinelRedis)
    return aioredis.Redis.from_url(cfg.url, **kwargs)


async def ensure_topics(settings: Settings, names: list[str] | None = None, partitions: int | None = None) -> None:
    """Create the pipeline's topics (or `names`) if missing, all with the same partition count, replicated as
    `topics.replication` says for the cluster's brokers. Raises the cluster's error when it refuses one."""
    topics = settings.topics
    names = names or [
        topics.vectors, topics.frames, topics.alerts, topics.scores,
        topics.deadletter, topics.model_updates, topics.control,
    ]  # fmt: skip
    admin = AIOKafkaAdminClient(**aiokafka_kwargs(settings.kafka))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [n for n in dict.fromkeys(names) if n not in existing]
        if not missing:
            return
        factor, min_insync = topics.replication(len((await admin.describe_cluster())["brokers"]))
        configs = {"max.message.bytes": str(settings.kafka.max_message_bytes), "min.insync.replicas": str(min_insync)}
        new = [NewTopic(n, partitions or topics.partitions, factor, topic_configs=configs) for n in missing]
        response = await admin.create_topics(new)
    finally:
        await admin.close()
    # The response carries each topic's outcome; aiokafka raises none of them. Existing: another client was first.
    for name, code, *message in response.topic_errors:  # v0 responses carry no message
        if code not in (NoError.errno, TopicAlreadyExistsError.errno):
            reason = message[0] if message else "no reason given"
            raise for_code(code)(f"topic {name!r} ({factor} copies, {min_insync} in sync): {reason}")


async def read_records(
    settings: Settings,
    topic: str,
    until: Callable[[list[Any]], bool],
    timeout_s: float = 90.0,
    max_records: int = 5000,
) -> list[Any]:
    """Records of `topic` from its beginning until `until(records)` holds or `timeout_s` passes (no group).

    For tools that join a run's output with its ground truth (the demo, benchmarks, tests).
    """
    consumer = AIOKafkaConsumer(topic, auto_offset_reset="earliest", **aiokafka_kwargs(settings.kafka))
    await consumer.start()
    records: list[Any] = []
    deadline = time.monotonic() + timeout_s
    try:
        while not until(records) and time.monotonic() < deadline:
            for part in (await consumer.getmany(timeout_ms=500, max_records=max_records)).values():
                records.extend(part)
    finally:
        await consumer.stop()
    return records


async def send_json(settings: Settings, topic: str, key: str, message: Any) -> None:
    """Produce one keyed JSON message on its own producer and wait for the broker's ack (tools, the agent)."""
    await ensure_topics(settings, [topic])
    async with kafka_producer(settings.kafka) as producer:
        await producer.send_and_wait(topic, key=key.encode(), value=orjson.dumps(message))


async def offset_ranges(
    consumer: AIOKafkaConsumer, topic: str, since_ms: int | None, last_n: int | None
) -> dict[TopicPartition, tuple[int, int]]:
    """Per partition [start, end): end is the current end offset, start from time and/or count ({} if the
    cluster does not know the topic yet)."""
    # The consumer's own metadata covers only topics it already tracks; ask the cluster for all of them.
    parts = (await consumer._client.fetch_all_metadata()).partitions_for_topic(topic)
    if not parts:
        return {}
    tps = [TopicPartition(topic, p) for p in sorted(parts)]
    begin, end = await consumer.beginning_offsets(tps), await consumer.end_offsets(tps)
    start = dict(begin)
    if since_ms is not None:
        found = await consumer.offsets_for_times({tp: since_ms for tp in tps})
        for tp in tps:
            start[tp] = max(start[tp], found[tp].offset if found.get(tp) is not None else end[tp])
    if last_n is not None:
        for tp in tps:
            start[tp] = max(start[tp], end[tp] - last_n)
    return {tp: (start[tp], end[tp]) for tp in tps}
