"""The report's figures: interactive Vega-Lite charts (built with altair, drawn in the page by the
inlined Vega bundle from vl-convert-python) and the matplotlib exports (PNG at 2x and SVG) for
papers and slides."""
from __future__ import annotations

import functools
import io
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..files import write_text
from ..metrics import METRICS, label
from ..stats import pareto_mask
from .analysis import GROUP, GROUPS, QUALITY_LINE

#: d3 formats: 3 significant digits, never in scientific notation (as the page's tables), or whole bytes.
SIG3, WHOLE = ",.3~r", ",d"
#: A point's tooltip, in this order: (field, title, d3 format or None for text). Every metric of the
#: registry is in it (one missing here is appended); fields a dataset lacks are left out.
TOOLTIP = [("compressor", "spec", None), ("family", "family", None), ("protocol", "protocol", None),
           ("bytes_per_vector", "bytes per vector", WHOLE), ("retained_pct", "quality kept %", SIG3),
           ("ci", "95 % CI", None), ("ndcg_at_10", "nDCG@10", SIG3), ("recall_at_100", "Recall@100", SIG3),
           ("mrr_at_10", "MRR@10", SIG3), ("spearman", "Spearman", SIG3),
           ("knn_recall_at_10", "neighbour recall@10", SIG3), ("knn_recall_at_100", "neighbour recall@100", SIG3),
           ("compression_ratio", "× smaller", SIG3), ("overhead_bytes", "fixed bytes", WHOLE),
           ("amortised_bytes_corpus", "B/vector + fixed, corpus", SIG3),
           ("amortised_bytes_1m", "B/vector + fixed, 1 M", SIG3), ("speedup", "speed-up vs float32", SIG3),
           ("search_qps", "search queries/s", SIG3), ("latency_p50_ms", "latency p50 ms", SIG3),
           ("latency_p99_ms", "latency p99 ms", SIG3), ("search_kernel", "search kernel", None),
           ("search_bytes", "searcher bytes", WHOLE), ("fit_s", "fit s", SIG3),
           ("encode_vps", "encode vectors/s", SIG3)]
TOOLTIP += [(m, label(m), SIG3) for m in METRICS if m not in {f for f, _, _ in TOOLTIP}]
FLAGS = ["oos", "pareto", "spar", "fpar"]


def _round(v):
    if isinstance(v, (float, np.floating)):
        if not math.isfinite(v):
            return None
        return int(v) if float(v).is_integer() else float(f"{v:.4g}")      # whole numbers (bytes) stay exact
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.bool_,)):
        return bool(v)
    return v


def with_ci_text(df: pd.DataFrame) -> pd.DataFrame:
    """The rows plus ``ci``: the 95 % interval as text ("99.7–102", "≈ float32" where it holds 100 %)."""
    from .html import num
    out = df.copy()
    lo, hi = (pd.to_numeric(out.get(c), errors="coerce") for c in ("ci_low", "ci_high"))
    out["ci"] = [None if pd.isna(a) else f"{num(a)}–{num(b)}" + (" (≈ float32)" if s == "≈" else "")
                 for a, b, s in zip(lo, hi, out.get("vs_f32", pd.Series("", index=out.index)))]
    return out


def point_columns(df: pd.DataFrame) -> list[str]:
    """The tooltip's fields that these rows have (``ci``: see :func:`with_ci_text`)."""
    return [f for f, _, _ in TOOLTIP if f in df and df[f].notna().any() and (df[f].astype(str) != "").any()]


def points(df: pd.DataFrame) -> list[dict]:
    """The ok rows as chart points (every tooltip field, numbers rounded to 4 digits; the dataset
    panel, the group), plus ``oos`` (out-of-sample), ``pareto`` (bytes/quality frontier), ``spar``
    (speed/quality) and ``fpar`` (fit time/quality frontier) of their dataset."""
    ok = with_ci_text(df[df.status == "ok"])
    ok["dataset"] = ok["panel"]
    for flag, col in (("spar", "search_qps"), ("fpar", "fit_s")):
        ok[flag] = False
        measured = ok[ok.oos & pd.to_numeric(ok.get(col), errors="coerce").notna()] if col in ok else ok.iloc[:0]
        for _, g in measured.groupby("panel", sort=False):
            ok.loc[g.index, flag] = pareto_mask(g, ("retained_pct", col))
    from ..plots import insample_pairs
    ok["cmp"] = insample_pairs(ok)
    ok["fit"] = np.where(ok.oos, "cross-fitted", "in-sample")
    cols = ["dataset", "group", *point_columns(ok), *FLAGS] + (["cmp", "line", "fit"] if ok.cmp.any() else [])
    out = []
    for rec in ok[cols].itertuples(index=False):
        vals = {k: _round(v) for k, v in zip(cols, rec) if v is not None and v is not pd.NA}
        out.append({k: v for k, v in vals.items() if v is not None})
    return out


