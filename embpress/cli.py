"""The ``embpress`` command line.

    embpress run                      the default grid (benchmarks/default.toml), table + results/<run-id>/
    embpress run --grid quick         another grid file from benchmarks/ (or a path)
    embpress run -d scifact -c PCA128,SQ8 -c BIN      choose datasets, models (-m) and compressor specs
    embpress list                     datasets, models and compressor stages
    embpress show RUN                 print the table of an earlier run
    embpress report RUN               build its HTML report (reports/<run-id>/index.html)
    embpress compare RUN_A RUN_B      per-cell deltas of two runs; exit 1 on a regression
    embpress mteb -t SciFact -c SQ8   MTEB tasks on compressor specs (embpress.mteb)

Bad input (unknown names, malformed specs or grids, missing data) prints one line and exits 2.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from .errors import EmbpressError, SpecError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not usage + message
        sys.stderr.write(f"embpress: error: {message} (see `{self.prog} --help`)\n")
        sys.exit(2)


#: ``embpress run -j``: one worker process per core (cells are independent), at most 8.
DEFAULT_WORKERS = min(os.cpu_count() or 1, 8)


def _add_run(sub) -> None:
    """``embpress run``: a grid, its options and how it executes."""
    r = sub.add_parser("run", help="run a grid and print the results table")
    r.add_argument("--grid", default=None, help="grid name in benchmarks/ or a .toml path (default: default)")
    r.add_argument("-d", "--dataset", action="append", help="dataset name (repeatable; overrides the grid)")
    r.add_argument("-m", "--model", action="append", help="model name, alias or HF id (repeatable)")
    r.add_argument("-c", "--compressor", action="append", metavar="SPEC",
                   help="compressor spec such as F16, SQ8, BIN, PCA128,SQ8, PQ16x8 (repeatable)")
    r.add_argument("--k", type=int, default=None, help="search depth (default 100)")
    r.add_argument("--max-queries", type=int, default=None, help="evaluate only the first N queries/pairs")
    r.add_argument("--max-docs", type=int, default=None, help="keep at most N documents (judged ones first)")
    r.add_argument("--calibration", default=None,
                   help="what compressors that learn from data are fitted on: crossfit:K (default crossfit:2: "
                        "each fold encoded by a fit on the other folds), sample:N (N vectors of the other "
                        "folds), corpus (in-sample), dataset:NAME or file:PATH.npy")
    r.add_argument("--out", type=Path, default=None, help="run folder (default results/<run-id>, must not exist)")
    r.add_argument("--resume", type=Path, default=None, metavar="RUN",
                   help="continue a killed run folder: finished cells are kept, the rest are run")
    r.add_argument("-j", "--workers", type=int, default=DEFAULT_WORKERS,
                   help=f"local worker processes (default: the CPU count up to 8, here {DEFAULT_WORKERS})")
    r.add_argument("--threads", type=int, default=None,
                   help="BLAS/FAISS threads per worker (default: cores / workers when workers > 1)")
    r.add_argument("--executor", default="local", help="local (default) or dask")
    r.add_argument("--no-fit-cache", action="store_true",
                   help="refit every compressor instead of reusing cached fits (e.g. to time a cold grid)")
    r.add_argument("--no-timing", action="store_true",
                   help="skip the timing pass: encode/search times are the workers' side-by-side ones, "
                        "marked indicative (quicker)")
    r.add_argument("--timing-repeats", type=int, default=3, metavar="N",
                   help="rounds of the timing pass: each cell is timed once per round (medians and spreads; default 3)")
    r.add_argument("--timing-threads", type=int, default=1, metavar="N",
                   help="threads while timing (default 1)")
    r.add_argument("--scheduler", default=None, help="Dask scheduler address for --executor dask, tcp://HOST:8786")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    r.add_argument("--no-report", action="store_true", help="do not build the HTML report at the end")
    r.add_argument("-q", "--quiet", action="store_true", help="print only the table")


def _add_compare(sub) -> None:
    """``embpress compare``: two runs and the regression thresholds."""
    cp = sub.add_parser("compare", help="compare two runs cell by cell; exit 1 on a regression (a CI gate)")
    cp.add_argument("run_a", metavar="RUN_A", help="run folder, run id under the results folder, or git commit "
                    "(the latest run recorded for it)")
    cp.add_argument("run_b", metavar="RUN_B", help="the run checked against RUN_A, named the same ways")
    cp.add_argument("--quality-tol", type=float, default=0.5, metavar="POINTS",
                    help="a drop of the main metric by more than this is a regression (default 0.5 points)")
    cp.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                    help="paired bootstrap resamples; a drop whose 95%% interval excludes no change is a "
                         "regression too (default 1000; 0: tolerance only)")
    cp.add_argument("--speed-ratio", type=float, default=1.2, metavar="X",
                    help="slower than X times A's encode, search or fit time is a regression (default 1.2)")
    cp.add_argument("--speed-floor", type=float, default=0.05, metavar="S",
                    help="check speed only where B's measurement took at least S seconds (default 0.05)")
    cp.add_argument("--no-speed", action="store_true", help="do not check speed (noisy machines, identical reruns)")
    cp.add_argument("--out", type=Path, default=None,
                    help="Markdown summary (default <RUN_B>/compare-<RUN_A id>.md)")
    cp.add_argument("--intersection", action="store_true",
                    help="compare only the cells both runs have (by default B lacking cells of A fails the gate)")


def _add_scale(sub) -> None:
    """``embpress scale``: the deployment-size speed sweep."""
    sc = sub.add_parser("scale", help="search speed and memory from 10k to 1M vectors (synthetic corpora tiled from "
                        "cached real embeddings), against the fastest float32 kernel")
    sc.add_argument("--sizes", type=int, nargs="+", default=None, metavar="N",
                    help="corpus sizes (default 10000 100000 1000000)")
    sc.add_argument("-c", "--compressor", action="append", metavar="SPEC", help="codec spec (repeatable; default: "
                    "the README's scale set)")
    sc.add_argument("-d", "--dataset", default="scifact", help="whose cached embeddings are tiled (default scifact)")
    sc.add_argument("-m", "--model", default="all-MiniLM-L6-v2", help="model (default all-MiniLM-L6-v2)")
    sc.add_argument("--k", type=int, default=10, help="top-k of each search (default 10)")
    sc.add_argument("--single", type=int, default=200, help="single-query searches per round (default 200)")
    sc.add_argument("--max-docs", type=int, default=None, help="tile a sample of N documents of the dataset")
    sc.add_argument("--max-queries", type=int, default=None, help="use at most N of its queries")
    sc.add_argument("--out", type=Path, default=None, help="run folder (default results/<run-id>-scale)")
    sc.add_argument("--no-report", action="store_true", help="do not build the report page")


def _add_mteb(sub) -> None:
    """``embpress mteb``: MTEB tasks on compressor specs."""
    mt = sub.add_parser("mteb", help="run MTEB tasks (offline, from the datasets mirror) on compressor specs, "
                        "fitted once on stated calibration; mteb's result JSON + an embpress results table")
    mt.add_argument("-t", "--task", action="append", required=True, metavar="TASK",
                    help="MTEB task name, e.g. SciFact, NFCorpus, STSBenchmark (repeatable)")
    mt.add_argument("-c", "--compressor", action="append", metavar="SPEC",
                    help="compressor spec (repeatable; default F32, SQ8, BIN); F32 always runs as the baseline")
    mt.add_argument("-m", "--model", default="all-MiniLM-L6-v2", help="model name (default all-MiniLM-L6-v2)")
    mt.add_argument("--calibration", default="corpus", help="what each spec is fitted on, once: corpus (the "
                    "task's own corpus or pairs, in-sample, default), dataset:NAME or file:PATH.npy (external)")
    mt.add_argument("--with-mteb-wrapper", action="store_true",
                    help="add rows for mteb's own CompressionWrapper at int8 and binary")
    mt.add_argument("--max-queries", type=int, default=None, help="only the first N queries/pairs (mirrored tasks)")
    mt.add_argument("--max-docs", type=int, default=None, help="keep at most N documents (judged ones first)")
    mt.add_argument("--out", type=Path, default=None, help="run folder (default results/<run-id>-mteb, must not exist)")
    mt.add_argument("--no-fit-cache", action="store_true", help="refit every compressor")
    mt.add_argument("-q", "--quiet", action="store_true", help="print only the table")


def _add_distill(sub) -> None:
    """``embpress distill``: train a student encoder."""
    dl = sub.add_parser("distill", help="train a student encoder to mimic a teacher's embeddings (MSE on "
                        "training-split texts); saved as a model usable with -m NAME")
    dl.add_argument("--teacher", default="all-mpnet-base-v2", help="teacher model (default all-mpnet-base-v2)")
    dl.add_argument("--student", default="all-MiniLM-L6-v2", help="student model; a Dense layer maps it "
                    "to the teacher's dimension (default all-MiniLM-L6-v2)")
    dl.add_argument("--name", default="all-MiniLM-L6-v2-mpnet-distilled", help="name of the trained model")
    dl.add_argument("--max-texts", type=int, default=3000, help="training texts sampled (0 = all; default 3000)")
    dl.add_argument("--holdout", type=int, default=200, help="of them kept out to measure the fit (default 200)")
    dl.add_argument("--epochs", type=int, default=1, help="passes over the training texts (default 1)")
    dl.add_argument("--steps", type=int, default=None, help="optimizer steps (overrides --epochs)")
    dl.add_argument("--batch-size", type=int, default=32)
    dl.add_argument("--lr", type=float, default=5e-5, help="encoder learning rate (default 5e-5)")
    dl.add_argument("--init", choices=["lstsq", "random"], default="lstsq",
                    help="projection start: ridge fit to the teacher (default) or random")
    dl.add_argument("--seed", type=int, default=0)
    dl.add_argument("--no-progress", action="store_true", help="no progress bars")


def _build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="embpress", description="Benchmark embedding compression: quality, bytes and speed.")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)

    _add_run(sub)

    ls = sub.add_parser("list", help="list datasets, models and compressor stages")
    ls.add_argument("what", nargs="?", choices=["datasets", "models", "compressors"], default=None)

    sh = sub.add_parser("show", help="print the results table of a run folder")
    sh.add_argument("run", type=Path)

    rp = sub.add_parser("report", help="build the HTML report of a run (reports/<run-id>/index.html)")
    rp.add_argument("run", help="run folder, or a run id under the results folder")
    rp.add_argument("--out", type=Path, default=None, help="report folder (default: reports/<run-id>)")

    _add_compare(sub)
    _add_scale(sub)
    _add_mteb(sub)
    _add_distill(sub)
    return p


def _cmd_run(args) -> int:
    from .grid import load_grid
    from .runner import run
    from .validate import check_resume_options
    echo = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    common = dict(progress=not args.no_progress, echo=echo, executor=args.executor, workers=args.workers,
                  threads=args.threads, scheduler=args.scheduler, fit_cache=not args.no_fit_cache,
                  timing=_timing_config(args))
    if args.resume is not None:
        check_resume_options(args)
        df, run_dir = run(resume=args.resume, **common)
        return _finish_run(df, run_dir, args)
    config = load_grid(args.grid or "default")
    if args.grid is None and (args.dataset or args.model or args.compressor):
        config.grid = None
    for attr, value in (("datasets", args.dataset), ("models", args.model), ("compressors", args.compressor)):
        if value:
            setattr(config, attr, value)
    if args.dataset or args.model or args.compressor:
        if args.compressor:
            config.families, config.budgets, config.axes = [], [], {}
    for attr in ("k", "max_queries", "max_docs", "calibration"):
        if getattr(args, attr) is not None:
            setattr(config, attr, getattr(args, attr))
    if args.out is not None and args.out.exists():
        raise EmbpressError(f"run folder {args.out} already exists; a run never overwrites another")
    if args.out is not None:
        args.out.mkdir(parents=True)
    df, run_dir = run(config, out_dir=args.out, **common)
    return _finish_run(df, run_dir, args)


def _timing_config(args):
    from .timing import TimingConfig
    from .validate import check_int
    check_int("--timing-repeats", args.timing_repeats, 1)
    check_int("--timing-threads", args.timing_threads, 1)
    return TimingConfig(enabled=not args.no_timing, repeats=args.timing_repeats, threads=args.timing_threads).check()


def _finish_run(df, run_dir: Path, args) -> int:
    from .runner import run_table
    print(run_table(df))
    print(f"\nresults: {run_dir}/results.parquet, results.csv, run.json")
    if not args.no_report:
        from .report import build_report
        try:
            print(f"report: {build_report(run_dir)}")
        except EmbpressError as exc:  # the results are written; a report problem must not hide them
            print(f"embpress: warning: no report built: {exc}", file=sys.stderr)
    return 0


def _cmd_list(args) -> int:
    from compressors import stage_classes
    from .data import card_names, load_card
    from .models import REGISTRY
    if args.what in (None, "datasets"):
        print("datasets:")
        for name in card_names():
            c = load_card(name)
            counts = ", ".join(f"{v:,} {k}" for k, v in c.counts.items())
            print(f"  {name:<14} {c.task:<10} split={c.split:<6} {counts}")
    if args.what in (None, "models"):
        print("models:")
        for m in REGISTRY:
            print(f"  {m.name:<20} {m.dim}-d  aliases: {', '.join(m.aliases)}  ({m.source})")
        from .encoder_weights import GRAMMAR
        from .encoders import variant_names
        print(f"encoder variants (model@variant): {', '.join(variant_names())}; {GRAMMAR}")
    if args.what in (None, "compressors"):
        print("compressor stages (compose with commas, e.g. PCA128,SQ8; options as :name=value):")
        for cls in stage_classes():
            fmt = cls.spec_format.replace("{", "<").replace("}", ">")
            opts = [k for k in cls.param_defaults() if "{" + k + "}" not in cls.spec_format]
            extra = f"  options: {', '.join(f'{k}={cls.param_defaults()[k]}' for k in opts)}" if opts else ""
            print(f"  {fmt:<16} {cls.kind:<9} {cls.summary}{extra}")
    return 0


def _cmd_show(args) -> int:
    from .results import format_table
    from .runfolder import load_run
    if not (args.run / "run.json").is_file():
        raise EmbpressError(f"{args.run} is not a run folder (no run.json)")
    df, meta = load_run(args.run)
    print(f"run {meta.get('run_id', args.run.name)} ({meta.get('status')}), "
          f"commit {((meta.get('git') or {}).get('commit') or '?')[:7]}")
    if meta.get("partial"):
        print(f"partial: {meta['partial']}")
    print(format_table(df) if len(df) else "(no finished cells)")
    return 0


def _cmd_compare(args) -> int:
    from .compare import Thresholds, run_compare
    t = Thresholds(quality_tol=args.quality_tol, speed_ratio=None if args.no_speed else args.speed_ratio,
                   speed_floor=args.speed_floor, n_boot=args.bootstrap)
    return run_compare(args.run_a, args.run_b, t, out=args.out, intersection=args.intersection)


def _cmd_distill(args) -> int:
    from .distill import run_cli
    return run_cli(args)


def _cmd_mteb(args) -> int:
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):   # before datasets/mteb are imported
        os.environ.setdefault(var, "1")
    from .mteb.command import run_cli
    return run_cli(args)


def _cmd_scale(args) -> int:
    from .scale import DEFAULT_SIZES, DEFAULT_SPECS, ScaleConfig, run_scale
    if args.out is not None and args.out.exists():
        raise EmbpressError(f"run folder {args.out} already exists; a run never overwrites another")
    cfg = ScaleConfig(sizes=args.sizes or list(DEFAULT_SIZES), compressors=args.compressor or list(DEFAULT_SPECS),
                      dataset=args.dataset, model=args.model, k=args.k, single=args.single,
                      max_docs=args.max_docs, max_queries=args.max_queries)
    if args.out is not None:
        args.out.mkdir(parents=True)
    df, run_dir = run_scale(cfg, out_dir=args.out, echo=lambda m: print(m, file=sys.stderr))
    cols = [c for c in ("n_vectors", "compressor", "search_kernel", "bytes_per_vector", "latency_p50_ms",
                        "latency_p99_ms", "speedup_p50", "published_speedup", "search_qps", "encode_vps") if c in df]
    print(df[cols].to_string(index=False, float_format=lambda x: f"{x:,.3g}"))
    print(f"\nresults: {run_dir}/results.parquet, results.csv, run.json")
    if not args.no_report:
        from .report import build_report
        print(f"report: {build_report(run_dir)}")
    return 0


def _cmd_report(args) -> int:
    from .report import build_report
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise EmbpressError(f"--out {args.out} is a file; the report needs a folder")
    print(build_report(args.run, args.out))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="embpress: %(message)s", stream=sys.stderr)
    if getattr(args, "quiet", False):
        logging.getLogger("embpress").setLevel(logging.WARNING)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return {"run": _cmd_run, "list": _cmd_list, "show": _cmd_show,
                "distill": _cmd_distill, "report": _cmd_report, "compare": _cmd_compare,
                "mteb": _cmd_mteb, "scale": _cmd_scale}[args.command](args)
    except (EmbpressError, SpecError) as exc:
        print(f"embpress: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:   # disk full, read-only folder, permissions: one line, nothing written is removed
        where = exc.filename or "a file"
        print(f"embpress: error: cannot access {where}: {exc.strerror or exc}; files already written are kept",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("embpress: interrupted; finished cells are kept in the run folder", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
