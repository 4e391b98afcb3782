"""Scoring throughput of RVAEScorer.score against a bare torch forward of the same network.

    python benchmarks/rvae_speed.py [--features 32] [--seconds 0.05] [--rounds 41] [--threads 1]

Both sides see the same batch of vectors; they are timed in alternating rounds (scorer, bare, bare,
scorer, ...) and the median round counts, so drift in a shared machine's load hits both alike.
The bare side is the network alone: eval mode, inference_mode, mean-latent path, input already a
normalized tensor on the device, output left there (synchronised on CUDA). The scorer's extra work
is what a caller pays for: input validation, normalization, the error, a numpy result.
Throughput is rows / median wall seconds per call. The overhead compares the fastest round of each
side (timeit's convention), in process CPU time on CPU and wall time on CUDA: on a shared machine
other processes' bursts land on one side or the other and swing a wall-clock ratio by more than
the effect being measured. The median over rounds of each adjacent pair's ratio, by CPU time and
by wall clock, is written too.
Writes benchmarks/results/rvae_speed.{json,png}.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks._common import machine, machine_info, save_figure, write_json
from models.rvae import RVAEConfig, RVAEScorer

BATCHES = (1, 64, 1024, 8192)


def per_call_seconds(fn, seconds: float) -> int:
    """Calls per timing round so that one round lasts about `seconds` (after a warm-up)."""
    fn()
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds / 5 or n < 2:
        fn()
        n += 1
    return max(1, round(seconds * n / (time.perf_counter() - t0)))


def timed(fn, calls: int) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) per call."""
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls, (time.process_time() - c0) / calls


def compare(scorer: RVAEScorer, X: np.ndarray, seconds: float, rounds: int, sync) -> dict[str, float]:
    """Vectors/s of scorer.score(X) and of the bare network on the same rows, interleaved."""
    net = scorer.net.eval()
    with torch.inference_mode():
        z = scorer.standardize(torch.from_numpy(X).to(scorer.device))

    def bare() -> None:
        with torch.inference_mode(), scorer_autocast(scorer.device):
            net(z)
        sync()

    def score() -> None:
        scorer.score(X)

    calls_bare = per_call_seconds(bare, seconds)
    calls_score = per_call_seconds(score, seconds)
    t_bare, t_score = [], []
    for r in range(rounds):
        pair = [(t_score, score, calls_score), (t_bare, bare, calls_bare)]
        for out, fn, n in pair if r % 2 == 0 else pair[::-1]:
            out.append(timed(fn, n))
    tb, ts = statistics.median(w for w, _ in t_bare), statistics.median(w for w, _ in t_score)

    def paired(i: int) -> float:
        # From each round's adjacent pair, so load that drifts between rounds cancels out.
        return statistics.median(s[i] / b[i] for s, b in zip(t_score, t_bare, strict=True)) - 1.0

    def fastest(i: int) -> float:
        # timeit's convention: the fastest round is the least disturbed one; noise only ever adds time.
        return min(s[i] for s in t_score) / min(b[i] for b in t_bare) - 1.0

    clock = 1 if scorer.device.type == "cpu" else 0  # process CPU time on CPU, wall clock on CUDA
    return {
        "score_per_s": len(X) / ts,
        "bare_forward_per_s": len(X) / tb,
        "overhead": fastest(clock),
        "overhead_median_of_pairs": paired(clock),
        "overhead_wall_median_of_pairs": paired(0),
        "score_ms_per_call": ts * 1e3,
        "bare_ms_per_call": tb * 1e3,
    }


def scorer_autocast(device: torch.device):
    """The same autocast the scorer itself uses (looked up at call time so a patch applies to both)."""
    import models.rvae

    return models.rvae.autocast(device)


def fitted_scorer(n_features: int, device: str) -> RVAEScorer:
    X = np.random.default_rng(0).normal(size=(2048, n_features)).astype(np.float32)
    scorer = RVAEScorer(n_features, device=device)  # the default network
    scorer.fit(X, epochs=2)
    return scorer


