"""RVAEScorer defaults that scale with the data, log-magnitude input, temporal windows (pure models tests)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import models
from models.normalization import Normalization
from models.persistence import MANIFEST
from models.rvae import RVAEScorer
from models.rvae_defaults import RVAEDefaults, default_config, default_normalization, few_rows_wide

TINY = {"n_layers": 1, "hidden": 16, "latent": 3, "device": "cpu"}
NAMES = ["flow", "pressure_in", "pressure_out", "current"]


def process(n: int, seed: int = 0) -> np.ndarray:
    """A time-ordered 4-sensor sequence: two smooth drivers, fixed mixing, noise (raw units)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    drivers = np.stack([np.sin(t / 15.0), np.cos(t / 40.0)], 1) + 0.05 * rng.normal(size=(n, 2))
    mix = np.array([[3.0, 0.5, 2.0, 1.0], [0.2, 1.0, -1.0, 0.5]])
    return (drivers @ mix + 0.05 * rng.normal(size=(n, 4)) + [100, 2, 5, 30]).astype(np.float32)


def test_a_wide_model_is_not_64_wide() -> None:
    s = RVAEScorer(n_features=784, device="cpu")
    assert s.config.hidden > 64 and s.config.latent > 8
    assert s.net.encoder.proj_in.out_features == s.config.hidden
    narrow = RVAEScorer(n_features=8, device="cpu")
    assert narrow.config.hidden == 64 and narrow.config.latent < 8


def test_defaults_are_a_pure_function_of_shape() -> None:
    assert default_config(1024) == default_config(1024)
    wide, small = default_config(784, n_rows=6000), default_config(784, n_rows=300)
    assert small.n_layers < wide.n_layers
    plenty, few = default_config(64, n_rows=6000), default_config(64, n_rows=300)
    assert few.n_layers < plenty.n_layers and few.patience < plenty.patience
    assert default_config(8, n_rows=400).epochs >= default_config(8, n_rows=50_000).epochs


# The configs the spectra (3,000 x 512), fit-time (6,000 x 784) and plant (400 / 5,000 x 13) benchmarks
# ran with, written out when the few-rows-wide regime was added: their published figures stay valid.
UNCHANGED = {
    (512, 3000): RVAEDefaults(256, 23, 2, 1.0, 0.0, 69, 128, 10, 0.0, True),
    (784, 6000): RVAEDefaults(256, 28, 2, 1.0, 0.0, 35, 128, 10, 0.0, True),
    (13, 400): RVAEDefaults(64, 4, 1, 1.0, 0.0, 150, 64, 5, 0.0, True),
    (13, 5000): RVAEDefaults(64, 4, 2, 1.0, 0.0, 42, 128, 10, 0.0, True),
}


@pytest.mark.parametrize(("n_features", "n_rows"), list(UNCHANGED))
def test_the_few_rows_wide_regime_leaves_the_other_benchmarks_configs_alone(n_features: int, n_rows: int) -> None:
    assert not few_rows_wide(n_features, n_rows)
    assert default_config(n_features, n_rows) == UNCHANGED[(n_features, n_rows)]


def test_fewer_rows_than_inputs_keep_the_latent_and_wait_longer_to_stop() -> None:
    digits = default_config(784, n_rows=126)  # benchmarks/wide_vectors.py: ~125 training rows per digit
    assert few_rows_wide(784, 126) and (digits.hidden, digits.latent, digits.patience) == (64, 28, 20)
    assert digits.n_layers == 1 and not digits.whiten  # the rest of the small-data rule still holds
    narrow = default_config(64, n_rows=126)  # as many rows, narrower input: the plain small-data rule
    assert not few_rows_wide(64, 126) and (narrow.hidden, narrow.patience) == (32, 5)
    assert few_rows_wide(8, 126, window=20)  # width counts the window's lags
    assert not few_rows_wide(4096, 1500)  # not small: the full-size rule already applies


def test_explicit_arguments_override_the_defaults() -> None:
    s = RVAEScorer(n_features=784, hidden=32, latent=4, n_layers=3, device="cpu")
    assert (s.config.hidden, s.config.latent, s.config.n_layers) == (32, 4, 3)
    s.fit(np.random.default_rng(0).normal(size=(120, 784)).astype(np.float32), epochs=1)
    assert (s.config.hidden, s.config.latent, s.config.n_layers) == (32, 4, 3)  # not replaced by the fallback


