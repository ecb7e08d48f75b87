"""RaBitQ ``RABITQ`` through FAISS's ``IndexRaBitQ`` (Gao & Long, SIGMOD 2024): each vector,
centred on the calibration mean and randomly rotated, is stored as one sign bit per dimension
plus per-vector correction factors (its distance to the centre and the inner product of the
vector with its quantized version), which make the inner-product estimate unbiased.

A seeded random orthogonal rotation (FAISS's ``RandomRotationMatrix``, as in FAISS's own RaBitQ
tests and ``index_factory``'s ``"RR<d>,RaBitQ"``) is applied first: the paper's error bound
assumes it. Codes and their width come from FAISS's codec API, so the factors are counted:
``sa_code_size`` is d/8 bytes of bits + 8 bytes of factors (56 B at d = 384).

Options: ``nbits`` (1 to 9) is extended RaBitQ, nbits bits per dimension (more factors: 212 B for
4 bits at d = 384); search uses all the bits, but FAISS's ``sa_decode`` (hence ``decode`` and the
STS pair similarity) reconstructs from the sign bits only. ``qb`` is the number of bits the query
is quantized to at search time: 8 by default; FAISS's own default is 4; 0 keeps the query float32
but FAISS 1.15.1 then scores bit by bit, about 90x slower than ``qb=8`` for the same recall@10
(0.80 on 20,000 tiled MiniLM vectors, 100 queries). ``overhead_bytes``: the d x d rotation and the
d-float centre.
"""
from __future__ import annotations

import faiss
import numpy as np

from .base import FaissCodec, SpecError
from .registry import register


@register
class RaBitQ(FaissCodec):
    spec_format = "RABITQ"
    family = "rabitq"
    summary = ("RaBitQ (Gao & Long, SIGMOD 2024; FAISS IndexRaBitQ): centred, rotated, 1 bit per dimension + 8 B "
               "of factors; :nbits=2..9 extended RaBitQ (Gao et al., SIGMOD 2025)")

    def __init__(self, nbits: int = 1, qb: int = 8, seed: int = 1234):
        self.nbits = nbits
        self.qb = qb
        self.seed = seed
        self._check_params()

    def _check_params(self) -> None:
        if not 1 <= int(self.nbits) <= 9:
            raise SpecError(f"RABITQ:nbits={self.nbits}: RaBitQ codes 1 to 9 bits per dimension")
        if not 0 <= int(self.qb) <= 8:
            raise SpecError(f"RABITQ:qb={self.qb}: the query is quantized to 0 (float32) to 8 bits")

    def _new_index(self, dim: int) -> faiss.IndexRaBitQ:
        index = faiss.IndexRaBitQ(dim, faiss.METRIC_INNER_PRODUCT, self.nbits)
        index.qb = self.qb
        return index

    def code_size(self, dim: int) -> int:
        return int(self._new_index(dim).sa_code_size())

    def fit(self, X: np.ndarray) -> "RaBitQ":
        d = X.shape[1]
        rotation = faiss.RandomRotationMatrix(d, d)
        rotation.init(self.seed)
        index = self._new_index(d)
        index.train(rotation.apply(np.ascontiguousarray(X, dtype=np.float32)))
        self.pretransform_ = rotation
        self.index_ = index
        self.n_train_ = X.shape[0]
        return self

    @property
    def overhead_bytes(self) -> int:
        if not hasattr(self, "index_"):
            return 0
        return (faiss.vector_to_array(self.pretransform_.A).nbytes
                + faiss.vector_to_array(self.index_.center).nbytes)
