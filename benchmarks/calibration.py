"""Realised false-alarm rate / risk of every threshold mode over stationary laws, idle stretches, small
calibration sets, slow drift, a level shift with a retrain and lines with faults. Writes
benchmarks/results/calibration.json and calibration.png.

    PYTHONPATH=. python benchmarks/calibration.py            # ~10 min on a busy 2-core machine
    PYTHONPATH=. python benchmarks/calibration.py --scale 0.2  # fewer events per scenario (smoke run)

Scores are judged by `thresholds.judge` in micro-batches of 256 with the default settings, without the
store (no Redis, no incident rule: none of these scenarios opens incidents except the level shift,
whose alarm rate is reported as detection, not as false alarms, both by the rule alone and the way the
store judges it, where a source stops learning from the event that opens an incident). The ratio is (alarms / events) / risk on
segments where every score is normal; SPOT's goal is [0.5, 2] in every stationary scenario. On lines with
faults it is the false-alarm rate of the normal events, next to the faults' recall and the alert level
relative to the same normal scores without faults (every fault judged by the rule alone: in the store a
burst opens an incident and stops teaching the state, which is easier).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import redis.asyncio as aioredis

from stream_app.judging import thresholds as T
from stream_app.judging.incidents import IncidentState
from stream_app.judging.store import SourceState, ThresholdStore
from stream_app.settings import IncidentSettings, ThresholdSettings

RESULTS = Path(__file__).parent / "results"
# The quantile rule's judge is a per-event Python loop (~11 us/event here): it gets a quarter of the events
# in the i.i.d. and calibration-size scenarios to keep the whole run near 10 minutes.
MODE_SCALE = {"spot": 1.0, "quantile": 0.25, "ewma": 1.0}
MODES = ("spot", "quantile", "ewma")
BATCH = 256
LAWS: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "exponential": lambda g, n: g.exponential(size=n),
    "normal": lambda g, n: g.normal(size=n),
    "lognormal": lambda g, n: g.lognormal(size=n),
    "pareto": lambda g, n: g.pareto(3.0, size=n),  # tail index 3: GPD shape 1/3
    "chisquare": lambda g, n: g.chisquare(4, size=n),
}


def run(cfg: ThresholdSettings, state: T.ThresholdState, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, object]:
    return T.judge_stream(cfg, state, x, BATCH)


def ratio(flags: np.ndarray, risk: float) -> float:
    return round(float(flags.mean()) / risk, 3)


def iid(mode: str, scale: float) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for law, draw in LAWS.items():
        out[law] = {}
        for risk in (1e-2, 1e-3, 1e-4):
            g = np.random.default_rng(zlib.crc32(f"{law} {risk:g}".encode()))  # hash() of a str changes per process
            cfg = ThresholdSettings(mode=mode, risk=risk)
            n = int(scale * 200 / risk)  # 200 expected alarms at scale 1 (Poisson noise ~7%)
            _, flags, _ = run(cfg, T.initial_state(cfg, draw(g, 2000)), draw(g, n))
            out[law][f"{risk:g}"] = ratio(flags, risk)
    return out


def recovered_after(flags: np.ndarray, risk: float, step: int = 10_000, block: int = 50_000) -> int | None:
    """Events after which every following `block` of events has a false-alarm rate <= 2x risk."""
    for k in range(0, flags.size - block + 1, step):
        if all(flags[j : j + block].mean() <= 2 * risk for j in range(k, flags.size - block + 1, step)):
            return k
    return None


def idle(mode: str, scale: float) -> dict[str, dict[str, float | int | None]]:
    risk, out = 1e-3, {}
    for idle_events in (1_000_000, 3_000_000):
        g = np.random.default_rng(idle_events)
        cfg = ThresholdSettings(mode=mode, risk=risk)
        state = T.initial_state(cfg, g.exponential(size=2000))
        _, before, state = run(cfg, state, g.exponential(size=int(200_000 * scale)))
        thr_idle, _, state = run(cfg, state, g.exponential(size=int(idle_events * scale)) * 0.05)
        thr, after, state = run(cfg, state, g.exponential(size=int(400_000 * scale)))
        row: dict[str, float | int | None] = {
            "before": ratio(before, risk),
            "after_first_100k": ratio(after[:100_000], risk),
            "after_last_200k": ratio(after[-200_000:], risk),
            "recovered_after_events": recovered_after(after, risk),
        }
        if mode == "spot":
            row["min_z_minus_t"] = round(float(min(thr_idle.min(), thr.min()) - state.t), 4)
        out[f"{idle_events // 1_000_000}M"] = row
    return out


def calibration_sizes(mode: str, scale: float, sources: int = 6) -> dict[str, dict[str, float]]:
    risk, out = 1e-3, {}
    for n_cal in (20, 50, 200, 2000):
        ratios, warm = [], []
        for s in range(sources):
            g = np.random.default_rng(1000 * n_cal + s)
            cfg = ThresholdSettings(mode=mode, risk=risk)
            _, flags, _ = run(
                cfg, T.initial_state(cfg, g.exponential(size=n_cal)), g.exponential(size=int(300_000 * scale))
            )
            ratios.append(flags.mean() / risk)
            warm.append(flags[int(50_000 * scale) :].mean() / risk)
        out[str(n_cal)] = {
            "min": round(min(ratios), 3), "median": round(float(np.median(ratios)), 3), "max": round(max(ratios), 3),
            "max_after_50k": round(max(warm), 3), "sources": sources,
        }  # fmt: skip
    return out


def drift(mode: str, scale: float) -> dict[str, float]:
    risk, n = 1e-3, int(1_000_000 * scale)
    g = np.random.default_rng(7)
    cfg = ThresholdSettings(mode=mode, risk=risk)
    x = g.exponential(size=n) * np.linspace(1.0, 1.5, n)  # the score scale creeps up 50% over the run
    _, flags, _ = run(cfg, T.initial_state(cfg, g.exponential(size=2000)), x)
    return {"whole": ratio(flags, risk), "last_half": ratio(flags[n // 2 :], risk)}


def with_incidents(cfg: ThresholdSettings, state: T.ThresholdState, x: np.ndarray) -> tuple[np.ndarray, bool]:
    """Flags as the store judges them (no learning from an incident's opening on), and whether it ends stuck."""
    store = ThresholdStore(aioredis.Redis(), cfg, IncidentSettings(), "bench")  # pure path: Redis is never called
    source, flags = SourceState(state, IncidentState()), []
    for b in range(0, x.size, BATCH):
        xs = x[b : b + BATCH]
        source, verdicts = store._judge_source(source, "s", xs, [f"k{b + i}" for i in range(xs.size)])
        flags.append([v.anomalous for v in verdicts])
    return np.concatenate(flags), bool(getattr(source.threshold, "stuck", False))


def shift_then_retrain(mode: str, scale: float) -> dict[str, object]:
    """A level shift of +3 (a drift: sparse alarms, no incident) or +10 (a fault: incidents), then a retrain.

    Alarm rates during the shift are detection, not false alarms: by the rule alone, and the way the store
    judges (`with_incidents_*`). After the retrain (a new version calibrated on the shifted level) the
    ratio is a false-alarm rate again.
    """
    risk = 1e-3
    cfg = ThresholdSettings(mode=mode, risk=risk)
    out: dict[str, object] = {}
    for offset in (3.0, 10.0):
        g = np.random.default_rng(8)
        cal, normal = g.exponential(size=2000), g.exponential(size=int(100_000 * scale))
        _, before, state = run(cfg, T.initial_state(cfg, cal), normal)
        shifted = g.exponential(size=int(100_000 * scale)) + offset
        _, during, _ = run(cfg, state, shifted)
        during_store, stuck = with_incidents(cfg, state, shifted)
        retrained = T.initial_state(cfg, g.exponential(size=2000) + offset)  # a version calibrated on the new level
        _, after, _ = run(cfg, retrained, g.exponential(size=int(300_000 * scale)) + offset)
        out[f"+{offset:g}"] = {
            "before": ratio(before, risk),
            "alarm_rate_during_shift": round(float(during.mean()), 4),
            "alarm_rate_last_10k_of_shift": round(float(during[-10_000:].mean()), 4),
            "with_incidents_alarm_rate_during_shift": round(float(during_store.mean()), 4),
            "with_incidents_last_10k": round(float(during_store[-10_000:].mean()), 4),
            "with_incidents_stuck_at_end": stuck,
            "after_retrain": ratio(after, risk),
        }
    return out


def faults(mode: str, scale: float) -> dict[str, dict[str, float]]:
    """Exponential scores with faults at 10-40 (the level is ~7 at risk 1e-3) on a share of the events, half
    scattered and half in bursts of 20."""
    risk, n, out = 1e-3, int(300_000 * scale), {}
    for share in (0.002, 0.02, 0.2):
        g = np.random.default_rng(int(share * 1000))
        cfg = ThresholdSettings(mode=mode, risk=risk)
        cal, normal = g.exponential(size=2000), g.exponential(size=n)
        fault = g.random(n) < share / 2
        for start in g.integers(0, n - 20, int(n * share / 40)):
            fault[start : start + 20] = True
        x = np.where(fault, 10.0 + 30.0 * g.random(n), normal)
        thr_clean, _, _ = run(cfg, T.initial_state(cfg, cal), normal)
        thr, flags, _ = run(cfg, T.initial_state(cfg, cal), x)
        out[f"{share:.1%}"] = {
            "fault_share": round(float(fault.mean()), 4),
            "false_alarms_on_normal_events": ratio(flags[~fault], risk),
            "fault_recall": round(float(flags[fault].mean()), 4),
            "level_vs_fault_free": round(float(np.median(thr) / np.median(thr_clean)), 3),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the default events per scenario")
    ap.add_argument("--modes", default=",".join(MODES))
    args = ap.parse_args()
    started = time.monotonic()
    doc: dict[str, object] = {
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}",
        "batch": BATCH, "scale": args.scale, "mode_scale": MODE_SCALE, "settings": ThresholdSettings().model_dump(), "modes": {},
    }  # fmt: skip
    for mode in args.modes.split(","):
        t0 = time.monotonic()
        doc["modes"][mode] = {  # type: ignore[index]
            "iid": iid(mode, args.scale * MODE_SCALE[mode]),
            "idle": idle(mode, args.scale),
            "calibration_size": calibration_sizes(mode, args.scale * MODE_SCALE[mode]),
            "drift": drift(mode, args.scale),
            "shift_then_retrain": shift_then_retrain(mode, args.scale),
            "faults": faults(mode, args.scale * MODE_SCALE[mode]),
            "seconds": round(time.monotonic() - t0, 1),
        }
        print(mode, json.dumps(doc["modes"][mode], indent=1), flush=True)  # type: ignore[index]
    doc["seconds"] = round(time.monotonic() - started, 1)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "calibration.json").write_text(json.dumps(doc, indent=2))
    plot(doc)


