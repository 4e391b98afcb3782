"""The GPU path, measured: Transformaly and RVAE throughput by batch size and precision, JPEG decode on
the GPU vs the CPU.

    python benchmarks/gpu_bench.py                       # on a CUDA machine: ViT-B/16 at 384 px
    python benchmarks/gpu_bench.py --tiny --device cpu   # the same code path with a tiny model (tests, CI)

Measured, each in alternating rounds with the median kept (shared machines drift):
- `backbone`: the bare ViT `forward_features` on a normalized tensor already on the device, per batch size
  and autocast precision (bf16, fp16, fp32): the physical ceiling the scorer is built on;
- `transformaly`: `TransformalyScorer.score` on uint8 frames in host memory, per batch size (its own
  precision: bf16 autocast on CUDA, fp16 where bf16 is missing): transfers, preprocessing, teacher, students
  and both Gaussians included;
- `jpeg_decode`: frames/s decoding JPEG bytes to tensors on the device: `torchvision.io.decode_jpeg(...,
  device="cuda")` (nvJPEG) vs Pillow on one CPU core, same bytes;
- `rvae`: `RVAEScorer.score` vectors/s by batch size.
Random-init weights (no download): the same cost as trained ones. Writes benchmarks/results/gpu.json and
gpu.png, or with --out elsewhere (tests). Never run as part of the figures unless on the named device.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks._common import machine, machine_info, save_figure, write_json
from models.rvae import RVAEScorer
from models.transformaly import DEFAULT_BACKBONE, TransformalyScorer

PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def per_call_s(fn: Callable[[], Any], device: torch.device, seconds: float, rounds: int) -> float:
    """Median seconds per call of fn over `rounds` rounds of about `seconds` each (after one warm-up)."""
    fn()
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    calls = max(1, round(seconds / max(time.perf_counter() - t0, 1e-9)))
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        sync(device)
        times.append((time.perf_counter() - t0) / calls)
    return statistics.median(times)


def textures(n: int, size: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    xx = np.arange(size, dtype=np.float32)[None, None, :]
    img = 110 + 40 * np.sin(0.3 * xx + rng.uniform(0, 2 * np.pi, (n, 1, 1))) + rng.normal(0, 8, (n, size, size))
    return np.clip(img, 0, 255).astype(np.uint8)


def fitted_transformaly(backbone: str, device: torch.device) -> TransformalyScorer:
    scorer = TransformalyScorer(backbone, pretrained=False, device=device, val_fraction=0.5, patience=None)
    size = scorer.input_size[0]
    scorer.fit(textures(16, size), epochs=1, batch_size=8)
    return scorer


def bench_backbone(scorer: TransformalyScorer, batches: list[int], precisions: list[str], args) -> list[dict]:
    device = scorer.device
    rows = []
    net = scorer.teacher.backbone
    size = scorer.input_size[0]
    for precision in precisions:
        dtype = PRECISIONS[precision]
        if device.type != "cuda" and dtype is not None:
            continue  # autocast precision is a GPU question; CPU runs fp32
        for b in batches:
            x = torch.randn(b, 3, size, size, device=device)

            def forward(x: torch.Tensor = x, dtype: torch.dtype | None = dtype) -> None:
                with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                    net.forward_features(x)

            try:
                s = per_call_s(forward, device, args.seconds, args.rounds)
            except torch.OutOfMemoryError:
                rows.append({"precision": precision, "batch": b, "images_per_s": None, "error": "out of memory"})
                torch.cuda.empty_cache()
                continue
            rows.append({"precision": precision, "batch": b, "images_per_s": b / s})
            print(f"backbone {precision} batch {b}: {b / s:,.0f} images/s", flush=True)
    return rows


def bench_scorer(scorer: TransformalyScorer, batches: list[int], args) -> list[dict]:
    size = scorer.input_size[0]
    rows = []
    for b in batches:
        images = textures(b, size, seed=b)
        try:
            s = per_call_s(lambda images=images: scorer.score(images), scorer.device, args.seconds, args.rounds)
        except torch.OutOfMemoryError:
            rows.append({"batch": b, "images_per_s": None, "error": "out of memory"})
            torch.cuda.empty_cache()
            continue
        rows.append({"batch": b, "images_per_s": b / s})
        print(f"transformaly score batch {b}: {b / s:,.0f} images/s", flush=True)
    return rows


def bench_jpeg(size: int, n: int, device: torch.device, args) -> dict[str, Any]:
    """Decode the same JPEG bytes with Pillow (one CPU core) and, on CUDA, with nvJPEG through torchvision."""
    from PIL import Image

    blobs = []
    for img in textures(n, size):
        buf = io.BytesIO()
        Image.fromarray(img).convert("RGB").save(buf, format="JPEG", quality=90)
        blobs.append(buf.getvalue())

    def pil() -> None:
        for blob in blobs:
            np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"))

    out: dict[str, Any] = {"image_px": size, "jpeg_bytes_mean": float(np.mean([len(b) for b in blobs]))}
    out["cpu_pillow_frames_per_s"] = n / per_call_s(pil, torch.device("cpu"), args.seconds, args.rounds)
    if device.type == "cuda":
        from torchvision.io import decode_jpeg

        data = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]

        def nvjpeg() -> None:
            decode_jpeg(data, device=device)

        out["gpu_nvjpeg_frames_per_s"] = n / per_call_s(nvjpeg, device, args.seconds, args.rounds)
    else:
        out["gpu_nvjpeg_frames_per_s"] = None
    print(f"jpeg decode {size}px: {out}", flush=True)
    return out


def bench_rvae(device: torch.device, batches: list[int], args) -> list[dict]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(4096, 16)).astype(np.float32)
    scorer = RVAEScorer(n_features=16, device=device)
    scorer.fit(X, epochs=2)
    rows = []
    for b in batches:
        data = rng.normal(size=(b, 16)).astype(np.float32)
        s = per_call_s(lambda data=data: scorer.score(data), device, args.seconds, args.rounds)
        rows.append({"batch": b, "vectors_per_s": b / s})
        print(f"rvae batch {b}: {b / s:,.0f} vectors/s", flush=True)
    return rows


def plot(result: dict[str, Any], name: str, out_dir: Path | None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for precision in PRECISIONS:
        rows = [r for r in result["backbone"] if r["precision"] == precision and r["images_per_s"]]
        if rows:
            ax1.plot([r["batch"] for r in rows], [r["images_per_s"] for r in rows], "o-", label=f"backbone {precision}")
    rows = [r for r in result["transformaly"] if r["images_per_s"]]
    ax1.plot([r["batch"] for r in rows], [r["images_per_s"] for r in rows], "s-", label="Transformaly score")
    ax1.set(xscale="log", yscale="log", xlabel="batch size", ylabel="images / s", title=result["backbone_name"])
    ax1.legend(fontsize=8)
    rows = result["rvae"]
    ax2.plot([r["batch"] for r in rows], [r["vectors_per_s"] for r in rows], "o-")
    ax2.set(xscale="log", yscale="log", xlabel="batch size", ylabel="vectors / s", title="RVAE score (16 features)")
    fig.suptitle(f"{result['device_name']} — {result['machine']}", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, name) if out_dir is None else _save(fig, out_dir / f"{name}.png")


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path, dpi=110)
    return path


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="vit_tiny_patch16_224 and small batches (tests, CPU)")
    p.add_argument("--batches", default=None, help="comma list (default 1..256, or 1,4 with --tiny)")
    p.add_argument("--precisions", default="bf16,fp16,fp32")
    p.add_argument("--seconds", type=float, default=1.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path, default=None, help="directory for gpu.json/png (default benchmarks/results)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    backbone = "vit_tiny_patch16_224" if args.tiny else DEFAULT_BACKBONE
    default_batches = "1,4" if args.tiny else "1,8,32,64,128,256"
    batches = [int(b) for b in (args.batches or default_batches).split(",")]
    scorer = fitted_transformaly(backbone, device)
    result: dict[str, Any] = {
        "machine": machine(),
        "machine_info": machine_info(),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "backbone_name": backbone,
        "input_px": scorer.input_size[0],
        "backbone": bench_backbone(scorer, batches, args.precisions.split(","), args),
        "transformaly": bench_scorer(scorer, batches, args),
        "jpeg_decode": bench_jpeg(scorer.input_size[0], 4 if args.tiny else 64, device, args),
        "rvae": bench_rvae(device, [b * 64 for b in batches], args),
        "e2e_images_per_s": None,  # through a worker on this device: run pipeline_bench.py with device=cuda
    }
    best = [r["images_per_s"] for r in result["transformaly"] if r["images_per_s"]]
    result["transformaly_best_images_per_s"] = max(best) if best else None
    if args.out is None:
        write_json("gpu", result)
    else:
        args.out.mkdir(parents=True, exist_ok=True)
        import json

        (args.out / "gpu.json").write_text(json.dumps(result, indent=2))
    plot(result, "gpu", args.out)
    return result


if __name__ == "__main__":
    main()
