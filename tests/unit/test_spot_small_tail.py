"""A tail of a few dozen peaks must not swing on a fault's first censored exceedances (a prior on the shape).

The scores are a real case, saved from the demo's pump line (`line-1/press-1`, seed 7, the default RVAE):
an offset fault at events 361-374 scores 1.1-1.7x the alert level. Without the prior, the tail's first
maximum-likelihood fit (33 peaks, a fault's first alarms censored among them) gave xi 0.65: the level rose
from 4.8 to 6.9 within two events, the rest of the fault was judged normal and learned, and the level ended
near 19, so later faults on that machine went unseen.
"""

from pathlib import Path

import numpy as np
import pytest
import redis.asyncio as aioredis

from stream_app.judging import gpd, incidents
from stream_app.judging.store import SourceState, ThresholdStore
from stream_app.settings import IncidentSettings, ThresholdSettings

CASE = np.load(Path(__file__).parent / "data" / "pump_line_scores.npz")


def levels_one_event_per_batch() -> np.ndarray:
    """The source's alert level at each event, judged as the worker does (incidents included), one per batch."""
    store = ThresholdStore(aioredis.Redis(), ThresholdSettings(), IncidentSettings(), "t")  # pure parts only
    state = SourceState(store.initial("m", "v", CASE["calibration"].astype(np.float64)), incidents.IncidentState())
    levels = []
    for i, x in enumerate(CASE["scores"].astype(np.float64)):
        state, (verdict,) = store._judge_source(state, "line-1/press-1", np.array([x]), [f"k{i}"])
        levels.append(verdict.threshold)
    return np.array(levels)


def test_a_fault_just_above_the_level_does_not_lift_it() -> None:
    levels = levels_one_event_per_batch()
    before = levels[360]
    assert CASE["fault"][361:375].all() and not CASE["fault"][375:].any()
    assert levels[361:].max() < 1.25 * before


def test_without_the_prior_the_same_fault_lifts_the_level(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpd, "XI_PRIOR_SD", 1e6)
    levels = levels_one_event_per_batch()
    assert levels[361:].max() > 2 * levels[360]
