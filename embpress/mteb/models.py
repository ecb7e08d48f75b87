"""Any embpress compressor as an mteb 2.x model.

* ``TextEncoder``: the float32 embeddings of an embpress model (an mteb ``EncoderProtocol``). Texts
  whose embeddings embpress has cached (``remember``) are looked up, the rest are encoded by the
  sentence-transformers model through mteb's own wrapper (so prompts are resolved as it does).
* ``CompressedModel``: a pipeline fitted once, before the evaluation, on stated calibration vectors.
  ``encode`` returns what the codes decode to (STS, classification, clustering, pair
  classification, reranking); retrieval goes through ``CodecSearchIndex``, mteb's index backend,
  which encodes the documents once with the fitted pipeline and searches the codes in the codec's
  own domain (Hamming, ADC, ...) with float32 queries, as the grid does.
* the ``ModelMeta`` of a compressed model names the spec and the calibration in its experiment
  kwargs, so mteb's result cache keeps each compressor in its own folder.
"""
from __future__ import annotations

import copy
import json
from typing import Any

import numpy as np
from mteb.models import ModelMeta, SearchEncoderWrapper
from mteb.models.abs_encoder import AbsEncoder
from mteb.models.model_meta import ScoringFunction

from compressors import Pipeline

from ..models import DEFAULT_MODEL, ModelInfo, load_encoder, model_info, resolve_model


def _numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(x, dtype=np.float32)


def base_meta(info: ModelInfo, dim: int) -> ModelMeta:
    """mteb's description of an embpress model's float32 embeddings (no experiment kwargs)."""
    name = (info.entry.hf_id or f"embpress/{info.entry.name}") + (f"@{info.entry.variant}" if info.entry.variant else "")
    return ModelMeta.create_empty(overwrites=dict(
        name=name, revision=info.revision.replace(":", "-"), embed_dim=dim, max_tokens=info.max_seq_length,
        similarity_fn_name=ScoringFunction.COSINE, framework=["Sentence Transformers"], modalities=["text"],
        open_weights=True))


