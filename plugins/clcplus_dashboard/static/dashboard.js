// CLCplus operators' dashboard: the map of a layout's PUs and tiles coloured by state for a
// reference year, per-PU progress and ETA, product tiles, links into the Airflow UI.
// Plain JS and SVG (no build step). The map is drawn once per layout as one SVG string; a
// refresh only changes the tiles' classes.
"use strict";

const STATE_LABELS = {
  failed: "failed", up_for_retry: "up for retry", running: "running", not_started: "not started",
  done: "done", no_dag: "no DAG / not readable",
};
const STATE_ORDER = ["failed", "up_for_retry", "running", "not_started", "done", "no_dag"];
const PRODUCT_CLASS = {
  published: "published", "failed self-check": "failed", "checked, not published": "made",
  "made, not checked": "made", ready: "ready", waiting: "waiting",
};
const W = 1000, H = 800, INSET_W = 170, GAP = 10;
const REFRESH_MS = 30000;

const $ = (sel) => document.querySelector(sel);
const svg = $("#map");
const params = new URLSearchParams(location.search);
const view = { x: 0, y: 0, w: W, h: H };
let opts = null, geo = null, state = null, products = null;
let tileEls = [], tilePus = [], puEls = {}, puIndex = {};
let selectedPu = params.get("pu"), selectedTile = null, timer = null;

function esc(text) {
  return String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

async function getJSON(url) {
  const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
  if (response.status === 401 || response.status === 403) {
    const login = `${opts ? opts.ui_base : "/"}auth/login?next=${encodeURIComponent(location.href)}`;
    throw new Error(`not signed in to Airflow: <a href="${esc(login)}" target="_top">sign in</a>`);
  }
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = (await response.json()).detail || detail; } catch (e) { /* not JSON */ }
    throw new Error(`${url}: ${esc(typeof detail === "string" ? detail : JSON.stringify(detail))}`);
  }
  return response.json();
}

function showError(error) {
  const box = $("#error");
  box.innerHTML = error ? error.message : "";
  box.hidden = !error;
}

// ------------------------------------------------------------------------ links into the UI

function uiUrl(...parts) {
  return opts.ui_base + parts.map((p) => encodeURIComponent(p)).join("/");
}
function runUrl(dagId, runId) { return uiUrl("dags", dagId, "runs", runId); }
// The task instance's page opens on its logs; "details" is its Details tab.
function taskUrl(dagId, runId, taskId, mapIndex) {
  const base = uiUrl("dags", dagId, "runs", runId, "tasks", taskId);
  return mapIndex !== null && mapIndex !== undefined && mapIndex >= 0 ? `${base}/mapped/${mapIndex}` : base;
}
function taskLinks(dagId, link) {
  if (!link) return "";
  const url = taskUrl(dagId, link.run_id, link.task_id, link.map_index);
  const tries = link.try_number ? ` (try ${link.try_number})` : "";
  return `<a class="ui-link ti-link" href="${esc(url)}/details">${esc(link.task_id)}${tries}</a> · ` +
    `<a class="ui-link log-link" href="${esc(url)}">log</a>`;
}

// Inside the Airflow UI the dashboard is an iframe whose sandbox forbids navigating the top
// window; being same-origin, it can ask the UI's router to show the page instead.
document.addEventListener("click", (event) => {
  const link = event.target.closest("a.ui-link");
  if (!link || window.top === window || event.ctrlKey || event.metaKey || event.shiftKey) return;
  try {
    const top = window.top;
    const url = new URL(link.href, location.href);
    if (url.origin !== top.location.origin) return;
    top.history.pushState({}, "", url.pathname + url.search);
    top.dispatchEvent(new PopStateEvent("popstate", { state: {} }));
    event.preventDefault();
  } catch (e) { /* not reachable: the iframe follows the link itself */ }
});

// ----------------------------------------------------------------------------------- map

function frameBoxes(frames) {
  // The main frame (EPSG:3035) on the left, the overseas departments' insets in a column.
  const insets = frames.filter((f) => f.id !== 0);
  const mainW = insets.length ? W - INSET_W - GAP : W;
  const boxes = {};
  for (const f of frames) {
    if (f.id === 0) boxes[f.id] = [0, 0, mainW, H];
  }
  const slot = insets.length ? Math.min(180, H / insets.length) : 0;
  insets.forEach((f, i) => { boxes[f.id] = [W - INSET_W, i * slot, INSET_W, slot - GAP]; });
  if (boxes[0] === undefined && insets.length) {  // a layout without a main frame
    insets.forEach((f, i) => { boxes[f.id] = [0, (i * H) / insets.length, W, H / insets.length - GAP]; });
  }
  return boxes;
}

