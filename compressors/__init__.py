"""embpress compressors: one module per technique, each registered with ``@register``.

    >>> from compressors import parse_spec
    >>> pipe = parse_spec("PCA128,SQ8").fit(corpus)
    >>> codes = pipe.encode(corpus)            # uint8, shape (n, pipe.bytes_per_vector())
    >>> scores, ids = pipe.search(codes, queries, k=10)
"""
from .base import Codec, SpecError, Stage, Transform, config_context
from .pipeline import Pipeline
from .registry import get_stage_class, register, stage_classes
from .spec import format_pipeline, parse_spec

__all__ = ["Codec", "Pipeline", "SpecError", "Stage", "Transform", "config_context", "format_pipeline",
           "get_stage_class", "parse_spec", "register", "stage_classes"]
