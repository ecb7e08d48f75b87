"""Feature hashing ``HASH<b>``: signed hashing of each input dimension into b buckets.

Input dimension i is added, with a random sign s ∈ {−1, +1}, to a random bucket h(i); with
multi-hashing ``HASH<b>:k=2`` each dimension goes to k distinct buckets, each with its own sign,
scaled by 1/sqrt(k) so every dimension keeps unit weight. As a matrix this is a sparse b x d map
H with k nonzeros ±1/sqrt(k) per column; the signs make (Hq)·(Hx) an unbiased estimate of q·x
(Weinberger et al., 2009). Buckets and signs are drawn from ``seed``.

Textbook use is measured, as for random projections (``RP``): queries are hashed like the
documents, so retrieval ranks by (Hq)·(Hx), and decoding lifts z = Hx back to d dimensions by
an isometry of H's row space (computed from H, not stored), so pair similarity on decoded
vectors is exactly the cosine of the hashed vectors.

``overhead_bytes`` counts the bucket table (d x k bucket indices at the narrowest unsigned
integer width, ``uint8`` up to 256 buckets, ``uint16`` beyond) and the sign table (d x k ``int8``), the
arrays as stored: a seed regenerates them only with NumPy's generator, and a deployment that
hashes queries in another runtime needs the tables. HASH128 on 384-d vectors stores 768 bytes.

``info()`` reports ``collision_rate``: the fraction of input dimensions that share at least one
of their buckets with another input dimension (a bucket receiving two or more dimensions makes
all of them collide). With fewer buckets than dimensions most dimensions collide; that is the
price of hashing. Hashing learned from the data (grouping correlated dimensions) is not done
here: learned binary hashing is covered by ITQ.
"""
from __future__ import annotations

import numpy as np

from .base import SpecError, Transform, index_dtype, row_space_isometry
from .registry import register


@register
class FeatureHashing(Transform):
    spec_format = "HASH{dim}"
    learns_from_data = False
    family = "hashing"
    summary = "signed feature hashing of dimensions into d buckets (:k=2 multi-hashing)"

    def __init__(self, dim: int = 128, k: int = 1, seed: int = 0):
        self.dim = dim
        self.k = k
        self.seed = seed
        self._check_params()

    def _check_params(self) -> None:
        if int(self.dim) < 1:
            raise SpecError(f"HASH{self.dim}: the number of buckets must be at least 1")
        if not 1 <= int(self.k) <= int(self.dim):
            raise SpecError(f"HASH{self.dim}:k={self.k}: each dimension is hashed into k distinct buckets, "
                            f"so k must be between 1 and {self.dim}")

    def check_dim(self, dim: int) -> None:
        if self.dim > dim:
            raise SpecError(f"HASH{self.dim} cannot hash {dim}-d vectors into more buckets than dimensions")

    def output_dim(self, dim: int) -> int:
        return self.dim

    def fit(self, X: np.ndarray) -> "FeatureHashing":
        d = X.shape[1]
        self.check_dim(d)
        rng = np.random.default_rng(self.seed)
        # k distinct buckets per input dimension: the first k of a random permutation of buckets
        buckets = np.argsort(rng.random((d, self.dim)), axis=1)[:, : self.k]
        self.buckets_ = buckets.astype(index_dtype(self.dim, self.to_spec()))
        self.signs_ = rng.choice(np.array([-1, 1], dtype=np.int8), size=(d, self.k))
        H = np.zeros((self.dim, d), dtype=np.float64)
        cols = np.repeat(np.arange(d), self.k)
        H[buckets.ravel(), cols] = self.signs_.ravel() / np.sqrt(self.k)
        self.matrix_ = H.astype(np.float32)
        self.lift_ = row_space_isometry(H)
        load = np.bincount(buckets.ravel(), minlength=self.dim)
        self.collision_rate_ = float((load[buckets] > 1).any(axis=1).mean())
        return self

    @property
    def overhead_bytes(self) -> int:
        return self.buckets_.nbytes + self.signs_.nbytes if hasattr(self, "buckets_") else 0

    def info(self) -> dict:
        return {"collision_rate": self.collision_rate_} if hasattr(self, "buckets_") else {}

    def transform(self, X: np.ndarray) -> np.ndarray:
        return X @ self.matrix_.T

    def inverse_transform(self, Z: np.ndarray) -> np.ndarray:
        return Z @ self.lift_.T
