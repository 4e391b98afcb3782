"""ThresholdStore against the real Redis: one round trip per batch, no lost updates, restarts, versions."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import numpy as np
import pytest

from stream_app.judging.store import ARGS_PER_KEY, MAX_BOUNCES, ThresholdStore
from stream_app.ops.connections import redis_client
from stream_app.settings import Settings

pytestmark = pytest.mark.integration

SOURCES = [f"line-1/press-{i}" for i in range(8)]


@pytest.fixture
async def settings(make_settings: Callable[..., Settings]) -> AsyncIterator[Settings]:
    s = make_settings()
    yield s
    redis = redis_client(s.redis)
    await ThresholdStore(redis, s.thresholds, s.incidents, s.redis.key_prefix).clear()
    await redis.aclose()


@pytest.fixture
async def stores(settings: Settings) -> AsyncIterator[Callable[[], ThresholdStore]]:
    """Factory of stores, each with its own connection, like separate workers."""
    clients = []

    def make() -> ThresholdStore:
        clients.append(redis_client(settings.redis))
        return ThresholdStore(clients[-1], settings.thresholds, settings.incidents, settings.redis.key_prefix)

    yield make
    for c in clients:
        await c.aclose()


def batch(seed: int, n: int = 256, sources: list[str] = SOURCES) -> tuple[list[str], np.ndarray, list[str]]:
    gen = np.random.default_rng(seed)
    srcs = [sources[i % len(sources)] for i in range(n)]
    keys = [f"sensor.vectors:{seed}:{i}" for i in range(n)]
    return srcs, gen.exponential(size=n), keys


CAL = np.random.default_rng(0).exponential(size=3000)


async def count_absorbed(store: ThresholdStore, version: str = "v1", sources: list[str] = SOURCES) -> int:
    states = await store.states("m", version, sources)
    return sum(st.threshold.count for st in states.values())


async def test_one_round_trip_per_batch_in_the_steady_state(stores) -> None:
    store = stores()
    for b in range(20):
        verdicts = await store.judge("m", "v1", CAL, *batch(b))
        assert len(verdicts) == 256
    assert store.round_trips == 20
    assert store.conflicts == 0


async def test_verdicts_come_back_in_input_order_with_thresholds_and_severity(stores) -> None:
    store = stores()
    srcs, scores, keys = batch(1)
    scores[[3, 10]] = [1e6, np.nan]
    verdicts = await store.judge("m", "v1", CAL, srcs, scores, keys)
    assert [v.source for v in verdicts] == srcs
    assert [v.score for v in verdicts[:3]] == scores[:3].tolist()
    assert verdicts[3].anomalous and verdicts[10].anomalous
    assert verdicts[3].severity == pytest.approx(1e6 / verdicts[3].threshold)
    assert verdicts[10].severity == 1e6
    assert sum(v.anomalous for v in verdicts) <= 4
    assert await count_absorbed(store) == 256 - sum(v.anomalous for v in verdicts)


async def test_two_workers_on_the_same_sources_lose_no_update(stores) -> None:
    a, b = stores(), stores()
    n_batches = 25

    async def worker(store: ThresholdStore, seed: int) -> int:
        normal = 0
        for i in range(n_batches):
            verdicts = await store.judge("m", "v1", CAL, *batch(seed * 1000 + i, n=64, sources=SOURCES[:2]))
            normal += sum(not v.anomalous for v in verdicts)
            await asyncio.sleep(0)
        return normal

    sent_normal = sum(await asyncio.gather(worker(a, 1), worker(b, 2)))
    assert a.conflicts + b.conflicts > 0  # they did collide, and retried
    assert a.unsaved == b.unsaved == 0
    assert a.round_trips <= n_batches + a.conflicts and b.round_trips <= n_batches + b.conflicts
    assert await count_absorbed(a, sources=SOURCES[:2]) == sent_normal


async def test_a_dead_worker_at_the_head_of_a_write_queue_stops_blocking_after_a_few_bounces(stores) -> None:
    alive, dead = stores(), stores()
    normal = sum(not v.anomalous for v in await alive.judge("m", "v1", CAL, *batch(0)))
    key = alive.key("m", "v1", SOURCES[0])
    assert await dead._cas(keys=[key], args=[dead._token, 0, b"{}"]) != [1]  # loses, queues, then dies
    normal += sum(not v.anomalous for v in await alive.judge("m", "v1", CAL, *batch(1)))
    assert alive.conflicts == MAX_BOUNCES and alive.unsaved == 0
    assert await count_absorbed(alive) == normal


async def test_state_survives_a_restart(stores) -> None:
    first = stores()
    normal = 0
    for b in range(5):
        normal += sum(not v.anomalous for v in await first.judge("m", "v1", CAL, *batch(b)))
    before = await first.thresholds("m", "v1", SOURCES)
    assert await stores().thresholds("m", "v1", SOURCES) == before  # a new instance reads the same state
    cold = stores()
    normal += sum(not v.anomalous for v in await cold.judge("m", "v1", CAL, *batch(99)))
    assert cold.conflicts == len(SOURCES) and cold.round_trips == 2  # its cold cache costs one extra trip
    assert await count_absorbed(cold) == normal  # and it continued from the stored state, not calibration


async def test_a_new_model_version_starts_from_its_own_calibration(stores) -> None:
    store = stores()
    for b in range(3):
        await store.judge("m", "v1", CAL, *batch(b))
    v2_cal = CAL * 10.0
    verdicts = await store.judge("m", "v2", v2_cal, *batch(10))
    assert not any(v.anomalous for v in verdicts)  # v2 scores run 10x higher: v1's thresholds would flag them
    v1, v2 = await store.thresholds("m", "v1", SOURCES), await store.thresholds("m", "v2", SOURCES)
    assert all(v2[s] > 5 * v1[s] for s in SOURCES)
    assert await count_absorbed(store, "v2") == 256


async def test_a_flood_on_one_source_is_one_incident_across_batches(stores) -> None:
    store = stores()
    opened = []
    for b in range(4):
        srcs, scores, keys = batch(b)
        scores[[i for i, s in enumerate(srcs) if s == SOURCES[0]]] = 1e3
        verdicts = await store.judge("m", "v1", CAL, srcs, scores, keys)
        opened += [v.incident_id for v in verdicts if v.incident_event == "opened"]
        assert all(v.incident_id == opened[0] for v in verdicts if v.source == SOURCES[0] and v.incident_id)
    assert len(opened) == 1


async def test_a_batch_that_adds_no_peak_leaves_the_stored_arrays_alone(stores) -> None:
    """A source's peak window (field `a`, ~22 KB when full) is written only when a batch changes it; its counts
    (field `s`) every batch. What another worker reads is the whole state either way."""
    store, sent = stores(), []
    cas = store._compare_and_set

    async def recording(keys, args):
        sent.append(args[3::ARGS_PER_KEY])  # the arrays argument of each key
        return await cas(keys, args)

    store._compare_and_set = recording  # type: ignore[method-assign]
    src = ["line-1/press-1"]
    await store.judge("m", "v1", CAL, src * 3, np.array([0.1, 0.2, 0.3]), ["a0", "a1", "a2"])  # a new key
    await store.judge("m", "v1", CAL, src * 2, np.array([0.1, 0.2]), ["b0", "b1"])  # below t: no peak
    await store.judge("m", "v1", CAL, src * 3, np.array([0.1, 5.0, 0.1]), ["c0", "c1", "c2"])  # a peak
    assert [len(a[0]) > 0 for a in sent] == [True, False, True]
    key = store.key("m", "v1", src[0])
    written = store._cache[key][1]
    assert (await stores().states("m", "v1", src))[src[0]] == written  # a cold reader gets the whole state
    assert written.threshold.peaks.size == store.initial("m", "v1", CAL).peaks.size + 1


async def test_a_state_stored_whole_is_read_and_then_stored_apart(stores) -> None:
    """Keys written by an earlier version hold the whole state in `s`: read as they are, split on the next write."""
    store = stores()
    src = "line-1/press-2"
    old = store._fresh("m", "v1", CAL)
    key = store.key("m", "v1", src)
    await store.redis.hset(key, mapping={"v": 3, "s": old.dumps()})
    assert (await store.states("m", "v1", [src]))[src] == old
    await stores().judge("m", "v1", CAL, [src] * 2, np.array([0.1, 0.2]), ["d0", "d1"])
    s, a = await store.redis.hmget(key, "s", "a")
    assert b'"peaks"' not in s and b'"peaks"' in a
    assert (await stores().states("m", "v1", [src]))[src].threshold.peaks.tolist() == old.threshold.peaks.tolist()


async def test_a_batch_writes_only_its_own_verdicts_and_the_ring_keeps_the_last_ones(settings) -> None:
    """Remembered batches live in a ring of fields: each write adds the newest over the oldest instead of sending
    all of them again, and a cold reader replays exactly the last `replay_batches`."""
    redis = redis_client(settings.redis)
    store = ThresholdStore(redis, settings.thresholds, settings.incidents, settings.redis.key_prefix, replay_batches=3)
    sent: list[list] = []
    cas = store._compare_and_set

    async def recording(keys, args):
        sent.append(args)
        return await cas(keys, args)

    store._compare_and_set = recording  # type: ignore[method-assign]
    src, first = "line-1/press-3", []
    try:
        for b in range(5):
            keys = [f"sensor.vectors/0/{10 * b + i}" for i in range(10)]
            first.append(await store.judge("m", "v1", CAL, [src] * 10, np.full(10, 0.5 + b / 100), keys))
        for b, args in enumerate(sent):
            field, value, pushed_out = args[4:7]
            assert field == f"r{b}" and value.count(b'"sensor.vectors/0/') == 10  # one batch, in its slot...
            assert pushed_out == (f"r{b - 3}" if b >= 3 else "")  # ...and the batch it pushes out of the ring
        assert sorted(await redis.hkeys(store.key("m", "v1", src))) == [b"a", b"r2", b"r3", b"r4", b"s", b"v"]
        cold = ThresholdStore(redis, settings.thresholds, settings.incidents, settings.redis.key_prefix,
                              replay_batches=3)  # fmt: skip
        remembered = (await cold.states("m", "v1", [src]))[src].recent
        assert [b.keys[0] for b in remembered] == ["sensor.vectors/0/20", "sensor.vectors/0/30", "sensor.vectors/0/40"]
        keys = [f"sensor.vectors/0/{20 + i}" for i in range(10)]
        assert await cold.judge("m", "v1", CAL, [src] * 10, np.full(10, 9.0), keys) == first[2]  # replayed
    finally:
        await redis.aclose()


@pytest.mark.parametrize(("writer", "reader"), [(4, 2), (2, 4), (3, 5)])
async def test_a_reader_with_another_ring_size_replays_the_newest_batches_in_order(settings, writer, reader) -> None:
    """`replay_batches` may change between restarts, or differ between workers during a rollout: the batch in
    flight when a worker stopped must still be replayed, not judged (and learned) twice."""
    redis = redis_client(settings.redis)
    prefix = settings.redis.key_prefix

    def store(ring: int) -> ThresholdStore:
        return ThresholdStore(redis, settings.thresholds, settings.incidents, prefix, replay_batches=ring)

    src, first = "line-1/press-5", []
    try:
        old = store(writer)
        for b in range(7):
            keys = [f"sensor.vectors/0/{10 * b + i}" for i in range(10)]
            first.append(await old.judge("m", "v1", CAL, [src] * 10, np.full(10, 0.5 + b / 100), keys))
        new = store(reader)
        state = (await new.states("m", "v1", [src]))[src]
        held = [int(b.keys[0].rsplit("/", 1)[1]) // 10 for b in state.recent]
        assert held == list(range(7 - min(writer, reader), 7)) and state.batches == 7
        for b in (6, 5):  # the newest two, redelivered: the same verdicts, nothing learned again
            keys = [f"sensor.vectors/0/{10 * b + i}" for i in range(10)]
            assert await new.judge("m", "v1", CAL, [src] * 10, np.full(10, 9.0), keys) == first[b]
        assert (await store(reader).states("m", "v1", [src]))[src].batches == 7
        keys = [f"sensor.vectors/0/{70 + i}" for i in range(10)]  # a new batch from the new worker, then the old
        await new.judge("m", "v1", CAL, [src] * 10, np.full(10, 0.6), keys)
        await store(writer).judge("m", "v1", CAL, [src] * 10, np.full(10, 0.6), [k + "x" for k in keys])
        state = (await store(writer).states("m", "v1", [src]))[src]
        held = [int(b.keys[0].rsplit("/", 1)[1].rstrip("x")) // 10 for b in state.recent]
        assert held == sorted(held) and held[-2:] == [7, 7] and state.batches == 9
    finally:
        await redis.aclose()
