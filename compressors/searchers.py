"""Searchers: the stored codes made searchable once, then queried many times.

``Codec.searcher(codes)`` builds one (``Pipeline.searcher`` adds the query transforms); it holds
what a deployment keeps in memory to answer queries (the filled index: codes, codebooks, index
structures) and answers ``search(Q, k) -> (scores, ids)`` with the fastest kernel measured here
for that codec, never decoding the whole corpus except where a codec has no compressed-domain
kernel (``decode+flat``). Every searcher says which kernel it runs (``kernel``) and how many
bytes it searches (``nbytes``).

Kernels (measured on this machine, 200,000 x 384 vectors, top-100, one thread; see the README):

* float32 (``F32``, ``decode+flat``): FAISS's brute force (``faiss.knn``, the kernel of
  ``IndexFlatIP``) for fewer than ``GEMM_MIN_QUERIES`` queries, torch's matrix product + ``topk``
  for more: FAISS took 12-20 ms for one query against 32-49 ms for torch / numpy, but 2.5 s for 200
  queries against 0.55-0.75 s for torch (numpy's matmul + argpartition: 2.0 s). Both read the
  codes in place (a zero-copy float32 view).
* FAISS ``IndexScalarQuantizer`` (F16, BF16, SQ8, SQ4 and ``SQ8:score=raw`` as
  ``QT_8bit_direct_signed``), ``IndexBinaryFlat`` (BIN, ITQ, LSH), ``IndexPQ``,
  ``IndexPQFastScan`` (``PQ{m}x4fs``), ``IndexRaBitQ``, ``IndexResidualQuantizer`` /
  ``IndexLocalSearchQuantizer`` (look-up tables): each filled with the stored codes as they are.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable

import faiss
import numpy as np

#: Batches of at least this many queries go through a matrix product (torch) rather than FAISS's
#: brute-force scan (measured crossover between 4 and 8 queries at 200k x 384, one thread).
GEMM_MIN_QUERIES = 8
#: float32 scores held at once by the matrix-product kernel (256 MiB): the corpus goes in chunks
#: beyond it (200 queries x 200k: one product; at 64 MiB, three chunks, measured 22 % slower).
GEMM_BLOCK_FLOATS = 1 << 26
#: Queries per matrix product (bounds the chunk of corpus rows from below).
GEMM_QUERY_BLOCK = 1024


def as_codes(codes: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(codes, dtype=np.uint8)


class Searcher:
    """What a deployment searches: built once from the codes, queried with ``search(Q, k)``.

    Scores are higher-is-better estimates of the inner product of the (transformed) query with
    the decoded vector (Hamming codecs: ``1 - 2·hamming/nbits``); ids are int64 row numbers."""

    kernel: str = ""
    ntotal: int = 0

    @property
    def nbytes(self) -> int:
        """Bytes of what is searched: codes, codebooks, index structures."""
        raise NotImplementedError

    def search(self, Q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError


def _torch_threads():
    """torch, with its intra-op threads set to FAISS's (the one thread setting the harness pins)."""
    import torch
    n = faiss.omp_get_max_threads()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return torch


