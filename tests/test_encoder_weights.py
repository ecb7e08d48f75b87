"""Encoder variants that rewrite the weights (issue 19): magnitude pruning, weight sharing, vocabulary
trimming and a factorised token embedding, on the real all-MiniLM-L6-v2 and on small hand-made
arrays whose sizes are computed by hand."""
import math

import numpy as np
import pytest
import scipy.sparse
import torch

from embpress import embed as E
from embpress.data import load_training_split
from embpress.encoder_weights import (best_format, factorised_embedding, hf_model, huffman_bits, kmeans_1d, matrices,
                                      stored_bytes, tensor_formats)
from embpress.encoders import agreement, footprint, get_variant
from embpress.errors import EmbpressError
from embpress.models import load_encoder, model_info, resolve_model
from embpress.vocab_trim import oov_stats

TEXTS = ["A man is playing a guitar.", "Someone plays the guitar.", "The stock market fell sharply.",
         "Vitamin D deficiency is associated with higher mortality in elderly patients."]


def build(variant: str):
    info = model_info(resolve_model(f"all-MiniLM-L6-v2@{variant}"))
    return load_encoder(info), info


@pytest.fixture(scope="module")
def fp32(minilm):
    model = load_encoder(minilm)
    return model, np.asarray(model.encode(TEXTS), dtype=np.float32)


def _zeros(t) -> int:
    return int((t == 0).sum())


# ---------------------------------------------------------------------------- names and cache keys
def test_grammar_names_resolve_to_settings(mirror):   # trim-<dataset> reads the dataset
    assert get_variant("prune-emb90").settings == {"method": "magnitude-prune", "scope": "emb", "sparsity": 0.9,
                                                   "granularity": "per-matrix"}
    assert get_variant("prune-all75-global").settings["granularity"] == "global"
    dc = get_variant("prune90-share4").settings
    assert dc["bits"] == 4 and dc["prune"] == {"scope": "all", "sparsity": 0.9, "granularity": "per-matrix"}
    assert get_variant("prune-emb50-share8").settings["prune"]["scope"] == "emb"
    assert get_variant("share8").settings["prune"] is None and get_variant("factor64").settings["rank"] == 64
    trim = get_variant("trim-scifact").settings
    assert trim["dataset"] == "scifact" and "809 training queries" in trim["texts"] and len(trim["texts_sha256"]) == 64
    assert get_variant("trim-stsbenchmark-1000").settings["budget"] == 1000
    for bad, message in (("prune-emb0", "outside 1..99"), ("share1", "2..8 bits"), ("factor0", "at least 1"),
                         ("trim-nosuch", "unknown dataset"), ("prune-head50", "unknown encoder variant"),
                         ("trim-scifact-0", "at least 1 token")):
        with pytest.raises(EmbpressError, match=message):
            get_variant(bad)


def test_cache_keys_name_each_setting_and_what_a_vocabulary_was_trimmed_on(minilm):
    texts = ["a", "b"]
    names = ["prune-emb50", "prune-emb90", "prune-all90", "prune-all90-global", "share4", "prune90-share4",
             "factor64", "trim-scifact", "trim-nfcorpus", "trim-stsbenchmark", "trim-stsbenchmark-1000"]
    keys = {n: E.cache_key(model_info(resolve_model(f"minilm@{n}")), "d", "test", "p", texts) for n in names}
    assert len({k["id"] for k in keys.values()}) == len(names)
    assert E.cache_key(minilm, "d", "test", "p", texts)["id"] not in {k["id"] for k in keys.values()}
    trimmed = keys["trim-scifact"]["variant"]
    assert trimmed["dataset"] == "scifact" and trimmed["texts_sha256"] != keys["trim-nfcorpus"]["variant"]["texts_sha256"]


# ---------------------------------------------------------------------------- size accounting by hand
def test_huffman_code_length_by_hand():
    # counts 5, 2, 1, 1: code lengths 1, 2, 3, 3 → 5 + 4 + 3 + 3 bits
    assert huffman_bits([5, 2, 1, 1]) == 15
    assert huffman_bits([6, 6, 2, 1, 1]) == 32 and huffman_bits([7]) == 7 and huffman_bits([3, 3]) == 6


