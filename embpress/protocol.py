"""The calibration protocol: what a compressor is fitted on, so that no vector is scored by a model
that saw it.

A stage that learns from data (PCA's basis, SQ's ranges, PQ/RQ/LSQ codebooks, ITQ's rotation,
RaBitQ's centre; ``Stage.learns_from_data``) can memorise a small corpus: RQ16x8's codebooks are
6.3 MB for scifact's 5,183 documents. Scored on the vectors it was fitted on, it looks far better
than it will on a deployment's unseen documents. The grid therefore *cross-fits* by default:

* the stored vectors are split into K folds (default 2) by a seeded hash of their ids (STS: of the
  pair, so both sentences of a pair are in one fold);
* fold f is encoded by a pipeline fitted on the other folds only, and searched with that pipeline
  (queries transformed by it); the K top-k lists are merged by score, after each pipeline's scores
  are put on one scale (``Pipeline.comparable_scores``: a transform's dropped per-query constant
  such as PCA's q·mean is added back, an integer score is multiplied by its step);
* STS pairs are scored with their fold's pipeline, Spearman over all pairs.

| calibration     | protocol     | fitted on                                                       |
|-----------------|--------------|-----------------------------------------------------------------|
| crossfit[:K]    | crossfit:K   | the other folds (default, K = 2)                                |
| sample:N        | crossfit:2   | N vectors drawn from the other folds                            |
| corpus          | in-sample    | the very vectors it encodes (memorises small corpora)           |
| dataset:NAME    | external     | another dataset's corpus (mixes domain shift with the protocol) |
| file:PATH.npy   | external     | a user's vectors                                                |

A pipeline with no stage that learns from data is fitted once whatever the calibration says, and its
protocol is ``oblivious``.
"""
from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from compressors import SpecError

from .data import load_card
from .errors import EmbpressError
from .vector_folders import load_npy

#: The calibration a run uses unless told otherwise.
DEFAULT_CALIBRATION = "crossfit:2"
#: Seed of the fold hash; recorded in every cross-fitted row and in the fit cache key.
FOLD_SEED = 0
MAX_FOLDS = 20
#: Protocols whose scores hold on unseen vectors: the report recommends from these rows only.
OUT_OF_SAMPLE = ("oblivious", "crossfit", "external")


@dataclass(frozen=True)
class Protocol:
    kind: str                     # "crossfit", "in-sample" or "external"
    folds: int = 1
    sample: int | None = None     # train on at most this many vectors (drawn from the other folds)
    seed: int = FOLD_SEED

    @property
    def label(self) -> str:
        return f"crossfit:{self.folds}" if self.kind == "crossfit" else self.kind


def parse_calibration(cal: str) -> Protocol:
    """The protocol a calibration string names; SpecError (one line) for anything else."""
    if cal in ("corpus", "pairs"):
        return Protocol("in-sample")
    if cal == "crossfit" or cal.startswith("crossfit:"):
        k = cal[9:] or "2"
        if not k.isdigit() or not 2 <= int(k) <= MAX_FOLDS:
            raise SpecError(f"calibration {cal!r}: crossfit:K needs 2 <= K <= {MAX_FOLDS} folds")
        return Protocol("crossfit", int(k))
    if cal.startswith("sample:"):
        n = cal[7:]
        if not n.isdigit() or int(n) < 1:
            raise SpecError(f"calibration {cal!r}: sample:N needs a whole number N >= 1")
        return Protocol("crossfit", 2, sample=int(n))
    if (cal.startswith("dataset:") and cal[8:]) or (cal.startswith("file:") and cal[5:]):
        return Protocol("external")
    raise SpecError(f"calibration {cal!r} must be crossfit[:K], sample:N, corpus, dataset:NAME[+NAME...] "
                    "or file:PATH.npy")


