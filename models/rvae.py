"""Residual variational autoencoder (RVAE) anomaly scorer for sensor vectors.

Read top to bottom: config -> residual unit -> network -> scorer (fit, score, explain, save, load).

The network is a fully connected encoder and decoder, each a stack of `n_layers` pre-activation
identity residual units (He et al. 2016, "Identity mappings in deep residual networks"):

    x_{l+1} = x_l + F(x_l),   F = BN -> act -> Linear -> BN -> act -> Linear

with linear projections where the width changes (input -> hidden -> latent and back). One switch,
`kind`, reruns the original study's comparison on the same units:

    kind    units                 latent
    ae      plain, F(x) only      deterministic (mu)
    vae     plain                 Gaussian, loss = MSE + beta * KL
    rae     residual              deterministic
    rvae    residual              Gaussian

The anomaly score is the reconstruction error of the *latent mean* path (no sampling), so a score is
deterministic: the mean over features of the squared error in normalized units; `explain` returns the
per-feature terms, whose row mean is the score.

Temporal context (`window=W > 1`): the network sees the last W rows of one source, flattened oldest
first, as one input of W * F values; `fit(X)` and `score(X)` read X as one time-ordered sequence, and
rows with fewer than W - 1 predecessors are padded with the sequence's first row. The score is the mean
squared error over the whole window; `explain` averages it over lags ([N, F]); `top_features` names the
feature and the lag ("pressure_out@t-2"); `score_with_history` carries the last W - 1 rows across
batches for a streaming worker, and `score_sequences` scores many sources' rows that way in one pass.

Sizes left unset (None) come from `models.rvae_defaults.default_config(n_features, n_rows, window)`:
the network from the width at construction, the schedule and the small-data fallback from the rows in
`fit` (the network is rebuilt there if the fallback changes it).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch
from torch import nn

from models.device import autocast, batches, pick_device
from models.early_stopping import EarlyStopping
from models.normalization import METHODS, Normalization, Standardize
from models.persistence import load_scorer_dir, save_scorer_dir
from models.rvae_defaults import default_config, default_normalization
from models.validation import as_vectors

KINDS = ("ae", "vae", "rae", "rvae")
_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}


@dataclass
class RVAEConfig:
    n_features: int
    kind: str = "rvae"
    n_layers: int = 2  # residual units in the encoder, and again in the decoder
    hidden: int = 64
    latent: int = 8
    beta: float = 1.0  # weight of KL(q(z|x) || N(0, I)); ignored by ae/rae
    clip_grad_norm: float | None = 5.0  # None disables clipping (the norm is still logged)
    activation: str = "relu"
    normalization: str = "robust"  # "robust" (median/IQR), "standard" (mean/std), "log-robust" (asinh, then robust)
    seed: int = 0
    dropout: float = 0.0  # on each unit's residual branch and after the input projection, training only
    window: int = 1  # rows of one source the network sees at once (1 = the row alone)
    whiten: bool = False  # score whitened residuals (see ResidualWhitener); False = plain squared error

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"expected kind in {KINDS}, got {self.kind!r}")
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"expected activation in {tuple(_ACTIVATIONS)}, got {self.activation!r}")
        if self.normalization not in METHODS:
            raise ValueError(f"expected normalization in {METHODS}, got {self.normalization!r}")
        for name in ("n_features", "hidden", "latent"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"expected {name} >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"expected 0 <= dropout < 1, got {self.dropout}")
        if int(self.window) < 1:
            raise ValueError(f"expected window >= 1, got {self.window}")
        if self.n_layers < 0:
            raise ValueError(f"expected n_layers >= 0, got {self.n_layers}")
        if self.clip_grad_norm is not None and not self.clip_grad_norm > 0:
            raise ValueError(f"expected clip_grad_norm > 0 or None, got {self.clip_grad_norm}")

    @property
    def residual(self) -> bool:
        return self.kind in ("rae", "rvae")

    @property
    def variational(self) -> bool:
        return self.kind in ("vae", "rvae")


# ----------------------------------------------------------------------------- network


class Unit(nn.Module):
    """One pre-activation unit; `residual=False` drops the identity skip (the plain baseline)."""

    def __init__(self, width: int, activation: str, residual: bool, dropout: float = 0.0) -> None:
        super().__init__()
        act = _ACTIVATIONS[activation]
        self.f = nn.Sequential(
            nn.BatchNorm1d(width), act(), nn.Linear(width, width), nn.BatchNorm1d(width), act(), nn.Linear(width, width)
        )
        self.residual = residual
        self.dropout = dropout  # functional, so the state dict keeps the keys saved models have

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = nn.functional.dropout(self.f(x), self.dropout, self.training) if self.dropout else self.f(x)
        return x + h if self.residual else h


class Tower(nn.Module):
    """Linear projection in, `n_layers` units, final BN -> act (as in pre-activation ResNets), projection out."""

    def __init__(self, d_in: int, d_out: int, cfg: RVAEConfig) -> None:
        super().__init__()
        self.proj_in = nn.Linear(d_in, cfg.hidden)
        self.dropout = cfg.dropout
        self.units = nn.Sequential(
            *(Unit(cfg.hidden, cfg.activation, cfg.residual, cfg.dropout) for _ in range(cfg.n_layers))
        )
        self.post = nn.Sequential(nn.BatchNorm1d(cfg.hidden), _ACTIVATIONS[cfg.activation]())
        self.proj_out = nn.Linear(cfg.hidden, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj_in(x)
        if self.dropout:
            h = nn.functional.dropout(h, self.dropout, self.training)
        return self.proj_out(self.post(self.units(h)))


class RVAE(nn.Module):
    """Normalized x -> (mu, log sigma^2) -> reconstruction of normalized x."""

    def __init__(self, cfg: RVAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        # The encoder emits mu and log sigma^2 side by side; deterministic kinds only mu.
        width = cfg.n_features * cfg.window
        self.encoder = Tower(width, cfg.latent * (2 if cfg.variational else 1), cfg)
        self.decoder = Tower(cfg.latent, width, cfg)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.encoder(x)
        if not self.cfg.variational:
            return h, None
        mu, logvar = h.chunk(2, dim=1)
        return mu, logvar.clamp(-30.0, 20.0)  # keeps exp() finite under fp16/bf16 and huge learning rates

    def forward(
        self, x: torch.Tensor, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Reconstruction from mu + sigma * noise (training) or from mu alone (noise=None: scoring)."""
        mu, logvar = self.encode(x)
        z = mu if noise is None or logvar is None else mu + torch.exp(0.5 * logvar) * noise
        return self.decoder(z), mu, logvar


