// metricrelay view: runs from GET /v2/lm/executions or a tag search, compared from GET /v2/lm/metrics.
// Every request goes to the viewer server, which adds the token: this page never holds one.
"use strict";
(() => {
  const MAX_IDS_PER_GET = 10; // the AI API takes at most 10 execution ids per metrics GET
  const PAGE_SIZE = 20;
  const PALETTE = ["#0a6ed1", "#e9730c", "#107e3e", "#bb0000", "#8b47d7", "#0f828f", "#925ace",
    "#c87b00", "#1d2d3e", "#d04343"];
  const $ = (sel) => document.querySelector(sel);
  const view = { group: "", ids: [], tags: "", status: "", skip: 0, x: "step", scale: "linear", smooth: 0 };
  const state = { session: null, runs: [], count: 0, resources: [], plots: [], maxCompare: 10 };
  // what the browser test reads: per chart its series; the listed runs; the CSV offered
  window.viewer = { ready: false, error: null, charts: {}, runs: [], csv: "", notes: [] };

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
    for (const child of children) node.append(child);
    return node;
  }

  const labelText = (labels) => (labels || []).map((l) => `${l.name}=${l.value}`).join(", ");
  const color = (id) => PALETTE[Math.max(0, view.ids.indexOf(id)) % PALETTE.length];

  class ApiError extends Error {}

  async function getJson(path, params) {
    const query = new URLSearchParams(params);
    let reply;
    try {
      reply = await fetch(`${path}?${query}`, { headers: { "AI-Resource-Group": view.group } });
    } catch (err) {
      throw new ApiError(`the viewer server does not answer (${err.message}); is metricrelay view still running?`);
    }
    const body = await reply.json().catch(() => null);
    if (reply.ok) return body;
    const error = (body && body.error) || {};
    let text = `HTTP ${reply.status}: ${error.message || reply.statusText}`;
    if (reply.status === 401 || reply.status === 403) {
      text += ` — credential: ${error.credential || state.session.credential}; resource group: ${error.resourceGroup || view.group}`;
    }
    throw new ApiError(text);
  }

  // ---------------------------------------------------------------- the list of runs

  async function tagsOf(ids) {
    const tags = new Map();
    for (let i = 0; i < ids.length; i += MAX_IDS_PER_GET) {
      const chunk = ids.slice(i, i + MAX_IDS_PER_GET).join(",");
      const page = await getJson("/v2/lm/metrics", { executionIds: chunk, $select: "tags" });
      for (const r of page.resources) tags.set(r.executionId, r.tags || []);
    }
    return tags;
  }

  async function loadRuns() {
    const paging = { $top: PAGE_SIZE, $skip: view.skip };
    if (view.tags) {
      // the AI API finds executions by tag only through the metrics GET
      const page = await getJson("/v2/lm/metrics", { tagFilters: view.tags, $select: "tags", ...paging });
      state.count = page.count;
      state.runs = page.resources.map((r) => ({ id: r.executionId, status: "", createdAt: r.createdAt, tags: r.tags || [] }));
    } else {
      const params = view.status ? { ...paging, status: view.status } : paging;
      const page = await getJson("/v2/lm/executions", params);
      state.count = page.count;
      const tags = await tagsOf(page.resources.map((e) => e.id));
      state.runs = page.resources.map((e) => ({ id: e.id, status: e.status, createdAt: e.createdAt, tags: tags.get(e.id) || [] }));
    }
    window.viewer.runs = state.runs.map((r) => r.id);
    renderRuns();
  }

  function renderRuns() {
    const rows = state.runs.map((run) => {
      const box = el("input", { type: "checkbox", "aria-label": `compare ${run.id}` });
      box.checked = view.ids.includes(run.id);
      box.disabled = !box.checked && view.ids.length >= state.maxCompare;
      box.addEventListener("change", () => {
        const others = view.ids.filter((id) => id !== run.id);
        compare(box.checked ? [...others, run.id] : others);
      });
      const swatch = el("span", { class: "swatch" });
      if (box.checked) swatch.style.background = color(run.id);
      const chips = el("span", {}, ...run.tags.map((t) => el("span", { class: "tag" }, `${t.name}: ${t.value}`)));
      const row = el("tr", { "data-run": run.id }, el("td", {}, box),
        el("td", {}, swatch, el("code", {}, run.id), el("br"), chips),
        el("td", { class: "state" }, run.status),
        el("td", { class: "when", title: run.createdAt || "" }, run.createdAt ? new Date(run.createdAt).toLocaleString() : ""));
      row.classList.toggle("selected", box.checked);
      return row;
    });
    $("#runs tbody").replaceChildren(...rows);
    const first = state.count ? view.skip + 1 : 0;
    $("#range").textContent = `${first}–${view.skip + state.runs.length} of ${state.count}`;
    $("#prev").disabled = view.skip === 0;
    $("#next").disabled = view.skip + state.runs.length >= state.count;
    if (!state.count) {
      const where = view.tags ? `with tags matching ${view.tags}` : `in resource group ${view.group}`;
      const status = view.status && !view.tags ? ` with status ${view.status}` : "";
      $("#list-hint").textContent = `No executions ${where}${status}.`;
    } else {
      $("#list-hint").textContent = `Tick up to ${state.maxCompare} runs to compare them.`;
    }
  }

  // ---------------------------------------------------------------- comparing runs

  async function loadResources() {
    const out = [];
    for (let i = 0; i < view.ids.length; i += MAX_IDS_PER_GET) {
      const chunk = view.ids.slice(i, i + MAX_IDS_PER_GET).join(",");
      const page = await getJson("/v2/lm/metrics", { executionIds: chunk, $select: "metrics,tags,customInfo" });
      out.push(...page.resources);
    }
    state.resources = out;
  }

  function ema(values, alpha) {
    let last = null;
    return values.map((v) => {
      if (v === null) return null;
      last = last === null || alpha === 0 ? v : alpha * last + (1 - alpha) * v;
      return last;
    });
  }

  // One chart per (metric, label set), one series per run; x is the union of the runs' steps
  // (or times) and spanGaps joins a run's line across the others' points.
  function chartSets() {
    const charts = new Map();
    for (const r of state.resources) {
      for (const m of r.metrics || []) {
        const x = view.x === "step" ? m.step : Date.parse(m.timestamp) / 1000;
        if (x === undefined || Number.isNaN(x)) continue;
        const key = labelText(m.labels) ? `${m.name} {${labelText(m.labels)}}` : m.name;
        if (!charts.has(key)) charts.set(key, { name: m.name, labels: labelText(m.labels), runs: new Map() });
        const runs = charts.get(key).runs;
        if (!runs.has(r.executionId)) runs.set(r.executionId, new Map());
        runs.get(r.executionId).set(x, m);
      }
    }
    return [...charts.entries()].sort(([a], [b]) => a.localeCompare(b));
  }

  function chartData(chart) {
    const ids = view.ids.filter((id) => chart.runs.has(id));
    const xs = [...new Set(ids.flatMap((id) => [...chart.runs.get(id).keys()]))].sort((a, b) => a - b);
    const raw = ids.map((id) => xs.map((x) => {
      const point = chart.runs.get(id).get(x);
      if (!point) return null;
      return view.scale === "log" && !(point.value > 0) ? null : point.value;
    }));
    const shown = raw.map((ys) => {
      const present = ys.map((v, i) => [v, i]).filter(([v]) => v !== null);
      const smoothed = ema(present.map(([v]) => v), view.smooth);
      const out = ys.map(() => null);
      present.forEach(([, i], k) => { out[i] = smoothed[k]; });
      return out;
    });
    return { ids, xs, raw, shown };
  }

  function csvCell(value) {
    let text = value === null || value === undefined ? "" : String(value);
    // a name a spreadsheet would run as a formula (=, +, -, @, tab, CR first) is kept as text
    if (typeof value === "string" && /^[=+\-@\t\r]/.test(text)) text = `'${text}`;
    return /[",\r\n]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
  }

  function renderCharts() {
    state.plots.forEach((p) => p.destroy());
    state.plots = [];
    window.viewer.charts = {};
    const lines = [["execution_id", "metric", "labels", "step", "timestamp", "value", "shown"]];
    const sync = uPlot.sync("runs");
    const boxes = chartSets().map(([key, chart]) => {
      const { ids, xs, raw, shown } = chartData(chart);
      ids.forEach((id, s) => xs.forEach((x, i) => {
        if (raw[s][i] === null) return;
        const m = chart.runs.get(id).get(x);
        lines.push([id, chart.name, chart.labels, m.step ?? "", m.timestamp, raw[s][i], shown[s][i]]);
      }));
      const counts = raw.map((ys) => ys.filter((v) => v !== null).length);
      window.viewer.charts[key] = { series: ids.map((id, s) => ({ label: id, points: counts[s] })) };
      const box = el("div", { class: "chart", "data-chart": key, "data-series": ids.length });
      box.plotArgs = [{
        title: key, width: 400, height: 240, cursor: { sync: { key: sync.key } },
        scales: { x: { time: view.x === "time" }, y: view.scale === "log" ? { distr: 3 } : {} },
        axes: [{ label: view.x }, {}],
        series: [{ label: view.x }, ...ids.map((id) => ({
          label: id, stroke: color(id), width: 1.5, spanGaps: true, points: { show: xs.length <= 50 } }))],
      }, [xs, ...shown]];
      return box;
    });
    $("#charts").replaceChildren(...boxes);
    for (const box of boxes) {
      const [opts, data] = box.plotArgs;
      opts.width = Math.max(300, box.clientWidth - 20);
      state.plots.push(new uPlot(opts, data, box));
    }
    window.viewer.csv = lines.map((row) => row.map(csvCell).join(",")).join("\n") + "\n";
    const link = $("#csv");
    link.hidden = boxes.length === 0;
    link.href = `data:text/csv;charset=utf-8,${encodeURIComponent(window.viewer.csv)}`;
  }

  function renderCustomValue(name, value) {
    const text = String(value);
    if (/^\s*(<\?xml[^>]*>\s*)?<svg[\s>]/.test(text)) { // as an <img>, an SVG cannot run script
      return el("img", { class: "figure", alt: name, src: `data:image/svg+xml;charset=utf-8,${encodeURIComponent(text)}` });
    }
    const png = text.startsWith("data:image/png;base64,") ? text.slice(22) : text;
    if (png.startsWith("iVBORw0KGgo")) return el("img", { class: "figure", alt: name, src: `data:image/png;base64,${png}` });
    try {
      const parsed = JSON.parse(text);
      if (parsed !== null && typeof parsed === "object") return el("pre", {}, JSON.stringify(parsed, null, 2));
    } catch { /* not JSON: shown as text */ }
    return el("pre", {}, text);
  }

  // Tags and customInfo side by side: a row per name, a column per run; differing rows marked.
  function sideBySide(section, render) {
    const byId = new Map(state.resources.map((r) => [r.executionId, r]));
    const ids = view.ids.filter((id) => byId.has(id));
    const names = [...new Set(ids.flatMap((id) => (byId.get(id)[section] || []).map((t) => t.name)))].sort();
    if (!names.length) return el("p", { class: "hint" }, "none");
    const head = el("tr", {}, el("th", {}, "name"), ...ids.map((id) => el("th", { style: `color:${color(id)}` }, id)));
    const rows = names.map((name) => {
      const values = ids.map((id) => (byId.get(id)[section] || []).find((t) => t.name === name));
      const differs = new Set(values.map((v) => (v ? v.value : null))).size > 1;
      return el("tr", { "data-name": name }, el("th", {}, name), ...values.map((v) =>
        el("td", differs ? { class: "differs" } : {}, v ? render(name, v.value) : "—")));
    });
    return el("div", { class: "scroll" }, el("table", { class: `side-${section}` }, el("thead", {}, head), el("tbody", {}, ...rows)));
  }

  function renderSide() {
    if (!state.resources.length) { $("#side").replaceChildren(); return; }
    $("#side").replaceChildren(el("h3", {}, "Tags"), sideBySide("tags", (n, v) => v),
      el("h3", {}, "Custom info"), sideBySide("customInfo", renderCustomValue));
  }

  function renderNotes() {
    const found = new Map(state.resources.map((r) => [r.executionId, r]));
    const notes = view.ids.flatMap((id) => {
      if (!found.has(id)) return [`${id}: the AI API has no metric resource for this execution in resource group ${view.group}`];
      if (!(found.get(id).metrics || []).length) return [`${id}: no metrics stored for this execution`];
      const xless = view.x === "step" && found.get(id).metrics.every((m) => m.step === undefined);
      return xless ? [`${id}: its metrics have no step; choose x = time`] : [];
    });
    if (view.scale === "log") notes.push("log scale: values ≤ 0 are left out");
    window.viewer.notes = notes;
    $("#notes").replaceChildren(...notes.map((n) => el("li", {}, n)));
  }

  function render() {
    $("#empty").hidden = view.ids.length > 0;
    renderCharts();
    renderSide();
    renderNotes();
  }

  // ---------------------------------------------------------------- the URL and the flow

  function syncUrl() {
    const params = new URLSearchParams();
    if (view.group !== state.session.resourceGroup) params.set("resourceGroup", view.group);
    if (view.ids.length) params.set("executionIds", view.ids.join(","));
    if (view.tags) params.set("tagFilters", view.tags);
    if (view.status) params.set("status", view.status);
    if (view.skip) params.set("skip", view.skip);
    if (view.x !== "step") params.set("x", view.x);
    if (view.scale !== "linear") params.set("scale", view.scale);
    if (view.smooth) params.set("smooth", view.smooth);
    history.replaceState(null, "", `?${params}`);
  }

  function readUrl() {
    const params = new URLSearchParams(location.search);
    view.group = params.get("resourceGroup") || state.session.resourceGroup;
    view.ids = (params.get("executionIds") || "").split(",").filter(Boolean).slice(0, state.maxCompare);
    view.tags = params.get("tagFilters") || "";
    view.status = params.get("status") || "";
    view.skip = Math.max(0, parseInt(params.get("skip") || "0", 10) || 0);
    view.x = params.get("x") === "time" ? "time" : "step";
    view.scale = params.get("scale") === "log" ? "log" : "linear";
    view.smooth = Math.min(0.95, Math.max(0, parseFloat(params.get("smooth") || "0") || 0));
    $("#group").value = view.group;
    $("#tags").value = view.tags;
    $("#state").value = view.status;
    $("#x").value = view.x;
    $("#scale").value = view.scale;
    $("#smooth").value = view.smooth;
    $("#smooth-value").textContent = view.smooth;
  }

  async function step(action) {
    document.body.dataset.state = "loading";
    window.viewer.ready = false;
    window.viewer.error = null;
    $("#error").hidden = true;
    try {
      await action();
      syncUrl();
      window.viewer.ready = true;
      document.body.dataset.state = "ready";
      $("#status").textContent = view.ids.length ? `${view.ids.length} run(s) compared` : "";
    } catch (err) {
      const text = err instanceof ApiError ? err.message : `unexpected: ${err.message || err}`;
      $("#error").textContent = text;
      $("#error").hidden = false;
      window.viewer.error = text;
      document.body.dataset.state = "error";
    }
  }

  const compare = (ids) => step(async () => {
    view.ids = ids.slice(0, state.maxCompare);
    renderRuns();
    await loadResources();
    render();
  });
  const redraw = () => step(async () => render());
  const search = () => step(async () => {
    await loadRuns();
    await loadResources();
    render();
  });

  function wire() {
    $("#search").addEventListener("submit", (event) => {
      event.preventDefault();
      view.tags = $("#tags").value.trim();
      view.status = $("#state").value;
      view.skip = 0;
      search();
    });
    $("#group").addEventListener("change", () => {
      view.group = $("#group").value.trim() || state.session.resourceGroup;
      view.ids = [];
      view.skip = 0;
      search();
    });
    $("#prev").addEventListener("click", () => { view.skip = Math.max(0, view.skip - PAGE_SIZE); search(); });
    $("#next").addEventListener("click", () => { view.skip += PAGE_SIZE; search(); });
    $("#x").addEventListener("change", () => { view.x = $("#x").value; redraw(); });
    $("#scale").addEventListener("change", () => { view.scale = $("#scale").value; redraw(); });
    $("#smooth").addEventListener("input", () => {
      view.smooth = parseFloat($("#smooth").value);
      $("#smooth-value").textContent = view.smooth;
      redraw();
    });
  }

  async function start() {
    try {
      state.session = await (await fetch("/_viewer/session")).json();
    } catch (err) {
      state.session = { resourceGroup: "default", credential: "?", api: "?", maxCompare: 10 };
    }
    state.maxCompare = state.session.maxCompare || 10;
    $("#connection").textContent = `${state.session.api} · ${state.session.credential}`;
    readUrl();
    wire();
    await search();
  }

  start();
})();
