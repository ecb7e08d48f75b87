"""How much of a grid run is harness, and how much is compressor and search work?

Runs a grid (default: benchmarks/default.toml) with cached embeddings and prints, side by side
from the same run: the wall time of the cell phase, the sum of the time spent inside the
compressor and search kernels (fit or fit-cache load, encode, search, STS similarity, as measured
around those calls in each cell), and the harness overhead (everything else), split into scoring
the results (nDCG, recall, MRR, kNN recall, Spearman) and the rest (scheduling, loading, writing
results). It also prints the timing pass (each cell timed alone after the workers finish;
``--no-timing`` skips it) and how evenly the workers finished (cells are started slowest first).
Run it twice to see a cold and a warm fitted-compressor cache:

    python benchmarks/bench_grid.py                 # the default grid, fit cache as it is
    python benchmarks/bench_grid.py --no-fit-cache  # cold: every compressor refitted
    python benchmarks/bench_grid.py --no-timing     # without the timing pass (times indicative)
    python benchmarks/bench_grid.py --grid quick --workers 2
"""
from __future__ import annotations

import argparse
import json
import time

import pandas as pd

from embpress.cli import DEFAULT_WORKERS
from embpress.grid import load_grid
from embpress.runner import run
from embpress.timing import TimingConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", default="default")
    ap.add_argument("--workers", type=int, default=DEFAULT_WORKERS, help="as embpress run -j (default: the CPU count up to 8)")
    ap.add_argument("--no-fit-cache", action="store_true")
    ap.add_argument("--no-timing", action="store_true", help="skip the timing pass")
    args = ap.parse_args()
    config = load_grid(args.grid)
    t0 = time.perf_counter()
    df, run_dir = run(config, progress=False, workers=args.workers, fit_cache=not args.no_fit_cache,
                      echo=lambda m: None, timing=TimingConfig(enabled=not args.no_timing))
    total = time.perf_counter() - t0
    meta = json.loads((run_dir / "run.json").read_text())
    ok = df[df.status == "ok"]
    # speed_s: the whole search measurement (build, batch calls, single queries), search_s one batch call of it;
    # with the timing pass they are measured after the cell phase, so they are not part of it
    search_col = "speed_s" if "speed_s" in ok else "search_s"
    if not args.no_timing:
        ok = ok.drop(columns=[c for c in ("encode_s", "speed_s", "search_s", "score_s") if c in ok])
        search_col = "none"
    kernel_cols = [c for c in ("fit_wall_s", "encode_s", search_col, "score_s") if c in ok]
    kernels = ok[kernel_cols].fillna(0).sum()
    kernel_total = float(kernels.sum())
    metrics_total = float(ok["metrics_s"].fillna(0).sum()) if "metrics_s" in ok else 0.0
    cell_wall = meta["cell_wall_s"]
    print(f"grid {args.grid}: {len(df)} cells ({df.status.value_counts().to_dict()}), workers={args.workers}, "
          f"fit cache {'off' if args.no_fit_cache else 'on'} ({int(ok.fit_cached.fillna(False).sum())} fits loaded)")
    print(f"  whole run (incl. loading embeddings, ground truth, report): {total:8.2f} s")
    print(f"  preparation (datasets, cached embeddings, ground truth):   {meta['prepare_s']:8.2f} s")
    print(f"  cell phase wall time:                                      {cell_wall:8.2f} s")
    if "worker_pid" in ok and "finished_s" in ok:
        ends = ok.groupby("worker_pid")["finished_s"].max().sort_values()
        print(f"    workers' last cells finished at {', '.join(f'{e:.1f}' for e in ends)} s "
              f"(the earliest idled {ends.iloc[-1] - ends.iloc[0]:.1f} s at the end)")
    for col in kernel_cols:
        print(f"    inside {col[:-2]:<10} {kernels[col]:8.2f} s")
    busy = kernel_total / args.workers
    print(f"  kernels (sum / workers):                                   {busy:8.2f} s")
    print(f"  harness overhead in the cell phase: {cell_wall - busy:.2f} s = "
          f"{100 * (cell_wall - busy) / cell_wall:.1f} % of its wall time")
    rest = cell_wall - busy - metrics_total / args.workers
    print(f"    of which scoring the results (nDCG, recall, MRR, kNN recall, Spearman; sum / workers): "
          f"{metrics_total / args.workers:.2f} s; the rest (scheduling, loading, writing results): "
          f"{rest:.2f} s = {100 * rest / cell_wall:.1f} %")
    if not args.no_timing:
        print(f"  timing pass (every ok cell alone, 1 thread):               {meta.get('timing_wall_s', 0):8.2f} s")
    slow = ok.assign(t=ok[kernel_cols].fillna(0).sum(axis=1)).nlargest(8, "t")[["dataset", "compressor", "t"]]
    print("  slowest cells:\n" + slow.to_string(index=False, float_format=lambda x: f"{x:.2f}"))
    print(f"  results: {run_dir}")


if __name__ == "__main__":
    pd.set_option("display.width", 160)
    main()
