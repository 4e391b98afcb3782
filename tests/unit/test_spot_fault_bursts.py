"""Faults must not teach SPOT that the tail is heavier or more frequent: recurring bursts, a line where a fifth
of the events are faults and faults creeping up to 3x the risk keep the alert level near the one normal
scores alone give, faults flagged."""

from __future__ import annotations

import numpy as np

from stream_app.judging import thresholds as T
from stream_app.settings import ThresholdSettings

RISK = 1e-3


def test_recurring_fault_bursts_keep_the_alert_level_below_the_faults_and_keep_them_flagged() -> None:
    cfg = ThresholdSettings(risk=RISK)
    gen = np.random.default_rng(0)
    state = T.initial_state(cfg, gen.exponential(size=800))
    flagged, levels = [], []
    for block in range(40):  # a 30-event burst at 30-60 every 1,024 events: 3% of the line in faults
        x = gen.exponential(size=256)
        burst = block % 4 == 1
        if burst:
            x[100:130] = 30 + 30 * gen.random(30)
        thr, anomalous, state = T.judge(cfg, state, x)
        levels.append(float(thr[-1]))
        if burst:
            flagged.append(anomalous[100:130].mean())
    assert max(levels) < 30, levels  # (before the cap: ~400 after ten bursts, every later fault missed)
    assert min(flagged) == 1.0


def faults_at(share: np.ndarray, gen: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(scores, fault flags): exponential normal scores (level ~7 at risk 1e-3), faults at 10-40 with P = share."""
    fault = gen.random(share.size) < share
    return np.where(fault, 10.0 + 30.0 * gen.random(share.size), gen.exponential(size=share.size)), fault


def test_a_line_with_a_fifth_of_its_events_faults_keeps_the_stationary_level_and_flags_the_faults() -> None:
    # Every exceedance of t counted fully in the rate N_t/n: 20% faults made it ~0.2 instead of ~0.02, the level
    # rose, faults below it were admitted as peaks, the fit took them for the tail and the level went over
    # the faults (measured: 6.9 -> 54, fault recall 0.002).
    cfg = ThresholdSettings(risk=RISK)
    gen = np.random.default_rng(0)
    n = 200_000
    normal = gen.exponential(size=n)
    fault = gen.random(n) < 0.1  # scattered faults...
    for start in gen.integers(0, n - 20, 1000):  # ...and bursts of 20
        fault[start : start + 20] = True
    x = np.where(fault, 10.0 + 30.0 * gen.random(n), normal)  # faults at 10-40; normal scores beat ~7 at risk
    cal = gen.exponential(size=2000)
    thr_normal, _, clean = T.judge_stream(cfg, T.initial_state(cfg, cal), normal, 256)
    thr, anomalous, state = T.judge_stream(cfg, T.initial_state(cfg, cal), x, 256)
    assert 0.15 < fault.mean() < 0.25
    assert thr.max() < 2 * np.median(thr_normal), (thr.max(), np.median(thr_normal))
    assert anomalous[fault].mean() > 0.95
    assert anomalous[~fault].mean() < 2 * RISK  # normal events: still about `risk` false alarms
    assert T.faulty(state.n_c, state.n_e) and not T.faulty(clean.n_c, clean.n_e)


def test_faults_creeping_up_to_3x_the_risk_do_not_ratchet_the_tail() -> None:
    # Faults at 3x the risk leave a source under the `faulty` factor, so every exceedance counts in the rate;
    # had the tail fit kept every censored peak too, the surplus would ratchet the level up with every refit.
    cfg = ThresholdSettings(risk=RISK)
    gen = np.random.default_rng(2)
    n = 600_000
    x, fault = faults_at(np.minimum(np.arange(n) / 200_000, 1.0) * 3.0 * RISK, gen)
    thr, anomalous, _ = T.judge_stream(cfg, T.initial_state(cfg, gen.exponential(size=2000)), x, 1024)
    assert np.median(thr[-100_000:]) < 1.2 * np.median(thr[:100_000]), (
        np.median(thr[:100_000]),
        np.median(thr[-100_000:]),
    )
    assert anomalous[fault].mean() > 0.99


def test_states_saved_before_the_fault_counts_load_and_judge() -> None:
    cfg = ThresholdSettings(risk=RISK)
    state = T.initial_state(cfg, np.random.default_rng(3).exponential(size=2000))
    old = {k: v for k, v in T.to_dict(state).items() if k not in ("n_c", "n_e", "cal_peaks")}
    loaded = T.from_dict(old)
    assert (loaded.n_c, loaded.n_e, loaded.cal_peaks) == (0.0, 0.0, 0)
    assert T.current_threshold(cfg, loaded) == T.current_threshold(cfg, state)
    _, anomalous, _ = T.judge(cfg, loaded, np.array([1.0, 50.0]))
    assert anomalous.tolist() == [False, True]