class ResidualWhitener(nn.Module):
    """Symmetric (ZCA) whitening of reconstruction residuals: r -> r @ M, M = C^{-1/2}.

    C is the residual covariance on the training rows, shrunk towards its diagonal (Ledoit-Wolf
    intensity) and with eigenvalues floored at 1% of their mean, so a few hundred rows of a
    784-wide input still give a well-conditioned M. Whitened residuals weigh an error by how
    unusual it is for *that* feature and *that* combination: a sensor the network reconstructs
    to within its noise counts its small offsets, correlated errors that normal data shows are
    not counted twice. ZCA keeps each whitened term closest to its own feature (Kessy et al.
    2018), so the squared terms still explain the score per feature.
    """

    matrix: torch.Tensor

    def __init__(self, width: int) -> None:
        super().__init__()
        self.register_buffer("matrix", torch.eye(width))

    @torch.no_grad()
    def fit_(self, residuals: torch.Tensor) -> float:
        """Set M from residual rows [n, width]; returns the shrinkage intensity used."""
        R = residuals.double().cpu()
        R = R - R.mean(0)
        n = len(R)
        S = R.T @ R / n
        diag = torch.diag(torch.diag(S))
        R2 = R.square()
        phi = ((R2.T @ R2) / n - S.square()).sum() / n
        gamma = (S - diag).square().sum()
        shrink = float((phi / gamma).clamp(0.0, 1.0)) if gamma > 0 else 1.0
        C = (1 - shrink) * S + shrink * diag
        w, V = torch.linalg.eigh(C)
        w = w.clamp_min(max(0.01 * float(w.mean()), 1e-12))
        self.matrix.copy_(((V * w.rsqrt()) @ V.T).to(self.matrix))
        return shrink

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        return r @ self.matrix


