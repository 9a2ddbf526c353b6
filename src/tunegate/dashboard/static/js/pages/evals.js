/**
 * Evals page: the organisation's evals with their testing criteria and latest runs.
 *
 * Owns GET /v1/evals and GET /v1/evals/{id}/runs. A run's own page is pages/eval_run.js.
 */

import * as api from "../api.js";
import { h, replace, table, badge, formatTime, errorBox, idCode, formatPercent } from "../ui.js";

export async function render(main) {
  const holder = h("div", { "aria-busy": "true" }, h("p", { class: "muted" }, "Loading evals…"));
  main.append(
    h("div", { class: "page-head" }, h("h1", {}, "Evals")),
    h("p", { class: "help" }, "Create evals and runs with the API (", h("code", {}, "client.evals.create"), ", ",
      h("code", {}, "client.evals.runs.create"), "); their results show here."),
    h("section", { class: "card", "aria-labelledby": "evals-title" }, h("h2", { id: "evals-title" }, "Evals"), holder),
  );
  let stopped = false;
  let timer = null;
  async function refresh() {
    try {
      const evals = await api.listAll("evals", { limit: 100, maxPages: 5, query: { order: "desc" } });
      const runs = await Promise.all(evals.map((e) => api.listAll(`evals/${e.id}/runs`, { limit: 100, maxPages: 1, query: { order: "desc" } })));
      if (stopped) return;
      replace(holder, evalTable(evals, runs));
      holder.setAttribute("aria-busy", "false");
      clearTimeout(timer);
      if (runs.flat().some((r) => r.status === "queued" || r.status === "in_progress")) timer = setTimeout(refresh, 3000);
    } catch (err) {
      if (stopped) return;
      holder.setAttribute("aria-busy", "false");
      replace(holder, errorBox(err, { title: "Could not list evals" }));
    }
  }
  await refresh();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

function passRate(run) {
  const c = run.result_counts;
  return c.total ? formatPercent(c.passed / c.total) : "—";
}

function evalTable(evals, runs) {
  return table({
    caption: "Evals, newest first, with their runs",
    captionHidden: true,
    columns: ["Eval", "Testing criteria", "Runs (model: pass rate)", "Created"],
    rows: evals.map((e, i) =>
      h(
        "tr",
        { dataset: { evalId: e.id } },
        h("td", {}, h("strong", {}, e.name), " ", idCode(e.id)),
        h("td", {}, e.testing_criteria.map((c) => h("div", {}, h("code", {}, c.name), " ", h("span", { class: "muted" }, c.type)))),
        h(
          "td",
          {},
          runs[i].length
            ? runs[i].map((r) =>
                h("div", {}, h("a", { href: `#/evals/${e.id}/runs/${r.id}` }, r.name), " ", badge(r.status), " ",
                  h("span", { class: "num" }, passRate(r))),
              )
            : h("span", { class: "muted" }, "No runs yet"),
        ),
        h("td", {}, formatTime(e.created_at)),
      ),
    ),
    empty: "No evals yet.",
  });
}
