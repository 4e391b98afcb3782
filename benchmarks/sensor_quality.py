"""Sensor-quality benchmark: the default RVAEScorer (and windowed ones) against the plant engineer's baselines.

    PYTHONPATH=. python benchmarks/sensor_quality.py [--seeds 0,1] [--threads 1] [--windows 4,8,16] [--out NAME]

Data: `benchmarks/plant_sim.py`, a simulated centrifugal pump / motor line (13 correlated sensors driven
by speed set-point regimes, valve command, ambient temperature, tank level and grid voltage; sensor
noise and slow sensor drift). One sequence per seed: the first 5,000 rows are normal; after them 5,400
test rows hold two 120-row episodes of each of eight fault families (offset, drift, stuck, spikes,
bearing, cavitation, corr_break, valve) between 200-row normal gaps.

Each method is fitted on a short normal prefix (the first 400 rows) and on the long one (all 5,000),
and scores the test rows in time order. Methods: the product's default `RVAEScorer(n_features=13)`
(nothing else set; window 1), the same with temporal context `window=W` (`rvae_windowW`: fitted on the
prefix as one sequence; its first W - 1 training rows, scored on padded windows, stay out of the
threshold, and the test rows continue the stream from the W - 1 rows before them), and baselines implemented here only: PCA T^2 + Q with Jackson-Mudholkar limits
(components for 90% of the variance, 99% limits; score = T^2 / T^2_lim + Q / Q_lim), Mahalanobis T^2
(full covariance), Isolation Forest (scikit-learn, 200 trees;
score -score_samples minus its training median). Baselines see z-scored inputs (training
mean and standard deviation).

Metrics per family and overall: AUROC (that family's labelled rows vs. all normal test rows) and
point-wise F1 with one threshold rule for every method: the 99th percentile of the method's scores on
its own training rows times 1.2. Writes benchmarks/results/sensor_quality.{json,png} (or --out's name).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats
from sklearn.ensemble import IsolationForest
from sklearn.metrics import f1_score, roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import machine, machine_info, save_figure, write_json
from benchmarks.plant_sim import FAMILIES, SENSORS, schedule, simulate
from models.rvae import RVAEScorer

N_LONG, N_SHORT, N_TEST = 5000, 400, 5400
QUANTILE, MARGIN = 0.99, 1.2


# ----------------------------------------------------------------------------- baselines


class ZScore:
    def fit(self, X: np.ndarray) -> ZScore:
        self.mu, self.sd = X.mean(0), np.where(X.std(0) > 0, X.std(0), 1.0)
        return self

    def __call__(self, X: np.ndarray) -> np.ndarray:
        return (X - self.mu) / self.sd


class PCAT2Q:
    """PCA monitoring: Hotelling T^2 on the retained components + Q (SPE) on the residual, each divided
    by its 99% control limit (F-distribution for T^2, Jackson-Mudholkar for Q), summed."""

    def __init__(self, var: float = 0.9, alpha: float = 0.01) -> None:
        self.var, self.alpha = var, alpha

    def fit(self, X: np.ndarray) -> PCAT2Q:
        self.z = ZScore().fit(X)
        Z = self.z(X)
        n = len(Z)
        lam, vec = np.linalg.eigh(np.cov(Z, rowvar=False))
        lam, vec = np.maximum(lam[::-1], 1e-12), vec[:, ::-1]
        k = int(np.searchsorted(np.cumsum(lam) / lam.sum(), self.var) + 1)
        k = min(k, Z.shape[1] - 1)
        self.P, self.lam, self.k = vec[:, :k], lam[:k], k
        self.t2_lim = k * (n - 1) * (n + 1) / (n * (n - k)) * stats.f.ppf(1 - self.alpha, k, n - k)
        rest = lam[k:]
        th1, th2, th3 = rest.sum(), (rest**2).sum(), (rest**3).sum()
        h0 = 1 - 2 * th1 * th3 / (3 * th2**2)
        c = stats.norm.ppf(1 - self.alpha)
        self.q_lim = th1 * (c * np.sqrt(2 * th2 * h0**2) / th1 + 1 + th2 * h0 * (h0 - 1) / th1**2) ** (1 / h0)
        return self

    def score(self, X: np.ndarray) -> np.ndarray:
        Z = self.z(X)
        T = Z @ self.P
        t2 = (T**2 / self.lam).sum(1)
        q = ((Z - T @ self.P.T) ** 2).sum(1)
        return t2 / self.t2_lim + q / self.q_lim


class Mahalanobis:
    def fit(self, X: np.ndarray) -> Mahalanobis:
        self.z = ZScore().fit(X)
        Z = self.z(X)
        self.mu = Z.mean(0)
        cov = np.cov(Z, rowvar=False) + 1e-6 * np.eye(Z.shape[1])
        self.inv = np.linalg.inv(cov)
        return self

    def score(self, X: np.ndarray) -> np.ndarray:
        D = self.z(X) - self.mu
        return np.einsum("ij,jk,ik->i", D, self.inv, D)


class IForest:
    def fit(self, X: np.ndarray) -> IForest:
        self.z = ZScore().fit(X)
        self.m = IsolationForest(n_estimators=200, random_state=0).fit(self.z(X))
        self.offset = 0.0
        self.offset = float(np.median(self.score(X)))
        return self

    def score(self, X: np.ndarray) -> np.ndarray:
        # Shifted by the training median so that, like the other scores, normal rows sit near zero and
        # the threshold's margin scales the distance above normal rather than an arbitrary offset.
        return -self.m.score_samples(self.z(X)) - self.offset


class Default:
    """The product's RVAEScorer(n_features=F), nothing else set (CPU), or with `window=W` (temporal context).

    A windowed model reads its rows as one time-ordered sequence: `score` pads the first W - 1 rows with
    the sequence's first row, and `history` (the raw rows just before X) replaces that padding, as the
    streaming worker's per-source history does.
    """

    def __init__(self, window: int = 1, **overrides: Any) -> None:
        self.window, self.overrides = window, overrides
        self.warmup = window - 1  # leading rows scored on padded windows

    def fit(self, X: np.ndarray) -> Default:
        self.s = RVAEScorer(
            n_features=X.shape[1], device="cpu", feature_names=list(SENSORS), window=self.window, **self.overrides
        )
        t0 = time.perf_counter()
        self.hist = self.s.fit(X.astype(np.float32))
        self.fit_s = time.perf_counter() - t0
        return self

    def score(self, X: np.ndarray, history: np.ndarray | None = None) -> np.ndarray:
        if history is None or self.window == 1:
            return self.s.score(X.astype(np.float32))
        return self.s.score_with_history(
            history[len(history) - self.warmup :].astype(np.float32), X.astype(np.float32)
        )[0]


BASELINES = {"pca_t2_q": PCAT2Q, "mahalanobis_t2": Mahalanobis, "isolation_forest": IForest}


# ----------------------------------------------------------------------------- evaluation


def dataset(seed: int) -> tuple[np.ndarray, np.ndarray]:
    n = N_LONG + N_TEST
    X, y = simulate(n, seed, schedule(n, N_LONG, np.random.default_rng(1000 + seed)))
    return X, y


def evaluate(method, X: np.ndarray, y: np.ndarray, n_train: int) -> dict:
    """Fit on X[:n_train], score the training rows and X[N_LONG:] (each in time order).

    A windowed RVAE's first W - 1 training rows (padded windows) do not enter the threshold, as the
    product's warm-up rows do not teach it; its test rows continue the stream (history = the W - 1 rows
    before them, normal rows the model was not fitted on when the prefix is short).
    """
    train, test, labels = X[:n_train], X[N_LONG:], y[N_LONG:]
    method.fit(train)
    warmup = getattr(method, "warmup", 0)
    threshold = float(np.quantile(method.score(train)[warmup:], QUANTILE) * MARGIN)
    s = method.score(test, history=X[:N_LONG]) if warmup else method.score(test)
    pred = s > threshold
    normal = labels == 0
    out: dict[str, Any] = {"threshold": threshold, "families": {}}
    for k, fam in enumerate(FAMILIES, start=1):
        m = normal | (labels == k)
        if not (labels == k).any():
            continue
        out["families"][fam] = {
            "auroc": float(roc_auc_score(labels[m] == k, s[m])),
            "f1": float(f1_score(labels[m] == k, pred[m])),
        }
    out["overall"] = {
        "auroc": float(roc_auc_score(~normal, s)),
        "f1": float(f1_score(~normal, pred)),
        "false_alarm_rate": float(pred[normal].mean()),
        "mean_family_auroc": float(np.mean([v["auroc"] for v in out["families"].values()])),
    }
    if isinstance(method, Default):
        out["fit_s"] = round(method.fit_s, 2)
        out["settings"] = method.hist["settings"]
        out["epochs_run"] = method.hist["epochs_run"]
    return out


def average(runs: list[dict]) -> dict:
    fams = runs[0]["families"]
    out = {
        "families": {
            f: {m: float(np.mean([r["families"][f][m] for r in runs])) for m in ("auroc", "f1")} for f in fams
        },
        "overall": {m: float(np.mean([r["overall"][m] for r in runs])) for m in runs[0]["overall"]},
    }
    if "fit_s" in runs[0]:
        out["fit_s"] = round(float(np.mean([r["fit_s"] for r in runs])), 2)
    return out


def versus(r: dict, base: dict[str, dict]) -> dict:
    """One RVAE's averaged result minus the best baseline: overall (AUROC, F1) and per family (AUROC)."""
    best_auroc = max(base, key=lambda m: base[m]["overall"]["auroc"])
    best_f1 = max(base, key=lambda m: base[m]["overall"]["f1"])
    per_family = {
        f: r["families"][f]["auroc"] - max(b["families"][f]["auroc"] for b in base.values()) for f in r["families"]
    }
    return {
        "best_baseline_auroc": best_auroc,
        "minus_best_auroc": r["overall"]["auroc"] - base[best_auroc]["overall"]["auroc"],
        "best_baseline_f1": best_f1,
        "minus_best_f1": r["overall"]["f1"] - base[best_f1]["overall"]["f1"],
        "minus_best_baseline_auroc_per_family": per_family,
        "families_worse_by_more_than_0.02": [f for f, v in per_family.items() if v < -0.02],
        "families_better_by_more_than_0.02": [f for f, v in per_family.items() if v > 0.02],
    }


