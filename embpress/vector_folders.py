"""Bring your own vectors: a folder of ``.npy`` embeddings a user already has, benchmarked without
an encoder (``embpress run -d PATH``).

* retrieval: ``corpus.npy`` and ``queries.npy`` (+ ``qrels.tsv`` with query-id, corpus-id, score and
  optional ``corpus_ids.txt`` / ``query_ids.txt``, one id per line; row numbers otherwise);
* neighbour fidelity only: ``corpus.npy`` alone (a seeded held-out sample of the corpus serves as
  queries), or corpus and queries without ``qrels.tsv``;
* sts: ``sentences1.npy``, ``sentences2.npy`` and ``scores.npy``.

Every file is checked before any work (shapes, finiteness, unique ids, qrels that name known ids,
gold scores that vary); each refusal is one line.
"""
from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import EmbpressError
from .validate import check_gold, check_qrels, check_unique


@dataclass
class VectorDataset:
    """Embeddings a user already has, from a folder of ``.npy`` files (no encoder involved).

    * retrieval: ``corpus.npy`` and ``queries.npy`` (+ ``qrels.tsv`` with query-id, corpus-id, score
      and optional ``corpus_ids.txt`` / ``query_ids.txt``, one id per line; row numbers otherwise);
    * neighbour fidelity only: ``corpus.npy`` alone, or without ``qrels.tsv``: with no queries, a
      seeded held-out sample of the corpus serves as queries;
    * sts: ``sentences1.npy``, ``sentences2.npy`` and ``scores.npy``.
    """
    path: Path
    task: str
    vectors: dict[str, np.ndarray]
    corpus_ids: list[str] = field(default_factory=list)
    query_ids: list[str] = field(default_factory=list)
    qrels: dict[str, dict[str, int]] | None = None
    scores: np.ndarray | None = None
    location: str = ""
    sample: dict[str, int] = field(default_factory=dict)
    held_out: int = 0

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def revision(self) -> str:
        h = hashlib.sha256()
        for part in sorted(self.vectors):
            h.update(part.encode())
            h.update(np.ascontiguousarray(self.vectors[part]).tobytes())
        return h.hexdigest()[:12]

    def summary(self) -> dict[str, Any]:
        if self.scores is not None:
            return {"pairs": len(self.scores)}
        out = {"documents": len(self.corpus_ids), "queries": len(self.query_ids)}
        if self.held_out:
            out["held_out_queries"] = self.held_out
        return out


HELD_OUT_QUERIES = 1000


def is_vector_folder(name: str) -> bool:
    p = Path(name)
    return p.is_dir() and ((p / "corpus.npy").is_file() or (p / "sentences1.npy").is_file())


def _read_ids(path: Path, n: int, what: str) -> list[str]:
    if not path.is_file():
        return [str(i) for i in range(n)]
    ids = [l.strip() for l in path.read_text().splitlines() if l.strip()]
    if len(ids) != n:
        raise EmbpressError(f"{path}: {len(ids)} ids for {n} {what} vectors")
    return ids


def load_npy(path: Path) -> np.ndarray:
    try:
        arr = np.load(path, mmap_mode="r")
    except (ValueError, OSError) as exc:
        raise EmbpressError(f"{path} is not a readable .npy file ({exc})") from None
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.floating):
        raise EmbpressError(f"{path}: expected a 2-d float array, got {arr.dtype}{arr.shape}")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise EmbpressError(f"{path}: {arr.shape[0]} vectors of {arr.shape[1]} dimensions; "
                            "at least one vector of at least one dimension is needed")
    arr = np.asarray(arr, dtype=np.float32) if arr.dtype != np.float32 else arr
    if not np.isfinite(arr).all():
        raise EmbpressError(f"{path} contains NaN or infinite values")
    return arr


def load_vector_folder(name: str, *, seed: int = 0) -> VectorDataset:
    path = Path(name).resolve()
    if (path / "sentences1.npy").is_file():
        a, b = load_npy(path / "sentences1.npy"), load_npy(path / "sentences2.npy")
        try:
            scores = np.load(path / "scores.npy").astype(np.float64).ravel()
        except (OSError, ValueError) as exc:
            raise EmbpressError(f"{path}: sts folders need scores.npy ({exc})") from None
        if not (len(a) == len(b) == len(scores)) or a.shape[1] != b.shape[1]:
            raise EmbpressError(f"{path}: sentences1 {a.shape}, sentences2 {b.shape} and scores "
                                f"{scores.shape} do not line up")
        check_gold(scores, f"{path}")
        return VectorDataset(path, "sts", {"sentences1": a, "sentences2": b}, scores=scores,
                             location=f"folder:{path}")
    corpus = load_npy(path / "corpus.npy")
    corpus_ids = _read_ids(path / "corpus_ids.txt", len(corpus), "corpus")
    check_unique(corpus_ids, "corpus", f"{path}/corpus_ids.txt")
    held_out = 0
    if (path / "queries.npy").is_file():
        queries = load_npy(path / "queries.npy")
        if queries.shape[1] != corpus.shape[1]:
            raise EmbpressError(f"{path}: queries are {queries.shape[1]}-d, the corpus {corpus.shape[1]}-d")
        query_ids = _read_ids(path / "query_ids.txt", len(queries), "query")
        check_unique(query_ids, "query", f"{path}/query_ids.txt")
    else:
        if len(corpus) < 2:
            raise EmbpressError(f"{path}: without queries.npy, queries are held out of the corpus, "
                                f"which needs at least 2 vectors (has {len(corpus)})")
        held_out = min(HELD_OUT_QUERIES, max(1, len(corpus) // 10))
        pick = np.sort(np.random.default_rng(seed).choice(len(corpus), held_out, replace=False))
        keep = np.setdiff1d(np.arange(len(corpus)), pick)
        queries = np.asarray(corpus[pick])
        query_ids = [f"heldout:{corpus_ids[i]}" for i in pick]
        corpus = np.asarray(corpus[keep])
        corpus_ids = [corpus_ids[i] for i in keep]
    qrels = None
    if (path / "qrels.tsv").is_file() and not held_out:
        qrels = {}
        with open(path / "qrels.tsv", newline="") as f:
            for row in csv.reader(f, delimiter="\t"):
                if len(row) >= 3 and row[2].strip().lstrip("-").isdigit():
                    qrels.setdefault(row[0].strip(), {})[row[1].strip()] = int(row[2])
        check_qrels(qrels, query_ids, corpus_ids, f"{path}/qrels.tsv")
        if not any(r > 0 for judged in qrels.values() for r in judged.values()):
            raise EmbpressError(f"{path}/qrels.tsv judges no document relevant (every score <= 0)")
    task = "retrieval" if qrels else "neighbours"
    if qrels:
        order = [i for i, q in enumerate(query_ids) if q in qrels]
        queries, query_ids = np.asarray(queries[order]), [query_ids[i] for i in order]
    return VectorDataset(path, task, {"corpus": corpus, "queries": queries}, corpus_ids, query_ids, qrels,
                         location=f"folder:{path}", held_out=held_out)
