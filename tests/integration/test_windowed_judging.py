"""A windowed model judged through the real Redis: each source's last rows travel in its state, in the same
compare-and-set, so batches, other workers and cold caches all score as one pass over each source's sequence."""

from __future__ import annotations

import asyncio
import itertools

import numpy as np
import pytest

from models import RVAEScorer
from stream_app.judging.history import Sequences
from stream_app.judging.store import ThresholdStore
from tests.integration.test_threshold_store import settings, stores

__all__ = ["settings", "stores"]  # fixtures

W = 4
SOURCES = ["line-1/a", "line-1/b", "line-2/a"]


def sensor_sequence(n: int, seed: int) -> np.ndarray:
    """One source's time-ordered 4-sensor rows: two smooth drivers mixed, plus noise (raw units)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) + 97 * seed
    drivers = np.stack([np.sin(t / 9.0), np.cos(t / 23.0)], 1) + 0.05 * rng.normal(size=(n, 2))
    mix = np.array([[3.0, 0.5, 2.0, 1.0], [0.2, 1.0, -1.0, 0.5]])
    return (drivers @ mix + 0.05 * rng.normal(size=(n, 4)) + [100, 2, 5, 30]).astype(np.float32)


@pytest.fixture(scope="module")
def scorer() -> RVAEScorer:
    s = RVAEScorer(n_features=4, window=W, n_layers=1, hidden=16, latent=3, device="cpu")
    s.fit(np.concatenate([sensor_sequence(600, seed) for seed in range(3)]), epochs=3)
    return s


def interleaved(sequences: dict[str, np.ndarray]) -> tuple[list[str], np.ndarray, list[str]]:
    """Every source's rows, round robin (each source in its own order), with offsets as event keys."""
    n = len(next(iter(sequences.values())))
    sources = [src for i in range(n) for src in sequences]
    rows = np.stack([sequences[src][i] for i in range(n) for src in sequences])
    return sources, rows, [f"sensor.vectors/0/{i}" for i in range(len(sources))]


def scoring(scorer: RVAEScorer):
    async def score(pairs):
        return await asyncio.to_thread(scorer.score_sequences, pairs)

    return score


async def judge_in_batches(store: ThresholdStore, scorer: RVAEScorer, sources, rows, keys, bounds) -> list:
    verdicts, calls = [], []
    for lo, hi in itertools.pairwise(bounds):
        windows = Sequences(rows[lo:hi], scoring(scorer), scorer.window)
        verdicts += await store.judge("m", "v1", scorer.calibration_scores, sources[lo:hi], None, keys[lo:hi], windows)
        calls.append(windows.calls)
    return verdicts, calls


def assert_one_pass(verdicts, sources, sequences, scorer) -> None:
    for src, seq in sequences.items():
        got = [v.score for v, s in zip(verdicts, sources, strict=True) if s == src]
        np.testing.assert_allclose(got, scorer.score(seq[: len(got)]), rtol=1e-5, atol=1e-6)


async def test_windowed_batches_cost_one_round_trip_each_and_score_as_one_pass(stores, scorer) -> None:
    sequences = {src: sensor_sequence(40, seed) for seed, src in enumerate(SOURCES)}
    sources, rows, keys = interleaved(sequences)
    store = stores()
    verdicts, calls = await judge_in_batches(store, scorer, sources, rows, keys, [0, 1, 7, 30, 64, 120])
    assert store.round_trips == 5 and store.conflicts == 0 and calls == [1] * 5  # steady state: nothing extra
    assert_one_pass(verdicts, sources, sequences, scorer)


async def test_a_cold_cache_and_another_worker_rescore_with_the_stored_history(stores, scorer) -> None:
    sequences = {src: sensor_sequence(60, 10 + seed) for seed, src in enumerate(SOURCES)}
    sources, rows, keys = interleaved(sequences)
    first, second = stores(), stores()
    verdicts, _ = await judge_in_batches(first, scorer, sources, rows, keys, [0, 50, 90])
    # Another worker (a cold cache, as after a restart or a partition move) continues: its first batch conflicts,
    # gets the stored states back and scores again after the stored rows.
    more, calls = await judge_in_batches(second, scorer, sources, rows, keys, [90, 120, 150])
    assert second.conflicts == len(SOURCES) and calls == [2, 1]
    # ...and the first worker's stale cache meets the second's writes the same way.
    last, _ = await judge_in_batches(first, scorer, sources, rows, keys, [150, 180])
    assert_one_pass(verdicts + more + last, sources, sequences, scorer)
    states = await second.states("m", "v1", SOURCES)
    for src, seq in sequences.items():
        np.testing.assert_array_equal(states[src].history.rows(), seq[-(W - 1) :])  # type: ignore[union-attr]


async def test_a_redelivered_batch_replays_its_verdicts_and_keeps_the_history(stores, scorer) -> None:
    sequences = {src: sensor_sequence(30, 20 + seed) for seed, src in enumerate(SOURCES)}
    sources, rows, keys = interleaved(sequences)
    store = stores()
    first, _ = await judge_in_batches(store, scorer, sources, rows, keys, [0, 30, 60])
    # A crash after judging: the next owner reads again from an earlier offset, in other batch boundaries.
    again, _ = await judge_in_batches(stores(), scorer, sources, rows, keys, [30, 75, 90])
    assert again[:30] == first[30:]
    assert_one_pass(first[:30] + again, sources, sequences, scorer)
