"""The timing pass: the encode and search times a row reports, measured with nothing else running.

Quality is computed by parallel workers (``embpress.runner.execute``), but a time measured while
another worker fits a quantizer on the neighbouring core is not the kernel's time: memory
bandwidth, caches and turbo clocks are shared. So, by default, every worker hands back the fitted
pipeline that its timings stand for (the first fold's) with the codes the cell stores (see
``embpress.cells.evaluate``), and after the workers have finished this module times the cells in
the runner's own process, **one cell at a time, threads pinned** (``TimingConfig.threads``,
default 1), in ``repeats`` **rounds**: every cell is measured once per round, and the rounds run
one after another. A burst of load from elsewhere on a shared machine (seconds long) then lands
in one round's sample of a few cells, never in all of a cell's samples; the median ignores it and
the spread shows it. One round of one cell measures:

* *encode*: the first ``encode_rows`` stored vectors, one timed sample after an untimed call (a
  sample loops calls until it lasts ``MIN_SAMPLE_S``, 5 ms, as ``timeit`` does; the number of
  calls is set in the first round and kept);
* *search* (retrieval and neighbours), on every stored code: build, one batch search of the first
  ``batch_queries`` queries (after an untimed one; looped like encode when it is short),
  and a latency round of ``single`` one-query searches on one thread
  (:func:`embpress.speed.single_query_latency`);
* *pair scoring* (STS): the similarity of the first ``score_pairs`` test pairs' codes (looped like
  encode).

``encode_s``, ``build_s``, ``search_s``, ``latency_p50_ms``/``latency_p99_ms`` and ``score_s`` are
medians over the rounds (seconds per call; ``encode_vps`` rows per second, ``search_qps`` queries
per second); ``encode_spread``, ``search_spread``, ``latency_spread`` and ``score_spread`` are the
interquartile ranges of the rounds over their medians (:func:`embpress.speed.spread`), what
``embpress compare`` must see exceeded before it calls a change a regression.

Between rounds the pass keeps the cells' pipelines and codes in memory up to ``HOLD_BYTES`` of codes
(1 GiB; the default grid holds 458 MiB) and reads the others again from their hand-off files in each
round (:class:`HeldCells`).

The cells' figures are appended to ``timings.jsonl`` in the run folder when the last round ends
and merged into the rows when the table is written; the row's ``timing`` column says
``isolated``. A run killed during the pass keeps its quality rows; ``--resume`` times the cells
with no figures yet. With ``--no-timing`` the workers time the calls that compute the quality, as
they go, beside each other, and ``timing`` says ``indicative``.
"""
from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .fitcache import load_fitted
from .runfolder import RunFolder
from .tasks import task_of

#: Shortest timed sample: faster calls are looped until a sample lasts this long.
MIN_SAMPLE_S = 0.005
#: Untimed one-query searches before each latency round (the batch sample before it has warmed the searcher).
LATENCY_WARMUP = 3
#: The columns the timing pass writes (it replaces the worker's values of the same names).
TIMED_COLUMNS = ["encode_s", "encode_vps", "encode_rows", "encode_spread", "search_kernel", "build_s", "search_s",
                 "search_qps", "latency_p50_ms", "latency_p99_ms", "search_bytes", "search_rss_delta_bytes",
                 "search_threads", "search_batch", "speed_s", "search_spread", "latency_spread", "score_s", "score_pairs",
                 "score_spread", "timing", "timing_repeats", "timing_threads"]


@dataclass(frozen=True)
class TimingConfig:
    enabled: bool = True
    repeats: int = 3           # rounds: each cell is measured once per round
    threads: int = 1           # BLAS / OpenMP / FAISS threads while timing
    encode_rows: int = 256     # stored vectors encoded per timed call
    batch_queries: int = 64    # queries of one timed batch search
    single: int = 50           # one-query searches per latency round
    score_pairs: int = 512     # STS pairs scored per timed call

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def check(self, where: str = "") -> TimingConfig:
        """Itself, or EmbpressError (one line) for a setting that is not a whole number ≥ 1."""
        from .errors import EmbpressError
        from .validate import check_int
        if not isinstance(self.enabled, bool):
            raise EmbpressError(f"{where}timing 'enabled' must be true or false, got {self.enabled!r}")
        for name in ("repeats", "threads", "encode_rows", "batch_queries", "single", "score_pairs"):
            check_int(name, getattr(self, name), 1, where)
        return self


