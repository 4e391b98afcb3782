"""Depth experiment from the original RVAE study: do identity skips keep deep autoencoders trainable?

    python benchmarks/rvae_depth.py [--epochs 25] [--depths 1,2,3,4,5,6,7,8] [--classes 0,4,7] [--seeds 0,1]

scikit-learn's digits (64 pixels, ships offline). For each held-out digit and seed: a stratified
70/30 split; train on the other nine digits' training rows; the test set is the other digits' test
rows plus held-out-digit rows, subsampled so that anomalies are 35% of it. Every kind (ae, vae, rae,
rvae) and depth trains with the same epochs, batch, learning rate, clipping and seed, for a fixed
number of epochs (no early stopping, so the final training loss measures how far optimisation got).
Recorded per kind and n_layers: mean final training loss (the objective each kind minimises; the
reconstruction MSE alone as `train_mse`) and mean test AUROC, with standard deviations over runs.
Writes benchmarks/results/rvae_depth.{json,png}.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks._common import machine, machine_info, save_figure, write_json
from models.rvae import KINDS, RVAEScorer

ANOMALY_RATIO = 0.35


def split(X: np.ndarray, y: np.ndarray, held_out: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train rows, test rows, test labels with 1 = anomaly) for one held-out digit."""
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.3, stratify=y, random_state=seed)
    rng = np.random.default_rng(seed)
    normal_pool, anomaly_pool = X_te[y_te != held_out], X[y == held_out]  # the held-out digit is never trained on
    n_anomaly = min(len(anomaly_pool), int(len(normal_pool) * ANOMALY_RATIO / (1 - ANOMALY_RATIO)))
    n_normal = round(n_anomaly * (1 - ANOMALY_RATIO) / ANOMALY_RATIO)
    normal = normal_pool[rng.choice(len(normal_pool), n_normal, replace=False)]
    anomaly = anomaly_pool[rng.choice(len(anomaly_pool), n_anomaly, replace=False)]
    return X_tr[y_tr != held_out], np.r_[normal, anomaly], np.r_[np.zeros(n_normal), np.ones(n_anomaly)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--depths", default="1,2,3,4,5,6,7,8")
    ap.add_argument("--classes", default="0,4,7", help="held-out digits, one run each (times seeds)")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    args = ap.parse_args()
    depths = [int(d) for d in args.depths.split(",")]
    classes = [int(c) for c in args.classes.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    torch.set_num_threads(args.threads)

    X, y = load_digits(return_X_y=True)
    X = X.astype(np.float32)
    net = {"hidden": 64, "latent": 8, "beta": 1.0, "clip_grad_norm": 5.0}  # the scorer's defaults
    fit = {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "val_fraction": 0.1, "patience": None}
    runs: dict[str, dict[int, list[tuple[float, float, float]]]] = {k: {d: [] for d in depths} for k in KINDS}
    run_ids = [(c, s) for c in classes for s in seeds]  # the order of every per-run list in the JSON
    t0 = time.perf_counter()
    n_runs, done = len(classes) * len(seeds) * len(depths) * len(KINDS), 0
    for held_out in classes:
        for seed in seeds:
            train, test, labels = split(X, y, held_out, seed)
            for depth in depths:
                for kind in KINDS:  # innermost, so every kind sees the same machine load
                    scorer = RVAEScorer(64, kind=kind, n_layers=depth, seed=seed, device="cpu", **net)
                    hist = scorer.fit(train, **fit)
                    auroc = roc_auc_score(labels, scorer.score(test))
                    runs[kind][depth].append((hist["train_loss"][-1], hist["train_mse"][-1], auroc))
                    done += 1
                elapsed = time.perf_counter() - t0
                line = "  ".join(f"{k} {runs[k][depth][-1][0]:.3f}/{runs[k][depth][-1][2]:.3f}" for k in KINDS)
                print(
                    f"[{elapsed:6.0f}s, eta {elapsed / done * (n_runs - done):5.0f}s] digit {held_out} seed {seed} "
                    f"depth {depth}: loss/auroc {line}",
                    flush=True,
                )

    results = {
        kind: {
            str(d): {
                "train_loss": float(np.mean([r[0] for r in rs])),
                "train_loss_std": float(np.std([r[0] for r in rs])),
                "train_mse": float(np.mean([r[1] for r in rs])),
                "auroc": float(np.mean([r[2] for r in rs])),
                "auroc_std": float(np.std([r[2] for r in rs])),
                "runs": len(rs),
                "train_loss_runs": [round(r[0], 5) for r in rs],
                "auroc_runs": [round(r[2], 5) for r in rs],
            }
            for d, rs in by_depth.items()
        }
        for kind, by_depth in runs.items()
    }
    payload = {
        "results": results,
        "summary": summary(results, depths),
        "protocol": {
            "dataset": "sklearn.datasets.load_digits (1797 x 64, pixel values 0..16)",
            "held_out_digits": classes,
            "seeds": seeds,
            "runs_order": [{"held_out_digit": c, "seed": s} for c, s in run_ids],
            "split": "stratified 70/30 per seed; train = other digits' training rows (10% of them held out as "
            "the scorer's validation slice); test = other digits' test rows + held-out digit rows",
            "anomaly_ratio": ANOMALY_RATIO,
            "n_layers": depths,
            "network": {"n_features": 64, **net},
            "fit": fit,
            "train_loss": "final epoch's mean training objective: MSE (normalized units) + beta * KL / 64 for vae/rvae, MSE for ae/rae",
            "score": "RVAEScorer.score: reconstruction MSE from the latent mean",
            "torch_threads": args.threads,
            "wall_seconds": round(time.perf_counter() - t0, 1),
        },
        "machine": machine(),
        "machine_info": machine_info(),
    }
    write_json("rvae_depth", payload)
    plot(payload)
    print(f"wrote benchmarks/results/rvae_depth.json and .png in {payload['protocol']['wall_seconds']} s")


def summary(results: dict, depths: list[int]) -> dict:
    """The claims in numbers: loss growth from the shallowest to the deepest net, AUROC averaged over depths."""
    lo, hi = str(min(depths)), str(max(depths))
    out = {
        kind: {
            f"train_loss_ratio_{hi}_vs_{lo}": r[hi]["train_loss"] / r[lo]["train_loss"],
            "auroc_mean_over_depths": float(np.mean([v["auroc"] for v in r.values()])),
        }
        for kind, r in results.items()
    }
    v, rv = results["vae"], results["rvae"]
    out["rvae_minus_vae_auroc_per_depth"] = {d: rv[d]["auroc"] - v[d]["auroc"] for d in v}
    return out


def plot(payload: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    styles = {"ae": ("C0", "--"), "vae": ("C1", "--"), "rae": ("C0", "-"), "rvae": ("C1", "-")}
    for kind, by_depth in payload["results"].items():
        d = [int(k) for k in by_depth]
        color, ls = styles[kind]
        for ax, key in zip(axes, ("train_loss", "train_mse", "auroc"), strict=True):
            std = [v.get(f"{key}_std", 0.0) for v in by_depth.values()]
            ax.errorbar(d, [v[key] for v in by_depth.values()], yerr=std, color=color, ls=ls, marker="o", capsize=2,
                        label=kind)  # fmt: skip
    titles = ("final training loss (objective)", "final training reconstruction MSE", "test AUROC (digit held out)")
    for ax, title in zip(axes, titles, strict=True):
        ax.set(xlabel="n_layers (units per encoder / decoder)", title=title)
        ax.grid(True, alpha=0.3)
        ax.legend()
    p = payload["protocol"]
    fig.suptitle(
        f"digits, held-out {p['held_out_digits']} x seeds {p['seeds']}, {p['fit']['epochs']} epochs, "
        f"lr {p['fit']['lr']}; dashed = plain (ae, vae), solid = residual (rae, rvae); bars = std over runs",
        fontsize=9,
    )
    save_figure(fig, "rvae_depth")


if __name__ == "__main__":
    main()