def gemm_topk(Q: np.ndarray, X: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k inner products by torch's matrix product and ``topk``; ``X`` is read in place and
    once per block of ``GEMM_QUERY_BLOCK`` queries: the corpus goes in chunks of rows such that a
    chunk's scores hold at most ``GEMM_BLOCK_FLOATS`` floats, each chunk's top k is kept and the
    kept candidates are merged (blocking the queries instead reads the whole corpus once per
    block: measured 25-33 % slower at 200 queries x 200k)."""
    torch = _torch_threads()
    scores = np.empty((len(Q), k), np.float32)
    ids = np.empty((len(Q), k), np.int64)
    with warnings.catch_warnings():       # read-only (memory-mapped) corpus or queries: only read
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        Xt = torch.from_numpy(X)
        for q0 in range(0, len(Q), GEMM_QUERY_BLOCK):
            Qb = torch.from_numpy(Q[q0:q0 + GEMM_QUERY_BLOCK])
            rows = max(k, GEMM_BLOCK_FLOATS // len(Qb))
            kept = [(v, i + c0) for c0 in range(0, len(X), rows)
                    for v, i in [torch.topk(Qb @ Xt[c0:c0 + rows].T, min(k, len(X) - c0), dim=1)]]
            if len(kept) == 1:
                v, i = kept[0]
            else:
                v, j = torch.topk(torch.cat([v for v, _ in kept], 1), k, dim=1)
                i = torch.gather(torch.cat([i for _, i in kept], 1), 1, j)
            scores[q0:q0 + len(Qb)], ids[q0:q0 + len(Qb)] = v.numpy(), i.numpy()
    return scores, ids


class FlatSearcher(Searcher):
    """Exact inner-product search over a float32 matrix (read in place, never copied)."""

    def __init__(self, X: np.ndarray, kernel: str = "IndexFlatIP|torch.mm"):
        self.X = np.ascontiguousarray(X, dtype=np.float32)
        self.ntotal = len(self.X)
        self.kernel = kernel

    @property
    def nbytes(self) -> int:
        return self.X.nbytes

    def search(self, Q, k):
        Q = np.ascontiguousarray(Q, dtype=np.float32)
        k = min(k, self.ntotal)
        if len(Q) < GEMM_MIN_QUERIES:
            return faiss.knn(Q, self.X, k, metric=faiss.METRIC_INNER_PRODUCT)
        return gemm_topk(Q, self.X, k)


class DecodeFlatSearcher(FlatSearcher):
    """For a codec with no compressed-domain kernel: the corpus decoded once to float32 (which is
    then what is held and searched), and exact float search."""

    def __init__(self, decoded: np.ndarray):
        super().__init__(decoded, "decode+flat")


class FaissSearcher(Searcher):
    """A FAISS index filled with the stored codes (``index`` may be an ``IndexPreTransform``);
    ``extra_bytes``: state outside the index's code store that the search reads (codebooks,
    rotations), ``prepare``: maps float queries to what the index takes."""

    #: A filled index that ``index`` wraps without owning it (kept alive with the searcher).
    filled: Any = None

    def __init__(self, index, kernel: str, extra_bytes: int = 0, prepare: Callable | None = None):
        self.index = index
        self.kernel = kernel
        self.ntotal = int(index.ntotal)
        self.extra_bytes = int(extra_bytes)
        self.prepare = prepare

    @property
    def nbytes(self) -> int:
        return index_code_bytes(self.index) + self.extra_bytes

    def search(self, Q, k):
        Q = np.ascontiguousarray(Q, dtype=np.float32)
        if self.prepare is not None:
            Q = self.prepare(Q)
        return self.index.search(Q, min(k, self.ntotal))


def index_code_bytes(index) -> int:
    """Bytes of the code store of a filled FAISS index (flat codes or fast-scan blocks)."""
    if isinstance(index, faiss.IndexPreTransform):
        index = faiss.downcast_index(index.index)
    return int(index.codes.size())


def filled_faiss_index(trained, codes: np.ndarray):
    """An empty clone of the trained FAISS index holding the stored codes (``add_sa_codes``)."""
    index = faiss.clone_index(trained)
    index.add_sa_codes(as_codes(codes))
    return index


def scalar_quantizer_index(d: int, qtype: int, codes: np.ndarray, trained: np.ndarray | None = None):
    """``IndexScalarQuantizer`` (inner product) of type ``qtype`` holding ``codes``; ``trained``:
    FAISS's trained vector (per-dimension ``vmin`` then ``vdiff``), for the types that have one."""
    index = faiss.IndexScalarQuantizer(d, qtype, faiss.METRIC_INNER_PRODUCT)
    if trained is not None:
        faiss.copy_array_to_vector(np.ascontiguousarray(trained, dtype=np.float32).ravel(), index.sq.trained)
    index.is_trained = True
    index.add_sa_codes(as_codes(codes))
    return index


class HammingSearcher(Searcher):
    """``IndexBinaryFlat`` over packed bits; ``binarize`` maps float queries to packed bits.
    Scores are the cosine of the ±1 vectors, ``1 - 2·hamming/nbits``."""

    kernel = "IndexBinaryFlat"

    def __init__(self, bits: np.ndarray, binarize: Callable, nbits: int, extra_bytes: int = 0):
        bits = as_codes(bits)
        self.index = faiss.IndexBinaryFlat(bits.shape[1] * 8)
        self.index.add(bits)
        self.binarize, self.nbits = binarize, nbits
        self.ntotal = len(bits)
        self.extra_bytes = int(extra_bytes)

    @property
    def nbytes(self) -> int:
        return int(self.index.xb.size()) + self.extra_bytes

    def search(self, Q, k):
        qbits = as_codes(self.binarize(np.ascontiguousarray(Q, dtype=np.float32)))
        hamming, ids = self.index.search(qbits, min(k, self.ntotal))
        return 1.0 - 2.0 * hamming.astype(np.float32) / self.nbits, ids


class CallSearcher(Searcher):
    """For a codec that overrides ``search`` without a ``searcher``: calls it with the codes."""

    def __init__(self, codec, codes: np.ndarray):
        self.codec, self.codes = codec, codes
        self.ntotal = len(codes)
        self.kernel = f"{type(codec).__name__}.search"

    @property
    def nbytes(self) -> int:
        return int(self.codes.nbytes) + int(self.codec.overhead_bytes)

    def search(self, Q, k):
        return self.codec.search(self.codes, Q, k)


class PipelineSearcher(Searcher):
    """A codec's searcher behind the pipeline's query transforms (whose matrices count as bytes)."""

    def __init__(self, pipe, inner: Searcher):
        self.pipe, self.inner = pipe, inner
        self.kernel, self.ntotal = inner.kernel, inner.ntotal

    @property
    def nbytes(self) -> int:
        return self.inner.nbytes + sum(int(t.overhead_bytes) for t in self.pipe.transforms)

    def search(self, Q, k):
        return self.inner.search(self.pipe.transform_query(Q), k)
