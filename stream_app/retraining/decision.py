"""Deciding whether a retrained candidate may replace the serving version: pure functions, no I/O.

The rule (every number lands in the manifest with the decision):

1. The candidate's scores on the held-back normal slice are finite, and its calibrated threshold too.
   The calibrated threshold is what a worker starts from for a new version: the SPOT/quantile/EWMA
   threshold of `thresholds.initial_state` on the version's calibration scores.
2. Its false-alarm rate there, at its calibrated threshold, is at most `max_false_alarm_rate`.
3. Its calibrated threshold is within `max_threshold_ratio` of production's, either way (a candidate whose
   threshold jumps tenfold has learned another scale, or the faults; the ratio is always reported).
4. On every regression set it flags at least production's detection rate minus `detection_tolerance`,
   each version at its own calibrated threshold. The sets: ``confirmed`` (events of confirmed incidents,
   see `regression.py`) and the synthetic canaries (see `canaries.py`). The check is never skipped: with
   no confirmed events the decision says so and rests on the canaries alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from stream_app.judging.thresholds import current_threshold, initial_state
from stream_app.settings import RetrainSettings, ThresholdSettings

CONFIRMED = "confirmed"
RATE_EPSILON = 1e-9  # rates are counts over counts: 0.8 - 0.1 is 0.7000000000000001, and 0.70 must pass


@dataclass(frozen=True)
class Decision:
    """`decision` is "passed" (may be promoted) or "rejected"; `reason` says why in one line."""

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


def threshold_ratio(candidate: float, current: float | None) -> float | None:
    """candidate / production threshold, or None when production's is missing or not positive."""
    if current is None or not current > 0 or not np.isfinite(current):
        return None
    return float(candidate / current)


def decide(
    cfg: RetrainSettings,
    candidate_threshold: float,
    candidate_normal: np.ndarray,
    regression: Mapping[str, tuple[np.ndarray, np.ndarray | None]],
    current_threshold_: float | None = None,
    current_normal: np.ndarray | None = None,
) -> Decision:
    """Apply the module's rule to scores already computed on the held-back events and the regression sets.

    `regression` maps a set's name to (candidate scores, production scores or None) on the same events.

    >>> cfg = RetrainSettings(max_false_alarm_rate=0.05)
    >>> sets = {"confirmed": (np.array([0.5, 0.5, 0.5, 0.5]), np.array([5.0] * 4))}
    >>> decide(cfg, 1.0, np.zeros(100), sets, 1.0, np.zeros(100)).reason
    'regression: confirmed detection 0.00 < current 1.00 - tolerance 0.10'
    >>> decide(cfg, 1.0, np.zeros(100), {"offset": (np.ones(3) * 9, np.ones(3) * 9)}, 1.0).reason
    'false-alarm rate 0.0000, threshold ratio 1.00; no confirmed incident events: canaries only; offset 1.00 (current 1.00)'
    """
    normal = np.asarray(candidate_normal, np.float64)
    compare = current_threshold_ is not None
    ratio = threshold_ratio(candidate_threshold, current_threshold_)
    sets: dict[str, dict[str, Any]] = {}
    for name, (cand, cur) in regression.items():
        row: dict[str, Any] = {
            "events": int(np.size(cand)),
            "detection_rate": detection_rate(cand, candidate_threshold),
        }
        if current_threshold_ is not None and cur is not None:  # (compare)
            row["current_detection_rate"] = detection_rate(cur, current_threshold_)
        sets[name] = row
    metrics: dict[str, Any] = {
        "candidate_threshold": float(candidate_threshold),
        "current_threshold": None if current_threshold_ is None else float(current_threshold_),
        "threshold_ratio": ratio,
        "holdout_events": int(normal.size),
        "confirmed_events": sets.get(CONFIRMED, {}).get("events", 0),
        "regression": sets,
    }
    if current_normal is not None and current_threshold_ is not None:  # (compare)
        metrics["current_false_alarm_rate"] = detection_rate(current_normal, current_threshold_)
    if normal.size == 0:
        return Decision("rejected", "no held-back normal events to validate on", metrics)
    if not np.isfinite(candidate_threshold):
        return Decision("rejected", f"calibrated threshold is not finite ({candidate_threshold})", metrics)
    n_bad = int((~np.isfinite(normal)).sum())
    if n_bad:
        return Decision("rejected", f"{n_bad} non-finite scores on held-back normal events", metrics)
    far = metrics["false_alarm_rate"] = detection_rate(normal, candidate_threshold)
    if far > cfg.max_false_alarm_rate:
        reason = f"false-alarm rate {far:.4f} on held-back normal data > bound {cfg.max_false_alarm_rate}"
        return Decision("rejected", reason, metrics)
    bound = cfg.max_threshold_ratio
    if ratio is not None and not 1.0 / bound <= ratio <= bound:
        reason = f"threshold ratio candidate/production {ratio:.3g} outside [1/{bound:g}, {bound:g}]"
        return Decision("rejected", reason, metrics)
    failing = [
        f"{name} detection {row['detection_rate']:.2f} < current {row['current_detection_rate']:.2f}"
        f" - tolerance {cfg.detection_tolerance:.2f}"
        for name, row in sets.items()
        if row["events"] and "current_detection_rate" in row
        and row["detection_rate"] < row["current_detection_rate"] - cfg.detection_tolerance - RATE_EPSILON
    ]  # fmt: skip
    if failing:
        return Decision("rejected", "regression: " + "; ".join(failing), metrics)
    head = f"false-alarm rate {far:.4f}, threshold ratio " + ("n/a" if ratio is None else f"{ratio:.2f}")
    if not sets.get(CONFIRMED, {}).get("events"):
        head += "; no confirmed incident events: canaries only"
    if not compare:
        head += "; no current version to compare detection with"
    parts = [
        f"{name} {row['detection_rate']:.2f}"
        + (f" (current {row['current_detection_rate']:.2f})" if "current_detection_rate" in row else "")
        for name, row in sets.items()
        if row["events"]
    ]
    if not parts:
        return Decision(
            "rejected", f"{head}; no regression events at all (no confirmed incidents, no canaries)", metrics
        )
    return Decision("passed", f"{head}; " + ", ".join(parts), metrics)
