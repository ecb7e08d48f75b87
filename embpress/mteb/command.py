"""``embpress mteb``: run mteb on compressor specs (and mteb's own CompressionWrapper) into a run folder.

A run folder holds mteb's result JSON layout under ``mteb/results/`` (one experiment folder per
spec, written by mteb's ResultCache), mteb's predictions under ``mteb/predictions/``, and an
embpress results table with the grid's columns (``cells.jsonl``, ``results.parquet``, per-query
arrays), so ``embpress show``, ``report`` and ``compare`` work on it.

Each spec is fitted once per task on the stated calibration before mteb sees it: ``corpus`` is
the task's own corpus (retrieval) or both sides of its pairs (STS), in-sample, as a grid run
with ``calibration = "corpus"`` (in-sample); ``dataset:NAME`` and ``file:PATH.npy`` (external) as in
the grid. The grid's cross-fitted calibration (its default, and ``sample:N``, drawn from the other
folds) has no single-model equivalent and is refused.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from compressors import SpecError, config_context, parse_spec

from ..data import load_dataset
from ..vector_folders import load_npy
from ..embed import embed_dataset
from ..errors import EmbpressError
from ..fitcache import calibration_digest, fit_pipeline
from ..grid import cell_id
from ..models import DEFAULT_MODEL
from ..runfolder import RunFolder, RunWriter, new_run_dir
from ..tasks import TASKS, task_of
from ..protocol import check_calibration, parse_calibration
from .models import CompressedModel, TextEncoder
from .perquery import baseline_arrays, cell_arrays
from .tasks import LoadedTask, load_task

BASELINE = "F32"
#: mteb's CompressionWrapper levels added by --with-mteb-wrapper: (label, OutputDType name, bits per dim)
WRAPPER_LEVELS = (("mteb:int8", "INT8", 8), ("mteb:binary", "BINARY", 1))


@dataclass
class MtebConfig:
    tasks: list[str]
    compressors: list[str]
    model: str = DEFAULT_MODEL
    calibration: str = "corpus"
    max_queries: int | None = None
    max_docs: int | None = None
    with_mteb_wrapper: bool = False
    batch_size: int = 32
    fit_cache: bool = True
    specs: list[str] = field(default_factory=list)   # filled: F32 first, then the others

    def as_dict(self) -> dict[str, Any]:
        return {"command": "mteb", **asdict(self)}


def _check(cfg: MtebConfig) -> None:
    if not cfg.tasks or not cfg.compressors:
        raise EmbpressError("give at least one task (-t) and one compressor spec (-c)")
    check_calibration(cfg.calibration)
    if parse_calibration(cfg.calibration).kind == "crossfit":
        raise EmbpressError(f"--calibration {cfg.calibration}: embpress mteb fits one model per spec, and the "
                            "grid's cross-fitting (crossfit:K, sample:N from the other folds) has no single-model "
                            "equivalent; give corpus (in-sample), dataset:NAME or file:PATH.npy")
    specs = [parse_spec(s).to_spec() for s in cfg.compressors]   # a malformed spec: SpecError, one line
    cfg.specs = [BASELINE] + [s for s in dict.fromkeys(specs) if s != BASELINE]


def _task_vectors(lt: LoadedTask, base: TextEncoder, cfg: MtebConfig, progress: bool) -> dict[str, np.ndarray]:
    """embpress's cached embeddings of a mirrored task's texts, remembered by the encoder."""
    if lt.ds is None:
        return {}
    vecs = embed_dataset(base.info, lt.ds, batch_size=cfg.batch_size, progress=progress)
    for part, (texts, _) in task_of(lt.ds.task).parts(lt.ds).items():
        base.remember(texts, vecs[part])
    return vecs


def calibration_vectors(cal: str, lt: LoadedTask, vecs: dict[str, np.ndarray], base: TextEncoder,
                        cfg: MtebConfig) -> tuple[np.ndarray, str]:
    """(calibration vectors, label) as the grid defines them (``embpress.cells``)."""
    if cal == "corpus":
        if not vecs:
            raise EmbpressError(f"MTEB task {lt.name!r} is not in embpress's mirror, so it has no corpus to "
                                f"calibrate on: give --calibration dataset:NAME or file:PATH.npy")
        task = task_of(lt.ds.task)
        return np.ascontiguousarray(task.stored_vectors(vecs), dtype=np.float32), task.stored
    if cal.startswith("file:"):
        return np.ascontiguousarray(load_npy(Path(cal[5:])), dtype=np.float32), cal
    parts = []
    for name in cal[8:].split("+"):
        ds = load_dataset(name)
        vecs = embed_dataset(base.info, ds, batch_size=cfg.batch_size, progress=False)
        parts.append(task_of(ds.task).stored_vectors(vecs))
    return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32), cal


def _evaluate(model, lt: LoadedTask, run_dir: Path, pred_dir: Path, cfg: MtebConfig) -> tuple[dict, float]:
    import mteb
    t0 = time.perf_counter()
    res = mteb.evaluate(model, lt.task, cache=mteb.ResultCache(RunFolder(run_dir).mteb), prediction_folder=pred_dir,
                        overwrite_strategy="always", show_progress_bar=False,
                        encode_kwargs={"batch_size": cfg.batch_size, "show_progress_bar": False})
    if res.exceptions:
        raise EmbpressError(f"mteb failed on {lt.name}: {res.exceptions[0]}")
    scores = res.task_results[0].scores[lt.split][0]
    return scores, time.perf_counter() - t0


def _quality(row: dict[str, Any], scores: dict, lt: LoadedTask) -> None:
    """mteb's scores (fractions) as the grid's columns (×100); a task type embpress does not have
    keeps mteb's main score only."""
    task = TASKS.get(lt.kind)
    for col, key in (task.mteb_scores if task is not None else {}).items():
        row[col] = 100 * float(scores[key])
    row["mteb_main_score"] = 100 * float(scores["main_score"])
    main = task.main_metric if task is not None else None
    row.update(main_metric=main or "mteb_main_score", quality=row[main or "mteb_main_score"])


