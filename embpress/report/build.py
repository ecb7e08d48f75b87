"""``build_report``: one self-contained page per run (``reports/<run-id>/index.html``), the answer
first (per-budget winners with speed and fit time), then interactive charts, the results table,
per-query loss, the glossary, and the settings and provenance collapsed at the end."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pandas as pd

from .. import settings
from ..errors import EmbpressError
from ..metrics import METRICS
from ..protocol import describe as protocol_text
from ..files import write_text
from ..results import COLUMNS
from ..runfolder import load_run
from . import figures
from .analysis import (GROUPS, N_BOOT, QUALITY_LINE, WITHIN_POINTS, best_per_budget, budgets_of, overall_frontier,
                       prepare, resolve_run, speed_basis, task_best, task_means, winner_rows)
from .html import e, num, render, slug, swatch, table, write_table_files

log = logging.getLogger("embpress")


class Page:
    def __init__(self, out: Path):
        self.out, self.parts, self.toc, self.files = out, [], [], []

    def add(self, text: str) -> None:
        self.parts.append(text)

    def section(self, anchor: str, title: str, toc: str | None = None) -> None:
        self.toc.append((anchor, toc or title))
        self.add(f'<h2 id="{anchor}">{e(title)}</h2>')

    def note(self, text: str) -> None:
        self.add(f'<p class="note">{e(text)}</p>')


# ---------------------------------------------------------------------------- the answer
def _speed_cells(r: dict, third: str | None) -> list[tuple[str, str, str]]:
    """Speed-up, then latency p50 (``third="latency_p50_ms"``), queries/s or nothing."""
    su = r.get("speedup")
    out = [(f"{num(su)}×" if pd.notna(su) else "—", "" if pd.isna(su) else f"{su:.6g}", "")]
    if third:
        v = r.get(third)
        out.append((num(v) if pd.notna(v) else "—", "" if pd.isna(v) else f"{v:.6g}", ""))
    return out


def _winner_row(r: dict, third: str | None) -> tuple[str, str, list]:
    """One row of a winners table; a per-dataset row shows its 95 % interval in brackets, a
    per-task row (``retained_min``) the range of retained % over the datasets."""
    lo, hi = r.get("budget"), r.get("budget_max")
    span = f"≤ {lo} B" if lo == hi else f"{lo}–{hi} B"
    if pd.isna(r.get("compressor")):
        return (f' data-budget="{lo}" data-budget-max="{hi}"', "", [(span, str(lo), "")] + [("nothing fits", "", "t")])
    lo_hi = ("retained_min", "retained_max") if "retained_min" in r else ("ci_low", "ci_high")
    ci = f" [{num(r[lo_hi[0]])}–{num(r[lo_hi[1]])}]" if pd.notna(r.get(lo_hi[0])) else ""
    same = ' <span class="sig" title="not significantly different from float32">≈</span>' if r.get("vs_f32") == "≈" else ""
    cells = [(span, str(lo), ""), (f"{swatch(r['group'])}<b>{e(str(r['compressor']))}</b>", str(r["compressor"]), "t"),
             (num(r["bytes_per_vector"]), f"{r['bytes_per_vector']:.6g}", ""),
             (f"{num(r['retained_pct'])} %{ci}{same}", f"{r['retained_pct']:.6g}", "")]
    cells += _speed_cells(r, third)
    cells.append((num(r.get("fit_s")) if pd.notna(r.get("fit_s")) else "—", "", ""))
    fast = r.get("fast_compressor") if isinstance(r.get("fast_compressor"), str) else None   # NaN: no timings
    if fast and fast != r["compressor"]:
        su = r.get("fast_speedup")
        cells.append((f"{swatch(r['fast_group'])}{e(fast)}: {num(r['fast_retained_pct'])} %, "
                      f"{num(su) + '× ' if pd.notna(su) else ''}{num(r['fast_bytes_per_vector'])} B", fast, "t"))
    else:
        cells.append(("the same" if fast else "—", fast or "", "t"))
    attrs = (f' data-budget="{lo}" data-budget-max="{hi}" data-compressor="{e(str(r["compressor"]))}" '
             f'data-retained="{r["retained_pct"]!r}" data-fast="{e(fast or "")}"')
    return attrs, ("below" if r["retained_pct"] < QUALITY_LINE else ""), cells


def _winners_html(tid: str, best: pd.DataFrame, headers: list[tuple[str, str]], third: str | None) -> str:
    body, line_done = [], False
    for r in winner_rows(best).to_dict("records"):
        attrs, cls, cells = _winner_row(r, third)
        if not line_done and cls == "below":
            body.append(("", "line90", [(f"below here quality drops under {QUALITY_LINE:.0f} % of float32", "", "")]))
            line_done = True
        body.append((attrs, cls, cells))
    html = table(tid, headers, body, cls="winners")
    return html.replace('<td data-v="">below here', f'<td colspan="{len(headers)}" data-v="">below here')


_FIT = ("fit s", "seconds to fit on the calibration vectors")
_FAST = (f"fastest within {WITHIN_POINTS:g} point",
         f"the compressor with the most queries/s within {WITHIN_POINTS:g} point of the best quality at this budget")


def winners_table(df: pd.DataFrame, best: pd.DataFrame, panel: str) -> str:
    has_latency = "latency_p50_ms" in df and df["latency_p50_ms"].notna().any()
    headers = [("budget", "bytes per vector at most"), ("best compressor", "most quality kept, out-of-sample cells"),
               ("B used", "bytes per vector it stores"),
               ("quality kept", "main metric as % of float32 [95 % paired-bootstrap interval]; ≈: not significantly "
                                "different from float32"),
               ("search speed-up", "queries/s vs float32's, same dataset"),
               ("latency p50 ms" if has_latency else "search q/s", "per query" if has_latency else "queries per second"),
               _FIT, _FAST]
    return _winners_html(f"winners-{slug(panel)}", best[best.panel == panel], headers,
                         "latency_p50_ms" if has_latency else "search_qps")


def task_tables(page: Page, df: pd.DataFrame, budgets: list[int]) -> None:
    """Per task type with two datasets or more: the winners by mean retained % over its datasets,
    shown beside each of those datasets' own table."""
    best = task_best(task_means(df), budgets)
    if best.empty:
        return
    best.to_csv(page.out / "tables" / "best_per_budget_by_task.csv", index=False)
    page.files.append("tables/best_per_budget_by_task.csv")
    headers = [("budget", "bytes per vector at most"),
               ("best compressor", "highest mean quality kept over the datasets, out-of-sample cells that ran on all"),
               ("B used", "bytes per vector it stores"),
               ("mean quality kept", "mean over the datasets of the main metric as % of float32 [lowest, highest]"),
               ("search speed-up", "geometric mean over the datasets of queries/s vs float32's"), _FIT, _FAST]
    for (model, task), g in best.groupby(["model", "task"], sort=False):
        names = g["datasets"].iloc[0].split(", ")
        panels = sorted(set(df.loc[(df.model == model) & df.dataset.isin(names), "panel"]))
        page.add(f"<div data-in='{e(json.dumps(panels))}'><h3>{e(task)} over {len(names)} datasets "
                 f"({e(', '.join(names))}{', ' + e(str(model)) if df.model.nunique() > 1 else ''}): the best by mean "
                 f"quality kept</h3><p class='muted small'>Compressors that ran out-of-sample on every one of these "
                 f"datasets; in brackets the lowest and highest dataset.</p>"
                 + _winners_html(f"winners-task-{slug(task)}-{slug(model)}", g, headers, None) + "</div>")


