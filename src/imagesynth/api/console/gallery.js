// The gallery: this key's tasks of the last 24 h (GET /api/v1/tasks), each queried for its
// images; cancel for PENDING ones, and "use these settings again" for requests this tab made.
import { ApiError, cancelTask, explain, getTask, user } from "./api.js";
import { applySettings, rememberedRequests } from "./playground.js";
import { $, el, fmtTime, showMessage } from "./ui.js";

const PAGE_SIZE = 24;
const QUERY_GAP_MS = 120; // queries share the key's query rate (20/s) with everything else
let shown = PAGE_SIZE;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** A task's reply, paced, retried after a 429; null when it cannot be had. */
async function details(id) {
  for (let attempt = 0; attempt < 4; attempt++) {
    try {
      return await getTask(id);
    } catch (err) {
      if (!(err instanceof ApiError) || err.status !== 429) return null;
      await sleep(500 * (attempt + 1));
    }
  }
  return null;
}

export async function loadGallery({ more = false } = {}) {
  shown = more ? shown + PAGE_SIZE : PAGE_SIZE;
  const list = await user(`/api/v1/tasks?page_size=${Math.min(shown, 100)}`);
  const items = list.data || [];
  // Only ended tasks have images or an error to show; the list says enough of the others.
  const replies = [];
  for (const t of items) {
    if (["SUCCEEDED", "FAILED"].includes(t.status)) {
      replies.push(await details(t.task_id));
      await sleep(QUERY_GAP_MS);
    } else replies.push(undefined);
  }
  const remembered = rememberedRequests();
  const listed = new Set(items.map((t) => t.task_id));
  const cards = items.map((t, i) => card(t, replies[i], remembered[t.task_id]));
  // Tasks this tab made that the list leaves out: on a later page, or past retention and
  // deleted with their files, which their query (UNKNOWN) tells.
  const unlisted = Object.entries(remembered).filter(([id]) => !listed.has(id)).slice(0, 10);
  for (const [id, r] of unlisted) {
    const reply = await details(id);
    if (reply && reply.output.task_status === "UNKNOWN") cards.push(expiredCard(id, r));
  }
  const gallery = $("#gallery");
  gallery.replaceChildren(...cards);
  if (!cards.length) gallery.append(el("li", { class: "hint" }, "No tasks in the last 24 h."));
  const moreButton = $("#gallery-more");
  moreButton.hidden = list.total <= items.length || items.length >= 100;
  $("#gallery-count").textContent = `${items.length} of ${list.total} tasks`;
}

function expiredCard(id, remembered) {
  const body = remembered.body;
  return el("li", { "data-testid": "gallery-item", "data-task-id": id, "data-status": "EXPIRED" },
    el("div", { class: "status status-EXPIRED" }, "EXPIRED"),
    el("div", { class: "meta" }, `${body.model} · ${body.parameters.size || "default size"}`),
    el("p", { class: "meta" }, "Expired: the task and its images are past the service's retention and were deleted."),
    el("div", { class: "buttons" }, el("button", { type: "button", class: "secondary", onclick: () => applySettings(body) }, "Use these settings again")));
}

function card(item, reply, remembered) {
  // reply: undefined (not asked: no images yet), null (could not be had), or the task's reply.
  const out = reply ? reply.output : { task_status: item.status };
  const status = out.task_status === "UNKNOWN" ? "EXPIRED" : item.status;
  const body = remembered ? remembered.body : null;
  const size = body ? body.parameters.size : (reply && reply.usage && reply.usage.size) || "";
  const sizeSlot = el("span", { "data-testid": "gallery-size" }, size ? ` · ${size}` : "");
  const thumbs = el("div", { class: "thumbs" });
  const links = el("div", { class: "meta" });
  (out.results || []).forEach((r, i) => {
    if (!r.url) return;
    const img = el("img", { src: r.url, alt: `Image ${i + 1} of task ${item.task_id}`, loading: "lazy", "data-testid": "gallery-thumb" });
    img.addEventListener("error", () => {
      img.replaceWith(el("span", { class: "status status-EXPIRED" }, "image expired"));
    }, { once: true });
    if (!size && i === 0) {
      // Not made from this tab: the image itself says its size (always the one requested).
      img.addEventListener("load", () => { sizeSlot.textContent = ` · ${img.naturalWidth}*${img.naturalHeight}`; }, { once: true });
    }
    thumbs.append(el("a", { href: r.url, target: "_blank", rel: "noopener", title: "Full image" }, img));
    links.append(el("a", { href: r.url, download: `${item.task_id}-${i}.png` }, `Download ${i + 1}`), " ");
  });
  if (reply && out.choices) {
    for (const c of out.choices) for (const part of c.message.content) {
      if (part.image) thumbs.append(el("a", { href: part.image, target: "_blank", rel: "noopener" }, el("img", { src: part.image, alt: "Result", loading: "lazy" })));
    }
  }
  const buttons = el("div", { class: "buttons" });
  if (status === "PENDING") {
    buttons.append(el("button", {
      type: "button", class: "danger", "data-testid": "cancel-task",
      onclick: async (e) => {
        e.target.disabled = true;
        try { await cancelTask(item.task_id); await loadGallery(); } catch (err) { showMessage(explain(err)); e.target.disabled = false; }
      },
    }, "Cancel"));
  }
  const prompt = body ? body.input.prompt : out.results && out.results[0] && out.results[0].orig_prompt;
  const again = body || (prompt ? { model: item.model_name, input: { prompt }, parameters: size ? { size } : {} } : null);
  if (again) buttons.append(el("button", { type: "button", class: "secondary", "data-testid": "use-again", onclick: () => applySettings(again) }, "Use these settings again"));
  const details = el("details", {}, el("summary", {}, "Parameters"),
    el("pre", {}, JSON.stringify(body || { model: item.model_name, input: prompt ? { prompt } : {} }, null, 2)));
  return el("li", { "data-testid": "gallery-item", "data-task-id": item.task_id, "data-status": status },
    el("div", { class: `status status-${status}` }, status),
    el("div", {}, el("strong", {}, item.model_name), sizeSlot),
    prompt ? el("div", { class: "meta" }, prompt) : null,
    el("div", { class: "meta" }, `Submitted ${fmtTime(item.gmt_create)}`,
      item.end_time ? ` · ended ${fmtTime(item.end_time)}` : ""),
    status === "EXPIRED" ? el("p", { class: "meta" }, "Expired: the service has deleted this task.") : null,
    reply === null ? el("p", { class: "meta" }, "Its images could not be loaded just now: press Refresh.") : null,
    out.task_status === "FAILED" ? el("div", { class: "meta status-FAILED" }, `${out.code}: ${out.message}`) : null,
    thumbs, links, buttons, details);
}
