"""Threshold math: GPD fit, SPOT calibration, the three modes, state serialisation. No servers."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from scipy import stats

from stream_app.judging import thresholds as T
from stream_app.judging.stored import frozen
from stream_app.settings import ThresholdSettings

MODES = ["spot", "quantile", "ewma"]


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def run_stream(cfg: ThresholdSettings, state: T.ThresholdState, x: np.ndarray, batch: int = 256):
    """Judge `x` in micro-batches like a worker; returns (anomalous flags, final state)."""
    _, flags, state = T.judge_stream(cfg, state, x, batch)
    return flags, state


@pytest.mark.parametrize("xi, sigma", [(0.3, 1.0), (0.0, 2.0), (-0.3, 0.5)])
def test_fit_gpd_recovers_known_shape_and_scale(xi: float, sigma: float) -> None:
    y = stats.genpareto.rvs(xi, scale=sigma, size=5000, random_state=rng(1))
    xi_hat, sigma_hat = T.fit_gpd(y)
    assert abs(xi_hat - xi) < 0.06
    assert sigma_hat == pytest.approx(sigma, rel=0.08)


def test_fit_gpd_with_few_excesses_falls_back_to_an_exponential_tail() -> None:
    assert T.fit_gpd(np.array([1.0, 2.0, 3.0])) == (0.0, 2.0)
    with pytest.raises(ValueError, match="positive excess"):
        T.fit_gpd(np.array([0.0, -1.0]))


@pytest.mark.parametrize("xi", [0.25, 0.0, -0.2])
def test_spot_threshold_is_the_gpd_tail_quantile(xi: float) -> None:
    t, sigma, q, n, n_peaks = 3.0, 1.5, 1e-3, 10_000, 200
    expected = t + stats.genpareto.isf(q * n / n_peaks, xi, scale=sigma)
    assert float(T.spot_threshold(t, xi, sigma, q, n, n_peaks)) == pytest.approx(expected, rel=1e-9)
    at_cap = t + stats.genpareto.isf(0.5, xi, scale=sigma)  # risk not rarer than exceeding t: never t itself
    assert float(T.spot_threshold(t, xi, sigma, 0.5, n, n_peaks)) == pytest.approx(at_cap, rel=1e-9)


@pytest.mark.parametrize("draw", ["exponential", "gamma"])
def test_spot_false_alarm_rate_on_normal_scores_is_close_to_the_risk(draw: str) -> None:
    cfg = ThresholdSettings(mode="spot", risk=1e-3)
    gen = rng(3)
    sample = (lambda n: gen.exponential(size=n)) if draw == "exponential" else (lambda n: gen.gamma(2.0, size=n))
    anomalous, state = run_stream(cfg, T.initial_state(cfg, sample(5000)), sample(200_000))
    rate = anomalous.mean()
    assert cfg.risk / 2 <= rate <= cfg.risk * 2, rate
    assert state.count == (~anomalous).sum()


def test_quantile_mode_false_alarm_rate_is_close_to_the_risk() -> None:
    cfg = ThresholdSettings(mode="quantile", risk=1e-3)
    gen = rng(4)
    anomalous, _ = run_stream(cfg, T.initial_state(cfg, gen.gamma(2.0, size=5000)), gen.gamma(2.0, size=100_000))
    assert cfg.risk / 2 <= anomalous.mean() <= cfg.risk * 2


def test_ewma_mode_is_mean_plus_k_sigma_and_follows_a_level_shift() -> None:
    cfg = ThresholdSettings(mode="ewma", ewma_alpha=0.01, ewma_k=4.0)
    gen = rng(5)
    cal = gen.normal(10.0, 1.0, size=5000)
    state = T.initial_state(cfg, cal)
    assert T.current_threshold(cfg, state) == pytest.approx(cal.mean() + 4 * cal.std())
    anomalous, state = run_stream(cfg, state, gen.normal(12.0, 1.0, size=3000))  # slow drift: 2 sigma up
    assert T.current_threshold(cfg, state) == pytest.approx(16.0, abs=0.3)
    assert anomalous[-1000:].mean() < 1e-3


@pytest.mark.parametrize("mode", ["quantile", "ewma"])  # SPOT counts them: tests/unit/test_spot_calibration.py
def test_anomalies_do_not_move_the_threshold(mode: str) -> None:
    cfg = ThresholdSettings(mode=mode)
    state = T.initial_state(cfg, rng(6).exponential(size=3000))
    _, state = run_stream(cfg, state, rng(7).exponential(size=1000))
    thr, anomalous, after = T.judge(cfg, state, np.array([1e6] * 500 + [np.nan, np.inf, -np.inf]))
    assert anomalous.all()
    assert after == state
    assert np.all(thr == T.current_threshold(cfg, state))


@pytest.mark.parametrize("mode", MODES)
def test_each_mode_flags_a_clear_anomaly_and_passes_normal_scores(mode: str) -> None:
    cfg = ThresholdSettings(mode=mode, risk=1e-3)  # ewma is not calibrated to risk: k=4 on a mildly skewed law
    state = T.initial_state(cfg, rng(8).gamma(16.0, size=3000))
    x = rng(9).gamma(16.0, size=2000)
    x[1000] = 100.0
    anomalous, state = run_stream(cfg, state, x)
    assert anomalous[1000]
    assert anomalous.sum() <= 6
    assert state.count == 2000 - anomalous.sum()


@pytest.mark.parametrize("mode", MODES)
def test_state_round_trips_through_dumps_and_loads(mode: str) -> None:
    cfg = ThresholdSettings(mode=mode)
    _, state = run_stream(cfg, T.initial_state(cfg, rng(10).exponential(size=3000)), rng(11).exponential(size=5000))
    again = T.loads(T.dumps(state))
    assert again == state
    assert T.current_threshold(cfg, again) == T.current_threshold(cfg, state)
    x = rng(12).exponential(size=500)
    assert np.array_equal(T.judge(cfg, again, x)[0], T.judge(cfg, state, x)[0])


@pytest.mark.parametrize("mode", MODES)
def test_judging_in_one_batch_or_in_pieces_gives_the_same_verdicts(mode: str) -> None:
    cfg = ThresholdSettings(mode=mode)
    state = T.initial_state(cfg, rng(13).exponential(size=3000))
    x = rng(14).exponential(size=3000)
    thr_all, an_all, end_all = T.judge(cfg, state, x)
    thr_a, an_a, mid = T.judge(cfg, state, x[:1234])
    thr_b, an_b, end = T.judge(cfg, mid, x[1234:])
    if mode == "spot":  # the tail refit waits for a batch's end: equal up to the refit timing
        assert np.allclose(np.concatenate([thr_a, thr_b]), thr_all, rtol=0.06)
        assert (np.concatenate([an_a, an_b]) != an_all).sum() <= 2
        assert end.n == pytest.approx(end_all.n) and end.n_t == pytest.approx(end_all.n_t)
        return
    assert np.allclose(np.concatenate([thr_a, thr_b]), thr_all)
    assert np.array_equal(np.concatenate([an_a, an_b]), an_all)
    assert end == end_all


def test_bad_inputs_name_what_was_expected() -> None:
    with pytest.raises(ValueError, match="empty"):
        T.initial_state(ThresholdSettings(), np.array([]))
    with pytest.raises(ValueError, match="finite"):
        T.initial_state(ThresholdSettings(), np.array([1.0, math.nan]))
    with pytest.raises(ValueError, match="no spread"):  # SPOT would judge every exceedance anomalous, for good
        T.initial_state(ThresholdSettings(), np.full(2000, 0.5))
    with pytest.raises(ValueError, match="no spread"):
        T.initial_state(ThresholdSettings(), np.array([1.0]))
    state = T.initial_state(ThresholdSettings(mode="ewma"), np.arange(10.0))
    with pytest.raises(ValueError, match="mode 'ewma'"):
        T.judge(ThresholdSettings(mode="spot"), state, np.ones(3))
    with pytest.raises(ValueError, match="threshold state"):
        T.loads(b'{"mode": "spot"}')
    with pytest.raises(ValueError, match="threshold state"):
        T.loads(b"not json")


def test_spot_limits_are_stored_only_when_some_peak_is_truncated() -> None:
    """New peaks are whole (limit inf) and an all-inf `limits` is stored as null; the truncation points of peaks
    that an earlier version admitted inside incidents still load and dump as they were."""
    cfg = ThresholdSettings()
    state = T.initial_state(cfg, np.random.default_rng(0).exponential(size=2000))
    d = T.to_dict(state)
    assert d["limits"] is None
    assert np.isinf(T.from_dict(d).limits).all() and T.from_dict(d).limits.size == state.peaks.size
    truncated = np.full(state.peaks.size, np.inf, np.float32)
    truncated[3] = 2.5
    old = dataclasses.replace(state, limits=frozen(truncated))
    again = T.loads(T.dumps(old))
    assert again.limits.tolist() == truncated.tolist()
