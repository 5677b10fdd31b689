// The playground: a form built from the catalog's rules, submitted through the public API,
// followed to its end with a progress bar, its images shown with their seed and actual_prompt.
import { cancelTask, explain, followTask, submit, uploadReference, user } from "./api.js";
import { SNIPPETS } from "./snippets.js";
import { $, clearMessage, el, setBusy, showMessage } from "./ui.js";

let catalog = []; // the models' rules (GET /console/api/models)
let snippetKind = "python";
let running = null; // the AbortController of the task being followed

const REQUESTS = "imagesynth.requests"; // task id -> the request body, this tab only

export function rememberedRequests() {
  try { return JSON.parse(sessionStorage.getItem(REQUESTS) || "{}"); } catch { return {}; }
}

function remember(taskId, body) {
  const all = rememberedRequests();
  all[taskId] = { body, at: Date.now() };
  const ids = Object.keys(all).sort((a, b) => all[b].at - all[a].at).slice(0, 200);
  sessionStorage.setItem(REQUESTS, JSON.stringify(Object.fromEntries(ids.map((i) => [i, all[i]]))));
}

const rulesOf = (name) => catalog.find((m) => m.name === name);

export async function loadCatalog() {
  if (catalog.length) return;
  const { models } = await user("/console/api/models");
  catalog = models;
  const select = $("#model");
  select.replaceChildren(...models.map((m) => el("option", { value: m.name }, m.demo ? `${m.name} (demo weights)` : m.name)));
  const preferred = models.find((m) => m.name === "wan2.2-t2i-flash") || models[0];
  if (preferred) select.value = preferred.name;
  adaptForm();
}

function sizeHint(m) {
  if (m.sizes.length) return `One of ${m.sizes.join(", ")}.`;
  return `Any ${m.size_rule.replace(/^W\*H/, "W*H")}.`;
}

/** The form follows the chosen model's rules: sizes, n, styles, reference, steps, guidance. */
function adaptForm() {
  const m = rulesOf($("#model").value);
  if (!m) return;
  $("#model-hint").textContent = m.price !== "0" && Number(m.price) > 0 ? `${m.price} ${m.currency} per image.` : "";
  const slot = $("#size-slot");
  const previous = $("#size") ? $("#size").value : "";
  let size;
  if (m.sizes.length) {
    size = el("select", { id: "size", name: "size", "data-testid": "size", "aria-describedby": "size-hint" },
      m.sizes.map((s) => el("option", { value: s }, s)));
    size.value = m.sizes.includes(previous) ? previous : m.default_size;
  } else {
    size = el("input", {
      id: "size", name: "size", "data-testid": "size", "aria-describedby": "size-hint",
      pattern: "\\d+\\*\\d+", inputmode: "numeric", spellcheck: "false",
    });
    size.value = previous && !m.sizes.includes(previous) && fits(m, previous) ? previous : m.default_size;
  }
  slot.replaceChildren(size);
  $("#size-hint").textContent = sizeHint(m);
  const n = $("#n");
  n.max = String(m.n_max);
  n.value = String(Math.min(Number(n.value) || 1, m.n_max));
  n.disabled = m.n_max === 1;
  const steps = $("#steps");
  steps.max = String(m.steps_max);
  steps.placeholder = String(m.steps_default);
  const g = $("#guidance");
  g.min = String(m.guidance_min);
  g.max = String(m.guidance_max);
  g.placeholder = String(m.guidance_default);
  $("#seed").max = String(m.seed_max);
  $("#prompt").maxLength = m.prompt_max_chars;
  $("#negative_prompt").maxLength = m.negative_prompt_max_chars;
  $("#prompt_extend").checked = m.prompt_extend_default;
  $("#style-field").hidden = !m.styles.length;
  $("#style").replaceChildren(el("option", { value: "" }, "(none)"), ...m.styles.map((s) => el("option", { value: s }, s)));
  $("#ref-field").hidden = !m.reference_images;
  $("#ref_mode").replaceChildren(...m.ref_modes.map((r) => el("option", { value: r }, r)));
  updateCount();
  updateSnippet();
}

