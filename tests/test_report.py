"""The HTML report: built from real runs (the quick grid; bring-your-own vectors with neighbour and
STS data only, infeasible and failed cells), opened in real headless Chromium, its frontier
recomputed from the results table, and its bootstrap intervals checked."""
from __future__ import annotations

import fcntl
import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import threading
import time
from html import escape as html_escape
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.stats import spearmanr

import embpress
import embpress.grid
from embpress.cli import main as cli_main
from embpress.report import build_report
from embpress.runfolder import load_run
from embpress.stats import bootstrap_indices, paired_bootstrap, pareto_mask

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


# ---------------------------------------------------------------------------- a real browser over CDP
class Chromium:
    """Headless Chromium driven by the Chrome DevTools Protocol over --remote-debugging-pipe (fds 3
    and 4, NUL-terminated JSON messages), so no websocket or browser-automation package is needed."""

    def __init__(self, profile: Path, width: int = 1280, height: int = 900):
        to_child, self._w = os.pipe()
        self._r, from_child = os.pipe()
        # the child's ends above fd 9, so the redirections onto 3 and 4 below cannot clobber them
        low = (to_child, from_child)
        to_child, from_child = (fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in low)
        for fd in low:
            os.close(fd)
        args = ["--headless", "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--no-default-browser-check", "--disable-dev-shm-usage",
                "--hide-scrollbars", f"--user-data-dir={profile}", f"--window-size={width},{height}", "about:blank"]
        # Chromium reads the protocol on fd 3 and writes on fd 4: bash puts the pipe ends there
        self.proc = subprocess.Popen(
            ["bash", "-c", f'exec "$0" "$@" 3<&{to_child} 4>&{from_child} {to_child}<&- {from_child}>&-',
             CHROMIUM, *args], pass_fds=(to_child, from_child), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_child)
        os.close(from_child)
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable", session=True)
        self.call("Emulation.setDeviceMetricsOverride", session=True, width=width, height=height,
                  deviceScaleFactor=1, mobile=False)

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            if time.time() > deadline:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self._r, 1 << 16)
            if not chunk:
                raise RuntimeError(f"Chromium closed the pipe (exit {self.proc.poll()})")
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def call(self, method: str, session: bool = False, timeout: float = 30, **params):
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params}
        if session:
            msg["sessionId"] = self.session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.time() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str, timeout: float = 30) -> dict:
        deadline = time.time() + timeout
        for i, ev in enumerate(self.events):
            if ev.get("method") == method:
                return self.events.pop(i)
        while True:
            ev = self._read(deadline)
            if ev.get("method") == method:
                return ev
            self.events.append(ev)

    def goto(self, url: str) -> None:
        self.events.clear()
        self.call("Page.navigate", session=True, url=url)
        self.wait_event("Page.loadEventFired")

    def js(self, expression: str, await_promise: bool = False):
        res = self.call("Runtime.evaluate", session=True, expression=expression, returnByValue=True,
                        awaitPromise=await_promise)
        if "exceptionDetails" in res:
            raise RuntimeError(f"{expression[:60]}…: {res['exceptionDetails']}")
        return res["result"].get("value")

    def click(self, selector: str) -> None:
        """A real mouse click (pressed + released) at the centre of the element."""
        box = self.js(f"(() => {{ const el = document.querySelector({json.dumps(selector)}); "
                      f"el.scrollIntoView({{block: 'center'}}); const r = el.getBoundingClientRect(); "
                      f"return [r.x + r.width / 2, r.y + r.height / 2]; }})()")
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", session=True, type=kind, x=box[0], y=box[1], button="left",
                      clickCount=1)

    def errors(self) -> list[str]:
        out = []
        for ev in self.events:
            m, p = ev.get("method"), ev.get("params", {})
            if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append(f"console.{p['type']}: {p.get('args')}")
            elif m == "Runtime.exceptionThrown":
                out.append(f"exception: {p.get('exceptionDetails')}")
            elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                out.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
        return out

    def requests(self) -> list[str]:
        return [ev["params"]["request"]["url"] for ev in self.events if ev.get("method") == "Network.requestWillBeSent"]

    def screenshot(self) -> bytes:
        import base64
        w, h = self.js("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
        data = self.call("Page.captureScreenshot", session=True, format="png", captureBeyondViewport=True,
                         clip={"x": 0, "y": 0, "width": w, "height": h, "scale": 1})["data"]
        return base64.b64decode(data)

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=5)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._r)
        os.close(self._w)


@pytest.fixture
def browser(tmp_path):
    if CHROMIUM is None:
        pytest.fail("chromium is not installed (make install does: apt-get install -y chromium)")
    b = Chromium(tmp_path / "profile")
    yield b
    b.close()


