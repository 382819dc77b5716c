// lk-dispatch dashboard: polls /v1/overview and renders it. Plain JS, no dependencies.
// The API token lives in this tab's sessionStorage; "/#token=..." hands it over once.
"use strict";

const TOKEN_KEY = "lkd.apiToken";
const REFRESH_MS = 2000;
const WINDOWS_MIN = [2, 5, 15]; // the chart shows the shortest that holds every point
const $ = (id) => document.getElementById(id);

let loginShown = false;

function takeTokenFromFragment() {
  const match = location.hash.match(/(?:^#|&)token=([^&]*)/);
  if (match) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
}

class Unauthorized extends Error {}

async function api(path, options = {}) {
  const headers = { Accept: "application/json", ...(options.headers || {}) };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = "Bearer " + token;
  const response = await fetch(path, { ...options, headers });
  let body = null;
  try { body = await response.json(); } catch (_) { body = null; }
  if (response.status === 401) throw new Unauthorized((body && body.reason) || "unauthorized");
  if (!response.ok) throw new Error((body && body.reason) || `HTTP ${response.status}`);
  return body;
}

// ---- formatting ---------------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null) continue;
    if (key === "className") node.className = value;
    else if (key.startsWith("data-") || key === "title") node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child ?? "")));
  }
  return node;
}

function age(seconds) {
  if (seconds === undefined || seconds === null) return "–";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

function clock(ms) {
  return new Date(ms).toLocaleTimeString([], { hour12: false });
}

function duration(seconds) {
  return seconds === undefined || seconds === null ? "–" : age(seconds);
}

function badge(status) {
  return el("span", { className: `badge ${status}` }, status);
}

function shortId(id) {
  return id && id.length > 14 ? id.slice(0, 14) + "…" : id || "";
}

function reasonCell(text) {
  return el("td", { className: "reason", title: text }, el("div", { className: "clamp" }, text));
}

function fillTable(bodyId, emptyId, rows) {
  $(bodyId).replaceChildren(...rows);
  $(emptyId).hidden = rows.length > 0;
}

function percentile(values, p) {
  if (!values.length) return null;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

function ms(value) {
  if (value === null) return "–";
  return value >= 1000 ? `${(value / 1000).toFixed(2)} s` : `${Math.round(value)} ms`;
}

// ---- panels -------------------------------------------------------------------------------

function renderLive(sessions) {
  const sorted = [...sessions].sort((a, b) => a.room.localeCompare(b.room) || a.claimed_at - b.claimed_at);
  let lastRoom = null;
  const rows = sorted.map((s) => {
    const first = s.room !== lastRoom;
    lastRoom = s.room;
    return el("tr", { "data-session-id": s.session_id, className: first ? "room-start" : "" },
      el("td", { className: "room", title: s.room }, first ? s.room : ""),
      el("td", { className: "mono", title: s.session_id }, s.session_id,
        s.replaces ? el("span", { className: "chain", title: `replaces ${s.replaces}: its agent died` },
          ` ↩ replaces ${shortId(s.replaces)}`) : ""),
      el("td", {}, badge(s.status)),
      el("td", {}, s.agent_name || ""),
      el("td", { className: "num" }, age(s.age_s)));
  });
  fillTable("live", "live-empty", rows);
}

function renderLines(lines) {
  const rows = lines.map((l) => el("tr", { "data-agent-name": l.agent_name },
    el("td", {}, l.agent_name),
    el("td", { className: "num" }, l.capacity === null ? "–" : String(l.capacity)),
    el("td", { className: "num" }, String(l.in_use)),
    el("td", { className: "num" + (l.waiting && !l.capacity ? " bad" : "") }, String(l.waiting))));
  fillTable("lines", "lines-empty", rows);
}

function renderReports(results) {
  const rows = results.map(({ report: r }) => el("tr", { "data-session-id": r.session_id },
    el("td", { className: "mono" }, clock(Date.parse(r.ended_at))),
    el("td", { className: "room", title: r.room }, r.room),
    el("td", {}, badge(r.status)),
    el("td", { className: "num" }, duration(r.duration_s)),
    reasonCell((r.replaced_by ? `replaced by ${r.replaced_by}: ` : "") + (r.error || r.end_reason || "")),
    el("td", {}, r.source)));
  fillTable("reports", "reports-empty", rows);
}

async function replay(entryId, button) {
  button.disabled = true;
  button.textContent = "replaying…";
  try {
    const answer = await api(`/v1/dead-letters/${encodeURIComponent(entryId)}/replay`, { method: "POST" });
    button.replaceWith(el("span", { className: "replayed", title: `as job ${answer.job_id}` }, "replayed ✓"));
    refresh();
  } catch (error) {
    if (error instanceof Unauthorized) return showLogin(error.message);
    button.disabled = false;
    button.textContent = "replay";
    showError(`replay failed: ${error.message}`);
  }
}

function renderFailures(letters) {
  const rows = letters.map((d) => {
    let action = "";
    if (d.replayed_as) action = el("span", { className: "replayed", title: `as job ${d.replayed_as}` }, "replayed ✓");
    else if (d.replayable) {
      const button = el("button", { type: "button", className: "replay" }, "replay");
      button.addEventListener("click", () => replay(d.entry_id, button));
      action = button;
    }
    return el("tr", { "data-entry-id": d.entry_id },
      el("td", { className: "mono" }, clock(d.at_ms)),
      el("td", {}, el("span", { className: "kind" }, d.kind.replace("_", " "))),
      reasonCell(d.reason),
      el("td", { className: "mono", title: d.event_id }, shortId(d.event_id)),
      el("td", {}, action));
  });
  fillTable("failures", "failures-empty", rows);
}

function renderChart(points, nowMs) {
  const canvas = $("chart");
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 640;
  const height = canvas.clientHeight || 260;
  canvas.width = width * ratio;
  canvas.height = height * ratio;
  const g = canvas.getContext("2d");
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.clearRect(0, 0, width, height);
  const pad = { left: 56, right: 12, top: 12, bottom: 28 };
  const plotW = width - pad.left - pad.right;
  const plotH = height - pad.top - pad.bottom;
  const oldest = Math.min(nowMs, ...points.map((p) => p.at_ms));
  const minutes = WINDOWS_MIN.find((m) => nowMs - m * 60000 <= oldest) || WINDOWS_MIN.at(-1);
  const windowMs = minutes * 60000;
  const start = nowMs - windowMs;
  const shown = points.filter((p) => p.at_ms >= start);
  $("chart-window").textContent = `last ${minutes} min`;
  const top = niceCeiling(Math.max(100, ...shown.map((p) => p.ms)));
  const x = (t) => pad.left + ((t - start) / windowMs) * plotW;
  const y = (v) => pad.top + plotH - (v / top) * plotH;

  g.font = "12px system-ui, sans-serif";
  g.strokeStyle = "#e3e6ec";
  g.fillStyle = "#5b6472";
  g.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const v = (top * i) / 4;
    g.beginPath(); g.moveTo(pad.left, y(v)); g.lineTo(width - pad.right, y(v)); g.stroke();
    g.textAlign = "right"; g.textBaseline = "middle";
    g.fillText(ms(v), pad.left - 6, y(v));
  }
  g.textAlign = "center"; g.textBaseline = "top";
  const tick = minutes <= 5 ? 1 : 5;
  for (let m = minutes; m >= 0; m -= tick) {
    const t = nowMs - m * 60000;
    g.fillText(m === 0 ? "now" : `-${m} min`, x(t), height - pad.bottom + 8);
  }

  g.fillStyle = "rgba(37, 99, 235, 0.55)";
  for (const p of shown) {
    g.beginPath(); g.arc(x(p.at_ms), y(p.ms), 3, 0, 2 * Math.PI); g.fill();
  }
  const binMs = (minutes * 60000) / 30;
  const bins = new Map();
  for (const p of shown) {
    const key = Math.floor(p.at_ms / binMs);
    if (!bins.has(key)) bins.set(key, []);
    bins.get(key).push(p.ms);
  }
  const medians = [...bins.entries()].sort((a, b) => a[0] - b[0])
    .map(([key, values]) => [key * binMs + binMs / 2, percentile(values, 50)]);
  if (medians.length > 1) {
    g.strokeStyle = "#b45309"; g.lineWidth = 2;
    g.beginPath();
    medians.forEach(([t, v], i) => (i ? g.lineTo(x(t), y(v)) : g.moveTo(x(t), y(v))));
    g.stroke();
  }
  if (!shown.length) {
    g.fillStyle = "#8a93a3"; g.textAlign = "center"; g.textBaseline = "middle";
    g.fillText(`no dispatches in the last ${minutes} minutes`, pad.left + plotW / 2, pad.top + plotH / 2);
  }
  const values = shown.map((p) => p.ms);
  $("ttd-summary").textContent = values.length
    ? `${ms(percentile(values, 50))} / ${ms(percentile(values, 95))}` : "–";
}

function niceCeiling(value) {
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) if (step * power >= value) return step * power;
  return 10 * power;
}

