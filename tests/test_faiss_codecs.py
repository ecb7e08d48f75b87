"""The FAISS-backed quantizers (OPQ, RQ, LSQ, RaBitQ, ITQ, LSH) on real MiniLM embeddings of
scifact: byte accounting, decoding, determinism, refusal of impossible parameters, and equality
with FAISS's own index classes on the same vectors and parameters, for these and for the
existing SQ8 and BIN stages. Sizes are small (nbits 4 to 6, few iterations) to keep training fast."""
import pickle

import faiss
import numpy as np
import pytest

from compressors import SpecError, parse_spec
from compressors.base import knn_inner_product

D = 384
IP = faiss.METRIC_INNER_PRODUCT
AQ = faiss.AdditiveQuantizer


@pytest.fixture(scope="module", autouse=True)
def _one_faiss_thread():
    """On 400 vectors threads buy nothing, and on a loaded machine FAISS's OpenMP barriers wait
    for descheduled threads (OPQ training measured 60x slower with 2 threads than with 1)."""
    saved = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(saved)


SPECS = ["OPQ16:nbits=4:niter=8,PQ16x4", "RQ4x6", "LSQ4x4:train_iters=2:encode_ils_iters=2",
         "RABITQ", "RABITQ:nbits=3", "ITQ64", "LSH128"]


@pytest.fixture(scope="module")
def fitted(corpus_vectors):
    """Each spec fitted twice on the same vectors (determinism), with its codes."""
    out = {}
    for spec in SPECS:
        a, b = parse_spec(spec).fit(corpus_vectors), parse_spec(spec).fit(corpus_vectors)
        out[spec] = (a, a.encode(corpus_vectors), b.encode(corpus_vectors))
    return out


@pytest.mark.parametrize("spec", SPECS)
def test_declared_bytes_decode_determinism(spec, fitted, corpus_vectors, query_vectors):
    pipe, codes, codes_again = fitted[spec]
    assert pipe.to_spec() == spec
    assert codes.dtype == np.uint8
    assert codes.shape == (len(corpus_vectors), pipe.bytes_per_vector())
    np.testing.assert_array_equal(codes, codes_again)           # deterministic given the seed
    assert pipe.n_train == len(corpus_vectors) or spec.startswith("LSH")
    decoded = pipe.decode(codes)
    assert decoded.shape == corpus_vectors.shape and decoded.dtype == np.float32
    cos = np.einsum("ij,ij->i", decoded, corpus_vectors) / np.linalg.norm(decoded, axis=1)
    assert cos.mean() > 0.4, cos.mean()                          # the decoded vector points the right way
    scores, ids = pipe.search(codes, query_vectors, 10)
    assert ids.shape == scores.shape == (len(query_vectors), 10)
    assert (np.diff(scores, axis=1) <= 1e-6).all()
    _, exact = knn_inner_product(query_vectors, corpus_vectors, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, exact)])
    assert recall > 0.3, recall                                  # random ids: 0.025


def test_code_sizes_are_faiss_sa_code_size():
    sizes = {"RQ8x8": 8, "RQ4x6": 3, "RQ16x4": 8, "LSQ8x8": 8, "LSQ4x4": 2, "RABITQ": 48 + 8,
             "RABITQ:nbits=4": 48 + 12 + 144 + 8, "ITQ256": 32, "LSH256": 32, "LSH100": 13,
             "OPQ16,PQ16x8": 16, "OPQ32,PQ32x4": 16}
    for spec, size in sizes.items():
        assert parse_spec(spec).bytes_per_vector(D) == size, spec
    # inner-product search reads no norm: a norm encoding would add bytes that are never used
    with_norm = faiss.IndexResidualQuantizer(D, 8, 8, IP, AQ.ST_norm_float).sa_code_size()
    assert with_norm == parse_spec("RQ8x8").bytes_per_vector(D) + 4
    assert faiss.IndexRaBitQ(D, IP, 4).sa_code_size() == parse_spec("RABITQ:nbits=4").bytes_per_vector(D)