function projector(frame, box) {
  const [x0, y0, x1, y1] = frame.bounds;
  const pad = frame.id === 0 ? 8 : 16;
  const top = frame.id === 0 ? 0 : 12;  // room for an inset's label
  const s = Math.min((box[2] - 2 * pad) / Math.max(x1 - x0, 1), (box[3] - 2 * pad - top) / Math.max(y1 - y0, 1));
  const ox = box[0] + (box[2] - s * (x1 - x0)) / 2, oy = box[1] + top + (box[3] - top + s * (y1 - y0)) / 2;
  return { s, fx: (x) => (ox + s * (x - x0)).toFixed(1), fy: (y) => (oy - s * (y - y0)).toFixed(1) };
}

function drawMap() {
  const boxes = frameBoxes(geo.frames);
  const proj = {};
  const out = [];
  for (const f of geo.frames) {
    proj[f.id] = projector(f, boxes[f.id]);
    if (f.id !== 0) {
      const b = boxes[f.id];
      out.push(`<rect class="frame" x="${b[0]}" y="${b[1]}" width="${b[2]}" height="${b[3]}"/>`,
        `<text class="frame-label" x="${b[0] + 4}" y="${b[1] + 11}">${esc(f.label)}</text>`);
    }
  }
  // Tiles: one path each (hover, click and colour per tile).
  const c = geo.tiles.corners, frameOf = geo.tiles.frame, n = geo.tiles.ids.length;
  out.push('<g id="tiles">');
  for (let i = 0; i < n; i++) {
    const p = proj[frameOf[i]], k = 8 * i;
    out.push(`<path class="tile" data-i="${i}" d="M${p.fx(c[k])} ${p.fy(c[k + 1])}L${p.fx(c[k + 2])} ${p.fy(c[k + 3])}` +
      `L${p.fx(c[k + 4])} ${p.fy(c[k + 5])}L${p.fx(c[k + 6])} ${p.fy(c[k + 7])}Z"/>`);
  }
  out.push('</g><g id="products">');
  geo.products.forEach((t, i) => {
    const p = proj[t.frame], q = t.quad;
    out.push(`<path class="product p-waiting" data-p="${i}" d="M${p.fx(q[0])} ${p.fy(q[1])}L${p.fx(q[2])} ${p.fy(q[3])}` +
      `L${p.fx(q[4])} ${p.fy(q[5])}L${p.fx(q[6])} ${p.fy(q[7])}Z"/>`);
  });
  out.push('</g><g id="pus">');
  for (const pu of geo.pus) {
    const p = proj[pu.frame];
    const d = pu.rings.map((ring) => "M" + ring.map(([x, y]) => `${p.fx(x)} ${p.fy(y)}`).join("L") + "Z").join("");
    out.push(`<path class="pu" data-pu="${esc(pu.pu_id)}" d="${d}"/>`);
  }
  out.push("</g>");
  svg.innerHTML = out.join("");
  tileEls = Array.from(svg.querySelectorAll("#tiles path"));
  puEls = {};
  for (const el of svg.querySelectorAll("#pus path")) puEls[el.dataset.pu] = el;
  // Which PUs (and their k-th tile) each unique tile belongs to.
  tilePus = Array.from({ length: n }, () => []);
  puIndex = {};
  for (const pu of geo.pus) {
    puIndex[pu.pu_id] = pu;
    geo.pu_tiles[pu.pu_id].forEach((i, k) => tilePus[i].push([pu.pu_id, k]));
  }
  resetZoom();
}

function tileStateOf(i) {
  // The selected PU's own state of its tiles; otherwise the most urgent state of the tile's PUs.
  let best = null;
  for (const [pu, k] of tilePus[i]) {
    const s = state.pus[pu] ? state.pus[pu].tile_states[k] : "no_dag";
    if (pu === selectedPu) return s;
    if (best === null || STATE_ORDER.indexOf(s) < STATE_ORDER.indexOf(best)) best = s;
  }
  return best || "no_dag";
}

