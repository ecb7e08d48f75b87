"""Data-oblivious scalar quantizers of FAISS 1.15: TurboQuant ``TQ<bits>`` and EDEN ``EDEN<bits>``.

Both quantize each coordinate of a randomly rotated vector with a fixed Lloyd-Max codebook for
the coordinates of a random point on the unit sphere (about N(0, 1/d)): nothing is learned from
the calibration vectors, only a rotation is drawn from ``seed``. The rotation is FAISS's
``RandomRotationMatrix`` applied through ``IndexPreTransform``, as ``index_factory``'s
``"RR<d>,..."`` prefix does (at the default ``seed=12345`` the codes equal those of
``index_factory(d, "RR<d>,SQtq4")`` and ``"RR<d>,EDEN4"``); FAISS's quantizers themselves do
not rotate, and both papers assume the rotation. ``rotate=false`` leaves it out.

* ``TQ<bits>`` (Zandieh et al. 2025, arXiv:2504.19874) is FAISS's ``ScalarQuantizer`` type
  ``QT_<bits>bit_tq`` (2 to 5), TurboQuant for inner products: bits - 1 of Lloyd-Max MSE code
  per dimension, one QJL sign bit per dimension of the residual (a seeded Hadamard projection)
  and 8 bytes of factors (the norm and the residual norm), for an unbiased inner-product
  estimate: 200 B at 4 bits on 384-d vectors. ``TQ<bits>:mse=true`` is ``QT_<bits>bit_tqmse``
  (1, 2, 3, 4, 8 bits), the MSE variant: the Lloyd-Max code alone, no norm (192 B at 4 bits),
  so it codes unit vectors only and refuses others.
* ``EDEN<bits>`` (Vargaftik et al., ICML 2022) is FAISS's ``IndexEDEN`` (1 to 8 bits): each
  vector is scaled to the unit sphere's radius sqrt(d) before its Lloyd-Max code, and 8 bytes of
  factors store the scale back (``scale=unbiased``, EDEN's; ``biased``, DRIVE's MSE-minimising
  one). ``center=true`` subtracts the calibration mean first, as ``IndexEDEN.train`` does on
  real data (the stage then learns from data); by default it is trained on a zero vector, as
  FAISS's own EDEN tests do: the paper's codec, with a zero centre.

  The EDEN qtypes must not go into an ``IndexScalarQuantizer``: there FAISS 1.15.1 quantizes the
  raw coordinates (about ±0.05 on unit vectors) with the codebook for radius sqrt(d) (levels
  about ±1), without the per-vector scale, so every width uses only the two middle levels: the
  same ranking as a sign bit, and nothing stored to scale the decoded vector back (see the
  README's EDEN note and ``tests/test_turboquant.py``).

Codes, decoding and search are FAISS's own (``sa_encode``, ``sa_decode``, an index of the same
type filled with the stored codes). ``overhead_bytes``: the d x d float32 rotation matrix (what
FAISS serialises for a ``RandomRotationMatrix``), FAISS's ``trained`` floats (the codebook and,
for ``TQ``, the seed of the QJL projection, which is regenerated from it), and for EDEN its d
float centre (zero unless ``center=true``).
"""
from __future__ import annotations

import faiss
import numpy as np

from .base import FaissCodec, SpecError
from .registry import register

IP = faiss.METRIC_INNER_PRODUCT
_TQ_BITS = (2, 3, 4, 5)
_TQ_MSE_BITS = (1, 2, 3, 4, 8)
_EDEN_SCALES = {"unbiased": faiss.EDENScaleType_UNBIASED, "biased": faiss.EDENScaleType_BIASED}
#: How far from 1 a vector's norm may be for the MSE variant, which stores no norm.
UNIT_NORM_TOL = 1e-3


class _RotatedFaissCodec(FaissCodec):
    """A FAISS index behind an optional seeded ``RandomRotationMatrix`` (``rotate``, ``seed``)."""

    rotate: bool      # constructor parameters of the subclasses
    seed: int

    learns_from_data = False

    def _new_index(self, dim: int) -> faiss.Index:
        raise NotImplementedError

    def _train_on(self, X: np.ndarray) -> np.ndarray:
        """What the index is trained on (the rotated calibration vectors by default)."""
        return X

    def code_size(self, dim: int) -> int:
        return int(self._new_index(dim).sa_code_size())

    def fit(self, X: np.ndarray) -> "_RotatedFaissCodec":
        X = np.ascontiguousarray(X, dtype=np.float32)
        d = X.shape[1]
        self.pretransform_ = None
        if self.rotate:
            self.pretransform_ = faiss.RandomRotationMatrix(d, d)
            self.pretransform_.init(self.seed)
            X = self.pretransform_.apply(X)
        index = self._new_index(d)
        index.train(self._train_on(X))
        self.index_ = index
        self.n_train_ = X.shape[0]
        return self

    @property
    def overhead_bytes(self) -> int:
        if not hasattr(self, "index_"):
            return 0
        total = faiss.vector_to_array(self.index_.sq.trained).nbytes
        if self.pretransform_ is not None:
            total += faiss.vector_to_array(self.pretransform_.A).nbytes
        return total


