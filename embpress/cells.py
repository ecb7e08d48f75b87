"""One cell of the grid: fit a compressor on the calibration vectors, encode, search, score.

This is the code that runs in a worker (in-process, a local process pool or a Dask worker). A task
carries only references: the dataset's name and sample, the paths of the cached embeddings
(memory-mapped, never copied per cell) and of the run's ground truth. Each worker process loads a
(model, dataset) context once and reuses it for every cell that needs it.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from compressors import Pipeline, SpecError, config_context, parse_spec
from compressors.base import cosine_rows, knn_inner_product

from . import settings
from .metrics import MAIN_METRIC, knn_recall, retrieval_scores, sts_spearman
from .speed import measure_search


@dataclass(frozen=True)
class CellTask:
    cell_id: str
    model: str
    dataset: str                     # card name or vector folder path
    dataset_label: str
    compressor: str
    vectors: tuple[tuple[str, str], ...]   # (part, .npy path)
    truth: str                       # path of the baseline npz
    k: int = 100
    max_queries: int | None = None
    max_docs: int | None = None
    calibration: str = "corpus"
    calibration_path: str | None = None
    budget: int | None = None
    template: str | None = None
    threads: int = 0                 # 0: leave the libraries' defaults
    fit_cache: bool = True


# ---------------------------------------------------------------------------- worker context
_THREADS = 0      # what limit_threads last set in this process


def limit_threads(n: int) -> None:
    """Pin BLAS/OpenMP and FAISS to n threads so parallel workers do not oversubscribe the CPU."""
    global _THREADS
    if n <= 0 or n == _THREADS:
        return
    import faiss
    from threadpoolctl import threadpool_limits
    threadpool_limits(n)
    faiss.omp_set_num_threads(n)
    _THREADS = n


@dataclass
class Context:
    task: str
    vectors: dict[str, np.ndarray]
    corpus_ids: list[str] = field(default_factory=list)
    query_ids: list[str] = field(default_factory=list)
    qrels: dict | None = None
    scores: np.ndarray | None = None
    exact_ids: np.ndarray | None = None
    baseline: dict[str, float] = field(default_factory=dict)


@lru_cache(maxsize=8)
def _load_context(dataset: str, max_queries, max_docs, vectors: tuple, truth: str) -> Context:
    from .data import is_vector_folder, load_dataset, load_vector_folder
    vecs = {part: np.load(path, mmap_mode="r") for part, path in vectors}
    if is_vector_folder(dataset):
        ds = load_vector_folder(dataset)
    else:
        ds = load_dataset(dataset, max_queries=max_queries, max_docs=max_docs)
    with np.load(truth, allow_pickle=False) as z:
        exact = z["exact_ids"] if "exact_ids" in z else None
        baseline = json.loads(str(z["baseline"]))
    return Context(ds.task, vecs, list(getattr(ds, "corpus_ids", [])), list(getattr(ds, "query_ids", [])),
                   getattr(ds, "qrels", None), getattr(ds, "scores", None), exact, baseline)


def context_for(task: CellTask) -> Context:
    return _load_context(task.dataset, task.max_queries, task.max_docs, task.vectors, task.truth)


# ---------------------------------------------------------------------------- fitted-compressor cache
@lru_cache(maxsize=1)
def _code_version() -> str:
    """A hash of the compressors package's source: changed code means new fits (stages build on
    each other, e.g. BIN's rescoring copy on SQ8, so the whole package is hashed)."""
    import compressors
    h = hashlib.sha256()
    for path in sorted(Path(compressors.__file__).parent.glob("*.py")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:12]


_DIGESTS: dict[tuple, str] = {}


def calibration_digest(calib: np.ndarray, key: tuple | None = None) -> str:
    """sha256 of the calibration vectors; with a ``key`` that identifies them (see
    ``_calibration_key``), hashed once per process for all the cells that share them."""
    if key is None:
        return hashlib.sha256(np.ascontiguousarray(calib).tobytes()).hexdigest()
    if key not in _DIGESTS:
        _DIGESTS[key] = calibration_digest(calib)
    return _DIGESTS[key]


def fit_cache_path(pipe: Pipeline, calib: np.ndarray, calib_key: tuple | None = None) -> Path:
    h = hashlib.sha256(calibration_digest(calib, calib_key).encode())
    h.update(f"{calib.shape}|{pipe.to_spec()}|{_code_version()}".encode())
    return settings.cache_dir() / "fitted" / f"{h.hexdigest()[:24]}.pkl"


