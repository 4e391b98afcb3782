"""Anomaly scorers for sensor vectors (RVAE) and camera frames (Transformaly).

Pure PyTorch/numpy: nothing here knows about Kafka or Redis.
"""

from typing import Any

from models.factory import (
    DEFAULT_OFFLINE_IMAGE_KIND,
    IMAGE_KINDS,
    VECTOR_KINDS,
    create_scorer,
    load_scorer,
    scorer_class,
)
from models.persistence import ModelIntegrityError
from models.protocols import DataKindName, ImageScorer, Scorer, SequenceScorer, VectorScorer


def __getattr__(name: str) -> Any:
    # Lazy so `import models` stays cheap (no torch model code) for tools that only need the contract.
    if name == "RVAEScorer":
        return scorer_class("rvae")
    if name == "TransformalyScorer":
        return scorer_class("transformaly")
    if name == "PatchMemoryScorer":
        return scorer_class("patch-memory")
    raise AttributeError(name)


__all__ = [
    "DEFAULT_OFFLINE_IMAGE_KIND",
    "IMAGE_KINDS",
    "VECTOR_KINDS",
    "DataKindName",
    "ImageScorer",
    "ModelIntegrityError",
    "PatchMemoryScorer",
    "RVAEScorer",
    "Scorer",
    "SequenceScorer",
    "TransformalyScorer",
    "VectorScorer",
    "create_scorer",
    "load_scorer",
]