def test_sparse_float_matrix_sizes_by_hand():
    """10 × 100 with 300 distinct non-zeros (70 % sparse, too many values for a codebook)."""
    rng = np.random.default_rng(0)
    a = np.zeros((10, 100), dtype=np.float32)
    pos = rng.choice(1000, 300, replace=False)
    a.flat[pos] = np.arange(1, 301, dtype=np.float32)
    formats = dict((name, size) for size, name in tensor_formats(a))
    assert formats == {"dense float32": 4000, "bitmap + float32": 125 + 1200, "CSR32 + float32": 44 + 1200 + 1200,
                       "CSR16 + float32": 44 + 600 + 1200}
    assert best_format(a) == (1325, "bitmap + float32")
    csr = scipy.sparse.csr_matrix(a)           # the real arrays: 32-bit row pointers, indices and values
    assert csr.indptr.nbytes + csr.indices.nbytes + csr.data.nbytes == formats["CSR32 + float32"]
    assert np.packbits(a != 0).nbytes + a[a != 0].nbytes == formats["bitmap + float32"]


def test_shared_and_pruned_matrix_sizes_by_hand():
    """2 × 8: values 1.5 ×6, -2 ×2, 3 ×1, 7 ×1 and 6 zeros."""
    a = np.array([[1.5, 1.5, 1.5, 0, 0, 0, -2, 3], [1.5, 1.5, 1.5, 0, 0, 0, -2, 7]], dtype=np.float32)
    formats = dict((name, size) for size, name in tensor_formats(a))
    assert formats["dense float32"] == 64
    assert formats["dense 3-bit codes + codebook"] == 6 + 4 * 5           # 16 × 3 bits, 5 values with the zero
    assert formats["dense Huffman codes + codebook"] == 4 + 5 * 5         # counts 6,6,2,1,1: 32 bits
    assert formats["bitmap + 2-bit codes + codebook"] == 2 + 3 + 16       # 16 bits, 10 × 2 bits, 4 floats
    assert formats["bitmap + Huffman codes + codebook"] == 2 + 2 + 20     # counts 6,2,1,1: 16 bits
    assert formats["CSR16 + 2-bit codes + codebook"] == 12 + 20 + 19
    assert best_format(a) == (21, "bitmap + 2-bit codes + codebook")
    nz = a[a != 0]
    codes = np.searchsorted(np.unique(nz), nz)
    packed = np.packbits(((codes[:, None] >> np.arange(2)) & 1).astype(np.uint8).ravel())
    assert np.packbits(a != 0).nbytes + packed.nbytes + np.unique(nz).nbytes == 21


def test_stored_bytes_adds_up_tensors_and_counts_the_kept_token_list():
    state = {"w": torch.tensor([[1.0, 0.0], [0.0, 2.0]]), "b": torch.tensor([0.5, 0.25]),
             "emb.remap": torch.tensor([0, 2, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2], dtype=torch.int32)}
    s = stored_bytes(state)
    # w: bitmap (1 B) + two float32 values = 9 B (dense 2-bit codes would take 1 + 12);
    # b: two distinct floats, dense float32 = 8 B (1-bit codes + codebook = 9);
    # remap: 19 ids of which 3 rows are kept → a 19-bit bitmap = 3 B (16-bit ids would take 6)
    assert s["formats"] == {"w": (9, "bitmap + float32"), "b": (8, "dense float32"), "emb.remap": (3, "kept-token bitmap")}
    assert s["bytes"] == s["bytes_no_entropy"] == 20 and s["nonzero_params"] == 4


# ---------------------------------------------------------------------------- pruning
def test_embedding_table_pruning_hits_its_sparsity_and_leaves_the_rest(fp32):
    ref, ref_vecs = fp32
    model, info = build("prune-emb50")
    table, ref_table = matrices(model, "emb")[0], matrices(ref, "emb")[0]
    assert _zeros(table) == round(0.5 * table.numel())
    kept = ref_table[table != 0].abs()
    assert kept.min() >= ref_table[table == 0].abs().max()           # the largest magnitudes survive
    for w, r in zip(matrices(model, "lin"), matrices(ref, "lin")):
        assert torch.equal(w, r)
    agree = agreement(np.asarray(model.encode(TEXTS), dtype=np.float32), ref_vecs)
    assert agree["model_cosine_min"] > 0.97                         # measured 0.98 on these texts
    size, ref_size = footprint(model, info.path), footprint(ref, info.path)
    assert size["model_memory_bytes"] == ref_size["model_memory_bytes"]   # run dense: no memory saved
    pruned = _zeros(table) - _zeros(ref_table)
    assert size["model_nonzero_params"] == stored_bytes(ref.state_dict())["nonzero_params"] - pruned
    assert "bitmap + float32 ×1" in size["model_disk_format"]
    saved = table.numel() * 4 - (math.ceil(table.numel() / 8) + 4 * (table.numel() - _zeros(table)))
    assert ref_size["model_disk_bytes"] - size["model_disk_bytes"] == pytest.approx(saved, rel=0.01)