def plot(doc: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(14, 5))
    modes = list(doc["modes"])
    for i, mode in enumerate(modes):
        m = doc["modes"][mode]
        labels, vals = [], []
        for law, by_risk in m["iid"].items():
            for risk, r in by_risk.items():
                labels.append(f"{law[:5]} {risk}")
                vals.append(r)
        for k, row in m["idle"].items():
            labels.append(f"idle {k} last200k")
            vals.append(row["after_last_200k"])
        for k, row in m["calibration_size"].items():
            labels.append(f"cal {k} max")
            vals.append(row["max"])
        labels += ["drift", "retrain"]
        vals += [m["drift"]["whole"], m["shift_then_retrain"]["+3"]["after_retrain"]]
        for share, row in m["faults"].items():
            labels.append(f"faults {share}")
            vals.append(row["false_alarms_on_normal_events"])
        x = np.arange(len(vals))
        ax.scatter(x + (i - 1) * 0.2, np.maximum(vals, 1e-2), label=mode, s=18)
    ax.axhspan(0.5, 2.0, color="green", alpha=0.1, label="[0.5, 2] x risk")
    ax.set_yscale("log")
    ax.set_xticks(np.arange(len(labels)), labels, rotation=70, ha="right", fontsize=7)
    ax.set_ylabel("false-alarm rate / risk")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "calibration.png", dpi=100)


if __name__ == "__main__":
    main()
