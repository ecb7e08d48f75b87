"""The report's figures (matplotlib, Agg backend), one function per question.

Each function takes the report's prepared table (result rows plus ``line``: the family or grid
template a point belongs to, ``panel``: the dataset (and model) it was measured on, ``ci_low`` /
``ci_high``: the bootstrap interval of ``retained_pct``, ``pareto``: on its panel's frontier) and
returns a figure, or None when the run has nothing to show for that question.
"""
from __future__ import annotations

import math
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.ticker  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .metrics import METRICS, label as metric_label  # noqa: E402
from .stats import pareto_mask  # noqa: E402

plt.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "embpress", "font.size": 9,
                     "axes.titlesize": 10, "axes.spines.top": False, "axes.spines.right": False})

FRONTIER = dict(color="black", linewidth=1.2, linestyle=(0, (4, 2)), zorder=6)
RESCORE = re.compile(r":rescore=(\d+)")
RESCORE_WITH = re.compile(r":rescore_with=[^:]*")


def _plain(v, _pos=None) -> str:
    """A log-axis label as a plain number (1, 10, 1,000, 0.001), as the page's charts write them:
    no mathtext to typeset (a tenth of the exports' drawing time)."""
    return f"{v:,.0f}" if v >= 1 else f"{v:.10g}"


def _log(axis) -> None:
    """A log axis's labels: powers of ten only (minor labels collide on short ranges), plain numbers."""
    axis.set_major_formatter(matplotlib.ticker.FuncFormatter(_plain))
    axis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def _logx(ax) -> None:
    ax.set_xscale("log")
    _log(ax.xaxis)


def colours(labels) -> dict[str, tuple]:
    """One colour per line label, stable across every figure of a report."""
    labels = sorted({str(x) for x in labels})
    cmap = plt.get_cmap("tab10" if len(labels) <= 10 else "tab20")
    return {lab: cmap(i % cmap.N) for i, lab in enumerate(labels)}


def _grid(n: int, height: float = 3.6, width: float = 5.2):
    cols = min(n, 2)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows + 0.6), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _legend(fig, axes) -> None:
    handles, labels = {}, []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in handles:
                handles[lab] = h
                labels.append(lab)
    if handles:   # outside the axes, on the right
        _layout(fig, right=0.8)
        fig.legend([handles[l] for l in labels], labels, loc="center left", bbox_to_anchor=(0.8, 0.5),
                   frameon=False, fontsize=8)
    else:
        _layout(fig)


def _layout(fig, right: float = 1.0, left_in: float = 0.8) -> None:
    """Fixed margins in inches (tight_layout measured every tick label: a third of the report's
    build time)."""
    w, h = fig.get_size_inches()
    fig.subplots_adjust(left=left_in / w, right=right - 0.2 / w, bottom=0.55 / h, top=1 - 0.65 / h,
                        wspace=0.32, hspace=0.5)


def _per_panel(data: pd.DataFrame, draw, title: str):
    """One subplot per panel (dataset, or dataset · model) with ``draw(ax, panel, rows)``, a common
    title and one legend: the layout every per-dataset figure shares."""
    panels = list(dict.fromkeys(data["panel"]))
    fig, axes = _grid(len(panels))
    fig.set_figwidth(fig.get_figwidth() * 1.25)            # room for the legend on the right
    for ax, panel in zip(axes, panels):
        draw(ax, panel, data[data.panel == panel])
    fig.suptitle(title, fontsize=11)
    _legend(fig, axes)
    return fig


def _frontier(ax, pts: pd.DataFrame, x: str, y: str, label_col: str | None = None) -> None:
    """The Pareto frontier, on top of every series (names are in the report's tables and tooltips:
    labels on the points collided)."""
    pts = pts.sort_values(x)
    if pts.empty:
        return
    ax.plot(pts[x], pts[y], label="Pareto frontier", **FRONTIER)


#: Marker per series label (the report fills it with its family groups' markers).
MARKERS: dict[str, str] = {}


def _lines(ax, g: pd.DataFrame, x: str, y: str, colour: dict, err: tuple[str, str] | None = None,
           scale: pd.Series | None = None) -> None:
    """One series per family group (``group`` column, else ``line``): every cell as a marker with its
    interval, joined along the group's own best points (its frontier), so a group with several
    families does not zig-zag."""
    by = "group" if "group" in g else "line"
    present = set(g[by].astype(str))
    order = [k for k in MARKERS if k in present] + sorted(present - set(MARKERS))     # the page's group order
    for line in order:
        pts = g[g[by].astype(str) == line].sort_values(x)
        c, m = colour.get(str(line), "C0"), MARKERS.get(str(line), "o")
        if err is not None and pts[list(err)].notna().all().all():
            s = 1.0 if scale is None else scale.loc[pts.index]
            yerr = np.vstack([(pts[y] - pts[err[0]] * s).clip(lower=0), (pts[err[1]] * s - pts[y]).clip(lower=0)])
            ax.errorbar(pts[x], pts[y], yerr=yerr, fmt="none", ecolor=c, alpha=0.35, linewidth=0.8, zorder=2)
        ax.scatter(pts[x], pts[y], s=16, color=c, marker=m, alpha=0.55, linewidths=0, zorder=3)
        best = pts[pareto_mask(pts, (x, y))].sort_values(x) if x in METRICS and y in METRICS else pts
        ax.plot(best[x], best[y], color=c, marker=m, markersize=4, linewidth=1.4, label=str(line), zorder=4)