def _base_row(lt: LoadedTask, model: str, compressor: str, dim: int) -> dict[str, Any]:
    return {"cell_id": cell_id(model, lt.label, compressor), "dataset": lt.label, "task": lt.kind,
            "model": model, "compressor": compressor, "status": "ok", "dim": dim, "mteb_task": lt.name,
            "comparable": lt.note is None, "note": lt.note}


def spec_row(spec: str, lt: LoadedTask, base: TextEncoder, calib: np.ndarray, cal_label: str,
             run_dir: Path, cfg: MtebConfig) -> tuple[dict[str, Any], Path]:
    """Fit ``spec`` once on the calibration vectors, run mteb on it; the row and its predictions."""
    dim = calib.shape[1]
    row = _base_row(lt, base.info.entry.name, spec, dim)
    pipe = parse_spec(spec)
    row["family"] = pipe.family
    pipe.check_dim(dim)
    pipe, row["fit_s"], row["fit_cached"] = fit_pipeline(pipe, calib, cfg.fit_cache)
    model = CompressedModel(base, pipe, calibration=cal_label, calibration_sha256=calibration_digest(calib))
    row.update(calibration=cal_label, n_train=pipe.n_train or len(calib), out_dim=pipe.output_dim(dim),
               protocol=parse_calibration(cfg.calibration).label if pipe.learns_from_data else "oblivious",
               bytes_per_vector=pipe.bytes_per_vector(dim), overhead_bytes=int(pipe.overhead_bytes),
               mteb_experiment=model.mteb_model_meta.experiment_name)
    row["compression_ratio"] = 4 * dim / row["bytes_per_vector"]
    pred_dir = RunFolder(run_dir).mteb_predictions(spec)
    with config_context(assume_finite=True):   # embeddings were checked where they entered
        scores, row["eval_s"] = _evaluate(model, lt, run_dir, pred_dir, cfg)
    t = model.index_backend.timing
    if t["n_vectors"]:
        row.update(n_vectors=t["n_vectors"], n_queries=t["n_queries"], encode_s=t["encode_s"],
                   search_s=t["search_s"], encode_vps=t["n_vectors"] / max(t["encode_s"], 1e-9),
                   search_qps=t["n_queries"] / max(t["search_s"], 1e-9))
    _quality(row, scores, lt)
    return row, pred_dir


def wrapper_row(label: str, dtype: str, bits: int, lt: LoadedTask, base: TextEncoder, run_dir: Path,
                cfg: MtebConfig) -> tuple[dict[str, Any], Path]:
    """mteb's own CompressionWrapper: ranges from each encode() call, scores on the raw codes."""
    from mteb.models import CompressionWrapper
    from mteb.types import OutputDType
    dim = base.dim
    row = _base_row(lt, base.info.entry.name, label, dim)
    model = CompressionWrapper(base.with_meta(base.mteb_model_meta), getattr(OutputDType, dtype))
    row.update(family="mteb CompressionWrapper", calibration="per encode() call", out_dim=dim,
               bytes_per_vector=dim * bits // 8, compression_ratio=32 / bits, n_train=None,
               mteb_experiment=model.mteb_model_meta.experiment_name)
    pred_dir = RunFolder(run_dir).mteb_predictions(label)
    scores, row["eval_s"] = _evaluate(model, lt, run_dir, pred_dir, cfg)
    _quality(row, scores, lt)
    return row, pred_dir


