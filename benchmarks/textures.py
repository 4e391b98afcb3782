"""Procedural industrial-like surfaces with low-contrast defects and pixel masks (pure numpy/scipy).

Used by benchmarks/image_quality.py and the image-scorer tests; nothing here knows about a scorer.

Every surface is first built as a zero-mean, unit-std float field (the texture), defects are added to
that field in units of the texture's own standard deviation (so "amplitude 0.8" means a change smaller
than the texture's normal variation), and only then is the per-image lighting applied: gain, offset, a
linear illumination gradient, vignetting and sensor noise, quantized to uint8 grayscale.

    >>> gen = SurfaceGenerator("woven", size=64, seed=0)
    >>> normal = gen.normal(3)
    >>> images, masks = gen.defective(2, "scratch")
    >>> normal.shape, normal.dtype, images.shape, masks.dtype, bool(masks.any(axis=(1, 2)).all())
    ((3, 64, 64), dtype('uint8'), (2, 64, 64), dtype('bool'), True)
"""

from __future__ import annotations

from itertools import pairwise
from typing import Final

import numpy as np
from scipy.ndimage import gaussian_filter, map_coordinates

SURFACES: Final = ("brushed", "milled", "cast", "woven", "tile")
DEFECTS: Final = ("scratch", "blowhole", "crack", "uneven", "fraying")


def _unit(field: np.ndarray) -> np.ndarray:
    field = field - field.mean()
    return field / max(float(field.std()), 1e-6)


# ----------------------------------------------------------------------------- surfaces (unit-std fields)


def brushed(rng: np.random.Generator, size: int) -> np.ndarray:
    """Brushed metal: noise smeared along one direction (a few degrees of jitter), plus fine grain."""
    big = int(size * 1.5)
    streaks = gaussian_filter(rng.normal(size=(big, big)), sigma=(0.6, 14.0))
    angle = rng.uniform(-3, 3) * np.pi / 180
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) - size / 2
    ys = yy * np.cos(angle) + xx * np.sin(angle) + big / 2
    xs = -yy * np.sin(angle) + xx * np.cos(angle) + big / 2
    field = map_coordinates(streaks, [ys, xs], order=1, mode="reflect")
    return _unit(_unit(field) + 0.35 * rng.normal(size=(size, size)))


def milled(rng: np.random.Generator, size: int) -> np.ndarray:
    """Face-milled metal: tool-mark arcs around an off-image centre, with harmonics and grain."""
    cy, cx = rng.uniform(-2.0, -1.0) * size, rng.uniform(0.2, 0.8) * size
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    r = np.hypot(yy - cy, xx - cx)
    period = rng.uniform(5.5, 6.5)
    phase = rng.uniform(0, 2 * np.pi)
    marks = np.sin(2 * np.pi * r / period + phase) + 0.4 * np.sin(4 * np.pi * r / period + 2 * phase)
    grain = gaussian_filter(rng.normal(size=(size, size)), 0.8)
    return _unit(_unit(marks) + 0.6 * _unit(grain))


def cast(rng: np.random.Generator, size: int) -> np.ndarray:
    """Sand-cast surface: multi-scale blobby noise with a sprinkle of tiny normal pits."""
    field = _unit(gaussian_filter(rng.normal(size=(size, size)), 1.0))
    field += 0.7 * _unit(gaussian_filter(rng.normal(size=(size, size)), 3.0))
    field += 0.3 * _unit(gaussian_filter(rng.normal(size=(size, size)), 8.0))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    for _ in range(rng.poisson(size * size / 800)):
        py, px = rng.uniform(0, size, 2)
        field -= 1.2 * np.exp(-((yy - py) ** 2 + (xx - px) ** 2) / (2 * 0.8**2))
    return _unit(field)


def woven(rng: np.random.Generator, size: int) -> np.ndarray:
    """Plain-weave fabric: warp and weft threads alternating over/under, with thread jitter and fuzz."""
    period = rng.uniform(7.5, 8.5)
    oy, ox = rng.uniform(0, period, 2)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    jitter_x = 0.6 * gaussian_filter(rng.normal(size=size), 6.0)[None, :] * 4
    jitter_y = 0.6 * gaussian_filter(rng.normal(size=size), 6.0)[:, None] * 4
    u, v = (xx + ox + jitter_y) / period, (yy + oy + jitter_x) / period
    warp = np.sin(np.pi * (u % 1.0)) ** 2  # thread profiles across x
    weft = np.sin(np.pi * (v % 1.0)) ** 2
    over = (np.floor(u) + np.floor(v)) % 2 == 0
    field = np.where(over, warp * (0.6 + 0.4 * weft), weft * (0.6 + 0.4 * warp))
    fuzz = gaussian_filter(rng.normal(size=(size, size)), 0.7)
    return _unit(_unit(field) + 0.35 * _unit(fuzz))


