"""Statistics over result tables: paired bootstrap intervals and Pareto frontiers.

* :func:`paired_bootstrap`: a 95 % interval for *retained %* (a compressor's quality as % of the
  float32 baseline), resampling queries (or STS pairs) with replacement and recomputing both the
  compressed and the baseline statistic on the same resample, so the interval reflects the paired
  difference, not the spread of the dataset. Spearman is recomputed on each resample of pairs,
  with the gold scores resampled alongside.
  :class:`PairedBootstrap` gives many cells of one dataset the same intervals with the resamples and
  the baseline's statistic computed once: the grid's workers store each cell's interval with its row
  (``ci_low``, ``ci_high``, ``ci_resamples``, ``ci_seed``), and :func:`retained_cis` computes them for
  runs from before that.
* :func:`pareto_mask`: which rows no other row beats on every objective, with each objective's
  direction taken from the metric registry (:data:`embpress.metrics.METRICS`).

These are used by the grid, the report and ``embpress compare``; nothing else computes them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd

from .files import load_npz
from .metrics import METRICS
from .runfolder import RunFolder
from .tasks import task_of

Statistic = str | Callable[[np.ndarray, np.ndarray | None], float]
#: Resamples and seed of the retained-% intervals the grid stores with each cell and the report shows.
N_BOOT, SEED = 1000, 0


def _resample_ranks(x: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Average ranks each element of x would have inside every resample, where ``counts[b, i]``
    is how often element i was drawn in resample b (ties, original or from repeats, share a rank)."""
    uniq, inv = np.unique(x, return_inverse=True)
    order = np.argsort(inv, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(inv[order]) != 0])
    per_value = np.add.reduceat(counts[:, order], starts, axis=1)        # draws of each distinct value
    below = np.cumsum(per_value, axis=1) - per_value
    return (below + (per_value + 1) / 2)[:, inv]


def _resample_spearman(x: np.ndarray, gold_ranks: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Spearman of x with gold on every resample: the Pearson correlation of within-resample ranks,
    each element weighted by how often it was drawn (equal to ranking the resampled arrays)."""
    rx = _resample_ranks(x, counts)
    n = counts.sum(axis=1, keepdims=True)
    dx = rx - (counts * rx).sum(axis=1, keepdims=True) / n
    dg = gold_ranks - (counts * gold_ranks).sum(axis=1, keepdims=True) / n
    with np.errstate(invalid="ignore", divide="ignore"):
        return (counts * dx * dg).sum(axis=1) / np.sqrt((counts * dx * dx).sum(axis=1) * (counts * dg * dg).sum(axis=1))


def bootstrap_indices(n: int, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """The (n_boot, n) resampling indices: the same seed gives the same resamples."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def paired_bootstrap(compressed_per_query, baseline_per_query, statistic: Statistic = "mean", *,
                     gold=None, n_boot: int = 1000, seed: int = 0,
                     confidence: float = 0.95) -> tuple[float, float]:
    """Percentile interval of ``100 * statistic(compressed) / statistic(baseline)`` over paired
    resamples of the queries (or pairs).

    ``statistic``: ``"mean"`` (retrieval and neighbour metrics: the per-query values are averaged),
    ``"spearman"`` (STS: the per-pair similarities are correlated with ``gold``, resampled with the
    same indices), or a callable ``f(values, gold_or_None) -> float`` applied to each resample.
    Returns ``(low, high)`` in percent; resamples whose baseline statistic is 0 are left out.
    """
    c = np.asarray(compressed_per_query, dtype=np.float64).ravel()
    b = np.asarray(baseline_per_query, dtype=np.float64).ravel()
    g = None if gold is None else np.asarray(gold, dtype=np.float64).ravel()
    if len(c) != len(b) or (g is not None and len(g) != len(c)):
        raise ValueError(f"paired arrays differ in length: {len(c)}, {len(b)}"
                         + (f", gold {len(g)}" if g is not None else ""))
    if len(c) == 0:
        raise ValueError("no queries to resample")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    idx = bootstrap_indices(len(c), n_boot, seed)
    if statistic == "mean":
        num, den = c[idx].mean(axis=1), b[idx].mean(axis=1)
    elif statistic == "spearman":
        if g is None:
            raise ValueError("statistic 'spearman' needs the gold scores")
        n_boot_, n = idx.shape
        counts = np.bincount((idx + n * np.arange(n_boot_)[:, None]).ravel(), minlength=n_boot_ * n)
        counts = counts.reshape(n_boot_, n).astype(np.float64)
        gold_ranks = _resample_ranks(g, counts)
        num, den = _resample_spearman(c, gold_ranks, counts), _resample_spearman(b, gold_ranks, counts)
    elif callable(statistic):
        num = np.array([statistic(c[i], None if g is None else g[i]) for i in idx])
        den = np.array([statistic(b[i], None if g is None else g[i]) for i in idx])
    else:
        raise ValueError(f"unknown statistic {statistic!r} (mean, spearman or a callable)")
    return percentile_interval(num, den, confidence)


