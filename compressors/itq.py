"""Iterative quantization ``ITQ<nbits>`` (Gong & Lazebnik, 2011) through FAISS's
``ITQTransform``: learned binary hashing.

FAISS centres the vectors on the calibration mean, normalises them, projects them on their top
nbits principal components and applies the orthogonal rotation that ITQ learns (``niter``
iterations, FAISS's default 50, on at most max(10·d, 32768) vectors) to minimise the loss of
taking signs; the signs are packed into ceil(nbits/8) bytes by FAISS's ``IndexLSH`` (the
``"ITQ<nbits>,LSH"`` of FAISS's ``index_factory``, whose codes these equal). Search binarises the
query the same way and ranks by Hamming distance (FAISS's ``IndexBinaryFlat``, as ``BIN`` and
``LSH``); scores are ``1 - 2·hamming/nbits``. ``LSH<nbits>`` is the untrained baseline.

``decode`` maps the ±1 signs back through the transposed projection (orthonormal rows), scaled
by 1/sqrt(nbits): a unit vector in the direction of the centred input, and the cosine of two
decoded vectors is exactly the search score. ``overhead_bytes``: the nbits x d float32 projection
and the d-float mean.
"""
from __future__ import annotations

import faiss
import numpy as np

from .base import FaissCodec, SpecError
from .registry import register
from .searchers import HammingSearcher


@register
class ITQ(FaissCodec):
    spec_format = "ITQ{nbits}"
    scores_inner_product = False    # 1 - 2·hamming/nbits
    family = "itq"
    summary = "ITQ learned binary hashing: PCA to nbits + learned rotation, sign bits, Hamming search"

    def __init__(self, nbits: int = 256, niter: int = 50, seed: int = 123):
        self.nbits = nbits
        self.niter = niter
        self.seed = seed
        self._check_params()

    def _check_params(self) -> None:
        if int(self.nbits) < 1:
            raise SpecError(f"ITQ{self.nbits}: the number of bits must be at least 1")
        if int(self.niter) < 1:
            raise SpecError(f"ITQ{self.nbits}:niter={self.niter}: niter must be at least 1")

    def check_dim(self, dim: int) -> None:
        if self.nbits > dim:
            raise SpecError(f"ITQ{self.nbits} projects on principal components and cannot give more bits "
                            f"than the {dim} dimensions")

    def code_size(self, dim: int) -> int:
        return -(-self.nbits // 8)

    def fit(self, X: np.ndarray) -> "ITQ":
        self.check_dim(X.shape[1])
        if X.shape[0] < self.nbits:
            raise SpecError(f"ITQ{self.nbits} needs at least {self.nbits} calibration vectors "
                            f"(one per principal component), got {X.shape[0]}")
        itq = faiss.ITQTransform(X.shape[1], self.nbits, True)
        itq.itq.max_iter = self.niter
        itq.itq.seed = self.seed
        itq.train(np.ascontiguousarray(X, dtype=np.float32))
        self.pretransform_ = itq
        self.index_ = faiss.IndexLSH(self.nbits, self.nbits, False, False)
        self.n_train_ = X.shape[0]
        return self

    @property
    def overhead_bytes(self) -> int:
        if not hasattr(self, "index_"):
            return 0
        return (faiss.vector_to_array(self.pretransform_.pca_then_itq.A).nbytes
                + faiss.vector_to_array(self.pretransform_.mean).nbytes)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        signs = self.index_.sa_decode(np.ascontiguousarray(codes, dtype=np.uint8))
        projection = self.pretransform_.pca_then_itq
        if not projection.is_orthonormal:
            projection.set_is_orthonormal()          # PCA rows times a rotation: orthonormal rows
        return projection.reverse_transform(signs) / np.float32(np.sqrt(self.nbits))

    def searcher(self, codes):
        """FAISS's ``IndexBinaryFlat`` over the codes; queries are binarised by ``encode``."""
        encoder = self._chain(self.index_)                # built once, not per query
        return HammingSearcher(codes, encoder.sa_encode, self.nbits, self.overhead_bytes)
