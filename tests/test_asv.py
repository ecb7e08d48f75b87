"""The asv suite (benchmarks/asv_suite, asv.conf.json), run by asv itself as a user runs it.

Non-interactive: ``asv machine --yes`` first, with HOME pointing at a temporary folder so asv's
machine file (``~/.asv-machine.json``) lands neither in the user's home nor in the repository; the
results, the published site and any environment go to a temporary folder too. ``--python=same``
benchmarks the working tree in this interpreter (asv's "existing" environment, nothing to build),
a quick run (each benchmark once) of the commit at HEAD. The sample is the test suite's (400
documents, 40 queries, ``EMBPRESS_ASV_MAX_DOCS`` / ``EMBPRESS_ASV_MAX_QUERIES``), so the embeddings
come from the session's cache.
"""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "benchmarks" / "asv_suite"
BENCHMARKS = {f"families.Speed.{n}" for n in ("time_fit", "time_encode", "time_decode", "time_search",
                                              "peakmem_encode")} | \
             {f"families.Quality.{n}" for n in ("track_ndcg_loss", "track_knn_miss_at_10",
                                                "track_bytes_per_vector")}
MACHINE = "ci-test"


def suite_specs() -> list[str]:
    """SPECS of the suite, read without importing it (the module sets environment defaults)."""
    tree = ast.parse((SUITE / "families.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "SPECS" for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError("no SPECS in benchmarks/asv_suite/families.py")


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture(scope="module")
def asv(tmp_path_factory, scifact_sample):
    from asv.util import load_json
    tmp = tmp_path_factory.mktemp("asv")
    conf = load_json(str(ROOT / "asv.conf.json"), js_comments=True)
    branch = _git("rev-parse", "--abbrev-ref", "HEAD")
    conf.update(repo=str(ROOT), branches=[branch], benchmark_dir=str(SUITE), results_dir=str(tmp / "results"),
                html_dir=str(tmp / "html"), env_dir=str(tmp / "env"))
    (tmp / "asv.conf.json").write_text(json.dumps(conf))
    (tmp / "home").mkdir()
    env = dict(os.environ, HOME=str(tmp / "home"), EMBPRESS_ASV_MAX_DOCS="400", EMBPRESS_ASV_MAX_QUERIES="40")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "asv", *args, "--config", str(tmp / "asv.conf.json")],
                              cwd=tmp, env=env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)

    machine = run("machine", "--yes", "--machine", MACHINE)
    assert machine.returncode == 0, machine.stdout + machine.stderr
    assert (tmp / "home" / ".asv-machine.json").is_file()
    return tmp, run


@pytest.fixture(scope="module")
def quick_run(asv):
    tmp, run = asv
    head = _git("rev-parse", "HEAD")
    result = run("run", "--quick", "--python=same", "--set-commit-hash", head, "--machine", MACHINE, "--show-stderr")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return tmp, head, result


def test_every_stage_is_benchmarked():
    from compressors import parse_spec, stage_classes
    specs = suite_specs()
    used = set()
    for spec in specs:
        pipe = parse_spec(spec)          # a typo would be skipped as "not available" by asv: refuse it here
        pipe.check_dim(384)
        assert pipe.to_spec() == spec
        used |= {type(s) for s in pipe.stages}
    missing = [c.spec_format for c in stage_classes() if c not in used]
    assert not missing, f"add a spec for {missing} to SPECS in benchmarks/asv_suite/families.py"


def test_asv_check_discovers_the_suite(asv):
    tmp, run = asv
    result = run("check", "--python=same")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No problems found" in result.stdout


def test_quick_run_measures_every_benchmark(quick_run):
    tmp, head, _ = quick_run
    discovered = json.loads((tmp / "results" / "benchmarks.json").read_text())
    discovered.pop("version")
    assert set(discovered) == BENCHMARKS                       # only the suite: no other script imported
    specs = [repr(s) for s in suite_specs()]
    for name, bench in discovered.items():
        assert bench["params"] == [specs], name
    assert discovered["families.Quality.track_bytes_per_vector"]["unit"] == "bytes"
    files = list((tmp / "results" / MACHINE).glob(f"{head[:8]}-existing-*.json"))
    assert len(files) == 1
    results = json.loads(files[0].read_text())
    assert results["commit_hash"] == head
    for name in BENCHMARKS:
        values = results["results"][name][0]
        assert len(values) == len(specs) and all(v is not None for v in values), (name, values)
    by_spec = lambda name: dict(zip(suite_specs(), results["results"][name][0]))  # noqa: E731
    assert by_spec("families.Quality.track_bytes_per_vector")["F32"] == 1536
    assert by_spec("families.Quality.track_bytes_per_vector")["PQ16x8"] == 16
    assert by_spec("families.Quality.track_ndcg_loss")["F32"] == pytest.approx(0)
    assert by_spec("families.Quality.track_knn_miss_at_10")["F32"] == pytest.approx(0)
    assert all(v >= 0 for v in results["results"]["families.Quality.track_ndcg_loss"][0])
    assert by_spec("families.Quality.track_ndcg_loss")["SQ8"] < 50
    assert by_spec("families.Quality.track_knn_miss_at_10")["BIN"] > by_spec("families.Quality.track_knn_miss_at_10")["SQ8"]
    assert all(v > 0 for v in results["results"]["families.Speed.time_fit"][0])


def test_publish_builds_the_site(asv, quick_run):
    tmp, run = asv
    result = run("publish")
    assert result.returncode == 0, result.stdout + result.stderr
    html = tmp / "html"
    assert (html / "index.html").is_file() and (html / "index.json").is_file()
    for name in BENCHMARKS:
        assert list(html.glob(f"graphs/**/{name}.json")), name


@pytest.mark.integration   # builds a virtualenv around the project's environment
def test_virtualenv_install_step_puts_the_commit_first(tmp_path):
    """What asv.conf.json's install_command does in each asv virtualenv: the benchmarked checkout
    is imported, every dependency comes from the project's environment."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    archive = subprocess.run(["git", "archive", "HEAD", "embpress", "compressors", "datasets"], cwd=ROOT,
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(checkout)], input=archive, check=True)
    python = venv / "bin" / "python"
    env = dict(os.environ)
    site = sysconfig.get_paths()["purelib"]
    if Path(sys.prefix).resolve() != (ROOT / ".venv").resolve():   # tests not run from .venv: say where
        env["EMBPRESS_ASV_SITE_PACKAGES"] = site
    subprocess.run([str(python), str(ROOT / "benchmarks" / "asv_env.py"), "install", str(checkout)],
                   check=True, cwd=tmp_path, capture_output=True, env=env)
    out = subprocess.run([str(python), "-c", "import embpress.data, compressors, faiss; "
                          "print(embpress.data.__file__); print(compressors.__file__); print(faiss.__file__)"],
                         cwd=tmp_path, capture_output=True, text=True, check=True).stdout.split()
    assert out[0].startswith(str(checkout)) and out[1].startswith(str(checkout))
    assert out[2].startswith(site)
    subprocess.run([str(python), str(ROOT / "benchmarks" / "asv_env.py"), "uninstall"], check=True, cwd=tmp_path)
    gone = subprocess.run([str(python), "-c", "import embpress.data"], cwd=tmp_path, capture_output=True)
    assert gone.returncode != 0
    bad = subprocess.run([str(python), str(ROOT / "benchmarks" / "asv_env.py"), "install", str(tmp_path)],
                         cwd=tmp_path, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "not an embpress checkout" in bad.stderr
