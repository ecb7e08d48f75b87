"""Shared fixtures: a private cache and results folder per test session, the datasets mirror,
the real all-MiniLM-L6-v2 model and real samples of the datasets."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MIRROR = Path(os.environ.get("EMBPRESS_MIRROR") or ROOT.parent / "shared" / "datasets").resolve()


@pytest.fixture(scope="session", autouse=True)
def _environment(tmp_path_factory):
    if not (MIRROR / "scifact").is_dir():
        pytest.exit(f"the datasets mirror is missing at {MIRROR}; set EMBPRESS_MIRROR", returncode=3)
    base = tmp_path_factory.mktemp("embpress")
    saved = {k: os.environ.get(k) for k in ("EMBPRESS_CACHE", "EMBPRESS_MIRROR", "EMBPRESS_RESULTS",
                                            "EMBPRESS_REPORTS", "HF_HUB_OFFLINE")}
    # EMBPRESS_TEST_CACHE reuses embeddings between test sessions while developing; CI starts empty.
    cache = os.environ.get("EMBPRESS_TEST_CACHE") or str(base / "cache")
    os.environ.update(EMBPRESS_CACHE=cache, EMBPRESS_MIRROR=str(MIRROR),
                      EMBPRESS_RESULTS=str(base / "results"), EMBPRESS_REPORTS=str(base / "reports"),
                      HF_HUB_OFFLINE="1")
    yield base
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def minilm():
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
