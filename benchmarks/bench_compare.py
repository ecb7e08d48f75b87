"""Do two runs of the same commit compare clean, and how long does `embpress compare` take?

Runs a small grid twice with the same code (the second time with a cold fit cache as well, so the
fits are measured again), or takes two existing run folders, then compares them and prints, from
the same comparison: the number of speed regressions under the rule (slower than the ratio *and*
beyond both runs' measured spreads), how many the ratio alone would have flagged, the quality and
status regressions, and the comparison's wall time.

    python benchmarks/bench_compare.py                       # scifact + stsbenchmark, 16 specs, twice
    python benchmarks/bench_compare.py --no-timing           # the same without the timing pass
    python benchmarks/bench_compare.py --runs results/a results/b    # two existing runs (e.g. default grids)
"""
from __future__ import annotations

import argparse
import time

import pandas as pd

from embpress.compare import SPEED, SPEED_LABEL, Thresholds, compare_runs
from embpress.grid import RunConfig
from embpress.runner import run
from embpress.timing import TimingConfig

SPECS = ["F32", "F16", "SQ8", "SQ8:score=raw", "SQ4", "BIN", "BIN:rescore=4", "PCA128,SQ8", "RP128,SQ8",
         "PQ16x8:niter=10", "PQ32x4fs", "OPQ16:niter=5:niter_pq_0=10,PQ16x8:niter=10", "RQ4x8", "ITQ128:niter=10",
         "LSH512", "TQ2"]


def _grid_run(args, label: str):
    config = RunConfig(datasets=["scifact", "stsbenchmark"], models=["all-MiniLM-L6-v2"], compressors=SPECS)
    t0 = time.perf_counter()
    _, run_dir = run(config, progress=False, echo=lambda m: None, fit_cache=False, workers=args.workers,
                     timing=TimingConfig(enabled=not args.no_timing))
    print(f"run {label}: {run_dir} ({time.perf_counter() - t0:.1f} s)")
    return run_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", nargs=2, metavar=("RUN_A", "RUN_B"), help="compare two existing runs instead")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--no-timing", action="store_true", help="runs without the timing pass")
    args = ap.parse_args()
    a, b = args.runs if args.runs else (_grid_run(args, "A"), _grid_run(args, "B"))
    t0 = time.perf_counter()
    c = compare_runs(a, b, Thresholds())
    wall = time.perf_counter() - t0
    cells = c.cells
    by_kind: dict[str, int] = {}
    for flags in cells["flags"]:
        for f in flags:
            kind = f.split(":")[0]
            by_kind[kind] = by_kind.get(kind, 0) + 1
    speed_kinds = set(SPEED_LABEL.values())
    t = c.thresholds
    ratio_only = 0           # what the ratio threshold alone, without the spreads, would flag
    for r in cells.to_dict("records"):
        for metric in SPEED:
            label = SPEED_LABEL[metric.name]
            slow, secs = r.get(f"{label}_slowdown"), r.get(f"{label}_s_b")
            if pd.notna(slow) and slow > t.speed_ratio and (secs or 0) >= t.speed_floor \
                    and r.get(f"{label}_note") != "cached fit":
                ratio_only += 1
    speed = sum(n for k, n in by_kind.items() if k in speed_kinds)
    print(f"compared {len(cells)} cells in {wall:.1f} s (bootstrap {t.n_boot} resamples for quality)")
    print(f"  speed regressions (ratio > {t.speed_ratio:g} and beyond both runs' spread): {speed} "
          f"({', '.join(f'{k} {n}' for k, n in sorted(by_kind.items()) if k in speed_kinds) or 'none'})")
    print(f"  flagged by the ratio alone (no spread):   {ratio_only}")
    print(f"  other regressions: {', '.join(f'{k} {n}' for k, n in sorted(by_kind.items()) if k not in speed_kinds) or 'none'}")
    for note in c.notes:
        print(f"  note: {note}")


if __name__ == "__main__":
    main()
