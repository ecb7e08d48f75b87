"""Per-query loss (which queries lose relevant documents against float32, with their texts) and
model-side compression (encoder variants' quality against their size and speed)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import EmbpressError
from ..files import load_npz
from ..runfolder import RunFolder
from ..tasks import task_of

EXAMPLES_PER_CELL = 3


@dataclass
class Texts:
    qrels: dict[str, dict[str, int]] | None = None
    queries: dict[str, str] = field(default_factory=dict)
    docs: dict[str, str] = field(default_factory=dict)
    note: str = ""


def dataset_texts(meta: dict, dataset: str) -> Texts:
    """Judgments, query texts and document titles of a run's dataset (what is available)."""
    from ..data import document_titles, load_dataset
    from ..vector_folders import is_vector_folder, load_vector_folder
    info = (meta.get("datasets") or {}).get(dataset, {})
    source = info.get("source") or dataset
    cfg = meta.get("config") or {}
    try:
        if is_vector_folder(source):
            ds = load_vector_folder(source)
            return Texts(ds.qrels, note="bring-your-own vectors: ids only, no texts")
        ds = load_dataset(source, max_queries=cfg.get("max_queries"), max_docs=cfg.get("max_docs"))
        if not task_of(ds.task).judged:
            return Texts(note=f"{dataset} is not a retrieval dataset")
        titles = document_titles(source)
        docs = {d: (titles.get(d) or t[:120]) for d, t in zip(ds.corpus_ids, ds.corpus_texts)}
        return Texts(ds.qrels, dict(zip(ds.query_ids, ds.query_texts)), docs)
    except (EmbpressError, OSError, ValueError, KeyError) as exc:
        return Texts(note=f"texts of {dataset} unavailable: {exc}")


def _pair_codes(top: np.ndarray, n_docs: int) -> np.ndarray:
    """(query, document row) of every top-k entry as one integer; padding (-1) becomes -1."""
    top = np.asarray(top, dtype=np.int64)
    return np.where(top >= 0, np.arange(len(top))[:, None] * n_docs + top, -1)


