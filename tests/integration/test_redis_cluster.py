"""The threshold store and the worker on Redis beyond one node: a real 3-master Redis Cluster and a real
Sentinel group (deploy/redis_cluster.py, deploy/redis_sentinel.py), with a master SIGKILLed mid-stream.

The cluster demands AUTH and speaks only TLS (clients, replication, cluster bus); the sentinel group's servers
and sentinels each demand a password: the settings reach every node in both modes."""

from __future__ import annotations

import asyncio
import re
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from pydantic import SecretStr
from redis.crc import key_slot
from redis.exceptions import RedisClusterException, RedisError

from deploy.redis_cluster import Access, RedisCluster, wait_replicated
from deploy.redis_sentinel import RedisSentinel
from deploy.secured import write_tls
from stream_app.console.live import read_redis_states
from stream_app.judging.store import ThresholdStore
from stream_app.ops.connections import ensure_topics, redis_client
from stream_app.ops.drills import SOURCES, Drill, publish_tiny_model
from stream_app.ops.processes import worker_ports
from stream_app.settings import Route, Settings
from tests.servers import started

pytestmark = pytest.mark.integration

CAL = np.random.default_rng(0).exponential(size=3000)
MANY = [f"line-{i // 8}/press-{i % 8}" for i in range(64)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    state = tmp_path_factory.mktemp("redis-cluster")
    own = RedisCluster(state, Access(password="cluster-pw", tls=write_tls(state / "tls", "unused")))
    with started(own, "the Redis Cluster"):
        yield own


def on_cluster(settings: Settings, cluster: RedisCluster) -> Settings:
    settings.redis.url, settings.redis.mode = cluster.url, "cluster"
    assert cluster.access.tls is not None and settings.redis.url.startswith("rediss://")
    settings.redis.password, settings.redis.ssl_ca_certs = SecretStr("cluster-pw"), str(cluster.access.tls.ca)
    return settings


def batch(seed: int, sources: list[str] = MANY, n: int = 256) -> tuple[list[str], np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    scores = rng.exponential(size=n)
    scores[::37] += 12.0  # a few anomalies, so incidents open too
    return [sources[i % len(sources)] for i in range(n)], scores, [f"t:{seed}:{i}" for i in range(n)]


def evals(cluster: RedisCluster, ports: list[int]) -> int:
    """EVAL/EVALSHA calls the servers on `ports` have run (their own count, not the client's)."""
    stats = "".join(cluster.cli(p, "INFO", "commandstats") for p in ports)
    return sum(int(n) for n in re.findall(r"cmdstat_eval(?:sha)?:calls=(\d+)", stats))


def keys_on(cluster: RedisCluster, port: int, prefix: str) -> int:
    return len(cluster.cli(port, "--scan", "--pattern", f"{prefix}:thr:*").split())


async def versions(client, store: ThresholdStore, model: str, version: str, sources: list[str]) -> dict[str, int]:
    found = {}
    for src in sources:
        v = await client.hget(store.key(model, version, src), "v")
        found[src] = int(v) if v is not None else 0
    return found


async def test_cluster_store_spreads_keys_over_masters_with_one_call_per_slot_and_judges_as_one_node(
    make_settings: Callable[..., Settings], cluster: RedisCluster
) -> None:
    single_cfg = make_settings()
    cluster_cfg = on_cluster(make_settings(), cluster)
    single, multi = redis_client(single_cfg.redis), redis_client(cluster_cfg.redis)
    s = cluster_cfg
    try:
        one = ThresholdStore(single, s.thresholds, s.incidents, single_cfg.redis.key_prefix)
        many = ThresholdStore(multi, s.thresholds, s.incidents, s.redis.key_prefix, slot_groups=s.redis.slot_groups)
        masters = cluster.masters()
        await many.judge("m", "v1", CAL, *batch(0))  # connections and the slot map, outside the count
        await one.judge("m", "v1", CAL, *batch(0))
        slots = {key_slot(many.key("m", "v1", src).encode()) for src in MANY}
        assert len(slots) == s.redis.slot_groups == 16

        before, trips = evals(cluster, masters), many.round_trips
        for b in range(1, 9):
            assert await many.judge("m", "v1", CAL, *batch(b)) == await one.judge("m", "v1", CAL, *batch(b))
        calls = evals(cluster, masters) - before
        assert calls == many.round_trips - trips == 8 * len(slots), "one script call per slot touched, per batch"
        assert many.conflicts == 0

        per_master = {port: keys_on(cluster, port, s.redis.key_prefix) for port in masters}
        assert len(masters) == 3 and all(per_master.values()), f"keys on every master: {per_master}"
        assert sum(per_master.values()) == len(MANY)

        states_one = await one.states("m", "v1", MANY)
        states_many = await ThresholdStore(multi, s.thresholds, s.incidents, s.redis.key_prefix).states("m", "v1", MANY)
        assert {k: st.dumps() for k, st in states_many.items()} == {k: st.dumps() for k, st in states_one.items()}
        assert len(states_many) == len(MANY)
        console = await read_redis_states(multi, s.redis.key_prefix, s)
        assert set(console) == set(MANY)

        rival = ThresholdStore(multi, s.thresholds, s.incidents, s.redis.key_prefix)  # another worker, same keys
        verdicts = await asyncio.gather(*(st.judge("m", "v1", CAL, *batch(b)) for b, st in [(20, many), (21, rival)]))
        learned = sum(1 for vs in verdicts for v in vs if not v.anomalous)
        after = await many.states("m", "v1", MANY)
        assert (
            sum(st.threshold.count for st in after.values()) - sum(st.threshold.count for st in states_many.values())
            == learned
        ), "no update lost between two writers on the cluster"

        assert await many.clear("m") == len(MANY)
        assert all(keys_on(cluster, port, s.redis.key_prefix) == 0 for port in masters), "clear() reaches every master"
    finally:
        await single.aclose()
        await multi.aclose()


def cluster_worker_settings(make_settings: Callable[..., Settings], cluster: RedisCluster) -> Settings:
    s = on_cluster(make_settings(routes=[Route(pattern="line-*", model="sensors")]), cluster)
    s.redis.socket_timeout_s, s.redis.slot_groups = 2.0, 8  # not the default: the worker must follow the setting
    s.recovery.retry_max_s, s.recovery.probe_interval_s, s.recovery.revoke_wait_s = 3.0, 1.0, 5.0
    s.batching.max_wait_ms = 20
    return s


def metric(port: int, name: str, labels: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    found = re.search(rf"^{name}\{{{re.escape(labels)}\}} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


async def test_worker_on_the_cluster_loses_no_verdict_and_keeps_thresholds_when_a_master_dies(
    make_settings: Callable[..., Settings], cluster: RedisCluster, tmp_path: Path
) -> None:
    settings = cluster_worker_settings(make_settings, cluster)
    publish_tiny_model(settings, 4)
    await ensure_topics(settings)
    client = redis_client(settings.redis)
    store = ThresholdStore(client, settings.thresholds, settings.incidents, settings.redis.key_prefix,
                           slot_groups=settings.redis.slot_groups)  # fmt: skip
    drill = Drill(settings, None, rate=100.0, n_features=4, log_dir=tmp_path)
    drill.start_worker()
    try:
        async with drill:
            await drill.wait_consuming(1)
            deadline = time.monotonic() + 60
            while min((await versions(client, store, "sensors", "0001", list(SOURCES))).values()) < 3:
                assert time.monotonic() < deadline, "the worker never wrote thresholds"
                await asyncio.sleep(0.5)

            slot = key_slot(store.key("sensors", "0001", SOURCES[0]).encode())
            victim = cluster.master_of_slot(slot)
            held = [
                s
                for s in SOURCES
                if cluster.master_of_slot(key_slot(store.key("sensors", "0001", s).encode())) == victim
            ]
            before = await versions(client, store, "sensors", "0001", held)
            counts = {s: st.threshold.count for s, st in (await store.states("sensors", "0001", held)).items()}
            await asyncio.to_thread(wait_replicated, victim, cluster.access)  # the snapshot survives the kill
            fault = drill.begin("SIGKILL the master of threshold keys")
            assert cluster.kill_master(slot) == victim
            took = await asyncio.to_thread(cluster.wait_failover, slot, victim)
            drill.end(fault)
            mid = await versions(client, store, "sensors", "0001", held)  # a reset would show here: ~0
            counts_mid = {s: st.threshold.count for s, st in (await store.states("sensors", "0001", held)).items()}
            await asyncio.sleep(3)  # traffic on, through the promoted replica
            await drill.settle(fault)
            ports = worker_ports(settings)
            redis_retries = metric(ports[0], "linewatch_retries_total", 'cause="redis"')
            pipeline_retries = metric(ports[0], "linewatch_retries_total", 'cause="pipeline"')
            counted = await drill.finish()
        after = await versions(client, store, "sensors", "0001", held)
        counts_after = {s: st.threshold.count for s, st in (await store.states("sensors", "0001", held)).items()}
    finally:
        await client.aclose()
    print(f"failover {took:.1f} s; {counted.events_in} events, {counted.duplicates} duplicates; "
          f"retries redis {redis_retries:.0f}, pipeline {pipeline_retries:.0f}")  # fmt: skip
    assert counted.events_in > 0 and counted.lost == [], f"{len(counted.lost)} offsets without a verdict"
    assert counted.inconsistent == []
    assert drill.unexpected_exits() == [], "the worker must not exit"
    assert redis_retries >= 1 and pipeline_retries == 0, "the failover surfaces as retried batches, cause redis"
    assert all(mid[s] >= before[s] for s in held), f"no state lost in the failover: {before} -> {mid}"
    assert all(counts_mid[s] >= counts[s] for s in held), "thresholds keep what they learned, not recalibrated"
    assert all(after[s] > mid[s] and counts_after[s] > counts_mid[s] for s in held), "and go on learning"


@pytest.fixture
def sentinel_group(tmp_path: Path) -> Iterator[RedisSentinel]:
    own = RedisSentinel(tmp_path / "sentinel", access=Access(password="server-pw"), sentinel_password="sentinel-pw")
    with started(own, "the Redis Sentinel group"):
        yield own


async def test_store_through_sentinel_follows_the_promoted_replica(
    make_settings: Callable[..., Settings], sentinel_group: RedisSentinel
) -> None:
    settings = make_settings()
    settings.redis.mode, settings.redis.sentinels = "sentinel", sentinel_group.addresses
    settings.redis.sentinel_service, settings.redis.socket_timeout_s = sentinel_group.service, 2.0
    settings.redis.password, settings.redis.sentinel_password = SecretStr("server-pw"), SecretStr("sentinel-pw")
    client = redis_client(settings.redis)
    s = settings
    store = ThresholdStore(client, s.thresholds, s.incidents, s.redis.key_prefix, slot_groups=s.redis.slot_groups)
    sources = MANY[:16]
    try:
        for b in range(5):
            await store.judge("m", "v1", CAL, *batch(b, sources))
        assert store.round_trips == 5, "one script call per batch through Sentinel, as on one server"
        before = await versions(client, store, "m", "v1", sources)
        assert min(before.values()) == 5
        await asyncio.to_thread(wait_replicated, sentinel_group.master(), sentinel_group.access)
        old = sentinel_group.kill_master()
        failover = asyncio.create_task(asyncio.to_thread(sentinel_group.wait_failover, old))
        failed, deadline = 0, time.monotonic() + 30
        for b in range(5, 10):  # judged through the failover as the worker does: a failed batch is retried
            while True:
                try:
                    await store.judge("m", "v1", CAL, *batch(b, sources))
                    break
                except (RedisError, RedisClusterException):
                    failed += 1
                    assert time.monotonic() < deadline, "judging did not resume on the promoted replica"
                    await asyncio.sleep(0.2)
        after = await versions(client, store, "m", "v1", sources)
        took = await failover
    finally:
        await client.aclose()
    print(f"sentinel failover {took:.1f} s; {failed} failed batch attempts")
    assert sentinel_group.master() != old
    assert all(after[src] >= before[src] + 5 for src in sources), f"versions continue: {before} -> {after}"
