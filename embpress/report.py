"""The HTML report of a run: ``embpress report RUN`` → ``reports/<run-id>/index.html``.

One self-contained page (figures inlined as PNG, styles and a few lines of sorting script inline,
nothing fetched from a network) that answers "which compression should I deploy?":

* provenance (run, commit, machine, versions, models and datasets with revisions, the grid);
* recommendations: for each budget in bytes per vector, the compressor that keeps the most quality
  on each dataset and a one-line verdict, and the Pareto-optimal compressors (bytes against
  retained %, directions from the metric registry) per dataset and overall;
* figures (:mod:`embpress.plots`), also written as PNG and SVG under ``figures/``;
* one sortable table per dataset with every cell (infeasible and failed ones with their reason)
  and the paired-bootstrap 95 % interval of every retained % (:mod:`embpress.stats`), also written
  as CSV and Markdown under ``tables/``;
* per-query loss: how many queries lose relevant documents from their top 10 against float32, and
  the worst examples with query texts and document titles;
* model-side compression, when the run has encoder variants: rows with a model size column
  (``model_*`` containing ``size``, ``bytes`` or ``params``) and optionally an encode-speed column
  (``*texts_per_s*``); quality is taken relative to ``reference_model`` when that column exists,
  else to the largest model.

Call :func:`build_report` (``embpress run`` does at the end).
"""
from __future__ import annotations

import base64
import html
import io
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import settings
from .errors import EmbpressError
from .protocol import describe as protocol_text, out_of_sample
from .metrics import MAIN_METRIC, METRICS
from .results import COLUMNS, load_run
from .stats import baseline_path, load_npz, pareto_mask, retained_ci

log = logging.getLogger("embpress")

N_BOOT = 1000
EXAMPLES_PER_CELL = 3
QUALITY_COLS = ["ndcg_at_10", "recall_at_100", "mrr_at_10", "spearman", "knn_recall_at_10", "knn_recall_at_100"]
#: Columns the report derives; never shown as compressor info columns.
DERIVED = {"line", "panel", "ci_low", "ci_high", "vs_f32", "pareto"}


def _label(metric: str) -> str:
    from .plots import METRIC_LABELS
    return METRIC_LABELS.get(metric, metric)


# ---------------------------------------------------------------------------- preparing the table
def resolve_run(run: str | Path) -> Path:
    """A run folder given as a path or as a run id under the results folder."""
    p = Path(run)
    for cand in (p, settings.results_dir() / str(run)):
        if (cand / "run.json").is_file():
            return cand
    raise EmbpressError(f"{run} is not a run folder (no run.json there or under {settings.results_dir()})")


def prepare(df: pd.DataFrame, run_dir: Path, n_boot: int = N_BOOT) -> pd.DataFrame:
    """The result rows plus what the report derives: line, panel, bootstrap interval, frontier."""
    df = df.copy().reset_index(drop=True)
    for col in ("template", "family", "compressor", "model", "dataset", "task", "status", "main_metric"):
        if col not in df:
            df[col] = None
    df["line"] = df["template"].where(df["template"].notna(), df["family"])
    df["line"] = df["line"].where(df["line"].notna(), df["compressor"]).astype(str)
    multi_model = df["model"].nunique() > 1
    df["panel"] = df["dataset"].astype(str) + (" · " + df["model"].astype(str) if multi_model else "")
    missing_main = df["main_metric"].isna() & df["task"].isin(list(MAIN_METRIC))
    df.loc[missing_main, "main_metric"] = df.loc[missing_main, "task"].map(MAIN_METRIC)
    df["ci_low"] = np.nan
    df["ci_high"] = np.nan
    for i, row in df[df.status == "ok"].iterrows():
        ci = retained_ci(run_dir, row, n_boot=n_boot) if pd.notna(row.get("cell_id")) else None
        if ci is not None:
            df.loc[i, ["ci_low", "ci_high"]] = ci
    df["vs_f32"] = ""
    has = df["ci_low"].notna()
    df.loc[has, "vs_f32"] = np.where(df.loc[has, "ci_high"] < 100, "lower",
                                     np.where(df.loc[has, "ci_low"] > 100, "higher", "≈"))
    df["pareto"] = False
    ok = df[(df.status == "ok") & out_of_sample(df)]     # in-sample cells are never on a frontier
    for _, g in ok.groupby("panel", sort=False):
        df.loc[g.index, "pareto"] = pareto_mask(g, ("bytes_per_vector", "retained_pct"))
    return df


def budgets_of(df: pd.DataFrame, meta: dict) -> list[int]:
    """The budgets recommendations are given for: the grid's (run-wide and per family), else every
    size the run stored below float32."""
    configured = set((meta.get("config") or {}).get("budgets") or [])
    configured |= set(pd.to_numeric(df["budget"], errors="coerce").dropna())
    if configured:
        return sorted({int(b) for b in configured})
    ok = df[(df.status == "ok") & (pd.to_numeric(df.compression_ratio, errors="coerce") > 1)]
    return sorted({int(b) for b in ok["bytes_per_vector"].dropna()})


