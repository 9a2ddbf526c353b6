/**
 * The dashboard shell: sign-in, navigation, hash routing and the last line of error defence.
 *
 * Owns which page is on screen and the session (an API key in sessionStorage, checked against
 * GET /v1/models before it is kept). Pages live in pages/*.js and export `render(main, params)`,
 * which may return a cleanup function (to stop polling) called when the user leaves the page.
 * Any uncaught error ends up in a visible banner, never a blank page.
 */

import * as api from "./api.js";
import { h, replace, errorBox } from "./ui.js";

const ROUTES = [
  { pattern: /^\/files\/?$/, page: "files", load: () => import("./pages/files.js"), title: "Files" },
  { pattern: /^\/files\/(file-[\w-]+)$/, page: "files", load: () => import("./pages/file.js"), title: "File" },
  { pattern: /^\/jobs\/?$/, page: "jobs", load: () => import("./pages/jobs.js"), title: "Jobs" },
  { pattern: /^\/jobs\/new$/, page: "jobs", load: () => import("./pages/jobs.js"), title: "New job", params: { create: true } },
  { pattern: /^\/jobs\/([\w-]+)$/, page: "jobs", load: () => import("./pages/job.js"), title: "Job" },
  { pattern: /^\/models\/?$/, page: "models", load: () => import("./pages/models.js"), title: "Models" },
  { pattern: /^\/evals\/?$/, page: "evals", load: () => import("./pages/evals.js"), title: "Evals" },
  { pattern: /^\/evals\/(eval-[\w-]+\/runs\/evalrun-[\w-]+)$/, page: "evals", load: () => import("./pages/eval_run.js"), title: "Eval run" },
  { pattern: /^\/playground\/?$/, page: "playground", load: () => import("./pages/playground.js"), title: "Playground" },
];

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const session = document.getElementById("session");
const globalError = document.getElementById("global-error");
let cleanup = null;
let renderSeq = 0;

function showGlobalError(err) {
  // Aborted fetches are how pages stop their own requests on navigation; they are not errors.
  if (err && err.name === "AbortError") return;
  replace(globalError, errorBox(err, { title: "Unexpected error" }).childNodes);
  globalError.hidden = false;
}

window.addEventListener("error", (e) => showGlobalError(e.error || { message: e.message }));
window.addEventListener("unhandledrejection", (e) => showGlobalError(e.reason));

api.onUnauthorized(() => {
  api.setKey(null);
  renderSignIn("Your API key was not accepted any more (it may have been revoked). Sign in again.");
});

function parseHash() {
  const raw = decodeURIComponent(location.hash.replace(/^#/, "")) || "/files";
  const [path, queryString = ""] = raw.split("?");
  return { path, query: Object.fromEntries(new URLSearchParams(queryString)) };
}

function setSignedIn(signedIn) {
  nav.hidden = !signedIn;
  session.hidden = !signedIn;
  const key = api.getKey();
  // Only the last characters: enough to tell two keys apart, useless to someone looking over a shoulder.
  document.getElementById("session-key").textContent = signedIn && key ? `Key …${key.slice(-4)}` : "";
}

function renderSignIn(message) {
  runCleanup();
  setSignedIn(false);
  document.title = "Sign in · tunegate";
  const input = h("input", {
    id: "api-key",
    name: "api-key",
    type: "password",
    autocomplete: "off",
    spellcheck: "false",
    required: true,
    "aria-describedby": "api-key-help",
  });
  const status = h("div", { id: "sign-in-status" });
  const button = h("button", { type: "submit", class: "btn btn-primary" }, "Sign in");
  const form = h(
    "form",
    { class: "card sign-in", "aria-labelledby": "sign-in-title", novalidate: true },
    h("h1", { id: "sign-in-title" }, "Sign in to tunegate"),
    h("label", { for: "api-key" }, "API key"),
    input,
    h(
      "p",
      { id: "api-key-help", class: "help" },
      "Your key stays in this browser tab only (session storage) and is sent to this server as a bearer token. " +
        "Create one with ",
      h("code", {}, "tunegate keys create --org NAME"),
      "; a local admin key is saved in the data directory as ",
      h("code", {}, "admin_key"),
      ".",
    ),
    status,
    h("div", { class: "actions" }, button),
  );
  if (message) status.append(errorBox({ message }, { title: "Signed out" }));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const key = input.value.trim();
    replace(status);
    if (!key) {
      input.setAttribute("aria-invalid", "true");
      status.append(errorBox({ message: "Enter your API key.", param: "api_key" }, { title: "Cannot sign in" }));
      input.focus();
      return;
    }
    button.disabled = true;
    button.textContent = "Checking…";
    try {
      await api.get("models", { key });
      api.setKey(key);
      input.value = "";
      if (!location.hash || location.hash === "#/" || location.hash === "#") location.hash = "#/files";
      await route();
    } catch (err) {
      input.setAttribute("aria-invalid", "true");
      status.append(errorBox(err, { title: "Cannot sign in" }));
      input.focus();
    } finally {
      button.disabled = false;
      button.textContent = "Sign in";
    }
  });
  replace(main, form);
  input.focus();
}

function runCleanup() {
  if (cleanup) {
    try {
      cleanup();
    } catch {
      /* a page failing to clean up must not block the next page */
    }
    cleanup = null;
  }
}

async function route() {
  const seq = ++renderSeq;
  globalError.hidden = true;
  if (!api.getKey()) {
    renderSignIn();
    return;
  }
  setSignedIn(true);
  runCleanup();
  const { path, query } = parseHash();
  const match = ROUTES.map((r) => ({ r, m: path.match(r.pattern) })).find((x) => x.m);
  for (const a of nav.querySelectorAll("a")) {
    if (match && a.dataset.nav === match.r.page) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  if (!match) {
    document.title = "Not found · tunegate";
    replace(main, h("h1", {}, "Page not found"), errorBox({ message: `There is no dashboard page at #${path}. Use the menu above.` }, { title: "Not found" }));
    return;
  }
  const { r, m } = match;
  document.title = `${r.title} · tunegate`;
  const params = { ...(r.params || {}), id: m[1], query };
  try {
    const module = await r.load();
    if (seq !== renderSeq) return;
    replace(main);
    const result = await module.render(main, params);
    if (seq !== renderSeq) {
      if (typeof result === "function") result();
      return;
    }
    cleanup = typeof result === "function" ? result : null;
  } catch (err) {
    if (seq !== renderSeq || err?.name === "AbortError") return;
    if (err?.status === 401) return; // onUnauthorized already showed the sign-in form
    replace(main, h("h1", {}, r.title), errorBox(err, { title: `Could not load ${r.title.toLowerCase()}` }));
  }
  // Move focus to the new page so keyboard and screen-reader users start at its top.
  if (!main.contains(document.activeElement) || document.activeElement === document.body) main.focus({ preventScroll: true });
}

document.getElementById("sign-out").addEventListener("click", () => {
  api.setKey(null);
  renderSignIn();
});

window.addEventListener("hashchange", route);
route();
