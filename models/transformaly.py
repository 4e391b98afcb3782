"""Transformaly image anomaly scorer (Cohen & Avidan 2022) on any timm Vision Transformer.

Read top to bottom: config -> backbone (build, preprocess, one teacher pass) -> students -> scorer
(fit, score, heatmap, save, load).

Two views of one frozen ViT, each turned into a Gaussian log-likelihood on normal images:

1. Pretrained view: the pooled token (CLS after the final norm) -> PCA keeping `pca_variance` of the
   variance, whitened -> Ledoit-Wolf Gaussian (models.gaussian).
2. Teacher-student view: each of the last K teacher blocks gets a randomly initialised student block
   of the same architecture, trained (MSE) to map the teacher's input to that block onto the teacher's
   output. On normal images the students learn to agree with their teachers; on anything unusual they
   disagree. Per-block discrepancy (mean squared difference over tokens and channels) -> a K-vector ->
   a second Gaussian, fitted on held-out normal images the students never trained on.

score = -(log p_pretrained + log p_teacher_student), higher = more anomalous. With `standardize=True`
each term is z-scored on held-out normal images first (the paper adds them raw; raw is the default).
`heatmap` is the per-patch discrepancy averaged over the K blocks, on the ViT's patch grid.

The teacher runs once per fit over the training images: every block input the students need is
cached (when it fits in `cache_gb`), so an epoch only runs the K small student blocks.

Pinned backbones: the teacher's weights are referenced, not copied, so the manifest pins them by
`backbone_sha256`, a sha256 over the loaded backbone's state dict (sorted names, dtype, shape, bytes;
see `state_dict_sha256`). One digest for every source -- timm hub or its cache, a local weights file
(whose file sha256 is also kept), or a seeded random init -- and it hashes what actually runs (after
timm's checkpoint filters), so an upstream re-upload, a swapped cache entry or a changed file is refused
at load with ModelIntegrityError. `backbone_source` says "random-backbone", "timm-hub" or "file".
"""

from __future__ import annotations

import copy
import hashlib
import math
import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.device import autocast, batches, pick_device
from models.early_stopping import EarlyStopping
from models.gaussian import GaussianDensity
from models.persistence import ModelIntegrityError, load_scorer_dir, save_scorer_dir, sha256_file
from models.validation import as_images

KIND = "transformaly"
DEFAULT_BACKBONE = "vit_base_patch16_384.orig_in21k_ft_in1k"


TERMS = {"both": [0, 1], "pretrained": [0], "teacher_student": [1]}  # columns of score_terms


@dataclass
class TransformalyConfig:
    backbone: str = DEFAULT_BACKBONE
    pretrained: bool | str = True  # True: timm (hub/cache), False: seeded random init, str: local weights file
    n_blocks: int = 10  # last K blocks with a student; clipped to depth - 1
    pca_variance: float = 0.9
    epochs: int = 30
    lr: float = 1e-4
    batch_size: int = 32
    val_fraction: float = 0.2
    patience: int | None = 5
    seed: int = 0  # seeds the split, the students' init, shuffling, and a random backbone's init
    img_size: int | None = None  # passed to timm.create_model; None keeps the backbone's own size
    standardize: bool = False
    # Per-block pooling of the token discrepancies: "mean" over all tokens (the paper) or "max" over patch
    # tokens (small local defects; see docs/models.md for the measured difference on simulated frames).
    ts_pooling: str = "mean"
    # Which -log-likelihood terms make the score: "both" (the paper), or one of them. "teacher_student" suits a
    # random-init backbone (offline demos), whose pretrained-feature term carries no information.
    terms: str = "both"

    def __post_init__(self) -> None:
        if self.terms not in TERMS:
            raise ValueError(f"expected terms in {sorted(TERMS)}, got {self.terms!r}")
        if self.ts_pooling not in ("mean", "max"):
            raise ValueError(f"expected ts_pooling 'mean' or 'max', got {self.ts_pooling!r}")
        if self.n_blocks < 1:
            raise ValueError(f"expected n_blocks >= 1, got {self.n_blocks}")
        if not 0.0 < self.pca_variance <= 1.0:
            raise ValueError(f"expected 0 < pca_variance <= 1, got {self.pca_variance}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(
                f"expected 0 < val_fraction < 1 (the held-out split fits a Gaussian), got {self.val_fraction}"
            )
        if self.epochs < 0 or self.batch_size < 1:
            raise ValueError(f"expected epochs >= 0 and batch_size >= 1, got {self.epochs}, {self.batch_size}")


