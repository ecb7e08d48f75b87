"""Encode throughput, size and fp32 agreement of every encoder variant, side by side in one run.

    python benchmarks/bench_encoders.py                       # all-MiniLM-L6-v2: fp32 and every variant
    python benchmarks/bench_encoders.py --also all-mpnet-base-v2 --also all-MiniLM-L6-v2-mpnet-distilled
    python benchmarks/bench_encoders.py --threads 2 --batch-size 32 --short 256 --long 48 --repeats 3

Every model runs with the same batch size, thread count and texts: ``--short`` short texts (STS-B
test sentences) and ``--long`` long ones (scifact abstracts). Rounds are interleaved (each round times every
model once) and the best round is kept, so a neighbour's burst of load hurts all models alike; the
load average is printed before and after. ``×fp32`` is the speed ratio to the float32 row of the
same model; the cosines compare each row's embeddings with that float32 row (or, for a distilled
student given with ``--also`` next to its teacher, with the teacher). Not a test: it prints figures.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from embpress.results import machine_info

os.environ.setdefault("HF_HUB_OFFLINE", "1")



def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="all-MiniLM-L6-v2", help="model whose variants are compared")
    p.add_argument("--variants", default=None, help="comma-separated variants (default: all)")
    p.add_argument("--also", action="append", default=[], help="another model row (repeatable), e.g. all-mpnet-base-v2")
    p.add_argument("--short", type=int, default=256, help="short texts (default 256)")
    p.add_argument("--long", type=int, default=48, help="long texts (default 48)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds; the best is kept (default 3)")
    args = p.parse_args(argv)

    import torch

    from embpress.data import load_dataset
    from embpress.encoders import agreement, footprint, time_interleaved, variant_names
    from embpress.errors import EmbpressError
    from embpress.models import load_encoder, model_info, resolve_model

    if args.threads:
        torch.set_num_threads(args.threads)
    short = load_dataset("stsbenchmark").sentences1[:args.short]
    long_ = load_dataset("scifact").corpus_texts[:args.long]
    variants = args.variants.split(",") if args.variants else variant_names()
    names = [f"{args.model}@{v}" for v in variants] + args.also

    rows, skipped = [], []
    for name in names:
        try:
            info = model_info(resolve_model(name))
            model = load_encoder(info)
        except EmbpressError as exc:
            skipped.append(f"{name}: {exc}")
            continue
        row = {"name": info.entry.name, "entry": info.entry, "model": model, **footprint(model, info.path)}
        kw = dict(batch_size=args.batch_size, show_progress_bar=False, convert_to_numpy=True)
        row["vectors"] = np.concatenate([np.asarray(model.encode(t, **kw), dtype=np.float32) for t in (short, long_)])
        rows.append(row)
    if not rows:
        print("\n".join(skipped), file=sys.stderr)
        return 2

    load_before = os.getloadavg()
    seconds = time_interleaved({r["name"]: r["model"] for r in rows}, {"short_s": short, "long_s": long_},
                               batch_size=args.batch_size, repeats=args.repeats)
    for row in rows:
        row.update(seconds[row["name"]])
    load_after = os.getloadavg()

    by_name = {r["name"]: r for r in rows}
    print(f"encoder benchmark: {machine_info()['cpu']}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"batch {args.batch_size}, {len(short)} short texts (STS-B, mean {np.mean([len(t) for t in short]):.0f} "
          f"chars) and {len(long_)} long (scifact, mean {np.mean([len(t) for t in long_]):.0f} chars), "
          f"best of {args.repeats} interleaved rounds; load average {load_before[0]:.1f} → {load_after[0]:.1f}")
    head = (f"{'model':<44} {'params':>8} {'disk MB':>8} {'mem MB':>7} {'short/s':>8} {'×fp32':>6} "
            f"{'long/s':>7} {'×fp32':>6} {'cos mean':>9} {'cos min':>8}  vs")
    print(head)
    print("-" * len(head))
    for row in rows:
        entry = row["entry"]
        base_name = entry.name.rpartition("@")[0] if entry.variant else entry.name
        base = by_name.get(base_name)
        teacher = by_name.get(entry.extra.get("teacher") or "")
        ref = base if base is not None and base is not row else (teacher or base)
        short_ps, long_ps = len(short) / row["short_s"], len(long_) / row["long_s"]
        sx = f"{base['short_s'] / row['short_s']:.2f}" if base else "—"
        lx = f"{base['long_s'] / row['long_s']:.2f}" if base else "—"
        if ref is not None and ref["vectors"].shape == row["vectors"].shape:
            a = agreement(row["vectors"], ref["vectors"])
            cos = f"{a['model_cosine_mean']:>9.5f} {a['model_cosine_min']:>8.5f}  {ref['name']}"
        else:
            cos = f"{'—':>9} {'—':>8}"
        print(f"{row['name']:<44} {row['model_params'] / 1e6:>7.1f}M {row['model_disk_bytes'] / 1e6:>8.1f} "
              f"{row['model_memory_bytes'] / 1e6:>7.1f} {short_ps:>8.1f} {sx:>6} {long_ps:>7.1f} {lx:>6} {cos}")
    for line in skipped:
        print(f"skipped {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
