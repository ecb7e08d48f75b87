"""PCA: project onto the top principal components of the calibration vectors (scikit-learn)."""
from __future__ import annotations

import numpy as np
from sklearn.decomposition import PCA as _SkPCA

from .base import SpecError, Transform
from .registry import register


@register
class PCA(Transform):
    spec_format = "PCA{n_components}"
    family = "pca"
    summary = "principal component projection to n dimensions"

    def __init__(self, n_components: int = 128, seed: int = 0):
        self.n_components = n_components
        self.seed = seed
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
        self.n_train_ = X.shape[0]
        return self

    def info(self) -> dict:
        return {"explained_variance": self.explained_variance_ratio_} if hasattr(self, "components_") else {}

    @property
    def overhead_bytes(self) -> int:
        return 0 if not hasattr(self, "components_") else self.components_.nbytes + self.mean_.nbytes

    def transform(self, X: np.ndarray) -> np.ndarray:
        return (X - self.mean_) @ self.components_.T

    def transform_query(self, Q: np.ndarray) -> np.ndarray:
        # q·x̂ = q·mean + (Pq)·z: the first term is constant per query, so ranking by (Pq)·z
        # is ranking by the inner product with the reconstruction.
        return Q @ self.components_.T

    def inverse_transform(self, Z: np.ndarray) -> np.ndarray:
        return Z @ self.components_ + self.mean_
