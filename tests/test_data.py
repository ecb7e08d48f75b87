import shutil

import numpy as np
import pytest

from embpress import settings
from embpress.data import load_card, load_dataset
from embpress.errors import EmbpressError

from conftest import MIRROR

pytestmark = pytest.mark.integration   # the datasets mirror

EXPECTED = {"scifact": {"documents": 5183, "queries": 300, "judgments": 339},
            "nfcorpus": {"documents": 3633, "queries": 323, "judgments": 12334},
            "stsbenchmark": {"pairs": 1379}, "sick": {"pairs": 4906}}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_four_datasets_load_from_the_mirror_with_card_counts(name):
    ds = load_dataset(name)
    assert ds.summary() == EXPECTED[name]
    assert ds.location.startswith("mirror:")
    assert load_card(name).task == ds.task


def test_beir_texts_are_prepared_as_mteb_does():
    ds = load_dataset("scifact")
    # title + " " + text, stripped; queries as given; only queries with test judgments
    assert ds.corpus_texts[0].startswith("Microstructural development of human newborn cerebral white matter "
                                         "assessed in vivo by diffusion tensor magnetic resonance imaging. Alterations")
    assert set(ds.query_ids) == set(ds.qrels) and len(ds.query_ids) == 300
    nf = load_dataset("nfcorpus")
    assert {r for q in nf.qrels.values() for r in q.values()} == {1, 2}


def test_sts_scores_are_in_their_ranges():
    stsb, sick = load_dataset("stsbenchmark"), load_dataset("sick")
    assert stsb.scores.min() >= 0 and stsb.scores.max() <= 5
    assert sick.scores.min() >= 1 and sick.scores.max() <= 5
    assert stsb.sentences1[0] == "A girl is styling her hair."


def test_cache_is_consulted_before_the_mirror():
    dest = settings.cache_dir() / "datasets" / "stsbenchmark"
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(MIRROR / "stsbenchmark" / "sts-test.csv", dest / "sts-test.csv")
    try:
        ds = load_dataset("stsbenchmark")
        assert ds.location == f"cache:{dest}"
    finally:
        shutil.rmtree(dest)


def test_corrupt_copy_is_refused(tmp_path, monkeypatch):
    fake = tmp_path / "mirror" / "scifact"
    shutil.copytree(MIRROR / "scifact", fake)
    data = bytearray((fake / "queries.jsonl").read_bytes())
    data[100] ^= 1
    (fake / "queries.jsonl").write_bytes(bytes(data))
    monkeypatch.setenv("EMBPRESS_MIRROR", str(tmp_path / "mirror"))
    with pytest.raises(EmbpressError, match="does not match its card"):
        load_dataset("scifact")


def test_no_mirror_and_no_network_says_how_to_provide_one(tmp_path, monkeypatch):
    monkeypatch.setenv("EMBPRESS_MIRROR", str(tmp_path / "empty"))
    monkeypatch.setattr("embpress.data.DOWNLOAD_TIMEOUT_S", 5)
    with pytest.raises(EmbpressError, match="EMBPRESS_MIRROR") as err:
        load_dataset("scifact")
    assert "download from https://" in str(err.value)


def test_unknown_dataset():
    with pytest.raises(EmbpressError, match="unknown dataset 'nope'; known datasets: nfcorpus, scifact"):
        load_dataset("nope")


def test_sample_keeps_judged_documents():
    ds = load_dataset("scifact", max_queries=10, max_docs=50)
    assert len(ds.query_ids) == 10 and len(ds.corpus_ids) == 50
    docs = set(ds.corpus_ids)
    assert all(d in docs for q in ds.qrels.values() for d in q)
    sts = load_dataset("stsbenchmark", max_queries=25)
    assert len(sts.scores) == 25 and isinstance(sts.scores, np.ndarray)
