"""ThresholdStore against the real Redis: settings changes start fresh, bad calibration is refused, a source
does not learn while an incident is open on it, and a stuck threshold is reported."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import numpy as np
import pytest

from stream_app.judging.store import ThresholdStore
from stream_app.judging.thresholds import CalibrationError
from stream_app.ops.connections import redis_client
from stream_app.settings import Settings

pytestmark = pytest.mark.integration

CAL = np.random.default_rng(0).exponential(size=3000)


@pytest.fixture
async def make_store(make_settings: Callable[..., Settings]) -> AsyncIterator[Callable[..., ThresholdStore]]:
    s = make_settings()
    clients = []

    def make(**threshold_overrides: object) -> ThresholdStore:
        clients.append(redis_client(s.redis))
        cfg = s.thresholds.model_copy(update=threshold_overrides)
        return ThresholdStore(clients[-1], cfg, s.incidents, s.redis.key_prefix)

    yield make
    await make().clear()
    for c in clients:
        await c.aclose()


def events(seed: int, n: int = 256, offset: float = 0.0) -> tuple[list[str], np.ndarray, list[str]]:
    x = np.random.default_rng(seed).exponential(size=n) + offset
    return ["press-1"] * n, x, [f"sensor.vectors:0:{seed * 10_000 + i}" for i in range(n)]


async def test_a_settings_change_starts_from_calibration_instead_of_failing_every_batch(make_store) -> None:
    spot = make_store()
    for b in range(3):
        await spot.judge("m", "v1", CAL, *events(b))
    for changed in (make_store(mode="quantile"), make_store(risk=1e-4)):
        verdicts = await changed.judge("m", "v1", CAL, *events(7))  # used to raise: state for another mode
        assert len(verdicts) == 256
        state = (await changed.states("m", "v1", ["press-1"]))["press-1"].threshold
        assert state.mode == changed.threshold_cfg.mode and state.count <= 256
    assert spot.key("m", "v1", "s") != make_store(risk=1e-4).key("m", "v1", "s")
    assert spot.key("m", "v1", "s") == make_store().key("m", "v1", "s")


@pytest.mark.parametrize("calibration", [None, np.array([]), np.array([1.0, np.nan]), np.array([1.0, np.inf])])
async def test_a_version_with_missing_or_non_finite_calibration_is_refused_by_a_clear_exception(
    make_store, calibration
) -> None:
    store = make_store()
    with pytest.raises(CalibrationError, match="m version v9"):
        store.initial("m", "v9", calibration)
    with pytest.raises(CalibrationError, match="m version v9"):
        await store.judge("m", "v9", calibration, *events(1))


async def test_anomalies_inside_an_incident_do_not_teach_the_threshold(make_store) -> None:
    store = make_store()
    for b in range(4):
        await store.judge("m", "v1", CAL, *events(b))
    before = (await store.states("m", "v1", ["press-1"]))["press-1"]
    flood = [await store.judge("m", "v1", CAL, *events(10 + b, offset=10.0)) for b in range(8)]
    assert all(j.anomalous for j in flood[-1])  # the fault is still an alarm, batch after batch
    assert {j.incident_id for batch in flood[1:] for j in batch} == {flood[0][-1].incident_id}
    after = (await store.states("m", "v1", ["press-1"]))["press-1"].threshold
    # Only the events before the opening one counted; the fault's exceedances after it left the rate alone.
    opened_after = store.incident_cfg.open_k - 1  # the anomalies before the opening one still counted
    assert after.n_t - before.threshold.n_t < opened_after + 1
    assert after.censored.sum() - before.threshold.censored.sum() <= opened_after


async def test_a_stuck_threshold_is_reported_on_the_judgement_and_the_store(make_store) -> None:
    store = make_store(stuck_events=1000)
    for b in range(4):
        await store.judge("m", "v1", CAL, *events(b))
    verdicts = []
    for b in range(8):
        verdicts = await store.judge("m", "v1", CAL, *events(20 + b, offset=10.0))
    assert verdicts[-1].stuck
    rate = store.stuck[("m", "v1", "press-1")]  # what the worker turns into a gauge and a log line
    assert rate > store.threshold_cfg.stuck_factor * store.threshold_cfg.risk
