"""Pruned, shared, trimmed and factorised encoders against float32: size, speed, agreement, quality.

    python benchmarks/bench_encoder_pruning.py                 # the issue-19 table (hours on 2 busy cores the
                                                                # first time; every encoding is cached after)
    python benchmarks/bench_encoder_pruning.py --variants prune-emb90,share8 --sample stsbenchmark:500
    python benchmarks/bench_encoder_pruning.py --threads 2 --repeats 7 --short 128 --long 32

For every variant and every ``--sample NAME[:QUERIES[:DOCS]]`` (default: all 300 scifact test
queries with 1,000 documents, the first 100 nfcorpus test queries with every document they judge,
all 1,379 STS-B test pairs: ``load_dataset``'s deterministic sample, the one ``embpress run
--max-queries/--max-docs`` takes), the float32 model and the variant embed the same texts through
the embedding cache and are scored by the grid's own exact float32 search (``cells.ground_truth``):
nDCG@10 or Spearman, with the variant's score as % of float32 and its 95 % paired-bootstrap interval
over the queries or pairs. ``trim`` stands for ``trim-<dataset>``, evaluated on its own dataset only.

Also printed: size on disk in the smallest honest format (``encoder_weights.stored_bytes``, which
format won, and the size without Huffman coding), in memory (the tensors PyTorch holds), encode
speed against float32 timed side by side (interleaved rounds, same texts, batch size and threads),
the cosine of each evaluated text's embedding to its float32 one (mean and minimum over all the
samples' texts), and for a trimmed vocabulary the share of test-query / test-sentence tokens read
as [UNK]. Not a test: it prints figures and writes them as JSON (``--out``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DEFAULT_VARIANTS = ("prune-emb50,prune-emb75,prune-emb90,prune-all50,prune-all75,prune-all90,share4,share8,factor64,"
                    "factor128,trim,prune50-share4,prune-emb50-share8")
DEFAULT_SAMPLES = ["stsbenchmark", "scifact:300:1000", "nfcorpus:100:1000"]
LABEL = {"scifact": "scifact nDCG@10", "nfcorpus": "nfcorpus nDCG@10", "stsbenchmark": "STS-B Spearman",
         "sick": "SICK-R Spearman"}


def _sample(spec: str):
    from embpress.data import load_dataset
    name, *nums = spec.split(":")
    q, d = ([int(x) or None for x in nums] + [None, None])[:2]
    return load_dataset(name, max_queries=q, max_docs=d)


def _score(ds, vecs: dict) -> tuple[float, np.ndarray, np.ndarray]:
    """Exact float32 search on these vectors: the main metric, its per-query (per-pair) values, and
    all the sample's vectors in one array (queries then documents, or both sides of the pairs)."""
    from embpress.cells import ground_truth
    arrays, baseline = ground_truth(ds, vecs, k=100)
    if ds.task == "retrieval":
        return baseline["ndcg_at_10"], arrays["ndcg_at_10"], np.concatenate([vecs["queries"], vecs["corpus"]])
    return baseline["spearman"], arrays["similarity"], np.concatenate([vecs["sentences1"], vecs["sentences2"]])


def evaluate(model: str, variants: list[str], samples: list, batch_size: int, progress: bool) -> dict:
    """{model name: {dataset: figures}}: float32 and every variant on every sample."""
    from embpress.embed import embed_dataset, encoder
    from embpress.encoders import agreement
    from embpress.models import model_info, resolve_model
    from embpress.stats import paired_bootstrap
    from embpress.vocab_trim import oov_stats
    out: dict = {}
    for ds in samples:
        ref = model_info(resolve_model(model))
        base_q, base_per, base_all = _score(ds, embed_dataset(ref, ds, batch_size=batch_size, progress=progress))
        out.setdefault(ref.entry.name, {})[ds.name] = {"quality": base_q, "retained_pct": 100.0, "ci": [100.0, 100.0],
                                                       "n": len(base_per), "texts": len(base_all)}
        for v in variants:
            info = model_info(resolve_model(f"{model}@{'trim-' + ds.name if v == 'trim' else v}"))
            q, per, vecs = _score(ds, embed_dataset(info, ds, batch_size=batch_size, progress=progress))
            ci = paired_bootstrap(per, base_per, "mean" if ds.task == "retrieval" else "spearman",
                                  gold=None if ds.task == "retrieval" else ds.scores)
            row = {"quality": q, "retained_pct": 100 * q / base_q, "ci": list(ci), "n": len(per), "texts": len(vecs),
                   **agreement(vecs, base_all)}
            if v == "trim":
                test = ds.query_texts if ds.task == "retrieval" else ds.sentences1 + ds.sentences2
                row["oov"] = oov_stats(encoder(info, "cpu"), test)
            out.setdefault(info.entry.name, {})[ds.name] = row
    return out


