"""Model-side compression: encoder variants (bf16, fp16, int8) and a distilled student, for real."""
import json

import numpy as np
import pytest

from embpress import embed as E
from embpress.data import load_dataset
from embpress.encoders import VARIANTS, agreement, footprint, variant_names
from embpress.errors import EmbpressError
from embpress.models import base_entry, load_encoder, model_info, resolve_model
from embpress.profiles import variant_profile

pytestmark = pytest.mark.integration   # the real model and its compressed variants

TEXTS = ["A man is playing a guitar.", "Someone plays the guitar.", "The stock market fell sharply.",
         "Vitamin D deficiency is associated with higher mortality in elderly patients."]
#: How close each variant's embeddings stay to float32 on TEXTS (cosine); measured 0.946..1.0 here.
MIN_COSINE = {"bf16": 0.999, "fp16": 0.999, "int8-dynamic": 0.85, "int8-dynamic-channel": 0.93,
              "int8-torchao": 0.99}


@pytest.fixture(scope="module")
def fp32_vectors(minilm):
    return np.asarray(load_encoder(minilm).encode(TEXTS), dtype=np.float32)


def test_variant_names_resolve():
    e = resolve_model("minilm@int8-dynamic")
    assert e.name == "all-MiniLM-L6-v2@int8-dynamic" and e.variant == "int8-dynamic" and e.dim == 384
    assert resolve_model("all-MiniLM-L6-v2@FP32") == resolve_model("all-MiniLM-L6-v2")
    assert base_entry(resolve_model("mpnet@bf16")) == resolve_model("all-mpnet-base-v2")
    with pytest.raises(EmbpressError, match="unknown encoder variant 'int3'.*int8-dynamic"):
        resolve_model("minilm@int3")
    with pytest.raises(EmbpressError, match="two variants"):
        resolve_model("minilm@bf16@fp16")
    assert set(variant_names()) == {"fp32", *VARIANTS}


def test_fp32_cache_key_is_unchanged_and_variants_are_kept_apart(minilm):
    ds = load_dataset("stsbenchmark")
    keys = {v: E.cache_key(model_info(resolve_model(f"minilm@{v}")), "stsbenchmark", "test", "sentences1",
                           ds.sentences1) for v in variant_names()}
    # the id of the float32 embeddings cached before variants existed (scifact/nfcorpus/sts caches rely on it)
    assert keys["fp32"]["id"] == "1aa0e0b780f457e8" and "variant" not in keys["fp32"]
    assert len({k["id"] for k in keys.values()}) == len(keys)
    assert len({E.entry_paths(k)[0].parent for k in keys.values()}) == len(keys)
    assert keys["int8-dynamic-channel"]["variant"]["qscheme"] == "per_channel_affine"


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variant_loads_offline_encodes_and_shrinks(variant, minilm, fp32_vectors):
    info = model_info(resolve_model(f"all-MiniLM-L6-v2@{variant}"))
    assert info.path == minilm.path and info.as_dict()["variant_settings"]["variant"] == variant
    model = load_encoder(info)
    v = np.asarray(model.encode(TEXTS), dtype=np.float32)
    assert v.shape == (len(TEXTS), 384) and np.isfinite(v).all()
    agree = agreement(v, fp32_vectors)
    assert MIN_COSINE[variant] <= agree["model_cosine_min"] <= agree["model_cosine_mean"] < 1.0 + 1e-6
    assert v[0] @ v[1] > v[0] @ v[2] + 0.3  # still an embedding model
    size, ref = footprint(model, info.path), footprint(load_encoder(minilm), minilm.path)
    assert size["model_params"] == ref["model_params"] == 22_713_216
    assert size["model_memory_bytes"] < 0.7 * ref["model_memory_bytes"]
    assert size["model_disk_bytes"] < 0.7 * ref["model_disk_bytes"]
    assert ref["model_disk_bytes"] > minilm.path.joinpath("model.safetensors").stat().st_size


def test_variant_embeddings_are_cached_under_their_own_name(minilm):
    info = model_info(resolve_model("minilm@int8-dynamic-channel"))
    texts, ids = TEXTS[:3], ["a", "b", "c"]
    first = E.embed(info, "variant-cache", "test", "texts", texts, ids, progress=False)
    stats = dict(E.STATS)
    again = E.embed(info, "variant-cache", "test", "texts", texts, ids, progress=False)
    assert E.STATS == stats
    np.testing.assert_array_equal(first, again)
    npy, manifest = E.entry_paths(E.cache_key(info, "variant-cache", "test", "texts", texts))
    assert "all-MiniLM-L6-v2@int8-dynamic-channel" in npy.parts
    assert json.loads(manifest.read_text())["model"]["variant"] == "int8-dynamic-channel"
    plain = E.embed(minilm, "variant-cache", "test", "texts", texts, ids, progress=False)
    assert not np.array_equal(plain, first)


def test_variant_profile_measures_size_speed_and_agreement():
    info = model_info(resolve_model("minilm@bf16"))
    prof = variant_profile(info, TEXTS * 4, batch_size=8, repeats=1, use_cache=False)
    assert prof["model_variant"] == "bf16" and prof["model_base"] == "all-MiniLM-L6-v2"
    assert prof["model_texts_per_s"] > 0 and prof["model_base_texts_per_s"] > 0
    assert prof["model_speedup"] == pytest.approx(prof["model_texts_per_s"] / prof["model_base_texts_per_s"])
    assert prof["model_cosine_min"] > 0.999 and prof["profile_texts"] == 16 and prof["profile_batch_size"] == 8
    assert variant_profile(info, TEXTS * 4, batch_size=8, repeats=1) == prof  # cached


def test_distillation_on_a_tiny_sample_moves_the_student_to_the_teacher():
    from embpress.distill import distill, training_texts
    per_source, dropped = training_texts()
    test_side = set(load_dataset("stsbenchmark").sentences1) | set(load_dataset("scifact").query_texts)
    assert dropped > 0 and not test_side & set().union(*per_source.values())
    r = distill(name="tiny-distilled", max_texts=48, holdout=8, steps=6, batch_size=8, lr=1e-4, head_lr=3e-3,
                init="random", progress=False)
    assert r["texts"]["train"] + r["texts"]["heldout"] == 48 and r["settings"]["steps"] == 6
    before, after = r["before"]["train"], r["after"]["train"]
    assert after["mse"] < before["mse"] and after["cosine"] > before["cosine"] + 0.01
    assert r["loss_last"] < r["loss_first"]
    info = model_info(resolve_model("tiny-distilled"))
    assert info.entry.source == "distilled" and info.max_seq_length == 256
    v = load_encoder(info).encode(TEXTS[:2])
    assert v.shape == (2, 768)
    q = model_info(resolve_model("tiny-distilled@int8-dynamic"))
    assert E.cache_key(q, "d", "t", "p", TEXTS)["id"] != E.cache_key(info, "d", "t", "p", TEXTS)["id"]


def test_untrained_distilled_model_says_how_to_make_it(monkeypatch, tmp_path):
    monkeypatch.setenv("EMBPRESS_CACHE", str(tmp_path))
    with pytest.raises(EmbpressError, match="embpress distill"):
        model_info(resolve_model("minilm-distilled"))


def test_distill_command_refuses_bad_settings_in_one_line(capsys):
    from embpress.cli import main
    assert main(["distill", "--name", "all-mpnet-base-v2"]) == 2
    assert main(["distill", "--steps", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("embpress: error:") for line in err)