def test_small_training_sets_fall_back_to_a_smaller_network() -> None:
    s = RVAEScorer(n_features=64, device="cpu")
    assert s.config.n_layers == 2
    hist = s.fit(np.random.default_rng(0).normal(size=(300, 64)).astype(np.float32), epochs=2)
    assert s.config.n_layers == 1 and hist["settings"]["patience"] == default_config(64, 300).patience


def test_create_scorer_still_builds_the_default() -> None:
    s = models.create_scorer("rvae", n_features=16, device="cpu")
    assert isinstance(s, RVAEScorer) and s.kind == "rvae" and s.config == RVAEScorer(16, device="cpu").config


def test_log_magnitude_input_works_and_round_trips(tmp_path) -> None:
    rng = np.random.default_rng(0)
    spectra = np.exp(rng.normal(size=(400, 32)) + np.linspace(0, 8, 32)).astype(np.float32)  # spans decades
    assert default_normalization(spectra) == "log-robust"
    s = RVAEScorer(
        n_features=32, device="cpu", normalization="log-robust", **{k: v for k, v in TINY.items() if k != "device"}
    )
    s.fit(spectra, epochs=3)
    assert s.normalization.method == "log-robust" and s.normalization.log
    peak = spectra[:5].copy()
    peak[:, 7] *= 1000.0
    assert np.isfinite(s.score(peak)).all() and (s.score(peak) > s.score(spectra[:5])).all()
    assert (s.explain(peak).argmax(1) == 7).all()
    s.save(tmp_path / "m")
    loaded = models.load_scorer(tmp_path / "m")
    np.testing.assert_array_equal(loaded.score(spectra[:50]), s.score(spectra[:50]))
    n = Normalization.from_dict(s.normalization.to_dict())
    np.testing.assert_array_equal(n.transform(spectra[:3]), s.normalization.transform(spectra[:3]))


def test_auto_normalization_picks_log_for_spectra_and_one_scale_for_images() -> None:
    assert default_normalization(process(200)) == "robust"
    images = np.zeros((50, 64), np.float32)
    images[:, 20:40] = np.random.default_rng(0).uniform(0, 16, (50, 20))
    assert default_normalization(images) == "global"
    assert default_normalization(np.random.default_rng(0).normal(size=(100, 4))) == "robust"  # negative values


def test_window_save_load_round_trip_is_identical(tmp_path) -> None:
    X = process(500)
    s = RVAEScorer(n_features=4, window=3, feature_names=NAMES, **TINY)
    s.fit(X, epochs=3)
    assert s.n_features == 4 and s.net.encoder.proj_in.in_features == 12
    s.save(tmp_path / "w")
    manifest = json.loads((tmp_path / "w" / MANIFEST).read_text())
    assert manifest["config"]["window"] == 3
    loaded = models.load_scorer(tmp_path / "w")
    assert loaded.window == 3
    np.testing.assert_array_equal(loaded.score(X), s.score(X))
    np.testing.assert_array_equal(loaded.explain(X[:20]), s.explain(X[:20]))
    np.testing.assert_array_equal(loaded.calibration_scores, s.calibration_scores)


