"""Product quantization through FAISS: m sub-vectors, each coded by one of 2**nbits centroids.

Uses FAISS's codec API (``sa_encode``/``sa_decode``/``sa_code_size``) and ``IndexPQ`` with the
inner-product metric for asymmetric search (float query against the codes).

``PQ{m}x4fs`` is the same 4-bit product quantizer (same training, same codes) searched with
FAISS's fast-scan kernel, ``IndexPQFastScan``: the look-up tables are quantized to 8 bits and
the codes are scanned 32 at a time in registers, so its scores (and rarely its ranking) differ
slightly from ``PQ{m}x4``'s exact tables; both spellings stay so the grid shows the difference.
The fast-scan index keeps the codes in blocks of 32 (``pq4_pack_codes``); FAISS 1.15.1 has no
``add_sa_codes`` for it, so the searcher fills an ``IndexPQ`` with the stored codes and converts
it with FAISS's own ``IndexPQFastScan(IndexPQ)`` constructor, which packs them (the ``IndexPQ``
is dropped after).
"""
from __future__ import annotations

import faiss
import numpy as np

from .base import FaissCodec, SpecError, kmeans_warnings
from .registry import register
from .searchers import FaissSearcher, filled_faiss_index


@register
class ProductQuantizer(FaissCodec):
    spec_format = "PQ{m}x{nbits}"
    family = "pq"
    summary = "FAISS product quantization, m sub-quantizers of nbits each"
    kernel_name = "IndexPQ"

    def __init__(self, m: int = 16, nbits: int = 8, niter: int = 25, seed: int = 1234):
        self.m = m
        self.nbits = nbits
        self.niter = niter          # k-means iterations per sub-quantizer (FAISS's default 25)
        self.seed = seed
        self._check_params()

    def _check_params(self) -> None:
        if int(self.m) < 1:
            raise SpecError(f"PQ{self.m}x{self.nbits}: m must be at least 1")
        if not 1 <= int(self.nbits) <= 16:
            raise SpecError(f"PQ{self.m}x{self.nbits}: nbits must be between 1 and 16")
        if int(self.niter) < 1:
            raise SpecError(f"PQ{self.m}x{self.nbits}:niter={self.niter}: niter must be at least 1")

    def check_dim(self, dim: int) -> None:
        if dim % self.m:
            raise SpecError(f"PQ{self.m}x{self.nbits}: {dim} dimensions do not split into {self.m} equal sub-vectors")

    def code_size(self, dim: int) -> int:
        return -(-self.m * self.nbits // 8)

    def fit(self, X: np.ndarray) -> "ProductQuantizer":
        self.check_dim(X.shape[1])
        k = 1 << self.nbits
        if X.shape[0] < k:
            raise SpecError(f"PQ{self.m}x{self.nbits} needs at least {k} training vectors (one per centroid), got {X.shape[0]}")
        index = faiss.IndexPQ(X.shape[1], self.m, self.nbits, faiss.METRIC_INNER_PRODUCT)
        index.pq.cp.seed = self.seed
        index.pq.cp.niter = self.niter
        # FAISS prints its too-few-points warning straight to stderr; it is recorded in the
        # result row instead (fit_warnings), so the k-means check is done here.
        index.pq.cp.min_points_per_centroid = 1
        index.train(np.ascontiguousarray(X, dtype=np.float32))
        self.index_ = index
        self.n_train_ = X.shape[0]
        self.fit_warnings_ = kmeans_warnings(X.shape[0], k)
        return self

    @property
    def overhead_bytes(self) -> int:
        return 0 if not hasattr(self, "index_") else faiss.vector_to_array(self.index_.pq.centroids).nbytes


#: Codes per block of FAISS's fast-scan layout (its default ``bbs``).
FAST_SCAN_BLOCK = 32


@register
class ProductQuantizerFastScan(ProductQuantizer):
    spec_format = "PQ{m}x4fs"
    summary = "4-bit FAISS product quantization searched with fast-scan (IndexPQFastScan)"
    nbits = 4                      # fixed by the spelling; not a parameter

    def __init__(self, m: int = 16, niter: int = 25, seed: int = 1234):
        self.m = m
        self.niter = niter
        self.seed = seed
        self._check_params()

    def searcher(self, codes):
        index = faiss.IndexPQFastScan(filled_faiss_index(self.index_, codes), FAST_SCAN_BLOCK)
        return FaissSearcher(index, "IndexPQFastScan", self.overhead_bytes)
