// lamstream dashboard: polls the worker's JSON endpoints and draws SVG charts. No build step,
// no dependencies; values reach the DOM as text nodes (el/show), never as parsed markup, so
// the page runs under a CSP with no inline script or style.
import { lineChart } from "./charts.js";
import { clock, el, fmtDuration, fmtInt, fmtMs, fmtNum, show } from "./format.js";
import { badge, fact, userView } from "./inspector.js";

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

const code = (text) => el("code", null, text);
const empty = (...children) => el("p", { class: "empty" }, ...children);

function setBanner(kind, title, ...parts) {
  const box = $("#banner");
  if (!kind) { box.hidden = true; box.dataset.kind = ""; return; }
  box.hidden = false;
  box.className = `banner ${kind}`;
  box.dataset.kind = title;
  show(box, el("strong", null, title), parts);
}

function setStatus(cls, text, stateName) {
  const pill = $("#status");
  pill.className = `pill ${cls}`;
  pill.textContent = text;
  pill.dataset.state = stateName;
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
    ` The dashboard cannot reach the lamstream worker at ${location.host}` +
    ` (${err && err.message ? err.message : err}).${last} Retrying every second.`);
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
    setBanner("error", "Broker unreachable.", " The worker has no connection to Kafka at ",
      code(broker.bootstrap), ": no events are consumed and no decisions are published " +
      "until it is back. The worker keeps retrying.");
  } else if (h.status !== "ok") {
    setStatus("wait", "worker starting", "starting");
    setBanner("warn", "Worker not ready.", ` ${describeHealth(h)}; ` +
      "decisions resume when it is done.");
  } else {
    setStatus("ok", "healthy", "ok");
    if (t.events === 0) {
      setBanner("info", "No events yet.", " The worker is running and waiting for the first " +
        "record on topic ", code(live.events_topic), ". Produce some with ",
        code("lamstream produce FILE"), ", or run ", code("make demo"), ".");
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
  const kpi = document.getElementById(id);
  kpi.querySelector(".value").textContent = value;
  kpi.querySelector(".sub").textContent = sub || "\u00a0";
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
  const parts = Object.keys(lag).sort((a, b) => Number(a) - Number(b));
  if (!parts.length) {
    show($("#lag"), empty("No partition of ", code(topic), " is assigned to this worker yet " +
      "(or none has been fetched)."));
    return;
  }
  const max = Math.max(1, ...parts.map((p) => lag[p]));
  const total = parts.reduce((s, p) => s + lag[p], 0);
  show($("#lag"), parts.map((p) => el("div", { class: "row", "data-partition": p },
    el("span", null, `p${p}`),
    el("div", { class: "bar-track" },
      el("div", { class: "bar", style: { width: `${(100 * lag[p]) / max}%` } })),
    el("span", { class: "num" }, fmtInt(lag[p])))),
  empty(total === 0 ? "caught up: every event fetched is processed"
    : `${fmtInt(total)} records behind on ${topic}`));
}

const chips = (obj, keys, digits) => el("div", { class: "metrics" }, keys.map((k) =>
  el("span", { class: "chip" }, `${k} `, el("b", null, fmtNum(obj[k], digits)))));

function renderModels(models) {
  if (!models || !models.length) { show($("#models"), empty("No model reported.")); return; }
  const rows = models.map((m) => {
    const keys = Object.keys(m.metrics || {});
    const metrics = keys.length ? chips(m.metrics, keys.slice(0, 8), 4)
      : el("span", { class: "empty" }, "no offline metrics: this version is not in the model " +
        `registry${m.role === "recommender" ? " (learned online)" : ""}`);
    return el("tr", null, el("td", null, m.role), el("td", { class: "mono" }, m.name),
      el("td", { class: "mono" }, m.version), el("td", null, metrics));
  });
  show($("#models"), el("table", null,
    el("thead", null, el("tr", null, ["role", "name", "version", "offline metrics"]
      .map((h) => el("th", null, h)))),
    el("tbody", null, rows)));
}

// ---------------------------------------------------------------------------------------
// latest decisions

function recCell(d) {
  const items = (d.items || []).slice(0, 4).map((i) => i.item_id).join(", ");
  return [`top ${d.items.length}: `, el("span", { class: "items mono" }, items), " ",
    el("span", { class: "empty" }, `(${d.model} ${d.model_version})`)];
}

const messageRow = (text) => el("tr", null, el("td", { colspan: 5, class: "empty" }, text));

async function pollDecisions() {
  try {
    const { status, body } = await getJSON("/api/recent", true);
    const tbody = $("#decisions tbody");
    if (status === 401) {
      show(tbody, messageRow(tokenProblem("decisions")));
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
    show(tbody, messageRow("No decisions yet: recommendations follow view and click events, " +
      "risk alerts a score at or above the threshold."));
    return;
  }
  const firstRender = state.seenDecisions.size === 0;
  const rows = list.slice().reverse().map((d) => {
    const id = `${d.kind}:${d.event_id}`;
    const fresh = !firstRender && !state.seenDecisions.has(id);
    state.seenDecisions.add(id);
    const alert = d.kind === "risk_alert";
    const what = alert
      ? ["score ", el("b", null, d.score.toFixed(2)), ` ≥ ${d.threshold} · ` +
        ((d.reasons || []).slice(0, 3).map((r) => `${r.feature}=${fmtNum(r.value, 2)}`)
          .join(", ") || "no reasons")]
      : recCell(d);
    return el("tr", { class: fresh ? "fresh" : "", "data-kind": d.kind },
      el("td", { class: "mono" }, clock(d.ts)),
      el("td", null, badge(alert)),
      el("td", null, el("a", { class: "user", "data-user": d.user_id }, d.user_id)),
      el("td", null, what), el("td", { class: "num" }, fmtMs(d.latency_ms)));
  });
  show(tbody, rows);
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
  show($("#inspector"), empty(`Loading ${user}…`));
  refreshUser();
}

async function refreshUser() {
  const user = state.user;
  if (!user) return;
  const box = $("#inspector");
  const error = (text) => el("p", { class: "error-text" }, text);
  try {
    const { status, body } = await getJSON(`/api/users/${encodeURIComponent(user)}`, true);
    if (user !== state.user) return; // another user was asked for meanwhile
    if (status === 401) {
      show(box, error(tokenProblem("user data")));
    } else if (status === 404) {
      show(box, el("p", { class: "empty", "data-state": "unknown" }, "No state for user ",
        el("b", null, user), " on this worker: no events from them yet, their state expired " +
        "after the TTL, or their partition is owned by another worker."));
    } else if (body && status === 200) {
      show(box, userView(body));
    } else {
      show(box, error(`The worker answered HTTP ${status}.`));
    }
  } catch (err) {
    show(box, error(`Cannot reach the worker: ${err.message}.`));
  }
}


// ---------------------------------------------------------------------------------------
// learning view: real feedback data or an explicit empty state

async function pollLearning() {
  const box = $("#learning");
  try {
    const { body } = await getJSON("/api/learning", false);
    if (!body) throw new Error("no answer");
    if (!body.available) {
      show(box, el("p", { class: "empty", "data-state": "no-feedback" }, body.message),
        empty("Topic ", code(body.topic), ": reward per window and the exploration rate " +
          "appear here once feedback records are joined."));
    } else {
      const last = (body.series || []).slice(-1)[0] || {};
      const ope = body.ope ? chips(body.ope, Object.keys(body.ope), 3) : null;
      if (ope) ope.classList.add("gap-top");
      show(box, el("div", { class: "facts pair" },
        fact("reward / window", fmtNum(last.reward, 3)),
        fact("exploration rate", fmtNum(last.exploration, 3))), ope);
    }
  } catch (_) {
    show(box, empty("Unavailable while the worker is unreachable."));
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
