"""``embpress compare RUN_A RUN_B``: what changed between two runs, cell by cell; a CI gate.

A run is named by its folder, by its run id under the results folder, or by a git commit (a hash
prefix or any name git resolves, such as ``HEAD~1``): the latest run recorded for that commit,
finished runs first. Cells are joined on (dataset, model, compressor, budget); for each pair the
comparison shows the main quality metric (nDCG@10, Spearman, ...) and retained %, bytes per vector
and the slowdown of encode, search and fit (time in B / time in A: above 1 is slower).

A cell of B is a **regression** when

* *quality*: its main metric is more than ``quality_tol`` points below A's, or the paired bootstrap
  interval of B / A (queries or pairs resampled together in both runs, :func:`embpress.stats.
  paired_bootstrap`, 95 %) lies entirely below 100 %: a drop that is consistent across queries,
  however small. The interval needs both runs' per-query files and the same queries in both;
* *speed*: encode, search or fit is slower than ``speed_ratio`` times A's **and beyond the
  measured spread of both runs**: B's time, lowered by its spread, is still above A's, raised by
  its spread (``encode_spread``, ``search_spread``: the interquartile range over the median of
  the timing pass's repeats; ``fit_spread``: between the cross-fitted folds' fits). A figure
  without a spread (an older run, an in-sample fit) is judged by the ratio alone, and the row
  says so. Counted only when B's measurement took at least ``speed_floor`` seconds and, for fit,
  when neither fit came from the fitted-compressor cache (whose seconds are the original fit's);
* *bytes*: it stores more bytes per vector than A for the same spec;
* *status*: it was ok in A and is infeasible or failed in B.

Cells present in only one run are listed, never regressions; but the gate fails when B lacks
cells that A has (``--intersection`` compares only the shared ones) or when no cell is compared.
A run still running or killed is read from its cells.jsonl and noted as partial. The summary is
written as Markdown (default ``<RUN_B>/compare-<RUN_A id>.md``). Exit status: 1 with a regression
or a failed gate, 0 without.
"""
from __future__ import annotations

import json
import math
import re
import subprocess
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from . import settings
from .errors import EmbpressError
from .metrics import METRICS, Metric
from .report import markdown_table, resolve_run as resolve_run_folder
from .files import load_npz, write_text
from .runfolder import RunFolder, load_run
from .stats import Resamples, paired_arrays, percentile_interval

KEY = ["dataset", "model", "compressor", "budget"]
#: The timed operations compared, in the summary's order, and the metric that times each: seconds,
#: or a throughput whose time per run is the registry's count column (``Metric.per``) / throughput.
SPEED_LABEL = {"encode_vps": "encode", "search_qps": "search", "fit_s": "fit"}
SPEED = [METRICS[col] for col in SPEED_LABEL]


@dataclass
class Thresholds:
    quality_tol: float = 0.5          # points of the main metric (x100 scale)
    speed_ratio: float | None = 1.2   # None: speed is not checked
    speed_floor: float = 0.05         # seconds
    n_boot: int = 1000                # 0: no bootstrap interval, tolerance only
    confidence: float = 0.95

    def check(self) -> None:
        if not self.quality_tol >= 0:
            raise EmbpressError(f"--quality-tol must be at least 0 points, got {self.quality_tol}")
        if self.speed_ratio is not None and not self.speed_ratio >= 1:
            raise EmbpressError(f"--speed-ratio must be at least 1 (a slowdown factor), got {self.speed_ratio}")
        if not self.speed_floor >= 0:
            raise EmbpressError(f"--speed-floor must be at least 0 seconds, got {self.speed_floor}")
        if self.n_boot < 0:
            raise EmbpressError(f"--bootstrap must be 0 (off) or a number of resamples, got {self.n_boot}")


@dataclass
class Comparison:
    a_dir: Path
    b_dir: Path
    a_meta: dict
    b_meta: dict
    thresholds: Thresholds
    cells: pd.DataFrame                 # one row per joined cell, with "flags"
    only_a: pd.DataFrame
    only_b: pd.DataFrame
    notes: list[str] = field(default_factory=list)

    @property
    def regressions(self) -> pd.DataFrame:
        return self.cells[self.cells["flags"].map(bool)]


# ---------------------------------------------------------------------------- naming runs
def _run_folders(base: Path) -> list[tuple[Path, dict]]:
    out = []
    if not base.is_dir():
        return out
    for path in base.iterdir():
        try:
            meta = json.loads((path / "run.json").read_text())
        except (OSError, ValueError):
            continue
        out.append((path, meta))
    return out


