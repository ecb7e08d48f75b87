"""What the report derives from a run's result rows: family groups and their fixed styles, bootstrap
intervals, Pareto frontiers, and the per-budget winners (quality, speed, fit time)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .. import settings
from ..errors import EmbpressError
from ..protocol import out_of_sample
from ..stats import N_BOOT, SEED, pareto_mask, retained_cis
from ..tasks import main_metrics

#: A winner keeping less than this (retained % of float32) is below the report's quality line.
QUALITY_LINE = 90.0
#: "Fastest within this many points of retained % of the best".
WITHIN_POINTS = 1.0


# ---------------------------------------------------------------------------- family groups and styles
@dataclass(frozen=True)
class Group:
    name: str
    colour: str           # one colour and one marker per group, in every figure and table
    marker: str           # Vega-Lite shape name
    mpl_marker: str       # the same shape in matplotlib
    blurb: str


GROUPS = [
    Group("float", "#4c4c4c", "square", "s", "float32 and its 16-bit casts (F32, F16, BF16)"),
    Group("scalar", "#1f77b4", "circle", "o", "scalar quantization of every dimension (SQ8/4/2, optionally rotated; TurboQuant and EDEN)"),
    Group("fewer dims + scalar", "#17becf", "triangle-up", "^",
          "fewer dimensions (PCA, random projection, hashing, Matryoshka, variance pruning, top-k), then scalar"),
    Group("binary", "#d62728", "diamond", "D", "one bit per (rotated, projected or learned) dimension: BIN, LSH, ITQ, RaBitQ"),
    Group("fewer dims + binary", "#ff7f0e", "triangle-down", "v", "fewer dimensions (PCA, Matryoshka), then one bit each"),
    Group("product quantization", "#2ca02c", "cross", "P", "PQ, OPQ-rotated PQ and PCA + PQ: one codebook per sub-vector"),
    Group("additive quantization", "#9467bd", "triangle-right", ">", "RQ and LSQ: several full-vector codebooks summed"),
    Group("hybrid", "#8c564b", "triangle-left", "<", "high precision on high-variance dimensions, low on the rest (HYB)"),
    Group("other", "#e377c2", "stroke", "x", "anything else"),
]
GROUP = {g.name: g for g in GROUPS}
_REDUCE = ("pca", "projection", "hashing", "matryoshka", "varprune", "sparse", "pruning")


def group_of(family) -> str:
    """The group a technique family is shown under (at most nine series per figure)."""
    f = str(family or "").lower()
    parts = f.split("+")
    last = parts[-1]
    if f in ("float32", "float16", "bfloat16"):
        return "float"
    if "pq" in parts:
        return "product quantization"
    if last in ("rq", "lsq"):
        return "additive quantization"
    if last == "hybrid":
        return "hybrid"
    if last in ("binary", "itq", "lsh", "rabitq"):
        return "fewer dims + binary" if any(p in _REDUCE for p in parts[:-1]) else "binary"
    if last in ("turboquant", "eden"):       # a rotation, then a fixed per-coordinate quantizer
        return "scalar"
    if last == "scalar":
        return "fewer dims + scalar" if any(p in _REDUCE for p in parts[:-1]) else "scalar"
    if last in _REDUCE:
        return "fewer dims + scalar"
    return "other"


# ---------------------------------------------------------------------------- preparing the table
def resolve_run(run: str | Path) -> Path:
    """A run folder given as a path or as a run id under the results folder."""
    p = Path(run)
    for cand in (p, settings.results_dir() / str(run)):
        if (cand / "run.json").is_file():
            return cand
    raise EmbpressError(f"{run} is not a run folder (no run.json there or under {settings.results_dir()})")


def prepare(df: pd.DataFrame, run_dir: Path, n_boot: int = N_BOOT) -> pd.DataFrame:
    """The result rows plus what the report derives: line (template or family), group, panel,
    bootstrap interval, vs_f32, frontier, oos (out-of-sample) and the search speed-up vs float32."""
    df = df.copy().reset_index(drop=True)
    for col in ("template", "family", "compressor", "model", "dataset", "task", "status", "main_metric", "cell_id"):
        if col not in df:
            df[col] = None
    df["line"] = df["template"].where(df["template"].notna(), df["family"])
    df["line"] = df["line"].where(df["line"].notna(), df["compressor"]).astype(str)
    df["group"] = [group_of(f) for f in df["family"]]
    multi_model = df["model"].nunique() > 1
    df["panel"] = df["dataset"].astype(str) + (" · " + df["model"].astype(str) if multi_model else "")
    main = main_metrics()
    missing_main = df["main_metric"].isna() & df["task"].isin(list(main))
    df.loc[missing_main, "main_metric"] = df.loc[missing_main, "task"].map(main)
    intervals(df, run_dir, n_boot)
    df["vs_f32"] = ""
    has = df["ci_low"].notna()
    df.loc[has, "vs_f32"] = np.where(df.loc[has, "ci_high"] < 100, "lower",
                                     np.where(df.loc[has, "ci_low"] > 100, "higher", "≈"))
    df["oos"] = out_of_sample(df).to_numpy()
    df["pareto"] = False
    for _, g in df[(df.status == "ok") & df.oos].groupby("panel", sort=False):   # in-sample: never on a frontier
        df.loc[g.index, "pareto"] = pareto_mask(g, ("bytes_per_vector", "retained_pct"))
    df["speedup"] = np.nan
    if "search_qps" in df:
        qps = pd.to_numeric(df["search_qps"], errors="coerce")
        f32 = df[(df.compressor == "F32") & (df.status == "ok") & qps.notna()].groupby("panel")["search_qps"].first()
        df["speedup"] = qps / df["panel"].map(f32).astype(float)
    return df


def intervals(df: pd.DataFrame, run_dir: Path, n_boot: int = N_BOOT) -> None:
    """``ci_low``/``ci_high`` of every ok row: the interval its worker stored as the cell finished
    (with these resamples and seed), else one computed here from the per-query files (runs from
    before the grid stored them, or another ``n_boot``)."""
    for col in ("ci_low", "ci_high", "ci_resamples", "ci_seed"):
        df[col] = pd.to_numeric(df[col], errors="coerce") if col in df else np.nan
    stored = (df.ci_resamples == n_boot) & (df.ci_seed == SEED) & df.ci_low.notna()
    todo = df[(df.status == "ok") & df["cell_id"].notna() & ~stored]
    df.loc[~stored, ["ci_low", "ci_high"]] = np.nan
    if len(todo):
        cis = retained_cis(run_dir, todo, n_boot=n_boot, seed=SEED)
        df.loc[todo.index, ["ci_low", "ci_high"]] = cis[["ci_low", "ci_high"]].to_numpy()
        df.loc[todo.index, ["ci_resamples", "ci_seed"]] = [n_boot, SEED]


def budgets_of(df: pd.DataFrame, meta: dict) -> list[int]:
    """The budgets the winners are given for: the grid's (run-wide and per family), else every
    size the run stored below float32."""
    configured = set((meta.get("config") or {}).get("budgets") or [])
    if "budget" in df:
        configured |= set(pd.to_numeric(df["budget"], errors="coerce").dropna())
    if configured:
        return sorted({int(b) for b in configured})
    ok = df[(df.status == "ok") & (pd.to_numeric(df.get("compression_ratio"), errors="coerce") > 1)]
    return sorted({int(b) for b in ok["bytes_per_vector"].dropna()})


def _best(cand: pd.DataFrame) -> pd.Series:
    return cand.sort_values(["retained_pct", "bytes_per_vector", "compressor"], ascending=[False, True, True]).iloc[0]


def fastest_within(cand: pd.DataFrame, best_retained: float, points: float = WITHIN_POINTS) -> pd.Series | None:
    """The candidate with the most search queries per second among those within ``points`` of
    retained % of the best (ties: more retained, fewer bytes); None without timings."""
    near = cand[(cand.retained_pct >= best_retained - points) & pd.to_numeric(cand.get("search_qps"), errors="coerce").notna()]
    if near.empty:
        return None
    return near.sort_values(["search_qps", "retained_pct", "bytes_per_vector", "compressor"],
                            ascending=[False, False, True, True]).iloc[0]


def best_per_budget(df: pd.DataFrame, budgets: list[int]) -> pd.DataFrame:
    """For each budget and panel, among the out-of-sample ok cells storing at most that many bytes:
    the one that keeps the most (``compressor`` …) and the fastest within one point of it
    (``fast_compressor`` …)."""
    ok = df[(df.status == "ok") & df.retained_pct.notna() & df.bytes_per_vector.notna() & out_of_sample(df)]
    keep = ("compressor", "group", "bytes_per_vector", "retained_pct", "ci_low", "ci_high", "vs_f32", "main_metric",
            "speedup", "search_qps", "latency_p50_ms", "latency_p99_ms", "search_kernel", "fit_s", "encode_vps",
            "n_vectors", "n_queries", "dim", "dataset", "model", "protocol", "n_train", "overhead_flag")
    rows = []
    for panel in dict.fromkeys(df["panel"]):
        for b in budgets:
            cand = ok[(ok.panel == panel) & (ok.bytes_per_vector <= b)]
            row = {"budget": b, "panel": panel}
            if len(cand):
                best = _best(cand)
                row.update({k: best.get(k) for k in keep})
                fast = fastest_within(cand, best.retained_pct)
                if fast is not None:
                    row.update({f"fast_{k}": fast.get(k) for k in ("compressor", "group", "bytes_per_vector",
                                                                    "retained_pct", "speedup", "search_qps",
                                                                    "latency_p50_ms")})
            rows.append(row)
    return pd.DataFrame(rows)


def task_means(df: pd.DataFrame) -> pd.DataFrame:
    """Per (model, task) with two datasets or more: every out-of-sample compressor that ran on all of
    them, with its mean retained % and the per-dataset spread (``retained_min``, ``retained_max``),
    the geometric mean of its search speed-ups, its mean fit seconds and the datasets' names."""
    ok = df[(df.status == "ok") & df.retained_pct.notna() & df.bytes_per_vector.notna() & out_of_sample(df)]
    out = []
    for (model, task), g in ok.groupby(["model", "task"], sort=False):
        names = list(dict.fromkeys(g["dataset"]))
        if len(names) < 2:
            continue
        su = pd.to_numeric(g.get("speedup", np.nan), errors="coerce")
        g = g.assign(log_su=np.log(su.where(su > 0)), protocol=g.get("protocol", ""), fit_s=g.get("fit_s", np.nan))
        agg = g.groupby(["compressor", "protocol"], sort=False, dropna=False).agg(
            group=("group", "first"), bytes_per_vector=("bytes_per_vector", "max"),
            retained_pct=("retained_pct", "mean"), retained_min=("retained_pct", "min"),
            retained_max=("retained_pct", "max"), log_su=("log_su", "mean"), timed=("log_su", "count"),
            fit_s=("fit_s", "mean"), n=("dataset", "nunique")).reset_index()
        agg = agg[agg.n == len(names)]
        agg["speedup"] = np.exp(agg["log_su"]).where(agg["timed"] == len(names))
        out.append(agg.drop(columns=["log_su", "timed", "n"]).assign(model=model, task=task, datasets=", ".join(names)))
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