def best_per_budget(df: pd.DataFrame, budgets: list[int]) -> pd.DataFrame:
    """For each budget and panel, the ok cell storing at most that many bytes that keeps the most."""
    ok = df[(df.status == "ok") & df.retained_pct.notna() & df.bytes_per_vector.notna()]
    rows = []
    for b in budgets:
        for panel in dict.fromkeys(df["panel"]):
            cand = ok[(ok.panel == panel) & (ok.bytes_per_vector <= b)]
            if cand.empty:
                rows.append({"budget": b, "panel": panel})
                continue
            best = cand.sort_values(["retained_pct", "bytes_per_vector", "compressor"],
                                    ascending=[False, True, True]).iloc[0]
            rows.append({"budget": b, "panel": panel, **{k: best.get(k) for k in (
                "compressor", "bytes_per_vector", "retained_pct", "ci_low", "ci_high", "vs_f32", "main_metric",
                "dim", "dataset", "model", "protocol", "n_train", "overhead_flag")}})
    return pd.DataFrame(rows)


def overall_frontier(df: pd.DataFrame) -> pd.DataFrame:
    """Per model: compressors ok on every dataset, their mean retained %, and which are Pareto-optimal."""
    out = []
    ok = df[df.status == "ok"]
    for model, g in ok.groupby("model", sort=False):
        n_ds = df.loc[df.model == model, "dataset"].nunique()
        agg = g.groupby("compressor", sort=False).agg(bytes_per_vector=("bytes_per_vector", "first"),
                                                      retained_pct=("retained_pct", "mean"),
                                                      n=("dataset", "nunique")).reset_index()
        agg = agg[agg.n == n_ds]
        agg["pareto"] = pareto_mask(agg, ("bytes_per_vector", "retained_pct"))
        agg["model"] = model
        out.append(agg)
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame(
        columns=["compressor", "bytes_per_vector", "retained_pct", "n", "pareto", "model"])


def _ratio(dim, budget) -> str:
    try:
        return f"{4 * float(dim) / float(budget):.3g}×"
    except (TypeError, ValueError, ZeroDivisionError):
        return "?×"


def verdicts(best: pd.DataFrame) -> list[tuple[int, str]]:
    """One plain-language line per budget."""
    lines = []
    for b, g in best.groupby("budget", sort=True):
        dims = {int(d) for d in g["dim"].dropna()} if "dim" in g else set()
        head = f"At {b} B/vector" + (f" ({_ratio(next(iter(dims)), b)} smaller than float32)" if len(dims) == 1 else "")
        parts = []
        for _, r in g.iterrows():
            if pd.isna(r.get("compressor")):
                parts.append(f"nothing fits on {r.panel}")
                continue
            used = f" (uses {int(r.bytes_per_vector)} B)" if r.bytes_per_vector < b else ""
            ratio = f" ({_ratio(r.dim, b)} smaller)" if len(dims) > 1 else ""
            same = ", not significantly different from float32" if r.vs_f32 == "≈" else ""
            fitted = (f", {r.protocol} on {int(r.n_train):,} training vectors"
                      if str(r.get("protocol") or "").startswith(("crossfit", "external")) and pd.notna(r.get("n_train"))
                      else "")
            small = f" ({r.overhead_flag})" if isinstance(r.get("overhead_flag"), str) else ""
            parts.append(f"{r.compressor}{used}{ratio} keeps {r.retained_pct:.1f} % of {_label(r.main_metric)} "
                         f"on {r.panel}{same}{fitted}{small}")
        lines.append((int(b), head + ", " + "; ".join(parts) + "."))
    return lines


# ---------------------------------------------------------------------------- per-query loss
@dataclass
class Texts:
    qrels: dict[str, dict[str, int]] | None = None
    queries: dict[str, str] = field(default_factory=dict)
    docs: dict[str, str] = field(default_factory=dict)
    note: str = ""


def dataset_texts(meta: dict, dataset: str) -> Texts:
    """Judgments, query texts and document titles of a run's dataset (what is available)."""
    from .data import document_titles, is_vector_folder, load_dataset, load_vector_folder
    info = (meta.get("datasets") or {}).get(dataset, {})
    source = info.get("source") or dataset
    cfg = meta.get("config") or {}
    try:
        if is_vector_folder(source):
            ds = load_vector_folder(source)
            return Texts(ds.qrels, note="bring-your-own vectors: ids only, no texts")
        ds = load_dataset(source, max_queries=cfg.get("max_queries"), max_docs=cfg.get("max_docs"))
        if ds.task != "retrieval":
            return Texts(note=f"{dataset} is not a retrieval dataset")
        titles = document_titles(source)
        docs = {d: (titles.get(d) or t[:120]) for d, t in zip(ds.corpus_ids, ds.corpus_texts)}
        return Texts(ds.qrels, dict(zip(ds.query_ids, ds.query_texts)), docs)
    except (EmbpressError, OSError, ValueError, KeyError) as exc:
        return Texts(note=f"texts of {dataset} unavailable: {exc}")


