"""Speed of each compressor next to the raw FAISS / numpy call it wraps, measured interleaved in one run.

    python benchmarks/bench_compressors.py                                  # 100k x 384, 1000 queries, top-100
    python benchmarks/bench_compressors.py --n 20000 --specs SQ8 PQ16x8 "OPQ16,PQ16x8" --repeat 5
    python benchmarks/bench_compressors.py --data random --threads 1
    python benchmarks/bench_compressors.py --n 200000 --n-train 20000 --queries 200 --threads 1 --ops search single

For each spec the pipeline is fitted once (``fit s``, on ``--n-train`` vectors), then ``--repeat``
rounds each time, for encode, decode, search (top ``--k`` of ``--queries`` float queries in one
call) and single-query search (the same queries one call each; ``--ops`` picks among them), the
wrapper that embpress runs (``Pipeline.encode/decode/search``: spec pipeline, shape/dtype checks;
``Pipeline.search`` builds its searcher from the stored codes inside the timing; single queries go
to a searcher built once) and the raw call it wraps, prepared outside the timing
(``index.sa_encode`` directly, and for search the raw index the searcher's ``kernel`` names, filled
from the same codes: ``IndexScalarQuantizer``, ``IndexBinaryFlat``, ``IndexPQFastScan``, FAISS's
scan or torch's matrix product for float32...; ``decode+flat`` and rescoring have none and show
``(no raw)``). The two alternate
and their order flips every round, so load from other processes hits both alike; an untimed call
of the raw operation precedes every timed call, so each starts from the same memory state (how
long a large allocation takes depends on what the previous call freed). Printed figures
are medians (vectors or queries per second) and ``ovh%`` = wrapper time / raw time − 1. Before
timing, the outputs of the two are checked to be the same (codes, decoded vectors, neighbours).
Stages without a dedicated raw call (other helpers' numpy stages) are compared with their own
stage methods called directly, i.e. only the pipeline layer is measured.

Data (``--data``): ``auto`` tiles real all-MiniLM-L6-v2 embeddings from the embedding cache
(``$EMBPRESS_CACHE``, default ``./cache``) with Gaussian noise (sigma 0.01 per dimension) and
renormalises them; ``random`` is unit-norm Gaussian vectors; or a path to an ``.npy`` matrix to
tile the same way. The line above the table says which was used. Unless ``--default-malloc``,
glibc is told to keep freed memory (``keep_freed_memory``): otherwise page faults on the large
temporaries, not the code, decide the wrapper/raw ratios of the memory-bound stages. Not a test:
it prints figures.
"""
from __future__ import annotations

import argparse
import ctypes
import glob
import os
import statistics
import sys
import time
from pathlib import Path

import faiss
import numpy as np

from embpress.results import machine_info

from compressors import parse_spec
from compressors.base import FaissCodec, as_float32_matrix, config_context
from compressors.pipeline import ENCODE_BLOCK_ROWS
from compressors.searchers import GEMM_MIN_QUERIES

DEFAULT_SPECS = ["F32", "F16", "BF16", "SQ8", "SQ4", "SQ8:score=raw", "BIN", "PCA128", "PCA128,SQ8", "ROT,SQ4",
                 "RP128,SQ8", "PQ16x8", "PQ48x8", "PQ96x4", "PQ96x4fs", "OPQ16,PQ16x8", "PCA192,PQ96x4fs", "RQ8x8",
                 "RQ16x8", "LSQ8x8:train_iters=5:encode_ils_iters=4", "RABITQ", "ITQ256", "LSH256", "SQ2"]
IP = faiss.METRIC_INNER_PRODUCT
OPS = ("encode", "decode", "search", "single")


