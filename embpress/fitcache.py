"""The fitted-compressor cache: ``$EMBPRESS_CACHE/fitted/<key>.npz`` plus ``<key>.json``.

Nothing read from the cache can run Python code: there is no pickle. A fitted pipeline is stored
as its spec and, per stage, its constructor parameters (JSON) and its fitted attributes:

* numpy arrays go into the ``.npz`` (written and read with ``allow_pickle=False``);
* FAISS indexes, binary indexes and vector transforms go in as ``uint8`` arrays of FAISS's own
  serialisation (``serialize_index`` / ``serialize_index_binary``; a transform inside an
  ``IndexPreTransform`` wrapper, as :mod:`compressors.base` does);
* scipy CSR matrices (``SRP``) as their three arrays and shape;
* nested stages (BIN's rescoring copy ``copy_``, HYB's ``high_codec_`` / ``low_codec_``) recursively;
* numbers, strings, ``None`` and lists of them as JSON.

Loading rebuilds classes only from the compressors registry (by ``spec_format``) and a fixed
allow-list of private helper stages; no name read from a file is ever imported. The top-level
pipeline is rebuilt by parsing the stored spec, which must equal the spec asked for.

The JSON *sidecar* is what a person or a scheduler reads: spec, calibration digest and shape, the
caller's ``meta`` (e.g. the cross-fitting fold), code version, fit seconds, training-set size and
the sha256 of the ``.npz``. An entry is used only when all of these match what is asked, the
arrays load, and a few calibration rows encode to the declared ``uint8`` width; anything else
(a spec copied over another's, a torn or tampered file) is refitted with a warning and rewritten.
Old ``.pkl`` entries are never opened.

Trust: FAISS's C++ deserialiser is not hardened against crafted input, so the cache folder must
be writable only by trusted users (it matters when it is shared, e.g. over NFS for Dask).
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from compressors import Pipeline, parse_spec
from compressors.base import FaissBlob, Stage, blob_to_faiss, faiss_to_blob

from . import settings
from .files import save_npy, save_npz, write_text

log = logging.getLogger("embpress")

FORMAT = 1
#: Rows of the calibration vectors encoded to check a loaded entry.
CHECK_ROWS = 8


class CacheEntryError(ValueError):
    """A cache entry that cannot be used for the fit asked for (the reason is one line)."""


class Uncacheable(TypeError):
    """A fitted attribute of a type the cache format does not store."""


# ---------------------------------------------------------------------------- keys
@lru_cache(maxsize=1)
def code_version() -> str:
    """A hash of the compressors package's source: changed code means new fits (stages build on
    each other, e.g. BIN's rescoring copy on SQ8, so the whole package is hashed)."""
    import compressors
    h = hashlib.sha256()
    for path in sorted(Path(compressors.__file__).parent.glob("*.py")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:12]


_DIGESTS: dict[tuple, str] = {}


def calibration_digest(calib: np.ndarray, key: tuple | None = None) -> str:
    """sha256 of the calibration vectors; with a ``key`` that identifies them, hashed once per
    process for all the cells that share them."""
    if key is None:
        return hashlib.sha256(np.ascontiguousarray(calib).tobytes()).hexdigest()
    if key not in _DIGESTS:
        _DIGESTS[key] = calibration_digest(calib)
    return _DIGESTS[key]


def _meta_json(meta: dict | None) -> str:
    return json.dumps(meta or {}, sort_keys=True, default=str)


def fit_cache_path(pipe: Pipeline, calib: np.ndarray, calib_key: tuple | None = None,
                   meta: dict | None = None) -> Path:
    """The ``.npz`` of the entry (its sidecar is the same path with ``.json``)."""
    h = hashlib.sha256(calibration_digest(calib, calib_key).encode())
    h.update(f"{tuple(calib.shape)}|{pipe.to_spec()}|{code_version()}|{_meta_json(meta)}".encode())
    return settings.cache_dir() / "fitted" / f"{h.hexdigest()[:24]}.npz"


# ---------------------------------------------------------------------------- classes
def _private_stages() -> dict[str, type[Stage]]:
    """Unregistered helper stages that registered ones nest (the fixed allow-list)."""
    from compressors.hybrid import SignMeans
    return {"hybrid.SignMeans": SignMeans}


def _classes() -> dict[str, type[Stage]]:
    from compressors import stage_classes
    return {**{c.spec_format: c for c in stage_classes()}, **_private_stages()}


def _class_key(cls: type) -> str:
    for key, known in _classes().items():
        if known is cls:
            return key
    raise Uncacheable(f"stage class {cls.__name__} is neither registered nor on the allow-list")


# ---------------------------------------------------------------------------- writing
_SCALARS = (type(None), bool, int, float, str)


