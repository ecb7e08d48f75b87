"""The compressor interface: stages (transforms and codecs) and the pipeline that chains them.

A *stage* follows scikit-learn's estimator conventions: every parameter is an explicit
constructor argument stored under the same name, ``get_params`` returns them, ``fit`` learns
from calibration vectors and returns ``self``, and every other method is pure.

* A :class:`Transform` maps float32 vectors to float32 vectors (PCA, rotations, truncation).
* A :class:`Codec` turns float32 vectors into stored codes: a ``uint8`` array of shape
  ``(n, code_size)``, so the bytes a deployment stores per vector are exactly
  ``codes.shape[1]`` and nothing is hidden in Python objects. Fixed state (codebooks, ranges,
  matrices) is reported by ``overhead_bytes``.

A :class:`~compressors.pipeline.Pipeline` is zero or more transforms followed by one codec; it is
what a spec string such as ``"PCA128,SQ8"`` names (see :mod:`compressors.spec`). This module imports
nothing else of the package but the search kernels (``searchers``); ``registry``, ``pipeline`` and
``spec`` build on it.
"""
from __future__ import annotations

import inspect
import string
import threading
from contextlib import contextmanager
from typing import Any, ClassVar, Self

import faiss
import numpy as np

from .searchers import CallSearcher, DecodeFlatSearcher, FaissSearcher, filled_faiss_index


class SpecError(ValueError):
    """A spec string, parameter or chain that cannot work; the message is one readable line."""


