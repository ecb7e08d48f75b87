"""The pipeline: zero or more transforms followed by one codec, what a spec string such as
``"PCA128,SQ8"`` names. Fitted, it encodes, decodes, searches and scores pairs; it adds up the
bytes its stages store.

It builds on the stage base classes (:mod:`compressors.base`) and the registry (a chain of transforms
stores float32 through the registered ``F32`` codec); :mod:`compressors.spec` parses into it.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .base import (Codec, SpecError, Stage, Transform, as_float32_matrix, check_matrix, cosine_rows,
                   format_stage)
from .registry import get_stage_class
from .searchers import PipelineSearcher


#: Rows per block of ``Pipeline.encode``: 2,048 x 384 float32 is 3 MiB, so the NaN/inf scan of a
#: block leaves it in the CPU cache for the transforms and the codec that read it next.
ENCODE_BLOCK_ROWS = 2048


class Pipeline:
    """Transforms followed by one codec; fitted, it encodes, decodes and searches."""

    def __init__(self, stages: list[Stage]):
        stages = list(stages)
        if not stages:
            raise SpecError("a compressor spec needs at least one stage")
        *transforms, last = stages
        if last.kind != "codec":
            # A chain of transforms stores float32 vectors.
            transforms, last = stages, get_stage_class("F32")()
        for t in transforms:
            if t.kind != "transform":
                raise SpecError(f"{t.to_spec()} is an encoding and must come last in the spec")
        self.transforms: list[Transform] = transforms  # type: ignore[assignment]
        self.codec: Codec = last  # type: ignore[assignment]
        self.dim: int | None = None

    # ---- spec ---------------------------------------------------------------------------
    @property
    def stages(self) -> list[Stage]:
        return [*self.transforms, self.codec]

    def to_spec(self) -> str:
        return format_pipeline(self)

    def __repr__(self) -> str:
        return f"Pipeline({self.to_spec()!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Pipeline) and self.stages == other.stages

    @property
    def family(self) -> str:
        return "+".join(s.family for s in self.stages if s.family and s.family != "float32") or "float32"

    def get_params(self) -> dict[str, dict[str, Any]]:
        return {f"{i}:{s.to_spec()}": s.get_params() for i, s in enumerate(self.stages)}

    def clone(self) -> "Pipeline":
        return Pipeline([s.clone() for s in self.stages])

    # ---- shape checks -------------------------------------------------------------------
    def check_dim(self, dim: int) -> None:
        """Refuse a chain that cannot work on ``dim``-dimensional embeddings, with the reason."""
        d = dim
        for stage in self.stages:
            stage.check_dim(d)
            if stage.kind == "transform":
                d = stage.output_dim(d)  # type: ignore[attr-defined]
        if self.codec.code_size(d) > 4 * dim and not self.codec.stores_rescoring_copy:
            raise SpecError(f"{self.to_spec()} stores {self.codec.code_size(d)} bytes per vector, "
                            f"more than float32 ({4 * dim} bytes for {dim} dims)")

    def output_dim(self, dim: int) -> int:
        for t in self.transforms:
            dim = t.output_dim(dim)
        return dim

    # ---- fit / encode / decode / search -------------------------------------------------
    def fit(self, X: np.ndarray) -> "Pipeline":
        X = as_float32_matrix(X, "calibration vectors")
        self.check_dim(X.shape[1])
        self.dim = X.shape[1]
        for t in self.transforms:
            t.fit(X)
            X = t.transform(X)
        self.codec.fit(X)
        return self

    def _forward(self, X: np.ndarray) -> np.ndarray:
        X = as_float32_matrix(X)
        for t in self.transforms:
            X = t.transform(X)
        return X

    def encode(self, X: np.ndarray) -> np.ndarray:
        """Codes of the rows of ``X`` (n, dim), one row of ``code_size`` bytes each.

        The input goes through in blocks of ``ENCODE_BLOCK_ROWS`` rows when every stage encodes
        each row on its own (``rowwise``), else in one piece: the NaN/inf check of a block then
        costs no extra trip through memory, so the pipeline adds next to nothing to the raw encode
        it wraps."""
        X = check_matrix(X)
        if self.dim is not None and X.shape[1] != self.dim:
            raise SpecError(f"{self.to_spec()} was fitted on {self.dim}-d vectors, got {X.shape[1]}-d")
        n = X.shape[0]
        step = ENCODE_BLOCK_ROWS if all(s.rowwise for s in self.stages) else max(n, 1)
        out = np.empty((n, self.codec.code_size(self.output_dim(X.shape[1]))), dtype=np.uint8)
        for start in range(0, n, step):
            try:
                self.codec.encode_into(self._forward(X[start:start + step]), out[start:start + step])
            except SpecError as e:
                raise SpecError(f"{e} (rows {start} to {min(start + step, n) - 1})" if n > step else str(e)) from None
        return out

    def decode(self, codes: np.ndarray) -> np.ndarray:
        Z = self.codec.decode(codes)
        for t in reversed(self.transforms):
            Z = t.inverse_transform(Z)
        return Z

    def transform_query(self, Q: np.ndarray) -> np.ndarray:
        Q = as_float32_matrix(Q, "queries")
        if self.dim is not None and Q.shape[1] != self.dim:
            raise SpecError(f"{self.to_spec()} was fitted on {self.dim}-d vectors, got {Q.shape[1]}-d queries")
        for t in self.transforms:
            Q = t.transform_query(Q)
        return Q

    def searcher(self, codes: np.ndarray):
        """The codes made searchable once (the filled index); ``.search(Q, k)`` takes raw queries
        (the transforms are applied to them), ``.kernel`` names the kernel, ``.nbytes`` counts
        what is searched (codes, codebooks, index structures, the query transforms' matrices)."""
        return PipelineSearcher(self, self.codec.searcher(codes))

    def search(self, codes: np.ndarray, Q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k of each query (higher scores are better): ``searcher(codes).search(Q, k)``."""
        return self.searcher(codes).search(Q, k)

    def query_offset(self, Q: np.ndarray) -> np.ndarray:
        """Sum of the per-query constants the transforms leave out of the search scores."""
        Q = as_float32_matrix(Q, "queries")
        total = np.zeros(len(Q), dtype=np.float64)
        for t in self.transforms:
            total += t.query_offset(Q)
            Q = t.transform_query(Q)
        return total

    def comparable_scores(self, Q: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """``search`` scores on a scale shared by every fit of this spec: inner-product estimates
        get the transforms' dropped per-query constants back and the codec's unit; similarities of
        their own (Hamming) are returned as they are. What merges cross-fitted folds."""
        if not self.codec.scores_inner_product:
            return np.asarray(scores, dtype=np.float64)
        return np.asarray(scores, dtype=np.float64) * self.codec.score_scale + self.query_offset(Q)[:, None]

    def pair_similarity(self, codes_a: np.ndarray, codes_b: np.ndarray) -> np.ndarray:
        """Cosine similarity of row i of A with row i of B (STS).

        By default on what the codes decode to; a codec that scores in its own domain (e.g. the
        raw int8 cosine of ``SQ8:score=raw``) supplies ``pair_vectors`` and is scored on those."""
        own = getattr(self.codec, "pair_vectors", None)
        if own is not None and not self.transforms:
            a, b = own(codes_a), own(codes_b)
        else:
            a, b = self.decode(codes_a), self.decode(codes_b)
        return cosine_rows(a, b)

    # ---- byte accounting ----------------------------------------------------------------
    def bytes_per_vector(self, dim: int | None = None) -> int:
        dim = self.dim if dim is None else dim
        if dim is None:
            raise SpecError("bytes_per_vector needs the input dimension (fit first or pass dim)")
        return self.codec.code_size(self.output_dim(dim))

    @property
    def learns_from_data(self) -> bool:
        """True when any stage learns from the calibration vectors (see ``Stage.learns_from_data``)."""
        return any(s.needs_fit and s.learns_from_data for s in self.stages)

    @property
    def overhead_bytes(self) -> int:
        return sum(s.overhead_bytes for s in self.stages)

    @property
    def n_train(self) -> int | None:
        counts = [s.n_train for s in self.stages if s.n_train is not None]
        return max(counts) if counts else None

    @property
    def fit_warnings(self) -> list[str]:
        return [w for s in self.stages for w in s.fit_warnings]

    def info(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for s in self.stages:
            out.update(s.info())
        return out


def format_pipeline(pipe: Pipeline) -> str:
    """The canonical spec of a pipeline (a trailing implicit ``F32`` is not printed)."""
    stages: Sequence[Stage] = pipe.stages
    if pipe.transforms and type(pipe.codec).spec_format == "F32" and format_stage(pipe.codec) == "F32":
        stages = pipe.transforms
    return ",".join(format_stage(s) for s in stages)
