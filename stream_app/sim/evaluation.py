"""Scoring a run against its ground truth: precision, recall and latency from verdicts (pure functions).

Simulated events carry a `truth` header ("normal" or the fault name) that the worker copies onto each
verdict. Two views, both reported:

- **event level**: each flagged event is a true positive if its own truth is a fault;
- **fault level** (what an operator feels): consecutive faulty events of a source form one fault; a fault is
  detected if any of its events is flagged; a flag is correct if it lies in a fault, or within `grace`
  events after one (a fault's tail still disturbs the signal, e.g. a stuck sensor that just recovered).
  Recall is also given per fault kind (the truth label of the fault's first event).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Verdict:
    source: str
    partition: int
    offset: int
    ts: float
    score: float
    threshold: float
    anomalous: bool
    truth: str
    latency_s: float
    version: str = ""


def _ratio(num: int, den: int) -> float:
    return float(num / den) if den else float("nan")


def faults(truth: list[str]) -> list[tuple[int, int]]:
    """[start, end) index ranges of consecutive non-normal truths.

    >>> faults(["normal", "spike", "normal", "stuck", "stuck", "normal"])
    [(1, 2), (3, 5)]
    """
    spans, start = [], None
    for i, t in enumerate([*truth, "normal"]):
        if t != "normal" and start is None:
            start = i
        elif t == "normal" and start is not None:
            spans.append((start, i))
            start = None
    return spans


def evaluate(verdicts: Iterable[Verdict], grace: int = 3) -> dict[str, Any]:
    """Counts, event- and fault-level precision/recall, latency percentiles (ms).

    >>> v = [Verdict("s", 0, i, i, 0, 1, a, t, 0.01) for i, (a, t) in enumerate(
    ...     [(False, "normal"), (True, "spike"), (False, "normal"), (True, "normal"), (False, "normal")])]
    >>> r = evaluate(v, grace=0)
    >>> r["event_precision"], r["event_recall"], r["fault_recall"], r["faults"], r["fault_recall_by_truth"]
    (0.5, 1.0, 1.0, 1, {'spike': 1.0})
    """
    by_source: dict[str, list[Verdict]] = defaultdict(list)
    for v in verdicts:
        by_source[v.source].append(v)
    tp = fp = fn = 0
    n_faults = detected = flags = flags_near = 0
    by_truth: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # truth -> [faults, detected]
    latencies: list[float] = []
    for items in by_source.values():
        items.sort(key=lambda v: (v.partition, v.offset))
        truth = [v.truth for v in items]
        flagged = np.array([v.anomalous for v in items], bool)
        is_fault = np.array([t != "normal" for t in truth], bool)
        latencies += [v.latency_s for v in items]
        tp += int((flagged & is_fault).sum())
        fp += int((flagged & ~is_fault).sum())
        fn += int((~flagged & is_fault).sum())
        near = is_fault.copy()
        for start, end in faults(truth):
            n_faults += 1
            hit = bool(flagged[start:end].any())
            detected += hit
            by_truth[truth[start]][0] += 1
            by_truth[truth[start]][1] += hit
            near[end : end + grace] = True
        flags += int(flagged.sum())
        flags_near += int((flagged & near).sum())
    lat = np.asarray(latencies, np.float64) * 1000.0
    return {
        "events": sum(len(v) for v in by_source.values()),
        "sources": len(by_source),
        "flagged": flags,
        "faulty_events": tp + fn,
        "faults": n_faults,
        "event_precision": _ratio(tp, tp + fp),
        "event_recall": _ratio(tp, tp + fn),
        "fault_precision": _ratio(flags_near, flags),
        "fault_recall": _ratio(detected, n_faults),
        "faults_by_truth": {t: n for t, (n, _) in sorted(by_truth.items())},
        "fault_recall_by_truth": {t: _ratio(hit, n) for t, (n, hit) in sorted(by_truth.items())},
        "latency_p50_ms": float(np.percentile(lat, 50)) if lat.size else float("nan"),
        "latency_p99_ms": float(np.percentile(lat, 99)) if lat.size else float("nan"),
    }
