"""The fitted-compressor cache: no pickle, every registered stage round-trips, a wrong or planted
entry is refitted with a warning, never used."""
import json
import logging
import pickle
from pathlib import Path

import numpy as np
import pytest

from compressors import parse_spec, stage_classes
from embpress import fitcache
from embpress.fitcache import fit_cache_path, fit_pipeline

#: One spec per registered stage class (small settings: synthetic 64-d vectors).
SPECS = ["HASH32", "MRL32", "OPQ8:niter=2:niter_pq_0=2:nbits=4,PQ8x4:niter=3", "PCA32:whiten=true,SQ8", "ROT,SQ4",
         "RP32", "SRP32,F16", "VAR32,BF16", "BIN:threshold=median:rescore=2:rescore_with=SQ8", "BIN:rescore=2",
         "F16", "F32", "HYB8", "HYB8:high=int8:low=int4", "ITQ32:niter=3", "LSH64",
         "LSQ4x4:train_iters=2:encode_ils_iters=2", "PQ8x4:niter=3", "RABITQ", "RQ4x4:niter=3", "SQ8:pct=1.0",
         "TOPK16", "TQ4", "TQ2:mse=true", "EDEN4:center=true", "PQ8x4fs:niter=3"]


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EMBPRESS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "fitted"


@pytest.fixture(scope="module")
def vectors():
    rng = np.random.default_rng(7)
    X = rng.standard_normal((600, 64)).astype(np.float32) * np.linspace(2, 0.2, 64, dtype=np.float32)
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def test_specs_cover_every_registered_stage():
    covered = {type(s) for spec in SPECS for s in parse_spec(spec).stages}
    assert set(stage_classes()) <= covered, set(stage_classes()) - covered


@pytest.mark.parametrize("spec", SPECS)
def test_round_trip_gives_identical_codes_and_results(spec, vectors, cache):
    fitted, fit_s, cached = fit_pipeline(parse_spec(spec), vectors)
    assert not cached
    loaded, fit_s2, cached2 = fit_pipeline(parse_spec(spec), vectors)
    needs_fit = any(s.needs_fit for s in fitted.stages)
    assert cached2 is needs_fit and (fit_s2 == fit_s if needs_fit else True)
    Q = vectors[:20] + 0.01
    codes = fitted.encode(vectors)
    np.testing.assert_array_equal(loaded.encode(vectors), codes)
    np.testing.assert_array_equal(loaded.search(codes, Q, 10)[1], fitted.search(codes, Q, 10)[1])
    np.testing.assert_array_equal(loaded.decode(codes[:50]), fitted.decode(codes[:50]))
    assert loaded.overhead_bytes == fitted.overhead_bytes and loaded.info() == fitted.info()
    if needs_fit:
        side = json.loads(fit_cache_path(parse_spec(spec), vectors).with_suffix(".json").read_text())
        assert side["spec"] == parse_spec(spec).to_spec() and side["n_train"] > 0 and side["fit_s"] == fit_s


def test_no_pickle_in_the_package():
    root = Path(fitcache.__file__).parents[1]
    for path in [*root.glob("embpress/*.py"), *root.glob("compressors/*.py")]:
        assert "pickle.load" not in path.read_text() and "allow_pickle=True" not in path.read_text(), path


class _Plant:
    marker: Path

    def __reduce__(self):
        return Path.touch, (self.marker,)


def test_planted_pickle_never_runs(vectors, cache, tmp_path, caplog):
    pipe = parse_spec("PCA16,SQ8")
    path = fit_cache_path(pipe, vectors)
    plant = _Plant()
    plant.marker = tmp_path / "pwned"
    path.parent.mkdir(parents=True)
    payload = pickle.dumps({"pipeline": plant, "fit_s": 0.0})
    path.with_suffix(".pkl").write_bytes(payload)        # where the old cache looked
    path.write_bytes(payload)                            # and in place of the arrays, with a matching sidecar
    side = {**fitcache._expected(pipe, vectors, None, None), "fit_s": 0.0, "n_train": 1,
            "npz_sha256": fitcache._sha256(path)}
    path.with_suffix(".json").write_text(json.dumps(side))
    with caplog.at_level(logging.WARNING, logger="embpress"):
        _, _, cached = fit_pipeline(pipe, vectors)
    assert not cached and not plant.marker.exists()
    assert any("refitting PCA16,SQ8" in r.message for r in caplog.records)
    assert fit_pipeline(parse_spec("PCA16,SQ8"), vectors)[2]          # rewritten as a safe entry