def task_best(means: pd.DataFrame, budgets: list[int]) -> pd.DataFrame:
    """For each (model, task) of :func:`task_means` and each budget: the compressor with the highest
    mean retained % within the budget and the one with the highest mean speed-up within one point of
    it (``fast_*``), as :func:`best_per_budget` does for one dataset."""
    rows = []
    for (model, task), g in means.groupby(["model", "task"], sort=False) if len(means) else []:
        for b in budgets:
            cand = g[g.bytes_per_vector <= b]
            row = {"budget": b, "model": model, "task": task, "datasets": g["datasets"].iloc[0]}
            if len(cand):
                best = _best(cand)
                row.update({k: best.get(k) for k in ("compressor", "group", "bytes_per_vector", "retained_pct",
                                                     "retained_min", "retained_max", "speedup", "fit_s")})
                near = cand[(cand.retained_pct >= best.retained_pct - WITHIN_POINTS) & cand.speedup.notna()]
                if len(near):
                    fast = near.sort_values(["speedup", "retained_pct", "bytes_per_vector", "compressor"],
                                            ascending=[False, False, True, True]).iloc[0]
                    row.update({f"fast_{k}": fast.get(k) for k in ("compressor", "group", "bytes_per_vector",
                                                                    "retained_pct", "speedup")})
            rows.append(row)
    return pd.DataFrame(rows)