def check_calibration(cal: str) -> None:
    """A calibration a run can use: its string parses, its datasets have cards, its file is a
    readable float matrix; EmbpressError (one line) otherwise."""
    try:
        parse_calibration(cal)
    except SpecError as exc:
        raise EmbpressError(str(exc)) from None
    if cal.startswith("dataset:"):
        for name in cal[8:].split("+"):
            load_card(name)
    elif cal.startswith("file:"):
        load_npy(Path(cal[5:]))


def fold_of(ids: list[str], folds: int, seed: int = FOLD_SEED) -> np.ndarray:
    """Fold index (0..folds-1) of each id: a stable hash of seed and id, so a document stays in its
    fold whatever else the corpus holds (a sample, a resumed run, another machine). The last few
    id lists' folds are remembered (a worker asks for the same corpus's folds cell after cell)."""
    key = (tuple(ids), folds, seed)
    if key not in _FOLDS:
        if len(_FOLDS) >= 8:
            _FOLDS.pop(next(iter(_FOLDS)))
        out = np.empty(len(ids), dtype=np.int32)
        for i, name in enumerate(ids):
            h = hashlib.blake2b(f"{seed}|{name}".encode(), digest_size=8).digest()
            out[i] = int.from_bytes(h, "little") % folds
        out.flags.writeable = False
        _FOLDS[key] = out
    return _FOLDS[key]


_FOLDS: dict[tuple, np.ndarray] = {}


def training_rows(fold_ids: np.ndarray, fold: int, sample: int | None, seed: int = FOLD_SEED) -> np.ndarray:
    """Row indices a fold's pipeline is fitted on: every other fold, or a seeded sample of them."""
    rows = np.flatnonzero(fold_ids != fold)
    if sample is not None and sample < len(rows):
        rows = np.sort(np.random.default_rng(seed + fold).choice(rows, sample, replace=False))
    return rows


def merge_topk(parts: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-fold (scores, global ids) top-k lists into one top-k per query by score (higher
    first; ties by the smaller id, so the merge does not depend on the order of the folds).
    Padding ids (-1) never win over a real result."""
    scores = np.concatenate([np.asarray(s, dtype=np.float64) for s, _ in parts], axis=1)
    ids = np.concatenate([np.asarray(i, dtype=np.int64) for _, i in parts], axis=1)
    scores = np.where(ids < 0, -np.inf, scores)
    by_id = np.argsort(np.where(ids < 0, np.iinfo(np.int64).max, ids), axis=1, kind="stable")
    scores, ids = np.take_along_axis(scores, by_id, 1), np.take_along_axis(ids, by_id, 1)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)


def encode_folds(pipes: list, fold_ids: np.ndarray, stored: np.ndarray,
                 encode: Callable[[int, Any, np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """The codes a cross-fitted cell stores: every row encoded by its own fold's pipeline
    (``pipes[f]``), in the rows' order (one call per fold; ``encode(f, pipe, X)`` instead of
    ``pipe.encode(X)`` when given, e.g. to read the codes from the fit cache)."""
    codes: np.ndarray | None = None
    for f, pipe in enumerate(pipes):
        rows = np.flatnonzero(fold_ids == f)
        if not len(rows):
            continue
        X = np.ascontiguousarray(stored[rows], dtype=np.float32)
        part = encode(f, pipe, X) if encode is not None else pipe.encode(X)
        if codes is None:
            codes = np.empty((len(stored),) + part.shape[1:], dtype=part.dtype)
        codes[rows] = part
    if codes is None:
        raise ValueError("no fold has any rows to encode")
    return codes


def search_folds(pipes: list, fold_ids: np.ndarray, codes: np.ndarray, Q: np.ndarray, k: int,
                 times: dict[str, float] | None = None) -> np.ndarray:
    """Top-k ids over the whole corpus of a cross-fitted cell: each fold's codes (``codes`` from
    :func:`encode_folds`) searched with its own pipeline, the lists merged by scores put on one
    scale. ``times``, when given, gets the folds' build and search seconds added up
    (``build_s``, ``search_s``)."""
    parts = []
    for f, pipe in enumerate(pipes):
        rows = np.flatnonzero(fold_ids == f)
        if not len(rows):
            continue
        t0 = time.perf_counter()
        searcher = pipe.searcher(codes[rows])
        t1 = time.perf_counter()
        scores, local = searcher.search(Q, k)
        if times is not None:
            times["build_s"] = times.get("build_s", 0.0) + t1 - t0
            times["search_s"] = times.get("search_s", 0.0) + time.perf_counter() - t1
        parts.append((pipe.comparable_scores(Q, scores), np.where(local >= 0, rows[np.maximum(local, 0)], -1)))
    return merge_topk(parts, k)[1]


def similarity_folds(pipes: list, fold_ids: np.ndarray, codes: np.ndarray, n: int) -> np.ndarray:
    """STS similarity of every pair of a cross-fitted cell (``codes`` from :func:`encode_folds`:
    the first sentences, then the second ones), scored by the pipeline of the pair's fold."""
    sim = np.empty(n, dtype=np.float64)
    pair_fold = fold_ids[:n]
    for f, pipe in enumerate(pipes):
        rows = np.flatnonzero(pair_fold == f)
        if len(rows):
            sim[rows] = pipe.pair_similarity(codes[rows], codes[n + rows])
    return sim


