"""The grid runner: datasets × models × compressor specs → one result row per cell.

Everything a run needs is checked before any work starts (dataset cards, model names, spec
strings, chains against the models' dimensions), so bad input fails in a second with one line.
For each (model, dataset) the embeddings come from the cache and the exact float32 ground truth
(top-k neighbours, baseline quality) is computed once; every cell then fits its pipeline on the
calibration vectors, encodes, searches the codes and is scored against both.
"""
from __future__ import annotations

import logging
import time
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from compressors import Pipeline, SpecError, parse_spec
from compressors.base import knn_inner_product

from . import settings
from .data import load_card, load_dataset
from .embed import embed_dataset
from .errors import EmbpressError
from .metrics import MAIN_METRIC, knn_recall, retrieval_scores, sts_spearman
from .models import ModelInfo, model_info, resolve_model
from .results import RunWriter, format_table, new_run_dir

log = logging.getLogger("embpress")

DEFAULT_GRID = "default"


@dataclass
class RunConfig:
    datasets: list[str]
    models: list[str]
    compressors: list[str]
    k: int = 100
    max_queries: int | None = None
    max_docs: int | None = None
    batch_size: int = 32
    grid: str | None = None
    description: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def grid_path(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix == ".toml" and p.is_file():
        return p
    candidate = settings.BENCHMARKS / f"{name_or_path}.toml"
    if candidate.is_file():
        return candidate
    known = ", ".join(sorted(x.stem for x in settings.BENCHMARKS.glob("*.toml")))
    raise EmbpressError(f"grid {name_or_path!r} not found (a .toml file, or one of: {known})")


def load_grid(name_or_path: str = DEFAULT_GRID) -> RunConfig:
    path = grid_path(name_or_path)
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise EmbpressError(f"grid file {path} is not valid TOML: {exc}") from None
    allowed = set(RunConfig.__dataclass_fields__) - {"grid"}
    unknown = set(raw) - allowed
    if unknown:
        raise EmbpressError(f"grid file {path}: unknown key(s) {', '.join(sorted(unknown))} "
                            f"(allowed: {', '.join(sorted(allowed))})")
    missing = [k for k in ("datasets", "models", "compressors") if k not in raw]
    if missing:
        raise EmbpressError(f"grid file {path}: missing {', '.join(missing)}")
    for key in ("datasets", "models", "compressors"):
        if not isinstance(raw[key], list) or not all(isinstance(x, str) for x in raw[key]) or not raw[key]:
            raise EmbpressError(f"grid file {path}: {key} must be a non-empty list of strings")
    return RunConfig(grid=str(path), **raw)


@dataclass
class Plan:
    """A validated run: every name resolved, every spec parsed."""
    config: RunConfig
    pipelines: dict[str, Pipeline] = field(default_factory=dict)
    models: list = field(default_factory=list)


def plan(config: RunConfig) -> Plan:
    for name in config.datasets:
        load_card(name)
    entries = [resolve_model(m) for m in config.models]
    pipelines: dict[str, Pipeline] = {}
    for spec in config.compressors:
        pipe = parse_spec(spec)
        for entry in entries:
            if entry.dim is not None:
                try:
                    pipe.check_dim(entry.dim)
                except SpecError as exc:
                    raise SpecError(f"{spec} on {entry.name} ({entry.dim}-d): {exc}") from None
        pipelines[pipe.to_spec()] = pipe
    if config.k < 1:
        raise EmbpressError(f"k must be at least 1, got {config.k}")
    return Plan(config, pipelines, entries)


# ---------------------------------------------------------------------------- ground truth
@dataclass
class Truth:
    """What every cell of one (model, dataset) is compared with."""
    vectors: dict[str, np.ndarray]
    dim: int
    exact_ids: np.ndarray | None = None
    baseline: dict[str, float] = field(default_factory=dict)


def ground_truth(ds, vectors: dict[str, np.ndarray], k: int) -> Truth:
    if ds.task == "retrieval":
        C, Q = vectors["corpus"], vectors["queries"]
        _, ids = knn_inner_product(Q, C, k)
        ranked = [[ds.corpus_ids[j] for j in row if j >= 0] for row in ids]
        scores = retrieval_scores(ranked, ds.query_ids, ds.qrels)
        return Truth(vectors, C.shape[1], ids, {m: float(v.mean()) for m, v in scores.items()})
    a, b = vectors["sentences1"], vectors["sentences2"]
    cos = np.einsum("ij,ij->i", a, b) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return Truth(vectors, a.shape[1], None, {"spearman": sts_spearman(cos, ds.scores)})


# ---------------------------------------------------------------------------- one cell
def evaluate_cell(pipe: Pipeline, ds, truth: Truth, k: int) -> dict[str, Any]:
    pipe = pipe.clone()
    row: dict[str, Any] = {"compressor": pipe.to_spec(), "family": pipe.family, "dim": truth.dim,
                           "status": "ok"}
    retrieval = ds.task == "retrieval"
    if retrieval:
        calib, stored = truth.vectors["corpus"], truth.vectors["corpus"]
        row["calibration"] = "corpus"
    else:
        stored = np.concatenate([truth.vectors["sentences1"], truth.vectors["sentences2"]])
        calib = stored
        row["calibration"] = "pairs"
    try:
        pipe.check_dim(truth.dim)
        t0 = time.perf_counter()
        pipe.fit(calib)
        row["fit_s"] = time.perf_counter() - t0
    except SpecError as exc:
        row.update(status="infeasible", error=str(exc))
        return row
    row.update(out_dim=pipe.output_dim(truth.dim), bytes_per_vector=pipe.bytes_per_vector(),
               overhead_bytes=int(pipe.overhead_bytes), n_train=pipe.n_train or len(calib),
               warnings="; ".join(pipe.fit_warnings) or None, **pipe.info())
    row["compression_ratio"] = 4 * truth.dim / row["bytes_per_vector"]
    t0 = time.perf_counter()
    codes = pipe.encode(stored)
    row["encode_vps"] = len(stored) / max(time.perf_counter() - t0, 1e-9)
    if codes.dtype != np.uint8 or codes.shape != (len(stored), row["bytes_per_vector"]):
        raise RuntimeError(f"{row['compressor']}: codes {codes.dtype}{codes.shape} do not match the declared "
                           f"{row['bytes_per_vector']} bytes per vector")
    row["n_vectors"] = len(stored)
    if retrieval:
        Q = truth.vectors["queries"]
        t0 = time.perf_counter()
        _, ids = pipe.search(codes, Q, k)
        row["search_qps"] = len(Q) / max(time.perf_counter() - t0, 1e-9)
        row["n_queries"] = len(Q)
        ranked = [[ds.corpus_ids[j] for j in r if j >= 0] for r in ids]
        row.update({m: float(v.mean()) for m, v in retrieval_scores(ranked, ds.query_ids, ds.qrels).items()})
        for kk in (10, 100):
            kk_eff = min(kk, truth.exact_ids.shape[1])
            row[f"knn_recall_at_{kk}"] = 100 * float(knn_recall(ids, truth.exact_ids, kk_eff).mean())
    else:
        n = len(ds.scores)
        sim = pipe.pair_similarity(codes[:n], codes[n:])
        row["spearman"] = sts_spearman(sim, ds.scores)
        row["n_queries"] = n
    main = MAIN_METRIC[ds.task]
    row.update(main_metric=main, quality=row[main], baseline_quality=truth.baseline[main])
    row["retained_pct"] = 100 * row["quality"] / truth.baseline[main] if truth.baseline[main] else None
    return row


# ---------------------------------------------------------------------------- the run
def run(config: RunConfig, *, out_dir: Path | None = None, progress: bool = True,
        echo: Callable[[str], None] | None = None) -> tuple[pd.DataFrame, Path]:
    """Run a grid; returns the results table and the run folder."""
    echo = echo or (lambda msg: log.info(msg))
    the_plan = plan(config)
    run_dir = out_dir or new_run_dir()
    writer = RunWriter(run_dir, config.as_dict())
    echo(f"run {run_dir.name}: {len(config.datasets)} dataset(s) × {len(config.models)} model(s) × "
         f"{len(the_plan.pipelines)} compressor(s) → {run_dir}")
    status = "interrupted"
    try:
        for entry in the_plan.models:
            info: ModelInfo = model_info(entry)
            writer.meta["models"][entry.name] = info.as_dict()
            for name in config.datasets:
                ds = load_dataset(name, max_queries=config.max_queries, max_docs=config.max_docs)
                writer.meta["datasets"][name] = {"revision": ds.card.revision, "split": ds.card.split,
                                                 "location": ds.location, "task": ds.task,
                                                 "counts": ds.summary(), "sample": ds.sample or None,
                                                 "card": ds.card.path.name}
                writer.write_meta()
                vectors = embed_dataset(info, ds, batch_size=config.batch_size, progress=progress)
                truth = ground_truth(ds, vectors, config.k)
                echo(f"{name} · {entry.name}: float32 baseline " +
                     ", ".join(f"{m}={v:.2f}" for m, v in truth.baseline.items()))
                for spec, pipe in the_plan.pipelines.items():
                    base = {"dataset": name, "task": ds.task, "model": entry.name}
                    try:
                        row = evaluate_cell(pipe, ds, truth, config.k)
                    except (SpecError, ValueError, RuntimeError, MemoryError) as exc:
                        row = {"compressor": spec, "status": "failed", "error": f"{type(exc).__name__}: {exc}"}
                    writer.add_cell({**base, **row})
                    _echo_cell(echo, name, {**base, **row})
        status = "finished"
    except EmbpressError as exc:
        writer.meta["error"] = str(exc)
        status = "failed"
        raise
    finally:
        df = writer.finish(status)
    return df, run_dir


def _echo_cell(echo, dataset: str, row: dict[str, Any]) -> None:
    if row["status"] != "ok":
        echo(f"  {dataset} {row['compressor']}: {row['status']}: {row.get('error')}")
        return
    echo(f"  {dataset} {row['compressor']:<14} {row['bytes_per_vector']:>6} B/vec  "
         f"{row['main_metric']}={row['quality']:.2f}  retained {row['retained_pct']:.1f}%")


def run_table(df: pd.DataFrame) -> str:
    return format_table(df)