def run_device(device: str, n_features: int, seconds: float, rounds: int, sync) -> dict[str, dict[str, float]]:
    scorer = fitted_scorer(n_features, device)
    rng = np.random.default_rng(1)
    out = {}
    for b in BATCHES:
        X = rng.normal(size=(b, n_features)).astype(np.float32)
        out[str(b)] = compare(scorer, X, seconds, rounds, sync)
        r = out[str(b)]
        print(
            f"{device:>5} batch {b:>5}: score {r['score_per_s']:>12,.0f}/s  bare {r['bare_forward_per_s']:>12,.0f}/s"
            f"  overhead {r['overhead']:+.1%} (median of pairs {r['overhead_median_of_pairs']:+.1%},"
            f" wall {r['overhead_wall_median_of_pairs']:+.1%})",
            flush=True,
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--features", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=0.05, help="length of one timing round")
    ap.add_argument("--rounds", type=int, default=41, help="alternating rounds per side; the median counts")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (the machine is shared)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    cfg = RVAEConfig(args.features)  # the default network
    results: dict = {
        "machine": machine(),
        "machine_info": machine_info(),
        "network": {
            "n_features": args.features,
            "kind": cfg.kind,
            "n_layers": cfg.n_layers,
            "hidden": cfg.hidden,
            "latent": cfg.latent,
        },
        "protocol": {
            "batches": list(BATCHES),
            "round_seconds": args.seconds,
            "rounds": args.rounds,
            "statistic": "vectors/s = batch / median wall seconds per call over alternating rounds; overhead = "
            "fastest score round / fastest bare round - 1, in process CPU time on CPU and wall time on CUDA; "
            "overhead_median_of_pairs: median over rounds of score/bare - 1 (same clock); "
            "overhead_wall_median_of_pairs: the same by wall clock",
            "torch_threads": args.threads,
            "bare_forward": "net(z) in eval + inference_mode, mean-latent path, z a normalized tensor already on the device",
            "score": "RVAEScorer.score(X) on the same rows as float32 numpy in raw units",
        },
        "cpu": run_device("cpu", args.features, args.seconds, args.rounds, sync=lambda: None),
        "cuda": None,
    }
    if torch.cuda.is_available():
        results["cuda"] = {}
        for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
            if dtype is torch.bfloat16 and not torch.cuda.is_bf16_supported():
                continue
            # Force this precision on both sides (the scorer picks bf16 by itself where supported).
            amp = lambda device, enabled=True, dtype=dtype: torch.autocast("cuda", dtype=dtype)  # noqa: E731
            with mock.patch("models.rvae.autocast", amp):
                results["cuda"][name] = run_device(
                    "cuda", args.features, args.seconds, args.rounds, torch.cuda.synchronize
                )
    else:
        results["cuda_note"] = "no CUDA device on this machine; the CUDA path (bf16/fp16 autocast) was not measured"

    write_json("rvae_speed", results)
    plot(results)


def plot(results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    series = [("cpu", results["cpu"])] + [(f"cuda {k}", v) for k, v in (results["cuda"] or {}).items()]
    for label, res in series:
        b = [int(k) for k in res]
        line = ax.plot(b, [r["score_per_s"] for r in res.values()], "o-", label=f"{label} score()")[0]
        ax.plot(
            b,
            [r["bare_forward_per_s"] for r in res.values()],
            "s--",
            color=line.get_color(),
            label=f"{label} bare forward",
        )
        ax2.plot(b, [100 * r["overhead"] for r in res.values()], "o-", color=line.get_color(), label=label)
        if label == "cpu":
            ax2.plot(b, [100 * r["overhead_median_of_pairs"] for r in res.values()], "x:", color=line.get_color(),
                     label="cpu, median of paired rounds")  # fmt: skip
    ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="vectors / s", title="RVAEScorer scoring throughput")
    ax2.axhline(20, color="grey", ls=":", label="20% budget")
    ax2.set(
        xscale="log",
        xlabel="batch size",
        ylabel="score() overhead vs bare forward (%)",
        title="overhead, fastest rounds (CPU: process CPU time)",
    )
    for a in (ax, ax2):
        a.grid(True, which="both", alpha=0.3)
        a.legend(fontsize=8)
    fig.suptitle(results["machine"], fontsize=7)
    save_figure(fig, "rvae_speed")


if __name__ == "__main__":
    main()
