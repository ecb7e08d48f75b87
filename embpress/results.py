"""The results table (its columns, the console table) and the provenance a run records (git state,
library versions, the machine). The run folder that holds them is :mod:`embpress.runfolder`."""
from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import pandas as pd

from . import settings
from .metrics import console_columns, of_kind

#: Columns every result table has, in this order (further columns follow): the cell, then the
#: registered metrics grouped by kind (``embpress.metrics.KINDS``) with the columns that go with
#: them, then how the cell was fitted and what it says.
COLUMNS = (["dataset", "task", "model", "compressor", "family", "status", "budget", "template", "dim", "out_dim"]
           + of_kind("storage") + of_kind("quality") + ["main_metric", "quality", "baseline_quality"]
           + of_kind("summary") + ["ci_low", "ci_high", "ci_resamples", "ci_seed"] + of_kind("speed") + ["search_kernel"] + of_kind("memory") + ["search_rss_delta_bytes"]
           + ["protocol", "calibration", "folds", "fold_seed", "n_train", "n_vectors", "n_queries", "fit_cached",
              "overhead_flag", "warnings", "error", "cell_id"])


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


def to_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    for col in COLUMNS:
        if col not in df:
            df[col] = None
    return df[COLUMNS + [c for c in df.columns if c not in COLUMNS]]


def format_table(df: pd.DataFrame) -> str:
    """The console table: one block per dataset and model."""
    short = console_columns()
    cols = ["compressor", *short, "status"]
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
