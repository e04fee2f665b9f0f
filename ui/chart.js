// The lag-over-time chart: a hand-drawn SVG line (no library), sampled by
// the page on every refresh. Samples are kept per group in memory, bounded
// in both series and points, and lost on reload (the server keeps no
// history; Prometheus does, via streamcar_group_lag).

import { s } from "./dom.js";

/** Most points kept per series (at a 3 s refresh: 6 minutes). */
export const MAX_POINTS = 120;
/** Most series kept; the least recently sampled is dropped first. */
const MAX_SERIES = 200;

const series = new Map();

/** Records `value` for `name` now; returns the series (oldest first). */
export function sample(name, value) {
  let points = series.get(name);
  if (points) series.delete(name); // re-insert: Map order is recency
  else points = [];
  points.push({ t: Date.now(), v: value });
  if (points.length > MAX_POINTS) points.splice(0, points.length - MAX_POINTS);
  series.set(name, points);
  while (series.size > MAX_SERIES) series.delete(series.keys().next().value);
  return points;
}

export function samples(name) {
  return series.get(name) || [];
}

/** A rounded-up axis top: 1, 2, 5, 10, 20, 50, … */
function niceTop(max) {
  if (max <= 0) return 1;
  const pow = 10 ** Math.floor(Math.log10(max));
  for (const m of [1, 2, 5, 10]) if (m * pow >= max) return m * pow;
  return 10 * pow;
}

function fmtSpan(ms) {
  const secs = Math.round(ms / 1000);
  return secs < 120 ? `${secs} s` : `${Math.round(secs / 60)} min`;
}

/** The chart of `points` ({t, v}) as an SVG element. */
export function lagChart(points, label) {
  const W = 1000;
  const H = 150;
  const L = 44; // room for the y labels
  const R = 8;
  const T = 10;
  const B = 22;
  const values = points.map((p) => p.v);
  const top = niceTop(Math.max(0, ...values));
  const now = points.length ? points[points.length - 1] : null;
  const first = points.length ? points[0] : null;
  const span = now && first ? Math.max(1, now.t - first.t) : 1;
  const x = (t) => L + ((t - (first ? first.t : 0)) / span) * (W - L - R);
  const y = (v) => T + (1 - v / top) * (H - T - B);
  const summary = points.length
    ? `${label}: now ${now.v}, lowest ${Math.min(...values)}, highest ${Math.max(...values)} over the last ${fmtSpan(span)}`
    : `${label}: no samples yet`;
  const grid = [0, 0.5, 1].map((f) =>
    s("g", { class: "grid" },
      s("line", { x1: L, x2: W - R, y1: y(top * f), y2: y(top * f) }),
      s("text", { x: L - 6, y: y(top * f) + 4, "text-anchor": "end" }, String(Math.round(top * f)))));
  let line = null;
  let area = null;
  if (points.length === 1) {
    line = s("circle", { class: "dot", cx: W - R, cy: y(now.v), r: 3 });
  } else if (points.length > 1) {
    const d = points.map((p, i) => `${i ? "L" : "M"}${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`).join("");
    line = s("path", { class: "line", d });
    area = s("path", { class: "area", d: `${d}L${x(now.t).toFixed(1)},${y(0)}L${L},${y(0)}Z` });
  }
  return s("svg", {
    class: "chart",
    viewBox: `0 0 ${W} ${H}`,
    role: "img",
    "aria-label": summary,
  },
  s("title", {}, summary),
  grid,
  area,
  line,
  s("text", { class: "axis", x: L, y: H - 6 }, points.length > 1 ? `−${fmtSpan(span)}` : ""),
  s("text", { class: "axis", x: W - R, y: H - 6, "text-anchor": "end" }, "now"));
}
