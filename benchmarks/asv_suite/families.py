"""Speed and quality of every compressor family, commit by commit (asv benchmarks).

Data: a fixed, small, real sample: scifact's 300 test queries and 1,000 of its documents (every
judged one first, then the rest in corpus order; ``embpress.data.load_dataset(max_docs=1000)``),
embedded once with all-MiniLM-L6-v2 through embpress's embedding cache (``$EMBPRESS_CACHE``,
default ``<repo>/cache``) in ``setup_cache``. ``EMBPRESS_ASV_MAX_DOCS`` / ``EMBPRESS_ASV_MAX_QUERIES``
change the sample (the CI test uses the 400-document / 40-query sample of the test suite); results
of different samples must not be mixed in one results folder.

* ``Speed``: ``time_fit`` (a fresh fit on the 1,000 documents), ``time_encode`` and ``time_decode``
  (the 1,000 documents), ``time_search`` (top-100 of the 300 queries over the codes, as the runner's
  ``search_qps``), ``peakmem_encode`` (asv's peak RSS of the process while encoding 5,000
  vectors; the absolute value includes the interpreter, libraries and data, read its trend).
  FAISS and BLAS run single-threaded so that timings do not depend on what else the machine runs.
* ``Quality``: ``track_ndcg_loss`` (100 − nDCG@10 as % of float32 on the same sample, i.e. 100 −
  retained %, and 0 where the spec beats float32 on the sample), ``track_knn_miss_at_10`` (100 − overlap with the exact float32 top-10, %),
  ``track_bytes_per_vector``. asv treats every figure as lower-is-better, hence losses rather
  than retained % and recall: a quality drop then reads as a regression in asv's comparisons.

``setup_cache`` (module level, so asv computes it once per commit for both classes) loads the
sample, fits every spec once, measures its quality and pickles the fitted pipeline for the speed
benchmarks' processes (a commit whose stages do not pickle is fitted in each process instead).

Every benchmark is parameterised over ``SPECS``, a fixed list (asv needs the same parameters at
discovery and for every commit) that holds at least one spec per registered stage;
``tests/test_asv.py`` fails when a registered stage is missing. On a commit that does not have a
stage, its parameters are skipped (asv shows n/a), never an error. A spec belongs here only if it
fits in well under 10 s on the sample (hence ``OPQ16:niter=5``, ``ITQ256:niter=10`` and
``LSQ8x8:train_iters=2``: their defaults take from 10 s to minutes).
"""
from __future__ import annotations

import os
from pathlib import Path

# The suite always runs from the working tree (asv takes benchmark_dir from it), even when asv
# installs an older commit of embpress: its caches and the datasets mirror are found from here.
ROOT = Path(__file__).resolve().parents[2]
os.environ.setdefault("EMBPRESS_CACHE", str(ROOT / "cache"))
if "EMBPRESS_MIRROR" not in os.environ and (ROOT.parent / "shared" / "datasets").is_dir():
    os.environ["EMBPRESS_MIRROR"] = str(ROOT.parent / "shared" / "datasets")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

from compressors import SpecError, parse_spec, stage_classes  # noqa: E402

# Import every stage module (scikit-learn, FAISS) now: asv's forkserver (asv.conf.json) forks each
# benchmark from a process that has imported this module, so no benchmark pays for the imports.
stage_classes()

#: One or more specs per registered stage (every family), each fitting in well under 10 s.
SPECS = [
    "F32", "F16", "BF16", "SQ8", "SQ4", "BIN", "HYB32", "TOPK64", "LSH256", "ITQ256:niter=10", "RABITQ",
    "PQ16x8", "PQ32x4fs", "RQ8x8", "LSQ8x8:train_iters=2",
    "PCA128", "PCA128,SQ8", "OPQ16:niter=5,PQ16x8", "ROT,SQ4",
    "RP128", "SRP128", "HASH128", "MRL128", "VAR128", "TQ4", "TQ4:mse=true", "EDEN4",
]
DATASET, MODEL, K = "scifact", "all-MiniLM-L6-v2", 100
MAX_DOCS = int(os.environ.get("EMBPRESS_ASV_MAX_DOCS", "1000"))
MAX_QUERIES = int(os.environ["EMBPRESS_ASV_MAX_QUERIES"]) if os.environ.get("EMBPRESS_ASV_MAX_QUERIES") else None
PEAKMEM_ROWS = 5_000


def _single_thread() -> None:
    import faiss
    from threadpoolctl import threadpool_limits
    faiss.omp_set_num_threads(1)
    threadpool_limits(1)


def load_sample() -> dict:
    """The fixed sample: float32 corpus and query vectors, ids and judgments."""
    import sys

    from embpress import data
    from embpress.data import load_dataset
    from embpress.embed import embed_dataset
    from embpress.models import model_info, resolve_model
    print(f"asv suite: embpress from {Path(data.__file__).parent}", file=sys.stderr)
    ds = load_dataset(DATASET, max_queries=MAX_QUERIES, max_docs=MAX_DOCS)
    vecs = embed_dataset(model_info(resolve_model(MODEL)), ds, progress=False)
    return {"corpus": np.ascontiguousarray(vecs["corpus"], dtype=np.float32),
            "queries": np.ascontiguousarray(vecs["queries"], dtype=np.float32),
            "corpus_ids": list(ds.corpus_ids), "query_ids": list(ds.query_ids), "qrels": ds.qrels}