def answer_section(page: Page, df: pd.DataFrame, meta: dict) -> None:
    page.section("answer", "Which compressor for my budget and my speed", "answer")
    text = protocol_text(df)
    if "protocol" in df and df["protocol"].notna().any():     # collapsed: the tables come first, on a phone too
        page.add(f'<details class="protocol"><summary>How the compressors were fitted: only out-of-sample cells '
                 f'(cross-fitted, oblivious, external) are recommended</summary>{e(text)}</details>')
    else:                                                      # an old run's in-sample warning stays in sight
        page.add(f'<p class="protocol">{e(text)}</p>')
    if meta.get("partial"):
        log.warning(f"warning: {meta.get('run_id')} is a partial run ({meta['partial']})")
        page.note(f"Partial run: {meta['partial']}. The figures show only the cells finished so far.")
    budgets = budgets_of(df, meta)
    if not (df.status == "ok").any():
        page.note("No cell of this run finished: nothing to recommend.")
        return
    best = best_per_budget(df, budgets) if budgets else pd.DataFrame()
    if best.empty:
        page.note("No cell stores less than float32: no budget to recommend for.")
        return
    best.to_csv(page.out / "tables" / "best_per_budget.csv", index=False)
    page.files.append("tables/best_per_budget.csv")
    for panel in dict.fromkeys(df["panel"]):
        page.add(f'<div data-ds="{e(panel)}"><h3>{e(panel)}: the best out-of-sample compressor at each budget</h3>'
                 f'<p class="muted small">{e(speed_basis(df, panel))} Consecutive budgets with the same '
                 f'answer share a row.</p>{winners_table(df, best, panel)}</div>')
    task_tables(page, df, budgets)
    from ..scale_report import deployment_note
    page.add(deployment_note([str(c) for c in best.get("compressor", pd.Series(dtype=str)).dropna()]))
    frontier_lists(page, df)


