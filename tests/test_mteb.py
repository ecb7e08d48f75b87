"""embpress inside mteb: real mteb, real FAISS, the real model, tasks from the datasets mirror.

mteb's scores of a spec equal the grid's on the same embeddings and calibration; mteb's result
cache keeps specs apart; the offline loader opens no socket; an unreachable task is one line."""
import json
import socket
import subprocess
import sys

import numpy as np
import pytest

from embpress.errors import EmbpressError
from embpress.grid import RunConfig
from embpress.results import COLUMNS

pytestmark = pytest.mark.integration   # mteb on the mirror's tasks and the real model

SPECS = ["F32", "SQ8", "BIN", "PQ48x8"]
#: SciFact: the quick grid's sample (its embeddings are shared with other tests); STSBenchmark:
#: all 1,379 pairs. BIN's decoded vectors are ±1/√384, so many pairs have exactly the same
#: cosine; the grid's cosine (compressors.base.cosine_rows) and mteb's (sklearn's
#: paired_cosine_distances) both split some of those ties by float32 rounding, each its own way.
#: On 150 pairs that moves BIN's Spearman by 0.03 points, on the whole test split by 0.002.
SAMPLES = {"scifact": dict(max_queries=150, max_docs=600), "stsbenchmark": {}}
TASKS = {"scifact": "SciFact", "stsbenchmark": "STSBenchmark"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Per dataset: a grid run and an `embpress mteb` run of the same specs, calibration and sample."""
    from embpress.mteb.command import MtebConfig, run_mteb
    from embpress.runner import run
    base = tmp_path_factory.mktemp("mteb")
    out = {}
    for name, sample in SAMPLES.items():
        (base / f"grid-{name}").mkdir()
        grid_df, grid_dir = run(RunConfig(datasets=[name], models=["all-MiniLM-L6-v2"], compressors=SPECS,
                                          calibration="corpus", **sample), out_dir=base / f"grid-{name}", progress=False)
        mteb_df, mteb_dir = run_mteb(MtebConfig(tasks=[TASKS[name]], compressors=SPECS, calibration="corpus",
                                                with_mteb_wrapper=True, **sample),
                                     out=base / f"mteb-{name}", echo=lambda m: None)
        out[name] = grid_df, grid_dir, mteb_df, mteb_dir
    return out


@pytest.mark.parametrize("dataset, metric", [("scifact", "ndcg_at_10"), ("stsbenchmark", "spearman")])
def test_mteb_score_equals_the_grid_score(runs, dataset, metric):
    grid_df, _, mteb_df, _ = runs[dataset]
    g = grid_df.set_index("compressor")
    m = mteb_df.set_index("compressor")
    for spec in SPECS:
        assert g.loc[spec, "status"] == "ok" and m.loc[spec, "status"] == "ok"
        print(f"{dataset} {spec}: grid {metric}={g.loc[spec, metric]:.4f}, mteb {m.loc[spec, metric]:.4f}")
        assert abs(g.loc[spec, metric] - m.loc[spec, metric]) <= 0.01, (spec, g.loc[spec, metric], m.loc[spec, metric])
        assert m.loc[spec, "bytes_per_vector"] == g.loc[spec, "bytes_per_vector"]
        assert m.loc[spec, "calibration"] == g.loc[spec, "calibration"]
    assert m.loc["BIN", metric] < m.loc["F32", metric] - 1          # the codec really is in the loop
    if dataset == "scifact":   # neighbour fidelity from mteb's rankings, against the float32 ranking
        for spec in SPECS:
            assert abs(g.loc[spec, "knn_recall_at_10"] - m.loc[spec, "knn_recall_at_10"]) <= 0.01


def test_run_folder_has_mteb_results_and_the_grid_columns(runs):
    from embpress.compare import compare_runs
    from embpress.report import build_report
    grid_df, grid_dir, mteb_df, mteb_dir = runs["scifact"]
    assert list(mteb_df.columns[:len(COLUMNS)]) == COLUMNS
    results = mteb_dir / "mteb" / "results"
    for spec in SPECS:
        row = mteb_df[(mteb_df.dataset == "scifact") & (mteb_df.compressor == spec)].iloc[0]
        files = list(results.glob(f"*/*/experiments/{row.mteb_experiment}/SciFact.json"))
        assert len(files) == 1
        saved = json.loads(files[0].read_text())["scores"]["test"][0]
        assert abs(100 * saved["ndcg_at_10"] - row.ndcg_at_10) < 1e-9
        meta = json.loads((files[0].parent / "model_meta.json").read_text())
        assert meta["experiment_kwargs"]["embpress"] == spec
    assert build_report(mteb_dir).is_file()
    c = compare_runs(grid_dir, mteb_dir)
    both = c.cells[c.cells.status_b == "ok"].dropna(subset=["quality_a"])
    assert len(both) == len(SPECS)
    assert (abs(both.quality_b - both.quality_a) <= 0.01).all()


def test_mteb_compression_wrapper_rows(runs):
    _, _, mteb_df, mteb_dir = runs["scifact"]
    w = mteb_df[mteb_df.family == "mteb CompressionWrapper"].set_index(["dataset", "compressor"])
    assert len(w) == 2 and (w.status == "ok").all()
    assert w.loc[("scifact", "mteb:int8"), "bytes_per_vector"] == 384
    assert w.loc[("scifact", "mteb:binary"), "bytes_per_vector"] == 48
    f32 = mteb_df[(mteb_df.dataset == "scifact") & (mteb_df.compressor == "F32")].quality.iloc[0]
    assert 50 < w.loc[("scifact", "mteb:int8"), "quality"] <= f32 + 1
    assert list((mteb_dir / "mteb" / "results").glob("*/*/experiments/output_dtypes_int8/SciFact.json"))


def _fitted(spec, calib):
    from compressors import parse_spec
    return parse_spec(spec).fit(calib)


def test_result_cache_written_by_one_spec_is_not_reused_for_another(tmp_path):
    import mteb
    from embpress.fitcache import calibration_digest
    from embpress.embed import embed_dataset
    from embpress.mteb import CompressedModel, TextEncoder, load_task
    base = TextEncoder()
    lt = load_task("STSBenchmark", max_queries=150)
    vecs = embed_dataset(base.info, lt.ds, progress=False)
    base.remember(lt.ds.sentences1, vecs["sentences1"])
    base.remember(lt.ds.sentences2, vecs["sentences2"])
    calib = np.concatenate([vecs["sentences1"], vecs["sentences2"]])
    digest = calibration_digest(calib)
    cache = mteb.ResultCache(tmp_path / "cache")

    def score(spec, cache):
        model = CompressedModel(base, _fitted(spec, calib), calibration="pairs", calibration_sha256=digest)
        res = mteb.evaluate(model, lt.task, cache=cache, show_progress_bar=False)
        return res.task_results[0].get_score()

    sq8, bin_cached, bin_fresh = score("SQ8", cache), score("BIN", cache), score("BIN", None)
    assert bin_cached == bin_fresh and bin_cached != sq8
    assert len(list((tmp_path / "cache").glob("results/*/*/experiments/*/STSBenchmark.json"))) == 2
    before = dict(base.stats)
    assert abs(score("SQ8", cache) - sq8) < 1e-6 and base.stats == before   # read back (rounded), not re-run
    other = CompressedModel(base, _fitted("SQ8", calib[:100]), calibration="sample:100",
                            calibration_sha256=calibration_digest(calib[:100]))
    assert other.mteb_model_meta.experiment_name != CompressedModel(
        base, _fitted("SQ8", calib), calibration="pairs", calibration_sha256=digest).mteb_model_meta.experiment_name


def test_offline_loader_opens_no_socket(monkeypatch):
    import mteb
    from embpress.mteb import CompressedModel, TextEncoder, load_task
    attempts = []

    def refuse(self, address, *a, **k):
        attempts.append(address)
        raise OSError(f"network disabled in this test (connect to {address})")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    sci = load_task("SciFact", max_queries=20, max_docs=100)
    sts = load_task("STSBenchmark", max_queries=50)
    assert len(sci.task.dataset["default"]["test"]["corpus"]) == 100 and sci.ds.location.split(":")[0] in ("mirror", "cache")
    base = TextEncoder()
    from embpress.embed import embed_dataset
    vecs = embed_dataset(base.info, sts.ds, progress=False)
    base.remember(sts.ds.sentences1, vecs["sentences1"])
    base.remember(sts.ds.sentences2, vecs["sentences2"])
    calib = np.concatenate([vecs["sentences1"], vecs["sentences2"]])
    model = CompressedModel(base, _fitted("SQ8", calib), calibration="pairs", calibration_sha256="x" * 16)
    res = mteb.evaluate(model, sts.task, cache=None, show_progress_bar=False)
    assert 0.5 < res.task_results[0].get_score() <= 1
    with pytest.raises(EmbpressError, match="not reachable"):
        load_task("ArguAna")
    assert attempts == []


@pytest.mark.parametrize("args, message", [
    (["-t", "ArguAna", "-c", "F32"], "MTEB task 'ArguAna': its data is not reachable"),
    (["-t", "NoSuchTask", "-c", "F32"], "unknown MTEB task 'NoSuchTask'"),
    (["-t", "SciFact", "-c", "ZZ9"], "unknown compressor stage 'ZZ9'"),
    (["-t", "SciFact", "--calibration", "lots"], "must be crossfit"),
    (["-t", "SciFact", "--calibration", "crossfit:2"], "no single-model equivalent"),
    (["-t", "SciFact", "--calibration", "sample:100"], "no single-model equivalent"),
])
def test_bad_mteb_input_gives_one_line_and_exit_2(args, message):
    p = subprocess.run([sys.executable, "-m", "embpress.cli", "mteb", *args], capture_output=True, text=True,
                       timeout=300, stdin=subprocess.DEVNULL)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and message in lines[0], p.stderr


def test_text_encoder_encodes_unknown_texts_with_the_model_and_reuses_the_cache(sts_sample):
    """Texts embpress has not cached go through the real model (mteb's sentence-transformers
    wrapper); cached ones are looked up, and both give the same vectors."""
    from datasets import Dataset
    from mteb import get_task
    from torch.utils.data import DataLoader
    from embpress.mteb import TextEncoder
    ds, vecs = sts_sample
    texts = ds.sentences1[:16]
    loader = DataLoader(Dataset.from_dict({"text": texts}), batch_size=8)
    meta = get_task("STSBenchmark").metadata
    enc = TextEncoder()
    fresh = enc.encode(loader, task_metadata=meta, hf_split="test", hf_subset="default")
    assert enc.stats == {"cached": 0, "encoded": 16}
    again = enc.encode(loader, task_metadata=meta, hf_split="test", hf_subset="default")
    assert enc.stats == {"cached": 16, "encoded": 16}          # what it encoded once, it remembers
    np.testing.assert_array_equal(again, fresh)
    known = TextEncoder()
    known.remember(ds.sentences1, vecs["sentences1"])
    cached = known.encode(loader, task_metadata=meta, hf_split="test", hf_subset="default")
    assert known.stats == {"cached": 16, "encoded": 0}
    np.testing.assert_array_equal(cached, np.asarray(vecs["sentences1"][:16]))
    np.testing.assert_allclose(fresh, cached, atol=2e-5)
