"""Encoder variants: one model with compressed weights, used anywhere a model name is.

A variant is named after the model with ``@``: ``all-MiniLM-L6-v2@int8-dynamic``. It is built at
load time from the float32 weights (nothing extra is downloaded) and embedded and cached like any
model: its name and the settings below go into the embedding cache key, so variants never share
cache entries (``@fp32``, the reference, is the plain model and keeps its key).

| variant | what | PyTorch API |
| --- | --- | --- |
| ``bf16`` | all weights and activations in bfloat16 | ``model.to(torch.bfloat16)`` |
| ``fp16`` | all weights and activations in float16 | ``model.to(torch.float16)`` |
| ``int8-dynamic`` | Linear weights int8 per tensor, activations quantized per batch at run time (x86: 7-bit) | ``torch.ao.quantization.quantize_dynamic`` |
| ``int8-dynamic-channel`` | the same with per-output-channel weight scales | ``quantize_dynamic`` + ``per_channel_dynamic_qconfig`` |
| ``int8-torchao`` | Linear weights int8 per row, activations int8 per token at run time | ``torchao.quantization.quantize_`` + ``Int8DynamicActivationInt8WeightConfig`` |

Why two int8 APIs: torch 2.13 deprecates ``torch.ao.quantization`` (its warning says to migrate
eager-mode ``quantize_dynamic`` to torchao's ``quantize_``), and torchao's int8 dynamic config is
that replacement. They trade speed against agreement with float32: ``benchmarks/bench_encoders.py``
measured torchao (per-token activation scales, no ``torch.compile``) at cosine 0.997 to float32
and 1.05-1.9x its speed, the deprecated API's FBGEMM/oneDNN kernels at cosine 0.95 (per tensor) /
0.98 (per channel) and 2.4-3.4x (2-core AMD EPYC; README). Both are offered so the benchmark shows
the trade-off instead of picking one. Only Linear layers are quantized (the word-embedding
matrix, half of MiniLM's weights, stays in float32), which ``model_memory_bytes`` shows.

Nothing at module level imports torch: the cache key of a fully cached run needs only the table.
This module imports nothing of embpress but its errors and, for the variants that rewrite the
weights (pruning, sharing, trimming, factorising), :mod:`embpress.encoder_weights` (``models`` builds on it);
profiling a variant against its base model is :mod:`embpress.profiles`.
"""
from __future__ import annotations

import io
import logging
import platform
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from .errors import EmbpressError

log = logging.getLogger("embpress")

REFERENCE = "fp32"
#: Methods of the variants that rewrite the float32 weights (``embpress.encoder_weights``, ``embpress.vocab_trim``).
WEIGHT_METHODS = ("magnitude-prune", "weight-sharing", "svd-factorised-embedding", "vocab-trim")
#: The quantized engine of the deprecated int8 API: its kernels (and so its numbers) differ per CPU family.
QENGINE = "x86" if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686") else "qnnpack"


@dataclass(frozen=True)
class Variant:
    name: str
    summary: str
    settings: dict = field(default_factory=dict)   # goes into the embedding cache key
    cpu_only: bool = False


VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("bf16", "all weights and activations in bfloat16",
            {"method": "cast", "dtype": "bfloat16"}),
    Variant("fp16", "all weights and activations in float16",
            {"method": "cast", "dtype": "float16"}),
    Variant("int8-dynamic", "Linear layers: int8 weights (one scale per tensor), activations quantized "
            "per batch at run time (torch.ao quantize_dynamic, deprecated API, FBGEMM/oneDNN kernels)",
            {"method": "torch.ao.quantization.quantize_dynamic", "modules": "Linear", "weights": "qint8",
             "qscheme": "per_tensor_affine", "activations": "dynamic per tensor", "engine": QENGINE},
            cpu_only=True),
    Variant("int8-dynamic-channel", "as int8-dynamic with one weight scale per output channel",
            {"method": "torch.ao.quantization.quantize_dynamic", "modules": "Linear", "weights": "qint8",
             "qscheme": "per_channel_affine", "activations": "dynamic per tensor", "engine": QENGINE},
            cpu_only=True),
    Variant("int8-torchao", "Linear layers: int8 weights (one scale per row), int8 activations "
            "(one scale per token) at run time (torchao quantize_, the API torch 2.13 recommends)",
            {"method": "torchao.quantization.quantize_", "config": "Int8DynamicActivationInt8WeightConfig",
             "modules": "Linear", "weights": "int8 symmetric per row", "activations": "int8 symmetric per token",
             "compiled": False}),
)}


def variant_names() -> list[str]:
    """The fixed variants; the weight-rewriting ones are a grammar (``encoder_weights.GRAMMAR``)."""
    return [REFERENCE, *VARIANTS]


def get_variant(name: str) -> Variant:
    """A fixed variant, or one of the pruning / sharing / trimming / factorising grammar."""
    from .encoder_weights import GRAMMAR, parse_variant
    if name in VARIANTS:
        return VARIANTS[name]
    parsed = parse_variant(name)
    if parsed is None:
        raise EmbpressError(f"unknown encoder variant {name!r}; variants: {', '.join(variant_names())}, "
                            f"{GRAMMAR} (written model@variant, e.g. all-MiniLM-L6-v2@int8-dynamic)")
    return Variant(name, *parsed)


