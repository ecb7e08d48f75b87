"""The task types (embpress.tasks) on synthetic vectors: the float32 baseline and a cell are scored by
the same code, so exact float32 keeps 100 % of every task's main metric, and a lossy codec keeps
less; the per-query arrays are what the bootstrap resamples."""
from __future__ import annotations

import numpy as np
import pytest

from compressors import parse_spec
from embpress.cells import Fits
from embpress.metrics import METRICS, retrieval_scores
from embpress.stats import paired_bootstrap
from embpress.tasks import TASKS, TaskData, judged, main_metrics, task_of


def _retrieval_data(synthetic, judged_docs=3):
    X, Q = synthetic
    corpus_ids, query_ids = [f"d{i}" for i in range(len(X))], [f"q{i}" for i in range(len(Q))]
    # judge each query's nearest documents by the exact inner product: a meaningful, known answer
    near = np.argsort(-(Q @ X.T), axis=1)[:, :judged_docs]
    qrels = {q: {corpus_ids[j]: 1 + (r == 0) for r, j in enumerate(row)} for q, row in zip(query_ids, near)}
    return TaskData("retrieval", {"corpus": X, "queries": Q}, corpus_ids, query_ids, qrels)


def _sts_data(synthetic):
    X, _ = synthetic
    rng = np.random.default_rng(3)
    a = X[:400]
    b = a + rng.normal(0, 0.6, a.shape).astype(np.float32)
    gold = (a * b).sum(1) / np.linalg.norm(b, axis=1) + rng.normal(0, 0.05, len(a))
    return TaskData("sts", {"sentences1": a, "sentences2": b}, scores=gold)


def _cell(task, data, spec, k=20):
    """A cell as cells.evaluate runs it: one in-sample fit, the task's answer, its score."""
    stored = task.stored_vectors(data.vectors)
    pipe = parse_spec(spec).fit(stored)
    row: dict = {}
    answer = task.answer(Fits("in-sample", [pipe]), pipe.encode(stored), data, k, row)
    per_query = task.score(answer, data)
    return row, per_query, task.summarise(per_query, data)


@pytest.mark.parametrize("name", ["retrieval", "neighbours", "sts"])
def test_float32_keeps_everything_and_a_lossy_codec_less(name, synthetic):
    data = _sts_data(synthetic) if name == "sts" else _retrieval_data(synthetic)
    if name == "neighbours":
        data.task, data.qrels = "neighbours", None
    task = task_of(name)
    arrays, baseline = task.ground_truth(data, 20)
    data.exact_ids, data.baseline = arrays.get("exact_ids"), baseline
    assert set(baseline) >= {task.main_metric} and set(baseline) <= set(METRICS)
    _, exact_q, exact = _cell(task, data, "F32")
    assert exact == baseline                              # the same code scores both
    for m, v in exact_q.items():
        np.testing.assert_array_equal(v, arrays[m])
    row, lossy_q, lossy = _cell(task, data, "PCA8,SQ4")
    main = task.main_metric
    assert lossy[main] < baseline[main]
    if task.searches:
        assert baseline["knn_recall_at_10"] == 100.0 and row["n_queries"] == len(data.query_ids)
        assert row["search_qps"] > 0 and lossy_q["top10"].shape == (len(data.query_ids), 10)
    c, b, statistic, gold = task.paired(lossy_q, arrays, main)
    low, high = paired_bootstrap(c, b, statistic, gold=gold, n_boot=300)
    assert low <= 100 * lossy[main] / baseline[main] <= high < 100


def test_retrieval_scores_are_the_metric_functions(synthetic):
    data = _retrieval_data(synthetic)
    task = task_of("retrieval")
    arrays, baseline = task.ground_truth(data, 100)
    ranked = [[data.corpus_ids[j] for j in r] for r in arrays["exact_ids"]]
    direct = retrieval_scores(ranked, data.query_ids, data.qrels)
    for m in ("ndcg_at_10", "recall_at_100", "mrr_at_10"):
        assert baseline[m] == pytest.approx(float(direct[m].mean()), abs=1e-12)
    assert baseline["ndcg_at_10"] == pytest.approx(100.0)   # the judged documents are the exact nearest ones


