"""The run folder (embpress.runfolder) and the one atomic write (embpress.files): what the runner
writes is where every reader looks, and a failed write leaves the old file whole."""
from __future__ import annotations

import errno
import json

import numpy as np
import pytest

from embpress.files import atomic_write, load_npz, safe_name, save_npz, temporary_path, write_text
from embpress.runfolder import RunFolder, RunWriter, load_run, read_cells
from embpress.stats import paired_arrays, retained_cis


def test_a_failed_write_keeps_the_old_file_and_names_the_file_meant(tmp_path):
    target = tmp_path / "deep" / "run.json"
    write_text(target, "old")

    def disk_full(tmp):
        tmp.write_text("half of the new")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError) as info:
        atomic_write(target, disk_full)
    assert info.value.filename == str(target) and "No space left" in str(info.value)
    assert target.read_text() == "old" and list(target.parent.iterdir()) == [target]
    assert temporary_path(target).parent == target.parent and temporary_path(target).name.endswith(".part")


def test_arrays_round_trip_without_pickle(tmp_path):
    path = tmp_path / "a.npz"
    save_npz(path, {"x": np.arange(3.0), "ids": np.asarray(["q1", "q2"])}, baseline={"ndcg_at_10": 61.5})
    z = load_npz(path)
    assert z["x"].tolist() == [0.0, 1.0, 2.0] and z["ids"].tolist() == ["q1", "q2"]
    assert json.loads(str(z["baseline"])) == {"ndcg_at_10": 61.5}
    np.savez(tmp_path / "objects.npz", o=np.asarray([{"a": 1}], dtype=object))
    with pytest.raises(ValueError):                 # an object array would need pickle: refused
        load_npz(tmp_path / "objects.npz")


def test_what_the_writer_saves_is_what_the_readers_find(tmp_path):
    """A run written through RunWriter (as the runner does) read back by load_run, the bootstrap
    and the paired arrays: all through RunFolder's paths, names with odd characters included."""
    run = tmp_path / "run"
    run.mkdir()
    writer = RunWriter(run, {"datasets": ["d"], "models": ["org/m"]})
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 100, 40)
    writer.save_baseline("org/m", "my data", {"ndcg_at_10": base}, {"ndcg_at_10": float(base.mean())})
    cell = base - rng.uniform(0, 5, 40)
    writer.save_cell_arrays("abc123", {"ndcg_at_10": cell})
    row = {"cell_id": "abc123", "model": "org/m", "dataset": "my data", "task": "retrieval", "status": "ok",
           "compressor": "SQ8", "main_metric": "ndcg_at_10", "quality": float(cell.mean()),
           "retained_pct": 100 * cell.mean() / base.mean()}
    writer.add_cell(row)
    df = writer.finish()
    folder = RunFolder(run)
    assert folder.baseline("org/m", "my data").name == f"baseline__{safe_name('org/m')}__my_data.npz"
    assert folder.baseline("org/m", "my data").is_file() and folder.cell_arrays("abc123").is_file()
    assert read_cells(folder.cells) == [json.loads(folder.cells.read_text())]
    loaded, meta = load_run(run)
    assert meta["status"] == "finished" and loaded.cell_id.tolist() == ["abc123"] and len(df) == 1
    c, b, statistic, gold = paired_arrays(run, row)
    assert (c == cell).all() and (b == base).all() and statistic == "mean" and gold is None
    ci = retained_cis(run, loaded)
    assert ci.ci_low.iloc[0] < row["retained_pct"] < ci.ci_high.iloc[0] < 100
