"""The calibration protocol: cross-fitted folds (no vector scored by a fit that saw it), scores
merged on one scale, STS pairs kept whole, in-sample still available, amortised bytes."""
from __future__ import annotations

import json

import numpy as np
import pytest

from compressors import SpecError, parse_spec
from compressors.registry import stage_classes
from embpress.cells import CellTask, fit_cell
from embpress.fitcache import fit_cache_path
from embpress.protocol import (DEPLOYMENT_VECTORS, amortised_bytes, fold_of, merge_topk, parse_calibration,
                               encode_folds, search_folds, similarity_folds,
                               training_rows)

LEARNED = ["SQ8", "PCA16", "PCA16,SQ8", "PCA16:whiten=1,SQ8", "PQ8x8", "OPQ8,PQ8x8", "RQ4x8", "LSQ4x4",
           "VAR32,SQ8", "HYB16", "SQ4"]


def _unit(rng, n, d, shift=None):
    X = rng.standard_normal((n, d)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return X if shift is None else X + shift


@pytest.fixture
def task_files(tmp_path):
    """A CellTask whose vectors are real files (the fit cache keys on them)."""
    def make(X, calibration="crossfit:2"):
        path = tmp_path / f"corpus{len(list(tmp_path.iterdir()))}.npy"
        np.save(path, X)
        return CellTask(cell_id="t", model="m", dataset="d", dataset_label="d", compressor="X",
                        vectors=(("corpus", str(path)),), truth="", calibration=calibration, fit_cache=False)
    return make


def test_calibration_strings():
    assert parse_calibration("crossfit").label == "crossfit:2"
    assert parse_calibration("crossfit:5").folds == 5
    assert parse_calibration("sample:300").sample == 300 and parse_calibration("sample:300").kind == "crossfit"
    assert parse_calibration("corpus").label == "in-sample"
    assert parse_calibration("dataset:nfcorpus").label == "external"
    for bad in ("crossfit:1", "crossfit:x", "sample:0", "sample:-3", "everything", "file:"):
        with pytest.raises(SpecError):
            parse_calibration(bad)


def test_folds_are_stable_balanced_and_seeded():
    ids = [f"doc{i}" for i in range(4000)]
    folds = fold_of(ids, 2)
    assert set(folds) == {0, 1} and abs(folds.mean() - 0.5) < 0.03
    # a document keeps its fold whatever else the corpus holds
    assert np.array_equal(fold_of(ids[1000:1500], 2), folds[1000:1500])
    assert not np.array_equal(fold_of(ids, 2, seed=1), folds)
    assert np.bincount(fold_of(ids, 5), minlength=5).min() > 700
    rows = training_rows(folds, 0, None)
    assert set(folds[rows]) == {1}
    sample = training_rows(folds, 0, 100)
    assert len(sample) == 100 and set(folds[sample]) == {1}


def test_merge_is_the_topk_by_score_over_all_folds():
    rng = np.random.default_rng(1)
    scores = rng.standard_normal((7, 60)).round(1)       # rounded: many ties
    parts = []
    for f in range(3):
        cols = np.arange(f, 60, 3)
        order = np.argsort(-scores[:, cols], axis=1, kind="stable")[:, :10]
        parts.append((np.take_along_axis(scores[:, cols], order, 1), cols[order]))
    parts.append((np.full((7, 2), 9.0), np.full((7, 2), -1)))   # padding never wins
    merged_s, merged_i = merge_topk(parts, 10)
    for q in range(7):
        want = sorted(range(60), key=lambda j: (-scores[q, j], j))[:10]
        assert merged_i[q].tolist() == want
        assert np.allclose(merged_s[q], scores[q, want])
    # the merge does not depend on the order of the folds
    assert np.array_equal(merge_topk(parts[::-1], 10)[1], merged_i)


@pytest.mark.slow
@pytest.mark.parametrize("spec", LEARNED)
def test_shifted_mean_folds_merge_on_one_scale(spec):
    """Two folds with different means get different fits; the merged top-k must be the top-k of
    q·(each document decoded by its own fold's pipeline): PCA's dropped q·mean added back."""
    rng = np.random.default_rng(2)
    d, n = 64, 1200
    shift = np.zeros(d, np.float32)
    shift[:8] = 0.6
    X = np.concatenate([_unit(rng, n // 2, d), _unit(rng, n // 2, d, shift)])
    fold_ids = np.repeat([0, 1], n // 2).astype(np.int32)
    # each fold's pipeline is fitted on the *other* fold, whose mean differs
    pipes = [parse_spec(spec).fit(X[fold_ids != f]) for f in (0, 1)]
    Q = _unit(rng, 25, d) + 0.3 * shift
    ids = search_folds(pipes, fold_ids, encode_folds(pipes, fold_ids, X), Q, 20)
    decoded = np.empty_like(X)
    for f, pipe in enumerate(pipes):
        rows = fold_ids == f
        decoded[rows] = pipe.decode(pipe.encode(X[rows]))
    exact = Q.astype(np.float64) @ decoded.T.astype(np.float64)
    for q in range(len(Q)):
        top = np.sort(exact[q])[::-1]
        got = exact[q, ids[q]]
        # the same scores in the same order (ids may swap only within float32 rounding ties)
        assert np.allclose(got, top[:20], atol=2e-4), spec
    # without the offset the folds would not be comparable (the test can fail): PCA drops q·mean
    if spec.startswith("PCA"):
        assert np.abs(pipes[0].query_offset(Q) - pipes[1].query_offset(Q)).max() > 0.1


def test_raw_int8_scores_are_put_in_inner_product_units():
    rng = np.random.default_rng(3)
    X = _unit(rng, 800, 32)
    pipe = parse_spec("SQ8:score=raw").fit(X)
    Q = _unit(rng, 10, 32)
    scores, ids = pipe.search(pipe.encode(X), Q, 5)
    step = pipe.codec.step_
    assert pipe.codec.score_scale == pytest.approx(float(np.mean(step.astype(np.float64) ** 2)))
    assert np.allclose(pipe.comparable_scores(Q, scores), scores * pipe.codec.score_scale)
    # Hamming similarities are returned as they are
    binary = parse_spec("PCA16,BIN").fit(X)
    s, _ = binary.search(binary.encode(X), Q, 5)
    assert np.array_equal(binary.comparable_scores(Q, s), s.astype(np.float64))


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["PCA16,SQ8", "PQ8x8", "RQ4x8"])
def test_a_folds_codes_are_those_of_a_fit_without_that_fold(spec, task_files):
    rng = np.random.default_rng(4)
    X = _unit(rng, 1500, 64)
    ids = [f"d{i}" for i in range(len(X))]
    fits = fit_cell(task_files(X), parse_spec(spec), X, ids)
    assert fits.protocol == "crossfit:2" and len(fits.pipes) == 2
    for f in (0, 1):
        own = parse_spec(spec).fit(X[fits.fold_ids != f])
        rows = fits.fold_ids == f
        assert np.array_equal(fits.pipes[f].encode(X[rows]), own.encode(X[rows]))
        assert fits.n_train[f] == int((fits.fold_ids != f).sum())
    # and not those of an in-sample fit (the folds really differ)
    insample = parse_spec(spec).fit(X)
    assert not np.array_equal(fits.pipes[0].encode(X), insample.encode(X))


def test_oblivious_and_in_sample_fit_once(task_files):
    rng = np.random.default_rng(5)
    X = _unit(rng, 600, 64)
    ids = [f"d{i}" for i in range(len(X))]
    fits = fit_cell(task_files(X), parse_spec("RP32,SQ8:pct=0"), X, ids)
    assert fits.protocol == "crossfit:2"            # SQ8 learns its ranges
    fits = fit_cell(task_files(X), parse_spec("ROT,BIN"), X, ids)
    assert fits.protocol == "oblivious" and len(fits.pipes) == 1 and fits.fold_ids is None
    fits = fit_cell(task_files(X, "corpus"), parse_spec("PCA16,SQ8"), X, ids)
    assert fits.protocol == "in-sample" and fits.n_train == [600]
    with pytest.raises(SpecError, match=r"fold 1 of 2 trains on \d+ vectors: PQ8x8 needs at least 256"):
        fit_cell(task_files(X[:400]), parse_spec("PQ8x8"), X[:400], ids[:400])


def test_stages_that_say_they_learn_nothing_really_do_not():
    """Fitted on two different datasets, an oblivious stage encodes the same codes."""
    rng = np.random.default_rng(6)
    A, B = _unit(rng, 500, 64), 3 * _unit(rng, 500, 64) + 1
    B /= np.linalg.norm(B, axis=1, keepdims=True)        # another distribution, still unit vectors (TQ-MSE)
    probe = _unit(rng, 50, 64)
    specs = {"F32": "F32", "F16": "F16", "BF16": "BF16", "ROT": "ROT", "RP{n_components}": "RP16",
             "SRP{n_components}": "SRP16", "HASH{dim}": "HASH16", "MRL{dim}": "MRL16", "LSH{nbits}": "LSH64",
             "TOPK{k}": "TOPK8", "BIN": "BIN", "TQ{bits}": "TQ4"}
    oblivious = [c.spec_format for c in stage_classes() if c.learns_from_data is False]
    assert set(oblivious) <= set(specs), f"add a spec for {set(oblivious) - set(specs)}"
    for spec in [specs[fmt] for fmt in oblivious + ["BIN"]] + ["TQ2:mse=true", "EDEN4"]:
        pa, pb = parse_spec(spec).fit(A), parse_spec(spec).fit(B)
        assert not pa.learns_from_data
        assert np.array_equal(pa.encode(probe), pb.encode(probe)), spec
    # and those that learn do change with the data
    for spec in ["SQ8", "PCA16", "BIN:threshold=median", "BIN:rescore=2:rescore_with=SQ8", "EDEN4:center=true"]:
        pa, pb = parse_spec(spec).fit(A), parse_spec(spec).fit(B)
        assert pa.learns_from_data and not np.array_equal(pa.encode(probe), pb.encode(probe)), spec


def test_sts_pairs_never_straddle_folds():
    from embpress.tasks import TaskData, task_of
    rng = np.random.default_rng(7)
    n = 500
    ctx = TaskData("sts", {"sentences1": _unit(rng, n, 32), "sentences2": _unit(rng, n, 32)})
    stored, ids = task_of("sts").stored_vectors(ctx.vectors), task_of("sts").stored_ids(ctx)
    folds = fold_of(ids, 3)
    assert len(stored) == 2 * n and np.array_equal(folds[:n], folds[n:])
    assert set(folds) == {0, 1, 2}
    pipes = [parse_spec("PCA16,SQ8").fit(stored[np.concatenate([folds[:n], folds[:n]]) != f]) for f in range(3)]
    sim = similarity_folds(pipes, folds, encode_folds(pipes, folds, stored), n)
    for i in (0, 17, 499):
        p = pipes[folds[i]]
        want = p.pair_similarity(p.encode(stored[[i]]), p.encode(stored[[n + i]]))[0]
        assert sim[i] == pytest.approx(want, abs=1e-6)


def test_amortised_bytes_add_up():
    assert amortised_bytes(16, 6_291_456, 5183) * 5183 == pytest.approx(16 * 5183 + 6_291_456, rel=1e-12)
    assert amortised_bytes(16, 6_291_456, DEPLOYMENT_VECTORS) == pytest.approx(16 + 6.291456)


def test_the_fit_cache_keys_on_the_fold():
    X = np.ones((10, 4), np.float32)
    pipe = parse_spec("SQ8")
    paths = {fit_cache_path(pipe, X, None, {"fold": f, "folds": 2, "fold_seed": 0}) for f in (0, 1)}
    paths.add(fit_cache_path(pipe, X, None, {"fold": 0, "folds": 3, "fold_seed": 0}))
    paths.add(fit_cache_path(pipe, X, None, {"fold": 0, "folds": 2, "fold_seed": 1}))
    paths.add(fit_cache_path(pipe, X, None, None))
    assert len(paths) == 5


# ---------------------------------------------------------------------------- through the grid
def _grid(tmp_path, name, **kw):
    from embpress.grid import RunConfig
    from embpress.runner import run
    base = dict(datasets=["scifact", "stsbenchmark"], models=["all-MiniLM-L6-v2"], max_queries=150, max_docs=600)
    base.update(kw)
    (tmp_path / name).mkdir()
    df, _ = run(RunConfig(**base), out_dir=tmp_path / name, progress=False)
    return df


def test_grid_rows_carry_the_protocol_and_in_sample_reproduces_a_direct_fit(tmp_path, scifact_sample):
    from embpress.metrics import retrieval_scores
    specs = ["F32", "BIN", "PCA64,SQ8", "PQ16x8", "PQ64x8"]
    cross = _grid(tmp_path, "cross", compressors=specs)
    insample = _grid(tmp_path, "in", compressors=specs, calibration="corpus")
    c = cross.set_index(["dataset", "compressor"])
    i = insample.set_index(["dataset", "compressor"])
    assert (c.loc[("scifact", "F32"), "protocol"], c.loc[("scifact", "BIN"), "protocol"]) == ("oblivious",) * 2
    assert c.loc[("scifact", "PQ16x8"), "protocol"] == "crossfit:2"
    assert c.loc[("stsbenchmark", "PCA64,SQ8"), "protocol"] == "crossfit:2"
    assert i.loc[("scifact", "PQ16x8"), "protocol"] == "in-sample"
    # oblivious cells do not depend on the calibration
    assert c.loc[("scifact", "BIN"), "ndcg_at_10"] == i.loc[("scifact", "BIN"), "ndcg_at_10"]
    # trained cells do (which way, on 150 queries of a 600-document sample, is noise: the closing
    # figures on full corpora are measured by the default grid)
    assert i.loc[("scifact", "PQ64x8"), "knn_recall_at_100"] != c.loc[("scifact", "PQ64x8"), "knn_recall_at_100"]
    row = c.loc[("scifact", "PQ64x8")]
    assert row["overhead_flag"] and "too small to judge" in row["overhead_flag"]
    assert row["amortised_bytes_corpus"] == pytest.approx(64 + row["overhead_bytes"] / row["n_vectors"])
    assert row["amortised_bytes_1m"] == pytest.approx(64 + row["overhead_bytes"] / 1e6)
    assert row["n_train"] < row["n_vectors"] and row["folds"] == 2
    # in-sample equals fitting on the corpus and scoring directly (today's numbers)
    from embpress.data import load_dataset
    from embpress.embed import embed_dataset
    from embpress.models import model_info, resolve_model
    ds = load_dataset("scifact", max_queries=150, max_docs=600)
    vecs = embed_dataset(model_info(resolve_model("all-MiniLM-L6-v2")), ds, progress=False)
    C = np.asarray(vecs["corpus"])
    pipe = parse_spec("PQ16x8").fit(C)
    _, found = pipe.search(pipe.encode(C), np.asarray(vecs["queries"]), 100)
    ranked = [[ds.corpus_ids[j] for j in r if j >= 0] for r in found]
    direct = float(retrieval_scores(ranked, ds.query_ids, ds.qrels)["ndcg_at_10"].mean())
    assert i.loc[("scifact", "PQ16x8"), "ndcg_at_10"] == pytest.approx(direct, abs=1e-9)


@pytest.mark.integration
def test_a_fold_too_small_for_the_codec_is_infeasible(tmp_path):
    df = _grid(tmp_path, "small", datasets=["scifact"], compressors=["PQ16x8", "SQ8"], max_docs=300)
    row = df.set_index("compressor").loc["PQ16x8"]
    assert row["status"] == "infeasible" and "needs at least 256" in row["error"] and "fold" in row["error"]
    assert df.set_index("compressor").loc["SQ8", "status"] == "ok"
    # the run says so in its files too
    rows = [json.loads(line) for line in (tmp_path / "small" / "cells.jsonl").read_text().splitlines()]
    assert any(r["status"] == "infeasible" and r["compressor"] == "PQ16x8" for r in rows)
