"""decision.decide: the rule a retrained candidate must pass before it may replace the serving version."""

from __future__ import annotations

import numpy as np
import pytest

from stream_app.retraining.decision import calibrated_threshold, decide, detection_rate
from stream_app.settings import RetrainSettings, ThresholdSettings

CFG = RetrainSettings(max_false_alarm_rate=0.02, detection_tolerance=0.1, max_threshold_ratio=4.0)
NORMAL = np.linspace(0.0, 0.9, 200)  # all below a threshold of 1.0
INCIDENTS = np.array([5.0] * 9 + [0.5])  # 90 % above 1.0
CANARY = np.array([5.0] * 10)


def sets(candidate: np.ndarray = INCIDENTS, current: np.ndarray = INCIDENTS, canary: np.ndarray = CANARY) -> dict:
    return {"confirmed": (candidate, current), "offset": (canary, CANARY)}


def test_passes_with_few_false_alarms_and_detection_as_good_as_current():
    d = decide(CFG, 1.0, NORMAL, sets(), 1.0, NORMAL)
    assert d.passed and d.metrics["false_alarm_rate"] == 0.0
    assert d.metrics["regression"]["confirmed"] == {
        "events": 10, "detection_rate": pytest.approx(0.9), "current_detection_rate": pytest.approx(0.9)
    }  # fmt: skip
    assert d.metrics["threshold_ratio"] == 1.0 and d.metrics["confirmed_events"] == 10


def test_rejects_a_false_alarm_rate_above_the_bound():
    normal = NORMAL.copy()
    normal[:5] = 2.0  # 2.5 % > 2 %
    d = decide(CFG, 1.0, normal, sets(), 1.0, NORMAL)
    assert d.decision == "rejected" and "false-alarm rate 0.0250" in d.reason and "> bound 0.02" in d.reason
    assert d.metrics["regression"]["confirmed"]["detection_rate"] == pytest.approx(0.9)  # recorded anyway


def test_rejects_non_finite_scores_and_thresholds():
    normal = NORMAL.copy()
    normal[3] = np.nan
    assert "1 non-finite scores" in decide(CFG, 1.0, normal, sets()).reason
    assert "not finite" in decide(CFG, float("inf"), NORMAL, sets()).reason


def test_rejects_a_detection_drop_beyond_the_tolerance_but_not_within_it():
    worse = np.array([5.0] * 7 + [0.5] * 3)  # 0.7 vs current 0.9: drop 0.2 > 0.1
    d = decide(CFG, 1.0, NORMAL, sets(worse), 1.0, NORMAL)
    assert d.decision == "rejected" and d.reason.startswith("regression: confirmed detection 0.70 < current 0.90")
    slightly = np.array([5.0] * 8 + [0.5] * 2)  # 0.8: drop 0.1, within tolerance
    assert decide(CFG, 1.0, NORMAL, sets(slightly), 1.0, NORMAL).passed


def test_a_candidate_blind_to_a_handful_of_incident_events_is_rejected_never_skipped():
    # Finding 5: with fewer than 5 incident events the check was skipped, so a candidate detecting 0 of 4 passed.
    d = decide(CFG, 1.0, NORMAL, sets(np.full(4, 0.5), np.full(4, 5.0)), 1.0, NORMAL)
    assert d.decision == "rejected" and "confirmed detection 0.00 < current 1.00" in d.reason
    one = decide(CFG, 1.0, NORMAL, sets(np.array([0.5]), np.array([5.0])), 1.0, NORMAL)
    assert one.decision == "rejected"


def test_without_confirmed_events_the_decision_says_so_and_rests_on_the_canaries():
    empty = np.zeros(0)
    ok = decide(CFG, 1.0, NORMAL, sets(empty, empty), 1.0, NORMAL)
    assert ok.passed and "no confirmed incident events: canaries only" in ok.reason and "offset 1.00" in ok.reason
    blind = decide(CFG, 1.0, NORMAL, sets(empty, empty, canary=np.zeros(10)), 1.0, NORMAL)
    assert blind.decision == "rejected" and blind.reason.startswith("regression: offset detection 0.00")


def test_the_threshold_ratio_is_bounded_and_reported():
    d = decide(CFG, 5.0, NORMAL, sets(INCIDENTS * 5, INCIDENTS, CANARY * 5), 1.0, NORMAL)
    assert d.decision == "rejected" and "threshold ratio candidate/production 5 outside [1/4, 4]" in d.reason
    assert d.metrics["threshold_ratio"] == 5.0
    low = decide(CFG, 0.2, NORMAL * 0.2, sets(INCIDENTS * 0.2, INCIDENTS, CANARY * 0.2), 1.0, NORMAL)
    assert low.decision == "rejected" and low.metrics["threshold_ratio"] == pytest.approx(0.2)


def test_each_version_is_judged_at_its_own_threshold():
    # Another score scale (within the ratio bound): only its own calibrated threshold makes them comparable.
    d = decide(CFG, 3.0, NORMAL * 3, sets(INCIDENTS * 3, INCIDENTS, CANARY * 3), 1.0, NORMAL)
    row = d.metrics["regression"]["confirmed"]
    assert d.passed and row["detection_rate"] == row["current_detection_rate"]


def test_without_a_current_version_detection_is_recorded_not_compared():
    first = decide(CFG, 1.0, NORMAL, {"confirmed": (np.zeros(0), None), "offset": (CANARY, None)})
    assert first.passed and "no current version" in first.reason
    assert first.metrics["threshold_ratio"] is None


def test_rejects_when_nothing_was_held_back():
    assert decide(CFG, 1.0, np.zeros(0), sets()).reason == "no held-back normal events to validate on"


def test_detection_rate_counts_non_finite_scores_as_detected():
    assert detection_rate(np.array([0.0, np.nan, np.inf, 2.0]), 1.0) == 0.75


def test_calibrated_threshold_is_what_a_worker_starts_from_and_needs_calibration_scores():
    cal = np.random.default_rng(0).exponential(size=2000)
    assert calibrated_threshold(ThresholdSettings(mode="quantile", risk=1e-3), cal) == pytest.approx(6.9, abs=0.7)
    with pytest.raises(ValueError, match="no calibration scores"):
        calibrated_threshold(ThresholdSettings(), None)


def test_a_detection_drop_of_exactly_the_tolerance_passes():
    """At least production's rate minus the tolerance: 140/200 against 160/200 with a tolerance of 0.1 passes,
    although 0.8 - 0.1 is 0.7000000000000001 in floating point."""
    current = np.array([5.0] * 160 + [0.5] * 40)
    candidate = np.array([5.0] * 140 + [0.5] * 60)
    assert decide(CFG, 1.0, NORMAL, sets(candidate, current), 1.0, NORMAL).passed
