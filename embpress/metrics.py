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
    """One result column with a direction: what it is called, in which unit, which way is better,
    how it is computed, and what values are possible. Everything that names, orders, checks or
    compares a metric reads it from :data:`METRICS`."""
    name: str
    label: str                  # figures, tooltips and the report's tables
    unit: str                   # "" for scores on the x100 scale
    higher_is_better: bool
    description: str            # how it is computed, in words (the report's column titles)
    kind: str                   # where it sits in the results table: one of KINDS
    computed_by: str            # the code that computes it
    short: str = ""             # the console table's header ("" : not in the console table)
    bounds: tuple[float | None, float | None] = (None, None)   # possible values (None: open)
    per: str | None = None      # a throughput's count column: time of one run = per / value
    spread: str | None = None   # the column holding its measured spread (interquartile range / median)


#: The order of the kinds in the results table (``embpress.results.COLUMNS``) and the console table.
KINDS = ("storage", "quality", "summary", "speed", "memory")

_RETRIEVAL = "embpress.metrics.retrieval_scores (per query, averaged over judged queries)"
_KNN = "embpress.metrics.knn_recall (per query, averaged)"
_SPEED = ("embpress.speed.measure_search, in the timing pass (embpress.timing: alone, median of the repeats; "
          "--no-timing: beside the other workers)")
_BYTES = "compressors.Pipeline byte accounting (codes are uint8 arrays of exactly this width)"

#: Every metric a result row can carry (ann-benchmarks style: each with the direction that is better).
#: The report lists them in this order; the results table groups them by ``kind``.
METRICS: dict[str, Metric] = {m.name: m for m in [
    Metric("ndcg_at_10", "nDCG@10", "", True, "nDCG@10 against the qrels (x100)", "quality", _RETRIEVAL,
           short="nDCG@10", bounds=(0, 100)),
    Metric("recall_at_100", "Recall@100", "", True, "Recall@100 against the qrels (x100)", "quality", _RETRIEVAL,
           short="R@100", bounds=(0, 100)),
    Metric("mrr_at_10", "MRR@10", "", True, "MRR@10 against the qrels (x100)", "quality", _RETRIEVAL,
           short="MRR@10", bounds=(0, 100)),
    Metric("spearman", "Spearman", "", True, "Spearman correlation of cosine similarity with gold scores (x100)",
           "quality", "embpress.metrics.sts_spearman (over all pairs)", short="Spearman", bounds=(-100, 100)),
    Metric("knn_recall_at_10", "neighbour recall@10", "%", True, "overlap of the top-10 with exact float32 top-10",
           "quality", _KNN, short="kNN-R@10", bounds=(0, 100)),
    Metric("knn_recall_at_100", "neighbour recall@100", "%", True,
           "overlap of the top-100 with exact float32 top-100", "quality", _KNN, bounds=(0, 100)),
    Metric("retained_pct", "retained %", "%", True, "main quality metric as % of the float32 baseline", "summary",
           "embpress.cells.evaluate: 100 x quality / baseline_quality", short="retained%"),
    Metric("bytes_per_vector", "bytes per vector", "B", False, "bytes stored per vector (codes + per-vector extras)",
           "storage", _BYTES, short="B/vec", bounds=(1, None)),
    Metric("overhead_bytes", "fixed bytes", "B", False, "fixed bytes (codebooks, ranges, matrices)", "storage",
           _BYTES, bounds=(0, None)),
    Metric("amortised_bytes_corpus", "bytes/vector with fixed bytes (corpus)", "B", False,
           "bytes per vector with one pipeline's fixed bytes spread over the evaluated corpus", "storage",
           "embpress.protocol.amortised_bytes"),
    Metric("amortised_bytes_1m", "bytes/vector with fixed bytes (1 M vectors)", "B", False,
           "bytes per vector with one pipeline's fixed bytes spread over 1 M vectors (a deployment)", "storage",
           "embpress.protocol.amortised_bytes"),
    Metric("compression_ratio", "× smaller", "x", True, "float32 bytes per vector / bytes per vector", "storage",
           "embpress.cells: 4 x dim / bytes_per_vector", short="ratio", bounds=(0, None)),
    Metric("fit_s", "fit s", "s", False, "seconds to fit on the calibration vectors", "speed",
           "embpress.fitcache.fit_pipeline (mean over a cross-fitted cell's folds)", short="fit s",
           spread="fit_spread"),
    Metric("encode_vps", "encode vectors/s", "vec/s", True, "vectors encoded per second", "speed",
           "embpress.timing (alone, threads pinned; --no-timing: embpress.cells beside other workers)",
           short="enc vec/s", per="n_vectors", spread="encode_spread"),
    Metric("search_qps", "search queries/s", "q/s", True,
           "queries per second, top-100 over the codes, a batch of queries in one call", "speed", _SPEED,
           short="search q/s", per="n_queries", spread="search_spread"),
    Metric("latency_p50_ms", "latency p50 ms", "ms", False, "single-query latency (one thread), median", "speed",
           _SPEED, short="p50 ms"),
    Metric("latency_p99_ms", "latency p99 ms", "ms", False, "single-query latency (one thread), 99th percentile",
           "speed", _SPEED),
    Metric("search_bytes", "search bytes", "B", False, "bytes searched: codes, codebooks, index structures",
           "memory", _SPEED),
]}


