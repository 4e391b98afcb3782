"""Offline patch-memory image scorer: fixed multi-scale patch features + a memory of normal patches.

Read top to bottom: config -> features (lighting normalization, filter bank or random convolutions)
-> memories (nearest-neighbour coreset, or one Gaussian) -> scorer (fit, score, heatmap, save, load).

For sites with no pretrained weights. The idea is PatchCore's (Roth et al., CVPR 2022) and PaDiM's
(Defard et al., 2020) without an ImageNet backbone: every image becomes a grid of local feature vectors
(stride 4 px by default), a memory of normal patch vectors is kept, and a patch's anomaly is its distance
to that memory. The image score is the maximum of the (slightly smoothed) patch map, so one small defect
is enough to raise it; position is ignored, which suits textured surfaces whose pattern shifts from
frame to frame.

Features need no training data beyond normal images and no download:

- "filterbank" (default): Gaussian-derivative responses (L, Lx, Ly, Lxx, Lxy, Lyy) at scales 1, 2 and
  4 px, each pooled over the patch as a mean and as a root-mean-square (local energy): 36 channels.
- "random": a seeded, untrained three-stage ReLU convolution network (16/32/64 channels, strides 1/2/2),
  its stages pooled onto the stride grid and concatenated: 112 channels.

Before either, each image is turned into grayscale and its illumination removed: a wide Gaussian blur
(the lighting) is subtracted and the result divided by the image's own standard deviation, so gain,
offset and smooth gradients of the lamp do not look like defects (gain and offset exactly; a gradient
leaves a residue within about 3 * light_sigma of the frame's edges, where the padding folds it). Channels are then standardized with the
training patches' statistics.

Memories: "gaussian" (default) keeps one Ledoit-Wolf Gaussian over the normal patch vectors (fitted on at
most `coreset_candidates` random ones) and a patch's anomaly is its Mahalanobis distance: C x C numbers
whatever the training set, and scoring is one small matrix product per patch. "knn" keeps at most
`memory_size` patch vectors chosen by greedy k-centre coreset (PatchCore's, on a random projection) and a
patch's anomaly is the Euclidean distance to the nearest one; it can follow multi-modal textures but was
no better on the benchmark's surfaces and scored 5-10x slower. Measured comparison:
benchmarks/results/image_quality.json (benchmarks/image_quality.py).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch
import torch.nn.functional as F

from models.device import batches, pick_device
from models.persistence import load_scorer_dir, save_scorer_dir
from models.validation import as_images

KIND = "patch-memory"
FEATURES: Final = ("filterbank", "random")
MEMORIES: Final = ("knn", "gaussian")


@dataclass
class PatchMemoryConfig:
    features: str = "filterbank"
    memory: str = "gaussian"
    stride: int = 4  # px between patch centres (the heatmap's cell)
    patch: int = 8  # px side of the window each patch vector pools over
    scales: tuple[float, ...] = (1.0, 2.0, 4.0)  # filterbank Gaussian sigmas, px
    light_sigma: float = 12.0  # px; illumination = Gaussian blur at this sigma, subtracted
    memory_size: int = 4096  # knn: coreset size cap
    coreset_candidates: int = 40_000  # knn: random training patches the coreset is chosen from
    smooth_sigma: float = 1.0  # heatmap cells; smoothing before the max that makes the image score
    border: int = (
        2  # heatmap cells at each edge left out of the image score (padding artefacts), if the map is big enough
    )
    max_side: int | None = 256  # larger images are downscaled so their long side is this (None: never)
    val_fraction: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.features not in FEATURES:
            raise ValueError(f"expected features in {list(FEATURES)}, got {self.features!r}")
        if self.memory not in MEMORIES:
            raise ValueError(f"expected memory in {list(MEMORIES)}, got {self.memory!r}")
        if self.stride < 1 or self.patch < self.stride:
            raise ValueError(f"expected stride >= 1 and patch >= stride, got stride {self.stride}, patch {self.patch}")
        if self.memory_size < 1 or self.coreset_candidates < self.memory_size:
            raise ValueError(
                f"expected 1 <= memory_size <= coreset_candidates, got {self.memory_size}, {self.coreset_candidates}"
            )
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"expected 0 < val_fraction < 1, got {self.val_fraction}")
        if self.border < 0:
            raise ValueError(f"expected border >= 0, got {self.border}")
        self.scales = tuple(float(s) for s in self.scales)


# ----------------------------------------------------------------------------- features


def _gauss_1d(sigma: float, order: int) -> torch.Tensor:
    """Sampled Gaussian (order 0), first or second derivative kernel, radius 3 sigma."""
    r = max(1, math.ceil(3 * sigma))
    x = torch.arange(-r, r + 1, dtype=torch.float64)
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    if order == 1:
        g = -x / sigma**2 * g
    elif order == 2:
        g = (x**2 / sigma**4 - 1 / sigma**2) * g
    return g.float()


def _sep_conv(x: torch.Tensor, ky: torch.Tensor, kx: torch.Tensor) -> torch.Tensor:
    """Separable 2-d convolution of [B, 1, H, W] with reflect padding."""
    ry, rx = len(ky) // 2, len(kx) // 2
    x = F.conv2d(F.pad(x, (0, 0, ry, ry), mode="reflect"), ky.view(1, 1, -1, 1))
    return F.conv2d(F.pad(x, (rx, rx, 0, 0), mode="reflect"), kx.view(1, 1, 1, -1))


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    g = _gauss_1d(sigma, 0).to(x.device)
    # reflect padding needs pad < size; large sigmas on small images fall back to replicate
    r = len(g) // 2
    if r >= min(x.shape[-2:]):
        x = F.pad(x, (r, r, r, r), mode="replicate")
        return F.conv2d(F.conv2d(x, g.view(1, 1, -1, 1)), g.view(1, 1, 1, -1))
    return _sep_conv(x, g, g)


def random_convs(seed: int) -> list[torch.Tensor]:
    """Kaiming-normal 3x3 weights for the random feature network (1 -> 16 -> 32 -> 64 channels)."""
    gen = torch.Generator().manual_seed(seed)
    shapes = [(16, 1, 3, 3), (32, 16, 3, 3), (64, 32, 3, 3)]
    return [torch.randn(s, generator=gen) * math.sqrt(2.0 / (s[1] * 9)) for s in shapes]


class PatchFeatures:
    """uint8 images -> float32 [B, C, h, w] patch vectors on a stride grid (no standardization)."""

    def __init__(self, cfg: PatchMemoryConfig, device: torch.device, convs: list[torch.Tensor] | None = None) -> None:
        self.cfg, self.device = cfg, device
        # The filter bank as two convolutions: a y-pass into one channel per (scale, y-order), then a
        # depthwise x-pass per (scale, y-order, x-order); kernels zero-padded to the longest.
        r = max(max(1, math.ceil(3 * s)) for s in cfg.scales)
        pad = lambda k: F.pad(k, (r - len(k) // 2, r - len(k) // 2))  # noqa: E731
        self.radius = r
        self.ky = torch.stack([pad(_gauss_1d(s, oy)) for s in cfg.scales for oy in (0, 1, 2)]).view(-1, 1, 2 * r + 1, 1)
        pairs = [(i * 3 + oy, pad(_gauss_1d(s, ox))) for i, s in enumerate(cfg.scales) for oy, ox in _ORDERS]
        self.y_index = torch.tensor([j for j, _ in pairs], device=device)
        self.kx = torch.stack([k for _, k in pairs]).view(-1, 1, 1, 2 * r + 1).to(device)
        self.ky = self.ky.to(device)
        self.convs = [c.to(device) for c in (convs if convs is not None else random_convs(cfg.seed))]

    @property
    def n_channels(self) -> int:
        return 12 * len(self.cfg.scales) if self.cfg.features == "filterbank" else 16 + 32 + 64

    def prepare(self, images: np.ndarray) -> torch.Tensor:
        """Validated uint8 [B, H, W(, 3)] -> lighting-normalized float [B, 1, H', W'] on the device."""
        x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device).float()
        x = x.mean(dim=-1) if x.ndim == 4 else x
        x = x.unsqueeze(1) / 255.0
        h, w = x.shape[-2:]
        if self.cfg.max_side is not None and max(h, w) > self.cfg.max_side:
            f = self.cfg.max_side / max(h, w)
            size = (max(8, round(h * f)), max(8, round(w * f)))
            x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        x = x - _blur(x, self.cfg.light_sigma)
        return x / x.std(dim=(2, 3), keepdim=True).clamp_min(1e-4)

    def _pool(self, r: torch.Tensor) -> torch.Tensor:
        """Mean over each patch window on the stride grid ([B, C, H, W] -> [B, C, h, w])."""
        p, s = self.cfg.patch, self.cfg.stride
        pad = (p - s) // 2
        return F.avg_pool2d(r, p, s, padding=pad, count_include_pad=False)

    def __call__(self, images: np.ndarray) -> torch.Tensor:
        x = self.prepare(images)
        if self.cfg.features == "filterbank":
            r = self.radius
            mode = "reflect" if r < min(x.shape[-2:]) else "replicate"
            ys = F.conv2d(F.pad(x, (0, 0, r, r), mode=mode), self.ky)[:, self.y_index]
            resp = F.conv2d(F.pad(ys, (r, r, 0, 0), mode=mode), self.kx, groups=len(self.y_index))
            return torch.cat([self._pool(resp), self._pool(resp.square()).sqrt()], dim=1)
        stages, h = [], x
        for i, w in enumerate(self.convs):
            h = F.relu(F.conv2d(F.pad(h, (1, 1, 1, 1), mode="reflect"), w, stride=1 if i == 0 else 2))
            stages.append(h)
        first = self._pool(stages[0])
        grid = (
            first.shape[-2],
            first.shape[-1],
        )  # later stages: to the grid, then a 3x3 neighbourhood mean (PatchCore's)
        later = [F.avg_pool2d(F.adaptive_avg_pool2d(st, grid), 3, 1, 1, count_include_pad=False) for st in stages[1:]]
        return torch.cat([first, *later], dim=1)


_ORDERS: Final = ((0, 0), (0, 1), (1, 0), (0, 2), (1, 1), (2, 0))  # (d/dy, d/dx) orders: L, Lx, Ly, Lxx, Lxy, Lyy


# ----------------------------------------------------------------------------- memories


def greedy_coreset(x: torch.Tensor, k: int, seed: int, proj_dim: int = 32) -> torch.Tensor:
    """Indices of k rows of x [N, C] chosen by greedy k-centre (farthest point) on a random projection."""
    if k >= len(x):
        return torch.arange(len(x))
    gen = torch.Generator().manual_seed(seed)
    if x.shape[1] > proj_dim:
        proj = torch.randn(x.shape[1], proj_dim, generator=gen).to(x) / math.sqrt(proj_dim)
        z = x @ proj
    else:
        z = x
    chosen = torch.empty(k, dtype=torch.long)
    i = int(torch.randint(len(z), (1,), generator=gen))
    dist = torch.full((len(z),), float("inf"), dtype=z.dtype, device=z.device)
    for j in range(k):
        chosen[j] = i
        dist = torch.minimum(dist, (z - z[i]).square().sum(dim=1))
        i = int(dist.argmax())
    return chosen


def nearest_distance(q: torch.Tensor, bank: torch.Tensor, bank_sq: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Euclidean distance of each row of q [M, C] to its nearest row of bank [K, C]."""
    out = []
    for start in range(0, len(q), chunk):
        qq = q[start : start + chunk]
        d2 = qq.square().sum(dim=1, keepdim=True) - 2 * qq @ bank.T + bank_sq
        out.append(d2.amin(dim=1).clamp_min(0).sqrt())
    return torch.cat(out)


