"""A model's regression set of confirmed anomalies, kept across retraining cycles.

Confirmed: the anomalous events (severity >= `incident_min_severity`) of an incident that has closed
inside a training window, unless operators called its alerts false alarms (then it is removed). They are real
faults the line has seen, so every later candidate must keep flagging them. Stored as one file,
`<state_dir>/regression/<model>/events.safetensors` (one tensor, no pickle; the incident id of each event,
oldest first, in its metadata), replaced whole on each change so a crash leaves the old set or the new one; at
most `regression_max_events` events, the newest kept; an incident is added once. A stored set whose event shape
no longer matches the model's input (the model's width changed) is set aside and started again, with a warning.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

log = logging.getLogger(__name__)


EVENTS_FILE = "events.safetensors"
LEGACY_INDEX = "index.json"  # incident ids beside the events, as sets were first stored


@dataclass
class Update:
    """The set after an `update`, and what the update changed."""

    events: np.ndarray | None
    ids: list[str]
    added: int
    removed: int


class RegressionSet:
    """The confirmed events of one model (see the module docstring).

    >>> import tempfile
    >>> rs = RegressionSet(tempfile.mkdtemp(), "press", cap=3)
    >>> rs.add(np.ones((2, 4), np.float32), ["i1", "i1"]), rs.add(np.zeros((2, 4), np.float32), ["i1", "i2"])
    (2, 1)
    >>> events, ids = rs.load(); events.shape, ids
    ((3, 4), ['i1', 'i1', 'i2'])
    """

    def __init__(self, state_dir: str | Path, model: str, cap: int = 2000) -> None:
        self.dir = Path(state_dir) / "regression" / model
        self.cap = cap

    def load(self, shape: tuple[int, ...] | None = None) -> tuple[np.ndarray | None, list[str]]:
        """(events or None when there are none, incident id per event); events of another `shape` are dropped."""
        path = self.dir / EVENTS_FILE
        if not path.is_file():
            return None, []
        try:
            with safe_open(path, framework="np") as f:
                events, stored_ids = f.get_tensor("events"), (f.metadata() or {}).get("incident_ids")
            ids = json.loads(stored_ids if stored_ids is not None else (self.dir / LEGACY_INDEX).read_text())
            ids = ids["incident_ids"] if isinstance(ids, dict) else ids
        except Exception as exc:  # safetensors' own error, a missing index, bad JSON
            raise ValueError(
                f"{path}: unreadable regression set ({exc}); move it aside to start the set again"
            ) from exc
        if len(events) != len(ids):
            raise ValueError(f"{self.dir}: {len(events)} events but {len(ids)} incident ids")
        if shape is not None and tuple(events.shape[1:]) != tuple(shape):
            log.warning("%s: stored events have shape %s, the model now takes %s; starting the set again",
                        self.dir, events.shape[1:], shape)  # fmt: skip
            return None, []
        return events, ids

    def update(
        self,
        events: np.ndarray | None,
        incident_ids: Sequence[str],
        remove: Collection[str] = (),
        shape: tuple[int, ...] | None = None,
    ) -> Update:
        """Forget the incidents in `remove`, then append the events of incidents not stored yet: one read, and
        one write when anything changed. `shape` (default: that of `events`) is the model's event shape."""
        if len(incident_ids) != (0 if events is None else len(events)):
            raise ValueError(f"need one incident id per event, got {len(incident_ids)} ids for the events")
        if shape is None and events is not None:
            shape = tuple(events.shape[1:])
        stored, ids = self.load(shape)
        other_shape = stored is None and (self.dir / EVENTS_FILE).is_file()  # load said so; kept aside if replaced
        keep = [i for i, inc in enumerate(ids) if inc not in remove]
        removed = len(ids) - len(keep)
        if removed and stored is not None:
            stored, ids = (stored[keep], [ids[i] for i in keep]) if keep else (None, [])
        known = set(ids)
        new = [i for i, inc in enumerate(incident_ids) if inc not in known and inc not in remove]
        if new:
            fresh = np.asarray(events)[new]
            stored = fresh if stored is None else np.concatenate([stored, fresh.astype(stored.dtype)])
            ids = ids + [incident_ids[i] for i in new]
            stored, ids = stored[-self.cap :], ids[-self.cap :]
        if new or removed:
            if other_shape:
                os.replace(
                    self.dir / EVENTS_FILE, self.dir / f"events.set-aside-{time.strftime('%Y%m%dT%H%M%S')}.safetensors"
                )
            self._save(stored, ids)
        return Update(stored, ids, len(new), removed)

    def add(self, events: np.ndarray, incident_ids: Sequence[str]) -> int:
        """Append the events of incidents not stored yet; returns how many were added."""
        return self.update(events, incident_ids).added

    def remove(self, incident_ids: Collection[str]) -> int:
        """Forget the events of these incidents (operators called them false alarms); returns how many."""
        return self.update(None, [], remove=incident_ids).removed

    def _save(self, events: np.ndarray | None, ids: list[str]) -> None:
        """Replace the set in one step (written to a temporary file, synced, renamed over the old one)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        path, tmp = self.dir / EVENTS_FILE, self.dir / f".{EVENTS_FILE}.tmp"
        if events is None:
            path.unlink(missing_ok=True)
        else:
            save_file({"events": np.ascontiguousarray(events)}, str(tmp), metadata={"incident_ids": json.dumps(ids)})
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        (self.dir / LEGACY_INDEX).unlink(missing_ok=True)