def test_all_layer_pruning_per_matrix_and_global(fp32):
    ref, _ = fp32
    model, _ = build("prune-all75")
    for w in matrices(model, "all"):
        assert _zeros(w) == round(0.75 * w.numel())
    assert all(torch.equal(a, b) for (n, a), (_, b) in zip(model.state_dict().items(), ref.state_dict().items())
               if "LayerNorm" in n or "position" in n)
    glob, _ = build("prune-all50-global")
    mats = matrices(glob, "all")
    total = sum(w.numel() for w in mats)
    assert abs(sum(_zeros(w) for w in mats) - 0.5 * total) < 1e-4 * total
    shares = [_zeros(w) / w.numel() for w in mats]
    assert max(shares) - min(shares) > 0.05                          # one threshold: matrices differ


# ---------------------------------------------------------------------------- weight sharing
def test_kmeans_1d_finds_separated_clusters():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(c, 0.01, 500) for c in (-1.0, 0.2, 3.0)]).astype(np.float32)
    centres, assign = kmeans_1d(x, 3)
    np.testing.assert_allclose(centres, [x[:500].mean(), x[500:1000].mean(), x[1000:].mean()], atol=1e-4)
    assert (np.diff(centres) > 0).all() and (assign == np.repeat([0, 1, 2], 500)).all()


def test_sharing_leaves_2_to_the_b_values_per_matrix(fp32):
    ref, ref_vecs = fp32
    model, info = build("share8")
    for w in matrices(model, "all"):
        assert len(torch.unique(w)) <= 256
    assert len(torch.unique(matrices(model, "emb")[0])) == 256
    agree = agreement(np.asarray(model.encode(TEXTS), dtype=np.float32), ref_vecs)
    assert agree["model_cosine_min"] > 0.99                         # measured 0.993
    size = footprint(model, info.path)
    assert size["model_disk_bytes"] < 0.25 * footprint(ref, info.path)["model_disk_bytes"]
    assert size["model_disk_bytes"] <= size["model_disk_bytes_no_entropy"] and "codes + codebook" in size["model_disk_format"]


def test_deep_compression_prunes_then_shares_the_survivors(minilm):
    model, info = build("prune50-share4")
    for w in matrices(model, "all"):
        assert _zeros(w) == round(0.5 * w.numel())
        assert len(torch.unique(w[w != 0])) <= 16
    assert "bitmap + " in footprint(model, info.path)["model_disk_format"]


# ---------------------------------------------------------------------------- factorised embedding
def test_svd_factors_reconstruct_a_low_rank_table_and_are_the_best_approximation():
    rng = np.random.default_rng(0)
    low = torch.from_numpy((rng.standard_normal((200, 5)) @ rng.standard_normal((5, 32))).astype(np.float32))
    f = factorised_embedding(low, 5)
    torch.testing.assert_close(f.factor @ f.projection, low, atol=1e-4, rtol=1e-4)
    ids = torch.tensor([[3, 0, 199]])
    torch.testing.assert_close(f(ids)[0], low[[3, 0, 199]], atol=1e-4, rtol=1e-4)
    full = torch.from_numpy(rng.standard_normal((200, 32)).astype(np.float32))
    s = np.linalg.svd(full.numpy().astype(np.float64), compute_uv=False)
    g = factorised_embedding(full, 8)
    err = torch.linalg.norm((g.factor @ g.projection - full).double()).item()
    assert err == pytest.approx(np.sqrt((s[8:] ** 2).sum()), rel=1e-4)   # Eckart-Young: the tail singular values


