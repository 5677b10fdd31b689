// The operator pages, through the admin API (/admin/v1) with the admin credential: keys,
// usage charts, the queue and workers, recent failures.
import { admin, explain } from "./api.js";
import { rateBars, stackedBars } from "./charts.js";
import { $, clearMessage, el, fmtSeconds, fmtTime, setBusy, showMessage } from "./ui.js";

let models = []; // the catalog's model names, for the per-model limits
let queueTimer = null;

function limitsText(k) {
  const parts = [];
  if (k.free_tier_only) parts.push("free tier only");
  if (k.monthly_cap !== null) parts.push(`cap ${k.monthly_cap} ${k.currency}/month`);
  if (k.max_pending !== null) parts.push(`≤ ${k.max_pending} waiting`);
  for (const [m, o] of Object.entries(k.overrides || {})) {
    parts.push(`${m}: ${Object.entries(o).map(([a, b]) => `${a} ${b}`).join(", ")}`);
  }
  return parts.join("; ") || "defaults";
}

export async function loadKeys() {
  const [{ keys }, queue] = await Promise.all([admin("/admin/v1/keys"), admin("/admin/v1/queue")]);
  models = queue.models.map((m) => m.model);
  $("#edit-model").replaceChildren(el("option", { value: "" }, "(no model)"), ...models.map((m) => el("option", { value: m }, m)));
  const rows = keys.map((k) => el("tr", { "data-testid": "key-row", "data-key-name": k.name, "data-key-status": k.status },
    el("td", {}, k.name), el("td", {}, el("code", {}, k.prefix)),
    el("td", { class: k.status === "active" ? "status status-SUCCEEDED" : "status status-FAILED" }, k.status),
    el("td", {}, fmtTime(k.created_at)), el("td", {}, fmtTime(k.last_used_at)),
    el("td", {}, limitsText(k)),
    el("td", {},
      k.status === "active" ? el("button", {
        type: "button", class: "danger", "data-testid": "revoke-key", "aria-label": `Revoke key ${k.name}`,
        onclick: (e) => revoke(k, e.target),
      }, "Revoke") : null, " ",
      el("button", { type: "button", class: "secondary", "aria-label": `Set limits of key ${k.name}`, onclick: () => edit(k) }, "Limits"))));
  $("#keys-table tbody").replaceChildren(...rows);
}

async function revoke(key, button) {
  if (!window.confirm(`Revoke the key "${key.name}" (${key.prefix}…)? Clients using it are refused at once.`)) return;
  setBusy(button, true);
  try {
    await admin(`/admin/v1/keys/${encodeURIComponent(key.id)}/revoke`, { method: "POST" });
    showMessage(`Key "${key.name}" revoked.`, "info");
    await loadKeys();
  } catch (err) {
    showMessage(explain(err));
    setBusy(button, false);
  }
}

function edit(key) {
  const form = $("#key-edit");
  form.hidden = false;
  $("#key-edit-title").textContent = `Limits of "${key.name}"`;
  $("#edit-ref").value = key.id;
  $("#edit-cap").value = key.monthly_cap ?? "";
  $("#edit-pending").value = key.max_pending ?? "";
  $("#edit-free").checked = key.free_tier_only;
  $("#edit-model").value = "";
  for (const id of ["#edit-rps", "#edit-inflight", "#edit-quota"]) $(id).value = "";
  $("#edit-cap").focus();
}

const num = (id) => ($(id).value.trim() === "" ? null : Number($(id).value));

async function saveLimits(event) {
  event.preventDefault();
  const body = { monthly_cap: num("#edit-cap"), free_tier_only: $("#edit-free").checked };
  const pending = num("#edit-pending");
  if (pending !== null) body.max_pending = pending;
  const model = $("#edit-model").value;
  if (model) {
    body.model = model;
    for (const [id, field] of [["#edit-rps", "rps"], ["#edit-inflight", "in_flight"], ["#edit-quota", "free_quota"]]) {
      if (num(id) !== null) body[field] = num(id);
    }
  }
  try {
    await admin(`/admin/v1/keys/${encodeURIComponent($("#edit-ref").value)}`, { method: "PATCH", body });
    showMessage("Limits saved.", "info");
    $("#key-edit").hidden = true;
    await loadKeys();
  } catch (err) {
    showMessage(explain(err));
  }
}

async function createKey(event, useNewKey) {
  event.preventDefault();
  clearMessage();
  const name = $("#new-key-name").value.trim();
  if (!name) { showMessage("InvalidParameter: a key needs a name."); $("#new-key-name").focus(); return; }
  const body = { name };
  if ($("#new-key-cap").value !== "") body.monthly_cap = Number($("#new-key-cap").value);
  if ($("#new-key-pending").value !== "") body.max_pending = Number($("#new-key-pending").value);
  if ($("#new-key-free").checked) body.free_tier_only = true;
  try {
    const { secret, key } = await admin("/admin/v1/keys", { method: "POST", body });
    $("#new-secret").textContent = secret;
    $("#new-secret-box").hidden = false;
    $("#new-secret-box").dataset.keyName = key.name;
    $("#use-secret").onclick = () => {
      const s = $("#new-secret").textContent;
      hideSecret();
      useNewKey(s);
    };
    $("#key-create").reset();
    await loadKeys();
    $("#new-secret").focus();
  } catch (err) {
    showMessage(explain(err));
  }
}

