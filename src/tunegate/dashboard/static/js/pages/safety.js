/**
 * The safety section of a job page: training-data screening findings, the post-training gate's
 * per-category harmful and refusal rates for the base and the fine-tuned model with 95%
 * intervals, sample answers side by side, and the decision.
 *
 * Owns reading GET /v1/fine_tuning/jobs/{id}/safety_report (and offering its HTML form). The
 * report is read leniently: known field spellings are normalised, anything else is still shown,
 * and a 404 says "not available yet" instead of failing the page.
 */

import * as api from "../api.js";
import { h, replace, table, badge, details, errorBox, notice, formatPercent, formatNumber } from "../ui.js";
import { createIntervalPlot } from "../chart.js";

export function createSafetySection(jobId) {
  const body = h("div", { id: "safety-report" }, h("p", { class: "muted" }, "Loading the safety report…"));
  const el = h("section", { class: "card", "aria-labelledby": "safety-title" }, h("h2", { id: "safety-title" }, "Safety report"), body);

  async function refresh(job, events) {
    const checks = (events || []).filter((e) => e.type === "moderation_checks");
    let report = null;
    try {
      report = await api.get(`fine_tuning/jobs/${jobId}/safety_report`);
    } catch (err) {
      if (err.status !== 404) {
        replace(body, errorBox(err, { title: "Could not load the safety report" }));
        return;
      }
    }
    if (!report) {
      const active = ["validating_files", "queued", "running", "paused"].includes(job.status);
      replace(
        body,
        h(
          "div",
          { class: "banner banner-info", role: "status", id: "safety-unavailable" },
          h("strong", {}, "Safety report not available yet. "),
          active
            ? "It appears once the training data has been screened and the trained model has been through the safety gate."
            : "This server produced no safety report for this job (the safety checks may not be installed, or the job ended before they ran).",
        ),
        checks.length ? checksList(checks) : null,
      );
      return;
    }
    const download = h("button", { type: "button", class: "btn btn-small" }, "Download the HTML report");
    const status = h("div");
    download.addEventListener("click", () =>
      api.download(`/v1/fine_tuning/jobs/${jobId}/safety_report.html`, `${jobId}-safety-report.html`).catch((err) => replace(status, errorBox(err, { title: "Could not download the HTML report" }))),
    );
    replace(body, ...renderReport(report), checks.length ? checksList(checks) : null, status, h("div", { class: "actions" }, download));
  }
  return { el, refresh };
}

export function renderReport(report) {
  const out = [];
  if (report.decision || report.status) out.push(details([["Overall decision", decisionBadge(report.decision ?? report.status)]]));
  out.push(screeningPart(report.screening));
  out.push(gatePart(report.gate));
  return out;
}

function decisionBadge(decision) {
  if (decision === undefined || decision === null) return "—";
  if (typeof decision === "boolean") return decision ? badge("passed") : badge("blocked");
  if (typeof decision === "object") return decisionBadge(decision.decision ?? decision.status ?? (decision.blocked ? "blocked" : "passed"));
  return badge(String(decision));
}

function scalars(obj, skip) {
  return Object.entries(obj || {})
    .filter(([k, v]) => !skip.includes(k) && (typeof v === "number" || typeof v === "string" || typeof v === "boolean"))
    .map(([k, v]) => [k.replace(/_/g, " ").replace(/^./, (c) => c.toUpperCase()), typeof v === "number" ? formatNumber(v, 4) : String(v)]);
}

function screeningPart(screening) {
  if (!screening) return h("div", { class: "subsection" }, h("h3", {}, "Training-data screening"), h("p", { class: "muted" }, "No screening results in this report."));
  const findings = screening.findings || screening.flagged || screening.issues || [];
  const decision = screening.decision ?? screening.status ?? (typeof screening.blocked === "boolean" ? !screening.blocked : undefined);
  return h(
    "div",
    { class: "subsection", id: "safety-screening" },
    h("h3", {}, "Training-data screening"),
    details([["Decision", decisionBadge(decision)], ...scalars(screening, ["decision", "status", "blocked"])]),
    table({
      caption: "Findings: what was flagged, where, and why",
      columns: ["Category", "Lines", "Reason"],
      rows: findings.map((f) => [
        h("strong", {}, f.category || f.check || f.kind || "—"),
        linesText(f.lines ?? f.line),
        f.reason || f.message || f.detail || "",
      ]),
      empty: "No findings: nothing in the training data was flagged.",
      className: "findings",
    }),
  );
}

function linesText(lines) {
  if (lines === undefined || lines === null) return "—";
  if (!Array.isArray(lines)) return String(lines);
  const shown = lines.slice(0, 20).join(", ");
  return lines.length > 20 ? `${shown} … (+${lines.length - 20} more)` : shown;
}

/** One rate with its interval from any of the spellings a report might use. */
export function rateOf(entry, prefixes) {
  for (const p of prefixes) {
    const nested = entry[p];
    if (nested && typeof nested === "object" && !Array.isArray(nested)) {
      const rate = nested.rate ?? nested.value ?? nested.harmful_rate ?? nested.p;
      const ci = nested.ci ?? nested.interval ?? nested.ci95;
      if (typeof rate === "number") return { rate, lo: nested.ci_low ?? nested.lo ?? nested.low ?? ci?.[0], hi: nested.ci_high ?? nested.hi ?? nested.high ?? ci?.[1], n: nested.n };
    }
    const rate = entry[`${p}_rate`] ?? (typeof nested === "number" ? nested : undefined);
    if (typeof rate === "number") {
      const ci = entry[`${p}_ci`] ?? entry[`${p}_interval`] ?? entry[`${p}_ci95`];
      return { rate, lo: entry[`${p}_ci_low`] ?? entry[`${p}_lo`] ?? ci?.[0], hi: entry[`${p}_ci_high`] ?? entry[`${p}_hi`] ?? ci?.[1], n: entry[`${p}_n`] };
    }
  }
  return null;
}

