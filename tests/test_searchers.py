"""Search kernels (compressors/searchers.py) and their measurement (embpress/speed.py), on synthetic
vectors: every kernel gives the results of the reference it replaces (decode the corpus, exact
float inner products; Hamming distances; the integer dot product), PQ{m}x4fs equals FAISS's own
IndexPQFastScan, and measure_search returns consistent figures."""
import faiss
import numpy as np
import pytest

from compressors import Pipeline, SpecError, parse_spec
from compressors.base import Codec
from compressors.searchers import GEMM_MIN_QUERIES
from embpress.speed import SPEED_COLUMNS, RssPeak, measure_search

D, N, K = 64, 3000, 10
IP = faiss.METRIC_INNER_PRODUCT


@pytest.fixture(scope="module", autouse=True)
def _one_faiss_thread():
    saved = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(saved)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    # anisotropic, like embeddings: a few strong directions, then noise
    X = rng.standard_normal((N, D)).astype(np.float32) * np.linspace(2, 0.2, D, dtype=np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    Q = rng.standard_normal((2 * GEMM_MIN_QUERIES, D)).astype(np.float32)
    return X, Q


def fitted(spec, X):
    pipe = parse_spec(spec).fit(X)
    return pipe, pipe.encode(X)


def check_against(scores, ids, ref_scores_all, rtol=1e-5):
    """The returned scores are the reference scores of the returned ids, and they are the top k."""
    got = np.take_along_axis(ref_scores_all, ids, 1)
    scale = np.abs(ref_scores_all).max()
    np.testing.assert_allclose(scores, got, atol=rtol * scale)
    best = -np.sort(-ref_scores_all, axis=1)[:, :ids.shape[1]]
    np.testing.assert_allclose(scores, best, atol=rtol * scale)
    assert ids.dtype == np.int64 and scores.dtype == np.float32


KERNELS = {"F32": "IndexFlatIP|torch.mm", "F16": "IndexScalarQuantizer(fp16)", "BF16": "IndexScalarQuantizer(bf16)",
           "SQ8": "IndexScalarQuantizer(8bit)", "SQ4": "IndexScalarQuantizer(4bit)",
           "SQ4:pct=2.0": "IndexScalarQuantizer(4bit)", "PCA30,SQ4": "IndexScalarQuantizer(4bit)",
           "PQ16x8": "IndexPQ", "PQ16x4": "IndexPQ", "RQ4x6": "IndexResidualQuantizer(LUT)",
           "LSQ2x6:train_iters=2:encode_ils_iters=2": "IndexLocalSearchQuantizer(LUT)",
           "SQ2": "decode+flat", "HYB8": "decode+flat", "TOPK16": "decode+flat", "BIN:score=asym": "decode+flat",
           "ROT,SQ8": "IndexScalarQuantizer(8bit)"}


@pytest.mark.parametrize("spec", list(KERNELS))
def test_kernel_equals_decode_then_flat(spec, data):
    """Float-query kernels score the transformed query against the decoded vector, as decoding
    the corpus and searching it exactly does; both batch paths (FAISS scan, matrix product)."""
    X, Q = data
    pipe, codes = fitted(spec, X)
    searcher = pipe.searcher(codes)
    assert searcher.kernel == KERNELS[spec]
    Qt = pipe.transform_query(Q)
    ref = Qt @ pipe.codec.decode(codes).T
    for nq in (1, GEMM_MIN_QUERIES - 1, len(Q)):
        check_against(*searcher.search(Q[:nq], K), ref[:nq])
    scores, ids = pipe.search(codes, Q, K)                      # Pipeline.search goes through it
    np.testing.assert_array_equal(ids, searcher.search(Q, K)[1])


def test_bytes_searched(data):
    X, _ = data
    for spec, expected in [("F32", N * 4 * D), ("SQ8", N * D + 2 * 4 * D), ("F16", N * 2 * D),
                           ("BIN", N * D // 8), ("PQ16x8", N * 16 + 256 * D * 4),
                           ("SQ2", N * 4 * D)]:                 # decode+flat holds the decoded floats
        pipe, codes = fitted(spec, X)
        assert pipe.searcher(codes).nbytes == expected, spec
    pipe, codes = fitted("PCA32,SQ8", X)
    assert pipe.searcher(codes).nbytes == N * 32 + 2 * 4 * 32 + pipe.transforms[0].overhead_bytes


def test_f32_kernel_reads_codes_in_place(data):
    X, Q = data
    pipe, codes = fitted("F32", X)
    searcher = pipe.searcher(codes)
    assert np.shares_memory(searcher.inner.X, codes)
    small, big = searcher.search(Q[:2], K), searcher.search(Q, K)
    np.testing.assert_array_equal(small[1], big[1][:2])
    np.testing.assert_allclose(small[0], big[0][:2], rtol=1e-5)


def test_k_larger_than_corpus(data):
    X, Q = data
    for spec in ("F32", "SQ8", "PQ16x4fs", "BIN"):
        pipe, codes = fitted(spec, X[:300])
        scores, ids = pipe.search(codes[:20], Q, 50)
        assert ids.shape == (len(Q), 20) and (ids >= 0).all(), spec
        assert sorted(ids[0]) == list(range(20)), spec


@pytest.mark.parametrize("spec", ["BIN", "BIN:threshold=median", "ITQ32", "LSH48"])
def test_hamming_kernel(spec, data):
    X, Q = data
    pipe, codes = fitted(spec, X)
    searcher = pipe.searcher(codes)
    assert searcher.kernel == "IndexBinaryFlat"
    qbits = pipe.codec.binarize(Q) if spec.startswith("BIN") else pipe.codec.encode(Q)
    nbits = D if spec.startswith("BIN") else int(spec[3:])
    ham = np.unpackbits(qbits[:, None, :] ^ codes[None, :, :], axis=-1).sum(-1)
    check_against(*searcher.search(Q, K), 1.0 - 2.0 * ham.astype(np.float32) / nbits)


def test_rescoring_kernel(data):
    X, Q = data
    pipe, codes = fitted("BIN:rescore=4", X)
    searcher = pipe.searcher(codes)
    assert searcher.kernel == "IndexBinaryFlat+rescore"
    assert searcher.nbytes == N * (D // 8 + 4 * D)
    scores, ids = searcher.search(Q, K)
    np.testing.assert_allclose(scores, np.einsum("qkd,qd->qk", X[ids], Q), rtol=1e-5)
    _, cand = parse_spec("BIN").fit(X).searcher(codes[:, :D // 8]).search(Q, 4 * K)
    assert all(set(i) <= set(c) for i, c in zip(ids, cand))      # re-ranked from the bits' candidates


def test_raw_int8_kernel_is_the_integer_dot_product(data):
    X, Q = data
    pipe, codes = fitted("SQ8:score=raw", X)
    searcher = pipe.searcher(codes)
    assert searcher.kernel == "IndexScalarQuantizer(8bit_direct_signed)"
    q8 = pipe.codec.quantize(Q).astype(np.int64) - 128
    exact = q8 @ (codes.astype(np.int64) - 128).T
    scores, ids = searcher.search(Q, K)
    np.testing.assert_array_equal(scores, np.take_along_axis(exact, ids, 1).astype(np.float32))
    np.testing.assert_array_equal(scores, -np.sort(-exact, axis=1)[:, :K].astype(np.float32))
    assert searcher.nbytes == codes.nbytes                      # the codes as they are, no copy of another type


def test_pq_fast_scan_equals_faiss(data):
    """PQ{m}x4fs: the codes of PQ{m}x4 (same training), and the search of FAISS's IndexPQFastScan
    trained and filled by FAISS itself with the same parameters."""
    X, Q = data
    fs, codes = fitted("PQ16x4fs:niter=8", X)
    pq, codes_pq = fitted("PQ16x4:niter=8", X)
    np.testing.assert_array_equal(codes, codes_pq)
    assert fs.to_spec() == "PQ16x4fs:niter=8" and fs.bytes_per_vector() == 8
    ref = faiss.IndexPQFastScan(D, 16, 4, IP)
    ref.pq.cp.seed, ref.pq.cp.niter, ref.pq.cp.min_points_per_centroid = 1234, 8, 1
    ref.train(X)
    ref.add(X)
    searcher = fs.searcher(codes)
    assert searcher.kernel == "IndexPQFastScan"
    for nq in (1, len(Q)):
        scores, ids = searcher.search(Q[:nq], K)
        ref_scores, ref_ids = ref.search(Q[:nq], K)
        np.testing.assert_array_equal(ids, ref_ids)
        np.testing.assert_array_equal(scores, ref_scores)
    # its scores estimate the exact table scores of PQ16x4 (8-bit look-up tables)
    exact = Q @ pq.decode(codes).T
    got = np.take_along_axis(exact, ids, 1)
    assert np.abs(scores - got).max() < 0.05 * np.abs(exact).max()


def test_pq_fast_scan_in_chains_and_spec(data):
    X, Q = data
    pipe, codes = fitted("OPQ8:nbits=4:niter=2,PQ8x4fs:niter=4", X)
    assert pipe.searcher(codes).kernel == "IndexPQFastScan"
    _, ids = pipe.search(codes, Q, K)
    ref = Q @ pipe.decode(codes).T
    top = np.argsort(-ref, axis=1)[:, :K]
    assert np.mean([len(set(a) & set(b)) for a, b in zip(ids, top)]) / K > 0.8
    with pytest.raises(SpecError):
        parse_spec("PQ7x4fs").fit(X)                              # 64 dims do not split into 7


def test_codec_overriding_only_search_is_used():
    class OwnSearch(Codec):
        spec_format, kind = "OWN", "codec"

        def code_size(self, dim):
            return dim * 4

        def encode(self, X):
            return np.ascontiguousarray(X, dtype=np.float32).view(np.uint8)

        def search(self, codes, Q, k):
            return np.zeros((len(Q), k), np.float32), np.ones((len(Q), k), np.int64)

    pipe = Pipeline([OwnSearch()])
    codes = np.zeros((5, 16), np.uint8)
    searcher = pipe.searcher(codes)
    assert searcher.kernel == "OwnSearch.search"
    assert (searcher.search(np.zeros((2, 4), np.float32), 3)[1] == 1).all()


def test_measure_search(data):
    X, Q = data
    pipe, codes = fitted("SQ8", X)
    out = measure_search(pipe, codes, Q, K, repeats=3, single=30, warmup=2)
    scores, ids = out.pop("results")
    assert set(out) == set(SPEED_COLUMNS)
    np.testing.assert_array_equal(ids, pipe.search(codes, Q, K)[1])
    assert out["search_kernel"] == "IndexScalarQuantizer(8bit)"
    assert out["search_bytes"] == pipe.searcher(codes).nbytes
    assert 0 < out["latency_p50_ms"] <= out["latency_p99_ms"]
    assert out["search_qps"] == pytest.approx(len(Q) / out["search_s"])
    assert out["build_s"] > 0 and out["search_threads"] == 1 and out["speed_s"] > out["search_s"]
    assert out["search_rss_delta_bytes"] is None or out["search_rss_delta_bytes"] >= 0
    assert faiss.omp_get_max_threads() == 1                      # the thread setting is restored


def test_rss_peak_sees_an_allocation():
    """64 MiB of fresh pages (an anonymous map: never memory the allocator already holds), touched."""
    import mmap
    import time
    with RssPeak() as rss:
        block = mmap.mmap(-1, 64 << 20)
        for i in range(0, len(block), mmap.PAGESIZE):
            block[i] = 1
        time.sleep(0.02)
    block.close()
    if rss.delta is not None:                                   # Linux
        assert rss.delta >= 48 << 20


def test_gemm_kernel_in_corpus_chunks_equals_one_product(data, monkeypatch):
    """The matrix-product kernel merges per-chunk top-k lists: the same results as one product."""
    import compressors.searchers as S
    X, Q = data
    whole = S.gemm_topk(Q, X, K)
    monkeypatch.setattr(S, "GEMM_BLOCK_FLOATS", len(Q) * 700)           # 700-row chunks, a short last one
    monkeypatch.setattr(S, "GEMM_QUERY_BLOCK", 5)                       # and query blocks of 5
    chunked = S.gemm_topk(Q, X, K)
    np.testing.assert_array_equal(chunked[1], whole[1])
    np.testing.assert_allclose(chunked[0], whole[0], rtol=1e-5)
    check_against(*chunked, Q @ X.T)
