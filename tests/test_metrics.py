"""Our retrieval metrics equal pytrec_eval's (the library MTEB uses) on real rankings."""
import numpy as np
import pytest
import pytrec_eval

from compressors import parse_spec
from compressors.base import knn_inner_product
from embpress.data import load_dataset
from embpress.metrics import METRICS, knn_recall, retrieval_scores, sts_spearman


@pytest.mark.parametrize("spec", ["F32", "PQ16x8"])
def test_retrieval_metrics_equal_pytrec_eval(spec, scifact_sample, corpus_vectors, query_vectors):
    ds, _ = scifact_sample
    pipe = parse_spec(spec).fit(corpus_vectors)
    scores, ids = pipe.search(pipe.encode(corpus_vectors), query_vectors, 100)
    ranked = [[ds.corpus_ids[j] for j in row] for row in ids]
    ours = retrieval_scores(ranked, ds.query_ids, ds.qrels)
    # pytrec_eval ranks by score; give it strictly decreasing scores in our order so ties cannot differ
    run = {q: {d: float(100 - r) for r, d in enumerate(docs)} for q, docs in zip(ds.query_ids, ranked)}
    run10 = {q: {d: s for d, s in docs.items() if s > 90} for q, docs in run.items()}
    ev = pytrec_eval.RelevanceEvaluator(ds.qrels, {"ndcg_cut.10", "recall.100"})
    ev_rr = pytrec_eval.RelevanceEvaluator(ds.qrels, {"recip_rank"})
    ref, ref_rr = ev.evaluate(run), ev_rr.evaluate(run10)
    for i, q in enumerate(ds.query_ids):
        assert ours["ndcg_at_10"][i] == pytest.approx(100 * ref[q]["ndcg_cut_10"], abs=1e-9)
        assert ours["recall_at_100"][i] == pytest.approx(100 * ref[q]["recall_100"], abs=1e-9)
        assert ours["mrr_at_10"][i] == pytest.approx(100 * ref_rr[q]["recip_rank"], abs=1e-9)
    assert 0 < ours["ndcg_at_10"].mean() < 100


@pytest.mark.integration
def test_graded_relevance_matches_pytrec_eval():
    ds = load_dataset("nfcorpus", max_queries=15)
    rng = np.random.default_rng(0)
    ranked = []
    for q in ds.query_ids:
        judged = list(ds.qrels[q])
        others = [d for d in ds.corpus_ids[:300] if d not in ds.qrels[q]]
        docs = judged[: len(judged) // 2] + others[:100]
        rng.shuffle(docs)
        ranked.append(docs[:100])
    ours = retrieval_scores(ranked, ds.query_ids, ds.qrels)
    run = {q: {d: float(1000 - r) for r, d in enumerate(docs)} for q, docs in zip(ds.query_ids, ranked)}
    ref = pytrec_eval.RelevanceEvaluator(ds.qrels, {"ndcg_cut.10", "recall.100"}).evaluate(run)
    for i, q in enumerate(ds.query_ids):
        assert ours["ndcg_at_10"][i] == pytest.approx(100 * ref[q]["ndcg_cut_10"], abs=1e-9)
        assert ours["recall_at_100"][i] == pytest.approx(100 * ref[q]["recall_100"], abs=1e-9)


def test_knn_recall_and_spearman():
    exact = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    found = np.array([[2, 1, 9, 9], [5, 6, 7, 8]])
    assert knn_recall(found, exact, 2).tolist() == [1.0, 1.0]
    assert knn_recall(found, exact, 4).tolist() == [0.5, 1.0]
    assert sts_spearman(np.array([1, 2, 3.0]), np.array([10, 20, 30.0])) == pytest.approx(100)
    assert sts_spearman(np.array([3, 2, 1.0]), np.array([10, 20, 30.0])) == pytest.approx(-100)


def test_metric_registry_knows_directions():
    assert METRICS["ndcg_at_10"].higher_is_better and not METRICS["bytes_per_vector"].higher_is_better
    assert not METRICS["fit_s"].higher_is_better and METRICS["search_qps"].higher_is_better


def test_every_registered_metric_is_placed_labelled_and_bounded_by_the_registry():
    """What a new registry entry gets without any other edit: its column in the results table
    (in its kind's group), its label, and the impossible-result check of its bounds."""
    from embpress.metrics import KINDS, label
    from embpress.results import COLUMNS
    from embpress.validate import metric_problem
    positions = [COLUMNS.index(m) for m in METRICS]
    assert all(COLUMNS.count(m) == 1 for m in METRICS)
    kinds = [KINDS.index(METRICS[m].kind) for m in sorted(METRICS, key=COLUMNS.index)]
    assert kinds == sorted(kinds), "the table groups the metrics by kind"
    assert len(set(positions)) == len(METRICS)
    labels = [label(m) for m in METRICS]
    assert len(set(labels)) == len(labels) and all(labels) and label("n_train") == "n train"
    for m in METRICS.values():
        assert m.description and m.computed_by and m.kind in KINDS
        lo, hi = m.bounds
        for bad in ([lo - 1] if lo is not None else []) + ([hi + 1] if hi is not None else []):
            problem = metric_problem({"status": "ok", "task": "none", m.name: bad})
            assert problem is not None and problem.startswith(f"{m.name} = "), (m.name, problem)


def test_console_table_headers_come_from_the_registry():
    import pandas as pd
    from embpress.metrics import console_columns
    from embpress.results import format_table
    df = pd.DataFrame([{"dataset": "d", "model": "m", "compressor": "SQ8", "status": "ok", "bytes_per_vector": 384,
                        "ndcg_at_10": 61.25, "search_qps": 12345.0, "spearman": None}])
    header = format_table(df).splitlines()[1].split()
    assert header == ["compressor", "B/vec", "nDCG@10", "search", "q/s", "status"]
    assert list(console_columns())[:2] == ["bytes_per_vector", "compression_ratio"]


def test_exact_search_is_exact(corpus_vectors, query_vectors):
    _, ids = knn_inner_product(query_vectors, corpus_vectors, 5)
    brute = np.argsort(-(query_vectors @ corpus_vectors.T), axis=1)[:, :5]
    assert (ids == brute).mean() > 0.99


def test_knn_recall_counts_each_true_neighbour_once():
    from embpress.metrics import knn_recall
    rng = np.random.default_rng(0)
    exact = np.stack([rng.permutation(500)[:20] for _ in range(50)])
    found = rng.integers(0, 500, (50, 20))
    found[:5] = exact[:5]                                      # perfect rows
    found[5:10, :10] = exact[5:10, 0:1]                        # one true neighbour repeated
    ref = np.array([len(np.intersect1d(a, b)) / 20 for a, b in zip(found, exact)])
    np.testing.assert_allclose(knn_recall(found, exact, 20), ref)
    assert (knn_recall(found, exact, 20)[:5] == 1).all()
