"""Deciding whether a retrained candidate may replace the serving version: pure functions, no I/O.

The rule (every number lands in the manifest with the decision):

1. The candidate's scores on the held-back normal slice are finite.
2. Its false-alarm rate there, at its calibrated threshold, is at most `max_false_alarm_rate`.
   The calibrated threshold is what a worker starts from for a new version: the SPOT/quantile/EWMA
   threshold of `thresholds.initial_state` on the version's calibration scores.
3. On events from recent incidents (likely true anomalies) it flags at least the current version's
   detection rate minus `detection_tolerance`, each at its own calibrated threshold. Skipped (and
   said so) when there are fewer than `min_incident_events` of them or no current version.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from stream_app.judging.thresholds import current_threshold, initial_state
from stream_app.settings import RetrainSettings, ThresholdSettings


@dataclass(frozen=True)
class Decision:
    """`decision` is "promoted"-worthy ("passed") or "rejected"; `reason` says why in one line."""

    decision: str
    reason: str
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.decision == "passed"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def calibrated_threshold(cfg: ThresholdSettings, calibration_scores: np.ndarray | None) -> float:
    """The threshold a worker would start a version on (ValueError without calibration scores)."""
    if calibration_scores is None or len(calibration_scores) == 0:
        raise ValueError("the model has no calibration scores to derive a threshold from")
    return current_threshold(cfg, initial_state(cfg, np.asarray(calibration_scores)))


def detection_rate(scores: np.ndarray, threshold: float) -> float:
    """Fraction of `scores` above `threshold` (non-finite counts as detected, as the worker judges it)."""
    s = np.asarray(scores, np.float64)
    return float(np.mean(~(s <= threshold))) if s.size else float("nan")


def decide(
    cfg: RetrainSettings,
    candidate_threshold: float,
    candidate_normal: np.ndarray,
    candidate_incidents: np.ndarray,
    current_threshold_: float | None = None,
    current_normal: np.ndarray | None = None,
    current_incidents: np.ndarray | None = None,
) -> Decision:
    """Apply the module's rule to scores already computed on the held-back and incident events.

    >>> cfg = RetrainSettings(max_false_alarm_rate=0.05, min_incident_events=2)
    >>> decide(cfg, 1.0, np.zeros(100), np.array([5.0, 5.0]), 1.0, np.ones(100) * 2, np.array([5.0, 5.0])).decision
    'passed'
    >>> decide(cfg, 1.0, np.zeros(100), np.array([0.5, 0.5]), 1.0, None, np.array([5.0, 5.0])).reason
    'incident detection 0.00 < current 1.00 - tolerance 0.10'
    """
    normal = np.asarray(candidate_normal, np.float64)
    metrics: dict[str, Any] = {
        "candidate_threshold": float(candidate_threshold),
        "holdout_events": int(normal.size),
        "incident_events": int(np.asarray(candidate_incidents).size),
    }
    if current_threshold_ is not None:
        metrics["current_threshold"] = float(current_threshold_)
    if current_normal is not None and current_threshold_ is not None:
        metrics["current_false_alarm_rate"] = detection_rate(current_normal, current_threshold_)
    if normal.size == 0:
        return Decision("rejected", "no held-back normal events to validate on", metrics)
    if not np.isfinite(candidate_threshold):
        return Decision("rejected", f"calibrated threshold is not finite ({candidate_threshold})", metrics)
    n_bad = int((~np.isfinite(normal)).sum())
    if n_bad:
        return Decision("rejected", f"{n_bad} non-finite scores on held-back normal events", metrics)

    far = detection_rate(normal, candidate_threshold)
    metrics["false_alarm_rate"] = far
    inc = np.asarray(candidate_incidents, np.float64)
    compare = current_incidents is not None and current_threshold_ is not None
    if compare and inc.size:  # recorded even when another rule decides, so the manifest tells the whole story
        metrics["detection_rate"] = detection_rate(inc, candidate_threshold)
        metrics["current_detection_rate"] = detection_rate(current_incidents, current_threshold_)
    if far > cfg.max_false_alarm_rate:
        return Decision(
            "rejected",
            f"false-alarm rate {far:.4f} on held-back normal data > bound {cfg.max_false_alarm_rate}",
            metrics,
        )
    if not compare:
        return Decision("passed", f"false-alarm rate {far:.4f}; no current version to compare detection with", metrics)
    if inc.size < cfg.min_incident_events:
        return Decision(
            "passed",
            f"false-alarm rate {far:.4f}; detection check skipped ({inc.size} incident events < {cfg.min_incident_events})",
            metrics,
        )
    det, det_current = metrics["detection_rate"], metrics["current_detection_rate"]
    if det < det_current - cfg.detection_tolerance:
        return Decision(
            "rejected",
            f"incident detection {det:.2f} < current {det_current:.2f} - tolerance {cfg.detection_tolerance:.2f}",
            metrics,
        )
    return Decision(
        "passed", f"false-alarm rate {far:.4f}, incident detection {det:.2f} (current {det_current:.2f})", metrics
    )
