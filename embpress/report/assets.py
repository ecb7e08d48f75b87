"""The page's style sheet and script (inlined in every report)."""

CSS = """
*{box-sizing:border-box}html{scroll-padding-top:52px}
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;color:#1b1f24;background:#fff;
overflow-wrap:anywhere}
.bar{position:sticky;top:0;z-index:10;background:#fffffff0;border-bottom:1px solid #d0d7de;padding:6px 24px;
display:flex;flex-wrap:wrap;gap:4px 18px;align-items:center;font-size:13px}
.bar select{font:inherit;padding:2px 4px}.bar nav a{margin-right:10px;white-space:nowrap}
main{max-width:1320px;margin:0 auto;padding:8px 24px 60px}
h1{font-size:23px;margin:14px 0 4px}h2{font-size:19px;margin:30px 0 8px;border-bottom:1px solid #d0d7de;padding-bottom:4px}
h3{font-size:15px;margin:18px 0 4px}.muted{color:#57606a}.small{font-size:12px}
code{background:#f3f4f6;padding:0 3px;border-radius:3px}
.box{overflow:auto;max-width:100%;max-height:78vh;border:1px solid #d8dee4;margin:6px 0 14px}
table{border-collapse:separate;border-spacing:0;font-size:12.5px}
th,td{border-right:1px solid #eaeef2;border-bottom:1px solid #eaeef2;padding:3px 7px;text-align:right;
white-space:nowrap;vertical-align:top}
th{background:#f6f8fa;position:sticky;top:0;z-index:2;font-weight:600}
td:first-child,th:first-child{position:sticky;left:0;text-align:left;z-index:1;background:#fff;
border-right:1px solid #d0d7de}
th:first-child{z-index:3;background:#f6f8fa}
td.t{text-align:left}td.why{white-space:normal;min-width:220px;max-width:420px;text-align:left;font-size:11.5px}
.clamp{display:-webkit-box;-webkit-line-clamp:2;-webkit-box-orient:vertical;overflow:hidden}
#results-table td:first-child{white-space:normal;min-width:210px;max-width:280px}
table.sortable th{cursor:pointer;user-select:none}table.sortable th:hover{background:#e8eef5}
th[aria-sort=ascending]::after{content:' ▲'}th[aria-sort=descending]::after{content:' ▼'}
tr.infeasible td{background:#fff8e1}tr.failed td{background:#ffebe9}tr.pareto td:first-child{font-weight:600}
.hidecol{display:none}.sw{font-size:11px;margin-right:3px}
table.winners td.t{white-space:normal;min-width:150px}table.winners th{text-align:left}
tr.line90 td{border-top:2px dashed #b42318;color:#b42318;font-weight:600;text-align:left;background:#fff5f5;
position:static}
tr.below td{color:#6e7781}
.sig{color:#1a7f37;font-weight:600}.note{background:#f6f8fa;padding:6px 10px;border-left:3px solid #8c959f}
.protocol{background:#f6f8fa;padding:6px 10px;border-left:3px solid #0969da;font-size:13px}
.chart{width:100%;min-height:420px;margin:8px 0 4px}.vega-embed{width:100%}
figure{margin:12px 0 22px}figure img{max-width:100%;height:auto;border:1px solid #eaeef2}
figcaption{font-size:12.5px;color:#57606a}
.filters{display:flex;flex-wrap:wrap;gap:6px 14px;align-items:center;font-size:13px;margin:6px 0}
.filters input,.filters select{font:inherit;padding:2px 4px;max-width:100%}
dl.prov,dl.glossary{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;margin:8px 0}
dl.prov dt,dl.glossary dt{font-weight:600}dl.prov dd,dl.glossary dd{margin:0}
body #vg-tooltip-element{max-width:min(640px,calc(100vw - 8px));font-size:11.5px;padding:6px 8px}
body #vg-tooltip-element table{display:grid;grid-template-columns:auto minmax(0,auto) auto minmax(0,auto);
column-gap:6px}
body #vg-tooltip-element table tbody,body #vg-tooltip-element table tr{display:contents}
body #vg-tooltip-element table tr td{padding:1px 0;max-width:220px}
body #vg-tooltip-element table tr td.value{max-height:none;white-space:normal;overflow-wrap:anywhere}
body #vg-tooltip-element table tr:first-child td.value{grid-column:2/-1;font-weight:600;max-width:none}
details{margin:6px 0}summary{cursor:pointer;font-weight:600}details.protocol summary{font-weight:500}ul.files{columns:3;font-size:12px}
@media (max-width:700px){main{padding:6px 10px 40px}.bar{padding:6px 10px;flex-wrap:nowrap}
.bar nav{overflow-x:auto;white-space:nowrap;flex:1;min-width:0}
dl.prov,dl.glossary{grid-template-columns:1fr}dl.prov dd,dl.glossary dd{margin:0 0 6px}ul.files{columns:1}
.chart{min-height:460px}#results-table td:first-child{min-width:110px;max-width:40vw;font-size:11.5px}
body #vg-tooltip-element.visible{left:0!important;right:0;width:100vw;max-width:none;max-height:42vh;
overflow:auto;border-radius:0;font-size:10.5px;line-height:1.25;padding:4px 6px;box-shadow:0 0 8px #0003}
body #vg-tooltip-element.dock-top{top:0!important;bottom:auto!important}
body #vg-tooltip-element.dock-bottom{top:auto!important;bottom:0!important}
body #vg-tooltip-element table tr td{max-width:none;white-space:normal}}
"""

