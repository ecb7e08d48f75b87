"""Random-projection LSH ``LSH<nbits>`` (sign random projections, SimHash; Charikar, 2002)
through FAISS's ``IndexLSH``: the untrained baseline of binary hashing.

Each vector is multiplied by a random nbits x d matrix with orthonormal rows (FAISS's
``RandomRotationMatrix``, drawn from ``seed``; columns orthonormal when nbits > d) and the signs
are packed into ceil(nbits/8) bytes by ``sa_encode``. The angle between two vectors is estimated
from the Hamming distance of their codes, so search binarises the query the same way and ranks by
Hamming distance (FAISS's ``IndexBinaryFlat``, as ``BIN``); scores are ``1 - 2·hamming/nbits``.
Nothing is learned from the data. With the default seed (5, ``IndexLSH``'s own) the codes are
those of ``faiss.IndexLSH(d, nbits, rotate_data=True, train_thresholds=False)``.

``decode`` is FAISS's ``sa_decode`` (the ±1 signs mapped back through the transposed matrix),
scaled by 1/sqrt(nbits): for nbits <= d the decoded vectors have unit norm and the cosine of two
of them is exactly ``1 - 2·hamming/nbits``, the search score. ``overhead_bytes``: the float32
projection matrix (a seed regenerates it, but only with FAISS's generator).
"""
from __future__ import annotations

import faiss
import numpy as np

from .base import FaissCodec, SpecError
from .registry import register
from .searchers import HammingSearcher


@register
class RandomProjectionLSH(FaissCodec):
    spec_format = "LSH{nbits}"
    scores_inner_product = False    # 1 - 2·hamming/nbits
    learns_from_data = False
    family = "lsh"
    summary = "sign random projections to nbits (untrained binary hashing), Hamming search"

    def __init__(self, nbits: int = 256, seed: int = 5):
        self.nbits = nbits
        self.seed = seed
        self._check_params()

    def _check_params(self) -> None:
        if int(self.nbits) < 1:
            raise SpecError(f"LSH{self.nbits}: the number of bits must be at least 1")

    def code_size(self, dim: int) -> int:
        return -(-self.nbits // 8)

    def fit(self, X: np.ndarray) -> "RandomProjectionLSH":
        index = faiss.IndexLSH(X.shape[1], self.nbits, True, False)
        index.rrot.init(self.seed)
        self.index_ = index
        return self

    @property
    def overhead_bytes(self) -> int:
        return 0 if not hasattr(self, "index_") else faiss.vector_to_array(self.index_.rrot.A).nbytes

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return super().decode(codes) / np.float32(np.sqrt(self.nbits))

    def searcher(self, codes):
        """FAISS's ``IndexBinaryFlat`` over the codes; queries are binarised by ``encode``."""
        encoder = self._chain(self.index_)                # built once, not per query
        return HammingSearcher(codes, encoder.sa_encode, self.nbits, self.overhead_bytes)
