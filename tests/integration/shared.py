"""Helpers several integration test modules share: stacks of their own, drill settings and verdict checks."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from deploy.localstack import LocalStack, free_port
from stream_app.ops.connections import aiokafka_kwargs, ensure_topics
from stream_app.ops.drills import Drill, Tally, publish_tiny_model
from stream_app.settings import Route, Settings, TopicSettings
from tests.servers import started


@contextmanager
def own_stack(state_dir: Path, brokers: int = 1, kind: type[LocalStack] = LocalStack) -> Iterator[LocalStack]:
    """A stack on free ports (a `kind` of LocalStack) for tests whose faults would hurt other tests, or that need
    another kind; the test fails with the reason when it cannot start."""
    stack = kind.on_free_ports(
        state_dir,
        Path(os.environ.get("LINEWATCH_STACK__CACHE_DIR", Path.home() / ".cache" / "linewatch")),
        brokers=brokers,
    )
    with started(stack, f"the {kind.__name__} of {brokers} Kafka node(s)"):
        yield stack


def chaos_settings(stack: LocalStack, tmp_path: Path, partitions: int = 4) -> Settings:
    """Settings for a drill on `stack`: own topics and keys, short timeouts so faults show within a test."""
    tag = f"chaos-{uuid.uuid4().hex[:8]}"
    s = Settings(
        app_id=f"lw-{tag}",
        topics=TopicSettings().prefixed(tag, partitions=partitions),
        routes=[Route(pattern="line-*", model="sensors")],
        registry_dir=tmp_path / "registry",
        state_dir=tmp_path / "state",
        metrics_port=free_port(),  # every worker starts here: the second takes the next free port
        worker_processes=1,  # each worker a single process, as the drills count them
    )
    s.kafka.bootstrap, s.redis.url, s.redis.key_prefix = stack.bootstrap, stack.redis_url, tag
    s.kafka.request_timeout_ms = 5000  # a stopped broker fails a batch's acks within the test's time
    s.kafka.session_timeout_ms, s.kafka.heartbeat_interval_ms = 6000, 2000
    s.redis.socket_timeout_s = 2.0
    s.recovery.retry_max_s, s.recovery.probe_interval_s, s.recovery.revoke_wait_s = 3.0, 1.0, 5.0
    s.batching.max_wait_ms = 20
    return s


async def drill_settings(stack: LocalStack, tmp_path: Path, features: int) -> Settings:
    """`chaos_settings` with the drill's topics created and a tiny model of `features` sensors in production."""
    settings = chaos_settings(stack, tmp_path)
    publish_tiny_model(settings, features)
    await ensure_topics(settings)
    return settings


def assert_nothing_lost(counted: Tally, drill: Drill) -> None:
    """Every input offset has a verdict, copies agree, and no worker exited by itself; prints the figures."""
    assert counted.events_in > 0
    assert counted.lost == [], f"{len(counted.lost)} of {counted.events_in} input offsets have no verdict"
    assert counted.inconsistent == [], "a redelivered event must get the same verdict"
    assert counted.incident_mismatches == [], "incident events must be those the verdict sequence implies"
    assert drill.unexpected_exits() == [], "no worker may exit by itself"
    print(
        f"events in {counted.events_in}, verdicts out {counted.verdicts_out}, duplicates {counted.duplicates}; "
        + "; ".join(
            f"{f.name}: recovery {counted.recovery_s(f, until=nxt.started if nxt else None):.1f} s"
            for f, nxt in zip(drill.faults, [*drill.faults[1:], None], strict=True)
        )
    )


async def topic_replication(settings: Settings, topic: str, timeout_s: float = 15.0) -> tuple[set[int], int]:
    """The replica counts of `topic`'s partitions and its min.insync.replicas, as the cluster reports them (a
    broker may not know a topic created a moment ago yet: asked again until one answers)."""
    admin = AIOKafkaAdminClient(**aiokafka_kwargs(settings.kafka))
    await admin.start()
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            (described,) = await admin.describe_topics([topic])
            (configs,) = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, topic, {"min.insync.replicas": None})]
            )
            ((code, message, *_, entries),) = configs.resources
            if (code == 0 and described["error_code"] == 0) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
    finally:
        await admin.close()
    assert code == 0 and described["error_code"] == 0, f"{topic}: {message or described}"
    (min_insync,) = [int(value) for name, value, *_ in entries if name == "min.insync.replicas"]
    return {len(p["replicas"]) for p in described["partitions"]}, min_insync
