"""Which cells to start first: the slowest, so that the workers finish together.

A pool that takes cells in grid order ends with the few long fits (residual and optimised product
quantizers on the largest set) running while the other workers idle. :func:`slowest_first` sorts
the cells by an estimate of their seconds, longest first (the classic LPT rule):

1. *recorded*: the fit seconds of the same spec in the fitted-compressor cache's sidecars
   (``embpress.fitcache.read_sidecars``), per training vector, times the cell's training vectors
   (a cross-fitted cell fits K times on (K-1)/K of the vectors; an in-sample one once on all);
2. *else a per-family estimate*: seconds per 1,000 training vectors at 16 B per vector and how that
   grows with the budget, fitted to the default grid's fits (2-core AMD EPYC, all-MiniLM-L6-v2);
   families not listed cost a small constant per vector when they learn from data.

Estimates only order the work; no reported figure comes from them.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np

#: family → (seconds per 1k training vectors per fit at 16 B/vector, exponent of the budget)
FAMILY_RATE = {"rq": (1.7, 1.0), "lsq": (0.9, 1.4), "opq+pq": (0.7, 0.9), "pca+pq": (0.17, 0.9),
               "pq": (0.12, 1.2), "itq": (0.09, 1.35), "lsh": (0.01, 2.0)}
#: seconds per 1k training vectors of any other learned pipeline (PCA, scalar ranges, thresholds)
OTHER_RATE = 0.02
#: seconds per 1k stored vectors of encoding, searching and scoring (every cell)
BASE_RATE = 0.05


def _rows(task) -> int:
    """Stored vectors of a cell (read from the .npy headers, nothing loaded)."""
    parts = dict(task.vectors)
    if "corpus" in parts:
        return _npy_rows(parts["corpus"])
    return sum(_npy_rows(p) for k, p in parts.items() if k.startswith("sentences"))


@lru_cache(maxsize=64)
def _npy_rows(path: str) -> int:
    try:
        return int(np.load(path, mmap_mode="r").shape[0])
    except (OSError, ValueError):
        return 0


def _recorded_rates() -> dict[str, float]:
    """spec → median fit seconds per training vector, from the fit cache's sidecars."""
    from .fitcache import read_sidecars
    per: dict[str, list[float]] = {}
    for side in read_sidecars():
        try:
            rate = float(side["fit_s"]) / max(1, int(side["n_train"]))
        except (KeyError, TypeError, ValueError):
            continue
        per.setdefault(str(side.get("spec")), []).append(rate)
    return {spec: float(np.median(r)) for spec, r in per.items()}


def _fits(task, n: int) -> tuple[int, int]:
    """(number of fits, training vectors per fit) of a cell under its calibration."""
    from .protocol import parse_calibration
    try:
        proto = parse_calibration(task.calibration)
    except Exception:  # noqa: BLE001 - a bad calibration is reported by the plan, not here
        return 1, n
    if proto.kind == "crossfit":
        per_fold = n * (proto.folds - 1) // proto.folds
        return proto.folds, min(per_fold, proto.sample) if proto.sample else per_fold
    return 1, n


def estimate_s(task, recorded: dict[str, float] | None = None) -> float:
    """Estimated seconds of one cell (see the module doc)."""
    from compressors import SpecError, parse_spec
    n = _rows(task)
    base = BASE_RATE * n / 1000
    try:
        pipe = parse_spec(task.compressor)
    except SpecError:
        return base
    if not pipe.learns_from_data:
        return base
    fits, n_train = _fits(task, n)
    spec = pipe.to_spec()
    if recorded and spec in recorded:
        return base + fits * n_train * recorded[spec]
    rate, exponent = FAMILY_RATE.get(pipe.family, (OTHER_RATE, 0.0))
    budget = task.budget or 16
    return base + fits * n_train / 1000 * rate * math.pow(max(budget, 1) / 16, exponent)


def slowest_first(tasks: list[Any]) -> list[Any]:
    """The tasks, longest estimated first (stable for equal estimates)."""
    recorded = _recorded_rates()
    keyed = [(estimate_s(t, recorded) if hasattr(t, "vectors") else 0.0, i, t) for i, t in enumerate(tasks)]
    return [t for _, _, t in sorted(keyed, key=lambda x: (-x[0], x[1]))]