def _tooltip(cols: list[str]):
    import altair as alt
    return [alt.Tooltip(f"{f}:{'N' if fmt is None else 'Q'}", title=title, **({"format": fmt} if fmt else {}))
            for f, title, fmt in TOOLTIP if f in cols]


def _scales(present: set[str]):
    import altair as alt
    groups = [g for g in GROUPS if g.name in present]
    names = [g.name for g in groups]
    legend = alt.Legend(orient="top", title="family (click to show or hide)", columns=3, symbolStrokeWidth=2,
                        labelLimit=170)
    colour = alt.Color("group:N", scale=alt.Scale(domain=names, range=[g.colour for g in groups]), legend=legend)
    shape = alt.Shape("group:N", scale=alt.Scale(domain=names, range=[g.marker for g in groups]), legend=legend)
    return colour, shape


def _chart(x, y, filt: str, frontier: str, cols: list[str], title: str, present: set[str],
           rule: float | None = None) -> dict:
    """Points coloured and shaped by family group (the legend toggles a group), the frontier drawn
    on top as a black line, hover: every field of the point."""
    import altair as alt
    sel = alt.selection_point(fields=["group"], bind="legend", name="fam")
    colour, shape = _scales(present)
    base = alt.Chart(alt.Data(name="points")).transform_filter(filt)
    tips = _tooltip(cols)
    pts = base.mark_point(filled=True, size=55).encode(
        x=x, y=y, color=colour, shape=shape, tooltip=tips,
        opacity=alt.condition(sel, alt.value(0.85), alt.value(0.06))).add_params(sel)
    front = base.transform_filter(frontier).mark_line(color="black", strokeWidth=1.6, point=alt.OverlayMarkDef(
        color="black", size=18, filled=True)).encode(x=x, y=y, order=alt.Order(x.shorthand), tooltip=tips)
    layers = [pts, front]
    if rule is not None:
        layers.insert(0, alt.Chart(alt.Data(values=[{"y": rule}])).mark_rule(color="#b42318", strokeDash=[5, 4])
                      .encode(y="y:Q"))
    chart = alt.layer(*layers).properties(width="container", height=330, title=title)
    spec = chart.to_dict(validate=False)
    spec["autosize"] = {"type": "fit-x", "contains": "padding", "resize": True}   # re-fit once data arrives
    return spec


def _insample_chart(cols: list[str], present: set[str]) -> dict:
    """One line per trained family and fit (solid: cross-fitted, dashed: in-sample) over bytes."""
    import altair as alt
    sel = alt.selection_point(fields=["group"], bind="legend", name="fam")
    colour, _ = _scales(present)
    dash = alt.StrokeDash("fit:N", scale=alt.Scale(domain=["cross-fitted", "in-sample"], range=[[1, 0], [5, 3]]),
                          legend=alt.Legend(orient="top", title="fitted"))
    chart = alt.Chart(alt.Data(name="points")).transform_filter("datum.cmp").mark_line(
        point=alt.OverlayMarkDef(filled=True, size=30), strokeWidth=1.6).encode(
        x=alt.X("bytes_per_vector:Q", scale=alt.Scale(type="log", nice=False, padding=14),
                title="bytes per vector (log scale)"),
        y=alt.Y("retained_pct:Q", title="quality kept, % of float32", scale=alt.Scale(zero=False)),
        color=colour, strokeDash=dash, detail="line:N", order="bytes_per_vector:Q", tooltip=_tooltip(cols),
        opacity=alt.condition(sel, alt.value(0.9), alt.value(0.08))).add_params(sel)
    spec = chart.properties(width="container", height=330, title="In-sample against cross-fitted").to_dict(
        validate=False)
    spec["autosize"] = {"type": "fit-x", "contains": "padding", "resize": True}
    return spec


def charts(df: pd.DataFrame) -> dict[str, tuple[dict[str, dict], str]]:
    """{element id: ({dataset panel: Vega-Lite spec}, caption)} of the page's interactive charts; each
    dataset's spec hovers the fields that dataset has."""
    out: dict[str, tuple[dict[str, dict], str]] = {}
    for panel, g in df[df.status == "ok"].groupby("panel", sort=False):
        for cid, (spec, caption) in _panel_charts(g).items():
            out.setdefault(cid, ({}, caption))[0][panel] = spec
    return out


