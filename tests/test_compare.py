"""`embpress compare`: real runs of a small grid (scifact, 400 documents, 40 queries), compared.

* an identical rerun (fitted again, not taken from the fit cache) passes;
* a degraded compressor is flagged: the same cells (same dataset, model, spec) produced with worse
  settings, PQ codebooks trained on 256 calibration vectors instead of the 400-document corpus
  (with 256 centroids per sub-quantizer, k-means just copies the 256 vectors);
* the speed check on a copy of a run whose one figure is made 3x slower (timings of two real
  runs are too noisy to test a threshold on).
Speed checks are off (`--no-speed`) where only quality is tested: encode and search times of
a few hundred vectors on a shared machine vary by more than any sensible ratio.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from embpress.cli import main
from embpress.compare import Thresholds, compare_runs, resolve_run
from embpress.grid import RunConfig

pytestmark = pytest.mark.integration   # runs on a real scifact sample

ROOT = Path(__file__).resolve().parents[1]
SPECS = ["PQ8x8", "PQ16x8", "SQ4", "BIN"]


def _run(compressors: list[str], calibration: str = "corpus") -> Path:
    from embpress.runner import run
    config = RunConfig(datasets=["scifact"], models=["all-MiniLM-L6-v2"], compressors=compressors,
                       max_queries=40, max_docs=400, calibration=calibration)
    df, run_dir = run(config, progress=False, echo=lambda m: None, fit_cache=False)
    assert (df["status"] == "ok").all(), df[["compressor", "status", "error"]]
    return run_dir


@pytest.fixture(scope="module")
def runs(scifact_sample, tmp_path_factory):
    import numpy as np
    a = _run(SPECS + ["F16"])
    rerun = _run(SPECS + ["F16"])
    # 256 of the corpus's own vectors (400 documents cross-fitted in two folds would leave a fold
    # fewer vectors than PQ's 256 centroids, so this grid runs in-sample)
    calib = tmp_path_factory.mktemp("calib") / "first256.npy"
    np.save(calib, np.asarray(scifact_sample[1]["corpus"])[:256])
    degraded = _run(SPECS + ["SQ8"], calibration=f"file:{calib}")
    return a, rerun, degraded


def test_identical_rerun_passes(runs, tmp_path, capsys):
    a, rerun, _ = runs
    out = tmp_path / "same.md"
    assert main(["compare", str(a), str(rerun), "--no-speed", "--out", str(out)]) == 0
    c = compare_runs(a, rerun, Thresholds(speed_ratio=None))
    assert len(c.cells) == 5 and len(c.regressions) == 0 and not len(c.only_a) and not len(c.only_b)
    assert (c.cells["delta"] == 0).all()
    assert (c.cells["ci_low"] == 0).all() and (c.cells["ci_high"] == 0).all()   # paired, identical queries
    text = out.read_text()
    assert "**No regression** in 5 compared cells" in text and "## Regressions" not in text
    assert "5 cells compared, 0 regression(s)" in capsys.readouterr().out


def test_degraded_compressor_is_flagged(runs, capsys):
    a, _, degraded = runs
    assert main(["compare", str(a), str(degraded), "--no-speed"]) == 1
    c = compare_runs(a, degraded, Thresholds(speed_ratio=None))
    flagged = dict(zip(c.regressions["compressor"], c.regressions["flags"]))
    assert "PQ8x8" in flagged and all(f.startswith("quality") for f in flagged["PQ8x8"])
    row = c.cells.set_index("compressor").loc["PQ8x8"]
    assert row["delta"] < -0.5 and row["ci_high"] < 0          # beyond tolerance and interval
    assert "SQ4" not in flagged and "BIN" not in flagged           # unaffected or barely
    bin_row = c.cells.set_index("compressor").loc["BIN"]
    assert bin_row["delta"] == 0                                   # BIN is not fitted: same codes
    assert c.only_a["compressor"].tolist() == ["F16"] and c.only_b["compressor"].tolist() == ["SQ8"]
    assert any("calibration" in n and "first256.npy" in n for n in c.notes)
    summary = degraded / f"compare-{a.name}.md"                     # the default place
    text = summary.read_text()
    assert "## Regressions" in text and "| PQ8x8 |" in text.split("## All compared cells")[0]
    assert "## Only in A" in text and "| F16 |" in text and "## Only in B" in text
    assert f"summary: {summary}" in capsys.readouterr().out


def test_bootstrap_and_tolerance_are_separate_criteria(runs):
    a, _, degraded = runs
    by_interval = compare_runs(a, degraded, Thresholds(quality_tol=100, speed_ratio=None))
    rows = by_interval.cells.set_index("compressor")
    flagged = set(by_interval.regressions["compressor"])
    # with an unreachable tolerance, exactly the cells whose interval lies below zero remain flagged
    assert flagged == set(rows.index[rows["ci_high"] < 0]) and "PQ8x8" in flagged
    # (the degraded run lacks A's F16 cell: only the shared cells are judged here)
    args = ["compare", str(a), str(degraded), "--no-speed", "--quality-tol", "100", "--bootstrap", "0"]
    assert main(args + ["--intersection"]) == 0
    assert main(args) == 1                                         # B lacking a cell of A fails the gate


def test_speed_regression(runs, tmp_path):
    _, rerun, _ = runs
    # both copies get the same small measured spreads (5 %: the test is about the threshold, not about
    # this machine's noise; the spread rule itself is tested on synthetic rows in test_timing.py)
    fast, slow = tmp_path / "fast-run", tmp_path / "slow-run"
    for copy, factor in ((fast, 1), (slow, 3)):
        shutil.copytree(rerun, copy)
        df = pd.read_parquet(copy / "results.parquet")
        assert df["search_spread"].notna().any()           # the timing pass measured spreads
        df[["encode_spread", "search_spread"]] = 0.05
        df.loc[df["compressor"] == "SQ4", "search_qps"] /= factor
        df.to_parquet(copy / "results.parquet", index=False)
    args = ["compare", str(fast), str(slow), "--speed-floor", "0", "--out", str(tmp_path / "s.md")]
    assert main(args) == 1
    c = compare_runs(fast, slow, Thresholds(speed_floor=0))
    assert c.regressions["compressor"].tolist() == ["SQ4"]
    flags = c.regressions["flags"].iloc[0]
    assert len(flags) == 1 and flags[0].startswith("search: 3.00x slower") and "beyond both runs' spread" in flags[0]
    assert main(args + ["--speed-ratio", "4"]) == 0
    assert main(args + ["--no-speed"]) == 0
    # the floor: the SQ4 search of 40 queries takes well under 10 s, so it is not checked
    assert main(["compare", str(fast), str(slow), "--speed-floor", "10", "--out", str(tmp_path / "t.md")]) == 0


def test_runs_named_by_commit(runs, capsys):
    _, _, degraded = runs
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert json.loads((degraded / "run.json").read_text())["git"]["commit"] == head
    assert resolve_run(head[:7]) == degraded                     # the latest run of that commit
    assert resolve_run("HEAD") == degraded                       # any name git resolves
    assert resolve_run(degraded.name) == degraded                # a run id under the results folder
    assert main(["compare", head[:7], str(degraded)]) == 2       # the same run twice
    err = capsys.readouterr().err.strip()
    assert err.startswith("embpress: error:") and "same run" in err and "\n" not in err


@pytest.mark.parametrize("args, message", [
    (["no/such/run", "0000000"], "neither a run folder"),
    (["deadbeef", "deadbeef0"], "no run under"),
    (["--quality-tol", "-1", "a", "b"], "quality-tol"),
])
def test_bad_input_is_one_line(runs, args, message, capsys):
    a = runs[0]
    if args[0] == "--quality-tol":
        args = args[:2] + [str(a), str(runs[1])]
    assert main(["compare", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("embpress: error:") and message in err and "\n" not in err