# ---------------------------------------------------------------------------- per-query files of a run
Paired = tuple[np.ndarray, np.ndarray, str, np.ndarray | None]


def paired_arrays(run_dir: Path, row) -> Paired | None:
    """(compressed per query, baseline per query, statistic, gold) of one ok cell's main metric, or
    None when its per-query files are missing."""
    folder = RunFolder(run_dir)
    cell = folder.cell_arrays(row["cell_id"])
    base = folder.baseline(row["model"], row["dataset"])
    if not (cell.is_file() and base.is_file()):
        return None
    return task_of(row["task"]).paired(load_npz(cell), load_npz(base), row["main_metric"])


def retained_ci(run_dir: Path, row, n_boot: int = N_BOOT, seed: int = SEED) -> tuple[float, float] | None:
    """The 95 % paired-bootstrap interval of one ok result row's ``retained_pct``, from the run's
    per-query files (None when they are missing)."""
    arrays = paired_arrays(run_dir, row)
    if arrays is None:
        return None
    c, b, statistic, gold = arrays
    return paired_bootstrap(c, b, statistic, gold=gold, n_boot=n_boot, seed=seed)


# ---------------------------------------------------------------------------- Pareto frontier
def pareto_mask(df: pd.DataFrame, objectives: Iterable[str] = ("bytes_per_vector", "retained_pct")) -> pd.Series:
    """True for each row that no other row dominates (at least as good on every objective and
    better on one), with the better direction of each objective from the metric registry. Rows
    with a missing objective are never on the frontier; identical rows are both kept."""
    objectives = list(objectives)
    unknown = [o for o in objectives if o not in METRICS]
    if unknown:
        raise KeyError(f"no direction for {', '.join(unknown)} in embpress.metrics.METRICS")
    if len(df) == 0:
        return pd.Series([], index=df.index, dtype=bool)
    sign = np.array([1.0 if METRICS[o].higher_is_better else -1.0 for o in objectives])
    values = df[objectives].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64) * sign
    valid = np.isfinite(values).all(axis=1)
    x = values[valid]
    at_least = (x[None, :, :] >= x[:, None, :]).all(axis=2)   # [i, j]: j at least as good as i
    better = (x[None, :, :] > x[:, None, :]).any(axis=2)      # [i, j]: j better than i somewhere
    dominated = (at_least & better).any(axis=1)
    mask = np.zeros(len(df), dtype=bool)
    mask[np.flatnonzero(valid)[~dominated]] = True
    return pd.Series(mask, index=df.index)



# ---------------------------------------------------------------------------- every interval of a run at once
def _draw_counts(n: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) how often each query was drawn: the resamples of :func:`bootstrap_indices`."""
    idx = bootstrap_indices(n, n_boot, seed)
    counts = np.bincount((idx + n * np.arange(n_boot)[:, None]).ravel(), minlength=n_boot * n)
    return counts.reshape(n_boot, n).astype(np.float64)


def _fast_ranks(x: np.ndarray, counts_t: np.ndarray) -> np.ndarray:
    """:func:`_resample_ranks`, transposed ((n, n_boot) in and out, rows gathered whole) and from
    one cumulative sum: a value's average rank in a resample is (draws before its tie group +
    draws up to the group's end + 1) / 2."""
    order = np.argsort(x, kind="stable")
    xs = x[order]
    new = np.r_[True, xs[1:] != xs[:-1]]
    starts = np.flatnonzero(new)
    ends = np.r_[starts[1:], len(x)]
    cum = np.zeros((len(x) + 1, counts_t.shape[1]), dtype=counts_t.dtype)
    sorted_counts = counts_t[order]
    for i in range(len(x)):     # row by row: ~5x faster than np.cumsum(axis=0) on a C-ordered matrix
        np.add(cum[i], sorted_counts[i], out=cum[i + 1])
    group = np.empty(len(x), dtype=np.int64)
    group[order] = np.cumsum(new) - 1                            # tie group of each value
    ranks = cum[starts][group]
    ranks += cum[ends][group]
    ranks += 1
    ranks /= 2
    return ranks