# ---------------------------------------------------------------------------- one cell, one round
def _sample(fn: Callable, number: int | None, min_s: float = MIN_SAMPLE_S, warm_slow: bool = True) -> tuple[float, int]:
    """(seconds per call, calls per sample) of one timed sample of ``fn`` after an untimed call.
    ``number`` None: found as ``timeit``'s autorange does (calls multiplied by 4 until a sample
    lasts ``min_s``; those calls warm up); else that many calls. ``warm_slow`` False: no untimed
    call when one call lasts a whole sample (a stateless call of 5 ms or more, e.g. an encode,
    gains nothing measurable from it)."""
    if number is None:
        number = 1
        while True:
            t0 = time.perf_counter()
            for _ in range(number):
                fn()
            if time.perf_counter() - t0 >= min_s or number >= 1024:
                break
            number *= 4
    elif number > 1 or warm_slow:
        fn()
    t0 = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - t0) / number, number


@dataclass
class CellTimer:
    """One cell's fitted pipeline, its stored codes and inputs, and its samples so far."""
    pipe: Any                  # None between rounds when the pass gave it back (HeldCells)
    stored: np.ndarray
    codes: Any                 # the stored codes (np.ndarray), None with the pipeline
    searches: bool
    queries: np.ndarray | None
    n_pairs: int
    k: int
    number: dict[str, int] = field(default_factory=dict)
    samples: dict[str, list[float]] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)
    from_file: bool = True     # loaded from the worker's hand-off file (False: refitted here)

    def _add(self, name: str, fn: Callable, warm_slow: bool = True) -> None:
        seconds, self.number[name] = _sample(fn, self.number.get(name), warm_slow=warm_slow)
        self.samples.setdefault(name, []).append(seconds)

    def round(self, cfg: TimingConfig) -> None:
        """One sample of everything this cell is timed for (the caller pins threads)."""
        import faiss

        from .speed import RssPeak, single_query_latency
        X = np.ascontiguousarray(self.stored[:cfg.encode_rows], dtype=np.float32)
        self._add("encode", lambda: self.pipe.encode(X), warm_slow=False)
        self.fixed["encode_rows"] = len(X)
        if not self.searches:
            n = min(self.n_pairs, cfg.score_pairs)
            A, B = self.codes[:n], self.codes[self.n_pairs:self.n_pairs + n]
            self._add("score", lambda: self.pipe.pair_similarity(A, B), warm_slow=False)
            self.fixed["score_pairs"] = n
            return
        Q = np.ascontiguousarray(self.queries[:cfg.batch_queries], dtype=np.float32)
        t0 = time.perf_counter()
        searcher = self.pipe.searcher(self.codes)
        self.samples.setdefault("build", []).append(time.perf_counter() - t0)
        with RssPeak() as rss:
            self._add("search", lambda: searcher.search(Q, self.k))
        p50, p99, _ = single_query_latency(searcher, Q, self.k, single=cfg.single, warmup=LATENCY_WARMUP, repeats=1,
                                           pinned=cfg.threads == 1)
        self.samples.setdefault("p50", []).append(p50)
        self.samples.setdefault("p99", []).append(p99)
        self.samples.setdefault("speed", []).append(time.perf_counter() - t0)
        peak = max(self.fixed.get("search_rss_delta_bytes") or 0, rss.delta or 0)
        self.fixed.update(search_kernel=searcher.kernel, search_bytes=int(searcher.nbytes),
                          search_rss_delta_bytes=peak, search_threads=faiss.omp_get_max_threads(), search_batch=len(Q))

    def figures(self, cfg: TimingConfig) -> dict[str, Any]:
        """The row's timing columns: medians over the rounds and their spreads."""
        from .speed import spread
        med = {name: statistics.median(v) for name, v in self.samples.items()}
        out: dict[str, Any] = {"encode_s": med["encode"],
                               "encode_vps": self.fixed["encode_rows"] / max(med["encode"], 1e-9),
                               "encode_spread": spread(self.samples["encode"])}
        if self.searches:
            out.update(build_s=med["build"], search_s=med["search"],
                       search_qps=self.fixed["search_batch"] / max(med["search"], 1e-9),
                       search_spread=spread(self.samples["search"]), latency_p50_ms=med["p50"],
                       latency_p99_ms=med["p99"], latency_spread=spread(self.samples["p50"]),
                       speed_s=sum(self.samples["speed"]))
        else:
            out.update(score_s=med["score"], score_spread=spread(self.samples["score"]))
        out.update(self.fixed)
        out.update(timing="isolated", timing_repeats=len(self.samples["encode"]), timing_threads=cfg.threads)
        return out


