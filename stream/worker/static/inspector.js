// The user inspector: features, windows, sequence timeline, risk reasons, decisions.
import { clock, el, fmtDuration, fmtInt, fmtNum, fmtTime, joined, svgEl } from "./format.js";

export const TYPES = ["view", "click", "add_to_cart", "purchase"];
export const TYPE_COLORS = { view: "#64748b", click: "#2563eb", add_to_cart: "#d97706", purchase: "#16a34a" };

export function fact(label, value, id) {
  return el("div", { class: "fact", id }, el("div", { class: "label" }, label),
    el("div", { class: "value" }, value));
}

const dot = (type) =>
  el("span", { class: "type-dot", style: { background: TYPE_COLORS[type] || "#999" } });
export const badge = (alert) => (alert ? el("span", { class: "badge alert" }, "ALERT")
  : el("span", { class: "badge rec" }, "rec"));
const mono = (text) => el("span", { class: "mono" }, text);

function featureFacts(f) {
  const counts = TYPES.map((t) => el("span", { class: "chip", "data-type": t }, dot(t), `${t} `,
    el("b", null, fmtInt(f.counts[t]))));
  return [el("div", { class: "facts" },
    fact("events", el("span", { id: "insp-events-total" }, fmtInt(f.events_total))),
    fact("spend total", fmtNum(f.spend_total, 2), "insp-spend"),
    fact("session", `${fmtInt(f.session.length)} ev · ${fmtDuration(f.session.duration_s)}`),
    fact("last event", el("span", { class: "mono when" }, fmtTime(f.last_ts))),
    fact("distinct items", fmtInt(f.distinct_items)),
    fact("categories", fmtInt(f.distinct_categories)),
    fact("devices / IPs 24h", `${fmtInt(f.distinct_devices_24h)} / ${fmtInt(f.distinct_ips_24h)}`),
    fact("late / duplicates", `${fmtInt(f.late_events)} / ${fmtInt(f.duplicates)}`)),
  el("div", { class: "metrics gap-top", id: "insp-counts" }, joined(counts, " "))];
}

function windowsTable(f) {
  const head = el("tr", null, el("th", null, "window"),
    TYPES.map((t) => el("th", { class: "num" }, t)),
    el("th", { class: "num" }, "spend"), el("th", { class: "num" }, "purchases / h"));
  const rows = Object.keys(f.windows).map((w) => el("tr", { "data-window": w },
    el("td", null, el("b", null, w)),
    TYPES.map((t) => el("td", { class: "num", "data-type": t }, fmtInt(f.windows[w][t]))),
    el("td", { class: "num", "data-type": "spend" }, fmtNum(f.windows[w].spend, 2)),
    el("td", { class: "num" }, fmtNum(f.windows[w].purchase_velocity_per_h, 2))));
  return [el("h3", null, "Rolling windows ",
    el("small", null, "event time, ending at the user's latest event")),
  el("table", { id: "insp-windows" }, el("thead", null, head), el("tbody", null, rows))];
}

// The nodes for one /api/users/{id} answer.
export function userView(u) {
  const f = u.features;
  return [
    f ? [featureFacts(f), windowsTable(f)]
      : el("p", { class: "empty" }, "No feature state on this worker (expired or never seen " +
        "here); the decisions below are from memory."),
    el("div", { class: "two" }, el("div", null, riskView(u)), el("div", null, decisionsView(u))),
    f ? timelineView(f.sequence) : null,
  ];
}

function riskView(u) {
  const r = u.risk;
  if (!r) return [el("h3", null, "Risk"), el("p", { class: "empty" }, "No risk score kept for " +
    "this user: the worker keeps the latest prediction of its most recently active users only.")];
  const maxC = Math.max(0.0001, ...r.reasons.map((x) => x.contribution));
  const bars = r.reasons.length ? r.reasons.map((x) =>
    el("div", { class: "reason", "data-feature": x.feature }, el("div", { class: "head" },
      el("b", null, `${x.feature} `, el("span", null, `= ${fmtNum(x.value, 2)}`)),
      el("span", { class: "num" }, `+${x.contribution.toFixed(2)}`)),
    el("div", { class: "bar-track" },
      el("div", { class: "bar", style: { width: `${(100 * x.contribution) / maxC}%` } }))))
    : el("p", { class: "empty" }, "No feature raised the risk above normal.");
  return [
    el("h3", null, "Risk at the last event ",
      el("small", { class: "mono" }, `${r.event_id} · ${r.model_version}`)),
    el("div", { class: `score${r.alert ? " alert" : ""}`, id: "insp-risk", "data-score": r.score },
      el("span", { class: "big" }, r.score.toFixed(2)),
      el("span", null, r.alert ? [badge(true), ` at or above the threshold ${r.threshold}`]
        : `below the alert threshold ${r.threshold}`)),
    el("div", { class: "gauge" },
      el("div", { class: "fill", style: { width: `${Math.min(100, r.score * 100)}%` } }),
      el("div", { class: "mark", style: { left: `${r.threshold * 100}%` }, title: "threshold" })),
    el("div", { class: "bars", id: "risk-reasons" },
      el("div", { class: "empty gap-bottom" }, "reasons: contribution to the risk logit"), bars),
  ];
}