function fits(m, text) {
  const match = /^(\d+)\*(\d+)$/.exec(text.trim());
  if (!match) return false;
  const [w, h] = [Number(match[1]), Number(match[2])];
  if (m.sizes.length) return m.sizes.includes(text.trim());
  return w >= m.min_side && w <= m.max_side && h >= m.min_side && h <= m.max_side
    && w * h >= m.min_pixels && w * h <= m.max_pixels
    && (!m.max_aspect || Math.max(w, h) <= m.max_aspect * Math.min(w, h));
}

function updateCount() {
  const m = rulesOf($("#model").value);
  const len = $("#prompt").value.length;
  $("#prompt-count").textContent = m ? `${len} / ${m.prompt_max_chars} characters` : "";
}

const numberOf = (id) => {
  const v = $(id).value.trim();
  return v === "" ? undefined : Number(v);
};

/** The DashScope request the form describes (what is submitted, and what "Copy as" shows). */
export function requestBody() {
  const m = rulesOf($("#model").value) || { styles: [], reference_images: false };
  const input = { prompt: $("#prompt").value };
  const negative = $("#negative_prompt").value;
  if (negative.trim()) input.negative_prompt = negative;
  const parameters = { size: $("#size") ? $("#size").value.trim() : undefined, n: numberOf("#n") };
  const seed = numberOf("#seed");
  if (seed !== undefined) parameters.seed = seed;
  const steps = numberOf("#steps");
  if (steps !== undefined) parameters.steps = steps;
  const guidance = numberOf("#guidance");
  if (guidance !== undefined) parameters.guidance = guidance;
  parameters.prompt_extend = $("#prompt_extend").checked;
  parameters.watermark = $("#watermark").checked;
  if (m.styles.length && $("#style").value) parameters.style = $("#style").value;
  if (m.reference_images && $("#ref_file").files.length) {
    input.ref_img = "(uploaded when you press Generate)";
    parameters.ref_strength = numberOf("#ref_strength");
    parameters.ref_mode = $("#ref_mode").value;
  }
  for (const k of Object.keys(parameters)) if (parameters[k] === undefined) delete parameters[k];
  return { model: $("#model").value, input, parameters };
}

function updateSnippet() {
  $("#snippet").textContent = SNIPPETS[snippetKind](requestBody(), location.origin);
}

/** Fill the form from an earlier request ("use these settings again"). */
export function applySettings(body) {
  location.hash = "#/playground";
  const apply = () => {
    if (rulesOf(body.model)) $("#model").value = body.model;
    adaptForm();
    const p = body.parameters || {};
    $("#prompt").value = body.input.prompt || "";
    $("#negative_prompt").value = body.input.negative_prompt || "";
    if (p.size) $("#size").value = p.size;
    for (const k of ["n", "seed", "steps", "guidance"]) $(`#${k}`).value = p[k] === undefined ? "" : String(p[k]);
    if (p.prompt_extend !== undefined) $("#prompt_extend").checked = p.prompt_extend;
    $("#watermark").checked = Boolean(p.watermark);
    if (p.style) $("#style").value = p.style;
    updateCount();
    updateSnippet();
    $("#prompt").focus();
  };
  loadCatalog().then(apply).catch((err) => showMessage(explain(err)));
}

function setProgress(state, value, text) {
  const bar = $("#progress");
  bar.dataset.state = state;
  bar.value = value;
  bar.setAttribute("aria-valuetext", text);
  $("#task-status").textContent = text;
}

function showUpdate(u) {
  $("#cancel-run").hidden = u.status !== "PENDING"; // the API cancels waiting tasks only
  if (u.status === "PENDING") setProgress("pending", 2, "Waiting in the queue…");
  else if (u.status === "RUNNING") {
    const frac = u.steps ? Math.min(u.step / u.steps, 1) : 0;
    setProgress("running", 5 + Math.round(90 * frac), u.steps ? `Running: step ${u.step} of ${u.steps}` : "Running…");
  }
  if (u.preview) {
    const img = $("#preview");
    img.src = u.preview;
    img.hidden = false;
  }
}