function paintTiles() {
  const counts = Object.fromEntries(STATE_ORDER.map((s) => [s, 0]));
  const inPu = selectedPu && puIndex[selectedPu] ? new Set(geo.pu_tiles[selectedPu]) : null;
  for (let i = 0; i < tileEls.length; i++) {
    const s = tileStateOf(i);
    counts[s] += 1;
    tileEls[i].setAttribute("class", `tile s-${s}${inPu && !inPu.has(i) ? " dim" : ""}`);
  }
  for (const [pu, el] of Object.entries(puEls)) el.setAttribute("class", pu === selectedPu ? "pu selected" : "pu");
  if (selectedPu && puEls[selectedPu]) puEls[selectedPu].parentNode.appendChild(puEls[selectedPu]);
  $("#legend").innerHTML = STATE_ORDER.filter((s) => s !== "no_dag" || counts[s])
    .map((s) => `<span data-state="${s}"><i style="background:var(--${s})"></i>${STATE_LABELS[s]} <b>${counts[s]}</b></span>`)
    .join("");
}

function paintProducts() {
  if (!products) return;
  const byCode = Object.fromEntries(products.tiles.map((t) => [t.tile, t]));
  svg.querySelectorAll("#products path").forEach((el) => {
    const t = byCode[geo.products[+el.dataset.p].code];
    el.setAttribute("class", `product p-${t ? PRODUCT_CLASS[t.state] || "waiting" : "waiting"}`);
  });
}

// Zoom with the wheel, pan by dragging: the viewBox changes, nothing is redrawn.
function setView() { svg.setAttribute("viewBox", `${view.x} ${view.y} ${view.w} ${view.h}`); }
function resetZoom() { Object.assign(view, { x: 0, y: 0, w: W, h: H }); setView(); }
function svgPoint(event) {
  const r = svg.getBoundingClientRect();
  const s = Math.max(view.w / r.width, view.h / r.height);
  const ox = (r.width * s - view.w) / 2, oy = (r.height * s - view.h) / 2;
  return [view.x + (event.clientX - r.left) * s - ox, view.y + (event.clientY - r.top) * s - oy];
}
svg.addEventListener("wheel", (event) => {
  event.preventDefault();
  const [px, py] = svgPoint(event);
  const f = event.deltaY < 0 ? 0.8 : 1.25;
  const w = Math.min(W, Math.max(20, view.w * f)), h = (w * H) / W, k = w / view.w;
  Object.assign(view, { x: px - (px - view.x) * k, y: py - (py - view.y) * k, w, h });
  setView();
}, { passive: false });
let drag = null;
svg.addEventListener("mousedown", (event) => { drag = { x: event.clientX, y: event.clientY, vx: view.x, vy: view.y, moved: false }; });
window.addEventListener("mouseup", () => { setTimeout(() => { drag = null; }, 0); });
svg.addEventListener("mousemove", (event) => {
  if (drag && event.buttons) {
    const r = svg.getBoundingClientRect(), s = Math.max(view.w / r.width, view.h / r.height);
    if (Math.abs(event.clientX - drag.x) + Math.abs(event.clientY - drag.y) > 3) drag.moved = true;
    view.x = drag.vx - (event.clientX - drag.x) * s;
    view.y = drag.vy - (event.clientY - drag.y) * s;
    setView();
    return;
  }
  const tip = $("#tooltip");
  const el = event.target;
  let text = null;
  if (el.dataset && el.dataset.i !== undefined) {
    const i = +el.dataset.i;
    text = [geo.tiles.ids[i], ...tilePus[i].map(([pu, k]) => `${pu}: ${STATE_LABELS[state.pus[pu].tile_states[k]]}`)].join("\n");
  } else if (el.dataset && el.dataset.p !== undefined) {
    const t = geo.products[+el.dataset.p];
    const p = products && products.tiles.find((x) => x.tile === t.code);
    text = `${t.code.toUpperCase()}: ${p ? p.state : "?"}\nPUs ${t.pus.join(", ")}`;
  }
  if (!text) { tip.hidden = true; return; }
  const box = $("#map-panel").getBoundingClientRect();
  tip.textContent = text;
  tip.style.left = `${event.clientX - box.left + 12}px`;
  tip.style.top = `${event.clientY - box.top + 12}px`;
  tip.hidden = false;
});
svg.addEventListener("mouseleave", () => { $("#tooltip").hidden = true; });
svg.addEventListener("click", (event) => {
  if (drag && drag.moved) return;
  const el = event.target;
  if (el.dataset && el.dataset.i !== undefined) {
    const i = +el.dataset.i;
    const pus = tilePus[i].map(([pu]) => pu);
    selectTile(i, pus.includes(selectedPu) ? selectedPu : pus[0]);
  } else if (el.dataset && el.dataset.p !== undefined) {
    const row = document.querySelector(`#products tr[data-code="${geo.products[+el.dataset.p].code}"]`);
    if (row) { row.scrollIntoView({ block: "nearest" }); row.classList.add("selected"); }
  }
});
$("#reset-zoom").addEventListener("click", resetZoom);
document.querySelectorAll('input[name="layer"]').forEach((el) => el.addEventListener("change", () => {
  svg.classList.toggle("products", el.value === "products" && el.checked);
}));

