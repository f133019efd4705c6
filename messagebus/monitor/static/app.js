// The monitor page: state from /events (server-sent events), drawn as an SVG graph and tables.
// Every name, header and body comes from the network: it is inserted with textContent or as an
// attribute value, never parsed as markup.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const BOX_W = 165, BOX_H = 42, COL_W = 265, ROW_H = 60, PAD = 24, MIN_SCALE = 0.75;
let token = "";
let peeking = null;
let showEmpty = false;
let lastDead = null;

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function fmtRate(rate) {
  if (rate === null || rate === undefined) return "";
  return rate >= 10 ? rate.toFixed(0) + "/s" : rate.toFixed(1) + "/s";
}

function fmtMs(ms) {
  if (ms === null || ms === undefined) return "";
  return ms >= 100 ? ms.toFixed(0) : ms.toFixed(1);
}

function short(text, n) {
  return text.length > n ? text.slice(0, n - 1) + "\u2026" : text;
}

// ---- token -------------------------------------------------------------------------------

function initToken() {
  const input = document.getElementById("token");
  const match = /(?:^#|&)token=([^&]*)/.exec(location.hash);
  if (match) {
    token = decodeURIComponent(match[1]);
    sessionStorage.setItem("messagebus-monitor-token", token);
    // Out of the address bar (and of bookmarks and screenshots); the session keeps it.
    history.replaceState(null, "", location.pathname + location.search);
  } else {
    token = sessionStorage.getItem("messagebus-monitor-token") || "";
  }
  input.value = token;
  input.addEventListener("input", () => {
    token = input.value.trim();
    sessionStorage.setItem("messagebus-monitor-token", token);
  });
}

// ---- graph -------------------------------------------------------------------------------

function layout(nodes, edges) {
  const ids = nodes.map((n) => n.id);
  const out = new Map(ids.map((id) => [id, []]));
  for (const e of edges) if (out.has(e.from) && out.has(e.to)) out.get(e.from).push(e.to);
  // Depth-first search marks back edges so that cycles (a service handling what it publishes
  // to itself, request/reply) do not push ranks up forever.
  const state = new Map(), back = new Set();
  const visit = (start) => {
    const stack = [[start, 0]];
    state.set(start, 1);
    while (stack.length) {
      const top = stack[stack.length - 1];
      const next = out.get(top[0])[top[1]++];
      if (next === undefined) { state.set(top[0], 2); stack.pop(); continue; }
      if (state.get(next) === 1) back.add(top[0] + "\u0000" + next);
      else if (!state.has(next)) { state.set(next, 1); stack.push([next, 0]); }
    }
  };
  const hasIncoming = new Set(edges.map((e) => e.to));
  for (const id of ids) if (!hasIncoming.has(id) && !state.has(id)) visit(id);
  for (const id of ids) if (!state.has(id)) visit(id);
  const rank = new Map(ids.map((id) => [id, 0]));
  for (let pass = 0; pass < ids.length; pass++) {
    let changed = false;
    for (const e of edges) {
      if (back.has(e.from + "\u0000" + e.to) || !rank.has(e.from) || !rank.has(e.to)) continue;
      if (rank.get(e.to) < rank.get(e.from) + 1) { rank.set(e.to, rank.get(e.from) + 1); changed = true; }
    }
    if (!changed) break;
  }
  const columns = [];
  for (const n of nodes) (columns[rank.get(n.id)] ||= []).push(n);
  const pos = new Map();
  columns.forEach((column, c) => {
    // Order each column by where its predecessors sit, so edges cross less.
    const weight = (n) => {
      const ys = edges.filter((e) => e.to === n.id && pos.has(e.from)).map((e) => pos.get(e.from).y);
      return ys.length ? ys.reduce((a, b) => a + b, 0) / ys.length : Infinity;
    };
    (column || []).map((n) => [weight(n), n]).sort((a, b) => a[0] - b[0] || (a[1].id < b[1].id ? -1 : 1))
      .forEach(([, n], row) => pos.set(n.id, { x: PAD + c * COL_W, y: PAD + row * ROW_H }));
  });
  return { pos, back, columns: columns.length, rows: Math.max(1, ...columns.map((c) => (c || []).length)) };
}

function drawGraph(graph) {
  const root = document.getElementById("graph");
  const { pos, columns, rows } = layout(graph.nodes, graph.edges);
  const width = PAD * 2 + Math.max(0, columns - 1) * COL_W + BOX_W;
  const height = PAD * 2 + (rows - 1) * ROW_H + BOX_H + 40;
  root.replaceChildren();
  // Scaled to the width of its box, never above natural size and never below MIN_SCALE (text
  // would be unreadable): below that the box scrolls sideways (app.css, .graph-wrap).
  root.setAttribute("viewBox", `0 0 ${width} ${height}`);
  root.style.maxWidth = `${width}px`;
  root.style.minWidth = `${Math.round(width * MIN_SCALE)}px`;
  const defs = svg("defs");
  const marker = svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5,
    markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" });
  marker.append(svg("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: "#8c96a0" }));
  defs.append(marker);
  root.append(defs);
  const edgeLayer = svg("g"), nodeLayer = svg("g");
  root.append(edgeLayer, nodeLayer);
  for (const e of graph.edges) {
    const a = pos.get(e.from), b = pos.get(e.to);
    if (!a || !b) continue;
    const x1 = a.x + BOX_W, y1 = a.y + BOX_H / 2, x2 = b.x, y2 = b.y + BOX_H / 2;
    let d, lx, ly;
    if (x2 > x1) {
      const dx = (x2 - x1) / 2;
      d = `M ${x1} ${y1} C ${x1 + dx} ${y1}, ${x2 - dx} ${y2}, ${x2} ${y2}`;
      lx = (x1 + x2) / 2; ly = (y1 + y2) / 2 - 4;
    } else {
      // Against the flow (a reply, a loop): around below both boxes.
      const low = Math.max(a.y, b.y) + BOX_H + 24;
      d = `M ${x1} ${y1} C ${x1 + 60} ${low}, ${x2 - 60} ${low}, ${x2} ${y2}`;
      lx = (x1 + x2) / 2; ly = low - 6;
    }
    const g = svg("g", { class: `edge ${e.kind}`, "data-from": e.from, "data-to": e.to });
    g.append(svg("path", { d, "marker-end": "url(#arrow)" }));
    const parts = [];
    if (e.rate !== null && e.rate !== undefined) parts.push(fmtRate(e.rate));
    if (e.total !== null && e.total !== undefined) parts.push(`(${e.total})`);
    // The group is worth a word only when it is not the service's own name (the default).
    if (e.kind === "subscribe" && e.group && `service:${e.group}` !== e.to) parts.push(`[${short(e.group, 16)}]`);
    if (e.kind === "subscribe" && e.depth !== null && e.depth !== undefined) parts.push(`lag ${e.depth}`);
    const label = svg("text", { x: lx, y: ly, "text-anchor": "middle", class: "edge-label" }, parts.join(" "));
    g.append(label);
    const title = svg("title", {}, `${e.kind}: ${e.from} \u2192 ${e.to}`);
    g.append(title);
    edgeLayer.append(g);
  }
  for (const n of graph.nodes) {
    const p = pos.get(n.id);
    const stopped = n.kind === "service" && n.instances === 0;
    const g = svg("g", { class: `node ${n.kind}${stopped ? " stopped" : ""}`, "data-id": n.id,
      transform: `translate(${p.x},${p.y})` });
    // The box shows 24 characters; the whole name is in the tooltip (textContent, not markup).
    g.append(svg("title", {}, `${n.kind} ${n.name}`));
    g.append(svg("rect", { width: BOX_W, height: BOX_H, rx: n.kind === "service" ? 10 : 2 }));
    g.append(svg("text", { x: 8, y: 17, class: "name" }, short(n.name, 24)));
    let sub = n.kind;
    if (n.kind === "service") sub += stopped ? " \u00b7 stopped" : n.instances > 1 ? ` \u00b7 ${n.instances} instances` : "";
    if (n.depth !== null && n.depth !== undefined) sub += ` \u00b7 depth ${n.depth}`;
    g.append(svg("text", { x: 8, y: 33, class: "sub" }, sub));
    nodeLayer.append(g);
  }
}

// ---- tables ------------------------------------------------------------------------------

function countCell(total, rate, bad) {
  const td = el("td", { class: "num" });
  td.append(el("span", total > 0 && bad ? { class: "bad" } : {}, total));
  if (rate !== null && rate !== undefined) td.append(" ", el("span", { class: "rate" }, fmtRate(rate)));
  return td;
}

function drawHandlers(handlers) {
  const body = document.querySelector("#handlers tbody");
  body.replaceChildren(...handlers.map((h) => {
    const tr = el("tr", { "data-service": h.service, "data-source": h.source });
    if (h.instances === 0) tr.className = "stopped";
    tr.append(el("td", {}, h.service), el("td", {}, `${h.kind} ${h.source}`), el("td", {}, h.group ?? ""));
    tr.append(countCell(h.handled, h.rates.handled, false), countCell(h.failed, h.rates.failed, true),
      countCell(h.retried, h.rates.retried, false), countCell(h.dead_lettered, h.rates.dead_lettered, true));
    tr.append(el("td", { class: "num" }, h.in_flight), el("td", { class: "num" }, fmtMs(h.p50_ms)),
      el("td", { class: "num" }, fmtMs(h.p99_ms)), el("td", { class: "num" }, h.depth ?? ""),
      el("td", { class: "num" }, h.instances));
    return tr;
  }));
}

function dlqRow(q) {
  const tr = el("tr", { "data-queue": q.name });
  if (q.depth === 0) tr.className = "empty";
  tr.append(el("td", {}, q.name), el("td", { class: "num depth" }, q.depth ?? "?"));
  const actions = el("td");
  const peek = el("button", { type: "button", class: "peek" }, "peek");
  peek.addEventListener("click", () => showPeek(q.name));
  const replay = el("button", { type: "button", class: "replay" }, "replay all");
  replay.addEventListener("click", () => act(q.name, "replay", {}));
  const purge = el("button", { type: "button", class: "purge" }, "purge");
  purge.addEventListener("click", () => {
    if (confirm(`Delete every message in ${q.name}?`)) act(q.name, "purge", null);
  });
  actions.append(peek, replay, purge);
  tr.append(actions);
  return tr;
}

function drawDeadLetters(dead) {
  lastDead = dead;
  const note = document.getElementById("dlq-note");
  note.textContent = dead.supported ? (dead.queues.length ? "" : "No dead-letter queues on the broker.")
    : "This transport cannot list dead-letter queues.";
  // A shared broker has dozens of empty dead-letter queues: the ones holding messages come
  // first (deepest first), unknown depths next, and the empty ones wait behind the toggle.
  const order = (q) => (q.depth === null || q.depth === undefined ? -1 : q.depth);
  const queues = [...dead.queues].sort((a, b) => order(b) - order(a) || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const empty = queues.filter((q) => q.depth === 0).length;
  const body = document.querySelector("#dlq-list tbody");
  body.replaceChildren(...queues.map((q) => {
    const tr = dlqRow(q);
    tr.hidden = q.depth === 0 && !showEmpty;
    return tr;
  }));
  const toggle = document.getElementById("dlq-empty-toggle");
  toggle.hidden = empty === 0;
  toggle.textContent = `${showEmpty ? "hide" : "show"} ${empty} empty`;
  toggle.setAttribute("aria-expanded", String(showEmpty));
}

function initDeadLetterToggle() {
  document.getElementById("dlq-empty-toggle").addEventListener("click", () => {
    showEmpty = !showEmpty;
    if (lastDead) drawDeadLetters(lastDead);
  });
}

function setStatus(text, bad) {
  const status = document.getElementById("action-status");
  status.textContent = text;
  status.className = bad ? "errors" : "muted";
}

async function act(queue, action, body) {
  if (!token) { setStatus("Paste the token printed by 'messagebus monitor' to " + action + ".", true); return; }
  const response = await fetch(`/api/dlq/${encodeURIComponent(queue)}/${action}`, {
    method: "POST",
    headers: { "X-Monitor-Token": token, "Content-Type": "application/json" },
    body: body === null ? "" : JSON.stringify(body),
  });
  const result = await response.json().catch(() => ({ error: response.statusText }));
  if (!response.ok) { setStatus(`${action} ${queue}: ${result.error}`, true); return; }
  setStatus(action === "purge" ? `purged ${result.purged} from ${queue}` : `replayed ${result.replayed} from ${queue}`);
  if (peeking === queue) showPeek(queue);
}

async function showPeek(queue) {
  peeking = queue;
  const box = document.getElementById("peek");
  box.hidden = false;
  document.getElementById("peek-name").textContent = queue;
  const list = document.getElementById("peek-messages");
  const response = await fetch(`/api/dlq/${encodeURIComponent(queue)}?limit=20`);
  const result = await response.json().catch(() => ({ error: response.statusText }));
  if (!response.ok) { list.replaceChildren(el("p", { class: "errors" }, result.error)); return; }
  if (!result.messages.length) { list.replaceChildren(el("p", { class: "muted" }, "empty")); return; }
  list.replaceChildren(...result.messages.map((m) => {
    const div = el("div", { class: "message", "data-id": m.id });
    const meta = [`id ${m.id}`, `attempt ${m.attempt}`, m.type && `type ${m.type}`, m.source && `from ${m.source}`,
      `to ${m.destination}` + (m.group ? ` [${m.group}]` : ""), m.key && `key ${m.key}`, m.timestamp,
      `${m.size} bytes ${m.content_type}` + (m.truncated ? " (shown truncated)" : "")].filter(Boolean);
    div.append(el("div", { class: "meta" }, meta.join(" \u00b7 ")));
    const headers = Object.entries(m.headers).map(([k, v]) => `${k}: ${v}`).join("\n");
    if (headers) div.append(el("pre", { class: "headers" }, headers));
    div.append(el("pre", { class: "body" }, m.body));
    const replay = el("button", { type: "button", class: "replay-one" }, "replay this one");
    replay.addEventListener("click", () => act(queue, "replay", { ids: [m.id] }));
    div.append(replay);
    return div;
  }));
}

// ---- live state --------------------------------------------------------------------------

function render(state) {
  document.getElementById("transport").textContent = state.transport;
  document.getElementById("empty").hidden = state.services.length > 0;
  drawGraph(state.graph);
  drawHandlers(state.handlers);
  drawDeadLetters(state.dead_letters);
  document.getElementById("errors").textContent = state.errors.join("\n");
}

function connect() {
  const status = document.getElementById("status");
  const events = new EventSource("/events");
  events.onopen = () => { status.textContent = "live"; status.className = "status live"; };
  events.onerror = () => { status.textContent = "reconnecting"; status.className = "status"; };
  events.onmessage = (event) => render(JSON.parse(event.data));
}

initToken();
initDeadLetterToggle();
connect();
