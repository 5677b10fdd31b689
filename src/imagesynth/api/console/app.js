// The console's entry: the credential forms, the pages (one per #/route) and their loaders.
import { explain, store, user } from "./api.js";
import { loadGallery } from "./gallery.js";
import { loadFailures, loadKeys, loadQueue, loadUsage, setupOperator } from "./operator.js";
import { loadCatalog, setupPlayground } from "./playground.js";
import { $, clearMessage, showMessage } from "./ui.js";

const PAGES = ["playground", "gallery", "keys", "usage", "queue", "failures"];
const OPERATOR = new Set(["keys", "usage", "queue", "failures"]);
const LOADERS = {
  playground: () => (store.key() ? loadCatalog() : undefined),
  gallery: () => (store.key() ? loadGallery() : undefined),
  keys: () => (store.admin() ? loadKeys() : undefined),
  usage: () => (store.admin() ? loadUsage() : undefined),
  queue: () => (store.admin() ? loadQueue() : undefined),
  failures: () => (store.admin() ? loadFailures() : undefined),
};

export function currentPage() {
  const name = location.hash.replace(/^#\/?/, "");
  return PAGES.includes(name) ? name : "playground";
}

function showPage() {
  const page = currentPage();
  for (const name of PAGES) $(`#page-${name}`).hidden = name !== page;
  for (const a of document.querySelectorAll("nav a[data-page]")) {
    if (a.dataset.page === page) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  const operator = OPERATOR.has(page);
  $("#key-form").hidden = operator;
  $("#admin-form").hidden = !operator;
  clearMessage();
  const load = LOADERS[page]();
  if (load && load.catch) load.catch((err) => showMessage(explain(err)));
}

function describeCredentials() {
  $("#key-state").textContent = store.key()
    ? "A key is set for this tab (kept in session storage, never in a cookie)."
    : "No key: paste the one `imagesynth serve` printed.";
  $("#admin-state").textContent = store.admin()
    ? "The admin credential is set for this tab (session storage)."
    : "Operator pages need the admin credential (`imagesynth admin-token`).";
}

async function useKey(event) {
  event.preventDefault();
  const input = $("#api-key");
  const value = input.value.trim();
  if (!value) { showMessage("Enter an API key first."); return; }
  store.setKey(value);
  input.value = "";
  try {
    await user("/console/api/models"); // refused here, the key is not kept
    clearMessage();
    showMessage("Key accepted.", "info");
  } catch (err) {
    store.setKey("");
    showMessage(explain(err));
  }
  describeCredentials();
  const load = LOADERS[currentPage()]();
  if (load && load.catch) load.catch((err) => showMessage(explain(err)));
}

async function useAdmin(event) {
  event.preventDefault();
  const input = $("#admin-token");
  const value = input.value.trim();
  if (!value) { showMessage("Enter the admin credential first."); return; }
  store.setAdmin(value);
  input.value = "";
  try {
    await LOADERS[currentPage()]();
    clearMessage();
  } catch (err) {
    store.setAdmin("");
    showMessage(explain(err));
  }
  describeCredentials();
}

export function useNewKey(secret) {
  store.setKey(secret);
  describeCredentials();
  location.hash = "#/playground";
}

function init() {
  $("#key-form").addEventListener("submit", useKey);
  $("#admin-form").addEventListener("submit", useAdmin);
  $("#forget-key").addEventListener("click", () => { store.setKey(""); describeCredentials(); });
  $("#forget-admin").addEventListener("click", () => { store.setAdmin(""); describeCredentials(); });
  setupPlayground();
  setupOperator(useNewKey);
  $("#gallery-refresh").addEventListener("click", () => loadGallery().catch((e) => showMessage(explain(e))));
  $("#gallery-more").addEventListener("click", () => loadGallery({ more: true }).catch((e) => showMessage(explain(e))));
  window.addEventListener("hashchange", showPage);
  describeCredentials();
  showPage();
  document.body.dataset.ready = "true";
}

init();