/** The secret is shown once: gone from the page as soon as it was used or the page left. */
function hideSecret() {
  $("#new-secret").textContent = "";
  $("#new-secret-box").hidden = true;
}

export async function loadUsage() {
  const since = $("#usage-since").value;
  const { usage } = await admin(`/admin/v1/usage?by=day&since=${encodeURIComponent(since)}`);
  const periods = [...new Set(usage.map((r) => r.period))].sort();
  const names = [...new Set(usage.map((r) => r.model))].sort();
  const images = {}, amount = {};
  const totals = {};
  let currency = "";
  for (const n of names) { images[n] = periods.map(() => 0); amount[n] = periods.map(() => 0); }
  for (const r of usage) {
    const i = periods.indexOf(r.period);
    images[r.model][i] += r.images;
    amount[r.model][i] += Number(r.amount);
    currency = r.currency;
    const t = (totals[r.model] ||= { calls: 0, succeeded: 0, failed: 0, images: 0, amount: 0 });
    t.calls += r.calls; t.succeeded += r.succeeded; t.failed += r.failed; t.images += r.images; t.amount += Number(r.amount);
  }
  stackedBars($("#chart-images"), periods, images, { label: "Images per day", fmt: (v) => String(Math.round(v * 10) / 10) });
  stackedBars($("#chart-amount"), periods, amount, { label: `Amount per day (${currency})`, fmt: (v) => v.toFixed(2) });
  const rate = (t) => (t.succeeded + t.failed ? t.succeeded / (t.succeeded + t.failed) : null);
  rateBars($("#chart-rate"), names.map((n) => ({ name: n, value: rate(totals[n]), note: `${totals[n].succeeded} of ${totals[n].succeeded + totals[n].failed} finished` })), { label: "Success rate" });
  $("#usage-table tbody").replaceChildren(...names.map((n) => {
    const t = totals[n];
    const r = rate(t);
    return el("tr", { "data-testid": "usage-row", "data-model": n, "data-images": t.images },
      el("th", { scope: "row" }, n), el("td", { class: "num" }, t.calls), el("td", { class: "num" }, t.succeeded),
      el("td", { class: "num" }, t.failed), el("td", { class: "num" }, t.images),
      el("td", { class: "num" }, r === null ? "—" : `${Math.round(r * 100)}%`),
      el("td", { class: "num" }, `${t.amount.toFixed(2)} ${currency}`));
  }));
}

export async function loadQueue() {
  const q = await admin("/admin/v1/queue");
  $("#queue-table tbody").replaceChildren(...q.models.map((m) => el("tr", { "data-testid": "queue-row", "data-model": m.model },
    el("th", { scope: "row" }, m.model), el("td", { class: "num" }, m.waiting), el("td", { class: "num" }, m.running),
    el("td", { class: "num" }, fmtSeconds(m.oldest_wait_seconds)),
    el("td", { class: m.live_workers ? "num" : "num status-FAILED" }, m.live_workers || "none"))));
  const workers = q.workers.map((w) => el("tr", { "data-testid": "worker-row" },
    el("td", {}, el("code", {}, w.worker_id)), el("td", {}, w.models.join(", ")),
    el("td", {}, `${fmtSeconds(w.seen_seconds_ago)} ago`)));
  $("#workers-table tbody").replaceChildren(...(workers.length ? workers : [el("tr", {}, el("td", { colspan: 3 }, "No live worker."))]));
  $("#queue-updated").textContent = `Updated ${new Date().toLocaleTimeString()}`;
  clearTimeout(queueTimer);
  queueTimer = setTimeout(() => {
    if (location.hash === "#/queue" && !document.hidden) loadQueue().catch(() => {});
  }, 3000);
}

export async function loadFailures() {
  const { failures } = await admin("/admin/v1/failures?limit=100");
  const rows = failures.map((f) => el("tr", { "data-testid": "failure-row", "data-code": f.code },
    el("td", {}, fmtTime(f.finished_at)), el("td", {}, f.model), el("td", {}, el("code", {}, f.code)),
    el("td", {}, f.message), el("td", {}, el("code", {}, f.task_id)), el("td", {}, el("code", {}, f.api_key_id))));
  $("#failures-table tbody").replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colspan: 6 }, "No failed task."))]));
}

export function setupOperator(useNewKey) {
  $("#key-create").addEventListener("submit", (e) => createKey(e, useNewKey));
  $("#key-edit").addEventListener("submit", saveLimits);
  $("#edit-cancel").addEventListener("click", () => { $("#key-edit").hidden = true; });
  $("#copy-secret").addEventListener("click", () => navigator.clipboard.writeText($("#new-secret").textContent).catch(() => {}));
  $("#usage-form").addEventListener("submit", (e) => { e.preventDefault(); loadUsage().catch((err) => showMessage(explain(err))); });
  $("#queue-refresh").addEventListener("click", () => loadQueue().catch((err) => showMessage(explain(err))));
  $("#failures-refresh").addEventListener("click", () => loadFailures().catch((err) => showMessage(explain(err))));
  window.addEventListener("hashchange", () => { if (location.hash !== "#/keys") hideSecret(); });
}