def _member(x: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """``np.isin(x, sorted_set)`` for a sorted array: one binary search per element, no sort of x."""
    if not len(sorted_set):
        return np.zeros(np.shape(x), dtype=bool)
    return sorted_set[np.minimum(np.searchsorted(sorted_set, x), len(sorted_set) - 1)] == x


def query_losses(run_dir: Path, rows: pd.DataFrame, texts: Texts) -> tuple[pd.DataFrame, dict[str, list[dict]]]:
    """Per ok cell of one (model, dataset): queries whose float32 top 10 holds a relevant document
    the compressor's top 10 lacks (and the reverse), with the worst queries as examples. Each
    (query, document) pair is one integer, so a cell is a few vectorised membership tests."""
    if texts.qrels is None or rows.empty:
        return pd.DataFrame(), {}
    first = rows.iloc[0]
    folder = RunFolder(run_dir)
    base_file = folder.baseline(first["model"], first["dataset"])
    if not base_file.is_file():
        return pd.DataFrame(), {}
    base = load_npz(base_file)
    qids, cids = [str(q) for q in base["query_ids"]], base["corpus_ids"]
    row_of = {str(c): j for j, c in enumerate(cids)}
    n = len(cids)
    rel = np.array(sorted(i * n + row_of[d] for i, q in enumerate(qids)
                          for d, r in texts.qrels.get(q, {}).items() if r > 0 and d in row_of), dtype=np.int64)
    base_codes = _pair_codes(base["top10"], n)
    base_hit = _member(base_codes, rel) & (base_codes >= 0)
    base_hit_codes = np.sort(base_codes[base_hit])
    base_ndcg = base.get("ndcg_at_10")
    summary, examples = [], {}
    for _, row in rows.iterrows():
        path = folder.cell_arrays(row["cell_id"])
        if not path.is_file():
            continue
        with np.load(path, allow_pickle=False) as z:
            pq = {k: z[k] for k in ("top10", "ndcg_at_10") if k in z.files}
        codes = _pair_codes(pq["top10"], n)
        hit = _member(codes, rel) & (codes >= 0)
        lost = base_hit & ~_member(base_codes, np.sort(codes[hit]))   # [query, rank in the float32 top 10]
        gained = hit & ~_member(codes, base_hit_codes)
        n_lost, n_gained = lost.sum(axis=1), gained.sum(axis=1)
        summary.append({"compressor": row["compressor"], "budget": row.get("budget"),
                        "bytes_per_vector": row["bytes_per_vector"], "retained_pct": row["retained_pct"],
                        "queries": len(qids), "queries_losing": int((n_lost > 0).sum()),
                        "queries_losing_pct": 100 * int((n_lost > 0).sum()) / max(len(qids), 1),
                        "queries_gaining": int((n_gained > 0).sum()),
                        "relevant_lost": int(n_lost.sum()), "relevant_gained": int(n_gained.sum()),
                        "cell_id": row["cell_id"]})
        ndcg = pq.get("ndcg_at_10")
        drop = (base_ndcg - ndcg) if base_ndcg is not None and ndcg is not None else np.zeros(len(qids))
        worst = sorted(np.flatnonzero(n_lost), key=lambda i: (-n_lost[i], -drop[i], i))
        examples[row["cell_id"]] = [{
            "query_id": qids[i], "query": texts.queries.get(qids[i], ""),
            "ndcg_f32": None if base_ndcg is None else float(base_ndcg[i]),
            "ndcg": None if ndcg is None else float(ndcg[i]),
            "lost": [(d, texts.docs.get(d, "")) for d in sorted(str(c) for c in cids[base["top10"][i][lost[i]]])],
        } for i in worst[:EXAMPLES_PER_CELL]]
    return pd.DataFrame(summary), examples


# ---------------------------------------------------------------------------- model-side compression
#: Size on disk first: pruned and shared encoders run dense, so only their stored size differs.
SIZE_COLUMNS = ("model_disk_bytes", "model_memory_bytes", "model_size_bytes", "model_params")
#: The speed-up against float32 first: timed side by side with it, so rows profiled at different
#: times (and loads) compare; texts/s only where a table has no speed-up.
SPEED_COLUMNS = ("model_speedup", "model_texts_per_s")


def model_columns(df: pd.DataFrame) -> tuple[str | None, str | None]:
    """The model-track columns of a results table: (model size, encode speed), None where absent.
    Known names first (``model_disk_bytes``, ``model_memory_bytes`` … ``model_params``; ``model_speedup``, ``model_texts_per_s``), then any
    ``model_*`` column naming a size, bytes or params, and any ``*texts_per_s*`` column."""
    def has(c):
        return c in df and pd.to_numeric(df[c], errors="coerce").notna().any()
    size = next((c for c in SIZE_COLUMNS if has(c)), None) or next(
        (c for c in df.columns if c.startswith("model_") and any(t in c for t in ("size", "bytes", "params")) and has(c)),
        None)
    speed = next((c for c in SPEED_COLUMNS if has(c)), None) or next(
        (c for c in df.columns if "texts_per_s" in c and "base" not in c and has(c)), None)
    return size, speed


def model_variants(df: pd.DataFrame, size_col: str) -> tuple[pd.DataFrame, str]:
    """The float32-embedding (``F32``) rows of every encoder, with ``ref_pct``: quality as % of the
    reference encoder's on the same dataset; the reference is the row's ``reference_model`` when the
    table has that column, else the float32 model most of the variants were built from
    (``model_base``), else the largest model. Returns (rows, the reference names)."""
    ok = df[(df.status == "ok") & (df.compressor == "F32")].copy()
    if ok.empty:
        return ok.assign(ref=None, ref_pct=np.nan), ""
    ok[size_col] = pd.to_numeric(ok[size_col], errors="coerce")
    bases = (ok.drop_duplicates("model")["model_base"].dropna() if "model_base" in ok else pd.Series(dtype=object))
    bases = bases[bases.isin(ok["model"])]
    if "reference_model" in ok and ok["reference_model"].notna().any():
        ok["ref"] = ok["reference_model"].where(ok["reference_model"].notna(), ok["model"])
    elif len(bases):
        # the float32 encoder that most of the run's variants were built from (e.g. all-MiniLM-L6-v2
        # for its bf16/int8 variants); other models in the run (a distilled student, a teacher) are
        # shown against it too
        ok["ref"] = bases.value_counts().idxmax()
    else:
        sizes = ok.groupby("model")[size_col].max()
        ok["ref"] = sizes.idxmax() if sizes.notna().any() else ok["model"].iloc[0]
    ref_quality = ok.set_index(["model", "dataset"])["quality"].to_dict()
    ok["ref_pct"] = [100 * q / ref_quality[(r, d)] if ref_quality.get((r, d)) else np.nan
                     for q, r, d in zip(ok.quality, ok.ref, ok.dataset)]
    reference = ", ".join(sorted(ok["ref"].astype(str).unique()))
    return ok, reference