// ---- loop ---------------------------------------------------------------------------------

function showError(message) {
  const banner = $("error");
  banner.textContent = message;
  banner.hidden = !message;
}

function showLogin(reason) {
  loginShown = true;
  $("login").hidden = false;
  const error = $("login-error");
  const hadToken = Boolean(sessionStorage.getItem(TOKEN_KEY));
  error.textContent = hadToken ? reason : "";
  error.hidden = !hadToken;
  $("token").focus();
}

function render(data) {
  const worker = $("worker");
  worker.textContent = data.worker_ok ? "up" : "down";
  worker.className = "value " + (data.worker_ok ? "ok" : "bad");
  $("queue-depth").textContent = data.queue_depth;
  $("live-count").textContent = data.live_count;
  renderLive(data.live_sessions);
  renderLines(data.lines);
  renderChart(data.time_to_dispatch, data.now_ms);
  renderReports(data.reports);
  renderFailures(data.dead_letters);
  const toReplay = data.dead_letters.filter((d) => d.replayable).length;
  $("to-replay").textContent = toReplay;
  $("to-replay").className = "value " + (toReplay ? "bad" : "");
  $("updated").textContent = `updated ${clock(data.now_ms)}`;
  $("forget-token").hidden = !sessionStorage.getItem(TOKEN_KEY);
}

async function refresh() {
  if (loginShown) return;
  try {
    render(await api("/v1/overview"));
    showError("");
  } catch (error) {
    if (error instanceof Unauthorized) showLogin(error.message);
    else showError(`cannot load: ${error.message}`);
  }
}

function start() {
  takeTokenFromFragment();
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    $("token").value = "";
    $("login").hidden = true;
    loginShown = false;
    refresh();
  });
  $("forget-token").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin("");
  });
  refresh();
  setInterval(refresh, REFRESH_MS);
}

document.addEventListener("DOMContentLoaded", start);