# ---------------------------------------------------------------------------- runs
@pytest.fixture(scope="module")
def quick_report(mirror):
    df = embpress.run(grid="quick", progress=False)
    run_dir = Path(df.attrs["run_dir"])
    return run_dir, build_report(run_dir)


class _Lists(HTMLParser):
    """The page's Pareto lists: {(class, data-panel or data-model): [compressor, ...]}."""

    def __init__(self):
        super().__init__()
        self.lists: dict[tuple[str, str], list[str]] = {}
        self._cur = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "ul" and a.get("class") in ("pareto", "pareto-overall"):
            self._cur = (a["class"], a.get("data-panel") or a.get("data-model"))
            self.lists[self._cur] = []
        elif tag == "li" and self._cur and "data-compressor" in a:
            self.lists[self._cur].append(a["data-compressor"])

    def handle_endtag(self, tag):
        if tag == "ul":
            self._cur = None


def _frontier_by_hand(points: pd.DataFrame) -> set[str]:
    """Non-dominated compressors: fewer bytes is better, more retained is better."""
    keep = set()
    for i, p in points.iterrows():
        dominated = any(q.bytes_per_vector <= p.bytes_per_vector and q.retained_pct >= p.retained_pct
                        and (q.bytes_per_vector < p.bytes_per_vector or q.retained_pct > p.retained_pct)
                        for j, q in points.iterrows() if j != i)
        if not dominated:
            keep.add(p.compressor)
    return keep


# ---------------------------------------------------------------------------- tests
def _wait(browser, expression: str, timeout: float = 20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = browser.js(expression)
        if value:
            return value
        time.sleep(0.1)
    raise TimeoutError(expression)


def _visible_rows(browser) -> list[str]:
    return browser.js("Array.from(document.querySelectorAll('#results-table tbody tr'))"
                      ".filter(r => !r.hidden).map(r => r.cells[0].textContent)")


def test_report_opens_in_headless_chromium(quick_report, browser):
    run_dir, index = quick_report
    out = index.parent
    assert index == Path(os.environ["EMBPRESS_REPORTS"]) / run_dir.name / "index.html"
    html = index.read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html), "the page must not reference the network"
    assert html.count("window.vegaEmbed=") == 1 and len(html) < 6e6         # the Vega bundle, inlined once
    for name in ("quality_vs_bytes", "knn_recall_vs_bytes", "qps_vs_recall", "speed_by_family", "sts_vs_bytes"):
        png = Image.open(out / "figures" / f"{name}.png")
        assert round(png.info["dpi"][0]) == 200 and png.width >= 1000           # 2x: 200 dpi
        assert (out / "figures" / f"{name}.svg").read_text().lstrip().startswith("<?xml")
    assert "no compressor with rescore= in its spec" in html      # the quick grid has none: said, not drawn
    for name in ("cells_scifact", "cells_stsbenchmark", "loss_scifact"):
        assert (out / "tables" / f"{name}.md").read_text().startswith("| ")
    assert len(pd.read_csv(out / "tables" / "all_cells.csv")) == 14

    for url in (index.as_uri(), None):
        if url is None:  # the same page from a plain static server on the loopback interface
            handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(out))
            handler.log_message = lambda *a: None
            server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
            threading.Thread(target=server.serve_forever, daemon=True).start()
            url = f"http://127.0.0.1:{server.server_address[1]}/index.html"
        else:
            server = None
        try:
            browser.goto(url)
            _wait(browser, "document.querySelectorAll('.chart[data-drawn=scifact]').length === 3")
            assert browser.errors() == []
            assert [u for u in browser.requests() if u != url and not u.startswith("data:")] == []
        finally:
            if server:
                server.shutdown()

    # hover: a real mouse move onto a point of the quality chart shows that point's spec and bytes
    specs = set(pd.read_csv(run_dir / "results.csv").query("dataset == 'scifact' and status == 'ok'").compressor)
    box = browser.js("(() => { const el = document.getElementById('chart-quality'); el.scrollIntoView({block: 'center'});"
                     " const p = el.querySelector('g.mark-symbol path'); const r = p.getBoundingClientRect();"
                     " return [r.x + r.width / 2, r.y + r.height / 2]; })()")
    assert browser.js("document.getElementById('vg-tooltip-element') === null "
                      "|| !document.getElementById('vg-tooltip-element').classList.contains('visible')")
    browser.call("Input.dispatchMouseEvent", session=True, type="mouseMoved", x=box[0], y=box[1])
    tip = _wait(browser, "(() => { const t = document.getElementById('vg-tooltip-element');"
                         " return t && t.classList.contains('visible') ? t.innerText : ''; })()")
    lines = [l.strip() for l in tip.splitlines() if l.strip()]
    assert lines[0] == "spec" and lines[1] in specs and "bytes per vector" in lines and "nDCG@10" in lines
    rect = browser.js("(() => { const r = document.getElementById('vg-tooltip-element').getBoundingClientRect();"
                      " return [r.top, r.bottom, r.left, r.right, innerHeight, innerWidth]; })()")
    assert 0 <= rect[0] and rect[1] <= rect[4] and 0 <= rect[2] and rect[3] <= rect[5], rect   # all of it on screen
    # a click on a family in the legend fades that family's points and nothing else
    opacities = ("Array.from(document.querySelectorAll('#chart-quality g.mark-symbol')[0].querySelectorAll('path'),"
                 " p => Number(getComputedStyle(p).opacity))")
    before = browser.js(opacities)
    browser.click("#chart-quality g.role-legend-symbol path")
    after = _wait(browser, f"(() => {{ const o = {opacities}; return o.some(x => x < 0.5) ? o : null; }})()")
    assert len(after) == len(before) and 0 < sum(x > 0.5 for x in after) < len(after)
    assert browser.errors() == []