JS = r"""
(function () {
  function each(q, f) { Array.prototype.forEach.call(document.querySelectorAll(q), f); }
  var sel = document.getElementById('dataset');
  var text = document.getElementById('filter-text'), fam = document.getElementById('filter-family'),
      bud = document.getElementById('filter-budget'), count = document.getElementById('filter-count');
  function hideEmptyColumns(table) {
    var rows = Array.prototype.filter.call(table.tBodies[0].rows, function (r) { return !r.hidden; });
    var n = table.tHead.rows[0].cells.length;
    for (var c = 0; c < n; c++) {
      var empty = rows.every(function (r) { return !r.cells[c] || r.cells[c].textContent === ''; });
      table.tHead.rows[0].cells[c].classList.toggle('hidecol', empty && c > 0);
      Array.prototype.forEach.call(table.tBodies[0].rows, function (r) {
        if (r.cells[c]) { r.cells[c].classList.toggle('hidecol', empty && c > 0); } });
    }
  }
  function filterRows() {
    var table = document.getElementById('results-table');
    if (!table) { return; }
    var t = (text.value || '').toLowerCase(), f = fam.value, b = bud.value, ds = sel.value, shown = 0, all = 0;
    Array.prototype.forEach.call(table.tBodies[0].rows, function (r) {
      var here = r.getAttribute('data-ds') === ds;
      var ok = here && (!f || r.getAttribute('data-group') === f) &&
               (!b || r.getAttribute('data-budget') === b) && (!t || r.textContent.toLowerCase().indexOf(t) >= 0);
      r.hidden = !ok;
      if (ok) { shown++; }
      if (here) { all++; }
    });
    count.textContent = shown + ' of ' + all + ' rows of ' + ds;
    hideEmptyColumns(table);
  }
  var specsEl = document.getElementById('specs');
  var specs = specsEl ? JSON.parse(specsEl.textContent) : {};
  var points = specsEl ? JSON.parse(document.getElementById('points').textContent) : [];
  var views = {};
  function narrow(spec) {   // a phone: the legend in two columns
    var s = JSON.parse(JSON.stringify(spec));
    (s.layer || []).forEach(function (l) {
      ['color', 'shape'].forEach(function (c) {
        var enc = l.encoding && l.encoding[c];
        if (enc && enc.legend) { enc.legend.columns = 2; enc.legend.labelLimit = 140; }
      });
    });
    return s;
  }
  function drawCharts() {
    if (!window.vegaEmbed) { return; }
    var ds = sel.value;
    var rows = points.filter(function (p) { return p.dataset === ds; });
    Object.keys(specs).forEach(function (id) {
      var el = document.getElementById(id), spec = specs[id][ds];
      if (!el) { return; }
      if (views[id]) { views[id].finalize(); delete views[id]; }
      el.closest('figure').hidden = !spec;
      el.removeAttribute('data-drawn');
      if (!spec) { return; }
      vegaEmbed(el, el.clientWidth < 560 ? narrow(spec) : spec, {actions: false, renderer: 'svg'})
        .then(function (r) { views[id] = r.view; r.view.data('points', rows); return r.view.runAsync(); })
        .then(function () { el.setAttribute('data-drawn', ds); })
        .catch(function (err) { console.error(err); });
    });
  }
  function applyDataset() {
    each('[data-ds]', function (el) { if (el.tagName !== 'TR') { el.hidden = el.getAttribute('data-ds') !== sel.value; } });
    each('[data-in]', function (el) { el.hidden = JSON.parse(el.getAttribute('data-in')).indexOf(sel.value) < 0; });
    filterRows();
    drawCharts();
  }
  // a phone: the tooltip docks at the screen's edge away from the finger, never over the point (set
  // again once Vega's handler, which runs after this listener, has created or moved the tooltip)
  var pointerY = 0;
  function dock() {
    var tip = document.getElementById('vg-tooltip-element');
    if (!tip) { return; }
    var low = pointerY > window.innerHeight / 2;
    tip.classList.toggle('dock-top', low);
    tip.classList.toggle('dock-bottom', !low);
  }
  ['pointermove', 'pointerdown'].forEach(function (t) {
    document.addEventListener(t, function (ev) { pointerY = ev.clientY; dock(); setTimeout(dock, 0); }, true);
  });
  if (sel) { sel.addEventListener('change', applyDataset); }
  [text, fam, bud].forEach(function (el) { if (el) { el.addEventListener('input', filterRows); } });
  each('table.sortable', function (table) {
    each('#' + table.id + ' thead th', function (th, col) {
      th.addEventListener('click', function () {
        var asc = th.getAttribute('aria-sort') !== 'ascending';
        each('#' + table.id + ' thead th', function (h) { h.removeAttribute('aria-sort'); });
        th.setAttribute('aria-sort', asc ? 'ascending' : 'descending');
        var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
        var key = function (r) { var c = r.cells[col]; return c ? (c.getAttribute('data-v') || '') : ''; };
        var numeric = rows.every(function (r) { var v = key(r); return v === '' || !isNaN(Number(v)); });
        rows.sort(function (a, b) {
          var x = key(a), y = key(b);
          if (x === '' || y === '') { return (x === '') - (y === ''); }
          var d = numeric ? Number(x) - Number(y) : x.localeCompare(y);
          return asc ? d : -d;
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  });
  applyDataset();
})();
"""