// ------------------------------------------------------------------------- tables, panels

function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined) return "";
  const s = Math.round(seconds);
  if (s < 60) return `${s} s`;
  const m = Math.round(s / 60);
  if (m < 60) return `${m} min`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h} h ${String(m % 60).padStart(2, "0")} min`;
  return `${Math.floor(h / 24)} d ${h % 24} h`;
}

function puRow(pu) {
  const st = state.pus[pu.pu_id];
  const dag = st.dag_id;
  if (!st.readable) {
    return `<tr data-pu="${esc(pu.pu_id)}" title="${esc(pu.name)}"><td>${esc(pu.pu_id)}</td><td colspan="5" class="muted">no DAG ${esc(dag)} (or not readable)</td></tr>`;
  }
  const run = st.run ? `<a class="ui-link run-link" href="${esc(runUrl(dag, st.run.run_id))}"><span class="state ${esc(st.run.state)}">${esc(st.run.state)}</span></a>` : '<span class="muted">no run</span>';
  const c = st.counts, pct = st.tiles_total ? (100 * st.tiles_done) / st.tiles_total : 0;
  const extra = ["failed", "up_for_retry", "running"].filter((s) => c[s]).map((s) => `<span class="chip" style="background:var(--${s})"></span>${c[s]}`).join(" ");
  const stage = st.stage ? (st.stage_link && st.run ? `<a class="ui-link stage-link" href="${esc(taskUrl(dag, st.run.run_id, st.stage_link.task_id, st.stage_link.map_index))}">${esc(st.stage)}</a>` : esc(st.stage)) : "";
  return `<tr data-pu="${esc(pu.pu_id)}" title="${esc(pu.name)}"${pu.pu_id === selectedPu ? ' class="selected"' : ""}>` +
    `<td>${esc(pu.pu_id)}</td><td>${run}</td>` +
    `<td class="progress"><span class="bar"><b style="width:${pct.toFixed(1)}%"></b></span><span class="done">${st.tiles_done} / ${st.tiles_total}</span> ${extra}</td>` +
    `<td class="stage">${stage}</td><td class="elapsed">${fmtDuration(st.elapsed_s)}</td><td class="eta">${fmtDuration(st.eta_s)}</td></tr>`;
}

function renderPuTable() {
  const filter = $("#pu-filter").value;
  const rows = geo.pus.filter((pu) => {
    const st = state.pus[pu.pu_id];
    if (filter === "problems") return st.readable && (st.counts.failed || st.counts.up_for_retry || st.run_state === "failed");
    if (filter === "active") return st.run_state === "running";
    return true;
  });
  $("#pus tbody").innerHTML = rows.map(puRow).join("");
  const all = Object.values(state.pus).filter((s) => s.readable);
  const done = all.reduce((a, s) => a + s.tiles_done, 0), total = all.reduce((a, s) => a + s.tiles_total, 0);
  const running = all.filter((s) => s.run_state === "running").length;
  $("#pu-summary").textContent = `${geo.pus.length} PUs, ${running} running; ${done} / ${total} PU tiles done`;
}

function selectPu(pu) {
  selectedPu = pu;
  selectedTile = null;
  paintTiles();
  document.querySelectorAll("#pus tr.selected").forEach((r) => r.classList.remove("selected"));
  const row = document.querySelector(`#pus tr[data-pu="${pu}"]`);
  if (row) { row.classList.add("selected"); row.scrollIntoView({ block: "nearest" }); }
  renderSelection();
}

function selectTile(i, pu) {
  selectedTile = i;
  if (pu !== selectedPu) { selectedPu = pu; paintTiles(); renderPuTable(); }
  renderSelection();
}

