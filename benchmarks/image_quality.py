"""Image anomaly quality on procedural industrial surfaces: image AUROC per defect type, pixel AUROC.

    PYTHONPATH=. python benchmarks/image_quality.py [--size 128] [--train 200] [--methods ...]

Surfaces and defects come from benchmarks/textures.py (brushed, milled, cast, woven, tile; scratch,
blowhole, crack, uneven, fraying; low contrast, lighting varied per image). Per surface every method is
fitted on `--train` normal images and scores `--test-normal` normal images plus `--per-defect` images of
each defect type. Image AUROC is computed per (surface, defect type) against the same normal test
images, then averaged over surfaces; pixel AUROC ranks every test pixel (normal images contribute only
negatives) with the method's heatmap upsampled bilinearly to the image size.

Methods:
- transformaly-random: TransformalyScorer("vit_tiny_patch16_224", pretrained=False) as it is, with its
  defaults except `--transformaly-epochs` (student epochs) and `--transformaly-train` (it fits on the first
  that many training images): a 224 px ViT on a shared 2-core CPU; the budget, not a tuning choice.
- patch-memory candidates (models/patch_memory.py): filterbank or random-conv features, knn or gaussian.
- pixel-knn (baseline, here only): images area-downsampled to 32x32 and standardized per image; score =
  Euclidean distance to the nearest training image; heatmap = |difference| to that neighbour.
- pca-gaussian (baseline, here only): same 32x32 vectors, PCA keeping 90% variance + Ledoit-Wolf Gaussian
  (models.gaussian); score = -log likelihood; heatmap = squared PCA reconstruction residual.

Throughput: score images/s of each method on the test images (batch = the method's default) at --size.
Writes benchmarks/results/image_quality.{json,png}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks._common import RESULTS, machine, machine_info, save_figure, write_json
from benchmarks.textures import DEFECTS, SURFACES, SurfaceGenerator
from models.gaussian import GaussianDensity

BASELINES = ("pixel-knn", "pca-gaussian")
CANDIDATES = {
    "patch-memory/filterbank-knn": {"features": "filterbank", "memory": "knn"},
    "patch-memory/random-knn": {"features": "random", "memory": "knn"},
    "patch-memory/filterbank-gaussian": {"features": "filterbank", "memory": "gaussian"},
}
METHODS = ("transformaly-random", *CANDIDATES, *BASELINES)


# ----------------------------------------------------------------------------- baselines (benchmark only)


def _small(images: np.ndarray, side: int = 32) -> np.ndarray:
    """float64 [N, side*side]: area-downsampled, standardized per image."""
    x = torch.from_numpy(images).float().unsqueeze(1)
    x = F.adaptive_avg_pool2d(x, side).flatten(1).double().numpy()
    return (x - x.mean(axis=1, keepdims=True)) / x.std(axis=1, keepdims=True).clip(min=1e-6)


class PixelKNN:
    side = 32

    def fit(self, images: np.ndarray) -> None:
        self.train = _small(images, self.side)

    def _nearest(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = _small(images, self.side)
        d2 = (x**2).sum(1)[:, None] - 2 * x @ self.train.T + (self.train**2).sum(1)[None]
        return x, d2.argmin(axis=1)

    def score(self, images: np.ndarray) -> np.ndarray:
        x, nn = self._nearest(images)
        return np.linalg.norm(x - self.train[nn], axis=1).astype(np.float32)

    def heatmap(self, images: np.ndarray) -> np.ndarray:
        x, nn = self._nearest(images)
        return np.abs(x - self.train[nn]).reshape(-1, self.side, self.side).astype(np.float32)


class PCAGaussian:
    side = 32

    def fit(self, images: np.ndarray) -> None:
        self.density = GaussianDensity.fit(_small(images, self.side), 0.9)

    def score(self, images: np.ndarray) -> np.ndarray:
        return (-self.density.log_likelihood(_small(images, self.side))).astype(np.float32)

    def heatmap(self, images: np.ndarray) -> np.ndarray:
        x = _small(images, self.side)
        pca = self.density.pca
        c = (x - pca.mean) @ pca.components.T
        residual = x - pca.mean - c @ pca.components
        return (residual**2).reshape(-1, self.side, self.side).astype(np.float32)


def build(method: str, epochs: int):
    if method == "pixel-knn":
        return PixelKNN(), {}
    if method == "pca-gaussian":
        return PCAGaussian(), {}
    if method == "transformaly-random":
        from models.transformaly import TransformalyScorer

        return TransformalyScorer("vit_tiny_patch16_224", pretrained=False, device="cpu"), {"epochs": epochs}
    from models.patch_memory import PatchMemoryScorer

    return PatchMemoryScorer(**CANDIDATES[method], device="cpu"), {}


# ----------------------------------------------------------------------------- evaluation


def upsample(maps: np.ndarray, size: int) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(maps, np.float32)).unsqueeze(1)
    return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)[:, 0].numpy()


def evaluate(method: str, data: dict, epochs: int, transformaly_train: int) -> dict:
    scorer, fit_kwargs = build(method, epochs)
    train = data["train"][:transformaly_train] if method == "transformaly-random" else data["train"]
    t0 = time.perf_counter()
    scorer.fit(train, **fit_kwargs)
    fit_s = time.perf_counter() - t0
    test = np.concatenate([data["normal"], *[data[d][0] for d in DEFECTS]])
    masks = np.concatenate([np.zeros_like(data["normal"], bool), *[data[d][1] for d in DEFECTS]])
    t0 = time.perf_counter()
    scores = scorer.score(test)
    score_s = time.perf_counter() - t0
    maps = upsample(scorer.heatmap(test), test.shape[1])
    n0 = len(data["normal"])
    image_auroc, pixel_auroc, start = {}, {}, n0
    for d in DEFECTS:
        n = len(data[d][0])
        sl = np.r_[0:n0, start : start + n]
        image_auroc[d] = float(roc_auc_score(np.r_[np.zeros(n0), np.ones(n)], scores[sl]))
        pixel_auroc[d] = float(roc_auc_score(masks[sl].ravel(), maps[sl].ravel()))
        start += n
    return {
        "image_auroc": image_auroc,
        "pixel_auroc": pixel_auroc,
        "pixel_auroc_all": float(roc_auc_score(masks.ravel(), maps.ravel())),
        "fit_images": len(train),
        "fit_seconds": round(fit_s, 2),
        "score_images_per_s": round(len(test) / score_s, 1),
    }


def summarize(per_surface: dict[str, dict]) -> dict:
    """Mean over surfaces of each per-defect figure, plus overall means."""
    surfaces = list(per_surface)
    out = {
        "image_auroc": {d: float(np.mean([per_surface[s]["image_auroc"][d] for s in surfaces])) for d in DEFECTS},
        "pixel_auroc": {d: float(np.mean([per_surface[s]["pixel_auroc"][d] for s in surfaces])) for d in DEFECTS},
        "image_auroc_by_surface": {s: float(np.mean(list(per_surface[s]["image_auroc"].values()))) for s in surfaces},
        "pixel_auroc_all_by_surface": {s: per_surface[s]["pixel_auroc_all"] for s in surfaces},
        "fit_seconds": float(np.mean([per_surface[s]["fit_seconds"] for s in surfaces])),
        "score_images_per_s": float(np.median([per_surface[s]["score_images_per_s"] for s in surfaces])),
    }
    out["surfaces"] = surfaces
    out["image_auroc_mean"] = float(np.mean(list(out["image_auroc"].values())))
    out["pixel_auroc_mean"] = float(np.mean(list(out["pixel_auroc_all_by_surface"].values())))
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()} | {
        k: {kk: round(vv, 4) for kk, vv in out[k].items()} for k in out if isinstance(out[k], dict)
    }


def throughput(method: str, size: int, n: int = 64, batch: int = 32) -> dict:
    """Score images/s of a fitted patch-memory scorer at `size` px (fit on n images of that size)."""
    from models.patch_memory import PatchMemoryScorer

    gen = SurfaceGenerator("cast", size=size, seed=99)
    train, test = gen.normal(n), gen.normal(batch)
    s = PatchMemoryScorer(**CANDIDATES[method], device="cpu")
    t0 = time.perf_counter()
    s.fit(train)
    fit_s = time.perf_counter() - t0
    s.score(test[:2])
    t0 = time.perf_counter()
    reps = 3
    for _ in range(reps):
        s.score(test)
    return {
        "method": method,
        "size": size,
        "batch": batch,
        "fit_images": n,
        "fit_seconds": round(fit_s, 2),
        "score_images_per_s": round(reps * batch / (time.perf_counter() - t0), 1),
    }


def plot(summary: dict, payload: dict, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(summary)
    fig, axes = plt.subplots(1, 2, figsize=(15, 4.5), sharey=True)
    width = 0.8 / len(methods)
    for ax, key in zip(axes, ("image_auroc", "pixel_auroc"), strict=True):
        for i, m in enumerate(methods):
            vals = [summary[m][key][d] for d in DEFECTS]
            ax.bar(np.arange(len(DEFECTS)) + i * width, vals, width, label=m)
        ax.axhline(0.5, color="gray", lw=0.8, ls="--")
        ax.set_xticks(np.arange(len(DEFECTS)) + 0.4 - width / 2, DEFECTS)
        ax.set_title(f"{key.replace('_', ' ')} (mean over {len(payload['surfaces'])} surfaces)", fontsize=9)
        ax.set_ylim(0.3, 1.0)
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle(f"{payload['size']} px, {payload['n_train']} normal training images; {payload['machine'][:90]}",
                 fontsize=8)  # fmt: skip
    save_figure(fig, name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--train", type=int, default=200)
    ap.add_argument("--test-normal", type=int, default=30)
    ap.add_argument("--per-defect", type=int, default=10)
    ap.add_argument("--surfaces", nargs="+", default=list(SURFACES))
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--transformaly-epochs", type=int, default=2)
    ap.add_argument("--transformaly-train", type=int, default=64, help="normal images Transformaly fits on (CPU time)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--chosen", default="patch-memory/filterbank-knn", help="the candidate checked against the goal")
    ap.add_argument("--out", default="image_quality")
    ap.add_argument("--merge", action="store_true", help="keep the (method, surface) results already in the JSON")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    args.started = time.strftime("%Y-%m-%dT%H:%M:%S%z")

    per_method: dict[str, dict] = {m: {} for m in args.methods}
    previous: dict = {}
    if args.merge and (RESULTS / f"{args.out}.json").is_file():  # keep other methods' results from an earlier run
        previous = json.loads((RESULTS / f"{args.out}.json").read_text())
        per_method = {m: dict(r) for m, r in previous["per_surface"].items()} | {
            m: dict(previous["per_surface"].get(m, {})) for m in args.methods
        }  # this run's (method, surface) results replace the earlier ones
    args.previous = previous
    for surface in args.surfaces:
        gen = SurfaceGenerator(surface, size=args.size, seed=args.seed)
        data = {"train": gen.normal(args.train), "normal": gen.normal(args.test_normal)}
        data |= {d: gen.defective(args.per_defect, d) for d in DEFECTS}
        for m in args.methods:
            r = evaluate(m, data, args.transformaly_epochs, args.transformaly_train)
            per_method[m][surface] = r
            img = " ".join(f"{d}={v:.2f}" for d, v in r["image_auroc"].items())
            print(f"{surface:8s} {m:34s} image {img} | pixel {r['pixel_auroc_all']:.3f} | "
                  f"fit {r['fit_seconds']}s score {r['score_images_per_s']}/s", flush=True)  # fmt: skip

        finish(args, per_method, t_start, partial=surface != args.surfaces[-1])


def finish(args: argparse.Namespace, per_method: dict[str, dict], t_start: float, partial: bool) -> None:
    """Summaries, the goal check and the JSON (+ PNG when complete); written after every surface."""
    summary = {m: summarize(per_method[m]) for m in per_method if per_method[m]}
    goal = None
    if args.chosen in summary and all(b in summary for b in BASELINES):
        c = summary[args.chosen]
        best_base = {d: max(summary[b]["image_auroc"][d] for b in BASELINES) for d in DEFECTS}
        margins = {d: round(c["image_auroc"][d] - best_base[d], 4) for d in DEFECTS}
        mean_margin = round(c["image_auroc_mean"] - max(summary[b]["image_auroc_mean"] for b in BASELINES), 4)
        goal = {
            "chosen": args.chosen,
            "required_margin": 0.15,
            "mean_margin_over_best_baseline": mean_margin,
            "margin_over_best_baseline_by_defect": margins,
            "met": bool(mean_margin >= 0.15 and min(margins.values()) >= 0.15),
        }
    payload = {
        "machine": machine(),
        "machine_info": machine_info(),
        "size": args.size,
        "n_train": args.train,
        "n_test_normal": args.test_normal,
        "n_per_defect": args.per_defect,
        "surfaces": args.surfaces,
        "defects": list(DEFECTS),
        "seed": args.seed,
        "runs": [
            *args.previous.get("runs", []),
            {"methods": args.methods, "machine": machine(), "started": args.started},
        ],
        "transformaly_epochs": args.transformaly_epochs,
        "transformaly_fit_images": min(args.transformaly_train, args.train),
        "summary": summary,
        "goal": goal,
        "per_surface": per_method,
    }
    if partial:
        payload["partial"] = {m: list(r) for m, r in per_method.items()}
        write_json(args.out, payload)
        return
    kept = args.previous.get("chosen_throughput") or [{}]
    if kept[0].get("method") == args.chosen and args.chosen not in args.methods:
        payload["chosen_throughput"] = args.previous["chosen_throughput"]
    elif args.chosen in CANDIDATES:
        payload["chosen_throughput"] = [throughput(args.chosen, s) for s in (128, 256)]
    payload["total_seconds"] = round(time.perf_counter() - t_start, 1)
    path = write_json(args.out, payload)
    plot(summary, payload, args.out)
    print(f"goal: {goal}")
    print(f"wrote {path} in {payload['total_seconds']} s")


if __name__ == "__main__":
    main()
