"""Run folders: ``results/<run-id>/`` with run.json (provenance), cells.jsonl (each finished cell,
appended as it finishes), timings.jsonl (each cell's isolated timings, appended by the timing
pass: ``embpress.timing``; merged into the rows), results.parquet and results.csv (written at the end).

A run never overwrites another: the folder is created exclusively, with a suffix on collision.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import pandas as pd

from . import settings
from .embed import library_versions

#: Columns every result table has, in this order (further columns follow).
COLUMNS = ["dataset", "task", "model", "compressor", "family", "status", "budget", "template", "dim", "out_dim",
           "bytes_per_vector", "overhead_bytes", "amortised_bytes_corpus", "amortised_bytes_1m", "compression_ratio",
           "ndcg_at_10", "recall_at_100", "mrr_at_10", "spearman",
           "knn_recall_at_10", "knn_recall_at_100", "main_metric", "quality", "baseline_quality",
           "retained_pct", "ci_low", "ci_high", "ci_resamples", "ci_seed",
           "fit_s", "encode_vps", "search_qps", "latency_p50_ms", "latency_p99_ms",
           "search_kernel", "search_bytes", "search_rss_delta_bytes", "protocol", "calibration", "folds", "fold_seed",
           "n_train", "n_vectors", "n_queries", "fit_cached", "overhead_flag", "warnings", "error", "cell_id"]


def git_state() -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=settings.PROJECT_ROOT, capture_output=True,
                                 text=True, timeout=10)
            return out.stdout.strip() if out.returncode == 0 else None
        except (OSError, subprocess.TimeoutExpired):
            return None
    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None,
            "branch": git("rev-parse", "--abbrev-ref", "HEAD")}


def machine_info() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        mem = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    return {"hostname": platform.node(), "platform": platform.platform(), "cpu": cpu,
            "cpu_count": os.cpu_count(), "memory_gib": mem, "cpu_flags": cpu_flags(),
            "faiss_compile_options": faiss_compile_options()}


#: The CPU flags that decide which search kernels run fast (SIMD widths, popcount, dot products).
_KERNEL_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "popcnt", "avx512f", "avx512bw", "avx512dq",
                 "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx512_vpopcntdq", "amx_int8",
                 "amx_bf16", "avx_vnni", "neon", "asimd", "sve")


def cpu_flags() -> list[str]:
    """Which of the kernel-relevant flags this CPU has (``/proc/cpuinfo``; empty where unreadable)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                have = set(line.split(":", 1)[1].split())
                return [f for f in _KERNEL_FLAGS if f in have]
    except OSError:
        pass
    return []


