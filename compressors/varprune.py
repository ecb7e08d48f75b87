"""Variance pruning ``VAR<d>``: keep the d dimensions with the highest variance on the
calibration vectors (a learned, data-dependent truncation; ties go to the lower index).

The kept dimensions stay in their original order and values (no centring, no scaling). Decoding
puts them back and leaves the dropped dimensions at zero, so the search score (queries reduced
to the same dimensions) is the inner product of the query with the decoded vector.
``overhead_bytes`` is the kept index array at its real width (``uint16`` for up to 65,536 input
dimensions, ``uint8`` up to 256): 2·d bytes for MiniLM. ``info()`` reports ``kept_variance``,
the share of the total per-dimension variance that the kept dimensions carry.
"""
from __future__ import annotations

import numpy as np

from .base import SpecError, Transform, index_dtype
from .registry import register


@register
class VariancePrune(Transform):
    spec_format = "VAR{dim}"
    family = "varprune"
    summary = "keep the d highest-variance dimensions of the calibration vectors"

    def __init__(self, dim: int = 128):
        self.dim = dim
        self._check_params()

    def _check_params(self) -> None:
        if int(self.dim) < 1:
            raise SpecError(f"VAR{self.dim}: the number of kept dimensions must be at least 1")

    def check_dim(self, dim: int) -> None:
        if self.dim > dim:
            raise SpecError(f"VAR{self.dim} cannot keep {self.dim} dimensions of {dim}-d vectors")

    def output_dim(self, dim: int) -> int:
        return self.dim

    def fit(self, X: np.ndarray) -> "VariancePrune":
        self.check_dim(X.shape[1])
        var = np.asarray(X, dtype=np.float64).var(axis=0)
        top = np.sort(np.argsort(-var, kind="stable")[: self.dim])
        self.indices_ = top.astype(index_dtype(X.shape[1], self.to_spec()))
        self.input_dim_ = X.shape[1]
        self.kept_variance_ = float(var[top].sum() / var.sum()) if var.sum() > 0 else 1.0
        self.n_train_ = X.shape[0]
        return self

    @property
    def overhead_bytes(self) -> int:
        return self.indices_.nbytes if hasattr(self, "indices_") else 0

    def info(self) -> dict:
        return {"kept_variance": self.kept_variance_} if hasattr(self, "indices_") else {}

    def transform(self, X: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(X[:, self.indices_], dtype=np.float32)

    def inverse_transform(self, Z: np.ndarray) -> np.ndarray:
        out = np.zeros((Z.shape[0], self.input_dim_), dtype=np.float32)
        out[:, self.indices_] = Z
        return out
