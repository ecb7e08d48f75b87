"""Timings users can trust (issue 15): the isolated timing pass, the spread-aware speed check of
`embpress compare`, and slowest-first scheduling.

* synthetic rows: a slowdown counts only beyond both runs' spreads; no spread → the ratio alone;
* the cost estimates order residual/optimised quantizers before scalar codecs, and a recorded fit
  time in the fit cache's sidecars overrides the family estimate;
* a real small grid (scifact sample and STS-B pairs): with the timing pass every ok row is timed
  `isolated` with spreads, the quality equals a `--no-timing` run's (whose rows say `indicative`),
  the hand-off folder is gone, and a resumed run times only the cells still untimed (refitting
  a cell whose hand-off file is missing).
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from embpress.compare import Thresholds, beyond_spread, compare_cell
from embpress.costs import estimate_s, slowest_first

QUALITY_COLS = ["ndcg_at_10", "recall_at_100", "spearman", "knn_recall_at_10", "retained_pct"]


# ---------------------------------------------------------------------------- the spread rule
def _row(qps: float, spread: float | None, **extra) -> dict:
    row = {"dataset": "d", "model": "m", "compressor": "SQ8", "budget": None, "status": "ok", "task": "retrieval",
           "quality": 50.0, "retained_pct": 99.0, "bytes_per_vector": 384, "search_qps": qps, "n_queries": 300}
    if spread is not None:
        row["search_spread"] = spread
    return {**row, **extra}


@pytest.mark.parametrize("spread_a, spread_b, flagged, note", [
    (0.02, 0.03, True, "beyond both runs' spread"),      # 1.5x slower, tight measurements: a regression
    (0.10, 0.30, False, None),                           # 1.5x, but B's repeats vary by 30 %: noise
    (None, 0.03, True, "no spread measured"),            # an older run without spreads: the ratio alone
])
def test_speed_regression_only_beyond_both_spreads(spread_a, spread_b, flagged, note):
    t = Thresholds(n_boot=0, speed_floor=0)
    row = compare_cell(Path("."), _row(1500, spread_a), Path("."), _row(1000, spread_b), t)
    flags = [f for f in row["flags"] if f.startswith("search")]
    assert row["search_slowdown"] == pytest.approx(1.5)
    assert bool(flags) == flagged
    if flagged:
        assert note in flags[0] and "1.50x slower" in flags[0]
    else:
        assert row["search_note"] == "1.50x, within the spread"


def test_beyond_spread_is_the_gap_between_the_bands():
    assert beyond_spread(1.0, 1.3, 0.1, 0.1) is True       # 1.3 * 0.9 = 1.17 > 1.1
    assert beyond_spread(1.0, 1.3, 0.1, 0.2) is False      # 1.3 * 0.8 = 1.04 < 1.1
    assert beyond_spread(1.0, 1.3, None, 0.1) is None
    # below the ratio threshold nothing is flagged whatever the spreads
    row = compare_cell(Path("."), _row(1000, 0.0), Path("."), _row(900, 0.0), Thresholds(n_boot=0, speed_floor=0))
    assert not row["flags"]


def test_fit_spread_from_the_folds_and_cached_fits():
    t = Thresholds(n_boot=0, speed_floor=0)
    a = _row(1000, 0.0, fit_s=10.0, fit_spread=0.05)
    assert compare_cell(Path("."), a, Path("."), _row(1000, 0.0, fit_s=15.0, fit_spread=0.05), t)["flags"]
    assert not compare_cell(Path("."), a, Path("."), _row(1000, 0.0, fit_s=15.0, fit_spread=0.4), t)["flags"]
    cached = compare_cell(Path("."), a, Path("."), _row(1000, 0.0, fit_s=30.0, fit_cached=True), t)
    assert not cached["flags"] and cached["fit_note"] == "cached fit"


# ---------------------------------------------------------------------------- scheduling
def _task(tmp_path: Path, spec: str, budget=None, calibration="crossfit:2"):
    from embpress.cells import CellTask
    path = tmp_path / "corpus.npy"
    if not path.exists():
        np.save(path, np.zeros((5000, 384), dtype=np.float32))
    return CellTask(cell_id=spec, model="m", dataset="d", dataset_label="d", compressor=spec,
                    vectors=(("corpus", str(path)),), truth="", budget=budget, calibration=calibration)


def test_slowest_first_order(tmp_path, monkeypatch):
    monkeypatch.setenv("EMBPRESS_CACHE", str(tmp_path / "cache"))
    tasks = [_task(tmp_path, "F16"), _task(tmp_path, "SQ8"), _task(tmp_path, "PQ8x8", 8),
             _task(tmp_path, "RQ16x8", 16), _task(tmp_path, "RQ2x8", 2)]
    order = [t.compressor for t in slowest_first(tasks)]
    assert order[:3] == ["RQ16x8", "RQ2x8", "PQ8x8"] and set(order[3:]) == {"F16", "SQ8"}
    # cross-fitted on 2 folds: two fits on half the vectors each, as much work as one in-sample fit
    assert estimate_s(tasks[3]) == pytest.approx(estimate_s(replace(tasks[3], calibration="corpus")), rel=1e-3)
    # a recorded fit time (the fit cache's sidecar) overrides the family's estimate
    fitted = tmp_path / "cache" / "fitted"
    fitted.mkdir(parents=True)
    (fitted / "x.json").write_text(json.dumps({"spec": "PQ8x8", "fit_s": 100.0, "n_train": 2500}))
    assert slowest_first(tasks)[0].compressor == "PQ8x8"


# ---------------------------------------------------------------------------- the timing pass, for real
SPECS = ["F16", "SQ8", "PQ8x4", "BIN"]


def _run(tmp_path: Path, name: str, enabled: bool):
    from embpress.grid import RunConfig
    from embpress.runner import run
    from embpress.timing import TimingConfig
    config = RunConfig(datasets=["scifact", "stsbenchmark"], models=["all-MiniLM-L6-v2"], compressors=SPECS,
                       max_queries=40, max_docs=400, calibration="corpus")
    (tmp_path / name).mkdir()
    return run(config, out_dir=tmp_path / name, progress=False, echo=lambda m: None, fit_cache=False,
               workers=2, timing=TimingConfig(enabled=enabled, repeats=3))


def test_timing_pass_times_every_cell_alone(scifact_sample, tmp_path):
    df, run_dir = _run(tmp_path, "timed", True)
    plain, _ = _run(tmp_path, "plain", False)
    assert (df["status"] == "ok").all() and len(df) == 2 * len(SPECS)
    assert (df["timing"] == "isolated").all() and (plain["timing"] == "indicative").all()
    assert (df["timing_repeats"] == 3).all() and (df["timing_threads"] == 1).all()
    assert df["encode_spread"].notna().all() and (df["encode_vps"] > 0).all()
    ret, sts = df[df["task"] == "retrieval"], df[df["task"] == "sts"]
    assert ret["search_spread"].notna().all() and (ret["search_qps"] > 0).all() and (ret["latency_p50_ms"] > 0).all()
    assert sts["score_spread"].notna().all() and (sts["score_s"] > 0).all()
    assert (ret["search_batch"] == 40).all() and (sts["score_pairs"] > 0).all()
    # --no-timing: the calls that computed the quality, timed once (no latency round, no spread)
    pret = plain[plain["task"] == "retrieval"]
    assert (pret["search_qps"] > 0).all() and (plain["encode_vps"] > 0).all()
    assert pret["latency_p50_ms"].isna().all()
    assert all(c not in plain or plain[c].isna().all() for c in ("search_spread", "encode_spread", "latency_spread"))
    # the pass measures, it does not change what was scored
    key = ["dataset", "compressor"]
    pd.testing.assert_frame_equal(df.set_index(key)[QUALITY_COLS].sort_index(),
                                  plain.set_index(key)[QUALITY_COLS].sort_index())
    assert not (run_dir / "fitted").exists()
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["timing"]["enabled"] and meta["timing_wall_s"] > 0


def test_cells_beyond_the_memory_budget_are_reloaded_each_round(scifact_sample, tmp_path, monkeypatch):
    """With no codes allowed in memory between rounds, every cell is read again from its hand-off
    file in every round, and its samples carry over: the same figures, three rounds each."""
    from embpress import timing
    loads = []
    real = timing.load_cell
    monkeypatch.setattr(timing, "HOLD_BYTES", 0)
    monkeypatch.setattr(timing, "load_cell", lambda task, run_dir: loads.append(task.cell_id) or real(task, run_dir))
    df, run_dir = _run(tmp_path, "reloaded", True)
    assert (df["timing"] == "isolated").all() and (df["timing_repeats"] == 3).all()
    assert df["encode_spread"].notna().all() and (df["encode_vps"] > 0).all()
    assert sorted(loads) == sorted(list(df["cell_id"]) * 3)
    assert not (run_dir / "fitted").exists()


def test_a_burst_of_load_in_one_round_moves_no_median():
    """Rounds: every cell is sampled once per round, so load from elsewhere that lasts less than a
    round lands in one sample of a cell; the median ignores it and the spread shows it."""
    import time

    from compressors import parse_spec
    from embpress.timing import CellTimer, TimingConfig

    class Bursty:          # the pipeline, with 30 ms of someone else's load in each encode of round 2
        def __init__(self, pipe):
            self.pipe, self.slow = pipe, False

        def encode(self, X):
            if self.slow:
                time.sleep(0.03)
            return self.pipe.encode(X)

        def __getattr__(self, name):
            return getattr(self.pipe, name)

    X = np.random.default_rng(0).normal(size=(2000, 32)).astype(np.float32)
    pipe = Bursty(parse_spec("SQ8").fit(X))
    cell, cfg = CellTimer(pipe, X, pipe.encode(X), True, X[:50], 0, 10), TimingConfig(repeats=3)
    for r in range(cfg.repeats):
        pipe.slow = r == 1
        cell.round(cfg)
    fig, enc = cell.figures(cfg), cell.samples["encode"]
    assert len(enc) == 3 and enc[1] >= 0.03 and fig["encode_s"] == sorted(enc)[1] < enc[1]
    assert fig["encode_spread"] > 0 and fig["timing_repeats"] == 3 and fig["encode_rows"] == cfg.encode_rows
    assert fig["search_batch"] == 50 and fig["latency_p50_ms"] > 0 and fig["search_spread"] >= 0


def test_resume_times_only_untimed_cells(scifact_sample, tmp_path):
    from embpress.runfolder import read_timings
    from embpress.runner import run
    df, run_dir = _run(tmp_path, "timed", True)
    timings = (run_dir / "timings.jsonl").read_text().splitlines()
    kept, dropped = timings[:-2], [json.loads(line)["cell_id"] for line in timings[-2:]]
    (run_dir / "timings.jsonl").write_text("\n".join(kept) + "\n" + '{"cell_id": "torn')   # a kill mid-write
    meta = json.loads((run_dir / "run.json").read_text())
    (run_dir / "run.json").write_text(json.dumps({**meta, "status": "interrupted"}))
    before = {k: v for k, v in read_timings(run_dir / "timings.jsonl").items()}
    assert set(before).isdisjoint(dropped) and len(before) == len(df) - 2
    df2, _ = run(resume=run_dir, progress=False, echo=lambda m: None, fit_cache=False)
    after = read_timings(run_dir / "timings.jsonl")
    assert set(after) == set(df["cell_id"])
    assert all(after[c] == before[c] for c in before)          # timed cells are not timed again
    assert (df2["timing"] == "isolated").all()
