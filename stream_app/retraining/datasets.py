"""Normal samples from files for `models fit`: a .npy array of vectors, or a folder of images."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class DataFileError(ValueError):
    """A training data file the user must fix; the message says what was expected."""


def load_vectors(path: Path) -> np.ndarray:
    """A [N, F] float array of normal samples from a .npy file (no pickles)."""
    try:
        X = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise DataFileError(f"{path}: not a plain numeric .npy array ({exc})") from None
    if X.ndim != 2 or X.shape[0] < 2 or not np.issubdtype(X.dtype, np.number):
        raise DataFileError(f"{path}: expected a numeric [N, F] array with N >= 2, got shape {X.shape} {X.dtype}")
    X = X.astype(np.float32)
    if not np.isfinite(X).all():
        raise DataFileError(f"{path}: {int((~np.isfinite(X)).sum())} NaN/inf values; expected finite samples")
    return X


def load_images(folder: Path) -> np.ndarray:
    """uint8 [N, H, W] (all grayscale) or [N, H, W, 3] images from a folder, resized to the most common size."""
    from PIL import Image

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataFileError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    images = []
    for f in files:
        try:
            with Image.open(f) as im:
                im.load()
                images.append(im.copy())
        except OSError as exc:
            raise DataFileError(f"{f}: not a readable image ({exc})") from None
    mode = "L" if all(im.mode in ("L", "1", "I;16") for im in images) else "RGB"
    size = Counter(im.size for im in images).most_common(1)[0][0]
    return np.stack([np.asarray(im.convert(mode).resize(size) if im.size != size else im.convert(mode))
                     for im in images]).astype(np.uint8)  # fmt: skip
