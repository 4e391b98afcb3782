"""Wide vectors: the default RVAEScorer on 512-bin vibration spectra and 784-pixel images, against baselines.

    PYTHONPATH=. python benchmarks/wide_vectors.py [--threads 1] [--digits 0,1,...,9] [--fit-rows 6000]
        [--parts spectra,digits,fit] [--split-seed 0]

Tasks:
(a) spectra: `benchmarks/spectra_sim.py` (shaft harmonics, gear mesh with sidebands, BPFO/BPFI/BSF,
    resonance bands, load-dependent amplitudes, 1/f + white floor, periodogram noise). Train on 3,000
    normal spectra; test on 500 normal spectra and 300 of each of eight fault families; AUROC per family.
(b) digits: scikit-learn's 8x8 digits upsampled (bilinear) to 28x28 = 784 features, one-class: each digit
    normal in turn, trained on a stratified 70% of its rows (~125), tested on its other 30% against the
    30% test rows of the other nine digits; AUROC per digit. `--split-seed S` (S != 0) draws another
    split and writes it under `digits_split<S>`, so a result can be checked against a second split.
(c) fit time: the default scorer on 6,000 x 784 rows (digits upsampled with random 0-2 pixel shifts and
    noise), with the epochs that early stopping ran.

The product side is `RVAEScorer(n_features=F)` with nothing else set (CPU). Baselines, implemented here
only, each tried on three inputs (raw, z-scored, log-magnitude then z-scored) with the best input per task
reported, so the comparison is against the strongest variant: PCA + Gaussian (probabilistic PCA
log-likelihood, components for 90% of the variance) and kNN (mean distance to the 5 nearest training
rows). Writes benchmarks/results/wide_vectors.{json,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import shift as nd_shift
from scipy.ndimage import zoom
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.neighbors import NearestNeighbors

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import RESULTS, machine, machine_info, save_figure, write_json
from benchmarks.spectra_sim import FAULTS, feature_names, spectra
from models.rvae import RVAEScorer

INPUTS = ("raw", "zscore", "log-zscore")


def prep(kind: str, train: np.ndarray):
    """A function mapping rows to the baseline's input space, fitted on `train`."""
    f = (lambda X: np.log1p(np.maximum(X, 0) / np.maximum(np.median(train), 1e-6))) if kind == "log-zscore" else None
    if kind == "raw":
        return lambda X: X.astype(np.float64)
    T = train if f is None else f(train)
    mu, sd = T.mean(0), T.std(0)
    sd = np.where(sd > 1e-6, sd, 1.0)
    return lambda X: ((X if f is None else f(X)) - mu) / sd


def pca_gaussian(train: np.ndarray, test: np.ndarray) -> np.ndarray:
    m = PCA(n_components=0.9, svd_solver="full", random_state=0).fit(train)
    return -m.score_samples(test)


def knn(train: np.ndarray, test: np.ndarray, k: int = 5) -> np.ndarray:
    d, _ = NearestNeighbors(n_neighbors=k).fit(train).kneighbors(test)
    return d.mean(1)


BASELINES = {"pca_gaussian": pca_gaussian, "knn": knn}


def default_scorer(train: np.ndarray, tests: list[np.ndarray], names: list[str] | None = None, **over):
    s = RVAEScorer(n_features=train.shape[1], device="cpu", feature_names=names, **over)
    t0 = time.perf_counter()
    hist = s.fit(train)
    return [s.score(t) for t in tests], s, hist, time.perf_counter() - t0


def auroc(normal: np.ndarray, anomalous: np.ndarray) -> float:
    return float(roc_auc_score(np.r_[np.zeros(len(normal)), np.ones(len(anomalous))], np.r_[normal, anomalous]))


