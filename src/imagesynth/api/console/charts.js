// Inline SVG charts (no library): stacked bars per period and series, and horizontal bars.
import { el } from "./ui.js";

const NS = "http://www.w3.org/2000/svg";
const COLORS = ["#1d4ed8", "#b45309", "#047857", "#7e22ce", "#be123c", "#0e7490", "#4d7c0f", "#c2410c"];

function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function legend(names) {
  return el("div", { class: "legend" }, names.map((n, i) => el("span", { class: `swatch-${i % COLORS.length}` }, n)));
}

const widthOf = (node) => Math.max(280, Math.round(node.getBoundingClientRect().width) || 400);

function niceMax(v) {
  if (v <= 0) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

/** periods: ["2026-12-01", ...]; series: {model: [value per period]}; fmt: value -> text. */
export function stackedBars(container, periods, series, { fmt = String, label = "" } = {}) {
  const names = Object.keys(series);
  container.replaceChildren();
  if (!periods.length || !names.length) {
    container.append(el("p", { class: "hint" }, "Nothing in this period."));
    return;
  }
  // Drawn at the size shown, so that its text is as large as the page's.
  const W = widthOf(container), H = 220, left = 44, bottom = 30, top = 10;
  const totals = periods.map((_, i) => names.reduce((s, n) => s + (series[n][i] || 0), 0));
  const max = niceMax(Math.max(...totals));
  const plotH = H - top - bottom;
  const slot = (W - left - 10) / periods.length;
  const bar = Math.max(4, Math.min(48, slot * 0.7));
  const summary = periods.map((p, i) => `${p}: ${fmt(totals[i])}`).join("; ");
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": `${label}. ${summary}` });
  for (let k = 0; k <= 4; k++) {
    const y = top + plotH - (plotH * k) / 4;
    root.append(svg("line", { x1: left, x2: W - 10, y1: y, y2: y, stroke: "#cbd5e1" }));
    root.append(svg("text", { x: left - 6, y: y + 4, "text-anchor": "end" }, fmt((max * k) / 4)));
  }
  periods.forEach((p, i) => {
    const x = left + slot * i + (slot - bar) / 2;
    let y = top + plotH;
    names.forEach((n, j) => {
      const v = series[n][i] || 0;
      if (!v) return;
      const h = (plotH * v) / max;
      y -= h;
      root.append(svg("rect", {
        x, y, width: bar, height: h, fill: COLORS[j % COLORS.length],
        "data-model": n, "data-period": p, "data-value": v,
      }, svg("title", {}, `${n}, ${p}: ${fmt(v)}`)));
    });
    const every = Math.ceil(periods.length / Math.max(1, Math.floor((W - left) / 44)));
    if (i % every === 0) {
      root.append(svg("text", { x: x + bar / 2, y: H - bottom + 16, "text-anchor": "middle" }, p.slice(5)));
    }
  });
  container.append(root, legend(names));
}

/** rows: [{name, value (0..1) or null, note}] as horizontal bars, in percent. */
export function rateBars(container, rows, { label = "" } = {}) {
  container.replaceChildren();
  if (!rows.length) {
    container.append(el("p", { class: "hint" }, "Nothing in this period."));
    return;
  }
  const W = widthOf(container), row = 26, left = Math.min(170, Math.round(W * 0.45)), H = rows.length * row + 10;
  const summary = rows.map((r) => `${r.name}: ${r.value === null ? "no finished tasks" : `${Math.round(r.value * 100)}%`}`).join("; ");
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": `${label}. ${summary}` });
  rows.forEach((r, i) => {
    const y = 5 + i * row;
    root.append(svg("text", { x: left - 8, y: y + 15, "text-anchor": "end" }, r.name));
    root.append(svg("rect", { x: left, y: y + 3, width: W - left - 60, height: row - 8, fill: "#e2e8f0" }));
    if (r.value !== null) {
      root.append(svg("rect", {
        x: left, y: y + 3, width: (W - left - 60) * r.value, height: row - 8,
        fill: r.value >= 0.9 ? "#047857" : r.value >= 0.5 ? "#b45309" : "#b91c1c",
        "data-model": r.name, "data-value": r.value,
      }, svg("title", {}, `${r.name}: ${Math.round(r.value * 100)}% (${r.note})`)));
    }
    root.append(svg("text", { x: W - 54, y: y + 15 }, r.value === null ? "—" : `${Math.round(r.value * 100)}%`));
  });
  container.append(root);
}