def winner_rows(best: pd.DataFrame) -> pd.DataFrame:
    """The per-budget winners of one panel, largest budget first, consecutive budgets with the same
    winner and the same fastest-within-a-point merged into one row (``budget`` .. ``budget_max``)."""
    best = best.sort_values("budget", ascending=False)
    out: list[dict] = []
    for r in best.to_dict("records"):
        key = (r.get("compressor"), r.get("fast_compressor"))
        if out and (out[-1].get("compressor"), out[-1].get("fast_compressor")) == key:
            out[-1]["budget"] = r["budget"]           # extend down
            continue
        out.append({**r, "budget_max": r["budget"]})
    return pd.DataFrame(out)


def overall_frontier(df: pd.DataFrame) -> pd.DataFrame:
    """Per model: compressors ok on every dataset, their mean retained %, and which are Pareto-optimal."""
    out = []
    ok = df[df.status == "ok"]
    for model, g in ok.groupby("model", sort=False):
        n_ds = df.loc[df.model == model, "dataset"].nunique()
        agg = g.groupby("compressor", sort=False).agg(bytes_per_vector=("bytes_per_vector", "first"),
                                                      retained_pct=("retained_pct", "mean"),
                                                      group=("group", "first"),
                                                      n=("dataset", "nunique")).reset_index()
        agg = agg[agg.n == n_ds]
        agg["pareto"] = pareto_mask(agg, ("bytes_per_vector", "retained_pct"))
        agg["model"] = model
        out.append(agg)
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame(
        columns=["compressor", "bytes_per_vector", "retained_pct", "group", "n", "pareto", "model"])


