"""Each first compressor on real MiniLM embeddings of scifact: byte accounting, fidelity,
agreement with sentence-transformers and FAISS, and refusal of impossible specs."""
import faiss
import numpy as np
import pytest

from compressors import SpecError, parse_spec
from compressors.base import knn_inner_product
from conftest import quantize_embeddings

SPECS = ["F32", "F16", "SQ8", "SQ4", "SQ2", "BIN", "PCA64", "PCA128,SQ8", "PQ16x8", "PQ48x8", "PCA64,PQ8x8"]


@pytest.mark.parametrize("spec", SPECS)
def test_declared_bytes_equal_stored_bytes(spec, corpus_vectors):
    pipe = parse_spec(spec).fit(corpus_vectors)
    codes = pipe.encode(corpus_vectors)
    assert codes.dtype == np.uint8
    assert codes.shape == (len(corpus_vectors), pipe.bytes_per_vector())
    assert codes.nbytes == len(corpus_vectors) * pipe.bytes_per_vector()
    decoded = pipe.decode(codes)
    assert decoded.shape == corpus_vectors.shape and decoded.dtype == np.float32


def test_expected_sizes():
    sizes = {"F32": 1536, "F16": 768, "SQ8": 384, "SQ4": 192, "SQ2": 96, "BIN": 48, "PCA128,SQ8": 128,
             "PQ16x8": 16, "PCA64": 256, "PCA128,PQ16x8": 16}
    for spec, size in sizes.items():
        assert parse_spec(spec).bytes_per_vector(384) == size, spec


def test_overhead_counts_ranges_matrices_and_codebooks(corpus_vectors):
    assert parse_spec("SQ8").fit(corpus_vectors).overhead_bytes == 2 * 384 * 4
    assert parse_spec("PCA64").fit(corpus_vectors).overhead_bytes == (64 * 384 + 384) * 4
    assert parse_spec("PQ16x8").fit(corpus_vectors).overhead_bytes == 384 * 256 * 4
    assert parse_spec("PCA64,SQ8").fit(corpus_vectors).overhead_bytes == (64 * 384 + 384) * 4 + 2 * 64 * 4


def test_int8_codes_equal_sentence_transformers(corpus_vectors):
    pipe = parse_spec("SQ8").fit(corpus_vectors)
    codes = pipe.encode(corpus_vectors)
    ranges = pipe.codec.ranges_
    st_u8 = quantize_embeddings(corpus_vectors, precision="uint8", ranges=ranges)
    st_i8 = quantize_embeddings(corpus_vectors, precision="int8", ranges=ranges)
    np.testing.assert_array_equal(codes, st_u8)
    np.testing.assert_array_equal(codes.astype(np.int16) - 128, st_i8.astype(np.int16))
    # ranges learned from the corpus are the same ones sentence-transformers calibrates
    np.testing.assert_array_equal(ranges, np.vstack([corpus_vectors.min(0), corpus_vectors.max(0)]))


def test_binary_codes_equal_sentence_transformers(corpus_vectors):
    codes = parse_spec("BIN").fit(corpus_vectors).encode(corpus_vectors)
    np.testing.assert_array_equal(codes, quantize_embeddings(corpus_vectors, precision="ubinary"))
    np.testing.assert_array_equal(codes.astype(np.int16) - 128,
                                  quantize_embeddings(corpus_vectors, precision="binary").astype(np.int16))


def test_int8_reconstruction_and_correct_scoring(corpus_vectors, query_vectors):
    pipe = parse_spec("SQ8").fit(corpus_vectors)
    codes = pipe.encode(corpus_vectors)
    rec = pipe.decode(codes)
    cos = np.einsum("ij,ij->i", rec, corpus_vectors) / np.linalg.norm(rec, axis=1)
    assert cos.min() >= 0.99
    _, exact = knn_inner_product(query_vectors, corpus_vectors, 10)
    _, ours = pipe.search(codes, query_vectors, 10)
    # the raw int8·int8 dot product that sentence-transformers users get ranks worse
    q_i8 = quantize_embeddings(query_vectors, precision="int8", ranges=pipe.codec.ranges_).astype(np.float32)
    raw = q_i8 @ (codes.astype(np.float32) - 128).T
    naive = np.argsort(-raw, axis=1)[:, :10]
    overlap = lambda a: np.mean([len(set(x) & set(y)) / 10 for x, y in zip(a, exact)])
    assert overlap(ours) >= 0.9
    assert overlap(ours) > overlap(naive)


