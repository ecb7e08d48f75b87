"""embpress inside mteb: any compressor spec as an mteb model, on MTEB tasks loaded offline from
embpress's datasets, next to mteb's own ``CompressionWrapper`` (``embpress mteb``)."""
from .models import CodecSearchIndex, CompressedModel, TextEncoder, experiment_kwargs
from .tasks import MIRRORED, NOT_COMPARABLE, load_task

__all__ = ["CodecSearchIndex", "CompressedModel", "TextEncoder", "experiment_kwargs", "MIRRORED",
           "NOT_COMPARABLE", "load_task"]