def load_cell(task, run_dir: Path) -> CellTimer:
    """What the pass needs of one finished cell: its fitted pipeline and stored codes from the run
    folder (or, when the worker's file is missing, e.g. a resumed run, refitted the same way)."""
    from compressors import parse_spec

    from .cells import context_for, fit_cell, stored_codes
    ctx = context_for(task)
    kind = task_of(ctx.task)
    stored = ctx.stored()
    path = RunFolder(run_dir).fitted(task.cell_id)
    if path.is_file():
        pipe, codes = load_fitted(path, parse_spec(task.compressor).to_spec())
    else:
        fits = fit_cell(task, parse_spec(task.compressor), stored, kind.stored_ids(ctx))
        pipe, codes = fits.pipes[0], stored_codes(task, fits, stored)[0]
    n_pairs = len(ctx.scores) if ctx.scores is not None else 0
    return CellTimer(pipe, stored, codes, kind.searches, ctx.vectors.get("queries"), n_pairs, task.k,
                     from_file=path.is_file())


#: Codes the pass keeps in memory from one round to the next; the cells beyond are read again from
#: their hand-off files in every round, so a grid of large corpora does not hold every cell's codes.
HOLD_BYTES = 1 << 30


class HeldCells:
    """The pass's cells between rounds: each is loaded in the first round and kept while the codes
    kept stay within ``hold_bytes``; the others give their pipeline and codes back after each round
    and are loaded again (their samples carry over). A cell refitted here (no hand-off file) is
    always kept: loading it again would refit it."""

    def __init__(self, run_dir: Path, hold_bytes: int | None = None):
        self.run_dir, self.left = run_dir, HOLD_BYTES if hold_bytes is None else hold_bytes
        self.cells: dict[str, CellTimer] = {}
        self.kept: set[str] = set()

    def get(self, task) -> CellTimer:
        cell = self.cells.get(task.cell_id)
        if cell is not None and cell.pipe is not None:
            return cell
        fresh = load_cell(task, self.run_dir)
        if cell is not None:
            fresh.number, fresh.samples, fresh.fixed = cell.number, cell.samples, cell.fixed
        self.cells[task.cell_id] = fresh
        return fresh

    def done_round(self, cell_id: str) -> None:
        cell = self.cells[cell_id]
        if cell_id in self.kept:
            return
        size = int(cell.codes.nbytes)
        if size <= self.left or not cell.from_file:
            self.left -= size
            self.kept.add(cell_id)
        else:
            cell.pipe = cell.codes = None


# ---------------------------------------------------------------------------- the pass
def timing_pass(tasks: list, writer, cfg: TimingConfig, progress: bool = True,
                echo: Callable[[str], None] = lambda m: None) -> None:
    """Time every ok cell of ``tasks`` not yet timed in this run, in ``cfg.repeats`` rounds of one
    cell at a time, in this process; the figures are written when the last round ends."""
    from tqdm.auto import tqdm

    from compressors import config_context

    from .cells import limit_threads
    ok = {r["cell_id"] for r in writer.rows() if r.get("status") == "ok"}
    timed = writer.timed_cell_ids()          # read once, not once per task
    todo = [t for t in tasks if t.cell_id in ok and t.cell_id not in timed]
    if not todo:
        return
    limit_threads(cfg.threads)
    t0 = time.perf_counter()
    bar = tqdm(total=len(todo) * cfg.repeats, unit="cell", desc="timing", file=sys.stderr, disable=not progress,
               dynamic_ncols=True, mininterval=0.5)
    held = HeldCells(writer.dir)
    cells = held.cells
    failed: dict[str, str] = {}
    try:
        with config_context(assume_finite=True):
            for _ in range(cfg.repeats):
                for task in todo:
                    if task.cell_id in failed:
                        continue
                    try:
                        held.get(task).round(cfg)
                        held.done_round(task.cell_id)
                    except (ValueError, RuntimeError, MemoryError, OSError) as exc:
                        failed[task.cell_id] = f"{task.dataset_label} {task.compressor}: {type(exc).__name__}: {exc}"
                        cells.pop(task.cell_id, None)
                    bar.update(1)
    finally:
        bar.close()
    for task in todo:
        if task.cell_id in cells:
            writer.add_timing({"cell_id": task.cell_id, **cells[task.cell_id].figures(cfg)})
            writer.folder.fitted(task.cell_id).unlink(missing_ok=True)
    for message in failed.values():
        echo(f"  timing {message} (the row keeps no isolated timing)")
    try:
        writer.folder.fitted_dir.rmdir()      # gone once every cell is timed (kept if a file is left)
    except OSError:
        pass
    wall = time.perf_counter() - t0
    writer.meta["timing_wall_s"] = round(wall + writer.meta.get("timing_wall_s", 0.0), 3)
    writer.write_meta()
    echo(f"timing pass: {len(todo) - len(failed)} cells in {wall:.1f} s, {cfg.repeats} rounds of one cell at a time "
         f"on {cfg.threads} thread(s)" + (f"; {len(failed)} could not be timed" if failed else ""))
