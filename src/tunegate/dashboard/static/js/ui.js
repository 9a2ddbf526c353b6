/**
 * Small DOM helpers shared by every page: element building, formatting, status badges, tables,
 * error boxes, confirmation dialogs and screen-reader announcements.
 *
 * Owns presentation primitives only; it never calls the API. Text always goes in through
 * textContent (never innerHTML), so data from files and models cannot inject markup.
 */

/** Build an element: h("a", {href: "#/x", class: "btn"}, "text", childNode, [more...]). */
export function h(tag, attrs = {}, ...children) {
  const el = tag.startsWith("svg:")
    ? document.createElementNS("http://www.w3.org/2000/svg", tag.slice(4))
    : document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") el.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(el.dataset, value);
    else if (name === "text") el.textContent = value;
    else if (value === true) el.setAttribute(name, "");
    else el.setAttribute(name, String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replace an element's children. */
export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export function formatBytes(n) {
  if (n === null || n === undefined) return "—";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${i ? v.toFixed(v < 10 ? 1 : 0) : v} ${units[i]}`;
}

export function formatNumber(n, digits = 0) {
  if (n === null || n === undefined || Number.isNaN(n)) return "—";
  if (typeof n !== "number") return String(n);
  return n.toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: 0 });
}

export function formatLoss(x) {
  return typeof x === "number" && Number.isFinite(x) ? x.toFixed(4) : "—";
}

export function formatPercent(x, digits = 1) {
  return typeof x === "number" && Number.isFinite(x) ? `${(x * 100).toFixed(digits)}%` : "—";
}

/** Unix seconds -> "2024-05-01 14:03:22" in local time, with the ISO form as a tooltip. */
export function formatTime(seconds) {
  if (!seconds) return h("span", { class: "muted" }, "—");
  const d = new Date(seconds * 1000);
  const pad = (x) => String(x).padStart(2, "0");
  const text = `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  return h("time", { datetime: d.toISOString(), title: d.toISOString() }, text);
}

export function formatDuration(seconds) {
  if (seconds === null || seconds === undefined || seconds < 0) return "—";
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}

const STATUS_TONES = {
  succeeded: "ok", processed: "ok", valid: "ok", passed: "ok", pass: "ok", allowed: "ok", completed: "ok",
  failed: "bad", error: "bad", invalid: "bad", blocked: "bad", block: "bad", unsafe: "bad",
  cancelled: "neutral", uploaded: "neutral", pending: "info",
  running: "info", queued: "info", validating_files: "info", paused: "warn", flagged: "warn", warn: "warn",
};

/** A status pill; colour is never the only signal, the word is always written. */
export function badge(status, label) {
  const tone = STATUS_TONES[String(status).toLowerCase()] || "neutral";
  return h("span", { class: `badge badge-${tone}`, dataset: { status } }, label ?? String(status).replace(/_/g, " "));
}

/** A table with a caption (visible or not), column headers and rows of cells (nodes or text). */
export function table({ caption, columns, rows, empty = "Nothing here yet.", captionHidden = false, className = "" }) {
  if (!rows.length) return h("p", { class: "empty muted" }, empty);
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      { class: `data ${className}` },
      caption ? h("caption", { class: captionHidden ? "visually-hidden" : "" }, caption) : null,
      h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, rows.map((cells) => (cells instanceof Node ? cells : h("tr", {}, cells.map((c) => h("td", {}, c)))))),
    ),
  );
}

/** A definition list from [term, value] pairs; pairs with an undefined value are dropped. */
export function details(pairs, { compact = false } = {}) {
  return h(
    "dl",
    { class: compact ? "kv compact" : "kv" },
    pairs.filter(([, v]) => v !== undefined).map(([k, v]) => h("div", {}, h("dt", {}, k), h("dd", {}, v ?? "—"))),
  );
}

/** The readable form of any failure: the API's message, plus its code and parameter when given. */
export function errorBox(err, { title = "Something went wrong" } = {}) {
  const message = err?.message || String(err);
  const meta = [];
  if (err?.param) meta.push(h("span", {}, "Field: ", h("code", {}, err.param)));
  if (err?.code) meta.push(h("span", {}, "Code: ", h("code", {}, err.code)));
  if (err?.status) meta.push(h("span", {}, `HTTP ${err.status}`));
  return h(
    "div",
    { class: "banner banner-error", role: "alert", dataset: { errorCode: err?.code || "" } },
    h("strong", {}, title),
    h("p", { class: "error-message" }, message),
    meta.length ? h("p", { class: "error-meta" }, meta) : null,
  );
}

export function notice(text, tone = "info") {
  return h("div", { class: `banner banner-${tone}`, role: "status" }, text);
}

/** Tell screen-reader users about something that happened off-focus (a finished upload, a new status). */
export function announce(text) {
  const el = document.getElementById("announcer");
  if (!el) return;
  el.textContent = "";
  // A changed text node is what makes screen readers speak; clearing first repeats identical news.
  setTimeout(() => (el.textContent = text), 50);
}

/** A modal yes/no question; resolves true only when the user confirms. */
export function confirmDialog(message, { confirmLabel = "Confirm", danger = false } = {}) {
  return new Promise((resolve) => {
    const dialog = h(
      "dialog",
      { class: "dialog", "aria-labelledby": "dialog-text" },
      h("p", { id: "dialog-text" }, message),
      h(
        "form",
        { method: "dialog", class: "actions" },
        h("button", { class: "btn btn-quiet", value: "cancel" }, "Cancel"),
        h("button", { class: `btn ${danger ? "btn-danger" : "btn-primary"}`, value: "confirm" }, confirmLabel),
      ),
    );
    dialog.addEventListener("close", () => {
      resolve(dialog.returnValue === "confirm");
      dialog.remove();
    });
    document.body.append(dialog);
    dialog.showModal();
  });
}

/** A button that disables itself and shows progress while its async action runs; errors go to onError. */
export function actionButton(label, action, { className = "btn", onError, busyLabel, ...attrs } = {}) {
  const btn = h("button", { type: "button", class: className, ...attrs }, label);
  btn.addEventListener("click", async () => {
    btn.disabled = true;
    btn.setAttribute("aria-busy", "true");
    const before = btn.textContent;
    if (busyLabel) btn.textContent = busyLabel;
    try {
      await action();
    } catch (err) {
      if (onError) onError(err);
      else throw err;
    } finally {
      btn.disabled = false;
      btn.removeAttribute("aria-busy");
      btn.textContent = before;
    }
  });
  return btn;
}

/** A page section with a heading (level 2 unless told) and its body. */
export function section(title, ...children) {
  const id = `s-${title.toLowerCase().replace(/[^a-z0-9]+/g, "-")}`;
  return h("section", { class: "card", "aria-labelledby": id }, h("h2", { id }, title), ...children);
}

/** A <code> element that shortens long ids in the middle but keeps the whole id for copy and hover. */
export function idCode(id) {
  return h("code", { class: "id", title: id }, id);
}
