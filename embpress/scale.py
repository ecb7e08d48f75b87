"""``embpress scale``: how search cost and memory grow with the corpus, from 10k to 1M vectors.

The grid's corpora (3.6k-10k vectors) are cache-resident and fixed costs dominate their timings; a
user compressing a real index needs to know what happens at deployment size. ``scale`` builds
synthetic corpora of N vectors by tiling a dataset's cached real embeddings with small Gaussian
noise (sigma 0.01) and renormalising them (labelled synthetic: speed and memory only, no quality
columns), then, per codec and N:

* fits the codec once on at most ``FIT_ROWS`` vectors (the fitted-compressor cache is reused);
* encodes the corpus (``encode_vps``); a codec too slow to encode N vectors within
  ``ENCODE_BUDGET_S`` encodes ``ENCODE_FALLBACK`` vectors and tiles its codes (``codes_tiled``);
* measures search as the grid does (``embpress.speed.measure_search``: the deployment kernel, batch
  QPS, single-query p50/p99 on one thread, bytes searched, RSS increase), top-``k`` (default 10);
* next to it, the float32 kernels a user could run instead (FAISS's scan, numpy's matmul +
  argpartition) and FAISS's own indexes built straight from the vectors, all timed in the same run,
  so speed-ups are taken against the fastest float32 kernel measured here, never an assumed one.

Memory: one corpus at a time, generated in blocks, each codec's codes freed before the next: the
peak stays under twice the float32 matrix. A size that does not fit in the available memory is
refused before anything runs.
"""
from __future__ import annotations

import hashlib
import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import faiss
import numpy as np

from compressors import config_context, parse_spec

from .errors import EmbpressError

DEFAULT_SIZES = (10_000, 100_000, 1_000_000)
#: The default codec set (README, "Scale"): float and scalar storage, binary with and without
#: rescoring, 4-bit fast-scan PQ at two sizes, RaBitQ, a PCA chain and one residual quantizer.
DEFAULT_SPECS = ("F32", "F16", "SQ8", "SQ8:score=raw", "SQ4", "BIN", "BIN:rescore=4", "PQ32x4fs", "PQ96x4fs",
                 "RABITQ", "PCA128,SQ8", "RQ8x8")
FIT_ROWS = 20_000
ENCODE_BUDGET_S = 60.0
ENCODE_FALLBACK = 100_000
NOISE = 0.01
#: Published exact-search speed-ups on CPU (Hugging Face, "Embedding Quantization", 2024, 1024-d).
PUBLISHED = {"SQ8": 3.66, "BIN": 24.76}


@dataclass
class ScaleConfig:
    sizes: list[int] = field(default_factory=lambda: list(DEFAULT_SIZES))
    compressors: list[str] = field(default_factory=lambda: list(DEFAULT_SPECS))
    dataset: str = "scifact"
    model: str = "all-MiniLM-L6-v2"
    k: int = 10
    single: int = 200
    seed: int = 0
    max_docs: int | None = None      # tile a sample of the dataset (the README's runs use all of it)
    max_queries: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"command": "scale", **asdict(self)}


def queries_for(n: int) -> int:
    """100 queries at 1M, more at smaller corpora (batch timings stay comparable in wall time)."""
    return 300 if n <= 10_000 else 200 if n <= 100_000 else 100


def available_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def check_config(cfg: ScaleConfig, dim: int) -> None:
    """One line (EmbpressError / SpecError) for anything that cannot run, before any work."""
    if not cfg.sizes or any(not isinstance(n, int) or n < 1000 for n in cfg.sizes):
        raise EmbpressError(f"scale sizes must be whole numbers >= 1000, got {cfg.sizes}")
    if cfg.k < 1 or cfg.single < 0:
        raise EmbpressError("k must be >= 1 and --single >= 0")
    if any(v is not None and v < 1 for v in (cfg.max_docs, cfg.max_queries)):
        raise EmbpressError("--max-docs and --max-queries must be >= 1")
    if not cfg.compressors:
        raise EmbpressError("give at least one compressor spec")
    for spec in cfg.compressors:
        parse_spec(spec).check_dim(dim)
    need, free = 2 * max(cfg.sizes) * dim * 4, available_bytes()
    if free is not None and need > 0.8 * free:
        raise EmbpressError(f"{max(cfg.sizes):,} x {dim} vectors need about {need / 2**30:.1f} GiB (the float32 matrix "
                            f"and one codec's codes) but {free / 2**30:.1f} GiB is available; give smaller --sizes")