def measure(names: list[str], args) -> tuple[dict, dict]:
    """Every model's size, and its encode seconds on short and long texts, timed side by side."""
    from embpress.data import load_dataset
    from embpress.embed import encoder
    from embpress.encoders import footprint, time_interleaved
    from embpress.models import model_info, resolve_model
    infos = {n: model_info(resolve_model(n)) for n in names}
    models = {n: encoder(info, "cpu") for n, info in infos.items()}
    sizes = {n: footprint(models[n], infos[n].path) for n in names}
    sets = {"short": load_dataset("stsbenchmark").sentences1[:args.short],
            "long": load_dataset("scifact").corpus_texts[:args.long]}
    load_before = os.getloadavg()[0]
    seconds = time_interleaved(models, sets, batch_size=args.batch_size, repeats=args.repeats)
    return sizes, {"seconds": seconds, "texts": {k: len(v) for k, v in sets.items()},
                   "chars": {k: float(np.mean([len(t) for t in v])) for k, v in sets.items()},
                   "load": [load_before, os.getloadavg()[0]]}


def sparse_kernels(repeats: int, sparsities=(0.5, 0.75, 0.9, 0.99)) -> list[tuple[float, float, float]]:
    """What a sparse kernel would buy: MiniLM's largest Linear (1536 × 384, magnitude-pruned random
    weights) on 4,096 token vectors (a batch of 32 texts × 128 tokens), dense matmul against
    PyTorch's CSR matmul, best of ``repeats`` interleaved rounds: [(sparsity, dense s, CSR s)]."""
    import torch
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4096, 384, generator=gen)
    out = []
    for s in sparsities:
        w = torch.randn(1536, 384, generator=gen)
        w[w.abs() <= w.abs().flatten().kthvalue(int(s * w.numel())).values] = 0.0
        csr, best = w.to_sparse_csr(), [float("inf"), float("inf")]
        for _ in range(repeats):
            for i, (a, b) in enumerate(((x, w.T), (csr, x.T))):
                t0 = time.perf_counter()
                torch.sparse.mm(a, b) if a.is_sparse_csr else a @ b
                best[i] = min(best[i], time.perf_counter() - t0)
        out.append((s, *best))
    return out


def _cell(fig: dict | None) -> str:
    if fig is None:
        return "—"
    if fig["retained_pct"] == 100.0 and fig["ci"] == [100.0, 100.0]:
        return f"{fig['quality']:.2f}"
    return f"{fig['quality']:.2f} {fig['retained_pct']:5.1f}% [{fig['ci'][0]:.1f}, {fig['ci'][1]:.1f}]"


def rows_of(ref: str, evals: dict, sizes: dict, speed: dict) -> list[dict]:
    rows = []
    sec = speed["seconds"]
    for name, per_ds in evals.items():
        figs = [f for f in per_ds.values() if "model_cosine_mean" in f]
        n = sum(f["texts"] for f in figs)
        rows.append({"model": name, "variant": name.partition("@")[2] or "fp32", **sizes[name],
                     "speed_short_x": sec[ref]["short"] / sec[name]["short"],
                     "speed_long_x": sec[ref]["long"] / sec[name]["long"],
                     "texts_per_s_short": speed["texts"]["short"] / sec[name]["short"],
                     "texts_per_s_long": speed["texts"]["long"] / sec[name]["long"],
                     "cosine_mean": sum(f["model_cosine_mean"] * f["texts"] for f in figs) / n if n else 1.0,
                     "cosine_min": min((f["model_cosine_min"] for f in figs), default=1.0),
                     "datasets": per_ds})
    return rows