def _per_query_reference(ranked_ids, query_ids, qrels):
    """nDCG@10, Recall@100, MRR@10 one query at a time, as the metrics were first written."""
    n = len(query_ids)
    ndcg, recall, mrr = np.zeros(n), np.zeros(n), np.zeros(n)
    discounts = 1.0 / np.log2(np.arange(2, 102))
    for i, (qid, ranked) in enumerate(zip(query_ids, ranked_ids)):
        judged = qrels.get(qid, {})
        rels = [judged.get(d, 0) for d in ranked[:100]]
        dcg = float((np.asarray(rels[:10], dtype=float) * discounts[:len(rels[:10])]).sum())
        ideal = np.sort(np.asarray([r for r in judged.values() if r > 0], dtype=float))[::-1][:10]
        idcg = float((ideal * discounts[:len(ideal)]).sum())
        ndcg[i] = dcg / idcg if idcg > 0 else 0.0
        n_rel = sum(1 for r in judged.values() if r > 0)
        recall[i] = sum(1 for r in rels if r > 0) / n_rel if n_rel else 0.0
        first = next((rank for rank, r in enumerate(rels[:10]) if r > 0), None)
        mrr[i] = 1.0 / (first + 1) if first is not None else 0.0
    return {"ndcg_at_10": 100 * ndcg, "recall_at_100": 100 * recall, "mrr_at_10": 100 * mrr}


def test_vectorised_retrieval_scores_equal_the_per_query_ones():
    """Graded judgements, judged documents missing from the corpus, unjudged queries, and missing
    results (-1) anywhere in a row: the row-index scorer gives what the id-list scorer gives."""
    from embpress.metrics import Judgements, retrieval_scores_rows
    rng = np.random.default_rng(5)
    corpus = [f"d{j}" for j in range(300)]
    queries = [f"q{i}" for i in range(60)]
    qrels = {q: {f"d{j}": int(rng.integers(0, 3)) for j in rng.choice(320, rng.integers(1, 15), replace=False)}
             for q in queries[:55]}                  # d300.. are judged but not in the corpus; q55.. unjudged
    answer = np.stack([rng.permutation(300)[:120] for _ in queries])
    answer[rng.random(answer.shape) < 0.05] = -1
    ranked = [[corpus[j] for j in r if j >= 0] for r in answer]
    want = _per_query_reference(ranked, queries, qrels)
    got = retrieval_scores_rows(answer, Judgements.of(queries, corpus, qrels))
    by_ids = retrieval_scores(ranked, queries, qrels)
    for m in want:
        np.testing.assert_allclose(got[m], want[m], rtol=0, atol=1e-10)
        np.testing.assert_allclose(by_ids[m], want[m], rtol=0, atol=1e-10)
    assert want["ndcg_at_10"].std() > 0 and (want["mrr_at_10"] > 0).any() and (want["recall_at_100"] == 0).any()


def test_sts_stores_pairs_whole(synthetic):
    data = _sts_data(synthetic)
    task = task_of("sts")
    stored, ids = task.stored_vectors(data.vectors), task.stored_ids(data)
    n = len(data.scores)
    assert len(stored) == 2 * n and ids[:n] == ids[n:] and task.stored == "pairs"


def test_every_task_is_complete():
    """What each registered task type must say: the rest of embpress asks only these."""
    for name, task in TASKS.items():
        assert task.name == name and task.main_metric in METRICS and "quality" in task.required
        assert task.stored in ("corpus", "pairs") and isinstance(task.searches, bool)
        assert all(col in METRICS for col in task.mteb_scores)
    assert main_metrics() == {"retrieval": "ndcg_at_10", "neighbours": "knn_recall_at_10", "sts": "spearman"}
    assert judged() == ["retrieval"]
    with pytest.raises(KeyError, match="unknown task type 'nope'"):
        task_of("nope")