def fit_pipeline(pipe: Pipeline, calib: np.ndarray, use_cache: bool = True,
                 calib_key: tuple | None = None) -> tuple[Pipeline, float, bool]:
    """Fit (or load the same fit from the cache); returns (pipeline, fit seconds, from_cache)."""
    path = (fit_cache_path(pipe, calib, calib_key) if use_cache and any(s.needs_fit for s in pipe.stages)
            else None)
    if path is not None and path.is_file():
        try:
            with open(path, "rb") as f:
                saved = pickle.load(f)
            return saved["pipeline"], saved["fit_s"], True
        except Exception:  # noqa: BLE001 - an unreadable cache entry is refitted and rewritten
            path.unlink(missing_ok=True)
    t0 = time.perf_counter()
    pipe.fit(calib)
    fit_s = time.perf_counter() - t0
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.part")
        with open(tmp, "wb") as f:
            pickle.dump({"pipeline": pipe, "fit_s": fit_s, "spec": pipe.to_spec()}, f)
        tmp.replace(path)
    return pipe, fit_s, False


# ---------------------------------------------------------------------------- evaluation
def _calibration(task: CellTask, ctx: Context, stored: np.ndarray) -> np.ndarray:
    kind = task.calibration
    if kind in ("corpus", "pairs"):
        return stored
    if kind.startswith("sample:"):
        n = int(kind.split(":", 1)[1])
        if n >= len(stored):
            return stored
        pick = np.sort(np.random.default_rng(0).choice(len(stored), n, replace=False))
        return np.asarray(stored[pick])
    if task.calibration_path:
        return np.load(task.calibration_path, mmap_mode="r")
    raise SpecError(f"unknown calibration {kind!r} (corpus, sample:N, dataset:NAME or file:PATH)")