def test_binary_search_is_hamming(corpus_vectors, query_vectors):
    pipe = parse_spec("BIN").fit(corpus_vectors)
    codes = pipe.encode(corpus_vectors)
    scores, ids = pipe.search(codes, query_vectors, 20)
    qb = np.unpackbits(pipe.encode(query_vectors), axis=1).astype(int)
    cb = np.unpackbits(codes, axis=1).astype(int)
    hamming = (qb[:, None, :] != cb[None, :, :]).sum(-1)
    np.testing.assert_allclose(scores, 1 - 2 * np.take_along_axis(hamming, ids, 1) / 384, atol=1e-6)
    assert (np.diff(scores, axis=1) <= 1e-7).all()


def test_pq_equals_faiss_indexpq(corpus_vectors, query_vectors):
    pipe = parse_spec("PQ16x8").fit(corpus_vectors)
    codes = pipe.encode(corpus_vectors)
    ref = faiss.IndexPQ(384, 16, 8, faiss.METRIC_INNER_PRODUCT)
    ref.pq.cp.seed = 1234
    ref.pq.cp.min_points_per_centroid = 1
    ref.train(corpus_vectors)
    ref.add(corpus_vectors)
    np.testing.assert_array_equal(codes, faiss.vector_to_array(ref.codes).reshape(len(corpus_vectors), 16))
    d_ref, i_ref = ref.search(query_vectors, 10)
    d, i = pipe.search(codes, query_vectors, 10)
    np.testing.assert_array_equal(i, i_ref)
    np.testing.assert_allclose(d, d_ref, rtol=1e-5)
    assert pipe.n_train == len(corpus_vectors)
    assert any("please provide at least 9984 training points" in w for w in pipe.fit_warnings)


def test_pq_recall_rises_with_m(corpus_vectors, query_vectors):
    _, exact = knn_inner_product(query_vectors, corpus_vectors, 10)
    recalls = []
    for m in (8, 32, 96):
        pipe = parse_spec(f"PQ{m}x4").fit(corpus_vectors)
        _, ids = pipe.search(pipe.encode(corpus_vectors), query_vectors, 10)
        recalls.append(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, exact)]))
    assert recalls[0] < recalls[1] < recalls[2], recalls


def test_pca_search_ranks_like_reconstruction(corpus_vectors, query_vectors):
    pipe = parse_spec("PCA64").fit(corpus_vectors)
    codes = pipe.encode(corpus_vectors)
    _, ids = pipe.search(codes, query_vectors, 10)
    _, ids_rec = knn_inner_product(query_vectors, pipe.decode(codes), 10)
    assert np.mean(ids == ids_rec) > 0.98


def test_deterministic(corpus_vectors):
    for spec in ("PCA64,SQ8", "PQ16x8", "BIN"):
        a = parse_spec(spec).fit(corpus_vectors).encode(corpus_vectors)
        b = parse_spec(spec).fit(corpus_vectors).encode(corpus_vectors)
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("spec, message", [
    ("SQ3", "supports 8, 4, 2 bits"),
    ("PQ7x8", "do not split into 7 equal sub-vectors"),
    ("PQ16x20", "nbits must be between 1 and 16"),
    ("PCA512", "more dimensions than they have"),
    ("PCA0", "at least 1"),
    ("SQ8,PCA64", "must come last"),
    ("SQ8:foo=1", "has no option 'foo'"),
    ("SQ8:pct=abc", "must be a float"),
    ("SQ8:pct=60", "must be in [0, 50)"),
    ("XYZ", "unknown compressor stage 'XYZ'"),
    ("PCA64,,SQ8", "empty stage"),
    ("", "empty compressor spec"),
])
def test_invalid_specs_are_refused_with_a_reason(spec, message):
    with pytest.raises(SpecError) as err:
        parse_spec(spec).check_dim(384)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_nan_vectors_are_refused(corpus_vectors):
    bad = corpus_vectors.copy()
    bad[3, 7] = np.nan
    with pytest.raises(SpecError, match="NaN"):
        parse_spec("SQ8").fit(bad)


