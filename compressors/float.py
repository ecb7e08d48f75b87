"""Floating-point storage: float32 (the uncompressed baseline) and float16."""
from __future__ import annotations

import numpy as np

from .base import Codec, knn_inner_product
from .registry import register


@register
class Float32(Codec):
    """Store float32 as is: 4 bytes per dimension; the reference every row is compared with."""

    spec_format = "F32"
    family = "float32"
    summary = "float32 baseline, 4 bytes per dimension"

    def __init__(self):
        pass

    def code_size(self, dim: int) -> int:
        return 4 * dim

    def encode(self, X: np.ndarray) -> np.ndarray:
        X = np.ascontiguousarray(X, dtype=np.float32)
        return X.view(np.uint8).reshape(X.shape[0], -1).copy()

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(codes, dtype=np.uint8).view(np.float32)

    def search(self, codes, Q, k):
        return knn_inner_product(Q, self.decode(codes), k)


@register
class Float16(Codec):
    """IEEE half precision: 2 bytes per dimension, no training."""

    spec_format = "F16"
    family = "float16"
    summary = "IEEE float16, 2 bytes per dimension"

    def __init__(self):
        pass

    def code_size(self, dim: int) -> int:
        return 2 * dim

    def encode(self, X: np.ndarray) -> np.ndarray:
        X16 = np.ascontiguousarray(X, dtype=np.float16)
        return X16.view(np.uint8).reshape(X16.shape[0], -1)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(codes, dtype=np.uint8).view(np.float16).astype(np.float32)
