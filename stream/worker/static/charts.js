// Hand-written SVG line charts for the live series (no charting library needed).
import { el, fmtInt, fmtNum, show, svgEl } from "./format.js";

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

function legend(lines, last, unit) {
  return el("div", { class: "legend" }, lines.map((ln) => {
    const v = last[ln.key] == null ? "–" : `${fmtNum(last[ln.key], 2)}${unit}`;
    const sw = ln.dash ? el("span", { class: "sw dash", style: { color: ln.color } })
      : el("span", { class: "sw", style: { background: ln.color } });
    return el("span", null, sw, `${ln.label} `, el("b", { "data-last": ln.key }, v));
  }));
}

// Draws `lines` ({key, label, color, dash}) of `points` ({t, [key]: value}) over the last
// windowS seconds (or since the first point, at least 30 s) into box; sets data-points and
// data-max on box so tests and tools can read what is drawn.
export function lineChart(box, points, lines, now, unit, windowS) {
  const pts = points.filter((p) => p.t >= now - windowS);
  const span = pts.length ? Math.min(windowS, Math.max(30, now - pts[0].t)) : windowS;
  box.dataset.points = String(pts.length);
  if (pts.length < 2) {
    show(box, el("p", { class: "empty" }, "Collecting samples: the worker takes one per second."));
    return;
  }
  const W = Math.max(320, box.clientWidth || 600), H = 190;
  const L = 52, R = 10, T = 8, B = 22;
  let max = 0;
  for (const ln of lines) for (const p of pts) if (p[ln.key] != null) max = Math.max(max, p[ln.key]);
  box.dataset.max = String(max);
  const top = niceMax(max);
  const x = (t) => L + ((t - (now - span)) / span) * (W - L - R);
  const y = (v) => T + (1 - v / top) * (H - T - B);
  const svg = svgEl("svg", { viewBox: `0 0 ${W} ${H}`, height: H, role: "img" });
  for (const f of [0, 0.2, 0.4, 0.6, 0.8, 1]) {
    const v = top * f;
    const label = v >= 1000 ? fmtInt(v) : String(Number(v.toPrecision(3)));
    svg.append(svgEl("line", { class: "grid-line", x1: L, x2: W - R, y1: y(v), y2: y(v) }),
      svgEl("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end" }, label));
  }
  const step = [5, 10, 15, 20, 30].find((st) => span / st <= 5) || 30;
  for (let s = 0; s <= span; s += step) {
    svg.append(svgEl("text", { x: x(now - s), y: H - 6, "text-anchor": s === 0 ? "end" : "middle" },
      s ? `-${s}s` : "now"));
  }
  svg.append(svgEl("line", { class: "axis", x1: L, x2: W - R, y1: y(0), y2: y(0) }));
  for (const ln of lines) {
    let d = "", pen = false;
    for (const p of pts) {
      const v = p[ln.key];
      if (v == null) { pen = false; continue; }
      d += `${pen ? "L" : "M"}${x(p.t).toFixed(1)},${y(v).toFixed(1)}`;
      pen = true;
    }
    svg.append(svgEl("path", { d, fill: "none", stroke: ln.color, "stroke-width": 2,
      "stroke-dasharray": ln.dash ? "5 4" : null, "data-series": ln.key,
      "stroke-linejoin": "round" }));
  }
  show(box, svg, legend(lines, pts[pts.length - 1], unit));
}
