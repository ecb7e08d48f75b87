"""Install step of asv's virtualenv environments (see asv.conf.json and README, "Regression tracking").

asv checks each benchmarked commit out into ``<env>/project``. Building a wheel and installing the
project's dependencies (torch, FAISS, sentence-transformers, ...) into every asv environment would
need the network and gigabytes, so instead this script writes one ``.pth`` file into the asv
environment's site-packages with two lines:

1. the commit's checkout, so ``import embpress`` / ``import compressors`` load *that commit's* code
   (and its ``datasets/`` cards, which are not in a wheel);
2. the site-packages of the project's own virtual environment (``.venv`` beside asv.conf.json, or
   ``$EMBPRESS_ASV_SITE_PACKAGES``), appended after the environment's own packages, for every
   third-party dependency.

Plain path lines in a ``.pth`` are appended to ``sys.path`` without processing the ``.pth`` files
found there, so the ``.venv``'s editable install of the working tree is *not* activated: the
checkout in line 1 is the only embpress on the path.

    python benchmarks/asv_env.py install BUILD_DIR     (run by asv inside the asv environment)
    python benchmarks/asv_env.py uninstall
"""
from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

PTH = "embpress-asv.pth"
ROOT = Path(__file__).resolve().parents[1]   # the working tree that holds .venv


def _fail(msg: str) -> None:
    sys.stderr.write(f"asv_env: {msg}\n")
    sys.exit(2)


def dependency_paths() -> list[str]:
    """site-packages folders of the project's virtual environment (same Python minor version)."""
    explicit = os.environ.get("EMBPRESS_ASV_SITE_PACKAGES")
    if explicit:
        paths = [p for p in explicit.split(os.pathsep) if p]
    else:
        python = ROOT / ".venv" / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
        if not python.exists():
            _fail(f"no project environment at {python.parent.parent}: run `make install` first, "
                  f"or set EMBPRESS_ASV_SITE_PACKAGES")
        out = subprocess.run([str(python), "-c", "import sys, sysconfig; p = sysconfig.get_paths(); "
                              "print(f'{sys.version_info[0]}.{sys.version_info[1]}'); "
                              "print(p['purelib']); print(p['platlib'])"],
                             capture_output=True, text=True, check=True).stdout.split("\n")
        version, paths = out[0], list(dict.fromkeys(out[1:3]))
        mine = f"{sys.version_info[0]}.{sys.version_info[1]}"
        if version != mine:
            _fail(f"the project environment runs Python {version}, this asv environment {mine}; "
                  f"run asv from the project environment (.venv/bin/asv) so both use the same Python")
    missing = [p for p in paths if not Path(p).is_dir()]
    if missing:
        _fail(f"site-packages folder(s) not found: {', '.join(missing)}")
    return paths


def main(argv: list[str]) -> None:
    target = Path(sysconfig.get_paths()["purelib"]) / PTH
    if argv[:1] == ["install"] and len(argv) == 2:
        build_dir = Path(argv[1]).resolve()
        if not (build_dir / "embpress").is_dir():
            _fail(f"{build_dir} is not an embpress checkout (no embpress/ folder)")
        target.write_text("\n".join([str(build_dir), *dependency_paths()]) + "\n")
        print(f"asv_env: {target} -> {build_dir} + project dependencies")
    elif argv == ["uninstall"]:
        target.unlink(missing_ok=True)
    else:
        _fail("usage: asv_env.py install BUILD_DIR | uninstall")


if __name__ == "__main__":
    main(sys.argv[1:])
