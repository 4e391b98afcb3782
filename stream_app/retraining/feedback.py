"""Operators' labels (from the console's labels topic) as retraining input.

A confirmed real defect joins the model's regression set, so every later candidate must still flag it; an
event an operator called a false alarm joins the next training window, so the candidate learns it is normal,
and its incident leaves the regression set (it was not a fault).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from stream_app.alerts.labels import (
    Label,
    confirmed_anomalies,
    false_alarms,
    labelled_records,
    latest_per_alert,
    read_labels,
)
from stream_app.settings import Settings
from stream_app.wire.codecs import BadEvent
from stream_app.wire.kinds import data_kind

log = logging.getLogger(__name__)


@dataclass
class Feedback:
    """Decoded events behind the labels of one model (events whose input is no longer retained are left out)."""

    confirmed: list[np.ndarray] = field(default_factory=list)
    confirmed_ids: list[str] = field(default_factory=list)  # the labelled alert ids (one regression "incident" each)
    false_alarms: list[np.ndarray] = field(default_factory=list)
    dismissed: set[str] = field(default_factory=set)  # regression-set ids of what operators called false alarms


def dismissed_ids(labels: list[Label]) -> set[str]:
    """The regression-set ids (incident ids, and `label:<alert_id>`) of alerts whose newest label is a false alarm:
    a drift's first alarms form incidents that close inside a window and would count as confirmed faults, so
    no candidate that has learned the drift could pass until operators dismiss them."""
    out = set()
    for label in false_alarms(latest_per_alert(labels)):
        out.add(f"label:{label.alert_id}")
        if label.incident_id:
            out.add(label.incident_id)
    return out


async def operator_feedback(settings: Settings, model: str, kind: str) -> Feedback:
    """Labels of `model` from the last retraining window, with the input events they judged, decoded."""
    labels = await read_labels(settings, model=model, since_s=settings.retrain.window_s)
    feedback = Feedback(dismissed=dismissed_ids(labels))
    for chosen, events, ids in (
        (confirmed_anomalies(labels), feedback.confirmed, feedback.confirmed_ids),
        (false_alarms(labels), feedback.false_alarms, None),
    ):
        for label, array in await _decoded(settings, kind, chosen):
            events.append(array)
            if ids is not None:
                ids.append(label.alert_id)
    if labels:
        log.info("retrain %s: %d operator labels, %d confirmed and %d false-alarm events decoded", model,
                 len(labels), len(feedback.confirmed), len(feedback.false_alarms))  # fmt: skip
    return feedback


async def _decoded(settings: Settings, kind: str, labels: list[Label]) -> list[tuple[Label, np.ndarray]]:
    if not labels:
        return []
    pairs = await labelled_records(settings, labels)
    spec = data_kind(kind)
    events = spec.decode([rec for _, rec in pairs], settings)
    return [(label, spec.stack([ev])[0]) for (label, _), ev in zip(pairs, events, strict=True)
            if not isinstance(ev, BadEvent)]  # fmt: skip


def with_events(data: np.ndarray, events: list[np.ndarray]) -> np.ndarray:
    """`data` with the events of its shape appended (an event of another shape cannot train this model)."""
    fitting = [e for e in events if e.shape == data.shape[1:]]
    return np.concatenate([data, np.stack(fitting).astype(data.dtype)]) if fitting else data
