"""Build any scorer by kind name, or from its saved directory, like timm's create_model.

One-way imports: this table names each kind's class by module path, and model files never import
this module, so adding a scorer means one line here and nothing in the model file.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Final

from models.persistence import read_manifest
from models.protocols import ImageScorer, Scorer, VectorScorer

# kind -> "module:Class". The classes' `load(path, device=)` inverts `save`.
_VECTOR_CLASSES: Final = {kind: "models.rvae:RVAEScorer" for kind in ("ae", "vae", "rae", "rvae")}
_IMAGE_CLASSES: Final = {
    "transformaly": "models.transformaly:TransformalyScorer",
    "patch-memory": "models.patch_memory:PatchMemoryScorer",
}

VECTOR_KINDS: Final = tuple(_VECTOR_CLASSES)
IMAGE_KINDS: Final = tuple(_IMAGE_CLASSES)
# The image kind that fits with no weights to download (the contract's offline default): chosen by
# benchmarks/image_quality.py, where a random-init Transformaly ranks defects at chance.
DEFAULT_OFFLINE_IMAGE_KIND: Final = "patch-memory"


def scorer_class(kind: str) -> type[Any]:
    """The class that implements `kind`; ValueError naming the known kinds otherwise."""
    target = _VECTOR_CLASSES.get(kind) or _IMAGE_CLASSES.get(kind)
    if target is None:
        raise ValueError(f"unknown scorer kind {kind!r}; known: {sorted(VECTOR_KINDS + IMAGE_KINDS)}")
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def create_scorer(kind: str, **kwargs: Any) -> Scorer:
    """A new, unfitted scorer of `kind`; vector kinds take `n_features`.

    >>> create_scorer("rae", n_features=3, device="cpu").kind
    'rae'
    """
    if kind in _VECTOR_CLASSES:
        kwargs.setdefault("kind", kind)
    elif "kind" in kwargs and kwargs["kind"] != kind:
        raise ValueError(f"kind given twice: {kind!r} and {kwargs['kind']!r}")
    else:
        kwargs.pop("kind", None)
    scorer: Scorer = scorer_class(kind)(**kwargs)
    return scorer


def load_scorer(path: str | Path, device: str | None = None, manifest_sha256: str | None = None) -> Scorer:
    """Load a scorer directory (hashes verified, no pickle) with the class its manifest names; `manifest_sha256`
    pins the manifest it must be loaded from."""
    kind = read_manifest(path)["kind"]
    try:
        cls = scorer_class(kind)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    scorer: Scorer = cls.load(path, device=device, manifest_sha256=manifest_sha256)
    return scorer


__all__ = [
    "DEFAULT_OFFLINE_IMAGE_KIND",
    "IMAGE_KINDS",
    "VECTOR_KINDS",
    "ImageScorer",
    "Scorer",
    "VectorScorer",
    "create_scorer",
    "load_scorer",
    "scorer_class",
]