def query_losses(run_dir: Path, rows: pd.DataFrame, texts: Texts) -> tuple[pd.DataFrame, dict[str, list[dict]]]:
    """Per ok cell of one (model, dataset): queries whose float32 top 10 holds a relevant document
    the compressor's top 10 lacks (and the reverse), with the worst queries as examples."""
    if texts.qrels is None or rows.empty:
        return pd.DataFrame(), {}
    first = rows.iloc[0]
    base_file = baseline_path(run_dir, first["model"], first["dataset"])
    if not base_file.is_file():
        return pd.DataFrame(), {}
    base = load_npz(base_file)
    qids, cids = [str(q) for q in base["query_ids"]], base["corpus_ids"]
    rel = [{d for d, r in texts.qrels.get(q, {}).items() if r > 0} for q in qids]
    base_top = [set(cids[r[r >= 0]]) for r in base["top10"]]
    base_hit = [t & s for t, s in zip(base_top, rel)]
    base_ndcg = base.get("ndcg_at_10")
    summary, examples = [], {}
    for _, row in rows.iterrows():
        path = run_dir / "per_query" / f"{row['cell_id']}.npz"
        if not path.is_file():
            continue
        pq = load_npz(path)
        lost, gained = [], []
        for i, r in enumerate(pq["top10"]):
            hit = set(cids[r[r >= 0]]) & rel[i]
            lost.append(base_hit[i] - hit)
            gained.append(hit - base_hit[i])
        n_lost = sum(1 for x in lost if x)
        summary.append({"compressor": row["compressor"], "budget": row.get("budget"),
                        "bytes_per_vector": row["bytes_per_vector"], "retained_pct": row["retained_pct"],
                        "queries": len(qids), "queries_losing": n_lost,
                        "queries_losing_pct": 100 * n_lost / max(len(qids), 1),
                        "queries_gaining": sum(1 for x in gained if x),
                        "relevant_lost": sum(len(x) for x in lost), "relevant_gained": sum(len(x) for x in gained),
                        "cell_id": row["cell_id"]})
        ndcg = pq.get("ndcg_at_10")
        drop = (base_ndcg - ndcg) if base_ndcg is not None and ndcg is not None else np.zeros(len(qids))
        worst = sorted((i for i in range(len(qids)) if lost[i]), key=lambda i: (-len(lost[i]), -drop[i], i))
        examples[row["cell_id"]] = [{
            "query_id": qids[i], "query": texts.queries.get(qids[i], ""),
            "ndcg_f32": None if base_ndcg is None else float(base_ndcg[i]),
            "ndcg": None if ndcg is None else float(ndcg[i]),
            "lost": [(d, texts.docs.get(d, "")) for d in sorted(lost[i])],
        } for i in worst[:EXAMPLES_PER_CELL]]
    return pd.DataFrame(summary), examples


# ---------------------------------------------------------------------------- model-side compression
SIZE_COLUMNS = ("model_memory_bytes", "model_disk_bytes", "model_size_bytes", "model_params")
SPEED_COLUMNS = ("model_texts_per_s",)


def model_columns(df: pd.DataFrame) -> tuple[str | None, str | None]:
    """The model-track columns of a results table: (model size, encode speed), None where absent.
    Known names first (``model_memory_bytes`` … ``model_params``; ``model_texts_per_s``), then any
    ``model_*`` column naming a size, bytes or params, and any ``*texts_per_s*`` column."""
    def has(c):
        return c in df and pd.to_numeric(df[c], errors="coerce").notna().any()
    size = next((c for c in SIZE_COLUMNS if has(c)), None) or next(
        (c for c in df.columns if c.startswith("model_") and any(t in c for t in ("size", "bytes", "params")) and has(c)),
        None)
    speed = next((c for c in SPEED_COLUMNS if has(c)), None) or next(
        (c for c in df.columns if "texts_per_s" in c and "base" not in c and has(c)), None)
    return size, speed


def model_variants(df: pd.DataFrame, size_col: str) -> tuple[pd.DataFrame, str]:
    """The float32-embedding (``F32``) rows of every encoder, with ``ref_pct``: quality as % of the
    reference encoder's on the same dataset; the reference is the row's ``reference_model`` when the
    table has that column, else the float32 model most of the variants were built from
    (``model_base``), else the largest model. Returns (rows, the reference names)."""
    ok = df[(df.status == "ok") & (df.compressor == "F32")].copy()
    if ok.empty:
        return ok.assign(ref=None, ref_pct=np.nan), ""
    ok[size_col] = pd.to_numeric(ok[size_col], errors="coerce")
    bases = (ok.drop_duplicates("model")["model_base"].dropna() if "model_base" in ok else pd.Series(dtype=object))
    bases = bases[bases.isin(ok["model"])]
    if "reference_model" in ok and ok["reference_model"].notna().any():
        ok["ref"] = ok["reference_model"].where(ok["reference_model"].notna(), ok["model"])
    elif len(bases):
        # the float32 encoder that most of the run's variants were built from (e.g. all-MiniLM-L6-v2
        # for its bf16/int8 variants); other models in the run (a distilled student, a teacher) are
        # shown against it too
        ok["ref"] = bases.value_counts().idxmax()
    else:
        sizes = ok.groupby("model")[size_col].max()
        ok["ref"] = sizes.idxmax() if sizes.notna().any() else ok["model"].iloc[0]
    ref_quality = ok.set_index(["model", "dataset"])["quality"].to_dict()
    ok["ref_pct"] = [100 * q / ref_quality[(r, d)] if ref_quality.get((r, d)) else np.nan
                     for q, r, d in zip(ok.quality, ok.ref, ok.dataset)]
    reference = ", ".join(sorted(ok["ref"].astype(str).unique()))
    return ok, reference


# ---------------------------------------------------------------------------- formatting
def _num(x: Any, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)) or x is pd.NA:
        return ""
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else ""
    if isinstance(x, (int, np.integer)):
        return f"{int(x):,}"
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    if digits < 0:  # significant digits
        return f"{v:,.{-digits}g}" if abs(v) < 1e6 else f"{v:,.0f}"
    if digits == 0 or abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 0.01 or v == 0:
        return f"{v:.{digits}f}"
    return f"{v:.2g}"


@dataclass
class Column:
    key: str
    header: str
    digits: int = 2
    title: str = ""


