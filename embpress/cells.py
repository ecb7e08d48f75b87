"""One cell of the grid: fit a compressor on the calibration vectors, encode, search, score.

This is the code that runs in a worker (in-process, a local process pool or a Dask worker). A task
carries only references: the dataset's name and sample, the paths of the cached embeddings
(memory-mapped, never copied per cell) and of the run's ground truth. Each worker process loads a
(model, dataset) context once and reuses it for every cell that needs it.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from compressors import Pipeline, SpecError, config_context, parse_spec

from .data import load_dataset
from .files import load_npz
from .fitcache import encode_cached, fit_pipeline_entry, pack_fitted
from .protocol import (DEFAULT_CALIBRATION, DEPLOYMENT_VECTORS, FOLD_SEED, Protocol, amortised_bytes, encode_folds,
                       fold_of, overhead_flag, parse_calibration, training_rows)
from .speed import spread
from .stats import N_BOOT, SEED, PairedBootstrap
from .tasks import TASKS, Task, TaskData, task_of
from .validate import metric_problem
from .vector_folders import is_vector_folder, load_vector_folder


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
    calibration: str = DEFAULT_CALIBRATION
    calibration_path: str | None = None
    budget: int | None = None
    template: str | None = None
    threads: int = 0                 # 0: leave the libraries' defaults
    fit_cache: bool = True
    timing: bool = False             # True: the runner's timing pass times this cell; the worker hands
                                     # back its fitted pipeline instead of timing it beside other workers


# ---------------------------------------------------------------------------- worker context
_THREADS = 0      # what limit_threads last set in this process
#: Stored vectors of the indicative encode timing when a cell's codes came from the fit cache.
ENCODE_SAMPLE_ROWS = 256


def limit_threads(n: int) -> None:
    """Pin BLAS/OpenMP and FAISS to n threads so parallel workers do not oversubscribe the CPU.

    ``threadpool_limits`` reaches only the libraries already loaded, and scikit-learn and SciPy
    (PCA, ITQ) bring their own OpenBLAS and OpenMP: they are loaded here first, and the
    environment variables cover anything loaded later (measured: PCA fits 10x slower when
    scikit-learn's BLAS kept 2 threads in each of 2 workers)."""
    global _THREADS
    if n <= 0 or n == _THREADS:
        return
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)
    import faiss
    import scipy.linalg  # noqa: F401 - loaded so that the limit below reaches its BLAS
    import sklearn.decomposition  # noqa: F401
    from threadpoolctl import threadpool_limits
    threadpool_limits(n)
    faiss.omp_set_num_threads(n)
    _THREADS = n


@lru_cache(maxsize=8)
def _load_context(dataset: str, max_queries, max_docs, vectors: tuple, truth: str) -> TaskData:
    vecs = {part: np.load(path, mmap_mode="r") for part, path in vectors}
    if is_vector_folder(dataset):
        ds = load_vector_folder(dataset)
    else:
        ds = load_dataset(dataset, max_queries=max_queries, max_docs=max_docs)
    with np.load(truth, allow_pickle=False) as z:
        exact = z["exact_ids"] if "exact_ids" in z else None
        baseline = json.loads(str(z["baseline"]))
    return TaskData.of(ds, vecs, exact_ids=exact, baseline=baseline)


def context_for(task: CellTask) -> TaskData:
    return _load_context(task.dataset, task.max_queries, task.max_docs, task.vectors, task.truth)


# ---------------------------------------------------------------------------- evaluation
def _external_calibration(task: CellTask) -> np.ndarray:
    if not task.calibration_path:
        raise SpecError(f"calibration {task.calibration!r} has no vectors (dataset:NAME or file:PATH.npy)")
    return np.load(task.calibration_path, mmap_mode="r")


