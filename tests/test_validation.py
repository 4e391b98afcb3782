"""validation.decide: the rule a retrained candidate must pass before it may replace the serving version."""

from __future__ import annotations

import numpy as np
import pytest

from stream_app.retraining.decision import calibrated_threshold, decide, detection_rate
from stream_app.settings import RetrainSettings, ThresholdSettings

CFG = RetrainSettings(max_false_alarm_rate=0.02, detection_tolerance=0.1, min_incident_events=5)
NORMAL = np.linspace(0.0, 0.9, 200)  # all below a threshold of 1.0
INCIDENTS = np.array([5.0] * 9 + [0.5])  # 90 % above 1.0


def test_passes_with_few_false_alarms_and_detection_as_good_as_current():
    d = decide(CFG, 1.0, NORMAL, INCIDENTS, 1.0, NORMAL, INCIDENTS)
    assert d.passed and d.metrics["false_alarm_rate"] == 0.0 and d.metrics["detection_rate"] == pytest.approx(0.9)
    assert d.metrics["current_detection_rate"] == pytest.approx(0.9)


def test_rejects_a_false_alarm_rate_above_the_bound():
    normal = NORMAL.copy()
    normal[:5] = 2.0  # 2.5 % > 2 %
    d = decide(CFG, 1.0, normal, INCIDENTS, 1.0, NORMAL, INCIDENTS)
    assert d.decision == "rejected" and "false-alarm rate 0.0250" in d.reason and "> bound 0.02" in d.reason
    assert d.metrics["detection_rate"] == pytest.approx(0.9)  # every metric is recorded, whichever rule decides


def test_rejects_non_finite_scores_and_thresholds():
    normal = NORMAL.copy()
    normal[3] = np.nan
    assert "1 non-finite scores" in decide(CFG, 1.0, normal, INCIDENTS).reason
    assert "not finite" in decide(CFG, float("inf"), NORMAL, INCIDENTS).reason


def test_rejects_a_detection_drop_beyond_the_tolerance_but_not_within_it():
    worse = np.array([5.0] * 7 + [0.5] * 3)  # 0.7 vs current 0.9: drop 0.2 > 0.1
    d = decide(CFG, 1.0, NORMAL, worse, 1.0, NORMAL, INCIDENTS)
    assert d.decision == "rejected" and d.reason.startswith("incident detection 0.70 < current 0.90")
    slightly = np.array([5.0] * 8 + [0.5] * 2)  # 0.8: drop 0.1, within tolerance
    assert decide(CFG, 1.0, NORMAL, slightly, 1.0, NORMAL, INCIDENTS).passed


def test_each_version_is_judged_at_its_own_threshold():
    # The candidate's scores live on another scale: only its own calibrated threshold makes them comparable.
    d = decide(CFG, 100.0, NORMAL * 100, INCIDENTS * 100, 1.0, NORMAL, INCIDENTS)
    assert d.passed and d.metrics["detection_rate"] == d.metrics["current_detection_rate"]


def test_detection_check_is_skipped_with_few_incident_events_or_no_current_version():
    few = decide(CFG, 1.0, NORMAL, INCIDENTS[:3], 1.0, NORMAL, INCIDENTS[:3])
    assert few.passed and "detection check skipped (3 incident events < 5)" in few.reason
    first = decide(CFG, 1.0, NORMAL, np.zeros(0))
    assert first.passed and "no current version" in first.reason


def test_rejects_when_nothing_was_held_back():
    assert decide(CFG, 1.0, np.zeros(0), INCIDENTS).reason == "no held-back normal events to validate on"


def test_detection_rate_counts_non_finite_scores_as_detected():
    assert detection_rate(np.array([0.0, np.nan, np.inf, 2.0]), 1.0) == 0.75


def test_calibrated_threshold_is_what_a_worker_starts_from_and_needs_calibration_scores():
    cal = np.random.default_rng(0).exponential(size=2000)
    assert calibrated_threshold(ThresholdSettings(mode="quantile", risk=1e-3), cal) == pytest.approx(6.9, abs=0.7)
    with pytest.raises(ValueError, match="no calibration scores"):
        calibrated_threshold(ThresholdSettings(), None)
