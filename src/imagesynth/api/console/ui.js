// Small DOM helpers. Text from the service (prompts, names, messages) goes in as text nodes,
// never as HTML.

export const $ = (sel, root = document) => root.querySelector(sel);

/** el("a", {href: "/x", "data-testid": "y"}, "text", child) */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

export function showMessage(text, kind = "error") {
  const box = $("#message");
  box.textContent = text;
  box.dataset.kind = kind;
  box.hidden = false;
}

export function clearMessage() {
  const box = $("#message");
  box.hidden = true;
  box.textContent = "";
}

export function fmtTime(value) {
  if (value === undefined || value === null || value === "") return "—";
  const d = typeof value === "number" ? new Date(value) : new Date(String(value).replace(" ", "T"));
  return Number.isNaN(d.getTime()) ? String(value) : d.toLocaleString();
}

export function fmtSeconds(s) {
  if (s === null || s === undefined) return "—";
  if (s < 60) return `${s.toFixed(1)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  return `${(s / 3600).toFixed(1)} h`;
}

export function setBusy(button, busy) {
  button.disabled = busy;
  button.setAttribute("aria-busy", busy ? "true" : "false");
}
