"""The budget grid: budgets solved per family, infeasible cells kept, fitted compressors cached,
parallel, resumable after kill -9, on a real Dask cluster, and on bring-your-own vectors."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import embpress
from embpress.errors import EmbpressError
from embpress.grid import RunConfig, _free_fields, _settings, expand, solve_budget
from embpress.runner import run

QUALITY = ["ndcg_at_10", "recall_at_100", "mrr_at_10", "spearman", "knn_recall_at_10", "knn_recall_at_100",
           "bytes_per_vector", "overhead_bytes", "retained_pct"]


def small_config(**kw):
    base = dict(datasets=["scifact", "stsbenchmark"], models=["all-MiniLM-L6-v2"], compressors=["F32", "SQ8"],
                budgets=[16, 64, 256], families=["PCA{d},SQ8", "PQ{m}x8", "SQ{bits}"],
                max_queries=150, max_docs=600)
    base.update(kw)
    return RunConfig(**base)


@pytest.mark.parametrize("template, budget, expect", [
    ("PQ{m}x8", 32, "PQ32x8"), ("PCA{d},BIN", 16, "PCA128,BIN"), ("SQ{bits}", 192, "SQ4"),
    ("PCA{d}", 256, "PCA64"), ("PCA{d},SQ8", 64, "PCA64,SQ8"), ("PQ{m}x4", 8, "PQ16x4"),
])
def test_budget_is_met_exactly(template, budget, expect):
    assert solve_budget(template, budget, 384, {}) == (expect, None)


def test_infeasible_budgets_say_why():
    spec, why = solve_budget("SQ{bits}", 16, 384, {})
    assert spec is None and "no SQ{bits} fits 16 B/vector on 384-d" in why and "SQ2 = 96 B" in why
    assert solve_budget("SQ{bits}", 128, 384, {})[0] is None          # SQ2 = 96 B is too far below 128 B
    assert solve_budget("HYB{n}", 64, 384, {}) == ("HYB8", None)       # 63 B: the largest within 64 B
    spec, why = solve_budget("PQ{m}x8", 256, 384, {})
    assert spec is None and "do not split into 256 equal sub-vectors" in why


def test_unknown_stage_in_a_family_is_refused():
    from embpress.runner import plan
    with pytest.raises(Exception, match="unknown compressor stage 'PQX8'"):
        plan(small_config(families=["PQX{m}"]))
    with pytest.raises(Exception, match="has no option 'foo'"):
        plan(small_config(families=["PQ{m}x8:foo=1"]))


def test_expand_with_axes_and_fixed_specs():
    cfg = RunConfig(datasets=["scifact"], models=["minilm"], compressors=["F32"], budgets=[16, 32],
                    families=["PCA{d},SQ{b}"], axes={"b": [8, 4]})
    cells = expand(cfg, 384)
    assert [c.compressor for c in cells] == ["F32", "PCA16,SQ8", "PCA32,SQ8", "PCA32,SQ4", "PCA64,SQ4"]
    assert {c.budget for c in cells[1:]} == {16, 32}


# encoder_variants' trim-<dataset> variants read their dataset's training split when planned
@pytest.mark.parametrize("name", ["quick", "default", "full",
                                  pytest.param("encoder_variants", marks=pytest.mark.integration)])
def test_shipped_grids_are_valid_and_default_covers_every_family_at_6_budgets(name):
    from collections import Counter
    from embpress.grid import load_grid
    from embpress.runner import plan
    cfg = load_grid(name)
    plan(cfg)                                               # every template and option exists
    cells = expand(cfg, 384)
    assert len({(c.compressor, c.infeasible and c.budget, c.calibration) for c in cells}) == len(cells)
    if name == "default":
        assert set(cfg.datasets) == {"scifact", "nfcorpus", "stsbenchmark", "sick"}
        main = [f for f in cfg.families if not (isinstance(f, dict) and f.get("calibration"))]
        feasible = Counter(c.template for c in cells if c.template and c.infeasible is None and c.calibration is None)
        assert len(feasible) == len(main), feasible
        for template, count in feasible.items():
            # a family sized by a handful of bit widths (TQ{bits}, RABITQ:nbits={nbits}) has fewer
            # than 10 settings under float32 and runs at 3 or more of them; the others at 6 or more
            free = _free_fields(template, cfg.axes)[0]
            widths = sum(why is None for _, _, why in _settings(template, 384, (), free))
            assert count >= (3 if widths < 10 else 6), (template, count, widths)
        # in-sample companions exist for the trained families, at a few budgets of their own family
        companions = {c.template for c in cells if c.calibration == "corpus" and c.infeasible is None}
        assert {"RQ{m}x8:niter=5", "PQ{m}x8:niter=10", "ITQ{nbits}:niter=10", "PCA{d},SQ8"} <= companions
        assert companions <= set(feasible)


@pytest.mark.integration
def test_grid_run_keeps_infeasible_cells_and_caches_fits():
    import shutil
    from embpress import settings
    shutil.rmtree(settings.cache_dir() / "fitted", ignore_errors=True)   # other tests fit the same specs
    df1, dir1 = run(small_config(), progress=False)
    assert set(df1.dataset) == {"scifact", "stsbenchmark"}
    inf = df1[df1.status == "infeasible"]
    assert len(inf) and inf.error.str.len().min() > 20           # every infeasible cell has its reason
    assert ((inf.template == "SQ{bits}") & (inf.budget == 16)).any()
    ok = df1[df1.status == "ok"]
    assert (ok[ok.budget.notna()].bytes_per_vector == ok[ok.budget.notna()].budget).all()
    trained = ok[ok.compressor.str.contains("PCA|PQ")]
    assert not trained.fit_cached.any()
    df2, _ = run(small_config(), progress=False)
    trained2 = df2[df2.compressor.isin(trained.compressor) & (df2.status == "ok")]
    assert trained2.fit_cached.all(), "a rerun retrains nothing"
    pd.testing.assert_frame_equal(df1[QUALITY].reset_index(drop=True), df2[QUALITY].reset_index(drop=True))
    meta = json.loads((dir1 / "run.json").read_text())
    assert meta["status"] == "finished" and len(meta["order"]) == len(df1)
    assert (dir1 / "per_query" / f"{ok.iloc[0].cell_id}.npz").is_file()


@pytest.mark.integration
def test_parallel_workers_give_the_same_results():
    cfg = small_config(datasets=["scifact"], budgets=[32], families=["PQ{m}x8", "PCA{d},SQ8"])
    serial, _ = run(cfg, progress=False)
    parallel, pdir = run(cfg, progress=False, workers=2)
    assert json.loads((pdir / "run.json").read_text())["execution"]["workers"] == 2
    pd.testing.assert_frame_equal(serial[QUALITY], parallel[QUALITY])


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.integration
def test_dask_cluster_gives_the_same_results(tmp_path):
    cfg = small_config(datasets=["scifact"], budgets=[32], families=["PQ{m}x8"], compressors=["F32", "BIN"])
    local, _ = run(cfg, progress=False)
    port = _free_port()
    bindir = Path(sys.executable).parent
    procs = [subprocess.Popen([str(bindir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--no-dashboard"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        for _ in range(2):
            procs.append(subprocess.Popen([str(bindir / "dask"), "worker", f"tcp://127.0.0.1:{port}",
                                           "--nthreads", "1", "--nworkers", "1", "--no-dashboard",
                                           "--local-directory", str(tmp_path)],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        from distributed import Client
        with Client(f"tcp://127.0.0.1:{port}", timeout="30s") as client:
            client.wait_for_workers(2, timeout=60)
        remote, rdir = run(cfg, progress=False, executor="dask", scheduler=f"tcp://127.0.0.1:{port}")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)
    assert json.loads((rdir / "run.json").read_text())["execution"]["executor"] == "dask"
    pd.testing.assert_frame_equal(local[QUALITY], remote[QUALITY])


@pytest.mark.integration
def test_unreachable_scheduler_is_one_line():
    with pytest.raises(EmbpressError, match="cannot reach the Dask scheduler"):
        run(small_config(datasets=["stsbenchmark"], families=[], budgets=[]), progress=False,
            executor="dask", scheduler=f"tcp://127.0.0.1:{_free_port()}")


@pytest.mark.integration
def test_resume_after_kill_9_equals_an_uninterrupted_run(tmp_path):
    grid = tmp_path / "resume.toml"
    grid.write_text('datasets = ["scifact", "stsbenchmark"]\nmodels = ["all-MiniLM-L6-v2"]\n'
                    'compressors = ["F32", "F16", "SQ8", "SQ4", "BIN"]\nbudgets = [8, 16, 32, 64]\n'
                    'families = ["PCA{d},SQ8", "PCA{d},SQ4", "PQ{m}x8", "PCA{d},BIN"]\n'
                    'max_queries = 150\nmax_docs = 600\n')
    env = dict(os.environ)
    # embed first so that the kill lands in the grid, not in the encoder
    subprocess.run([sys.executable, "-m", "embpress.cli", "run", "--grid", str(grid), "-c", "F32", "--no-progress", "-q"],
                   env=env, check=True, capture_output=True)
    out = tmp_path / "killed"
    # cold fits (--no-fit-cache) keep the run slow enough to be killed in the middle
    proc = subprocess.Popen([sys.executable, "-m", "embpress.cli", "run", "--grid", str(grid), "--out", str(out),
                             "--no-progress", "-q", "--no-fit-cache"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cells = out / "cells.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (not cells.is_file() or len(cells.read_text().splitlines()) < 12):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    n_before = len(cells.read_text().splitlines())
    assert 12 <= n_before, "the run finished before it could be killed"
    with open(cells, "a") as f:                 # a torn line, as a kill in mid-write leaves
        f.write('{"cell_id": "torn", "compr')
    p = subprocess.run([sys.executable, "-m", "embpress.cli", "run", "--resume", str(out), "--no-progress",
                        "--no-fit-cache"],
                       env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    assert f"resuming: {n_before} cells already done" in p.stderr
    resumed = pd.read_parquet(out / "results.parquet")
    # the uninterrupted run with the CLI's worker and thread settings and fresh fits, as the killed
    # and resumed runs: BLAS rounds differently with another thread count (a cached fit may come
    # from one), which can move a PCA value across an int4 level
    from embpress.cli import DEFAULT_WORKERS
    full, _ = run(embpress.grid.load_grid(str(grid)), progress=False, workers=DEFAULT_WORKERS, fit_cache=False)
    assert not resumed.cell_id.duplicated().any() and "torn" not in set(resumed.cell_id)
    assert list(resumed.cell_id) == list(full.cell_id)
    pd.testing.assert_frame_equal(resumed[QUALITY], full[QUALITY])


def test_bring_your_own_vectors(tmp_path, corpus_vectors, query_vectors, scifact_sample):
    ds, _ = scifact_sample
    only = tmp_path / "prod-vectors"
    only.mkdir()
    np.save(only / "corpus.npy", corpus_vectors)
    df, rdir = run(RunConfig(datasets=[str(only)], models=["minilm"], compressors=["F32", "SQ8", "BIN"]),
                   progress=False)
    assert set(df.task) == {"neighbours"} and df.ndcg_at_10.isna().all()
    assert df.loc[df.compressor == "F32", "knn_recall_at_10"].item() == 100
    assert df.n_queries.iloc[0] == 40 and df.n_vectors.iloc[0] == 360   # 10 % held out as queries
    full = tmp_path / "with-qrels"
    full.mkdir()
    np.save(full / "corpus.npy", corpus_vectors)
    np.save(full / "queries.npy", query_vectors)
    (full / "corpus_ids.txt").write_text("\n".join(ds.corpus_ids))
    (full / "query_ids.txt").write_text("\n".join(ds.query_ids))
    (full / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"{q}\t{d}\t{s}\n" for q, docs in ds.qrels.items() for d, s in docs.items()))
    df2, _ = embpress.run(datasets=[str(full)], compressors=["F32", "SQ8"], progress=False), None
    assert set(df2.task) == {"retrieval"} and df2.ndcg_at_10.notna().all()
    bad = tmp_path / "bad"
    bad.mkdir()
    np.save(bad / "corpus.npy", np.full((10, 4), np.nan, dtype=np.float32))
    with pytest.raises(EmbpressError, match="NaN"):
        run(RunConfig(datasets=[str(bad)], models=["minilm"], compressors=["F32"]), progress=False)


def test_calibration_on_separate_vectors_is_recorded(tmp_path, corpus_vectors):
    cfg = small_config(datasets=["scifact"], compressors=["SQ8", "PQ16x8"], families=[], budgets=[],
                       calibration="sample:260")
    df, _ = run(cfg, progress=False)
    # sample:N draws N vectors from the other folds: cross-fitted, never in-sample
    assert (df.calibration == "sample:260").all() and (df.n_train == 260).all()
    assert (df.protocol == "crossfit:2").all()
    np.save(tmp_path / "calib.npy", corpus_vectors[:350])
    df2, _ = run(replace_cfg(cfg, calibration=f"file:{tmp_path / 'calib.npy'}"), progress=False)
    assert (df2.n_train == 350).all() and df2.calibration.str.startswith("file:").all()
    assert (df2.protocol == "external").all()
    with pytest.raises(EmbpressError, match="must be crossfit.*sample:N, corpus"):
        run(replace_cfg(cfg, calibration="bogus"), progress=False)


@pytest.mark.integration
def test_a_family_can_have_its_own_calibration(tmp_path):
    """Slow trainers on a sample, the rest on the whole corpus, in one run; a bad family
    calibration is refused before anything runs, and grid files accept the key."""
    cfg = small_config(datasets=["scifact"], compressors=["SQ8"], budgets=[16],
                       calibration="corpus",
                       families=["PQ{m}x8", {"template": "PQ{m}x8:niter=5", "calibration": "sample:260"}])
    df, _ = run(cfg, progress=False)
    by_spec = df.set_index("compressor")
    assert by_spec.loc["SQ8", "calibration"] == "corpus" and by_spec.loc["SQ8", "n_train"] == 600
    assert by_spec.loc["PQ16x8", "calibration"] == "corpus" and by_spec.loc["PQ16x8", "n_train"] == 600
    assert by_spec.loc["PQ16x8", "protocol"] == "in-sample"
    assert by_spec.loc["PQ16x8:niter=5", "calibration"] == "sample:260"
    assert by_spec.loc["PQ16x8:niter=5", "n_train"] == 260
    assert by_spec.loc["PQ16x8:niter=5", "protocol"] == "crossfit:2"
    assert df.cell_id.is_unique
    with pytest.raises(EmbpressError, match="sample:N needs a whole number"):
        run(replace_cfg(cfg, families=[{"template": "PQ{m}x8", "calibration": "sample:lots"}]), progress=False)
    from embpress.grid import load_grid
    grid = tmp_path / "g.toml"
    grid.write_text('datasets = ["scifact"]\nmodels = ["minilm"]\nbudgets = [16]\n'
                    'families = [{ template = "PQ{m}x8", calibration = 300 }]\n')
    with pytest.raises(EmbpressError, match="calibration = "):
        load_grid(str(grid))


def replace_cfg(cfg, **kw):
    from dataclasses import replace
    return replace(cfg, **kw)
