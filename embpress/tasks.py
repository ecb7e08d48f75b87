"""The task types, one class each (as MTEB's task classes): everything that differs between
retrieval, neighbour fidelity and semantic similarity lives here, nowhere else.

A :class:`Task` says

* which parts of a dataset are embedded (``parts``) and which vectors a cell stores (``stored``);
* what a compressed pipeline is asked (``answer``: a top-k search, or a similarity per pair) and
  what exact float32 answers (``exact_answer``);
* how an answer is scored (``score``: per-query arrays, ``summarise``: the row's figures): the float32
  baseline (``ground_truth``) and every cell go through the same two methods;
* its main metric (what ``retained_pct`` is a percentage of), the columns an ok row must have, and
  how the paired bootstrap recomputes the main metric (``paired``: mean over queries, or Spearman
  over resampled pairs).

Adding a task type is one subclass here, registered in :data:`TASKS`, plus its tests; a dataset
declares its type by name (``ds.task``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from compressors.base import cosine_rows, knn_inner_product

from .metrics import Judgements, knn_recall, retrieval_scores_rows, sts_spearman
from .protocol import search_folds, similarity_folds
from .speed import measure_search


@dataclass
class TaskData:
    """What scoring needs of one (model, dataset): its vectors, ids, judgments or gold scores, and
    (once the float32 ground truth exists) the exact top-k and the baseline figures."""
    task: str
    vectors: dict[str, np.ndarray]
    corpus_ids: list[str] = field(default_factory=list)
    query_ids: list[str] = field(default_factory=list)
    qrels: dict | None = None
    scores: np.ndarray | None = None
    exact_ids: np.ndarray | None = None
    baseline: dict[str, float] = field(default_factory=dict)
    _judgements: Judgements | None = field(default=None, repr=False, compare=False)
    _stored: np.ndarray | None = field(default=None, repr=False, compare=False)

    def judgements(self) -> Judgements:
        """The judgements as arrays, built once (a worker scores many cells with them)."""
        if self._judgements is None:
            self._judgements = Judgements.of(self.query_ids, self.corpus_ids, self.qrels or {})
        return self._judgements

    def stored(self) -> np.ndarray:
        """What a cell stores (``Task.stored_vectors``), built once: an STS set's two sides are
        concatenated here, not once per cell."""
        if self._stored is None:
            self._stored = task_of(self.task).stored_vectors(self.vectors)
        return self._stored

    @classmethod
    def of(cls, ds, vectors: dict[str, np.ndarray], **kwargs: Any) -> "TaskData":
        return cls(ds.task, vectors, list(getattr(ds, "corpus_ids", [])), list(getattr(ds, "query_ids", [])),
                   getattr(ds, "qrels", None), getattr(ds, "scores", None), **kwargs)


class Task:
    name: ClassVar[str]
    #: The quality metric ``retained_pct`` is a percentage of.
    main_metric: ClassVar[str]
    #: Columns that must be present and finite in an ok row (``validate.metric_problem``).
    required: ClassVar[tuple[str, ...]]
    #: What a cell stores, as its in-sample calibration is labelled ("corpus" or "pairs").
    stored: ClassVar[str]
    #: Whether a cell searches the stored vectors with queries (speed is measured, top-k kept).
    searches: ClassVar[bool]
    #: Whether the dataset has relevance judgments (per-query loss in the report).
    judged: ClassVar[bool] = False
    #: The task's columns and the names of the same scores in mteb's results (``embpress mteb``).
    mteb_scores: ClassVar[dict[str, str]] = {}

    # ---- data
    def parts(self, ds) -> dict[str, tuple[list[str], list[str]]]:
        """The texts embedded for a dataset and their ids, per part."""
        raise NotImplementedError

    def query_texts(self, ds) -> list[str]:
        """The texts on the asking side (queries; both sentences of STS pairs)."""
        raise NotImplementedError

    def profile_texts(self, ds, n: int) -> list[str]:
        """A deterministic sample of ``n`` texts for timing an encoder (``encoders.variant_profile``)."""
        raise NotImplementedError

    def stored_vectors(self, vectors: dict[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def stored_ids(self, data: TaskData) -> list[str]:
        """The id of each stored vector: what assigns it to a cross-fitting fold."""
        raise NotImplementedError

    # ---- answering and scoring
    def answer(self, fits, codes: np.ndarray, data: TaskData, k: int, row: dict[str, Any],
               timed: bool = True) -> np.ndarray:
        """The compressed pipeline's answer from the cell's stored ``codes`` (a cross-fitted cell's
        from :func:`embpress.protocol.encode_folds`, merged over its folds). With ``timed`` the
        calls that make the answer are timed on the way, into ``row``: indicative figures, one
        measurement beside the other workers (the runner's timing pass measures the cell alone
        instead, :mod:`embpress.timing`)."""
        raise NotImplementedError

    def exact_answer(self, data: TaskData, k: int) -> np.ndarray:
        """What float32 answers: the reference every cell is scored against."""
        raise NotImplementedError

    def score(self, answer: np.ndarray, data: TaskData) -> dict[str, np.ndarray]:
        """Per-query (or per-pair) arrays of an answer, as saved in the run folder."""
        raise NotImplementedError

    def summarise(self, per_query: dict[str, np.ndarray], data: TaskData) -> dict[str, float]:
        """The row's figures from the per-query arrays."""
        raise NotImplementedError

    def truth_arrays(self, exact: np.ndarray, data: TaskData) -> dict[str, np.ndarray]:
        """What the ground-truth file keeps besides the baseline's scores."""
        return {}

    def ground_truth(self, data: TaskData, k: int) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """Exact float32 results of a (model, dataset): the arrays of its ground-truth file and the
        baseline figures, scored by the code that scores every cell."""
        exact = self.exact_answer(data, k)
        data = TaskData(**{**vars(data), "exact_ids": self.truth_arrays(exact, data).get("exact_ids")})
        per_query = self.score(exact, data)
        return {**self.truth_arrays(exact, data), **per_query}, self.summarise(per_query, data)

    def paired(self, cell: dict[str, np.ndarray], base: dict[str, np.ndarray],
               metric: str) -> tuple[np.ndarray, np.ndarray, str, np.ndarray | None] | None:
        """(compressed per query, baseline per query, bootstrap statistic, gold) of the main metric,
        or None when the arrays lack it."""
        if metric not in cell or metric not in base:
            return None
        return cell[metric], base[metric], "mean", None


