/**
 * Jobs page: the list of fine-tuning jobs with their status, and the form that creates one
 * (base model, training and validation files, suffix, seed, and hyperparameters that default
 * to "auto").
 *
 * Owns GET/POST /v1/fine_tuning/jobs. A job's own page is pages/job.js.
 */

import * as api from "../api.js";
import { UNFINISHED as ACTIVE } from "../lifecycle.js";
import { h, replace, table, badge, formatTime, formatNumber, errorBox, idCode } from "../ui.js";

const HYPER = [
  { name: "n_epochs", label: "Epochs", help: "1–50, or auto (3, adjusted to the dataset size).", kind: "int" },
  { name: "batch_size", label: "Batch size", help: "1–256, or auto.", kind: "int" },
  { name: "learning_rate_multiplier", label: "Learning rate multiplier", help: "Above 0 and at most 10, or auto.", kind: "float" },
];

export async function render(main, { create, query }) {
  const listHolder = h("div", { "aria-busy": "true" }, h("p", { class: "muted" }, "Loading jobs…"));
  const listStatus = h("div");
  const formHolder = h("div");
  const newButton = h("a", { href: "#/jobs/new", class: "btn btn-primary" }, "New fine-tuning job");
  main.append(
    h("div", { class: "page-head" }, h("h1", {}, create ? "New fine-tuning job" : "Fine-tuning jobs"), create ? null : newButton),
    formHolder,
    h("section", { class: "card", "aria-labelledby": "jobs-title" }, h("h2", { id: "jobs-title" }, "Jobs"), listStatus, listHolder),
  );
  if (create) await renderCreateForm(formHolder, query || {});

  let stopped = false;
  let timer = null;
  async function refresh() {
    try {
      const jobs = await api.listAll("fine_tuning/jobs", { limit: 100, maxPages: 5 });
      if (stopped) return;
      replace(listStatus);
      replace(listHolder, jobTable(jobs));
      listHolder.setAttribute("aria-busy", "false");
      clearTimeout(timer);
      if (jobs.some((j) => ACTIVE.has(j.status))) timer = setTimeout(refresh, 3000);
    } catch (err) {
      if (stopped) return;
      listHolder.setAttribute("aria-busy", "false");
      replace(listStatus, errorBox(err, { title: "Could not list jobs" }));
    }
  }
  await refresh();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

function jobTable(jobs) {
  return table({
    caption: "Fine-tuning jobs, newest first",
    captionHidden: true,
    columns: ["Job", "Base model", "Status", "Fine-tuned model", "Created", "Trained tokens"],
    rows: jobs.map((j) =>
      h(
        "tr",
        { dataset: { jobId: j.id } },
        h("td", {}, h("a", { href: `#/jobs/${j.id}` }, j.suffix ? `${j.suffix} ` : "", idCode(j.id))),
        h("td", {}, h("code", {}, j.model)),
        h("td", {}, badge(j.status)),
        h("td", {}, j.fine_tuned_model ? h("code", { class: "id" }, j.fine_tuned_model) : h("span", { class: "muted" }, "—")),
        h("td", {}, formatTime(j.created_at)),
        h("td", { class: "num" }, formatNumber(j.trained_tokens)),
      ),
    ),
    empty: "No fine-tuning jobs yet.",
  });
}

async function renderCreateForm(holder, query) {
  let models;
  let files;
  try {
    [models, files] = await Promise.all([api.get("models"), api.listAll("files", { limit: 10000, maxPages: 1, query: { purpose: "fine-tune" } })]);
  } catch (err) {
    replace(holder, errorBox(err, { title: "Could not load models and files for the form" }));
    return;
  }
  const usable = files.filter((f) => f.status !== "error");
  const fields = {};
  const field = (name, label, control, help) => {
    control.id = `job-${name}`;
    control.name = name;
    const helpId = `job-${name}-help`;
    const errId = `job-${name}-error`;
    control.setAttribute("aria-describedby", `${helpId} ${errId}`);
    const err = h("p", { class: "field-error", id: errId });
    fields[name] = { control, err };
    return h("div", { class: "field" }, h("label", { for: control.id }, label), control, help ? h("p", { class: "help", id: helpId }, help) : h("span", { id: helpId }), err);
  };
  const fileOption = (f) => h("option", { value: f.id }, `${f.filename} — ${f.id}${f.status === "uploaded" ? " (still checking)" : ""}`);
  const model = h("select", { required: true }, models.data.filter((m) => !m.id.includes(":ckpt-")).map((m) => h("option", { value: m.id }, m.owned_by === "tunegate" ? `${m.id} (base)` : m.id)));
  const training = h("select", { required: true }, h("option", { value: "" }, usable.length ? "Choose a training file…" : "No usable fine-tune files: upload one first"), usable.map(fileOption));
  const validation = h("select", {}, h("option", { value: "" }, "None"), usable.map(fileOption));
  if (query.training_file) training.value = query.training_file;
  if (query.model) model.value = query.model;
  const suffix = h("input", { type: "text", maxlength: "64", autocomplete: "off", placeholder: "optional, e.g. support-bot" });
  const seed = h("input", { type: "number", min: "0", step: "1", inputmode: "numeric", placeholder: "random" });
  const hyper = HYPER.map((p) => ({ ...p, control: h("input", { type: "text", inputmode: "decimal", placeholder: "auto", autocomplete: "off" }) }));
  const status = h("div", { id: "job-create-status" });
  const submit = h("button", { type: "submit", class: "btn btn-primary" }, "Create job");
  const form = h(
    "form",
    { class: "card", "aria-labelledby": "job-form-title", novalidate: true },
    h("h2", { id: "job-form-title" }, "Job settings"),
    h(
      "div",
      { class: "form-grid" },
      field("model", "Base model", model, "The model to fine-tune."),
      field("training_file", "Training file", training, "A validated fine-tune file."),
      field("validation_file", "Validation file", validation, "Optional: held-out data for the validation loss."),
      field("suffix", "Suffix", suffix, "Up to 64 letters, digits, - _ or . ; becomes part of the model name."),
      field("seed", "Seed", seed, "Same seed, same loss curve."),
    ),
    h(
      "fieldset",
      { class: "hyper" },
      h("legend", {}, "Hyperparameters (leave empty for auto)"),
      h("div", { class: "form-grid" }, hyper.map((p) => field(p.name, p.label, p.control, p.help))),
    ),
    status,
    h("div", { class: "actions" }, h("a", { href: "#/jobs", class: "btn btn-quiet" }, "Cancel"), submit),
  );
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    replace(status);
    for (const { control, err } of Object.values(fields)) {
      control.removeAttribute("aria-invalid");
      err.textContent = "";
    }
    if (!training.value) {
      showFieldError(fields, status, { message: "Choose a training file (upload one on the Files page first).", param: "training_file" });
      return;
    }
    const hyperparameters = {};
    for (const p of hyper) hyperparameters[p.name] = parseHyper(p.control.value, p.kind);
    const body = {
      model: model.value,
      training_file: training.value,
      method: { type: "supervised", supervised: { hyperparameters } },
    };
    if (validation.value) body.validation_file = validation.value;
    if (suffix.value.trim()) body.suffix = suffix.value.trim();
    if (seed.value !== "") body.seed = Number(seed.value);
    submit.disabled = true;
    submit.textContent = "Creating…";
    try {
      const job = await api.post("fine_tuning/jobs", body);
      location.hash = `#/jobs/${job.id}`;
    } catch (err) {
      showFieldError(fields, status, err);
    } finally {
      submit.disabled = false;
      submit.textContent = "Create job";
    }
  });
  replace(holder, form);
  model.focus();
}

/** "" or "auto" -> "auto"; a number -> that number; anything else goes to the server as typed, which explains it. */
export function parseHyper(raw, kind) {
  const v = String(raw).trim();
  if (!v || v.toLowerCase() === "auto") return "auto";
  const n = Number(v);
  if (!Number.isFinite(n)) return v;
  return kind === "int" && Number.isInteger(n) ? Math.trunc(n) : n;
}

/** Show an API error at the top of the form and, when its `param` names a field, next to that field. */
function showFieldError(fields, status, err) {
  status.append(errorBox(err, { title: "The job was not created" }));
  const param = err.param || "";
  const name = Object.keys(fields).find((k) => param === k || param.endsWith(`.${k}`) || param.endsWith(`[${k}]`));
  if (name) {
    const { control, err: errEl } = fields[name];
    control.setAttribute("aria-invalid", "true");
    errEl.textContent = err.message;
    control.focus();
  }
}
