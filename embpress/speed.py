"""Search speed and memory of one compressed corpus, as a deployment would see them.

``measure_search`` builds the searcher once from the stored codes (``Pipeline.searcher``: the filled
index; ``build_s``), then measures

* batch throughput: all queries in one call, with the worker's threads (``search_s`` and
  ``search_qps``, median of ``repeats`` calls, after an untimed call with ``WARMUP_BATCH``
  queries that takes the one-time set-up of the libraries out, e.g. torch's import and thread pool);
* single-query latency: ``single`` one-query calls on one thread (FAISS / OpenMP / BLAS pinned to
  1 thread for the duration), cycling through the queries after a warm-up of ``warmup`` calls;
  ``latency_p50_ms`` and ``latency_p99_ms`` are the medians over ``repeats`` rounds of each
  round's percentiles;
* memory: ``search_bytes``, what the searcher holds (codes, codebooks, index structures, query
  transforms' matrices, from their sizes), and ``search_rss_delta_bytes``, the peak increase of
  the process's resident memory during the batch calls, sampled every ``RSS_SAMPLE_S`` seconds
  from ``/proc/self/statm`` by a thread (``ru_maxrss`` is the process's high-water mark over its
  whole life and cannot give one cell's increase; FAISS and torch release the GIL while they
  search, so the sampler runs alongside). Memory the allocator already holds from earlier work is
  reused without raising the RSS, so this is a lower bound of the search's temporaries.

Each median comes with its *spread*, the interquartile range over the median of the repeats
(``search_spread``, ``latency_spread``; robust to the one call a busy machine preempts): what ``embpress compare`` must see exceeded before it calls a slowdown a
regression. ``speed_s`` is the wall time of the whole measurement (what it adds to a grid cell).
"""
from __future__ import annotations

import os
import statistics
import threading
import time
from contextlib import contextmanager, nullcontext
from typing import Any

import faiss
import numpy as np

#: Queries of the untimed warm-up call before the batch calls: enough to take the batch path
#: (``compressors.searchers.GEMM_MIN_QUERIES``), so a library's one-time set-up is not timed.
WARMUP_BATCH = 8
#: Seconds between two RSS samples while a batch search runs.
RSS_SAMPLE_S = 0.002
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

#: The columns measure_search adds to a result row.
SPEED_COLUMNS = ["search_kernel", "build_s", "search_s", "search_qps", "latency_p50_ms", "latency_p99_ms",
                 "search_bytes", "search_rss_delta_bytes", "search_threads", "speed_s", "search_spread",
                 "latency_spread"]


def rss_bytes() -> int | None:
    """Resident memory of this process now (Linux), else None."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


class RssPeak:
    """Samples the RSS in a thread while the ``with`` block runs; ``delta``: peak − start."""

    def __init__(self, interval: float = RSS_SAMPLE_S):
        self.interval, self.start, self.peak = interval, rss_bytes(), None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            now = rss_bytes()
            if now is not None:
                self.peak = now if self.peak is None else max(self.peak, now)
            self._stop.wait(self.interval)

    def __enter__(self) -> "RssPeak":
        self.start = rss_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        end = rss_bytes()
        if end is not None and self.peak is not None:
            self.peak = max(self.peak, end)

    @property
    def delta(self) -> int | None:
        if self.start is None or self.peak is None:
            return None
        return max(0, self.peak - self.start)


@contextmanager
def one_thread():
    """FAISS, OpenMP and BLAS (and torch, which follows FAISS's setting) on one thread, restored after."""
    from threadpoolctl import threadpool_limits
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        faiss.omp_set_num_threads(before)


def spread(times) -> float:
    """Interquartile range / median of repeated timings (0 for a single one)."""
    times = np.asarray(list(times), dtype=np.float64)
    q1, mid, q3 = np.percentile(times, [25, 50, 75])
    return float((q3 - q1) / mid) if mid > 0 else 0.0


def _timed(fn, *args) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t0, out


def single_query_latency(searcher, Q: np.ndarray, k: int, *, single: int = 200, warmup: int = 10,
                         repeats: int = 3, pinned: bool = False) -> tuple[float, float, float]:
    """(p50, p99) in milliseconds of one-query searches on one thread, medians over the repeats,
    and the spread of the rounds' p50s. ``pinned``: the caller already runs on one thread (no
    thread-pool switch around the calls)."""
    Q = np.ascontiguousarray(Q, dtype=np.float32)
    rows = [Q[i % len(Q)][None] for i in range(single)]
    p50s, p99s = [], []
    with (nullcontext() if pinned else one_thread()):
        for q in rows[:warmup]:
            searcher.search(q, k)
        for _ in range(repeats):
            lat = np.array([_timed(searcher.search, q, k)[0] for q in rows])
            p50s.append(float(np.percentile(lat, 50)))
            p99s.append(float(np.percentile(lat, 99)))
    return 1000 * statistics.median(p50s), 1000 * statistics.median(p99s), spread(p50s)


def measure_searcher(searcher, Q: np.ndarray, k: int, *, repeats: int = 3, single: int = 200,
                     warmup: int = 10) -> dict[str, Any]:
    """Measure a built searcher (anything with ``search(Q, k)``, ``kernel`` and ``nbytes``): batch
    throughput with its RSS increase, and single-query latency (see the module doc). Returns the
    row columns plus ``"results"``, the (scores, ids) of the batch search."""
    searcher.search(Q[:WARMUP_BATCH], k)     # one-time library set-up (torch's import and pools) outside
    with RssPeak() as rss:
        runs = [_timed(searcher.search, Q, k) for _ in range(max(1, repeats))]
    search_s = statistics.median(t for t, _ in runs)
    p50, p99, lat_spread = (single_query_latency(searcher, Q, k, single=single, warmup=warmup, repeats=max(1, repeats))
                            if single > 0 and len(Q) else (None, None, None))
    return {"search_kernel": searcher.kernel, "search_s": search_s,
            "search_qps": len(Q) / max(search_s, 1e-9), "latency_p50_ms": p50, "latency_p99_ms": p99,
            "search_bytes": int(searcher.nbytes), "search_rss_delta_bytes": rss.delta,
            "search_threads": faiss.omp_get_max_threads(), "search_spread": spread(t for t, _ in runs),
            "latency_spread": lat_spread, "results": runs[-1][1]}


def measure_search(pipe, codes: np.ndarray, Q: np.ndarray, k: int, *, repeats: int = 3, single: int = 200,
                   warmup: int = 10) -> dict[str, Any]:
    """Build the searcher of ``codes`` and measure it (see the module doc). Returns the row columns
    (``SPEED_COLUMNS``) plus ``"results"``: the (scores, ids) of the batch search, which callers
    pop before adding the rest to the row."""
    t0 = time.perf_counter()
    build_s, searcher = _timed(pipe.searcher, codes)
    out = measure_searcher(searcher, Q, k, repeats=repeats, single=single, warmup=warmup)
    return {**out, "build_s": build_s, "speed_s": time.perf_counter() - t0}
