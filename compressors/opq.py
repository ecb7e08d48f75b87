"""Optimized product quantization ``OPQ<m>``: a learned rotation (d -> d) that makes the
dimensions easier to code by a following ``PQ<m>x<nbits>``, through FAISS's ``OPQMatrix``.

Chained as in FAISS's ``index_factory``: ``OPQ16,PQ16x8``. FAISS trains the rotation by
alternating a product quantizer of m sub-quantizers (8 bits, as index_factory does; ``:nbits``
changes it) with an orthogonal Procrustes step, ``niter`` times (FAISS's default 50), on at most
65,536 of the calibration vectors; the first of those product quantizers runs ``niter_pq_0``
k-means iterations (FAISS's default 40), the later ones 4. With the defaults, ``OPQ16,PQ16x8`` gives the codes and search
results of ``faiss.index_factory(d, "OPQ16,PQ16np", METRIC_INNER_PRODUCT)`` (index_factory's plain
``"PQ16"`` also relabels the centroids for polysemous search, so its code values differ).

The rotation is orthogonal, so inner products are preserved exactly: queries are rotated like
the documents and the inverse is the transpose. ``overhead_bytes`` is the d x d float32 matrix.
"""
from __future__ import annotations

import faiss
import numpy as np

from .base import SpecError, Transform, kmeans_warnings
from .registry import register


@register
class OPQ(Transform):
    spec_format = "OPQ{m}"
    family = "opq"
    summary = "FAISS OPQ rotation for m sub-quantizers (chain with PQ<m>x<nbits>)"

    def __init__(self, m: int = 16, nbits: int = 8, niter: int = 50, niter_pq_0: int = 40, seed: int = 1234):
        self.m = m
        self.nbits = nbits
        self.niter = niter
        self.niter_pq_0 = niter_pq_0
        self.seed = seed
        self._check_params()

    def _check_params(self) -> None:
        if int(self.m) < 1:
            raise SpecError(f"OPQ{self.m}: m must be at least 1")
        if not 1 <= int(self.nbits) <= 16:
            raise SpecError(f"OPQ{self.m}:nbits={self.nbits}: nbits must be between 1 and 16")
        if int(self.niter) < 1:
            raise SpecError(f"OPQ{self.m}:niter={self.niter}: niter must be at least 1")
        if int(self.niter_pq_0) < 1:
            raise SpecError(f"OPQ{self.m}:niter_pq_0={self.niter_pq_0}: niter_pq_0 must be at least 1")

    def check_dim(self, dim: int) -> None:
        if dim % self.m:
            raise SpecError(f"OPQ{self.m}: {dim} dimensions do not split into {self.m} equal sub-vectors")

    def fit(self, X: np.ndarray) -> "OPQ":
        self.check_dim(X.shape[1])
        k = 1 << self.nbits
        if X.shape[0] < k:
            raise SpecError(f"OPQ{self.m} trains a product quantizer of {k} centroids per sub-vector and needs "
                            f"at least {k} training vectors, got {X.shape[0]}")
        d = X.shape[1]
        opq = faiss.OPQMatrix(d, self.m)
        opq.niter = self.niter
        opq.niter_pq_0 = self.niter_pq_0
        # The PQ trained inside OPQ: FAISS's default one (8 bits, seed 1234) unless told
        # otherwise; its too-few-points warning is recorded instead of printed.
        pq = faiss.ProductQuantizer(d, self.m, self.nbits)
        pq.cp.seed = self.seed
        pq.cp.min_points_per_centroid = 1
        opq.pq = pq
        opq.train(np.ascontiguousarray(X, dtype=np.float32))
        opq.pq = None                                  # not owned by the matrix; not needed after training
        self.opq_ = opq
        self.n_train_ = X.shape[0]
        n_used = min(X.shape[0], opq.max_train_points)
        self.fit_warnings_ = kmeans_warnings(n_used, k)
        return self

    @property
    def overhead_bytes(self) -> int:
        return 0 if not hasattr(self, "opq_") else faiss.vector_to_array(self.opq_.A).nbytes

    def transform(self, X: np.ndarray) -> np.ndarray:
        return self.opq_.apply(np.ascontiguousarray(X, dtype=np.float32))

    def inverse_transform(self, Z: np.ndarray) -> np.ndarray:
        return self.opq_.reverse_transform(np.ascontiguousarray(Z, dtype=np.float32))
