"""The typed seams the streaming app relies on: what every scorer, and each data kind's scorer, speaks."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

DataKindName = Literal["vectors", "images"]


@runtime_checkable
class Scorer(Protocol):
    """The verbs every scorer speaks; `data_kind` says which input it reads."""

    calibration_scores: np.ndarray | None

    @property
    def data_kind(self) -> DataKindName: ...

    def fit(self, data: np.ndarray, **kwargs: Any) -> dict[str, Any]: ...
    def score(self, data: np.ndarray) -> np.ndarray: ...
    def save(self, path: str | Path, extra: dict[str, Any] | None = None) -> Path: ...


@runtime_checkable
class VectorScorer(Scorer, Protocol):
    """Scores float [N, F] sensor vectors and names the features behind a score."""

    n_features: int
    feature_names: list[str]

    def explain(self, data: np.ndarray) -> np.ndarray: ...


@runtime_checkable
class SequenceScorer(VectorScorer, Protocol):
    """A vector scorer with temporal context (`window` > 1): it scores each row of a source after the source's
    previous `window - 1` rows, given as raw rows (the history a streaming worker keeps per source)."""

    window: int

    @property
    def input_names(self) -> list[str]: ...

    def score_sequences(
        self, pairs: Sequence[tuple[np.ndarray | None, np.ndarray]]
    ) -> list[tuple[np.ndarray, np.ndarray]]: ...
    def explain_sequences(self, pairs: Sequence[tuple[np.ndarray | None, np.ndarray]]) -> list[np.ndarray]: ...


@runtime_checkable
class ImageScorer(Scorer, Protocol):
    """Scores uint8 [N, H, W(, 3)] frames and says where in the frame the anomaly is."""

    def heatmap(self, data: np.ndarray) -> np.ndarray: ...
