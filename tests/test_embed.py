import json

import numpy as np
import pytest

from embpress import embed as E
from embpress.data import load_dataset
from embpress.errors import EmbpressError

pytestmark = pytest.mark.integration   # the real model


def test_second_embedding_does_zero_encoder_calls(minilm):
    ds = load_dataset("scifact", max_queries=5, max_docs=30)
    before = dict(E.STATS)
    first = E.embed_dataset(minilm, ds, progress=False)
    mid = dict(E.STATS)
    assert mid["texts_encoded"] - before["texts_encoded"] == len(ds.corpus_ids) + len(ds.query_ids)
    second = E.embed_dataset(minilm, ds, progress=False)
    assert E.STATS == mid, "a cached dataset must not reach the encoder"
    for part in first:
        assert isinstance(second[part], np.memmap)
        np.testing.assert_array_equal(first[part], second[part])


def test_embeddings_are_real_normalised_float32(scifact_sample, minilm):
    ds, vecs = scifact_sample
    c = np.asarray(vecs["corpus"])
    assert c.dtype == np.float32 and c.shape == (len(ds.corpus_ids), 384)
    np.testing.assert_allclose(np.linalg.norm(c, axis=1), 1.0, atol=1e-4)
    # a claim is closer to the abstract it cites than to a random abstract
    q = np.asarray(vecs["queries"])
    idx = {d: i for i, d in enumerate(ds.corpus_ids)}
    qid = ds.query_ids[0]
    rel = idx[next(iter(ds.qrels[qid]))]
    sims = c @ q[0]
    assert sims[rel] > np.median(sims)


def test_manifest_records_provenance(scifact_sample, minilm):
    ds, _ = scifact_sample
    key = E.cache_key(minilm, "scifact", "test", "corpus", ds.corpus_texts)
    npy, manifest_path = E.entry_paths(key)
    m = json.loads(manifest_path.read_text())
    assert m["ids"] == ds.corpus_ids and m["shape"] == [len(ds.corpus_ids), 384]
    assert m["key"]["weights_sha256"] == minilm.weights_sha256 and m["key"]["max_seq_length"] == 256
    assert m["key"]["normalize"] is True and m["seconds"] > 0 and m["texts_per_s"] > 0
    assert {"torch", "sentence-transformers", "numpy"} <= set(m["versions"])


def test_cache_key_separates_settings(minilm):
    texts = ["a", "b"]
    k1 = E.cache_key(minilm, "d", "test", "corpus", texts)
    assert k1["id"] != E.cache_key(minilm, "d", "test", "corpus", ["a", "c"])["id"]
    assert k1["id"] != E.cache_key(minilm, "d", "test", "corpus", texts, prompt="query: ")["id"]
    assert k1["id"] != E.cache_key(minilm, "d", "dev", "corpus", texts)["id"]


def test_corrupt_cache_file_is_reported(minilm):
    texts, ids = ["corruption test one", "corruption test two"], ["1", "2"]
    for path in E.entry_paths(E.cache_key(minilm, "corrupt", "test", "corpus", texts)):
        path.unlink(missing_ok=True)
    E.embed(minilm, "corrupt", "test", "corpus", texts, ids, progress=False)
    npy, _ = E.entry_paths(E.cache_key(minilm, "corrupt", "test", "corpus", texts))
    raw = bytearray(npy.read_bytes())
    raw[-1] ^= 0xFF
    npy.write_bytes(bytes(raw))
    with pytest.raises(EmbpressError, match="corrupt"):
        E.embed(minilm, "corrupt", "test", "corpus", texts, ids, progress=False)
