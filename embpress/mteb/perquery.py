"""Per-query arrays of an ``embpress mteb`` run, read back from mteb's own predictions.

They are what a grid run saves (``per_query/<cell_id>.npz`` and the float32 baseline), so the
report's bootstrap intervals, lost-query examples and ``embpress compare`` work on mteb runs: for
retrieval, each query's ranking (mteb's scores, ties ordered as pytrec_eval orders them: by
score, then document id, both descending) scored by embpress's metrics, and its overlap with the
float32 ranking; for STS, the cosine of each pair.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..metrics import knn_recall, retrieval_scores
from ..tasks import task_of

K = 100   # the grid's search depth (kNN recall@100, Recall@100)


def _predictions(lt, pred_dir: Path):
    with open(pred_dir / f"{lt.name}_predictions.json", encoding="utf-8") as f:
        return json.load(f)["default"][lt.split]


def _rankings(lt, pred_dir: Path) -> tuple[list[list[str]], np.ndarray]:
    """Each query's top-K document ids, and their corpus row numbers (-1 padded)."""
    pred = _predictions(lt, pred_dir)
    position = {d: i for i, d in enumerate(lt.ds.corpus_ids)}
    ranked = [[d for d, _ in sorted(pred.get(q, {}).items(), key=lambda kv: (kv[1], kv[0]), reverse=True)[:K]]
              for q in lt.ds.query_ids]
    ids = np.full((len(ranked), K), -1, dtype=np.int32)
    for i, r in enumerate(ranked):
        ids[i, :len(r)] = [position[d] for d in r]
    return ranked, ids


def baseline_arrays(lt, pred_dir: Path) -> dict[str, np.ndarray]:
    """The float32 row's arrays in the layout of the grid's ground truth (``cells.ground_truth``)."""
    if not task_of(lt.kind).searches:
        return {"similarity": np.asarray(_predictions(lt, pred_dir)["cosine_scores"], dtype=np.float64),
                "gold": np.asarray(lt.ds.scores, dtype=np.float64)}
    ranked, ids = _rankings(lt, pred_dir)
    return {"exact_ids": ids, "top10": ids[:, :10], "query_ids": np.asarray(lt.ds.query_ids, dtype=str),
            "corpus_ids": np.asarray(lt.ds.corpus_ids, dtype=str),
            **retrieval_scores(ranked, lt.ds.query_ids, lt.ds.qrels)}


def cell_arrays(lt, pred_dir: Path, baseline: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict]:
    """(per-query arrays, row columns computed from them: kNN recall against the float32 ranking)."""
    if not task_of(lt.kind).searches:
        return {"similarity": np.asarray(_predictions(lt, pred_dir)["cosine_scores"], dtype=np.float64)}, {}
    ranked, ids = _rankings(lt, pred_dir)
    arrays = {"top10": ids[:, :10], **retrieval_scores(ranked, lt.ds.query_ids, lt.ds.qrels)}
    extra = {}
    for k in (10, 100):
        arrays[f"knn_recall_at_{k}"] = 100 * knn_recall(ids, baseline["exact_ids"], k)
        extra[f"knn_recall_at_{k}"] = float(arrays[f"knn_recall_at_{k}"].mean())
    return arrays, extra
