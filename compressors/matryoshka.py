"""Matryoshka truncation ``MRL<d>``: keep the first d dimensions, renormalised to unit norm.

Only meaningful for models trained with Matryoshka Representation Learning (e.g. OpenAI
text-embedding-3, nomic-embed-text-v1.5, mxbai-embed-large-v1), whose leading dimensions are
trained to work alone. all-MiniLM-L6-v2 and all-mpnet-base-v2 are not such models: their
information is spread over all dimensions, so on them ``MRL<d>`` is plain truncation and the
benchmark shows that loss as it is (compare ``PCA<d>`` and ``VAR<d>`` at the same width).

Decoding pads the dropped dimensions with zeros. Queries are truncated but not renormalised (a
positive per-query scale that does not change the ranking), so the search score is the inner
product of the query with the decoded vector. Nothing is learned or stored: ``overhead_bytes``
is 0.
"""
from __future__ import annotations

import numpy as np

from .base import SpecError, Transform
from .registry import register


@register
class Matryoshka(Transform):
    spec_format = "MRL{dim}"
    learns_from_data = False
    family = "matryoshka"
    summary = "keep the first d dimensions and renormalise (for Matryoshka-trained models)"

    def __init__(self, dim: int = 128):
        self.dim = dim
        self._check_params()

    def _check_params(self) -> None:
        if int(self.dim) < 1:
            raise SpecError(f"MRL{self.dim}: the number of kept dimensions must be at least 1")

    def check_dim(self, dim: int) -> None:
        if self.dim > dim:
            raise SpecError(f"MRL{self.dim} cannot keep {self.dim} dimensions of {dim}-d vectors")

    def output_dim(self, dim: int) -> int:
        return self.dim

    def fit(self, X: np.ndarray) -> "Matryoshka":
        # nothing is learned; the input width is recorded for decoding (padding)
        self.check_dim(X.shape[1])
        self.input_dim_ = X.shape[1]
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        self.check_dim(X.shape[1])
        Z = np.array(X[:, : self.dim], dtype=np.float32)
        norms = np.linalg.norm(Z, axis=1, keepdims=True)
        return Z / np.where(norms > 0, norms, 1).astype(np.float32)

    def transform_query(self, Q: np.ndarray) -> np.ndarray:
        self.check_dim(Q.shape[1])
        return np.array(Q[:, : self.dim], dtype=np.float32)

    def inverse_transform(self, Z: np.ndarray) -> np.ndarray:
        out = np.zeros((Z.shape[0], self.input_dim_), dtype=np.float32)
        out[:, : self.dim] = Z
        return out
