/**
 * Charts drawn as plain SVG: the live metric chart of a job (train, validation and full
 * validation series over steps) and bar histograms (token lengths).
 *
 * Owns drawing only; callers pass plain numbers. Series differ by colour AND by line style or
 * marker shape, every chart has a text summary for screen readers and a data table behind a
 * disclosure, so no information lives in colour or pixels alone.
 */

import { h, replace, formatNumber } from "./ui.js";

const W = 760;
const H = 300;
const M = { top: 16, right: 20, bottom: 44, left: 64 };
const PW = W - M.left - M.right;
const PH = H - M.top - M.bottom;

const svg = (tag, attrs = {}, ...children) => h(`svg:${tag}`, attrs, ...children);

/** Round tick values covering [lo, hi], about `count` of them. */
export function niceTicks(lo, hi, count = 5) {
  if (!Number.isFinite(lo) || !Number.isFinite(hi)) return [];
  if (lo === hi) {
    const pad = Math.abs(lo) * 0.1 || 1;
    lo -= pad;
    hi += pad;
  }
  const raw = (hi - lo) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || 10 * mag;
  // The ticks enclose [lo, hi]: the first is at or below lo, the last at or above hi, so charts
  // that take their range from the outer ticks never draw outside their axes.
  const out = [];
  const start = Math.floor(lo / step + 1e-9) * step;
  for (let i = 0; i <= 1000; i++) {
    const v = Number((start + i * step).toPrecision(12));
    out.push(v);
    if (v >= hi - step * 1e-9) break;
  }
  return out.length >= 2 ? out : [lo, hi];
}

function tickLabel(v) {
  if (Math.abs(v) >= 1000) return formatNumber(v);
  return Number(v.toPrecision(6)).toString();
}

/**
 * A live line chart of job metrics.
 * series: [{key, name, kind: "line" | "dashed" | "markers", className}]
 * update(points, {xMax}) redraws from an array of metrics objects ({step, [key]: number}).
 */
