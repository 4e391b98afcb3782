"""SPOT judges every source of a batch in one numpy pass (`thresholds.judge_many`); a source's verdicts and state
must not depend on which other sources share its batch."""

from __future__ import annotations

import numpy as np
import pytest

from stream_app.judging import thresholds
from stream_app.judging.thresholds import SpotState
from stream_app.settings import ThresholdSettings


def same_state(a: SpotState, b: SpotState) -> None:
    da, db = thresholds.to_dict(a), thresholds.to_dict(b)
    assert da.keys() == db.keys()
    for key in da:
        if isinstance(da[key], float):
            assert da[key] == pytest.approx(db[key], rel=1e-9, abs=1e-12), key
        else:
            assert da[key] == db[key], key


def batch(rng: np.random.Generator, sources: int) -> tuple[list[np.ndarray], list[np.ndarray | None]]:
    """Scores of each source: lengths from 0 to a few hundred, some with fault bursts, NaNs or learn masks."""
    xs, learns = [], []
    for _ in range(sources):
        n = int(rng.choice([0, 1, 3, 4, 17, 64, 300]))
        x = rng.exponential(size=n)
        if rng.random() < 0.3:
            x[rng.random(n) < rng.uniform(0.05, 0.5)] += rng.uniform(2.0, 20.0)
        if rng.random() < 0.1 and n:
            x[rng.integers(n)] = np.nan
        xs.append(x)
        learns.append(rng.random(n) < 0.5 if rng.random() < 0.3 else None)
    return xs, learns


@pytest.mark.parametrize("risk,horizon", [(1e-3, 100_000), (1e-2, 1000), (1e-4, 100)])
@pytest.mark.parametrize("passes", [thresholds.MAX_PASSES, 1])  # 1: a wrong first guess keeps a settled prefix
def test_a_source_judged_with_others_is_judged_as_alone(risk: float, horizon: int, passes: int, monkeypatch) -> None:
    monkeypatch.setattr(thresholds, "MAX_PASSES", passes)
    cfg = ThresholdSettings(risk=risk, horizon=horizon)
    rng = np.random.default_rng(7)
    start = thresholds.initial_state(cfg, rng.exponential(size=2000))
    together: list = [start] * 9
    alone: list = [start] * 9
    for _ in range(25):
        xs, learns = batch(rng, 9)
        judged = thresholds.judge_many(cfg, together, xs, learns)
        for s, (x, learn) in enumerate(zip(xs, learns, strict=True)):
            thr, flags, state = judged[s]
            thr1, flags1, state1 = thresholds.judge(cfg, alone[s], x, learn)
            assert flags.tolist() == flags1.tolist()
            np.testing.assert_allclose(thr, thr1, rtol=1e-12)
            same_state(state, state1)
            together[s], alone[s] = state, state1
    assert sum(st.peaks.size for st in together) > 9 * start.peaks.size  # the batches added peaks


@pytest.mark.parametrize("passes", [thresholds.MAX_PASSES, 1])
def test_long_rows_and_unsettled_faults_are_judged_in_passes(passes: int, monkeypatch) -> None:
    """A row past 20 horizons is judged in chunks, and a source that turns faulty mid-chunk re-judges its verdicts
    (with one pass allowed, a wrong guess keeps its settled prefix): judged together or alone, they agree."""
    monkeypatch.setattr(thresholds, "MAX_PASSES", passes)
    cfg = ThresholdSettings(risk=1e-2, horizon=100)  # chunks of 2,000 scores
    rng = np.random.default_rng(3)
    start = thresholds.initial_state(cfg, rng.exponential(size=500))
    faults = rng.exponential(size=4500)
    faults[3900:] = np.where(rng.random(600) < 0.3, rng.uniform(5.0, 30.0, size=600), faults[3900:])  # a fault line
    xs = [faults, rng.exponential(size=2500), rng.exponential(size=5)]
    judged = thresholds.judge_many(cfg, [start] * 3, xs, [None] * 3)
    for x, (thr, flags, state) in zip(xs, judged, strict=True):
        thr1, flags1, state1 = thresholds.judge(cfg, start, x, None)
        assert flags.tolist() == flags1.tolist()
        np.testing.assert_allclose(thr, thr1, rtol=1e-12)
        same_state(state, state1)
    assert thresholds.faulty(judged[0][2].n_c, judged[0][2].n_e)  # the counts depended on the verdicts


def test_an_empty_row_leaves_the_state_as_it_was() -> None:
    cfg = ThresholdSettings()
    start = thresholds.initial_state(cfg, np.random.default_rng(0).exponential(size=2000))
    (thr, flags, state), _ = thresholds.judge_many(cfg, [start, start], [np.zeros(0), np.ones(3)], [None, None])
    assert thr.size == flags.size == 0
    assert thresholds.dumps(state) == thresholds.dumps(start)


def test_a_state_stores_the_arrays_it_holds() -> None:
    """A batch that adds no peak hands the previous state's encoded arrays on; one that adds a peak encodes anew."""
    cfg = ThresholdSettings()
    state = thresholds.initial_state(cfg, np.random.default_rng(0).exponential(size=2000))
    thresholds.dumps(state)
    quiet = thresholds.judge(cfg, state, np.array([0.1, 0.2]))[2]
    assert quiet.peaks is state.peaks
    peak = thresholds.judge(cfg, quiet, np.array([0.1, 5.0, 0.1]))[2]
    assert peak.peaks.size == state.peaks.size + 1
    for st in (quiet, peak):
        assert thresholds.loads(thresholds.dumps(st)).peaks.tolist() == st.peaks.tolist()