def test_overhead_counts_matrices_and_codebooks(fitted):
    assert fitted["OPQ16:nbits=4:niter=8,PQ16x4"][0].overhead_bytes == D * D * 4 + 16 * 16 * (D // 16) * 4
    assert fitted["RQ4x6"][0].overhead_bytes == 4 * 64 * D * 4
    assert fitted["LSQ4x4:train_iters=2:encode_ils_iters=2"][0].overhead_bytes == 4 * 16 * D * 4
    assert fitted["RABITQ"][0].overhead_bytes == D * D * 4 + D * 4          # rotation + centre
    assert fitted["ITQ64"][0].overhead_bytes == 64 * D * 4 + D * 4          # projection + mean
    assert fitted["LSH128"][0].overhead_bytes == 128 * D * 4                # projection


@pytest.mark.parametrize("spec", ["ITQ64", "LSH128"])
def test_hashing_decode_cosine_is_the_hamming_score(spec, fitted, query_vectors):
    pipe, codes, _ = fitted[spec]
    nbits = pipe.codec.nbits
    dec = pipe.decode(codes[:50])
    np.testing.assert_allclose(np.linalg.norm(dec, axis=1), 1.0, atol=1e-5)
    bits = lambda c: np.unpackbits(c, axis=1).astype(int)
    hamming = (bits(codes[:50])[:, None, :] != bits(codes[:50])[None, :, :]).sum(-1)
    np.testing.assert_allclose(dec @ dec.T, 1 - 2 * hamming / nbits, atol=1e-5)


# ------------------------------------------------------------------ equality with FAISS's classes
def assert_same_search(ours, ref, what):
    (d, i), (d_ref, i_ref) = ours, ref
    np.testing.assert_array_equal(i, i_ref, err_msg=what)
    np.testing.assert_allclose(d, d_ref, rtol=1e-5, atol=1e-6, err_msg=what)


def test_opq_pq_equals_faiss_opq_matrix_and_index_pq(fitted, corpus_vectors, query_vectors):
    spec = "OPQ16:nbits=4:niter=8,PQ16x4"
    pipe, codes, _ = fitted[spec]
    opq = faiss.OPQMatrix(D, 16)
    opq.niter = 8
    opq.pq = faiss.ProductQuantizer(D, 16, 4)       # OPQ's internal PQ with the codec's nbits
    ref = faiss.IndexPreTransform(opq, faiss.IndexPQ(D, 16, 4, IP))
    ref.train(corpus_vectors)
    ref.add(corpus_vectors)
    np.testing.assert_array_equal(codes, ref.sa_encode(corpus_vectors))
    assert_same_search(pipe.search(codes, query_vectors, 10), ref.search(query_vectors, 10), spec)
    rotation = faiss.vector_to_array(pipe.transforms[0].opq_.A).reshape(D, D)
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(D), atol=1e-4)   # inner products preserved


def test_default_opq_pq_equals_faiss_index_factory(corpus_vectors, query_vectors, capfd):
    # index_factory's "PQ16" relabels the centroids for polysemous search (slow to train; other
    # code values); "PQ16np" is the plain IndexPQ, as ours. niter cut from 50 for time.
    pipe = parse_spec("OPQ16:niter=4,PQ16x8").fit(corpus_vectors)
    assert "please provide" not in capfd.readouterr().err              # recorded, not printed
    assert len(pipe.fit_warnings) == 2                                  # OPQ's PQ and the PQ itself
    codes = pipe.encode(corpus_vectors)
    ref = faiss.index_factory(D, "OPQ16,PQ16np", IP)
    faiss.downcast_VectorTransform(ref.chain.at(0)).niter = 4
    ref.train(corpus_vectors)
    ref.add(corpus_vectors)
    np.testing.assert_array_equal(codes, ref.sa_encode(corpus_vectors))
    assert_same_search(pipe.search(codes, query_vectors, 10), ref.search(query_vectors, 10), "OPQ16,PQ16np")