# ---------------------------------------------------------------------------- building
def apply_variant(model, name: str, device: str = "cpu"):
    """Turn a float32 sentence-transformers model into the variant (in place; returns it)."""
    import torch
    variant = get_variant(name)
    if variant.cpu_only and device != "cpu":
        raise EmbpressError(f"encoder variant {name} runs on the CPU only (asked for {device})")
    method = variant.settings["method"]
    if method == "cast":
        return model.to(getattr(torch, variant.settings["dtype"]))
    if method.startswith("torch.ao"):
        from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic
        if QENGINE not in torch.backends.quantized.supported_engines:
            raise EmbpressError(f"encoder variant {name} needs the {QENGINE} quantized engine; this torch "
                                f"offers {', '.join(torch.backends.quantized.supported_engines)}")
        torch.backends.quantized.engine = QENGINE
        qconfig = (per_channel_dynamic_qconfig if variant.settings["qscheme"] == "per_channel_affine"
                   else default_dynamic_qconfig)
        with warnings.catch_warnings():  # the whole API is deprecated: said once, in the module docstring
            warnings.simplefilter("ignore")
            return quantize_dynamic(model, {torch.nn.Linear: qconfig}, dtype=torch.qint8, inplace=True)
    if method in WEIGHT_METHODS:
        from .encoder_weights import apply
        return apply(model, variant.name, variant.settings)
    if method.startswith("torchao"):
        try:
            from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
        except ImportError:
            raise EmbpressError(f"encoder variant {name} needs torchao (pip install torchao==0.18.0)") from None
        quantize_(model, Int8DynamicActivationInt8WeightConfig(set_inductor_config=False))
        return model
    raise AssertionError(method)


# ---------------------------------------------------------------------------- measuring
#: The files a sentence-transformers folder needs besides its weights (tokenizer, configs).
SUPPORT_FILES = ("modules.json", "sentence_bert_config.json", "config.json", "config_sentence_transformers.json",
                 "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                 "merges.txt", "sentencepiece.bpe.model", "spiece.model", "*/config.json")


def _tensor_bytes(t) -> tuple[int, int]:
    """(bytes held, logical parameter count) of a state-dict value: plain, quantized or subclass tensors."""
    import torch
    if isinstance(t, (tuple, list)):
        parts = [_tensor_bytes(x) for x in t]
        return sum(p[0] for p in parts), sum(p[1] for p in parts)
    if not isinstance(t, torch.Tensor):
        return 0, 0
    if t.is_quantized:
        extra = 16
        if t.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric,
                           torch.per_channel_affine_float_qparams):
            extra = t.q_per_channel_scales().nbytes + t.q_per_channel_zero_points().nbytes
        return t.numel() * t.element_size() + extra, t.numel()
    if type(t) not in (torch.Tensor, torch.nn.Parameter) and hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()   # torchao: int8 data plus scales
        return sum(_tensor_bytes(getattr(t, n))[0] for n in names), t.numel()
    # parameters: floating tensors of rank ≥ 1 (not int buffers, not the unused 0-d output qparams)
    return t.numel() * t.element_size(), (t.numel() if t.is_floating_point() and t.dim() > 0 else 0)


def footprint(model, folder=None) -> dict:
    """Model size: parameters, bytes in memory (every tensor, scales included) and on disk
    (the state dict as ``torch.save`` writes it, plus the tokenizer and config files of ``folder``).
    A variant that rewrites the weights (pruned, shared, trimmed, factorised) is stored on disk in
    the smallest honest format of each tensor (``encoder_weights.stored_bytes``), and adds
    ``model_disk_bytes_no_entropy``, ``model_nonzero_params`` and ``model_disk_format``."""
    import torch
    state = model.state_dict()
    held = [_tensor_bytes(v) for v in state.values()]
    buf = io.BytesIO()
    torch.save(state, buf)
    support = 0
    if folder is not None:
        from pathlib import Path
        support = sum(p.stat().st_size for pat in SUPPORT_FILES for p in Path(folder).glob(pat) if p.is_file())
    out = {"model_params": int(sum(h[1] for h in held)), "model_memory_bytes": int(sum(h[0] for h in held)),
           "model_disk_bytes": buf.getbuffer().nbytes + support}
    from .encoder_weights import COMPACT_ATTR, format_summary, stored_bytes
    if getattr(model, COMPACT_ATTR, False):   # pruned, shared, trimmed, factorised: the smallest honest format
        stored = stored_bytes(state)
        out.update(model_disk_bytes=stored["bytes"] + support, model_disk_bytes_no_entropy=stored["bytes_no_entropy"]
                   + support, model_nonzero_params=stored["nonzero_params"],
                   model_disk_format=format_summary(stored["formats"]))
    return out


def time_interleaved(models: dict, text_sets: dict[str, list[str]], *, batch_size: int = 32,
                     repeats: int = 3) -> dict[str, dict[str, float]]:
    """Best seconds of every model on every text set over ``repeats`` interleaved rounds (each round
    times every model once on each set, after one untimed batch per model), so a burst of load from
    elsewhere hurts all models alike and the best round is the least disturbed one."""
    best = {name: {label: float("inf") for label in text_sets} for name in models}
    first = next(iter(text_sets.values()))[:batch_size]
    for model in models.values():
        model.encode(first, batch_size=batch_size, show_progress_bar=False)
    for _ in range(repeats):
        for name, model in models.items():
            for label, texts in text_sets.items():
                t0 = time.perf_counter()
                model.encode(texts, batch_size=batch_size, show_progress_bar=False)
                best[name][label] = min(best[name][label], time.perf_counter() - t0)
    return best


def agreement(a: np.ndarray, b: np.ndarray) -> dict:
    """Mean and minimum cosine between the rows of two embedding arrays of the same texts."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise EmbpressError(f"cannot compare embeddings of shapes {a.shape} and {b.shape}")
    cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return {"model_cosine_mean": float(cos.mean()), "model_cosine_min": float(cos.min())}