class Stage:
    """Base of every transform and codec."""

    #: Spec token template, e.g. ``"PCA{n_components}"`` or ``"PQ{m}x{nbits}"``. Fields name
    #: constructor parameters; other parameters appear as ``:name=value`` options.
    spec_format: ClassVar[str] = ""
    #: "transform" or "codec".
    kind: ClassVar[str] = ""
    #: One line for ``embpress list`` and the README.
    summary: ClassVar[str] = ""
    #: Technique family, used to group results (e.g. "scalar", "pq", "pca").
    family: ClassVar[str] = ""
    _param_defaults_cache: ClassVar[dict[str, Any] | None] = None

    # ---- scikit-learn style parameters -------------------------------------------------
    @classmethod
    def param_defaults(cls) -> dict[str, Any]:
        """Constructor parameters and their defaults, in signature order (cached per class)."""
        cached = cls.__dict__.get("_param_defaults_cache")
        if cached is None:
            sig = inspect.signature(cls.__init__)
            cached = {p.name: p.default for p in sig.parameters.values()
                      if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
            cls._param_defaults_cache = cached
        return dict(cached)

    @classmethod
    def _param_names(cls) -> list[str]:
        return list(cls.param_defaults())

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> "Stage":
        names = set(self._param_names())
        for key, value in params.items():
            if key not in names:
                raise SpecError(f"{type(self).__name__} has no parameter {key!r} "
                                f"(parameters: {', '.join(sorted(names))})")
            setattr(self, key, value)
        self._check_params()
        return self

    def clone(self) -> "Stage":
        """An unfitted copy with the same parameters."""
        return type(self)(**self.get_params())

    def _check_params(self) -> None:
        """Raise SpecError for a parameter value that can never work (called by __init__)."""

    def check_dim(self, dim: int) -> None:
        """Raise SpecError if this stage cannot take ``dim``-dimensional input."""

    #: True when transforming / encoding a block of rows gives those rows of the whole input's
    #: result (up to the last-bit rounding of matrix products, which BLAS blocks by row count),
    #: so ``Pipeline.encode`` may go block by block. A stage whose codes depend on the batch
    #: (LSQ draws its search perturbations for the whole batch from one seed) sets it to False.
    rowwise = True

    # ---- fitting ------------------------------------------------------------------------
    def fit(self, X: np.ndarray) -> Self:
        return self

    #: True when the fitted state depends on the calibration vectors' values (PCA's basis, SQ's
    #: ranges, codebooks, a centre): such a stage can memorise what it was fitted on, so the grid
    #: cross-fits it (no vector is scored by a model that saw it). A stage that only draws from a
    #: seed and reads the input width (RP, ROT, LSH, HASH, MRL, F16...) says False and is fitted
    #: once ("oblivious"). True by default: a new stage that forgets to say is cross-fitted, which
    #: is never wrong, only slower. A stage whose answer depends on its parameters overrides it
    #: with a property (BIN: a median threshold or a trained rescoring copy learn).
    learns_from_data: ClassVar[bool] = True

    @property
    def needs_fit(self) -> bool:
        """True for stages whose ``fit`` records anything (learned or drawn state, the width)."""
        return type(self).fit is not Stage.fit

    @property
    def overhead_bytes(self) -> int:
        """Bytes of fixed state a deployment stores once (codebooks, ranges, matrices)."""
        return 0

    @property
    def n_train(self) -> int | None:
        return getattr(self, "n_train_", None)

    @property
    def fit_warnings(self) -> list[str]:
        return list(getattr(self, "fit_warnings_", []))

    def info(self) -> dict[str, Any]:
        """Extra figures for the result row after fitting (e.g. explained variance, collision rate)."""
        return {}

    def to_spec(self) -> str:
        return format_stage(self)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    # ---- pickling (the fitted-compressor cache stores fitted stages) ---------------------
    def __getstate__(self) -> dict[str, Any]:
        return {k: faiss_to_blob(v) for k, v in self.__dict__.items()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update({k: blob_to_faiss(v) for k, v in state.items()})

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.get_params() == other.get_params()

    def __hash__(self) -> int:
        return hash((type(self).__name__, tuple(sorted(self.get_params().items()))))


class Transform(Stage):
    kind = "transform"

    def output_dim(self, dim: int) -> int:
        return dim

    def transform(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def transform_query(self, Q: np.ndarray) -> np.ndarray:
        """Map queries so that inner products with transformed vectors rank like the originals.

        Linear transforms that centre the data skip the centring for queries: the mean term is
        constant per query and does not change the ranking.
        """
        return self.transform(Q)

    def query_offset(self, Q: np.ndarray) -> np.ndarray:
        """The per-query constant that ``transform_query`` leaves out of the inner product (PCA:
        q·mean): zero for a transform that drops none. Ranking within one fit never needs it;
        scores of two fits (cross-fitted folds) are only comparable with it added back."""
        return np.zeros(len(Q), dtype=np.float32)

    def inverse_transform(self, Z: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class Codec(Stage):
    kind = "codec"

    #: True when ``search`` scores estimate the inner product of the (transformed) query with the
    #: decoded vector. False for similarities of their own (Hamming's 1 - 2h/n, sign agreement),
    #: which are already on one scale for every fit and take no per-query offset.
    scores_inner_product: ClassVar[bool] = True

    @property
    def score_scale(self) -> float:
        """Factor that turns ``search`` scores into inner-product units (1 for float scores; an
        integer score such as ``SQ8:score=raw`` is in units of its fitted step squared)."""
        return 1.0

    @property
    def stores_rescoring_copy(self) -> bool:
        """True when each code row deliberately carries a higher-precision copy of the vector
        for re-ranking (e.g. ``BIN:rescore=4``), so storing more than float32 is intended."""
        return False

    def code_size(self, dim: int) -> int:
        """Bytes stored per vector for ``dim``-dimensional input (codes plus per-vector extras)."""
        raise NotImplementedError

    def encode(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def encode_into(self, X: np.ndarray, out: np.ndarray) -> None:
        """Write the codes of ``X`` into ``out`` (uint8, (n, code_size)); codecs whose codes are a
        plain cast of the input (F32, F16) override it to skip the temporary."""
        out[...] = self.encode(X)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def searcher(self, codes: np.ndarray):
        """The codes made searchable, once (a :class:`compressors.searchers.Searcher`: the filled
        index, ``search(Q, k)``, ``kernel``, ``nbytes``).

        Default: the corpus decoded to float32 and searched exactly (``decode+flat``). Codecs with
        a compressed-domain kernel (FAISS's scalar-quantizer, Hamming, look-up-table indexes)
        override this; a codec that overrides only ``search`` is called through it."""
        if type(self).search is not Codec.search:
            return CallSearcher(self, codes)
        return DecodeFlatSearcher(self.decode(codes))

    def search(self, codes: np.ndarray, Q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product of float queries against the stored codes: (scores, ids)."""
        if type(self).searcher is Codec.searcher:      # no kernel of its own (or a subclass's super())
            return DecodeFlatSearcher(self.decode(codes)).search(Q, k)
        return self.searcher(codes).search(Q, k)


class FaissBlob:
    """A FAISS object serialised with FAISS's own writer (SWIG objects do not pickle)."""

    def __init__(self, kind: str, data: np.ndarray):
        self.kind, self.data = kind, data


def faiss_to_blob(value: Any) -> Any:
    if isinstance(value, faiss.Index):
        return FaissBlob("index", faiss.serialize_index(value))
    if isinstance(value, faiss.IndexBinary):
        return FaissBlob("binary", faiss.serialize_index_binary(value))
    if isinstance(value, faiss.VectorTransform):
        # FAISS serialises transforms only inside an index: wrap, serialise, unwrap on load.
        wrapper = faiss.IndexPreTransform(value, faiss.IndexFlatL2(value.d_out))
        return FaissBlob("transform", faiss.serialize_index(wrapper))
    return value


def blob_to_faiss(value: Any) -> Any:
    if not isinstance(value, FaissBlob):
        return value
    if value.kind == "index":
        return faiss.deserialize_index(value.data)
    if value.kind == "binary":
        return faiss.deserialize_index_binary(value.data)
    wrapper = faiss.deserialize_index(value.data)
    wrapper.own_fields = False          # the transform outlives its wrapper
    transform = faiss.downcast_VectorTransform(wrapper.chain.at(0))
    wrapper.chain.clear()
    return transform


def knn_inner_product(Q: np.ndarray, X: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product (FAISS's brute-force kernel); returns (scores, ids)."""
    Q = np.ascontiguousarray(Q, dtype=np.float32)
    X = np.ascontiguousarray(X, dtype=np.float32)
    k = min(k, X.shape[0])
    scores, ids = faiss.knn(Q, X, k, metric=faiss.METRIC_INNER_PRODUCT)
    return scores, ids


#: FAISS's k-means asks for at least this many training points per centroid.
FAISS_MIN_POINTS_PER_CENTROID = 39


def kmeans_warnings(n: int, k: int) -> list[str]:
    """FAISS's "too few training points" warning for k-means of n points into k centroids.

    FAISS prints it to stderr; stages set ``cp.min_points_per_centroid = 1`` to silence it and
    record this line in ``fit_warnings_`` instead, so it reaches the result row."""
    if n >= FAISS_MIN_POINTS_PER_CENTROID * k:
        return []
    return [f"FAISS: clustering {n} points to {k} centroids: please provide at least "
            f"{FAISS_MIN_POINTS_PER_CENTROID * k} training points"]


class FaissCodec(Codec):
    """A codec whose fitted state is a trained FAISS index ``index_``, used through FAISS's
    standalone-codec API: codes straight from ``sa_encode``, ``sa_decode`` to decode, and search
    by an empty clone of the trained index that takes the stored codes (``add_sa_codes``), built
    once per set of codes (``searcher``).

    ``pretransform_`` (optional) is a FAISS ``VectorTransform`` applied first (e.g. a random
    rotation): encoding and decoding then go through FAISS's ``IndexPreTransform``, and search
    wraps the filled clone in one (an ``IndexPreTransform`` cannot take codes itself)."""

    pretransform_: Any = None
    index_: Any       # set by fit

    def _chain(self, index):
        return index if self.pretransform_ is None else faiss.IndexPreTransform(self.pretransform_, index)

    def encode(self, X: np.ndarray) -> np.ndarray:
        return self._chain(self.index_).sa_encode(np.ascontiguousarray(X, dtype=np.float32))

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return self._chain(self.index_).sa_decode(np.ascontiguousarray(codes, dtype=np.uint8))

    #: The ``search_kernel`` name of the filled index (default: its FAISS class name).
    kernel_name = ""

    def searcher(self, codes):
        index = filled_faiss_index(self.index_, codes)   # trained clone: only codebooks are copied
        searcher = FaissSearcher(self._chain(index), self.kernel_name or type(index).__name__, self.overhead_bytes)
        searcher.filled = index                          # the chain does not own it: keep it alive
        return searcher


def index_dtype(dim: int, what: str) -> np.dtype:
    """The narrowest unsigned integer that stores a dimension index of ``dim``-d vectors."""
    if dim <= 1 << 8:
        return np.dtype(np.uint8)
    if dim <= 1 << 16:
        return np.dtype("<u2")
    raise SpecError(f"{what} stores dimension indices in at most 16 bits; {dim} dimensions are too many")


def row_space_isometry(M: np.ndarray) -> np.ndarray:
    """A (d, k) matrix V with orthonormal columns spanning the row space of the (k, d) map M:
    the polar factor of Mᵀ (V = W Uᵀ for M = U S Wᵀ).

    Decoding reduced vectors z = Mx as V z keeps their inner products exactly (VᵀV = I), so
    similarity on decoded vectors is the similarity of the reduced vectors themselves, as
    when a user compares randomly projected or hashed vectors directly."""
    U, _, Wt = np.linalg.svd(np.asarray(M, dtype=np.float64), full_matrices=False)
    return (Wt.T @ U.T).astype(np.float32)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of row i of a with row i of b."""
    num = np.einsum("ij,ij->i", a, b)
    return num / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


def check_matrix(X: np.ndarray, what: str = "vectors") -> np.ndarray:
    """``X`` as an array after the cheap checks: 2-d and floating point (no copy, no scan)."""
    X = np.asarray(X)
    if X.ndim != 2:
        raise SpecError(f"{what} must be a 2-d array (n, dim), got shape {X.shape}")
    if not np.issubdtype(X.dtype, np.floating):
        raise SpecError(f"{what} must be floating point, got {X.dtype}")
    return X


_CONFIG = threading.local()


def assume_finite() -> bool:
    return getattr(_CONFIG, "assume_finite", False)


@contextmanager
def config_context(*, assume_finite: bool):
    """As scikit-learn's ``config_context(assume_finite=...)``: inside it, input vectors are not
    scanned for NaN / inf. For callers that validated the data once where it entered (the grid
    runner: embeddings are checked when computed and checksummed when loaded, ``.npy`` files when
    read), so that an encode costs what the raw FAISS / numpy call costs. Per thread."""
    before = getattr(_CONFIG, "assume_finite", False)
    _CONFIG.assume_finite = bool(assume_finite)
    try:
        yield
    finally:
        _CONFIG.assume_finite = before


def as_float32_matrix(X: np.ndarray, what: str = "vectors") -> np.ndarray:
    """``X`` as a C-contiguous float32 matrix; SpecError for a wrong shape or dtype, NaN or inf
    (the NaN / inf scan is skipped inside ``config_context(assume_finite=True)``)."""
    X = np.ascontiguousarray(check_matrix(X, what), dtype=np.float32)
    if not assume_finite() and not np.isfinite(X).all():
        bad = int((~np.isfinite(X)).any(axis=1).sum())
        raise SpecError(f"{what} contain NaN or infinite values in {bad} of {X.shape[0]} rows")
    return X


# ---------------------------------------------------------------------------- a stage's spec token
def _format_fields(fmt: str) -> list[str]:
    return [f for _, f, _, _ in string.Formatter().parse(fmt) if f]


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def format_stage(stage: Stage) -> str:
    """The stage's spec token: its format with the fields filled, then ``:name=value`` for every
    other parameter that differs from its default (the grammar: :mod:`compressors.spec`)."""
    params = stage.get_params()
    fields = _format_fields(stage.spec_format)
    head = stage.spec_format.format(**{f: params[f] for f in fields})
    defaults = stage.param_defaults()
    opts = [f":{k}={_format_value(v)}" for k, v in params.items()
            if k not in fields and v != defaults.get(k)]
    return head + "".join(opts)