def _git_commit(ref: str) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"],
                             cwd=settings.PROJECT_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def resolve_run(ref: str | Path) -> Path:
    """A run folder from a path, a run id under the results folder, or a git commit."""
    try:
        return resolve_run_folder(ref)
    except EmbpressError:
        pass
    ref = str(ref)
    if Path(ref).is_dir():
        raise EmbpressError(f"{ref} is not a run folder (no run.json)")
    base = settings.results_dir()
    full = _git_commit(ref)
    prefix = (full or ref).lower()
    if full is None and not re.fullmatch(r"[0-9a-fA-F]{4,40}", ref):
        raise EmbpressError(f"{ref!r} is neither a run folder, a run id under {base}, nor a git commit")
    runs = _run_folders(base)
    matches = [(p, m) for p, m in runs if ((m.get("git") or {}).get("commit") or "").startswith(prefix)]
    if not matches:
        known = sorted({((m.get("git") or {}).get("commit") or "?")[:8] for _, m in runs})
        raise EmbpressError(f"no run under {base} for commit {ref}"
                            + (f" (runs there are for {', '.join(known)})" if known else " (no runs there)"))
    latest = max(matches, key=lambda pm: (pm[1].get("status") == "finished", str(pm[1].get("started", "")),
                                          pm[0].name))
    return latest[0]


# ---------------------------------------------------------------------------- the comparison
def _key(row) -> tuple:
    budget = row.get("budget")
    budget = None if budget is None or (isinstance(budget, float) and math.isnan(budget)) else int(budget)
    return (row["dataset"], row["model"], row["compressor"], budget)


def _frame_by_key(df: pd.DataFrame) -> dict[tuple, dict]:
    return {_key(r): r for r in df.to_dict("records")}