@register
class TurboQuant(_RotatedFaissCodec):
    spec_format = "TQ{bits}"
    family = "turboquant"
    summary = ("TurboQuant (Zandieh et al. 2025, arXiv:2504.19874; FAISS QT_*bit_tq): random rotation, "
               "fixed Lloyd-Max code + 1-bit QJL residual + 8 B of factors; :mse=true the MSE code alone")

    def __init__(self, bits: int = 4, mse: bool = False, rotate: bool = True, seed: int = 12345):
        self.bits = bits
        self.mse = mse
        self.rotate = rotate
        self.seed = seed
        self._check_params()

    def _check_params(self) -> None:
        if self.bits not in (_TQ_MSE_BITS if self.mse else _TQ_BITS):
            raise SpecError(f"{self.to_spec()}: FAISS's TurboQuant codes {', '.join(map(str, _TQ_BITS))} bits per "
                            f"dimension (QT_*bit_tq), or {', '.join(map(str, _TQ_MSE_BITS))} with :mse=true "
                            "(QT_*bit_tqmse)")

    @property
    def qtype(self) -> int:
        return getattr(faiss.ScalarQuantizer, f"QT_{self.bits}bit_{'tqmse' if self.mse else 'tq'}")

    def _new_index(self, dim: int) -> faiss.IndexScalarQuantizer:
        return faiss.IndexScalarQuantizer(dim, self.qtype, IP)

    def _check_unit(self, X: np.ndarray, what: str) -> None:
        if not self.mse or len(X) == 0:
            return
        norms = np.sqrt(np.einsum("ij,ij->i", X, X))
        if np.abs(norms - 1).max() > UNIT_NORM_TOL:
            raise SpecError(f"{self.to_spec()}: FAISS's QT_{self.bits}bit_tqmse codes unit vectors and stores "
                            f"no norm; the {what} have norms {norms.min():.3g} to {norms.max():.3g} "
                            f"(normalise them, or use TQ{max(self.bits, 2)}, which stores the norm)")

    def fit(self, X: np.ndarray) -> "TurboQuant":
        self._check_unit(X, "calibration vectors")
        super().fit(X)
        return self

    def encode(self, X: np.ndarray) -> np.ndarray:
        self._check_unit(X, "vectors")
        return super().encode(X)


@register
class EDEN(_RotatedFaissCodec):
    spec_format = "EDEN{bits}"
    family = "eden"
    summary = ("EDEN (Vargaftik et al., ICML 2022; FAISS IndexEDEN): random rotation, each vector scaled to "
               "the sphere and Lloyd-Max coded, + 8 B of scale factors")

    def __init__(self, bits: int = 4, scale: str = "unbiased", center: bool = False, rotate: bool = True,
                 seed: int = 12345):
        self.bits = bits
        self.scale = scale
        self.center = center
        self.rotate = rotate
        self.seed = seed
        self._check_params()

    def _check_params(self) -> None:
        if not 1 <= int(self.bits) <= 8:
            raise SpecError(f"EDEN{self.bits}: FAISS's EDEN codes 1 to 8 bits per dimension")
        if self.scale not in _EDEN_SCALES:
            raise SpecError(f"EDEN{self.bits}:scale={self.scale}: scale must be one of {', '.join(_EDEN_SCALES)}")

    @property
    def learns_from_data(self) -> bool:  # type: ignore[override]
        """Only ``center=true`` learns (the calibration mean); the rotation is drawn from the seed."""
        return bool(self.center)

    def _new_index(self, dim: int) -> faiss.IndexEDEN:
        return faiss.IndexEDEN(dim, IP, int(self.bits), _EDEN_SCALES[self.scale])

    def _train_on(self, X: np.ndarray) -> np.ndarray:
        return X if self.center else np.zeros((1, X.shape[1]), np.float32)

    @property
    def overhead_bytes(self) -> int:
        if not hasattr(self, "index_"):
            return 0
        return super().overhead_bytes + faiss.vector_to_array(self.index_.center).nbytes
