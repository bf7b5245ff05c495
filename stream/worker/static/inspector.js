// The user inspector: features, windows, sequence timeline, risk reasons, decisions.
import { clock, esc, fmtDuration, fmtInt, fmtNum, fmtTime } from "./format.js";

export const TYPES = ["view", "click", "add_to_cart", "purchase"];
export const TYPE_COLORS = { view: "#64748b", click: "#2563eb", add_to_cart: "#d97706", purchase: "#16a34a" };

export function fact(label, value, id) {
  return `<div class="fact"${id ? ` id="${id}"` : ""}><div class="label">${esc(label)}</div>` +
    `<div class="value">${value}</div></div>`;
}

// The HTML for one /api/users/{id} answer.
export function userHtml(u) {
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
  return html;
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