def _panel_charts(g: pd.DataFrame) -> dict[str, tuple[dict, str]]:
    """One dataset's charts; datasets with the same fields and family groups share their specs
    (built once: altair takes a tenth of a second per chart)."""
    from ..plots import insample_pairs
    pairs = insample_pairs(g)
    has = tuple(c in g and pd.to_numeric(g[c], errors="coerce").notna().any() for c in ("speedup", "fit_s"))
    key = (tuple(point_columns(with_ci_text(g))), frozenset(g.loc[g.oos, "group"]), *has,
           frozenset(g.loc[pairs, "group"]) if pairs.any() else None)
    return {cid: tuple(v) for cid, v in json.loads(_specs(*key)).items()}


@functools.lru_cache(maxsize=16)
def _specs(cols: tuple, present: frozenset, speed: bool, fit: bool, pair_groups: frozenset | None) -> str:
    """{chart id: [spec, caption]} as JSON, for the fields and groups a dataset has."""
    import altair as alt
    cols, present = list(cols), set(present)
    out = {"chart-quality": (_chart(
        alt.X("bytes_per_vector:Q", scale=alt.Scale(type="log", nice=False, padding=14),
              title="bytes per vector (log scale)"),
        alt.Y("retained_pct:Q", title="quality kept, % of float32"), "datum.oos", "datum.pareto", cols,
        "Quality kept against storage", present, rule=QUALITY_LINE),
        "Every out-of-sample cell of the selected dataset: quality kept (main metric as % of float32) against "
        f"bytes per vector. Black: the Pareto frontier; dashed red: {QUALITY_LINE:.0f} %. Hover a point for its "
        "spec, bytes and every metric; click a family in the legend to show or hide it.")}
    if speed:
        out["chart-speed"] = (_chart(
            alt.X("retained_pct:Q", title="quality kept, % of float32", scale=alt.Scale(zero=False)),
            alt.Y("speedup:Q", scale=alt.Scale(type="log"), title="search speed-up vs float32 (log scale)"),
            "datum.oos && isValid(datum.speedup)", "datum.spar", cols, "Search speed against quality", present),
            "Search queries per second of each compressor divided by float32's on the same dataset (the grid's own "
            "exact scan of the codes, on this run's corpus), against quality kept. Black: cells no other cell beats "
            "on both. Datasets without search timings (STS pairs) have no such chart.")
    if fit:
        out["chart-fit"] = (_chart(
            alt.X("retained_pct:Q", title="quality kept, % of float32", scale=alt.Scale(zero=False)),
            alt.Y("fit_s:Q", scale=alt.Scale(type="log"), title="fit seconds (log scale)"),
            "datum.oos && datum.fit_s > 0", "datum.fpar", cols, "Training cost against quality", present),
            "Seconds to fit each compressor on its calibration vectors (per fold when cross-fitted) against quality "
            "kept; lower is cheaper. Black: cells no other cell beats on both. Compressors that learn nothing fit in "
            "microseconds.")
    if pair_groups:
        out["chart-insample"] = (_insample_chart(cols, set(pair_groups)), (
            "What in-sample fitting hides: the same trained compressors fitted on the very vectors they score (dashed) "
            "and cross-fitted (solid: every vector scored by a fit that never saw it). The gap is memorisation of a "
            "small corpus; everything else on this page uses out-of-sample cells only."))
    return json.dumps(out)


def vega_bundle() -> str:
    """The Vega, Vega-Lite and Vega-Embed JavaScript (about 0.9 MB), inlined once in the page;
    bundling takes seconds, so it is kept in the cache folder per vl-convert-python version."""
    import importlib.metadata
    from .. import settings
    path = settings.cache_dir() / "vega" / f"bundle-{importlib.metadata.version('vl-convert-python')}.js"
    if path.is_file():
        return path.read_text(encoding="utf-8")
    import vl_convert
    bundle = vl_convert.javascript_bundle().replace("</script", "<\\/script")
    try:
        write_text(path, bundle)
    except OSError:       # a read-only cache: bundle again next time
        pass
    return bundle


def specs_json(specs: dict[str, tuple[dict, str]]) -> str:
    return json.dumps({k: v[0] for k, v in specs.items()}, separators=(",", ":")).replace("</", "<\\/")


# ---------------------------------------------------------------------------- matplotlib exports
def export(fig, out: Path, name: str) -> bytes:
    """Write ``figures/<name>.png`` (2x: 200 dpi) and ``.svg``; returns the PNG bytes."""
    import matplotlib.pyplot as plt
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=200)
    png = buf.getvalue()
    (out / "figures" / f"{name}.png").write_bytes(png)
    fig.savefig(out / "figures" / f"{name}.svg", format="svg")
    plt.close(fig)
    return png


