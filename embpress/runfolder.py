"""A run folder, ``results/<run-id>/``: every path in it and every write to it, in one place.

| path | what | written |
| --- | --- | --- |
| ``run.json`` | provenance, config, status (:class:`RunWriter`) | atomically, whenever it changes |
| ``cells.jsonl`` | one line per finished cell | appended and fsynced as each cell finishes |
| ``timings.jsonl`` | each cell's isolated timings (the timing pass, ``embpress.timing``), merged into the rows | appended and fsynced as each cell is timed |
| ``fitted/<cell_id>.npz`` | a worker's fitted pipeline and codes, waiting for the timing pass (removed once timed) | atomically |
| ``results.parquet``, ``results.csv`` | the table | atomically, at the end |
| ``per_query/baseline__<model>__<dataset>.npz`` | a (model, dataset)'s float32 ground truth | atomically, before its cells |
| ``per_query/<cell_id>.npz`` | a cell's per-query arrays (what the report and ``compare`` resample) | atomically, as it finishes |
| ``vectors/*.npy`` | vectors a run made itself: bring-your-own slices, joined calibration corpora | atomically |
| ``mteb/`` | ``embpress mteb``'s result cache and predictions | by mteb |
| ``compare-<run-id>.md`` | ``embpress compare``'s summary against another run | atomically |

A run never overwrites another: the folder is created exclusively, with a suffix on collision. The
report reads a run only through these paths (its own output goes to ``reports/<run-id>/``).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import settings
from .embed import library_versions
from .errors import EmbpressError
from .files import atomic_write, save_npz, safe_name, write_text
from .results import git_state, machine_info, to_frame


class RunFolder:
    """The paths of one run folder (nothing is created by naming a path)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def meta(self) -> Path:
        return self.path / "run.json"

    @property
    def cells(self) -> Path:
        return self.path / "cells.jsonl"

    @property
    def timings(self) -> Path:
        return self.path / "timings.jsonl"

    def fitted(self, cell_id: str) -> Path:
        """A worker's fitted pipeline and codes, handed to the timing pass."""
        return self.path / "fitted" / f"{safe_name(cell_id)}.npz"

    @property
    def table(self) -> Path:
        return self.path / "results.parquet"

    @property
    def csv(self) -> Path:
        return self.path / "results.csv"

    def baseline(self, model: str, dataset: str) -> Path:
        """A (model, dataset)'s float32 ground truth."""
        return self.path / "per_query" / f"baseline__{safe_name(model)}__{safe_name(dataset)}.npz"

    def cell_arrays(self, cell_id: str) -> Path:
        """A cell's per-query arrays."""
        return self.path / "per_query" / f"{cell_id}.npz"

    def vectors(self, *name_parts: str) -> Path:
        """Vectors the run wrote itself, named by their parts (``a__b__c.npy``, each made safe)."""
        return self.path / "vectors" / ("__".join(safe_name(p) for p in name_parts) + ".npy")

    @property
    def mteb(self) -> Path:
        """``embpress mteb``'s folder: mteb's ResultCache layout and predictions."""
        return self.path / "mteb"

    def mteb_predictions(self, label: str) -> Path:
        return self.mteb / "predictions" / safe_name(label)

    def compare_summary(self, other_run_id: str) -> Path:
        return self.path / f"compare-{other_run_id}.md"


def new_run_dir(base: Path | None = None, label: str | None = None) -> Path:
    base = base or settings.results_dir()
    base.mkdir(parents=True, exist_ok=True)
    commit = (git_state()["commit"] or "nogit")[:7]
    stem = time.strftime("%Y%m%d-%H%M%S") + f"-{commit}" + (f"-{label}" if label else "")
    for i in range(1000):
        path = base / (stem if i == 0 else f"{stem}-{i}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a new run folder under {base}")


