// lamstream dashboard: polls the worker's JSON endpoints and draws SVG charts. No build step,
// no dependencies; every value that comes from events is escaped before it reaches the DOM.
"use strict";

const WINDOW_S = 120; // seconds of history the charts show
const TOKEN_KEY = "lamstream.token";
const state = {
  since: 0, series: [], failures: 0, live: null, token: localStorage.getItem(TOKEN_KEY) || "",
  user: null, lastDecisionKey: "", seenDecisions: new Set(),
};

const $ = (sel) => document.querySelector(sel);
const ESC = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
const esc = (v) => String(v ?? "").replace(/[&<>"']/g, (c) => ESC[c]);
const fmtInt = (n) => (n == null ? "–" : Number(n).toLocaleString("en-US"));
function fmtMs(v) {
  if (v == null) return "–";
  return v >= 100 ? `${v.toFixed(0)} ms` : v >= 10 ? `${v.toFixed(1)} ms` : `${v.toFixed(2)} ms`;
}
function fmtNum(v, digits = 2) {
  if (v == null) return "–";
  if (Math.abs(v) >= 1000) return Math.round(v).toLocaleString("en-US");
  return Number.isInteger(v) ? String(v) : v.toFixed(digits);
}
function fmtTime(ms) {
  if (ms == null || ms < 0) return "–";
  const d = new Date(ms);
  const pad = (x) => String(x).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}
const clock = (ms) => fmtTime(ms).slice(11);
function fmtDuration(s) {
  if (s == null) return "–";
  if (s < 90) return `${s.toFixed(0)} s`;
  if (s < 5400) return `${(s / 60).toFixed(0)} min`;
  if (s < 172800) return `${(s / 3600).toFixed(1)} h`;
  return `${(s / 86400).toFixed(1)} d`;
}

async function getJSON(url, auth) {
  const headers = auth && state.token ? { Authorization: `Bearer ${state.token}` } : {};
  const res = await fetch(url, { headers, cache: "no-store" });
  let body = null;
  try { body = await res.json(); } catch (_) { body = null; }
  return { status: res.status, body };
}

// ---------------------------------------------------------------------------------------
// banners and status

function setBanner(kind, title, text) {
  const el = $("#banner");
  if (!kind) { el.hidden = true; el.dataset.kind = ""; return; }
  el.hidden = false;
  el.className = `banner ${kind}`;
  el.dataset.kind = title;
  el.innerHTML = `<strong>${esc(title)}</strong>${text}`;
}

function setStatus(cls, text, stateName) {
  const el = $("#status");
  el.className = `pill ${cls}`;
  el.textContent = text;
  el.dataset.state = stateName;
}

function showWorkerDown(err) {
  setStatus("bad", "worker unreachable", "unreachable");
  const last = state.live ? ` Last answer ${Math.round(Date.now() / 1000 - state.live.ts)} s ago;` +
    " the figures below are from then." : "";
  setBanner("error", "Worker unreachable.",
    ` The dashboard cannot reach the lamstream worker at ${esc(location.host)}` +
    ` (${esc(err && err.message ? err.message : err)}).${last} Retrying every second.`);
}

function describeHealth(h) {
  const why = [];
  if (h.ingest !== "running") why.push(`ingest agent is ${h.ingest}`);
  if (h.rebalancing) why.push("the consumer group is rebalancing");
  if (!h.recovery_completed) why.push("feature tables are still being recovered");
  return why.join(", ") || "waiting for the worker";
}

// ---------------------------------------------------------------------------------------
// live overview

async function pollLive() {
  try {
    const { status, body } = await getJSON(`/api/live?since=${state.since}`, false);
    if (!body || status >= 500) throw new Error(`HTTP ${status}`);
    state.failures = 0;
    onLive(body);
  } catch (err) {
    state.failures += 1;
    showWorkerDown(err);
  } finally {
    setTimeout(pollLive, 1000);
  }
}

function onLive(live) {
  state.live = live;
  for (const p of live.series) {
    if (p.t > state.since) { state.series.push(p); state.since = p.t; }
  }
  const horizon = live.ts - WINDOW_S - 5;
  while (state.series.length && state.series[0].t < horizon) state.series.shift();

  const h = live.health;
  const broker = live.broker;
  $("#broker").textContent = `broker ${broker.bootstrap}` +
    (broker.connected === false ? " · disconnected" : broker.connected ? " · connected" : "");
  $("#uptime").textContent = `up ${fmtDuration(h.uptime_s)}`;
  const t = live.totals;
  if (broker.connected === false) {
    setStatus("bad", "broker unreachable", "broker-down");
    setBanner("error", "Broker unreachable.", ` The worker has no connection to Kafka at ` +
      `<code>${esc(broker.bootstrap)}</code>: no events are consumed and no decisions are ` +
      `published until it is back. The worker keeps retrying.`);
  } else if (h.status !== "ok") {
    setStatus("wait", "worker starting", "starting");
    setBanner("warn", "Worker not ready.", ` ${esc(describeHealth(h))}; ` +
      "decisions resume when it is done.");
  } else {
    setStatus("ok", "healthy", "ok");
    if (t.events === 0) {
      setBanner("info", "No events yet.", ` The worker is running and waiting for the first ` +
        `record on topic <code>${esc(live.events_topic)}</code>. Produce some with ` +
        `<code>lamstream produce FILE</code>, or run <code>make demo</code>.`);
    } else {
      setBanner(null);
    }
  }
  renderKpis(live);
  renderCharts(live);
  renderLag(live.lag, live.events_topic);
  renderModels(live.models);
}

function lastPoint() { return state.series.length ? state.series[state.series.length - 1] : null; }

function setKpi(id, value, sub) {
  const el = document.getElementById(id);
  el.querySelector(".value").textContent = value;
  el.querySelector(".sub").textContent = sub || "\u00a0";
}

function renderKpis(live) {
  const t = live.totals;
  const p = lastPoint() || {};
  const rate = (v) => (v == null ? "" : `${fmtNum(v, 1)} / s now`);
  setKpi("kpi-events", fmtInt(t.events), rate(p.events_ps));
  document.getElementById("kpi-events").dataset.value = t.events;
  setKpi("kpi-decisions", fmtInt(t.recommendations + t.alerts),
    `${fmtInt(t.recommendations)} recommendations · ${rate(p.decisions_ps) || "–"}`);
  document.getElementById("kpi-decisions").dataset.value = t.recommendations + t.alerts;
  setKpi("kpi-alerts", fmtInt(t.alerts), `risk score ≥ ${live.risk_threshold}`);
  setKpi("kpi-dlq", fmtInt(t.dlq), `${fmtInt(t.duplicates)} duplicates · ${fmtInt(t.late)} late`);
  document.getElementById("kpi-dlq").dataset.value = t.dlq;
  const w = live.latency_window_s;
  const pair = (a, b) => `${fmtMs(a).replace(" ms", "")} / ${fmtMs(b)}`;
  setKpi("kpi-e2e", p.e2e_p50 == null ? "–" : pair(p.e2e_p50, p.e2e_p99),
    p.e2e_p50 == null ? `no decision in the last ${w} s` : `receipt to publish, last ${w} s`);
  setKpi("kpi-inference",
    p.inference_p50 == null ? "–" : pair(p.inference_p50, p.inference_p99),
    p.inference_p50 == null ? `no batch in the last ${w} s` : `per micro-batch, last ${w} s`);
}

// ---------------------------------------------------------------------------------------
// SVG line charts

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

function lineChart(el, lines, now, unit) {
  const pts = state.series.filter((p) => p.t >= now - WINDOW_S);
  const span = pts.length ? Math.min(WINDOW_S, Math.max(30, now - pts[0].t)) : WINDOW_S;
  el.dataset.points = String(pts.length);
  if (pts.length < 2) {
    el.innerHTML = `<p class="empty">Collecting samples: the worker takes one per second.</p>`;
    return;
  }
  const W = Math.max(320, el.clientWidth || 600), H = 190;
  const L = 52, R = 10, T = 8, B = 22;
  let max = 0;
  for (const ln of lines) for (const p of pts) if (p[ln.key] != null) max = Math.max(max, p[ln.key]);
  el.dataset.max = String(max);
  const top = niceMax(max);
  const x = (t) => L + ((t - (now - span)) / span) * (W - L - R);
  const y = (v) => T + (1 - v / top) * (H - T - B);
  let svg = `<svg viewBox="0 0 ${W} ${H}" height="${H}" role="img">`;
  for (const f of [0, 0.25, 0.5, 0.75, 1]) {
    const v = top * f;
    svg += `<line class="grid-line" x1="${L}" x2="${W - R}" y1="${y(v)}" y2="${y(v)}"/>`;
    const label = v >= 1000 ? fmtInt(v) : String(Number(v.toPrecision(3)));
    svg += `<text x="${L - 6}" y="${y(v) + 4}" text-anchor="end">${esc(label)}</text>`;
  }
  const step = [5, 10, 15, 20, 30].find((st) => span / st <= 5) || 30;
  for (let s = 0; s <= span; s += step) {
    const anchor = s === 0 ? "end" : "middle";
    svg += `<text x="${x(now - s)}" y="${H - 6}" text-anchor="${anchor}">${s ? `-${s}s` : "now"}</text>`;
  }
  svg += `<line class="axis" x1="${L}" x2="${W - R}" y1="${y(0)}" y2="${y(0)}"/>`;
  for (const ln of lines) {
    let d = "", pen = false;
    for (const p of pts) {
      const v = p[ln.key];
      if (v == null) { pen = false; continue; }
      d += `${pen ? "L" : "M"}${x(p.t).toFixed(1)},${y(v).toFixed(1)}`;
      pen = true;
    }
    const dash = ln.dash ? ` stroke-dasharray="5 4"` : "";
    svg += `<path d="${d}" fill="none" stroke="${ln.color}" stroke-width="2"${dash} ` +
      `data-series="${ln.key}" stroke-linejoin="round"/>`;
  }
  svg += "</svg>";
  const last = pts[pts.length - 1];
  const legend = lines.map((ln) => {
    const v = last[ln.key] == null ? "–" : `${fmtNum(last[ln.key], 2)}${unit}`;
    const sw = ln.dash ? `class="sw dash" style="color:${ln.color}"`
      : `class="sw" style="background:${ln.color}"`;
    return `<span><span ${sw}></span>${esc(ln.label)} <b data-last="${ln.key}">${esc(v)}</b></span>`;
  }).join("");
  el.innerHTML = `${svg}<div class="legend">${legend}</div>`;
}

function renderCharts(live) {
  const now = live.ts;
  lineChart($("#chart-throughput"), [
    { key: "events_ps", label: "events in", color: "#2563eb" },
    { key: "decisions_ps", label: "decisions out", color: "#16a34a" },
    { key: "dlq_ps", label: "DLQ", color: "#dc2626" },
  ], now, "/s");
  lineChart($("#chart-latency"), [
    { key: "e2e_p50", label: "end-to-end p50", color: "#7c3aed" },
    { key: "e2e_p99", label: "end-to-end p99", color: "#7c3aed", dash: true },
    { key: "inference_p50", label: "inference p50", color: "#ea580c" },
    { key: "inference_p99", label: "inference p99", color: "#ea580c", dash: true },
  ], now, " ms");
  $("#latency-caption").textContent = `ms, p50 and p99 of the last ${live.latency_window_s} s`;
}

function renderLag(lag, topic) {
  const el = $("#lag");
  const parts = Object.keys(lag).sort((a, b) => Number(a) - Number(b));
  if (!parts.length) {
    el.innerHTML = `<p class="empty">No partition of <code>${esc(topic)}</code> is assigned to ` +
      "this worker yet (or none has been fetched).</p>";
    return;
  }
  const max = Math.max(1, ...parts.map((p) => lag[p]));
  const total = parts.reduce((s, p) => s + lag[p], 0);
  el.innerHTML = parts.map((p) =>
    `<div class="row" data-partition="${esc(p)}"><span>p${esc(p)}</span>` +
    `<div class="bar-track"><div class="bar" style="width:${(100 * lag[p]) / max}%"></div></div>` +
    `<span class="num">${fmtInt(lag[p])}</span></div>`).join("") +
    `<p class="empty">${total === 0 ? "caught up: every event fetched is processed" :
      `${fmtInt(total)} records behind on ${esc(topic)}`}</p>`;
}

function renderModels(models) {
  const el = $("#models");
  if (!models || !models.length) { el.innerHTML = `<p class="empty">No model reported.</p>`; return; }
  const rows = models.map((m) => {
    const keys = Object.keys(m.metrics || {});
    const metrics = keys.length
      ? `<div class="metrics">${keys.slice(0, 8).map((k) =>
        `<span class="chip">${esc(k)} <b>${esc(fmtNum(m.metrics[k], 4))}</b></span>`).join("")}</div>`
      : `<span class="empty">no offline metrics: this version is not in the model registry` +
        `${m.role === "recommender" ? " (learned online)" : ""}</span>`;
    return `<tr><td>${esc(m.role)}</td><td class="mono">${esc(m.name)}</td>` +
      `<td class="mono">${esc(m.version)}</td><td>${metrics}</td></tr>`;
  }).join("");
  el.innerHTML = `<table><thead><tr><th>role</th><th>name</th><th>version</th>` +
    `<th>offline metrics</th></tr></thead><tbody>${rows}</tbody></table>`;
}

// ---------------------------------------------------------------------------------------
// latest decisions

function recCell(d) {
  const items = (d.items || []).slice(0, 4).map((i) => esc(i.item_id)).join(", ");
  return `top ${d.items.length}: <span class="items mono">${items}</span>` +
    ` <span class="empty">(${esc(d.model)} ${esc(d.model_version)})</span>`;
}

async function pollDecisions() {
  try {
    const { status, body } = await getJSON("/api/recent", true);
    const tbody = $("#decisions tbody");
    if (status === 401) {
      tbody.innerHTML = `<tr><td colspan="5" class="empty">This worker requires an API token ` +
        `to show decisions: enter it at the top right.</td></tr>`;
      state.lastDecisionKey = "";
    } else if (body && body.decisions) {
      renderDecisions(body.decisions);
    }
  } catch (_) {
    // the live poll reports an unreachable worker
  } finally {
    setTimeout(pollDecisions, 1500);
  }
}

function renderDecisions(list) {
  const tbody = $("#decisions tbody");
  const newest = list.length ? list[list.length - 1] : null;
  const key = newest ? `${list.length}:${newest.kind}:${newest.event_id}` : "empty";
  if (key === state.lastDecisionKey) return;
  state.lastDecisionKey = key;
  if (!list.length) {
    tbody.innerHTML = `<tr><td colspan="5" class="empty">No decisions yet: recommendations ` +
      `follow view and click events, risk alerts a score at or above the threshold.</td></tr>`;
    return;
  }
  const firstRender = state.seenDecisions.size === 0;
  const rows = list.slice().reverse().map((d) => {
    const id = `${d.kind}:${d.event_id}`;
    const fresh = !firstRender && !state.seenDecisions.has(id);
    state.seenDecisions.add(id);
    const alert = d.kind === "risk_alert";
    const what = alert
      ? `score <b>${esc(d.score.toFixed(2))}</b> ≥ ${esc(d.threshold)} · ` +
        ((d.reasons || []).slice(0, 3).map((r) => `${esc(r.feature)}=${esc(fmtNum(r.value, 2))}`)
          .join(", ") || "no reasons")
      : recCell(d);
    return `<tr class="${fresh ? "fresh" : ""}" data-kind="${esc(d.kind)}">` +
      `<td class="mono">${esc(clock(d.ts))}</td>` +
      `<td>${alert ? '<span class="badge alert">ALERT</span>' : '<span class="badge rec">rec</span>'}</td>` +
      `<td><a class="user" data-user="${esc(d.user_id)}">${esc(d.user_id)}</a></td>` +
      `<td>${what}</td><td class="num">${esc(fmtMs(d.latency_ms))}</td></tr>`;
  }).join("");
  tbody.innerHTML = rows;
  if (state.seenDecisions.size > 5000) state.seenDecisions = new Set();
}

// ---------------------------------------------------------------------------------------
// user inspector

const TYPES = ["view", "click", "add_to_cart", "purchase"];
const TYPE_COLORS = { view: "#64748b", click: "#2563eb", add_to_cart: "#d97706", purchase: "#16a34a" };

function inspect(user) {
  user = (user || "").trim();
  if (!user) return;
  state.user = user;
  $("#user-id").value = user;
  history.replaceState(null, "", `#user=${encodeURIComponent(user)}`);
  $("#inspector").innerHTML = `<p class="empty">Loading ${esc(user)}…</p>`;
  refreshUser();
}

async function refreshUser() {
  const user = state.user;
  if (!user) return;
  const el = $("#inspector");
  try {
    const { status, body } = await getJSON(`/api/users/${encodeURIComponent(user)}`, true);
    if (user !== state.user) return; // another user was asked for meanwhile
    if (status === 401) {
      el.innerHTML = `<p class="error-text">This worker requires an API token for user data: ` +
        `enter it at the top right (stored in this browser only).</p>`;
    } else if (status === 404) {
      el.innerHTML = `<p class="empty" data-state="unknown">No state for user ` +
        `<b>${esc(user)}</b> on this worker: no events from them yet, their state expired ` +
        `after the TTL, or their partition is owned by another worker.</p>`;
    } else if (body && status === 200) {
      renderUser(body);
    } else {
      el.innerHTML = `<p class="error-text">The worker answered HTTP ${status}.</p>`;
    }
  } catch (err) {
    el.innerHTML = `<p class="error-text">Cannot reach the worker: ${esc(err.message)}.</p>`;
  }
}

function fact(label, value, id) {
  return `<div class="fact"${id ? ` id="${id}"` : ""}><div class="label">${esc(label)}</div>` +
    `<div class="value">${value}</div></div>`;
}

function renderUser(u) {
  const f = u.features;
  let html = "";
  if (f) {
    const counts = TYPES.map((t) =>
      `<span class="chip" data-type="${t}"><span class="type-dot" style="background:${TYPE_COLORS[t]}"></span>` +
      `${t} <b>${fmtInt(f.counts[t])}</b></span>`).join(" ");
    html += `<div class="facts">` +
      fact("events", `<span id="insp-events-total">${fmtInt(f.events_total)}</span>`) +
      fact("spend total", esc(fmtNum(f.spend_total, 2)), "insp-spend") +
      fact("session", `${fmtInt(f.session.length)} ev · ${esc(fmtDuration(f.session.duration_s))}`) +
      fact("last event", `<span class="mono" style="font-size:13px">${esc(fmtTime(f.last_ts))}</span>`) +
      fact("distinct items", fmtInt(f.distinct_items)) +
      fact("categories", fmtInt(f.distinct_categories)) +
      fact("devices / IPs 24h", `${fmtInt(f.distinct_devices_24h)} / ${fmtInt(f.distinct_ips_24h)}`) +
      fact("late / duplicates", `${fmtInt(f.late_events)} / ${fmtInt(f.duplicates)}`) +
      `</div><div class="metrics" id="insp-counts" style="margin-top:8px">${counts}</div>`;
    const labels = Object.keys(f.windows);
    html += `<h3>Rolling windows <small>event time, ending at the user's latest event</small></h3>` +
      `<table id="insp-windows"><thead><tr><th>window</th>` +
      TYPES.map((t) => `<th class="num">${t}</th>`).join("") +
      `<th class="num">spend</th><th class="num">purchases / h</th></tr></thead><tbody>` +
      labels.map((w) => `<tr data-window="${esc(w)}"><td><b>${esc(w)}</b></td>` +
        TYPES.map((t) => `<td class="num" data-type="${t}">${fmtInt(f.windows[w][t])}</td>`).join("") +
        `<td class="num" data-type="spend">${esc(fmtNum(f.windows[w].spend, 2))}</td>` +
        `<td class="num">${esc(fmtNum(f.windows[w].purchase_velocity_per_h, 2))}</td></tr>`).join("") +
      `</tbody></table>`;
  } else {
    html += `<p class="empty">No feature state on this worker (expired or never seen here); ` +
      "the decisions below are from memory.</p>";
  }
  html += `<div class="two"><div>${riskHtml(u)}</div><div>${decisionsHtml(u)}</div></div>`;
  if (f) html += timelineHtml(f.sequence);
  $("#inspector").innerHTML = html;
}

function riskHtml(u) {
  const r = u.risk;
  if (!r) return `<h3>Risk</h3><p class="empty">No risk score kept for this user: the worker ` +
    "keeps the latest prediction of its most recently active users only.</p>";
  const pct = Math.min(100, r.score * 100);
  const maxC = Math.max(0.0001, ...r.reasons.map((x) => x.contribution));
  const bars = r.reasons.length ? r.reasons.map((x) =>
    `<div class="reason" data-feature="${esc(x.feature)}"><div class="head"><b>` +
    `${esc(x.feature)} <span>= ${esc(fmtNum(x.value, 2))}</span></b>` +
    `<span class="num">+${esc(x.contribution.toFixed(2))}</span></div><div class="bar-track">` +
    `<div class="bar" style="width:${(100 * x.contribution) / maxC}%"></div></div></div>`).join("")
    : `<p class="empty">No feature raised the risk above normal.</p>`;
  return `<h3>Risk at the last event <small class="mono">${esc(r.event_id)} · ${esc(r.model_version)}</small></h3>` +
    `<div class="score${r.alert ? " alert" : ""}" id="insp-risk" data-score="${r.score}">` +
    `<span class="big">${r.score.toFixed(2)}</span><span>${r.alert
      ? `<span class="badge alert">ALERT</span> at or above the threshold ${esc(r.threshold)}`
      : `below the alert threshold ${esc(r.threshold)}`}</span></div>` +
    `<div class="gauge"><div class="fill" style="width:${pct}%"></div>` +
    `<div class="mark" style="left:${r.threshold * 100}%" title="threshold"></div></div>` +
    `<div class="bars" id="risk-reasons"><div class="empty" style="margin-bottom:4px">` +
    `reasons: contribution to the risk logit</div>${bars}</div>`;
}

function decisionsHtml(u) {
  let html = "<h3>Latest event and decision</h3>";
  const l = u.latest;
  if (l) {
    const items = l.items.length
      ? `recommended ${l.items.slice(0, 5).map((i) => `<span class="mono">${esc(i.item_id)}</span>`)
        .join(", ")} <span class="empty">(${esc(l.model)} ${esc(l.model_version)})</span>`
      : `<span class="empty">no recommendation for a ${esc(l.type)} event</span>`;
    html += `<p id="insp-latest" data-event="${esc(l.event_id)}"><span class="chip">` +
      `<span class="type-dot" style="background:${TYPE_COLORS[l.type] || "#999"}"></span>` +
      `${esc(l.type)}</span> <span class="mono">${esc(l.event_id)}</span> at ` +
      `${esc(fmtTime(l.event_ts))}<br>${items}</p>`;
  } else {
    html += `<p class="empty">Not kept any more (the worker keeps the latest event of its ` +
      "most recently active users).</p>";
  }
  html += `<h3>Remembered decisions <small>every risk alert, a sample of recommendations` +
    `</small></h3>`;
  if (!u.decisions.length) return html + `<p class="empty">None for this user.</p>`;
  return html + `<table id="insp-decisions"><tbody>` + u.decisions.map((d) => {
    const alert = d.kind === "risk_alert";
    const what = alert
      ? `score <b>${d.score.toFixed(2)}</b>: ` + d.reasons.slice(0, 3).map((r) => esc(r.feature)).join(", ")
      : `${(d.items || []).slice(0, 3).map((i) => `<span class="mono">${esc(i.item_id)}</span>`).join(", ")}`;
    return `<tr data-kind="${esc(d.kind)}"><td class="mono">${esc(clock(d.ts))}</td><td>` +
      `${alert ? '<span class="badge alert">ALERT</span>' : '<span class="badge rec">rec</span>'}` +
      `</td><td>${what}</td></tr>`;
  }).join("") + `</tbody></table>`;
}

function timelineHtml(seq) {
  if (!seq.length) return "";
  const W = 900, H = 120, L = 92, R = 12, T = 6, lane = 22;
  const t0 = seq[0].ts, t1 = seq[seq.length - 1].ts;
  const span = Math.max(1, t1 - t0);
  const x = (t) => (t1 === t0 ? (L + W - R) / 2 : L + ((t - t0) / span) * (W - L - R));
  let svg = `<svg viewBox="0 0 ${W} ${H}" id="insp-timeline" data-events="${seq.length}">`;
  TYPES.forEach((t, i) => {
    const yy = T + i * lane + lane / 2;
    svg += `<text x="${L - 8}" y="${yy + 4}" text-anchor="end">${t}</text>` +
      `<line x1="${L}" x2="${W - R}" y1="${yy}" y2="${yy}" stroke="#eef2f6"/>`;
  });
  for (const e of seq) {
    const i = TYPES.indexOf(e.type);
    const yy = T + i * lane + lane / 2;
    svg += `<circle cx="${x(e.ts).toFixed(1)}" cy="${yy}" r="5" fill="${TYPE_COLORS[e.type]}" ` +
      `fill-opacity="0.8"><title>${esc(e.type)} ${esc(e.item_id)} at ${esc(fmtTime(e.ts))}</title></circle>`;
  }
  svg += `<text x="${L}" y="${H - 8}">${esc(fmtTime(t0))}</text>` +
    `<text x="${W - R}" y="${H - 8}" text-anchor="end">${esc(fmtTime(t1))}</text></svg>`;
  const recent = seq.slice(-6).reverse().map((e) =>
    `<span class="chip"><span class="type-dot" style="background:${TYPE_COLORS[e.type]}"></span>` +
    `${esc(e.type)} <span class="mono">${esc(e.item_id)}</span></span>`).join(" ");
  return `<h3>Recent sequence <small>${seq.length} events over ${esc(fmtDuration(span / 1000))} ` +
    `of event time, oldest left</small></h3><div class="timeline">${svg}</div>` +
    `<div class="metrics">latest: ${recent}</div>`;
}

// ---------------------------------------------------------------------------------------
// learning view: real feedback data or an explicit empty state

async function pollLearning() {
  const el = $("#learning");
  try {
    const { body } = await getJSON("/api/learning", false);
    if (!body) throw new Error("no answer");
    if (!body.available) {
      el.innerHTML = `<p class="empty" data-state="no-feedback">${esc(body.message)}</p>` +
        `<p class="empty">Topic <code>${esc(body.topic)}</code>: reward per window and the ` +
        `exploration rate appear here once feedback records are joined.</p>`;
    } else {
      const last = (body.series || []).slice(-1)[0] || {};
      el.innerHTML = `<div class="facts" style="grid-template-columns:1fr 1fr">` +
        fact("reward / window", esc(fmtNum(last.reward, 3))) +
        fact("exploration rate", esc(fmtNum(last.exploration, 3))) + `</div>` +
        (body.ope ? `<div class="metrics" style="margin-top:8px">${Object.keys(body.ope).map((k) =>
          `<span class="chip">${esc(k)} <b>${esc(fmtNum(body.ope[k], 3))}</b></span>`).join("")}</div>` : "");
    }
  } catch (_) {
    el.innerHTML = `<p class="empty">Unavailable while the worker is unreachable.</p>`;
  } finally {
    setTimeout(pollLearning, 10000);
  }
}

// ---------------------------------------------------------------------------------------

function init() {
  const params = new URLSearchParams(location.search);
  if (params.has("token")) { // take a token from the link once, then keep it out of the URL
    state.token = params.get("token");
    localStorage.setItem(TOKEN_KEY, state.token);
    params.delete("token");
    const q = params.toString();
    history.replaceState(null, "", location.pathname + (q ? `?${q}` : "") + location.hash);
  }
  $("#token").value = state.token;
  $("#token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    state.token = $("#token").value.trim();
    if (state.token) localStorage.setItem(TOKEN_KEY, state.token);
    else localStorage.removeItem(TOKEN_KEY);
    state.lastDecisionKey = "";
    if (state.user) refreshUser();
  });
  $("#inspect-form").addEventListener("submit", (ev) => { ev.preventDefault(); inspect($("#user-id").value); });
  $("#decisions").addEventListener("click", (ev) => {
    const a = ev.target.closest("a.user");
    if (a) { inspect(a.dataset.user); $("#user-id").scrollIntoView({ behavior: "smooth", block: "center" }); }
  });
  const m = /^#user=(.+)$/.exec(location.hash);
  if (m) inspect(decodeURIComponent(m[1]));
  setInterval(refreshUser, 3000);
  pollLive();
  pollDecisions();
  pollLearning();
}

document.addEventListener("DOMContentLoaded", init);
