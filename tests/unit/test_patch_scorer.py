"""PatchMemoryScorer: the image Scorer API contract, persistence, input checks and defect detection.

Images come from benchmarks/textures.py at 64 px, so every fit takes about a second on CPU.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

import models
from benchmarks.textures import SurfaceGenerator
from models.patch_memory import PatchMemoryScorer, greedy_coreset
from models.persistence import MANIFEST, ModelIntegrityError

SIZE = 64
SMALL = {"memory_size": 2000, "coreset_candidates": 8000, "device": "cpu"}


@pytest.fixture(scope="module")
def gen() -> SurfaceGenerator:
    return SurfaceGenerator("woven", size=SIZE, seed=0)


@pytest.fixture(scope="module")
def train(gen: SurfaceGenerator) -> np.ndarray:
    return gen.normal(40)


@pytest.fixture(scope="module")
def fitted(train: np.ndarray) -> PatchMemoryScorer:
    s = PatchMemoryScorer(**SMALL)
    s.fit(train)
    return s


def test_score_heatmap_and_calibration_shapes(fitted: PatchMemoryScorer, train: np.ndarray) -> None:
    scores, maps = fitted.score(train[:5]), fitted.heatmap(train[:5])
    assert scores.shape == (5,) and scores.dtype == np.float32 and np.isfinite(scores).all()
    assert maps.shape == (5, SIZE // 4, SIZE // 4) and maps.dtype == np.float32 and (maps >= 0).all()
    assert fitted.data_kind == "images" and fitted.kind == "patch-memory"
    assert fitted.calibration_scores.shape == (4,) and fitted.history["n_train"] == 36


def test_memory_is_capped_by_the_coreset(train: np.ndarray) -> None:
    s = PatchMemoryScorer(memory="knn", memory_size=300, coreset_candidates=1000, device="cpu")
    s.fit(train)
    assert s.bank.shape == (300, s.extractor.n_channels) and s.history["n_patches"] > 1000


def test_greedy_coreset_picks_distinct_far_apart_rows() -> None:
    import torch

    x = torch.cat([torch.zeros(50, 3), torch.ones(50, 3) * 10, torch.full((1, 3), -20.0)])
    idx = greedy_coreset(x, 3, seed=0)
    assert len(set(idx.tolist())) == 3 and {round(float(x[i, 0])) for i in idx} == {0, 10, -20}


def test_defects_score_higher_and_heatmap_peaks_on_them(fitted: PatchMemoryScorer, gen: SurfaceGenerator) -> None:
    normal, n = gen.normal(16), 16
    for defect in ("blowhole", "fraying"):  # the clearest at 64 px; benchmarks/image_quality.py has them all
        images, masks = gen.defective(n, defect)
        scores = fitted.score(np.r_[normal, images])
        assert roc_auc_score(np.r_[np.zeros(n), np.ones(n)], scores) > 0.7, defect  # chance: 0.5
        maps = fitted.heatmap(images)
        cells = masks.reshape(n, SIZE // 4, 4, SIZE // 4, 4).any(axis=(2, 4))
        inside = np.array([m[c].max() for m, c in zip(maps, cells, strict=True)])
        outside = np.array([np.median(m[~c]) for m, c in zip(maps, cells, strict=True)])
        assert (inside > outside).mean() >= 0.9, defect


def test_lamp_gain_and_offset_alone_change_no_score(fitted: PatchMemoryScorer, train: np.ndarray) -> None:
    relit = np.clip(train[:8].astype(np.float32) * 0.8 + 20, 0, 255).astype(np.uint8)
    np.testing.assert_allclose(fitted.score(relit), fitted.score(train[:8]), rtol=0.05)


@pytest.mark.parametrize("features,memory", [("filterbank", "knn"), ("random", "knn"), ("random", "gaussian")])
def test_every_option_round_trips_through_save_and_load(train, tmp_path, features, memory) -> None:
    s = PatchMemoryScorer(features=features, memory=memory, **SMALL)
    s.fit(train)
    s.save(tmp_path / "m", extra={"training_window": "test"})
    manifest = json.loads((tmp_path / "m" / MANIFEST).read_text())
    assert manifest["kind"] == "patch-memory" and manifest["training_window"] == "test"
    loaded = models.load_scorer(tmp_path / "m", device="cpu")
    assert isinstance(loaded, PatchMemoryScorer)
    np.testing.assert_array_equal(loaded.score(train[:6]), s.score(train[:6]))
    np.testing.assert_array_equal(loaded.heatmap(train[:6]), s.heatmap(train[:6]))
    np.testing.assert_array_equal(loaded.calibration_scores, s.calibration_scores)


def test_tampered_weights_are_refused(fitted: PatchMemoryScorer, tmp_path) -> None:
    fitted.save(tmp_path / "m")
    weights = tmp_path / "m" / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError):
        models.load_scorer(tmp_path / "m")


def test_scores_any_batch_size_alike(fitted: PatchMemoryScorer, train: np.ndarray) -> None:
    fitted.score_batch_size = 3
    try:
        np.testing.assert_allclose(fitted.score(train[:7]), np.r_[fitted.score(train[:2]), fitted.score(train[2:7])],
                                   rtol=1e-5)  # fmt: skip
    finally:
        fitted.score_batch_size = 32


def test_rgb_scores_as_its_gray_average(fitted: PatchMemoryScorer, train: np.ndarray) -> None:
    rgb = np.repeat(train[:4, :, :, None], 3, axis=3)
    np.testing.assert_allclose(fitted.score(rgb), fitted.score(train[:4]), rtol=1e-5)


def test_large_frames_are_downscaled_to_max_side(fitted: PatchMemoryScorer) -> None:
    big = SurfaceGenerator("woven", size=512, seed=1).normal(1)
    assert fitted.heatmap(big).shape == (1, 64, 64)


@pytest.mark.parametrize(
    "bad,expected",
    [
        (np.zeros((2, 32, 32), np.float32), "dtype"),
        (np.zeros((2, 32), np.uint8), "shape"),
        (np.zeros((0, 32, 32), np.uint8), "empty"),
        (np.zeros((2, 32, 32, 4), np.uint8), "shape"),
    ],
)
def test_bad_images_raise_value_error(fitted: PatchMemoryScorer, bad, expected) -> None:
    with pytest.raises(ValueError, match=expected):
        fitted.score(bad)


def test_fit_needs_enough_images_and_bad_options_are_refused() -> None:
    with pytest.raises(ValueError, match="at least"):
        PatchMemoryScorer(**SMALL).fit(np.zeros((3, 32, 32), np.uint8))
    with pytest.raises(ValueError, match="features"):
        PatchMemoryScorer(features="sift")
    with pytest.raises(RuntimeError, match="not fitted"):
        PatchMemoryScorer(**SMALL).score(np.zeros((1, 32, 32), np.uint8))


def test_factory_default_offline_kind_fits_without_downloads(train: np.ndarray) -> None:
    s = models.create_scorer(models.DEFAULT_OFFLINE_IMAGE_KIND, device="cpu")
    assert isinstance(s, models.ImageScorer)
    s.fit(train[:12])
    assert s.score(train[:2]).shape == (2,)
