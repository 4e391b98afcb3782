"""Test media written with the real encoders: MP4 clips (PyAV, H.264) with and without a drawn defect."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SIZE = 64


def texture(rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """uint8 [size, size]: stripes with jittered frequency and phase plus mild noise (a woven surface)."""
    xx = np.arange(size, dtype=np.float32)[None, :].repeat(size, axis=0)
    f, ph = rng.uniform(0.28, 0.32), rng.uniform(0, 2 * np.pi)
    img = 110 + 40 * np.sin(f * xx + ph) + rng.normal(0, 4, (size, size))
    return np.clip(img, 0, 255).astype(np.uint8)


def with_defect(image: np.ndarray, row: int | None = None) -> np.ndarray:
    """A saturated disc (radius 16 px) centred on `row` (default: the middle), half-way across: what a line
    camera sees of a hole or a bright inclusion."""
    out = image.copy()
    cy, cx = image.shape[0] // 2 if row is None else row, image.shape[1] // 2
    yy, xx = np.mgrid[0 : image.shape[0], 0 : image.shape[1]]
    out[(yy - cy) ** 2 + (xx - cx) ** 2 <= 256] = 255
    return out


def web(lines: int, seed: int = 5, width: int = SIZE) -> np.ndarray:
    """uint8 [lines, width]: the woven surface as a line-scan camera sees it passing, one row per line."""
    rng = np.random.default_rng(seed)
    xx = np.arange(width, dtype=np.float32)[None, :]
    img = 110 + 40 * np.sin(0.3 * xx + 1.0) + rng.normal(0, 4, (lines, width))
    return np.clip(img, 0, 255).astype(np.uint8)


def write_mp4(path: Path, frames: list[np.ndarray], fps: int = 25) -> Path:
    """Grey frames as an H.264 MP4 (near-lossless, every frame a keyframe so each decodes alone)."""
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "10", "g": "1"}
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="gray")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def clip(path: Path, n: int, defects: set[int] = frozenset(), seed: int = 0, fps: int = 25) -> Path:
    """An MP4 of `n` textures, frames whose index is in `defects` with a drawn defect."""
    rng = np.random.default_rng(seed)
    frames = [texture(rng) for _ in range(n)]
    return write_mp4(path, [with_defect(f) if i in defects else f for i, f in enumerate(frames)], fps)