def spectra_task(**over) -> dict:
    """AUROC per fault family for the default scorer and every baseline x input."""
    train, _ = spectra(3000, seed=0)
    normal, _ = spectra(500, seed=1)
    faulty = {f: spectra(300, seed=10 + i, fault=f)[0] for i, f in enumerate(FAULTS)}
    tests = [normal, *faulty.values()]
    out: dict = {}
    scores, scorer, hist, fit_s = default_scorer(train, tests, feature_names(), **over)
    out["rvae_default"] = {f: auroc(scores[0], s) for f, s in zip(FAULTS, scores[1:], strict=True)}
    out["_rvae"] = {"fit_s": round(fit_s, 1), "epochs_run": hist["epochs_run"], "settings": hist["settings"]}
    top = scorer.top_features(faulty["outer_race"][0], k=3)
    out["_rvae"]["top_features_outer_race_example"] = [[n, round(v, 3)] for n, v in top]
    for name, fn in BASELINES.items():
        for inp in INPUTS:
            p = prep(inp, train)
            t = [fn(p(train), p(x)) for x in tests]
            out[f"{name}[{inp}]"] = {f: auroc(t[0], s) for f, s in zip(FAULTS, t[1:], strict=True)}
    return out


def upsampled_digits() -> tuple[np.ndarray, np.ndarray]:
    X, y = load_digits(return_X_y=True)
    big = np.stack([zoom(img.reshape(8, 8), 3.5, order=1) for img in X]).reshape(len(X), -1)
    return np.clip(big, 0, 16).astype(np.float32), y


def digits_task(classes: list[int], split_seed: int = 0, **over) -> dict:
    X, y = upsampled_digits()
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.3, stratify=y, random_state=split_seed)
    out: dict = {"rvae_default": {}, "_rvae": {"fit_s": [], "epochs_run": []}}
    out |= {f"{b}[{i}]": {} for b in BASELINES for i in INPUTS}
    for c in classes:
        train, normal, anomalous = X_tr[y_tr == c], X_te[y_te == c], X_te[y_te != c]
        (s_n, s_a), _, hist, fit_s = default_scorer(train, [normal, anomalous], **over)
        out["rvae_default"][str(c)] = auroc(s_n, s_a)
        out["_rvae"]["fit_s"].append(round(fit_s, 1))
        out["_rvae"]["epochs_run"].append(hist["epochs_run"])
        out["_rvae"]["settings"] = hist["settings"]
        for name, fn in BASELINES.items():
            for inp in INPUTS:
                p = prep(inp, train)
                out[f"{name}[{inp}]"][str(c)] = auroc(fn(p(train), p(normal)), fn(p(train), p(anomalous)))
    return out


def fit_time(n_rows: int) -> dict:
    X, _ = upsampled_digits()
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(X), n_rows)
    imgs = X[idx].reshape(-1, 28, 28)
    shifted = np.stack([nd_shift(im, rng.integers(-2, 3, 2), order=0) for im in imgs]).reshape(n_rows, -1)
    rows = np.clip(shifted + rng.normal(0, 0.5, shifted.shape), 0, 16).astype(np.float32)
    s = RVAEScorer(n_features=784, device="cpu")
    t0 = time.perf_counter()
    hist = s.fit(rows)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    s.score(rows)
    return {
        "rows": n_rows,
        "features": 784,
        "fit_s": round(fit_s, 1),
        "epochs_run": hist["epochs_run"],
        "s_per_epoch": round(fit_s / hist["epochs_run"], 2),
        "score_rows_per_s": round(n_rows / (time.perf_counter() - t0)),
        "settings": hist["settings"],
    }


