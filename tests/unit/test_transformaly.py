"""TransformalyScorer: the Scorer API contract for images, persistence, input checks, and defect detection.

A tiny random-init ViT (vit_tiny at 64 px: a 4x4 patch grid) keeps every fit to a few seconds on CPU;
the images are striped textures with sensor noise, the defects bright spots and scratches.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from sklearn.metrics import roc_auc_score

import models
from models.persistence import MANIFEST, ModelIntegrityError
from models.transformaly import TransformalyScorer, discrepancy

SIZE = 64
TINY = {"backbone": "vit_tiny_patch16_224", "pretrained": False, "img_size": SIZE, "n_blocks": 3, "device": "cpu"}
FIT = {"epochs": 2, "batch_size": 16}


def textures(n: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 [n, 64, 64]: stripes with jittered frequency, angle and phase, plus Gaussian noise."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    out = np.empty((n, SIZE, SIZE), np.float32)
    for i in range(n):
        f, th, ph = rng.uniform(0.28, 0.32), rng.uniform(-0.05, 0.05), rng.uniform(0, 2 * np.pi)
        out[i] = 110 + 40 * np.sin(f * (xx * np.cos(th) + yy * np.sin(th)) + ph) + rng.normal(0, 8, (SIZE, SIZE))
    return np.clip(out, 0, 255).astype(np.uint8)


def with_defects(images: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Copies with a saturated spot (odd rows) or scratch (even rows); returns (images, defect centres [n, 2])."""
    out, centres = images.copy(), rng.integers(16, SIZE - 16, (len(images), 2))
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    for i, (cy, cx) in enumerate(centres):
        if i % 2:
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= 64
        else:
            ang = rng.uniform(0, np.pi)
            across = np.abs((xx - cx) * np.sin(ang) - (yy - cy) * np.cos(ang))
            along = np.abs((xx - cx) * np.cos(ang) + (yy - cy) * np.sin(ang))
            mask = (across <= 2.0) & (along <= 24)
        out[i][mask] = 255
    return out, centres


@pytest.fixture(scope="module")
def train() -> np.ndarray:
    return textures(48, np.random.default_rng(0))


@pytest.fixture(scope="module")
def fitted(train: np.ndarray) -> TransformalyScorer:
    s = TransformalyScorer(**TINY, val_fraction=0.5)
    s.fit(train, **FIT)
    return s


def test_score_and_heatmap_shapes_and_dtypes(fitted: TransformalyScorer, train: np.ndarray) -> None:
    scores, maps = fitted.score(train[:5]), fitted.heatmap(train[:5])
    assert scores.shape == (5,) and scores.dtype == np.float32 and np.isfinite(scores).all()
    assert maps.shape == (5, 4, 4) and maps.dtype == np.float32 and (maps >= 0).all()
    assert fitted.data_kind == "images" and fitted.n_blocks == 3
    assert fitted.calibration_scores is not None and fitted.calibration_scores.shape == (12,)
    h = fitted.history
    assert len(h["train_loss"]) == h["epochs_run"] == 2 and len(h["val_loss"]) == 2
    assert h["n_train"] == 24 and h["n_val"] == 24 and h["cached_teacher"] and h["pca_components"] >= 1


def test_scores_any_batch_size_alike(fitted: TransformalyScorer, train: np.ndarray) -> None:
    fitted.score_batch_size = 7
    try:
        np.testing.assert_allclose(
            fitted.score(train[:12]), np.r_[fitted.score(train[:5]), fitted.score(train[5:12])], rtol=1e-5
        )
    finally:
        fitted.score_batch_size = 64


@pytest.mark.parametrize(
    "bad, expected",
    [
        (np.zeros((2, 32, 32), np.float32), "uint8"),
        (np.full((2, 32, 32), np.nan), "uint8"),
        (np.zeros((2, 32, 32, 4), np.uint8), "shape"),
        (np.zeros((32, 32), np.uint8), "shape"),
        (np.zeros((0, 32, 32), np.uint8), "empty"),
        (np.zeros((2, 4, 4), np.uint8), "8x8"),
    ],
)
def test_bad_images_raise_value_error_naming_the_expectation(fitted, bad, expected) -> None:
    with pytest.raises(ValueError, match=expected):
        fitted.score(bad)
    with pytest.raises(ValueError, match=expected):
        fitted.heatmap(bad)


def test_fit_rejects_bad_images_and_too_few() -> None:
    s = TransformalyScorer(**TINY)
    with pytest.raises(ValueError, match="uint8"):
        s.fit(np.zeros((20, 32, 32), np.float64))
    with pytest.raises(ValueError, match="normal images"):
        s.fit(np.zeros((5, 32, 32), np.uint8))
    with pytest.raises(RuntimeError, match="not fitted"):
        s.score(np.zeros((1, 32, 32), np.uint8))