def frontier_lists(page: Page, df: pd.DataFrame) -> None:
    ok = df[(df.status == "ok") & df.oos]
    parts = []
    for panel, g in ok.groupby("panel", sort=False):
        front = g[g.pareto].sort_values("bytes_per_vector")
        items = "".join(f'<li data-compressor="{e(str(r.compressor))}">{swatch(r.group)}{e(str(r.compressor))}: '
                        f'{num(r.bytes_per_vector)} B, {num(r.retained_pct)} %</li>' for r in front.itertuples())
        parts.append(f'<div data-ds="{e(panel)}"><ul class="pareto" data-panel="{e(panel)}">{items}</ul></div>')
    overall = overall_frontier(df[df.oos])
    for model, g in overall.groupby("model", sort=False):
        front = g[g.pareto].sort_values("bytes_per_vector")
        items = "".join(f'<li data-compressor="{e(str(r.compressor))}">{swatch(r.group)}{e(str(r.compressor))}: '
                        f'{num(r.bytes_per_vector)} B, mean {num(r.retained_pct)} %</li>' for r in front.itertuples())
        parts.append(f'<p><b>Overall, {e(str(model))}</b>: mean quality kept over its datasets (compressors that ran '
                     f'on all of them)</p><ul class="pareto-overall" data-model="{e(str(model))}">{items}</ul>')
    page.add("<details><summary>Pareto-optimal compressors (no other cell stores fewer bytes and keeps at least as "
             "much)</summary>" + "".join(parts) + "</details>")
    overall.to_csv(page.out / "tables" / "pareto_overall.csv", index=False)
    df.loc[df.pareto, ["panel", "compressor", "bytes_per_vector", "retained_pct", "ci_low", "ci_high"]].to_csv(
        page.out / "tables" / "pareto.csv", index=False)
    page.files += ["tables/pareto.csv", "tables/pareto_overall.csv"]


# ---------------------------------------------------------------------------- charts
def charts_section(page: Page, df: pd.DataFrame, specs: dict, skipped: list[str]) -> None:
    page.section("charts", "Charts")
    for cid, (_, caption) in specs.items():
        page.add(f'<figure><div class="chart" id="{cid}"></div><figcaption>{e(caption)}</figcaption></figure>')
    figs = [f for f in page.files if f.startswith("figures/")]
    page.add("<p class='muted small'>For papers and slides (matplotlib, PNG at 2x and SVG): "
             + ", ".join(f'<a href="{e(f)}">{e(f.split("/")[1])}</a>' for f in figs) + ".</p>")
    for s in skipped:
        page.note(s)


