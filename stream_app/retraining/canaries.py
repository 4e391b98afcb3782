"""Synthetic canary faults made from held-back normal data: pure functions, no I/O.

A retrained candidate must keep flagging faults the serving version flags. Confirmed incidents are the
best evidence but can be few or none (a quiet line), so every validation also scores canaries: copies of
held-back normal events with a typical fault injected. They are not ground truth for what a real fault
looks like; they are a regression check that a candidate has not gone blind to simple, plausible ones.

Vectors (robust sigma = 1.4826 * MAD of each feature on the holdout):
- ``offset``: one sensor (cycling over the features) offset by `k` robust sigmas;
- ``stuck``: one sensor stuck at a value `k` robust sigmas above its median for the whole sample;
- ``swap``: the pair of sensors whose medians differ most (in robust sigmas) swapped (wiring fault).
Images (uint8 [N, H, W] or [N, H, W, 3]):
- ``patch``: a square of another held-back image pasted at another place (foreign object);
- ``blur``: a square region box-blurred (dirt on the lens, defocus);
- ``scratch``: a bright or dark one-pixel line across the image.
Deterministic for a seed, so re-validating against another version scores the same canaries.
"""

from __future__ import annotations

import numpy as np

VECTOR_KINDS = ("offset", "stuck", "swap")
IMAGE_KINDS = ("patch", "blur", "scratch")


def robust_sigma(x: np.ndarray) -> np.ndarray:
    """1.4826 * median absolute deviation per feature (a sigma that outliers do not inflate), floored."""
    med = np.median(x, axis=0)
    mad = 1.4826 * np.median(np.abs(x - med), axis=0)
    return np.maximum(mad, 1e-6 * np.maximum(np.abs(med), 1.0))


def vector_canaries(
    holdout: np.ndarray, k: float = 6.0, n: int = 200, seed: int = 0, in_order: bool = False
) -> dict[str, np.ndarray]:
    """{kind: float32 [m, F]} canaries for vector events (m <= n rows drawn from the holdout; with `in_order`, a
    run of consecutive rows: a model with temporal context scores them as one sequence, and rows drawn at random
    would look anomalous by their order alone).

    >>> x = np.random.default_rng(0).normal(size=(100, 3)).astype(np.float32)
    >>> c = vector_canaries(x, k=6.0, n=10)
    >>> sorted(c), c["offset"].shape, c["swap"].shape
    (['offset', 'stuck', 'swap'], (10, 3), (10, 3))
    """
    x = np.asarray(holdout, np.float32)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"vector canaries need a holdout of shape [N, F] with N > 0, got {x.shape}")
    rng = np.random.default_rng(seed)
    m = min(n, len(x))
    if in_order:
        start = int(rng.integers(0, len(x) - m + 1))
        rows = x[start : start + m]
    else:
        rows = x[rng.choice(len(x), size=m, replace=False)]
    f = x.shape[1]
    med, sig = np.median(x, axis=0), robust_sigma(x)
    which = np.arange(len(rows)) % f
    offset = rows.copy()
    offset[np.arange(len(rows)), which] += (k * sig[which] * rng.choice([-1.0, 1.0], size=len(rows))).astype(np.float32)
    stuck = rows.copy()
    stuck[np.arange(len(rows)), which] = (med + k * sig)[which]
    out = {"offset": offset, "stuck": stuck}
    if f >= 2:
        gap = np.abs(med[:, None] - med[None, :]) / np.sqrt(sig[:, None] * sig[None, :])
        i, j = np.unravel_index(int(np.argmax(gap + np.eye(f) * -1.0)), gap.shape)
        swap = rows.copy()
        swap[:, [i, j]] = rows[:, [j, i]]
        out["swap"] = swap
    return out


def image_canaries(holdout: np.ndarray, n: int = 50, seed: int = 0) -> dict[str, np.ndarray]:
    """{kind: uint8 images} canaries for image events (same shape as the holdout images).

    >>> imgs = np.full((4, 32, 32), 128, np.uint8)
    >>> c = image_canaries(imgs, n=4)
    >>> sorted(c), c["scratch"].shape, bool((c["scratch"] != 128).any())
    (['blur', 'patch', 'scratch'], (4, 32, 32), True)
    """
    x = np.asarray(holdout)
    if x.ndim not in (3, 4) or len(x) == 0 or x.dtype != np.uint8:
        raise ValueError(f"image canaries need uint8 images [N, H, W(, 3)] with N > 0, got {x.dtype} {x.shape}")
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(x), size=min(n, len(x)), replace=False)
    rows = x[idx]
    h, w = x.shape[1:3]
    side = max(2, min(h, w) // 6)
    patch, blur, scratch = rows.copy(), rows.copy(), rows.copy()
    for m in range(len(rows)):
        y0, x0, y1, x1 = (int(v) for v in rng.integers(0, [h - side, w - side, h - side, w - side], endpoint=True))
        donor = x[rng.integers(len(x))]
        src = donor[y1 : y1 + side, x1 : x1 + side]
        patch[m, y0 : y0 + side, x0 : x0 + side] = 255 - src  # inverted, so a uniform image still changes
        region = blur[m, y0 : y0 + side, x0 : x0 + side].astype(np.float32)
        kern = max(1, side // 3)
        pad = np.pad(region, [(kern, kern), (kern, kern)] + [(0, 0)] * (region.ndim - 2), mode="edge")
        csum = pad.cumsum(0).cumsum(1)
        csum = np.pad(csum, [(1, 0), (1, 0)] + [(0, 0)] * (region.ndim - 2))
        k2 = 2 * kern + 1
        box = (csum[k2:, k2:] - csum[:-k2, k2:] - csum[k2:, :-k2] + csum[:-k2, :-k2]) / (k2 * k2)
        blur[m, y0 : y0 + side, x0 : x0 + side] = np.clip(box[: region.shape[0], : region.shape[1]], 0, 255)
        value = 255 if scratch[m].mean() < 128 else 0
        if rng.random() < 0.5:
            scratch[m, int(rng.integers(h)), :] = value
        else:
            scratch[m, :, int(rng.integers(w))] = value
    return {"patch": patch, "blur": blur, "scratch": scratch}


def canaries(
    kind: str, holdout: np.ndarray, k: float = 6.0, n: int = 200, seed: int = 0, in_order: bool = False
) -> dict[str, np.ndarray]:
    """Canaries for a data kind ("vectors" or "images"); none when the holdout is empty. `in_order`: vectors for a
    model with temporal context (see `vector_canaries`)."""
    if len(holdout) == 0:
        return {}
    if kind == "vectors":
        return vector_canaries(holdout, k=k, n=n, seed=seed, in_order=in_order)
    if kind == "images":
        return image_canaries(holdout, n=max(1, n // 4), seed=seed)
    raise ValueError(f"unknown data kind {kind!r}; expected 'vectors' or 'images'")
