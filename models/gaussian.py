"""Gaussian densities over feature vectors: PCA with whitening, then one shrunk-covariance Gaussian.

Pure numpy/scipy/sklearn, float64 throughout, so log-likelihoods are reproducible to the bit on any
machine and the parameters round-trip exactly through safetensors (see `to_arrays` / `from_arrays`).

Why shrinkage: a normal training set for one camera is often a few hundred frames while features are
hundreds of dimensions wide, so the sample covariance is singular or badly conditioned; Ledoit–Wolf
picks the convex mix of sample covariance and a scaled identity with the least expected error.
Why PCA first: it drops directions the normal data never varies in (90% of the variance kept by
default), which removes noise from the density and makes it cheaper.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.linalg import cho_factor, cho_solve, eigh
from sklearn.covariance import LedoitWolf

_LOG_2PI = float(np.log(2.0 * np.pi))


def _as_matrix(X: np.ndarray, n_features: int | None = None) -> np.ndarray:
    X = np.asarray(X, np.float64)
    if X.ndim != 2 or X.shape[0] == 0:
        raise ValueError(f"expected a non-empty 2-d array [N, D], got shape {X.shape}")
    if n_features is not None and X.shape[1] != n_features:
        raise ValueError(f"expected {n_features} features per row, got {X.shape[1]}")
    if not np.isfinite(X).all():
        raise ValueError("expected finite features, got NaN or inf")
    return X


@dataclass(frozen=True)
class PCAWhitening:
    """z = (x - mean) @ components.T / scale: the top principal axes, each scaled to unit variance.

    >>> X = np.random.default_rng(0).normal(size=(200, 3)) * [10.0, 1.0, 0.01]
    >>> pca = PCAWhitening.fit(X, variance=0.9)
    >>> pca.n_components, np.round(pca.transform(X).std(axis=0), 2).tolist()
    (1, [1.0])
    """

    mean: np.ndarray  # [D]
    components: np.ndarray  # [k, D], rows are unit eigenvectors, largest eigenvalue first
    scale: np.ndarray  # [k], sqrt of the eigenvalues (standard deviation along each axis)
    explained_variance_ratio: float  # fraction of the total variance the k axes keep

    @property
    def n_components(self) -> int:
        return int(self.components.shape[0])

    @classmethod
    def fit(cls, X: np.ndarray, variance: float = 0.9, max_components: int | None = None) -> PCAWhitening:
        """Keep the fewest axes whose eigenvalues sum to >= `variance` of the total (at least one).

        Eigen-decomposition of the D x D covariance (eigh), so the cost does not grow with N beyond
        the covariance itself. Axes with (numerically) zero variance are never kept: whitening them
        would divide by zero.
        """
        X = _as_matrix(X)
        if not 0.0 < variance <= 1.0:
            raise ValueError(f"expected 0 < variance <= 1, got {variance}")
        mean = X.mean(axis=0)
        Xc = X - mean
        cov = Xc.T @ Xc / max(len(X) - 1, 1)
        eigvals, eigvecs = eigh(cov)  # ascending
        eigvals, eigvecs = eigvals[::-1], eigvecs[:, ::-1]
        total = float(eigvals.clip(min=0).sum())
        usable = int((eigvals > max(total, 1e-300) * 1e-10).sum())
        if usable == 0:
            raise ValueError("expected features that vary across the training rows, got (numerically) constant rows")
        ratio = np.cumsum(eigvals[:usable]) / total
        k = min(int(np.searchsorted(ratio, variance - 1e-12) + 1), usable)
        if max_components is not None:
            k = max(1, min(k, int(max_components)))
        return cls(mean, np.ascontiguousarray(eigvecs[:, :k].T), np.sqrt(eigvals[:k]), float(ratio[k - 1]))

    def transform(self, X: np.ndarray) -> np.ndarray:
        X = _as_matrix(X, self.mean.shape[0])
        return (X - self.mean) @ self.components.T / self.scale


@dataclass(frozen=True)
class ShrunkGaussian:
    """A multivariate normal with a Ledoit–Wolf covariance; `log_likelihood` is the exact log density.

    >>> X = np.random.default_rng(0).normal(size=(500, 2))
    >>> g = ShrunkGaussian.fit(X)
    >>> bool(g.log_likelihood([[0.0, 0.0]])[0] > g.log_likelihood([[4.0, 4.0]])[0])
    True
    """

    mean: np.ndarray  # [k]
    covariance: np.ndarray  # [k, k], shrunk
    shrinkage: float  # Ledoit–Wolf mixing weight toward the scaled identity

    @classmethod
    def fit(cls, X: np.ndarray) -> ShrunkGaussian:
        X = _as_matrix(X)
        if len(X) < 2:
            raise ValueError(f"expected at least 2 rows to fit a Gaussian, got {len(X)}")
        lw = LedoitWolf(assume_centered=False).fit(X)
        cov = lw.covariance_
        # A feature constant over the fitting rows gives a zero row/column that shrinkage cannot lift when
        # every feature is constant; a tiny ridge keeps the Cholesky factorization defined.
        # Relative to the data's own scale, so features of size 1e-6 (block losses) are not swamped.
        scale = float(np.trace(cov)) / len(cov)
        cov = cov + np.eye(len(cov)) * (scale if scale > 0 else 1.0) * 1e-9
        return cls(lw.location_, cov, float(lw.shrinkage_))

    def log_likelihood(self, X: np.ndarray) -> np.ndarray:
        """float64 [N]: log N(x; mean, covariance)."""
        X = _as_matrix(X, self.mean.shape[0])
        factor = cho_factor(self.covariance, lower=True)
        diff = X - self.mean
        mahalanobis = np.einsum("ij,ij->i", diff, cho_solve(factor, diff.T).T)
        logdet = 2.0 * np.log(np.diag(factor[0])).sum()
        return -0.5 * (mahalanobis + logdet + len(self.mean) * _LOG_2PI)


@dataclass(frozen=True)
class GaussianDensity:
    """Optional PCA whitening followed by a ShrunkGaussian: the density used on one feature space."""

    gaussian: ShrunkGaussian
    pca: PCAWhitening | None = None

    @classmethod
    def fit(cls, X: np.ndarray, pca_variance: float | None = None) -> GaussianDensity:
        """`pca_variance=None` fits the Gaussian on the raw features (small spaces, e.g. K block losses)."""
        pca = PCAWhitening.fit(X, pca_variance) if pca_variance is not None else None
        Z = pca.transform(X) if pca is not None else _as_matrix(X)
        return cls(ShrunkGaussian.fit(Z), pca)

    def log_likelihood(self, X: np.ndarray) -> np.ndarray:
        return self.gaussian.log_likelihood(self.pca.transform(X) if self.pca is not None else X)

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """float64 arrays named `<prefix>.<field>` for a safetensors file (exact round trip)."""
        g = self.gaussian
        out = {
            f"{prefix}.mean": g.mean,
            f"{prefix}.covariance": g.covariance,
            f"{prefix}.shrinkage": np.array([g.shrinkage]),
        }
        if self.pca is not None:
            out |= {
                f"{prefix}.pca.mean": self.pca.mean,
                f"{prefix}.pca.components": self.pca.components,
                f"{prefix}.pca.scale": self.pca.scale,
                f"{prefix}.pca.explained_variance_ratio": np.array([self.pca.explained_variance_ratio]),
            }
        return {k: np.ascontiguousarray(v, np.float64) for k, v in out.items()}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str) -> GaussianDensity:
        a = {k: np.asarray(v, np.float64) for k, v in arrays.items()}
        gaussian = ShrunkGaussian(a[f"{prefix}.mean"], a[f"{prefix}.covariance"], float(a[f"{prefix}.shrinkage"][0]))
        pca = None
        if f"{prefix}.pca.mean" in a:
            pca = PCAWhitening(
                a[f"{prefix}.pca.mean"],
                a[f"{prefix}.pca.components"],
                a[f"{prefix}.pca.scale"],
                float(a[f"{prefix}.pca.explained_variance_ratio"][0]),
            )
        return cls(gaussian, pca)
