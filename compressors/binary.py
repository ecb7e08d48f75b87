"""Binary quantization: one bit per dimension, searched by Hamming distance, with options.

Default (``BIN``): the bit is the sign, and codes equal sentence-transformers'
``quantize_embeddings(precision="ubinary")`` (``np.packbits`` of ``x > 0``). Search binarises the
query too and ranks by Hamming distance with FAISS's ``IndexBinaryFlat``; scores are reported as
the cosine of the ±1 vectors, ``1 - 2·hamming/d``, which is also what the codes decode to
(±1/sqrt(d)) for pair similarity.

Options:

* ``threshold=median``: the bit is ``x > median`` with per-dimension medians learned at fit (so
  every bit is balanced on the calibration data); the d float32 medians are overhead, and queries
  are binarised with the same thresholds.
* ``score=asym``: no query binarisation; documents are ranked by the inner product of the float
  query with the decoded ±1/sqrt(d) vector.
* ``rescore=<multiplier>`` (0 = off) with ``rescore_with=F32`` (default) or ``SQ8``: each code row
  also stores a higher-precision copy of the vector after the bits (4·d bytes for F32, d for SQ8,
  whose ranges count as overhead). Search fetches the top k × multiplier by the bits (Hamming or
  asym) and re-ranks them by the inner product of the float query with the copy; ``decode``
  returns the copy. Such a row stores more than float32 with F32 (the usual deployment keeps the
  bits in memory and the copy on disk); the byte count says so honestly.
"""
from __future__ import annotations

import numpy as np

from .base import Codec, SpecError
from .float import Float32
from .registry import register
from .scalar import ScalarQuantizer
from .searchers import DecodeFlatSearcher, HammingSearcher, Searcher

_THRESHOLDS = ("zero", "median")
_SCORES = ("hamming", "asym")
_COPIES = {"F32": Float32, "SQ8": ScalarQuantizer}
#: Float32 values handled per block while rescoring candidates (bounds the memory of a search).
_RESCORE_BLOCK = 1 << 22


