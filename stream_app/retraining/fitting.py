"""Fit a scorer on a file of normal samples and publish it: what `models fit` does, as a library call."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from models import Scorer
from stream_app.registry.versions import ModelVersion, Registry


def fit_summary(history: dict[str, Any], seconds: float) -> dict[str, Any]:
    last = {k: float(v[-1]) for k, v in history.items() if k in ("train_loss", "val_loss") and v}
    return {"seconds": round(seconds, 3), "epochs_run": history.get("epochs_run"),
            "best_epoch": history.get("best_epoch"), **last}  # fmt: skip


def fit_and_publish(
    registry: Registry,
    name: str,
    scorer: Scorer,
    data: np.ndarray,
    source: Path,
    epochs: int,
    batch_size: int | None = None,
    progress: bool = True,
) -> ModelVersion:
    """Fit `scorer` on `data` (read from `source`) and publish it as `name`'s next version (not promoted)."""
    started = time.monotonic()
    fit_kwargs: dict[str, Any] = {"epochs": epochs, "progress": progress}
    if batch_size:
        fit_kwargs["batch_size"] = batch_size
    history = scorer.fit(data, **fit_kwargs)
    extra = {
        "parent": None,
        "trained_by": "cli",
        "training_data": {"path": str(source.resolve()), "samples": len(data), "shape": list(data.shape)},
        "metrics": {"fit": fit_summary(history, time.monotonic() - started)},
    }
    return registry.publish(name, scorer, extra=extra)