function renderSelection() {
  const box = $("#selection");
  if (!selectedPu || !puIndex[selectedPu]) { box.innerHTML = '<span class="muted">Click a tile or a PU row for details and links.</span>'; return; }
  const pu = puIndex[selectedPu], st = state.pus[selectedPu];
  let html = `<h2>${esc(pu.pu_id)} <span class="muted">${esc(pu.name)}, ${Math.round(pu.area_km2).toLocaleString("en")} km², ${esc(pu.crs)}</span></h2>`;
  if (!st.readable) { box.innerHTML = html + `<p class="muted">No DAG ${esc(st.dag_id)} readable.</p>`; return; }
  html += `<p>DAG <a class="ui-link" href="${esc(uiUrl("dags", st.dag_id))}">${esc(st.dag_id)}</a>`;
  if (st.run) html += `, run <a class="ui-link" href="${esc(runUrl(st.dag_id, st.run.run_id))}">${esc(st.run.run_id)}</a> (${esc(st.run.state)}, ${st.runs} run(s) this year)`;
  html += ' <button type="button" id="zoom-pu">Zoom to PU</button></p>';
  if (selectedTile !== null) {
    const k = geo.pu_tiles[selectedPu].indexOf(selectedTile);
    const others = tilePus[selectedTile].filter(([p]) => p !== selectedPu).map(([p, j]) => `${esc(p)}: ${STATE_LABELS[state.pus[p].tile_states[j]]}`);
    html += `<p class="detail" data-tile="${esc(geo.tiles.ids[selectedTile])}"><b>${esc(geo.tiles.ids[selectedTile])}</b> in ${esc(selectedPu)}: ` +
      `${STATE_LABELS[st.tile_states[k]]} ${taskLinks(st.dag_id, st.tile_links[k])}${others.length ? ` <span class="muted">(also ${others.join(", ")})</span>` : ""}</p>`;
  }
  const problems = geo.pu_tiles[selectedPu].map((i, k) => [i, k]).filter(([, k]) => ["failed", "up_for_retry", "running"].includes(st.tile_states[k]));
  if (problems.length) {
    html += '<table class="tile-list"><thead><tr><th>Tile</th><th>State</th><th>Task instance</th></tr></thead><tbody>' +
      problems.map(([i, k]) => `<tr data-tile="${esc(geo.tiles.ids[i])}"><td>${esc(geo.tiles.ids[i])}</td><td>${STATE_LABELS[st.tile_states[k]]}</td><td>${taskLinks(st.dag_id, st.tile_links[k])}</td></tr>`).join("") +
      "</tbody></table>";
  }
  box.innerHTML = html;
  $("#zoom-pu").addEventListener("click", () => zoomTo(selectedPu));
}

function zoomTo(pu) {
  // The bounding box of the PU's outline on screen, with a margin, at the map's aspect ratio.
  const box = puEls[pu].getBBox(), m = 0.15 * Math.max(box.width, box.height);
  let w = box.width + 2 * m, h = box.height + 2 * m;
  if (w / h > W / H) h = (w * H) / W; else w = (h * W) / H;
  Object.assign(view, { x: box.x + box.width / 2 - w / 2, y: box.y + box.height / 2 - h / 2, w, h });
  setView();
}

function renderProducts() {
  if (!products) return;
  const rows = products.tiles.map((t) => {
    const check = t.check_passed === undefined ? "" : t.check_passed
      ? `<span class="state success">passed</span> ${t.rules_checked} rules`
      : `<span class="state failed">failed</span> ${esc((t.check_failed || []).join(", "))}`;
    const waiting = t.waiting_for ? Object.entries(t.waiting_for).map(([pu, why]) => `${pu}: ${why}`).join("; ") : "";
    const task = t.task ? taskLinks(t.task.dag_id, t.task) : "";
    return `<tr data-code="${esc(t.tile)}"><td>${esc(t.tile.toUpperCase())}</td><td>${esc(t.pus.join(", "))}</td>` +
      `<td class="pstate"><span class="chip" style="background:var(--${{ published: "done", failed: "failed", made: "up_for_retry", ready: "running", waiting: "not_started" }[PRODUCT_CLASS[t.state] || "waiting"]})"></span>${esc(t.state)}` +
      `${waiting ? ` <span class="muted" title="${esc(waiting)}">(${Object.keys(t.waiting_for).length} PU)</span>` : ""}</td>` +
      `<td>${t.revision === undefined ? "" : "R" + String(t.revision).padStart(2, "0")}</td><td class="check">${check}</td>` +
      `<td>${t.manifest ? `<span title="${esc(t.manifest)}">${esc(t.manifest.split("/").pop())}</span>` : ""}</td><td>${task}</td></tr>`;
  });
  $("#products tbody").innerHTML = rows.join("");
  const counts = {};
  products.tiles.forEach((t) => { counts[t.state] = (counts[t.state] || 0) + 1; });
  $("#product-summary").textContent = Object.entries(counts).map(([s, n]) => `${n} ${s}`).join(", ");
  paintProducts();
}