def table_columns(g: pd.DataFrame) -> list[Column]:
    main = g["main_metric"].dropna()
    main = main.iloc[0] if len(main) else None
    cols = [Column("compressor", "compressor"), Column("line", "family / template"),
            Column("budget", "budget B", 0, "target bytes per vector of the grid family"),
            Column("bytes_per_vector", "B/vec", 0, METRICS["bytes_per_vector"].description),
            Column("compression_ratio", "× smaller", -3, METRICS["compression_ratio"].description),
            Column("overhead_bytes", "overhead B", 0, METRICS["overhead_bytes"].description)]
    if main:
        cols.append(Column("quality", _label(main), 2, METRICS[main].description))
    cols += [Column("retained_pct", "retained %", 1, METRICS["retained_pct"].description),
             Column("ci", "95 % CI", 1, "paired bootstrap over queries/pairs, 1000 resamples"),
             Column("vs_f32", "vs float32", 0, "≈: the 95 % interval contains 100 % (not significantly different)")]
    cols += [Column(m, _label(m), 2, METRICS[m].description) for m in QUALITY_COLS
             if m != main and m in g and g[m].notna().any()]
    cols += [Column("fit_s", "fit s", 3, METRICS["fit_s"].description),
             Column("encode_vps", "encode vec/s", 0, METRICS["encode_vps"].description),
             Column("search_qps", "search q/s", 0, METRICS["search_qps"].description),
             Column("latency_p50_ms", "p50 ms", 3, METRICS["latency_p50_ms"].description),
             Column("latency_p99_ms", "p99 ms", 3, METRICS["latency_p99_ms"].description),
             Column("search_bytes", "searched B", 0, METRICS["search_bytes"].description),
             Column("search_kernel", "search kernel", 0,
                    "decode+flat: no compressed-domain kernel, the corpus is decoded to float32 and searched")]
    extra = [c for c in g.columns if c not in COLUMNS and c not in DERIVED and not c.endswith("_s")
             and pd.to_numeric(g[c], errors="coerce").notna().any()]   # *_s: raw timings, shown as rates
    cols += [Column(c, c.replace("_", " "), 3) for c in extra]
    cols += [Column("status", "status"), Column("note", "reason / error / warnings")]
    always = {"compressor", "line", "status"}
    present = {"ci": g["ci_low"].notna().any(), "vs_f32": (g["vs_f32"] != "").any(),
               "note": any(c in g and g[c].notna().any() for c in ("error", "warnings"))}
    return [c for c in cols if c.key in always or present.get(c.key, c.key in g and g[c.key].notna().any())]


