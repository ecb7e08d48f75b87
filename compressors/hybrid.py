"""Hybrid precision: the most informative dimensions at high precision, the rest at low precision.

``HYB{n_high}`` ranks dimensions by their variance on the calibration vectors and keeps the
``n_high`` highest-variance ones at high precision, the rest at low precision, in one code row
(high part first, then low part). After a PCA stage the variance order is the component order,
so ``PCA128,HYB32`` keeps the first 32 components precise; on raw embeddings it picks the
widest-spread dimensions.

* ``high=f16`` (default): IEEE float16, 2 bytes per dimension; ``high=int8``: 8-bit scalar
  quantization with per-dimension ranges (``SQ8`` on those dimensions).
* ``low=bin`` (default): one sign bit per dimension, decoded to the mean of the calibration values
  on that side of zero (two float32 per dimension, overhead); ``low=int4``: 4-bit scalar
  quantization with per-dimension ranges (``SQ4`` on those dimensions).

Overhead is the kept-index table (``n_high`` indices, uint8 when d <= 256, else uint16) plus the
ranges or side means of the parts. Search decodes both parts into one vector and takes exact inner
products with the float query.
"""
from __future__ import annotations

import numpy as np

from .base import Codec, SpecError, index_dtype
from .float import Float16
from .registry import register
from .scalar import ScalarQuantizer

_HIGH = ("f16", "int8")
_LOW = ("bin", "int4")


class SignMeans(Codec):
    """One sign bit per dimension, decoded to the calibration mean of that side (not registered)."""

    def code_size(self, dim: int) -> int:
        return -(-dim // 8)

    def fit(self, X: np.ndarray) -> "SignMeans":
        pos = X > 0
        n_pos = pos.sum(axis=0)
        self.pos_ = (np.where(pos, X, 0).sum(axis=0) / np.maximum(n_pos, 1)).astype(np.float32)
        self.neg_ = (np.where(pos, 0, X).sum(axis=0) / np.maximum(len(X) - n_pos, 1)).astype(np.float32)
        self.dim_ = X.shape[1]
        return self

    @property
    def overhead_bytes(self) -> int:
        return self.pos_.nbytes + self.neg_.nbytes if hasattr(self, "pos_") else 0

    def encode(self, X: np.ndarray) -> np.ndarray:
        return np.packbits(np.asarray(X) > 0, axis=-1)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        bits = np.unpackbits(np.asarray(codes, dtype=np.uint8), axis=-1)[:, : self.dim_].astype(bool)
        return np.where(bits, self.pos_, self.neg_)


@register
class HybridPrecision(Codec):
    spec_format = "HYB{n_high}"
    family = "hybrid"
    summary = "n highest-variance dimensions at high precision (f16/int8), the rest low (sign bit/int4)"

    def __init__(self, n_high: int = 32, high: str = "f16", low: str = "bin"):
        self.n_high = n_high
        self.high = high
        self.low = low
        self._check_params()

    def _check_params(self) -> None:
        if int(self.n_high) < 1:
            raise SpecError(f"HYB{self.n_high}: n_high must be at least 1 (with none, use BIN or SQ4)")
        if self.high not in _HIGH:
            raise SpecError(f"HYB{self.n_high}:high={self.high}: high must be one of {', '.join(_HIGH)}")
        if self.low not in _LOW:
            raise SpecError(f"HYB{self.n_high}:low={self.low}: low must be one of {', '.join(_LOW)}")

    def check_dim(self, dim: int) -> None:
        if self.n_high >= dim:
            raise SpecError(f"HYB{self.n_high} keeps every one of the {dim} dimensions at high precision; "
                            "n_high must be below the dimension (use F16 or SQ8)")
        index_dtype(dim, f"HYB{self.n_high}")

    def _parts(self) -> tuple[Codec, Codec]:
        high = Float16() if self.high == "f16" else ScalarQuantizer(bits=8)
        low = SignMeans() if self.low == "bin" else ScalarQuantizer(bits=4)
        return high, low

    def code_size(self, dim: int) -> int:
        high, low = self._parts()
        return high.code_size(self.n_high) + low.code_size(dim - self.n_high)

    def fit(self, X: np.ndarray) -> "HybridPrecision":
        self.check_dim(X.shape[1])
        order = np.argsort(-X.var(axis=0), kind="stable")
        self.high_idx_ = np.sort(order[: self.n_high]).astype(index_dtype(X.shape[1], "HYB"))
        self.low_idx_ = np.setdiff1d(np.arange(X.shape[1]), self.high_idx_)
        high, low = self._parts()
        self.high_codec_ = high.fit(X[:, self.high_idx_])
        self.low_codec_ = low.fit(X[:, self.low_idx_])
        self.dim_ = X.shape[1]
        self.n_train_ = X.shape[0]
        return self

    @property
    def overhead_bytes(self) -> int:
        if not hasattr(self, "high_idx_"):
            return 0
        # the low indices are the complement of the kept-index table, so they are not stored
        return self.high_idx_.nbytes + self.high_codec_.overhead_bytes + self.low_codec_.overhead_bytes

    def encode(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float32)
        return np.hstack([self.high_codec_.encode(X[:, self.high_idx_]), self.low_codec_.encode(X[:, self.low_idx_])])

    def decode(self, codes: np.ndarray) -> np.ndarray:
        codes = np.asarray(codes, dtype=np.uint8)
        cut = self.high_codec_.code_size(self.n_high)
        out = np.empty((codes.shape[0], self.dim_), np.float32)
        out[:, self.high_idx_] = self.high_codec_.decode(codes[:, :cut])
        out[:, self.low_idx_] = self.low_codec_.decode(codes[:, cut:])
        return out
