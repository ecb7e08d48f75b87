"""Binary quantization: one bit per dimension (the sign), searched by Hamming distance.

Codes equal sentence-transformers' ``quantize_embeddings(precision="ubinary")`` (``np.packbits``
of ``x > 0``). Search binarises the query too and ranks by Hamming distance with FAISS's
``IndexBinaryFlat``; scores are reported as the cosine of the ±1 vectors, ``1 - 2·hamming/d``,
which is also what the codes decode to (±1/sqrt(d)) for pair similarity.
"""
from __future__ import annotations

import faiss
import numpy as np

from .base import Codec
from .registry import register


@register
class Binary(Codec):
    spec_format = "BIN"
    family = "binary"
    summary = "sign bit per dimension, Hamming search"

    def __init__(self):
        pass

    def code_size(self, dim: int) -> int:
        return -(-dim // 8)

    def fit(self, X: np.ndarray) -> "Binary":
        self.dim_ = X.shape[1]
        return self

    def encode(self, X: np.ndarray) -> np.ndarray:
        return np.packbits(np.asarray(X) > 0, axis=-1)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        bits = np.unpackbits(np.asarray(codes, dtype=np.uint8), axis=-1)[:, : self.dim_]
        return (bits.astype(np.float32) * 2.0 - 1.0) / np.float32(np.sqrt(self.dim_))

    def search(self, codes, Q, k):
        codes = np.ascontiguousarray(codes, dtype=np.uint8)
        index = faiss.IndexBinaryFlat(codes.shape[1] * 8)
        index.add(codes)
        hamming, ids = index.search(self.encode(Q), min(k, codes.shape[0]))
        return 1.0 - 2.0 * hamming.astype(np.float32) / self.dim_, ids