export function createMetricChart({ title, yLabel, series, id }) {
  const root = svg("svg", {
    viewBox: `0 0 ${W} ${H}`,
    class: "chart",
    role: "img",
    "aria-label": `${title}: no data yet`,
    id,
  });
  const plot = svg("g", { transform: `translate(${M.left},${M.top})` });
  const grid = svg("g", { class: "grid" });
  const layers = svg("g", { class: "series" });
  const hover = svg("g", { class: "hover", visibility: "hidden" });
  const hoverLine = svg("line", { y1: 0, y2: PH, class: "hover-line" });
  const hoverBox = svg("g", { class: "hover-box" });
  hover.append(hoverLine, hoverBox);
  const capture = svg("rect", { width: PW, height: PH, class: "capture" });
  const clipId = `${id || "chart"}-clip`;
  layers.setAttribute("clip-path", `url(#${clipId})`);
  // Markers at the plot's edge stay whole: the clip box is a marker's size larger than the plot.
  const clip = svg("clipPath", { id: clipId }, svg("rect", { x: -8, y: -8, width: PW + 16, height: PH + 16 }));
  plot.append(svg("defs", {}, clip), grid, layers, hover, capture);
  root.append(
    plot,
    svg("text", { x: M.left + PW / 2, y: H - 6, class: "axis-label", "text-anchor": "middle" }, "step"),
    svg("text", { transform: `translate(14,${M.top + PH / 2}) rotate(-90)`, class: "axis-label", "text-anchor": "middle" }, yLabel),
  );

  const legend = h(
    "ul",
    { class: "legend", "aria-label": `${title} legend` },
    series.map((s) =>
      h("li", { dataset: { series: s.key } }, svg("svg", { viewBox: "0 0 28 12", class: "swatch", "aria-hidden": "true" }, swatch(s)), s.name, h("span", { class: "no-data-note" }, " (no data)")),
    ),
  );
  const emptyNote = h("p", { class: "chart-empty muted" }, "Waiting for the first training step…");
  const tableHolder = h("div", { class: "table-wrap", tabindex: "0", role: "region", "aria-label": `${title} data` });
  const disclosure = h("details", { class: "chart-data" }, h("summary", {}, `${title} as a table`), tableHolder);
  const el = h("figure", { class: "chart-figure" }, h("figcaption", { class: "visually-hidden" }, title), root, emptyNote, legend, disclosure);

  let state = { points: [], xMax: 1, x: null, y: null };

  capture.addEventListener("pointermove", (e) => showHover(e));
  capture.addEventListener("pointerleave", () => hover.setAttribute("visibility", "hidden"));

  function showHover(e) {
    const { points, x, y } = state;
    if (!points.length || !x) return;
    const box = capture.getBoundingClientRect();
    const px = ((e.clientX - box.left) / box.width) * PW;
    let best = points[0];
    for (const p of points) if (Math.abs(x(p.step) - px) < Math.abs(x(best.step) - px)) best = p;
    hoverLine.setAttribute("x1", x(best.step));
    hoverLine.setAttribute("x2", x(best.step));
    const lines = [`step ${best.step}`, ...series.filter((s) => typeof best[s.key] === "number").map((s) => `${s.name}: ${best[s.key].toFixed(4)}`)];
    const bw = 210;
    const bx = x(best.step) + 10 + bw > PW ? x(best.step) - bw - 10 : x(best.step) + 10;
    replace(
      hoverBox,
      svg("rect", { x: bx, y: 4, width: bw, height: 8 + lines.length * 17, rx: 4, class: "hover-bg" }),
      lines.map((t, i) => svg("text", { x: bx + 8, y: 20 + i * 17, class: "hover-text" }, t)),
    );
    hover.setAttribute("visibility", "visible");
  }

  function update(points, { xMax } = {}) {
    const pts = points.filter((p) => typeof p.step === "number").sort((a, b) => a.step - b.step);
    const values = pts.flatMap((p) => series.map((s) => p[s.key]).filter((v) => typeof v === "number" && Number.isFinite(v)));
    const maxStep = Math.max(xMax || 0, ...pts.map((p) => p.step), 1);
    emptyNote.hidden = values.length > 0;
    replace(grid);
    replace(layers);
    root.dataset.points = String(pts.length);
    for (const s of series) {
      const n = pts.filter((p) => typeof p[s.key] === "number" && Number.isFinite(p[s.key])).length;
      root.dataset[`${camel(s.key)}Points`] = String(n);
      legend.querySelector(`[data-series="${s.key}"]`)?.classList.toggle("no-data", n === 0);
    }
    if (!values.length) {
      state = { points: [], x: null, y: null };
      root.setAttribute("aria-label", `${title}: no data yet`);
      replace(tableHolder, h("p", { class: "muted" }, "No data yet."));
      return;
    }
    let lo = Math.min(...values);
    let hi = Math.max(...values);
    const pad = (hi - lo) * 0.08 || Math.abs(hi) * 0.05 || 0.1;
    lo = Math.max(lo - pad, Math.min(...values) >= 0 ? 0 : -Infinity);
    hi += pad;
    const yt = niceTicks(lo, hi);
    const y0 = yt[0];
    const y1 = yt[yt.length - 1];
    const xt = niceTicks(0, maxStep, 6).filter((v) => Number.isInteger(v) && v <= maxStep);
    const x = (step) => (step / maxStep) * PW;
    const y = (v) => PH - ((v - y0) / (y1 - y0)) * PH;
    state = { points: pts, x, y };

    for (const v of yt) {
      grid.append(
        svg("line", { x1: 0, x2: PW, y1: y(v), y2: y(v), class: "gridline" }),
        svg("text", { x: -8, y: y(v) + 4, "text-anchor": "end", class: "tick" }, tickLabel(v)),
      );
    }
    for (const v of xt) {
      grid.append(
        svg("line", { x1: x(v), x2: x(v), y1: PH, y2: PH + 5, class: "axis" }),
        svg("text", { x: x(v), y: PH + 20, "text-anchor": "middle", class: "tick" }, tickLabel(v)),
      );
    }
    grid.append(svg("line", { x1: 0, x2: PW, y1: PH, y2: PH, class: "axis" }), svg("line", { x1: 0, x2: 0, y1: 0, y2: PH, class: "axis" }));

    for (const s of series) {
      const sp = pts.filter((p) => typeof p[s.key] === "number" && Number.isFinite(p[s.key]));
      const g = svg("g", { class: `series-${s.className}`, dataset: { series: s.key, count: sp.length } });
      if (s.kind !== "markers" && sp.length) {
        g.append(svg("polyline", { points: sp.map((p) => `${x(p.step).toFixed(1)},${y(p[s.key]).toFixed(1)}`).join(" "), class: s.kind === "dashed" ? "line dashed" : "line" }));
      }
      // A lone point, or a sparse series, needs visible markers; dense train curves read better without.
      if (s.kind !== "line" || sp.length <= 40) {
        for (const p of sp) g.append(marker(s, x(p.step), y(p[s.key]), p));
      }
      layers.append(g);
    }

    const last = pts[pts.length - 1];
    const latest = series
      .map((s) => {
        const p = [...pts].reverse().find((q) => typeof q[s.key] === "number");
        return p ? `${s.name} ${p[s.key].toFixed(3)} at step ${p.step}` : null;
      })
      .filter(Boolean);
    root.setAttribute("aria-label", `${title}, ${pts.length} points up to step ${last.step} of ${maxStep}. Latest: ${latest.join("; ")}.`);

    replace(
      tableHolder,
      h(
        "table",
        { class: "data compact" },
        h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "step"), series.map((s) => h("th", { scope: "col" }, s.name)))),
        h(
          "tbody",
          {},
          pts.map((p) => h("tr", {}, h("td", {}, p.step), series.map((s) => h("td", {}, typeof p[s.key] === "number" ? p[s.key].toFixed(4) : "")))),
        ),
      ),
    );
  }

  return { el, update };
}

