import time

import pytest

from embpress.errors import EmbpressError
from embpress.models import load_encoder, model_info, resolve_model

pytestmark = pytest.mark.integration   # the real models


def test_registry_aliases():
    assert resolve_model("minilm").name == "all-MiniLM-L6-v2"
    assert resolve_model("sentence-transformers/all-MiniLM-L6-v2").dim == 384
    assert resolve_model("MPNET").name == "all-mpnet-base-v2"
    assert resolve_model("org/other-model").source == "hub"
    with pytest.raises(EmbpressError, match="unknown model 'nope'"):
        resolve_model("nope")


def test_minilm_loads_offline_from_its_package(minilm):
    assert minilm.path.is_dir() and (minilm.path / "modules.json").is_file()
    assert minilm.max_seq_length == 256 and minilm.normalize
    assert len(minilm.weights_sha256) == 16


def test_mpnet_is_assembled_from_split_packages_and_encodes():
    info = model_info(resolve_model("all-mpnet-base-v2"))
    assert (info.path / "model.safetensors").stat().st_size > 400_000_000
    model = load_encoder(info)
    v = model.encode(["A man is playing a guitar.", "Someone plays the guitar.", "The stock market fell."])
    assert v.shape == (3, 768)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.3


def test_unreachable_hub_fails_fast():
    t0 = time.perf_counter()
    with pytest.raises(EmbpressError, match="cannot be reached"):
        model_info(resolve_model("some-org/some-model-not-cached"))
    assert time.perf_counter() - t0 < 15