def _cell(row: pd.Series, col: Column) -> tuple[str, str]:
    """(display text, sort value) of a table cell."""
    if col.key == "ci":
        lo, hi = row.get("ci_low"), row.get("ci_high")
        if pd.isna(lo):
            return "", ""
        return f"{lo:.1f}–{hi:.1f}", f"{lo:.6g}"
    if col.key == "note":
        text = row.get("error") if pd.notna(row.get("error")) else row.get("warnings")
        return ("" if text is None or (isinstance(text, float) and math.isnan(text)) else str(text)), ""
    v = row.get(col.key)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "", ""
    if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)):
        return _num(v, col.digits), f"{float(v):.10g}"
    return str(v), str(v)


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    # names reach Markdown viewers that render inline HTML: escape it, and the column separator
    esc = lambda s: html.escape(str(s), quote=False).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    out = ["| " + " | ".join(esc(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(out) + "\n"


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text).strip("_") or "x"


# ---------------------------------------------------------------------------- the page
CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;color:#1b1f24;background:#fff}
main{max-width:1320px;margin:0 auto;padding:12px 28px 60px}
h1{font-size:24px;margin:18px 0 4px}h2{font-size:19px;margin:34px 0 8px;border-bottom:1px solid #d0d7de;padding-bottom:4px}
h3{font-size:15px;margin:20px 0 6px}nav{font-size:13px;margin:6px 0 14px}nav a{margin-right:12px}
.muted{color:#57606a}.small{font-size:12px}code{background:#f3f4f6;padding:0 3px;border-radius:3px}
table{border-collapse:collapse;font-size:12.5px;margin:6px 0 14px}
th,td{border:1px solid #d8dee4;padding:3px 6px;text-align:right;vertical-align:top}
th{background:#f6f8fa;position:sticky;top:0}td.t,th.t{text-align:left}
table.sortable th{cursor:pointer;user-select:none}table.sortable th:hover{background:#e8eef5}
th[aria-sort=ascending]::after{content:' ▲'}th[aria-sort=descending]::after{content:' ▼'}
tr.infeasible td{background:#fff8e1}tr.failed td{background:#ffebe9}tr.pareto td:first-child{font-weight:600}
.scroll{overflow-x:auto}figure{margin:14px 0 24px}figure img{max-width:100%;height:auto;border:1px solid #eaeef2}
figcaption{font-size:12.5px;color:#57606a}ul.verdicts li{margin:4px 0}.note{background:#f6f8fa;padding:6px 10px;border-left:3px solid #8c959f}
dl.prov{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;margin:8px 0}dl.prov dt{font-weight:600}dl.prov dd{margin:0}
details{margin:2px 0}summary{cursor:pointer}.sig{color:#1a7f37;font-weight:600}
td.why{text-align:left;min-width:240px;max-width:480px;font-size:11.5px}td.nw{white-space:nowrap}
ul.files{columns:3;font-size:12px}ul.pareto,ul.pareto-overall{margin-top:0}
"""

SORT_JS = """
document.querySelectorAll('table.sortable').forEach(function (table) {
  table.querySelectorAll('thead th').forEach(function (th, col) {
    th.addEventListener('click', function () {
      var asc = th.getAttribute('aria-sort') !== 'ascending';
      table.querySelectorAll('thead th').forEach(function (h) { h.removeAttribute('aria-sort'); });
      th.setAttribute('aria-sort', asc ? 'ascending' : 'descending');
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      var key = function (r) { var c = r.cells[col]; return c ? (c.getAttribute('data-v') || '') : ''; };
      var numeric = rows.every(function (r) { var v = key(r); return v === '' || !isNaN(Number(v)); });
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (x === '' || y === '') { return (x === '') - (y === ''); }
        var d = numeric ? Number(x) - Number(y) : x.localeCompare(y);
        return asc ? d : -d;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""

e = html.escape


def _td_class(kind) -> str:
    cls = "t" if kind is True else (kind or "")
    return f' class="{cls}"' if cls else ""


class Page:
    def __init__(self, out: Path):
        self.out = out
        self.parts: list[str] = []
        self.toc: list[tuple[str, str]] = []
        self.files: list[str] = []

    def add(self, text: str) -> None:
        self.parts.append(text)

    def section(self, anchor: str, title: str) -> None:
        self.toc.append((anchor, title))
        self.add(f'<h2 id="{anchor}">{e(title)}</h2>')

    def figure(self, name: str, fig, caption: str) -> None:
        import matplotlib.pyplot as plt
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        png = buf.getvalue()
        (self.out / "figures" / f"{name}.png").write_bytes(png)
        fig.savefig(self.out / "figures" / f"{name}.svg", format="svg")
        plt.close(fig)
        self.files += [f"figures/{name}.png", f"figures/{name}.svg"]
        self.add(f'<figure id="fig-{name}"><img alt="{e(caption)}" src="data:image/png;base64,'
                 f'{base64.b64encode(png).decode()}"><figcaption>{e(caption)} '
                 f'(<a href="figures/{name}.png">PNG</a>, <a href="figures/{name}.svg">SVG</a>)</figcaption></figure>')

    def table(self, name: str, headers: list[tuple[str, str]], rows: list[tuple[str, list[tuple[str, str, bool]]]],
              csv_frame: pd.DataFrame | None = None, sortable: bool = True, attrs: str = "") -> None:
        """headers: (text, title); rows: (row class, [(text, sort value, kind)]), kind True for text
        (left-aligned), False for numbers, or a CSS class."""
        cls = ' class="sortable"' if sortable else ""
        head = "".join(f'<th class="t" title="{e(t)}">{e(h)}</th>' if i == 0 else f'<th title="{e(t)}">{e(h)}</th>'
                       for i, (h, t) in enumerate(headers))
        body = []
        for row_cls, cells in rows:
            tds = "".join(f'<td{_td_class(kind)} data-v="{e(v)}">{e(text)}</td>' for text, v, kind in cells)
            body.append(f'<tr class="{row_cls}">{tds}</tr>')
        self.add(f'<div class="scroll"><table id="table-{name}"{cls}{attrs}><thead><tr>{head}</tr></thead>'
                 f'<tbody>{"".join(body)}</tbody></table></div>')
        md = markdown_table([h for h, _ in headers], [[t for t, _, _ in cells] for _, cells in rows])
        (self.out / "tables" / f"{name}.md").write_text(md)
        self.files.append(f"tables/{name}.md")
        if csv_frame is not None:
            csv_frame.to_csv(self.out / "tables" / f"{name}.csv", index=False)
            self.files.append(f"tables/{name}.csv")

    def note(self, text: str) -> None:
        self.add(f'<p class="note">{e(text)}</p>')

    def render(self, title: str, header: str) -> str:
        toc = "".join(f'<a href="#{a}">{e(t)}</a>' for a, t in self.toc)
        return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
                f'<meta name="viewport" content="width=device-width, initial-scale=1">'
                f'<link rel="icon" href="data:,"><title>{e(title)}</title><style>{CSS}</style></head>'
                f'<body><main>{header}<nav>{toc}</nav>{"".join(self.parts)}</main>'
                f'<script>{SORT_JS}</script></body></html>\n')


def _provenance(meta: dict, df: pd.DataFrame) -> str:
    git = meta.get("git") or {}
    mach = meta.get("machine") or {}
    cfg = meta.get("config") or {}
    commit = (git.get("commit") or "?")[:12] + (" (uncommitted changes)" if git.get("dirty") else "")
    items = [
        ("run", f"{meta.get('run_id', '?')} · {meta.get('status', '?')}"),
        ("date", f"{meta.get('started', '?')} → {meta.get('finished', '—')}"
                 + (f" ({meta['wall_s']:.0f} s)" if isinstance(meta.get("wall_s"), (int, float)) else "")),
        ("git", f"{commit} on {git.get('branch') or '?'}"),
        ("machine", f"{mach.get('hostname', '?')}: {mach.get('cpu', '?')}, {mach.get('cpu_count', '?')} cores, "
                    f"{mach.get('memory_gib', '?')} GiB, {mach.get('platform', '?')}"),
        ("versions", ", ".join(f"{k} {v}" for k, v in (meta.get("versions") or {}).items())),
        ("grid", f"{cfg.get('grid') or '(command-line options)'}: {cfg.get('description') or ''}"),
        ("settings", f"k={cfg.get('k')}, max_queries={cfg.get('max_queries')}, max_docs={cfg.get('max_docs')}, "
                     f"calibration={cfg.get('calibration')}, budgets={cfg.get('budgets') or '—'}, "
                     f"families={cfg.get('families') or '—'}, axes={cfg.get('axes') or '—'}"),
        ("execution", ", ".join(f"{k}={v}" for k, v in (meta.get("execution") or {}).items())),
    ]
    for name, m in (meta.get("models") or {}).items():
        items.append((f"model {name}", f"{m.get('hf_id', '')} revision {m.get('revision', '?')}, "
                                       f"max_seq_length {m.get('max_seq_length')}, normalize {m.get('normalize')}"))
    for name, d in (meta.get("datasets") or {}).items():
        counts = ", ".join(f"{v:,} {k}" for k, v in (d.get("counts") or {}).items())
        sample = f", sample {d['sample']}" if d.get("sample") else ""
        items.append((f"dataset {name}", f"{d.get('task')}, split {d.get('split')}, revision {d.get('revision')}: "
                                         f"{counts}{sample} ({d.get('location')})"))
    cells = ", ".join(f"{n} {s}" for s, n in df["status"].value_counts().items()) if len(df) else "none"
    items.append(("cells", cells))
    return '<dl class="prov">' + "".join(f"<dt>{e(k)}</dt><dd>{e(str(v))}</dd>" for k, v in items) + "</dl>"


def _scale_link(page: Path | None, out: Path) -> str:
    """A pointer to the newest ``embpress scale`` run's report: speed at deployment sizes."""
    if page is None:
        return ("<p class='muted'>Speed here is measured on the grid's small corpora. <code>embpress scale</code> "
                "measures it from 10k to 1M vectors.</p>")
    import os
    rel = os.path.relpath(page, out)
    return (f"<p class='scale-link'>Speed at deployment size (10k to 1M vectors): "
            f"<a href=\"{e(rel)}\">the latest <code>embpress scale</code> run</a>.</p>")


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
    from . import plots
    run_dir = resolve_run(run_dir)
    t0 = time.perf_counter()
    try:
        df, meta = load_run(run_dir)
    except (OSError, ValueError) as exc:
        raise EmbpressError(f"{run_dir}: cannot read the run ({exc})") from None
    out = Path(out_dir) if out_dir else settings.reports_dir() / meta.get("run_id", run_dir.name)
    out.mkdir(parents=True, exist_ok=True)
    _clear(out)
    from .scale_report import build_scale_report, is_scale_run, latest_scale_report
    if is_scale_run(meta):
        return build_scale_report(run_dir, df, meta, out)
    df = prepare(df, run_dir, n_boot)
    everything_ok = df[df.status == "ok"]
    ok = everything_ok[out_of_sample(everything_ok)]     # what the answers come from
    colour = plots.colours(list(df["line"]) + list(df["family"].dropna().astype(str)))
    page = Page(out)

    # -- recommendations
    page.section("recommendations", "Recommendations")
    page.add(f'<p class="protocol">{e(protocol_text(df))}</p>')
    if meta.get("partial"):
        log.warning(f"warning: {run_dir} is a partial run ({meta['partial']})")
        page.note(f"Partial run: {meta['partial']}. The figures show only the cells finished so far.")
    budgets = budgets_of(df, meta)
    best = best_per_budget(df[out_of_sample(df)], budgets) if budgets else pd.DataFrame()
    if ok.empty:
        page.note("No cell of this run finished: nothing to recommend.")
    elif best.empty:
        page.note("No cell stores less than float32: no budget to recommend for.")
    else:
        page.add('<p class="muted">For each budget: the compressor storing at most that many bytes per vector that '
                 'keeps the most of the main quality metric (as % of float32 on the same dataset and model; '
                 'nDCG@10 for retrieval, Spearman for STS, neighbour recall@10 for vectors without judgments), '
                 'among out-of-sample cells only (oblivious, cross-fitted or external).</p>')
        page.add('<ul class="verdicts">' + "".join(f'<li data-budget="{b}">{e(v)}</li>' for b, v in verdicts(best))
                 + "</ul>")
        panels = list(dict.fromkeys(df["panel"]))
        rows = []
        for b, g in best.groupby("budget", sort=True):
            cells = [(f"{b} B", str(b), True)]
            for p in panels:
                r = g[g.panel == p].iloc[0]
                if pd.isna(r.get("compressor")):
                    cells.append(("—", "", True))
                    continue
                ci = f" [{r.ci_low:.1f}–{r.ci_high:.1f}]" if pd.notna(r.get("ci_low")) else ""
                cells.append((f"{r.compressor}: {r.retained_pct:.1f} %{ci}{' ≈' if r.vs_f32 == '≈' else ''}",
                              f"{r.retained_pct:.6g}", True))
            rows.append(("", cells))
        page.add("<h3>Best compressor per budget</h3>")
        page.table("best_per_budget", [("budget", "at most this many bytes per vector")]
                   + [(p, "best compressor: retained % [95 % CI]; ≈ not significantly different from float32")
                      for p in panels], rows, csv_frame=best)
    # the frontier: per panel and overall
    page.add("<h3>Pareto-optimal compressors</h3><p class='muted'>No other compressor of the run stores fewer bytes "
             "per vector and keeps at least as much (directions from the metric registry). Per dataset:</p>")
    for panel, g in ok.groupby("panel", sort=False):
        front = g[g.pareto].sort_values("bytes_per_vector")
        items = "".join(f'<li data-compressor="{e(str(r.compressor))}">{e(str(r.compressor))}: '
                        f'{_num(r.bytes_per_vector, 0)} B, {r.retained_pct:.1f} %</li>' for _, r in front.iterrows())
        page.add(f'<p><b>{e(panel)}</b></p><ul class="pareto" data-panel="{e(panel)}">{items}</ul>')
    overall = overall_frontier(df[out_of_sample(df)])
    for model, g in overall.groupby("model", sort=False):
        front = g[g.pareto].sort_values("bytes_per_vector")
        n_ds = df.loc[df.model == model, "dataset"].nunique()
        items = "".join(f'<li data-compressor="{e(str(r.compressor))}">{e(str(r.compressor))}: '
                        f'{_num(r.bytes_per_vector, 0)} B, mean {r.retained_pct:.1f} %</li>' for _, r in front.iterrows())
        page.add(f"<p><b>Overall, {e(str(model))}</b> (mean retained % over its {n_ds} dataset(s); compressors "
                 f'that ran on all of them)</p><ul class="pareto-overall" data-model="{e(str(model))}">{items}</ul>')
    overall.to_csv(out / "tables" / "pareto_overall.csv", index=False)
    df.loc[df.pareto, ["panel", "compressor", "bytes_per_vector", "retained_pct", "ci_low", "ci_high"]].to_csv(
        out / "tables" / "pareto.csv", index=False)
    page.files += ["tables/pareto.csv", "tables/pareto_overall.csv"]

    # -- figures
    page.section("figures", "Figures")
    figures = [
        ("quality_vs_bytes", plots.quality_vs_bytes, "Quality retained (% of float32, 95 % bootstrap interval) "
         "against bytes per vector, one line per family; the grey band joins the Pareto-optimal cells."),
        ("knn_recall_vs_bytes", plots.knn_vs_bytes, "Neighbour recall@10: the share of the exact float32 top 10 "
         "that the compressed search returns, against bytes per vector."),
        ("qps_vs_recall", plots.qps_vs_recall, "Search queries per second (exact scan of the codes) against "
         "neighbour recall@10, the ann-benchmarks view; the grey band is the speed/recall frontier."),
        ("speed_by_family", plots.speed_by_family, "Encode throughput and fit time of every cell, by technique "
         "family (dots: cells, bars: medians)."),
        ("sts_vs_bytes", plots.sts_vs_bytes, "STS Spearman (×100) against bytes per vector; dashed: float32."),
        ("rescoring", plots.rescoring, "Rescoring: quality retained against the candidate multiplier; dashed: "
         "the same code without rescoring."),
    ]
    skipped = {"knn_recall_vs_bytes": "no retrieval or neighbour cells", "qps_vs_recall": "no retrieval or neighbour cells",
               "sts_vs_bytes": "no STS cells", "rescoring": "no compressor with rescore= in its spec",
               "quality_vs_bytes": "no finished cells", "speed_by_family": "no finished cells"}
    insample = plots.in_sample_vs_crossfit(everything_ok, colour)
    if insample is not None:
        page.figure("in_sample_vs_crossfit", insample, "What in-sample fitting hides: the same trained compressors "
                    "fitted on the very vectors they score (dashed) and cross-fitted (solid, every vector scored by a "
                    "fit that never saw it), retained % against bytes per vector. The gap is memorisation of a "
                    "small corpus; the other figures and the recommendations use out-of-sample cells only.")
    for name, fn, caption in figures:
        fig = fn(ok, colour) if len(ok) else None
        if fig is None:
            page.note(f"{caption.split(':')[0].split(' (')[0]}: figure skipped ({skipped[name]} in this run).")
        else:
            page.figure(name, fig, caption)

    # -- tables
    page.section("tables", "Tables")
    page.add(f'<p class="muted">Click a column header to sort. Retained % comes with its 95 % paired bootstrap '
             f'interval ({n_boot} resamples of the queries or pairs, the float32 baseline resampled alongside); '
             f'<span class="sig">≈</span> marks cells not significantly different from float32; bold compressor: on '
             f'the Pareto frontier. Infeasible cells (amber) and failed cells (red) keep their reason.</p>')
    all_rows = []
    for panel, g in df.groupby("panel", sort=False):
        cols = table_columns(g)
        rows = []
        for _, r in g.iterrows():
            cls = " ".join(x for x in (str(r.status), "pareto" if r.pareto else "") if x)
            kinds = {"compressor": True, "line": True, "status": True, "vs_f32": True, "note": "why", "ci": "nw"}
            rows.append((cls, [(*_cell(r, c), kinds.get(c.key, False)) for c in cols]))
        page.add(f'<h3 id="t-{_slug(panel)}">{e(panel)} <span class="muted small">({len(g)} cells, '
                 f'{(g.status == "ok").sum()} ok)</span></h3>')
        raw = g[[c for c in COLUMNS if c in g] + ["ci_low", "ci_high", "vs_f32", "pareto"]
                + [c.key for c in cols if c.key in g and c.key not in COLUMNS and c.key not in DERIVED]]
        page.table(f"cells_{_slug(panel)}", [(c.header, c.title) for c in cols], rows, csv_frame=raw,
                   attrs=f' data-panel="{e(panel)}"')
        all_rows.append(raw)
    if all_rows:
        pd.concat(all_rows, ignore_index=True).to_csv(out / "tables" / "all_cells.csv", index=False)
        page.files.append("tables/all_cells.csv")

    # -- per-query loss
    page.section("loss", "Per-query loss")
    retrieval = ok[ok.task == "retrieval"]
    if retrieval.empty:
        page.note("No retrieval cells with relevance judgments in this run: per-query loss needs qrels.")
    for panel, g in retrieval.groupby("panel", sort=False):
        texts = dataset_texts(meta, str(g.dataset.iloc[0]))
        summary, examples = query_losses(run_dir, g, texts)
        page.add(f"<h3>{e(panel)}</h3>")
        if texts.note:
            page.add(f'<p class="muted small">{e(texts.note)}</p>')
        if summary.empty:
            page.note("Judgments or per-query files unavailable: no per-query loss.")
            continue
        page.add('<p class="muted">Queries whose float32 top 10 holds a relevant document that the compressed search '
                 'drops from its top 10 (and, for balance, queries where it brings one in).</p>')
        headers = [("compressor", ""), ("B/vec", ""), ("retained %", ""), ("queries losing", "queries losing ≥1 relevant "
                   "document from the top 10"), ("% of queries", ""), ("queries gaining", ""),
                   ("relevant docs lost", ""), ("relevant docs gained", "")]
        rows = [("", [(str(r.compressor), str(r.compressor), True), (_num(r.bytes_per_vector, 0), f"{r.bytes_per_vector}", False),
                      (_num(r.retained_pct, 1), f"{r.retained_pct}", False), (str(r.queries_losing), str(r.queries_losing), False),
                      (_num(r.queries_losing_pct, 1), f"{r.queries_losing_pct}", False),
                      (str(r.queries_gaining), str(r.queries_gaining), False),
                      (str(r.relevant_lost), str(r.relevant_lost), False), (str(r.relevant_gained), str(r.relevant_gained), False)])
                for r in summary.itertuples()]
        page.table(f"loss_{_slug(panel)}", headers, rows, csv_frame=summary)
        blocks = []
        for r in summary.sort_values(["queries_losing", "relevant_lost"], ascending=False, kind="stable").itertuples():
            ex = examples.get(r.cell_id) or []
            if not ex:
                continue
            items = "".join(
                f"<li><b>{e(x['query'] or x['query_id'])}</b> <span class='muted'>(query {e(x['query_id'])}; nDCG@10 "
                f"{_num(x['ndcg_f32'])} → {_num(x['ndcg'])})</span>: lost "
                + "; ".join(f"“{e(t or '(no title)')}” <span class='muted'>[{e(d)}]</span>" for d, t in x["lost"])
                + "</li>" for x in ex)
            blocks.append(f"<details{'' if blocks else ' open'}><summary>{e(str(r.compressor))}: worst {len(ex)} of "
                          f"{r.queries_losing} "
                          f"queries</summary><ul>{items}</ul></details>")
        if blocks:
            page.add("<p>Worst examples (most relevant documents lost, then largest nDCG@10 drop):</p>" + "".join(blocks))

    # -- model-side compression
    size_col, speed_col = model_columns(df)
    if size_col:
        variants, reference = model_variants(df, size_col)
        if not variants.empty and variants["ref_pct"].notna().any():
            page.section("model-side", "Model-side compression")
            frontier = df[(df.status == "ok") & df.pareto & df.model.isin(variants["ref"].unique())]
            fig = plots.model_side(variants, size_col, speed_col, frontier, reference)
            page.figure("model_side", fig, f"Encoder variants: quality as % of {reference}'s float32 quality against "
                        f"model size{' and encode speed' if speed_col else ''}; right: the embedding-compression "
                        f"frontier of {reference}.")
            info = [c for c in variants.columns if c.startswith("model_")
                    and pd.to_numeric(variants[c], errors="coerce").notna().any()]
            vt = variants.groupby("model", sort=False)[info].first().join(
                variants.pivot_table(index="model", columns="dataset", values="ref_pct", sort=False)
                .add_prefix(f"% of {reference} on ")).reset_index()
            headers = [(str(c).replace("_", " "), "") for c in vt.columns]
            rows = [("", [(_num(v, 1) if isinstance(v, (float, np.floating)) else str(v),
                           str(v), i == 0) for i, v in enumerate(rec)]) for rec in vt.itertuples(index=False)]
            page.table("model_side", headers, rows, csv_frame=vt)

    # -- files
    page.section("files", "Files")
    page.add("<p class='muted'>The figures and tables of this page, for papers and READMEs:</p><ul class='files'>"
             + "".join(f'<li><a href="{e(f)}">{e(f)}</a></li>' for f in page.files) + "</ul>")
    from .embed import library_versions
    version = library_versions().get("embpress", "?")
    header = (f"<h1>embpress report · {e(str(meta.get('run_id', run_dir.name)))}</h1>"
              f"<p class='muted'>How much retrieval and similarity quality each compressor keeps, at what storage "
              f"and speed. Built {time.strftime('%Y-%m-%d %H:%M:%S')} by embpress {version} from "
              f"<code>{e(str(run_dir))}</code>.</p>" + _scale_link(latest_scale_report(), out) + _provenance(meta, df))
    index = out / "index.html"
    tmp = out / "index.html.part"
    tmp.write_text(page.render(f"embpress report {meta.get('run_id', '')}", header), encoding="utf-8")
    tmp.replace(index)
    log.info("report: %s (%.1f s)", index, time.perf_counter() - t0)
    return index
