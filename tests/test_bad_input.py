"""Every bad input a new user can give: `embpress ...` (cli.main, in-process) exits 2 with one line
on stderr naming the problem, no traceback, and creates no run folder."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from embpress.cli import main

DIM = 8


def _grid(tmp: Path, body: str | bytes) -> str:
    path = tmp / "grid.toml"
    path.write_bytes(body if isinstance(body, bytes) else body.encode())
    return str(path)


def _grid_with(tmp: Path, line: str) -> str:
    base = {"datasets": 'datasets = ["scifact"]', "models": 'models = ["minilm"]',
            "compressors": 'compressors = ["F32"]'}
    key = line.split("=")[0].strip()
    base[key] = line
    return _grid(tmp, "\n".join(base.values()) + "\n")


def _folder(tmp: Path, n: int = 20, queries: int | None = 5, corpus_ids=None, query_ids=None, qrels=None,
            corpus: np.ndarray | None = None) -> str:
    """A bring-your-own retrieval folder, made wrong by one argument."""
    d = tmp / "vectors"
    d.mkdir()
    rng = np.random.default_rng(0)
    np.save(d / "corpus.npy", rng.standard_normal((n, DIM)).astype(np.float32) if corpus is None else corpus)
    if queries is not None:
        np.save(d / "queries.npy", rng.standard_normal((queries, DIM)).astype(np.float32))
    for name, ids in (("corpus_ids.txt", corpus_ids), ("query_ids.txt", query_ids)):
        if ids is not None:
            (d / name).write_text("\n".join(ids) + "\n")
    if qrels is not None:
        (d / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{c}\t{s}\n" for q, c, s in qrels))
    return str(d)


def _pairs(tmp: Path, scores) -> str:
    d = tmp / "pairs"
    d.mkdir()
    n = len(scores)
    rng = np.random.default_rng(1)
    np.save(d / "sentences1.npy", rng.standard_normal((n, DIM)).astype(np.float32))
    np.save(d / "sentences2.npy", rng.standard_normal((n, DIM)).astype(np.float32))
    np.save(d / "scores.npy", np.asarray(scores, dtype=np.float64))
    return str(d)


def _garbage(tmp: Path) -> str:
    d = tmp / "vectors"
    d.mkdir()
    (d / "corpus.npy").write_bytes(b"\x93NUMPY not really")
    return str(d)


def _run_json(tmp: Path, text: str = "{not json") -> str:
    d = tmp / "run"
    d.mkdir()
    (d / "run.json").write_text(text)
    return str(d)


IDS = [str(i) for i in range(20)]
QIDS = [f"q{i}" for i in range(5)]
C = ["run", "-c", "F32", "--no-progress", "--no-report"]

#: (argv builder given a tmp folder, text the one line must contain)
CASES = {
    # sizes and counts (finding 4)
    "max-docs negative": (lambda t: ["run", "--max-docs", "-5"], "max_docs must be a whole number of at least 1"),
    "max-docs zero": (lambda t: ["run", "--max-docs", "0"], "max_docs must be a whole number of at least 1"),
    "max-queries zero": (lambda t: ["run", "--max-queries", "0"], "max_queries must be"),
    "max-queries negative": (lambda t: ["run", "--max-queries", "-200"], "max_queries must be"),
    "max-queries not a number": (lambda t: ["run", "--max-queries", "x"], "invalid int value"),
    "k zero": (lambda t: ["run", "--k", "0"], "k must be a whole number of at least 1"),
    "k negative": (lambda t: ["run", "--k", "-3"], "k must be"),
    "workers zero": (lambda t: ["run", "-j", "0"], "workers must be"),
    "threads negative": (lambda t: ["run", "--threads", "-1"], "threads must be"),
    "calibration sample 0": (lambda t: ["run", "--calibration", "sample:0"], "sample:N needs a whole number N >= 1"),
    "calibration unknown": (lambda t: ["run", "--calibration", "bogus"], "must be crossfit[:K], sample:N, corpus"),
    "calibration one fold": (lambda t: ["run", "--calibration", "crossfit:1"], "crossfit:K needs 2 <= K <= 20"),
    "calibration missing file": (lambda t: [*C, "--calibration", f"file:{t}/none.npy"], "not a readable .npy"),
    # names and specs
    "unknown dataset": (lambda t: ["run", "-d", "nosuch"], "unknown dataset 'nosuch'"),
    "empty dataset name": (lambda t: ["run", "-d", ""], "datasets must be a non-empty list"),
    "unknown model": (lambda t: ["run", "-m", "nosuch"], "unknown model 'nosuch'"),
    "unknown encoder variant": (lambda t: ["run", "-m", "minilm@prune-head50"], "unknown encoder variant"),
    "pruning everything": (lambda t: ["run", "-m", "minilm@prune-emb100"], "outside 1..99"),
    "sharing with 9 bits": (lambda t: ["run", "-m", "minilm@share9"], "2..8 bits"),
    "trimming on an unknown dataset": (lambda t: ["run", "-m", "minilm@trim-nosuch"], "unknown dataset 'nosuch'"),
    "unknown stage": (lambda t: ["run", "-c", "ZZ9"], "unknown compressor stage 'ZZ9'"),
    "empty stage": (lambda t: ["run", "-c", "PCA128,"], "empty stage"),
    "PQ that does not split": (lambda t: ["run", "-c", "PQ5x8"], "do not split into 5 equal sub-vectors"),
    "1,460-stage spec": (lambda t: ["run", "-c", "ROT," * 1459 + "F32"], "is too long"),
    "300-character spec": (lambda t: ["run", "-c", "PCA128:seed=" + "1" * 300 + ",SQ8"], "is too long"),
    "unknown grid": (lambda t: ["run", "--grid", "nosuch"], "grid 'nosuch' not found"),
    # --resume cannot change a run (finding 9)
    "resume with --k": (lambda t: ["run", "--resume", str(t), "--k", "5"], "--k cannot change it"),
    "resume with --max-docs": (lambda t: ["run", "--resume", str(t), "--max-docs", "9"], "--max-docs cannot change"),
    "resume with -d": (lambda t: ["run", "--resume", str(t), "-d", "scifact"], "--dataset cannot change"),
    "resume of no run": (lambda t: ["run", "--resume", str(t / "none")], "not a resumable run folder"),
    # executors (finding 7)
    "unknown executor": (lambda t: [*C, "--executor", "spark"], "unknown executor 'spark'"),
    "dask without scheduler": (lambda t: [*C, "--executor", "dask"], "needs --scheduler"),
    "dask address not an address": (lambda t: [*C, "--executor", "dask", "--scheduler", "localhost"],
                                    "not a scheduler address"),
    "dask port out of range": (lambda t: [*C, "--executor", "dask", "--scheduler", "tcp://h:99999"],
                               "not a scheduler address"),
    # grid files (findings 6, 9)
    "grid not TOML": (lambda t: ["run", "--grid", _grid(t, "datasets = [scifact\n")], "not valid TOML"),
    "grid not UTF-8": (lambda t: ["run", "--grid", _grid(t, b'datasets = ["sci\xff\xfe"]\n')], "not UTF-8"),
    "grid unknown key": (lambda t: ["run", "--grid", _grid_with(t, "colour = 1")], "unknown key(s) colour"),
    "grid empty datasets": (lambda t: ["run", "--grid", _grid_with(t, "datasets = []")], "datasets must be a non-empty"),
    "grid empty models": (lambda t: ["run", "--grid", _grid_with(t, "models = []")], "models must be a non-empty"),
    "grid k as text": (lambda t: ["run", "--grid", _grid_with(t, 'k = "5"')], "k must be a whole number"),
    "grid k as bool": (lambda t: ["run", "--grid", _grid_with(t, "k = true")], "k must be a whole number"),
    "grid max_docs zero": (lambda t: ["run", "--grid", _grid_with(t, "max_docs = 0")], "max_docs must be"),
    "grid batch_size float": (lambda t: ["run", "--grid", _grid_with(t, "batch_size = 1.5")], "batch_size must be"),
    "grid calibration number": (lambda t: ["run", "--grid", _grid_with(t, "calibration = 5")],
                                "calibration must be a string"),
    "grid compressors numbers": (lambda t: ["run", "--grid", _grid_with(t, "compressors = [1]")],
                                 "compressors must be a list of strs"),
    "grid budgets text": (lambda t: ["run", "--grid", _grid(t, 'datasets = ["scifact"]\nmodels = ["minilm"]\n'
                                                           'budgets = ["8"]\nfamilies = ["PQ{m}x8"]\n')],
                          "budgets must be a list of ints"),
    "grid datasets a string": (lambda t: ["run", "--grid", _grid_with(t, 'datasets = "scifact"')],
                               "datasets must be a list"),
    # bring-your-own folders (findings 3, 5, 6)
    "byo duplicate corpus ids": (lambda t: ["run", "-d", _folder(t, corpus_ids=["a"] * 20)] + C[1:],
                                 "corpus ids must be unique"),
    "byo duplicate query ids": (lambda t: ["run", "-d", _folder(t, query_ids=["q"] * 5)] + C[1:],
                                "query ids must be unique"),
    "byo qrels unknown document": (lambda t: ["run", "-d", _folder(t, corpus_ids=IDS, query_ids=QIDS,
                                                                   qrels=[("q0", "nope", 1)])] + C[1:],
                                   "qrels name 1 documents that are not in corpus_ids.txt"),
    "byo qrels unknown query": (lambda t: ["run", "-d", _folder(t, corpus_ids=IDS, query_ids=QIDS,
                                                                qrels=[("qx", "0", 1)])] + C[1:],
                                "qrels name 1 queries that are not in query_ids.txt"),
    "byo qrels nothing relevant": (lambda t: ["run", "-d", _folder(t, corpus_ids=IDS, query_ids=QIDS,
                                                                   qrels=[("q0", "0", 0)])] + C[1:],
                                   "judges no document relevant"),
    "byo id count mismatch": (lambda t: ["run", "-d", _folder(t, corpus_ids=IDS[:3])] + C[1:], "3 ids for 20 corpus"),
    "byo empty corpus": (lambda t: ["run", "-d", _folder(t, corpus=np.zeros((0, DIM), np.float32))] + C[1:],
                         "0 vectors of 8 dimensions"),
    "byo zero-width corpus": (lambda t: ["run", "-d", _folder(t, corpus=np.zeros((5, 0), np.float32))] + C[1:],
                              "5 vectors of 0 dimensions"),
    "byo one vector, no queries": (lambda t: ["run", "-d", _folder(t, n=1, queries=None)] + C[1:],
                                   "needs at least 2 vectors"),
    "byo integer vectors": (lambda t: ["run", "-d", _folder(t, corpus=np.ones((5, DIM), np.int32))] + C[1:],
                            "expected a 2-d float array"),
    "byo NaN vectors": (lambda t: ["run", "-d", _folder(t, corpus=np.full((5, DIM), np.nan, np.float32))] + C[1:],
                        "contains NaN or infinite values"),
    "byo not a .npy": (lambda t: ["run", "-d", _garbage(t)] + C[1:], "is not a readable .npy file"),
    "byo gold NaN": (lambda t: ["run", "-d", _pairs(t, [1.0, np.nan, 3.0])] + C[1:], "NaN or infinite"),
    "byo gold constant": (lambda t: ["run", "-d", _pairs(t, [2.0] * 6)] + C[1:], "every gold score is 2"),
    "byo one pair": (lambda t: ["run", "-d", _pairs(t, [2.0])] + C[1:], "a correlation needs at least 2"),
    # show, report, compare (findings 6, 8)
    "show no run": (lambda t: ["show", str(t)], "is not a run folder"),
    "show run.json garbage": (lambda t: ["show", _run_json(t)], "is not a readable run folder"),
    "show run.json a list": (lambda t: ["show", _run_json(t, "[]")], "run.json is not an object"),
    "report no run": (lambda t: ["report", str(t / "nowhere")], "is not a run folder"),
    "report --out a file": (lambda t: ["report", _run_json(t), "--out", _grid(t, "x")], "is a file"),
    "compare no run": (lambda t: ["compare", str(t / "a"), str(t / "b")], "neither a run folder"),
    "compare negative tolerance": (lambda t: ["compare", "--quality-tol", "-1", "a", "b"], "quality-tol"),
    "compare NaN tolerance": (lambda t: ["compare", "--quality-tol", "nan", "a", "b"], "quality-tol"),
    "compare speed ratio below 1": (lambda t: ["compare", "--speed-ratio", "0.5", "a", "b"], "speed-ratio"),
    "unknown command": (lambda t: ["frobnicate"], "invalid choice"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_exit_2(case, tmp_path, capsys):
    build, message = CASES[case]
    argv = build(tmp_path)
    results = Path(os.environ["EMBPRESS_RESULTS"])
    before = set(results.iterdir()) if results.is_dir() else set()
    try:
        code = main(argv)
    except SystemExit as exc:            # argparse's own errors exit from inside parse_args
        code = exc.code
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.strip()]
    assert code == 2, (case, err)
    assert "Traceback" not in err
    assert len(lines) == 1 and message in lines[0], (case, err)
    after = set(results.iterdir()) if results.is_dir() else set()
    assert after == before, f"{case}: a run folder was created for bad input"