def test_rq_equals_faiss_index_residual_quantizer(fitted, corpus_vectors, query_vectors):
    pipe, codes, _ = fitted["RQ4x6"]
    ref = faiss.IndexResidualQuantizer(D, 4, 6, IP, AQ.ST_LUT_nonorm)
    ref.rq.max_beam_size = 1
    ref.train(corpus_vectors)
    ref.add(corpus_vectors)
    np.testing.assert_array_equal(codes, ref.sa_encode(corpus_vectors))
    assert_same_search(pipe.search(codes, query_vectors, 10), ref.search(query_vectors, 10), "RQ4x6")
    # the LUT scores are the inner products with the decoded vectors
    scores, ids = pipe.search(codes, query_vectors, 10)
    rec = pipe.decode(codes)
    np.testing.assert_allclose(scores, np.take_along_axis(query_vectors @ rec.T, ids, 1), atol=1e-4)


def test_lsq_equals_faiss_index_local_search_quantizer(fitted, corpus_vectors, query_vectors):
    pipe, codes, _ = fitted["LSQ4x4:train_iters=2:encode_ils_iters=2"]
    ref = faiss.IndexLocalSearchQuantizer(D, 4, 4, IP, AQ.ST_LUT_nonorm)
    ref.lsq.train_iters, ref.lsq.encode_ils_iters, ref.lsq.random_seed = 2, 2, 1234
    ref.train(corpus_vectors)
    np.testing.assert_array_equal(faiss.vector_to_array(ref.lsq.codebooks),
                                  faiss.vector_to_array(pipe.codec.index_.lsq.codebooks))
    ref.add_sa_codes(codes)
    assert_same_search(pipe.search(codes, query_vectors, 10), ref.search(query_vectors, 10), "LSQ")


@pytest.mark.parametrize("spec, nbits", [("RABITQ", 1), ("RABITQ:nbits=3", 3)])
def test_rabitq_equals_faiss_rotation_plus_index_rabitq(spec, nbits, fitted, corpus_vectors, query_vectors):
    pipe, codes, _ = fitted[spec]
    rotation = faiss.RandomRotationMatrix(D, D)
    rotation.init(1234)
    ref = faiss.IndexPreTransform(rotation, faiss.IndexRaBitQ(D, IP, nbits))
    faiss.downcast_index(ref.index).qb = 8
    ref.train(corpus_vectors)
    ref.add(corpus_vectors)
    np.testing.assert_array_equal(codes, ref.sa_encode(corpus_vectors))
    assert_same_search(pipe.search(codes, query_vectors, 10), ref.search(query_vectors, 10), spec)


def test_itq_equals_faiss_index_factory(fitted, corpus_vectors, query_vectors):
    pipe, codes, _ = fitted["ITQ64"]
    ref = faiss.index_factory(D, "ITQ64,LSH")
    ref.train(corpus_vectors)
    ref.add(corpus_vectors)
    np.testing.assert_array_equal(codes, ref.sa_encode(corpus_vectors))
    scores, ids = pipe.search(codes, query_vectors, 10)
    hamming_ref, ids_ref = ref.search(query_vectors, 10)
    np.testing.assert_array_equal(np.rint((1 - scores) * 64 / 2), hamming_ref)
    np.testing.assert_array_equal(ids, ids_ref)


