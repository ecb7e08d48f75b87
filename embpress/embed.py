"""Embed texts once and cache them as float32 ``.npy`` with a manifest.

A cache entry is keyed by (dataset, split, part, model, weights hash, max sequence length,
normalisation, prompt, the texts themselves, and for an encoder variant such as
``all-MiniLM-L6-v2@int8-dynamic`` what the variant does): change any of them and a new entry is made.
Entries live in ``$EMBPRESS_CACHE/embeddings/<model>/<dataset>/`` as ``<split>-<part>-<key>.npy``
(loaded memory-mapped) plus ``.json`` manifests (ids, shape, checksum, library versions, seconds
spent, texts per second). The manifest is written last, so a half-written entry is never used;
a file whose checksum no longer matches its manifest is reported, not silently re-used.
"""
from __future__ import annotations

import hashlib
import json
import logging
import platform
import sys
import time
from pathlib import Path

import numpy as np

from . import settings
from .data import sha256_content
from .errors import EmbpressError
from .files import save_npy, write_text
from .models import ModelInfo, load_encoder
from .tasks import task_of

log = logging.getLogger("embpress")

#: Counters of real encoder work in this process (tests read them to prove cache hits).
STATS = {"encoder_calls": 0, "texts_encoded": 0}

_ENCODERS: dict[str, object] = {}


def library_versions() -> dict[str, str]:
    import importlib.metadata as md
    out = {"python": platform.python_version()}
    for dist in ("embpress", "numpy", "scipy", "scikit-learn", "faiss-cpu", "torch", "transformers",
                 "sentence-transformers", "pandas", "pyarrow", "tokenizers", "torchao"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return out


def cache_key(info: ModelInfo, dataset: str, split: str, part: str, texts: list[str],
              prompt: str | None = None, precision: str = "fp32") -> dict:
    text_hash = hashlib.sha256("\x00".join(texts).encode("utf-8")).hexdigest()
    key = {"dataset": dataset, "split": split, "part": part, "model": info.entry.name,
           "weights_sha256": info.weights_sha256, "max_seq_length": info.max_seq_length,
           "normalize": info.normalize, "prompt": prompt, "precision": precision,
           "texts_sha256": text_hash, "n_texts": len(texts)}
    if info.entry.variant:  # only variants add the field: float32 keys stay what they were
        key["variant"] = info.variant_settings
    key["id"] = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return key


def entry_paths(key: dict) -> tuple[Path, Path]:
    folder = settings.cache_dir() / "embeddings" / key["model"] / key["dataset"]
    stem = f"{key['split']}-{key['part']}-{key['id']}"
    return folder / f"{stem}.npy", folder / f"{stem}.json"


def _load_entry(npy: Path, manifest_path: Path) -> np.ndarray:
    try:
        manifest = json.loads(manifest_path.read_text())
        expect = manifest["sha256"]
    except (OSError, ValueError, KeyError) as exc:
        raise EmbpressError(f"embedding cache manifest {manifest_path} is unreadable ({exc}); "
                            f"delete it and {npy.name} to re-embed") from None
    if not npy.is_file() or sha256_content(npy)[0] != expect:
        raise EmbpressError(f"embedding cache file {npy} is missing or corrupt (checksum differs from "
                            f"its manifest); delete {npy.name} and {manifest_path.name} to re-embed")
    try:
        arr = np.load(npy, mmap_mode="r")
    except ValueError as exc:
        raise EmbpressError(f"embedding cache file {npy} cannot be read ({exc}); delete it to re-embed") from None
    if list(arr.shape) != manifest["shape"] or arr.dtype != np.float32:
        raise EmbpressError(f"embedding cache file {npy} has shape {arr.shape}, its manifest says "
                            f"{manifest['shape']}; delete it to re-embed")
    return arr


def encoder(info: ModelInfo, device: str = "cpu"):
    """The model, loaded once per process (and device)."""
    key = f"{info.entry.name}|{info.path}|{device}"
    if key not in _ENCODERS:
        log.info("loading model %s from %s", info.entry.name, info.path)
        _ENCODERS[key] = load_encoder(info, device=device)
    return _ENCODERS[key]


def encode_texts(info: ModelInfo, texts: list[str], *, batch_size: int = 32, progress: bool = True,
                 desc: str = "encoding", device: str = "cpu", prompt: str | None = None) -> np.ndarray:
    """Encode with sentence-transformers, longest texts first, with a progress bar (rate, ETA)."""
    from tqdm.auto import tqdm
    model = encoder(info, device)
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    out: np.ndarray | None = None
    chunk = batch_size * 8
    with tqdm(total=len(texts), desc=desc, unit="text", file=sys.stderr, disable=not progress,
              dynamic_ncols=True, mininterval=1.0) as bar:
        for start in range(0, len(order), chunk):
            idx = order[start:start + chunk]
            vecs = model.encode([texts[i] for i in idx], batch_size=batch_size, convert_to_numpy=True,
                                show_progress_bar=False, normalize_embeddings=False, prompt=prompt)
            STATS["encoder_calls"] += 1
            STATS["texts_encoded"] += len(idx)
            if out is None:
                out = np.empty((len(texts), vecs.shape[1]), dtype=np.float32)
            out[idx] = vecs.astype(np.float32, copy=False)
            bar.update(len(idx))
    return out


def embed(info: ModelInfo, dataset: str, split: str, part: str, texts: list[str], ids: list[str], *,
          batch_size: int = 32, progress: bool = True, device: str = "cpu",
          prompt: str | None = None) -> np.ndarray:
    """Embeddings of ``texts`` from the cache, or computed once and cached; memory-mapped float32."""
    key = cache_key(info, dataset, split, part, texts, prompt)
    npy, manifest_path = entry_paths(key)
    if manifest_path.is_file():
        arr = _load_entry(npy, manifest_path)
        log.info("embeddings %s/%s/%s: %d × %d from cache (0 texts encoded)", dataset, split, part, *arr.shape)
        return arr
    if not texts:
        raise EmbpressError(f"{dataset}/{split}/{part}: nothing to embed")
    t0 = time.perf_counter()
    vecs = encode_texts(info, texts, batch_size=batch_size, progress=progress, device=device, prompt=prompt,
                        desc=f"{info.entry.name} {dataset}/{part}")
    seconds = time.perf_counter() - t0
    if not np.isfinite(vecs).all():
        raise EmbpressError(f"{info.entry.name} produced NaN or infinite embeddings for {dataset}/{part}")
    save_npy(npy, vecs)
    manifest = {"key": key, "ids": list(ids), "shape": list(vecs.shape), "dtype": "float32",
                "sha256": sha256_content(npy)[0], "seconds": round(seconds, 3),
                "texts_per_s": round(len(texts) / seconds, 2) if seconds > 0 else None,
                "model": info.as_dict(), "versions": library_versions(),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_text(manifest_path, json.dumps(manifest))
    log.info("embeddings %s/%s/%s: %d × %d encoded in %.1f s (%.1f texts/s), cached at %s",
             dataset, split, part, *vecs.shape, seconds, len(texts) / max(seconds, 1e-9), npy)
    return np.load(npy, mmap_mode="r")


def embed_dataset(info: ModelInfo, ds, **kwargs) -> dict[str, np.ndarray]:
    """All vectors a dataset needs, per part of its task type (``Task.parts``: corpus and queries,
    or both sides of the pairs)."""
    return {part: embed(info, ds.name, ds.card.split, part, texts, ids, **kwargs)
            for part, (texts, ids) in task_of(ds.task).parts(ds).items()}
