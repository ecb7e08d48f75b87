"""The page of an ``embpress scale`` run: latency against corpus size per codec, speed-up against
the fastest float32 kernel at each size, and the table at the largest size next to the published
speed-ups and FAISS's own indexes measured in the same run."""
from __future__ import annotations

import html
import time
from pathlib import Path

import pandas as pd

from . import settings

e = html.escape


def is_scale_run(meta: dict) -> bool:
    return (meta.get("config") or {}).get("command") == "scale"


def latest_scale_report() -> Path | None:
    """index.html of the newest finished scale run's report, if one was built."""
    import json
    runs = []
    for run_json in settings.results_dir().glob("*/run.json"):
        try:
            meta = json.loads(run_json.read_text())
        except (OSError, ValueError):
            continue
        if is_scale_run(meta) and meta.get("status") == "finished":
            runs.append((str(meta.get("started", "")), run_json.parent.name))
    if not runs:
        return None
    page = settings.reports_dir() / max(runs)[1] / "index.html"
    return page if page.is_file() else None


def scale_link(out: Path) -> str:
    """For the grid's report: a pointer to the newest ``embpress scale`` run's page."""
    import os
    page = latest_scale_report()
    if page is None:
        return ("<p class='muted small'>Speed here is measured on the grid's small corpora; "
                "<code>embpress scale</code> measures it from 10k to 1M vectors.</p>")
    return (f"<p class='scale-link'>Speed at deployment size (10k to 1M vectors): <a href=\"{e(os.path.relpath(page, out))}\">"
            f"the latest <code>embpress scale</code> run</a>.</p>")


def latest_scale_rows() -> tuple[str, pd.DataFrame] | None:
    """(run id, rows at its largest size) of the newest finished scale run, if there is one."""
    page = latest_scale_report()
    if page is None:
        return None
    run_dir = settings.results_dir() / page.parent.name
    try:
        df = pd.read_parquet(run_dir / "results.parquet")
    except (OSError, ValueError):
        return None
    return run_dir.name, df[(df.status == "ok") & (df.n_vectors == df.n_vectors.max())]


def deployment_speeds(specs: list[str], scale_rows: pd.DataFrame) -> pd.DataFrame:
    """The scale run's figures (kernel, p50, speed-up against the fastest float32) for the given
    specs; a spec the scale run did not measure is left out."""
    rows = scale_rows[scale_rows.compressor.isin(specs)]
    cols = [c for c in ("compressor", "n_vectors", "search_kernel", "latency_p50_ms", "speedup_p50") if c in rows]
    return rows[cols].drop_duplicates("compressor").reset_index(drop=True)


def deployment_note(specs: list[str]) -> str:
    """HTML for the grid report's answer: the winners' speed at deployment size, from the newest
    scale run, or why there is none."""
    latest = latest_scale_rows()
    if latest is None:
        return ""
    run_id, rows = latest
    found = deployment_speeds(list(dict.fromkeys(specs)), rows)
    if found.empty:
        return (f"<p class='muted small'>None of these winners is in the latest <code>embpress scale</code> run "
                f"({e(run_id)}); their speed above is the grid's.</p>")
    items = ", ".join(f"{e(r.compressor)}: {r.latency_p50_ms:.3g} ms per query, {r.speedup_p50:.3g}× the fastest "
                      f"float32 ({e(r.search_kernel)})" for r in found.itertuples())
    return (f"<p class='deployment small'>At {int(found.n_vectors.iloc[0]):,} vectors (synthetic, the latest "
            f"<code>embpress scale</code> run {e(run_id)}, one thread): {items}.</p>")


