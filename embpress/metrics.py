"""Quality metrics, computed as pytrec_eval / MTEB compute them, and the metric registry.

Retrieval (per query, then averaged over every query that has judgments):
* ``ndcg_at_10``: gains are the graded relevance values (trec_eval's ``ndcg_cut.10``), the ideal
  ranking sorts all judged relevances of the query;
* ``recall_at_100``: relevant documents (relevance > 0) found in the top 100 over all relevant;
* ``mrr_at_10``: reciprocal rank of the first relevant document in the top 10, else 0.

Neighbour fidelity: ``knn_recall_at_k`` = |top-k(compressed) ∩ top-k(exact float32)| / k.
STS: ``spearman`` = 100 × Spearman correlation of cosine similarity with the gold scores.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Metric:
    name: str
    higher_is_better: bool
    unit: str
    description: str


#: Every column a result row can carry, with the direction that is better (ann-benchmarks style).
METRICS: dict[str, Metric] = {m.name: m for m in [
    Metric("ndcg_at_10", True, "", "nDCG@10 against the qrels (x100)"),
    Metric("recall_at_100", True, "", "Recall@100 against the qrels (x100)"),
    Metric("mrr_at_10", True, "", "MRR@10 against the qrels (x100)"),
    Metric("spearman", True, "", "Spearman correlation of cosine similarity with gold scores (x100)"),
    Metric("knn_recall_at_10", True, "", "overlap of the top-10 with exact float32 top-10"),
    Metric("knn_recall_at_100", True, "", "overlap of the top-100 with exact float32 top-100"),
    Metric("retained_pct", True, "%", "main quality metric as % of the float32 baseline"),
    Metric("bytes_per_vector", False, "B", "bytes stored per vector (codes + per-vector extras)"),
    Metric("overhead_bytes", False, "B", "fixed bytes (codebooks, ranges, matrices)"),
    Metric("amortised_bytes_corpus", False, "B", "bytes per vector with one pipeline's fixed bytes spread over "
           "the evaluated corpus"),
    Metric("amortised_bytes_1m", False, "B", "bytes per vector with one pipeline's fixed bytes spread over "
           "1 M vectors (a deployment)"),
    Metric("compression_ratio", True, "x", "float32 bytes per vector / bytes per vector"),
    Metric("fit_s", False, "s", "seconds to fit on the calibration vectors"),
    Metric("encode_vps", True, "vec/s", "vectors encoded per second"),
    Metric("search_qps", True, "q/s", "queries per second, top-100 over the codes, all queries in one call"),
    Metric("latency_p50_ms", False, "ms", "single-query latency (one thread), median"),
    Metric("latency_p99_ms", False, "ms", "single-query latency (one thread), 99th percentile"),
    Metric("search_bytes", False, "B", "bytes searched: codes, codebooks, index structures"),
]}

#: The quality metric that ``retained_pct`` is computed from, per task.
MAIN_METRIC = {"retrieval": "ndcg_at_10", "sts": "spearman", "neighbours": "knn_recall_at_10"}


def retrieval_scores(ranked_ids: list[list[str]], query_ids: list[str],
                     qrels: dict[str, dict[str, int]]) -> dict[str, np.ndarray]:
    """Per-query nDCG@10, Recall@100 and MRR@10 (x100) for ranked document-id lists."""
    n = len(query_ids)
    ndcg, recall, mrr = np.zeros(n), np.zeros(n), np.zeros(n)
    discounts = 1.0 / np.log2(np.arange(2, 102))
    for i, (qid, ranked) in enumerate(zip(query_ids, ranked_ids)):
        judged = qrels.get(qid, {})
        rels = [judged.get(d, 0) for d in ranked[:100]]
        gains10 = np.asarray(rels[:10], dtype=float)
        dcg = float((gains10 * discounts[: len(gains10)]).sum())
        ideal = np.sort(np.asarray([r for r in judged.values() if r > 0], dtype=float))[::-1][:10]
        idcg = float((ideal * discounts[: len(ideal)]).sum())
        ndcg[i] = dcg / idcg if idcg > 0 else 0.0
        n_rel = sum(1 for r in judged.values() if r > 0)
        recall[i] = sum(1 for r in rels if r > 0) / n_rel if n_rel else 0.0
        first = next((rank for rank, r in enumerate(rels[:10]) if r > 0), None)
        mrr[i] = 1.0 / (first + 1) if first is not None else 0.0
    return {"ndcg_at_10": 100 * ndcg, "recall_at_100": 100 * recall, "mrr_at_10": 100 * mrr}


def knn_recall(found: np.ndarray, exact: np.ndarray, k: int) -> np.ndarray:
    """Per-query |found[:, :k] ∩ exact[:, :k]| / k."""
    f, e = np.asarray(found)[:, :k], np.asarray(exact)[:, :k]
    hits = np.empty(len(e))
    for start in range(0, len(e), 1024):            # (rows × k × k) comparisons, 1024 rows at a time
        fb, eb = f[start:start + 1024], e[start:start + 1024]
        hits[start:start + 1024] = ((eb[:, :, None] == fb[:, None, :]).any(axis=2) & (eb >= 0)).sum(axis=1)
    return hits / k


def sts_spearman(similarity: np.ndarray, gold: np.ndarray) -> float:
    from scipy.stats import spearmanr       # imported here: scipy.stats alone takes most of a second to import
    return float(100 * spearmanr(similarity, gold).statistic)
