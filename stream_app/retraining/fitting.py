"""Fit a scorer on a file of normal samples and publish it: what `models fit` does, as a library call."""

from __future__ import annotations

import inspect
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


def fit_options(scorer: Scorer, **options: Any) -> dict[str, Any]:
    """The training knobs (epochs, batch_size, progress...) that this scorer's `fit` takes; None values dropped.

    A memory-based scorer (patch-memory) has no epochs: the same call site serves every kind.
    """
    accepted = inspect.signature(scorer.fit).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()):
        return {k: v for k, v in options.items() if v is not None}
    return {k: v for k, v in options.items() if v is not None and k in accepted}


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
    history = scorer.fit(data, **fit_options(scorer, epochs=epochs, progress=progress, batch_size=batch_size or None))
    extra = {
        "parent": None,
        "trained_by": "cli",
        "training_data": {"path": str(source.resolve()), "samples": len(data), "shape": list(data.shape)},
        "metrics": {"fit": fit_summary(history, time.monotonic() - started)},
    }
    return registry.publish(name, scorer, extra=extra)
