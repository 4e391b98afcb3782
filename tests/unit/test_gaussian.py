"""PCA whitening and shrunk-covariance Gaussians: the densities Transformaly puts on its features."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file
from scipy.stats import multivariate_normal

from models.gaussian import GaussianDensity, PCAWhitening, ShrunkGaussian


@pytest.fixture
def correlated() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.normal(size=(400, 3)) @ rng.normal(size=(3, 6)) + 0.01 * rng.normal(size=(400, 6))


def test_pca_keeps_the_fewest_axes_reaching_the_variance(correlated: np.ndarray) -> None:
    eig = np.linalg.eigvalsh(np.cov(correlated, rowvar=False))[::-1]
    cumulative = np.cumsum(eig) / eig.sum()
    for variance in (0.5, 0.9, 0.99, 0.99999):
        pca = PCAWhitening.fit(correlated, variance=variance)
        assert pca.n_components == int(np.searchsorted(cumulative, variance) + 1)
        assert pca.explained_variance_ratio == pytest.approx(cumulative[pca.n_components - 1])


def test_pca_whitens_to_unit_variance_uncorrelated_axes(correlated: np.ndarray) -> None:
    pca = PCAWhitening.fit(correlated, variance=0.999)
    Z = pca.transform(correlated)
    np.testing.assert_allclose(np.cov(Z, rowvar=False), np.eye(pca.n_components), atol=1e-8)
    np.testing.assert_allclose(Z.mean(axis=0), 0, atol=1e-10)


def test_pca_keeps_at_least_one_axis_and_honours_max_components(correlated: np.ndarray) -> None:
    assert PCAWhitening.fit(correlated, variance=1e-6).n_components == 1
    assert PCAWhitening.fit(correlated, variance=1.0, max_components=2).n_components == 2


def test_pca_never_keeps_zero_variance_axes() -> None:
    X = np.c_[np.random.default_rng(1).normal(size=(50, 2)), np.zeros((50, 3))]
    pca = PCAWhitening.fit(X, variance=1.0)
    assert pca.n_components == 2 and np.isfinite(pca.transform(X)).all()


@pytest.mark.parametrize(
    "X, variance, message",
    [
        (np.ones((10, 3)), 0.9, "constant"),
        (np.zeros((0, 3)), 0.9, "non-empty"),
        (np.zeros(5), 0.9, "2-d"),
        (np.r_[np.eye(3), [[np.nan, 0, 0]]], 0.9, "finite"),
        (np.eye(3), 0.0, "variance"),
        (np.eye(3), 1.5, "variance"),
    ],
)
def test_pca_rejects_bad_input(X, variance, message) -> None:
    with pytest.raises(ValueError, match=message):
        PCAWhitening.fit(X, variance=variance)


def test_transform_rejects_the_wrong_width(correlated: np.ndarray) -> None:
    with pytest.raises(ValueError, match="6 features"):
        PCAWhitening.fit(correlated).transform(np.zeros((2, 5)))


def test_gaussian_log_likelihood_is_the_exact_normal_log_density(correlated: np.ndarray) -> None:
    g = ShrunkGaussian.fit(correlated)
    assert 0.0 <= g.shrinkage <= 1.0
    expected = multivariate_normal(g.mean, g.covariance).logpdf(correlated[:20])
    np.testing.assert_allclose(g.log_likelihood(correlated[:20]), expected, rtol=1e-10)


def test_gaussian_stays_finite_with_fewer_rows_than_dimensions_and_constant_features() -> None:
    X = np.c_[np.random.default_rng(2).normal(size=(5, 40)), np.full((5, 2), 3.0)]
    ll = ShrunkGaussian.fit(X).log_likelihood(X)
    assert np.isfinite(ll).all()
    with pytest.raises(ValueError, match="at least 2 rows"):
        ShrunkGaussian.fit(X[:1])


def test_gaussian_is_scale_equivariant_even_for_tiny_features() -> None:
    """log p(c x) = log p(x) - D log c: the numerical ridge must not swamp features of size 1e-6."""
    X = np.random.default_rng(3).normal(size=(60, 4))
    c = 1e-6
    ll, ll_scaled = ShrunkGaussian.fit(X).log_likelihood(X), ShrunkGaussian.fit(X * c).log_likelihood(X * c)
    np.testing.assert_allclose(ll_scaled, ll - 4 * np.log(c), rtol=1e-6)


def test_density_scores_outliers_lower(correlated: np.ndarray) -> None:
    d = GaussianDensity.fit(correlated, pca_variance=0.9)
    outlier = (d.pca.mean + 10 * d.pca.scale[0] * d.pca.components[0])[None]  # 10 sd along the main axis
    assert d.log_likelihood(outlier)[0] < d.log_likelihood(correlated).min()


@pytest.mark.parametrize("pca_variance", [None, 0.9])
def test_density_round_trips_exactly_through_safetensors(correlated, pca_variance, tmp_path) -> None:
    d = GaussianDensity.fit(correlated, pca_variance=pca_variance)
    arrays = d.to_arrays("g")
    assert all(a.dtype == np.float64 for a in arrays.values())
    save_file(arrays, str(tmp_path / "g.safetensors"))
    back = GaussianDensity.from_arrays(load_file(str(tmp_path / "g.safetensors")), "g")
    assert (back.pca is None) == (pca_variance is None)
    np.testing.assert_array_equal(back.log_likelihood(correlated), d.log_likelihood(correlated))
