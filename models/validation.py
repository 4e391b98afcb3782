"""Input checks shared by all scorers: errors say what was expected and what arrived."""

from __future__ import annotations

import numpy as np


def as_vectors(X: object, n_features: int) -> np.ndarray:
    """Return X as float32 [N, n_features] or raise ValueError naming the problem."""
    try:
        arr = np.asarray(X)
    except Exception as exc:  # ragged lists and the like
        raise ValueError(f"expected a float array of shape [N, {n_features}], got {type(X).__name__}: {exc}") from exc
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise ValueError(f"expected a numeric array of shape [N, {n_features}], got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-d array of shape [N, {n_features}], got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"expected at least one row of {n_features} features, got an empty batch")
    if arr.shape[1] != n_features:
        raise ValueError(f"expected {n_features} features per row, got {arr.shape[1]}")
    arr = arr.astype(np.float32, copy=False)
    bad = ~np.isfinite(arr)
    if bad.any():
        rows = np.unique(np.nonzero(bad)[0])[:5].tolist()
        raise ValueError(f"expected finite values, got NaN or inf in rows {rows}")
    return arr


def as_images(images: object) -> np.ndarray:
    """Return images as uint8 [N, H, W] or [N, H, W, 3] or raise ValueError naming the problem."""
    arr = np.asarray(images)
    if arr.dtype != np.uint8:
        raise ValueError(f"expected uint8 images [N, H, W] or [N, H, W, 3], got dtype {arr.dtype}")
    if arr.ndim not in (3, 4) or (arr.ndim == 4 and arr.shape[-1] != 3):
        raise ValueError(f"expected images shaped [N, H, W] or [N, H, W, 3], got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError("expected at least one image, got an empty batch")
    if min(arr.shape[1:3]) < 8:
        raise ValueError(f"expected images of at least 8x8 pixels, got {arr.shape[1]}x{arr.shape[2]}")
    return arr
