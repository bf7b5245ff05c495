// lamstream dashboard: polls the worker's JSON endpoints and draws SVG charts. No build step,
// no dependencies; every value that comes from events is escaped before it reaches the DOM.
import { lineChart } from "./charts.js";
import { clock, esc, fmtDuration, fmtInt, fmtMs, fmtNum } from "./format.js";
import { fact, userHtml } from "./inspector.js";

const WINDOW_S = 120; // seconds of history the charts show
const TOKEN_KEY = "lamstream.token";
const state = {
  since: 0, series: [], failures: 0, live: null, token: localStorage.getItem(TOKEN_KEY) || "",
  user: null, lastDecisionKey: "", seenDecisions: new Set(),
};

const $ = (sel) => document.querySelector(sel);

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

function tokenProblem(what) {
  return state.token
    ? `The API token in this browser is not accepted for ${what}: check it at the top right.`
    : `This worker requires an API token for ${what}: enter it at the top right ` +
      "(it is stored in this browser only).";
}

function showWorkerDown(err) {
  setStatus("bad", "worker unreachable", "unreachable");
  $("#broker").textContent = "broker: unknown while the worker is unreachable";
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


function renderCharts(live) {
  const now = live.ts;
  lineChart($("#chart-throughput"), state.series, [
    { key: "events_ps", label: "events in", color: "#2563eb" },
    { key: "decisions_ps", label: "decisions out", color: "#16a34a" },
    { key: "dlq_ps", label: "DLQ", color: "#dc2626" },
  ], now, "/s", WINDOW_S);
  lineChart($("#chart-latency"), state.series, [
    { key: "e2e_p50", label: "end-to-end p50", color: "#7c3aed" },
    { key: "e2e_p99", label: "end-to-end p99", color: "#7c3aed", dash: true },
    { key: "inference_p50", label: "inference p50", color: "#ea580c" },
    { key: "inference_p99", label: "inference p99", color: "#ea580c", dash: true },
  ], now, " ms", WINDOW_S);
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
      tbody.innerHTML = `<tr><td colspan="5" class="empty">${esc(tokenProblem("decisions"))}` +
        "</td></tr>";
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
      el.innerHTML = `<p class="error-text">${esc(tokenProblem("user data"))}</p>`;
    } else if (status === 404) {
      el.innerHTML = `<p class="empty" data-state="unknown">No state for user ` +
        `<b>${esc(user)}</b> on this worker: no events from them yet, their state expired ` +
        `after the TTL, or their partition is owned by another worker.</p>`;
    } else if (body && status === 200) {
      el.innerHTML = userHtml(body);
    } else {
      el.innerHTML = `<p class="error-text">The worker answered HTTP ${status}.</p>`;
    }
  } catch (err) {
    el.innerHTML = `<p class="error-text">Cannot reach the worker: ${esc(err.message)}.</p>`;
  }
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
