"""Random orthogonal rotation ``ROT`` (d -> d): a building block for quantizers.

The rotation is the Q factor of the QR decomposition of a d x d standard Gaussian matrix drawn
from ``seed`` (with the signs of R's diagonal folded in, so Q is uniformly distributed over the
orthogonal group). Rotating spreads the variance and outliers of a few dimensions over all of
them, which helps codecs that treat dimensions alike or independently (``ROT,SQ4``,
``ROT,BIN``, ``ROT,PQ16x8``). Inner products are preserved exactly, so queries are rotated like
the documents, and the inverse is the transpose: decoding reconstructs the input up to float32
rounding.

``overhead_bytes`` is the dense float32 d x d matrix (589,824 bytes at d = 384): it could be
regenerated from the seed, but only with NumPy's generator, so a deployment stores it.
"""
from __future__ import annotations

import numpy as np

from .base import Transform
from .registry import register


@register
class RandomRotation(Transform):
    spec_format = "ROT"
    learns_from_data = False
    family = "rotation"
    summary = "random orthogonal rotation (QR of a seeded Gaussian matrix), inner products preserved"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def fit(self, X: np.ndarray) -> "RandomRotation":
        d = X.shape[1]
        G = np.random.default_rng(self.seed).standard_normal((d, d))
        Q, R = np.linalg.qr(G)
        self.rotation_ = (Q * np.sign(np.diag(R))).astype(np.float32)
        return self

    @property
    def overhead_bytes(self) -> int:
        return self.rotation_.nbytes if hasattr(self, "rotation_") else 0

    def transform(self, X: np.ndarray) -> np.ndarray:
        return X @ self.rotation_.T

    def inverse_transform(self, Z: np.ndarray) -> np.ndarray:
        return Z @ self.rotation_