@register
class Binary(Codec):
    spec_format = "BIN"
    family = "binary"
    summary = "one bit per dimension (sign or median), Hamming or asymmetric search, optional rescoring copy"

    def __init__(self, threshold: str = "zero", score: str = "hamming", rescore: int = 0,
                 rescore_with: str = "F32"):
        self.threshold = threshold
        self.score = score
        self.rescore = rescore
        self.rescore_with = rescore_with
        self._check_params()

    def _check_params(self) -> None:
        if self.threshold not in _THRESHOLDS:
            raise SpecError(f"BIN:threshold={self.threshold}: threshold must be one of {', '.join(_THRESHOLDS)}")
        if self.score not in _SCORES:
            raise SpecError(f"BIN:score={self.score}: score must be one of {', '.join(_SCORES)}")
        if isinstance(self.rescore, bool) or not isinstance(self.rescore, (int, np.integer)) or self.rescore < 0:
            raise SpecError(f"BIN:rescore={self.rescore}: rescore must be a whole multiplier >= 0 (0 = off)")
        if self.rescore_with not in _COPIES:
            raise SpecError(f"BIN:rescore_with={self.rescore_with}: the rescoring copy must be one of "
                            f"{', '.join(_COPIES)}")
        if self.rescore_with != "F32" and self.rescore == 0:
            raise SpecError(f"BIN:rescore_with={self.rescore_with} needs rescore=<multiplier> "
                            "(the copy is stored only for rescoring)")

    @property
    def learns_from_data(self) -> bool:  # type: ignore[override]
        """Sign bits learn nothing; a median threshold or a trained rescoring copy (SQ8) do."""
        return self.threshold == "median" or (self.rescore > 0 and self._copy_codec().learns_from_data)

    @property
    def scores_inner_product(self) -> bool:  # type: ignore[override]
        """Rescored results carry the copy's inner product; Hamming and asymmetric sign scores
        are similarities of their own."""
        return self.rescore > 0

    @property
    def stores_rescoring_copy(self) -> bool:
        return self.rescore > 0

    def _copy_codec(self) -> Codec:
        return _COPIES[self.rescore_with]()

    def code_size(self, dim: int) -> int:
        bits = -(-dim // 8)
        return bits + (self._copy_codec().code_size(dim) if self.rescore else 0)

    def fit(self, X: np.ndarray) -> "Binary":
        self.dim_ = X.shape[1]
        self.thresholds_ = np.median(X, axis=0).astype(np.float32) if self.threshold == "median" else None
        self.copy_ = self._copy_codec().fit(X) if self.rescore else None
        if self.threshold == "median" or self.copy_ is not None and self.copy_.needs_fit:
            self.n_train_ = X.shape[0]
        return self

    @property
    def overhead_bytes(self) -> int:
        if not hasattr(self, "dim_"):
            return 0
        medians = self.thresholds_.nbytes if self.thresholds_ is not None else 0
        return medians + (self.copy_.overhead_bytes if self.copy_ is not None else 0)

    @property
    def _bit_bytes(self) -> int:
        return -(-self.dim_ // 8)

    def binarize(self, X: np.ndarray) -> np.ndarray:
        """Packed bits (n, ceil(d/8)) of ``x > threshold``, the same for documents and queries."""
        X = np.asarray(X)
        return np.packbits(X > (0 if self.thresholds_ is None else self.thresholds_), axis=-1)

    def encode(self, X: np.ndarray) -> np.ndarray:
        bits = self.binarize(X)
        return bits if self.copy_ is None else np.hstack([bits, self.copy_.encode(X)])

    def signs(self, codes: np.ndarray) -> np.ndarray:
        """The ±1/sqrt(d) vectors of the bit part of the codes (unit norm)."""
        bits = np.unpackbits(np.asarray(codes, dtype=np.uint8)[:, : self._bit_bytes], axis=-1)[:, : self.dim_]
        return (bits.astype(np.float32) * 2.0 - 1.0) / np.float32(np.sqrt(self.dim_))

    def decode(self, codes: np.ndarray) -> np.ndarray:
        if self.copy_ is not None:
            return self.copy_.decode(np.asarray(codes, dtype=np.uint8)[:, self._bit_bytes:])
        return self.signs(codes)

    def _bit_searcher(self, codes: np.ndarray) -> Searcher:
        if self.score == "asym":
            return DecodeFlatSearcher(self.signs(codes))
        bits = np.asarray(codes, dtype=np.uint8)[:, : self._bit_bytes]
        medians = 0 if self.thresholds_ is None else self.thresholds_.nbytes
        return HammingSearcher(bits, self.binarize, self.dim_, medians)

    def searcher(self, codes):
        """Hamming search (FAISS's ``IndexBinaryFlat`` over the bits), or for ``score=asym`` the
        float query against the decoded signs (``decode+flat``); with a rescoring copy, the
        candidates are re-ranked by the copy (``+rescore``)."""
        bits = self._bit_searcher(codes)
        return bits if self.copy_ is None else RescoreSearcher(self, bits, codes)


class RescoreSearcher(Searcher):
    """Top k x multiplier by the bits, re-ranked by the inner product of the float query with the
    candidates' rescoring copy (only the candidates are decoded)."""

    def __init__(self, codec: Binary, bits: Searcher, codes: np.ndarray):
        self.codec, self.bits, self.codes = codec, bits, np.asarray(codes, dtype=np.uint8)
        self.kernel, self.ntotal = f"{bits.kernel}+rescore", bits.ntotal

    @property
    def nbytes(self) -> int:
        copy_bytes = self.codes.shape[0] * (self.codes.shape[1] - self.codec._bit_bytes)
        copy = self.codec.copy_                 # never None: a searcher with a copy rescores
        return self.bits.nbytes + int(copy_bytes) + (int(copy.overhead_bytes) if copy is not None else 0)

    def search(self, Q, k):
        c, codes, dim = self.codec, self.codes, self.codec.dim_
        Q = np.ascontiguousarray(Q, dtype=np.float32)
        _, cand = self.bits.search(Q, k * c.rescore)
        k = min(k, cand.shape[1])
        scores = np.empty((len(Q), k), np.float32)
        ids = np.empty((len(Q), k), np.int64)
        block = max(1, _RESCORE_BLOCK // max(1, cand.shape[1] * dim))
        for s in range(0, len(Q), block):
            cb = cand[s:s + block]
            X = c.decode(codes[cb.ravel()]).reshape(*cb.shape, dim)
            sc = np.einsum("qjd,qd->qj", X, Q[s:s + block])
            order = np.argsort(-sc, axis=1, kind="stable")[:, :k]
            scores[s:s + block] = np.take_along_axis(sc, order, 1)
            ids[s:s + block] = np.take_along_axis(cb, order, 1)
        return scores, ids
