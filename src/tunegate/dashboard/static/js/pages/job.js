/**
 * One fine-tuning job, live: status and progress, hyperparameters, the loss and accuracy charts
 * (train, validation, full validation), events, checkpoints, cancel/pause/resume, result files
 * and the safety report.
 *
 * Owns polling the job, its events (newest first; only the new ones are fetched each round) and
 * checkpoints while the job is unfinished. The safety section is drawn by pages/safety.js.
 */

import * as api from "../api.js";
import { UNFINISHED as ACTIVE } from "../lifecycle.js";
import { h, replace, table, badge, details, formatTime, formatNumber, formatLoss, formatPercent, formatDuration, errorBox, section, announce, confirmDialog, idCode } from "../ui.js";
import { createMetricChart } from "../chart.js";
import { createSafetySection } from "./safety.js";

const POLL_MS = 1500;

/** The events of a job, kept in order; `poll()` fetches only those newer than the ones we have. */
export class EventFeed {
  constructor(jobId) {
    this.jobId = jobId;
    this.byId = new Map();
    this.newestFirst = [];
  }

  async poll() {
    const fresh = [];
    let after;
    for (let page = 0; page < 100; page++) {
      const res = await api.get(`fine_tuning/jobs/${this.jobId}/events`, { query: { limit: 100, after } });
      let reachedKnown = false;
      for (const e of res.data) {
        if (this.byId.has(e.id)) {
          reachedKnown = true;
          break;
        }
        fresh.push(e);
      }
      if (reachedKnown || !res.has_more || !res.data.length) break;
      after = res.data[res.data.length - 1].id;
    }
    for (const e of fresh) this.byId.set(e.id, e);
    this.newestFirst = [...fresh, ...this.newestFirst];
    return fresh;
  }

  /** One point per step (a resumed job may repeat a step: the latest report wins). */
  metrics() {
    const byStep = new Map();
    for (const e of [...this.newestFirst].reverse()) {
      if (e.type === "metrics" && e.data && typeof e.data.step === "number") byStep.set(e.data.step, { ...byStep.get(e.data.step), ...e.data });
    }
    return [...byStep.values()].sort((a, b) => a.step - b.step);
  }
}