def test_entry_of_another_spec_is_refitted(vectors, cache, caplog):
    """PCA32,SQ8's entry copied over PCA64,SQ8's: detected, refitted, the right bytes reported."""
    small = fit_cache_path(parse_spec("PCA32,SQ8"), vectors)
    big = fit_cache_path(parse_spec("PCA48,SQ8"), vectors)
    fit_pipeline(parse_spec("PCA32,SQ8"), vectors)
    for suffix in (".npz", ".json"):
        big.with_suffix(suffix).write_bytes(small.with_suffix(suffix).read_bytes())
    with caplog.at_level(logging.WARNING, logger="embpress"):
        pipe, _, cached = fit_pipeline(parse_spec("PCA48,SQ8"), vectors)
    assert not cached and pipe.bytes_per_vector() == 48 and pipe.encode(vectors).shape == (600, 48)
    assert any("spec is 'PCA32,SQ8'" in r.message for r in caplog.records)


def test_tampered_arrays_are_refitted(vectors, cache, caplog):
    """The spec rewritten inside an entry (sidecar and checksum forged too): the codes' width gives it away."""
    fit_pipeline(parse_spec("PCA32,SQ8"), vectors)
    src = fit_cache_path(parse_spec("PCA32,SQ8"), vectors)
    dst = fit_cache_path(parse_spec("PCA48,SQ8"), vectors)
    with np.load(src, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    doc = json.loads(str(arrays["__pipeline__"]))
    doc["spec"] = "PCA48,SQ8"
    doc["stages"][0]["params"]["n_components"] = 48
    arrays["__pipeline__"] = np.asarray(json.dumps(doc))
    with open(dst, "wb") as f:
        np.savez(f, **arrays)
    side = {**fitcache._expected(parse_spec("PCA48,SQ8"), vectors, None, None), "fit_s": 0.0, "n_train": 600,
            "npz_sha256": fitcache._sha256(dst)}
    dst.with_suffix(".json").write_text(json.dumps(side))
    with caplog.at_level(logging.WARNING, logger="embpress"):
        pipe, _, cached = fit_pipeline(parse_spec("PCA48,SQ8"), vectors)
    assert not cached and pipe.encode(vectors[:3]).shape == (3, 48)
    assert any("refitting PCA48,SQ8" in r.message and "(8,32)" in r.message for r in caplog.records)


@pytest.mark.parametrize("damage", ["truncate", "garbage_json", "class", "attribute"])
def test_unreadable_or_foreign_entries_are_refitted(damage, vectors, cache, caplog):
    spec = "BIN:rescore=2:rescore_with=SQ8"
    fit_pipeline(parse_spec(spec), vectors)
    path = fit_cache_path(parse_spec(spec), vectors)
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "garbage_json":
        path.with_suffix(".json").write_text("{not json")
    else:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        doc = json.loads(str(arrays["__pipeline__"]))
        if damage == "class":                 # a nested stage naming something outside the registry
            doc["stages"][0]["state"]["copy_"]["stage"]["class"] = "os.system"
        else:
            doc["stages"][0]["state"]["__class__"] = {"json": "x"}
        arrays["__pipeline__"] = np.asarray(json.dumps(doc))
        with open(path, "wb") as f:
            np.savez(f, **arrays)
        side = json.loads(path.with_suffix(".json").read_text())
        side["npz_sha256"] = fitcache._sha256(path)
        path.with_suffix(".json").write_text(json.dumps(side))
    with caplog.at_level(logging.WARNING, logger="embpress"):
        pipe, _, cached = fit_pipeline(parse_spec(spec), vectors)
    assert not cached and pipe.encode(vectors[:2]).shape == (2, 8 + 64)
    assert any("unusable" in r.message for r in caplog.records)


def test_meta_is_part_of_the_key_and_the_sidecar(vectors, cache):
    a = fit_cache_path(parse_spec("PCA16,SQ8"), vectors, meta={"protocol": "crossfit:2", "fold": 0})
    b = fit_cache_path(parse_spec("PCA16,SQ8"), vectors, meta={"protocol": "crossfit:2", "fold": 1})
    assert a != b
    fit_pipeline(parse_spec("PCA16,SQ8"), vectors, meta={"protocol": "crossfit:2", "fold": 0})
    assert not fit_pipeline(parse_spec("PCA16,SQ8"), vectors, meta={"protocol": "crossfit:2", "fold": 1})[2]
    sides = fitcache.read_sidecars()
    assert sorted(s["meta"]["fold"] for s in sides) == [0, 1]
    assert all(s["calibration_shape"] == [600, 64] and s["code_version"] for s in sides)


def test_unwritable_cache_fits_and_warns(vectors, monkeypatch, caplog):
    monkeypatch.setenv("EMBPRESS_CACHE", "/sys/embpress-cache")     # not writable, even for root
    with caplog.at_level(logging.WARNING, logger="embpress"):
        pipe, _, cached = fit_pipeline(parse_spec("PCA16,SQ8"), vectors)
    assert not cached and pipe.encode(vectors[:2]).shape == (2, 16)
    assert any("not cached at /sys/embpress-cache/fitted" in r.message for r in caplog.records)


def test_codes_of_a_cached_fit_are_kept_and_read_back(vectors, cache, monkeypatch, caplog):
    """A slow encode's codes are kept next to the fit they came from and read back (no pickle,
    shape checked) instead of re-encoding; other vectors, another fit or an uncached fit get
    none; a damaged codes file is re-encoded and rewritten."""
    monkeypatch.setattr(fitcache, "CODES_MIN_S", 0.0)
    pipe, _, cached, entry = fitcache.fit_pipeline_entry(parse_spec("PQ8x8:niter=3"), vectors)
    assert not cached and entry is not None
    X = vectors[:200]
    codes, seconds = fitcache.encode_cached(pipe, X, entry)
    assert seconds is not None and fitcache.codes_path(entry, X).is_file()
    again, seconds2 = fitcache.encode_cached(pipe, X, entry)
    assert seconds2 is None and np.array_equal(again, codes)
    assert fitcache.encode_cached(pipe, vectors[200:400], entry)[1] is not None     # other vectors
    loaded, _, cached, entry2 = fitcache.fit_pipeline_entry(parse_spec("PQ8x8:niter=3"), vectors)
    assert cached and entry2 == entry and fitcache.encode_cached(loaded, X, entry2)[1] is None
    other, _, _, entry3 = fitcache.fit_pipeline_entry(parse_spec("PQ4x8:niter=3"), vectors)
    assert entry3 != entry and fitcache.encode_cached(other, X, entry3)[1] is not None
    assert fitcache.encode_cached(pipe, X, None)[1] is not None                     # no cache entry
    np.save(fitcache.codes_path(entry, X), codes[:, :3])                             # wrong width
    with caplog.at_level(logging.WARNING, logger="embpress"):
        fixed, seconds3 = fitcache.encode_cached(pipe, X, entry)
    assert seconds3 is not None and np.array_equal(fixed, codes) and "re-encoding" in caplog.text
    assert fitcache.encode_cached(pipe, X, entry)[1] is None                         # rewritten


def test_encodes_faster_than_the_threshold_are_not_kept(vectors, cache, monkeypatch):
    monkeypatch.setattr(fitcache, "CODES_MIN_S", 1e9)
    pipe, _, _, entry = fitcache.fit_pipeline_entry(parse_spec("PCA16,SQ8"), vectors)
    assert fitcache.encode_cached(pipe, vectors[:50], entry)[1] is not None
    assert not fitcache.codes_path(entry, vectors[:50]).exists()
