"""The timing pass: the encode and search times a row reports, measured with nothing else running.

Quality is computed by parallel workers (``embpress.runner.execute``), but a time measured while
another worker fits a quantizer on the neighbouring core is not the kernel's time: memory
bandwidth, caches and turbo clocks are shared. So, by default, every worker hands back the fitted
pipeline that its timings stand for (the first fold's, over the whole corpus: see
``embpress.cells.evaluate``), and after the workers have finished this module times each cell in
the runner's own process, **one cell at a time, threads pinned** (``TimingConfig.threads``,
default 1):

* *encode*: ``repeats`` timed samples of encoding the first ``encode_rows`` stored vectors, after
  untimed calls (a sample loops calls until it lasts ``MIN_SAMPLE_S``, 5 ms, as ``timeit`` does);
  ``encode_s`` is the median seconds per call, ``encode_vps`` rows per second, ``encode_spread``
  the interquartile range over the median (:func:`embpress.speed.spread`);
* *search* (retrieval and neighbours): :func:`embpress.speed.measure_search` on the full corpus's
  codes (the worker's, handed back with the pipeline): build, batch throughput of the first
  ``batch_queries`` queries (median of ``repeats``, ``search_spread``) and single-query latency
  (``single`` queries per round, ``repeats`` rounds, ``latency_spread``);
* *pair scoring* (STS): ``repeats`` scorings of every test pair's codes (``score_s``,
  ``score_spread``).

Each cell's figures are appended to ``timings.jsonl`` in the run folder as soon as they are
measured (a killed run keeps them; ``--resume`` times only the cells still untimed) and merged
into the rows when the table is written; the row's ``timing`` column says ``isolated``. With
``--no-timing`` the workers measure as they go, beside each other, and ``timing`` says
``indicative``.
"""
from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .fitcache import load_fitted
from .runfolder import RunFolder
from .tasks import task_of

#: Shortest timed sample: faster calls are looped until a sample lasts this long.
MIN_SAMPLE_S = 0.005
#: The columns the timing pass writes (it replaces the worker's values of the same names).
TIMED_COLUMNS = ["encode_s", "encode_vps", "encode_rows", "encode_spread", "search_kernel", "build_s", "search_s",
                 "search_qps", "latency_p50_ms", "latency_p99_ms", "search_bytes", "search_rss_delta_bytes",
                 "search_threads", "speed_s", "search_spread", "latency_spread", "score_s", "score_spread",
                 "timing", "timing_repeats", "timing_threads"]


@dataclass(frozen=True)
class TimingConfig:
    enabled: bool = True
    repeats: int = 3           # timed samples (encode, batch search, pair scoring) and latency rounds
    threads: int = 1           # BLAS / OpenMP / FAISS threads while timing
    encode_rows: int = 1024    # stored vectors encoded per timed call
    batch_queries: int = 128   # queries of one timed batch search
    single: int = 50           # one-query searches per latency round

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def check(self, where: str = "") -> TimingConfig:
        """Itself, or EmbpressError (one line) for a setting that is not a whole number ≥ 1."""
        from .errors import EmbpressError
        from .validate import check_int
        if not isinstance(self.enabled, bool):
            raise EmbpressError(f"{where}timing 'enabled' must be true or false, got {self.enabled!r}")
        for name in ("repeats", "threads", "encode_rows", "batch_queries", "single"):
            check_int(name, getattr(self, name), 1, where)
        return self


# ---------------------------------------------------------------------------- one cell
def _repeat(fn: Callable, repeats: int, min_s: float = MIN_SAMPLE_S) -> list[float]:
    """Seconds per call of ``fn``, ``repeats`` samples; each sample loops enough calls to last at
    least ``min_s`` (as ``timeit``'s autorange), so sub-millisecond kernels are not timer noise."""
    number = 1
    while True:                                      # the first, untimed-for-the-figure calls warm up
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        if time.perf_counter() - t0 >= min_s or number >= 1024:
            break
        number *= 4
    out = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        out.append((time.perf_counter() - t0) / number)
    return out


