"""Writing files so that a reader never sees half of one, and the array files embpress keeps.

* :func:`atomic_write`: the one way embpress replaces a file (run folders, the embedding, fit and
  dataset caches, the report page): the content goes to a temporary file beside it, which is
  renamed over the target. Readers see the old file or the new one; a failed write (disk full,
  read-only folder) removes the temporary and names the file meant.
* :func:`save_npz` / :func:`load_npz`: named numpy arrays with JSON extras, read without pickle.
* :func:`safe_name`: a model, dataset or spec name as a file name.

This module imports nothing else of embpress.
"""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any, Callable

import numpy as np


def temporary_path(path: Path) -> Path:
    """Where :func:`atomic_write` puts ``path``'s content first: beside it (the rename stays on one
    file system), named by process and thread so concurrent writers of one file never share it."""
    path = Path(path)
    return path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.part")


def atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    """``write(tmp)`` then rename ``tmp`` over ``path`` (its folder is created). An OSError is
    re-raised naming ``path`` in its ``filename``, not the temporary (pyarrow names none); the
    temporary never stays behind."""
    path = Path(path)
    tmp = temporary_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        tmp.replace(path)
    except OSError as exc:
        exc.filename = str(path)
        raise
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass


def write_text(path: Path, text: str) -> None:
    """:func:`atomic_write` of UTF-8 text."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def save_npz(path: Path, arrays: dict[str, np.ndarray], **extra: Any) -> None:
    """Named arrays, and ``extra`` values as JSON strings, in one ``.npz`` (atomically)."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays, **{k: np.asarray(json.dumps(v)) for k, v in extra.items()})
    atomic_write(path, write)


def save_npy(path: Path, array: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array)
    atomic_write(path, write)


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an ``.npz``, read without pickle (nothing read from a run can run code)."""
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def safe_name(name: str) -> str:
    """``name`` with every character but letters, digits, ``-``, ``_`` and ``.`` replaced by ``_``."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name))