def test_filters_and_the_dataset_selector_change_the_visible_rows(quick_report, browser):
    run_dir, index = quick_report
    df = pd.read_csv(run_dir / "results.csv")
    browser.goto(index.as_uri())
    assert sorted(_visible_rows(browser)) == sorted(df[df.dataset == "scifact"].compressor)
    points = "document.querySelectorAll('#chart-quality g.mark-symbol')[0].querySelectorAll('path').length"
    n_ok = df[df.status == "ok"].groupby("dataset").size()
    _wait(browser, "document.getElementById('chart-quality').getAttribute('data-drawn') === 'scifact'")
    assert browser.js(points) == n_ok["scifact"]                  # the chart shows the selected dataset only
    browser.js("(() => { const i = document.getElementById('filter-text'); i.value = 'pq';"
               " i.dispatchEvent(new Event('input')); })()")
    assert _visible_rows(browser) == ["PQ16x8"]
    assert browser.js("document.getElementById('filter-count').textContent") == \
        f"1 of {(df.dataset == 'scifact').sum()} rows of scifact"
    browser.js("(() => { const i = document.getElementById('filter-text'); i.value = '';"
               " i.dispatchEvent(new Event('input')); const s = document.getElementById('dataset');"
               " s.value = 'stsbenchmark'; s.dispatchEvent(new Event('change')); })()")
    assert sorted(_visible_rows(browser)) == sorted(df[df.dataset == "stsbenchmark"].compressor)
    visible = "Array.from(document.querySelectorAll('table.winners')).filter(t => t.offsetParent !== null).map(t => t.id)"
    assert browser.js(visible) == ["winners-stsbenchmark"]
    _wait(browser, "document.getElementById('chart-quality').getAttribute('data-drawn') === 'stsbenchmark'")
    assert browser.js(points) == n_ok["stsbenchmark"]
    assert browser.js("document.getElementById('chart-speed').closest('figure').hidden")   # STS: no search timings
    browser.js("(() => { const f = document.getElementById('filter-family'); f.value = 'binary';"
               " f.dispatchEvent(new Event('input')); })()")
    assert _visible_rows(browser) == ["BIN"]
    assert browser.errors() == []