def _num(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _seconds(row: dict, metric: Metric) -> float | None:
    v = _num(row.get(metric.name))
    if v is None:
        return None
    if metric.unit == "s":
        return v
    n = _num(row.get(metric.per)) if metric.per else None
    if v <= 0:
        return None
    return (n if n is not None else 1.0) / v


def _same_queries(a_dir: Path, a: dict, b_dir: Path, b: dict) -> bool:
    """Whether the per-query arrays of both cells are over the same queries (or pairs), in order."""
    return _same_baseline_queries(str(RunFolder(a_dir).baseline(a["model"], a["dataset"])),
                                  str(RunFolder(b_dir).baseline(b["model"], b["dataset"])))


@lru_cache(maxsize=64)
def _same_baseline_queries(path_a: str, path_b: str) -> bool:
    pa, pb = Path(path_a), Path(path_b)
    if not (pa.is_file() and pb.is_file()):
        return False
    za, zb = load_npz(pa), load_npz(pb)
    for name in ("query_ids", "gold"):
        if name in za or name in zb:
            if name not in za or name not in zb or not np.array_equal(za[name], zb[name]):
                return False
    return True


def quality_interval(a_dir: Path, a: dict, b_dir: Path, b: dict, thresholds: Thresholds,
                     resamples: dict | None = None) -> tuple[float, float] | str:
    """95 % paired-bootstrap interval of B's main metric as % of A's, or why there is none.

    The resamples are those of :func:`embpress.stats.paired_bootstrap` (same draws, same interval),
    shared by every cell of a (model, dataset) through ``resamples``; a cell whose per-query values
    are identical in both runs has the interval [100, 100] without resampling (every resample's
    ratio is exactly 1)."""
    if thresholds.n_boot == 0:
        return "bootstrap off"
    pa, pb = paired_arrays(a_dir, a), paired_arrays(b_dir, b)
    if pa is None or pb is None:
        return "no per-query files"
    if not _same_queries(a_dir, a, b_dir, b) or len(pa[0]) != len(pb[0]):
        return "different queries"
    values_a, _, statistic, gold = pa
    if np.array_equal(values_a, pb[0]):
        return 100.0, 100.0
    resamples = {} if resamples is None else resamples
    key = (b["model"], b["dataset"], statistic, len(values_a))
    if key not in resamples:
        resamples[key] = Resamples(len(values_a), thresholds.n_boot, 0)
    r = resamples[key]
    return percentile_interval(r.statistic(pb[0], gold), r.statistic(values_a, gold), thresholds.confidence)


def compare_cell(a_dir: Path, a: dict, b_dir: Path, b: dict, t: Thresholds,
                 resamples: dict | None = None) -> dict[str, Any]:
    row: dict[str, Any] = {k: v for k, v in zip(KEY, _key(b))}
    row.update(status_a=a.get("status"), status_b=b.get("status"), main_metric=b.get("main_metric") or a.get("main_metric"))
    flags: list[str] = []
    if a.get("status") == "ok" and b.get("status") != "ok":
        flags.append(f"status: {b.get('status')}")
    if a.get("status") == "ok" and b.get("status") == "ok":
        qa, qb = _num(a.get("quality")), _num(b.get("quality"))
        row.update(quality_a=qa, quality_b=qb, retained_a=_num(a.get("retained_pct")),
                   retained_b=_num(b.get("retained_pct")))
        delta = qb - qa if qa is not None and qb is not None else None
        row["delta"] = delta
        interval = quality_interval(a_dir, a, b_dir, b, t, resamples)
        beyond_ci = False
        if isinstance(interval, tuple) and qa is not None and all(map(math.isfinite, interval)):
            row["ci_low"], row["ci_high"] = (qa * (x / 100 - 1) for x in interval)
            beyond_ci = interval[1] < 100
        else:
            row["ci_note"] = interval if isinstance(interval, str) else "interval undefined"
        beyond_tol = delta is not None and delta < -t.quality_tol
        if beyond_ci or beyond_tol:
            why = [w for w, hit in (("beyond the bootstrap interval", beyond_ci),
                                    (f"beyond the {t.quality_tol:g}-point tolerance", beyond_tol)) if hit]
            flags.append(f"quality: {_f(delta, '{:+.2f}')} points, {' and '.join(why)}")
        ba, bb = _num(a.get("bytes_per_vector")), _num(b.get("bytes_per_vector"))
        row.update(bytes_a=ba, bytes_b=bb)
        if ba is not None and bb is not None and bb > ba:
            flags.append(f"bytes: {ba:g} -> {bb:g} per vector")
        for metric in SPEED:
            flag = _speed_flag(row, a, b, metric, t)
            if flag:
                flags.append(flag)
    row["flags"] = flags
    return row


def beyond_spread(sa: float, sb: float, spread_a: float | None, spread_b: float | None) -> bool | None:
    """Whether B's time is above A's beyond both runs' spreads (B lowered by its spread, A raised
    by its own), or None when a spread is missing."""
    if spread_a is None or spread_b is None:
        return None
    return sb * (1 - spread_b) > sa * (1 + spread_a)


def _speed_flag(row: dict, a: dict, b: dict, metric: Metric, t: Thresholds) -> str | None:
    """The regression flag of one speed figure (or None), the slowdown written into ``row``."""
    col = metric.name
    sa, sb = _seconds(a, metric), _seconds(b, metric)
    label = SPEED_LABEL[col]
    if sa is None or sb is None or sa <= 0:
        return None
    row[f"{label}_slowdown"] = sb / sa
    row[f"{label}_s_b"] = sb
    if col == "fit_s" and (bool(a.get("fit_cached")) or bool(b.get("fit_cached"))):
        row[f"{label}_note"] = "cached fit"
        return None
    if t.speed_ratio is None or sb / sa <= t.speed_ratio or sb < t.speed_floor:
        return None
    spread = metric.spread or ""
    beyond = beyond_spread(sa, sb, _num(a.get(spread)), _num(b.get(spread)))
    if beyond is False:
        row[f"{label}_note"] = f"{sb / sa:.2f}x, within the spread"
        return None
    return (f"{label}: {sb / sa:.2f}x slower ({sa:.3g} s -> {sb:.3g} s"
            + (", beyond both runs' spread)" if beyond else "; no spread measured)"))


def _config_notes(a_meta: dict, b_meta: dict) -> list[str]:
    notes = []
    ca, cb = a_meta.get("config") or {}, b_meta.get("config") or {}
    for k in sorted(set(ca) | set(cb)):
        if k in ("grid", "description", "compressors", "families", "budgets", "axes", "datasets", "models"):
            continue
        if ca.get(k) != cb.get(k):
            notes.append(f"config differs: {k} = {ca.get(k)!r} in A, {cb.get(k)!r} in B")
    ma, mb = a_meta.get("machine") or {}, b_meta.get("machine") or {}
    if (ma.get("hostname"), ma.get("cpu")) != (mb.get("hostname"), mb.get("cpu")):
        notes.append(f"machines differ ({ma.get('hostname')}, {ma.get('cpu')} / {mb.get('hostname')}, "
                     f"{mb.get('cpu')}): speed ratios compare different hardware")
    ba, bb = a_meta.get("baselines") or {}, b_meta.get("baselines") or {}
    for k in sorted(set(ba) & set(bb)):
        if ba[k] != bb[k]:
            notes.append(f"float32 baselines differ for {k}: the data or the embeddings changed")
    for name, meta in (("A", a_meta), ("B", b_meta)):
        if not (meta.get("timing") or {}).get("enabled"):
            notes.append(f"run {name} has no timing pass: its encode/search times were measured beside other "
                         "workers (indicative)")
        if (meta.get("git") or {}).get("dirty"):
            notes.append(f"run {name} was made with uncommitted changes (git dirty)")
        if meta.get("status") != "finished":
            notes.append(f"run {name} is {meta.get('status')}, not finished")
    return notes


def compare_runs(run_a: str | Path, run_b: str | Path, thresholds: Thresholds | None = None) -> Comparison:
    t = thresholds or Thresholds()
    t.check()
    a_dir, b_dir = resolve_run(run_a), resolve_run(run_b)
    if a_dir.resolve() == b_dir.resolve():
        raise EmbpressError(f"{run_a} and {run_b} name the same run ({a_dir})")
    (a_df, a_meta), (b_df, b_meta) = load_run(a_dir), load_run(b_dir)
    a_rows, b_rows = _frame_by_key(a_df), _frame_by_key(b_df)
    resamples: dict = {}
    cells = [compare_cell(a_dir, a_rows[k], b_dir, b_rows[k], t, resamples) for k in b_rows if k in a_rows]
    frame = pd.DataFrame(cells, columns=list(dict.fromkeys(KEY + [c for r in cells for c in r] + ["flags"])))
    only = lambda rows, other: pd.DataFrame([{**dict(zip(KEY, k)), "status": r.get("status")}  # noqa: E731
                                             for k, r in rows.items() if k not in other], columns=KEY + ["status"])
    notes = _config_notes(a_meta, b_meta)
    notes += [f"run {name} is partial: {m['partial']}" for name, m in (("A", a_meta), ("B", b_meta)) if m.get("partial")]
    if not cells:
        notes.insert(0, "the runs have no cell in common (dataset, model, compressor, budget): nothing compared")
    return Comparison(a_dir, b_dir, a_meta, b_meta, t, frame, only(a_rows, b_rows), only(b_rows, a_rows), notes)


# ---------------------------------------------------------------------------- output
def _f(x: Any, fmt: str = "{:.2f}") -> str:
    v = _num(x)
    return "-" if v is None else fmt.format(v)


def _run_line(name: str, path: Path, meta: dict) -> str:
    git = meta.get("git") or {}
    return (f"{name}: {meta.get('run_id', path.name)} (commit {(git.get('commit') or '?')[:8]}"
            f"{', dirty' if git.get('dirty') else ''}, {meta.get('status')}, started {meta.get('started')}) {path}")


def _cell_rows(df: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    headers = ["dataset", "model", "compressor", "budget", "metric", "A", "B", "Δ", "95 % CI of Δ",
               "retained % A → B", "B/vec A → B", "encode", "search", "fit", "regression"]
    rows = []
    for r in df.to_dict("records"):
        if "ci_low" in r and _num(r.get("ci_low")) is not None:
            ci = f"[{r['ci_low']:+.2f}, {r['ci_high']:+.2f}]"
        else:
            ci = r.get("ci_note") if isinstance(r.get("ci_note"), str) else "-"
        speed = []
        for label in ("encode", "search", "fit"):
            note = r.get(f"{label}_note")
            speed.append(note if isinstance(note, str) else _f(r.get(f"{label}_slowdown"), "{:.2f}x"))
        budget = r.get("budget")
        budget_s = "-" if _num(budget) is None else f"{int(budget)}"
        if r.get("status_a") != "ok" or r.get("status_b") != "ok":
            rows.append([r["dataset"], r["model"], r["compressor"], budget_s, r.get("main_metric") or "-",
                         str(r.get("status_a")), str(r.get("status_b")), "-", "-", "-", "-", "-", "-", "-",
                         "; ".join(r["flags"]) or "-"])
            continue
        rows.append([r["dataset"], r["model"], r["compressor"], budget_s, r.get("main_metric") or "-",
                     _f(r.get("quality_a")), _f(r.get("quality_b")), _f(r.get("delta"), "{:+.2f}"), ci,
                     f"{_f(r.get('retained_a'), '{:.1f}')} → {_f(r.get('retained_b'), '{:.1f}')}",
                     f"{_f(r.get('bytes_a'), '{:g}')} → {_f(r.get('bytes_b'), '{:g}')}",
                     *speed, "; ".join(r["flags"]) or "-"])
    return headers, rows


def _thresholds_line(t: Thresholds) -> str:
    speed = ("not checked" if t.speed_ratio is None else
             f"slower than {t.speed_ratio:g}x (measurements of at least {t.speed_floor:g} s)")
    boot = ("off" if t.n_boot == 0 else f"{t.n_boot} paired resamples, {100 * t.confidence:g} %")
    return (f"quality: a drop of more than {t.quality_tol:g} points, or B / A below 100 % over the whole "
            f"bootstrap interval ({boot}); speed: {speed}; bytes: any increase; status: ok → not ok")


def to_markdown(c: Comparison) -> str:
    reg = c.regressions
    lines = [f"# embpress compare: {c.a_meta.get('run_id', c.a_dir.name)} → {c.b_meta.get('run_id', c.b_dir.name)}", "",
             f"- {_run_line('A', c.a_dir, c.a_meta)}", f"- {_run_line('B', c.b_dir, c.b_meta)}",
             f"- regressions: {_thresholds_line(c.thresholds)}",
             "- Δ is B − A in points of the main metric; encode/search/fit are B's time / A's time "
             "(above 1: slower)", ""]
    lines += [f"> {n}" for n in c.notes] + ([""] if c.notes else [])
    verdict = (f"**{len(reg)} regression(s)** in {len(c.cells)} compared cells" if len(reg)
               else f"**No regression** in {len(c.cells)} compared cells")
    lines += [verdict, ""]
    if len(reg):
        lines += ["## Regressions", "", markdown_table(*_cell_rows(reg))]
    lines += ["## All compared cells", "", markdown_table(*_cell_rows(c.cells)) if len(c.cells) else "(none)\n"]
    for title, df in (("Only in A", c.only_a), ("Only in B", c.only_b)):
        if len(df):
            rows = [[r["dataset"], r["model"], r["compressor"], "-" if _num(r["budget"]) is None else str(int(r["budget"])),
                     str(r["status"])] for r in df.to_dict("records")]
            lines += [f"## {title}", "", markdown_table(["dataset", "model", "compressor", "budget", "status"], rows)]
    return "\n".join(lines)


def summary_line(c: Comparison) -> str:
    reg = c.regressions
    return (f"{len(c.cells)} cells compared, {len(reg)} regression(s); "
            f"only in A: {len(c.only_a)}, only in B: {len(c.only_b)}")


def gate_failure(c: Comparison, intersection: bool = False) -> str | None:
    """Why the gate fails although no compared cell regressed: nothing was compared, or B lacks
    cells that A has (unless only the intersection is to be compared)."""
    if not len(c.cells):
        return "nothing compared: the runs share no cell (dataset, model, compressor, budget)"
    if len(c.only_a) and not intersection:
        return (f"run B lacks {len(c.only_a)} of A's {len(c.only_a) + len(c.cells)} cells "
                "(--intersection compares only the cells both have)")
    return None


def run_compare(run_a: str, run_b: str, thresholds: Thresholds | None = None, out: Path | None = None,
                echo: Callable[[str], None] = print, intersection: bool = False) -> int:
    """The command: print the comparison, write the Markdown summary; 1 with a regression, when
    nothing was compared or when B lacks cells of A (unless ``intersection``), else 0."""
    c = compare_runs(run_a, run_b, thresholds)
    failure = gate_failure(c, intersection)
    text = to_markdown(c) + (f"\n**Gate failed**: {failure}\n" if failure else "")
    out = Path(out) if out is not None else RunFolder(c.b_dir).compare_summary(c.a_meta.get("run_id", c.a_dir.name))
    try:
        write_text(out, text)
    except OSError as exc:
        raise EmbpressError(f"cannot write the summary to {out}: {exc}") from None
    echo(text)
    echo(f"{summary_line(c)}\nsummary: {out}")
    if failure:
        echo(f"gate failed: {failure}")
    return 1 if len(c.regressions) or failure else 0