def test_lsh_equals_faiss_index_lsh(fitted, corpus_vectors, query_vectors):
    pipe, codes, _ = fitted["LSH128"]
    ref = faiss.IndexLSH(D, 128, True, False)         # FAISS's rotation seed (5) is LSH's default
    ref.add(corpus_vectors)
    np.testing.assert_array_equal(codes, ref.sa_encode(corpus_vectors))
    scores, ids = pipe.search(codes, query_vectors, 10)
    hamming_ref, ids_ref = ref.search(query_vectors, 10)
    np.testing.assert_array_equal(np.rint((1 - scores) * 128 / 2), hamming_ref)
    np.testing.assert_array_equal(ids, ids_ref)
    # ITQ learns what LSH draws at random: better neighbours for the same bits
    _, exact = knn_inner_product(query_vectors, corpus_vectors, 10)

    def recall(spec):
        p = parse_spec(spec).fit(corpus_vectors)
        _, found = p.search(p.encode(corpus_vectors), query_vectors, 10)
        return np.mean([len(set(a) & set(b)) for a, b in zip(found, exact)])
    assert recall("ITQ128") > recall("LSH128")


def test_sq8_equals_faiss_index_scalar_quantizer(corpus_vectors, query_vectors):
    pipe = parse_spec("SQ8").fit(corpus_vectors)
    codes = pipe.encode(corpus_vectors)
    ref = faiss.IndexScalarQuantizer(D, faiss.ScalarQuantizer.QT_8bit, IP)
    lo, hi = pipe.codec.ranges_
    faiss.copy_array_to_vector(np.concatenate([lo, hi - lo]).astype(np.float32), ref.sq.trained)
    ref.is_trained = True
    ref.add(corpus_vectors)
    faiss_codes = ref.sa_encode(corpus_vectors)
    # FAISS codes floor(255·(x − vmin)/vdiff), we code floor((x − vmin)/(vdiff/255)): the same
    # level except where float32 rounding of the two orders of operations straddles a level
    # boundary, which moves a code by exactly one level.
    diff = np.abs(codes.astype(int) - faiss_codes.astype(int))
    assert diff.max() <= 1 and diff.mean() < 1e-3, (diff.max(), diff.mean())
    # Scoring is the same: both decode a level to the middle of its bucket, vmin + (c + 0.5)·vdiff/255,
    # and rank a float query against it, so on FAISS's own codes our search is FAISS's search.
    np.testing.assert_allclose(pipe.decode(faiss_codes), ref.sa_decode(faiss_codes), atol=1e-6)
    d_ref, i_ref = ref.search(query_vectors, 10)
    assert_same_search(pipe.search(faiss_codes, query_vectors, 10), (d_ref, i_ref), "SQ8 on FAISS's codes")
    # On our codes a score moves by at most sum_j |q_j|·step_j over the dimensions whose level differs.
    d, i = pipe.search(codes, query_vectors, 10)
    bound = (np.abs(query_vectors) * pipe.codec.step_) @ (diff > 0).T.astype(np.float32)   # (queries, docs)
    assert np.all(np.abs(d - d_ref) <= bound.max(axis=1, keepdims=True) + 1e-6)
    assert np.mean(i == i_ref) >= 0.98                       # at most a near-tied pair swaps


def test_bin_equals_faiss_binary_flat_and_sign_lsh(corpus_vectors, query_vectors):
    pipe = parse_spec("BIN").fit(corpus_vectors)
    codes = pipe.encode(corpus_vectors)
    scores, ids = pipe.search(codes, query_vectors, 10)
    ref = faiss.IndexBinaryFlat(D)
    ref.add(codes)
    hamming_ref, ids_ref = ref.search(pipe.encode(query_vectors), 10)
    np.testing.assert_array_equal(ids, ids_ref)
    np.testing.assert_array_equal(np.rint((1 - scores) * D / 2), hamming_ref)
    # FAISS's own sign binarisation (IndexLSH without rotation) packs the same bits, low bit first
    sign = faiss.IndexLSH(D, D, False, False)
    sign.add(corpus_vectors)
    np.testing.assert_array_equal(np.packbits(np.unpackbits(codes, axis=1), axis=1, bitorder="little"),
                                  sign.sa_encode(corpus_vectors))
    hamming_lsh, ids_lsh = sign.search(query_vectors, 10)
    np.testing.assert_array_equal(hamming_lsh, hamming_ref)
    np.testing.assert_array_equal(ids_lsh, ids)