def label(column: str) -> str:
    """A column's label: the registry's for a metric, else its name in words."""
    metric = METRICS.get(column)
    return metric.label if metric is not None else column.replace("_", " ")


def of_kind(kind: str) -> list[str]:
    """The metrics of one kind, in registry order."""
    return [m.name for m in METRICS.values() if m.kind == kind]


def console_columns() -> dict[str, str]:
    """The console table's metric columns and their headers, in the results table's order."""
    return {m: METRICS[m].short for kind in KINDS for m in of_kind(kind) if METRICS[m].short}


@dataclass(frozen=True)
class Judgements:
    """A retrieval dataset's judgements as arrays, to score ranked row indices without a Python
    loop per query (:func:`retrieval_scores_rows`)."""
    rel: np.ndarray        # (queries, documents + 1) graded relevance; the last column (index -1) is 0
    idcg10: np.ndarray     # ideal DCG@10 of each query, from every positive judgement
    n_rel: np.ndarray      # positive judgements of each query (documents outside the corpus included)

    @classmethod
    def of(cls, query_ids: list[str], corpus_ids: list[str], qrels: dict[str, dict[str, int]]) -> "Judgements":
        row_of = {d: j for j, d in enumerate(corpus_ids)}
        rel = np.zeros((len(query_ids), len(corpus_ids) + 1), dtype=np.int32)
        idcg, n_rel = np.zeros(len(query_ids)), np.zeros(len(query_ids))
        discounts = 1.0 / np.log2(np.arange(2, 12))
        for i, qid in enumerate(query_ids):
            judged = qrels.get(qid, {})
            for d, r in judged.items():
                if d in row_of:
                    rel[i, row_of[d]] = r
            ideal = np.sort(np.asarray([r for r in judged.values() if r > 0], dtype=float))[::-1][:10]
            idcg[i] = float((ideal * discounts[:len(ideal)]).sum())
            n_rel[i] = sum(1 for r in judged.values() if r > 0)
        return cls(rel, idcg, n_rel)


def retrieval_scores_rows(answer: np.ndarray, judged: Judgements) -> dict[str, np.ndarray]:
    """Per-query nDCG@10 (gain = graded relevance), Recall@100 and MRR@10 (x100) of ranked corpus
    row indices (``answer``; -1 for no result, dropped: the later results move up), vectorised
    over queries. Equal to pytrec_eval's (``tests/test_metrics.py``)."""
    answer = np.asarray(answer)
    valid = answer >= 0
    if not valid.all():          # a missing result moves the later ones up, as in the id lists
        order = np.argsort(~valid, axis=1, kind="stable")
        answer = np.take_along_axis(answer, order, 1)
    answer = answer[:, :100]
    rels = judged.rel[np.arange(len(answer))[:, None], np.where(answer >= 0, answer, -1)].astype(float)
    discounts = 1.0 / np.log2(np.arange(2, 12))
    top = rels[:, :10]
    dcg = (top * discounts[:top.shape[1]]).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ndcg = np.where(judged.idcg10 > 0, dcg / judged.idcg10, 0.0)
        recall = np.where(judged.n_rel > 0, (rels > 0).sum(axis=1) / judged.n_rel, 0.0)
    hit = top > 0
    first = np.where(hit.any(axis=1), hit.argmax(axis=1), -1)
    mrr = np.where(first >= 0, 1.0 / np.maximum(first + 1, 1), 0.0)
    return {"ndcg_at_10": 100 * ndcg, "recall_at_100": 100 * recall, "mrr_at_10": 100 * mrr}


def retrieval_scores(ranked_ids: list[list[str]], query_ids: list[str],
                     qrels: dict[str, dict[str, int]]) -> dict[str, np.ndarray]:
    """Per-query nDCG@10, Recall@100 and MRR@10 (x100) for ranked document-id lists:
    :func:`retrieval_scores_rows` over the documents the lists name."""
    docs = list(dict.fromkeys(d for ranked in ranked_ids for d in ranked))
    row = {d: j for j, d in enumerate(docs)}
    answer = np.full((len(ranked_ids), max([len(r) for r in ranked_ids] + [1])), -1, dtype=np.int64)
    for i, ranked in enumerate(ranked_ids):
        answer[i, :len(ranked)] = [row[d] for d in ranked]
    return retrieval_scores_rows(answer, Judgements.of(query_ids, docs, qrels))


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
