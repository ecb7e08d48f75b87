"""Grid files: which datasets × models × compressors a run covers, declared in TOML.

    description = "..."
    datasets = ["scifact", "nfcorpus"]           # card names or folders of .npy (bring your own)
    models = ["all-MiniLM-L6-v2"]
    compressors = ["F32", "F16", "SQ8"]          # fixed specs, run as they are
    budgets = [16, 32, 64, 128, 256, 512]        # bytes per vector
    families = ["PCA{d},SQ8", "PQ{m}x8", "BIN:rescore={mult}",
                {template = "LSQ{m}x8", budgets = [8, 16], calibration = "sample:4096"}]
                                                 # a family's own budgets and calibration

    [axes]                                       # values for named template fields
    mult = [2, 4, 10]

A *family* is a spec template. Fields named in ``[axes]`` take every listed value; if one field is
left free, it is solved for each budget: the value whose pipeline stores exactly that many bytes
per vector on the model's dimension (``PQ{m}x8`` at 32 B → ``PQ32x8``; ``PCA{d},BIN`` at 16 B →
``PCA128,BIN``). A budget no value can meet is an *infeasible* cell, kept in the results with the
reason, never silently dropped. Optional keys: ``k``, ``max_queries``, ``max_docs``, ``batch_size``,
``calibration`` (what compressors that learn from data are fitted on: ``crossfit:K`` by default,
``sample:N``, ``corpus`` (in-sample), ``dataset:NAME`` or ``file:PATH.npy``: see ``embpress.protocol``;
a family table may set its own, e.g. in-sample companions of trained families).
"""
from __future__ import annotations

import hashlib
import itertools
import string
import tomllib
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from compressors import SpecError, get_stage_class, parse_spec

from . import settings
from .errors import EmbpressError
from .protocol import DEFAULT_CALIBRATION
from .validate import check_config


@dataclass
class RunConfig:
    datasets: list[str]
    models: list[str]
    compressors: list[str] = field(default_factory=list)
    budgets: list[int] = field(default_factory=list)
    families: list[str | dict[str, Any]] = field(default_factory=list)
    axes: dict[str, list[Any]] = field(default_factory=dict)
    k: int = 100
    max_queries: int | None = None
    max_docs: int | None = None
    batch_size: int = 32
    calibration: str = DEFAULT_CALIBRATION
    grid: str | None = None
    description: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_LIST_KEYS = {"datasets": str, "models": str, "compressors": str, "budgets": int, "families": (str, dict)}


def family_parts(family: str | dict[str, Any], budgets: list[int]) -> tuple[str, list[int]]:
    """A family entry is a template string, or {template = "...", budgets = [...], calibration = "..."}."""
    if isinstance(family, str):
        return family, budgets
    return family["template"], list(family.get("budgets", budgets))


def family_calibration(family: str | dict[str, Any]) -> str | None:
    """The family's own calibration, or None for the run's."""
    return family.get("calibration") if isinstance(family, dict) else None


