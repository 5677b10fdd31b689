// The console's only way to the service: its public API, with the credential from session
// storage as a bearer header. No cookie is read or set.

const KEY = "imagesynth.apiKey";
const ADMIN = "imagesynth.adminToken";

export const store = {
  key: () => sessionStorage.getItem(KEY) || "",
  setKey: (v) => (v ? sessionStorage.setItem(KEY, v) : sessionStorage.removeItem(KEY)),
  admin: () => sessionStorage.getItem(ADMIN) || "",
  setAdmin: (v) => (v ? sessionStorage.setItem(ADMIN, v) : sessionStorage.removeItem(ADMIN)),
};

/** An error answered by the API: DashScope's {request_id, code, message}. */
export class ApiError extends Error {
  constructor(status, code, message, requestId) {
    super(message || code || `HTTP ${status}`);
    this.status = status;
    this.code = code || `HTTP${status}`;
    this.requestId = requestId || "";
  }
}

/** What a person should read for an error, in one line. */
export function explain(err) {
  if (!(err instanceof ApiError)) return `The service could not be reached: ${err.message}`;
  const hints = {
    InvalidApiKey: "That API key was refused: check it, or ask the operator for a new one.",
    MissingApiKey: "Enter an API key first.",
  };
  const hint = hints[err.code] ? ` ${hints[err.code]}` : "";
  return `${err.code}: ${err.message}${hint}`;
}

async function call(path, { method = "GET", body, headers = {}, credential, signal } = {}) {
  const h = { ...headers };
  if (credential) h.Authorization = `Bearer ${credential}`;
  let payload;
  if (body instanceof FormData) payload = body;
  else if (body !== undefined) {
    h["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  const rsp = await fetch(path, { method, headers: h, body: payload, signal, credentials: "omit", cache: "no-store" });
  const text = await rsp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!rsp.ok) {
    throw new ApiError(rsp.status, data && data.code, (data && data.message) || text.slice(0, 200), data && data.request_id);
  }
  return data;
}

export const user = (path, opts = {}) => call(path, { ...opts, credential: store.key() });
export const admin = (path, opts = {}) => call(path, { ...opts, credential: store.admin() });

export const SUBMIT = "/api/v1/services/aigc/text2image/image-synthesis";

export function submit(body, { oss = false } = {}) {
  const headers = { "X-DashScope-Async": "enable" };
  if (oss) headers["X-DashScope-OssResourceResolve"] = "enable";
  return user(SUBMIT, { method: "POST", body, headers });
}

export const getTask = (id) => user(`/api/v1/tasks/${encodeURIComponent(id)}`);
export const cancelTask = (id) => user(`/api/v1/tasks/${encodeURIComponent(id)}/cancel`, { method: "POST" });

/** Upload a reference image the way the SDK does (a signed policy, then the form post);
 * answers the oss:// URL to send as input.ref_img. */
export async function uploadReference(model, file) {
  const { data } = await user(`/api/v1/uploads?action=getPolicy&model=${encodeURIComponent(model)}`);
  const name = (file.name || "reference.png").replace(/[^A-Za-z0-9._-]/g, "_");
  const key = `${data.upload_dir}/${name}`;
  const form = new FormData();
  form.append("OSSAccessKeyId", data.oss_access_key_id);
  form.append("Signature", data.signature);
  form.append("policy", data.policy);
  form.append("key", key);
  form.append("x-oss-object-acl", data.x_oss_object_acl);
  form.append("x-oss-forbid-overwrite", data.x_oss_forbid_overwrite);
  form.append("success_action_status", "200");
  form.append("file", file, name);
  // The upload host is this service (its path); posted here, the page stays on its own origin.
  await call(new URL(data.upload_host, location.href).pathname, { method: "POST", body: form });
  return `oss://${key}`;
}

const sleep = (ms, signal) => new Promise((resolve) => {
  const t = setTimeout(resolve, ms);
  if (signal) signal.addEventListener("abort", () => { clearTimeout(t); resolve(); }, { once: true });
});

/** Follow a task to its end: the progress stream where the service has it
 * (GET /api/v1/tasks/{id}/events, read with fetch because EventSource cannot send the
 * header), else polling the task every 500 ms. `onUpdate({status, step, steps, preview})`
 * is called as it goes; answers the final task reply (the body GET /api/v1/tasks/{id} answers). */
export async function followTask(id, onUpdate, signal) {
  const streamed = await streamTask(id, onUpdate, signal).catch(() => null);
  if (streamed) return streamed;
  for (;;) {
    const reply = await getTask(id);
    const out = reply.output;
    const progress = out.task_progress || {};
    onUpdate({ status: out.task_status, step: progress.step, steps: progress.steps });
    if (!["PENDING", "RUNNING"].includes(out.task_status)) return reply;
    if (signal && signal.aborted) return reply;
    await sleep(500, signal);
  }
}

async function streamTask(id, onUpdate, signal) {
  const rsp = await fetch(`/api/v1/tasks/${encodeURIComponent(id)}/events?previews=true`, {
    headers: { Authorization: `Bearer ${store.key()}`, Accept: "text/event-stream" },
    credentials: "omit", cache: "no-store", signal,
  });
  const type = rsp.headers.get("content-type") || "";
  if (!rsp.ok || !type.startsWith("text/event-stream") || !rsp.body) {
    if (rsp.body) rsp.body.cancel().catch(() => {});
    return null; // 404 until the stream exists: the caller polls
  }
  const reader = rsp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return null; // ended without a result: poll for it
    buffer += value.replace(/\r\n?/g, "\n");
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const frame = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let event = "message";
      const data = [];
      for (const line of frame.split("\n")) {
        if (line.startsWith(":")) continue;
        const [field, ...rest] = line.split(":");
        const v = rest.join(":").replace(/^ /, "");
        if (field === "event") event = v;
        else if (field === "data") data.push(v);
      }
      if (!data.length) continue;
      let body;
      try { body = JSON.parse(data.join("\n")); } catch { continue; }
      if (event === "result") { reader.cancel().catch(() => {}); return body; }
      if (event === "status" || event === "progress") {
        onUpdate({ status: body.task_status, step: body.step, steps: body.steps, preview: body.preview });
      }
    }
  }
}
