"""Dataset cards, resolution (cache → mirror → download), verification and loaders.

A card in ``datasets/<name>.toml`` says what a dataset is, where it comes from, how many
items it has and the sha256 of each file. Loading finds the files in this order:

1. the local cache (``$EMBPRESS_CACHE/datasets/<name>/``, filled by an earlier download);
2. a mirror folder (``$EMBPRESS_MIRROR/<name>/``), read in place, never copied;
3. the real download (the card's ``source.url``: a BEIR zip or the original archive) into the cache.

On first use of a folder the files' checksums are compared with the card (a stamp keyed by
path, size and modification time avoids re-hashing later), and counts are checked on every
load; any mismatch is an error, never a silently different benchmark. A user's own vectors
(a folder of ``.npy`` files, no texts) are :mod:`embpress.vector_folders`.
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
from .files import atomic_write, write_text

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
        write_text(stamp_path, json.dumps(stamps, indent=1))


def _download(card: DatasetCard, dest: Path) -> None:
    """The real download path: fetch the card's archive over HTTP and unpack it into dest."""
    url = card.source.get("url")
    if not url:
        raise OSError("the card names no download URL")
    downloads = dest.parent / "_downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    archive = downloads / url.rsplit("/", 1)[-1]
    if not archive.is_file():
        def fetch(tmp: Path) -> None:
            with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as resp, open(tmp, "wb") as out:
                shutil.copyfileobj(resp, out)
            md5 = hashlib.md5(tmp.read_bytes()).hexdigest() if card.source.get("md5") else None
            if md5 is not None and md5 != card.source["md5"]:
                raise OSError(f"downloaded archive has md5 {md5}, the card expects {card.source['md5']}")
        atomic_write(archive, fetch)
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


def load_split(card: DatasetCard, folder: Path) -> RetrievalDataset | STSDataset:
    """The card's split read from ``folder`` by its format's loader (no checks, no sampling)."""
    return _LOADERS[card.format](card, folder)


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
        ds = load_split(card, folder)
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
        ds = load_split(replace(card, split="train"), folder)
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
