"""Sensor-quality benchmark: the default RVAEScorer against the plant engineer's baselines.

    PYTHONPATH=. python benchmarks/sensor_quality.py [--seeds 0,1] [--threads 1]

Data: `benchmarks/plant_sim.py`, a simulated centrifugal pump / motor line (13 correlated sensors driven
by speed set-point regimes, valve command, ambient temperature, tank level and grid voltage; sensor
noise and slow sensor drift). One sequence per seed: the first 5,000 rows are normal; after them 5,400
test rows hold two 120-row episodes of each of eight fault families (offset, drift, stuck, spikes,
bearing, cavitation, corr_break, valve) between 200-row normal gaps.

Each method is fitted on a short normal prefix (the first 400 rows) and on the long one (all 5,000),
and scores the test rows in time order. Methods: the product's default `RVAEScorer(n_features=13)`
(nothing else set), and baselines implemented here only: PCA T^2 + Q with Jackson-Mudholkar limits
(components for 90% of the variance, 99% limits; score = T^2 / T^2_lim + Q / Q_lim), Mahalanobis T^2
(full covariance), Isolation Forest (scikit-learn, 200 trees;
score -score_samples minus its training median). Baselines see z-scored inputs (training
mean and standard deviation).

Metrics per family and overall: AUROC (that family's labelled rows vs. all normal test rows) and
point-wise F1 with one threshold rule for every method: the 99th percentile of the method's scores on
its own training rows times 1.2. Writes benchmarks/results/sensor_quality.{json,png}.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

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
    """The product's default scorer: RVAEScorer(n_features=F) and nothing else (CPU)."""

    def __init__(self, **overrides) -> None:
        self.overrides = overrides

    def fit(self, X: np.ndarray) -> Default:
        self.s = RVAEScorer(n_features=X.shape[1], device="cpu", feature_names=list(SENSORS), **self.overrides)
        t0 = time.perf_counter()
        self.hist = self.s.fit(X.astype(np.float32))
        self.fit_s = time.perf_counter() - t0
        return self

    def score(self, X: np.ndarray) -> np.ndarray:
        return self.s.score(X.astype(np.float32))


BASELINES = {"pca_t2_q": PCAT2Q, "mahalanobis_t2": Mahalanobis, "isolation_forest": IForest}


# ----------------------------------------------------------------------------- evaluation


def dataset(seed: int) -> tuple[np.ndarray, np.ndarray]:
    n = N_LONG + N_TEST
    X, y = simulate(n, seed, schedule(n, N_LONG, np.random.default_rng(1000 + seed)))
    return X, y


def evaluate(method, X: np.ndarray, y: np.ndarray, n_train: int) -> dict:
    """Fit on X[:n_train], score the training rows and X[N_LONG:] (each in time order)."""
    train, test, labels = X[:n_train], X[N_LONG:], y[N_LONG:]
    method.fit(train)
    threshold = float(np.quantile(method.score(train), QUANTILE) * MARGIN)
    s = method.score(test)
    pred = s > threshold
    normal = labels == 0
    out = {"threshold": threshold, "families": {}}
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
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    t0 = time.perf_counter()
    methods = {"rvae_default": Default, **BASELINES}
    raw: dict = {f"{size}": {m: [] for m in methods} for size in ("short", "long")}
    for seed in seeds:
        X, y = dataset(seed)
        for size, n_train in (("short", N_SHORT), ("long", N_LONG)):
            for name, cls in methods.items():
                r = evaluate(cls(), X, y, n_train)
                raw[size][name].append(r)
                print(f"[{time.perf_counter() - t0:5.0f}s] seed {seed} {size} {name}: AUROC {r['overall']['auroc']:.3f} "
                      f"F1 {r['overall']['f1']:.3f} mean-family AUROC {r['overall']['mean_family_auroc']:.3f}", flush=True)  # fmt: skip
    results = {size: {m: average(rs) for m, rs in by.items()} for size, by in raw.items()}
    verdict = {}
    for size, by in results.items():
        base = {m: v for m, v in by.items() if m != "rvae_default"}
        best_auroc = max(base, key=lambda m: base[m]["overall"]["auroc"])
        best_f1 = max(base, key=lambda m: base[m]["overall"]["f1"])
        d = by["rvae_default"]
        worst = {
            f: d["families"][f]["auroc"] - max(b["families"][f]["auroc"] for b in base.values()) for f in d["families"]
        }
        verdict[size] = {
            "best_baseline_auroc": best_auroc,
            "default_minus_best_auroc": d["overall"]["auroc"] - base[best_auroc]["overall"]["auroc"],
            "best_baseline_f1": best_f1,
            "default_minus_best_f1": d["overall"]["f1"] - base[best_f1]["overall"]["f1"],
            "default_minus_best_baseline_auroc_per_family": worst,
            "families_worse_by_more_than_0.02": [f for f, v in worst.items() if v < -0.02],
        }
    payload = {
        "results": results,
        "verdict": verdict,
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
            "torch_threads": args.threads,
            "wall_seconds": round(time.perf_counter() - t0, 1),
        },
        "machine": machine(),
        "machine_info": machine_info(),
    }
    write_json("sensor_quality", payload)
    plot(payload)
    print(f"wrote benchmarks/results/sensor_quality.json and .png in {payload['protocol']['wall_seconds']} s")


def plot(payload: dict) -> None:
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
    save_figure(fig, "sensor_quality")


if __name__ == "__main__":
    main()
