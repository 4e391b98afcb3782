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

METHODS = ("robust", "standard", "log-robust", "global")
# IQR of a standard normal: dividing by it makes the robust scale comparable to a standard deviation.
_IQR_TO_STD = 1.3489795


@dataclass(frozen=True)
class Normalization:
    """z = (x - center) / scale per feature.

    `robust`: median and IQR/1.349 (an outlier in the training window barely moves them);
    `standard`: mean and standard deviation; `log-robust`: first x -> asinh(x / log_scale) per feature
    (log-magnitude for |x| >> log_scale, linear near zero, defined for any sign), then robust. For
    magnitudes that span decades (spectra): a peak growing 10x moves the input by ~2.3, not by 10x the
    spread, and the noise floor keeps its resolution. `log_scale` is a low quantile of |x| per feature
    (the noise floor's level), floored at 1e-3 of its high quantile. `global`: per-feature mean and ONE
    scale for all features (the root mean of their variances), for features in one common unit (image
    pixels): a rarely-lit pixel is not blown up to unit spread. A channel whose spread is zero (constant in training,
    or an IQR of zero for the robust method and a zero standard deviation too) gets scale 1, so it
    never divides by zero: a later deviation on such a channel counts in its raw units.

    >>> n = Normalization.fit(np.array([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0]], np.float32), "standard")
    >>> n.transform(np.array([[2.0, 6.0]], np.float32)).tolist()
    [[0.0, 1.0]]
    """

    method: str
    center: np.ndarray  # float32 [F]
    scale: np.ndarray  # float32 [F], > 0
    log_scale: np.ndarray | None = None  # float32 [F], > 0; only for "log-robust"

    @property
    def log(self) -> bool:
        return self.log_scale is not None

    @classmethod
    def fit(cls, X: np.ndarray, method: str = "robust") -> Normalization:
        if method not in METHODS:
            raise ValueError(f"expected normalization method in {METHODS}, got {method!r}")
        X = np.asarray(X, np.float64)
        log_scale = None
        if method == "log-robust":
            lo, hi = np.percentile(np.abs(X), [10, 99], axis=0)
            log_scale = np.maximum(np.maximum(lo, 1e-3 * hi), 1e-12)
            X = np.arcsinh(X / log_scale)
        std = X.std(axis=0)
        if method in ("robust", "log-robust"):
            q25, center, q75 = np.percentile(X, [25, 50, 75], axis=0)
            scale = (q75 - q25) / _IQR_TO_STD
            scale = np.where(scale > 0, scale, std)  # sparse or near-binary channels: IQR 0, spread > 0
        elif method == "global":
            center = X.mean(axis=0)
            scale = np.full_like(std, np.sqrt(np.mean(std**2)))
        else:
            center, scale = X.mean(axis=0), std
        tiny = 1e-6 * np.maximum(np.abs(center), 1.0)  # below float32 resolution of the channel's level
        scale = np.where(scale > tiny, scale, 1.0)
        log32 = None if log_scale is None else log_scale.astype(np.float32)
        return cls(method, center.astype(np.float32), scale.astype(np.float32), log32)

    def transform(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, np.float32)
        if self.log_scale is not None:
            X = np.arcsinh(X / self.log_scale)
        return ((X - self.center) / self.scale).astype(np.float32, copy=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form for the manifest (float32 -> float64 lists round-trip exactly)."""
        d = {"method": self.method, "center": self.center.tolist(), "scale": self.scale.tolist()}
        if self.log_scale is not None:
            d["log_scale"] = self.log_scale.tolist()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Normalization:
        log_scale = None if d.get("log_scale") is None else np.asarray(d["log_scale"], np.float32)
        return cls(d["method"], np.asarray(d["center"], np.float32), np.asarray(d["scale"], np.float32), log_scale)


class Standardize(nn.Module):
    """The torch side of Normalization: buffers, so they travel with the weights and the device.

    `log=True` adds a `log_scale` buffer (asinh first); without it the state dict is the one that
    models saved before the log option had, so they keep loading.
    """

    center: torch.Tensor
    scale: torch.Tensor
    log_scale: torch.Tensor  # registered only when log=True

    def __init__(self, n_features: int, log: bool = False) -> None:
        super().__init__()
        self.register_buffer("center", torch.zeros(n_features))
        self.register_buffer("scale", torch.ones(n_features))
        self.log = log
        if log:
            self.register_buffer("log_scale", torch.ones(n_features))

    @torch.no_grad()
    def set_(self, norm: Normalization) -> Standardize:
        if norm.log != self.log:
            raise ValueError(f"expected a normalization with log={self.log}, got method {norm.method!r}")
        self.center.copy_(torch.from_numpy(norm.center))
        self.scale.copy_(torch.from_numpy(norm.scale))
        if self.log:
            assert norm.log_scale is not None  # norm.log == self.log, checked above
            self.log_scale.copy_(torch.from_numpy(norm.log_scale))
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.log:
            return torch.div(x, self.log_scale).asinh_().sub_(self.center).div_(self.scale)
        return torch.sub(x, self.center).div_(self.scale)  # one allocation, not two