def _calibration_key(task: CellTask, calib: np.ndarray) -> tuple:
    """What a cell's calibration vectors are made from: the same key, the same vectors (the
    files' sizes and modification times are part of it)."""
    files = [path for _, path in task.vectors] + ([task.calibration_path] if task.calibration_path else [])
    return (task.dataset, task.max_docs, task.max_queries, task.calibration, calib.shape,
            tuple((f, os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files))


def evaluate(task: CellTask) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Run one cell; returns (result row, per-query arrays)."""
    limit_threads(task.threads)
    ctx = context_for(task)
    row: dict[str, Any] = {"cell_id": task.cell_id, "model": task.model, "dataset": task.dataset_label,
                           "task": ctx.task, "compressor": task.compressor, "status": "ok",
                           "budget": task.budget, "template": task.template}
    per_query: dict[str, np.ndarray] = {}
    retrieval = ctx.task in ("retrieval", "neighbours")
    if retrieval:
        stored = ctx.vectors["corpus"]
        row["calibration"] = task.calibration
    else:
        stored = np.concatenate([ctx.vectors["sentences1"], ctx.vectors["sentences2"]])
        row["calibration"] = "pairs" if task.calibration == "corpus" else task.calibration
    dim = stored.shape[1]
    row["dim"] = dim
    try:
        pipe = parse_spec(task.compressor)
        row["family"] = pipe.family
        pipe.check_dim(dim)
        calib = np.ascontiguousarray(_calibration(task, ctx, stored), dtype=np.float32)
        t0 = time.perf_counter()
        pipe, row["fit_s"], row["fit_cached"] = fit_pipeline(pipe, calib, task.fit_cache,
                                                             _calibration_key(task, calib))
        row["fit_wall_s"] = time.perf_counter() - t0   # the fit, or loading it from the cache
    except SpecError as exc:
        row.update(status="infeasible", error=str(exc))
        return row, per_query
    row.update(out_dim=pipe.output_dim(dim), bytes_per_vector=pipe.bytes_per_vector(dim),
               overhead_bytes=int(pipe.overhead_bytes), n_train=pipe.n_train or len(calib),
               warnings="; ".join(pipe.fit_warnings) or None, **pipe.info())
    row["compression_ratio"] = 4 * dim / row["bytes_per_vector"]
    t0 = time.perf_counter()
    codes = pipe.encode(stored)
    row["encode_s"] = time.perf_counter() - t0
    row["encode_vps"] = len(stored) / max(row["encode_s"], 1e-9)
    if codes.dtype != np.uint8 or codes.shape != (len(stored), row["bytes_per_vector"]):
        raise RuntimeError(f"{task.compressor}: codes {codes.dtype}{codes.shape} do not match the declared "
                           f"{row['bytes_per_vector']} bytes per vector")
    row["n_vectors"] = len(stored)
    if retrieval:
        Q = ctx.vectors["queries"]
        speed = measure_search(pipe, codes, Q, task.k)     # build, batch, single-query latency, memory
        _, ids = speed.pop("results")
        row.update(speed)
        row["n_queries"] = len(Q)
        per_query["top10"] = ids[:, :10].astype(np.int32)
        t0 = time.perf_counter()
        recalls = {}
        for kk in (10, 100):
            kk_eff = min(kk, ctx.exact_ids.shape[1])
            recalls[f"knn_recall_at_{kk}"] = 100 * knn_recall(ids, ctx.exact_ids, kk_eff)
        per_query.update(recalls)
        row.update({m: float(v.mean()) for m, v in recalls.items()})
        if ctx.qrels is not None:
            ranked = [[ctx.corpus_ids[j] for j in r if j >= 0] for r in ids]
            scores = retrieval_scores(ranked, ctx.query_ids, ctx.qrels)
            per_query.update(scores)
            row.update({m: float(v.mean()) for m, v in scores.items()})
        row["metrics_s"] = time.perf_counter() - t0
    else:
        n = len(ctx.scores)
        t0 = time.perf_counter()
        sim = pipe.pair_similarity(codes[:n], codes[n:])
        row["score_s"] = time.perf_counter() - t0
        per_query["similarity"] = np.asarray(sim, dtype=np.float64)
        t0 = time.perf_counter()
        row["spearman"] = sts_spearman(sim, ctx.scores)
        row["metrics_s"] = time.perf_counter() - t0
        row["n_queries"] = n
    main = MAIN_METRIC[ctx.task]
    row.update(main_metric=main, quality=row[main], baseline_quality=ctx.baseline[main])
    row["retained_pct"] = 100 * row["quality"] / ctx.baseline[main] if ctx.baseline[main] else None
    return row, per_query


def run_cell(task: CellTask) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """evaluate() that never raises: an unexpected error becomes a failed row with its message."""
    try:
        # the grid's vectors were checked for NaN / inf where they entered (embedding, checksummed
        # cache, .npy loading): no per-call scan inside the measured kernels
        with config_context(assume_finite=True):
            return evaluate(task)
    except (SpecError, ValueError, RuntimeError, MemoryError, OSError) as exc:
        return ({"cell_id": task.cell_id, "model": task.model, "dataset": task.dataset_label,
                 "compressor": task.compressor, "status": "failed",
                 "budget": task.budget, "template": task.template,
                 "error": f"{type(exc).__name__}: {exc}"}, {})


# ---------------------------------------------------------------------------- ground truth
def ground_truth(ds, vectors: dict[str, np.ndarray], k: int) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Exact float32 results for a (model, dataset): top-k ids and the baseline quality, per query."""
    arrays: dict[str, np.ndarray] = {}
    if ds.task in ("retrieval", "neighbours"):
        C, Q = vectors["corpus"], vectors["queries"]
        _, ids = knn_inner_product(Q, C, k)
        arrays["exact_ids"] = ids.astype(np.int32)
        arrays["top10"] = arrays["exact_ids"][:, :10]
        arrays["query_ids"] = np.asarray(ds.query_ids, dtype=str)
        arrays["corpus_ids"] = np.asarray(ds.corpus_ids, dtype=str)
        baseline = {"knn_recall_at_10": 100.0, "knn_recall_at_100": 100.0}
        if ds.qrels is not None:
            ranked = [[ds.corpus_ids[j] for j in row if j >= 0] for row in ids]
            scores = retrieval_scores(ranked, ds.query_ids, ds.qrels)
            arrays.update(scores)
            baseline.update({m: float(v.mean()) for m, v in scores.items()})
        return arrays, baseline
    cos = cosine_rows(np.asarray(vectors["sentences1"]), np.asarray(vectors["sentences2"]))
    arrays["similarity"] = cos.astype(np.float64)
    arrays["gold"] = np.asarray(ds.scores, dtype=np.float64)
    return arrays, {"spearman": sts_spearman(cos, ds.scores)}


def save_npz(path: Path, arrays: dict[str, np.ndarray], **extra: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays, **{k: np.asarray(json.dumps(v)) for k, v in extra.items()})
    tmp.replace(path)