# TransformalyScorer's warning when n_blocks is clipped to the backbone's depth - 1 (for warnings.filterwarnings).
CLIP_WARNING = r".* has \d+ blocks: using the last \d+ \(n_blocks=\d+ clipped to depth - 1\)"


# ----------------------------------------------------------------------------- backbone

RANDOM_BACKBONE = "random-backbone"  # backbone_source of a seeded random init (no trained weights)


def state_dict_sha256(module_or_state: nn.Module | dict[str, torch.Tensor]) -> str:
    """sha256 over a state dict: for each name in sorted order, the name, dtype, shape and raw bytes.

    Independent of file format and of the device the tensors live on, so a hub download, its cache
    and a safetensors copy of the same weights agree.
    """
    state = module_or_state.state_dict() if isinstance(module_or_state, nn.Module) else module_or_state
    digest = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{str(t.dtype).removeprefix('torch.')}|{list(t.shape)}\n".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def known_architecture(arch: str) -> None:
    """A ValueError naming the choice when timm has no architecture `arch` (timm raises a bare RuntimeError)."""
    import timm

    if not timm.is_model(arch):
        raise ValueError(f"timm has no architecture {arch!r}; e.g. {', '.join(timm.list_models('vit_*')[:4])}")


def check_backbone_file(path: str | Path, arch: str) -> str:
    """The file's sha256 once a safetensors file is shown to load into timm `arch` (strict names and shapes).

    The classifier head (timm's `classifier` names) may be present or not, since the teacher drops it;
    every other tensor must match the architecture exactly. ValueError names the missing, unexpected
    and mis-shaped tensors; FileNotFoundError if there is no file. Nothing is pickled.
    """
    known_architecture(arch)
    import timm
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights file {path} does not exist")
    if path.suffix != ".safetensors":
        raise ValueError(f"expected a .safetensors weights file, got {path.name}")
    try:
        state = load_file(str(path), device="cpu")
    except Exception as exc:  # truncated or not safetensors at all
        raise ValueError(f"{path}: not a readable safetensors file ({exc})") from exc
    with torch.device("meta"):  # shapes only, no memory or init cost
        # Any: timm types create_model as nn.Module; pretrained_cfg is an attribute timm sets on the model.
        model: Any = timm.create_model(arch, pretrained=False)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    heads = model.pretrained_cfg.get("classifier") or "head"
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    is_head = lambda k: any(k == h or k.startswith(h + ".") for h in heads)  # noqa: E731
    missing = sorted(k for k in expected if k not in state and not is_head(k))
    unexpected = sorted(k for k in state if k not in expected)
    shapes = sorted(
        f"{k} {tuple(state[k].shape)} != {expected[k]}"
        for k in expected
        if k in state and tuple(state[k].shape) != expected[k] and not is_head(k)
    )
    if missing or unexpected or shapes:
        raise ValueError(
            f"{path} does not fit timm {arch}: missing {missing[:5]}{'…' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'…' if len(unexpected) > 5 else ''}, shapes {shapes[:5]}"
        )
    return sha256_file(path)


def build_backbone(cfg: TransformalyConfig) -> nn.Module:
    """The frozen teacher, on CPU, eval mode. Only pretrained=True may reach timm's hub (or its cache)."""
    import timm

    kwargs: dict[str, Any] = {"num_classes": 0}
    if cfg.img_size is not None:
        kwargs["img_size"] = int(cfg.img_size)
    known_architecture(cfg.backbone)
    if isinstance(cfg.pretrained, str):
        if not Path(cfg.pretrained).is_file():
            raise FileNotFoundError(f"pretrained weights file {cfg.pretrained} does not exist")
        # timm's own loader, so its checkpoint filters (position-embedding resize, head removal) apply.
        model = timm.create_model(
            cfg.backbone, pretrained=True, pretrained_cfg_overlay={"file": str(cfg.pretrained)}, **kwargs
        )
    elif cfg.pretrained:
        model = timm.create_model(cfg.backbone, pretrained=True, **kwargs)
    else:
        with torch.random.fork_rng(devices=[]):  # identical random backbone for the same seed, caller's RNG untouched
            torch.manual_seed(cfg.seed)
            model = timm.create_model(cfg.backbone, pretrained=False, **kwargs)
    for name in ("patch_embed", "_pos_embed", "norm_pre", "blocks", "norm", "forward_head"):
        if not hasattr(model, name):
            raise ValueError(f"expected a timm VisionTransformer-like backbone, {cfg.backbone} has no {name}")
    model.requires_grad_(False)
    return model.eval()


