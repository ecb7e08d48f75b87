"""Dataset cards, resolution (cache → mirror → download), verification and loaders.

A card in ``datasets/<name>.toml`` says what a dataset is, where it comes from, how many
items it has and the sha256 of each file. Loading finds the files in this order:

1. the local cache (``$EMBPRESS_CACHE/datasets/<name>/``, filled by an earlier download);
2. a mirror folder (``$EMBPRESS_MIRROR/<name>/``), read in place, never copied;
3. the real download (the card's ``source.url``: a BEIR zip or the original archive) into the cache.

On first use of a folder the files' checksums are compared with the card (a stamp keyed by
path, size and modification time avoids re-hashing later), and counts are checked on every
load; any mismatch is an error, never a silently different benchmark.
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import shutil
import tarfile
import tempfile
import tomllib
import urllib.request
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from . import settings
from .errors import EmbpressError
from .validate import check_gold, check_qrels, check_unique

DOWNLOAD_TIMEOUT_S = 20


# ---------------------------------------------------------------------------- cards
@dataclass(frozen=True)
class DatasetCard:
    name: str
    task: str            # "retrieval" or "sts"
    format: str          # "beir", "stsb" or "sick"
    split: str
    license: str
    source: dict[str, Any]
    counts: dict[str, int]
    files: dict[str, dict[str, Any]]
    path: Path

    @property
    def revision(self) -> str:
        """A short content id: the hash of the card's file checksums."""
        h = hashlib.sha256("".join(f"{k}={v['sha256']};" for k, v in sorted(self.files.items())).encode())
        return h.hexdigest()[:12]


def card_names() -> list[str]:
    return sorted(p.stem for p in settings.DATASET_CARDS.glob("*.toml"))


def load_card(name: str) -> DatasetCard:
    path = settings.DATASET_CARDS / f"{name}.toml"
    if not path.is_file():
        raise EmbpressError(f"unknown dataset {name!r}; known datasets: {', '.join(card_names())}")
    try:
        raw = tomllib.loads(path.read_text())
        return DatasetCard(name=raw["name"], task=raw["task"], format=raw["format"], split=raw["split"],
                           license=raw.get("license", ""), source=raw.get("source", {}),
                           counts=raw.get("counts", {}), files=raw["files"], path=path)
    except (tomllib.TOMLDecodeError, KeyError) as exc:
        raise EmbpressError(f"dataset card {path} is malformed: {exc}") from None


# ---------------------------------------------------------------------------- files
def _candidates(folder: Path, rel: str) -> list[Path]:
    """A card file may be stored gzipped (corpus.jsonl -> corpus.jsonl.gz)."""
    return [folder / rel, folder / (rel + ".gz")]


def find_file(folder: Path, rel: str) -> Path | None:
    return next((p for p in _candidates(folder, rel) if p.is_file()), None)


def open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return open(path, "rt", encoding="utf-8", newline="")


def sha256_content(path: Path) -> tuple[str, int]:
    """sha256 and size of a file's content (decompressed for .gz), read in 1 MiB chunks."""
    h, size = hashlib.sha256(), 0
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def _has_all_files(card: DatasetCard, folder: Path) -> bool:
    return all(find_file(folder, rel) for rel in card.files)


def verify_files(card: DatasetCard, folder: Path) -> None:
    """Compare each file's content checksum with the card (stamped, so hashing happens once)."""
    stamp_path = settings.cache_dir() / "verified" / f"{card.name}.json"
    try:
        stamps = json.loads(stamp_path.read_text())
    except (OSError, ValueError):
        stamps = {}
    changed = False
    for rel, expect in card.files.items():
        path = find_file(folder, rel)
        st = path.stat()
        key = str(path.resolve())
        if stamps.get(key) == [st.st_size, st.st_mtime_ns, expect["sha256"]]:
            continue
        digest, size = sha256_content(path)
        if digest != expect["sha256"] or ("bytes" in expect and size != expect["bytes"]):
            raise EmbpressError(
                f"dataset {card.name!r}: {path} does not match its card {card.path.name} "
                f"(sha256 {digest[:12]}…, {size} bytes; expected {expect['sha256'][:12]}…, "
                f"{expect.get('bytes', '?')} bytes): a corrupt or different copy; replace it")
        stamps[key] = [st.st_size, st.st_mtime_ns, expect["sha256"]]
        changed = True
    if changed:
        stamp_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = stamp_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(stamps, indent=1))
        tmp.replace(stamp_path)