def print_table(rows: list[dict], datasets: list[str], header: str) -> None:
    ref = rows[0]
    print(header)
    head = (f"{'variant':<20} {'disk MB':>7} {'×fp32':>5} {'mem MB':>6} {'speed×':>11} {'cos mean/min':>13}  "
            + "  ".join(f"{LABEL.get(d, d):<27}" for d in datasets))
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['variant']:<20} {r['model_disk_bytes'] / 1e6:>7.2f} {r['model_disk_bytes'] / ref['model_disk_bytes']:>5.2f} "
              f"{r['model_memory_bytes'] / 1e6:>6.1f} {r['speed_short_x']:>5.2f}/{r['speed_long_x']:<5.2f} "
              f"{r['cosine_mean']:>6.3f}/{r['cosine_min']:<6.3f}  "
              + "  ".join(f"{_cell(r['datasets'].get(d)):<27}" for d in datasets))
    print("\nsize on disk: the format that won per tensor (bytes), and the size without Huffman coding")
    for r in rows[1:]:
        print(f"  {r['variant']:<20} {r.get('model_disk_bytes_no_entropy', r['model_disk_bytes']) / 1e6:>6.2f} MB "
              f"without entropy coding; {r.get('model_nonzero_params', r['model_params']):,} non-zero parameters; "
              f"{r.get('model_disk_format', 'torch.save')}")
    trims = [(r["variant"], d, f["oov"]) for r in rows for d, f in r["datasets"].items() if "oov" in f]
    if trims:
        print("\nvocabulary trimming: test tokens outside the kept vocabulary (read as [UNK])")
    for variant, d, o in trims:
        print(f"  {variant:<20} keeps {o['kept_tokens']:,} of the vocabulary's tokens; {d} test "
              f"{'queries' if d in ('scifact', 'nfcorpus') else 'sentences'}: {o['oov_tokens']:,} of "
              f"{o['tokens']:,} tokens ({100 * o['oov_token_fraction']:.2f} %) out of vocabulary, in "
              f"{100 * o['oov_text_fraction']:.1f} % of the texts")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="all-MiniLM-L6-v2", help="the float32 model the variants are built from")
    p.add_argument("--variants", default=DEFAULT_VARIANTS, help="comma-separated variants; trim = trim-<dataset>")
    p.add_argument("--sample", action="append", default=None, metavar="NAME[:QUERIES[:DOCS]]",
                   help=f"an evaluation sample (repeatable; 0 = all; default: {' '.join(DEFAULT_SAMPLES)})")
    p.add_argument("--short", type=int, default=128, help="short texts timed (STS-B sentences, default 128)")
    p.add_argument("--long", type=int, default=32, help="long texts timed (scifact abstracts, default 32)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    p.add_argument("--repeats", type=int, default=7, help="timed rounds; the best is kept (default 7: a shared "
                   "machine's bursts of load spoil single rounds)")
    p.add_argument("--out", type=Path, default=Path("results") / "bench_encoder_pruning.json", help="JSON output")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)

    import torch

    from embpress.errors import EmbpressError
    from embpress.models import resolve_model
    from embpress.results import machine_info
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    try:
        ref = resolve_model(args.model).name
        samples = [_sample(s) for s in args.sample or DEFAULT_SAMPLES]
        for v in variants:   # every name is checked before any encoding
            resolve_model(f"{ref}@{'trim-' + samples[0].name if v == 'trim' else v}")
        t0 = time.perf_counter()
        evals = evaluate(ref, variants, samples, args.batch_size, not args.no_progress)
        eval_s = time.perf_counter() - t0
        sizes, speed = measure(list(evals), args)
    except EmbpressError as exc:
        print(f"bench_encoder_pruning: error: {exc}", file=sys.stderr)
        return 2
    rows = rows_of(ref, evals, sizes, speed)
    desc = ", ".join(f"{ds.name} {ds.summary()}" for ds in samples)
    header = (f"encoder pruning benchmark: {ref}; {machine_info()['cpu']}, torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads, batch {args.batch_size}\nsamples: {desc}\nspeed× = texts/s "
              f"against float32 on {speed['texts']['short']} short (STS-B, {speed['chars']['short']:.0f} chars) / "
              f"{speed['texts']['long']} long texts (scifact, {speed['chars']['long']:.0f} chars), best of "
              f"{args.repeats} interleaved rounds, load average {speed['load'][0]:.1f} → {speed['load'][1]:.1f}; "
              f"quality: score, % of float32 [95 % paired-bootstrap CI]; evaluation {eval_s:.0f} s")
    print_table(rows, [ds.name for ds in samples], header)
    kernels = sparse_kernels(max(args.repeats, 5))
    print("\nsparse kernels: a 1536×384 Linear on 4,096 token vectors, dense matmul vs torch CSR matmul "
          f"(best of {max(args.repeats, 5)}): " + "; ".join(
              f"{s:.0%} sparse: dense {d * 1e3:.0f} ms, CSR {c * 1e3:.0f} ms ({d / c:.2f}×)" for s, d, c in kernels))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"header": header, "rows": rows, "speed": speed, "sparse_kernels": kernels},
                                   indent=1, default=float))
    print(f"\nwritten {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