def faiss_compile_options() -> str | None:
    """``faiss.get_compile_options()``: the SIMD level FAISS was built for and loaded (e.g. AVX512)."""
    try:
        import faiss
        return faiss.get_compile_options().strip()
    except (ImportError, AttributeError):
        return None


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
        self.dir = run_dir
        self.cells_path = run_dir / "cells.jsonl"
        self.timings_path = run_dir / "timings.jsonl"
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
        run_dir = Path(run_dir)
        try:
            meta = json.loads((run_dir / "run.json").read_text())
        except (OSError, ValueError) as exc:
            from .errors import EmbpressError
            raise EmbpressError(f"{run_dir} is not a resumable run folder (run.json: {exc})") from None
        config = dict(meta["config"])
        grid = config.pop("grid", None)
        run_config = config_from_dict(config, f"{run_dir}/run.json")
        run_config.grid = grid
        self = cls.__new__(cls)
        self.dir, self.cells_path, self.started = run_dir, run_dir / "cells.jsonl", time.time()
        self.timings_path = run_dir / "timings.jsonl"
        self.meta = meta
        self.meta.update(status="running", resumed=self.meta.get("resumed", 0) + 1)
        rows = read_cells(self.cells_path)
        text = "".join(json.dumps(r) + "\n" for r in rows)
        atomic_write(self.cells_path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
        self.write_meta()
        return self, run_config

    def finished_cell_ids(self) -> set[str]:
        return {r["cell_id"] for r in self.rows() if r.get("cell_id")}

    def write_meta(self) -> None:
        text = json.dumps(self.meta, indent=2, default=str)
        atomic_write(self.dir / "run.json", lambda tmp: tmp.write_text(text))

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

    def finish(self, status: str = "finished") -> pd.DataFrame:
        """Write the table (each file atomically: complete or absent) and the final run.json."""
        df = to_frame(_in_order(self.rows(), self.meta))
        atomic_write(self.dir / "results.parquet", lambda tmp: df.to_parquet(tmp, index=False))
        atomic_write(self.dir / "results.csv", lambda tmp: df.to_csv(tmp, index=False))
        self.meta.update(status=status, finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                         seconds=round(time.time() - self.started, 2),
                         cells={s: int(n) for s, n in df["status"].value_counts().items()} if len(df) else {})
        self.write_meta()
        return df


def atomic_write(path: Path, write) -> None:
    """``write(tmp)`` then rename over ``path``: readers see the old file or the new one, never a
    torn one; on failure (disk full, read-only) the partial file is removed."""
    tmp = path.with_name(path.name + f".{os.getpid()}.part")
    try:
        write(tmp)
        tmp.replace(path)
    except OSError as exc:   # name the file meant, not the temporary (pyarrow names none)
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from None
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass


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
    from .errors import EmbpressError
    try:
        kept = f"{len(read_cells(run_dir / 'cells.jsonl'))} finished cell(s) are kept in {run_dir / 'cells.jsonl'}"
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


def to_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    for col in COLUMNS:
        if col not in df:
            df[col] = None
    return df[COLUMNS + [c for c in df.columns if c not in COLUMNS]]


def load_run(path: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """A run's table and run.json. A finished run is read from results.parquet; a run that is still
    running, was killed, or whose table is missing or unreadable is read from cells.jsonl, and
    ``meta["partial"]`` says so (one line for the user)."""
    from .errors import EmbpressError
    path = Path(path)
    try:
        meta = json.loads((path / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise EmbpressError(f"{path} is not a readable run folder (run.json: {exc})") from None
    if not isinstance(meta, dict):
        raise EmbpressError(f"{path} is not a readable run folder (run.json is not an object)")
    status, why = meta.get("status"), None
    table = path / "results.parquet"
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
    rows = with_timings(read_cells(path / "cells.jsonl"), read_timings(path / "timings.jsonl"))
    meta["partial"] = f"{why}: {len(rows)} finished cells read from cells.jsonl"
    return to_frame(_in_order(rows, meta)), meta


def format_table(df: pd.DataFrame) -> str:
    """The console table: one block per dataset and model."""
    cols = ["compressor", "bytes_per_vector", "compression_ratio", "ndcg_at_10", "recall_at_100",
            "mrr_at_10", "spearman", "knn_recall_at_10", "retained_pct", "fit_s", "encode_vps",
            "search_qps", "latency_p50_ms", "status"]
    short = {"bytes_per_vector": "B/vec", "compression_ratio": "ratio", "ndcg_at_10": "nDCG@10",
             "recall_at_100": "R@100", "mrr_at_10": "MRR@10", "spearman": "Spearman",
             "knn_recall_at_10": "kNN-R@10", "retained_pct": "retained%", "fit_s": "fit s",
             "encode_vps": "enc vec/s", "search_qps": "search q/s",
             "latency_p50_ms": "p50 ms"}
    blocks = []
    for (dataset, model), group in df.groupby(["dataset", "model"], sort=False):
        g = group[[c for c in cols if c in group and group[c].notna().any()]].rename(columns=short)
        blocks.append(f"== {dataset} · {model} ==\n" + g.to_string(index=False, float_format=_fmt))
    return "\n\n".join(blocks)


def _fmt(x: float) -> str:
    if x != x:
        return "-"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) >= 100:
        return f"{x:.1f}"
    return f"{x:.2f}"