def _declares_prompts(info: ModelInfo) -> bool:
    """Whether the model's sentence-transformers config has prompts (then cached, prompt-less
    embeddings are not what mteb's wrapper would produce)."""
    try:
        cfg = json.loads((info.path / "config_sentence_transformers.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(cfg.get("prompts"))


class TextEncoder(AbsEncoder):
    """float32 embeddings of an embpress model for mteb, reusing embpress's embedding cache."""

    def __init__(self, model_name: str = DEFAULT_MODEL, revision: str | None = None, *,
                 device: str | None = None, **kwargs: Any) -> None:
        self.info = model_info(resolve_model(model_name))
        self.device = device or "cpu"
        self.dim = self.info.entry.dim
        self.mteb_model_meta = base_meta(self.info, self.dim)
        self._memo: dict[str, tuple[np.ndarray, int]] = {}
        self._use_memo = not _declares_prompts(self.info)
        self._shared: dict[str, Any] = {"model": None}   # the loaded model, shared with with_meta() copies
        self.stats = {"cached": 0, "encoded": 0}

    def remember(self, texts: list[str], vectors: np.ndarray) -> None:
        """Known embeddings (embpress's cache of a dataset's texts, embedded without a prompt)."""
        if len(texts) != len(vectors):
            raise ValueError(f"{len(texts)} texts, {len(vectors)} vectors")
        self.dim = vectors.shape[1]
        for i, text in enumerate(texts):
            self._memo.setdefault(text, (vectors, i))

    def _wrapper(self):
        if self._shared["model"] is None:
            from mteb.models import SentenceTransformerEncoderWrapper
            self._shared["model"] = SentenceTransformerEncoderWrapper(load_encoder(self.info, device=self.device))
        return self._shared["model"]

    def encode(self, inputs, *, task_metadata, hf_split: str, hf_subset: str, prompt_type=None,
               **kwargs: Any) -> np.ndarray:
        texts = [t for batch in inputs for t in batch["text"]]
        hits = [self._memo.get(t) if self._use_memo else None for t in texts]
        missing = [i for i, h in enumerate(hits) if h is None]
        vecs = None
        if missing:
            from datasets import Dataset
            from torch.utils.data import DataLoader
            loader = DataLoader(Dataset.from_dict({"text": [texts[i] for i in missing]}),
                                batch_size=kwargs.get("batch_size", 32))
            vecs = _numpy(self._wrapper().encode(loader, task_metadata=task_metadata, hf_split=hf_split,
                                                 hf_subset=hf_subset, prompt_type=prompt_type, **kwargs))
            self.dim = vecs.shape[1]
            if self._use_memo:   # the next spec of the same task finds them
                self.remember([texts[i] for i in missing], vecs)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for i, hit in enumerate(hits):
            if hit is not None:
                out[i] = hit[0][hit[1]]
        if vecs is not None:
            out[missing] = vecs
        self.stats["cached"] += len(texts) - len(missing)
        self.stats["encoded"] += len(missing)
        return out

    def with_meta(self, meta: ModelMeta) -> "TextEncoder":
        """The same encoder (sharing its known embeddings) under another ModelMeta."""
        other = copy.copy(self)
        other.mteb_model_meta = meta
        return other


def scoring_vectors(pipe: Pipeline, codes: np.ndarray) -> np.ndarray:
    """What the grid scores STS pairs on (``Pipeline.pair_similarity``): the decoded vectors, or the
    codec's own vectors where it scores in its own domain (``SQ8:score=raw``)."""
    own = getattr(pipe.codec, "pair_vectors", None)
    vecs = own(codes) if own is not None and not pipe.transforms else pipe.decode(codes)
    return np.ascontiguousarray(vecs, dtype=np.float32)


def strictly_decreasing(scores: np.ndarray) -> np.ndarray:
    """Scores in rank order made strictly decreasing at float32 precision (a tie drops to the next
    float32 below), so that pytrec_eval, which breaks ties by document id, keeps the codec's own
    order. float32, because pytrec_eval compares at that precision: two scores one float64 step
    apart still tie there."""
    out = np.asarray(scores, dtype=np.float32).copy()
    down = np.float32(-np.inf)
    for i in range(1, len(out)):
        if out[i] >= out[i - 1]:
            out[i] = np.nextafter(out[i - 1], down)
    return out.astype(np.float64)


class CodecSearchIndex:
    """mteb's index backend (``IndexEncoderSearchProtocol``) over a fitted pipeline's codes."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.codes: np.ndarray | None = None
        self.idxs: list[str] = []
        self.timing = {"encode_s": 0.0, "search_s": 0.0, "n_vectors": 0, "n_queries": 0}

    def add_documents(self, embeddings, idxs: list[str]) -> None:
        import time
        t0 = time.perf_counter()
        codes = self.pipeline.encode(_numpy(embeddings))
        self.timing["encode_s"] += time.perf_counter() - t0
        self.timing["n_vectors"] += len(codes)
        self.codes = codes if self.codes is None else np.concatenate([self.codes, codes])
        self.idxs.extend(idxs)

    def search(self, embeddings, top_k: int, similarity_fn=None, top_ranked=None,
               query_idx_to_id=None) -> tuple[list[list[float]], list[list[int]]]:
        import time
        if self.codes is None:
            raise ValueError("no documents indexed: call add_documents first")
        Q = _numpy(embeddings)
        t0 = time.perf_counter()
        if top_ranked is None:
            scores, ids = self.pipeline.search(self.codes, Q, min(top_k, len(self.codes)))
            rows = list(zip(scores, ids))
        else:
            position = {d: i for i, d in enumerate(self.idxs)}
            rows = []
            for qi in range(len(Q)):
                cand = np.asarray([position[d] for d in top_ranked.get(query_idx_to_id[qi], [])], dtype=np.int64)
                if len(cand) == 0:
                    rows.append((np.empty(0), np.empty(0, dtype=np.int64)))
                    continue
                s, local = self.pipeline.search(self.codes[cand], Q[qi:qi + 1], min(top_k, len(cand)))
                rows.append((s[0], local[0]))
        self.timing["search_s"] += time.perf_counter() - t0
        self.timing["n_queries"] += len(Q)
        out_scores, out_ids = [], []
        for s, i in rows:
            keep = np.asarray(i) >= 0
            out_scores.append(strictly_decreasing(np.asarray(s)[keep]).tolist())
            out_ids.append(np.asarray(i)[keep].astype(int).tolist())
        return out_scores, out_ids

    def clear(self) -> None:
        self.codes, self.idxs = None, []


def experiment_kwargs(spec: str, calibration: str, calibration_sha256: str) -> dict[str, str]:
    """What names a compressed model in mteb's result cache: the spec and its calibration."""
    return {"embpress": spec, "calibration": calibration, "calibration_sha256": calibration_sha256[:16]}


class CompressedModel(SearchEncoderWrapper):
    """A fitted embpress pipeline as an mteb model (encoder and search model in one).

    Tasks that call ``encode`` get the decoded vectors; retrieval tasks (mteb uses a model's own
    ``index``/``search`` when it has them) get the codec's compressed-domain search."""

    def __init__(self, base: TextEncoder, pipeline: Pipeline, *, calibration: str,
                 calibration_sha256: str) -> None:
        if pipeline.dim is None:
            raise ValueError("CompressedModel needs a fitted pipeline (fit it once on the calibration vectors)")
        meta = base.mteb_model_meta.model_copy(update={
            "experiment_kwargs": experiment_kwargs(pipeline.to_spec(), calibration, calibration_sha256)})
        super().__init__(base.with_meta(meta), index_backend=CodecSearchIndex(pipeline))
        self.pipeline = pipeline

    def encode(self, inputs, *, task_metadata, hf_split: str, hf_subset: str, prompt_type=None,
               **kwargs: Any) -> np.ndarray:
        X = self.model.encode(inputs, task_metadata=task_metadata, hf_split=hf_split, hf_subset=hf_subset,
                              prompt_type=prompt_type, **kwargs)
        return scoring_vectors(self.pipeline, self.pipeline.encode(X))

    def _sort_full_corpus_results(self, *, sub_corpus_ids, **kwargs):
        # mteb passes the corpus's lazy ``Dataset["id"]`` column and indexes it once per result
        # (about 0.1 ms each with datasets 5: ~30 s for 300 queries × 1,000 results); a list is
        # the same ids, looked up in nanoseconds.
        return super()._sort_full_corpus_results(sub_corpus_ids=list(sub_corpus_ids), **kwargs)