def summarize(task: dict) -> dict:
    """Mean AUROC per method, and the best input per baseline."""
    means = {m: float(np.mean(list(v.values()))) for m, v in task.items() if not m.startswith("_")}
    best = {}
    for b in BASELINES:
        inp = max(INPUTS, key=lambda i: means[f"{b}[{i}]"])
        best[b] = {"input": inp, "mean_auroc": means[f"{b}[{inp}]"]}
    d = means["rvae_default"]
    return {
        "mean_auroc": means,
        "rvae_default_mean_auroc": d,
        "best_baselines": best,
        "rvae_beats_both": all(d > v["mean_auroc"] for v in best.values()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--digits", default="0,1,2,3,4,5,6,7,8,9")
    ap.add_argument("--fit-rows", type=int, default=6000)
    ap.add_argument("--parts", default="spectra,digits,fit", help="run parts in separate processes on a busy machine")
    ap.add_argument("--split-seed", type=int, default=0, help="digits: train/test split seed (0 = the reported one)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    new: dict = {}
    wall, load = {}, {}
    for part in args.parts.split(","):
        t_part = time.perf_counter()
        if part == "spectra":
            sp = spectra_task()
            new["spectra"] = {"per_fault": sp, "summary": summarize(sp)}
        elif part == "digits":
            dg = digits_task([int(c) for c in args.digits.split(",")], args.split_seed)
            key = "digits" if args.split_seed == 0 else f"digits_split{args.split_seed}"
            new[key] = {"per_digit": dg, "summary": summarize(dg)}
        elif part == "fit":
            new["fit_time_6000x784"] = fit_time(args.fit_rows)
        key = list(new)[-1]
        wall[key] = round(time.perf_counter() - t_part, 1)
        load[key] = [round(x, 2) for x in os.getloadavg()]  # the machine may be shared: say how busy it was
        print(f"[{time.perf_counter() - t0:5.0f}s] {part}: {new[key].get('summary', new[key])}", flush=True)
    path = RESULTS / "wide_vectors.json"
    payload = json.loads(path.read_text()) if path.exists() else {}  # parts run separately accumulate
    payload |= new
    payload["protocol"] = {
        "default_scorer": "RVAEScorer(n_features=F, device='cpu'), fit(X) with no other argument",
        "spectra": "spectra_sim: train 3000 normal (seed 0), test 500 normal (seed 1) + 300 per fault",
        "digits": "load_digits upsampled 8x8 -> 28x28 (bilinear); per digit: train its 70% split rows, "
        "test its 30% vs other digits' 30% (stratified split, random_state 0; digits_split<S>: random_state S)",
        "baselines": "PCA + Gaussian (PPCA log-likelihood, 90% variance); kNN (mean distance to 5 nearest); "
        "each on raw, z-scored and log1p-then-z-scored input; summary picks each baseline's best input",
        "torch_threads": args.threads,
    }
    payload.setdefault("wall_seconds", {})
    payload["wall_seconds"] |= wall
    payload.setdefault("load_average_1_5_15_min_at_end", {})
    payload["load_average_1_5_15_min_at_end"] |= load
    payload["machine"] = machine()
    payload["machine_info"] = machine_info()
    write_json("wide_vectors", payload)
    if all(k in payload for k in ("spectra", "digits", "fit_time_6000x784")):
        plot(payload)
    print(f"wrote benchmarks/results/wide_vectors.json in {time.perf_counter() - t0:.0f} s")


def plot(payload: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(15, 4.5))
    for ax, (task, key) in zip(axes, (("spectra", "per_fault"), ("digits", "per_digit")), strict=True):
        per = payload[task][key]
        best = payload[task]["summary"]["best_baselines"]
        methods = {"rvae_default": per["rvae_default"]} | {f"{b} ({v['input']})": per[f"{b}[{v['input']}]"]
                                                           for b, v in best.items()}  # fmt: skip
        cats = list(per["rvae_default"])
        w = 0.8 / len(methods)
        for i, (m, vals) in enumerate(methods.items()):
            mean = np.mean(list(vals.values()))
            ax.bar(np.arange(len(cats)) + i * w, [vals[c] for c in cats], w, label=f"{m}: mean {mean:.3f}")
        ax.set_xticks(np.arange(len(cats)) + 0.4 - w / 2, cats, rotation=30, fontsize=8)
        ax.set(title=f"{task}: AUROC", ylim=(0.4, 1.02))
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    ft = payload["fit_time_6000x784"]
    fig.suptitle(
        f"default RVAEScorer vs baselines; fit 6000x784: {ft['fit_s']} s ({ft['epochs_run']} epochs)", fontsize=9
    )
    save_figure(fig, "wide_vectors")


if __name__ == "__main__":
    main()