def _task_rows(lt: LoadedTask, base: TextEncoder, writer: RunWriter, cfg: MtebConfig, echo) -> None:
    vecs = _task_vectors(lt, base, cfg, progress=False)
    run_dir, model = writer.dir, base.info.entry.name
    jobs: list[tuple[str, Callable[[], tuple[dict, Path]]]] = []
    if cfg.specs:
        calib, cal_label = calibration_vectors(cfg.calibration, lt, vecs, base, cfg)
        jobs += [(s, lambda s=s: spec_row(s, lt, base, calib, cal_label, run_dir, cfg)) for s in cfg.specs]
    if cfg.with_mteb_wrapper:
        jobs += [(lab, lambda lab=lab, d=d, b=b: wrapper_row(lab, d, b, lt, base, run_dir, cfg))
                 for lab, d, b in WRAPPER_LEVELS]
    ref: dict[str, Any] = {}   # the float32 row's quality and per-query arrays (F32 is always the first job)
    for spec, job in jobs:
        row, pred_dir = _run_job(lt, model, base.dim, spec, job)
        _against_baseline(row, pred_dir, lt, writer, ref)
        writer.add_cell(row)
        echo(f"{lt.name} · {spec}: " + (f"{row['main_metric']}={row['quality']:.2f}" if row["status"] == "ok"
                                          else f"{row['status']}: {row.get('error')}"))


def _run_job(lt: LoadedTask, model: str, dim: int, spec: str, job) -> tuple[dict[str, Any], Path | None]:
    """A row that never raises for a spec's own problem: infeasible (with the reason) or failed."""
    try:
        return job()
    except SpecError as exc:
        return {**_base_row(lt, model, spec, dim), "status": "infeasible", "error": str(exc)}, None
    except (ValueError, RuntimeError, MemoryError) as exc:
        return {**_base_row(lt, model, spec, dim), "status": "failed", "error": f"{type(exc).__name__}: {exc}"}, None


def _against_baseline(row: dict[str, Any], pred_dir: Path | None, lt: LoadedTask, writer: RunWriter,
                      ref: dict[str, Any]) -> None:
    """retained_pct, kNN recall and the per-query files (for the report and compare) of one row."""
    if row["status"] != "ok":
        return
    if row["compressor"] == BASELINE and "quality" not in ref:
        ref["quality"] = row["quality"]
        baseline = {row["main_metric"]: row["quality"]}
        writer.meta.setdefault("baselines", {})[f"{row['model']}|{lt.label}"] = baseline
        if lt.ds is not None:
            ref["arrays"] = baseline_arrays(lt, pred_dir)
            writer.save_baseline(row["model"], lt.label, ref["arrays"], baseline)
    if "arrays" in ref:
        per_query, extra = cell_arrays(lt, pred_dir, ref["arrays"])
        row.update(extra)
        writer.save_cell_arrays(row["cell_id"], per_query)
    if ref.get("quality"):
        row.update(baseline_quality=ref["quality"], retained_pct=100 * row["quality"] / ref["quality"])


def run_mteb(cfg: MtebConfig, *, out: Path | None = None, echo: Callable[[str], None] = print):
    """Run mteb on every (task, spec); returns (results table, run folder)."""
    _check(cfg)
    base = TextEncoder(cfg.model)
    loaded = [load_task(t, max_queries=cfg.max_queries, max_docs=cfg.max_docs) for t in cfg.tasks]
    if out is not None and out.exists():
        raise EmbpressError(f"run folder {out} already exists; a run never overwrites another")
    run_dir = out or new_run_dir(label="mteb")
    run_dir.mkdir(parents=True, exist_ok=True)
    writer = RunWriter(run_dir, cfg.as_dict())
    import mteb
    writer.meta["versions"]["mteb"] = mteb.__version__
    writer.meta["models"][base.info.entry.name] = base.info.as_dict()
    for lt in loaded:
        writer.meta["datasets"][lt.label] = {"mteb_task": lt.name, "task": lt.kind, "split": lt.split,
                                             "note": lt.note, **({"revision": lt.ds.card.revision,
                                             "location": lt.ds.location, "counts": lt.ds.summary(),
                                             "sample": lt.ds.sample or None} if lt.ds is not None else {})}
    writer.write_meta()
    status = "failed"
    try:
        for lt in loaded:
            _task_rows(lt, base, writer, cfg, echo)
        status = "finished"
    finally:
        writer.meta["texts"] = dict(base.stats)
        df = writer.finish(status)
    return df, run_dir


def run_cli(args) -> int:
    """``embpress mteb``: run, print the table and where the files are."""
    import logging
    import sys
    import warnings

    import datasets

    from ..results import format_table
    datasets.disable_progress_bars()
    logging.getLogger("mteb").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module="mteb")   # mteb logs each of its warnings as well
    echo = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    cfg = MtebConfig(tasks=args.task, compressors=args.compressor or ["F32", "SQ8", "BIN"], model=args.model,
                     calibration=args.calibration, max_queries=args.max_queries, max_docs=args.max_docs,
                     with_mteb_wrapper=args.with_mteb_wrapper, fit_cache=not args.no_fit_cache)
    df, run_dir = run_mteb(cfg, out=args.out, echo=echo)
    print(format_table(df))
    print(f"\nresults: {run_dir}/results.parquet, results.csv, run.json; mteb's results: {run_dir}/mteb/results")
    return 0