$("#pus").addEventListener("click", (event) => {
  if (event.target.closest("a")) return;
  const row = event.target.closest("tr[data-pu]");
  if (row) selectPu(row.dataset.pu);
});
$("#pu-filter").addEventListener("change", renderPuTable);

// ------------------------------------------------------------------------------- loading

function choice() { return { layout: $("#layout").value, year: $("#year").value }; }

function remember() {
  const q = new URLSearchParams({ layout: $("#layout").value, year: $("#year").value });
  if (selectedPu) q.set("pu", selectedPu);
  history.replaceState(null, "", `?${q}`);
}

async function loadState() {
  const { layout, year } = choice();
  const next = await getJSON(`api/state/${layout}/${year}`);
  if (next.layout !== $("#layout").value || String(next.year) !== $("#year").value) return false;  // changed meanwhile
  state = next;
  $("#updated").textContent = `updated ${new Date(state.now).toLocaleTimeString("en-GB")}`;
  return true;
}

async function loadProducts() {
  const { layout, year } = choice();
  try {
    products = await getJSON(`api/products/${layout}/${year}`);
    renderProducts();
  } catch (error) { showError(error); }
}

async function load(redraw) {
  const started = performance.now();
  svg.removeAttribute("data-rendered");
  try {
    const { layout } = choice();
    const [map] = await Promise.all([redraw ? getJSON(`api/map/${layout}`) : Promise.resolve(geo), loadState()]);
    const fetched = performance.now();
    if (redraw) { geo = map; drawMap(); }
    if (selectedPu && !puIndex[selectedPu]) selectedPu = null;
    paintTiles();
    renderPuTable();
    renderSelection();
    showError(null);
    // Measured by the test: the map is on screen (after the next frame is painted).
    requestAnimationFrame(() => setTimeout(() => {
      const now = performance.now();
      svg.dataset.fetchMs = (fetched - started).toFixed(0);
      svg.dataset.drawMs = (now - fetched).toFixed(0);
      svg.dataset.sinceNavigationMs = now.toFixed(0);
      svg.dataset.tiles = String(tileEls.length);
      svg.dataset.rendered = "true";
    }, 0));
    remember();
    loadProducts();
  } catch (error) {
    showError(error);
  }
}

function schedule() {
  clearInterval(timer);
  if ($("#auto").checked) timer = setInterval(() => load(false), REFRESH_MS);
}

async function start() {
  const dagId = params.get("dag_id"), runId = params.get("run_id");
  try {
    const query = dagId ? `?${new URLSearchParams(runId ? { dag_id: dagId, run_id: runId } : { dag_id: dagId })}` : "";
    opts = await getJSON(`api/options${query}`);
  } catch (error) { showError(error); return; }
  let layout = params.get("layout") || opts.default_layout;
  let year = params.get("year") || String(opts.default_year);
  if (opts.run) {  // opened from a PU run's page: that PU, its layout and the run's year
    if (opts.run.error) {
      showError(new Error(esc(opts.run.error)));
    } else {
      selectedPu = opts.run.pu_id;
      layout = opts.run.layout;
      if (opts.run.year) year = String(opts.run.year);
    }
  }
  $("#layout").innerHTML = opts.layouts.map((l) => `<option>${esc(l)}</option>`).join("");
  const years = new Set(opts.years.map(String));
  years.add(year);
  $("#year").innerHTML = [...years].sort().reverse().map((y) => `<option>${esc(y)}</option>`).join("");
  $("#layout").value = layout;
  $("#year").value = year;
  $("#layout").addEventListener("change", () => { selectedPu = null; load(true); });
  $("#year").addEventListener("change", () => load(false));
  $("#auto").addEventListener("change", schedule);
  await load(true);
  schedule();
}

start();