def tile(rng: np.random.Generator, size: int) -> np.ndarray:
    """Ceramic tile: speckled tiles with slightly different tone, separated by recessed grout lines."""
    pitch = rng.uniform(30, 34)
    oy, ox = rng.uniform(0, pitch, 2)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    ty, tx = np.floor((yy + oy) / pitch), np.floor((xx + ox) / pitch)
    tone = np.sin(ty * 12.9898 + tx * 78.233 + rng.uniform(0, 100)) * 0.25
    dy = np.abs(((yy + oy) % pitch) - pitch / 2)
    dx = np.abs(((xx + ox) % pitch) - pitch / 2)
    grout = np.clip(pitch / 2 - np.maximum(dy, dx), 0, 2.0) / 2.0  # 0 on the grout line, 1 inside
    speckle = _unit(gaussian_filter(rng.normal(size=(size, size)), 0.9)) + 0.5 * _unit(
        gaussian_filter(rng.normal(size=(size, size)), 2.5)
    )
    field = tone + 0.35 * speckle + 2.0 * (grout - 1)
    return _unit(field)


_SURFACE_FNS: Final = {"brushed": brushed, "milled": milled, "cast": cast, "woven": woven, "tile": tile}


# ----------------------------------------------------------------------------- defects (in texture-std units)


