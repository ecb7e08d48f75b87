"""embpress's asv benchmark suite (``benchmark_dir`` in asv.conf.json).

A sub-package of ``benchmarks/`` so that asv imports only these modules: the grid files and the
scripts beside it in ``benchmarks/`` are never imported by asv's discovery.
"""
