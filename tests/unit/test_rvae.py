"""RVAEScorer: the Scorer API contract, persistence, input checks, and detection on an easy sensor problem."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

import models
from models.persistence import MANIFEST, WEIGHTS
from models.rvae import KINDS, RVAEScorer, Unit

N_CHANNELS, N_FACTORS = 8, 3
SMALL = {"n_layers": 2, "hidden": 32, "latent": 4, "device": "cpu"}  # keeps every fit to a second or two


def sensors(n: int, rng: np.random.Generator, noise: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Correlated sensors in raw units: 8 channels driven by 3 latent factors plus noise.

    Returns the rows and each channel's standard deviation (raw units) for sizing faults.
    """
    mix = np.random.default_rng(123).normal(size=(N_FACTORS, N_CHANNELS))
    x = rng.normal(size=(n, N_FACTORS)) @ mix + noise * rng.normal(size=(n, N_CHANNELS))
    scale, offset = np.geomspace(0.1, 100, N_CHANNELS), np.linspace(-50, 300, N_CHANNELS)  # mixed units
    return (x * scale + offset).astype(np.float32), scale * np.sqrt((mix**2).sum(0) + noise**2)


def with_faults(X: np.ndarray, sd: np.ndarray, rng: np.random.Generator, sigmas: float = 4.0):
    """Copy of X with one channel per row offset by `sigmas` standard deviations; returns (rows, channels)."""
    channel = rng.integers(0, N_CHANNELS, len(X))
    sign = rng.choice([-1.0, 1.0], len(X))
    faulty = X.copy()
    faulty[np.arange(len(X)), channel] += (sign * sigmas * sd[channel]).astype(np.float32)
    return faulty, channel


@pytest.fixture(scope="module")
def train() -> np.ndarray:
    return sensors(2000, np.random.default_rng(0))[0]


@pytest.fixture(scope="module")
def fitted(train: np.ndarray) -> RVAEScorer:
    s = RVAEScorer(N_CHANNELS, **SMALL)
    s.fit(train, epochs=25, batch_size=128, lr=3e-3)
    return s


def test_score_and_explain_shapes_and_dtypes(fitted: RVAEScorer, train: np.ndarray) -> None:
    scores, contrib = fitted.score(train[:10]), fitted.explain(train[:10])
    assert scores.shape == (10,) and scores.dtype == np.float32
    assert contrib.shape == (10, N_CHANNELS) and contrib.dtype == np.float32
    assert (contrib >= 0).all()
    np.testing.assert_allclose(contrib.mean(axis=1), scores, rtol=1e-5)
    assert fitted.data_kind == "vectors" and fitted.n_features == N_CHANNELS and fitted.kind == "rvae"
    assert fitted.feature_names == [f"f{i}" for i in range(N_CHANNELS)]
    assert fitted.device == torch.device("cpu")


def test_calibration_scores_come_from_the_held_out_slice(fitted: RVAEScorer, train: np.ndarray) -> None:
    cal = fitted.calibration_scores
    assert isinstance(cal, np.ndarray) and cal.dtype == np.float32 and cal.shape == (200,)  # 10% of 2000
    assert np.isfinite(cal).all()


