"""Per-feature normalization fitted on training data and saved with the model.

Scorers take raw sensor units; the statistics that map them to roughly unit scale are part of the
model, so a saved scorer scores the same numbers the same way wherever it is loaded. The transform
runs in torch (a module with buffers) so scoring needs no extra numpy copy of the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

METHODS = ("robust", "standard")
# IQR of a standard normal: dividing by it makes the robust scale comparable to a standard deviation.
_IQR_TO_STD = 1.3489795


@dataclass(frozen=True)
class Normalization:
    """z = (x - center) / scale per feature.

    `robust`: median and IQR/1.349 (an outlier in the training window barely moves them);
    `standard`: mean and standard deviation. A channel whose spread is zero (constant in training,
    or an IQR of zero for the robust method and a zero standard deviation too) gets scale 1, so it
    never divides by zero: a later deviation on such a channel counts in its raw units.

    >>> n = Normalization.fit(np.array([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0]], np.float32), "standard")
    >>> n.transform(np.array([[2.0, 6.0]], np.float32)).tolist()
    [[0.0, 1.0]]
    """

    method: str
    center: np.ndarray  # float32 [F]
    scale: np.ndarray  # float32 [F], > 0

    @classmethod
    def fit(cls, X: np.ndarray, method: str = "robust") -> Normalization:
        if method not in METHODS:
            raise ValueError(f"expected normalization method in {METHODS}, got {method!r}")
        X = np.asarray(X, np.float64)
        std = X.std(axis=0)
        if method == "robust":
            q25, center, q75 = np.percentile(X, [25, 50, 75], axis=0)
            scale = (q75 - q25) / _IQR_TO_STD
            scale = np.where(scale > 0, scale, std)  # sparse or near-binary channels: IQR 0, spread > 0
        else:
            center, scale = X.mean(axis=0), std
        tiny = 1e-6 * np.maximum(np.abs(center), 1.0)  # below float32 resolution of the channel's level
        scale = np.where(scale > tiny, scale, 1.0)
        return cls(method, center.astype(np.float32), scale.astype(np.float32))

    def transform(self, X: np.ndarray) -> np.ndarray:
        return ((np.asarray(X, np.float32) - self.center) / self.scale).astype(np.float32, copy=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form for the manifest (float32 -> float64 lists round-trip exactly)."""
        return {"method": self.method, "center": self.center.tolist(), "scale": self.scale.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Normalization:
        return cls(d["method"], np.asarray(d["center"], np.float32), np.asarray(d["scale"], np.float32))


class Standardize(nn.Module):
    """The torch side of Normalization: buffers, so they travel with the weights and the device."""

    def __init__(self, n_features: int) -> None:
        super().__init__()
        self.register_buffer("center", torch.zeros(n_features))
        self.register_buffer("scale", torch.ones(n_features))

    @torch.no_grad()
    def set_(self, norm: Normalization) -> Standardize:
        self.center.copy_(torch.from_numpy(norm.center))
        self.scale.copy_(torch.from_numpy(norm.scale))
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sub(x, self.center).div_(self.scale)  # one allocation, not two
