"""The sweep behind the few-rows-wide defaults: ~125 training rows of 784 pixels (fewer rows than inputs).

    PYTHONPATH=. python benchmarks/few_rows_sweep.py [--variants old_rule,new_rule,...] [--splits 0,1]

`benchmarks/wide_vectors.py`'s digits task, all ten digits, the RVAE only (the baselines of a split are
in `wide_vectors.json`, `digits` = split 0, `digits_split1` = split 1). Each variant is
`RVAEScorer(n_features=784, seed=s, **overrides).fit(X, **fit_overrides)`, written out explicitly, so
`old_rule` still reproduces the rule from before the few-rows-wide regime (hidden 32, latent 16,
patience 5); `seeds` with more than one entry sums the seeds' scores (a small ensemble). Mean AUROC over
the digits and AUROC per digit. Writes the key `few_rows_wide` of benchmarks/results/rvae_sweep.json
(cells accumulate, so the sweep can run in parts).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import train_test_split

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import RESULTS, machine, write_json
from benchmarks.wide_vectors import auroc, upsampled_digits
from models.rvae import RVAEScorer

OLD = {"hidden": 32, "latent": 16}  # what the small-data rule gave 784 inputs x ~125 rows
P5 = {"patience": 5}
VARIANTS: dict[str, dict] = {
    "old_rule": {"over": OLD, "fit": P5},
    "latent_8": {"over": {"hidden": 32, "latent": 8}, "fit": P5},
    "hidden_64": {"over": {"hidden": 64, "latent": 16}, "fit": P5},
    "hidden_64_latent_28": {"over": {"hidden": 64, "latent": 28}, "fit": P5},
    "hidden_64_latent_32": {"over": {"hidden": 64, "latent": 32}, "fit": P5},
    "patience_10": {"over": OLD, "fit": {"patience": 10}},
    "patience_20": {"over": OLD, "fit": {"patience": 20}},
    "weight_decay_1e-4": {"over": OLD, "fit": P5 | {"weight_decay": 1e-4}},
    "beta_0.1": {"over": OLD | {"beta": 0.1}, "fit": P5},
    "dropout_0.1": {"over": OLD | {"dropout": 0.1}, "fit": P5},
    "rae": {"over": OLD | {"kind": "rae"}, "fit": P5},
    "ensemble_3_seeds": {"over": OLD, "fit": P5, "seeds": [0, 1, 2]},
    "new_rule": {},  # the defaults now: hidden 64, latent 28, patience 20
    "new_rule_seed_1": {"seeds": [1]},
    "new_rule_epochs_215": {"fit": {"epochs": 215}},  # the 1,500-step budget without the 150-epoch cap
}


def run(variant: dict, split: int) -> dict:
    X, y = upsampled_digits()
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.3, stratify=y, random_state=split)
    per, epochs, t0 = {}, [], time.perf_counter()
    for c in range(10):
        train, normal, anomalous = X_tr[y_tr == c], X_te[y_te == c], X_te[y_te != c]
        s_n, s_a = np.zeros(len(normal)), np.zeros(len(anomalous))
        for seed in variant.get("seeds", [0]):
            s = RVAEScorer(n_features=784, device="cpu", seed=seed, **variant.get("over", {}))
            hist = s.fit(train, **variant.get("fit", {}))
            s_n, s_a = s_n + s.score(normal), s_a + s.score(anomalous)
            epochs.append(hist["epochs_run"])
        per[str(c)] = auroc(s_n, s_a)
    keys = ("hidden", "latent", "n_layers", "batch_size", "epochs", "patience", "weight_decay", "dropout", "beta")
    return {
        "mean_auroc": float(np.mean(list(per.values()))),
        "per_digit": per,
        "epochs_run": epochs,
        "settings": {k: hist["settings"][k] for k in keys},
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--splits", default="0,1")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    path = RESULTS / "rvae_sweep.json"
    for v in args.variants.split(","):
        for split in (int(s) for s in args.splits.split(",")):
            r = run(VARIANTS[v], split)
            payload = json.loads(path.read_text())  # merge into what is on disk now (parts may run concurrently)
            sweep = payload.setdefault("few_rows_wide", {"results": {}})
            sweep["results"].setdefault(v, {})[f"split_{split}"] = r
            sweep |= {"variants": VARIANTS, "machine": machine(), "protocol": __doc__.split("\n\n", 2)[2].strip()}
            write_json("rvae_sweep", payload)
            print(f"{v:22s} split {split}: {r['mean_auroc']:.5f} ({r['seconds']} s)", flush=True)


if __name__ == "__main__":
    main()