function latestView(l) {
  if (!l) return el("p", { class: "empty" }, "Not kept any more (the worker keeps the latest " +
    "event of its most recently active users).");
  const items = l.items.length
    ? ["recommended ", joined(l.items.slice(0, 5).map((i) => mono(i.item_id)), ", "), " ",
      el("span", { class: "empty" }, `(${l.model} ${l.model_version})`)]
    : el("span", { class: "empty" }, `no recommendation for a ${l.type} event`);
  return el("p", { id: "insp-latest", "data-event": l.event_id },
    el("span", { class: "chip" }, dot(l.type), l.type), " ", mono(l.event_id),
    ` at ${fmtTime(l.event_ts)}`, el("br"), items);
}

function decisionsView(u) {
  const head = [el("h3", null, "Latest event and decision"), latestView(u.latest),
    el("h3", null, "Remembered decisions ",
      el("small", null, "every risk alert, a sample of recommendations"))];
  if (!u.decisions.length) return [head, el("p", { class: "empty" }, "None for this user.")];
  const rows = u.decisions.map((d) => {
    const alert = d.kind === "risk_alert";
    const what = alert
      ? ["score ", el("b", null, d.score.toFixed(2)), ": ",
        d.reasons.slice(0, 3).map((r) => r.feature).join(", ")]
      : joined((d.items || []).slice(0, 3).map((i) => mono(i.item_id)), ", ");
    return el("tr", { "data-kind": d.kind }, el("td", { class: "mono" }, clock(d.ts)),
      el("td", null, badge(alert)), el("td", null, what));
  });
  return [head, el("table", { id: "insp-decisions" }, el("tbody", null, rows))];
}

function timelineView(seq) {
  if (!seq.length) return null;
  const W = 900, H = 120, L = 92, R = 12, T = 6, lane = 22;
  const t0 = seq[0].ts, t1 = seq[seq.length - 1].ts;
  const span = Math.max(1, t1 - t0);
  const x = (t) => (t1 === t0 ? (L + W - R) / 2 : L + ((t - t0) / span) * (W - L - R));
  const svg = svgEl("svg",
    { viewBox: `0 0 ${W} ${H}`, id: "insp-timeline", "data-events": seq.length });
  TYPES.forEach((t, i) => {
    const yy = T + i * lane + lane / 2;
    svg.append(svgEl("text", { x: L - 8, y: yy + 4, "text-anchor": "end" }, t),
      svgEl("line", { x1: L, x2: W - R, y1: yy, y2: yy, stroke: "#eef2f6" }));
  });
  for (const e of seq) {
    const yy = T + TYPES.indexOf(e.type) * lane + lane / 2;
    svg.append(svgEl("circle", { cx: x(e.ts).toFixed(1), cy: yy, r: 5, fill: TYPE_COLORS[e.type],
      "fill-opacity": 0.8 }, svgEl("title", null, `${e.type} ${e.item_id} at ${fmtTime(e.ts)}`)));
  }
  svg.append(svgEl("text", { x: L, y: H - 8 }, fmtTime(t0)),
    svgEl("text", { x: W - R, y: H - 8, "text-anchor": "end" }, fmtTime(t1)));
  const recent = seq.slice(-6).reverse().map((e) =>
    el("span", { class: "chip" }, dot(e.type), `${e.type} `, mono(e.item_id)));
  return [el("h3", null, "Recent sequence ", el("small", null,
    `${seq.length} events over ${fmtDuration(span / 1000)} of event time, oldest left`)),
  el("div", { class: "timeline" }, svg),
  el("div", { class: "metrics" }, "latest: ", joined(recent, " "))];
}