def _download(card: DatasetCard, dest: Path) -> None:
    """The real download path: fetch the card's archive over HTTP and unpack it into dest."""
    url = card.source.get("url")
    if not url:
        raise OSError("the card names no download URL")
    downloads = dest.parent / "_downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    archive = downloads / url.rsplit("/", 1)[-1]
    if not archive.is_file():
        tmp = archive.with_suffix(archive.suffix + ".part")
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as resp, open(tmp, "wb") as out:
            shutil.copyfileobj(resp, out)
        if card.source.get("md5"):
            md5 = hashlib.md5(tmp.read_bytes()).hexdigest()
            if md5 != card.source["md5"]:
                tmp.unlink()
                raise OSError(f"downloaded archive has md5 {md5}, the card expects {card.source['md5']}")
        tmp.replace(archive)
    with tempfile.TemporaryDirectory(dir=downloads) as tmpdir:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(tmpdir)
        else:
            with tarfile.open(archive) as tf:
                tf.extractall(tmpdir, filter="data")
        root = Path(tmpdir) / card.source.get("archive_root", "")
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(root, dest)


def locate(card: DatasetCard) -> tuple[Path, str]:
    """Find the dataset's folder: (path, where) with where in {"cache", "mirror", "download"}."""
    cached = settings.cache_dir() / "datasets" / card.name
    if _has_all_files(card, cached):
        return cached, "cache"
    mirror = settings.mirror_dir()
    if mirror is not None and _has_all_files(card, mirror / card.name):
        return mirror / card.name, "mirror"
    try:
        _download(card, cached)
    except (OSError, tarfile.TarError, zipfile.BadZipFile) as exc:
        reason = getattr(exc, "reason", exc)
        where = (f"the mirror {mirror} has no complete {card.name}/ folder" if mirror is not None
                 else "no mirror is set (EMBPRESS_MIRROR)")
        raise EmbpressError(
            f"dataset {card.name!r} is not in the cache ({cached}), {where}, and the download from "
            f"{card.source.get('url')} failed ({reason}); set EMBPRESS_MIRROR to a folder that holds "
            f"{card.name}/ (e.g. ../shared/datasets) or allow network access") from None
    if not _has_all_files(card, cached):
        raise EmbpressError(f"dataset {card.name!r}: the downloaded archive lacks {', '.join(card.files)}")
    return cached, "download"


# ---------------------------------------------------------------------------- datasets
@dataclass
class RetrievalDataset:
    card: DatasetCard
    corpus_ids: list[str]
    corpus_texts: list[str]
    query_ids: list[str]
    query_texts: list[str]
    qrels: dict[str, dict[str, int]]
    location: str = ""
    sample: dict[str, int] = field(default_factory=dict)

    task = "retrieval"

    @property
    def name(self) -> str:
        return self.card.name

    def summary(self) -> dict[str, Any]:
        return {"documents": len(self.corpus_ids), "queries": len(self.query_ids),
                "judgments": sum(len(v) for v in self.qrels.values())}


@dataclass
class STSDataset:
    card: DatasetCard
    sentences1: list[str]
    sentences2: list[str]
    scores: np.ndarray
    location: str = ""
    sample: dict[str, int] = field(default_factory=dict)

    task = "sts"

    @property
    def name(self) -> str:
        return self.card.name

    def summary(self) -> dict[str, Any]:
        return {"pairs": len(self.scores)}