# ------------------------------------------------------------------ refusals, warnings, pickling
@pytest.mark.parametrize("spec, message", [
    ("OPQ7,PQ7x8", "do not split into 7 equal sub-vectors"),
    ("OPQ16:nbits=0,PQ16x8", "nbits must be between 1 and 16"),
    ("OPQ16:niter=0,PQ16x8", "niter must be at least 1"),
    ("RQ0x8", "m must be at least 1"),
    ("RQ8x17", "nbits must be between 1 and 16"),
    ("RQ8x8:beam=0", "beam size must be at least 1"),
    ("LSQ8x20", "nbits must be between 1 and 16"),
    ("LSQ8x8:train_iters=0", "must be at least 1"),
    ("RABITQ:nbits=10", "1 to 9 bits"),
    ("RABITQ:qb=9", "0 (float32) to 8 bits"),
    ("ITQ512", "cannot give more bits than the 384 dimensions"),
    ("ITQ64:niter=0", "niter must be at least 1"),
    ("LSH0", "at least 1"),
    ("LSH16384", "more than float32"),
])
def test_impossible_params_are_refused(spec, message):
    with pytest.raises(SpecError) as err:
        parse_spec(spec).check_dim(D)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("spec, message", [
    ("RQ4x8", "needs at least 256 training vectors"),
    ("LSQ4x8", "needs at least 256 training vectors"),
    ("OPQ16,PQ16x4", "needs at least 256 training vectors"),
    ("ITQ128", "needs at least 128 calibration vectors"),
])
def test_too_small_training_sets_are_refused(spec, message, corpus_vectors):
    with pytest.raises(SpecError, match=message):
        parse_spec(spec).fit(corpus_vectors[:100])


def test_rq_records_faiss_warning_instead_of_printing(corpus_vectors, capfd):
    pipe = parse_spec("RQ2x8").fit(corpus_vectors)
    assert "please provide" not in capfd.readouterr().err
    assert pipe.fit_warnings == [f"FAISS: clustering {len(corpus_vectors)} points to 256 centroids: "
                                 "please provide at least 9984 training points"]
    assert parse_spec("RQ2x3").fit(corpus_vectors).fit_warnings == []     # 400 >= 39 * 8


@pytest.mark.parametrize("spec", SPECS)
def test_fitted_stages_pickle(spec, fitted, corpus_vectors, query_vectors):
    pipe, codes, _ = fitted[spec]
    again = pickle.loads(pickle.dumps(pipe))
    np.testing.assert_array_equal(again.encode(corpus_vectors), codes)
    np.testing.assert_array_equal(again.decode(codes[:50]), pipe.decode(codes[:50]))
    np.testing.assert_array_equal(again.search(codes, query_vectors, 5)[1], pipe.search(codes, query_vectors, 5)[1])


def test_kmeans_iterations_reach_faiss(corpus_vectors):
    """PQ's and RQ's ``niter`` and OPQ's ``niter_pq_0`` are FAISS's own settings, passed through."""
    pq = parse_spec("PQ8x4:niter=1").fit(corpus_vectors)
    ref = faiss.IndexPQ(D, 8, 4, IP)
    ref.pq.cp.niter = 1
    ref.train(corpus_vectors)
    np.testing.assert_array_equal(pq.encode(corpus_vectors), ref.sa_encode(corpus_vectors))
    assert not np.array_equal(pq.encode(corpus_vectors), parse_spec("PQ8x4").fit(corpus_vectors).encode(corpus_vectors))
    rq = parse_spec("RQ2x6:niter=3").fit(corpus_vectors)
    assert rq.codec.index_.rq.cp.niter == 3 and parse_spec("RQ2x6").fit(corpus_vectors).codec.index_.rq.cp.niter == 10
    opq = parse_spec("OPQ8:niter=2:niter_pq_0=3,PQ8x8").fit(corpus_vectors)
    assert opq.transforms[0].opq_.niter_pq_0 == 3
