"""Local search quantization ``LSQ<m>x<nbits>`` through FAISS's ``IndexLocalSearchQuantizer``:
m codebooks of 2**nbits centroids of the full vector (an additive quantizer, like RQ), with codes
chosen jointly by iterated local search and codebooks refitted by least squares (Martinez et al.,
2018).

Codes come from FAISS's codec API (``sa_encode``/``sa_decode``, width from ``sa_code_size``);
search is FAISS's look-up-table inner-product search (``ST_LUT_nonorm``), which needs no stored
norm, so the code is exactly ceil(m·nbits/8) bytes (see ``compressors/rq.py``).

Training is slow (tens of seconds for LSQ8x8 on 10,000 384-d vectors) and so is encoding:
``train_iters`` (FAISS's default 25) and ``encode_ils_iters`` (local-search iterations when
encoding, FAISS's default 16) trade time for error, e.g. ``LSQ8x8:train_iters=5``.
``overhead_bytes`` is the m codebooks of 2**nbits x d float32 centroids.
"""
from __future__ import annotations

import faiss
import numpy as np

from .base import FaissCodec, SpecError
from .registry import register


@register
class LocalSearchQuantizer(FaissCodec):
    spec_format = "LSQ{m}x{nbits}"
    family = "lsq"
    summary = "FAISS local search quantization, m codebooks of nbits each (slow to train)"
    kernel_name = "IndexLocalSearchQuantizer(LUT)"
    rowwise = False   # the encoder's random perturbations are drawn for the whole batch

    def __init__(self, m: int = 8, nbits: int = 8, train_iters: int = 25, encode_ils_iters: int = 16,
                 seed: int = 1234):
        self.m = m
        self.nbits = nbits
        self.train_iters = train_iters
        self.encode_ils_iters = encode_ils_iters
        self.seed = seed
        self._check_params()

    def _check_params(self) -> None:
        if int(self.m) < 1:
            raise SpecError(f"LSQ{self.m}x{self.nbits}: m must be at least 1")
        if not 1 <= int(self.nbits) <= 16:
            raise SpecError(f"LSQ{self.m}x{self.nbits}: nbits must be between 1 and 16")
        for name in ("train_iters", "encode_ils_iters"):
            if int(getattr(self, name)) < 1:
                raise SpecError(f"LSQ{self.m}x{self.nbits}:{name}={getattr(self, name)}: must be at least 1")

    def _new_index(self, dim: int) -> faiss.IndexLocalSearchQuantizer:
        return faiss.IndexLocalSearchQuantizer(dim, self.m, self.nbits, faiss.METRIC_INNER_PRODUCT,
                                               faiss.AdditiveQuantizer.ST_LUT_nonorm)

    def code_size(self, dim: int) -> int:
        return int(self._new_index(dim).sa_code_size())

    def fit(self, X: np.ndarray) -> "LocalSearchQuantizer":
        k = 1 << self.nbits
        if X.shape[0] < k:
            raise SpecError(f"{self.to_spec()} needs at least {k} training vectors (one per centroid), got {X.shape[0]}")
        index = self._new_index(X.shape[1])
        index.lsq.train_iters = self.train_iters
        index.lsq.encode_ils_iters = self.encode_ils_iters
        index.lsq.random_seed = self.seed
        index.train(np.ascontiguousarray(X, dtype=np.float32))
        self.index_ = index
        self.n_train_ = X.shape[0]
        self.fit_warnings_: list[str] = []
        return self

    @property
    def overhead_bytes(self) -> int:
        return 0 if not hasattr(self, "index_") else faiss.vector_to_array(self.index_.lsq.codebooks).nbytes