def speed_basis(df: pd.DataFrame, panel: str) -> str:
    """Where a panel's speed numbers come from, in words ("measured on N vectors ...")."""
    f32 = df[(df.panel == panel) & (df.compressor == "F32") & (df.status == "ok")]
    timed = df[(df.panel == panel) & pd.to_numeric(df.get("search_qps"), errors="coerce").notna()]
    if timed.empty:
        return "No search timings for this dataset (similarity pairs are scored, not searched)."
    n_vec = pd.to_numeric(timed["n_vectors"], errors="coerce").max() if "n_vectors" in timed else np.nan
    n_q = pd.to_numeric(timed["n_queries"], errors="coerce").max() if "n_queries" in timed else np.nan
    text = (f"Speed measured on {n_vec:,.0f} vectors" if pd.notna(n_vec) else "Speed measured on the grid's corpus") + \
        (f" × {n_q:,.0f} queries" if pd.notna(n_q) else "") + " by the grid itself (exact scan of the codes; " \
        "each cell's search kernel is in the results table)"
    text += timing_words(timed)
    if f32.empty or pd.isna(pd.to_numeric(f32.get("search_qps"), errors="coerce")).all():
        text += "; no float32 timing, so no speed-up"
    return text + "."


def timing_words(timed: pd.DataFrame) -> str:
    """How the times were taken: alone by the timing pass, or beside other workers (indicative)."""
    modes = set(timed["timing"].dropna()) if "timing" in timed else set()
    if modes == {"isolated"}:
        threads = pd.to_numeric(timed.get("timing_threads"), errors="coerce").max()
        repeats = pd.to_numeric(timed.get("timing_repeats"), errors="coerce").max()
        batch = pd.to_numeric(timed.get("search_batch"), errors="coerce").max()
        return (f", each cell timed alone after the grid on {threads:.0f} thread(s), medians of {repeats:.0f} rounds"
                + (f" (batch throughput over {batch:.0f} queries)" if pd.notna(batch) else ""))
    if "indicative" in modes or not modes:
        return (", timed once inside the grid's workers beside each other, as they computed the quality "
                "(indicative: run without --no-timing for isolated times)")
    return ", some cells timed alone, others beside other workers"


def calibration_words(cal) -> str:
    """A calibration setting in words."""
    cal = str(cal or "crossfit:2")
    if cal.startswith("crossfit"):
        return f"cross-fitted in {cal.split(':')[1] if ':' in cal else 2} folds"
    if cal.startswith("sample:"):
        return f"cross-fitted on at most {int(cal[7:]):,} vectors of the other fold"
    if cal in ("corpus", "pairs"):
        return "in-sample (fitted on the vectors it scores)"
    return f"external ({cal.replace(':', ' ', 1)})"


def plain_settings(cfg: dict) -> list[tuple[str, str]]:
    """The grid's settings in words (no Python reprs)."""
    def many(v, unit=""):
        return ", ".join(f"{x}{unit}" for x in v) if v else "none"

    def family(f):
        if not isinstance(f, dict):
            return f"{f} at the run's budgets"
        extra = [calibration_words(v) if k == "calibration" else f"{k} {v}" for k, v in f.items()
                 if k not in ("template", "budgets")]
        at = f"at {many(f.get('budgets'), ' B')}" if f.get("budgets") else "at the run's budgets"
        return f"{f.get('template')} {at}" + (f", {', '.join(extra)}" if extra else "")

    items = [("grid", " ".join(x for x in (cfg.get("grid") and f"{cfg['grid']}:", cfg.get("description")) if x)
              or "command-line options"),
             ("datasets", many(cfg.get("datasets"))), ("models", many(cfg.get("models"))),
             ("queries per dataset", "all" if cfg.get("max_queries") is None else f"at most {cfg['max_queries']:,}"),
             ("documents per dataset", "all" if cfg.get("max_docs") is None else f"at most {cfg['max_docs']:,}"),
             ("results per query", str(cfg.get("k", "?"))),
             ("calibration", calibration_words(cfg.get("calibration"))),
             ("budgets", many(cfg.get("budgets"), " B") + " per vector"),
             ("fixed compressors", many(cfg.get("compressors")))]
    items += [("family", family(f)) for f in cfg.get("families") or []]
    axes = cfg.get("axes") if isinstance(cfg.get("axes"), dict) else {}
    items += [(f"axis {k}", many(v) if isinstance(v, (list, tuple)) else str(v)) for k, v in axes.items()]
    return items