def _fit(spec: str, corpus: np.ndarray):
    """A fitted pipeline, or NotImplementedError (asv: skipped) where this commit lacks the spec."""
    try:
        pipe = parse_spec(spec)
        pipe.check_dim(corpus.shape[1])
    except SpecError as exc:
        raise NotImplementedError(f"{spec} is not available at this commit: {exc}") from None
    return pipe.fit(corpus)


def setup_cache() -> dict:
    """Once per commit, shared by both classes (asv keys the cache by this function): the sample,
    every spec fitted once (pickled, so each benchmark process only unpickles it) and its quality."""
    import pickle

    from embpress.metrics import knn_recall, retrieval_scores
    _single_thread()
    data = load_sample()
    C, Q, dim = data["corpus"], data["queries"], data["corpus"].shape[1]

    def ndcg(ids) -> float:
        ranked = [[data["corpus_ids"][j] for j in row if j >= 0] for row in ids]
        return float(retrieval_scores(ranked, data["query_ids"], data["qrels"])["ndcg_at_10"].mean())

    exact = parse_spec("F32").fit(C)
    _, exact_ids = exact.search(exact.encode(C), Q, K)
    baseline = ndcg(exact_ids)
    quality, fitted = {}, {}
    for spec in SPECS:
        try:
            pipe = _fit(spec, C)
            _, ids = pipe.search(pipe.encode(C), Q, K)
            quality[spec] = {"ndcg_retained": 100 * ndcg(ids) / baseline,
                             "knn_recall_at_10": 100 * float(knn_recall(ids, exact_ids, 10).mean()),
                             "bytes_per_vector": int(pipe.bytes_per_vector(dim))}
        except NotImplementedError as exc:
            quality[spec] = {"skip": str(exc)}
            continue
        except Exception as exc:  # noqa: BLE001 - reported as this spec's failure, not the suite's
            quality[spec] = {"error": f"{spec}: {type(exc).__name__}: {exc}"}
            continue
        try:
            fitted[spec] = pickle.dumps(pipe)
        except Exception:  # noqa: BLE001 - commits whose stages do not pickle: Speed.setup fits instead
            pass
    return {"data": data, "quality": quality, "fitted": fitted}


setup_cache.timeout = 1800  # the first run embeds the sample (about a minute on a laptop)

_FITTED: dict[str, tuple] = {}


class Speed:
    """Fit, encode, decode and search time and encode peak memory, per spec."""

    params = SPECS
    param_names = ["spec"]
    timeout = 300
    repeat = (2, 10, 2.0)     # 2 to 10 samples, ~2 s of sampling per benchmark and round

    def setup(self, cache, spec):
        # asv re-runs setup before every timed sample: the pipeline is prepared once per process.
        import pickle
        _single_thread()
        corpus = cache["data"]["corpus"]
        if spec not in _FITTED:
            blob = cache["fitted"].get(spec)
            # setup_cache's own result in this benchmark environment (asv pickles it anyway)
            pipe = pickle.loads(blob) if blob is not None else _fit(spec, corpus)  # noqa: S301
            _FITTED[spec] = (pipe, pipe.encode(corpus))
        self.pipe, self.codes = _FITTED[spec]
        if not hasattr(self, "many"):
            reps = -(-PEAKMEM_ROWS // len(corpus))
            self.many = np.ascontiguousarray(np.tile(corpus, (reps, 1))[:PEAKMEM_ROWS])

    def time_fit(self, cache, spec):
        parse_spec(spec).fit(cache["data"]["corpus"])

    def time_encode(self, cache, spec):
        self.pipe.encode(cache["data"]["corpus"])

    def time_decode(self, cache, spec):
        self.pipe.decode(self.codes)

    def time_search(self, cache, spec):
        self.pipe.search(self.codes, cache["data"]["queries"], K)

    def peakmem_encode(self, cache, spec):
        self.pipe.encode(self.many)


class Quality:
    """Retrieval quality and storage, per spec: what asv plots besides time."""

    params = SPECS
    param_names = ["spec"]
    timeout = 300

    def setup(self, cache, spec):
        figures = cache["quality"][spec]
        if "skip" in figures:
            raise NotImplementedError(figures["skip"])
        if "error" in figures:
            raise RuntimeError(figures["error"])

    # asv takes every figure as lower-is-better (asv#1617): quality is tracked as what is lost, so
    # that `asv continuous`, `asv compare` and the regressions page call a quality drop a regression.
    # asv compares by ratios, which break on negative values: a spec that beats float32 on the
    # sample (SQ8 keeps 100.15 %) has lost nothing, 0.
    def track_ndcg_loss(self, cache, spec):
        return max(0.0, 100.0 - cache["quality"][spec]["ndcg_retained"])

    track_ndcg_loss.unit = "% of float32 nDCG@10 lost (0 if none)"

    def track_knn_miss_at_10(self, cache, spec):
        return 100.0 - cache["quality"][spec]["knn_recall_at_10"]

    track_knn_miss_at_10.unit = "% of exact top-10 missed"

    def track_bytes_per_vector(self, cache, spec):
        return cache["quality"][spec]["bytes_per_vector"]

    track_bytes_per_vector.unit = "bytes"
