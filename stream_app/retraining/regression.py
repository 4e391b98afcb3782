"""A model's regression set of confirmed anomalies, kept across retraining cycles.

Confirmed: the anomalous events (severity >= `incident_min_severity`) of an incident that has closed
inside a training window, unless operators called its alerts false alarms (then it is removed). They are real faults the line has seen, so every later candidate must keep
flagging them. Stored under `<state_dir>/regression/<model>/` as `events.safetensors` (one tensor, no
pickle) and `index.json` (the incident id of each event, oldest first); at most `regression_max_events`
events, the newest kept; an incident is added once. A stored set whose event shape no longer matches the
model's input (the model's width changed) is set aside and started again, with a warning.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Collection, Sequence
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

log = logging.getLogger(__name__)


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
        index = self.dir / "index.json"
        if not index.is_file():
            return None, []
        ids = json.loads(index.read_text())["incident_ids"]
        events = load_file(self.dir / "events.safetensors")["events"]
        if len(events) != len(ids):
            raise ValueError(f"{self.dir}: {len(events)} events but {len(ids)} incident ids")
        if shape is not None and tuple(events.shape[1:]) != tuple(shape):
            log.warning("%s: stored events have shape %s, the model now takes %s; starting the set again",
                        self.dir, events.shape[1:], shape)  # fmt: skip
            return None, []
        return events, ids

    def add(self, events: np.ndarray, incident_ids: Sequence[str]) -> int:
        """Append the events of incidents not stored yet; returns how many were added."""
        if len(events) != len(incident_ids):
            raise ValueError(f"need one incident id per event: {len(events)} events, {len(incident_ids)} ids")
        stored, ids = self.load(tuple(np.shape(events)[1:]))
        known = set(ids)
        new = [i for i, inc in enumerate(incident_ids) if inc not in known]
        if not new:
            return 0
        fresh = np.asarray(events)[new]
        merged = fresh if stored is None else np.concatenate([stored, fresh.astype(stored.dtype)])
        ids = ids + [incident_ids[i] for i in new]
        self._save(merged[-self.cap :], ids[-self.cap :])
        return len(new)

    def remove(self, incident_ids: Collection[str]) -> int:
        """Forget the events of these incidents (operators called them false alarms); returns how many."""
        stored, ids = self.load()
        if stored is None:
            return 0
        keep = [i for i, inc in enumerate(ids) if inc not in incident_ids]
        if len(keep) < len(ids):
            self._save(stored[keep], [ids[i] for i in keep])
        return len(ids) - len(keep)

    def _save(self, events: np.ndarray, ids: list[str]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / ".events.safetensors.tmp"
        save_file({"events": np.ascontiguousarray(events)}, str(tmp))
        os.replace(tmp, self.dir / "events.safetensors")
        tmp_index = self.dir / ".index.json.tmp"
        tmp_index.write_text(json.dumps({"incident_ids": ids}))
        os.replace(tmp_index, self.dir / "index.json")