def test_scoring_is_batched_for_any_n(fitted: RVAEScorer, train: np.ndarray) -> None:
    one_batch, before = fitted.score(train[:1000]), fitted.score_batch_size
    fitted.score_batch_size = 7
    try:
        np.testing.assert_allclose(fitted.score(train[:1000]), one_batch, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(fitted.explain(train[:20]).mean(axis=1), one_batch[:20], rtol=1e-5, atol=1e-7)
        assert fitted.score(train[:1]).shape == (1,)
    finally:
        fitted.score_batch_size = before


def test_scoring_computes_no_gradients(fitted: RVAEScorer, train: np.ndarray) -> None:
    fitted.net.zero_grad(set_to_none=True)
    fitted.score(train[:50])
    fitted.explain(train[:50])
    assert all(p.grad is None for p in fitted.net.parameters())
    assert torch.is_grad_enabled()


def test_scoring_runs_in_inference_mode(fitted: RVAEScorer, train: np.ndarray) -> None:
    seen: list[bool] = []
    hook = fitted.net.register_forward_hook(lambda *_: seen.append(torch.is_inference_mode_enabled()))
    try:
        fitted.score(train[:20])
        fitted.explain(train[:20])
    finally:
        hook.remove()
    assert seen == [True, True]


def test_device_defaults_to_cuda_when_present() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    s = RVAEScorer(N_CHANNELS, n_layers=1, hidden=8, latent=2)
    assert s.device.type == expected
    assert all(p.device.type == expected for p in s.net.parameters())


def test_scoring_leaves_the_input_untouched(fitted: RVAEScorer, train: np.ndarray) -> None:
    X = train[:100].copy()
    fitted.score(X)
    fitted.explain(X)
    np.testing.assert_array_equal(X, train[:100])


def test_same_seed_same_model(train: np.ndarray) -> None:
    runs = []
    for seed in (0, 0, 1):
        s = RVAEScorer(N_CHANNELS, seed=seed, **SMALL)
        hist = s.fit(train[:600], epochs=3)
        runs.append((hist["train_loss"], s.score(train[:50])))
    assert runs[0][0] == runs[1][0]
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    assert not np.array_equal(runs[0][1], runs[2][1])


def test_construction_and_fit_leave_the_global_rng_alone(train: np.ndarray) -> None:
    before = torch.get_rng_state()
    RVAEScorer(N_CHANNELS, **SMALL).fit(train[:300], epochs=1)
    assert torch.equal(before, torch.get_rng_state())


def test_save_load_round_trip_gives_identical_scores(fitted: RVAEScorer, train: np.ndarray, tmp_path) -> None:
    fitted.feature_names = [f"press-{i}" for i in range(N_CHANNELS)]
    try:
        fitted.save(tmp_path / "m", extra={"metrics": {"auroc": 1.0}})
    finally:
        fitted.feature_names = [f"f{i}" for i in range(N_CHANNELS)]
    expected = fitted.score(train[:300])
    for loaded in (RVAEScorer.load(tmp_path / "m"), models.load_scorer(tmp_path / "m")):
        assert isinstance(loaded, RVAEScorer)
        np.testing.assert_array_equal(loaded.score(train[:300]), expected)
        np.testing.assert_array_equal(loaded.explain(train[:5]), fitted.explain(train[:5]))
        np.testing.assert_array_equal(loaded.calibration_scores, fitted.calibration_scores)
        assert loaded.feature_names[0] == "press-0" and loaded.kind == "rvae"
    manifest = json.loads((tmp_path / "m" / MANIFEST).read_text())
    assert manifest["kind"] == "rvae" and manifest["metrics"] == {"auroc": 1.0}
    assert manifest["config"]["normalization_stats"]["method"] == "robust"
    assert len(manifest["config"]["normalization_stats"]["scale"]) == N_CHANNELS


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_saves_and_loads_through_load_scorer(kind: str, train: np.ndarray, tmp_path) -> None:
    s = RVAEScorer(N_CHANNELS, kind=kind, **SMALL)
    hist = s.fit(train[:400], epochs=2)
    assert np.isfinite(hist["train_loss"]).all()
    variational = kind in ("vae", "rvae")  # loss = MSE + beta * KL / F; the deterministic kinds' loss is the MSE
    assert (np.array(hist["train_loss"]) > np.array(hist["train_mse"])).all() == variational
    assert s.net.encoder.proj_out.out_features == s.config.latent * (2 if variational else 1)
    assert all(u.residual == (kind in ("rae", "rvae")) for u in [*s.net.encoder.units, *s.net.decoder.units])
    assert len(s.net.encoder.units) == len(s.net.decoder.units) == SMALL["n_layers"]
    s.save(tmp_path / kind)
    assert sorted(p.name for p in (tmp_path / kind).iterdir()) == [MANIFEST, WEIGHTS]  # JSON + safetensors only
    loaded = models.load_scorer(tmp_path / kind)
    assert loaded.kind == kind
    np.testing.assert_array_equal(loaded.score(train[:100]), s.score(train[:100]))


def test_tampered_weights_are_refused(fitted: RVAEScorer, tmp_path) -> None:
    path = fitted.save(tmp_path / "m")
    blob = bytearray((path / WEIGHTS).read_bytes())
    blob[-1] ^= 0xFF
    (path / WEIGHTS).write_bytes(bytes(blob))
    with pytest.raises(models.ModelIntegrityError, match="sha256"):
        models.load_scorer(path)
    with pytest.raises(models.ModelIntegrityError):
        RVAEScorer.load(path)


def _bad_inputs() -> list:
    good = np.zeros((4, N_CHANNELS), np.float32)
    nan, inf = good.copy(), good.copy()
    nan[1, 2], inf[3, 0] = np.nan, np.inf
    return [
        pytest.param(nan, "finite", id="nan"),
        pytest.param(inf, "finite", id="inf"),
        pytest.param(np.zeros((4, N_CHANNELS + 1), np.float32), f"expected {N_CHANNELS} features", id="wide"),
        pytest.param(np.zeros(N_CHANNELS, np.float32), "2-d", id="1d"),
        pytest.param(np.zeros((0, N_CHANNELS), np.float32), "empty", id="empty"),
        pytest.param(np.full((2, N_CHANNELS), "a"), "numeric", id="strings"),
        pytest.param([[1.0, 2.0], [3.0]], "expected", id="ragged"),
    ]


@pytest.mark.parametrize(("bad", "message"), _bad_inputs())
def test_bad_input_raises_value_error_saying_what_was_expected(fitted: RVAEScorer, bad, message: str) -> None:
    for verb in (fitted.score, fitted.explain, RVAEScorer(N_CHANNELS, **SMALL).fit):
        with pytest.raises(ValueError, match=message):
            verb(bad)


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_a_non_finite_value_anywhere_in_a_large_batch_is_refused(fitted: RVAEScorer, train, bad_value) -> None:
    X = train[:1000].copy()
    X[777, 5] = bad_value
    fitted.score_batch_size = 300  # the bad row sits in the third of four chunks
    try:
        for verb in (fitted.score, fitted.explain):
            with pytest.raises(ValueError, match=r"finite.*\[777\]"):
                verb(X)
    finally:
        fitted.score_batch_size = 2048


def test_finite_input_too_large_to_reconstruct_scores_as_infinitely_anomalous(fitted: RVAEScorer) -> None:
    X = np.full((2, N_CHANNELS), 3e38, np.float32)  # finite, but its squared error overflows float32
    assert np.isposinf(fitted.score(X)).all()


def test_bad_configuration_raises_value_error() -> None:
    with pytest.raises(ValueError, match="kind"):
        RVAEScorer(N_CHANNELS, kind="gan")
    with pytest.raises(ValueError, match="feature names"):
        RVAEScorer(N_CHANNELS, feature_names=["a"])
    with pytest.raises(ValueError, match="clip_grad_norm"):
        RVAEScorer(N_CHANNELS, clip_grad_norm=0.0)


def test_scoring_before_fit_says_so() -> None:
    with pytest.raises(RuntimeError, match="not fitted"):
        RVAEScorer(N_CHANNELS, **SMALL).score(np.zeros((2, N_CHANNELS), np.float32))


def test_detects_single_channel_faults_and_names_the_channel(fitted: RVAEScorer) -> None:
    rng = np.random.default_rng(7)
    normal, sd = sensors(500, rng)
    faulty, channel = with_faults(sensors(500, rng)[0], sd, rng)
    y = np.r_[np.zeros(len(normal)), np.ones(len(faulty))]
    assert roc_auc_score(y, fitted.score(np.r_[normal, faulty])) > 0.95
    top1 = (fitted.explain(faulty).argmax(axis=1) == channel).mean()
    assert top1 >= 0.9, f"explain ranked the faulty channel first for only {top1:.0%} of faults"
    assert fitted.top_features(faulty[0], k=1)[0][0] == f"f{channel[0]}"


def test_constant_channel_is_handled(train: np.ndarray) -> None:
    X = train[:600].copy()
    X[:, 3] = 42.0
    s = RVAEScorer(N_CHANNELS, **SMALL)
    hist = s.fit(X, epochs=3)
    assert np.isfinite(hist["train_loss"]).all()
    assert s.normalization.scale[3] == 1.0 and s.normalization.center[3] == 42.0
    stuck, moved = X[:5].copy(), X[:5].copy()
    moved[:, 3] += 50.0
    assert np.isfinite(s.score(stuck)).all()
    assert (s.score(moved) > s.score(stuck)).all()
    assert (s.explain(moved).argmax(axis=1) == 3).all()


def test_gradient_clipping_keeps_a_deep_net_with_a_huge_learning_rate_finite(train: np.ndarray) -> None:
    s = RVAEScorer(N_CHANNELS, n_layers=6, hidden=32, latent=4, clip_grad_norm=1.0, device="cpu")
    hist = s.fit(train[:600], epochs=3, lr=1.0, patience=None)
    assert len(hist["grad_norm"]) == hist["epochs_run"] * 5  # 540 training rows / 128 per step
    assert max(hist["grad_norm"]) > 1.0 and hist["clipped_fraction"] > 0  # norms are logged before clipping
    assert all(torch.isfinite(p).all() for p in s.net.parameters())
    assert np.isfinite(s.score(train[:100])).all()


def test_clipping_can_be_disabled(train: np.ndarray) -> None:
    s = RVAEScorer(N_CHANNELS, clip_grad_norm=None, **SMALL)
    hist = s.fit(train[:400], epochs=2)
    assert hist["clipped_fraction"] == 0.0 and hist["clip_grad_norm"] is None
    assert len(hist["grad_norm"]) > 0


def test_early_stopping_restores_the_best_epoch(train: np.ndarray) -> None:
    s = RVAEScorer(N_CHANNELS, **SMALL)
    hist = s.fit(train[:600], epochs=200, lr=3e-2, patience=3)
    assert hist["epochs_run"] < 200
    assert hist["epochs_run"] - 1 - hist["best_epoch"] == 3
    assert min(hist["val_loss"]) == hist["val_loss"][hist["best_epoch"]]


def test_progress_bar_runs(train: np.ndarray, capsys) -> None:
    RVAEScorer(N_CHANNELS, **SMALL).fit(train[:300], epochs=2, progress=True)
    assert "epoch" in capsys.readouterr().err


def test_plain_units_drop_the_identity_skip() -> None:
    torch.manual_seed(0)
    x = torch.randn(16, 8)
    plain, residual = Unit(8, "relu", residual=False).eval(), Unit(8, "relu", residual=True).eval()
    residual.load_state_dict(plain.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(residual(x), x + plain(x))