def _encode_value(value: Any, key: str, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    if isinstance(value, _SCALARS):
        return {"json": value}
    if isinstance(value, np.generic) and value.dtype.kind in "biuf":
        return {"scalar": value.item(), "dtype": value.dtype.str}
    if isinstance(value, (list, tuple)) and all(isinstance(v, _SCALARS) for v in value):
        return {"json": list(value), "tuple": isinstance(value, tuple)}
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise Uncacheable(f"{key}: object arrays are not stored")
        arrays[key] = value
        return {"array": key}
    if isinstance(value, Stage):
        return {"stage": encode_stage(value, key, arrays)}
    blob = faiss_to_blob(value)
    if isinstance(blob, FaissBlob):
        arrays[key] = blob.data
        return {"faiss": blob.kind, "array": key}
    import scipy.sparse as sp
    if sp.issparse(value) and value.format == "csr":
        for part in ("data", "indices", "indptr"):
            arrays[f"{key}.{part}"] = getattr(value, part)
        return {"csr": key, "shape": list(value.shape)}
    raise Uncacheable(f"{key}: a {type(value).__name__} is not stored by the fit cache")


def encode_stage(stage: Stage, prefix: str, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    params = stage.get_params()
    state = {name: _encode_value(v, f"{prefix}.{name}", arrays)
             for name, v in vars(stage).items() if name not in params}
    return {"class": _class_key(type(stage)), "params": params, "state": state}


def encode_pipeline(pipe: Pipeline) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    arrays: dict[str, np.ndarray] = {}
    doc = {"format": FORMAT, "spec": pipe.to_spec(), "dim": pipe.dim,
           "stages": [encode_stage(s, f"s{i}", arrays) for i, s in enumerate(pipe.stages)]}
    return doc, arrays


# ---------------------------------------------------------------------------- reading
def _decode_value(enc: Any, z) -> Any:
    if not isinstance(enc, dict):
        raise CacheEntryError(f"malformed attribute {enc!r}")
    if "json" in enc:
        return tuple(enc["json"]) if enc.get("tuple") else enc["json"]
    if "scalar" in enc:
        dtype = np.dtype(str(enc.get("dtype")))
        if dtype.kind not in "biuf":
            raise CacheEntryError(f"scalar of dtype {dtype} is not a number")
        return dtype.type(enc["scalar"])
    if "stage" in enc:
        return decode_stage(enc["stage"], z)
    if "faiss" in enc:
        if enc["faiss"] not in ("index", "binary", "transform"):
            raise CacheEntryError(f"unknown FAISS object kind {enc['faiss']!r}")
        return blob_to_faiss(FaissBlob(enc["faiss"], np.ascontiguousarray(z[enc["array"]], dtype=np.uint8)))
    if "csr" in enc:
        import scipy.sparse as sp
        k = enc["csr"]
        return sp.csr_matrix((z[f"{k}.data"], z[f"{k}.indices"], z[f"{k}.indptr"]), shape=tuple(enc["shape"]))
    if "array" in enc:
        return z[enc["array"]]
    raise CacheEntryError(f"malformed attribute {enc!r}")


def _set_state(stage: Stage, state: dict[str, Any], z) -> None:
    params = set(stage.get_params())
    for name, enc in state.items():
        if not name.isidentifier() or name.startswith("__") or name in params:
            raise CacheEntryError(f"attribute name {name!r} is not a fitted attribute")
        setattr(stage, name, _decode_value(enc, z))


def decode_stage(doc: dict[str, Any], z, into: Stage | None = None) -> Stage:
    """A stage rebuilt from the registry (or the allow-list); ``into``: the stage parsed from the
    spec, which the stored class and parameters must match."""
    cls = _classes().get(doc.get("class"))
    if cls is None:
        raise CacheEntryError(f"stage class {doc.get('class')!r} is not a known stage")
    if not isinstance(doc.get("params"), dict) or set(doc["params"]) - set(cls.param_defaults()):
        raise CacheEntryError(f"parameters {doc.get('params')!r} do not fit {cls.__name__}")
    stage = cls(**doc["params"]) if into is None else into
    if type(stage) is not cls or stage.get_params() != cls(**doc["params"]).get_params():
        raise CacheEntryError(f"stored stage {cls.__name__}{doc['params']} is not {stage.to_spec()}")
    _set_state(stage, doc.get("state") or {}, z)
    return stage


def decode_pipeline(doc: dict[str, Any], z, spec: str) -> Pipeline:
    if doc.get("format") != FORMAT:
        raise CacheEntryError(f"format {doc.get('format')!r}, expected {FORMAT}")
    if doc.get("spec") != spec:
        raise CacheEntryError(f"the entry holds {doc.get('spec')!r}, not {spec!r}")
    pipe = parse_spec(spec)
    if len(doc.get("stages") or []) != len(pipe.stages):
        raise CacheEntryError(f"{len(doc.get('stages') or [])} stored stages for {len(pipe.stages)}")
    for stage, sdoc in zip(pipe.stages, doc["stages"]):
        decode_stage(sdoc, z, into=stage)
    pipe.dim = doc.get("dim")
    return pipe


# ---------------------------------------------------------------------------- entries
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _expected(pipe: Pipeline, calib: np.ndarray, calib_key, meta) -> dict[str, Any]:
    return {"format": FORMAT, "spec": pipe.to_spec(), "calibration_digest": calibration_digest(calib, calib_key),
            "calibration_shape": list(calib.shape), "meta": json.loads(_meta_json(meta)),
            "code_version": code_version()}


def _check_entry(pipe: Pipeline, calib: np.ndarray) -> None:
    """A loaded fit must take the calibration width and encode to the declared uint8 width."""
    if pipe.dim != calib.shape[1]:
        raise CacheEntryError(f"fitted on {pipe.dim}-d vectors, the calibration is {calib.shape[1]}-d")
    codes = pipe.encode(calib[:CHECK_ROWS])
    want = (min(CHECK_ROWS, len(calib)), pipe.bytes_per_vector(calib.shape[1]))
    if codes.dtype != np.uint8 or codes.shape != want:
        raise CacheEntryError(f"codes {codes.dtype}{codes.shape} instead of uint8{want}")


def load_entry(path: Path, expected: dict[str, Any], calib: np.ndarray) -> tuple[Pipeline, float, str]:
    """(the cached fit at ``path``, its fit seconds, its arrays' sha256) if it is exactly the one
    expected; CacheEntryError (or an OSError / ValueError from a torn file) otherwise."""
    side = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
    if not isinstance(side, dict):
        raise CacheEntryError("the sidecar is not a JSON object")
    for key, want in expected.items():
        if side.get(key) != want:
            raise CacheEntryError(f"{key} is {side.get(key)!r}, expected {want!r}")
    sha = _sha256(path)
    if side.get("npz_sha256") != sha:
        raise CacheEntryError("the arrays file does not match its sidecar's checksum")
    with np.load(path, allow_pickle=False) as z:
        doc = json.loads(str(z["__pipeline__"]))
        pipe = decode_pipeline(doc, z, expected["spec"])
    _check_entry(pipe, calib)
    return pipe, float(side["fit_s"]), sha


def save_entry(path: Path, pipe: Pipeline, expected: dict[str, Any], fit_s: float, n_train: int) -> str:
    """Write the arrays, then the sidecar (each atomically; the sidecar names the arrays' checksum,
    which is returned)."""
    doc, arrays = encode_pipeline(pipe)
    save_npz(path, {"__pipeline__": np.asarray(json.dumps(doc)), **arrays})
    side = {**expected, "fit_s": fit_s, "n_train": n_train, "npz_sha256": _sha256(path),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_text(path.with_suffix(".json"), json.dumps(side, indent=1))
    return side["npz_sha256"]


def fit_pipeline(pipe: Pipeline, calib: np.ndarray, use_cache: bool = True, calib_key: tuple | None = None,
                 meta: dict | None = None) -> tuple[Pipeline, float, bool]:
    """Fit (or load the same fit from the cache); returns (pipeline, fit seconds, from_cache).

    ``meta`` (JSON-able) is part of the key and recorded in the sidecar, e.g. the cross-fitting
    protocol and fold. Only stages that fit anything are cached."""
    return fit_pipeline_entry(pipe, calib, use_cache, calib_key, meta)[:3]


def fit_pipeline_entry(pipe: Pipeline, calib: np.ndarray, use_cache: bool = True, calib_key: tuple | None = None,
                       meta: dict | None = None) -> tuple[Pipeline, float, bool, str | None]:
    """:func:`fit_pipeline`, and the sha256 of the cache entry's arrays (None when not cached):
    what :func:`encode_cached` keys the fit's codes on."""
    path = None
    if use_cache and any(s.needs_fit for s in pipe.stages):
        path = fit_cache_path(pipe, calib, calib_key, meta)
        expected = _expected(pipe, calib, calib_key, meta)
        if path.is_file() or path.with_suffix(".json").is_file():
            try:
                loaded, fit_s, sha = load_entry(path, expected, calib)
                return loaded, fit_s, True, sha
            except Exception as exc:  # noqa: BLE001 - any unusable entry is refitted and rewritten
                log.warning(f"fit cache: refitting {expected['spec']}: entry {path.name} is unusable "
                            f"({type(exc).__name__}: {str(exc)[:200]})")
    t0 = time.perf_counter()
    pipe.fit(calib)
    fit_s = time.perf_counter() - t0
    entry = None
    if path is not None:
        try:
            entry = save_entry(path, pipe, expected, fit_s, int(pipe.n_train or len(calib)))
        except (OSError, Uncacheable, ValueError) as exc:
            log.warning(f"fit cache: {expected['spec']} not cached at {path.parent} ({type(exc).__name__}: {exc}); "
                        "the fit is used as it is")
    return pipe, fit_s, False, entry


# ---------------------------------------------------------------------------- codes of a cached fit
#: Encodes faster than this are not worth a file: only the codes of slow encoders (residual,
#: local-search and product quantizers, ...) are kept.
CODES_MIN_S = 0.02


def codes_path(entry: str, X: np.ndarray, key: tuple | None = None) -> Path:
    """Where the codes of ``X`` by the cached fit whose arrays hash to ``entry`` are kept (``key``
    identifies ``X``, as for :func:`calibration_digest`: hashed once per process)."""
    h = hashlib.sha256(f"{entry}|{X.shape}|{X.dtype}|{calibration_digest(X, key)}".encode())
    return settings.cache_dir() / "fitted" / f"{h.hexdigest()[:32]}.codes.npy"


def encode_cached(pipe: Pipeline, X: np.ndarray, entry: str | None,
                  key: tuple | None = None) -> tuple[np.ndarray, float | None]:
    """(codes of ``X``, encode seconds); the seconds are None when the codes were read from the
    cache. Encoding is deterministic given the fit and the vectors, so a cached fit's (``entry``,
    from :func:`fit_pipeline_entry`) codes of the same vectors are kept when the encode took at
    least ``CODES_MIN_S`` and read back (``allow_pickle=False``, shape and dtype checked) instead of
    re-encoding; an unreadable or wrong file is re-encoded and rewritten."""
    path = codes_path(entry, X, key) if entry is not None else None
    if path is not None and path.is_file():
        try:
            codes = np.load(path, allow_pickle=False)
            if codes.dtype == np.uint8 and codes.shape == (len(X), pipe.bytes_per_vector(X.shape[1])):
                return codes, None
            log.warning(f"fit cache: codes {path.name} are {codes.dtype}{codes.shape}; re-encoding")
        except (OSError, ValueError) as exc:
            log.warning(f"fit cache: codes {path.name} unreadable ({type(exc).__name__}); re-encoding")
    t0 = time.perf_counter()
    codes = pipe.encode(X)
    seconds = time.perf_counter() - t0
    if path is not None and seconds >= CODES_MIN_S:
        try:
            save_npy(path, codes)
        except OSError as exc:
            log.warning(f"fit cache: codes not kept at {path.parent} ({exc})")
    return codes, seconds


def read_sidecars(folder: Path | None = None) -> list[dict[str, Any]]:
    """Every readable sidecar in the cache (e.g. for a scheduler's fit-time estimates)."""
    folder = folder or settings.cache_dir() / "fitted"
    out = []
    for p in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            side = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(side, dict):
            out.append(side)
    return out


#: Reserved per-query keys under which a grid worker hands its fitted pipeline to the runner's
#: timing pass (``embpress.timing``).
FITTED_PREFIX = "fitted."


# ---------------------------------------------------------------------------- worker → runner hand-off
def pack_fitted(pipe, codes: np.ndarray) -> dict[str, np.ndarray]:
    """The fitted pipeline and its codes of every stored vector, as per-query-style arrays (no
    pickle: ``embpress.fitcache``'s format)."""
    doc, arrays = encode_pipeline(pipe)
    out = {FITTED_PREFIX + k: v for k, v in arrays.items()}
    out[FITTED_PREFIX + "__pipeline__"] = np.asarray(json.dumps(doc))
    out[FITTED_PREFIX + "__codes__"] = np.asarray(codes)
    return out


def split_fitted(per_query: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(per-query arrays, fitted-pipeline arrays) of what a worker returned."""
    fitted = {k[len(FITTED_PREFIX):]: v for k, v in per_query.items() if k.startswith(FITTED_PREFIX)}
    rest = {k: v for k, v in per_query.items() if not k.startswith(FITTED_PREFIX)}
    return rest, fitted


def load_fitted(path: Path, spec: str):
    """(pipeline, codes) a grid worker handed back, rebuilt from the registry (never unpickled)."""
    with np.load(path, allow_pickle=False) as z:
        doc = json.loads(str(z["__pipeline__"]))
        return decode_pipeline(doc, z, spec), np.ascontiguousarray(z["__codes__"])
