"""Where embpress reads and writes; every location can be moved by an environment variable.

| variable            | default                          | what lives there                          |
|---------------------|----------------------------------|-------------------------------------------|
| EMBPRESS_CACHE      | <project>/cache                  | downloaded datasets, embeddings, models   |
| EMBPRESS_MIRROR     | (unset)                          | a local copy of the datasets, read first  |
| EMBPRESS_RESULTS    | <project>/results                | one folder per run                        |
| EMBPRESS_REPORTS    | <project>/reports                | built reports                             |

<project> is the checkout that holds this package (the folder with pyproject.toml).
"""
from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DATASET_CARDS = PROJECT_ROOT / "datasets"
BENCHMARKS = PROJECT_ROOT / "benchmarks"


def _path(var: str, default: Path) -> Path:
    value = os.environ.get(var)
    return Path(value).expanduser().resolve() if value else default


def cache_dir() -> Path:
    return _path("EMBPRESS_CACHE", PROJECT_ROOT / "cache")


def mirror_dir() -> Path | None:
    value = os.environ.get("EMBPRESS_MIRROR")
    return Path(value).expanduser().resolve() if value else None


def results_dir() -> Path:
    return _path("EMBPRESS_RESULTS", PROJECT_ROOT / "results")


def reports_dir() -> Path:
    return _path("EMBPRESS_REPORTS", PROJECT_ROOT / "reports")
