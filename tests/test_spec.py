"""The spec grammar round-trips: string -> pipeline -> string, and pipeline -> string -> pipeline."""
from hypothesis import given, settings
from hypothesis import strategies as st

from compressors import parse_spec, stage_classes
from compressors import Pipeline
from compressors.registry import get_stage_class

CANONICAL = ["F32", "F16", "SQ8", "SQ4:pct=0.5", "BIN", "PCA128", "PCA128,SQ8", "PQ16x8", "PQ8x4:seed=7",
             "PCA64,PQ8x8", "PCA256:seed=3,SQ2"]


def test_canonical_specs_print_back_identically():
    for spec in CANONICAL:
        assert parse_spec(spec).to_spec() == spec


def test_get_params_round_trips():
    for spec in CANONICAL:
        pipe = parse_spec(spec)
        for stage in pipe.stages:
            clone = type(stage)(**stage.get_params())
            assert clone == stage and clone.get_params() == stage.get_params()


def _stage_strategy():
    transforms = st.one_of(
        st.builds(lambda n, s, w: get_stage_class("PCA1")(n_components=n, seed=s, whiten=w),
                  st.integers(1, 384), st.integers(0, 5), st.booleans()),
        st.builds(lambda head, n, s: get_stage_class(head)(n_components=n, seed=s),
                  st.sampled_from(["RP1", "SRP1"]), st.integers(1, 384), st.integers(0, 5)),
        st.builds(lambda s: get_stage_class("ROT")(seed=s), st.integers(0, 5)),
        st.builds(lambda head, d: get_stage_class(head)(dim=d), st.sampled_from(["MRL1", "VAR1"]),
                  st.integers(1, 384)),
        st.builds(lambda d, k, s: get_stage_class("HASH1")(dim=d, k=min(k, d), seed=s),
                  st.integers(1, 384), st.integers(1, 4), st.integers(0, 5)),
    )
    codecs = st.one_of(
        st.just(get_stage_class("F32")()), st.just(get_stage_class("F16")()), st.just(get_stage_class("BIN")()),
        st.builds(lambda b, p: get_stage_class("SQ8")(bits=b, pct=p), st.sampled_from([2, 4, 8]),
                  st.sampled_from([0.0, 0.1, 1.0, 2.5])),
        st.builds(lambda m, nb, s: get_stage_class("PQ1x1")(m=m, nbits=nb, seed=s),
                  st.sampled_from([1, 2, 4, 8, 16, 48]), st.integers(1, 12), st.integers(0, 2000)),
        st.just(get_stage_class("BF16")()),
        st.builds(lambda p, sc: get_stage_class("SQ8")(bits=8, pct=p, score=sc),
                  st.sampled_from([0.0, 1.0]), st.sampled_from(["dequant", "raw"])),
        st.builds(lambda t, sc, r, w: get_stage_class("BIN")(threshold=t, score=sc, rescore=r,
                                                              rescore_with=w if r else "F32"),
                  st.sampled_from(["zero", "median"]), st.sampled_from(["hamming", "asym"]),
                  st.integers(0, 20), st.sampled_from(["F32", "SQ8"])),
        st.builds(lambda k, v: get_stage_class("TOPK1")(k=k, values=v), st.integers(1, 384),
                  st.sampled_from(["f16", "f32", "int8"])),
        st.builds(lambda n, h, lo: get_stage_class("HYB1")(n_high=n, high=h, low=lo), st.integers(1, 383),
                  st.sampled_from(["f16", "int8"]), st.sampled_from(["bin", "int4"])),
    )
    return st.tuples(st.lists(transforms, max_size=2), codecs)


@settings(max_examples=300, deadline=None)
@given(_stage_strategy())
def test_pipeline_spec_round_trip(parts):
    transforms, codec = parts
    pipe = Pipeline([*transforms, codec])
    text = pipe.to_spec()
    again = parse_spec(text)
    assert again == pipe
    assert again.to_spec() == text


def test_every_registered_stage_has_a_format_and_summary():
    for cls in stage_classes():
        assert cls.spec_format and cls.summary and cls.kind in ("transform", "codec")