class NeighboursTask(Task):
    """Vectors without judgments: how many of the exact float32 top-k a compressor keeps."""
    name = "neighbours"
    main_metric = "knn_recall_at_10"
    required = ("knn_recall_at_10", "quality")
    stored = "corpus"
    searches = True

    def parts(self, ds):
        return {"corpus": (ds.corpus_texts, ds.corpus_ids), "queries": (ds.query_texts, ds.query_ids)}

    def query_texts(self, ds):
        return list(ds.query_texts)

    def profile_texts(self, ds, n):
        return ds.query_texts[:n // 2] + ds.corpus_texts[:n - min(n // 2, len(ds.query_texts))]

    def stored_vectors(self, vectors):
        return vectors["corpus"]

    def stored_ids(self, data):
        return data.corpus_ids

    def answer(self, fits, codes, data, k, row, timed=True):
        Q = data.vectors["queries"]
        row["n_queries"] = len(Q)
        if fits.fold_ids is not None:
            times: dict[str, float] = {}
            ids = search_folds(fits.pipes, fits.fold_ids, codes, Q, k, times)
            if timed:   # every query over every stored code: the folds' searches added up
                row.update(times, search_qps=len(Q) / max(times["search_s"], 1e-9))
            return ids
        if not timed:
            return fits.pipes[0].searcher(codes).search(Q, k)[1]
        speed = measure_search(fits.pipes[0], codes, Q, k, repeats=1, single=0)   # the one batch call quality needs
        ids = speed.pop("results")[1]
        row.update({c: v for c, v in speed.items() if not c.endswith("_spread")})
        return ids

    def exact_answer(self, data, k):
        return knn_inner_product(data.vectors["queries"], data.vectors["corpus"], k)[1]

    def truth_arrays(self, exact, data):
        return {"exact_ids": exact.astype(np.int32), "query_ids": np.asarray(data.query_ids, dtype=str),
                "corpus_ids": np.asarray(data.corpus_ids, dtype=str)}

    def score(self, answer, data):
        per_query: dict[str, np.ndarray] = {"top10": answer[:, :10].astype(np.int32)}
        for kk in (10, 100):
            per_query[f"knn_recall_at_{kk}"] = 100 * knn_recall(answer, data.exact_ids, min(kk, data.exact_ids.shape[1]))
        return per_query

    def summarise(self, per_query, data):
        return {m: float(v.mean()) for m, v in per_query.items() if m != "top10"}

    def paired(self, cell, base, metric):
        if metric not in cell:
            return None
        if metric in base:
            return cell[metric], base[metric], "mean", None
        if metric.startswith("knn_recall"):   # a ground-truth file without them: exact search overlaps itself fully
            return cell[metric], np.full(len(cell[metric]), 100.0), "mean", None
        return None


class RetrievalTask(NeighboursTask):
    """Queries against a judged corpus: nDCG@10, Recall@100 and MRR@10, and neighbour recall."""
    name = "retrieval"
    main_metric = "ndcg_at_10"
    required = ("knn_recall_at_10", "quality", "baseline_quality")
    judged = True
    mteb_scores = {"ndcg_at_10": "ndcg_at_10", "recall_at_100": "recall_at_100", "mrr_at_10": "mrr_at_10"}

    def score(self, answer, data):
        per_query = super().score(answer, data)
        if data.qrels is not None:
            per_query.update(retrieval_scores_rows(answer, data.judgements()))
        return per_query


class STSTask(Task):
    """Sentence pairs with gold similarity scores: Spearman of the decoded pairs' cosine."""
    name = "sts"
    main_metric = "spearman"
    required = ("spearman", "quality", "baseline_quality")
    stored = "pairs"
    searches = False
    mteb_scores = {"spearman": "cosine_spearman"}

    def parts(self, ds):
        ids = [str(i) for i in range(len(ds.sentences1))]
        return {"sentences1": (ds.sentences1, ids), "sentences2": (ds.sentences2, ids)}

    def query_texts(self, ds):
        return ds.sentences1 + ds.sentences2

    def profile_texts(self, ds, n):
        return (ds.sentences1[:n // 2] + ds.sentences2[:n // 2])[:n]

    def stored_vectors(self, vectors):
        return np.concatenate([vectors["sentences1"], vectors["sentences2"]])

    def stored_ids(self, data):
        """Both sentences of a pair carry the pair's id, so a pair never straddles two folds."""
        pairs = [f"pair:{i}" for i in range(len(data.vectors["sentences1"]))]
        return pairs + pairs

    def answer(self, fits, codes, data, k, row, timed=True):
        n = len(data.scores)
        t0 = time.perf_counter()
        if fits.fold_ids is not None:
            sim = similarity_folds(fits.pipes, fits.fold_ids, codes, n)
        else:
            sim = fits.pipes[0].pair_similarity(codes[:n], codes[n:])
        if timed:
            row["score_s"] = time.perf_counter() - t0
        row["n_queries"] = n
        return sim

    def exact_answer(self, data, k):
        return cosine_rows(np.asarray(data.vectors["sentences1"]), np.asarray(data.vectors["sentences2"]))

    def truth_arrays(self, exact, data):
        return {"gold": np.asarray(data.scores, dtype=np.float64)}

    def score(self, answer, data):
        return {"similarity": np.asarray(answer, dtype=np.float64)}

    def summarise(self, per_query, data):
        return {"spearman": sts_spearman(per_query["similarity"], data.scores)}

    def paired(self, cell, base, metric):
        if "similarity" not in cell or "similarity" not in base:
            return None
        return cell["similarity"], base["similarity"], "spearman", base["gold"]


TASKS: dict[str, Task] = {t.name: t for t in (RetrievalTask(), NeighboursTask(), STSTask())}


def task_of(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise KeyError(f"unknown task type {name!r} (one of: {', '.join(TASKS)})") from None


def main_metrics() -> dict[str, str]:
    """Each task type's main metric."""
    return {t.name: t.main_metric for t in TASKS.values()}


def judged() -> list[str]:
    """The task types with relevance judgments."""
    return [t.name for t in TASKS.values() if t.judged]