class RunWriter:
    """Writes a run's files; every finished cell is on disk before the next one starts."""

    def __init__(self, run_dir: Path, config: dict[str, Any]):
        self.folder = RunFolder(run_dir)
        self.dir = self.folder.path
        self.cells_path = self.folder.cells
        self.timings_path = self.folder.timings
        self.started = time.time()
        self.meta: dict[str, Any] = {
            "run_id": run_dir.name, "status": "running",
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "git": git_state(), "versions": library_versions(), "machine": machine_info(),
            "config": config, "models": {}, "datasets": {},
        }
        self.write_meta()

    @classmethod
    def reopen(cls, run_dir: Path):
        """Continue a run folder: its config, and its cells file without a torn last line."""
        from .grid import config_from_dict
        folder = RunFolder(run_dir)
        run_dir = folder.path
        try:
            meta = json.loads(folder.meta.read_text())
        except (OSError, ValueError) as exc:
            raise EmbpressError(f"{run_dir} is not a resumable run folder (run.json: {exc})") from None
        config = dict(meta["config"])
        grid = config.pop("grid", None)
        run_config = config_from_dict(config, f"{run_dir}/run.json")
        run_config.grid = grid
        self = cls.__new__(cls)
        self.folder, self.dir, self.cells_path, self.started = folder, run_dir, folder.cells, time.time()
        self.timings_path = folder.timings
        self.meta = meta
        self.meta.update(status="running", resumed=self.meta.get("resumed", 0) + 1)
        rows = read_cells(self.cells_path)
        write_text(self.cells_path, "".join(json.dumps(r) + "\n" for r in rows))
        self.write_meta()
        return self, run_config

    def finished_cell_ids(self) -> set[str]:
        return {r["cell_id"] for r in self.rows() if r.get("cell_id")}

    def write_meta(self) -> None:
        write_text(self.folder.meta, json.dumps(self.meta, indent=2, default=str))

    def add_cell(self, row: dict[str, Any]) -> None:
        _append_line(self.cells_path, row)

    def add_timing(self, record: dict[str, Any]) -> None:
        """One cell's isolated timings (``cell_id`` plus the timed columns)."""
        _append_line(self.timings_path, record)

    def timed_cell_ids(self) -> set[str]:
        return set(read_timings(self.timings_path))

    def rows(self) -> list[dict[str, Any]]:
        """The finished cells, each with its isolated timings when the timing pass measured it."""
        return with_timings(read_cells(self.cells_path), read_timings(self.timings_path))

    def save_baseline(self, model: str, dataset: str, arrays: dict[str, np.ndarray], baseline: dict) -> Path:
        """A (model, dataset)'s float32 ground truth: per-query arrays and the baseline figures."""
        path = self.folder.baseline(model, dataset)
        save_npz(path, arrays, baseline=baseline)
        return path

    def save_cell_arrays(self, cell_id: str, arrays: dict[str, np.ndarray]) -> None:
        save_npz(self.folder.cell_arrays(cell_id), arrays)

    def save_fitted(self, cell_id: str, arrays: dict[str, np.ndarray]) -> None:
        """A worker's fitted pipeline and codes, for the timing pass."""
        save_npz(self.folder.fitted(cell_id), arrays)

    def finish(self, status: str = "finished") -> pd.DataFrame:
        """Write the table (each file atomically: complete or absent) and the final run.json."""
        df = to_frame(_in_order(self.rows(), self.meta))
        atomic_write(self.folder.table, lambda tmp: df.to_parquet(tmp, index=False))
        atomic_write(self.folder.csv, lambda tmp: df.to_csv(tmp, index=False))
        self.meta.update(status=status, finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                         seconds=round(time.time() - self.started, 2),
                         cells={s: int(n) for s, n in df["status"].value_counts().items()} if len(df) else {})
        self.write_meta()
        return df


def _append_line(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line (after a newline if a kill left the last line torn, so the torn line
    stays the only one lost)."""
    line = json.dumps(record, default=_jsonable) + "\n"
    with open(path, "a+b") as f:
        if f.tell() > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                line = "\n" + line
        f.write(line.encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())


def read_timings(path: Path) -> dict[str, dict[str, Any]]:
    """cell_id → the timing pass's columns (a torn last line is dropped; a cell timed twice keeps
    the later figures)."""
    out: dict[str, dict[str, Any]] = {}
    if not path.is_file():
        return out
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("cell_id"), str):
            out[rec["cell_id"]] = rec
    return out


def with_timings(rows: list[dict[str, Any]], timings: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**r, **timings[r["cell_id"]]} if r.get("cell_id") in timings else r for r in rows]


def read_cells(path: Path) -> list[dict[str, Any]]:
    """The rows of a cells.jsonl: a line torn by a kill is dropped (that cell is simply not done),
    a cell written twice counts once."""
    if not path.is_file():
        return []
    rows, seen = [], set()
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if not isinstance(row, dict) or row.get("cell_id") in seen:
            continue
        seen.add(row.get("cell_id"))
        rows.append(row)
    return rows


def _in_order(rows: list[dict[str, Any]], meta: dict[str, Any]) -> list[dict[str, Any]]:
    order = {c: i for i, c in enumerate(meta.get("order") or [])}
    return sorted(rows, key=lambda r: order.get(r.get("cell_id"), len(order)))


def io_failure(exc: OSError, run_dir: Path):
    """One line for a write that failed mid-run: the path, the reason, and what is kept."""
    cells = RunFolder(run_dir).cells
    try:
        kept = f"{len(read_cells(cells))} finished cell(s) are kept in {cells}"
    except OSError:
        kept = f"whatever was written is kept in {run_dir}"
    return EmbpressError(f"cannot write {exc.filename or run_dir}: {exc.strerror or exc}; {kept} "
                         f"(`embpress show` reads them, `embpress run --resume {run_dir}` continues)")


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def load_run(path: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """A run's table and run.json. A finished run is read from results.parquet; a run that is still
    running, was killed, or whose table is missing or unreadable is read from cells.jsonl, and
    ``meta["partial"]`` says so (one line for the user)."""
    folder = RunFolder(path)
    try:
        meta = json.loads(folder.meta.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise EmbpressError(f"{path} is not a readable run folder (run.json: {exc})") from None
    if not isinstance(meta, dict):
        raise EmbpressError(f"{path} is not a readable run folder (run.json is not an object)")
    status, why = meta.get("status"), None
    table = folder.table
    if status == "running" or not table.is_file():
        why = f"the run is {status}" if status == "running" else "it has no results.parquet"
    else:
        try:
            df = pd.read_parquet(table)
        except Exception as exc:  # noqa: BLE001 - a torn or foreign parquet: fall back to the cells
            why = f"results.parquet is unreadable ({type(exc).__name__})"
    if why is None:
        if status != "finished":
            meta["partial"] = f"the run is {status}: {len(df)} cells"
        return df, meta
    rows = with_timings(read_cells(folder.cells), read_timings(folder.timings))
    meta["partial"] = f"{why}: {len(rows)} finished cells read from cells.jsonl"
    return to_frame(_in_order(rows, meta)), meta