# ----------------------------------------------------------------------------- scorer


class PatchMemoryScorer:
    """Patch-memory anomaly scorer for uint8 images that needs no pretrained weights (offline sites).

    Images are [N, H, W] grayscale or [N, H, W, 3] RGB (averaged to gray). `fit` keeps `val_fraction`
    of the normal images (seeded) out of the memory and scores them into `calibration_scores`.
    `heatmap` is the patch-distance map on the stride grid ([N, ceil(H/stride), ceil(W/stride)]).

    >>> rng = np.random.default_rng(0)
    >>> images = rng.integers(90, 160, size=(12, 32, 32), dtype=np.uint8)
    >>> s = PatchMemoryScorer(memory_size=200, device="cpu")
    >>> history = s.fit(images)
    >>> s.score(images[:3]).shape, s.heatmap(images[:3]).shape, s.calibration_scores.shape
    ((3,), (3, 8, 8), (2,))
    """

    data_kind: Final = "images"
    kind = KIND

    def __init__(
        self,
        features: str = "filterbank",
        memory: str = "gaussian",
        stride: int = 4,
        patch: int = 8,
        scales: tuple[float, ...] | list[float] = (1.0, 2.0, 4.0),
        light_sigma: float = 12.0,
        memory_size: int = 4096,
        coreset_candidates: int = 40_000,
        smooth_sigma: float = 1.0,
        border: int = 2,
        max_side: int | None = 256,
        val_fraction: float = 0.1,
        seed: int = 0,
        device: str | torch.device | None = None,
        score_batch_size: int = 32,
    ) -> None:
        self.config = PatchMemoryConfig(
            str(features), str(memory), int(stride), int(patch), tuple(scales), float(light_sigma), int(memory_size),
            int(coreset_candidates), float(smooth_sigma), int(border), None if max_side is None else int(max_side),
            float(val_fraction), int(seed),
        )  # fmt: skip
        self.device = pick_device(device)
        self.score_batch_size = int(score_batch_size)
        self.extractor = PatchFeatures(self.config, self.device)
        self.channel_mean: torch.Tensor | None = None  # [C]
        self.channel_std: torch.Tensor | None = None  # [C]
        self.bank: torch.Tensor | None = None  # knn: [K, C] standardized patch vectors
        self.gauss_mean: torch.Tensor | None = None  # gaussian: [C]
        self.gauss_precision: torch.Tensor | None = None  # gaussian: [C, C]
        self.calibration_scores: np.ndarray | None = None
        self.history: dict[str, Any] = {}

    # --------------------------------------------------------------------- fit

    def _features(self, images: np.ndarray) -> torch.Tensor:
        """Standardized patch vectors [B, h, w, C] (float32) for validated images."""
        assert self.channel_mean is not None and self.channel_std is not None  # callers fit or check first
        f = self.extractor(images).permute(0, 2, 3, 1)
        return (f - self.channel_mean) / self.channel_std

    def fit(self, images: np.ndarray) -> dict[str, Any]:
        """Build the memory from normal images; returns the history (counts, memory size, seconds)."""
        import time

        t0 = time.perf_counter()
        images = as_images(images)
        cfg = self.config
        n_cal = max(2, math.ceil(len(images) * cfg.val_fraction))
        if len(images) - n_cal < 2:
            raise ValueError(f"expected at least {n_cal + 2} normal images ({n_cal} are held out), got {len(images)}")
        rng = np.random.default_rng(cfg.seed)
        order = rng.permutation(len(images))
        train_idx, cal_idx = np.sort(order[n_cal:]), np.sort(order[:n_cal])

        gen = torch.Generator().manual_seed(cfg.seed)
        with torch.inference_mode():
            raw = torch.cat(
                [self.extractor(images[train_idx[sl]]).permute(0, 2, 3, 1).reshape(-1, self.extractor.n_channels)
                 for sl in batches(len(train_idx), self.score_batch_size)]
            )  # fmt: skip
            n_patches = len(raw)
            self.channel_mean = raw.mean(dim=0)
            self.channel_std = raw.std(dim=0).clamp_min(1e-6)
            z = (raw - self.channel_mean) / self.channel_std
            del raw
            if cfg.memory == "knn":
                if len(z) > cfg.coreset_candidates:
                    z = z[torch.randperm(len(z), generator=gen)[: cfg.coreset_candidates].to(z.device)]
                self.bank = z[greedy_coreset(z, cfg.memory_size, cfg.seed).to(z.device)].contiguous()
            else:
                from sklearn.covariance import LedoitWolf

                sample = z[torch.randperm(len(z), generator=gen)[: cfg.coreset_candidates].to(z.device)]
                lw = LedoitWolf().fit(sample.double().cpu().numpy())
                self.gauss_mean = torch.from_numpy(lw.location_).float().to(self.device)
                self.gauss_precision = torch.from_numpy(lw.precision_).float().to(self.device)
        self.calibration_scores = self.score(images[cal_idx])
        self.history = {
            "n_train": len(train_idx),
            "n_calibration": len(cal_idx),
            "n_patches": n_patches,
            "memory_rows": len(self.bank) if self.bank is not None else 0,
            "channels": self.extractor.n_channels,
            "fit_seconds": time.perf_counter() - t0,
        }
        return self.history

    # --------------------------------------------------------------------- scoring

    def _check_fitted(self) -> None:
        if self.channel_mean is None:
            raise RuntimeError("PatchMemoryScorer is not fitted: call fit(images) or load a saved scorer first")

    def _patch_map(self, images: np.ndarray) -> torch.Tensor:
        """float32 [B, h, w] patch anomaly (nearest-memory or Mahalanobis distance) for validated images."""
        z = self._features(images)
        b, h, w, c = z.shape
        flat = z.reshape(-1, c)
        if self.bank is not None:
            d = nearest_distance(flat, self.bank, self.bank.square().sum(dim=1))
        else:
            assert self.gauss_mean is not None and self.gauss_precision is not None  # gaussian memory, fitted
            diff = flat - self.gauss_mean
            d = ((diff @ self.gauss_precision) * diff).sum(dim=1).clamp_min(0).sqrt()
        return d.view(b, h, w)

    @torch.inference_mode()
    def _maps(self, images: np.ndarray) -> torch.Tensor:
        self._check_fitted()
        images = as_images(images)
        return torch.cat([self._patch_map(images[sl]) for sl in batches(len(images), self.score_batch_size)])

    def score(self, images: np.ndarray) -> np.ndarray:
        """float32 [N]: maximum of the smoothed patch map away from its `border` cells; higher = more anomalous."""
        maps = self._maps(images).unsqueeze(1)
        if self.config.smooth_sigma > 0:
            maps = _blur(maps, self.config.smooth_sigma)
        b = self.config.border
        if b > 0 and min(maps.shape[-2:]) > 4 * b:
            maps = maps[..., b:-b, b:-b]
        return maps.flatten(1).amax(dim=1).cpu().numpy().astype(np.float32)

    def heatmap(self, images: np.ndarray) -> np.ndarray:
        """float32 [N, h, w]: each patch's distance to the normal memory, on the stride grid (unsmoothed)."""
        return self._maps(images).cpu().numpy().astype(np.float32)

    # --------------------------------------------------------------------- persistence

    def save(self, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Memory, channel statistics and (random features) the conv weights in weights.safetensors."""
        self._check_fitted()
        assert self.channel_mean is not None and self.channel_std is not None  # _check_fitted
        config = {**asdict(self.config), "score_batch_size": self.score_batch_size}
        config["scales"] = list(config["scales"])
        tensors: dict[str, torch.Tensor | np.ndarray] = {
            "channel_mean": self.channel_mean,
            "channel_std": self.channel_std,
        }
        if self.bank is not None:
            tensors["bank"] = self.bank
        else:
            assert self.gauss_mean is not None and self.gauss_precision is not None  # gaussian memory, fitted
            tensors |= {"gauss_mean": self.gauss_mean, "gauss_precision": self.gauss_precision}
        if self.config.features == "random":
            tensors |= {f"conv{i}": w for i, w in enumerate(self.extractor.convs)}
        return save_scorer_dir(
            path, kind=KIND, config=config, tensors=tensors, calibration_scores=self.calibration_scores, extra=extra
        )

    @classmethod
    def load(
        cls, path: str | Path, device: str | torch.device | None = None, manifest_sha256: str | None = None
    ) -> PatchMemoryScorer:
        """Inverse of save (file hashes verified first; no pickle)."""
        manifest, tensors = load_scorer_dir(path, manifest_sha256)
        scorer = cls(**manifest["config"], device=device)
        dev = scorer.device
        if scorer.config.features == "random":
            convs = [tensors[f"conv{i}"] for i in range(3)]
            scorer.extractor = PatchFeatures(scorer.config, dev, convs)
        scorer.channel_mean = tensors["channel_mean"].to(dev)
        scorer.channel_std = tensors["channel_std"].to(dev)
        if "bank" in tensors:
            scorer.bank = tensors["bank"].to(dev)
        else:
            scorer.gauss_mean = tensors["gauss_mean"].to(dev)
            scorer.gauss_precision = tensors["gauss_precision"].to(dev)
        if manifest.get("calibration_scores") is not None:
            scorer.calibration_scores = np.asarray(manifest["calibration_scores"], np.float32)
        return scorer