def _corpus_text(doc: dict[str, Any]) -> str:
    """How MTEB feeds a BEIR document to a sentence-transformers model: title and text joined."""
    title = doc.get("title") or ""
    return (title + " " + doc.get("text", "")).strip() if title else doc.get("text", "").strip()


def _load_beir(card: DatasetCard, folder: Path) -> RetrievalDataset:
    qrels: dict[str, dict[str, int]] = {}
    judgments = 0
    with open_text(find_file(folder, f"qrels/{card.split}.tsv")) as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader)
        if [h.strip() for h in header[:2]] != ["query-id", "corpus-id"]:
            raise EmbpressError(f"dataset {card.name!r}: qrels header is {header}, expected query-id, corpus-id, score")
        for row in reader:
            if not row:
                continue
            qrels.setdefault(row[0].strip(), {})[row[1].strip()] = int(row[2])
            judgments += 1
    queries: dict[str, str] = {}
    with open_text(find_file(folder, "queries.jsonl")) as f:
        for line in f:
            if line.strip():
                q = json.loads(line)
                queries[str(q["_id"])] = q["text"]
    ids, texts = [], []
    with open_text(find_file(folder, "corpus.jsonl")) as f:
        for line in f:
            if line.strip():
                doc = json.loads(line)
                ids.append(str(doc["_id"]))
                texts.append(_corpus_text(doc))
    missing = [q for q in qrels if q not in queries]
    if missing:
        raise EmbpressError(f"dataset {card.name!r}: {len(missing)} qrels query ids are not in queries.jsonl")
    qids = list(qrels)
    return RetrievalDataset(card, ids, texts, qids, [queries[q] for q in qids], qrels)


def _load_stsb(card: DatasetCard, folder: Path) -> STSDataset:
    s1, s2, scores = [], [], []
    with open_text(find_file(folder, f"sts-{card.split}.csv")) as f:
        for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            if len(row) < 7:
                continue
            scores.append(float(row[4]))
            s1.append(row[5])
            s2.append(row[6])
    return STSDataset(card, s1, s2, np.asarray(scores, dtype=np.float64))


def _load_sick(card: DatasetCard, folder: Path) -> STSDataset:
    s1, s2, scores = [], [], []
    with open_text(find_file(folder, "SICK.txt")) as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        for row in reader:
            if row["SemEval_set"].strip().upper() == card.split.upper():
                s1.append(row["sentence_A"])
                s2.append(row["sentence_B"])
                scores.append(float(row["relatedness_score"]))
    return STSDataset(card, s1, s2, np.asarray(scores, dtype=np.float64))


_LOADERS = {"beir": _load_beir, "stsb": _load_stsb, "sick": _load_sick}


def _check_counts(card: DatasetCard, ds: RetrievalDataset | STSDataset) -> None:
    if isinstance(ds, RetrievalDataset):
        got = {"corpus": len(ds.corpus_ids), "queries": len(ds.query_ids),
               "judgments": sum(len(v) for v in ds.qrels.values())}
    else:
        got = {"pairs": len(ds.scores)}
    for key, expect in card.counts.items():
        if key in got and got[key] != expect:
            raise EmbpressError(f"dataset {card.name!r}: {got[key]} {key}, the card expects {expect}")


