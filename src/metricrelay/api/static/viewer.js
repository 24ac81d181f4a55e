// metricrelay run viewer: the index from /_viewer/api/executions, all metric data from GET /v2/lm/metrics.
"use strict";
(() => {
  const MAX_IDS_PER_GET = 10; // the AI API takes at most 10 execution ids per GET
  const PALETTE = ["#0a6ed1", "#e9730c", "#107e3e", "#bb0000", "#8b47d7", "#0f828f", "#925ace", "#c87b00"];
  const $ = (sel) => document.querySelector(sel);
  const state = { token: null, executions: [], group: null, selected: [], plots: [] };
  // what the browser test reads: per chart, its series labels and point counts
  window.viewer = { ready: false, charts: {}, error: null };

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
    for (const child of children) node.append(child);
    return node;
  }

  function setStatus(text, isError = false) {
    $("#status").textContent = text;
    $("#status").classList.toggle("error", isError);
  }

  // A server without client restriction issues a token to any client id: try that first, and
  // ask the person for credentials only when the server refuses.
  async function fetchToken(clientId = "metricrelay-viewer", secret = "") {
    const form = new URLSearchParams({ grant_type: "client_credentials", client_id: clientId });
    if (secret) form.set("client_secret", secret);
    // "omit": the server's 401 carries WWW-Authenticate: Basic, and with credentials the
    // browser would answer it with its own login dialog instead of handing it to this page
    const reply = await fetch("/oauth/token", { method: "POST", body: form, credentials: "omit" });
    return reply.ok ? (await reply.json()).access_token : null;
  }

  async function getJson(path, group) {
    for (let attempt = 0; ; attempt++) {
      const headers = { Authorization: `Bearer ${state.token}` };
      if (group) headers["AI-Resource-Group"] = group;
      const reply = await fetch(path, { headers });
      // a server with fault injection on GET answers 429/503 now and then: retry a few times
      const transient = reply.status === 429 || reply.status >= 500;
      if (transient && attempt < 4) {
        await new Promise((done) => setTimeout(done, 200 * 2 ** attempt));
        continue;
      }
      if (reply.status === 401) throw Object.assign(new Error("unauthorized"), { status: 401 });
      if (!reply.ok) throw new Error(`${path}: HTTP ${reply.status}`);
      return reply.json();
    }
  }

  async function fetchResources(group, ids) {
    const out = [];
    for (let i = 0; i < ids.length; i += MAX_IDS_PER_GET) {
      const chunk = ids.slice(i, i + MAX_IDS_PER_GET).map(encodeURIComponent).join(",");
      const page = await getJson(`/v2/lm/metrics?executionIds=${chunk}`, group);
      out.push(...page.resources);
    }
    // keep the order the person chose, whatever order the server answered in
    return ids.map((id) => out.find((r) => r.executionId === id)).filter(Boolean);
  }

  function tagChips(tags) {
    return el("span", {}, ...(tags || []).map((t) => el("span", { class: "tag" }, `${t.name}: ${t.value}`)));
  }

  function labelText(labels) {
    return (labels || []).map((l) => `${l.name}=${l.value}`).join(", ");
  }

  function renderGroups() {
    const groups = [...new Set(state.executions.map((e) => e.resourceGroup))];
    if (!groups.includes(state.group)) state.group = groups[0] || null;
    $("#group").replaceChildren(...groups.map((g) => el("option", { value: g }, g)));
    if (state.group) $("#group").value = state.group;
  }

  function renderExecutionList() {
    const rows = state.executions
      .filter((e) => e.resourceGroup === state.group)
      .map((e) => {
        const box = el("input", { type: "checkbox", "aria-label": `compare ${e.executionId}` });
        box.checked = state.selected.includes(e.executionId);
        box.addEventListener("change", () => {
          const others = state.selected.filter((id) => id !== e.executionId);
          select(box.checked ? [...others, e.executionId] : others);
        });
        const open = el("button", { type: "button" }, e.executionId);
        open.addEventListener("click", () => select([e.executionId]));
        const row = el("tr", {}, el("td", {}, box), el("td", {}, open, el("br"), tagChips(e.tags)));
        row.classList.toggle("selected", box.checked);
        return row;
      });
    $("#executions tbody").replaceChildren(...rows);
  }

  // One series per (execution, label set); x is the union of steps so executions with
  // different step grids share one chart, and spanGaps joins a series across the others' steps.
  function chartData(name, resources) {
    const series = new Map();
    for (const r of resources) {
      for (const m of r.metrics || []) {
        if (m.name !== name || m.step === undefined) continue;
        const labels = labelText(m.labels);
        const key = resources.length > 1
          ? [r.executionId, labels].filter(Boolean).join(" · ")
          : labels || name;
        if (!series.has(key)) series.set(key, new Map());
        series.get(key).set(m.step, m.value);
      }
    }
    const steps = [...new Set([...series.values()].flatMap((s) => [...s.keys()]))].sort((a, b) => a - b);
    const keys = [...series.keys()].sort();
    const ys = keys.map((k) => steps.map((step) => series.get(k).get(step) ?? null));
    return { keys, data: [steps, ...ys], points: keys.map((k) => series.get(k).size) };
  }

  function renderCharts(resources) {
    state.plots.forEach((p) => p.destroy());
    state.plots = [];
    window.viewer.charts = {};
    const names = [...new Set(resources.flatMap((r) => (r.metrics || []).map((m) => m.name)))].sort();
    const boxes = names.map((name) => {
      const { keys, data, points } = chartData(name, resources);
      const box = el("div", { class: "chart", "data-metric": name, "data-series": keys.length,
        "data-points": points.reduce((a, b) => a + b, 0) });
      window.viewer.charts[name] = { series: keys.map((label, i) => ({ label, points: points[i] })) };
      box.plotArgs = [{
        title: name, width: 400, height: 240, scales: { x: { time: false } },
        axes: [{ label: "step" }, {}],
        series: [{ label: "step" }, ...keys.map((label, i) => ({
          label, stroke: PALETTE[i % PALETTE.length], width: 1.5, spanGaps: true,
          points: { show: data[0].length <= 50 } }))],
      }, data];
      return box;
    });
    $("#charts").replaceChildren(...boxes);
    for (const box of boxes) {
      const [opts, data] = box.plotArgs;
      opts.width = Math.max(300, box.clientWidth - 20); // the grid decided the width: fill it
      state.plots.push(new uPlot(opts, data, box));
    }
  }

  function renderCustomValue(name, value) {
    const text = String(value);
    if (/^\s*(<\?xml[^>]*>\s*)?<svg[\s>]/.test(text)) {
      // as an <img>, an SVG cannot run script or reach the page
      const src = `data:image/svg+xml;charset=utf-8,${encodeURIComponent(text)}`;
      return el("img", { class: "figure", alt: name, src });
    }
    const png = text.startsWith("data:image/png;base64,") ? text.slice(22) : text;
    if (png.startsWith("iVBORw0KGgo")) { // base64 of the PNG signature
      return el("img", { class: "figure", alt: name, src: `data:image/png;base64,${png}` });
    }
    try {
      const parsed = JSON.parse(text);
      if (parsed !== null && typeof parsed === "object") {
        return el("pre", {}, JSON.stringify(parsed, null, 2));
      }
    } catch { /* not JSON: shown as text */ }
    return el("pre", {}, text);
  }

  function metricTable(metrics) {
    const titles = ["Name", "Value", "Timestamp", "Step", "Labels"];
    const head = el("tr", {}, ...titles.map((h) => el("th", {}, h)));
    const rows = [...metrics]
      .sort((a, b) => a.name.localeCompare(b.name) || (a.step ?? -1) - (b.step ?? -1))
      .map((m) => el("tr", {}, el("td", {}, m.name), el("td", {}, String(m.value)),
        el("td", { title: m.timestamp }, new Date(m.timestamp).toLocaleString()),
        el("td", {}, m.step === undefined ? "" : String(m.step)), el("td", {}, labelText(m.labels))));
    const table = el("table", { class: "metrics" }, el("thead", {}, head), el("tbody", {}, ...rows));
    return el("div", { class: "scroll" }, table);
  }

  function renderResource(r) {
    const infos = (r.customInfo || []).map((c) =>
      el("div", {}, el("h3", {}, c.name), renderCustomValue(c.name, c.value)));
    const local = (iso) => new Date(iso).toLocaleString();
    return el("div", { class: "panel", "data-execution": r.executionId },
      el("h2", {}, r.executionId),
      el("p", { class: "hint" }, `created ${local(r.createdAt)} · modified ${local(r.modifiedAt)}`),
      el("h3", {}, "Tags"), (r.tags || []).length ? tagChips(r.tags) : el("span", { class: "hint" }, "none"),
      el("h3", {}, `Metrics (${(r.metrics || []).length})`), metricTable(r.metrics || []),
      el("h3", {}, "Custom info"), ...(infos.length ? infos : [el("span", { class: "hint" }, "none")]));
  }

  async function renderSelection() {
    document.body.dataset.state = "loading";
    window.viewer.ready = false;
    $("#empty").hidden = state.selected.length > 0;
    const resources = state.selected.length ? await fetchResources(state.group, state.selected) : [];
    renderCharts(resources);
    $("#resources").replaceChildren(...resources.map(renderResource));
    setStatus(resources.length ? `${resources.length} execution(s) shown` : "");
    window.viewer.ready = true;
    document.body.dataset.state = "ready";
  }

  function syncUrl() {
    const params = new URLSearchParams();
    if (state.group) params.set("resourceGroup", state.group);
    if (state.selected.length) params.set("executionIds", state.selected.join(","));
    history.replaceState(null, "", `?${params}`);
  }

  async function select(ids) {
    state.selected = ids;
    syncUrl();
    renderExecutionList();
    await guarded(renderSelection);
  }

  async function loadIndex() {
    state.executions = (await getJson("/_viewer/api/executions")).executions;
    renderGroups();
    const inGroup = state.executions.filter((e) => e.resourceGroup === state.group);
    const known = new Set(inGroup.map((e) => e.executionId));
    state.selected = state.selected.filter((id) => known.has(id));
    syncUrl();
    renderExecutionList();
    await renderSelection();
  }

  async function guarded(action) {
    try {
      await action();
    } catch (err) {
      if (err.status === 401) { $("#login").hidden = false; setStatus("a token is needed", true); }
      else setStatus(String(err.message || err), true);
      window.viewer.error = String(err.message || err);
      document.body.dataset.state = "error";
    }
  }

  async function start() {
    const params = new URLSearchParams(location.search);
    state.group = params.get("resourceGroup");
    state.selected = (params.get("executionIds") || "").split(",").filter(Boolean);
    $("#group").addEventListener("change", () => { state.group = $("#group").value; select([]); });
    $("#login").addEventListener("submit", async (event) => {
      event.preventDefault();
      const form = new FormData(event.target);
      state.token = await fetchToken(form.get("client_id"), form.get("client_secret"));
      if (!state.token) { setStatus("those credentials were refused", true); return; }
      $("#login").hidden = true;
      await guarded(loadIndex);
    });
    state.token = await fetchToken();
    await guarded(loadIndex);
  }

  start();
})();
