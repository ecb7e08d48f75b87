"""Magnitude pruning: keep the k largest-magnitude dimensions of each vector, stored sparse.

``TOPK{k}`` keeps, per vector, the k dimensions with the largest absolute value and stores them
as (index, value) pairs in the fixed-width code row: first the k indices (uint8 when d <= 256,
little-endian uint16 when d <= 65536), ascending, then the k values:

* ``values=f16`` (default): IEEE float16, 2 bytes each;
* ``values=f32``: float32, 4 bytes each;
* ``values=int8``: symmetric int8 codes ``round(v / s)`` in [-127, 127] with a per-vector
  scale ``s = max|v| / 127`` stored as float32 at the end of the row (4 bytes, counted).

So a row is ``k·index_bytes + k·value_bytes (+ 4)`` bytes. ``decode`` scatters the values back
into a zero vector; search decodes and takes exact inner products with the float query.

Not implemented: the *global threshold* variant (one magnitude threshold for the whole collection,
so each vector keeps a different number of entries). Its rows have variable length, which does not
fit the contract every codec here honours: codes are one ``uint8`` array of shape
``(n, bytes_per_vector)`` whose width *is* the stored size. Storing it honestly needs an offsets
array (CSR layout, 4-8 bytes per vector) and a variable-length code store throughout the runner;
padding rows to the longest one would make the byte count that of the worst vector, not the
average, and defeat the point.
"""
from __future__ import annotations

import numpy as np

from .base import Codec, SpecError, index_dtype
from .registry import register

_VALUE_WIDTH = {"f16": 2, "f32": 4, "int8": 1}
_SCALE_BYTES = 4  # the per-vector float32 scale of values=int8


@register
class TopKPruning(Codec):
    spec_format = "TOPK{k}"
    learns_from_data = False
    family = "pruning"
    summary = "keep the k largest-magnitude dimensions per vector, as indices + values (f16, f32 or int8)"

    def __init__(self, k: int = 64, values: str = "f16"):
        self.k = k
        self.values = values
        self._check_params()

    def _check_params(self) -> None:
        if int(self.k) < 1:
            raise SpecError(f"TOPK{self.k}: k must be at least 1")
        if self.values not in _VALUE_WIDTH:
            raise SpecError(f"TOPK{self.k}:values={self.values}: values must be one of {', '.join(_VALUE_WIDTH)}")

    def check_dim(self, dim: int) -> None:
        if self.k > dim:
            raise SpecError(f"TOPK{self.k} cannot keep more dimensions than the {dim} there are")
        index_dtype(dim, f"TOPK{self.k}")

    def code_size(self, dim: int) -> int:
        width = index_dtype(dim, f"TOPK{self.k}").itemsize + _VALUE_WIDTH[self.values]
        return self.k * width + (_SCALE_BYTES if self.values == "int8" else 0)

    def fit(self, X: np.ndarray) -> "TopKPruning":
        self.check_dim(X.shape[1])
        self.dim_ = X.shape[1]
        return self

    def encode(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float32)
        n, k = X.shape[0], self.k
        idx = np.sort(np.argpartition(-np.abs(X), k - 1, axis=1)[:, :k], axis=1)
        vals = np.take_along_axis(X, idx, 1)
        parts = [idx.astype(index_dtype(self.dim_, "TOPK"))]
        if self.values == "int8":
            scale = (np.abs(vals).max(axis=1, keepdims=True) / np.float32(127)).astype(np.float32)
            q = np.rint(vals / np.where(scale == 0, np.float32(1), scale))
            parts += [np.clip(q, -127, 127).astype(np.int8), scale.astype("<f4")]
        else:
            parts.append(vals.astype("<f2" if self.values == "f16" else "<f4"))
        return np.hstack([np.ascontiguousarray(p).view(np.uint8).reshape(n, -1) for p in parts])

    def decode(self, codes: np.ndarray) -> np.ndarray:
        codes = np.asarray(codes, dtype=np.uint8)
        n, k = codes.shape[0], self.k
        itype = index_dtype(self.dim_, "TOPK")
        cut = k * itype.itemsize
        idx = np.ascontiguousarray(codes[:, :cut]).view(itype).astype(np.int64)
        rest = np.ascontiguousarray(codes[:, cut:])
        if self.values == "int8":
            vals = rest[:, :k].view(np.int8).astype(np.float32) * rest[:, k:].view("<f4")
        else:
            vals = rest.view("<f2" if self.values == "f16" else "<f4").astype(np.float32)
        out = np.zeros((n, self.dim_), np.float32)
        np.put_along_axis(out, idx, vals, 1)
        return out
