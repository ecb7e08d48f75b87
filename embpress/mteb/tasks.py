"""MTEB tasks from embpress's datasets (the local mirror), through mteb's own task objects.

The tasks whose data embpress has are filled from ``embpress.data.load_dataset`` (cache or mirror,
verified against the dataset cards) and marked loaded, so mteb never downloads them; any other task
is loaded by mteb itself, which works offline only when its data is in the Hugging Face cache.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..data import RetrievalDataset, STSDataset, load_dataset
from ..errors import EmbpressError

#: MTEB task name → embpress dataset card.
MIRRORED = {"SciFact": "scifact", "NFCorpus": "nfcorpus", "STSBenchmark": "stsbenchmark", "SICK-R": "sick"}

#: Tasks that run on embpress's data but do not reproduce MTEB's numbers.
NOT_COMPARABLE = {"SICK-R": "embpress's SICK is the SemEval-2014 test split (4,906 of the 9,840 pairs in the "
                            "mirror's SICK.txt); MTEB's SICK-R has 9,927 pairs: not comparable with MTEB's scores"}


@dataclass
class LoadedTask:
    task: Any                     # the mteb AbsTask, data loaded
    name: str                     # MTEB task name
    label: str                    # embpress dataset name (or the MTEB name for other tasks)
    ds: RetrievalDataset | STSDataset | None   # embpress's dataset, when it comes from the mirror
    note: str | None = None

    @property
    def kind(self) -> str:
        from mteb.abstasks.retrieval import AbsTaskRetrieval
        from mteb.abstasks.sts import AbsTaskSTS
        if isinstance(self.task, AbsTaskRetrieval):
            return "retrieval"
        return "sts" if isinstance(self.task, AbsTaskSTS) else self.task.metadata.type.lower()

    @property
    def split(self) -> str:
        return self.ds.card.split if self.ds is not None else self.task.metadata.eval_splits[0]


def _retrieval_split(ds: RetrievalDataset) -> dict[str, Any]:
    from datasets import Dataset
    # corpus_texts already joins title and text the way mteb does for a sentence-transformers model
    return {"corpus": Dataset.from_dict({"id": ds.corpus_ids, "text": ds.corpus_texts}),
            "queries": Dataset.from_dict({"id": ds.query_ids, "text": ds.query_texts}),
            "relevant_docs": {q: dict(d) for q, d in ds.qrels.items()}, "top_ranked": None}


def _sts_split(ds: STSDataset) -> Any:
    from datasets import Dataset
    return Dataset.from_dict({"sentence1": list(ds.sentences1), "sentence2": list(ds.sentences2),
                              "score": np.asarray(ds.scores, dtype=np.float64).tolist()})


def _mteb_task(name: str):
    import mteb
    try:
        return mteb.get_task(name)
    except (KeyError, ValueError) as exc:
        raise EmbpressError(f"unknown MTEB task {name!r} ({str(exc).splitlines()[0][:160]})") from None


def load_task(name: str, *, max_queries: int | None = None, max_docs: int | None = None) -> LoadedTask:
    """An mteb task with its data loaded: from embpress's mirror where embpress has the dataset,
    else by mteb (offline: from the Hugging Face cache). Unreachable data is an EmbpressError."""
    task = _mteb_task(name)
    if name not in MIRRORED:
        if max_queries or max_docs:
            raise EmbpressError(f"--max-queries/--max-docs sample only the mirrored tasks ({', '.join(MIRRORED)})")
        try:
            task.load_data()
        except Exception as exc:  # noqa: BLE001 - datasets/hub raise many kinds; all mean "not reachable"
            raise EmbpressError(
                f"MTEB task {name!r}: its data is not reachable ({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); "
                f"embpress's mirror serves {', '.join(MIRRORED)}, other tasks need their data in the Hugging Face "
                f"cache (or network access with HF_HUB_OFFLINE=0)") from None
        return LoadedTask(task, name, name, None)
    ds = load_dataset(MIRRORED[name], max_queries=max_queries, max_docs=max_docs)
    split = ds.card.split
    if split not in task.metadata.eval_splits:
        raise EmbpressError(f"MTEB task {name!r} evaluates {task.metadata.eval_splits}, embpress's "
                            f"{ds.name} card has the {split!r} split")
    task = task.filter_eval_splits([split])
    data = _retrieval_split(ds) if isinstance(ds, RetrievalDataset) else _sts_split(ds)
    task.dataset = {"default": {split: data}}
    task.data_loaded = True
    return LoadedTask(task, name, ds.name, ds, NOT_COMPARABLE.get(name))
