"""Fit a scorer on a file of normal samples and publish it: what `models fit` does, as a library call."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from models import Scorer
from stream_app.registry.backbones import BackboneStore
from stream_app.registry.versions import ModelVersion, Registry

log = logging.getLogger(__name__)


def fit_summary(history: dict[str, Any], seconds: float) -> dict[str, Any]:
    last = {k: float(v[-1]) for k, v in history.items() if k in ("train_loss", "val_loss") and v}
    return {"seconds": round(seconds, 3), "epochs_run": history.get("epochs_run"),
            "best_epoch": history.get("best_epoch"), **last}  # fmt: skip


def backbone_weights(registry_root: Path, arch: str, weights: Path | None, random_backbone: bool) -> str | bool:
    """What a new camera model's backbone loads: a registry copy of `weights` or of the hub's weights (both
    pinned by hash), or False for an explicit random backbone. BackboneUnavailable when none can be had."""
    if random_backbone:
        if weights is not None:
            raise ValueError("give --weights FILE or --random-backbone, not both")
        log.warning("fitting on a RANDOM %s backbone: its features carry no information (tests and demos only)", arch)
        return False
    store = BackboneStore(registry_root)
    return str(store.import_file(weights, arch) if weights is not None else store.import_hub(arch))


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
