"""embpress: benchmark embedding compression (quality kept, bytes stored, speed) on standard datasets.

Notebook use::

    import embpress
    df = embpress.run(datasets=["scifact"], compressors=["F32", "SQ8", "PCA128,SQ8"])
"""
from __future__ import annotations

__version__ = "0.1.0"


def run(datasets=None, models=None, compressors=None, *, grid: str = "default", k: int | None = None,
        max_queries: int | None = None, max_docs: int | None = None, calibration: str | None = None,
        progress: bool = True,
        out_dir=None, **execution):
    """Run a grid (by default ``benchmarks/default.toml``, overridden by the arguments) and return
    the results as a pandas DataFrame; the run folder is in ``df.attrs["run_dir"]``. Compressors that
    learn from data are cross-fitted unless ``calibration`` says otherwise (see ``embpress.protocol``)."""
    from pathlib import Path

    from .grid import load_grid
    from .runner import run as _run
    config = load_grid(grid)
    if compressors is not None:  # explicit specs replace the grid's families
        config.families, config.budgets, config.axes = [], [], {}
    for attr, value in (("datasets", datasets), ("models", models), ("compressors", compressors),
                        ("k", k), ("max_queries", max_queries), ("max_docs", max_docs),
                        ("calibration", calibration)):
        if value is not None:
            setattr(config, attr, [value] if attr in ("datasets", "models", "compressors")
                    and isinstance(value, str) else value)
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=False)
    df, run_dir = _run(config, out_dir=Path(out_dir) if out_dir else None, progress=progress, **execution)
    df.attrs["run_dir"] = str(run_dir)
    return df
