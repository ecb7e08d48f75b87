"""`embpress scale`: synthetic corpora tiled from real embeddings, per-codec speed and memory rows
next to the float32 kernels and FAISS's own indexes, a report page, refusals in one line."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from compressors import parse_spec
from embpress import scale
from embpress.cli import main


def test_tiled_corpus_is_unit_norm_close_to_its_source_and_prefix_stable():
    rng = np.random.default_rng(0)
    base = rng.standard_normal((50, 32)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    X = scale.tiled_corpus(base, 300, seed=3, block=64)
    assert X.shape == (300, 32) and np.allclose(np.linalg.norm(X, axis=1), 1, atol=1e-5)
    # row i is base[i % 50] plus sigma-0.01 noise: close to its source, not a copy
    cos = np.einsum("ij,ij->i", X, base[np.arange(300) % 50])
    assert cos.min() > 0.9 and (cos < 1 - 1e-6).all()
    assert np.array_equal(scale.tiled_corpus(base, 100, seed=3, block=64), X[:100])
    assert not np.array_equal(scale.tiled_corpus(base, 100, seed=4, block=64), X[:100])


def test_a_slow_encoder_encodes_a_prefix_and_tiles_its_codes(monkeypatch):
    rng = np.random.default_rng(1)
    base = rng.standard_normal((300, 16)).astype(np.float32)
    X = scale.tiled_corpus(base, 12_000, seed=2, block=4096)
    pipe = parse_spec("SQ8").fit(X[:1000])
    monkeypatch.setattr(scale, "ENCODE_BUDGET_S", 1e-9)
    monkeypatch.setattr(scale, "ENCODE_FALLBACK", 7_000)
    codes, vps, rows = scale.encode_corpus(pipe, base, 12_000, seed=2, block=4096)
    assert rows == 7_000 and codes.shape == (12_000, 16) and vps > 0
    assert np.array_equal(codes[:7_000], pipe.encode(X[:7_000]))
    assert np.array_equal(codes[7_000:], codes[:5_000])          # tiled, and the row says so
    monkeypatch.setattr(scale, "ENCODE_BUDGET_S", 1e9)
    codes, _, rows = scale.encode_corpus(pipe, base, 12_000, seed=2, block=4096)
    assert rows == 12_000 and np.array_equal(codes, pipe.encode(X))   # block by block = all at once


def test_speedups_are_against_the_fastest_float32_kernel_of_the_same_size():
    rows = [{"n_vectors": 10, "compressor": "F32", "latency_p50_ms": 4.0, "search_s": 1.0},
            {"n_vectors": 10, "compressor": "float32 numpy matmul+argpartition", "reference_for": "F32",
             "latency_p50_ms": 2.0, "search_s": 2.0},
            {"n_vectors": 10, "compressor": "BIN", "latency_p50_ms": 0.5, "search_s": 0.1},
            {"n_vectors": 20, "compressor": "F32", "latency_p50_ms": 8.0, "search_s": 3.0},
            {"n_vectors": 20, "compressor": "SQ8", "latency_p50_ms": 4.0, "search_s": 1.0}]
    scale.add_speedups(rows)
    assert rows[2]["speedup_p50"] == 4.0 and rows[2]["float32_kernel"].startswith("float32 numpy")
    assert rows[2]["speedup_batch"] == 10.0 and rows[2]["published_speedup"] == scale.PUBLISHED["BIN"]
    assert rows[0]["speedup_p50"] == 0.5                  # FAISS's F32 path was not the fastest here
    assert rows[4]["speedup_p50"] == 2.0 and rows[4]["speedup_batch"] == 3.0


def test_scale_run_rows_report_and_refusals(tmp_path, scifact_sample, capsys):
    out = tmp_path / "scale"
    argv = ["scale", "--sizes", "3000", "6000", "-c", "F32", "-c", "SQ8", "-c", "BIN", "-c", "PQ16x4fs",
            "--single", "20", "--max-docs", "400", "--max-queries", "40", "--out", str(out)]   # the cached sample
    assert main(argv) == 0
    df = pd.read_parquet(out / "results.parquet")
    meta = json.loads((out / "run.json").read_text())
    assert meta["config"]["command"] == "scale" and meta["status"] == "finished"
    assert set(df.n_vectors) == {3000, 6000} and (df.status == "ok").all() and df.synthetic.all()
    codecs = df[df.family != "reference kernel"].set_index(["n_vectors", "compressor"])
    assert codecs.loc[(6000, "BIN"), "search_kernel"] == "IndexBinaryFlat"
    assert codecs.loc[(6000, "PQ16x4fs"), "search_kernel"] == "IndexPQFastScan"
    assert codecs.loc[(6000, "BIN"), "bytes_per_vector"] == 48 and not codecs.codes_tiled.any()
    refs = df[df.family == "reference kernel"]
    assert {"FAISS IndexBinaryFlat", "FAISS IndexScalarQuantizer 8bit", "float32 faiss.knn (IndexFlatIP's scan)",
            "float32 numpy matmul+argpartition"} <= set(refs.compressor)
    # every row's speed-up is against the fastest float32 row of its size, which has exactly 1
    for _, g in df.groupby("n_vectors"):
        floats = g[(g.compressor == "F32") | g.compressor.str.startswith("float32")]
        assert floats.speedup_p50.max() == pytest.approx(1.0)
        assert (g.latency_p50_ms > 0).all() and (g.latency_p99_ms >= g.latency_p50_ms).all()
    assert meta["peak_rss_bytes"] > 0 and meta["float32_matrix_bytes"] == 6000 * 384 * 4
    page = capsys.readouterr().out.strip().splitlines()[-1].split("report: ")[-1]
    html = open(page).read()
    assert "At 6,000 vectors" in html and "IndexPQFastScan" in html and "figures/scale.png" in html
    # one clear line for what cannot run
    for bad, msg in ((["--sizes", "10"], "whole numbers >= 1000"), (["--sizes", "2000000000"], "GiB is available"),
                     (["-c", "ZZ9"], "unknown compressor stage"), (["--k", "0"], "k must be >= 1")):
        assert main(["scale", *bad]) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(err) == 1 and msg in err[0], err


def test_the_grid_report_takes_its_winners_deployment_speed_from_the_scale_run():
    from embpress.scale_report import deployment_speeds
    rows = pd.DataFrame({"compressor": ["F32", "BIN", "PQ32x4fs"], "n_vectors": [10**6] * 3,
                         "search_kernel": ["faiss.knn", "IndexBinaryFlat", "IndexPQFastScan"],
                         "latency_p50_ms": [50.0, 3.2, 0.8], "speedup_p50": [1.0, 15.6, 62.5]})
    found = deployment_speeds(["PQ32x4fs", "LSQ32x4", "BIN", "BIN"], rows)
    assert found.compressor.tolist() == ["BIN", "PQ32x4fs"] and found.speedup_p50.tolist() == [15.6, 62.5]
    assert deployment_speeds(["RQ16x8"], rows).empty