@pytest.mark.parametrize("window", [1, 2, 4])
def test_score_with_history_equals_scoring_the_concatenated_sequence(window: int) -> None:
    X = process(300)
    s = RVAEScorer(n_features=4, window=window, **TINY)
    s.fit(X, epochs=2)
    whole = s.score(X)
    history, parts = None, []
    for chunk in (X[:1], X[1:2], X[2:50], X[50:51], X[51:300]):
        scores, history = s.score_with_history(history, chunk)
        parts.append(scores)
        assert history.shape == (min(window - 1, 300), 4) or len(history) <= window - 1
    np.testing.assert_allclose(np.concatenate(parts), whole, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("window", [1, 3])
def test_score_sequences_equals_score_with_history_per_source(window: int) -> None:
    X = process(300)
    s = RVAEScorer(n_features=4, window=window, **TINY)
    s.fit(X, epochs=2)
    pairs = [
        (None, X[:5]),
        (X[11 - min(window - 1, 1) : 11], X[11:12]),
        (X[20 : 20 + window - 1], X[40:90]),
        (None, X[200:201]),
    ]
    together = s.score_sequences(pairs)
    assert len(together) == len(pairs)
    for (history, rows), (scores, carried) in zip(pairs, together, strict=True):
        alone, alone_carried = s.score_with_history(history, rows)
        np.testing.assert_allclose(scores, alone, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(carried, alone_carried)
    for (history, rows), lags in zip(pairs, s.explain_sequences(pairs), strict=True):
        np.testing.assert_allclose(lags, s.explain_lags(rows, history), rtol=1e-5, atol=1e-6)
    assert s.score_sequences([]) == []
    for bad in [(None, np.zeros((0, 4), np.float32)), (X[:window], X[:2]), (None, np.full((2, 4), np.nan, np.float32))]:
        with pytest.raises(ValueError, match="expected"):
            s.score_sequences([(None, X[:3]), bad])


def test_first_rows_are_padded_with_the_first_row() -> None:
    X = process(100)
    s = RVAEScorer(n_features=4, window=3, **TINY)
    s.fit(X, epochs=2)
    padded = np.concatenate([X[:1], X[:1], X[:5]])
    np.testing.assert_allclose(s.score(X[:5]), s.score(padded)[2:], rtol=1e-5, atol=1e-6)


def test_window_explain_aggregates_lags_and_top_features_name_the_lag() -> None:
    X = process(400)
    s = RVAEScorer(n_features=4, window=3, feature_names=NAMES, **TINY)
    s.fit(X, epochs=5)
    contrib = s.explain(X[:10])
    assert contrib.shape == (10, 4)
    np.testing.assert_allclose(contrib.mean(1), s.score(X[:10]), rtol=1e-5)
    assert s.explain_lags(X[:10]).shape == (10, 12)
    rows = X[100:103].copy()
    rows[-1, 2] += 50.0  # pressure_out jumps at the newest row
    top = s.top_features(rows, k=3)
    assert top[0][0] == "pressure_out@t"
    assert all("@t" in name for name, _ in top)
    assert s.input_names[:4] == ["flow@t-2", "pressure_in@t-2", "pressure_out@t-2", "current@t-2"]


def test_spectral_names_come_back_from_top_features() -> None:
    rng = np.random.default_rng(0)
    X = np.exp(rng.normal(size=(300, 16))).astype(np.float32)
    names = [f"bin {i} ({i * 10} Hz)" for i in range(16)]
    s = RVAEScorer(n_features=16, feature_names=names, **TINY)
    s.fit(X, epochs=3)
    x = X[0].copy()
    x[5] *= 1e4
    assert s.top_features(x, k=1)[0][0] == "bin 5 (50 Hz)"


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((4, 5), np.float32),
        np.full((4, 4), np.nan, np.float32),
        np.zeros((0, 4), np.float32),
        np.zeros(4, np.float32),
        np.full((2, 4), "a"),
    ],
    ids=["wide", "nan", "empty", "1d", "strings"],
)
def test_bad_input_still_raises_value_error(bad) -> None:
    s = RVAEScorer(n_features=4, window=3, **TINY)
    s.fit(process(200), epochs=1)
    for verb in (s.score, s.explain, RVAEScorer(n_features=4, **TINY).fit):
        with pytest.raises(ValueError, match="expected"):
            verb(bad)
    with pytest.raises(ValueError, match="expected"):
        s.score_with_history(None, bad)
    with pytest.raises(ValueError, match="history"):
        s.score_with_history(np.zeros((5, 4), np.float32), process(3))  # longer than window - 1


def test_bad_window_and_dropout_raise_value_error() -> None:
    with pytest.raises(ValueError, match="window"):
        RVAEScorer(n_features=4, window=0)
    with pytest.raises(ValueError, match="dropout"):
        RVAEScorer(n_features=4, dropout=1.5)


def test_manifests_saved_before_the_new_options_still_load(tmp_path) -> None:
    X = process(200)
    s = RVAEScorer(n_features=4, whiten=False, normalization="robust", dropout=0.0, **TINY)
    s.fit(X, epochs=2)
    s.save(tmp_path / "old")
    manifest = json.loads((tmp_path / "old" / MANIFEST).read_text())
    for key in ("dropout", "window", "whiten"):  # what an older manifest lacks
        manifest["config"].pop(key)
    (tmp_path / "old" / MANIFEST).write_text(json.dumps(manifest))
    loaded = models.load_scorer(tmp_path / "old")
    assert (loaded.config.window, loaded.config.whiten, loaded.config.dropout) == (1, False, 0.0)
    np.testing.assert_array_equal(loaded.score(X), s.score(X))
