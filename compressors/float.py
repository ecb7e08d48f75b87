"""Floating-point storage: float32 (the uncompressed baseline), float16 and bfloat16."""
from __future__ import annotations

import numpy as np

from .base import Codec, knn_inner_product
from .registry import register


@register
class Float32(Codec):
    """Store float32 as is: 4 bytes per dimension; the reference every row is compared with."""

    spec_format = "F32"
    learns_from_data = False
    family = "float32"
    summary = "float32 baseline, 4 bytes per dimension"

    def __init__(self):
        pass

    def code_size(self, dim: int) -> int:
        return 4 * dim

    def encode(self, X: np.ndarray) -> np.ndarray:
        X = np.ascontiguousarray(X, dtype=np.float32)
        return X.view(np.uint8).reshape(X.shape[0], -1).copy()

    def encode_into(self, X: np.ndarray, out: np.ndarray) -> None:
        out.view(np.float32)[...] = X

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(codes, dtype=np.uint8).view(np.float32)

    def search(self, codes, Q, k):
        return knn_inner_product(Q, self.decode(codes), k)


@register
class Float16(Codec):
    """IEEE half precision: 2 bytes per dimension, no training."""

    spec_format = "F16"
    learns_from_data = False
    family = "float16"
    summary = "IEEE float16, 2 bytes per dimension"

    def __init__(self):
        pass

    def code_size(self, dim: int) -> int:
        return 2 * dim

    def encode(self, X: np.ndarray) -> np.ndarray:
        X16 = np.ascontiguousarray(X, dtype=np.float16)
        return X16.view(np.uint8).reshape(X16.shape[0], -1)

    def encode_into(self, X: np.ndarray, out: np.ndarray) -> None:
        out.view(np.float16)[...] = X          # cast straight into the codes, no temporary

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(codes, dtype=np.uint8).view(np.float16).astype(np.float32)


@register
class BFloat16(Codec):
    """bfloat16: the upper 16 bits of float32 (8-bit exponent, 7-bit mantissa), 2 bytes per dimension.

    numpy has no bfloat16, so the rounding is done on the float32 bit pattern: add 0x7FFF plus
    the lowest kept bit and drop the low 16 bits (round to nearest, ties to even), as
    ``torch.bfloat16`` does; NaN stays a quiet NaN. Codes are the 16-bit patterns, little endian.
    """

    spec_format = "BF16"
    learns_from_data = False
    family = "bfloat16"
    summary = "bfloat16 (upper half of float32, round to nearest even), 2 bytes per dimension"

    def __init__(self):
        pass

    def code_size(self, dim: int) -> int:
        return 2 * dim

    def encode(self, X: np.ndarray) -> np.ndarray:
        bits = np.ascontiguousarray(X, dtype=np.float32).view(np.uint32)
        rounded = (bits + (np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16)
        nan = np.isnan(np.asarray(X, dtype=np.float32))
        high = np.where(nan, (bits >> np.uint32(16)) | np.uint32(0x0040), rounded)
        out = high.astype("<u2")
        return out.view(np.uint8).reshape(out.shape[0], -1)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        high = np.ascontiguousarray(codes, dtype=np.uint8).view("<u2").astype(np.uint32)
        return (high << np.uint32(16)).view(np.float32)
