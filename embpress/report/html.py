"""The page: styles, the script (dataset selector, filters, sorting, charts), number formatting and
the HTML of tables, the glossary and the provenance."""
from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..files import safe_name
from .analysis import GROUP

e = html.escape


def num(x: Any) -> str:
    """A number to 3 significant digits, never in scientific notation (``2.9e-05`` → ``0.000029``,
    ``44.073`` → ``44.1``, ``528,734`` → ``529,000``); integers keep their digits."""
    if x is None or x is pd.NA or (isinstance(x, float) and math.isnan(x)):
        return ""
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else ""
    if isinstance(x, (int, np.integer)):
        return f"{int(x):,}"
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    if not math.isfinite(v):
        return str(v)
    if v == 0:
        return "0"
    if abs(v) >= 1000 or float(v).is_integer():
        return f"{float(f'{v:.3g}') if abs(v) >= 1000 else v:,.0f}"
    return np.format_float_positional(v, precision=3, unique=False, fractional=False, trim="-")


def swatch(group: str) -> str:
    g = GROUP.get(group, GROUP["other"])
    return f'<span class="sw" style="color:{g.colour}" title="{e(g.name)}">{_SYMBOL.get(g.marker, "●")}</span>'


_SYMBOL = {"square": "■", "circle": "●", "triangle-up": "▲", "diamond": "◆", "triangle-down": "▼", "cross": "✚",
           "triangle-right": "▶", "triangle-left": "◀", "stroke": "✕"}


def slug(text: str) -> str:
    return safe_name(text).strip("_") or "x"


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    # names reach Markdown viewers that render inline HTML: escape it, and the column separator
    esc = lambda s: html.escape(str(s), quote=False).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    out = ["| " + " | ".join(esc(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(out) + "\n"


def table(tid: str, headers: list[tuple[str, str]], rows: list[tuple[str, str, list[tuple[str, str, str]]]],
          cls: str = "sortable") -> str:
    """headers: (text, title); rows: (tr attributes, tr class, [(html, sort value, td class)])."""
    head = "".join(f'<th title="{e(t)}">{e(h)}</th>' for h, t in headers)
    body = "".join(f'<tr class="{rc}"{attrs}>' + "".join(
        f'<td{f" class={chr(34)}{c}{chr(34)}" if c else ""} data-v="{e(v)}">{h}</td>' for h, v, c in cells) + "</tr>"
        for attrs, rc, cells in rows)
    return (f'<div class="box"><table id="{tid}" class="{cls}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>")


def glossary(classes) -> str:
    """One line per technique, from the stages' own summaries, then the family groups."""
    items = "".join(f"<dt><code>{e(c.spec_format)}</code></dt><dd>{e(c.summary)}</dd>" for c in
                    sorted(classes, key=lambda c: c.spec_format.lower()))
    groups = "".join(f"<dt>{swatch(g.name)} {e(g.name)}</dt><dd>{e(g.blurb)}</dd>" for g in GROUP.values())
    return (f'<dl class="glossary">{items}</dl><p class="muted">Families are grouped in the figures and filters '
            f'(one colour and marker per group everywhere):</p><dl class="glossary">{groups}</dl>')


def deflist(items: list[tuple[str, str]], cls: str = "prov") -> str:
    return f'<dl class="{cls}">' + "".join(f"<dt>{e(k)}</dt><dd>{e(str(v))}</dd>" for k, v in items) + "</dl>"


def provenance(meta: dict, df: pd.DataFrame) -> list[tuple[str, str]]:
    git = meta.get("git") or {}
    mach = meta.get("machine") or {}
    commit = (git.get("commit") or "?")[:12] + (" (uncommitted changes)" if git.get("dirty") else "")
    wall = f" ({meta['wall_s']:,.0f} s)" if isinstance(meta.get("wall_s"), (int, float)) else ""
    items = [
        ("run", f"{meta.get('run_id', '?')}, {meta.get('status', '?')}"),
        ("date", f"{meta.get('started', '?')} to {meta.get('finished', '?')}{wall}"),
        ("code", f"git {commit} on branch {git.get('branch') or '?'}"),
        ("machine", f"{mach.get('hostname', '?')}: {mach.get('cpu', '?')}, {mach.get('cpu_count', '?')} cores, "
                    f"{mach.get('memory_gib', '?')} GiB memory, {mach.get('platform', '?')}"),
        ("versions", ", ".join(f"{k} {v}" for k, v in (meta.get("versions") or {}).items())),
        ("execution", ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in (meta.get("execution") or {}).items())),
    ]
    for name, m in (meta.get("models") or {}).items():
        items.append((f"model {name}", f"{m.get('hf_id', '')} at revision {m.get('revision', '?')}, up to "
                                       f"{m.get('max_seq_length')} tokens, "
                                       f"{'normalised' if m.get('normalize') else 'not normalised'}"))
    for name, d in (meta.get("datasets") or {}).items():
        counts = ", ".join(f"{v:,} {k}" for k, v in (d.get("counts") or {}).items())
        sample = f", sample {d['sample']}" if d.get("sample") else ""
        items.append((f"dataset {name}", f"{d.get('task')}, split {d.get('split')}, revision {d.get('revision')}: "
                                         f"{counts}{sample} ({d.get('location')})"))
    items.append(("cells", ", ".join(f"{n} {s}" for s, n in df["status"].value_counts().items()) or "none"))
    return items


def write_table_files(out: Path, name: str, headers: list[str], rows: list[list[str]],
                      frame: pd.DataFrame | None) -> list[str]:
    (out / "tables" / f"{name}.md").write_text(markdown_table(headers, rows))
    files = [f"tables/{name}.md"]
    if frame is not None:
        frame.to_csv(out / "tables" / f"{name}.csv", index=False)
        files.append(f"tables/{name}.csv")
    return files


from .assets import CSS, JS  # noqa: E402


def render(title: str, header: str, toc: list[tuple[str, str]], body: str, datasets: list[str],
           bundle: str, data_json: str, specs_json: str) -> str:
    nav = "".join(f'<a href="#{a}">{e(t)}</a>' for a, t in toc)
    options = "".join(f'<option value="{e(d)}">{e(d)}</option>' for d in datasets)
    bar = (f'<div class="bar"><label>dataset <select id="dataset">{options}</select></label>'
           f'<nav>{nav}</nav></div>')
    scripts = ""
    if specs_json != "{}":
        scripts = (f'<script type="application/json" id="points">{data_json}</script>'
                   f'<script type="application/json" id="specs">{specs_json}</script><script>{bundle}</script>')
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<link rel="icon" href="data:,"><title>{e(title)}</title><style>{CSS}</style></head>'
            f"<body>{bar}<main>{header}{body}</main>{scripts}<script>{JS}</script></body></html>\n")
