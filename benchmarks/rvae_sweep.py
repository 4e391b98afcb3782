"""The sweep behind `models/rvae_defaults.py`: one factor at a time around the default rule.

    PYTHONPATH=. python benchmarks/rvae_sweep.py [--tasks sensors,spectra,digits] [--variants base,rae,...]

Each variant is `RVAEScorer(n_features=F, **overrides)` with everything not overridden left to the
defaults, evaluated on:
- sensors_short / sensors_long: benchmarks/sensor_quality.py's plant (seed 0), trained on 400 / 5,000 rows,
  overall AUROC and F1 and mean per-family AUROC (same threshold rule as that benchmark);
- spectra: benchmarks/wide_vectors.py's spectra task (3,000 training rows, 512 bins), mean AUROC;
- digits: the 784-pixel digits task on digits 0, 3, 5, 8 (~125 training rows each), mean AUROC.
Fit seconds are recorded per task (CPU, the torch threads given). The JSON accumulates: a rerun
adds or replaces only the (variant, task) cells it ran, so the sweep can be run in parts on a busy
machine. Writes benchmarks/results/rvae_sweep.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import RESULTS, machine, write_json
from benchmarks.sensor_quality import N_LONG, N_SHORT, Default, dataset, evaluate
from benchmarks.wide_vectors import digits_task, spectra_task

VARIANTS: dict[str, dict] = {
    "base": {},
    "no_whiten": {"whiten": False},
    "rae": {"kind": "rae"},
    "beta_0.1": {"beta": 0.1},
    "latent_x2": {"latent": "x2"},
    "latent_half": {"latent": "half"},
    "n_layers_1": {"n_layers": 1},
    "n_layers_3": {"n_layers": 3},
    "hidden_x2": {"hidden": "x2"},
    "dropout_0.1": {"dropout": 0.1},
    "robust_only": {"normalization": "robust"},
    "window_3": {"window": 3},
    "window_5": {"window": 5},
}
DIGITS = [0, 3, 5, 8]


def resolve(over: dict, n_features: int) -> dict:
    """'x2' / 'half' -> a multiple of the default for that width."""
    from models.rvae_defaults import default_config

    d = default_config(n_features, None, over.get("window", 1))
    out = dict(over)
    for k, v in over.items():
        if v == "x2":
            out[k] = 2 * getattr(d, k)
        elif v == "half":
            out[k] = max(1, getattr(d, k) // 2)
    return out


def run(task: str, over: dict) -> dict:
    t0 = time.perf_counter()
    if task.startswith("sensors"):
        X, y = dataset(0)
        r = evaluate(Default(**resolve(over, X.shape[1])), X, y, N_SHORT if task == "sensors_short" else N_LONG)
        out = {k: r["overall"][k] for k in ("auroc", "f1", "mean_family_auroc")}
        out["families"] = {f: round(v["auroc"], 4) for f, v in r["families"].items()}
        out["epochs_run"] = r["epochs_run"]
    elif task == "spectra":
        if over.get("window", 1) > 1:
            return {"skipped": "spectra are independent snapshots: no time order to window"}
        r = spectra_task(**resolve(over, 512))
        out = {"auroc": float(np.mean(list(r["rvae_default"].values()))), "per_fault": r["rvae_default"]}
        out["epochs_run"] = r["_rvae"]["epochs_run"]
    else:
        if over.get("window", 1) > 1:
            return {"skipped": "images are not a time series"}
        r = digits_task(DIGITS, **resolve(over, 784))
        out = {"auroc": float(np.mean(list(r["rvae_default"].values()))), "per_digit": r["rvae_default"]}
        out["epochs_run"] = r["_rvae"]["epochs_run"]
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", default="sensors_short,sensors_long,spectra,digits")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    path = RESULTS / "rvae_sweep.json"
    payload = json.loads(path.read_text()) if path.exists() else {"results": {}}
    for v in args.variants.split(","):
        for task in args.tasks.split(","):
            r = run(task, VARIANTS[v])
            if path.exists():  # parts may run as concurrent processes: merge into what is on disk now
                payload["results"] = json.loads(path.read_text())["results"]
            payload["results"].setdefault(v, {})[task] = r
            short = {k: (round(x, 3) if isinstance(x, float) else x) for k, x in r.items() if not isinstance(x, dict)}
            print(f"{v:12s} {task:14s} {short}", flush=True)
            payload |= {"variants": VARIANTS, "machine": machine(), "torch_threads": args.threads,
                        "protocol": __doc__.split("\n\n", 2)[2].strip()}  # fmt: skip
            write_json("rvae_sweep", payload)  # after every cell, so a stopped run keeps what it measured


if __name__ == "__main__":
    main()
