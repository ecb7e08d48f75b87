"""Faults while running or reading runs: a full disk, an unwritable folder, a half-written or
torn run, a peer that is not a Dask scheduler, concurrent fits of one cache entry. Each ends in
one line or a clear note, and nothing already written is lost. Runs here use small
bring-your-own vector folders (no model), so they take seconds."""
from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from compressors import parse_spec
from embpress import fitcache
from embpress.cli import main
from embpress.errors import EmbpressError
from embpress.grid import RunConfig
from embpress.files import temporary_path
from embpress.runfolder import read_cells
from embpress.runner import run
from embpress.tasks import task_of
from embpress.validate import metric_problem

SPECS = ["F32", "SQ8", "PCA8,SQ8", "BIN", "SQ4"]
QUALITY = ["compressor", "status", "bytes_per_vector", "ndcg_at_10", "recall_at_100", "knn_recall_at_10"]


def _retrieval_folder(base: Path) -> Path:
    rng = np.random.default_rng(3)
    d = base / "small-retrieval"
    d.mkdir()
    corpus = rng.standard_normal((300, 16)).astype(np.float32)
    queries = corpus[:30] + 0.3 * rng.standard_normal((30, 16)).astype(np.float32)
    np.save(d / "corpus.npy", corpus)
    np.save(d / "queries.npy", queries)
    (d / "corpus_ids.txt").write_text("".join(f"d{i}\n" for i in range(300)))
    (d / "query_ids.txt").write_text("".join(f"q{i}\n" for i in range(30)))
    (d / "qrels.tsv").write_text("".join(f"q{i}\td{i}\t1\nq{i}\td{i + 100}\t1\n" for i in range(30)))
    return d


def _run(folder: Path, out: Path, specs=SPECS) -> pd.DataFrame:
    df, _ = run(RunConfig(datasets=[str(folder)], models=["minilm"], compressors=list(specs)), out_dir=out,
                progress=False, echo=lambda m: None)
    return df


@pytest.fixture(scope="module")
def done_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("faults")
    folder = _retrieval_folder(base)
    out = base / "run-a"
    out.mkdir()
    df = _run(folder, out)
    assert (df.status == "ok").all(), df[["compressor", "status", "error"]]
    return folder, out, df


def _copy(run_dir: Path, dest: Path) -> Path:
    shutil.copytree(run_dir, dest)
    return dest


