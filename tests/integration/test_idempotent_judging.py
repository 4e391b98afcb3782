"""A batch judged again (a retry after a failed publish, a redelivery after a crash or a rebalance) gets the
verdicts of its first judgement, and the threshold state absorbs each event once."""

from __future__ import annotations

import numpy as np

from stream_app.judging.store import ThresholdStore
from tests.integration.test_threshold_store import CAL, SOURCES, batch, count_absorbed, settings, stores

__all__ = ["settings", "stores"]  # fixtures

SRC = "line-9/press-1"


def flagged_batch(flags: str, first: int = 0) -> tuple[list[str], np.ndarray, list[str]]:
    """One source's scores: 'T' far above any threshold, 'F' ordinary; keys from the event offsets."""
    scores = np.array([1e4 if f == "T" else 0.5 for f in flags])
    return [SRC] * len(flags), scores, [f"sensor.vectors/0/{first + i}" for i in range(len(flags))]


async def test_a_retried_batch_keeps_its_incident_opening(stores) -> None:
    store = stores()
    first = await store.judge("m", "v1", CAL, *flagged_batch("FTTTT"))
    assert [v.incident_event for v in first] == [None, None, None, "opened", None]
    again = await store.judge("m", "v1", CAL, *flagged_batch("FTTTT"))  # publish failed: the batch is retried
    assert again == first


async def test_a_redelivered_batch_keeps_its_incident_closing(stores) -> None:
    store = stores()
    await store.judge("m", "v1", CAL, *flagged_batch("TTTTT"))
    first = await store.judge("m", "v1", CAL, *flagged_batch("F" * 25, first=5))
    assert "closed" in [v.incident_event for v in first]
    assert await stores().judge("m", "v1", CAL, *flagged_batch("F" * 25, first=5)) == first  # another worker


async def test_a_redelivery_with_other_batch_boundaries_equals_one_clean_pass(stores, settings) -> None:
    """A crash after judging 2 batches; the next owner re-reads from the committed offset in bigger batches."""
    srcs, scores, keys = batch(7, n=300)
    scores[40:48] = 1e3  # an incident in the middle
    first = stores()
    seen = await first.judge("m", "v1", CAL, srcs[:100], scores[:100], keys[:100])
    seen += await first.judge("m", "v1", CAL, srcs[100:180], scores[100:180], keys[100:180])
    owner = stores()  # cold cache, as after a crash or a rebalance
    replayed = await owner.judge("m", "v1", CAL, srcs[:250], scores[:250], keys[:250])
    replayed += await owner.judge("m", "v1", CAL, srcs[250:], scores[250:], keys[250:])
    assert replayed[:180] == seen

    clean = ThresholdStore(owner.redis, settings.thresholds, settings.incidents, settings.redis.key_prefix + "-clean")
    once = []  # the same events judged once each, in the batches the two workers judged them in
    for lo, hi in [(0, 100), (100, 180), (180, 250), (250, 300)]:
        once += await clean.judge("m", "v1", CAL, srcs[lo:hi], scores[lo:hi], keys[lo:hi])
    assert replayed == once
    absorbed = sum(not v.anomalous for v in once)
    assert await count_absorbed(owner) == absorbed == await count_absorbed(clean)
    await clean.clear()


async def test_replayed_events_cost_no_extra_round_trip(stores) -> None:
    store = stores()
    args = batch(3, sources=SOURCES)
    await store.judge("m", "v1", CAL, *args)
    await store.judge("m", "v1", CAL, *args)
    assert store.round_trips == 2 and store.conflicts == 0
