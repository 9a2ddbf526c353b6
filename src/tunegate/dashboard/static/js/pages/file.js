/**
 * One file and its validation report: every problem by line with how to fix it (and, for small
 * files, the offending line itself), warnings, token statistics, the token-length histogram,
 * truncation and the trained-token estimate.
 *
 * Owns reading GET /v1/files/{id} and /validation. The token section reads the report leniently
 * (known fields first, then any other numbers it carries), so a validator that grows new fields
 * still shows them instead of hiding them.
 */

import * as api from "../api.js";
import { h, replace, table, badge, details, formatBytes, formatNumber, formatTime, errorBox, notice, section, idCode } from "../ui.js";
import { createHistogram, binValues } from "../chart.js";

// Lines of files up to this size are fetched so that each problem can show the text it is about.
const SHOW_LINES_MAX_BYTES = 2 * 1024 * 1024;

export async function render(main, { id }) {
  const file = await api.get(`files/${id}`);
  const head = h(
    "div",
    { class: "page-head" },
    h("div", {}, h("p", { class: "crumbs" }, h("a", { href: "#/files" }, "Files"), " / ", idCode(file.id)), h("h1", {}, file.filename)),
    h("div", { class: "actions" }),
  );
  const body = h("div", { "aria-live": "polite" });
  main.append(
    head,
    section(
      "File",
      details([
        ["ID", idCode(file.id)],
        ["Purpose", file.purpose],
        ["Size", formatBytes(file.bytes)],
        ["Created", formatTime(file.created_at)],
        ["Status", badge(file.status === "error" ? "error" : file.status, file.status === "error" ? "has problems" : undefined)],
        ["SHA-256", file.sha256 ? h("code", { class: "id" }, file.sha256) : undefined],
      ]),
    ),
    body,
  );
  if (file.purpose !== "fine-tune") {
    body.append(notice(`Files with purpose "${file.purpose}" are stored as they are; only fine-tuning data is validated.`));
    return;
  }

  let stopped = false;
  let timer = null;
  let lines = null;
  async function load() {
    let report;
    try {
      report = await api.get(`files/${id}/validation`);
    } catch (err) {
      if (!stopped) replace(body, errorBox(err, { title: "Could not load the validation report" }));
      return;
    }
    if (stopped) return;
    if (report.status === "pending") {
      replace(body, notice("Checking the data… this report appears as soon as validation finishes."));
      timer = setTimeout(load, 1500);
      return;
    }
    const hasLineProblems = [...(report.errors || []), ...(report.warnings || [])].some((p) => p.line);
    if (hasLineProblems && lines === null && file.bytes <= SHOW_LINES_MAX_BYTES) {
      lines = await fetchLines(id);
    }
    if (stopped) return;
    const actions = head.querySelector(".actions");
    replace(actions, report.valid ? h("a", { class: "btn btn-primary", href: `#/jobs/new?training_file=${encodeURIComponent(id)}` }, "Fine-tune with this file") : null);
    replace(body, ...renderReport(report, lines));
  }
  await load();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

async function fetchLines(id) {
  try {
    const text = await api.get(`/v1/files/${id}/content`);
    return typeof text === "string" ? text.split(/\r?\n/) : null;
  } catch {
    return null; // showing the line is a convenience; the report stands without it
  }
}

export function renderReport(report, lines) {
  const errors = [...(report.errors || [])].sort(byLine);
  const warnings = [...(report.warnings || [])].sort(byLine);
  // The lists are capped per code; the counts are exact.
  const nErrors = Math.max(errors.length, sum(report.error_counts));
  const nWarnings = Math.max(warnings.length, sum(report.warning_counts));
  const verdict = report.valid
    ? h("div", { class: "banner banner-ok", role: "status", id: "validation-verdict" }, h("strong", {}, "Valid. "), `${formatNumber(report.n_examples)} examples in ${report.format || "chat"} format are ready for fine-tuning.`)
    : h(
        "div",
        { class: "banner banner-error", role: "alert", id: "validation-verdict" },
        h("strong", {}, `${formatNumber(nErrors)} problem${nErrors === 1 ? "" : "s"} found. `),
        "Fix every problem listed below, then upload the file again.",
      );
  const summary = section(
    "Validation report",
    verdict,
    details([
      ["Result", report.valid ? badge("valid") : badge("invalid")],
      ["Format", report.format || "—"],
      ["Examples", formatNumber(report.n_examples)],
      ["Lines", report.n_lines ? formatNumber(report.n_lines) : undefined],
      ["Errors", formatNumber(nErrors)],
      ["Warnings", formatNumber(nWarnings)],
      ["Checked with", report.model ? h("code", {}, report.model) : undefined],
    ]),
  );
  const out = [summary];
  // Errors block training, so they come first; warnings (often many of one kind) come last.
  if (errors.length) out.push(problemSection("Errors", errors, lines, "errors", report.error_counts, nErrors));
  if (report.tokens) out.push(tokenSection(report.tokens, report));
  if (warnings.length) out.push(problemSection("Warnings", warnings, lines, "warnings", report.warning_counts, nWarnings));
  return out;
}

function byLine(a, b) {
  return (a.line ?? Infinity) - (b.line ?? Infinity);
}

function sum(counts) {
  return Object.values(counts || {}).reduce((a, b) => a + (Number(b) || 0), 0);
}

function problemSection(title, problems, lines, kind, counts, total) {
  const rows = problems.map((p) =>
    h(
      "tr",
      { dataset: { line: p.line ?? "", code: p.code || "" } },
      h("td", { class: "num" }, p.line ?? h("span", { class: "muted" }, "file")),
      h("td", {}, h("code", {}, p.code || "—")),
      h("td", {}, p.param ? h("code", {}, p.param) : h("span", { class: "muted" }, "—")),
      h(
        "td",
        {},
        h("span", { class: "problem-message" }, p.message || ""),
        lines && p.line && lines[p.line - 1] !== undefined ? h("pre", { class: "line-text", tabindex: "0", "aria-label": `Content of line ${p.line}` }, clip(lines[p.line - 1])) : null,
      ),
    ),
  );
  const listed = {};
  for (const p of problems) listed[p.code] = (listed[p.code] || 0) + 1;
  const exact = { ...listed, ...(counts || {}) };
  const unlisted = Object.entries(exact).filter(([code, n]) => n > (listed[code] || 0));
  const byKind = h(
    "ul",
    { class: "code-counts", "aria-label": `${title} by kind` },
    Object.entries(exact)
      .sort((a, b) => b[1] - a[1])
      .map(([code, n]) => h("li", {}, h("code", {}, code), ` × ${formatNumber(n)}`)),
  );
  const rowsTable = table({
    caption: `${title}, by line. Each message says how to fix the problem.`,
    columns: ["Line", "Code", "Field", "Problem and fix"],
    rows,
    className: `problems problems-${kind}`,
  });
  // A long list of one repeated warning would bury everything below it: long lists start folded.
  const folded = kind === "warnings" ? rows.length > 8 : rows.length > 60;
  return section(
    `${title} (${formatNumber(total)})`,
    byKind,
    unlisted.length
      ? notice(`Only the first problems of each kind are listed. Not shown: ${unlisted.map(([code, n]) => `${formatNumber(n - (listed[code] || 0))} more ${code}`).join(", ")}.`, "info")
      : null,
    h("details", { class: "problem-list", open: !folded }, h("summary", {}, `Show the ${formatNumber(rows.length)} listed ${title.toLowerCase()} by line`), rowsTable),
  );
}

function clip(text) {
  return text.length > 240 ? `${text.slice(0, 240)}… (${text.length} characters)` : text || "(blank line)";
}

const STAT_KEYS = ["min", "mean", "p50", "median", "p90", "p95", "p99", "max"];
// Known fields of the report's `tokens` (files/tokens.py TokenStats), in reading order, with the
// words a person needs; fields not listed here are still shown after them.
const LABELS = {
  n_examples: ["Examples", "Examples counted."],
  total_tokens: ["Total tokens", "All examples rendered with the model's chat template, before truncation."],
  trained_tokens: ["Trained tokens", "Assistant tokens with weight 1, including each end-of-turn token: what carries the loss."],
  context_length: ["Context length", "The model's limit; longer examples are truncated."],
  n_truncated: ["Examples truncated", "Longer than the context length: the tokens past it are not trained."],
  n_without_trained_tokens: ["Examples with nothing to train", "No assistant message with weight 1 (or all of it truncated)."],
  auto_n_epochs: ["Epochs with auto", "OpenAI's rule: 3, adjusted so examples x epochs lands between 100 and 25,000."],
  estimated_trained_tokens: ["Estimated trained tokens", "Trained tokens x epochs with auto: what a job with auto epochs trains on."],
};
const DISTRIBUTION_LABELS = {
  per_example_total: "Tokens per example (whole conversation)",
  per_example_trained: "Trained tokens per example",
};

function humanize(key) {
  return LABELS[key]?.[0] || DISTRIBUTION_LABELS[key] || key.replace(/^n_/, "number of ").replace(/_/g, " ").replace(/^./, (c) => c.toUpperCase());
}

function isStats(v) {
  return v && typeof v === "object" && !Array.isArray(v) && STAT_KEYS.some((k) => typeof v[k] === "number");
}

/** Find histogram data in whatever form the report carries it. */
export function findBins(tokens) {
  for (const [key, v] of Object.entries(tokens)) {
    if (!/hist/i.test(key) || !v) continue;
    const src = Array.isArray(v) ? v : v.bins ?? v.buckets ?? null;
    if (Array.isArray(src) && src.length && typeof src[0] === "object") {
      return src.map((b) => {
        if (Array.isArray(b)) return { lo: b[0], hi: b[1], count: b[2] };
        // files/tokens.py writes integer bins with an inclusive `end`: [start, end] is [start, end + 1).
        if (typeof b.start === "number" && typeof b.end === "number") {
          return { lo: b.start, hi: b.end + 1, count: b.count ?? 0, label: b.start === b.end ? `${b.start}` : `${b.start}–${b.end}` };
        }
        return { lo: b.lo ?? b.min ?? b.left, hi: b.hi ?? b.max ?? b.right, count: b.count ?? b.n ?? 0 };
      });
    }
    const edges = v.edges ?? v.bin_edges ?? v.boundaries;
    const counts = v.counts ?? v.count ?? v.values;
    if (Array.isArray(edges) && Array.isArray(counts) && edges.length === counts.length + 1) {
      return counts.map((c, i) => ({ lo: edges[i], hi: edges[i + 1], count: c }));
    }
  }
  for (const key of ["per_example", "totals", "lengths", "total_per_example", "example_tokens"]) {
    const v = tokens[key];
    if (Array.isArray(v) && v.length && typeof v[0] === "number") return binValues(v);
    if (Array.isArray(v) && v.length && typeof v[0] === "object" && typeof v[0].total === "number") return binValues(v.map((e) => e.total));
  }
  return null;
}

function tokenSection(tokens, report) {
  const statsRows = [];
  const scalars = [];
  const ordered = [...Object.keys(LABELS).filter((k) => k in tokens), ...Object.keys(tokens).filter((k) => !(k in LABELS))];
  for (const key of ordered) {
    const value = tokens[key];
    if (/hist/i.test(key) || Array.isArray(value)) continue;
    if (isStats(value)) statsRows.push([key, value]);
    else if (typeof value === "number" || typeof value === "string" || typeof value === "boolean") scalars.push([key, value]);
  }
  const columns = STAT_KEYS.filter((k) => statsRows.some(([, v]) => typeof v[k] === "number"));
  const parts = [];
  const ctx = tokens.context_length ?? report.context_length;
  if (tokens.n_truncated > 0) {
    parts.push(
      notice(
        `${formatNumber(tokens.n_truncated)} example(s) are longer than the model's context${ctx ? ` of ${formatNumber(ctx)} tokens` : ""} and will be truncated: the tokens past the limit are not trained. Shorten them or split long conversations.`,
        "warn",
      ),
    );
  }
  if (tokens.n_without_trained_tokens > 0) {
    parts.push(notice(`${formatNumber(tokens.n_without_trained_tokens)} example(s) have no trained tokens (no assistant message with weight 1 inside the context), so they teach nothing.`, "warn"));
  }
  if (scalars.length) {
    parts.push(
      h(
        "dl",
        { class: "kv token-facts" },
        scalars.map(([k, v]) =>
          h(
            "div",
            { dataset: { token: k } },
            h("dt", {}, humanize(k)),
            h("dd", {}, typeof v === "number" ? formatNumber(v, 3) : String(v)),
            LABELS[k] ? h("dd", { class: "help" }, LABELS[k][1]) : null,
          ),
        ),
      ),
    );
  }
  if (statsRows.length) {
    parts.push(
      table({
        caption: "Token counts per example, with the model's own chat template",
        columns: [h("span", { class: "visually-hidden" }, "Measure"), ...columns.map((c) => (c === "p50" ? "median (p50)" : c))],
        rows: statsRows.map(([k, v]) => [h("strong", {}, humanize(k)), ...columns.map((c) => (typeof v[c] === "number" ? formatNumber(v[c], 1) : "—"))]),
        className: "token-stats",
      }),
    );
  }
  const bins = findBins(tokens);
  if (bins && bins.length) {
    parts.push(
      createHistogram({
        title: "Tokens per example",
        xLabel: "tokens per example (rendered with the chat template)",
        bins,
        limit: ctx,
        limitLabel: "context length",
      }),
    );
  } else {
    parts.push(h("p", { class: "muted" }, "This report carries no per-example token distribution, so there is no histogram."));
  }
  return section("Tokens", ...parts);
}