def _sample(ds, max_queries: int | None, max_docs: int | None):
    """A deterministic small slice for tests and smoke runs: the first queries (or pairs), the
    documents they judge, then the first documents of the corpus up to max_docs."""
    if isinstance(ds, STSDataset):
        if max_queries:
            n = min(max_queries, len(ds.scores))
            ds = STSDataset(ds.card, ds.sentences1[:n], ds.sentences2[:n], ds.scores[:n], ds.location,
                            {"pairs": n})
        return ds
    qids = ds.query_ids[:max_queries] if max_queries else ds.query_ids
    keep = {d for q in qids for d in ds.qrels[q]}
    index = {d: i for i, d in enumerate(ds.corpus_ids)}
    order = [index[d] for d in ds.corpus_ids if d in keep]
    if max_docs:
        extra = (i for i, d in enumerate(ds.corpus_ids) if d not in keep)
        while len(order) < max_docs:
            nxt = next(extra, None)
            if nxt is None:
                break
            order.append(nxt)
    else:
        order = list(range(len(ds.corpus_ids)))
    order.sort()
    qtext = dict(zip(ds.query_ids, ds.query_texts))
    return RetrievalDataset(ds.card, [ds.corpus_ids[i] for i in order], [ds.corpus_texts[i] for i in order],
                            list(qids), [qtext[q] for q in qids], {q: ds.qrels[q] for q in qids}, ds.location,
                            {"queries": len(qids), "documents": len(order)})


def load_dataset(name: str, *, max_queries: int | None = None, max_docs: int | None = None):
    """Load a dataset by card name, verified; optionally a deterministic sample of it."""
    card = load_card(name)
    folder, where = locate(card)
    verify_files(card, folder)
    try:
        ds = _LOADERS[card.format](card, folder)
    except (KeyError, ValueError, IndexError, json.JSONDecodeError) as exc:
        raise EmbpressError(f"dataset {name!r} in {folder} could not be parsed: {exc!r}") from None
    _check_counts(card, ds)
    ds.location = f"{where}:{folder}"
    if max_queries or max_docs:
        ds = _sample(ds, max_queries, max_docs)
    return ds


#: The file that holds each format's training split (the cards checksum only the test files).
TRAIN_FILE = {"beir": "qrels/train.tsv", "stsb": "sts-train.csv", "sick": "SICK.txt"}


def load_training_split(name: str):
    """A dataset's training split, loaded like its test split: the train queries that have
    ``qrels/train.tsv`` judgments (BEIR; the corpus is the same), STS-B ``sts-train.csv`` or SICK's
    TRAIN pairs. Not checksummed (the card covers the test files); a one-line error if it is absent."""
    card = load_card(name)
    folder, where = locate(card)
    rel = TRAIN_FILE[card.format]
    if find_file(folder, rel) is None:
        raise EmbpressError(f"dataset {name!r} has no training split in {folder} (no {rel})")
    try:
        ds = _LOADERS[card.format](replace(card, split="train"), folder)
    except (KeyError, ValueError, IndexError, json.JSONDecodeError) as exc:
        raise EmbpressError(f"the training split of {name!r} in {folder} could not be parsed: {exc!r}") from None
    ds.location = f"{where}:{folder}"
    return ds


def document_titles(name: str) -> dict[str, str]:
    """A BEIR dataset's document titles by id ("" where a document has none; ``corpus_texts``
    joins title and text, the report names documents by their titles). Empty for other formats."""
    card = load_card(name)
    if card.format != "beir":
        return {}
    folder, _ = locate(card)
    titles: dict[str, str] = {}
    with open_text(find_file(folder, "corpus.jsonl")) as f:
        for line in f:
            if line.strip():
                doc = json.loads(line)
                titles[str(doc["_id"])] = (doc.get("title") or "").strip()
    return titles


# ---------------------------------------------------------------------------- bring your own vectors
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
        if self.task == "sts":
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


def _load_npy(path: Path) -> np.ndarray:
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
        a, b = _load_npy(path / "sentences1.npy"), _load_npy(path / "sentences2.npy")
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
    corpus = _load_npy(path / "corpus.npy")
    corpus_ids = _read_ids(path / "corpus_ids.txt", len(corpus), "corpus")
    check_unique(corpus_ids, "corpus", f"{path}/corpus_ids.txt")
    held_out = 0
    if (path / "queries.npy").is_file():
        queries = _load_npy(path / "queries.npy")
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
