"""The model track: a model (or encoder variant) profiled against its float32 base, side by side in
one process: size on disk and in memory, encode throughput (same texts, batch size and threads)
and agreement of the embeddings. The runner merges the profile into every row of the model.
"""
from __future__ import annotations

import hashlib
import json
import time

import numpy as np

from . import settings
from .embed import cache_key, encoder
from .encoders import REFERENCE, agreement, footprint, time_interleaved
from .errors import EmbpressError
from .models import base_entry, model_info
from .tasks import task_of


def profile_texts(ds, n: int = 128) -> list[str]:
    """A deterministic sample of a dataset's texts for ``variant_profile``: half queries and half
    documents (retrieval) or the first sentences of both sides (sts); ``Task.profile_texts``."""
    return task_of(ds.task).profile_texts(ds, n)


def variant_profile(info, texts: list[str], *, batch_size: int = 32, threads: int | None = None,
                    repeats: int = 5, use_cache: bool = True) -> dict:
    """Size, speed and agreement of a model variant against its float32 base, on ``texts``.

    Returns ``model_variant, model_base, model_params, model_memory_bytes, model_disk_bytes,
    model_texts_per_s, model_base_texts_per_s, model_speedup, model_cosine_mean, model_cosine_min,
    profile_texts, profile_batch_size, profile_threads``. Both models are timed in the same call,
    in interleaved rounds (``encoders.time_interleaved``), with the same batch size and threads (so
    ``model_speedup`` is the figure to compare across machines and rows); the best of ``repeats``
    rounds is kept (5: fewer let a shared machine's bursts of load through). The result is cached
    by (model, texts, batch size, threads, repeats).
    """
    import torch
    threads = threads or torch.get_num_threads()
    base = base_entry(info.entry)
    key = {**cache_key(info, "profile", "-", "-", texts), "batch_size": batch_size, "threads": threads,
           "repeats": repeats, "timing": "interleaved"}
    key["id"] = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = settings.cache_dir() / "profiles" / info.entry.name / f"{key['id']}.json"
    if use_cache and path.is_file():
        return json.loads(path.read_text())["profile"]
    if not texts:
        raise EmbpressError(f"variant_profile of {info.entry.name}: no texts")
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model = encoder(info, "cpu")
        base_model = encoder(model_info(base), "cpu") if info.entry.variant else model
        out = {"model_variant": info.entry.variant or REFERENCE, "model_base": base.name,
               **footprint(model, info.path)}
        timed = {"variant": model, **({"base": base_model} if base_model is not model else {})}
        best = time_interleaved(timed, {"texts": texts}, batch_size=batch_size, repeats=repeats)
        out["model_texts_per_s"] = len(texts) / best["variant"]["texts"]
        out["model_base_texts_per_s"] = len(texts) / best.get("base", best["variant"])["texts"]
        out["model_speedup"] = out["model_texts_per_s"] / out["model_base_texts_per_s"]
        kw = dict(batch_size=batch_size, show_progress_bar=False, convert_to_numpy=True)
        out.update(agreement(np.asarray(model.encode(texts, **kw), dtype=np.float32),
                             np.asarray(base_model.encode(texts, **kw), dtype=np.float32)))
    finally:
        torch.set_num_threads(saved)
    out.update(profile_texts=len(texts), profile_batch_size=batch_size, profile_threads=threads)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"key": key, "profile": out, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}))
    return out
