"""PCA: project onto the top principal components of the calibration vectors (scikit-learn).

``whiten=true`` (``PCA128:whiten=true``) divides each component by its standard deviation on
the calibration vectors, so every stored dimension has unit variance: codecs that share one
codebook or one distance across dimensions (PQ, lattice, binary-style codes) then spend their
precision evenly instead of on the first components. Whitening is a change of coordinates for
the codec only, not a new similarity: queries are mapped with the inverse scaling (``P q``
*multiplied* by the standard deviations) and decoding multiplies back before projecting, so
search ranks by the inner product of the query with the reconstruction in the original space,
exactly as unwhitened PCA does. With F32 storage the ranking equals ``PCA<d>``'s; scalar
quantizers with per-dimension ranges (SQ) are invariant to the scaling too. "Whitened-space
similarity" (BERT-whitening, which changes the ranking) is not what is measured. The stored
scale vector is counted in ``overhead_bytes``.
"""
from __future__ import annotations

import numpy as np
from sklearn.decomposition import PCA as _SkPCA

from .base import SpecError, Transform
from .registry import register


@register
class PCA(Transform):
    spec_format = "PCA{n_components}"
    family = "pca"
    summary = "principal component projection to n dimensions (:whiten=true scales components to unit variance)"

    def __init__(self, n_components: int = 128, seed: int = 0, whiten: bool = False):
        self.n_components = n_components
        self.seed = seed
        self.whiten = whiten
        self._check_params()

    def _check_params(self) -> None:
        if int(self.n_components) < 1:
            raise SpecError(f"PCA{self.n_components}: the number of components must be at least 1")

    def check_dim(self, dim: int) -> None:
        if self.n_components > dim:
            raise SpecError(f"PCA{self.n_components} cannot reduce {dim}-d vectors to more dimensions than they have")

    def output_dim(self, dim: int) -> int:
        return self.n_components

    def fit(self, X: np.ndarray) -> "PCA":
        if X.shape[0] < self.n_components:
            raise SpecError(f"PCA{self.n_components} needs at least {self.n_components} calibration vectors, got {X.shape[0]}")
        pca = _SkPCA(n_components=self.n_components, svd_solver="full", random_state=self.seed).fit(X)
        self.components_ = pca.components_.astype(np.float32)
        self.mean_ = pca.mean_.astype(np.float32)
        self.explained_variance_ratio_ = float(pca.explained_variance_ratio_.sum())
        if self.whiten:
            std = np.sqrt(pca.explained_variance_)
            # a component without variance (more components than the data's rank) is left unscaled
            self.scale_ = np.where(std > 1e-6 * std.max(), std, 1.0).astype(np.float32)
        self.n_train_ = X.shape[0]
        return self

    def info(self) -> dict:
        return {"explained_variance": self.explained_variance_ratio_} if hasattr(self, "components_") else {}

    @property
    def overhead_bytes(self) -> int:
        if not hasattr(self, "components_"):
            return 0
        return self.components_.nbytes + self.mean_.nbytes + (self.scale_.nbytes if self.whiten else 0)

    def transform(self, X: np.ndarray) -> np.ndarray:
        Z = (X - self.mean_) @ self.components_.T
        return Z / self.scale_ if self.whiten else Z

    def transform_query(self, Q: np.ndarray) -> np.ndarray:
        # q·x̂ = q·mean + (Pq)·(s∘z): the first term is constant per query, so ranking by
        # (s∘Pq)·z is ranking by the inner product with the reconstruction (s = 1 unwhitened).
        Z = Q @ self.components_.T
        return Z * self.scale_ if self.whiten else Z

    def query_offset(self, Q: np.ndarray) -> np.ndarray:
        return np.asarray(Q, dtype=np.float32) @ self.mean_

    def inverse_transform(self, Z: np.ndarray) -> np.ndarray:
        if self.whiten:
            Z = Z * self.scale_
        return Z @ self.components_ + self.mean_
