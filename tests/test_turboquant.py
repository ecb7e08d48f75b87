"""TurboQuant (``TQ``) and EDEN (``EDEN``): byte accounting, parity with the FAISS indexes built
directly from the same parameters (codes, decoding and search results), round-trip error against
the papers' figures, data-obliviousness, the grid's budget solving, and the FAISS 1.15.1 EDEN
pitfall the README describes. Synthetic unit vectors with unequal per-dimension spreads (as real
embeddings have) keep these fast; the real scifact sample checks retrieval."""
import pickle

import faiss
import numpy as np
import pytest

from compressors import SpecError, parse_spec
from compressors.base import knn_inner_product
from embpress.grid import solve_budget

D = 384
IP = faiss.METRIC_INNER_PRODUCT
SQ = faiss.ScalarQuantizer
#: Lloyd-Max distortion of a unit-variance Gaussian at 1 to 4 bits (the coordinates of a rotated
#: unit vector, scaled by sqrt(d)): the MSE of b-bit TurboQuant-MSE on unit vectors (paper, Thm 1).
LLOYD_MAX = {1: 0.3634, 2: 0.1175, 3: 0.03454, 4: 0.009497}


@pytest.fixture(scope="module", autouse=True)
def _one_faiss_thread():
    saved = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(saved)


