"""The HTML report of a run: ``embpress report RUN`` → ``reports/<run-id>/index.html``.

One self-contained page (styles, script, data and the Vega bundle inlined; nothing fetched from a
network) that answers "which compressor for my budget and my speed?":

* :mod:`.analysis`: family groups and their fixed styles, bootstrap intervals, Pareto frontiers,
  the per-budget winners with speed and fit time;
* :mod:`.figures`: interactive Vega-Lite charts (altair) and the matplotlib exports (PNG 2x, SVG);
* :mod:`.html`, :mod:`.assets`: formatting, tables, glossary, provenance, style sheet and script;
* :mod:`.losses`, :mod:`.sections`: per-query loss and model-side compression;
* :mod:`.build`: :func:`build_report` (``embpress run`` calls it at the end).
"""
from .analysis import (N_BOOT, best_per_budget, budgets_of, group_of, overall_frontier, prepare,  # noqa: F401
                       resolve_run)
from .build import build_report  # noqa: F401
from .html import markdown_table, num  # noqa: F401
from .losses import dataset_texts, model_columns, model_variants, query_losses  # noqa: F401
