"""Judging cost per event: the threshold rule alone and a whole source's verdicts (threshold, incidents,
Judgement objects), without Redis, at micro-batch sizes. Writes benchmarks/results/judging.json + .png.

    PYTHONPATH=. python benchmarks/judging_bench.py            # this checkout
    PYTHONPATH=/path/to/old/checkout python benchmarks/judging_bench.py --label before --no-plot

Each number is the minimum over repeats of (CPU time of this process to judge `events` scores in batches) / events, after a
warm-up that fills the SPOT peak window, on one source (the worst case for per-source overhead is many
sources with few events each; the store does one pass per source per batch). `spot+20%faults` judges a
source whose events are 20% faults (scores at 10-40, the level is ~7): SPOT's faulty-source path;
`spot+incident` a level shift of +10, every event an exceedance judged inside an open incident (the rule is
told not to learn any of them; the store opens the incident on the third event).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import redis.asyncio as aioredis

from stream_app.judging import incidents, thresholds
from stream_app.judging.store import SourceState, ThresholdStore
from stream_app.settings import IncidentSettings, ThresholdSettings

RESULTS = Path(__file__).parent / "results"


def per_event_us(fn, state, x: np.ndarray, batch: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        st = state
        started = time.process_time()  # CPU time of this process: other tenants' load does not count
        for b in range(0, x.size, batch):
            st = fn(st, x[b : b + batch], b)
        times.append((time.process_time() - started) / x.size * 1e6)
    return float(np.min(times))  # the least disturbed repeat: this machine is shared


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--label", default="after")
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-plot", action="store_true")
    args = ap.parse_args()
    gen = np.random.default_rng(0)
    out: dict[str, dict[str, float]] = {}
    store = ThresholdStore(aioredis.Redis(), ThresholdSettings(), IncidentSettings(), "bench")
    cases = (
        ("spot", "", 0.0),
        ("spot", "+20%faults", 0.2),
        ("spot", "+incident", 0.0),
        ("quantile", "", 0.0),
        ("ewma", "", 0.0),
    )
    for mode, case, faults in cases:
        cfg = ThresholdSettings(mode=mode, risk=1e-3)
        store.threshold_cfg = cfg

        def scores(n: int, faults: float = faults) -> np.ndarray:
            return np.where(gen.random(n) < faults, 10.0 + 30.0 * gen.random(n), gen.exponential(size=n))

        state = thresholds.initial_state(cfg, gen.exponential(size=2000))
        _, _, state = thresholds.judge(cfg, state, scores(200_000))  # fill the peak window
        x = scores(args.events) + (10.0 if case == "+incident" else 0.0)
        name, keys = mode + case, [f"t:0:{i}" for i in range(x.size)]
        for batch in (8, 64, 256, 1024):

            def judge_rule(st, xs, _, cfg=cfg, incident=case == "+incident"):
                return thresholds.judge(cfg, st, xs, np.zeros(xs.size, bool) if incident else None)[2]

            rule = per_event_us(judge_rule, state, x, batch, args.repeats)
            full = per_event_us(
                lambda st, xs, at, keys=keys: store._judge_source(st, "s", xs, keys[at : at + xs.size])[0],
                SourceState(state, incidents.IncidentState()), x, batch, args.repeats,
            )  # fmt: skip
            out[f"{name}/{batch}"] = {"rule_us_per_event": round(rule, 3), "source_us_per_event": round(full, 3)}
            print(name, batch, out[f"{name}/{batch}"], flush=True)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "judging.json"
    doc = json.loads(path.read_text()) if path.exists() else {}
    doc[args.label] = {
        "results": out, "events": args.events, "repeats": args.repeats,
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, load average {os.getloadavg()[0]:.1f} at the end",
    }  # fmt: skip
    path.write_text(json.dumps(doc, indent=2))
    if not args.no_plot:
        plot(doc)


def plot(doc: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    labels = list(dict.fromkeys(k for run in doc.values() for k in run["results"]))
    width = 0.8 / max(len(doc), 1)
    for i, (label, run) in enumerate(doc.items()):
        vals = [run["results"].get(k, {}).get("source_us_per_event", np.nan) for k in labels]
        ax.bar(np.arange(len(labels)) + i * width, vals, width, label=label)
    ax.set_xticks(np.arange(len(labels)) + width * (len(doc) - 1) / 2, labels, rotation=45, ha="right")
    ax.set_ylabel("CPU us / event, whole source")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "judging.png", dpi=100)


if __name__ == "__main__":
    main()