def kl_to_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, I)) per row, summed over latent dimensions."""
    return 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar).sum(dim=1)


# ----------------------------------------------------------------------------- scorer


class RVAEScorer:
    """Autoencoder anomaly scorer for sensor vectors (raw units in, float32 scores out).

    loss = MSE (mean over features, normalized units) + beta * KL / width, so beta is relative
    to a per-feature error and the numbers are comparable across sensor counts. Training holds out
    `val_fraction` of the rows for early stopping; their scores become `calibration_scores`, from
    which the streaming worker initialises its alert threshold. Sizes left as None come from
    `models.rvae_defaults` (see the module docstring); `normalization=None` picks "log-robust" in
    `fit` for non-negative magnitudes spanning decades, else "robust".

    >>> X = np.random.default_rng(0).normal(size=(256, 4)).astype("float32")
    >>> s = RVAEScorer(n_features=4, n_layers=1, hidden=16, latent=2, device="cpu")
    >>> history = s.fit(X, epochs=2, batch_size=64)
    >>> s.score(X[:3]).shape, s.score(X[:3]).dtype
    ((3,), dtype('float32'))
    >>> bool(np.allclose(s.explain(X[:3]).mean(axis=1), s.score(X[:3])))
    True
    >>> w = RVAEScorer(n_features=4, window=3, n_layers=1, hidden=16, latent=2, device="cpu")
    >>> _ = w.fit(X, epochs=2, batch_size=64)
    >>> scores, history = w.score_with_history(None, X[:10])
    >>> bool(np.allclose(w.score_with_history(history, X[10:20])[0], w.score(X[:20])[10:], atol=1e-6))
    True
    """

    data_kind: Final = "vectors"

    def __init__(
        self,
        n_features: int,
        kind: str = "rvae",
        n_layers: int | None = None,
        hidden: int | None = None,
        latent: int | None = None,
        beta: float | None = None,
        clip_grad_norm: float | None = 5.0,
        seed: int = 0,
        device: str | torch.device | None = None,
        feature_names: list[str] | None = None,
        activation: str = "relu",
        normalization: str | None = None,
        score_batch_size: int | None = None,
        dropout: float | None = None,
        window: int = 1,
        whiten: bool | None = None,
    ) -> None:
        given = {"n_layers": n_layers, "hidden": hidden, "latent": latent, "beta": beta, "dropout": dropout}
        self._auto = {k for k, v in given.items() if v is None}  # resolved from the data's shape (again in fit)
        self._auto_normalization = normalization is None
        d = default_config(int(n_features), None, int(window))
        resolved = {k: (getattr(d, k) if v is None else v) for k, v in given.items()}
        if whiten is None:
            self._auto.add("whiten")
        whiten = d.whiten if whiten is None else bool(whiten)
        self.config = RVAEConfig(
            n_features=int(n_features), kind=kind, n_layers=int(resolved["n_layers"]), hidden=int(resolved["hidden"]),
            latent=int(resolved["latent"]), beta=float(resolved["beta"]),
            clip_grad_norm=None if clip_grad_norm is None else float(clip_grad_norm), activation=activation,
            normalization=normalization or "robust", seed=int(seed), dropout=float(resolved["dropout"]),
            window=int(window), whiten=whiten,
        )  # fmt: skip
        self.n_features = self.config.n_features
        self.window = self.config.window
        self.kind = kind
        self.feature_names = list(feature_names) if feature_names is not None else [f"f{i}" for i in range(n_features)]
        if len(self.feature_names) != self.n_features:
            raise ValueError(f"expected {self.n_features} feature names, got {len(self.feature_names)}")
        self.device = pick_device(device)
        # Rows per forward when scoring: on CPU 2048 keeps activations in cache (one 8192-row forward
        # measured ~20% slower per row); on CUDA larger batches keep the device busy.
        self.score_batch_size = int(score_batch_size or (8192 if self.device.type == "cuda" else 2048))
        self.normalization: Normalization | None = None
        self.calibration_scores: np.ndarray | None = None
        self.history: dict[str, Any] = {}
        self._build()

    def _build(self) -> None:
        """(Re)create normalization module and network from `self.config`, seeded."""
        with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's global RNG
            torch.manual_seed(self.config.seed)
            self.standardize = Standardize(self.n_features, log=self.config.normalization == "log-robust")
            self.net = RVAE(self.config)
        width = self.n_features * self.window
        self.whitener = ResidualWhitener(width).to(self.device) if self.config.whiten else None
        self.standardize.to(self.device).eval()
        self.net.to(self.device).eval()

    @property
    def input_names(self) -> list[str]:
        """Names of the network's W * F inputs, oldest lag first: "name" when W = 1, else "name@t-k"."""
        if self.window == 1:
            return list(self.feature_names)
        lag = lambda k: "t" if k == 0 else f"t-{k}"  # noqa: E731
        return [f"{n}@{lag(k)}" for k in range(self.window - 1, -1, -1) for n in self.feature_names]

    # --------------------------------------------------------------------- training

    def _loss(self, x: torch.Tensor, noise: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(total loss, reconstruction MSE) averaged over the batch; x is already normalized."""
        with autocast(self.device):
            recon, mu, logvar = self.net(x, noise)
        mse = (recon.float() - x).square().mean()
        if logvar is None:
            return mse, mse
        kl = kl_to_standard_normal(mu.float(), logvar.float()).mean()
        return mse + self.config.beta * kl / x.shape[1], mse

    def _resolve_for_rows(self, X: np.ndarray, n_train: int) -> None:
        """Apply the row-dependent defaults (and the data-dependent normalization) to unset fields."""
        d = default_config(self.n_features, n_train, self.window)
        changes = {k: getattr(d, k) for k in self._auto if getattr(self.config, k) != getattr(d, k)}
        if self._auto_normalization and (norm := default_normalization(X)) != self.config.normalization:
            changes["normalization"] = norm
        if changes:
            for k, v in changes.items():
                setattr(self.config, k, v)
            self._build()

    def fit(
        self,
        X: np.ndarray,
        epochs: int | None = None,
        batch_size: int | None = None,
        lr: float = 1e-3,
        val_fraction: float = 0.1,
        patience: int | str | None = "auto",
        weight_decay: float | None = None,
        progress: bool = False,
    ) -> dict[str, Any]:
        """Fit normalization and network on normal data; return the history.

        X is [N, F] in raw units (one time-ordered sequence of one source when window > 1). The last
        `val_fraction` of a seeded shuffle of the rows (windows) is held out: early stopping (stop after
        `patience` epochs without a better validation loss, then restore the best weights; None trains
        all epochs) and calibration scores. `epochs`, `batch_size`, `patience="auto"` and
        `weight_decay` left unset come from `default_config(n_features, training rows, window)`.
        History: per-epoch `train_loss`, `train_mse`, `val_loss`; per-step `grad_norm` (before
        clipping); `clipped_fraction`, `skipped_steps` (non-finite gradients), `best_epoch`,
        `epochs_run`, and the `settings` used.
        """
        X = as_vectors(X, self.n_features)
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"expected 0 <= val_fraction < 1, got {val_fraction}")
        rng = np.random.default_rng(self.config.seed)
        order = rng.permutation(len(X))
        n_val = math.ceil(len(X) * val_fraction) if val_fraction > 0 else 0
        train_idx, val_idx = order[: len(X) - n_val], order[len(X) - n_val :]
        if len(train_idx) < 2:
            raise ValueError(
                f"expected at least 2 training rows after holding out {n_val} for validation, got {len(X)}"
            )
        self._resolve_for_rows(X[train_idx], len(X))
        d = default_config(self.n_features, len(X), self.window)
        epochs = d.epochs if epochs is None else int(epochs)
        batch_size = d.batch_size if batch_size is None else int(batch_size)
        if patience == "auto":
            patience = d.patience
        elif isinstance(patience, str):
            raise ValueError(f'expected patience to be an int, None or "auto", got {patience!r}')
        weight_decay = d.weight_decay if weight_decay is None else float(weight_decay)

        self.normalization = Normalization.fit(X[train_idx], self.config.normalization)
        self.standardize.set_(self.normalization)
        # The training set is small next to device memory: normalize it once, keep it on the device.
        with torch.no_grad():
            Z = self._inputs(self.standardize(torch.from_numpy(X).to(self.device)), None)
        Z_train, Z_val = Z[torch.from_numpy(train_idx).to(self.device)], Z[torch.from_numpy(val_idx).to(self.device)]

        gen = torch.Generator(device=self.device).manual_seed(self.config.seed)
        opt = torch.optim.Adam(self.net.parameters(), lr=lr, weight_decay=weight_decay)
        fp16 = self.device.type == "cuda" and not torch.cuda.is_bf16_supported()
        scaler = torch.amp.GradScaler("cuda", enabled=fp16)
        max_norm = self.config.clip_grad_norm if self.config.clip_grad_norm is not None else math.inf
        hist: dict[str, Any] = {"train_loss": [], "train_mse": [], "val_loss": [], "grad_norm": []}
        stopping = EarlyStopping(self.net, patience)
        n_skipped = 0

        epoch_iter: Iterable[int] = range(epochs)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            epoch_iter = bar = tqdm(epoch_iter, desc=f"fit {self.kind}", unit="epoch")
        for epoch in epoch_iter:
            self.net.train()
            perm = torch.from_numpy(rng.permutation(len(Z_train))).to(self.device)
            if len(perm) % batch_size == 1:
                perm = perm[:-1]  # BatchNorm cannot train on a batch of one row
            losses, mses, norms = [], [], []
            for sl in batches(len(perm), batch_size):
                x = Z_train[perm[sl]]
                noise = None
                if self.config.variational:
                    noise = torch.randn((len(x), self.config.latent), generator=gen, device=self.device)
                loss, mse = self._loss(x, noise)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
                norm = torch.nn.utils.clip_grad_norm_(self.net.parameters(), max_norm)
                if torch.isfinite(norm):  # (one host sync per step; negligible next to these small steps)
                    scaler.step(opt)
                else:  # a non-finite gradient would poison the weights: skip the step, count it
                    n_skipped += 1
                scaler.update()
                losses.append(loss.detach())
                mses.append(mse.detach())
                norms.append(norm.detach())
            # One device sync per epoch rather than per step.
            hist["train_loss"].append(float(torch.stack(losses).mean()))
            hist["train_mse"].append(float(torch.stack(mses).mean()))
            hist["grad_norm"].extend(torch.stack(norms).float().cpu().tolist())

            if len(Z_val):
                self.net.eval()
                with torch.inference_mode():
                    val = float(self._loss(Z_val, None)[0])
                hist["val_loss"].append(val)
            stop = bool(len(Z_val)) and stopping.update(epoch, hist["val_loss"][-1])
            if bar is not None:
                bar.set_postfix(
                    loss=f"{hist['train_loss'][-1]:.4f}", val=f"{hist['val_loss'][-1]:.4f}" if len(Z_val) else "-"
                )
            if stop:
                break

        stopping.restore()
        self.net.eval()
        grad = np.asarray(hist["grad_norm"], np.float64)
        hist["clip_grad_norm"] = self.config.clip_grad_norm
        hist["clipped_fraction"] = float((grad > max_norm).mean()) if grad.size else 0.0
        hist["skipped_steps"] = n_skipped
        hist["best_epoch"] = stopping.best_epoch
        hist["epochs_run"] = len(hist["train_loss"])
        hist["settings"] = {
            **asdict(self.config),
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": lr,
            "patience": patience,
            "weight_decay": weight_decay,
        }
        # Calibration: held-out normal rows (windows) scored by the final model (training rows if nothing was
        # held out, which biases the threshold low).
        with torch.inference_mode():
            if self.whitener is not None:  # residual covariance of the training rows, final weights
                self.whitener.matrix.copy_(torch.eye(len(self.whitener.matrix), device=self.device))
                resid = torch.cat([self._residuals(Z_train[sl]) for sl in batches(len(Z_train), self.score_batch_size)])
                hist["whitening_shrinkage"] = self.whitener.fit_(resid)
            cal = self._window_errors(Z[torch.from_numpy(val_idx if n_val else train_idx).to(self.device)], True)
        self.calibration_scores = cal.cpu().numpy()
        self.history = hist
        return hist

    # --------------------------------------------------------------------- windows

    def _padded(self, z: torch.Tensor, history: torch.Tensor | None) -> torch.Tensor:
        """Normalized rows [N, F] after normalized history [h, F] -> the N + W - 1 rows their windows span.

        Rows with fewer than W - 1 predecessors are padded with the first row of history + rows.
        """
        seq = z if history is None or not len(history) else torch.cat([history, z])
        pad = self.window - 1 - (len(seq) - len(z))
        if pad > 0:
            seq = torch.cat([seq[:1].expand(pad, -1), seq])
        return seq[len(seq) - len(z) - (self.window - 1) :]

    def _unfold(self, seq: torch.Tensor) -> torch.Tensor:
        """Rows [n + W - 1, F] -> windows [n, W * F], oldest lag first."""
        n = len(seq) - self.window + 1
        return seq.unfold(0, self.window, 1).transpose(1, 2).reshape(n, self.window * self.n_features)

    def _inputs(self, z: torch.Tensor, history: torch.Tensor | None) -> torch.Tensor:
        """Normalized rows [N, F] (+ normalized history) -> network inputs [N, W * F]."""
        return z if self.window == 1 else self._unfold(self._padded(z, history))

    def _residuals(self, x: torch.Tensor) -> torch.Tensor:
        """Normalized network inputs [n, W * F] -> reconstruction minus input (float32, latent mean path)."""
        with autocast(self.device):
            recon = self.net(x)[0]
        return recon.float().sub_(x) if self.device.type != "cpu" else recon - x

    def _window_errors(self, x: torch.Tensor, reduce: bool) -> torch.Tensor:
        """Normalized network inputs [n, W * F] -> squared (whitened) errors [n] or [n, W * F] (float32)."""
        r = self._residuals(x)
        err = (r if self.whitener is None else self.whitener(r)).square_()
        return err.mean(dim=1) if reduce else err

    # --------------------------------------------------------------------- scoring

    def _check_fitted(self) -> None:
        if self.normalization is None:
            raise RuntimeError("RVAEScorer is not fitted: call fit(X) or load a saved scorer first")

    def _rows(self, X: np.ndarray) -> tuple[np.ndarray, bool]:
        """(rows as C-contiguous float32 [N, F], whether their finiteness is still unchecked).

        The streaming case, a float32 array of the right shape, skips the [N, F] finiteness pass:
        a NaN or inf anywhere in a row always makes that row's error non-finite (the squared
        difference with its own normalized value), so `_errors` checks the N results instead and
        only then runs the full check, which raises the error naming the rows.
        """
        fast = isinstance(X, np.ndarray) and X.dtype == np.float32 and X.ndim == 2
        if fast and X.shape[1] == self.n_features and len(X) and self.window == 1:
            return np.ascontiguousarray(X), True
        return np.ascontiguousarray(as_vectors(X, self.n_features)), False

    @torch.inference_mode()
    def _errors(self, X: np.ndarray, reduce: bool, history: np.ndarray | None = None, lags: bool = False) -> np.ndarray:
        """Squared reconstruction error in normalized units, batched: [N] (mean), [N, F] (lag mean) or [N, W * F].

        Normalization runs on the device; one batch (the streaming case) returns its result's memory
        without an extra output buffer, larger inputs fill one preallocated array.
        """
        self._check_fitted()
        X, unchecked = self._rows(X)
        if self.window > 1:
            out = self._windowed_errors(X, reduce, history, lags)
        elif len(X) <= self.score_batch_size:
            out = self._batch_errors(torch.from_numpy(X), reduce).numpy()
        else:
            buf = torch.empty((len(X),) if reduce else X.shape, dtype=torch.float32)
            for sl in batches(len(X), self.score_batch_size):
                buf[sl] = self._batch_errors(torch.from_numpy(X[sl]), reduce)
            out = buf.numpy()
        if not math.isfinite(out.sum()):  # one pass over N (or N*F) results, not over the input
            if unchecked:
                as_vectors(X, self.n_features)  # raises for NaN/inf input, naming the rows
            # Finite input so far out of range that the network overflowed (inf - inf = NaN): the most
            # anomalous score there is, not a NaN that every threshold comparison would call normal.
            out[np.isnan(out)] = np.inf
        return out

    def _windowed_errors(self, X: np.ndarray, reduce: bool, history: np.ndarray | None, lags: bool) -> np.ndarray:
        """window > 1: normalize history + rows once (N x F is small), then forward window batches."""
        W, F = self.window, self.n_features
        z = self.standardize(torch.from_numpy(X).to(self.device))
        h = None if history is None or not len(history) else self.standardize(torch.from_numpy(history).to(self.device))
        full = self._padded(z, h)  # padded once; each batch slices its own W - 1 predecessors
        shape = (len(X),) if reduce else ((len(X), W * F) if lags else (len(X), F))
        out = np.empty(shape, np.float32)
        for sl in batches(len(X), self.score_batch_size):
            err = self._window_errors(self._unfold(full[sl.start : sl.stop + W - 1]), reduce)
            if not reduce and not lags:
                err = err.view(-1, W, F).mean(dim=1)
            out[sl] = err.cpu().numpy()
        return out

    def _batch_errors(self, x: torch.Tensor, reduce: bool) -> torch.Tensor:
        """One batch of raw CPU rows -> float32 CPU errors; callers hold inference mode."""
        on_cpu = self.device.type == "cpu"
        z = self.standardize.forward(x if on_cpu else x.to(self.device, non_blocking=True))  # (no hooks to run)
        if self.whitener is not None:
            return self._window_errors(z, reduce).cpu()
        if on_cpu:  # no autocast, dtype or device hops: each op costs microseconds, noticeable at small batches
            err = nn.functional.mse_loss(self.net(z)[0], z, reduction="none")
            return err.mean(dim=1) if reduce else err
        with autocast(self.device):
            recon = self.net(z)[0]
        err = recon.float().sub_(z).square_()  # in place: the reconstruction is not needed afterwards
        return (err.mean(dim=1) if reduce else err).cpu()

    def score(self, X: np.ndarray) -> np.ndarray:
        """float32 [N]: mean squared reconstruction error per feature (latent mean path); higher = more anomalous.

        With window > 1, X is one time-ordered sequence of one source (see the module docstring).
        """
        return self._errors(X, reduce=True)

    def explain(self, X: np.ndarray) -> np.ndarray:
        """float32 [N, F]: per-feature squared error in normalized units (mean over lags); row mean == score."""
        return self._errors(X, reduce=False)

    def explain_lags(self, X: np.ndarray, history: np.ndarray | None = None) -> np.ndarray:
        """float32 [N, W * F]: per-input squared error, ordered like `input_names` (oldest lag first)."""
        return self._errors(X, reduce=False, history=self._history(history), lags=True)

    def score_with_history(self, history: np.ndarray | None, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(scores [N], new history) for rows X that follow `history` (raw rows [h <= W - 1, F] or None).

        Carrying the returned history into the next call scores a stream in batches exactly as
        `score` scores the concatenated sequence. The history is raw (unnormalized) rows, so it stays
        valid across a model swap; for window 1 it is an empty [0, F] array.
        """
        hist = self._history(history)
        scores = self._errors(X, reduce=True, history=hist)
        return scores, self._carry(hist, as_vectors(X, self.n_features))

    def _carry(self, history: np.ndarray | None, X: np.ndarray) -> np.ndarray:
        """The last W - 1 raw rows of history + X (checked rows): what the next call takes as history."""
        keep = self.window - 1
        seq = X if history is None else np.concatenate([history, X])
        return np.ascontiguousarray(seq[len(seq) - min(keep, len(seq)) :]) if keep else X[:0].copy()

    def score_sequences(
        self, pairs: Sequence[tuple[np.ndarray | None, np.ndarray]]
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """`score_with_history` for many sources at once: [(history, rows)] -> [(scores, new history)].

        A streaming batch holds many sources with a few rows each: all rows are checked and normalized
        once, each window is gathered by index (a row before its sequence's start reads the first row, the
        padding of `score`), and the windows of every source go through the network together, a batch at a
        time (memory: the rows plus one batch of windows).
        """
        errors, carried = self._sequence_errors(pairs, reduce=True)
        return list(zip(errors, carried, strict=True))

    def explain_sequences(self, pairs: Sequence[tuple[np.ndarray | None, np.ndarray]]) -> list[np.ndarray]:
        """`explain_lags(rows, history)` for many (history, rows) pairs in one pass: float32 [n, W * F] each."""
        return self._sequence_errors(pairs, reduce=False)[0]

    @torch.inference_mode()
    def _sequence_errors(
        self, pairs: Sequence[tuple[np.ndarray | None, np.ndarray]], reduce: bool
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Errors ([n] or [n, W * F]) of each pair's rows after its history, and each pair's last W - 1 rows."""
        self._check_fitted()
        if not pairs:
            return [], []
        W, F = self.window, self.n_features
        pieces, n_hist, n_rows = [], [], []
        for history, x in pairs:
            h = None if history is None or len(history) == 0 else np.asarray(history)
            x = np.asarray(x)
            if h is not None and (h.ndim != 2 or h.shape[1] != F or len(h) > W - 1):
                raise ValueError(f"expected history of shape [<= {W - 1}, {F}] or None, got {h.shape}")
            if x.ndim != 2 or x.shape[1] != F or not len(x):
                raise ValueError(f"expected rows of shape [N >= 1, {F}], got {x.shape}")
            pieces += [x] if h is None else [h, x]
            n_hist.append(0 if h is None else len(h))
            n_rows.append(len(x))
        raw = as_vectors(np.concatenate(pieces), F)  # one dtype and finiteness check for every row
        hist_n, rows_n = np.array(n_hist), np.array(n_rows)
        seq_end = np.cumsum(hist_n + rows_n)
        seq_start, first = seq_end - hist_n - rows_n, seq_end - rows_n
        if W == 1:
            errors = self._errors(raw, reduce=reduce)
        else:
            # Row j of a source sits at first + j; its window reads rows j - W + 1 .. j, none before the sequence.
            row = np.repeat(first, rows_n) + np.arange(rows_n.sum()) - np.repeat(np.cumsum(rows_n) - rows_n, rows_n)
            idx = np.maximum(row[:, None] + np.arange(1 - W, 1), np.repeat(seq_start, rows_n)[:, None])
            z, index = self.standardize(torch.from_numpy(raw).to(self.device)), torch.from_numpy(idx).to(self.device)
            errors = np.empty((len(idx),) if reduce else (len(idx), W * F), np.float32)
            for sl in batches(len(idx), self.score_batch_size):
                windows = z[index[sl]].reshape(-1, W * F)  # [b, W, F] oldest first -> [b, W * F], as `_unfold`
                errors[sl] = self._window_errors(windows, reduce).cpu().numpy()
            if not math.isfinite(errors.sum()):  # overflow of finite input: the most anomalous there is (`_errors`)
                errors[np.isnan(errors)] = np.inf
        keep = np.minimum(W - 1, hist_n + rows_n)
        carried = [raw[e - k : e].copy() for e, k in zip(seq_end.tolist(), keep.tolist(), strict=True)]
        return np.split(errors, np.cumsum(rows_n)[:-1]), carried

    def _history(self, history: np.ndarray | None) -> np.ndarray | None:
        if history is None or len(history) == 0:
            return None
        history = np.asarray(history)
        if history.ndim != 2 or history.shape[1] != self.n_features or len(history) > self.window - 1:
            raise ValueError(
                f"expected history of shape [<= {self.window - 1}, {self.n_features}] or None, got {history.shape}"
            )
        return as_vectors(history, self.n_features)

    def top_features(self, x: np.ndarray, k: int = 3, history: np.ndarray | None = None) -> list[tuple[str, float]]:
        """The k inputs that contribute most to one row's score, for an alert's explanation.

        x is one row [F] (or rows [n, F] in time order, of which the last is explained, the others its
        history). With window > 1 the names carry the lag, e.g. "pressure_out@t-2".
        """
        x = np.asarray(x)
        rows = x.reshape(1, -1) if x.ndim == 1 else x
        if self.window == 1:
            contrib = self.explain(rows[-1:])[0]
        else:
            before = rows[:-1][-(self.window - 1) :]
            if history is not None and len(before) < self.window - 1:
                h = self._history(history)
                before = before if h is None else np.concatenate([h, before])[-(self.window - 1) :]
            contrib = self.explain_lags(rows[-1:], before if len(before) else None)[0]
        names = self.input_names
        return [(names[i], float(contrib[i])) for i in np.argsort(-contrib)[:k]]

    # --------------------------------------------------------------------- persistence

    def save(self, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Directory with weights.safetensors (network + normalization buffers) and manifest.json."""
        self._check_fitted()
        assert self.normalization is not None  # _check_fitted
        config = {
            **asdict(self.config),
            "feature_names": self.feature_names,
            "normalization_stats": self.normalization.to_dict(),
            "score": "mean over features (and window lags) of squared error, latent mean path, normalized units",
        }
        tensors = {f"net.{k}": v for k, v in self.net.state_dict().items()}
        tensors |= {f"norm.{k}": v for k, v in self.standardize.state_dict().items()}
        if self.whitener is not None:
            tensors |= {f"white.{k}": v for k, v in self.whitener.state_dict().items()}
        return save_scorer_dir(
            path,
            kind=self.kind,
            config=config,
            tensors=tensors,
            calibration_scores=self.calibration_scores,
            extra=extra,
        )

    @classmethod
    def load(
        cls, path: str | Path, device: str | torch.device | None = None, manifest_sha256: str | None = None
    ) -> RVAEScorer:
        """Inverse of save: hashes verified before anything is read (ModelIntegrityError otherwise).

        Every size comes from the manifest (manifests from before `dropout`/`window`/`whiten`
        existed load with 0.0, 1 and False); nothing is re-derived from defaults.
        """
        manifest, tensors = load_scorer_dir(path, manifest_sha256)
        cfg = dict(manifest["config"])
        feature_names = cfg.pop("feature_names")
        stats = cfg.pop("normalization_stats")
        cfg.pop("score", None)
        cfg.setdefault("dropout", 0.0)
        cfg.setdefault("whiten", False)
        scorer = cls(**cfg, device=device, feature_names=feature_names)
        scorer.net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
        scorer.standardize.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("norm.")})
        if scorer.whitener is not None:
            scorer.whitener.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("white.")})
        scorer.normalization = Normalization.from_dict(stats)
        if manifest.get("calibration_scores") is not None:
            scorer.calibration_scores = np.asarray(manifest["calibration_scores"], np.float32)
        return scorer