export async function render(main, { id }) {
  let job = await api.get(`fine_tuning/jobs/${id}`);
  const feed = new EventFeed(id);
  const title = h("h1", {}, job.suffix || "Fine-tuning job");
  const statusEl = h("span", { id: "job-status" });
  const controls = h("div", { class: "actions", role: "group", "aria-label": "Job controls" });
  const actionStatus = h("div", { id: "job-action-status" });
  const errorHolder = h("div");
  const progressHolder = h("div", { class: "progress-block" });
  const summary = h("div");
  const resultsHolder = h("div");
  const charts = metricCharts(job.method?.type || "supervised").map((spec) => createMetricChart(spec));
  charts.slice(1).forEach((c) => (c.el.hidden = true));
  const chartTabs = metricTabs(charts.map((c) => c.el), metricCharts(job.method?.type || "supervised").map((spec) => spec.title));
  const eventsHolder = h("div", { class: "events", id: "job-events", tabindex: "0", role: "region", "aria-label": "Job events, newest first" });
  const checkpointsHolder = h("div", { id: "job-checkpoints" });
  const safety = createSafetySection(id);
  const pollError = h("div");

  main.append(
    h(
      "div",
      { class: "page-head" },
      h("div", {}, h("p", { class: "crumbs" }, h("a", { href: "#/jobs" }, "Jobs"), " / ", idCode(id)), h("div", { class: "title-row" }, title, statusEl)),
      controls,
    ),
    actionStatus,
    pollError,
    errorHolder,
    h("div", { class: "grid-2" }, section("Progress", progressHolder, summary), section("Metrics", chartTabs, ...charts.map((c) => c.el))),
    resultsHolder,
    section("Checkpoints", checkpointsHolder),
    safety.el,
    section("Events", h("p", { class: "help" }, "Newest first."), eventsHolder),
  );

  const runAction = async (action) => {
    replace(actionStatus);
    if (action === "cancel" && !(await confirmDialog(`Cancel job ${id}? Training stops after the current step.`, { confirmLabel: "Cancel job", danger: true }))) return;
    try {
      job = await api.post(`fine_tuning/jobs/${id}/${action}`, {});
      announce(`Job ${action} requested; status is now ${job.status.replace(/_/g, " ")}.`);
      draw();
      schedule(0);
    } catch (err) {
      replace(actionStatus, errorBox(err, { title: `Could not ${action} the job` }));
    }
  };

  let lastStatus = null;
  function draw() {
    replace(statusEl, badge(job.status));
    if (lastStatus && lastStatus !== job.status) announce(`Job status: ${job.status.replace(/_/g, " ")}.`);
    lastStatus = job.status;
    const buttons = [];
    if (job.status === "running" || job.status === "queued") buttons.push(button("Pause", () => runAction("pause")));
    if (job.status === "paused") buttons.push(button("Resume", () => runAction("resume"), "btn-primary"));
    if (ACTIVE.has(job.status)) buttons.push(button("Cancel job", () => runAction("cancel"), "btn-danger"));
    if (job.status === "succeeded" && job.fine_tuned_model) {
      buttons.push(h("a", { class: "btn btn-primary", href: `#/playground?model=${encodeURIComponent(job.fine_tuned_model)}&compare=${encodeURIComponent(job.model)}` }, "Try in playground"));
    }
    replace(controls, buttons);
    replace(
      errorHolder,
      job.error && job.error.message
        ? errorBox({ message: job.error.message, code: job.error.code, param: job.error.param }, { title: job.error.code === "unsafe_model" || job.error.code === "unsafe_training_file" ? "Blocked by the safety checks" : "The job failed" })
        : null,
    );
    const points = feed.metrics();
    const latest = points[points.length - 1] || job.progress || {};
    const total = latest.total_steps;
    replace(progressHolder);
    if (total) {
      const pct = Math.min(100, Math.round(((latest.step || 0) / total) * 100));
      progressHolder.append(
        h("label", { for: "job-progress" }, `Step ${formatNumber(latest.step)} of ${formatNumber(total)}`),
        h("progress", { id: "job-progress", max: String(total), value: String(latest.step || 0) }),
        h("p", { class: "muted" }, `${pct}%`, job.estimated_finish > Date.now() / 1000 && ACTIVE.has(job.status) ? ` · about ${formatDuration(job.estimated_finish - Date.now() / 1000)} left` : ""),
      );
    } else if (ACTIVE.has(job.status)) {
      progressHolder.append(h("p", { class: "muted" }, job.status === "validating_files" ? "Checking the training data…" : job.status === "queued" ? "Waiting for a worker…" : "Starting…"));
    }
    const hp = job.hyperparameters || {};
    replace(
      summary,
      details([
        ["Base model", h("code", {}, job.model)],
        ["Fine-tuned model", job.fine_tuned_model ? h("code", { class: "id", id: "fine-tuned-model" }, job.fine_tuned_model) : "—"],
        ["Training file", h("a", { href: `#/files/${job.training_file}` }, idCode(job.training_file))],
        ["Validation file", job.validation_file ? h("a", { href: `#/files/${job.validation_file}` }, idCode(job.validation_file)) : "—"],
        ["Epochs", String(hp.n_epochs ?? "auto")],
        ["Batch size", String(hp.batch_size ?? "auto")],
        ["Learning rate multiplier", String(hp.learning_rate_multiplier ?? "auto")],
        ["Seed", String(job.seed)],
        ["Trained tokens", formatNumber(job.trained_tokens)],
        ["Latest training loss", formatLoss(lastValue(points, "train_loss"))],
        ["Latest full validation loss", formatLoss(lastValue(points, "full_valid_loss"))],
        ["Latest training accuracy", formatPercent(lastValue(points, "train_mean_token_accuracy"))],
        ["Created", formatTime(job.created_at)],
        ["Finished", formatTime(job.finished_at)],
      ], { compact: true }),
    );
    charts.forEach((c) => c.update(points, { xMax: total }));
    drawResults();
  }

  function drawResults() {
    if (!job.result_files || !job.result_files.length) {
      replace(resultsHolder);
      return;
    }
    const status = h("div");
    replace(
      resultsHolder,
      section(
        "Result files",
        h("p", { class: "help" }, "The per-step metrics as CSV (step, train_loss, train_accuracy, valid_loss, valid_mean_token_accuracy)."),
        status,
        h(
          "ul",
          { class: "plain" },
          job.result_files.map((fid) => {
            const b = h("button", { type: "button", class: "btn btn-small", dataset: { resultFile: fid } }, `Download ${fid}`);
            b.addEventListener("click", () => api.download(`/v1/files/${fid}/content`, `${id}-${fid}.csv`).catch((err) => replace(status, errorBox(err, { title: "Could not download the result file" }))));
            return h("li", {}, b);
          }),
        ),
      ),
    );
  }

  function drawEvents() {
    replace(
      eventsHolder,
      feed.newestFirst.length
        ? h(
            "ol",
            { class: "event-list" },
            feed.newestFirst.slice(0, 300).map((e) =>
              h("li", { class: `event event-${e.level}`, dataset: { type: e.type } }, formatTime(e.created_at), h("span", { class: `level level-${e.level}` }, e.level), h("span", { class: "event-message" }, e.message)),
            ),
          )
        : h("p", { class: "muted" }, "No events yet."),
    );
  }

  async function loadCheckpoints() {
    const cks = await api.listAll(`fine_tuning/jobs/${id}/checkpoints`, { limit: 100, maxPages: 2 });
    replace(
      checkpointsHolder,
      table({
        caption: "Checkpoints (one per epoch; the last few are kept)",
        columns: ["Step", "Model name", "Training loss", "Full validation loss", "Full validation accuracy", "Created", h("span", { class: "visually-hidden" }, "Actions")],
        rows: cks.map((c) => [
          String(c.step_number),
          h("code", { class: "id" }, c.fine_tuned_model_checkpoint),
          formatLoss(c.metrics?.train_loss),
          formatLoss(c.metrics?.full_valid_loss),
          formatPercent(c.metrics?.full_valid_mean_token_accuracy),
          formatTime(c.created_at),
          job.status === "succeeded" ? h("a", { href: `#/playground?model=${encodeURIComponent(c.fine_tuned_model_checkpoint)}` }, "Chat") : "",
        ]),
        empty: ACTIVE.has(job.status) ? "Checkpoints appear at the end of each epoch." : "No checkpoints.",
      }),
    );
  }

  let stopped = false;
  let timer = null;
  let busy = false;
  let checkpointsCount = -1;
  function schedule(ms) {
    clearTimeout(timer);
    if (!stopped) timer = setTimeout(tick, ms);
  }

  async function tick(first = false) {
    if (busy || stopped) return;
    busy = true;
    const wasActive = ACTIVE.has(job.status);
    try {
      job = await api.get(`fine_tuning/jobs/${id}`);
      const fresh = await feed.poll();
      if (stopped) return;
      replace(pollError);
      const nCk = feed.newestFirst.filter((e) => e.type === "checkpoint").length;
      if (first || nCk !== checkpointsCount || (wasActive && !ACTIVE.has(job.status))) {
        checkpointsCount = nCk;
        await loadCheckpoints();
      }
      if (first || fresh.some((e) => e.type === "moderation_checks") || (wasActive && !ACTIVE.has(job.status))) {
        await safety.refresh(job, feed.newestFirst);
      }
      draw();
      if (fresh.length || first) drawEvents();
    } catch (err) {
      if (!stopped) replace(pollError, errorBox(err, { title: "Could not refresh the job (retrying)" }));
    } finally {
      busy = false;
    }
    if (ACTIVE.has(job.status)) schedule(POLL_MS);
  }

  draw();
  await tick(true);
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

function lastValue(points, key) {
  for (let i = points.length - 1; i >= 0; i--) if (typeof points[i][key] === "number") return points[i][key];
  return null;
}

function button(label, onClick, cls = "") {
  const b = h("button", { type: "button", class: `btn ${cls}` }, label);
  b.addEventListener("click", onClick);
  return b;
}

/** The metric charts of a job's method: SFT loss and token accuracy; DPO loss, the implicit rewards of
 * both answers, their margin and accuracy; reinforcement mean reward (training groups, held-out) and KL. */
function metricCharts(method) {
  const trio = (prefix, suffix, what) => [
    { key: `train_${suffix}`, name: `Training ${what}`, kind: "line", className: "train" },
    { key: `valid_${suffix}`, name: `Validation ${what}${prefix}`, kind: "dashed", className: "valid" },
    { key: `full_valid_${suffix}`, name: `Full validation ${what} (epoch end)`, kind: "markers", className: "full" },
  ];
  const loss = { title: "Loss", yLabel: "loss", id: "loss-chart", series: trio(" (one batch)", "loss", "loss") };
  if (method === "dpo") {
    return [
      loss,
      {
        title: "Rewards",
        yLabel: "implicit reward (beta x log-ratio)",
        id: "rewards-chart",
        series: [
          { key: "train_rewards_chosen", name: "Preferred answer", kind: "line", className: "train" },
          { key: "train_rewards_rejected", name: "Non-preferred answer", kind: "dashed", className: "valid" },
        ],
      },
      { title: "Margin", yLabel: "reward margin", id: "margin-chart", series: trio(" (one batch)", "rewards_margin", "margin") },
      { title: "Preference accuracy", yLabel: "share of pairs preferred right", id: "preference-accuracy-chart", series: trio(" (one batch)", "rewards_accuracy", "accuracy") },
    ];
  }
  if (method === "reinforcement") {
    return [
      {
        title: "Reward",
        yLabel: "mean reward",
        id: "reward-chart",
        series: [
          { key: "train_reward_mean", name: "Training groups (sampled)", kind: "line", className: "train" },
          { key: "valid_reward_mean", name: "Held-out prompts", kind: "dashed", className: "valid" },
          { key: "base_valid_reward_mean", name: "Base model, held-out prompts", kind: "markers", className: "full" },
        ],
      },
      { title: "KL", yLabel: "KL to the base model", id: "kl-chart", series: [{ key: "train_kl", name: "KL (k3 estimate)", kind: "line", className: "train" }] },
    ];
  }
  return [
    loss,
    { title: "Token accuracy", yLabel: "mean token accuracy", id: "accuracy-chart", series: trio(" (one batch)", "mean_token_accuracy", "accuracy") },
  ];
}

/** Tab buttons switching between the metric charts (WAI-ARIA tabs pattern). */
function metricTabs(panels, labels) {
  const tabs = labels.map((label, i) =>
    h("button", { type: "button", role: "tab", id: `metric-tab-${i}`, "aria-selected": i === 0 ? "true" : "false", tabindex: i === 0 ? "0" : "-1", class: "tab" }, label),
  );
  panels.forEach((p, i) => {
    p.setAttribute("role", "tabpanel");
    p.setAttribute("aria-labelledby", `metric-tab-${i}`);
  });
  const select = (i) => {
    tabs.forEach((t, j) => {
      t.setAttribute("aria-selected", String(i === j));
      t.tabIndex = i === j ? 0 : -1;
      panels[j].hidden = i !== j;
    });
    tabs[i].focus();
  };
  tabs.forEach((t, i) => {
    t.addEventListener("click", () => select(i));
    t.addEventListener("keydown", (e) => {
      if (e.key === "ArrowRight") select((i + 1) % tabs.length);
      if (e.key === "ArrowLeft") select((i + tabs.length - 1) % tabs.length);
    });
  });
  return h("div", { role: "tablist", class: "tabs", "aria-label": "Metric" }, tabs);
}