def test_gray_and_rgb_of_any_size_score_alike(fitted: TransformalyScorer, train: np.ndarray) -> None:
    rgb = np.repeat(train[:4, :, :, None], 3, axis=3)
    np.testing.assert_allclose(fitted.score(rgb), fitted.score(train[:4]), rtol=1e-6)
    other_size = np.random.default_rng(1).integers(0, 256, (3, 80, 96, 3), dtype=np.uint8)  # resized inside
    assert fitted.score(other_size).shape == (3,) and fitted.heatmap(other_size).shape == (3, 4, 4)


def test_save_load_round_trip_gives_identical_scores(fitted, train, tmp_path) -> None:
    fitted.save(tmp_path / "m", extra={"training_window": "test"})
    manifest = json.loads((tmp_path / "m" / MANIFEST).read_text())
    cfg = manifest["config"]
    assert manifest["kind"] == "transformaly" and manifest["training_window"] == "test"
    assert cfg["backbone"] == "vit_tiny_patch16_224" and cfg["pretrained"] is False
    assert cfg["backbone_init_seed"] == 0 and cfg["img_size"] == SIZE and cfg["n_blocks_used"] == 3
    loaded = models.load_scorer(tmp_path / "m", device="cpu")
    assert isinstance(loaded, TransformalyScorer)
    x = np.r_[train[:6], with_defects(train[6:12], np.random.default_rng(2))[0]]
    np.testing.assert_array_equal(loaded.score(x), fitted.score(x))
    np.testing.assert_array_equal(loaded.heatmap(x), fitted.heatmap(x))
    np.testing.assert_array_equal(loaded.calibration_scores, fitted.calibration_scores)


def test_saved_directory_references_the_backbone_instead_of_copying_it(fitted, tmp_path) -> None:
    from safetensors import safe_open

    fitted.save(tmp_path / "m")
    with safe_open(str(tmp_path / "m" / "weights.safetensors"), "pt") as f:
        names = list(f.keys())
    prefixes = {k.split(".")[0] for k in names}
    assert prefixes == {"students", "pretrained", "teacher_student", "term_stats"}


def test_local_weights_file_is_hashed_and_verified_at_load(train, tmp_path) -> None:
    import timm

    net = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=SIZE)
    weights = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(weights))
    s = TransformalyScorer(**{**TINY, "pretrained": str(weights)}, epochs=0)  # students untrained: enough here
    for a, b in zip(s.teacher.backbone.state_dict().values(), net.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    s.fit(train[:16], batch_size=16)
    s.save(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / MANIFEST).read_text())["config"]
    assert cfg["pretrained"] == str(weights) and len(cfg["weights_sha256"]) == 64 and cfg["backbone_init_seed"] is None
    np.testing.assert_array_equal(models.load_scorer(tmp_path / "m").score(train[:4]), s.score(train[:4]))
    save_file({k: v.contiguous() + 1 for k, v in net.state_dict().items()}, str(weights))  # the file changes
    with pytest.raises(ModelIntegrityError, match="backbone weights"):
        models.load_scorer(tmp_path / "m")


def test_students_start_random_not_as_copies_of_their_teachers(train) -> None:
    s = TransformalyScorer(**TINY)
    teacher_blocks = s.teacher.backbone.blocks[-3:]
    for student, teacher in zip(s.students, teacher_blocks, strict=True):
        assert not torch.equal(student.attn.qkv.weight, teacher.attn.qkv.weight)
    with torch.inference_mode():
        _, acts = s._teacher(train[:4])
        assert (discrepancy(s.students, acts).mean(dim=(0, 2)) > 0).all()


def test_random_backbone_is_reproducible_and_leaves_the_callers_rng_alone(fitted) -> None:
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    again = TransformalyScorer(**TINY, seed=0)  # fitted's config: same seed, same random backbone
    assert torch.equal(torch.random.get_rng_state(), state)
    for x, y in zip(again.teacher.state_dict().values(), fitted.teacher.state_dict().values(), strict=True):
        assert torch.equal(x, y)
    other = TransformalyScorer(**TINY, seed=1)
    assert not torch.equal(fitted.teacher.backbone.pos_embed, other.teacher.backbone.pos_embed)


def test_scoring_builds_no_autograd_graph(fitted, train) -> None:
    seen = []
    hook = fitted.students[0].register_forward_hook(
        lambda m, i, o: seen.append((o.requires_grad, torch.is_inference_mode_enabled()))
    )
    try:
        fitted.score(train[:2])
        fitted.heatmap(train[:2])
    finally:
        hook.remove()
    assert seen == [(False, True), (False, True)]


