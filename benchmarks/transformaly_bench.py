"""Throughput of TransformalyScorer: fit, score, and the bare backbone forward it is built on.

    python benchmarks/transformaly_bench.py [--seconds 1.0] [--rounds 5] [--big-budget 120]

Backbones are random-init (pretrained=False: no network, same cost as trained weights):
vit_tiny_patch16_224 at 224 px always, and the default vit_base_patch16_384 only when a one-image
probe predicts it finishes within --big-budget seconds (else it is listed as skipped, with the reason).
Images are uint8 grayscale textures at the backbone's input size, so no resize is timed.

- fit_images_per_s: images / wall seconds of `fit` (teacher pass, student epochs, both Gaussians,
  calibration scoring), for the stated number of images and epochs.
- score_images_per_s: `score` on one batch (validation, preprocessing, teacher, K students, Gaussians,
  numpy result).
- backbone_forward_images_per_s: `forward_features` alone on the same batch, already a normalized tensor
  on the device, inference_mode (+ bf16 autocast on CUDA). Scorer and bare rounds alternate and the
  median round counts, so load drift on a shared machine hits both alike.
Writes benchmarks/results/transformaly.{json,png}; the top-level keys are the vit_tiny run at batch 32.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks._common import cpu_model, machine, machine_info, save_figure, write_json
from models.device import autocast
from models.transformaly import DEFAULT_BACKBONE, TransformalyScorer

TINY = {"backbone": "vit_tiny_patch16_224", "fit_images": 64, "epochs": 2, "fit_batch": 32, "score_batches": (1, 32)}
BIG = {"backbone": DEFAULT_BACKBONE, "fit_images": 8, "epochs": 1, "fit_batch": 4, "score_batches": (4,)}


def textures(n: int, size: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    xx = np.arange(size, dtype=np.float32)[None, None, :]  # vertical stripes, random phase, sensor noise
    img = 110 + 40 * np.sin(0.3 * xx + rng.uniform(0, 2 * np.pi, (n, 1, 1))) + rng.normal(0, 8, (n, size, size))
    return np.clip(img, 0, 255).astype(np.uint8)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def interleaved(a, b, rounds: int, seconds: float) -> tuple[float, float]:
    """Median seconds per call of a() and b(), timed in alternating rounds of about `seconds` each."""
    a(), b()  # warm-up
    t0 = time.perf_counter()
    a()
    calls = max(1, round(seconds / max(time.perf_counter() - t0, 1e-9)))
    ta, tb = [], []
    for r in range(rounds):
        for fn, out in ((a, ta), (b, tb)) if r % 2 == 0 else ((b, tb), (a, ta)):
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            out.append((time.perf_counter() - t0) / calls)
    return statistics.median(ta), statistics.median(tb)


def run(spec: dict, device: torch.device, seconds: float, rounds: int) -> dict:
    t0 = time.perf_counter()
    scorer = TransformalyScorer(spec["backbone"], pretrained=False, device=device, val_fraction=0.5, patience=None)
    build_s = time.perf_counter() - t0
    size = scorer.input_size[0]
    images = textures(spec["fit_images"], size)
    t0 = time.perf_counter()
    scorer.fit(images, epochs=spec["epochs"], batch_size=spec["fit_batch"])
    sync(device)
    fit_s = time.perf_counter() - t0
    out = {
        "backbone": spec["backbone"],
        "img_size": size,
        "n_blocks": scorer.n_blocks,
        "build_seconds": round(build_s, 3),
        "fit_images": spec["fit_images"],
        "fit_epochs": spec["epochs"],
        "fit_batch_size": spec["fit_batch"],
        "fit_seconds": round(fit_s, 3),
        "fit_images_per_s": round(spec["fit_images"] / fit_s, 3),
        "by_batch": {},
    }
    backbone = scorer.teacher.backbone
    for batch in spec["score_batches"]:
        x = textures(batch, size, seed=1)
        scorer.score_batch_size = batch
        with torch.inference_mode():
            tensor = scorer.preprocess(x)

        def bare(tensor: torch.Tensor = tensor) -> None:
            with torch.inference_mode(), autocast(device):
                backbone.forward_features(tensor)
            sync(device)

        score_s, bare_s = interleaved(lambda x=x: scorer.score(x), bare, rounds, seconds)
        out["by_batch"][str(batch)] = {
            "score_images_per_s": round(batch / score_s, 3),
            "backbone_forward_images_per_s": round(batch / bare_s, 3),
            "score_vs_backbone_ratio": round(bare_s / score_s, 3),
        }
        print(f"{spec['backbone']} batch {batch}: {out['by_batch'][str(batch)]}", flush=True)
    return out


def probe_seconds(backbone: str, device: torch.device) -> tuple[float, float]:
    """(build seconds, seconds of one single-image forward) for a backbone, random init."""
    t0 = time.perf_counter()
    s = TransformalyScorer(backbone, pretrained=False, device=device)
    build = time.perf_counter() - t0
    x = s.preprocess(textures(1, s.input_size[0]))
    with torch.inference_mode(), autocast(device):
        s.teacher.backbone.forward_features(x)  # warm-up
        t0 = time.perf_counter()
        s.teacher.backbone.forward_features(x)
        sync(device)
    return build, time.perf_counter() - t0


def plot(runs: list[dict]) -> None:
    """Per backbone: one fit bar, then score vs bare backbone bars per batch size (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3 + 2.5 * sum(1 + len(r["by_batch"]) for r in runs), 4))
    ticks, labels, pos = [], [], 0.0
    for r in runs:
        name = f"{r['backbone'].split('.')[0]} {r['img_size']}px"
        ax.bar(pos, r["fit_images_per_s"], 0.4, color="C0", label="fit" if pos == 0 else None)
        ticks.append(pos)
        labels.append(f"{name}\nfit, {r['fit_images']} img x {r['fit_epochs']} ep")
        pos += 1
        for batch, b in r["by_batch"].items():
            ax.bar(pos - 0.2, b["score_images_per_s"], 0.4, color="C1", label="score" if pos == 1 else None)
            ax.bar(pos + 0.2, b["backbone_forward_images_per_s"], 0.4, color="C2",
                   label="backbone forward" if pos == 1 else None)  # fmt: skip
            ax.text(
                pos - 0.2, b["score_images_per_s"], f"x{b['score_vs_backbone_ratio']:.2f}", ha="center", va="bottom"
            )
            ticks.append(pos)
            labels.append(f"{name}\nscore, batch {batch}")
            pos += 1
        pos += 0.5
    ax.set_xticks(ticks, labels, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("images / s")
    ax.set_title(f"TransformalyScorer ({runs[0]['device']}, {cpu_model()[:40]}); x = score / forward", fontsize=9)
    ax.legend()
    save_figure(fig, "transformaly")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=1.0, help="length of one timing round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--big-budget", type=float, default=120.0, help="seconds allowed for the ViT-B/384 run")
    ap.add_argument("--device", default=None)
    args = ap.parse_args()
    device = torch.device(args.device) if args.device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    t_start = time.perf_counter()

    runs = [run(TINY, device, args.seconds, args.rounds)]
    skipped = []
    build, one = probe_seconds(BIG["backbone"], device)
    # Forward-equivalents of the big run: teacher pass, training, validation, calibration, timed rounds.
    estimate = 2 * build + one * (BIG["fit_images"] * 3 + 2 * args.rounds * 3 * BIG["score_batches"][0] + 10)
    if estimate <= args.big_budget:
        runs.append(run(BIG, device, min(args.seconds, one), args.rounds))
    else:
        skipped.append(
            {
                "backbone": BIG["backbone"],
                "reason": f"estimated {estimate:.0f} s > budget {args.big_budget:.0f} s "
                f"(one 384 px image forward took {one:.2f} s)",
            }
        )
        print(f"skipped {BIG['backbone']}: {skipped[-1]['reason']}", flush=True)
    for r in runs:
        r["device"] = str(device)
        r["precision"] = "bf16 autocast" if device.type == "cuda" else "float32"

    head = runs[0]
    top = head["by_batch"]["32"]
    payload = {
        "fit_images_per_s": head["fit_images_per_s"],
        "score_images_per_s": top["score_images_per_s"],
        "backbone_forward_images_per_s": top["backbone_forward_images_per_s"],
        "score_vs_backbone_ratio": top["score_vs_backbone_ratio"],
        "device": str(device),
        "backbone": head["backbone"],
        "pretrained": False,
        "img_size": head["img_size"],
        "fit_batch_size": head["fit_batch_size"],
        "score_batch_size": 32,
        "machine": machine(),
        "machine_info": machine_info(),
        "runs": runs,
        "skipped": skipped,
        "total_seconds": round(time.perf_counter() - t_start, 1),
    }
    path = write_json("transformaly", payload)
    plot(runs)
    print(f"wrote {path} in {payload['total_seconds']} s")


if __name__ == "__main__":
    main()
