"""Shared fixtures and the two test tiers.

* **unit** (``make test-fast``, ``pytest -m "not integration and not slow"``): synthetic vectors only; neither the
  datasets mirror nor a sentence-transformers model. Every unit test runs with ``EMBPRESS_MIRROR``
  pointing at an empty folder, and fails if it imports sentence-transformers, so a test that
  quietly needs the mirror or the model cannot stay in this tier.
* **integration** (``pytest -m integration``): the real all-MiniLM-L6-v2 model and real samples of
  the datasets from the mirror. A test is in this tier when it is marked ``integration`` or uses a
  fixture that needs the mirror (``mirror``, ``minilm``, ``scifact_sample`` …); the mirror check
  runs in the ``mirror`` fixture, so the unit tier runs without it.
* **slow**: synthetic like the unit tier, but too slow for it (a tier under a minute); ``make test``
  runs it with the integration tier.

Every session gets a private cache, results and reports folder.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MIRROR = Path(os.environ.get("EMBPRESS_MIRROR") or ROOT.parent / "shared" / "datasets").resolve()
#: Fixtures whose use puts a test in the integration tier (``mirror`` and everything built on it).
NEEDS_MIRROR = "mirror"


def pytest_configure(config):
    config.addinivalue_line("markers", "integration: needs the datasets mirror and the real model")
    config.addinivalue_line("markers", "slow: synthetic vectors only, but takes more than a few seconds "
                                       "(runs with the integration tier)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if NEEDS_MIRROR in getattr(item, "fixturenames", ()) and item.get_closest_marker("integration") is None:
            item.add_marker(pytest.mark.integration)


def quantize_embeddings(*args, **kwargs):
    """sentence-transformers' quantizer, imported on first call: collecting the unit tier imports no
    model library."""
    try:
        from sentence_transformers.util.quantization import quantize_embeddings as quantize
    except ImportError:  # older sentence-transformers
        from sentence_transformers.quantization import quantize_embeddings as quantize
    return quantize(*args, **kwargs)


@pytest.fixture(scope="session", autouse=True)
def _environment(tmp_path_factory):
    base = tmp_path_factory.mktemp("embpress")
    saved = {k: os.environ.get(k) for k in ("EMBPRESS_CACHE", "EMBPRESS_MIRROR", "EMBPRESS_RESULTS",
                                            "EMBPRESS_REPORTS", "HF_HUB_OFFLINE")}
    # EMBPRESS_TEST_CACHE reuses embeddings between test sessions while developing; CI starts empty.
    cache = os.environ.get("EMBPRESS_TEST_CACHE") or str(base / "cache")
    os.environ.update(EMBPRESS_CACHE=cache, EMBPRESS_RESULTS=str(base / "results"),
                      EMBPRESS_REPORTS=str(base / "reports"), HF_HUB_OFFLINE="1")
    if (MIRROR / "scifact").is_dir():     # module fixtures of integration tests start before `_tier`
        os.environ["EMBPRESS_MIRROR"] = str(MIRROR)
    yield base
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def mirror() -> Path:
    """The datasets mirror, set as ``EMBPRESS_MIRROR`` for the session; the session stops with one
    line when it is missing (an integration test cannot run without it)."""
    if not (MIRROR / "scifact").is_dir():
        pytest.exit(f"the datasets mirror is missing at {MIRROR}; set EMBPRESS_MIRROR "
                    "(`make test-fast` runs the unit tier without it)", returncode=3)
    os.environ["EMBPRESS_MIRROR"] = str(MIRROR)
    return MIRROR


@pytest.fixture(autouse=True)
def _tier(request, tmp_path_factory, monkeypatch):
    """Integration tests get the mirror; unit tests get an empty one and must not load the model."""
    if request.node.get_closest_marker("integration") is not None:
        request.getfixturevalue(NEEDS_MIRROR)
        yield
        return
    monkeypatch.setenv("EMBPRESS_MIRROR", str(tmp_path_factory.mktemp("no-mirror")))
    had_model = "sentence_transformers" in sys.modules
    yield
    if not had_model and "sentence_transformers" in sys.modules:
        pytest.fail("a unit test imported sentence-transformers: mark it integration (tests/conftest.py)")


@pytest.fixture(scope="session")
def minilm(mirror):
    from embpress.models import model_info, resolve_model
    return model_info(resolve_model("all-MiniLM-L6-v2"))


@pytest.fixture(scope="session")
def scifact_sample(minilm):
    """40 test queries of scifact and 400 documents (their judged ones first), embedded for real."""
    from embpress.data import load_dataset
    from embpress.embed import embed_dataset
    ds = load_dataset("scifact", max_queries=40, max_docs=400)
    return ds, embed_dataset(minilm, ds, progress=False)


@pytest.fixture(scope="session")
def sts_sample(minilm):
    from embpress.data import load_dataset
    from embpress.embed import embed_dataset
    ds = load_dataset("stsbenchmark", max_queries=300)
    return ds, embed_dataset(minilm, ds, progress=False)


@pytest.fixture(scope="session")
def corpus_vectors(scifact_sample):
    import numpy as np
    return np.asarray(scifact_sample[1]["corpus"])


@pytest.fixture(scope="session")
def query_vectors(scifact_sample):
    import numpy as np
    return np.asarray(scifact_sample[1]["queries"])


@pytest.fixture(scope="session")
def synthetic():
    """Anisotropic unit vectors (a few strong directions, then noise, like embeddings): a 2,000 x 64
    corpus and 50 queries, seeded, for unit tests that need no model."""
    import numpy as np
    rng = np.random.default_rng(7)
    scale = np.linspace(2, 0.2, 64, dtype=np.float32)
    X = rng.standard_normal((2000, 64)).astype(np.float32) * scale
    Q = rng.standard_normal((50, 64)).astype(np.float32) * scale
    return X / np.linalg.norm(X, axis=1, keepdims=True), Q / np.linalg.norm(Q, axis=1, keepdims=True)