def test_n_blocks_is_clipped_to_depth_minus_one_with_a_warning() -> None:
    with pytest.warns(UserWarning, match="clipped"):
        s = TransformalyScorer(**{**TINY, "n_blocks": 50})
    assert s.n_blocks == len(s.students) == 11


def test_fit_without_the_teacher_cache_trains_the_same_students(train) -> None:
    small = {**TINY, "img_size": 32, "val_fraction": 0.5}
    cached, uncached = TransformalyScorer(**small), TransformalyScorer(**small)
    h_cached, h_uncached = cached.fit(train[:16], **FIT), uncached.fit(train[:16], **FIT, cache_gb=0.0)
    assert h_cached["cached_teacher"] and not h_uncached["cached_teacher"]
    np.testing.assert_allclose(h_uncached["val_loss"], h_cached["val_loss"], rtol=1e-5)
    np.testing.assert_allclose(uncached.score(train[16:20]), cached.score(train[16:20]), rtol=1e-4)


def test_defects_score_higher_than_normal_textures(fitted) -> None:
    rng = np.random.default_rng(7)
    normal = textures(16, rng)
    defective, _ = with_defects(textures(16, rng), rng)
    scores = fitted.score(np.r_[normal, defective])
    labels = np.r_[np.zeros(16), np.ones(16)]
    assert roc_auc_score(labels, scores) > 0.8
    assert scores[16:].mean() > scores[:16].mean()


def test_heatmap_peaks_near_the_defect(fitted) -> None:
    rng = np.random.default_rng(8)
    defective, centres = with_defects(textures(12, rng), rng)
    maps = fitted.heatmap(defective)
    peak = np.stack(np.unravel_index(maps.reshape(len(maps), -1).argmax(1), (4, 4)), axis=1)
    distance = np.abs(peak - centres // 16).max(axis=1)  # in patches (16 px each)
    assert (distance <= 1).mean() >= 0.9


def test_standardize_z_scores_each_term_with_held_out_normal_statistics(fitted, train) -> None:
    raw = fitted.score_terms(train[:8])
    mean, std = fitted.term_stats
    fitted.config.standardize = True
    try:
        z = fitted.score_terms(train[:8])
        scores = fitted.score(train[:8])
    finally:
        fitted.config.standardize = False
    np.testing.assert_allclose(z, (raw - mean) / std)
    np.testing.assert_allclose(scores, z.sum(axis=1), rtol=1e-5)
    assert (std > 0).all() and np.abs(z).max() < 50


def test_early_stopping_halts_and_restores_the_best_students(train) -> None:
    s = TransformalyScorer(**{**TINY, "img_size": 32}, val_fraction=0.5, patience=1, lr=0.05)  # diverges after epoch 0
    h = s.fit(train[:20], epochs=6, batch_size=10)
    best = int(np.argmin(h["val_loss"]))
    assert h["epochs_run"] == best + 2 < 6 and h["best_epoch"] == best
    restored = TransformalyScorer(**{**TINY, "img_size": 32}, val_fraction=0.5, patience=None, lr=0.05)
    restored.fit(train[:20], epochs=best + 1, batch_size=10)  # same seed, stopped by hand at the best epoch
    np.testing.assert_allclose(s.score(train[20:24]), restored.score(train[20:24]), rtol=1e-4)


def test_max_pooling_of_patch_discrepancies_detects_defects_and_round_trips(train, tmp_path) -> None:
    s = TransformalyScorer(**TINY, val_fraction=0.5, ts_pooling="max")
    s.fit(train, **FIT)
    rng = np.random.default_rng(7)
    normal = textures(16, rng)
    defective, _ = with_defects(textures(16, rng), rng)
    teacher_student = s.score_terms(np.r_[normal, defective])[:, 1]
    assert roc_auc_score(np.r_[np.zeros(16), np.ones(16)], teacher_student) > 0.8
    s.save(tmp_path / "m")
    np.testing.assert_array_equal(models.load_scorer(tmp_path / "m").score(normal), s.score(normal))
    with pytest.raises(ValueError, match="ts_pooling"):
        TransformalyScorer(**TINY, ts_pooling="median")


def test_terms_option_scores_with_the_chosen_likelihood_terms(fitted, train) -> None:
    terms = fitted.score_terms(train[:6])
    only_ts = TransformalyScorer(**TINY, terms="teacher_student")
    only_ts.__dict__.update({k: v for k, v in fitted.__dict__.items() if k != "config"})
    np.testing.assert_allclose(only_ts.score(train[:6]), terms[:, 1].astype(np.float32), rtol=1e-6)
    with pytest.raises(ValueError, match="terms"):
        TransformalyScorer(**TINY, terms="cls")


def test_students_loss_falls_during_fit(fitted) -> None:
    losses = fitted.history["train_loss"]
    assert len(losses) >= 2 and losses[-1] < losses[0], losses
