/**
 * Eval run page: the run's status, counts overall, per testing criterion and per model, and its
 * output items with each grader's result; another run of the same eval can be put beside it to
 * compare the two models' answers item by item.
 *
 * Owns GET /v1/evals/{id}, /runs, /runs/{run}, /runs/{run}/output_items and the cancel action.
 */

import * as api from "../api.js";
import { h, replace, table, badge, errorBox, idCode, formatPercent, details, actionButton, formatNumber } from "../ui.js";

const ACTIVE = new Set(["queued", "in_progress"]);

export async function render(main, { id, query }) {
  const [evalId, runId] = id.split("/runs/");
  const head = h("div", { class: "page-head" }, h("h1", {}, "Eval run"));
  const summary = h("section", { class: "card", "aria-labelledby": "run-summary" }, h("h2", { id: "run-summary" }, "Summary"));
  const criteria = h("section", { class: "card", "aria-labelledby": "run-criteria" }, h("h2", { id: "run-criteria" }, "Per testing criterion"));
  const items = h("section", { class: "card", "aria-labelledby": "run-items" }, h("h2", { id: "run-items" }, "Answers"));
  main.append(head, summary, criteria, items);
  let stopped = false;
  let timer = null;
  const compareWith = query?.compare || "";

  async function refresh() {
    try {
      const [ev, run, runs] = await Promise.all([
        api.get(`evals/${evalId}`),
        api.get(`evals/${evalId}/runs/${runId}`),
        api.listAll(`evals/${evalId}/runs`, { limit: 100, maxPages: 1 }),
      ]);
      const outputs = await api.listAll(`evals/${evalId}/runs/${runId}/output_items`, { limit: 100, maxPages: 20 });
      const other = compareWith ? await api.listAll(`evals/${evalId}/runs/${compareWith}/output_items`, { limit: 100, maxPages: 20 }) : null;
      if (stopped) return;
      replace(head, h("h1", {}, `${ev.name}: ${run.name}`), ACTIVE.has(run.status)
        ? actionButton("Cancel run", async () => { await api.post(`evals/${evalId}/runs/${runId}/cancel`, {}); await refresh(); })
        : null);
      replace(summary, h("h2", { id: "run-summary" }, "Summary"), summaryBlock(run));
      replace(criteria, h("h2", { id: "run-criteria" }, "Per testing criterion"), criteriaTable(run));
      replace(items, h("h2", { id: "run-items" }, "Answers"), comparePicker(evalId, runId, runs, compareWith),
        itemTable(outputs, other, runs.find((r) => r.id === compareWith)));
      clearTimeout(timer);
      if (ACTIVE.has(run.status)) timer = setTimeout(refresh, 2000);
    } catch (err) {
      if (!stopped) replace(summary, errorBox(err, { title: "Could not load the run" }));
    }
  }
  await refresh();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

function summaryBlock(run) {
  const c = run.result_counts;
  return details([
    ["Run", idCode(run.id)],
    ["Status", badge(run.status)],
    ["Model", run.model ? h("code", {}, run.model) : h("span", { class: "muted" }, "answers given in the data")],
    ["Items", `${formatNumber(c.total)} (${c.passed} passed, ${c.failed} failed, ${c.errored} errored)`],
    ["Pass rate", c.total ? formatPercent(c.passed / c.total) : "—"],
    ["Usage", run.per_model_usage.length ? run.per_model_usage.map((u) => `${u.model_name}: ${u.invocation_count} calls, ${formatNumber(u.total_tokens)} tokens`).join("; ") : "—"],
    ["Error", run.error ? run.error.message : "—"],
  ]);
}

function criteriaTable(run) {
  return table({
    caption: "Passed and failed items per testing criterion",
    captionHidden: true,
    columns: ["Criterion", "Passed", "Failed", "Pass rate"],
    rows: run.per_testing_criteria_results.map((r) => [
      h("code", {}, r.testing_criteria),
      h("span", { class: "num" }, String(r.passed)),
      h("span", { class: "num" }, String(r.failed)),
      r.passed + r.failed ? formatPercent(r.passed / (r.passed + r.failed)) : "—",
    ]),
    empty: "No results yet.",
  });
}

function comparePicker(evalId, runId, runs, selected) {
  const others = runs.filter((r) => r.id !== runId);
  if (!others.length) return null;
  const select = h("select", { id: "compare-run" }, h("option", { value: "" }, "— none —"),
    others.map((r) => h("option", { value: r.id, selected: r.id === selected ? "selected" : undefined }, `${r.name} (${r.model || "jsonl"})`)));
  select.addEventListener("change", () => {
    location.hash = `#/evals/${evalId}/runs/${runId}${select.value ? `?compare=${select.value}` : ""}`;
  });
  return h("p", {}, h("label", { for: "compare-run" }, "Compare side by side with run "), select);
}

function answer(item) {
  if (!item) return h("span", { class: "muted" }, "—");
  const s = item.sample || {};
  const text = s.output_text ?? (s.output && s.output[0] ? s.output[0].content : null);
  const verdicts = (item.results || []).map((r) => h("span", { class: `badge ${r.passed ? "badge-ok" : "badge-bad"}`, title: `score ${r.score}` }, `${r.name}: ${r.passed ? "pass" : "fail"}`));
  return h("div", {}, h("div", { class: "answer" }, s.error ? `error: ${s.error.message}` : text ?? "—"), h("div", {}, verdicts));
}

function itemTable(outputs, other, otherRun) {
  const byId = new Map((other || []).map((o) => [o.datasource_item_id, o]));
  const columns = ["#", "Item", "Status", "Answer and results"];
  if (other) columns.push(`Beside it: ${otherRun ? otherRun.name : "other run"}`);
  return table({
    caption: "Output items with each testing criterion's result",
    captionHidden: true,
    columns,
    rows: outputs.map((o) => {
      const cells = [
        String(o.datasource_item_id),
        h("code", { class: "item" }, JSON.stringify(o.datasource_item)),
        badge(o.status === "fail" ? "failed" : o.status, o.status),
        answer(o),
      ];
      if (other) cells.push(answer(byId.get(o.datasource_item_id)));
      return h("tr", { dataset: { item: String(o.datasource_item_id) } }, cells.map((c) => h("td", {}, c)));
    }),
    empty: "No output items yet.",
  });
}