def amortised_bytes(bytes_per_vector: int, overhead_bytes: int, n_vectors: int) -> float:
    """Bytes per vector once one pipeline's fixed state (codebooks, matrices, ranges) is shared
    by ``n_vectors`` stored vectors."""
    return bytes_per_vector + overhead_bytes / max(n_vectors, 1)


#: The deployment size ``amortised_bytes_1m`` spreads the fixed state over.
DEPLOYMENT_VECTORS = 1_000_000


def overhead_flag(bytes_per_vector: int, overhead_bytes: int, n_vectors: int) -> str | None:
    if overhead_bytes > bytes_per_vector * n_vectors:
        return ("codebooks larger than the codes: this corpus is too small to judge this setting "
                f"({overhead_bytes:,} B of fixed state for {n_vectors:,} x {bytes_per_vector} B of codes)")
    return None


def out_of_sample(df):
    """Rows whose quality holds on unseen vectors (oblivious, cross-fitted, external): what the
    report recommends from. A run from before the protocol existed has no ``protocol`` column; its
    rows are all taken (the report says they were fitted in-sample)."""
    import pandas as pd
    if "protocol" not in df:
        return pd.Series(True, index=df.index)
    kind = df["protocol"].astype("string").str.split(":").str[0]
    return kind.isin(list(OUT_OF_SAMPLE)).fillna(False).astype(bool)


def describe(df) -> str:
    """One paragraph for the top of a report: how this run's compressors were fitted."""
    if "protocol" not in df or df["protocol"].isna().all():
        return ("This run predates the calibration protocol: compressors that learn from data were fitted on "
                "the very vectors they encode and score (in-sample), which flatters trained codecs on small "
                "corpora.")
    counts = df["protocol"].value_counts()
    parts = ", ".join(f"{n} {k}" for k, n in counts.items())
    folds = sorted({int(k.split(":")[1]) for k in counts.index if str(k).startswith("crossfit:")})
    text = (f"Protocol ({parts} cells): compressors that learn from data are cross-fitted"
            + (f" in {'/'.join(map(str, folds))} folds" if folds else "")
            + f" (folds by a seeded hash of the ids, seed {FOLD_SEED}): each fold is encoded and searched by a "
            "fit on the other folds only, so no vector is scored by a model that saw it. Oblivious compressors "
            "(nothing learned) are fitted once; external ones on another dataset's vectors.")
    if (df["protocol"] == "in-sample").any():
        text += (" In-sample cells (fitted on the vectors they score) are shown only to measure how much a "
                 "small corpus flatters trained codecs; they are never recommended.")
    return text
