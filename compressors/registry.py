"""The one place stages are registered: decorate a Stage subclass with ``@register``.

Every technique module of this package is imported on first use (``load_all``), so adding a
technique means adding one module whose classes carry ``@register`` (the README's "Adding a
compressor" lists the benchmark and test entries that go with it).
"""
from __future__ import annotations

import importlib
import pkgutil
import re
import string

from .base import SpecError, Stage

_REGISTRY: dict[str, type[Stage]] = {}
_INFRA = {"base", "pipeline", "registry", "searchers", "spec"}
_loaded = False


def register(cls: type[Stage]) -> type[Stage]:
    if not cls.spec_format or cls.kind not in ("transform", "codec"):
        raise TypeError(f"{cls.__name__} needs a spec_format and kind to be registered")
    key = cls.spec_format
    if key in _REGISTRY and _REGISTRY[key] is not cls:
        raise TypeError(f"spec format {key!r} registered twice ({_REGISTRY[key].__name__}, {cls.__name__})")
    _REGISTRY[key] = cls
    cls._spec_regex = _format_regex(cls.spec_format)  # type: ignore[attr-defined]
    return cls


def _format_regex(fmt: str) -> re.Pattern:
    parts = []
    for literal, field, _spec, _conv in string.Formatter().parse(fmt):
        parts.append(re.escape(literal))
        if field:
            parts.append(f"(?P<{field}>[0-9]+)")
    return re.compile("".join(parts))


def load_all() -> None:
    """Import every technique module of the package once (they register themselves)."""
    global _loaded
    if _loaded:
        return
    import compressors
    for mod in pkgutil.iter_modules(compressors.__path__):
        if mod.name not in _INFRA and not mod.name.startswith("_"):
            importlib.import_module(f"compressors.{mod.name}")
    _loaded = True


def stage_classes() -> list[type[Stage]]:
    load_all()
    return sorted(_REGISTRY.values(), key=lambda c: (c.kind != "transform", c.spec_format))


def get_stage_class(head: str) -> type[Stage]:
    """The class whose spec format matches ``head`` exactly (e.g. "PCA128" -> PCA)."""
    load_all()
    matches = [c for c in _REGISTRY.values() if c._spec_regex.fullmatch(head)]  # type: ignore[attr-defined]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise SpecError(f"stage {head!r} is ambiguous between {', '.join(c.__name__ for c in matches)}")
    known = ", ".join(c.spec_format.replace("{", "<").replace("}", ">") for c in stage_classes())
    raise SpecError(f"unknown compressor stage {head!r}; known stages: {known}")
