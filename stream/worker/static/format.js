// DOM building and number formatting: event data reaches the page as text nodes, never markup.

const SVG_NS = "http://www.w3.org/2000/svg";

// Children as nodes: strings become text nodes (never parsed), arrays are flattened,
// null/undefined/false are left out.
function nodes(children) {
  return children.flat(Infinity).filter((c) => c != null && c !== false)
    .map((c) => (c instanceof Node ? c : document.createTextNode(String(c))));
}

function build(node, attrs, children) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value == null || value === false) continue;
    // handlers are attached with addEventListener in code; an on* attribute is a bug
    if (/^on/i.test(name)) throw new Error(`no inline handler attributes (${name})`);
    // CSSOM, not a style attribute: the page's CSP (style-src 'self') blocks those
    if (name === "style") Object.assign(node.style, value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  node.append(...nodes(children));
  return node;
}

// el("td", {class: "num", "data-type": t}, "text", otherNode, [more, nodes])
export const el = (tag, attrs, ...children) => build(document.createElement(tag), attrs, children);
export const svgEl = (tag, attrs, ...children) =>
  build(document.createElementNS(SVG_NS, tag), attrs, children);
// Replaces what target shows.
export function show(target, ...children) { target.replaceChildren(...nodes(children)); }
// Joins nodes or strings with a separator, as Array.join does for strings.
export const joined = (items, sep) => items.flatMap((x, i) => (i ? [sep, x] : [x]));

export const fmtInt = (n) => (n == null ? "–" : Number(n).toLocaleString("en-US"));
export function fmtMs(v) {
  if (v == null) return "–";
  return v >= 100 ? `${v.toFixed(0)} ms` : v >= 10 ? `${v.toFixed(1)} ms` : `${v.toFixed(2)} ms`;
}
export function fmtNum(v, digits = 2) {
  if (v == null) return "–";
  if (Math.abs(v) >= 1000) return Math.round(v).toLocaleString("en-US");
  return Number.isInteger(v) ? String(v) : v.toFixed(digits);
}
export function fmtTime(ms) {
  if (ms == null || ms < 0) return "–";
  const d = new Date(ms);
  const pad = (x) => String(x).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}
export const clock = (ms) => fmtTime(ms).slice(11);
export function fmtDuration(s) {
  if (s == null) return "–";
  if (s < 90) return `${s.toFixed(0)} s`;
  if (s < 5400) return `${(s / 60).toFixed(0)} min`;
  if (s < 172800) return `${(s / 3600).toFixed(1)} h`;
  return `${(s / 86400).toFixed(1)} d`;
}