def unit_vectors(n, d=D, seed=0, spread=3.0):
    """Unit vectors whose dimensions have spreads from 0.05 to ``spread`` (anisotropic)."""
    rs = np.random.RandomState(seed)
    X = (rs.randn(n, d) * np.geomspace(0.05, spread, d)).astype(np.float32)
    return X / np.linalg.norm(X, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def data():
    return unit_vectors(1500, seed=0), unit_vectors(100, seed=1)


def rotated(index, d=D, seed=12345):
    rr = faiss.RandomRotationMatrix(d, d)
    rr.init(seed)
    return faiss.IndexPreTransform(rr, index)


def test_code_sizes_are_faiss_sa_code_size():
    for bits in (2, 3, 4, 5):
        assert parse_spec(f"TQ{bits}").bytes_per_vector(D) == D * bits // 8 + 8          # + norm and gamma
        assert parse_spec(f"TQ{bits}").bytes_per_vector(D) == faiss.index_factory(D, f"SQtq{bits}").sa_code_size()
    for bits in (1, 2, 3, 4, 8):
        assert parse_spec(f"TQ{bits}:mse=true").bytes_per_vector(D) == D * bits // 8     # no norm stored
    for bits in range(1, 9):
        assert parse_spec(f"EDEN{bits}").bytes_per_vector(D) == D * bits // 8 + 8        # + scale factors
    assert parse_spec("RABITQ:nbits=2").bytes_per_vector(D) == 116


@pytest.mark.parametrize("spec", ["TQ1", "TQ6", "TQ5:mse=true", "TQ0:mse=true", "EDEN0", "EDEN9",
                                  "EDEN4:scale=optimal"])
def test_impossible_settings_are_refused(spec):
    with pytest.raises(SpecError):
        parse_spec(spec)


def _assert_same_as_faiss(pipe, ref, X, Q):
    """The stage's codes, decoded vectors and top-20 equal those of the trained FAISS index ``ref``."""
    codes = pipe.encode(X)
    np.testing.assert_array_equal(codes, ref.sa_encode(X))
    np.testing.assert_array_equal(pipe.decode(codes), ref.sa_decode(codes))
    ref.add(X)
    scores, ids = pipe.search(codes, Q, 20)
    ref_scores, ref_ids = ref.search(Q, 20)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_array_equal(scores, ref_scores)



@pytest.mark.parametrize("spec,factory", [("TQ2", "SQtq2"), ("TQ5", "SQtq5"), ("TQ1:mse=true", "SQtqmse1"),
                                          ("TQ4:mse=true", "SQtqmse4"), ("TQ8:mse=true", "SQtqmse8")])
def test_turboquant_equals_faiss_index_factory(spec, factory, data):
    """Codes, decoding and top-k equal index_factory's "RR384,<SQtq...>" trained and filled directly."""
    X, Q = data
    pipe = parse_spec(spec).fit(X)
    ref = faiss.index_factory(D, f"RR{D},{factory}", IP)
    ref.train(X)
    _assert_same_as_faiss(pipe, ref, X, Q)


def test_turboquant_without_rotation_is_the_bare_scalar_quantizer(data):
    X, Q = data
    pipe = parse_spec("TQ3:rotate=false").fit(X)
    ref = faiss.IndexScalarQuantizer(D, SQ.QT_3bit_tq, IP)
    ref.train(X)
    ref.add(X)
    np.testing.assert_array_equal(pipe.encode(X), ref.sa_encode(X))
    np.testing.assert_array_equal(pipe.search(pipe.encode(X), Q, 10)[1], ref.search(Q, 10)[1])


@pytest.mark.parametrize("spec,factory,zero_centre", [("EDEN1", "EDEN1", True), ("EDEN4", "EDEN4", True),
                                                      ("EDEN2:scale=biased", "EDEN2BIASED", True),
                                                      ("EDEN4:center=true", "EDEN4", False)])
def test_eden_equals_faiss_index_eden(spec, factory, zero_centre, data):
    """Default: IndexEDEN trained on a zero vector (as FAISS's own EDEN tests do); center=true is
    index_factory's "RR384,EDEN4" trained on the data (its centre is the calibration mean)."""
    X, Q = data
    pipe = parse_spec(spec).fit(X)
    ref = faiss.index_factory(D, f"RR{D},{factory}", IP)
    if zero_centre:
        ref = rotated(faiss.index_factory(D, factory, IP))
        ref.index.train(np.zeros((1, D), np.float32))
        ref.is_trained = True
    else:
        ref.train(X)
    _assert_same_as_faiss(pipe, ref, X, Q)


def test_oblivious_stages_give_the_same_codes_whatever_they_are_fitted_on(data):
    """Fitted on two unrelated sets (other spreads, other norms for the norm-storing ones), the
    oblivious stages encode alike; EDEN:center=true and RaBitQ learn a centre and do not."""
    X, _ = data
    other = unit_vectors(700, seed=5, spread=0.3)
    shifted = other + np.float32(0.2)
    for spec in ["TQ4", "TQ2", "TQ1:mse=true", "TQ4:mse=true", "EDEN1", "EDEN4", "EDEN3:scale=biased"]:
        fit_on = shifted if "mse" not in spec else other
        a, b = parse_spec(spec).fit(X), parse_spec(spec).fit(fit_on)
        assert not a.learns_from_data, spec
        np.testing.assert_array_equal(a.encode(X), b.encode(X), err_msg=spec)
    for spec in ["EDEN4:center=true", "RABITQ:nbits=3"]:
        a, b = parse_spec(spec).fit(X), parse_spec(spec).fit(shifted)
        assert a.learns_from_data, spec
        assert not np.array_equal(a.encode(X), b.encode(X)), spec


def test_mse_variant_refuses_vectors_that_are_not_unit():
    X = unit_vectors(200)
    with pytest.raises(SpecError, match="unit vectors"):
        parse_spec("TQ4:mse=true").fit(3 * X)
    pipe = parse_spec("TQ4:mse=true").fit(X)
    with pytest.raises(SpecError, match="norms 0.5 to 0.5"):
        pipe.encode(X / 2)
    parse_spec("TQ4").fit(3 * X).encode(X / 2)                  # the inner-product variant stores the norm


def _errors(spec, X, Y):
    pipe = parse_spec(spec).fit(X)
    dec = pipe.decode(pipe.encode(X))
    mse = float(((dec - X) ** 2).sum(axis=1).mean())
    ip = Y @ dec.T - Y @ X.T
    return mse, float(np.mean(ip ** 2)) * X.shape[1], float(ip.mean()), float(ip.std() / np.sqrt(ip.size))


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_round_trip_error_matches_the_papers(bits, data):
    """TurboQuant-MSE: the Lloyd-Max distortion, under the paper's bound sqrt(3)·pi/2·4^-b; EDEN's
    unbiased scale: D/(1-D) (vNMSE); EDEN's biased scale: D again."""
    X, Y = data
    D_b = LLOYD_MAX[bits]
    mse, _, bias, se = _errors(f"TQ{bits}:mse=true", X, Y)
    assert 0.9 * D_b < mse < 1.06 * D_b and mse < np.sqrt(3) * np.pi / 2 * 4.0 ** -bits, mse
    assert abs(bias) < 4 * se
    mse, _, bias, se = _errors(f"EDEN{bits}", X, Y)
    assert 0.9 * D_b / (1 - D_b) < mse < 1.06 * D_b / (1 - D_b), mse
    assert abs(bias) < 4 * se
    mse, _, _, _ = _errors(f"EDEN{bits}:scale=biased", X, Y)
    assert 0.9 * D_b < mse < 1.06 * D_b, mse
    # without the rotation the same code on these anisotropic vectors loses several times more
    assert _errors(f"TQ{bits}:mse=true:rotate=false", X, Y)[0] > 1.5 * _errors(f"TQ{bits}:mse=true", X, Y)[0]


@pytest.mark.parametrize("bits", [2, 3, 4, 5])
def test_inner_product_error_under_the_turboquant_bound(bits, data):
    """TurboQuant-prod: E[(<y,x~> - <y,x>)^2] <= sqrt(3)·pi^2·|y|^2/d·4^-b (Thm 2), no visible bias,
    and search scores are the decoded inner products."""
    X, Y = data
    _, ip_mse_d, bias, se = _errors(f"TQ{bits}", X, Y)
    assert ip_mse_d < np.sqrt(3) * np.pi ** 2 * 4.0 ** -bits, ip_mse_d
    assert abs(bias) < 4 * se
    pipe = parse_spec(f"TQ{bits}").fit(X)
    codes = pipe.encode(X)
    scores, ids = pipe.search(codes, Y, 50)
    decoded_ip = np.take_along_axis(Y @ pipe.decode(codes).T, ids, axis=1)
    np.testing.assert_allclose(scores, decoded_ip, atol=1e-5)


def test_overhead_is_the_rotation_and_faiss_trained_state(data):
    X, _ = data
    rotation = D * D * 4
    tq = parse_spec("TQ4").fit(X)
    assert tq.overhead_bytes == rotation + 4 * faiss.vector_to_array(tq.codec.index_.sq.trained).size
    assert parse_spec("TQ4:rotate=false").fit(X).overhead_bytes < 200       # codebook and QJL seed only
    eden = parse_spec("EDEN4").fit(X)
    assert eden.overhead_bytes == rotation + 4 * D + 4 * faiss.vector_to_array(eden.codec.index_.sq.trained).size


def test_fitted_stages_pickle_for_the_fit_cache(data):
    X, Q = data
    for spec in ["TQ3", "TQ2:mse=true", "EDEN2:center=true"]:
        pipe = parse_spec(spec).fit(X)
        again = pickle.loads(pickle.dumps(pipe))
        codes = pipe.encode(X)
        np.testing.assert_array_equal(again.encode(X), codes)
        np.testing.assert_array_equal(again.search(codes, Q, 10)[1], pipe.search(codes, Q, 10)[1])


def test_grid_solves_budgets_to_bit_widths():
    assert solve_budget("TQ{bits}", 200, D, {}) == ("TQ4", None)
    assert solve_budget("TQ{bits}:mse=true", 48, D, {}) == ("TQ1:mse=true", None)
    assert solve_budget("TQ{bits}:mse=true", 200, D, {}) == ("TQ4:mse=true", None)      # 192 B fills 96 %
    assert solve_budget("EDEN{bits}", 104, D, {}) == ("EDEN2", None)
    assert solve_budget("RABITQ:nbits={nbits}", 212, D, {}) == ("RABITQ:nbits=4", None)
    spec, why = solve_budget("TQ{bits}", 64, D, {})
    assert spec is None and "no TQ{bits} fits 64 B" in why


def test_eden_widths_differ_where_faiss_indexscalarquantizer_does_not():
    """The README's EDEN note: FAISS 1.15.1 takes QT_<b>bit_eden in an IndexScalarQuantizer, but
    codes the raw coordinates without EDEN's per-vector scale, so 4, 2 and 1 bits give the same
    ranking and cosine; IndexEDEN (the EDEN stage) improves with every bit. Isotropic unit vectors:
    their coordinates (about N(0, 1/384), |x| < 0.26) all fall in the codebooks' middle two cells."""
    X = np.random.RandomState(3).randn(300, D).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    cos = {}
    for bits in (1, 2, 4):
        bare = faiss.IndexScalarQuantizer(D, getattr(SQ, f"QT_{bits}bit_eden"), IP)
        bare.train(X)
        dec = bare.sa_decode(bare.sa_encode(X))
        cos[bits] = float(np.mean(np.einsum("ij,ij->i", dec, X) / np.linalg.norm(dec, axis=1)))
        levels = np.unique(np.concatenate([(bare.sa_encode(X) >> s) & ((1 << bits) - 1)
                                           for s in range(0, 8, bits)]))
        assert len(levels) == 2, (bits, levels)                   # only the two middle levels
    assert cos[1] == pytest.approx(cos[2], abs=1e-6) and cos[2] == pytest.approx(cos[4], abs=1e-6)
    stage = {b: _errors(f"EDEN{b}:rotate=false", X, X[:10])[0] for b in (1, 2, 4)}
    assert stage[1] > 3 * stage[2] > 9 * stage[4]


@pytest.mark.parametrize("spec", ["TQ4", "TQ3", "TQ2:mse=true", "EDEN4"])
def test_retrieval_on_real_embeddings(spec, corpus_vectors, query_vectors):
    pipe = parse_spec(spec).fit(corpus_vectors)
    codes = pipe.encode(corpus_vectors)
    assert codes.shape == (len(corpus_vectors), pipe.bytes_per_vector())
    _, ids = pipe.search(codes, query_vectors, 10)
    _, exact = knn_inner_product(query_vectors, corpus_vectors, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, exact)])
    assert recall > {"TQ4": 0.85, "TQ3": 0.75, "TQ2:mse=true": 0.65, "EDEN4": 0.85}[spec], recall