function showResults(reply, body) {
  const out = reply.output;
  $("#cancel-run").hidden = true;
  const box = $("#results");
  box.replaceChildren();
  $("#preview").hidden = true;
  if (out.task_status === "SUCCEEDED") {
    setProgress("done", 100, "Done.");
    const seed0 = body.parameters.seed;
    (out.results || []).forEach((r, i) => {
      if (!r.url) {
        box.append(el("figure", {}, el("figcaption", { class: "status-FAILED" }, `Image ${i + 1}: ${r.code}: ${r.message}`)));
        return;
      }
      const seed = seed0 === undefined ? "random" : String(seed0 + i);
      box.append(el("figure", { "data-testid": "result" },
        el("a", { href: r.url, target: "_blank", rel: "noopener" },
          el("img", { src: r.url, alt: `Result ${i + 1}: ${r.orig_prompt || body.input.prompt}`, "data-testid": "result-image" })),
        el("figcaption", {},
          el("div", {}, `Seed: ${seed}`),
          r.actual_prompt ? el("div", { "data-testid": "actual-prompt" }, `actual_prompt: ${r.actual_prompt}`) : null,
          el("a", { href: r.url, download: `${out.task_id}-${i}.png` }, "Download"))));
    });
  } else if (out.task_status === "FAILED") {
    setProgress("failed", 0, `Failed: ${out.code}: ${out.message}`);
    showMessage(`${out.code}: ${out.message}`);
  } else {
    setProgress(out.task_status === "CANCELED" ? "canceled" : "idle", 0, `Task ${out.task_status}.`);
  }
}

async function generate(event) {
  event.preventDefault();
  clearMessage();
  const button = $("#generate");
  const m = rulesOf($("#model").value);
  if (!$("#prompt").value.trim()) { showMessage("InvalidParameter: enter a prompt."); $("#prompt").focus(); return; }
  if (m && $("#size") && !fits(m, $("#size").value)) {
    showMessage(`InvalidParameter: size must be ${m.size_rule} for ${m.name}.`);
    $("#size").focus();
    return;
  }
  if (running) running.abort();
  const controller = new AbortController();
  running = controller;
  setBusy(button, true);
  setProgress("submitting", 1, "Submitting…");
  $("#results").replaceChildren();
  const body = requestBody();
  try {
    let oss = false;
    if (body.input.ref_img) {
      body.input.ref_img = await uploadReference(body.model, $("#ref_file").files[0]);
      oss = true;
    }
    const created = await submit(body, { oss });
    const id = created.output.task_id;
    remember(id, body);
    $("#progress").dataset.taskId = id;
    showUpdate({ status: created.output.task_status });
    const reply = await followTask(id, showUpdate, controller.signal);
    if (running === controller) showResults(reply, body);
  } catch (err) {
    $("#cancel-run").hidden = true;
    setProgress("failed", 0, `Refused: ${explain(err)}`);
    showMessage(explain(err));
  } finally {
    if (running === controller) running = null;
    setBusy(button, false);
  }
}

async function cancelRun() {
  const id = $("#progress").dataset.taskId;
  if (!id) return;
  try {
    await cancelTask(id);
  } catch (err) {
    showMessage(explain(err)); // it may have started meanwhile: only waiting tasks cancel
  }
}

export function setupPlayground() {
  $("#cancel-run").addEventListener("click", cancelRun);
  $("#gen-form").addEventListener("submit", generate);
  $("#model").addEventListener("change", adaptForm);
  $("#gen-form").addEventListener("input", (e) => { if (e.target.id === "prompt") updateCount(); updateSnippet(); });
  $("#gen-form").addEventListener("change", updateSnippet);
  $("#dice").addEventListener("click", () => {
    const m = rulesOf($("#model").value);
    const max = (m ? m.seed_max : 2147483647) - 4;
    const r = new Uint32Array(1);
    crypto.getRandomValues(r);
    $("#seed").value = String(r[0] % max);
    updateSnippet();
  });
  for (const tab of document.querySelectorAll("[data-snippet]")) {
    tab.addEventListener("click", () => {
      snippetKind = tab.dataset.snippet;
      for (const t of document.querySelectorAll("[data-snippet]")) t.setAttribute("aria-selected", t === tab ? "true" : "false");
      updateSnippet();
    });
  }
  $("#copy-snippet").addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText($("#snippet").textContent);
      showMessage("Copied.", "info");
    } catch {
      showMessage("Copying was not allowed here: select the code and copy it by hand.", "info");
    }
  });
}
