"""The page's later sections: per-query loss, model-side compression, the glossary, settings and
provenance (collapsed), the files, and the page header."""
from __future__ import annotations

import base64
import time
from pathlib import Path

import numpy as np
import pandas as pd

from . import figures
from ..tasks import judged
from .analysis import plain_settings
from .html import deflist, e, glossary, num, provenance, slug, table, write_table_files
from .losses import dataset_texts, model_columns, model_variants, query_losses

LOSS_HEADERS = [("compressor", ""), ("B/vec", ""), ("quality kept %", ""),
                ("queries losing", "queries losing at least one relevant document from the top 10"),
                ("% of queries", ""), ("queries gaining", ""), ("relevant docs lost", ""), ("relevant docs gained", "")]
LOSS_KEYS = ["compressor", "bytes_per_vector", "retained_pct", "queries_losing", "queries_losing_pct",
             "queries_gaining", "relevant_lost", "relevant_gained"]


def _examples(summary: pd.DataFrame, examples: dict) -> str:
    blocks = []
    for r in summary.sort_values(["queries_losing", "relevant_lost"], ascending=False, kind="stable").itertuples():
        ex = examples.get(r.cell_id) or []
        if not ex:
            continue
        items = "".join(
            f"<li><b>{e(x['query'] or x['query_id'])}</b> <span class='muted'>(query {e(x['query_id'])}; nDCG@10 "
            f"{num(x['ndcg_f32'])} → {num(x['ndcg'])})</span>: lost "
            + "; ".join(f"“{e(t or '(no title)')}” <span class='muted'>[{e(d)}]</span>" for d, t in x["lost"])
            + "</li>" for x in ex)
        blocks.append(f"<details><summary>{e(str(r.compressor))}: worst {len(ex)} of {r.queries_losing} queries"
                      f"</summary><ul>{items}</ul></details>")
    return ("<p>Worst examples (most relevant documents lost, then largest nDCG@10 drop):</p>" + "".join(blocks)
            if blocks else "")


def loss_section(page, df: pd.DataFrame, meta: dict, run_dir: Path) -> None:
    page.section("loss", "Per-query loss", "per-query loss")
    retrieval = df[(df.status == "ok") & df.oos & df.task.isin(judged())]
    if retrieval.empty:
        page.note("No retrieval cells with relevance judgments in this run: per-query loss needs qrels.")
    for panel, g in retrieval.groupby("panel", sort=False):
        texts = dataset_texts(meta, str(g.dataset.iloc[0]))
        summary, examples = query_losses(run_dir, g, texts)
        parts = [f"<h3>{e(panel)}</h3>"] + ([f'<p class="muted small">{e(texts.note)}</p>'] if texts.note else [])
        if summary.empty:
            parts.append('<p class="note">Judgments or per-query files unavailable: no per-query loss.</p>')
        else:
            parts.append('<p class="muted">Queries whose float32 top 10 holds a relevant document that the compressed '
                         'search drops from its top 10 (and, for balance, queries where it brings one in).</p>')
            rows = [("", "", [(e(str(r[k])) if k == "compressor" else num(r[k]), str(r[k]), "") for k in LOSS_KEYS])
                    for r in summary.to_dict("records")]
            parts.append(table(f"loss_{slug(panel)}", LOSS_HEADERS, rows))
            page.files += write_table_files(page.out, f"loss_{slug(panel)}", [h for h, _ in LOSS_HEADERS],
                                            [[num(r[k]) for k in LOSS_KEYS] for r in summary.to_dict("records")],
                                            summary)
            parts.append(_examples(summary, examples))
        page.add(f'<div data-ds="{e(panel)}">' + "".join(parts) + "</div>")


def model_section(page, df: pd.DataFrame) -> None:
    """Encoder variants' quality against model size and encode speed, when the run has them."""
    size_col, speed_col = model_columns(df)
    if not size_col:
        return
    variants, reference = model_variants(df, size_col)
    if variants.empty or not variants["ref_pct"].notna().any():
        return
    from .. import plots
    page.section("model-side", "Model-side compression", "model-side")
    frontier = df[(df.status == "ok") & df.pareto & df.model.isin(variants["ref"].unique())]
    png = figures.export(plots.model_side(variants, size_col, speed_col, frontier, reference), page.out, "model_side")
    page.files += ["figures/model_side.png", "figures/model_side.svg"]
    page.add(f'<figure id="fig-model_side"><img alt="model-side compression" src="data:image/png;base64,'
             f'{base64.b64encode(png).decode()}"><figcaption>Encoder variants: quality as % of {e(reference)}\'s '
             f"float32 quality against model size{' and encode speed' if speed_col else ''}; right: the "
             f"embedding-compression frontier of {e(reference)}.</figcaption></figure>")
    info = [c for c in variants.columns if c.startswith("model_") and pd.to_numeric(variants[c], errors="coerce").notna().any()]
    vt = variants.groupby("model", sort=False)[info].first().join(
        variants.pivot_table(index="model", columns="dataset", values="ref_pct", sort=False)
        .add_prefix(f"% of {reference} on ")).reset_index()
    headers = [(str(c).replace("_", " "), "") for c in vt.columns]
    rows = [("", "", [(num(v) if isinstance(v, (float, np.floating)) else e(str(v)), str(v), "") for v in rec])
            for rec in vt.itertuples(index=False)]
    page.add(table("model_side", headers, rows))
    page.files += write_table_files(page.out, "model_side", [h for h, _ in headers],
                                    [[c[0] for c in cells] for _, _, cells in rows], vt)


def closing_sections(page, df: pd.DataFrame, meta: dict, n_boot: int) -> None:
    from compressors import stage_classes
    page.section("glossary", "Glossary")
    page.add(glossary(stage_classes()))
    page.add("<p class='muted small'>Quality kept: the main metric (nDCG@10 for retrieval, Spearman for similarity "
             "pairs, neighbour recall@10 for vectors without judgments) as % of float32 on the same dataset and "
             f"model, with its 95 % paired-bootstrap interval ({n_boot} resamples of the queries or pairs, the float32 "
             "baseline resampled alongside). Out-of-sample: oblivious (nothing learned), cross-fitted or external "
             "cells.</p>")
    page.section("settings", "Settings and provenance", "settings")
    page.add("<details><summary>How this run was set up</summary>"
             + deflist(plain_settings(meta.get("config") or {})) + "</details>")
    page.add("<details><summary>Where and when it ran</summary>" + deflist(provenance(meta, df)) + "</details>")
    page.add("<details><summary>Files (figures and tables of this page)</summary><ul class='files'>"
             + "".join(f'<li><a href="{e(f)}">{e(f)}</a></li>' for f in page.files) + "</ul></details>")


def header(meta: dict, run_dir: Path) -> str:
    from ..embed import library_versions
    version = library_versions().get("embpress", "?")
    return (f"<h1>embpress report · {e(str(meta.get('run_id', run_dir.name)))}</h1>"
            f"<p class='muted small'>How much retrieval and similarity quality each compressor keeps, at what storage "
            f"and speed. Built {time.strftime('%Y-%m-%d %H:%M:%S')} by embpress {version} from "
            f"<code>{e(str(run_dir))}</code>.</p>")
