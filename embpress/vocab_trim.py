"""Vocabulary trimming: keep only the token-embedding rows a deployment can know in advance.

``<model>@trim-<dataset>`` keeps the tokens of the texts a deployment of that dataset has before
any query arrives:

* a retrieval dataset: the corpus it indexes (the whole test-card corpus) plus its training-split
  queries (``qrels/train.tsv``); never its test queries;
* an STS dataset: its training split's sentences (both sides); never the test pairs.

``trim-<dataset>-<N>`` keeps, of those, the N most frequent tokens (a stated vocabulary budget).
The special tokens ([PAD], [UNK], [CLS], [SEP], [MASK]) are always kept. Whole texts are counted
(the corpus beyond the model's 256-token window too).

The tokenizer itself is unchanged, so every text is segmented exactly as before; its ids are
remapped at the embedding table (the ``remap`` buffer of :func:`trimmed_embedding`): a kept id to
its row of the smaller table, any other id to [UNK]'s row. A text whose tokens are all kept is
embedded exactly as by the float32 model. What a deployment stores beyond the table is the
kept-token list (a V-bit bitmap, 3.8 kB for MiniLM); the tokenizer files are counted as for
every model. The variant's settings, and so its embedding cache key, name the dataset, the rule
and the sha256 of the texts it was trimmed on. :func:`oov_stats` says how many tokens of the
evaluated texts fall outside the kept vocabulary.
"""
from __future__ import annotations

import hashlib
import itertools
import re
from functools import lru_cache

import numpy as np

from .errors import EmbpressError

_TRIM = re.compile(r"trim-([a-z0-9_]+?)(?:-(\d+))?")


def trim_source(dataset: str) -> tuple[list[str], str]:
    """The texts a ``trim-<dataset>`` vocabulary is built from, and what they are in words."""
    from .data import load_card, load_dataset, load_training_split
    card = load_card(dataset)
    if card.task == "retrieval":
        corpus = load_dataset(dataset).corpus_texts
        try:
            train = load_training_split(dataset).query_texts
        except EmbpressError:   # no training queries: the corpus alone, and the rule says so
            return corpus, f"{dataset} corpus ({len(corpus)} documents); no training queries exist"
        return corpus + train, f"{dataset} corpus ({len(corpus)} documents) + {len(train)} training queries"
    train = load_training_split(dataset)
    return train.sentences1 + train.sentences2, f"{dataset} training sentences ({len(train.sentences1)} pairs)"


@lru_cache(maxsize=32)
def trim_variant(name: str) -> tuple[str, dict]:
    """(summary, settings) of ``trim-<dataset>[-<N>]``: the settings name the texts by their sha256."""
    m = _TRIM.fullmatch(name)
    if not m:
        raise EmbpressError(f"encoder variant {name!r}: write trim-<dataset> or trim-<dataset>-<tokens>")
    dataset, budget = m.group(1), int(m.group(2)) if m.group(2) else None
    if budget is not None and budget < 1:
        raise EmbpressError(f"encoder variant {name}: the vocabulary budget must be at least 1 token")
    texts, what = trim_source(dataset)
    digest = hashlib.sha256("\x00".join(texts).encode("utf-8")).hexdigest()
    return (f"vocabulary trimmed to the tokens of the {what}"
            + (f", the {budget} most frequent" if budget else "") + "; other tokens read as [UNK]",
            {"method": "vocab-trim", "dataset": dataset, "texts": what, "texts_sha256": digest,
             "n_texts": len(texts), "budget": budget})


def token_counts(tokenizer, texts: list[str], vocab_size: int) -> np.ndarray:
    """How often each token id occurs in ``texts`` (whole texts, no special tokens)."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    for start in range(0, len(texts), 2048):
        ids = tokenizer(texts[start:start + 2048], add_special_tokens=False, truncation=False,
                        verbose=False)["input_ids"]
        flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64)
        counts += np.bincount(flat, minlength=vocab_size)[:vocab_size]
    return counts


def kept_ids(tokenizer, texts: list[str], vocab_size: int, budget: int | None = None) -> np.ndarray:
    """Sorted ids kept: every special token, and the tokens of ``texts`` (the ``budget`` most frequent)."""
    counts = token_counts(tokenizer, texts, vocab_size)
    seen = np.flatnonzero(counts)
    if budget is not None and budget < seen.size:
        seen = seen[np.argsort(-counts[seen], kind="stable")[:budget]]
    special = [i for i in tokenizer.all_special_ids if 0 <= i < vocab_size]
    return np.union1d(seen, np.asarray(special, dtype=np.int64))


def trimmed_embedding(table, kept: np.ndarray, unk_id: int):
    """A torch Module holding only the ``kept`` rows of ``table``; other ids read [UNK]'s row."""
    import torch

    class TrimmedEmbedding(torch.nn.Module):
        def __init__(self, weight, remap):
            super().__init__()
            self.weight = torch.nn.Parameter(weight, requires_grad=False)   # K×H
            self.register_buffer("remap", remap)                              # V ids → row, int32

        def forward(self, input_ids):
            return torch.nn.functional.embedding(self.remap[input_ids].long(), self.weight)

    remap = np.full(table.shape[0], int(np.searchsorted(kept, unk_id)), dtype=np.int32)
    remap[kept] = np.arange(kept.size, dtype=np.int32)
    return TrimmedEmbedding(table.detach()[torch.from_numpy(kept)].clone(), torch.from_numpy(remap))


def trim_model(model, hf, name: str, cfg: dict) -> None:
    """Replace the token-embedding table of ``hf`` (the transformers model inside the
    sentence-transformers ``model``) by its trimmed version, in place."""
    texts, _ = trim_source(cfg["dataset"])
    if hashlib.sha256("\x00".join(texts).encode("utf-8")).hexdigest() != cfg["texts_sha256"]:
        raise EmbpressError(f"encoder variant {name}: the {cfg['dataset']} texts changed since its "
                            f"settings were read; restart to rebuild it")
    tokenizer = model.tokenizer
    table = hf.get_input_embeddings().weight
    if tokenizer.unk_token_id is None:
        raise EmbpressError(f"encoder variant {name}: the tokenizer has no [UNK] token to map unseen ones to")
    kept = kept_ids(tokenizer, texts, table.shape[0], cfg["budget"])
    hf.set_input_embeddings(trimmed_embedding(table, kept, tokenizer.unk_token_id))
    model.embpress_kept_ids = kept


def oov_stats(model, texts: list[str]) -> dict:
    """Of ``texts`` as the model reads them (its maximum length, no special tokens): the share of
    tokens outside the kept vocabulary (read as [UNK]) and of texts with at least one."""
    kept = getattr(model, "embpress_kept_ids", None)
    if kept is None:
        raise EmbpressError("oov_stats needs a model built by a trim-<dataset> variant")
    tok = model.tokenizer
    special = set(tok.all_special_ids) - {tok.unk_token_id}   # an original [UNK] counts, as kept
    ids = tok(texts, add_special_tokens=True, truncation=True, max_length=model.max_seq_length)["input_ids"]
    keep = {int(i) for i in kept}
    out_tokens, total, texts_hit = 0, 0, 0
    for row in ids:
        words = [i for i in row if i not in special]
        miss = sum(i not in keep for i in words)
        out_tokens, total, texts_hit = out_tokens + miss, total + len(words), texts_hit + (miss > 0)
    return {"oov_token_fraction": out_tokens / max(total, 1), "oov_text_fraction": texts_hit / max(len(texts), 1),
            "oov_tokens": out_tokens, "tokens": total, "kept_tokens": len(kept)}