def quality_vs_bytes(ok: pd.DataFrame, colour: dict):
    """Quality retained (% of float32) against bytes per vector, one panel per dataset."""
    data = ok.dropna(subset=["retained_pct", "bytes_per_vector"])
    if data.empty:
        return None

    def draw(ax, panel, g):
        metric = metric_label(g["main_metric"].iloc[0])
        ax.axhline(100, color="grey", linestyle=":", linewidth=1)
        _frontier(ax, g[g.pareto], "bytes_per_vector", "retained_pct")
        _lines(ax, g, "bytes_per_vector", "retained_pct", colour, err=("ci_low", "ci_high"))
        _logx(ax)
        ax.set_xlabel("bytes per vector (log scale)")
        ax.set_ylabel(f"% of float32 {metric} (95 % CI)")
        ax.set_title(f"{panel}: {metric} retained")
    return _per_panel(data, draw, "Quality kept at each storage budget (higher and further left is better)")


def insample_pairs(ok: pd.DataFrame) -> pd.Series:
    """Which ok rows the in-sample vs cross-fitted comparison shows: the in-sample and cross-fitted
    cells of each (panel, line) that has both (all False when the run has no such pair)."""
    none = pd.Series(False, index=ok.index, dtype=bool)
    if "protocol" not in ok or ok.empty:
        return none
    valid = ok.retained_pct.notna() & ok.bytes_per_vector.notna()
    proto = ok.protocol.astype(str)
    ins, cross = valid & (proto == "in-sample"), valid & proto.str.startswith("crossfit")
    key = list(zip(ok.panel, ok.line))
    both = {k for k, i in zip(key, ins) if i} & {k for k, c in zip(key, cross) if c}
    return pd.Series([k in both for k in key], index=ok.index, dtype=bool) & (ins | cross)


def in_sample_vs_crossfit(ok: pd.DataFrame, colour: dict):
    """Per dataset, each trained family that has in-sample cells: in-sample (dashed) against
    cross-fitted (solid) retained % per bytes per vector; None without such pairs."""
    data = ok[insample_pairs(ok)]
    if data.empty:
        return None

    def draw(ax, panel, g):
        metric = metric_label(g["main_metric"].iloc[0])
        ax.axhline(100, color="grey", linestyle=":", linewidth=1)
        for (line, proto), pts in g.groupby(["line", g.protocol == "in-sample"], sort=True):
            pts = pts.sort_values("bytes_per_vector")
            ax.plot(pts.bytes_per_vector, pts.retained_pct, marker="o" if not proto else "x", markersize=4,
                    linewidth=1.3, linestyle="--" if proto else "-", color=colour[str(line)],
                    label=None if proto else re.sub(r":[^,]*", "", str(line)))   # the family, options dropped
        if panel == data.panel.iloc[0]:
            ax.plot([], [], color="#444", linestyle="-", marker="o", markersize=4, label="cross-fitted (solid)")
            ax.plot([], [], color="#444", linestyle="--", marker="x", markersize=4, label="in-sample (dashed)")
        _logx(ax)
        ax.set_xlabel("bytes per vector (log scale)")
        ax.set_ylabel(f"% of float32 {metric}")
        ax.set_title(f"{panel}: in-sample vs cross-fitted")
    return _per_panel(data, draw, "Trained compressors scored on the vectors they were fitted on (dashed) "
                                  "and cross-fitted (solid)")


def knn_vs_bytes(ok: pd.DataFrame, colour: dict):
    """Neighbour recall@10 (overlap with the exact float32 top 10) against bytes per vector."""
    data = ok.dropna(subset=["knn_recall_at_10", "bytes_per_vector"])      # the tasks that search
    if data.empty:
        return None

    def draw(ax, panel, g):
        _frontier(ax, g[pareto_mask(g, ("bytes_per_vector", "knn_recall_at_10"))], "bytes_per_vector",
                  "knn_recall_at_10", None)
        _lines(ax, g, "bytes_per_vector", "knn_recall_at_10", colour)
        _logx(ax)
        ax.set_ylim(0, 102)
        ax.set_xlabel("bytes per vector (log scale)")
        ax.set_ylabel("neighbour recall@10 (% of exact top 10)")
        ax.set_title(f"{panel}: same neighbours as float32?")
    return _per_panel(data, draw, "Neighbour recall@10 against storage")