def time_pipeline(pipe, stored: np.ndarray, codes: np.ndarray, task: str, queries: np.ndarray | None,
                  n_pairs: int | None, k: int, cfg: TimingConfig) -> dict[str, Any]:
    """The timing columns of one fitted pipeline (see the module doc); the caller pins threads."""
    from .speed import measure_search, spread
    X = np.ascontiguousarray(stored[:cfg.encode_rows], dtype=np.float32)
    enc = _repeat(lambda: pipe.encode(X), cfg.repeats)
    out: dict[str, Any] = {"encode_s": statistics.median(enc), "encode_rows": len(X), "encode_spread": spread(enc)}
    out["encode_vps"] = len(X) / max(out["encode_s"], 1e-9)
    if task_of(task).searches:
        Q = np.ascontiguousarray(queries[:cfg.batch_queries], dtype=np.float32)
        speed = measure_search(pipe, codes, Q, k, repeats=cfg.repeats, single=cfg.single)
        speed.pop("results")
        out.update(speed)
    else:
        n = int(n_pairs or 0)
        score = _repeat(lambda: pipe.pair_similarity(codes[:n], codes[n:]), cfg.repeats)
        out.update(score_s=statistics.median(score), score_spread=spread(score))
    out.update(timing="isolated", timing_repeats=cfg.repeats, timing_threads=cfg.threads)
    return out


def time_cell(task, run_dir: Path, cfg: TimingConfig) -> dict[str, Any]:
    """Time one finished cell of a run: its fitted pipeline from the run folder (or, when the
    worker's file is missing, e.g. a resumed run, refitted the same way)."""
    from compressors import parse_spec

    from .cells import context_for, fit_cell
    ctx = context_for(task)
    kind = task_of(ctx.task)
    stored, ids = kind.stored_vectors(ctx.vectors), kind.stored_ids(ctx)
    path = RunFolder(run_dir).fitted(task.cell_id)
    if path.is_file():
        pipe, codes = load_fitted(path, parse_spec(task.compressor).to_spec())
    else:
        pipe = fit_cell(task, parse_spec(task.compressor), stored, ids).pipes[0]
        codes = pipe.encode(np.asarray(stored, dtype=np.float32))
    n_pairs = len(ctx.scores) if ctx.scores is not None else None
    out = time_pipeline(pipe, stored, codes, ctx.task, ctx.vectors.get("queries"), n_pairs, task.k, cfg)
    path.unlink(missing_ok=True)
    return out


# ---------------------------------------------------------------------------- the pass
def timing_pass(tasks: list, writer, cfg: TimingConfig, progress: bool = True,
                echo: Callable[[str], None] = lambda m: None) -> None:
    """Time every ok cell of ``tasks`` not yet timed in this run, one at a time, in this process."""
    from tqdm.auto import tqdm

    from compressors import config_context

    from .cells import limit_threads
    ok = {r["cell_id"] for r in writer.rows() if r.get("status") == "ok"}
    todo = [t for t in tasks if t.cell_id in ok and t.cell_id not in writer.timed_cell_ids()]
    if not todo:
        return
    limit_threads(cfg.threads)
    t0 = time.perf_counter()
    bar = tqdm(total=len(todo), unit="cell", desc="timing", file=sys.stderr, disable=not progress,
               dynamic_ncols=True, mininterval=0.5)
    failed = 0
    try:
        with config_context(assume_finite=True):
            for task in todo:
                try:
                    cols = time_cell(task, writer.dir, cfg)
                except (ValueError, RuntimeError, MemoryError, OSError) as exc:
                    failed += 1
                    echo(f"  timing {task.dataset_label} {task.compressor}: {type(exc).__name__}: {exc} "
                         "(the row keeps no isolated timing)")
                    continue
                writer.add_timing({"cell_id": task.cell_id, **cols})
                bar.update(1)
    finally:
        bar.close()
    try:
        writer.folder.fitted("x").parent.rmdir()      # gone once every cell is timed
    except OSError:
        pass
    wall = time.perf_counter() - t0
    writer.meta["timing_wall_s"] = round(wall + writer.meta.get("timing_wall_s", 0.0), 3)
    writer.write_meta()
    echo(f"timing pass: {len(todo) - failed} cells in {wall:.1f} s, one at a time on {cfg.threads} thread(s), "
         f"{cfg.repeats} repeats" + (f"; {failed} could not be timed" if failed else ""))