# ---------------------------------------------------------------------------- the results table
def result_columns(df: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(key, header, title): identity, then every registered metric the run has, then the rest."""
    def has(c):
        return c in df and df[c].notna().any() and (df[c].astype(str) != "").any()
    cols = [("compressor", "compressor", "the spec"), ("family", "family", "technique family (its group's colour)"),
            ("budget", "budget B", "target bytes per vector of the grid family"), ("protocol", "protocol", ""),
            ("retained_pct", "quality kept %", METRICS["retained_pct"].description),
            ("ci", "95 % CI", "paired bootstrap over queries or pairs"),
            ("vs_f32", "vs float32", "≈: the 95 % interval contains 100 %"), ("speedup", "search speed-up", "")]
    cols += [(m, figures.label(m), METRICS[m].description) for m in METRICS if m != "retained_pct"]
    cols += [(c, c.replace("_", " "), "") for c in ("search_kernel", "latency_p50_ms", "latency_p99_ms",
                                                    "search_bytes", "n_train", "n_vectors") if c not in METRICS]
    cols += [("status", "status", ""), ("note", "reason / warnings", "")]
    derived = {"ci": has("ci_low"), "note": has("error") or has("warnings")}
    return [c for c in cols if derived.get(c[0], has(c[0]))]


def _result_cell(r: pd.Series, key: str) -> tuple[str, str, str]:
    if key == "ci":
        return ("", "", "") if pd.isna(r.get("ci_low")) else (f"{num(r.ci_low)}–{num(r.ci_high)}", f"{r.ci_low:.6g}", "")
    if key == "note":
        text = r.get("error") if pd.notna(r.get("error")) else r.get("warnings")
        if text is None or (isinstance(text, float) and pd.isna(text)):
            return "", "", "why"
        return f'<div class="clamp" title="{e(str(text))}">{e(str(text))}</div>', "", "why"
    v = r.get(key)
    if key == "family":
        return (f"{swatch(r.group)}{e(str(v))}" if pd.notna(v) else swatch(r.group), str(v), "t")
    if v is None or (isinstance(v, float) and pd.isna(v)) or v is pd.NA:
        return "", "", ""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return num(v) + ("×" if key == "speedup" else ""), f"{float(v):.10g}", ""
    return e(str(v)), str(v), "t" if key != "compressor" else ""


def results_section(page: Page, df: pd.DataFrame) -> None:
    page.section("results", "All results", "results")
    cols = result_columns(df)
    groups = [g.name for g in GROUPS if g.name in set(df["group"])]
    budgets = sorted({int(b) for b in pd.to_numeric(df.get("budget"), errors="coerce").dropna()})
    page.add('<div class="filters"><input id="filter-text" type="search" placeholder="filter: spec, family, status…" '
             'aria-label="text filter"><select id="filter-family" aria-label="family"><option value="">every family'
             "</option>" + "".join(f'<option value="{e(g)}">{e(g)}</option>' for g in groups) + '</select>'
             '<select id="filter-budget" aria-label="budget"><option value="">every budget</option>'
             + "".join(f'<option value="{b}">{b} B</option>' for b in budgets) +
             '</select><span id="filter-count" class="muted"></span></div>')
    page.add("<p class='muted small'>Click a header to sort; columns empty for the rows shown are hidden. Bold spec: on "
             "the Pareto frontier. Infeasible (amber) and failed (red) cells keep their reason; in-sample cells are "
             "shown for comparison and never recommended.</p>")
    rows = []
    for _, r in df.iterrows():
        b = pd.to_numeric(r.get("budget"), errors="coerce")
        attrs = (f' data-ds="{e(str(r.panel))}" data-group="{e(r.group)}"'
                 f' data-budget="{"" if pd.isna(b) else int(b)}"')
        cls = " ".join(x for x in (str(r.status), "pareto" if r.pareto else "") if x)
        rows.append((attrs, cls, [_result_cell(r, k) for k, _, _ in cols]))
    page.add(table("results-table", [(h, t) for _, h, t in cols], rows))
    derived = ["vs_f32", "pareto", "speedup"]
    raw = df[[c for c in COLUMNS if c in df] + derived
             + [c for c in df.columns if c not in COLUMNS and c not in ("line", "panel", "oos", *derived)]]
    raw.to_csv(page.out / "tables" / "all_cells.csv", index=False)
    page.files.append("tables/all_cells.csv")
    for panel, g in raw.groupby(df["panel"], sort=False):
        page.files += write_table_files(page.out, f"cells_{slug(panel)}", list(g.columns),
                                        [[num(v) if isinstance(v, float) else str(v) for v in rec]
                                         for rec in g.itertuples(index=False)], g)


def _clear(out: Path) -> None:
    for sub in ("figures", "tables"):
        d = out / sub
        d.mkdir(parents=True, exist_ok=True)
        for f in d.iterdir():
            if f.is_file() and f.suffix in (".png", ".svg", ".csv", ".md"):
                f.unlink()


def build_report(run_dir: str | Path, out_dir: str | Path | None = None, *, n_boot: int = N_BOOT) -> Path:
    """Build ``<reports>/<run-id>/index.html`` (figures and tables beside it) for a run folder;
    returns the page's path. ``out_dir`` overrides the folder."""
    from . import sections
    run_dir = resolve_run(run_dir)
    t0 = time.perf_counter()
    try:
        df, meta = load_run(run_dir)
    except (OSError, ValueError) as exc:
        raise EmbpressError(f"{run_dir}: cannot read the run ({exc})") from None
    out = Path(out_dir) if out_dir else settings.reports_dir() / meta.get("run_id", run_dir.name)
    out.mkdir(parents=True, exist_ok=True)
    _clear(out)
    from ..scale_report import build_scale_report, is_scale_run, scale_link
    if is_scale_run(meta):
        return build_scale_report(run_dir, df, meta, out)
    df = prepare(df, run_dir, n_boot)
    exports = figures.start_exports(df, out)
    page = Page(out)
    answer_section(page, df, meta)
    charts_at = len(page.parts)
    specs = figures.charts(df) if (df.status == "ok").any() else {}
    results_section(page, df)
    sections.loss_section(page, df, meta, run_dir)
    sections.model_section(page, df)
    fig_files, skipped = exports()
    page.files += fig_files
    later, page.parts = page.parts[charts_at:], page.parts[:charts_at]
    toc_later, page.toc = page.toc[1:], page.toc[:1]
    charts_section(page, df, specs, skipped)
    page.parts += later
    page.toc += toc_later
    sections.closing_sections(page, df, meta, n_boot)
    header = sections.header(meta, run_dir) + scale_link(out)
    points = json.dumps(figures.points(df), separators=(",", ":")).replace("</", "<\\/")
    html = render(f"embpress report {meta.get('run_id', '')}", header, page.toc, "".join(page.parts),
                  list(dict.fromkeys(df["panel"])), figures.vega_bundle() if specs else "", points,
                  figures.specs_json(specs))
    index = out / "index.html"
    write_text(index, html)
    log.info("report: %s (%.1f s)", index, time.perf_counter() - t0)
    return index
