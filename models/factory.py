"""Build any scorer from its saved directory, like timm's create_model builds any network by name."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from models.persistence import read_manifest


@runtime_checkable
class Scorer(Protocol):
    """The verbs every scorer speaks. `data_kind` is "vectors" or "images"."""

    data_kind: str
    calibration_scores: np.ndarray | None

    def fit(self, data: np.ndarray, **kwargs: Any) -> dict[str, Any]: ...
    def score(self, data: np.ndarray) -> np.ndarray: ...
    def save(self, path: str | Path, extra: dict[str, Any] | None = None) -> Path: ...


_LOADERS: dict[str, Callable[..., Scorer]] = {}


def register_loader(*kinds: str) -> Callable[[Callable[..., Scorer]], Callable[..., Scorer]]:
    """Class-method decorator target: `register_loader("rvae", "vae")(RVAEScorer.load)`."""

    def wrap(fn: Callable[..., Scorer]) -> Callable[..., Scorer]:
        for kind in kinds:
            _LOADERS[kind] = fn
        return fn

    return wrap


def load_scorer(path: str | Path, device: str | None = None) -> Scorer:
    """Load a scorer directory (hashes verified, no pickle) with the class its manifest names."""
    import models.rvae

    try:
        import models.transformaly  # noqa: F401
    except ModuleNotFoundError as exc:  # a checkout without the image scorer can still load vector scorers
        if exc.name != "models.transformaly":
            raise

    kind = read_manifest(path)["kind"]
    if kind not in _LOADERS:
        raise ValueError(f"{path}: unknown scorer kind {kind!r}; known: {sorted(_LOADERS)}")
    return _LOADERS[kind](path, device=device)
