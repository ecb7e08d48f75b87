"""The spec grammar: a compact, readable name for every pipeline, in the spirit of FAISS's
``index_factory``.

    spec    := stage ("," stage)*
    stage   := head (":" name "=" value)*
    head    := the stage's spec_format with its fields filled, e.g. PCA128, SQ8, PQ16x8, BIN

Fields of the format are constructor parameters; the other parameters appear as options only
when they differ from their defaults, so ``format_pipeline(parse_spec(s)) == s`` for every
canonical spec and ``parse_spec(format_pipeline(p)) == p`` for every pipeline. A chain whose last
stage is a transform stores float32 (an implicit ``F32``, not printed).
"""
from __future__ import annotations

from typing import Any

from .base import SpecError, Stage, format_stage  # noqa: F401 - format_stage is part of the grammar's API
from .pipeline import Pipeline, format_pipeline  # noqa: F401 - format_pipeline too
from .registry import get_stage_class


def _parse_value(text: str, default: Any, name: str, head: str) -> Any:
    try:
        if isinstance(default, bool):
            if text.lower() in ("true", "1", "yes"):
                return True
            if text.lower() in ("false", "0", "no"):
                return False
            raise ValueError
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
    except ValueError:
        kind = type(default).__name__
        raise SpecError(f"option {name}={text!r} of {head} must be {'a' if kind != 'int' else 'an'} {kind}") from None
    if default is None:
        for conv in (int, float):
            try:
                return conv(text)
            except ValueError:
                pass
    return text


def parse_stage(token: str) -> Stage:
    token = token.strip()
    if not token:
        raise SpecError("empty stage in spec (two commas in a row, or a trailing comma?)")
    head, *options = token.split(":")
    cls = get_stage_class(head)
    match = cls._spec_regex.fullmatch(head)  # type: ignore[attr-defined]
    defaults = cls.param_defaults()
    kwargs: dict[str, Any] = {k: int(v) for k, v in match.groupdict().items()}
    for opt in options:
        if "=" not in opt:
            raise SpecError(f"option {opt!r} of {head} must look like name=value")
        name, value = opt.split("=", 1)
        if name not in defaults or name in kwargs:
            settable = [k for k in defaults if k not in kwargs]
            raise SpecError(f"{head} has no option {name!r}"
                            + (f" (options: {', '.join(settable)})" if settable else " (it takes no options)"))
        kwargs[name] = _parse_value(value, defaults[name], name, head)
    try:
        return cls(**kwargs)
    except SpecError:
        raise
    except (TypeError, ValueError) as exc:
        raise SpecError(f"{token}: {exc}") from None


def parse_spec(spec: str) -> Pipeline:
    """Parse a spec string into an unfitted Pipeline (raises SpecError with one line on error)."""
    if not isinstance(spec, str) or not spec.strip():
        raise SpecError("empty compressor spec")
    stages = [parse_stage(tok) for tok in spec.split(",")]
    try:
        return Pipeline(stages)
    except SpecError as exc:
        raise SpecError(f"{spec}: {exc}") from None