def _shade(colour: str, i: int) -> str:
    """The i-th shade of a group's colour: the colour itself, then darker, lighter, darker still."""
    r, g, b = (int(colour[k:k + 2], 16) for k in (1, 3, 5))
    f = (1.0, 0.6, 1.5, 0.35, 1.8)[i % 5]
    mix = (lambda c: c * f) if f <= 1 else (lambda c: c + (255 - c) * (f - 1))
    return "#" + "".join(f"{int(round(min(255, mix(c)))):02x}" for c in (r, g, b))


def style_maps(df: pd.DataFrame) -> dict[str, str]:
    """Colour of every group, family and line label: its group's hue (a darker or lighter shade for
    the second, third … family or template of a group), so every figure agrees with the page."""
    from .. import plots
    colour = {g.name: g.colour for g in GROUPS}
    for col in ("family", "line"):
        if col in df:
            seen: dict[str, int] = {}
            # a missing family (an infeasible cell) is "" here: pandas' astype(str) keeps it NaN
            pairs = sorted(set(zip(df["group"].astype(str), (str(x) for x in df[col].fillna("")))))
            for grp, key in pairs:
                if key not in colour:
                    colour[key] = _shade(GROUP[grp].colour, seen.get(grp, 0))
                    seen[grp] = seen.get(grp, 0) + 1
    plots.MARKERS.update({g.name: g.mpl_marker for g in GROUPS})
    return colour


EXPORTS = [    # (file name, embpress.plots function, why it can be missing; None: nothing said)
    ("in_sample_vs_crossfit", "in_sample_vs_crossfit", None),
    ("quality_vs_bytes", "quality_vs_bytes", "no finished cells"),
    ("knn_recall_vs_bytes", "knn_vs_bytes", "no retrieval or neighbour cells"),
    ("qps_vs_recall", "qps_vs_recall", "no retrieval or neighbour cells"),
    ("speed_by_family", "speed_by_family", "no finished cells"),
    ("sts_vs_bytes", "sts_vs_bytes", "no STS cells"),
    ("rescoring", "rescoring", "no compressor with rescore= in its spec"),
]
#: Processes drawing the exports beside the page, one figure per task (matplotlib is single threaded).
#: One: on 2 cores a second drawer starved the page's own half (the default run's build measured
#: 15-21 s with two, 14-17 s with one, on a loaded machine).
EXPORT_WORKERS = 1


def export_one(df: pd.DataFrame, out: Path, name: str) -> tuple[list[str], str | None]:
    """Draw one export of :data:`EXPORTS` (the in-sample comparison from every ok cell, the others
    from the out-of-sample ones); returns (files written, a note when there is nothing to draw)."""
    from .. import plots
    fn, why = next((f, w) for n, f, w in EXPORTS if n == name)
    colour = style_maps(df)
    ok = df[df.status == "ok"]
    ok = ok if name == "in_sample_vs_crossfit" else ok[ok.oos]
    fig = getattr(plots, fn)(ok, colour) if len(ok) else None
    if fig is None:
        return [], f"{name}: figure skipped ({why} in this run)" if why else None
    export(fig, out, name)
    return [f"figures/{name}.png", f"figures/{name}.svg"], None


def _collect(results: list[tuple[list[str], str | None]]) -> tuple[list[str], list[str]]:
    return [f for files, _ in results for f in files], [note for _, note in results if note]


def export_all(df: pd.DataFrame, out: Path) -> tuple[list[str], list[str]]:
    """Every export, here and now; returns (files written, notes on figures skipped)."""
    return _collect([export_one(df, out, name) for name, _, _ in EXPORTS])


def start_exports(df: pd.DataFrame, out: Path):
    """The exports drawn by forked processes while the page is assembled; returns a function
    waiting for (files written, notes on figures skipped). A figure whose drawer died (memory?) is
    drawn here; where fork is unavailable, all of them are, at once."""
    import concurrent.futures
    import multiprocessing as mp
    if "fork" not in mp.get_all_start_methods():
        result = export_all(df, out)
        return lambda: result
    from .. import plots  # noqa: F401 - imported once, before the drawers fork
    pool = concurrent.futures.ProcessPoolExecutor(EXPORT_WORKERS, mp_context=mp.get_context("fork"))
    futures = [(name, pool.submit(export_one, df, out, name)) for name, _, _ in EXPORTS]

    def wait():
        results = []
        try:
            for name, future in futures:
                try:
                    results.append(future.result())
                except concurrent.futures.process.BrokenProcessPool:
                    results.append(export_one(df, out, name))
        finally:
            pool.shutdown()
        return _collect(results)
    return wait