def test_factorised_model_holds_the_factors_only(fp32):
    ref, _ = fp32
    model, info = build("factor64")
    emb = hf_model(model).get_input_embeddings()
    assert tuple(emb.factor.shape) == (30522, 64) and tuple(emb.projection.shape) == (64, 384)
    size, ref_size = footprint(model, info.path), footprint(ref, info.path)
    assert ref_size["model_memory_bytes"] - size["model_memory_bytes"] == 4 * (30522 * 384 - 30522 * 64 - 64 * 384)
    assert size["model_params"] == ref_size["model_params"] - 30522 * 384 + 30522 * 64 + 64 * 384
    assert np.isfinite(model.encode(TEXTS[:2])).all()
    with pytest.raises(EmbpressError, match="not below"):
        build("factor384")


# ---------------------------------------------------------------------------- vocabulary trimming
@pytest.fixture(scope="module")
def trimmed(minilm):
    return build("trim-stsbenchmark")


def test_trimmed_table_keeps_seen_tokens_identical_and_reads_unseen_ones_as_unk(fp32, trimmed):
    ref, _ = fp32
    model, _ = trimmed
    kept, tok = model.embpress_kept_ids, model.tokenizer
    ref_table = matrices(ref, "emb")[0]
    unseen = np.setdiff1d(np.arange(ref_table.shape[0]), kept)[:50]
    assert 5_000 < len(kept) < 20_000 and set(tok.all_special_ids) <= set(kept.tolist()) and len(unseen) == 50
    ids = torch.from_numpy(np.concatenate([kept[::97], unseen]))
    out = hf_model(model).get_input_embeddings()(ids[None])[0]
    n_seen = len(kept[::97])
    assert torch.equal(out[:n_seen], ref_table[ids[:n_seen]])
    assert torch.equal(out[n_seen:], ref_table[tok.unk_token_id].expand(len(unseen), -1))
    assert model.state_dict()["0.model.embeddings.word_embeddings.weight"].shape == (len(kept), 384)


def test_trimmed_model_embeds_known_text_exactly_and_unknown_tokens_as_unk(fp32, trimmed):
    ref, _ = fp32
    model, _ = trimmed
    train = load_training_split("stsbenchmark").sentences1[:4]
    np.testing.assert_allclose(model.encode(train), ref.encode(train), atol=1e-5)
    assert oov_stats(model, train)["oov_tokens"] == 0
    text = "Vitamin D deficiency is associated with higher mortality in elderly patients."
    stats = oov_stats(model, [text])
    assert stats["oov_tokens"] > 0 and stats["oov_text_fraction"] == 1.0
    features = ref.preprocess([text])
    ids = features["input_ids"]
    keep = torch.from_numpy(np.isin(ids.numpy(), model.embpress_kept_ids))
    assert int((~keep).sum()) == stats["oov_tokens"]
    features["input_ids"] = torch.where(keep, ids, torch.full_like(ids, model.tokenizer.unk_token_id))
    with torch.no_grad():
        as_unk = ref(features)["sentence_embedding"].numpy()
    np.testing.assert_allclose(model.encode([text]), as_unk, atol=1e-5)


def test_vocabulary_budget_keeps_the_most_frequent_tokens(trimmed):
    model, _ = trimmed
    small, _ = build("trim-stsbenchmark-1000")
    kept = small.embpress_kept_ids
    assert 1000 < len(kept) <= 1005 and np.isin(kept, model.embpress_kept_ids).all()
    assert model.tokenizer.convert_tokens_to_ids("the") in kept


# ---------------------------------------------------------------------------- through the grid
def test_a_pruned_encoder_runs_through_the_grid_with_its_size_columns(tmp_path, minilm):
    import embpress
    df = embpress.run(datasets=["stsbenchmark"], models=["minilm", "minilm@prune-emb90"], compressors=["F32"],
                      max_queries=30, progress=False, out_dir=tmp_path / "run")
    rows = df.set_index("model")
    pruned, plain = rows.loc["all-MiniLM-L6-v2@prune-emb90"], rows.loc["all-MiniLM-L6-v2"]
    assert pruned["status"] == "ok" and pruned["model_variant"] == "prune-emb90"
    assert pruned["model_disk_bytes"] < 0.6 * plain["model_disk_bytes"]
    assert pruned["model_memory_bytes"] == plain["model_memory_bytes"] and 0 < pruned["model_cosine_mean"] < 1
    assert pruned["quality"] != plain["quality"]