def tiled_blocks(base: np.ndarray, n: int, seed: int, block: int = 65_536):
    """Yields (first row, rows) of the synthetic corpus: base rows in turn plus N(0, NOISE) noise,
    renormalised. Row i depends on i and the seed only, so smaller corpora are prefixes and a
    codec can encode the corpus block by block without it ever existing whole."""
    for start in range(0, n, block):
        stop = min(n, start + block)
        rng = np.random.default_rng([seed, start // block])
        X = base[np.arange(start, stop) % len(base)] + rng.normal(0, NOISE, (stop - start, base.shape[1])).astype(np.float32)
        X /= np.linalg.norm(X, axis=1, keepdims=True)
        yield start, X


def tiled_corpus(base: np.ndarray, n: int, seed: int, block: int = 65_536) -> np.ndarray:
    """The whole synthetic corpus of ``tiled_blocks`` as one float32 matrix."""
    out = np.empty((n, base.shape[1]), dtype=np.float32)
    for start, X in tiled_blocks(base, n, seed, block):
        out[start:start + len(X)] = X
    return out


def _timed(fn: Callable, *args) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t0, out


def encode_corpus(pipe, base: np.ndarray, n: int, seed: int, block: int = 65_536) -> tuple[np.ndarray, float, int]:
    """(codes of the n-row corpus, encode vectors/s, rows really encoded), encoded block by block as
    the corpus is generated (only the codes are held whole; the encode time excludes generating).
    A probe of 5,000 rows is timed first: a codec too slow to encode n rows within
    ``ENCODE_BUDGET_S`` encodes ``ENCODE_FALLBACK`` rows, and its codes are tiled to n."""
    probe = min(n, 5_000)
    t, head = _timed(pipe.encode, tiled_corpus(base, probe, seed, block))
    rows = n if n * t / probe <= ENCODE_BUDGET_S else min(n, ENCODE_FALLBACK)
    codes = np.empty((n, head.shape[1]), dtype=np.uint8)
    spent = 0.0
    for start, X in tiled_blocks(base, rows, seed, block):
        t, c = _timed(pipe.encode, X)
        codes[start:start + len(X)] = c
        spent += t
    for start in range(rows, n, rows):          # tiled codes: the row says so (codes_tiled)
        codes[start:start + rows] = codes[:min(rows, n - start)]
    return codes, rows / max(spent, 1e-9), rows


# ---------------------------------------------------------------------------- float32 and raw FAISS kernels
class _Kernel:
    """A search callable with the Searcher interface ``speed.measure_searcher`` times."""

    def __init__(self, name: str, fn: Callable, nbytes: int):
        self.kernel, self._fn, self.nbytes = name, fn, nbytes

    def search(self, Q: np.ndarray, k: int):
        return self._fn(np.ascontiguousarray(Q, dtype=np.float32), k)


def numpy_topk(X: np.ndarray) -> Callable:
    """numpy's matrix product + argpartition + a sort of the k kept: no library's top-k."""
    block = max(1, (1 << 24) // max(len(X), 1))      # 64 MiB of scores at a time, as the F32 kernel

    def top(Qb, k):
        S = Qb @ X.T
        part = np.argpartition(-S, k - 1, axis=1)[:, :k]
        best = np.take_along_axis(S, part, 1)
        order = np.argsort(-best, axis=1, kind="stable")
        return np.take_along_axis(best, order, 1), np.take_along_axis(part, order, 1)

    def fn(Q, k):
        parts = [top(Q[i:i + block], k) for i in range(0, len(Q), block)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    return fn


def reference_kernels(X: np.ndarray, train: np.ndarray):
    """Yields (row name, the embpress spec it stands beside, kernel), one at a time so each index is
    freed before the next is built: float32 alternatives (numpy; FAISS's brute force ``faiss.knn``,
    the kernel of ``IndexFlatIP``, which reads X in place where the index would copy it) and FAISS's
    own indexes built straight from the vectors (outside the timing)."""
    d = X.shape[1]
    ip = faiss.METRIC_INNER_PRODUCT
    yield "float32 numpy matmul+argpartition", "F32", _Kernel("numpy", numpy_topk(X), X.nbytes)
    yield "float32 faiss.knn (IndexFlatIP's scan)", "F32", _Kernel(
        "faiss.knn", lambda Q, k: faiss.knn(Q, X, k, metric=ip), X.nbytes)
    for qt, name, spec in ((faiss.ScalarQuantizer.QT_fp16, "fp16", "F16"), (faiss.ScalarQuantizer.QT_8bit, "8bit", "SQ8")):
        index = faiss.IndexScalarQuantizer(d, qt, ip)
        index.train(train)
        index.add(X)
        yield (f"FAISS IndexScalarQuantizer {name}", spec,
               _Kernel(f"IndexScalarQuantizer({name})", index.search, index.sa_code_size() * len(X)))
        index = None                               # freed before the next one is built
    binary = faiss.IndexBinaryFlat(d)
    binary.add(np.packbits(X > 0, axis=1))
    yield "FAISS IndexBinaryFlat", "BIN", _Kernel("IndexBinaryFlat", lambda Q, k: binary.search(
        np.packbits(Q > 0, axis=1), k), d // 8 * len(X))
    fs = faiss.IndexPQFastScan(d, 32, 4, ip)
    fs.train(train)
    fs.add(X)
    yield "FAISS IndexPQFastScan 32x4", "PQ32x4fs", _Kernel("IndexPQFastScan", fs.search, 16 * len(X))


# ---------------------------------------------------------------------------- the sweep
def _source(cfg: ScaleConfig) -> tuple[np.ndarray, np.ndarray, str]:
    """(base vectors, real queries, label): the dataset's cached corpus embeddings and its queries
    (an STS set: its first sentences as the corpus, its second as queries)."""
    from .data import load_dataset
    from .embed import embed_dataset
    from .models import model_info, resolve_model
    ds = load_dataset(cfg.dataset, max_queries=cfg.max_queries, max_docs=cfg.max_docs)
    vecs = embed_dataset(model_info(resolve_model(cfg.model)), ds, progress=False)
    if "corpus" in vecs:
        base, Q = np.asarray(vecs["corpus"]), np.asarray(vecs["queries"])
    else:
        base, Q = np.asarray(vecs["sentences1"]), np.asarray(vecs["sentences2"])
    return np.ascontiguousarray(base, dtype=np.float32), np.ascontiguousarray(Q, dtype=np.float32), ds.name


def _row(cfg: ScaleConfig, label: str, n: int, name: str, **cols) -> dict[str, Any]:
    key = f"scale|{cfg.model}|{label}|{n}|{name}|{cfg.k}"
    return {"cell_id": hashlib.sha1(key.encode()).hexdigest()[:12], "model": cfg.model,
            "dataset": f"{label} tiled x{n:,} (synthetic)", "task": "scale", "compressor": name, "status": "ok",
            "n_vectors": n, "k": cfg.k, "synthetic": True, **cols}


def _fit_all(cfg: ScaleConfig, train: np.ndarray, echo) -> dict[str, tuple[Any, float]]:
    from .fitcache import fit_pipeline
    fitted = {}
    for spec in cfg.compressors:
        pipe, fit_s, cached = fit_pipeline(parse_spec(spec), train, True, None, {"scale_fit_rows": len(train)})
        fitted[spec] = (pipe, fit_s)
        echo(f"  fitted {spec} on {len(train):,} vectors ({fit_s:.1f} s{', cached' if cached else ''})")
    return fitted


def _size_rows(cfg, label, n, base, Qall, train, fitted, echo) -> list[dict[str, Any]]:
    from .speed import measure_search, measure_searcher
    X = tiled_corpus(base, n, cfg.seed)          # for the reference kernels only
    Q = np.resize(Qall, (queries_for(n), Qall.shape[1]))
    repeats = 3 if n <= 100_000 else 1
    rows = []
    for name, spec, kern in reference_kernels(X, train):
        rows.append(_row(cfg, label, n, name, reference_for=spec, family="reference kernel", n_queries=len(Q),
                         **_without_results(measure_searcher(kern, Q, cfg.k, repeats=repeats, single=cfg.single))))
        echo(f"  {n:>9,} {name:<40} p50 {rows[-1]['latency_p50_ms']:.3g} ms")
        del kern
    del X                                          # the codecs encode the corpus block by block
    for spec in cfg.compressors:
        pipe, fit_s = fitted[spec]
        codes, vps, encoded = encode_corpus(pipe, base, n, cfg.seed)
        speed = measure_search(pipe, codes, Q, cfg.k, repeats=repeats, single=cfg.single)
        speed.pop("results")
        rows.append(_row(cfg, label, n, spec, family=pipe.family, n_queries=len(Q), fit_s=fit_s, n_train=len(train),
                         bytes_per_vector=int(codes.shape[1]), overhead_bytes=int(pipe.overhead_bytes),
                         encode_vps=vps, encoded_rows=encoded, codes_tiled=encoded < n, **speed))
        del codes
        echo(f"  {n:>9,} {spec:<40} p50 {rows[-1]['latency_p50_ms']:.3g} ms ({speed['search_kernel']})")
    return rows


def _without_results(cols: dict[str, Any]) -> dict[str, Any]:
    cols.pop("results", None)
    return cols


def add_speedups(rows: list[dict[str, Any]]) -> None:
    """Speed-ups against the fastest float32 kernel measured at the same N (single-query p50 and
    batch), and the published figure where there is one."""
    for n in {r["n_vectors"] for r in rows}:
        same = [r for r in rows if r["n_vectors"] == n]
        floats = [r for r in same if r["compressor"] == "F32" or r.get("reference_for") == "F32" and "float32" in r["compressor"]]
        best = min(floats, key=lambda r: r["latency_p50_ms"] or float("inf"), default=None)
        best_batch = min(floats, key=lambda r: r["search_s"], default=None)
        for r in same:
            if best is not None and r.get("latency_p50_ms"):
                r.update(float32_kernel=best["compressor"], speedup_p50=best["latency_p50_ms"] / r["latency_p50_ms"])
            if best_batch is not None and r.get("search_s"):
                r["speedup_batch"] = best_batch["search_s"] / r["search_s"]
            if r["compressor"] in PUBLISHED:
                r["published_speedup"] = PUBLISHED[r["compressor"]]


def run_scale(cfg: ScaleConfig, out_dir: Path | None = None, echo: Callable[[str], None] = print):
    """Run the sweep; returns (results table, run folder)."""
    from .cells import limit_threads
    from .runfolder import RunWriter, new_run_dir
    from .models import resolve_model
    dim = resolve_model(cfg.model).dim
    if dim is not None:
        check_config(cfg, dim)          # before any embedding is loaded or computed
    base, Qall, label = _source(cfg)
    check_config(cfg, base.shape[1])
    writer = RunWriter(out_dir or new_run_dir(label="scale"), cfg.as_dict())
    threads = 1
    limit_threads(threads)
    writer.meta.update(execution={"threads": threads, "note": "batch and single-query searches on 1 thread"},
                       synthetic=f"{label} corpus embeddings ({len(base):,} rows) tiled with N(0, {NOISE}) noise, "
                                 f"renormalised; queries: {label}'s real queries, repeated to the count",
                       rss_before_bytes=_peak_rss())
    writer.write_meta()
    t0 = time.perf_counter()
    status = "interrupted"
    try:
        with config_context(assume_finite=True):   # generated here: finite by construction
            train = tiled_corpus(base, min(FIT_ROWS, max(cfg.sizes)), cfg.seed + 1)
            fitted = _fit_all(cfg, train, echo)
            rows = []
            for n in sorted(cfg.sizes):
                rows += _size_rows(cfg, label, n, base, Qall, train, fitted, echo)
        add_speedups(rows)
        for r in rows:
            writer.add_cell(r)
        status = "finished"
    finally:
        peak = _peak_rss()
        writer.meta.update(wall_s=round(time.perf_counter() - t0, 1), peak_rss_bytes=peak,
                           float32_matrix_bytes=max(cfg.sizes) * base.shape[1] * 4)
        df = writer.finish(status)
    return df, writer.dir


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