def grid_path(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix == ".toml" and p.is_file():
        return p
    candidate = settings.BENCHMARKS / f"{name_or_path}.toml"
    if candidate.is_file():
        return candidate
    known = ", ".join(sorted(x.stem for x in settings.BENCHMARKS.glob("*.toml")))
    raise EmbpressError(f"grid {name_or_path!r} not found (a .toml file, or one of: {known})")


def _check_family_tables(families: list, where: str) -> None:
    for fam in families:
        if isinstance(fam, dict) and (not isinstance(fam.get("template"), str)
                                      or set(fam) - {"template", "budgets", "calibration"}
                                      or not isinstance(fam.get("calibration", ""), str)
                                      or not all(isinstance(b, int) and b > 0 for b in fam.get("budgets", []))):
            raise EmbpressError(f"{where}: a family table needs template = \"...\" and optionally "
                                f"budgets = [positive ints] and calibration = \"...\", got {fam}")


def config_from_dict(raw: dict[str, Any], where: str) -> RunConfig:
    allowed = set(RunConfig.__dataclass_fields__)
    unknown = set(raw) - allowed
    if unknown:
        raise EmbpressError(f"{where}: unknown key(s) {', '.join(sorted(unknown))} "
                            f"(allowed: {', '.join(sorted(allowed - {'grid'}))})")
    for key in ("datasets", "models"):
        if key not in raw:
            raise EmbpressError(f"{where}: missing {key}")
    for key, typ in _LIST_KEYS.items():
        if key in raw and (not isinstance(raw[key], list) or not all(isinstance(x, typ) for x in raw[key])):
            raise EmbpressError(f"{where}: {key} must be a list of "
                                f"{' or '.join(t.__name__ for t in (typ if isinstance(typ, tuple) else (typ,)))}s")
    _check_family_tables(raw.get("families", []), where)
    if not raw.get("compressors") and not raw.get("families"):
        raise EmbpressError(f"{where}: needs compressors or families")
    for fam in raw.get("families", []):
        template, budgets = family_parts(fam, raw.get("budgets", []))
        if _free_fields(template, raw.get("axes", {})) and not budgets:
            raise EmbpressError(f"{where}: family {template!r} has a free field but no budgets")
    if "axes" in raw and (not isinstance(raw["axes"], dict)
                          or not all(isinstance(v, list) and v for v in raw["axes"].values())):
        raise EmbpressError(f"{where}: [axes] must map field names to non-empty lists")
    if any(b <= 0 for b in raw.get("budgets", [])):
        raise EmbpressError(f"{where}: budgets must be positive byte counts")
    config = RunConfig(**raw)
    check_config(config, where)
    return config


def load_grid(name_or_path: str = "default") -> RunConfig:
    path = grid_path(name_or_path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise EmbpressError(f"grid file {path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise EmbpressError(f"grid file {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise EmbpressError(f"grid file {path} cannot be read ({exc.strerror or exc})") from None
    config = config_from_dict(raw, f"grid file {path}")
    config.grid = str(path)
    return config


# ---------------------------------------------------------------------------- cells
@dataclass(frozen=True)
class CellSpec:
    """One compressor setting to run on every (model, dataset): a spec, or why there is none."""
    compressor: str                 # the spec, or the template filled as far as possible
    template: str | None = None     # the family template it came from
    budget: int | None = None       # the target bytes per vector
    infeasible: str | None = None   # why no spec meets the budget
    calibration: str | None = None  # the family's own calibration (None: the run's)


def cell_id(model: str, dataset: str, compressor: str, budget: int | None = None,
            calibration: str | None = None) -> str:
    key = f"{model}|{dataset}|{compressor}|{budget if budget is not None else ''}"
    if calibration is not None:
        key += f"|{calibration}"
    return hashlib.sha1(key.encode()).hexdigest()[:12]


def _fields(template: str) -> list[str]:
    return list(dict.fromkeys(f for _, f, _, _ in string.Formatter().parse(template) if f))


def _free_fields(template: str, axes: dict[str, list]) -> list[str]:
    return [f for f in _fields(template) if f not in axes]


#: A family realises a budget with the largest setting that fits in it and fills at least this
#: share of it; below that the cell is infeasible (e.g. SQ2 = 96 B does not stand for 128 B).
BUDGET_FILL = 0.85


def solve_budget(template: str, budget: int, dim: int, fixed: dict[str, Any]) -> tuple[str | None, str | None]:
    """(spec, None) for the setting of the free field that realises ``budget`` bytes, else (None, why).

    The budget is met exactly when some value does (``PQ{m}x8`` at 32 B → ``PQ32x8``); when several
    values store the same bytes (``PCA121,BIN`` … ``PCA128,BIN`` all take 16 B) the largest is taken.
    Otherwise the largest value that fits within the budget and fills at least ``BUDGET_FILL`` of it
    (``HYB8`` = 63 B for 64 B); the row's ``bytes_per_vector`` always says what is really stored."""
    free = _free_fields(template, fixed)
    if len(free) != 1:
        raise SpecError(f"family {template!r} must leave exactly one field free for budgets, has {free}")
    best_under: tuple[int, str] | None = None
    nearest: list[tuple[int, str]] = []
    refusal = None
    for spec, size, why in _settings(template, dim, tuple(sorted(fixed.items())), free[0]):
        if why is not None:
            if size == budget and refusal is None:
                refusal = why
            continue
        if size == budget:
            return spec, None
        if size < budget and (best_under is None or size > best_under[0]):
            best_under = (size, spec)
        nearest.append((abs(size - budget), f"{spec} = {size} B"))
    if best_under is not None and best_under[0] >= BUDGET_FILL * budget:
        return best_under[1], None
    if refusal:
        return None, refusal
    near = ", ".join(s for _, s in sorted(nearest)[:2]) or "none"
    return None, f"no {template} fits {budget} B/vector on {dim}-d vectors (nearest: {near})"


@lru_cache(maxsize=512)
def _settings(template: str, dim: int, fixed: tuple, name: str) -> list[tuple[str, int, str | None]]:
    """Every value of the free field, largest first, as (spec, bytes per vector, why the chain
    cannot take ``dim``-d input or None); computed once per template and dimension, then shared
    by all its budgets."""
    out = []
    for value in range(8 * dim, 0, -1):
        spec = template.format(**dict(fixed), **{name: value})
        try:
            pipe = parse_spec(spec)
            size = pipe.bytes_per_vector(dim)
        except SpecError:
            continue
        try:
            pipe.check_dim(dim)
            out.append((spec, size, None))
        except SpecError as exc:
            out.append((spec, size, str(exc)))
    return out


def check_template(template: str, axes: dict[str, list]) -> None:
    """Refuse a family whose stages or options do not exist (a typo must not become a column of
    infeasible cells)."""
    sample = {f: (axes[f][0] if f in axes else 8) for f in _fields(template)}
    try:
        spec = template.format(**sample)
    except (KeyError, IndexError, ValueError) as exc:
        raise SpecError(f"family {template!r} is not a valid template ({exc})") from None
    for token in spec.split(","):
        head, *options = token.strip().split(":")
        try:
            cls = get_stage_class(head)
        except SpecError as exc:
            raise SpecError(f"family {template!r}: {exc}") from None
        for opt in options:
            name = opt.split("=", 1)[0]
            if name not in cls.param_defaults():
                raise SpecError(f"family {template!r}: {head} has no option {name!r}")


def expand(config: RunConfig, dim: int) -> list[CellSpec]:
    """The compressor settings for a model of dimension ``dim``: fixed specs, then every family
    at every axis value and budget."""
    cells = [CellSpec(parse_spec(s).to_spec()) for s in config.compressors]
    for family in config.families:
        template, budgets = family_parts(family, config.budgets)
        cal = family_calibration(family)
        axis_names = [f for f in _fields(template) if f in config.axes]
        combos = [dict(zip(axis_names, vals)) for vals in itertools.product(*(config.axes[a] for a in axis_names))]
        for fixed in combos:
            if not _free_fields(template, fixed):
                cells.append(CellSpec(parse_spec(template.format(**fixed)).to_spec(), template, calibration=cal))
                continue
            for budget in budgets:
                spec, why = solve_budget(template, budget, dim, fixed)
                if spec is not None:
                    cells.append(CellSpec(parse_spec(spec).to_spec(), template, budget, calibration=cal))
                else:
                    label = template.format(**fixed, **{f: "{" + f + "}" for f in _free_fields(template, fixed)})
                    cells.append(CellSpec(label, template, budget, why, cal))
    seen, unique = set(), []
    for c in cells:
        key = (c.compressor, c.budget if c.infeasible else None, c.calibration)
        if key not in seen:
            seen.add(key)
            unique.append(c)
    return unique