def qps_vs_recall(ok: pd.DataFrame, colour: dict):
    """Search queries per second against neighbour recall@10 (the ann-benchmarks view)."""
    data = ok.dropna(subset=["knn_recall_at_10", "search_qps"])
    if data.empty:
        return None

    def draw(ax, panel, g):
        _frontier(ax, g[pareto_mask(g, ("knn_recall_at_10", "search_qps"))], "knn_recall_at_10", "search_qps")
        by = "group" if "group" in g else "line"
        for line, pts in g.groupby(by, sort=True):
            ax.scatter(pts["knn_recall_at_10"], pts["search_qps"], s=18, color=colour.get(str(line), "C0"),
                       marker=MARKERS.get(str(line), "o"), alpha=0.8, linewidths=0, label=str(line), zorder=3)
        ax.set_yscale("log")
        _log(ax.yaxis)
        ax.set_xlabel("neighbour recall@10 (%)")
        ax.set_ylabel("queries per second (exact scan of the codes, log scale)")
        ax.set_title(f"{panel}: speed against accuracy")
    return _per_panel(data, draw, "Search throughput against recall (up and to the right is better)")


def speed_by_family(ok: pd.DataFrame, colour: dict):
    """Encode throughput and fit time of every cell, grouped by technique family."""
    data = ok.dropna(subset=["family"])
    data = data[data["encode_vps"].notna() | data["fit_s"].notna()]
    if data.empty:
        return None
    groups = [str(x) for x in data.get("group", data["family"]).fillna("")]
    families = list(dict.fromkeys(f for _, f in sorted(zip(groups, (str(x) for x in data["family"].fillna(""))))))
    fig, axes = plt.subplots(1, 2, figsize=(12.4, 0.45 * len(families) + 1.8), squeeze=False)
    rng = np.random.default_rng(0)
    floor = 1e-5
    for ax, col, label in ((axes[0, 0], "encode_vps", "vectors encoded per second (log scale)"),
                           (axes[0, 1], "fit_s", f"fit seconds (log scale; under {floor:g} s drawn at {floor:g})")):
        for i, fam in enumerate(families):
            v = data.loc[data.family.astype(str) == fam, col].dropna().astype(float)
            if col == "fit_s":
                v = v.clip(lower=floor)
            if v.empty:
                continue
            ax.scatter(v, i + rng.uniform(-0.15, 0.15, len(v)), s=18, color=colour.get(fam, "C0"), zorder=3)
            ax.plot([v.median()] * 2, [i - 0.3, i + 0.3], color="black", linewidth=1.5)
        ax.set_yticks(range(len(families)), families)
        _logx(ax)
        ax.set_xlabel(label)
        ax.grid(axis="x", alpha=0.3)
    axes[0, 0].set_title("Encode throughput (higher is better); bar = median")
    axes[0, 1].set_title("Fit time on the calibration vectors (lower is better)")
    _layout(fig, left_in=1.5)
    fig.subplots_adjust(wspace=0.45)
    return fig


def sts_vs_bytes(ok: pd.DataFrame, colour: dict):
    """STS Spearman (x100) against bytes per vector, float32 drawn as a dashed line."""
    data = ok.dropna(subset=["spearman", "bytes_per_vector"])              # the tasks scored by Spearman
    if data.empty:
        return None

    def draw(ax, panel, g):
        base = float(g["baseline_quality"].iloc[0])
        ax.axhline(base, color="grey", linestyle="--", linewidth=1, label="float32")
        _frontier(ax, g[pareto_mask(g, ("bytes_per_vector", "spearman"))], "bytes_per_vector", "spearman", None)
        _lines(ax, g, "bytes_per_vector", "spearman", colour, err=("ci_low", "ci_high"),
               scale=g["baseline_quality"].astype(float) / 100)
        _logx(ax)
        ax.set_xlabel("bytes per vector (log scale)")
        ax.set_ylabel("Spearman × 100 (95 % CI)")
        ax.set_title(f"{panel}: similarity ranking kept")
    return _per_panel(data, draw, "STS Spearman against storage")


def rescore_table(ok: pd.DataFrame) -> pd.DataFrame:
    """Rows of compressors with ``rescore=N`` (N > 0), their ``base`` (the spec without the
    multiplier: one line per base) and ``plain`` (without any rescoring option: the same code with
    no rescoring copy)."""
    spec = ok["compressor"].astype(str)
    mult = spec.str.extract(RESCORE)[0].astype(float)
    base = spec.str.replace(RESCORE, "", regex=True)
    out = ok.assign(multiplier=mult, base=base, plain=base.str.replace(RESCORE_WITH, "", regex=True))
    return out[out.multiplier > 0]