def _calibration_key(task: CellTask, calib: np.ndarray, fold: dict | None = None) -> tuple:
    """What a cell's calibration vectors are made from: the same key, the same vectors (the
    files' sizes and modification times are part of it, and for a cross-fitted cell the fold,
    the number of folds and the hash seed)."""
    files = [path for _, path in task.vectors] + ([task.calibration_path] if task.calibration_path else [])
    return (task.dataset, task.max_docs, task.max_queries, task.calibration, calib.shape,
            tuple(sorted((fold or {}).items())),
            tuple((f, os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files))


@dataclass
class Fits:
    """The pipelines of one cell: one per fold (cross-fitted), else one for every vector."""
    protocol: str
    pipes: list[Pipeline]
    fold_ids: np.ndarray | None = None      # fold of each stored row (cross-fitted only)
    fit_s: list[float] = field(default_factory=list)
    cached: list[bool] = field(default_factory=list)
    n_train: list[int] = field(default_factory=list)
    entries: list[str | None] = field(default_factory=list)   # fit-cache entry of each pipeline (its codes' key)


def fit_cell(task: CellTask, pipe: Pipeline, stored: np.ndarray, ids: list[str]) -> Fits:
    """Fit the cell's pipeline(s) under its calibration protocol (see ``embpress.protocol``).

    SpecError when a fold is too small for the codec (the cell is then infeasible with the reason,
    never fitted in-sample instead)."""
    proto = parse_calibration(task.calibration)
    if not pipe.learns_from_data:
        proto = Protocol("oblivious")
    if proto.kind == "crossfit":
        fold_ids = fold_of(ids, proto.folds, proto.seed)
        fits = Fits(proto.label, [], fold_ids)
        for f in range(proto.folds):
            rows = training_rows(fold_ids, f, proto.sample, proto.seed)
            calib = np.ascontiguousarray(stored[rows], dtype=np.float32)
            meta = {"protocol": proto.label, "fold": f, "folds": proto.folds, "fold_seed": proto.seed,
                    "sample": proto.sample}
            try:
                fitted, fit_s, cached, entry = fit_pipeline_entry(pipe.clone(), calib, task.fit_cache,
                                                                  _calibration_key(task, calib, meta), meta)
            except SpecError as exc:
                raise SpecError(f"fold {f + 1} of {proto.folds} trains on {len(calib):,} vectors: {exc}") from None
            fits.pipes.append(fitted)
            fits.fit_s.append(fit_s)
            fits.cached.append(cached)
            fits.n_train.append(len(calib))
            fits.entries.append(entry)
        return fits
    calib = stored if proto.kind in ("in-sample", "oblivious") else _external_calibration(task)
    calib = np.ascontiguousarray(calib, dtype=np.float32)
    fitted, fit_s, cached, entry = fit_pipeline_entry(pipe, calib, task.fit_cache, _calibration_key(task, calib))
    return Fits(proto.label, [fitted], None, [fit_s], [cached], [len(calib)], [entry])


def _accounting(row: dict[str, Any], fits: Fits, dim: int, n_vectors: int) -> None:
    """Bytes, training and protocol columns, from the first pipeline (every fold stores the same)."""
    pipe = fits.pipes[0]
    bpv, overhead = pipe.bytes_per_vector(dim), int(pipe.overhead_bytes)
    warnings = list(dict.fromkeys(w for p in fits.pipes for w in p.fit_warnings))
    row.update(out_dim=pipe.output_dim(dim), bytes_per_vector=bpv, overhead_bytes=overhead,
               n_train=pipe.n_train or fits.n_train[0], warnings="; ".join(warnings) or None, **pipe.info())
    row["compression_ratio"] = 4 * dim / bpv
    row.update(protocol=fits.protocol, folds=len(fits.pipes) if fits.fold_ids is not None else None,
               fold_seed=FOLD_SEED if fits.fold_ids is not None else None,
               fit_s=float(np.mean(fits.fit_s)), fit_cached=all(fits.cached),
               fit_spread=spread(fits.fit_s) if len(fits.fit_s) > 1 and not any(fits.cached) else None,
               amortised_bytes_corpus=amortised_bytes(bpv, overhead, n_vectors),
               amortised_bytes_1m=amortised_bytes(bpv, overhead, DEPLOYMENT_VECTORS),
               overhead_flag=overhead_flag(bpv, overhead, n_vectors))


def evaluate(task: CellTask) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Run one cell; returns (result row, per-query arrays).

    Quality comes from the cell's protocol (cross-fitted folds merged, or one fit), scored by the
    dataset's task type (``embpress.tasks``) exactly as its float32 baseline was. The row's encode
    and search times are those of the first pipeline over every stored code (a cross-fitted
    cell's codes are its folds' codes, which have the same format and size), so a cross-fitted
    cell's timings compare with every other cell's: measured by the runner's timing pass
    (``task.timing``, :mod:`embpress.timing`), which gets that pipeline and the codes in the
    per-query arrays. With the timing pass off, the calls that compute the quality are timed
    here, once, beside the other workers (``timing = "indicative"``: the encode of every stored
    vector, the one batch search of every query, a cross-fitted cell's folds added up; no
    single-query latency and no spread)."""
    limit_threads(task.threads)
    ctx = context_for(task)
    kind = task_of(ctx.task)
    row: dict[str, Any] = {"cell_id": task.cell_id, "model": task.model, "dataset": task.dataset_label,
                           "task": ctx.task, "compressor": task.compressor, "status": "ok",
                           "budget": task.budget, "template": task.template, "worker_pid": os.getpid()}
    stored, ids = ctx.stored(), kind.stored_ids(ctx)
    row["calibration"] = kind.stored if task.calibration == "corpus" else task.calibration
    dim = stored.shape[1]
    row["dim"] = dim
    try:
        pipe = parse_spec(task.compressor)
        row["family"] = pipe.family
        pipe.check_dim(dim)
        t0 = time.perf_counter()
        fits = fit_cell(task, pipe, stored, ids)
        row["fit_wall_s"] = time.perf_counter() - t0   # the fits, or loading them from the cache
    except SpecError as exc:
        row.update(status="infeasible", error=str(exc))
        return row, {}
    _accounting(row, fits, dim, len(stored))
    row["n_vectors"] = len(stored)
    codes = _encode(task, row, fits, stored)
    answer = kind.answer(fits, codes, ctx, task.k, row, timed=not task.timing)
    per_query = _score(row, kind, answer, ctx)
    if task.timing:         # the runner's timing pass measures this pipeline alone, later
        per_query.update(pack_fitted(fits.pipes[0], codes))
    else:
        row["timing"] = "indicative"
    return row, per_query


def stored_codes(task: CellTask, fits: Fits, stored: np.ndarray) -> tuple[np.ndarray, list[float | None]]:
    """The codes the cell stores: every stored vector encoded by the one pipeline, or
    (cross-fitted) by its own fold's pipeline; a cached fit's codes of the same vectors come from
    the fit cache (:func:`embpress.fitcache.encode_cached`). Also the seconds of each encode call
    (None for codes read from the cache)."""
    seconds: list[float | None] = []

    def encode(f: int, pipe: Pipeline, X: np.ndarray) -> np.ndarray:
        key = _calibration_key(task, X, {"encoded_fold": f, "folds": len(fits.pipes)} if fits.fold_ids is not None else None)
        codes, s = encode_cached(pipe, X, fits.entries[f] if fits.entries else None, ("encoded",) + key)
        seconds.append(s)
        return codes

    if fits.fold_ids is not None:
        return encode_folds(fits.pipes, fits.fold_ids, stored, encode), seconds
    return encode(0, fits.pipes[0], np.ascontiguousarray(stored, dtype=np.float32)), seconds


def _encode(task: CellTask, row: dict[str, Any], fits: Fits, stored: np.ndarray) -> np.ndarray:
    """:func:`stored_codes`, checked against the declared width. Unless the timing pass will time
    the first pipeline's encode alone, the encode is timed here (indicative): those calls, or, when
    any codes came from the cache, one call on the first ``ENCODE_SAMPLE_ROWS`` stored vectors."""
    codes, seconds = stored_codes(task, fits, stored)
    if codes.dtype != np.uint8 or codes.shape != (len(stored), row["bytes_per_vector"]):
        raise RuntimeError(f"{task.compressor}: codes {codes.dtype}{codes.shape} do not match the declared "
                           f"{row['bytes_per_vector']} bytes per vector")
    row["codes_cached"] = any(s is None for s in seconds)
    if not task.timing:
        rows = len(stored)
        if row["codes_cached"]:
            X = np.ascontiguousarray(stored[:ENCODE_SAMPLE_ROWS], dtype=np.float32)
            t0 = time.perf_counter()
            fits.pipes[0].encode(X)
            seconds, rows = [time.perf_counter() - t0], len(X)
        row["encode_s"] = sum(s for s in seconds if s is not None)
        row["encode_vps"] = rows / max(row["encode_s"], 1e-9)
        row["encode_rows"] = rows
    return codes


def _score(row: dict[str, Any], kind: Task, answer: np.ndarray, ctx: TaskData) -> dict[str, np.ndarray]:
    """The answer's per-query arrays and figures, the main metric and its share of the baseline."""
    t0 = time.perf_counter()
    per_query = kind.score(answer, ctx)
    row.update(kind.summarise(per_query, ctx))
    row["metrics_s"] = time.perf_counter() - t0
    main = kind.main_metric
    row.update(main_metric=main, quality=row[main], baseline_quality=ctx.baseline[main])
    row["retained_pct"] = 100 * row["quality"] / ctx.baseline[main] if ctx.baseline[main] else None
    return per_query


_BOOTSTRAPS: dict[tuple, PairedBootstrap] = {}     # per (ground truth, metric, queries), in this worker


@lru_cache(maxsize=8)
def _truth_arrays(truth: str) -> dict[str, np.ndarray]:
    return load_npz(Path(truth))


def retained_interval(truth: str, task_kind: str, metric: str, per_query: dict[str, np.ndarray]) -> dict[str, Any]:
    """The 95 % paired-bootstrap interval of the cell's retained % (``ci_low``, ``ci_high``, with
    its resamples and seed), computed by the worker as the cell finishes: the same interval as
    :func:`embpress.stats.retained_ci` from the saved per-query files, which the report then need
    not recompute. The resamples and the baseline's statistic are shared by a dataset's cells."""
    pair = task_of(task_kind).paired(per_query, _truth_arrays(truth), metric)
    if pair is None:
        return {}
    x, base, statistic, gold = pair
    key = (truth, metric, len(x))
    if key not in _BOOTSTRAPS:
        if len(_BOOTSTRAPS) >= 4:       # a few (model, dataset)s at a time: each holds n × resamples counts
            _BOOTSTRAPS.pop(next(iter(_BOOTSTRAPS)))
        _BOOTSTRAPS[key] = PairedBootstrap(base, statistic, gold, N_BOOT, SEED)
    low, high = _BOOTSTRAPS[key].interval(x)
    return {"ci_low": low, "ci_high": high, "ci_resamples": N_BOOT, "ci_seed": SEED}


def run_cell(task: CellTask) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """evaluate() that never raises: an unexpected error becomes a failed row with its message."""
    try:
        # the grid's vectors were checked for NaN / inf where they entered (embedding, checksummed
        # cache, .npy loading): no per-call scan inside the measured kernels
        with config_context(assume_finite=True):
            row, per_query = evaluate(task)
        if row["status"] == "ok":
            row.update(retained_interval(task.truth, row["task"], row["main_metric"], per_query))
        problem = metric_problem(row, task_of(row["task"]).required if row.get("task") in TASKS else ())
        if problem is not None:   # an impossible figure is never reported as ok
            row.update(status="failed", error=f"impossible result: {problem}")
        return row, per_query
    except (SpecError, ValueError, RuntimeError, MemoryError, OSError) as exc:
        return ({"cell_id": task.cell_id, "model": task.model, "dataset": task.dataset_label,
                 "compressor": task.compressor, "status": "failed",
                 "budget": task.budget, "template": task.template,
                 "error": f"{type(exc).__name__}: {exc}"}, {})


# ---------------------------------------------------------------------------- ground truth
def ground_truth(ds, vectors: dict[str, np.ndarray], k: int) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Exact float32 results for a (model, dataset): the per-query arrays of its ground-truth file
    and the baseline figures, scored by the code that scores every cell (``Task.ground_truth``)."""
    return task_of(ds.task).ground_truth(TaskData.of(ds, vectors), k)