def _figures(df: pd.DataFrame, out: Path) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    codecs = df[df.family != "reference kernel"]
    names = []
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for spec, g in codecs.groupby("compressor", sort=False):
        g = g.sort_values("n_vectors")
        axes[0].plot(g.n_vectors, g.latency_p50_ms, marker="o", label=spec)
        if "speedup_p50" in g:
            axes[1].plot(g.n_vectors, g.speedup_p50, marker="o", label=spec)
    for ax, title, ylabel in ((axes[0], "single-query latency (p50, one thread)", "ms per query"),
                              (axes[1], "speed-up against the fastest float32 kernel at each size", "× faster")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("vectors in the corpus (log)")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
    axes[1].axhline(1, color="grey", linestyle=":")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="center right", fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 0.84, 1))
    (out / "figures").mkdir(parents=True, exist_ok=True)
    for ext in ("svg", "png"):
        fig.savefig(out / "figures" / f"scale.{ext}", dpi=144)
        names.append(f"figures/scale.{ext}")
    plt.close(fig)
    return names


TABLE = [("compressor", "codec / kernel"), ("search_kernel", "kernel"), ("bytes_per_vector", "B/vec"),
         ("latency_p50_ms", "p50 ms"), ("latency_p99_ms", "p99 ms"), ("speedup_p50", "× vs fastest float32 (p50)"),
         ("published_speedup", "published ×"), ("search_qps", "batch q/s"), ("speedup_batch", "× batch"),
         ("encode_vps", "encode vec/s"), ("codes_tiled", "codes tiled"), ("search_bytes", "bytes searched"),
         ("search_rss_delta_bytes", "RSS increase B")]


def build_scale_report(run_dir: Path, df: pd.DataFrame, meta: dict, out: Path) -> Path:
    from .report.html import num
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    ok = df[df.status == "ok"].copy()
    files = _figures(ok, out) if len(ok) else []
    largest = ok.n_vectors.max() if len(ok) else None
    top = ok[ok.n_vectors == largest].sort_values("latency_p50_ms") if largest else ok
    cols = [(k, h) for k, h in TABLE if k in top]
    head = "".join(f"<th>{e(h)}</th>" for _, h in cols)
    body = "".join("<tr>" + "".join(f"<td>{e(num(r[k]))}</td>" for k, _ in cols) + "</tr>" for _, r in top.iterrows())
    top.to_csv(out / "scale_largest.csv", index=False)
    peak, f32 = meta.get("peak_rss_bytes"), meta.get("float32_matrix_bytes")
    mem = (f"Peak resident memory of the process {peak / 2**30:.2f} GiB = {peak / f32:.2f}× the {largest:,}-vector "
           f"float32 matrix ({f32 / 2**30:.2f} GiB), Python, torch and FAISS included." if peak and f32 else "")
    page = f"""<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>embpress scale {e(str(meta.get('run_id')))}</title>
<style>body{{font:14px system-ui,sans-serif;max-width:1200px;margin:1em auto;padding:0 1em}}
table{{border-collapse:collapse;display:block;overflow-x:auto}}td,th{{border:1px solid #ddd;padding:3px 6px;text-align:right}}
img{{max-width:100%}}.muted{{color:#666}}</style></head><body>
<h1>embpress scale · {e(str(meta.get('run_id')))}</h1>
<p class="muted">{e(str(meta.get('synthetic', '')))}. Synthetic corpora: speed and memory only, no quality.
{e(str((meta.get('execution') or {}).get('note', '')))}; top-{e(str((meta.get('config') or {}).get('k')))};
sweep {e(str(meta.get('wall_s')))} s on {e(str((meta.get('machine') or {}).get('cpu')))}.</p>
<img src="figures/scale.png" alt="latency and speed-up against corpus size">
<h2>At {largest:,} vectors</h2>
<p class="muted">Speed-ups are against the fastest float32 kernel measured in the same run at the same size
(FAISS's scan, numpy's matmul + argpartition, or embpress's F32); "published": Hugging Face's embedding
quantization study (exact search on CPU, 1024-d). {e(mem)}</p>
<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>
<p>Files: {" ".join(f'<a href="{e(f)}">{e(f)}</a>' for f in files + ["scale_largest.csv"])}</p>
<p class="muted">Built in {time.perf_counter() - t0:.1f} s from <code>{e(str(run_dir))}</code>.</p></body></html>"""
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    return index