def reinit_(module: nn.Module) -> nn.Module:
    """Fresh random weights for a copied block: timm ViT init for Linear, defaults for the rest."""
    from timm.models.vision_transformer import init_weights_vit_timm

    for m in module.modules():
        if m is not module and hasattr(m, "reset_parameters"):
            m.reset_parameters()  # type: ignore[operator]  # nn.Module.__getattr__ is typed Tensor | Module
    module.apply(init_weights_vit_timm)
    return module


class Teacher(nn.Module):
    """One forward pass of the backbone that also returns the activations around the last K blocks.

    `acts[k]` is the input of student k (k < K) and `acts[k + 1]` its target, so K + 1 tensors
    [B, T, C] cover all K blocks.
    """

    # Any: a timm VisionTransformer-like model (build_backbone checks the names used); timm types it as
    # nn.Module, whose __getattr__ cannot see blocks, patch_embed, _pos_embed, pretrained_cfg, ...
    backbone: Any

    def __init__(self, backbone: nn.Module, n_blocks: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.first = len(self.backbone.blocks) - n_blocks

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        m = self.backbone
        x = m._pos_embed(m.patch_embed(x))
        x = m.norm_pre(m.patch_drop(x) if hasattr(m, "patch_drop") else x)
        acts = []
        for i, blk in enumerate(m.blocks):
            if i == self.first:
                acts.append(x)
            x = blk(x)
            if i >= self.first:
                acts.append(x)
        pooled = m.forward_head(m.norm(x), pre_logits=True)
        return pooled, acts


def discrepancy(students: nn.ModuleList, acts: list[torch.Tensor]) -> torch.Tensor:
    """float32 [B, K, T]: squared student-teacher difference per token, averaged over channels."""
    out = []
    for k, student in enumerate(students):
        pred = student(acts[k])
        out.append((pred.float() - acts[k + 1].float()).square().mean(dim=-1))
    return torch.stack(out, dim=1)


# ----------------------------------------------------------------------------- scorer


class TransformalyScorer:
    """Teacher-student + pretrained-feature Gaussian anomaly scorer for uint8 images.

    Images are [N, H, W] grayscale or [N, H, W, 3] RGB, any size: converted to 3 channels, resized to the
    backbone's input size and normalized with its mean/std inside. Fit holds out `val_fraction` of the
    images (seeded): half of them fit the teacher-student Gaussian (and the standardize statistics),
    the other half give early stopping together with the first half and `calibration_scores`, which
    no density has seen.

    >>> rng = np.random.default_rng(0)
    >>> images = rng.integers(0, 255, size=(16, 32, 32), dtype=np.uint8)
    >>> t = TransformalyScorer("vit_tiny_patch16_224", pretrained=False, img_size=32, n_blocks=2, device="cpu")
    >>> history = t.fit(images, epochs=1, batch_size=8)
    >>> t.score(images[:3]).shape, t.heatmap(images[:3]).shape
    ((3,), (3, 2, 2))
    """

    data_kind: Final = "images"
    kind = KIND

    def __init__(
        self,
        backbone: str = DEFAULT_BACKBONE,
        pretrained: bool | str = True,
        n_blocks: int = 10,
        pca_variance: float = 0.9,
        epochs: int = 30,
        lr: float = 1e-4,
        batch_size: int = 32,
        val_fraction: float = 0.2,
        patience: int | None = 5,
        seed: int = 0,
        device: str | torch.device | None = None,
        img_size: int | None = None,
        standardize: bool = False,
        score_batch_size: int = 64,
        ts_pooling: str = "mean",
        terms: str = "both",
    ) -> None:
        pretrained = str(pretrained) if isinstance(pretrained, Path) else pretrained
        self.config = TransformalyConfig(
            backbone, pretrained, int(n_blocks), float(pca_variance), int(epochs), float(lr), int(batch_size),
            float(val_fraction), None if patience is None else int(patience), int(seed),
            None if img_size is None else int(img_size), bool(standardize), str(ts_pooling), str(terms),
        )  # fmt: skip
        self.device = pick_device(device)
        self.score_batch_size = int(score_batch_size)
        # (a missing weights file is reported here; Any: timm ViT-like attributes, see Teacher)
        backbone_net: Any = build_backbone(self.config)
        self.weights_sha256 = sha256_file(Path(pretrained)) if isinstance(pretrained, str) else None
        self.backbone_sha256 = state_dict_sha256(backbone_net)  # what runs, whatever the source
        depth = len(backbone_net.blocks)
        self.n_blocks = min(self.config.n_blocks, depth - 1)
        if self.n_blocks < 1:
            raise ValueError(f"{backbone} has {depth} block(s); Transformaly needs at least 2")
        if self.n_blocks < self.config.n_blocks:
            warnings.warn(
                f"{backbone} has {depth} blocks: using the last {self.n_blocks} (n_blocks={self.config.n_blocks} "
                "clipped to depth - 1)",
                stacklevel=2,
            )
        self.teacher = Teacher(backbone_net, self.n_blocks).to(self.device).eval()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed + 1)
            self.students = nn.ModuleList(
                reinit_(copy.deepcopy(backbone_net.blocks[i])).requires_grad_(True)
                for i in range(self.teacher.first, depth)
            )
        self.students.to(self.device).eval()

        h, w = backbone_net.patch_embed.img_size
        self.input_size = (int(h), int(w))
        self.grid_size = tuple(int(g) for g in backbone_net.patch_embed.grid_size)
        self.n_prefix = int(getattr(backbone_net, "num_prefix_tokens", 1))
        data_cfg = backbone_net.pretrained_cfg or {}
        self.mean = tuple(float(v) for v in data_cfg.get("mean", (0.485, 0.456, 0.406)))
        self.std = tuple(float(v) for v in data_cfg.get("std", (0.229, 0.224, 0.225)))
        self._mean_t = torch.tensor(self.mean, device=self.device).view(1, 3, 1, 1)
        self._std_t = torch.tensor(self.std, device=self.device).view(1, 3, 1, 1)

        self.pretrained_density: GaussianDensity | None = None
        self.ts_density: GaussianDensity | None = None
        self.term_stats: np.ndarray | None = None  # [2, 2]: (mean, std) of each -log p term on normal images
        self.calibration_scores: np.ndarray | None = None
        self.history: dict[str, Any] = {}

    # --------------------------------------------------------------------- preprocessing

    def preprocess(self, images: np.ndarray) -> torch.Tensor:
        """uint8 [B, H, W(, 3)] (already validated) -> normalized float [B, 3, h, w] on the device."""
        x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device, non_blocking=True)
        x = x.unsqueeze(1).expand(-1, 3, -1, -1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
        x = x.float().div_(255.0)
        if tuple(x.shape[-2:]) != self.input_size:
            x = F.interpolate(x, size=self.input_size, mode="bilinear", antialias=True, align_corners=False)
        return (x - self._mean_t) / self._std_t

    def _teacher(self, images: np.ndarray) -> tuple[torch.Tensor, list[torch.Tensor]]:
        with autocast(self.device):
            return self.teacher(self.preprocess(images))

    # --------------------------------------------------------------------- training

    def _teacher_cache(self, images: np.ndarray, cache_gb: float) -> tuple[np.ndarray, torch.Tensor | None]:
        """Pooled features (float64 [N, C]) and, if it fits in `cache_gb`, all block activations [N, K+1, T, C].

        On CUDA the cache lives in device memory (bf16, as autocast produces it); on CPU in float32.
        """
        pooled, cache, decided = [], None, False
        cache_dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        with torch.no_grad():
            for sl in batches(len(images), self.score_batch_size):
                p, acts = self._teacher(images[sl])
                pooled.append(p.float().cpu().numpy().astype(np.float64))
                if not decided:  # sized from the first batch's K + 1 activations [B, T, C]
                    decided = True
                    per_image = sum(act[0].numel() for act in acts)
                    need_gb = len(images) * per_image * torch.finfo(cache_dtype).bits / 8 / 2**30
                    if need_gb <= cache_gb:
                        shape = (len(images), len(acts), *acts[0].shape[1:])
                        cache = torch.empty(shape, dtype=cache_dtype, device=self.device)
                if cache is not None:
                    for k, act in enumerate(acts):  # the assignment converts to cache_dtype
                        cache[sl, k] = act
        return np.concatenate(pooled), cache

    def _acts(self, images: np.ndarray, cache: torch.Tensor | None, idx: np.ndarray) -> list[torch.Tensor]:
        """Teacher activations for rows `idx`: from the cache, else a fresh teacher pass (no graph)."""
        if cache is not None:
            a = cache[torch.from_numpy(idx).to(cache.device)].to(self.device, non_blocking=True)
            return list(a.unbind(dim=1))
        with torch.no_grad():
            return self._teacher(images[idx])[1]

    def _pool(self, d: torch.Tensor) -> torch.Tensor:
        """[B, K, T] token discrepancies -> [B, K] per-block feature (config.ts_pooling)."""
        if self.config.ts_pooling == "max":
            return d[:, :, self.n_prefix :].amax(dim=2)
        return d.mean(dim=2)

    def _block_losses(self, images: np.ndarray, cache: torch.Tensor | None, idx: np.ndarray) -> np.ndarray:
        """float64 [len(idx), K]: per-block discrepancy (channel mean, then pooled over tokens), no gradients."""
        out = []
        with torch.inference_mode():
            for sl in batches(len(idx), self.score_batch_size):
                with autocast(self.device):
                    out.append(self._pool(discrepancy(self.students, self._acts(images, cache, idx[sl]))).cpu())
        return torch.cat(out).double().numpy()

    def fit(
        self,
        images: np.ndarray,
        epochs: int | None = None,
        batch_size: int | None = None,
        lr: float | None = None,
        patience: int | str | None = "config",
        progress: bool = False,
        cache_gb: float = 4.0,
    ) -> dict[str, Any]:
        """Fit both Gaussians and the students on normal images; return the history.

        Split (seeded): `train` (students, pretrained Gaussian), held-out `fit` half (teacher-student
        Gaussian, standardize stats) and `cal` half (calibration scores); early stopping watches the mean
        block loss on both held-out halves. History: per-epoch `train_loss`, `val_loss` (sum over blocks
        of the per-block MSE), `best_epoch`, `epochs_run`, `n_train`, `n_val`, `pca_components`,
        `cached_teacher`, `term_stats`.
        """
        images = as_images(images)
        cfg = self.config
        epochs = cfg.epochs if epochs is None else int(epochs)
        batch_size = cfg.batch_size if batch_size is None else int(batch_size)
        lr = cfg.lr if lr is None else float(lr)
        if patience == "config":
            patience = cfg.patience
        elif isinstance(patience, str):
            raise ValueError(f'expected patience to be an int, None or "config", got {patience!r}')
        rng = np.random.default_rng(cfg.seed)
        order = rng.permutation(len(images))
        n_val = max(4, math.ceil(len(images) * cfg.val_fraction))
        if len(images) - n_val < 3:
            raise ValueError(f"expected at least {n_val + 3} normal images ({n_val} are held out), got {len(images)}")
        train_idx, val_idx = np.sort(order[: len(images) - n_val]), np.sort(order[len(images) - n_val :])
        fit_idx, cal_idx = val_idx[: n_val // 2], val_idx[n_val // 2 :]

        pooled, cache = self._teacher_cache(images, cache_gb)
        cached = cache is not None
        self.pretrained_density = GaussianDensity.fit(pooled[train_idx], cfg.pca_variance)

        params = [p for s in self.students for p in s.parameters()]
        opt = torch.optim.Adam(params, lr=lr)
        fp16 = self.device.type == "cuda" and not torch.cuda.is_bf16_supported()
        scaler = torch.amp.GradScaler("cuda", enabled=fp16)
        hist: dict[str, Any] = {"train_loss": [], "val_loss": []}
        stopping = EarlyStopping(self.students, patience)
        epoch_iter: Iterable[int] = range(epochs)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            epoch_iter = bar = tqdm(epoch_iter, desc="fit transformaly students", unit="epoch")
        for epoch in epoch_iter:
            self.students.train()
            perm = rng.permutation(train_idx)
            losses = []
            for sl in batches(len(perm), batch_size):
                acts = self._acts(images, cache, perm[sl])
                with autocast(self.device):
                    loss = discrepancy(self.students, acts).mean(dim=(0, 2)).sum()  # each student's own MSE
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                losses.append(loss.detach())
            self.students.eval()
            hist["train_loss"].append(float(torch.stack(losses).mean()))
            val = float(self._block_losses(images, cache, val_idx).sum(axis=1).mean())
            hist["val_loss"].append(val)
            stop = stopping.update(epoch, val)
            if bar is not None:
                bar.set_postfix(loss=f"{hist['train_loss'][-1]:.4g}", val=f"{val:.4g}")
            if stop:
                break
        stopping.restore()
        self.students.eval()

        losses_fit = self._block_losses(images, cache, fit_idx)
        self.ts_density = GaussianDensity.fit(losses_fit)
        del cache
        terms = self._terms(pooled[fit_idx], losses_fit)
        self.term_stats = np.stack([terms.mean(axis=0), terms.std(axis=0).clip(min=1e-12)])
        self.calibration_scores = self.score(images[cal_idx])
        assert self.pretrained_density.pca is not None  # fitted with cfg.pca_variance, a float
        hist |= {
            "best_epoch": stopping.best_epoch,
            "epochs_run": len(hist["train_loss"]),
            "n_train": len(train_idx),
            "n_val": len(val_idx),
            "n_blocks": self.n_blocks,
            "pca_components": self.pretrained_density.pca.n_components,
            "cached_teacher": cached,
            "term_stats": self.term_stats.tolist(),
        }
        self.history = hist
        return hist

    # --------------------------------------------------------------------- scoring

    def _check_fitted(self) -> None:
        if self.pretrained_density is None or self.ts_density is None:
            raise RuntimeError("TransformalyScorer is not fitted: call fit(images) or load a saved scorer first")

    def _terms(self, pooled: np.ndarray, block_losses: np.ndarray) -> np.ndarray:
        """float64 [N, 2]: (-log p_pretrained, -log p_teacher_student)."""
        assert self.pretrained_density is not None and self.ts_density is not None  # fitted (callers check)
        return -np.stack(
            [self.pretrained_density.log_likelihood(pooled), self.ts_density.log_likelihood(block_losses)], axis=1
        )

    @torch.inference_mode()
    def _pass(self, images: np.ndarray, maps: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Batched teacher + students: pooled float64 [N, C], block losses float64 [N, K], maps float32 [N, T-p]."""
        images = as_images(images)
        pooled, losses, patch = [], [], []
        for sl in batches(len(images), self.score_batch_size):
            p, acts = self._teacher(images[sl])
            with autocast(self.device):
                d = discrepancy(self.students, acts)  # [B, K, T]
            pooled.append(p.float().cpu())
            losses.append(self._pool(d).cpu())
            if maps:
                patch.append(d[:, :, self.n_prefix :].mean(dim=1).cpu())
        return (
            torch.cat(pooled).double().numpy(),
            torch.cat(losses).double().numpy(),
            torch.cat(patch).numpy().astype(np.float32) if maps else None,
        )

    def score_terms(self, images: np.ndarray) -> np.ndarray:
        """float64 [N, 2]: the two -log-likelihood terms before they are added (standardized if configured)."""
        self._check_fitted()
        pooled, losses, _ = self._pass(images, maps=False)
        terms = self._terms(pooled, losses)
        if self.config.standardize:
            assert self.term_stats is not None  # set with the densities (fit, load)
            terms = (terms - self.term_stats[0]) / self.term_stats[1]
        return terms

    def score(self, images: np.ndarray) -> np.ndarray:
        """float32 [N]: -(log p_pretrained + log p_teacher_student); higher = more anomalous."""
        return self.score_terms(images)[:, TERMS[self.config.terms]].sum(axis=1).astype(np.float32)

    def heatmap(self, images: np.ndarray) -> np.ndarray:
        """float32 [N, h, w]: per-patch student-teacher discrepancy averaged over blocks, on the patch grid."""
        self._check_fitted()
        patch = self._pass(images, maps=True)[2]
        assert patch is not None  # maps=True
        return patch.reshape(len(patch), *self.grid_size)

    # --------------------------------------------------------------------- persistence

    @property
    def backbone_source(self) -> str:
        """ "random-backbone" (seeded random init, pretrained=False), "timm-hub" (pretrained=True) or "file"."""
        if isinstance(self.config.pretrained, str):
            return "file"
        return "timm-hub" if self.config.pretrained else RANDOM_BACKBONE

    def _pretrained_source(self) -> str:
        """Where the teacher's weights came from, in words a person can follow up."""
        if isinstance(self.config.pretrained, str):
            return f"file {self.config.pretrained} (sha256 {self.weights_sha256})"
        if not self.config.pretrained:
            return f"random init, torch.manual_seed({self.config.seed})"
        cfg = self.teacher.backbone.pretrained_cfg or {}
        return f"timm {cfg.get('hf_hub_id') or cfg.get('url') or self.config.backbone}"

    def save(self, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Students, Gaussians and term stats in weights.safetensors; the backbone is referenced, not copied.

        Manifest config: every constructor argument, plus how to get the backbone back: timm name, the
        pretrained source (True = timm hub/cache, False = random init from `backbone_init_seed`, else a
        file path with its `weights_sha256`, verified at load), `backbone_source` and `backbone_sha256`
        (the rebuilt backbone must match it at load).
        """
        self._check_fitted()
        config = {
            **asdict(self.config),
            "score_batch_size": self.score_batch_size,
            "backbone_init_seed": self.config.seed if self.config.pretrained is False else None,
            "weights_sha256": self.weights_sha256,
            "backbone_sha256": self.backbone_sha256,
            "backbone_source": self.backbone_source,
            "pretrained_source": self._pretrained_source(),
            "n_blocks_used": self.n_blocks,
            "input_size": list(self.input_size),
            "grid_size": list(self.grid_size),
            "mean": list(self.mean),
            "std": list(self.std),
            "score": "-(log p_pretrained(pooled token) + log p_teacher_student(per-block MSE))",
        }
        tensors: dict[str, torch.Tensor | np.ndarray] = {
            f"students.{k}": v for k, v in self.students.state_dict().items()
        }
        assert self.pretrained_density is not None and self.ts_density is not None  # _check_fitted
        tensors |= self.pretrained_density.to_arrays("pretrained")
        tensors |= self.ts_density.to_arrays("teacher_student")
        tensors["term_stats"] = np.ascontiguousarray(self.term_stats, np.float64)
        return save_scorer_dir(
            path, kind=KIND, config=config, tensors=tensors, calibration_scores=self.calibration_scores, extra=extra
        )

    @classmethod
    def load(
        cls, path: str | Path, device: str | torch.device | None = None, manifest_sha256: str | None = None
    ) -> TransformalyScorer:
        """Inverse of save: file hashes verified, the backbone rebuilt (and a local weights file re-hashed)."""
        manifest, tensors = load_scorer_dir(path, manifest_sha256)
        cfg = dict(manifest["config"])
        expected_sha = cfg.pop("weights_sha256")
        expected_backbone = cfg.pop("backbone_sha256", None)  # absent in manifests saved before pinning
        for derived in (
            "backbone_init_seed",
            "pretrained_source",
            "backbone_source",
            "n_blocks_used",
            "input_size",
            "grid_size",
            "mean",
            "std",
            "score",
        ):
            cfg.pop(derived, None)
        if isinstance(cfg["pretrained"], str):
            actual = sha256_file(Path(cfg["pretrained"])) if Path(cfg["pretrained"]).is_file() else "missing"
            if actual != expected_sha:
                raise ModelIntegrityError(
                    f"{path}: backbone weights {cfg['pretrained']} have sha256 {actual[:12]}…, manifest expects "
                    f"{str(expected_sha)[:12]}…"
                )
        with warnings.catch_warnings():
            # the clipping warning was given when the scorer was made
            warnings.filterwarnings("ignore", message=CLIP_WARNING, category=UserWarning)
            scorer = cls(**cfg, device=device)
        if expected_backbone is not None and scorer.backbone_sha256 != expected_backbone:
            raise ModelIntegrityError(
                f"{path}: backbone {cfg['backbone']} ({scorer.backbone_source}) loaded with state-dict sha256 "
                f"{scorer.backbone_sha256[:12]}…, manifest pins {expected_backbone[:12]}…"
            )
        scorer.students.load_state_dict({k[9:]: v for k, v in tensors.items() if k.startswith("students.")})
        arrays = {k: v.numpy() for k, v in tensors.items() if not k.startswith("students.")}
        scorer.pretrained_density = GaussianDensity.from_arrays(arrays, "pretrained")
        scorer.ts_density = GaussianDensity.from_arrays(arrays, "teacher_student")
        scorer.term_stats = arrays["term_stats"]
        if manifest.get("calibration_scores") is not None:
            scorer.calibration_scores = np.asarray(manifest["calibration_scores"], np.float32)
        return scorer
