// The gallery: this key's tasks of the last 24 h (GET /api/v1/tasks), each queried for its
// images; cancel for PENDING ones, and "use these settings again" for requests this tab made.
import { cancelTask, explain, getTask, user } from "./api.js";
import { applySettings, rememberedRequests } from "./playground.js";
import { $, el, fmtTime, showMessage } from "./ui.js";

const PAGE_SIZE = 50;

async function inBatches(items, size, fn) {
  const out = [];
  for (let i = 0; i < items.length; i += size) out.push(...(await Promise.all(items.slice(i, i + size).map(fn))));
  return out;
}

export async function loadGallery() {
  const list = await user(`/api/v1/tasks?page_size=${PAGE_SIZE}`);
  const items = list.data || [];
  const replies = await inBatches(items, 6, (t) => getTask(t.task_id).catch(() => null));
  const remembered = rememberedRequests();
  const listed = new Set(items.map((t) => t.task_id));
  const cards = items.map((t, i) => card(t, replies[i], remembered[t.task_id]));
  // Tasks this tab made that the service no longer lists: past retention, deleted with their files.
  for (const [id, r] of Object.entries(remembered)) {
    if (!listed.has(id)) cards.push(expiredCard(id, r));
  }
  const gallery = $("#gallery");
  gallery.replaceChildren(...cards);
  if (!cards.length) gallery.append(el("li", { class: "hint" }, "No tasks in the last 24 h."));
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
  const out = reply ? reply.output : { task_status: "UNKNOWN" };
  const status = out.task_status === "UNKNOWN" ? "EXPIRED" : item.status;
  const body = remembered ? remembered.body : null;
  const size = body ? body.parameters.size : (reply && reply.usage && reply.usage.size) || "";
  const thumbs = el("div", { class: "thumbs" });
  const links = el("div", { class: "meta" });
  (out.results || []).forEach((r, i) => {
    if (!r.url) return;
    const img = el("img", { src: r.url, alt: `Image ${i + 1} of task ${item.task_id}`, loading: "lazy", "data-testid": "gallery-thumb" });
    img.addEventListener("error", () => {
      img.replaceWith(el("span", { class: "status status-EXPIRED" }, "image expired"));
    }, { once: true });
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
    el("div", {}, el("strong", {}, item.model_name), size ? ` · ${size}` : ""),
    prompt ? el("div", { class: "meta" }, prompt) : null,
    el("div", { class: "meta" }, `Submitted ${fmtTime(item.gmt_create)}`,
      item.end_time ? ` · ended ${fmtTime(item.end_time)}` : ""),
    status === "EXPIRED" ? el("p", { class: "meta" }, "Expired: the service has deleted this task.") : null,
    out.task_status === "FAILED" ? el("div", { class: "meta status-FAILED" }, `${out.code}: ${out.message}`) : null,
    thumbs, links, buttons, details);
}