class Resamples:
    """The resamples of one (model, dataset), shared by all its cells: draw counts (stored
    (n, n_boot)), the baseline's statistic per resample and (STS) the gold ranks, each computed once.
    The draws are :func:`bootstrap_indices`' (same ``n``, ``n_boot`` and ``seed``: same intervals as
    :func:`paired_bootstrap`); ``statistic(values, gold)`` gives one value per resample."""

    def __init__(self, n: int, n_boot: int, seed: int):
        counts = _draw_counts(n, n_boot, seed)
        self.n = counts.sum(axis=1)
        self.counts_t = np.ascontiguousarray(counts.T)
        # ranks and draw counts are small integers and half-integers: exact in float32, which halves
        # the memory traffic of the rank sums (the products are accumulated in float64)
        self.counts32 = self.counts_t.astype(np.float32)
        self._gold = None

    def mean(self, values: np.ndarray) -> np.ndarray:
        return values @ self.counts_t / self.n

    def statistic(self, values: np.ndarray, gold: np.ndarray | None = None) -> np.ndarray:
        """The mean per resample, or (with ``gold``) Spearman with the gold scores."""
        values = np.asarray(values, dtype=np.float64)
        return self.spearman(values, np.asarray(gold, dtype=np.float64)) if gold is not None else self.mean(values)

    def spearman(self, x: np.ndarray, gold: np.ndarray) -> np.ndarray:
        c = self.counts_t
        if self._gold is None:        # centred, weighted gold ranks: Σ counts·dg = 0 in every resample
            g = _fast_ranks(gold, self.counts32).astype(np.float64)
            dg = g - np.einsum("ij,ij->j", c, g)[None, :] / self.n[None, :]
            wdg = c * dg
            self._gold = (wdg, np.einsum("ij,ij->j", wdg, dg))
        wdg, sgg = self._gold
        rx = _fast_ranks(x, self.counts32).astype(np.float64)
        sxg = np.einsum("ij,ij->j", rx, wdg)
        mx = np.einsum("ij,ij->j", c, rx) / self.n
        sxx = np.einsum("ij,ij->j", c * rx, rx) - self.n * mx * mx
        with np.errstate(invalid="ignore", divide="ignore"):
            return sxg / np.sqrt(sxx * sgg)


def percentile_interval(num: np.ndarray, den: np.ndarray, confidence: float) -> tuple[float, float]:
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = 100.0 * (num / den)
    ratio = ratio[np.isfinite(ratio)]
    if len(ratio) == 0:
        return float("nan"), float("nan")
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(ratio, [tail, 100 - tail])
    return float(low), float(high)


class PairedBootstrap:
    """:func:`paired_bootstrap` of many compressed arrays against one baseline (``"mean"`` or
    ``"spearman"``): the draw counts, the baseline's statistic per resample and the gold ranks are
    computed once; :meth:`interval` gives each array the interval ``paired_bootstrap`` gives it."""

    def __init__(self, baseline, statistic: str, gold=None, n_boot: int = N_BOOT, seed: int = SEED,
                 confidence: float = 0.95):
        if statistic not in ("mean", "spearman") or (statistic == "spearman" and gold is None):
            raise ValueError(f"PairedBootstrap takes 'mean' or 'spearman' with gold, not {statistic!r}")
        baseline = np.asarray(baseline, dtype=np.float64).ravel()
        self.n, self.confidence = len(baseline), confidence
        self._r = Resamples(self.n, n_boot, seed)
        self._gold = None if statistic == "mean" else np.asarray(gold, dtype=np.float64).ravel()
        self._den = self._statistic(baseline)

    def _statistic(self, x: np.ndarray) -> np.ndarray:
        return self._r.statistic(x, self._gold)

    def interval(self, compressed) -> tuple[float, float]:
        x = np.asarray(compressed, dtype=np.float64).ravel()
        if len(x) != self.n:
            raise ValueError(f"paired arrays differ in length: {len(x)}, {self.n}")
        return percentile_interval(self._statistic(x), self._den, self.confidence)


def retained_cis(run_dir: Path, rows: pd.DataFrame, n_boot: int = N_BOOT, seed: int = SEED,
                 confidence: float = 0.95) -> pd.DataFrame:
    """:func:`retained_ci` of many ok rows at once (columns ``ci_low``, ``ci_high``, index of
    ``rows``; NaN where per-query files are missing): one :class:`PairedBootstrap` per (model,
    dataset, metric), so the same resamples and intervals as one :func:`paired_bootstrap` per row."""
    folder = RunFolder(run_dir)
    out = pd.DataFrame({"ci_low": np.nan, "ci_high": np.nan}, index=rows.index)
    for (model, dataset), g in rows.groupby(["model", "dataset"], sort=False):
        base_file = folder.baseline(model, dataset)
        if not base_file.is_file():
            continue
        base, boots = load_npz(base_file), {}
        for i, row in g.iterrows():
            if pd.isna(row.get("cell_id")) or not folder.cell_arrays(row["cell_id"]).is_file():
                continue
            pair = task_of(row["task"]).paired(load_npz(folder.cell_arrays(row["cell_id"])), base,
                                               row["main_metric"])
            if pair is None:
                continue
            x, b, statistic, gold = pair
            key = (row["main_metric"], len(x))
            if key not in boots:
                boots[key] = PairedBootstrap(b, statistic, gold, n_boot, seed, confidence)
            out.loc[i, ["ci_low", "ci_high"]] = boots[key].interval(x)
    return out