def _one_line(err: str) -> str:
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.slow
def test_disk_full_when_writing_the_table_keeps_every_cell(done_run, tmp_path, capsys):
    """The disk fills up as results.parquet is written at the end: one line naming it, every cell
    kept in cells.jsonl, no torn table left; `show` reads the cells, `--resume` completes the run."""
    _, run_a, df_a = done_run
    r = _copy(run_a, tmp_path / "full")
    lines = (r / "cells.jsonl").read_text().splitlines()
    (r / "cells.jsonl").write_text("\n".join(lines[:2]) + "\n")          # killed after two cells
    (r / "results.parquet").unlink()
    temporary_path(r / "results.parquet").symlink_to("/dev/full")   # where the table is written
    assert main(["run", "--resume", str(r), "--no-progress", "--no-report", "-q"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "results.parquet" in line and "No space left on device" in line
    assert f"{len(SPECS)} finished cell(s) are kept" in line and "--resume" in line
    assert len(read_cells(r / "cells.jsonl")) == len(SPECS) and not (r / "results.parquet").exists()
    assert main(["show", str(r)]) == 0
    out = capsys.readouterr().out
    assert "partial: " in out and all(s in out for s in SPECS)
    assert main(["run", "--resume", str(r), "--no-progress", "--no-report", "-q"]) == 0   # the disk has room again
    capsys.readouterr()
    resumed = pd.read_parquet(r / "results.parquet")
    pd.testing.assert_frame_equal(resumed[QUALITY], df_a[QUALITY])


def test_fit_cache_disk_full_still_fits(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("EMBPRESS_CACHE", str(tmp_path / "cache"))
    X = np.random.default_rng(0).standard_normal((200, 16)).astype(np.float32)
    path = fitcache.fit_cache_path(parse_spec("PCA8,SQ8"), X)
    path.parent.mkdir(parents=True)
    temporary_path(path).symlink_to("/dev/full")     # where the arrays are written first
    pipe, _, cached = fitcache.fit_pipeline(parse_spec("PCA8,SQ8"), X)
    assert not cached and pipe.encode(X).shape == (200, 8) and not path.exists()
    assert any("not cached" in r.message and "No space left" in r.message for r in caplog.records)


@pytest.mark.slow
def test_unwritable_results_folder_is_one_line(done_run, monkeypatch, capsys):
    folder, _, _ = done_run
    monkeypatch.setenv("EMBPRESS_RESULTS", "/sys/embpress-results")    # not writable, even for root
    assert main(["run", "-d", str(folder), "-c", "F32", "--no-progress", "--no-report"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "/sys/embpress-results" in line and "kept" in line


@pytest.mark.slow
def test_unwritable_report_folder_is_one_line(done_run, capsys):
    _, run_a, _ = done_run
    assert main(["report", str(run_a), "--out", "/sys/embpress-report"]) == 2
    assert "/sys/embpress-report" in _one_line(capsys.readouterr().err)


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["running", "zero_byte_parquet", "torn_parquet"])
def test_half_written_runs_are_read_from_cells_and_said_partial(damage, done_run, tmp_path, capsys):
    _, run_a, df_a = done_run
    r = _copy(run_a, tmp_path / damage)
    if damage == "running":               # killed before the end: no table, a torn last line
        meta = (r / "run.json").read_text().replace('"status": "finished"', '"status": "running"')
        (r / "run.json").write_text(meta)
        (r / "results.parquet").unlink()
        with open(r / "cells.jsonl", "a") as f:
            f.write('{"cell_id": "torn", "compre')
    elif damage == "zero_byte_parquet":
        (r / "results.parquet").write_bytes(b"")
    else:
        (r / "results.parquet").write_bytes((run_a / "results.parquet").read_bytes()[:300])
    assert main(["show", str(r)]) == 0
    out = capsys.readouterr().out
    assert "partial: " in out and "cells.jsonl" in out and all(s in out for s in SPECS)
    assert main(["report", str(r), "--out", str(tmp_path / "rep")]) == 0
    assert "Partial run" in (tmp_path / "rep" / "index.html").read_text()
    capsys.readouterr()
    assert main(["compare", str(run_a), str(r), "--no-speed", "--out", str(tmp_path / "c.md")]) == 0
    assert "run B is partial" in (tmp_path / "c.md").read_text()
    capsys.readouterr()


@pytest.mark.slow
def test_compare_fails_when_b_lacks_cells_of_a(done_run, tmp_path, capsys):
    folder, run_a, _ = done_run
    fewer = tmp_path / "fewer"
    fewer.mkdir()
    _run(folder, fewer, SPECS[:3])
    md = str(tmp_path / "c.md")
    assert main(["compare", str(run_a), str(fewer), "--no-speed", "--out", md]) == 1
    assert "gate failed: run B lacks 2 of A's 5 cells" in capsys.readouterr().out
    assert main(["compare", str(run_a), str(fewer), "--no-speed", "--intersection", "--out", md]) == 0
    empty = _copy(fewer, tmp_path / "empty")
    (empty / "cells.jsonl").write_text("")
    (empty / "results.parquet").unlink()
    capsys.readouterr()
    for extra in ([], ["--intersection"]):    # nothing in common is never a pass
        assert main(["compare", str(run_a), str(empty), "--no-speed", "--out", md, *extra]) == 1
        assert "gate failed: nothing compared" in capsys.readouterr().out


def test_impossible_metrics_make_a_cell_failed(tmp_path):
    """Every pair is the same two vectors: every similarity is equal, Spearman is undefined (NaN)
    for the baseline and every cell, which are failed with the reason, never ok."""
    d = tmp_path / "same-pairs"
    d.mkdir()
    a, b = np.random.default_rng(0).standard_normal((2, 1, 8)).astype(np.float32)
    np.save(d / "sentences1.npy", np.repeat(a, 50, axis=0))
    np.save(d / "sentences2.npy", np.repeat(b, 50, axis=0))
    np.save(d / "scores.npy", np.linspace(0, 5, 50))
    out = tmp_path / "run"
    out.mkdir()
    df = _run(d, out, ["F32", "SQ8"])
    assert (df.status == "failed").all() and df.error.str.contains("impossible result: spearman is nan").all()


@pytest.mark.parametrize("row, problem", [
    ({"task": "retrieval", "ndcg_at_10": 454.0, "recall_at_100": 50.0}, "ndcg_at_10 = 454"),
    ({"task": "retrieval", "ndcg_at_10": 50.0, "recall_at_100": 10000.0}, "recall_at_100 = 10000"),
    ({"task": "retrieval", "ndcg_at_10": float("nan")}, "quality is nan"),
    ({"task": "sts", "spearman": float("nan")}, "spearman is nan"),
    ({"task": "retrieval", "knn_recall_at_10": -1.0}, "knn_recall_at_10 = -1"),
    ({"task": "neighbours", "bytes_per_vector": 0}, "bytes_per_vector = 0"),
])
def test_metric_ranges(row, problem):
    base = {"status": "ok", "task": row["task"], "knn_recall_at_10": 90.0, "quality": 50.0, "baseline_quality": 60.0,
            "spearman": 50.0, "bytes_per_vector": 8}
    bad = {**base, **row}
    if "ndcg_at_10" in row:
        bad["quality"] = row["ndcg_at_10"]
    required = task_of(row["task"]).required
    found = metric_problem(bad, required)
    assert found is not None and problem in found, found
    assert metric_problem(base, required) is None


def _server(behaviour: str):
    """A TCP peer that is not a Dask scheduler: it sends garbage, or accepts and stays silent."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    conns = []

    def serve():
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            conns.append(c)
            if behaviour == "garbage":
                c.sendall(b"\xff" * 64 + b"HTTP/1.1 200 OK\r\n\r\n" + os.urandom(4096))
    threading.Thread(target=serve, daemon=True).start()
    return srv, conns


@pytest.mark.slow
@pytest.mark.parametrize("behaviour", ["garbage", "silent"])
def test_peer_that_is_not_a_scheduler_gives_up_in_time(behaviour):
    from embpress.scheduler import connect
    srv, conns = _server(behaviour)
    t0 = time.perf_counter()
    try:
        with pytest.raises(EmbpressError, match="Dask scheduler") as info:
            connect(f"tcp://127.0.0.1:{srv.getsockname()[1]}", timeout_s=2)
    finally:
        srv.close()
        for c in conns:
            c.close()
    assert time.perf_counter() - t0 < 2 + 3 and "\n" not in str(info.value)


def test_concurrent_fits_of_one_entry(tmp_path, monkeypatch):
    """Threads (as Dask workers sharing the cache over NFS) fit and write the same entry at once:
    every fit is right, and the entry left behind loads."""
    from concurrent.futures import ThreadPoolExecutor
    monkeypatch.setenv("EMBPRESS_CACHE", str(tmp_path / "cache"))
    X = np.random.default_rng(1).standard_normal((400, 16)).astype(np.float32)
    with ThreadPoolExecutor(4) as pool:
        fits = list(pool.map(lambda _: fitcache.fit_pipeline(parse_spec("PQ4x4:niter=3"), X), range(4)))
    codes = [p.encode(X) for p, _, _ in fits]
    assert all((c == codes[0]).all() for c in codes)
    again, _, cached = fitcache.fit_pipeline(parse_spec("PQ4x4:niter=3"), X)
    assert cached and (again.encode(X) == codes[0]).all()
    assert not list((tmp_path / "cache" / "fitted").glob("*.part"))


def test_markdown_tables_escape_html():
    from embpress.report import markdown_table
    text = markdown_table(["name"], [["<script>alert(1)</script> | x & y"]])
    assert "<script>" not in text and "&lt;script&gt;" in text and "\\|" in text and "&amp;" in text


@pytest.mark.slow
def test_float32_baseline_of_zero_runs_to_the_end(tmp_path, capsys):
    """Every relevant document is the one least like its query: the float32 nDCG@10 is 0, so no
    retained % exists; the run finishes (it used to crash printing the cell) and says why."""
    rng = np.random.default_rng(5)
    d = tmp_path / "far"
    d.mkdir()
    corpus = rng.standard_normal((200, 8)).astype(np.float32)
    np.save(d / "corpus.npy", corpus)
    np.save(d / "queries.npy", -corpus[:10])
    (d / "corpus_ids.txt").write_text("".join(f"d{i}\n" for i in range(200)))
    (d / "query_ids.txt").write_text("".join(f"q{i}\n" for i in range(10)))
    (d / "qrels.tsv").write_text("".join(f"q{i}\td{i}\t1\n" for i in range(10)))
    assert main(["run", "-d", str(d), "-c", "F32", "-c", "SQ8", "--no-progress", "--no-report"]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert captured.err.count("ndcg_at_10=0.00  retained - (the float32 baseline is 0)") == 2, captured.err