def rescoring(ok: pd.DataFrame, colour: dict):
    """Quality retained against the rescoring multiplier (top k × m candidates re-ranked)."""
    data = rescore_table(ok).dropna(subset=["retained_pct"])
    if data.empty:
        return None
    panels = list(dict.fromkeys(data["panel"]))
    bases = sorted(data["base"].unique())
    base_colour = colours(bases)
    plain_style = dict(zip(sorted(data["plain"].unique()), ["--", "-.", (0, (1, 1)), (0, (5, 1))] * 8))
    fig, axes = _grid(len(panels))
    for ax, panel in zip(axes, panels):
        g = data[data.panel == panel]
        for base, pts in g.groupby("base", sort=True):
            pts = pts.sort_values("multiplier")
            yerr = np.vstack([(pts.retained_pct - pts.ci_low).clip(lower=0), (pts.ci_high - pts.retained_pct).clip(lower=0)]) \
                if pts[["ci_low", "ci_high"]].notna().all().all() else None
            ax.errorbar(pts.multiplier, pts.retained_pct, yerr=yerr, marker="o", markersize=4, capsize=2,
                        color=base_colour[base], label=f"{base} + rescoring")
        for name in sorted(g["plain"].unique()):
            plain = ok[(ok.panel == panel) & (ok.compressor == name)]
            if len(plain):
                ax.axhline(float(plain.retained_pct.iloc[0]), color="black", linestyle=plain_style[name],
                           linewidth=1, label=f"{name}, no rescoring")
        ax.axhline(100, color="grey", linestyle=":", linewidth=1)
        ax.set_xscale("log", base=2)
        ticks = sorted(g["multiplier"].unique())
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("rescoring multiplier (candidates = k × multiplier, log scale)")
        ax.set_ylabel("% of float32 quality (95 % CI)")
        ax.set_title(f"{panel}: what rescoring buys")
    fig.suptitle("Rescoring: quality against the candidate multiplier", fontsize=11)
    _legend(fig, axes)
    return fig


def model_side(variants: pd.DataFrame, size_col: str, speed_col: str | None, frontier: pd.DataFrame,
               reference: str):
    """Model-side compression: quality (% of the reference encoder's float32) against model size
    and encode speed, with the embedding-compression frontier of the reference beside them."""
    panels = [(size_col, f"model size: {size_col.replace('_', ' ')} (log scale)")] + (
        [(speed_col, "encode speed: × float32, timed side by side (log scale)" if speed_col == "model_speedup"
          else "encode throughput, texts/s (log scale)")] if speed_col else [])
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(5.0 * (len(panels) + 1), 4.4), squeeze=False)
    axes = list(axes.flat)
    datasets = sorted(variants["dataset"].unique())
    dcol = colours(datasets)
    for ax, (col, label) in zip(axes, panels):
        for ds, pts in variants.groupby("dataset", sort=True):
            pts = pts.dropna(subset=[col, "ref_pct"]).sort_values(col)
            ax.plot(pts[col].astype(float), pts["ref_pct"], marker="o", linestyle="none", color=dcol[ds], label=ds)
            for _, r in pts.iterrows():
                ax.annotate(str(r["model"]).split("@", 1)[-1], (float(r[col]), r["ref_pct"]), textcoords="offset points",
                            xytext=(4, 3), fontsize=7, color="#333")
        ax.axhline(100, color="grey", linestyle=":", linewidth=1)
        _logx(ax)
        if col == "model_speedup":   # a ratio: show at least 0.5-2× so ±3 % of noise does not look like a spread
            lo, hi = ax.get_xlim()
            ax.set_xlim(min(lo, 0.5), max(hi, 2.0))
            ax.axvline(1.0, color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel(label)
        ax.set_ylabel(f"% of {reference} float32 quality")
        ax.set_title(f"Encoder variants: quality against {label.split(':')[0].split(',')[0]}")
    ax = axes[-1]
    for ds, pts in frontier.groupby("dataset", sort=True):
        pts = pts.sort_values("bytes_per_vector")
        ax.plot(pts.bytes_per_vector, pts.retained_pct, marker="s", color=dcol.get(ds, "C0"), label=ds)
    ax.axhline(100, color="grey", linestyle=":", linewidth=1)
    _logx(ax)
    ax.set_xlabel("bytes per vector (log scale)")
    ax.set_ylabel(f"% of {reference} float32 quality")
    ax.set_title(f"Embedding compression frontier ({reference})")
    fig.suptitle("Model-side compression beside embedding compression", fontsize=11)
    _legend(fig, axes)
    return fig
