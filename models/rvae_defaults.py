"""RVAEScorer's defaults as a pure function of the data's shape.

`RVAEScorer(n_features=F)` leaves every size to this module: the network from the input width
(`n_features * window`), the schedule and the small-data fallback from the number of training rows,
which is only known in `fit`. Explicit constructor or `fit` arguments always win; a saved manifest
stores the resolved values, so loading never calls this module.

Evidence (`benchmarks/rvae_sweep.py` -> `benchmarks/results/rvae_sweep.json`, summarised with the
benchmarks in `benchmarks/results/RVAE_DEFAULTS.md`): narrow plant sensors (13 channels, 400 and 5,000
training rows), 512-bin vibration spectra and 784-pixel digits, one factor varied at a time around this
rule. Residual whitening and the normalization choice were the large, consistent gains; kind (rvae vs
rae), beta, latent x2, depth, dropout 0.1 and window 3/5 moved the plant's AUROC by about 0.01 either
way on one seed, so those stay at the simplest setting.

>>> d = default_config(8)
>>> (d.hidden, d.latent, d.n_layers)
(64, 3, 2)
>>> d = default_config(784, n_rows=6000)
>>> (d.hidden, d.latent, d.n_layers, d.batch_size) == (256, 28, 2, 128)
True
>>> default_config(784, n_rows=300).n_layers  # too little data for two units per tower
1
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

HIDDEN_MIN, HIDDEN_MAX = 64, 256  # hidden = next power of two >= width / 2, clipped to this range
LATENT_PER_SQRT_WIDTH = 1.0  # latent = round(this * sqrt(width)), clipped to [LATENT_MIN, LATENT_MAX]
LATENT_MIN, LATENT_MAX = 2, 32
SMALL_ROWS = 1000  # below this many training rows: one unit per tower, a narrower net, earlier stopping
# Few rows, wide input: fewer training rows than inputs (digits: ~125 rows x 784 pixels). The narrow-net
# cap keeps a floor of HIDDEN_MIN, so the latent keeps round(sqrt(width)) instead of being halved by a
# 32-wide layer, and early stopping waits FEW_ROWS_PATIENCE epochs: the 10% validation split is then a
# dozen rows whose loss is too noisy to stop on after 5 (digits, rvae_sweep.json `few_rows_wide`).
FEW_ROWS_PATIENCE = 20
STEPS = 1500  # optimizer steps to aim for; epochs = STEPS / steps per epoch, clipped to [EPOCHS_MIN, EPOCHS_MAX]
EPOCHS_MIN, EPOCHS_MAX = 20, 150
BETA = 1.0
DROPOUT = 0.0
WEIGHT_DECAY = 0.0
# Score whitened residuals (models.rvae.ResidualWhitener) when there are at least this many training rows
# per input: the residual covariance needs rows >> width (digits, ~125 rows x 784: 0.995 plain vs 0.989
# whitened; plant, 400-5,000 rows x 13: whitened clearly better).
WHITEN_ROWS_PER_INPUT = 2
# Log-magnitude input for positive magnitudes spanning more than this ratio (see default_normalization).
LOG_DYNAMIC_RANGE = 10.0
SPARSE_FRACTION = 0.1  # non-negative data with this share of features at median 0: one common scale


@dataclass(frozen=True)
class RVAEDefaults:
    hidden: int
    latent: int
    n_layers: int
    beta: float
    dropout: float
    epochs: int
    batch_size: int
    patience: int
    weight_decay: float
    whiten: bool


def _pow2_at_least(x: float) -> int:
    return 1 << max(0, math.ceil(math.log2(max(x, 1.0))))


def few_rows_wide(n_features: int, n_rows: int | None, window: int = 1) -> bool:
    """Whether the training set has fewer rows than the network has inputs (and is small)."""
    return n_rows is not None and n_rows < min(SMALL_ROWS, int(n_features) * int(window))


def default_config(n_features: int, n_rows: int | None = None, window: int = 1) -> RVAEDefaults:
    """Network and training defaults for `n_features` raw features, `window` lags, `n_rows` training rows.

    `n_rows=None` (construction, before the data is seen) assumes plenty of rows.
    """
    width = int(n_features) * int(window)
    hidden = min(HIDDEN_MAX, max(HIDDEN_MIN, _pow2_at_least(width / 2)))
    latent = int(np.clip(round(LATENT_PER_SQRT_WIDTH * math.sqrt(width)), LATENT_MIN, LATENT_MAX))
    n_layers, patience = 2, 10
    small = n_rows is not None and n_rows < SMALL_ROWS
    if small:  # a few hundred rows: fewer parameters and earlier stopping rather than memorising them
        n_layers, patience = 1, 5
        assert n_rows is not None  # `small` implies it
        floor = HIDDEN_MIN // 2
        if few_rows_wide(n_features, n_rows, window):
            floor, patience = HIDDEN_MIN, FEW_ROWS_PATIENCE
        hidden = max(floor, min(hidden, _pow2_at_least(n_rows / 4)))
    latent = min(latent, hidden // 2)
    # Small sets get smaller batches (16-128, rows / 8), so a few hundred rows still give several steps per epoch.
    rows_ = 1000 if n_rows is None else n_rows
    batch_size = 256 if rows_ >= 20_000 else min(128, max(16, _pow2_at_least(rows_ / 8)))
    rows = 1000 if n_rows is None else n_rows
    steps_per_epoch = max(1, math.ceil(0.9 * rows / batch_size))  # 10% is held out for validation
    epochs = int(np.clip(math.ceil(STEPS / steps_per_epoch), EPOCHS_MIN, EPOCHS_MAX))
    whiten = n_rows is None or n_rows >= WHITEN_ROWS_PER_INPUT * width
    return RVAEDefaults(hidden, latent, n_layers, BETA, DROPOUT, epochs, batch_size, patience, WEIGHT_DECAY, whiten)


def default_normalization(X: np.ndarray) -> str:
    """'log-robust' for positive magnitudes spanning decades (spectra), 'global' for sparse non-negative
    data (images: at least SPARSE_FRACTION of the features have median 0), else 'robust'.

    Magnitudes: every value >= 0 and every feature's median > 0 (a noise floor, not the exact zeros of
    sparse data such as images' background pixels). Spanning decades: in at least a quarter of the
    features q99 / q50 exceeds LOG_DYNAMIC_RANGE (spectral lines passing over a floor). Plant sensors
    in mixed units do not qualify: their ratio is within-feature (1.3-1.7 on benchmarks/plant_sim.py,
    against 27 for the 75th percentile of benchmarks/spectra_sim.py's bins).
    """
    if X.size == 0 or float(X.min()) < 0:
        return "robust"
    q50, q99 = np.percentile(X, [50, 99], axis=0)
    if float((q50 <= 0).mean()) >= SPARSE_FRACTION:
        return "global"
    if float(q50.min()) <= 0:
        return "robust"
    return "log-robust" if float(np.percentile(q99 / q50, 75)) > LOG_DYNAMIC_RANGE else "robust"
