"""Checks at the edges, one place each: what a run is asked to do (sizes, lists, specs, options a
resume cannot change), what a bring-your-own folder holds (ids, qrels, gold scores), and whether a
finished cell's metrics are possible at all. Each refusal is one line (EmbpressError / SpecError).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from .errors import EmbpressError, SpecError
from .metrics import METRICS

#: A spec longer than this (characters or stages) is refused before anything is fitted.
MAX_SPEC_CHARS = 256
MAX_SPEC_STAGES = 8

#: Options of `embpress run` fixed by a run's own config: --resume cannot change them.
RESUME_FIXED = ("grid", "dataset", "model", "compressor", "out", "k", "max_queries", "max_docs", "calibration")

#: Possible values of every column a row can carry (x100 scales): the registered metrics' bounds,
#: and the main metric's value and baseline (any main metric's range); None: no bound on that side.
METRIC_RANGES: dict[str, tuple[float | None, float | None]] = {
    **{m.name: m.bounds for m in METRICS.values() if m.bounds != (None, None)},
    "quality": (-100, 100), "baseline_quality": (-100, 100),
}

_INT_KEYS = {"k": 1, "max_queries": 1, "max_docs": 1, "batch_size": 1}


def check_int(name: str, value: Any, minimum: int = 1, where: str = "") -> None:
    """``value`` must be None or a whole number >= minimum (a bool is not a number here)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise EmbpressError(f"{where}{name} must be a whole number of at least {minimum}, got {value!r}")


def check_spec_size(spec: str) -> None:
    if len(spec) > MAX_SPEC_CHARS or spec.count(",") >= MAX_SPEC_STAGES:
        raise SpecError(f"compressor spec {spec[:40]!r}... is too long ({len(spec)} characters, "
                        f"{spec.count(',') + 1} stages; at most {MAX_SPEC_CHARS} and {MAX_SPEC_STAGES})")


def check_config(config, where: str = "") -> None:
    """A run's config before any work: non-empty lists of strings, sizes >= 1, sane specs."""
    where = f"{where}: " if where else ""
    for key in ("datasets", "models"):
        values = getattr(config, key)
        if not isinstance(values, list) or not values or not all(isinstance(v, str) and v for v in values):
            raise EmbpressError(f"{where}{key} must be a non-empty list of names, got {values!r}")
    for key, minimum in _INT_KEYS.items():
        check_int(key, getattr(config, key), minimum, where)
    if config.k is None:
        raise EmbpressError(f"{where}k must be a whole number of at least 1, got None")
    for key in ("calibration", "description"):
        if not isinstance(getattr(config, key), str):
            raise EmbpressError(f"{where}{key} must be a string, got {getattr(config, key)!r}")
    for spec in config.compressors:
        check_spec_size(spec)
    for fam in config.families:
        check_spec_size(fam if isinstance(fam, str) else str(fam.get("template", "")))


def check_resume_options(args) -> None:
    given = [f"--{name.replace('_', '-')}" for name in RESUME_FIXED if getattr(args, name, None) not in (None, [], False)]
    if given:
        raise EmbpressError(f"--resume continues a run with its own config; {', '.join(given)} cannot change it")


# ---------------------------------------------------------------------------- bring-your-own folders
def check_unique(ids: list[str], what: str, where: str) -> None:
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dup = next(i for i in ids if i in seen or seen.add(i))
        raise EmbpressError(f"{where}: {what} ids must be unique ({len(ids) - len(set(ids))} repeated, e.g. {dup!r})")


def check_qrels(qrels: dict[str, dict[str, int]], query_ids: list[str], corpus_ids: list[str], where: str) -> None:
    unknown_q = set(qrels) - set(query_ids)
    if unknown_q:
        raise EmbpressError(f"{where}: qrels name {len(unknown_q)} queries that are not in query_ids.txt "
                            f"(e.g. {sorted(unknown_q)[0]!r})")
    docs = set(corpus_ids)
    unknown_d = {d for judged in qrels.values() for d in judged if d not in docs}
    if unknown_d:
        raise EmbpressError(f"{where}: qrels name {len(unknown_d)} documents that are not in corpus_ids.txt "
                            f"(e.g. {sorted(unknown_d)[0]!r})")


def check_gold(scores: np.ndarray, where: str) -> None:
    if len(scores) < 2:
        raise EmbpressError(f"{where}: {len(scores)} scored pairs; a correlation needs at least 2")
    if not np.isfinite(scores).all():
        raise EmbpressError(f"{where}: scores.npy has {int((~np.isfinite(scores)).sum())} NaN or infinite values")
    if np.ptp(scores) == 0:
        raise EmbpressError(f"{where}: every gold score is {scores[0]:g}; a correlation needs scores that vary")


# ---------------------------------------------------------------------------- results
def _finite(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) \
        and math.isfinite(float(value))


def metric_problem(row: dict[str, Any], required: tuple[str, ...] = ()) -> str | None:
    """Why an ok row's figures are impossible (NaN, a missing main figure, out of range), else None;
    ``required``: the columns its task must have (``Task.required``)."""
    if row.get("status") != "ok":
        return None
    for col in required:
        if not _finite(row.get(col)):
            return f"{col} is {row.get(col)!r} (no valid value: empty or constant input?)"
    for col, (lo, hi) in METRIC_RANGES.items():
        value = row.get(col)
        if value is None:
            continue
        if not _finite(value):
            return f"{col} is {value!r}"
        if (lo is not None and value < lo - 1e-6) or (hi is not None and value > hi + 1e-6):
            return f"{col} = {float(value):g} is outside its possible range [{lo}, {hi}]"
    return None