# ----------------------------------------------------------------------------- data
def make_data(kind: str, n: int, nq: int, dims: int, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    rng = np.random.default_rng(seed)
    base = None
    if kind == "auto":
        cache = os.environ.get("EMBPRESS_CACHE") or str(Path(__file__).resolve().parents[1] / "cache")
        files = sorted(glob.glob(f"{cache}/embeddings/all-MiniLM-L6-v2/**/*.npy", recursive=True),
                       key=os.path.getsize, reverse=True)
        for f in files:
            m = np.load(f, mmap_mode="r")
            if m.ndim == 2 and m.shape[1] == dims:
                base, source = np.asarray(m, dtype=np.float32), f
                break
    elif kind != "random":
        base, source = np.asarray(np.load(kind), dtype=np.float32), kind
        if base.ndim != 2 or base.shape[1] != dims:
            raise SystemExit(f"{kind}: expected a 2-d matrix with {dims} columns, got shape {base.shape}")

    def draw(count: int) -> np.ndarray:
        if base is None:
            X = rng.standard_normal((count, dims), dtype=np.float32)
        else:
            X = base[rng.integers(0, len(base), count)] + rng.normal(0, 0.01, (count, dims)).astype(np.float32)
        return np.ascontiguousarray(X / np.linalg.norm(X, axis=1, keepdims=True), dtype=np.float32)

    X, Q = draw(n), draw(nq)
    if base is None:
        return X, Q, f"unit-norm Gaussian random vectors ({n} x {dims}; {nq} queries)"
    return X, Q, (f"real all-MiniLM-L6-v2 embeddings tiled with Gaussian noise (sigma 0.01), renormalised: "
                  f"{n} x {dims} and {nq} queries drawn from the {len(base)} rows of {source}")


# ----------------------------------------------------------------------------- raw calls
def raw_transform(t):
    """(transform, transform_query, inverse) as the bare numpy / FAISS calls."""
    name = type(t).__name__
    if name == "PCA" and not t.whiten:
        C, mu = t.components_, t.mean_
        return (lambda X: (X - mu) @ C.T), (lambda Q: Q @ C.T), (lambda Z: Z @ C + mu)
    if name == "OPQ":
        return t.opq_.apply, t.opq_.apply, t.opq_.reverse_transform
    return t.transform, t.transform_query, t.inverse_transform


def raw_codec(c, codes: np.ndarray, k: int):
    """(encode, decode, search(Q)) as the bare numpy / FAISS calls; search is the raw call of the
    kernel the codec's searcher names (``raw_search``), None for ``decode+flat`` codecs."""
    name = type(c).__name__
    search = raw_search(c, codes, k)
    if name == "Float32":
        return (lambda X: X.view(np.uint8).copy()), (lambda C: C.view(np.float32)), search
    if name == "Float16":
        return (lambda X: X.astype(np.float16).view(np.uint8)), (lambda C: C.view(np.float16).astype(np.float32)), search
    if name == "ScalarQuantizer" and c.bits == 8 and c.score == "dequant":
        start, step = c.start_, c.step_
        # a dimension constant on the calibration data decodes to its constant
        dstep = np.where(c.ranges_[1] == c.ranges_[0], np.float32(0), step)

        def dec(C):
            Z = C.astype(np.float32)
            Z += np.float32(0.5)
            Z *= dstep
            Z += start
            return Z
        return (lambda X: np.clip(np.floor((X - start) / step), 0, 255).astype(np.uint8)), dec, search
    if name == "Binary" and c.get_params() == type(c)().get_params():
        d = c.dim_
        return (lambda X: np.packbits(X > 0, axis=1)), \
            (lambda C: (np.unpackbits(C, axis=1)[:, :d].astype(np.float32) * 2 - 1) / np.float32(np.sqrt(d))), search
    if name in ("ITQ", "RandomProjectionLSH"):
        encoder = c.index_ if c.pretransform_ is None else faiss.IndexPreTransform(c.pretransform_, c.index_)
        return encoder.sa_encode, c.decode, search
    if isinstance(c, FaissCodec):
        codec = c.index_ if c.pretransform_ is None else faiss.IndexPreTransform(c.pretransform_, c.index_)
        return codec.sa_encode, codec.sa_decode, search
    return c.encode, c.decode, search


def raw_flat(X: np.ndarray, k: int):
    """float32 search as the two raw calls it is made of: FAISS's scan under 8 queries, else
    torch's matrix product and topk in one piece."""
    import torch
    Xt = torch.from_numpy(X)

    def search(Q):
        if len(Q) < GEMM_MIN_QUERIES:
            return faiss.knn(Q, X, k, metric=IP)
        v, i = torch.topk(torch.from_numpy(Q) @ Xt.T, k, dim=1)
        return v.numpy(), i.numpy()
    return search


def raw_sq_index(d: int, qtype: int, codes: np.ndarray, trained: np.ndarray | None = None):
    index = faiss.IndexScalarQuantizer(d, qtype, IP)
    if trained is not None:
        faiss.copy_array_to_vector(trained.astype(np.float32), index.sq.trained)
    index.is_trained = True
    index.add_sa_codes(codes)
    return index


def raw_search(c, codes: np.ndarray, k: int):
    """The search of the raw index named in the codec's ``search_kernel``, filled here (outside
    the timing) from the same codes; None where the searcher has no raw counterpart
    (``decode+flat``, rescoring)."""
    name, n = type(c).__name__, codes.shape[0]
    SQ = faiss.ScalarQuantizer
    if name == "Float32":
        return raw_flat(codes.view(np.float32), k)
    if name in ("Float16", "BFloat16"):
        index = raw_sq_index(codes.shape[1] // 2, SQ.QT_fp16 if name == "Float16" else SQ.QT_bf16, codes)
        return lambda Q: index.search(Q, k)
    if name == "ScalarQuantizer" and c.bits in (4, 8):
        if c.score == "raw":
            index = raw_sq_index(c.dim_, SQ.QT_8bit_direct_signed, codes)
            start, step = c.start_, c.step_
            return lambda Q: index.search(np.clip(np.floor((Q - start) / step), 0, 255).astype(np.float32) - 128, k)
        vdiff = np.where(c.ranges_[1] == c.ranges_[0], 0, c.step_ * (c.levels - 1))
        index = raw_sq_index(c.dim_, SQ.QT_8bit if c.bits == 8 else SQ.QT_4bit, codes,
                             np.concatenate([c.start_, vdiff]))
        return lambda Q: index.search(Q, k)
    if name == "Binary" and c.get_params() == type(c)().get_params():
        index = faiss.IndexBinaryFlat(codes.shape[1] * 8)
        index.add(codes)
        return lambda Q: index.search(np.packbits(Q > 0, axis=1), k)
    if name in ("ITQ", "RandomProjectionLSH"):
        encoder = c.index_ if c.pretransform_ is None else faiss.IndexPreTransform(c.pretransform_, c.index_)
        index = faiss.IndexBinaryFlat(codes.shape[1] * 8)
        index.add(codes)
        return lambda Q: index.search(encoder.sa_encode(Q), k)
    if isinstance(c, FaissCodec):
        filled = faiss.clone_index(c.index_)
        filled.add_sa_codes(codes)
        if name == "ProductQuantizerFastScan":
            filled = faiss.IndexPQFastScan(filled, 32)
        if c.pretransform_ is not None:                # FAISS's own chain: IndexPreTransform
            filled = faiss.IndexPreTransform(c.pretransform_, filled)
        return lambda Q: filled.search(Q, min(k, n))
    return None


def raw_pipeline(pipe, codes: np.ndarray, k: int):
    ts = [raw_transform(t) for t in pipe.transforms]
    enc, dec, search = raw_codec(pipe.codec, codes, k)

    def encode(X):
        for fwd, _, _ in ts:
            X = fwd(X)
        return enc(X)

    def decode(C):
        Z = dec(C)
        for _, _, inv in reversed(ts):
            Z = inv(Z)
        return Z

    def search_q(Q):
        for _, q, _ in ts:
            Q = q(Q)
        return search(Q)
    return encode, decode, (search_q if search is not None else None)


# ----------------------------------------------------------------------------- timing
def keep_freed_memory() -> bool:
    """Make glibc serve large blocks from the heap and keep freed memory (mallopt).

    By default each block above 32 MB is a fresh mmap and is unmapped when freed, so every
    100,000 x 384 float32 temporary is page-faulted in again; how long that takes depends on
    what earlier calls freed (huge-page compaction), which made a wrapper that allocates the same
    arrays as its raw call measure 2x slower or faster depending on the process state. With the
    heap kept, both sides reuse warm memory and differences are the code's own."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))


def clock(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def check_same(spec: str, wrapped, raw, what: str) -> str:
    """'' when the wrapper and the raw call give the same output, else a short note."""
    if what == "search":
        same = np.array_equal(wrapped[1], raw[1])
        return "" if same else f"{spec}: search ids differ from the raw call in {np.mean(wrapped[1] != raw[1]):.2%}"
    if wrapped.dtype == np.uint8:
        return "" if np.array_equal(wrapped, raw) else f"{spec}: codes differ from the raw call"
    return "" if np.allclose(wrapped, raw, atol=1e-5) else f"{spec}: decoded vectors differ from the raw call"


def one_by_one(search):
    """Single-query serving: each query on its own call (the loop is timed on both sides alike)."""
    def run(Q):
        for i in range(len(Q)):
            search(Q[i:i + 1])
    return run


def bench(spec: str, X: np.ndarray, Xtrain: np.ndarray, Q: np.ndarray, k: int, repeat: int,
          which: tuple[str, ...] = OPS) -> tuple[dict, list[str]]:
    pipe = parse_spec(spec)
    t0 = time.perf_counter()
    pipe.fit(Xtrain)
    row = {"spec": spec, "bytes": pipe.bytes_per_vector(), "fit_s": time.perf_counter() - t0,
           "n_train": pipe.n_train or 0}
    codes = pipe.encode(X)
    enc, dec, srch = raw_pipeline(pipe, codes, k)
    searcher = pipe.searcher(codes)                  # built once, for the single-query rounds
    row["kernel"] = searcher.kernel
    notes = [check_same(spec, pipe.encode(X[:2000]), enc(X[:2000]), "encode"),
             check_same(spec, pipe.decode(codes[:2000]), dec(codes[:2000]), "decode")]
    if srch is not None:
        notes.append(check_same(spec, pipe.search(codes, Q[:100], k), srch(Q[:100]), "search"))

    def encode_as_grid(X_):
        with config_context(assume_finite=True):      # as the grid runs it: inputs checked once at load
            return pipe.encode(X_)

    ops = {"encode": ((encode_as_grid, X), (enc, X), len(X)),
           "checked": ((pipe.encode, X), (enc, X), len(X)),   # the library default: NaN/inf scan per call
           "decode": ((pipe.decode, codes), (dec, codes), len(codes))}
    if srch is not None:       # the harness builds its searcher inside the timing; the raw index is prefilled
        ops["search"] = ((lambda Q_: pipe.search(codes, Q_, k), Q), (srch, Q), len(Q))
        ops["single"] = ((one_by_one(lambda q: searcher.search(q, k)), Q), (one_by_one(srch), Q), len(Q))
    ops = {op: v for op, v in ops.items() if op in which}
    times = {(op, side): [] for op in ops for side in ("wrap", "raw")}
    for r in range(repeat):
        for op, (wrapped, raw, _) in ops.items():
            order = (("wrap", wrapped), ("raw", raw)) if r % 2 == 0 else (("raw", raw), ("wrap", wrapped))
            for side, (fn, arg) in order:
                # untimed settling call before every timed one: how fast a large allocation is
                # depends on what the previous call freed (huge-page compaction stalls up to 0.7 s
                # for 150 MB measured here, and consecutive calls alternating slow/fast), so each
                # timed call starts from the same state (not needed by the single-query loops)
                if op != "single":
                    clock(*raw)
                times[(op, side)].append(clock(fn, arg))
    for op, (_, _, count) in ops.items():
        w, r_ = statistics.median(times[(op, "wrap")]), statistics.median(times[(op, "raw")])
        row[f"{op}_wrap"], row[f"{op}_raw"], row[f"{op}_ovh"] = count / w, count / r_, 100 * (w / r_ - 1)
        row[f"{op}_tiny"] = r_ < 1e-3          # e.g. F32 decode: a zero-copy view, microseconds
    return row, [n for n in notes if n]


def print_table(rows: list[dict], which: tuple[str, ...]) -> None:
    label = {"encode": "encode v/s", "decode": "decode v/s", "search": "search q/s", "single": "1-query q/s"}
    shown = [op for op in ("encode", "decode", "search", "single") if op in which]
    head = f"{'spec':<16} {'B/vec':>5} {'kernel':<40} {'fit s':>7}"
    for op in shown:
        head += f" | {label[op]:>11} {'raw':>10} {'ovh%':>6}" + (f" {'+scan%':>6}" if op == "encode" else "")
    print(head)
    print("-" * len(head))
    for r in rows:
        line = f"{r['spec']:<16} {r['bytes']:>5} {r['kernel']:<40} {r['fit_s']:>7.1f}"
        for op in shown:
            if f"{op}_wrap" not in r:
                line += f" | {'(no raw)':>11} {'':>10} {'':>6}"
                continue
            line += (f" | {r[f'{op}_wrap']:>11,.1f} {r[f'{op}_raw']:>10,.1f} "
                     + (f"{'<1ms':>6}" if r[f"{op}_tiny"] else f"{r[f'{op}_ovh']:>+6.1f}")
                     + (f" {r['checked_ovh']:>+6.1f}" if op == "encode" and "checked_ovh" in r else ""))
        print(line)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=100_000, help="stored vectors (default 100000)")
    p.add_argument("--n-train", type=int, default=None, help="calibration vectors for fit (default: all --n)")
    p.add_argument("--dims", type=int, default=384, help="dimensions (default 384)")
    p.add_argument("--queries", type=int, default=1000, help="queries (default 1000)")
    p.add_argument("--k", type=int, default=100, help="neighbours per query (default 100)")
    p.add_argument("--specs", nargs="+", default=DEFAULT_SPECS, help="compressor specs (default: %(default)s)")
    p.add_argument("--repeat", type=int, default=5, help="timed rounds per operation; medians printed (default 5)")
    p.add_argument("--data", default="auto", help="auto (real embeddings if cached), random, or an .npy path")
    p.add_argument("--threads", type=int, default=None, help="FAISS/OpenMP threads (default: FAISS's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ops", nargs="+", default=list(OPS), choices=OPS,
                   help="operations to time (default: all; e.g. --ops search single)")
    p.add_argument("--default-malloc", action="store_true",
                   help="leave glibc's allocator as it is (default: keep freed memory, see keep_freed_memory)")
    args = p.parse_args(argv)
    which = tuple(args.ops) + (("checked",) if "encode" in args.ops else ())
    kept = not args.default_malloc and keep_freed_memory()
    if args.threads:
        from threadpoolctl import threadpool_limits
        faiss.omp_set_num_threads(args.threads)          # FAISS (and torch, which follows it)
        threadpool_limits(args.threads)                  # BLAS (the query transforms' products)

    X, Q, described = make_data(args.data, args.n, args.queries, args.dims, args.seed)
    Xtrain = X[: args.n_train] if args.n_train else X
    print(f"data: {described}")
    print(f"fit on {len(Xtrain)} vectors; top-{args.k} search; medians of {args.repeat} interleaved rounds; "
          f"faiss {faiss.__version__} ({faiss.omp_get_max_threads()} threads), numpy {np.__version__}, "
          f"{machine_info()['cpu']}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; "
          f"{'glibc keeps freed memory (mallopt)' if kept else 'default allocator'}", flush=True)

    rows, notes = [], []
    for spec in args.specs:
        row, n = bench(spec, X, Xtrain, Q, args.k, args.repeat, which)
        rows.append(row)
        notes += n
        print(f"  {spec}: fit {row['fit_s']:.1f} s", file=sys.stderr, flush=True)

    print_table(rows, which)
    check = statistics.median(clock(as_float32_matrix, X) for _ in range(args.repeat))
    print("search: the harness's Pipeline.search, which builds its searcher from the codes in the timing, against "
          "the raw index its kernel names, filled outside the timing; 1-query: one call per query (harness: "
          "the searcher built once); (no raw): decode+flat or rescoring, no raw counterpart")
    print("encode ovh%: Pipeline.encode as the grid runs it (config_context(assume_finite=True): the grid "
          "checks its vectors for NaN/inf once, where they enter); +scan%: the library's default, which scans "
          f"every call, block by block ({ENCODE_BLOCK_ROWS} rows, while each block is in the CPU cache)")
    print(f"the NaN/inf scan of the whole {len(X)} x {X.shape[1]} matrix at once: {1000 * check:.1f} ms "
          f"(median of {args.repeat})")
    print("<1ms: the raw call takes under a millisecond (e.g. F32 decode, a zero-copy view): no meaningful %")
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    for note in notes:
        print(f"note: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