function camel(key) {
  return key.replace(/_([a-z])/g, (_, c) => c.toUpperCase());
}

function marker(s, cx, cy, p) {
  const label = `step ${p.step}: ${s.name} ${p[s.key].toFixed(4)}`;
  if (s.kind === "markers") {
    const r = 6;
    return svg("path", { d: `M${cx},${cy - r} L${cx + r},${cy} L${cx},${cy + r} L${cx - r},${cy} Z`, class: "pt diamond" }, svg("title", {}, label));
  }
  return svg("circle", { cx, cy, r: s.kind === "dashed" ? 3.5 : 2.5, class: "pt" }, svg("title", {}, label));
}

function swatch(s) {
  if (s.kind === "markers") return svg("g", { class: `series-${s.className}` }, svg("path", { d: "M14,1 L19,6 L14,11 L9,6 Z", class: "pt diamond" }));
  return svg(
    "g",
    { class: `series-${s.className}` },
    svg("line", { x1: 1, x2: 27, y1: 6, y2: 6, class: s.kind === "dashed" ? "line dashed" : "line" }),
    s.kind === "dashed" ? svg("circle", { cx: 14, cy: 6, r: 3, class: "pt" }) : null,
  );
}

/**
 * A bar histogram. bins: [{lo, hi, count}]. `limit` draws a labelled vertical rule (for example
 * the context length, past which examples are truncated).
 */
export function createHistogram({ title, xLabel, bins, limit, limitLabel }) {
  const width = 640;
  const height = 240;
  const m = { top: 14, right: 16, bottom: 46, left: 56 };
  const pw = width - m.left - m.right;
  const ph = height - m.top - m.bottom;
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart histogram", role: "img", dataset: { bins: bins.length } });
  const total = bins.reduce((a, b) => a + b.count, 0);
  const maxCount = Math.max(1, ...bins.map((b) => b.count));
  const lo = Math.min(...bins.map((b) => b.lo));
  const hi = Math.max(...bins.map((b) => b.hi), limit && limit < Math.max(...bins.map((b) => b.hi)) * 1.5 ? limit : 0);
  const x = (v) => ((v - lo) / (hi - lo || 1)) * pw;
  const y = (c) => ph - (c / maxCount) * ph;
  const g = svg("g", { transform: `translate(${m.left},${m.top})` });
  for (const t of niceTicks(0, maxCount, 4).filter((t) => Number.isInteger(t))) {
    g.append(svg("line", { x1: 0, x2: pw, y1: y(t), y2: y(t), class: "gridline" }), svg("text", { x: -8, y: y(t) + 4, "text-anchor": "end", class: "tick" }, tickLabel(t)));
  }
  for (const b of bins) {
    const bw = Math.max(1, x(b.hi) - x(b.lo) - 1);
    g.append(
      svg("rect", { x: x(b.lo) + 0.5, y: y(b.count), width: bw, height: ph - y(b.count), class: "bar" }, svg("title", {}, `${binLabel(b)} tokens: ${b.count} example(s)`)),
    );
  }
  for (const t of niceTicks(lo, hi, 6).filter((t) => t >= lo && t <= hi && (hi - lo < 6 || Number.isInteger(t)))) {
    g.append(svg("line", { x1: x(t), x2: x(t), y1: ph, y2: ph + 5, class: "axis" }), svg("text", { x: x(t), y: ph + 19, "text-anchor": "middle", class: "tick" }, tickLabel(t)));
  }
  g.append(svg("line", { x1: 0, x2: pw, y1: ph, y2: ph, class: "axis" }));
  if (limit && limit <= hi) {
    g.append(
      svg("line", { x1: x(limit), x2: x(limit), y1: 0, y2: ph, class: "limit" }),
      svg("text", { x: x(limit) - 4, y: 12, "text-anchor": "end", class: "limit-label" }, limitLabel || `limit ${limit}`),
    );
  }
  root.append(g, svg("text", { x: m.left + pw / 2, y: height - 6, "text-anchor": "middle", class: "axis-label" }, xLabel));
  root.setAttribute("aria-label", `${title}: ${total} examples in ${bins.length} bins from ${formatNumber(lo)} to ${formatNumber(hi)} tokens.`);
  const rows = bins.map((b) => h("tr", {}, h("td", {}, binLabel(b)), h("td", {}, b.count)));
  return h(
    "figure",
    { class: "chart-figure histogram-figure" },
    h("figcaption", {}, title),
    root,
    h(
      "details",
      { class: "chart-data" },
      h("summary", {}, `${title} as a table`),
      h(
        "div",
        { class: "table-wrap", tabindex: "0", role: "region", "aria-label": `${title} data` },
        h("table", { class: "data compact" }, h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "tokens"), h("th", { scope: "col" }, "examples"))), h("tbody", {}, rows)),
      ),
    ),
  );
}