def test_assume_finite_skips_the_scan_only_inside_its_context(corpus_vectors):
    from compressors import config_context
    pipe = parse_spec("F32").fit(corpus_vectors)
    bad = corpus_vectors.copy()
    bad[0, 0] = np.nan
    with config_context(assume_finite=True):
        assert np.isnan(pipe.decode(pipe.encode(bad))[0, 0])      # validated elsewhere: not scanned
    with pytest.raises(SpecError, match="NaN"):
        pipe.encode(bad)
    codes = pipe.encode(corpus_vectors)                            # F32 codes never alias the input
    assert not np.shares_memory(codes, corpus_vectors)


def test_nan_in_a_later_encode_block_is_refused(corpus_vectors, monkeypatch):
    import compressors.pipeline
    monkeypatch.setattr(compressors.pipeline, "ENCODE_BLOCK_ROWS", 64)
    pipe = parse_spec("PCA64,SQ8").fit(corpus_vectors)
    bad = np.vstack([corpus_vectors] * 2)
    bad[len(bad) - 5, 0] = np.inf
    with pytest.raises(SpecError, match=r"NaN or infinite values in 1 of \d+ rows \(rows \d+ to \d+\)"):
        pipe.encode(bad)


# Fraction of code bytes allowed to differ: none, except where a matrix product comes first
# (BLAS and sparse products round the last bit differently for another row count, which can move a value across a
# quantization level) or the codes hold floats (RaBitQ's per-vector factors).
BLOCK_CASES = [("F32", 0), ("F16", 0), ("BF16", 0), ("SQ4", 0), ("BIN:threshold=median:rescore=2", 0), ("HASH128:k=2,F16", 1e-3),
               ("PQ16x8", 0), ("RQ4x8", 1e-3), ("TOPK32:values=int8", 0), ("HYB64:high=int8:low=int4", 0),
               ("LSQ4x4:train_iters=2", 0), ("PCA64,SQ8", 1e-3), ("ROT,SQ4", 1e-3), ("OPQ8,PQ8x8", 1e-3),
               ("ITQ128", 1e-3), ("RABITQ", 0.01)]


@pytest.mark.parametrize("spec,allowed", BLOCK_CASES)
def test_block_wise_encode_equals_encoding_all_rows_at_once(spec, allowed, corpus_vectors, monkeypatch):
    """Pipeline.encode goes block by block; every row-wise stage must give the codes of the whole
    batch, and a batch-dependent one (LSQ: 1 % of its codes change in blocks) is encoded in one piece."""
    import compressors.pipeline
    pipe = parse_spec(spec).fit(corpus_vectors)
    whole = pipe.codec.encode(pipe._forward(corpus_vectors))
    monkeypatch.setattr(compressors.pipeline, "ENCODE_BLOCK_ROWS", 100)
    blocks = pipe.encode(corpus_vectors)
    assert blocks.shape == whole.shape and blocks.dtype == whole.dtype
    differ = (blocks != whole).mean()
    assert differ <= allowed, f"{differ:.3%} of the code bytes differ"
    np.testing.assert_allclose(pipe.decode(blocks), pipe.decode(whole), atol=0.01)


def test_dimension_mismatch_is_refused(corpus_vectors):
    pipe = parse_spec("SQ8").fit(corpus_vectors)
    with pytest.raises(SpecError, match="fitted on 384-d"):
        pipe.encode(corpus_vectors[:, :100])
