"""Random projections (Johnson–Lindenstrauss): a data-independent random matrix R (k x d).

* ``RP<k>``: scikit-learn's ``GaussianRandomProjection``, entries N(0, 1/k); stored as a dense
  float32 k x d matrix (``overhead_bytes`` = k·d·4).
* ``SRP<k>``: scikit-learn's ``SparseRandomProjection`` (Achlioptas; Li, Hastie and Church),
  density 1/sqrt(d), entries ±sqrt(1/(density·k)) or 0; stored as the CSR matrix it is
  (``overhead_bytes`` = data float32 + column indices int32 + row pointers int32, the arrays'
  real sizes; they could be packed further, e.g. signs as bits, but that is not what is stored).

Only the matrix is counted, not the seed: the seed regenerates it only through scikit-learn and
NumPy's generator, and a deployment that projects queries in another runtime needs the matrix.

Textbook use is measured: queries are projected like the documents, so retrieval ranks by the JL
estimate (Rq)·(Rx) of q·x, and decoding lifts z = Rx back to d dimensions by an isometry of R's
row space (:func:`~compressors.base.row_space_isometry`, computed from R, not stored), so pair
similarity on decoded vectors is exactly the cosine of the projected vectors. This is not
scikit-learn's ``inverse_transform`` (the least-squares R⁺z): scoring with R⁺ (q·R⁺Rx, the
orthogonal projection onto R's row space) is a different technique, an orthogonal random
projection, which is more accurate than the textbook estimate.
"""
from __future__ import annotations

import numpy as np
from sklearn.random_projection import GaussianRandomProjection, SparseRandomProjection

from .base import SpecError, Transform, row_space_isometry
from .registry import register


class _RandomProjection(Transform):
    learns_from_data = False    # R is drawn from the seed and the input width only
    family = "projection"
    _sklearn: type = GaussianRandomProjection

    def __init__(self, n_components: int = 128, seed: int = 0):
        self.n_components = n_components
        self.seed = seed
        self._check_params()

    def _check_params(self) -> None:
        if int(self.n_components) < 1:
            raise SpecError(f"{self.to_spec()}: the number of components must be at least 1")

    def check_dim(self, dim: int) -> None:
        if self.n_components > dim:
            raise SpecError(f"{self.to_spec()} cannot project {dim}-d vectors to more dimensions than they have")

    def output_dim(self, dim: int) -> int:
        return self.n_components

    def fit(self, X: np.ndarray) -> "_RandomProjection":
        self.check_dim(X.shape[1])
        # scikit-learn draws R from the seed and X's width only; X's values are not used.
        proj = self._sklearn(n_components=self.n_components, random_state=self.seed)
        self.components_ = proj.fit(X[:1].astype(np.float32)).components_
        dense = self.components_.toarray() if hasattr(self.components_, "toarray") else self.components_
        self.lift_ = row_space_isometry(dense)
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(np.asarray(X, dtype=np.float32) @ self.components_.T, dtype=np.float32)

    def inverse_transform(self, Z: np.ndarray) -> np.ndarray:
        return np.asarray(Z, dtype=np.float32) @ self.lift_.T


@register
class GaussianProjection(_RandomProjection):
    spec_format = "RP{n_components}"
    summary = "Gaussian random projection to n dimensions (dense float32 matrix, seeded)"
    _sklearn = GaussianRandomProjection

    @property
    def overhead_bytes(self) -> int:
        return self.components_.nbytes if hasattr(self, "components_") else 0


@register
class SparseProjection(_RandomProjection):
    spec_format = "SRP{n_components}"
    summary = "sparse random projection to n dimensions (density 1/sqrt(d), CSR matrix, seeded)"
    _sklearn = SparseRandomProjection

    def fit(self, X: np.ndarray) -> "SparseProjection":
        super().fit(X)
        R = self.components_.tocsr()
        R.data = R.data.astype(np.float32)
        self.components_ = R
        return self

    @property
    def overhead_bytes(self) -> int:
        if not hasattr(self, "components_"):
            return 0
        R = self.components_
        return R.data.nbytes + R.indices.nbytes + R.indptr.nbytes

    def info(self) -> dict:
        if not hasattr(self, "components_"):
            return {}
        rows, cols = self.components_.shape
        return {"srp_density": self.components_.nnz / (rows * cols)}