def _segment_distance(yy: np.ndarray, xx: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Distance from every pixel to a polyline given as points [P, 2] (y, x)."""
    dist = np.full(yy.shape, np.inf)
    for (y0, x0), (y1, x1) in pairwise(pts):
        vy, vx = y1 - y0, x1 - x0
        t = np.clip(((yy - y0) * vy + (xx - x0) * vx) / max(vy * vy + vx * vx, 1e-9), 0, 1)
        dist = np.minimum(dist, np.hypot(yy - (y0 + t * vy), xx - (x0 + t * vx)))
    return dist


def scratch(field: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A fine, slightly curved line 1-1.5 px wide, 20-45% of the frame long, a bit brighter or darker."""
    size = field.shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    length = rng.uniform(0.2, 0.45) * size
    angle = rng.uniform(0, np.pi)
    cy, cx = rng.uniform(0.25, 0.75, 2) * size
    t = np.linspace(-0.5, 0.5, 12)[:, None]
    bend = rng.uniform(-0.08, 0.08) * length * (1 - (2 * t) ** 2)
    pts = np.c_[
        cy + t * length * np.sin(angle) + bend * np.cos(angle), cx + t * length * np.cos(angle) - bend * np.sin(angle)
    ]
    width = rng.uniform(0.5, 0.8)
    profile = np.exp(-(_segment_distance(yy, xx, pts) ** 2) / (2 * width**2))
    amplitude = rng.choice([-1, 1]) * rng.uniform(1.0, 1.6)
    return field + amplitude * profile, profile > 0.3


def blowhole(field: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A small round pore (radius 2-4 px): darker, smoothed-over centre with a faint bright rim."""
    size = field.shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    cy, cx = rng.uniform(0.15, 0.85, 2) * size
    radius = rng.uniform(2.0, 4.0)
    d = np.hypot(yy - cy, xx - cx) / radius
    inside = 1 / (1 + np.exp((d - 1) * 6))
    rim = np.exp(-((d - 1.15) ** 2) / 0.05)
    smoothed = gaussian_filter(field, 1.5)
    out = field * (1 - 0.6 * inside) + 0.6 * inside * smoothed - rng.uniform(1.0, 1.6) * inside + 0.5 * rim
    return out, d <= 1.2


def crack(field: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A thin dark branching-free crack: a random walk with persistent direction, 25-50% of the frame."""
    size = field.shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    steps = 14
    step = rng.uniform(0.25, 0.5) * size / steps
    heading = rng.uniform(0, 2 * np.pi)
    p = rng.uniform(0.3, 0.7, 2) * size
    pts = [p.copy()]
    for _ in range(steps):
        heading += rng.normal(0, 0.45)
        p = p + step * np.array([np.sin(heading), np.cos(heading)])
        pts.append(p.copy())
    dist = _segment_distance(yy, xx, np.array(pts))
    profile = np.exp(-(dist**2) / (2 * 0.55**2))
    return field - rng.uniform(1.0, 1.5) * profile, profile > 0.3


def uneven(field: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """An uneven patch (stain, coating or polish variation): a soft-edged blob 12-30 px across where the
    texture is slightly smoothed and shifted in tone."""
    size = field.shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    cy, cx = rng.uniform(0.25, 0.75, 2) * size
    ry, rx = rng.uniform(6, 15, 2)
    angle = rng.uniform(0, np.pi)
    u = ((yy - cy) * np.cos(angle) + (xx - cx) * np.sin(angle)) / ry
    v = (-(yy - cy) * np.sin(angle) + (xx - cx) * np.cos(angle)) / rx
    w = 1 / (1 + np.exp((np.hypot(u, v) - 1) * 5))
    smoothed = gaussian_filter(field, 1.2)
    blend = rng.uniform(0.4, 0.6)
    out = field * (1 - blend * w) + blend * w * smoothed + rng.choice([-1, 1]) * rng.uniform(0.4, 0.7) * w
    return out, w > 0.5


def fraying(field: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Local disorder of the structure (frayed threads, smeared marks): a blob 10-20 px across where the
    texture is displaced by a smooth random warp of 1.5-3 px; same tone and contrast as its surroundings."""
    size = field.shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    cy, cx = rng.uniform(0.25, 0.75, 2) * size
    radius = rng.uniform(5, 10)
    w = 1 / (1 + np.exp((np.hypot(yy - cy, xx - cx) / radius - 1) * 5))
    strength = rng.uniform(1.5, 3.0)
    dy = _unit(gaussian_filter(rng.normal(size=field.shape), 2.0)) * strength * w
    dx = _unit(gaussian_filter(rng.normal(size=field.shape), 2.0)) * strength * w
    out = map_coordinates(field, [yy + dy, xx + dx], order=1, mode="reflect")
    return out, w > 0.5


_DEFECT_FNS: Final = {"scratch": scratch, "blowhole": blowhole, "crack": crack, "uneven": uneven, "fraying": fraying}


# ----------------------------------------------------------------------------- lighting and generator


def light(field: np.ndarray, rng: np.random.Generator, noise: float = 2.0) -> np.ndarray:
    """uint8 image from a unit-std field: random gain/offset, illumination gradient, vignetting, sensor noise."""
    size = field.shape[0]
    yy, xx = (np.mgrid[0:size, 0:size].astype(np.float64) / size) - 0.5
    contrast = rng.uniform(14, 22)
    offset = rng.uniform(95, 150)
    gy, gx = rng.uniform(-25, 25, 2)
    vignette = rng.uniform(0, 20) * (yy**2 + xx**2) * 2
    img = offset + contrast * field + gy * yy + gx * xx - vignette + rng.normal(0, noise, field.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


class SurfaceGenerator:
    """Seeded stream of one surface's images: `normal(n)` and `defective(n, defect)` with masks."""

    def __init__(self, surface: str, size: int = 128, seed: int = 0) -> None:
        if surface not in _SURFACE_FNS:
            raise ValueError(f"expected surface in {list(SURFACES)}, got {surface!r}")
        self.surface, self.size = surface, int(size)
        self.rng = np.random.default_rng([seed, SURFACES.index(surface)])

    def normal(self, n: int) -> np.ndarray:
        """uint8 [n, size, size] defect-free images."""
        fn = _SURFACE_FNS[self.surface]
        return np.stack([light(fn(self.rng, self.size), self.rng) for _ in range(n)])

    def defective(self, n: int, defect: str) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 [n, size, size] images, bool [n, size, size] defect masks), one defect per image."""
        if defect not in _DEFECT_FNS:
            raise ValueError(f"expected defect in {list(DEFECTS)}, got {defect!r}")
        images, masks = [], []
        for _ in range(n):
            field, mask = _DEFECT_FNS[defect](_SURFACE_FNS[self.surface](self.rng, self.size), self.rng)
            images.append(light(field, self.rng))
            masks.append(mask)
        return np.stack(images), np.stack(masks)