function binLabel(b) {
  return b.label ?? `${formatNumber(b.lo)}–${formatNumber(b.hi)}`;
}

/** Equal-width bins over raw values (used when the report carries per-example counts, not bins). */
export function binValues(values, nBins = 20) {
  if (!values.length) return [];
  const lo = Math.min(...values);
  const hi = Math.max(...values);
  const width = Math.max(1, Math.ceil((hi - lo + 1) / nBins));
  const bins = [];
  for (let b = lo; b <= hi; b += width) bins.push({ lo: b, hi: b + width, count: 0 });
  for (const v of values) bins[Math.min(bins.length - 1, Math.floor((v - lo) / width))].count++;
  return bins;
}

/**
 * Rates with 95% intervals, one row per category: two dots with whiskers per row (base and
 * fine-tuned), on a shared 0..100% axis. rows: [{label, a: {rate, lo, hi}, b: {...}}].
 */
export function createIntervalPlot({ title, rows, aName, bName }) {
  const width = 640;
  const rowH = 34;
  // Room for the longest row label (about 7 px a character at the chart's font size).
  const longest = Math.max(...rows.map((r) => String(r.label).length), 8);
  const m = { top: 10, right: 20, bottom: 36, left: Math.min(320, longest * 7 + 20) };
  const pw = width - m.left - m.right;
  const height = m.top + m.bottom + rows.length * rowH;
  const x = (v) => Math.max(0, Math.min(1, v)) * pw;
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart intervals", role: "img" });
  const g = svg("g", { transform: `translate(${m.left},${m.top})` });
  for (const t of [0, 0.25, 0.5, 0.75, 1]) {
    g.append(
      svg("line", { x1: x(t), x2: x(t), y1: 0, y2: rows.length * rowH, class: "gridline" }),
      svg("text", { x: x(t), y: rows.length * rowH + 18, "text-anchor": "middle", class: "tick" }, `${t * 100}%`),
    );
  }
  rows.forEach((r, i) => {
    const cy = i * rowH + rowH / 2;
    g.append(svg("text", { x: -10, y: cy + 4, "text-anchor": "end", class: "tick row-label" }, r.label));
    for (const [k, v, cls, dy] of [["a", r.a, "base", -6], ["b", r.b, "tuned", 6]]) {
      if (!v || typeof v.rate !== "number") continue;
      const yy = cy + dy;
      const tip = `${r.label}, ${k === "a" ? aName : bName}: ${(v.rate * 100).toFixed(1)}%` + (typeof v.lo === "number" ? ` (95% CI ${(v.lo * 100).toFixed(1)}–${(v.hi * 100).toFixed(1)}%)` : "");
      const mark = svg("g", { class: `interval interval-${cls}` }, svg("title", {}, tip));
      if (typeof v.lo === "number" && typeof v.hi === "number") {
        mark.append(svg("line", { x1: x(v.lo), x2: x(v.hi), y1: yy, y2: yy, class: "whisker" }));
      }
      mark.append(cls === "base" ? svg("circle", { cx: x(v.rate), cy: yy, r: 4.5, class: "dot" }) : svg("rect", { x: x(v.rate) - 4.5, y: yy - 4.5, width: 9, height: 9, class: "dot" }));
      g.append(mark);
    }
  });
  root.append(g);
  root.setAttribute("aria-label", `${title}. ${rows.map((r) => `${r.label}: ${aName} ${pct(r.a)}, ${bName} ${pct(r.b)}`).join("; ")}.`);
  const legend = h(
    "ul",
    { class: "legend" },
    h("li", {}, svg("svg", { viewBox: "0 0 16 12", class: "swatch", "aria-hidden": "true" }, svg("g", { class: "interval interval-base" }, svg("circle", { cx: 8, cy: 6, r: 4.5, class: "dot" }))), aName),
    h("li", {}, svg("svg", { viewBox: "0 0 16 12", class: "swatch", "aria-hidden": "true" }, svg("g", { class: "interval interval-tuned" }, svg("rect", { x: 3.5, y: 1.5, width: 9, height: 9, class: "dot" }))), bName),
  );
  return h("figure", { class: "chart-figure interval-figure" }, h("figcaption", { class: "visually-hidden" }, title), root, legend);
}

function pct(v) {
  return v && typeof v.rate === "number" ? `${(v.rate * 100).toFixed(1)}%` : "n/a";
}