def test_phone_width_has_no_horizontal_page_scroll(quick_report, browser):
    _, index = quick_report
    browser.call("Emulation.setDeviceMetricsOverride", session=True, width=390, height=844, deviceScaleFactor=1,
                 mobile=True)
    browser.goto(index.as_uri())
    _wait(browser, "document.querySelectorAll('.chart[data-drawn]').length === 3")
    assert browser.js("[document.documentElement.scrollWidth, window.innerWidth]") == [390, 390]
    widths = browser.js("Array.from(document.querySelectorAll('.chart svg'), s => s.getBoundingClientRect().width)")
    assert len(widths) == 3 and all(300 < w <= 390 for w in widths), widths      # the charts resized
    # a tooltip on a phone lies inside the screen, at the edge away from the point it describes
    for where, by in (("start", -80), ("center", 0), ("end", 80)):   # a point near the top, middle, bottom
        box = browser.js(f"(() => {{ const p = document.querySelector('#chart-quality g.mark-symbol path');"
                         f" p.scrollIntoView({{block: '{where}'}}); window.scrollBy(0, {by});"
                         " const r = p.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        browser.call("Input.dispatchMouseEvent", session=True, type="mouseMoved", x=box[0], y=box[1] + 0.5)
        tip = _wait(browser, "(() => { const t = document.getElementById('vg-tooltip-element');"
                             " if (!t || !t.classList.contains('visible')) return null;"
                             " const r = t.getBoundingClientRect();"
                             " return [r.top, r.bottom, r.left, r.right, innerHeight, t.innerText]; })()")
        top, bottom, left, right, height, text = tip
        assert 0 <= top and bottom <= height and 0 <= left and right <= 390, tip
        assert (bottom < box[1]) if box[1] > height / 2 else (top > box[1]), (tip, box)
        assert text.split("\n")[0].strip() == "spec" and "bytes per vector" in text
        browser.call("Input.dispatchMouseEvent", session=True, type="mouseMoved", x=2, y=2)
    assert browser.errors() == []


def _winner_rows(html: str) -> list[dict]:
    rows = []
    for table_id, body in re.findall(r'<table id="winners-([^"]+)" class="winners">(.*?)</table>', html, re.S):
        for attrs in re.findall(r"<tr ([^>]*)>", body):
            a = dict(re.findall(r'([\w-]+)="([^"]*)"', attrs))
            if "data-compressor" in a or "line90" in a.get("class", ""):
                rows.append({"dataset": table_id, **a})
    return rows


def _budgets(df: pd.DataFrame, run_dir: Path) -> list[int]:
    """The budgets a winners table answers for: the grid's, else every size stored below float32."""
    configured = {int(b) for b in df.budget.dropna()} | set(load_run(run_dir)[1]["config"].get("budgets") or [])
    smaller = df[(df.status == "ok") & (df.compression_ratio > 1)]
    return sorted(configured or {int(b) for b in smaller.bytes_per_vector})


def test_winners_table_equals_a_recomputation_from_the_results(quick_report):
    run_dir, index = quick_report
    df = pd.read_parquet(run_dir / "results.parquet")
    ok = df[(df.status == "ok") & df.protocol.str.split(":").str[0].isin(["oblivious", "crossfit", "external"])]
    rows = _winner_rows(index.read_text())
    assert {r["dataset"] for r in rows} == {"scifact", "stsbenchmark"}
    budgets = _budgets(df, run_dir)
    seen_line, checked = {}, 0
    for r in rows:
        if "line90" in r.get("class", ""):
            seen_line[r["dataset"]] = True
            continue
        assert "data-retained" in r, r
        g = ok[ok.dataset == r["dataset"]]
        retained = float(r["data-retained"])
        assert (retained < 90) == seen_line.get(r["dataset"], False)          # the 90 % line sits where it should
        for b in [b for b in budgets if int(r["data-budget"]) <= b <= int(r["data-budget-max"])]:
            cand = g[g.bytes_per_vector <= b]
            best = cand.sort_values(["retained_pct", "bytes_per_vector"], ascending=[False, True]).iloc[0]
            assert (best.compressor, best.retained_pct) == (r["data-compressor"], retained)
            near = cand[(cand.retained_pct >= best.retained_pct - 1) & cand.search_qps.notna()]
            fast = near.sort_values("search_qps", ascending=False).compressor.iloc[0] if len(near) else ""
            assert fast == r["data-fast"]
            checked += 1
    assert checked >= 5
    html = index.read_text()
    assert seen_line.get("scifact") and "below here quality drops under 90 % of float32" in html
    # the interval shown beside a winner is the paired bootstrap of its per-query files
    from embpress.report.html import num
    from embpress.stats import retained_ci
    r = next(r for r in rows if r["dataset"] == "scifact" and "data-compressor" in r)
    cell = ok[(ok.dataset == "scifact") & (ok.compressor == r["data-compressor"])].iloc[0]
    low, high = retained_ci(run_dir, cell)
    assert f"[{num(low)}–{num(high)}]" in html


def test_run_wide_intervals_equal_one_bootstrap_per_cell(quick_report):
    """retained_cis (what the report uses) gives every cell the interval paired_bootstrap gives it."""
    from embpress.stats import retained_ci, retained_cis
    run_dir, _ = quick_report
    df, _ = load_run(run_dir)
    ok = df[df.status == "ok"]
    batch = retained_cis(run_dir, ok, n_boot=300, seed=4)
    assert set(ok.task) == {"retrieval", "sts"} and batch.notna().all().all()
    for i, row in ok.iterrows():
        assert tuple(batch.loc[i]) == pytest.approx(retained_ci(run_dir, row, n_boot=300, seed=4), rel=1e-9)


def test_task_winners_are_the_best_mean_over_the_task_datasets(quick_report, tmp_path):
    """Two retrieval datasets: the quick run's scifact rows and a second dataset made from them with
    other qualities and speeds (test input). The task table's winner at each budget is the compressor
    with the highest mean retained % over both, its fastest-within-a-point the highest geometric-mean
    speed-up; it shows beside either dataset's table and not beside the STS one."""
    run_dir, _ = quick_report
    copy = tmp_path / run_dir.name
    shutil.copytree(run_dir, copy)
    df = pd.read_parquet(copy / "results.parquet")
    other = df[df.dataset == "scifact"].copy()
    rng = np.random.default_rng(3)
    other["dataset"], other["cell_id"] = "scifact-b", other["cell_id"] + "b"
    other["retained_pct"] = other["retained_pct"] * rng.uniform(0.85, 1.0, len(other))
    other.loc[other.compressor == "F32", "retained_pct"] = 100.0
    other["search_qps"] = other["search_qps"] * rng.uniform(0.5, 2.0, len(other))
    pd.concat([df, other], ignore_index=True).to_parquet(copy / "results.parquet")
    html = build_report(copy, tmp_path / "rep").read_text()
    rows = [r for r in _winner_rows(html) if r["dataset"].startswith("task-retrieval")]
    assert rows and not [r for r in _winner_rows(html) if r["dataset"].startswith("task-sts")]
    assert re.search(r"""<div data-in='\[&quot;scifact&quot;, &quot;scifact-b&quot;\]'><h3>retrieval over 2""", html)
    both = pd.concat([df[df.dataset == "scifact"], other])
    ok = both[(both.status == "ok") & both.protocol.str.split(":").str[0].isin(["oblivious", "crossfit", "external"])]
    f32 = ok[ok.compressor == "F32"].set_index("dataset").search_qps
    ok = ok.assign(speedup=ok.search_qps / ok.dataset.map(f32))
    mean = ok.groupby("compressor").agg(b=("bytes_per_vector", "max"), kept=("retained_pct", "mean"),
                                        su=("speedup", lambda s: float(np.exp(np.log(s).mean()))))
    budgets, checked = _budgets(df, run_dir), 0
    for r in rows:
        if "data-compressor" not in r:
            continue
        for b in [b for b in budgets if int(r["data-budget"]) <= b <= int(r["data-budget-max"])]:
            cand = mean[mean.b <= b].reset_index().sort_values(["kept", "b", "compressor"],
                                                               ascending=[False, True, True])
            best = cand.iloc[0]
            assert (best.compressor, best.kept) == (r["data-compressor"], pytest.approx(float(r["data-retained"])))
            near = cand[cand.kept >= best.kept - 1]
            assert near.sort_values("su", ascending=False).compressor.iloc[0] == r["data-fast"]
            checked += 1
    assert checked >= 3


def test_in_sample_chart_is_interactive(quick_report, tmp_path, browser):
    """In-sample cells beside their cross-fitted twins (test input: the quick run's trained cells
    copied as in-sample, 5 points better) are drawn as one interactive chart, dashed against solid,
    with a tooltip; no static image of it in the page."""
    run_dir, _ = quick_report
    copy = tmp_path / run_dir.name
    shutil.copytree(run_dir, copy)
    df = pd.read_parquet(copy / "results.parquet")
    trained = df[(df.status == "ok") & df.protocol.str.startswith("crossfit") & (df.dataset == "scifact")].copy()
    assert len(trained) >= 2
    trained["protocol"], trained["cell_id"] = "in-sample", trained["cell_id"] + "i"
    trained["retained_pct"] += 5
    pd.concat([df, trained], ignore_index=True).to_parquet(copy / "results.parquet")
    index = build_report(copy, tmp_path / "rep")
    html = index.read_text()
    assert "data:image/png" not in html and (tmp_path / "rep" / "figures" / "in_sample_vs_crossfit.svg").is_file()
    browser.goto(index.as_uri())
    _wait(browser, "document.getElementById('chart-insample').getAttribute('data-drawn') === 'scifact'")
    dashes = browser.js("Array.from(document.querySelectorAll('#chart-insample g.mark-line path'),"
                        " p => p.getAttribute('stroke-dasharray'))")
    assert sorted(dashes) == ["1,0"] * len(trained) + ["5,3"] * len(trained), dashes   # solid, dashed: one per fit
    symbols = "#chart-insample g.mark-symbol.role-mark path"
    assert browser.js(f"document.querySelectorAll('{symbols}').length") == 2 * len(trained)
    box = browser.js(f"(() => {{ const p = document.querySelector('{symbols}'); p.scrollIntoView({{block: 'center'}});"
                     " const r = p.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()")
    browser.call("Input.dispatchMouseEvent", session=True, type="mouseMoved", x=box[0], y=box[1])
    tip = _wait(browser, "(() => { const t = document.getElementById('vg-tooltip-element');"
                         " return t && t.classList.contains('visible') ? t.innerText : ''; })()")
    assert any(c in tip for c in trained.compressor) and ("in-sample" in tip or "crossfit" in tip)
    browser.js("(() => { const s = document.getElementById('dataset'); s.value = 'stsbenchmark';"
               " s.dispatchEvent(new Event('change')); })()")
    assert browser.js("document.getElementById('chart-insample').closest('figure').hidden")   # no pairs there
    assert browser.errors() == []


def test_workers_store_the_interval_the_per_query_files_give(quick_report, tmp_path):
    """Each ok cell's row carries the interval its worker computed as it finished; it equals
    retained_ci from the saved per-query files (same resamples and seed), the report shows the stored
    one, and a run from before the grid stored them gets the same intervals computed at build time."""
    from embpress.report.analysis import intervals
    from embpress.stats import retained_ci
    run_dir, _ = quick_report
    df = pd.read_parquet(run_dir / "results.parquet")
    ok = df[df.status == "ok"]
    assert set(ok.task) == {"retrieval", "sts"} and (ok.ci_resamples == 1000).all() and (ok.ci_seed == 0).all()
    assert df.loc[df.status != "ok", "ci_low"].isna().all()
    for _, row in ok.iterrows():
        expected = retained_ci(run_dir, row, n_boot=int(row.ci_resamples), seed=int(row.ci_seed))
        assert (row.ci_low, row.ci_high) == pytest.approx(expected, rel=1e-12), row.compressor
        assert row.ci_low <= row.ci_high
    assert (ok.ci_high - ok.ci_low > 0.5).sum() >= len(ok) // 2          # real intervals, not points
    # the report uses the stored values: changed in a copy of the run, they are what prepare returns
    copy = tmp_path / run_dir.name
    shutil.copytree(run_dir, copy)
    marked = df.copy()
    marked.loc[marked.status == "ok", ["ci_low", "ci_high"]] = [12.5, 13.5]
    prepared = marked.copy()
    intervals(prepared, copy)
    assert (prepared.loc[prepared.status == "ok", ["ci_low", "ci_high"]] == [12.5, 13.5]).all().all()
    # an older run without the columns: computed from the per-query files, the same numbers
    old = df.drop(columns=["ci_low", "ci_high", "ci_resamples", "ci_seed"])
    intervals(old, copy)
    assert np.allclose(old[["ci_low", "ci_high"]].to_numpy(float), df[["ci_low", "ci_high"]].to_numpy(float),
                       rtol=1e-12, equal_nan=True)
    # another number of resamples than the stored one: recomputed, not reused
    other = marked.copy()
    intervals(other, copy, n_boot=200)
    assert (other.loc[other.status == "ok", "ci_low"] != 12.5).all() and (other.ci_resamples.dropna() == 200).all()


def test_numbers_have_three_significant_digits():
    from embpress.report.html import num
    assert [num(v) for v in (2.9e-05, 44.073, 528734.2, 0.5, 100.0, 99.96, 7, float("nan"))] == \
        ["0.000029", "44.1", "529,000", "0.5", "100", "100", "7", ""]


def test_paired_bootstrap_is_paired_and_handles_spearman():
    rng = np.random.default_rng(1)
    base = rng.uniform(0, 100, 400)
    # the same per-query values: exactly 100 %, however noisy the queries are
    assert paired_bootstrap(base, base) == (100.0, 100.0)
    # a 2 % uniform loss is detected even though queries vary far more than 2 %
    low, high = paired_bootstrap(0.98 * base, base, n_boot=500)
    assert 97.9 < low <= 98.0 <= high < 98.1
    # unpaired noise of the same size gives a wide interval that contains 100
    low, high = paired_bootstrap(rng.permutation(base), base, n_boot=500)
    assert low < 100 < high and high - low > 5
    # STS: Spearman with the gold scores, recomputed on resampled pairs
    gold = rng.uniform(0, 5, 300)
    good = gold + rng.normal(0, 0.5, 300)
    worse = gold + rng.normal(0, 2.0, 300)
    low, high = paired_bootstrap(worse, good, "spearman", gold=gold, n_boot=300, seed=3)
    assert high < 100
    # ... equal to scipy's Spearman on the explicitly resampled arrays (ties from repeats averaged)
    gold = np.round(gold * 2) / 2                                       # STS-like tied gold scores
    by_hand = [100 * spearmanr(worse[i], gold[i]).statistic / spearmanr(good[i], gold[i]).statistic
               for i in bootstrap_indices(300, 200, seed=5)]
    assert paired_bootstrap(worse, good, "spearman", gold=gold, n_boot=200, seed=5) == \
        pytest.approx(tuple(np.percentile(by_hand, [2.5, 97.5])), rel=1e-9)
    assert paired_bootstrap(good, good, "spearman", gold=gold, n_boot=50) == (100.0, 100.0)
    # a callable statistic (median) works the same way
    low, high = paired_bootstrap(0.9 * base, base, lambda v, g: float(np.median(v)), n_boot=100)
    assert low == pytest.approx(90) and high == pytest.approx(90)
    with pytest.raises(ValueError, match="gold"):
        paired_bootstrap(good, good, "spearman")
    with pytest.raises(ValueError, match="length"):
        paired_bootstrap(base[:10], base[:11])


def test_pareto_mask_uses_the_metric_directions():
    df = pd.DataFrame({"bytes_per_vector": [16, 32, 32, 64, 8, np.nan],
                       "retained_pct": [90, 95, 94, 95, 50, 99],
                       "search_qps": [10, 5, 50, 1, 1, 1]})
    assert list(pareto_mask(df)) == [True, True, False, False, True, False]
    # higher q/s is better: the 94 % cell at 32 B is now on the frontier too
    assert list(pareto_mask(df, ("bytes_per_vector", "retained_pct", "search_qps"))) == \
        [True, True, True, False, True, False]
    with pytest.raises(KeyError, match="no direction"):
        pareto_mask(df, ("bytes_per_vector", "nonsense"))


def _quick_vectors(minilm, name):
    """The quick grid's embeddings of a dataset sample (already cached by the quick run)."""
    from embpress.data import load_dataset
    from embpress.embed import embed_dataset
    grid = embpress.grid.load_grid("quick")
    ds = load_dataset(name, max_queries=grid.max_queries, max_docs=grid.max_docs)
    return ds, {k: np.asarray(v) for k, v in embed_dataset(minilm, ds, progress=False).items()}


def test_bring_your_own_neighbours_and_sts_with_infeasible_and_failed_cells(quick_report, minilm, tmp_path, capsys):
    from embpress.embed import STATS
    calls = STATS["encoder_calls"]
    neighbours = tmp_path / "prod-vectors"
    neighbours.mkdir()
    np.save(neighbours / "corpus.npy", _quick_vectors(minilm, "scifact")[1]["corpus"])   # no queries, no qrels
    sts = tmp_path / "pairs"
    sts.mkdir()
    ds, vecs = _quick_vectors(minilm, "stsbenchmark")
    np.save(sts / "sentences1.npy", vecs["sentences1"])
    np.save(sts / "sentences2.npy", vecs["sentences2"])
    np.save(sts / "scores.npy", np.asarray(ds.scores))
    assert STATS["encoder_calls"] == calls                            # the quick run's embeddings, reused
    grid = tmp_path / "byo.toml"
    grid.write_text(f'datasets = ["{neighbours}", "{sts}"]\nmodels = ["minilm"]\ncompressors = ["F32", "SQ4", "BIN", "BIN:rescore=2", "BIN:rescore=8"]\n'
                    'budgets = [5, 24, 48]\nfamilies = ["PQ{m}x8"]\n')
    df = embpress.run(grid=str(grid), progress=False)
    run_dir = Path(df.attrs["run_dir"])
    # infeasible: PQ at 5 B on both, and PQ24x8 / PQ48x8 on the 300 STS sentences, cross-fitted in two
    # folds of fewer vectors than their 256 centroids
    assert set(df.task) == {"neighbours", "sts"} and (df.status == "infeasible").sum() == 4
    assert df.error.fillna("").str.contains("fold .* needs at least 256").sum() == 2
    # a cell that failed (as run_cell records an unexpected error) must show with its error
    rows = pd.read_parquet(run_dir / "results.parquet")
    failed = {"dataset": "prod-vectors", "task": "neighbours", "model": "(vectors)", "compressor": "PQ12x8",
              "status": "failed", "budget": 12, "template": "PQ{m}x8", "cell_id": "f" * 12,
              "error": "RuntimeError: worker lost"}
    pd.concat([rows, pd.DataFrame([failed])], ignore_index=True).to_parquet(run_dir / "results.parquet")

    assert cli_main(["report", str(run_dir), "--out", str(tmp_path / "rep")]) == 0
    index = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert index == tmp_path / "rep" / "index.html"
    html = index.read_text()
    reasons = [html_escape(r) for r in df.loc[df.status == "infeasible", "error"]]
    for text in ['id="winners-prod-vectors"', 'id="winners-pairs"', "worker lost", "per-query loss needs qrels",
                 "figures/rescoring.png", *reasons]:
        assert text in html, text
    assert 'class="failed"' in html and 'class="infeasible"' in html
    assert "model-side" not in html                                  # no encoder variants: no section
    figures = {p.stem for p in (index.parent / "figures").glob("*.png")}
    assert figures == {"quality_vs_bytes", "knn_recall_vs_bytes", "qps_vs_recall", "speed_by_family", "sts_vs_bytes",
                       "rescoring"}
    cells = pd.read_csv(index.parent / "tables" / "cells_prod-vectors.csv")
    assert cells.loc[cells.status == "ok", "ci_low"].notna().all()
    assert (cells.loc[cells.compressor == "F32", ["ci_low", "ci_high"]] == 100).all().all()


def test_report_command_says_what_is_wrong_in_one_line(tmp_path, capsys):
    assert cli_main(["report", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a run folder" in err[0]


def test_model_side_section_appears_with_model_track_columns(quick_report, tmp_path):
    run_dir, _ = quick_report
    copy = tmp_path / run_dir.name
    shutil.copytree(run_dir, copy)
    rows = pd.read_parquet(copy / "results.parquet")
    # model-track columns as the encoder profile adds them (test input: one encoder, its own reference)
    rows["model_memory_bytes"], rows["model_texts_per_s"] = 90_868_224, 310.0
    rows.to_parquet(copy / "results.parquet")
    index = build_report(copy, tmp_path / "rep")
    html = index.read_text()
    assert 'id="model-side"' in html and (tmp_path / "rep" / "figures" / "model_side.png").stat().st_size > 5000
    table = pd.read_csv(tmp_path / "rep" / "tables" / "model_side.csv")
    assert list(table["% of all-MiniLM-L6-v2 on scifact"]) == [100.0]


def test_model_variants_are_relative_to_the_largest_encoder():
    from embpress.report import model_columns, model_variants
    df = pd.DataFrame({"model": ["big", "big", "small", "small", "big"], "dataset": ["a", "b", "a", "b", "a"],
                       "compressor": ["F32", "F32", "F32", "F32", "SQ8"], "status": "ok",
                       "quality": [80.0, 50.0, 60.0, 45.0, 79.0], "model_params": [110e6, 110e6, 22e6, 22e6, 110e6],
                       "model_base_texts_per_s": 1.0, "model_texts_per_s": [100, 100, 400, 400, 100]})
    assert model_columns(df) == ("model_params", "model_texts_per_s")
    rows, ref = model_variants(df, "model_params")
    assert ref == "big" and list(rows.ref_pct) == [100, 100, 75, 90]
    assert model_columns(df.drop(columns=["model_params"])) == (None, "model_texts_per_s")


def test_model_variants_are_relative_to_the_base_most_variants_share():
    """A distilled student with a projection is bigger than MiniLM, but the variants' own float32
    base stays the reference."""
    from embpress.report import model_variants
    models = ["mini", "mini@bf16", "mini@int8", "student"]
    df = pd.DataFrame({"model": models, "dataset": "a", "compressor": "F32", "status": "ok",
                       "quality": [60.0, 60.0, 57.0, 54.0], "model_memory_bytes": [91e6, 45e6, 59e6, 92e6],
                       "model_base": ["mini", "mini", "mini", "student"]})
    rows, ref = model_variants(df, "model_memory_bytes")
    assert ref == "mini" and list(rows.ref_pct) == [100, 100, 95, 90]


def test_style_maps_take_families_missing_from_infeasible_cells():
    """An infeasible cell has no family; beside a family of the same group it must not break the
    colour maps (pandas' astype(str) keeps NaN, and sorting NaN with strings raises)."""
    from embpress.report.analysis import group_of
    from embpress.report.figures import style_maps
    df = pd.DataFrame({"family": ["turboquant", np.nan, "scalar", "eden", "newfamily"],
                       "line": ["TQ{bits}", "PCA{d},SQ4", "SQ{bits}", "EDEN{bits}", "NEW{d}"]})
    df["group"] = [group_of(f) for f in df["family"]]
    assert df["group"].tolist() == ["scalar", "other", "scalar", "scalar", "other"]
    colour = style_maps(df)
    assert {"turboquant", "eden", "scalar", "TQ{bits}", "EDEN{bits}"} <= set(colour)
    assert colour["turboquant"] != colour["eden"]            # shades of the same group, told apart
