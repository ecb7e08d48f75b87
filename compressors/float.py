"""Floating-point storage: float32 (the uncompressed baseline), float16 and bfloat16."""
from __future__ import annotations

import faiss
import numpy as np

from .base import Codec
from .registry import register
from .searchers import FaissSearcher, FlatSearcher, scalar_quantizer_index


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

    def searcher(self, codes):
        """Exact search over the codes read in place as float32 (FAISS's brute force for a few
        queries, torch's matrix product for batches: see ``compressors.searchers``)."""
        return FlatSearcher(self.decode(codes))


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

    def searcher(self, codes):
        """FAISS's ``IndexScalarQuantizer`` (``QT_fp16``) holding the codes as they are."""
        index = scalar_quantizer_index(codes.shape[1] // 2, faiss.ScalarQuantizer.QT_fp16, codes)
        return FaissSearcher(index, "IndexScalarQuantizer(fp16)")


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

    def searcher(self, codes):
        """FAISS's ``IndexScalarQuantizer`` (``QT_bf16``, which decodes a code as its 16 bits
        shifted up, as ``decode`` does) holding the codes as they are."""
        index = scalar_quantizer_index(codes.shape[1] // 2, faiss.ScalarQuantizer.QT_bf16, codes)
        return FaissSearcher(index, "IndexScalarQuantizer(bf16)")
