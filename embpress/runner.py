"""The grid runner: datasets × models × compressor settings → one result row per cell.

1. *Plan*: every name, spec and template is checked before any work (one line on bad input).
2. *Prepare*, per (model, dataset): embeddings from the cache (encoded once), the exact float32
   ground truth computed once and saved in the run folder (``per_query/baseline__…npz``), and the
   cells expanded for the model's dimension (budgets solved, infeasible ones kept with a reason).
3. *Execute*: cells run in-process, in a local process pool (``workers``), or on a Dask cluster;
   each finished cell is appended atomically to ``cells.jsonl`` (and its per-query arrays to
   ``per_query/<cell_id>.npz``) by this process alone, so ``kill -9`` loses only cells in flight
   and ``--resume`` continues without recomputing or duplicating finished ones.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable

import pandas as pd

from compressors import SpecError, parse_spec

from .cells import CellTask, ground_truth, run_cell
from .data import load_card, load_dataset
from .embed import embed_dataset
from .errors import EmbpressError
from .grid import CellSpec, RunConfig, cell_id, check_template, expand, family_calibration, family_parts
from .models import model_info, resolve_model
from .protocol import check_calibration
from .tasks import task_of
from .results import format_table
from .files import save_npy
from .runfolder import RunFolder, RunWriter, io_failure, new_run_dir
from .costs import slowest_first
from .fitcache import split_fitted
from .timing import TimingConfig, timing_pass
from .validate import check_config, check_int
from .vector_folders import is_vector_folder, load_vector_folder

log = logging.getLogger("embpress")

BYO_MODEL = "(vectors)"
EXECUTORS = ("local", "dask")


@dataclass
class Plan:
    config: RunConfig
    models: list = field(default_factory=list)


def plan(config: RunConfig) -> Plan:
    """Check everything a run needs before it starts; raises EmbpressError/SpecError (one line)."""
    check_config(config)
    for name in config.datasets:
        if is_vector_folder(name):
            load_vector_folder(name)      # its ids, qrels and scores are checked before any work
        else:
            load_card(name)
    entries = [resolve_model(m) for m in config.models]
    for spec in config.compressors:
        pipe = parse_spec(spec)
        for entry in entries:
            if entry.dim is not None:
                try:
                    pipe.check_dim(entry.dim)
                except SpecError as exc:
                    raise SpecError(f"{spec} on {entry.name} ({entry.dim}-d): {exc}") from None
    check_calibration(config.calibration)
    for family in config.families:
        _check_family(config, family, entries)
    if config.k < 1:
        raise EmbpressError(f"k must be at least 1, got {config.k}")
    return Plan(config, entries)


def _check_family(config: RunConfig, family, entries: list) -> None:
    template, _ = family_parts(family, config.budgets)
    check_template(template, config.axes)
    if family_calibration(family) is not None:
        check_calibration(family_calibration(family))
    try:
        for entry in entries:
            if entry.dim is not None:
                expand(replace(config, compressors=[], families=[family]), entry.dim)
    except (KeyError, IndexError, ValueError) as exc:
        raise SpecError(f"family {template!r} is not a valid template ({exc})") from None


def _calibration_path(cal: str, info, writer: RunWriter, batch_size: int, progress: bool) -> str | None:
    """Separate calibration vectors: other datasets' corpora (embedded with the same model, joined
    once into the run folder) or a user's .npy file. ``info`` is None for bring-your-own vectors,
    which have no model to embed other datasets with."""
    import numpy as np
    if cal.startswith("file:"):
        return str(Path(cal[5:]).resolve())
    if not cal.startswith("dataset:") or info is None:
        return None
    parts = []
    for name in cal[8:].split("+"):
        ds = load_dataset(name)
        parts.append(task_of(ds.task).stored_vectors(embed_dataset(info, ds, batch_size=batch_size, progress=progress)))
    if len(parts) == 1 and getattr(parts[0], "filename", None):   # one cached corpus: used in place
        return str(parts[0].filename)
    path = writer.folder.vectors("calibration", info.entry.name, cal[8:])
    save_npy(path, np.concatenate([np.asarray(p) for p in parts]).astype(np.float32))
    return str(path)


def _vector_paths(vectors: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    out = []
    for part, arr in vectors.items():
        path = getattr(arr, "filename", None)
        if path is None:
            raise EmbpressError(f"vectors for {part} are not backed by a file")
        out.append((part, str(path)))
    return tuple(out)


def prepare(the_plan: Plan, writer: RunWriter, progress: bool, echo) -> list[CellTask]:
    """Embeddings, ground truth and the cell list, in grid order."""
    config = the_plan.config
    tasks: list[CellTask] = []
    pairs: list[tuple[Any, str]] = []
    for name in config.datasets:
        if is_vector_folder(name):
            pairs.append((None, name))
        else:
            pairs.extend((entry, name) for entry in the_plan.models)
    for entry, name in pairs:
        if entry is None:
            ds = load_vector_folder(name)
            model, vectors = BYO_MODEL, ds.vectors
            vectors = {p: _as_file_backed(writer.dir, name, p, v) for p, v in vectors.items()}
            revision = ds.revision
        else:
            info = model_info(entry)
            writer.meta["models"][entry.name] = info.as_dict()
            ds = load_dataset(name, max_queries=config.max_queries, max_docs=config.max_docs)
            vectors = embed_dataset(info, ds, batch_size=config.batch_size, progress=progress)
            model, revision = entry.name, ds.card.revision
            if (len(the_plan.models) > 1 or getattr(entry, "variant", None)) \
                    and model not in writer.meta.setdefault("model_profiles", {}):
                # the model track: size, encode speed and agreement with the float32 base,
                # measured side by side once per model and merged into its rows
                from .profiles import profile_texts, variant_profile
                writer.meta["model_profiles"][model] = variant_profile(info, profile_texts(ds),
                                                                       batch_size=config.batch_size)
        writer.meta["datasets"][ds.name] = {"revision": revision, "task": ds.task, "location": ds.location,
                                            "counts": ds.summary(), "sample": ds.sample or None,
                                            "split": getattr(getattr(ds, "card", None), "split", None),
                                            "source": name}
        arrays, baseline = ground_truth(ds, vectors, config.k)
        truth_path = writer.save_baseline(model, ds.name, arrays, baseline)
        writer.meta.setdefault("baselines", {})[f"{model}|{ds.name}"] = baseline
        writer.write_meta()
        echo(f"{ds.name} · {model}: float32 baseline " + ", ".join(f"{m}={v:.2f}" for m, v in baseline.items()))
        cal_paths: dict[str, str | None] = {}
        dim = next(iter(vectors.values())).shape[1]
        for cell in expand(config, dim):
            if cell.infeasible is not None:
                tasks.append(_infeasible_task(model, ds.name, ds.task, cell))
                continue
            cal = cell.calibration or config.calibration
            if cal not in cal_paths:     # embedded (other datasets) only when a feasible cell needs it
                cal_paths[cal] = _calibration_path(cal, info if entry is not None else None, writer,
                                                   config.batch_size, progress)
            tasks.append(CellTask(
                cell_id=cell_id(model, ds.name, cell.compressor, cell.budget, cell.calibration), model=model,
                dataset=name, dataset_label=ds.name, compressor=cell.compressor,
                vectors=_vector_paths(vectors), truth=str(truth_path), k=config.k,
                max_queries=config.max_queries, max_docs=config.max_docs, calibration=cal,
                calibration_path=cal_paths[cal], budget=cell.budget, template=cell.template))
    return tasks


def _as_file_backed(run_dir: Path, name: str, part: str, arr) -> Any:
    """Vectors of a bring-your-own folder that were sliced in memory are written once to the run."""
    import numpy as np
    if getattr(arr, "filename", None):
        return arr
    path = RunFolder(run_dir).vectors(Path(name).name, part)
    save_npy(path, np.asarray(arr, dtype=np.float32))
    return np.load(path, mmap_mode="r")


@dataclass(frozen=True)
class _InfeasibleTask:
    cell_id: str
    model: str
    dataset: str
    compressor: str
    budget: int | None
    template: str | None
    reason: str
    task: str


def _infeasible_task(model: str, dataset: str, task: str, cell: CellSpec) -> _InfeasibleTask:
    return _InfeasibleTask(cell_id(model, dataset, cell.compressor, cell.budget, cell.calibration), model, dataset,
                           cell.compressor, cell.budget, cell.template, cell.infeasible or "", task)


# ---------------------------------------------------------------------------- execution
def _iter_results(tasks: list[CellTask], executor: str, workers: int, threads: int,
                  scheduler: str | None) -> Iterable[tuple[CellTask, tuple[dict, dict]]]:
    if executor == "dask":
        from .scheduler import connect
        client = connect(scheduler)
        from distributed import as_completed
        try:
            futures = {client.submit(run_cell, replace(t, threads=threads or 1), pure=False, key=f"cell-{t.cell_id}"): t
                       for t in tasks}
            for fut in as_completed(futures):
                yield futures[fut], fut.result()
        finally:
            client.close()
        return
    if workers <= 1:
        for t in tasks:
            yield t, run_cell(replace(t, threads=threads))
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed as done
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(run_cell, replace(t, threads=threads)): t for t in tasks}
        for fut in done(futures):
            yield futures[fut], fut.result()


def execute(tasks: list, writer: RunWriter, *, executor: str = "local", workers: int = 1,
            threads: int | None = None, scheduler: str | None = None, progress: bool = True,
            fit_cache: bool = True, timing: bool = False,
            echo: Callable[[str], None] = lambda m: None) -> None:
    """Run the cells (their quality; with ``timing``, each worker's fitted pipeline is kept in the
    run folder for the timing pass instead of timing it beside the other workers)."""
    from tqdm.auto import tqdm
    if threads is None:
        threads = max(1, (os.cpu_count() or 1) // max(1, workers)) if (workers > 1 or executor == "dask") else 0
    writer.meta["execution"] = {"executor": executor, "workers": workers, "threads_per_worker": threads,
                                "scheduler": scheduler, "fit_cache": fit_cache}
    writer.write_meta()
    bar = tqdm(total=len(tasks), unit="cell", desc="cells", file=sys.stderr, disable=not progress,
               dynamic_ncols=True, mininterval=0.5)
    say = (lambda m: bar.write(m, file=sys.stderr)) if progress else echo
    t0 = time.perf_counter()
    runnable = []
    for t in tasks:
        if isinstance(t, _InfeasibleTask):
            row = {"cell_id": t.cell_id, "model": t.model, "dataset": t.dataset, "task": t.task,
                   "compressor": t.compressor,
                   "budget": t.budget, "template": t.template, "status": "infeasible", "error": t.reason}
            writer.add_cell(row)
            bar.update(1)
        else:
            runnable.append(replace(t, fit_cache=fit_cache, timing=timing))
    try:
        for task, (row, per_query) in _iter_results(runnable, executor, workers, threads, scheduler):
            per_query, fitted = split_fitted(per_query)
            if fitted:
                writer.save_fitted(task.cell_id, fitted)
            if per_query:
                writer.save_cell_arrays(task.cell_id, per_query)
            row.update(writer.meta.get("model_profiles", {}).get(task.model, {}))
            row["finished_s"] = round(time.perf_counter() - t0, 3)     # since the cell phase began
            writer.add_cell(row)
            bar.set_postfix_str(f"{row['dataset']} {task.compressor}", refresh=False)
            bar.update(1)
            _echo_cell(say, row)
    finally:
        bar.close()


def _echo_cell(echo, row: dict[str, Any]) -> None:
    if row["status"] != "ok":
        echo(f"  {row['dataset']} {row['compressor']}: {row['status']}: {row.get('error')}")
        return
    retained = row.get("retained_pct")
    echo(f"  {row['dataset']:<12} {row['compressor']:<22} {row['bytes_per_vector']:>6} B/vec  "
         f"{row['main_metric']}={row['quality']:.2f}  retained "
         + (f"{retained:.1f}%" if retained is not None else "- (the float32 baseline is 0)")
         + ("  (fit cached)" if row.get("fit_cached") else ""))


# ---------------------------------------------------------------------------- the run
def run(config: RunConfig | None = None, *, out_dir: Path | None = None, progress: bool = True,
        echo: Callable[[str], None] | None = None, executor: str = "local", workers: int = 1,
        threads: int | None = None, scheduler: str | None = None, fit_cache: bool = True,
        resume: Path | None = None, timing: TimingConfig | None = None) -> tuple[pd.DataFrame, Path]:
    """Run a grid (or resume a run folder); returns the results table and the run folder.

    ``timing`` (default: on, :class:`embpress.timing.TimingConfig`): after the cells, time each one
    alone; ``TimingConfig(enabled=False)`` keeps the workers' side-by-side timings, marked indicative.
    A resumed run keeps the timing settings it was started with."""
    timing = timing or TimingConfig()
    echo = echo or (lambda msg: log.info(msg))
    _check_execution(executor, workers, threads, scheduler)
    if resume is not None:
        writer, config = RunWriter.reopen(resume)
        if isinstance(writer.meta.get("timing"), dict):     # a resumed run keeps its own timing settings
            timing = TimingConfig(**{k: v for k, v in writer.meta["timing"].items()
                                     if k in TimingConfig.__dataclass_fields__}).check(f"{resume}/run.json: ")
    else:
        assert config is not None
    the_plan = plan(config)
    if resume is None:
        writer = RunWriter(out_dir or new_run_dir(), config.as_dict())
    done = writer.finished_cell_ids()
    echo(f"run {writer.dir.name}: {len(config.datasets)} dataset(s) × {len(config.models)} model(s) → {writer.dir}"
         + (f" (resuming: {len(done)} cells already done)" if resume is not None else ""))
    status = "interrupted"
    t0 = time.perf_counter()
    try:
        t_prep = time.perf_counter()
        tasks = prepare(the_plan, writer, progress, echo)
        writer.meta["prepare_s"] = round(time.perf_counter() - t_prep, 3)
        writer.meta["order"] = [t.cell_id for t in tasks]
        todo = slowest_first([t for t in tasks if t.cell_id not in done])
        echo(f"{len(tasks)} cells, {len(todo)} to run")
        writer.meta["timing"] = timing.as_dict()
        t_cells = time.perf_counter()
        execute(todo, writer, executor=executor, workers=workers, threads=threads, scheduler=scheduler,
                progress=progress, echo=echo, fit_cache=fit_cache, timing=timing.enabled)
        writer.meta["cell_wall_s"] = round(time.perf_counter() - t_cells, 3)
        if timing.enabled:
            timing_pass([t for t in tasks if not isinstance(t, _InfeasibleTask)], writer, timing,
                        progress=progress, echo=echo)
        status = "finished"
    except EmbpressError as exc:
        writer.meta["error"] = str(exc)
        status = "failed"
        raise
    except OSError as exc:     # disk full, read-only, permissions: one line, finished cells kept
        writer.meta["error"] = str(exc)
        status = "failed"
        raise io_failure(exc, writer.dir) from None
    finally:
        writer.meta["wall_s"] = round(time.perf_counter() - t0, 3)
        df = _finish(writer, status)
    counts = df["status"].value_counts().to_dict() if len(df) else {}
    echo("cells: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    for _, r in df[df.status == "failed"].iterrows():
        echo(f"  failed: {r.dataset} {r.compressor}: {r.error}")
    return df, writer.dir


def _check_execution(executor: str, workers: int, threads: int | None, scheduler: str | None) -> None:
    if executor not in EXECUTORS:
        raise EmbpressError(f"unknown executor {executor!r} (one of: {', '.join(EXECUTORS)})")
    check_int("workers", workers, 1)
    if executor == "dask":
        from .scheduler import check_address
        check_address(scheduler)
    check_int("threads", threads, 0)


def _finish(writer: RunWriter, status: str) -> pd.DataFrame:
    try:
        return writer.finish(status)
    except OSError as exc:
        raise io_failure(exc, writer.dir) from None


def run_table(df: pd.DataFrame) -> str:
    return format_table(df)
