/**
 * Files page: upload with a progress bar, and the list of the organisation's files.
 *
 * Owns the upload form and the file table. The validation report of one file is pages/file.js.
 */

import * as api from "../api.js";
import { h, replace, table, badge, formatBytes, formatTime, errorBox, notice, announce, confirmDialog, idCode } from "../ui.js";

const PURPOSES = [
  ["fine-tune", "fine-tune (training or validation data)"],
  ["evals", "evals"],
];

export async function render(main) {
  const listHolder = h("div", { "aria-live": "polite", "aria-busy": "true" }, h("p", { class: "muted" }, "Loading files…"));
  const listStatus = h("div");
  main.append(
    h("div", { class: "page-head" }, h("h1", {}, "Files"), h("a", { href: "#/jobs/new", class: "btn" }, "New fine-tuning job")),
    uploadForm(() => refresh()),
    h("section", { class: "card", "aria-labelledby": "files-title" }, h("h2", { id: "files-title" }, "Your files"), listStatus, listHolder),
  );

  let timer = null;
  let stopped = false;

  async function refresh() {
    try {
      const files = await api.listAll("files", { limit: 10000, maxPages: 1 });
      if (stopped) return;
      replace(listStatus);
      replace(listHolder, fileTable(files, refresh));
      listHolder.setAttribute("aria-busy", "false");
      // Large files are validated in the background; keep the list fresh until they are done.
      clearTimeout(timer);
      if (files.some((f) => f.status === "uploaded" && f.purpose === "fine-tune")) timer = setTimeout(refresh, 2000);
    } catch (err) {
      if (stopped || err.name === "AbortError") return;
      listHolder.setAttribute("aria-busy", "false");
      replace(listStatus, errorBox(err, { title: "Could not list files" }));
    }
  }
  await refresh();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

function uploadForm(onUploaded) {
  const fileInput = h("input", { type: "file", id: "upload-file", name: "file", accept: ".jsonl,.json,.txt,application/jsonl,application/json", required: true, "aria-describedby": "upload-help" });
  const purpose = h("select", { id: "upload-purpose", name: "purpose" }, PURPOSES.map(([v, label]) => h("option", { value: v }, label)));
  const progress = h("progress", { id: "upload-progress", max: "100", value: "0", "aria-label": "Upload progress", hidden: true });
  const progressText = h("span", { class: "muted", id: "upload-progress-text", "aria-live": "polite" });
  const status = h("div", { id: "upload-status" });
  const submit = h("button", { type: "submit", class: "btn btn-primary" }, "Upload");
  const form = h(
    "form",
    { class: "card upload", "aria-labelledby": "upload-title" },
    h("h2", { id: "upload-title" }, "Upload a file"),
    h(
      "div",
      { class: "form-row" },
      h("div", { class: "field grow" }, h("label", { for: "upload-file" }, "JSONL file"), fileInput),
      h("div", { class: "field" }, h("label", { for: "upload-purpose" }, "Purpose"), purpose),
      h("div", { class: "field field-button" }, submit),
    ),
    h(
      "p",
      { id: "upload-help", class: "help" },
      "One JSON object per line, in OpenAI's chat format ({\"messages\": [...]}) or the preference format. " +
        "Fine-tuning files are checked at once: every problem is reported with its line number.",
    ),
    h("div", { class: "progress-row" }, progress, progressText),
    status,
  );
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    replace(status);
    const file = fileInput.files[0];
    if (!file) {
      fileInput.setAttribute("aria-invalid", "true");
      status.append(errorBox({ message: "Choose a file to upload first.", param: "file" }, { title: "Nothing to upload" }));
      fileInput.focus();
      return;
    }
    fileInput.removeAttribute("aria-invalid");
    submit.disabled = true;
    progress.hidden = false;
    progress.value = 0;
    progressText.textContent = `Uploading ${file.name} (${formatBytes(file.size)})…`;
    try {
      const obj = await api.uploadFile(file, purpose.value, (fraction) => {
        progress.value = Math.round(fraction * 100);
        progressText.textContent =
          fraction < 1 ? `Uploading ${file.name}: ${Math.round(fraction * 100)}%` : `Uploaded ${file.name}; checking the data…`;
      });
      progressText.textContent = `Uploaded ${file.name} as ${obj.id}.`;
      announce(`Uploaded ${file.name}.`);
      form.reset();
      if (obj.purpose === "fine-tune") {
        location.hash = `#/files/${obj.id}`;
      } else {
        status.append(notice(`Stored ${file.name} as ${obj.id}.`, "ok"));
        await onUploaded();
      }
    } catch (err) {
      progress.hidden = true;
      progressText.textContent = "";
      status.append(errorBox(err, { title: `Could not upload ${file.name}` }));
      status.querySelector("[role=alert]")?.setAttribute("tabindex", "-1");
      status.querySelector("[role=alert]")?.focus();
    } finally {
      submit.disabled = false;
    }
  });
  return form;
}

function fileTable(files, refresh) {
  const actionsStatus = h("div");
  const rows = files.map((f) => {
    const name = f.purpose === "fine-tune" ? h("a", { href: `#/files/${f.id}` }, f.filename) : f.filename;
    const download = h("button", { type: "button", class: "btn btn-small btn-quiet", "aria-label": `Download ${f.filename}` }, "Download");
    download.addEventListener("click", () =>
      api.download(`/v1/files/${f.id}/content`, f.filename).catch((err) => replace(actionsStatus, errorBox(err, { title: `Could not download ${f.filename}` }))),
    );
    const remove = h("button", { type: "button", class: "btn btn-small btn-quiet btn-danger-text", "aria-label": `Delete ${f.filename}` }, "Delete");
    remove.addEventListener("click", async () => {
      if (!(await confirmDialog(`Delete ${f.filename} (${f.id})? This cannot be undone.`, { confirmLabel: "Delete", danger: true }))) return;
      try {
        await api.del(`files/${f.id}`);
        announce(`Deleted ${f.filename}.`);
        await refresh();
      } catch (err) {
        replace(actionsStatus, errorBox(err, { title: `Could not delete ${f.filename}` }));
      }
    });
    const status = f.status === "error" ? badge("error", "has problems") : f.status === "uploaded" && f.purpose === "fine-tune" ? badge("pending", "checking") : badge(f.status);
    return h(
      "tr",
      { dataset: { fileId: f.id } },
      h("td", {}, name),
      h("td", {}, idCode(f.id)),
      h("td", {}, f.purpose),
      h("td", { class: "num" }, formatBytes(f.bytes)),
      h("td", {}, formatTime(f.created_at)),
      h("td", {}, status),
      h("td", { class: "actions-cell" }, download, f.purpose !== "fine-tune-results" ? remove : null),
    );
  });
  return h(
    "div",
    {},
    actionsStatus,
    table({
      caption: "Files of your organisation, newest first",
      captionHidden: true,
      columns: ["Name", "ID", "Purpose", "Size", "Created", "Status", h("span", { class: "visually-hidden" }, "Actions")],
      rows,
      empty: "No files yet. Upload a JSONL file above to start.",
    }),
  );
}
