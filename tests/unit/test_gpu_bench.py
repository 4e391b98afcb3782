"""The GPU benchmark's code path runs end to end on CPU with a tiny model (its figures come from a GPU run)."""

from __future__ import annotations

import json

from benchmarks import gpu_bench


def test_gpu_bench_runs_on_cpu_with_a_tiny_model_and_writes_json_and_png(tmp_path):
    result = gpu_bench.main(["--tiny", "--device", "cpu", "--seconds", "0.05", "--rounds", "1", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "gpu.json").read_text())
    assert saved["device_name"] == "cpu" and saved["backbone_name"] == "vit_tiny_patch16_224"
    assert [r["batch"] for r in saved["transformaly"]] == [1, 4]
    assert all(r["images_per_s"] > 0 for r in saved["transformaly"] + saved["backbone"])
    assert (
        saved["jpeg_decode"]["cpu_pillow_frames_per_s"] > 0 and saved["jpeg_decode"]["gpu_nvjpeg_frames_per_s"] is None
    )
    assert all(r["vectors_per_s"] > 0 for r in saved["rvae"])
    assert result["transformaly_best_images_per_s"] == max(r["images_per_s"] for r in saved["transformaly"])
    assert (tmp_path / "gpu.png").stat().st_size > 1000