def verdict(by: dict[str, dict]) -> dict:
    """The default (window 1) and the best windowed RVAE (by overall AUROC) against the best baseline."""
    base = {m: v for m, v in by.items() if m in BASELINES}
    d = versus(by["rvae_default"], base)
    out = {
        "best_baseline_auroc": d["best_baseline_auroc"],
        "default_minus_best_auroc": d["minus_best_auroc"],
        "best_baseline_f1": d["best_baseline_f1"],
        "default_minus_best_f1": d["minus_best_f1"],
        "default_minus_best_baseline_auroc_per_family": d["minus_best_baseline_auroc_per_family"],
        "families_worse_by_more_than_0.02": d["families_worse_by_more_than_0.02"],
    }
    windowed = [m for m in by if m.startswith("rvae_window")]
    if windowed:
        out["windowed_vs_best_baseline"] = {m: versus(by[m], base) for m in windowed}
        out["best_windowed"] = max(windowed, key=lambda m: by[m]["overall"]["auroc"])
        out["best_windowed_f1"] = max(windowed, key=lambda m: by[m]["overall"]["f1"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--windows", default="4,8,16", help="windowed RVAE variants besides the default (window 1)")
    ap.add_argument("--out", default="sensor_quality", help="results name: benchmarks/results/<out>.{json,png}")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    windows = [int(w) for w in args.windows.split(",") if w]
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    methods: dict[str, Callable[[], Any]] = {
        "rvae_default": Default,
        **{f"rvae_window{w}": partial(Default, w) for w in windows},
        **BASELINES,
    }
    raw: dict = {f"{size}": {m: [] for m in methods} for size in ("short", "long")}
    for seed in seeds:
        X, y = dataset(seed)
        for size, n_train in (("short", N_SHORT), ("long", N_LONG)):
            for name, make in methods.items():
                r = evaluate(make(), X, y, n_train)
                raw[size][name].append(r)
                print(f"[{time.perf_counter() - t0:5.0f}s] seed {seed} {size} {name}: AUROC {r['overall']['auroc']:.3f} "
                      f"F1 {r['overall']['f1']:.3f} mean-family AUROC {r['overall']['mean_family_auroc']:.3f}", flush=True)  # fmt: skip
    results = {size: {m: average(rs) for m, rs in by.items()} for size, by in raw.items()}
    verdicts = {size: verdict(by) for size, by in results.items()}
    payload: dict[str, Any] = {
        "results": results,
        "verdict": verdicts,
        "runs": raw,
        "protocol": {
            "simulator": "benchmarks/plant_sim.py",
            "sensors": list(SENSORS),
            "families": list(FAMILIES),
            "seeds": seeds,
            "train_rows": {"short": N_SHORT, "long": N_LONG},
            "test_rows": N_TEST,
            "threshold": f"quantile {QUANTILE} of the method's training-row scores x {MARGIN}",
            "default_scorer": "RVAEScorer(n_features=13, device='cpu'), fit(X) with no other argument",
            "windowed_scorers": "rvae_windowW: RVAEScorer(n_features=13, device='cpu', window=W), fit(X) on the same "
            "prefix as one sequence; threshold from its training scores without the first W - 1 (padded) rows; "
            "test rows scored as one sequence continuing from the W - 1 rows before them",
            "windows": windows,
            "torch_threads": args.threads,
            "wall_seconds": round(time.perf_counter() - t0, 1),
            "load_average_1_5_15_before_after": [
                [round(v, 2) for v in load_before],
                [round(v, 2) for v in os.getloadavg()],
            ],
            "note": "shared 2-CPU machine (other helpers' jobs running): fit_s depends on the load; every quality "
            "figure is deterministic for a seed (a rerun reproduces it)",
        },
        "machine": machine(),
        "machine_info": machine_info(),
    }
    write_json(args.out, payload)
    plot(payload, args.out)
    print(f"wrote benchmarks/results/{args.out}.json and .png in {payload['protocol']['wall_seconds']} s")


def plot(payload: dict[str, Any], name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(15, 8))
    for row, size in enumerate(("short", "long")):
        by = payload["results"][size]
        for col, metric in enumerate(("auroc", "f1")):
            ax = axes[row, col]
            fams = [*FAMILIES, "overall"]
            w = 0.8 / len(by)
            for i, (m, r) in enumerate(by.items()):
                vals = [r["families"].get(f, {}).get(metric, np.nan) if f != "overall" else r["overall"][metric]
                        for f in fams]  # fmt: skip
                ax.bar(np.arange(len(fams)) + i * w, vals, w, label=m)
            ax.set_xticks(np.arange(len(fams)) + 0.4 - w / 2, fams, rotation=30, fontsize=8)
            ax.set(title=f"{metric.upper()}, trained on {payload['protocol']['train_rows'][size]} rows", ylim=(0, 1.05))
            ax.grid(True, axis="y", alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, name)


if __name__ == "__main__":
    main()