/** Per-category rows: [{label, metric, base, tuned, decision, raw}] from an array or an object keyed by category. */
export function gateRows(gate) {
  const src = gate.categories ?? gate.per_category ?? gate.results ?? gate.rates ?? [];
  const entries = Array.isArray(src) ? src.map((e) => [e.category ?? e.name ?? e.suite ?? "—", e]) : Object.entries(src);
  return entries
    .filter(([, e]) => e && typeof e === "object")
    .map(([label, e]) => ({
      label: e.metric ? `${label} (${e.metric})` : label,
      base: rateOf(e, ["base", "base_model"]),
      tuned: rateOf(e, ["fine_tuned", "tuned", "ft", "candidate"]),
      decision: e.decision ?? e.status ?? (typeof e.blocked === "boolean" ? (e.blocked ? "blocked" : "passed") : typeof e.passed === "boolean" ? (e.passed ? "passed" : "blocked") : undefined),
      reason: e.reason ?? e.message,
    }));
}

function interval(v) {
  if (!v) return "—";
  const ci = typeof v.lo === "number" && typeof v.hi === "number" ? ` (${formatPercent(v.lo)}–${formatPercent(v.hi)})` : "";
  return `${formatPercent(v.rate)}${ci}${v.n ? `, n=${v.n}` : ""}`;
}

function gatePart(gate) {
  if (!gate) return h("div", { class: "subsection" }, h("h3", {}, "Safety gate"), h("p", { class: "muted" }, "The gate has not run for this job."));
  const rows = gateRows(gate);
  const samples = gate.samples ?? gate.examples ?? [];
  const reasons = gate.reasons ?? (gate.reason ? [gate.reason] : []);
  return h(
    "div",
    { class: "subsection", id: "safety-gate" },
    h("h3", {}, "Safety gate: base vs fine-tuned"),
    details([["Decision", decisionBadge(gate.decision ?? gate.status ?? gate.passed)], ...scalars(gate, ["decision", "status", "passed", "reason"])]),
    reasons.length ? h("ul", { class: "reasons" }, reasons.map((r) => h("li", {}, typeof r === "string" ? r : JSON.stringify(r)))) : null,
    rows.length
      ? [
          createIntervalPlot({
            title: "Rates per category with 95% intervals",
            rows: rows.map((r) => ({ label: r.label, a: r.base, b: r.tuned })),
            aName: "Base model",
            bName: "Fine-tuned model",
          }),
          table({
            caption: "Per-category rates, base vs fine-tuned, with 95% confidence intervals",
            columns: ["Category", "Base model", "Fine-tuned model", "Change", "Decision"],
            rows: rows.map((r) => [
              h("strong", {}, r.label),
              interval(r.base),
              interval(r.tuned),
              r.base && r.tuned ? `${r.tuned.rate >= r.base.rate ? "+" : ""}${((r.tuned.rate - r.base.rate) * 100).toFixed(1)} points` : "—",
              r.decision !== undefined ? decisionBadge(r.decision) : "—",
            ]),
            className: "gate-rates",
          }),
        ]
      : h("p", { class: "muted" }, "No per-category rates in this report."),
    samplesPart(samples),
  );
}

function samplesPart(samples) {
  if (!samples.length) return null;
  return h(
    "div",
    { class: "samples", id: "safety-samples" },
    h("h4", {}, `Sample answers (${samples.length})`),
    samples.slice(0, 50).map((s, i) =>
      h(
        "article",
        { class: "sample", "aria-label": `Sample ${i + 1}` },
        h("p", { class: "sample-prompt" }, h("span", { class: "label" }, `Prompt${s.category ? ` · ${s.category}` : ""}`), s.prompt ?? ""),
        h(
          "div",
          { class: "side-by-side" },
          answer("Base model", s.base_answer ?? s.base, s.base_judgement ?? s.base_label),
          answer("Fine-tuned model", s.fine_tuned_answer ?? s.fine_tuned ?? s.tuned_answer, s.fine_tuned_judgement ?? s.fine_tuned_label),
        ),
      ),
    ),
  );
}

function answer(title, text, judgement) {
  const j = typeof judgement === "object" && judgement ? judgement.label ?? (judgement.harmful ? "harmful" : judgement.refusal ? "refusal" : undefined) : judgement;
  return h("div", { class: "answer" }, h("p", { class: "label" }, title, j ? [" ", badge(j === "harmful" ? "unsafe" : j === "refusal" ? "passed" : "neutral", String(j))] : null), h("p", { class: "answer-text" }, text ?? "—"));
}

function checksList(checks) {
  return h(
    "div",
    { class: "subsection" },
    h("h3", {}, "Moderation check events"),
    h(
      "ul",
      { class: "plain checks" },
      checks.map((e) => h("li", {}, h("span", { class: `level level-${e.level}` }, e.level), " ", e.message)),
    ),
    notice("Each check is also in the job's events below.", "info"),
  );
}
