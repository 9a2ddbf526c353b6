/**
 * The safety section of a job page: training-data screening (findings, flagged lines, counts per
 * category), the post-training gate (harmful-answer and refusal rates of the base and the
 * fine-tuned model with 95% intervals, overall and per category; the reasons for its decision)
 * and the answers of both models side by side.
 *
 * Owns reading GET /v1/fine_tuning/jobs/{id}/safety_report ({screening: ScreeningReport,
 * gate: GateReport}, see safety/screen.py and safety/gate.py) and offering its HTML page. A 404
 * says "not available yet" instead of failing the page; a field the page does not know is
 * skipped, never fatal.
 */

import * as api from "../api.js";
import { UNFINISHED } from "../lifecycle.js";
import { h, replace, table, badge, details, errorBox, formatPercent, formatNumber } from "../ui.js";
import { createIntervalPlot } from "../chart.js";

const SAMPLES_SHOWN = 40;

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
    if (!report || (!report.screening && !report.gate)) {
      const active = UNFINISHED.has(job.status);
      replace(
        body,
        h(
          "div",
          { class: "banner banner-info", role: "status", id: "safety-unavailable" },
          h("strong", {}, "Safety report not available yet. "),
          active
            ? "It appears once the training data has been screened and the trained model has been through the safety gate."
            : "This server produced no safety report for this job (the safety checks may be off, or the job ended before they ran).",
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
    replace(body, overridePart(report.override), screeningPart(report.screening), gatePart(report.gate), checks.length ? checksList(checks) : null, status, h("div", { class: "actions" }, download));
  }
  return { el, refresh };
}

function overridePart(o) {
  if (!o) return null;
  return h(
    "div",
    { class: "banner banner-warn", role: "status", id: "safety-override" },
    h("strong", {}, "Served by an admin override. "),
    `Reason: ${o.reason || "(none given)"}`,
    o.by ? h("p", {}, "By key ", h("code", {}, o.by), ". The override is in the audit log.") : null,
  );
}

function decisionOf(part) {
  if (!part) return null;
  if (part.decision) return part.decision;
  if (typeof part.blocked === "boolean") return part.blocked ? "blocked" : "passed";
  return null;
}

function screeningPart(s) {
  const head = h("h3", {}, "Training-data screening");
  if (!s) return h("div", { class: "subsection", id: "safety-screening" }, head, h("p", { class: "muted" }, "The training data was not screened for this job."));
  const decision = decisionOf(s);
  const findings = s.findings || [];
  const flaggedLines = (s.lines || []).filter((l) => l.flagged);
  const counts = Object.entries(s.category_counts || {}).filter(([, n]) => n > 0).sort((a, b) => b[1] - a[1]);
  return h(
    "div",
    { class: "subsection", id: "safety-screening" },
    head,
    s.message ? h("div", { class: `banner ${decision === "blocked" ? "banner-error" : "banner-ok"}`, role: decision === "blocked" ? "alert" : "status" }, s.message) : null,
    details([
      ["Decision", decision ? badge(decision) : "—"],
      ["Examples screened", formatNumber(s.n_examples)],
      ["Examples flagged", formatNumber(s.n_flagged)],
      ["Moderator", s.moderator ? h("code", {}, s.moderator) : undefined],
      ["Lines skipped (not chat examples)", s.skipped_lines?.length ? formatNumber(s.skipped_lines.length) : undefined],
    ]),
    h("h4", {}, "Findings"),
    table({
      caption: "What was found, on which lines, and why",
      captionHidden: true,
      columns: ["Check", "Category", "Lines", "Blocks the job", "Reason"],
      rows: findings.map((f) => [
        h("strong", {}, (f.check || "—").replace(/_/g, " ")),
        f.category ? h("code", {}, f.category) : "—",
        linesText(f.lines ?? f.line),
        typeof f.blocking === "boolean" ? (f.blocking ? badge("blocked", "yes") : badge("neutral", "no")) : "—",
        f.reason || f.message || "",
      ]),
      empty: "No findings: nothing in the training data was flagged.",
      className: "findings",
    }),
    counts.length
      ? h(
          "div",
          {},
          h("h4", {}, "Flagged examples by category"),
          h("ul", { class: "code-counts" }, counts.map(([c, n]) => h("li", {}, h("code", {}, c), ` × ${formatNumber(n)}`))),
        )
      : null,
    flaggedLines.length
      ? h(
          "details",
          { class: "problem-list" },
          h("summary", {}, `Show the ${formatNumber(flaggedLines.length)} flagged line(s)`),
          table({
            caption: "Flagged lines of the training file",
            captionHidden: true,
            columns: ["Line", "Categories", "Highest score", "Why"],
            rows: flaggedLines.slice(0, 200).map((l) => [String(l.line), (l.categories || []).join(", "), typeof l.max_score === "number" ? l.max_score.toFixed(2) : "—", (l.reasons || []).join("; ")]),
          }),
        )
      : null,
  );
}

function linesText(lines) {
  if (lines === undefined || lines === null) return "—";
  if (!Array.isArray(lines)) return String(lines);
  const shown = lines.slice(0, 20).join(", ");
  return lines.length > 20 ? `${shown} … (+${lines.length - 20} more)` : shown;
}

/** A RateEstimate ({rate, ci_low, ci_high, count, n}) in the plot's {rate, lo, hi} form. */
export function toInterval(r) {
  if (!r || typeof r.rate !== "number") return null;
  return { rate: r.rate, lo: r.ci_low ?? r.ci?.[0], hi: r.ci_high ?? r.ci?.[1], n: r.n, count: r.count };
}

function interval(v) {
  if (!v) return "—";
  const ci = typeof v.lo === "number" && typeof v.hi === "number" ? ` (95% CI ${formatPercent(v.lo)}–${formatPercent(v.hi)})` : "";
  const counts = typeof v.count === "number" && v.n ? `, ${v.count} of ${v.n}` : "";
  return `${formatPercent(v.rate)}${ci}${counts}`;
}

function change(a, b) {
  if (!a || !b) return "—";
  const d = (b.rate - a.rate) * 100;
  return `${d >= 0 ? "+" : "−"}${Math.abs(d).toFixed(1)} points`;
}

const OVERALL = [
  ["harmful", "Harmful answers to harmful prompts"],
  ["harmful_refusal", "Refusals of harmful prompts"],
  ["benign_refusal", "Refusals of benign prompts (over-refusal)"],
];

function gatePart(g) {
  const head = h("h3", {}, "Safety gate: base vs fine-tuned");
  if (!g) return h("div", { class: "subsection", id: "safety-gate" }, head, h("p", { class: "muted" }, "The gate has not run for this job yet."));
  const decision = decisionOf(g);
  const overall = OVERALL.filter(([k]) => g.base?.[k] && g.tuned?.[k]).map(([k, label]) => ({ label, a: toInterval(g.base[k]), b: toInterval(g.tuned[k]) }));
  const asRows = (list) => (list || []).map((c) => ({ label: c.category, a: toInterval(c.base), b: toInterval(c.tuned), n: c.n, considered: c.considered }));
  const cats = asRows(g.categories);
  const answerCats = asRows(g.answer_categories);
  const policy = g.policy || {};
  return h(
    "div",
    { class: "subsection", id: "safety-gate" },
    head,
    h(
      "div",
      { class: `banner ${decision === "blocked" ? "banner-error" : "banner-ok"}`, role: decision === "blocked" ? "alert" : "status", id: "safety-gate-decision" },
      h("strong", {}, decision === "blocked" ? "Blocked: this model is not served. " : "Passed: the model may be served. "),
      (g.reasons || []).join(" "),
    ),
    details([
      ["Decision", decision ? badge(decision) : "—"],
      ["Harmful-answer margin", typeof policy.harmful_margin === "number" ? `${(policy.harmful_margin * 100).toFixed(0)} points` : undefined],
      ["Harmful-answer cap", typeof policy.harmful_cap === "number" ? formatPercent(policy.harmful_cap, 0) : undefined],
      ["Benign refusal margin", typeof policy.benign_refusal_margin === "number" ? `${(policy.benign_refusal_margin * 100).toFixed(0)} points` : undefined],
      ["Per-category margin", typeof policy.category_margin === "number" ? `${(policy.category_margin * 100).toFixed(0)} points (categories with ≥ ${policy.min_category_prompts ?? "?"} prompts)` : undefined],
      ["Answer-content category margin", typeof policy.answer_category_margin === "number" ? `${(policy.answer_category_margin * 100).toFixed(0)} points` : undefined],
      ["Moderator", g.moderator ? h("code", {}, g.moderator) : undefined],
    ]),
    overall.length ? ratesBlock("Overall rates", overall, "gate-overall") : null,
    cats.length ? ratesBlock("Harmful answers by prompt category", cats, "gate-rates") : null,
    answerCats.length ? ratesBlock("Harmful answers by content category", answerCats, "gate-answer-rates") : null,
    samplesPart(g.samples || []),
  );
}

function ratesBlock(title, rows, className) {
  return h(
    "div",
    {},
    h("h4", {}, title),
    createIntervalPlot({ title: `${title}, with 95% intervals`, rows, aName: "Base model", bName: "Fine-tuned model" }),
    table({
      caption: `${title}: base vs fine-tuned, with 95% confidence intervals`,
      captionHidden: true,
      columns: [h("span", { class: "visually-hidden" }, "Measure"), "Base model", "Fine-tuned model", "Change", ...(rows.some((r) => "considered" in r) ? ["Prompts"] : [])],
      rows: rows.map((r) => [
        h("strong", {}, r.label),
        interval(r.a),
        interval(r.b),
        change(r.a, r.b),
        ...("considered" in r ? [`${formatNumber(r.n)}${r.considered ? "" : " (too few for the per-category rule)"}`] : []),
      ]),
      className,
    }),
  );
}

function judgementBadge(j) {
  if (!j || typeof j !== "object") return null;
  if (j.harmful) return badge("unsafe", "harmful");
  if (j.refused) return badge("neutral", "refused");
  return badge("ok", "answered");
}

function samplesPart(samples) {
  if (!samples.length) return null;
  // Samples where the two models were judged differently are the ones worth reading first.
  const differs = (s) => Boolean(s.base?.harmful) !== Boolean(s.tuned?.harmful) || Boolean(s.base?.refused) !== Boolean(s.tuned?.refused);
  const ordered = [...samples.filter(differs), ...samples.filter((s) => !differs(s))];
  const suite = h("select", { id: "sample-suite" }, h("option", { value: "" }, "All prompts"), h("option", { value: "harmful" }, "Harmful prompts"), h("option", { value: "benign" }, "Benign prompts"));
  const onlyDiff = h("input", { type: "checkbox", id: "sample-diff" });
  const list = h("div", { class: "sample-list" });
  const draw = () => {
    const shown = ordered.filter((s) => (!suite.value || s.suite === suite.value) && (!onlyDiff.checked || differs(s)));
    replace(
      list,
      shown.length ? shown.slice(0, SAMPLES_SHOWN).map(sampleCard) : h("p", { class: "muted" }, "No samples match."),
      shown.length > SAMPLES_SHOWN ? h("p", { class: "muted" }, `Showing ${SAMPLES_SHOWN} of ${shown.length}; the HTML report has them all.`) : null,
    );
  };
  suite.addEventListener("change", draw);
  onlyDiff.addEventListener("change", draw);
  draw();
  return h(
    "div",
    { class: "samples", id: "safety-samples" },
    h("h4", {}, `Answers side by side (${formatNumber(samples.length)} prompts; differently judged first)`),
    h(
      "div",
      { class: "settings-row" },
      h("div", { class: "field narrow-wide" }, h("label", { for: "sample-suite" }, "Suite"), suite),
      h("div", { class: "field checkbox" }, onlyDiff, h("label", { for: "sample-diff" }, "Only prompts where the models were judged differently")),
    ),
    list,
  );
}

function sampleCard(s, i) {
  const base = typeof s.base === "object" && s.base ? s.base : { answer: s.base_answer ?? s.base };
  const tuned = typeof s.tuned === "object" && s.tuned ? s.tuned : { answer: s.fine_tuned_answer ?? s.tuned_answer };
  return h(
    "article",
    { class: "sample", "aria-label": `Prompt ${i + 1}` },
    h("p", { class: "sample-prompt" }, h("span", { class: "label" }, [s.suite, s.category].filter(Boolean).join(" · ") || "prompt"), s.prompt ?? ""),
    h("div", { class: "side-by-side" }, answer("Base model", base), answer("Fine-tuned model", tuned)),
  );
}

function answer(title, j) {
  const flagged = j.flagged_categories?.length ? h("span", { class: "muted" }, ` (${j.flagged_categories.join(", ")})`) : null;
  return h("div", { class: "answer" }, h("p", { class: "label" }, title, " ", judgementBadge(j), flagged), h("p", { class: "answer-text" }, j.answer?.trim() ? j.answer : h("span", { class: "muted" }, "(empty answer)")));
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
  );
}
