"""The command line end to end, as a user types it: real model, real data, real files."""
import json
import os
import subprocess
import sys
import time

import pandas as pd
import pytest

from embpress.results import COLUMNS

pytestmark = pytest.mark.integration   # the command line on real datasets and the real model

QUICK = ["--grid", "quick", "--no-progress"]


def embpress(*args, env=None, timeout=900):
    e = dict(os.environ)
    e.update(env or {})
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "embpress.cli", *args], capture_output=True, text=True,
                       env=e, timeout=timeout, stdin=subprocess.DEVNULL)
    p.seconds = time.perf_counter() - t0
    return p


@pytest.fixture(scope="module")
def two_runs():
    first = embpress("run", *QUICK)
    assert first.returncode == 0, first.stderr[-3000:]
    second = embpress("run", *QUICK)
    assert second.returncode == 0, second.stderr[-3000:]
    return first, second


def _run_dir(proc):
    line = next(l for l in proc.stdout.splitlines() if l.startswith("results: "))
    return line.split()[1].rsplit("/", 1)[0]


def test_run_writes_results_and_provenance(two_runs):
    first, _ = two_runs
    run_dir = _run_dir(first)
    df = pd.read_parquet(f"{run_dir}/results.parquet")
    assert list(df.columns[: len(COLUMNS)]) == COLUMNS
    assert set(df["dataset"]) == {"scifact", "stsbenchmark"}
    # cross-fitted, PQ16x8 cannot train 256 centroids on one fold of the 150-pair STS sample (about
    # 150 sentences): infeasible with that reason, never fitted in-sample instead
    not_ok = df[df.status != "ok"]
    assert list(zip(not_ok.dataset, not_ok.compressor, not_ok.status)) == [("stsbenchmark", "PQ16x8", "infeasible")]
    assert "fold" in not_ok.error.iloc[0] and "needs at least 256" in not_ok.error.iloc[0]
    assert len(pd.read_csv(f"{run_dir}/results.csv")) == len(df) == 14
    f32 = df[(df.compressor == "F32") & (df.dataset == "scifact")].iloc[0]
    assert f32.retained_pct == pytest.approx(100) and f32.knn_recall_at_10 == pytest.approx(100)
    assert f32.bytes_per_vector == 1536 and f32.compression_ratio == 1
    sts = df[(df.compressor == "SQ8") & (df.dataset == "stsbenchmark")].iloc[0]
    assert sts.spearman > 70 and sts.retained_pct > 98
    bin_row = df[(df.compressor == "BIN") & (df.dataset == "scifact")].iloc[0]
    assert bin_row.bytes_per_vector == 48 and bin_row.compression_ratio == 32
    meta = json.loads(open(f"{run_dir}/run.json").read())
    assert meta["status"] == "finished" and meta["cells"] == {"ok": 13, "infeasible": 1}
    assert meta["models"]["all-MiniLM-L6-v2"]["weights_sha256"]
    assert meta["datasets"]["scifact"]["revision"] and meta["datasets"]["scifact"]["sample"]
    assert {"faiss-cpu", "torch", "sentence-transformers"} <= set(meta["versions"])
    assert "machine" in meta and "commit" in meta["git"]
    assert meta["config"]["compressors"][0] == "F32"
    assert "== scifact · all-MiniLM-L6-v2 ==" in first.stdout
    report = next(l for l in first.stdout.splitlines() if l.startswith("report: ")).split(" ", 1)[1]
    assert report.endswith("index.html") and os.path.getsize(report) > 10_000


def test_second_run_encodes_nothing(two_runs):
    first, second = two_runs
    if not os.environ.get("EMBPRESS_TEST_CACHE"):   # a developer's warm cache may hold the sample already
        assert "encoded in" in first.stderr
    assert "encoded in" not in second.stderr and "0 texts encoded" in second.stderr
    assert _run_dir(first) != _run_dir(second), "a run never overwrites an earlier one"


def test_show_prints_an_earlier_run(two_runs):
    p = embpress("show", _run_dir(two_runs[0]))
    assert p.returncode == 0 and "PQ16x8" in p.stdout


@pytest.mark.parametrize("args, message", [
    (["run", "-d", "nosuch"], "unknown dataset 'nosuch'"),
    (["run", "-m", "nosuch"], "unknown model 'nosuch'"),
    (["run", "-c", "ZZ9"], "unknown compressor stage 'ZZ9'"),
    (["run", "-c", "PCA128,"], "empty stage"),
    (["run", "-c", "PQ5x8"], "do not split into 5 equal sub-vectors"),
    (["run", "--grid", "nosuch"], "grid 'nosuch' not found"),
    (["run", "--max-queries", "x"], "invalid int value"),
])
def test_bad_input_gives_one_line_and_exit_2(args, message):
    p = embpress(*args)
    assert p.returncode == 2
    assert "Traceback" not in p.stderr
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and message in lines[0], p.stderr


def test_malformed_grid_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("datasets = [scifact\n")
    p = embpress("run", "--grid", str(bad))
    assert p.returncode == 2 and "not valid TOML" in p.stderr and "Traceback" not in p.stderr
    bad.write_text('datasets = ["scifact"]\nmodels = ["minilm"]\ncompressors = ["F32"]\ncolour = 1\n')
    p = embpress("run", "--grid", str(bad))
    assert p.returncode == 2 and "unknown key(s) colour" in p.stderr


def test_missing_mirror_without_network(tmp_path):
    p = embpress("run", "-d", "nfcorpus", "-c", "F32", "--no-progress",
                 env={"EMBPRESS_MIRROR": str(tmp_path / "none"), "EMBPRESS_CACHE": str(tmp_path / "cache")})
    assert p.returncode == 2 and "Traceback" not in p.stderr
    err = [l for l in p.stderr.splitlines() if l.startswith("embpress: error:")]
    assert len(err) == 1 and "set EMBPRESS_MIRROR" in err[0]


def test_existing_out_folder_is_not_overwritten(tmp_path):
    (tmp_path / "taken").mkdir()
    p = embpress("run", "--out", str(tmp_path / "taken"), *QUICK)
    assert p.returncode == 2 and "already exists" in p.stderr


def test_python_api_returns_a_dataframe():
    import embpress
    df = embpress.run(datasets="stsbenchmark", compressors=["F32", "BIN"], max_queries=200, progress=False)
    assert list(df.compressor) == ["F32", "BIN"] and df.attrs["run_dir"]
    assert df.loc[0, "retained_pct"] == pytest.approx(100)


def test_infeasible_cell_is_kept_with_its_reason():
    import embpress
    df = embpress.run(datasets="stsbenchmark", compressors=["F32", "PQ16x8"], max_queries=50, progress=False)
    row = df[df.compressor == "PQ16x8"].iloc[0]
    assert row.status == "infeasible" and "needs at least 256 training vectors" in row.error
