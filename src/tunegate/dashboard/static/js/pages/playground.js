/**
 * Playground: chat with any model the key may use, streamed token by token, alone or side by
 * side (the same prompt sent to two models at once, for example the base and the fine-tuned one).
 *
 * Owns the conversations (kept in memory for this page only) and POST /v1/chat/completions with
 * stream: true. Each pane keeps its own history, so the two models never see each other's answers.
 */

import * as api from "../api.js";
import { h, replace, errorBox } from "../ui.js";
import { modelKind } from "./models.js";

class Pane {
  constructor(index, models, selected) {
    this.index = index;
    this.history = [];
    this.select = h(
      "select",
      { id: `pg-model-${index}`, name: `model-${index}` },
      models.map((m) => h("option", { value: m.id }, `${m.id} (${modelKind(m)})`)),
    );
    if (selected) this.select.value = selected;
    this.log = h("div", { class: "chat-log", role: "log", tabindex: "0", "aria-live": "polite", "aria-label": `Conversation with model ${index + 1}`, id: `pg-log-${index}` });
    this.el = h(
      "section",
      { class: "card chat-pane", "aria-labelledby": `pg-title-${index}` },
      h("h2", { id: `pg-title-${index}`, class: "visually-hidden" }, `Model ${index + 1}`),
      h("div", { class: "field" }, h("label", { for: this.select.id }, index === 0 ? "Model" : "Compare with"), this.select),
      this.log,
    );
    this.select.addEventListener("change", () => this.clear());
  }

  clear() {
    this.history = [];
    replace(this.log);
  }

  addMessage(role, text) {
    const content = h("div", { class: "message-text" }, text);
    const msg = h("div", { class: `message message-${role}`, dataset: { role } }, h("p", { class: "message-role" }, role === "user" ? "You" : this.select.value), content);
    this.log.append(msg);
    msg.scrollIntoView({ block: "nearest" });
    return { msg, content };
  }

  async send(text, settings, signal) {
    this.history.push({ role: "user", content: text });
    this.addMessage("user", text);
    const { msg, content } = this.addMessage("assistant", "");
    msg.dataset.streaming = "true";
    msg.setAttribute("aria-busy", "true");
    let chunks = 0;
    let answer = "";
    let finish = null;
    const messages = settings.system ? [{ role: "system", content: settings.system }, ...this.history] : [...this.history];
    const body = { model: this.select.value, messages, stream: true, max_tokens: settings.maxTokens };
    if (settings.temperature !== null) body.temperature = settings.temperature;
    try {
      await api.stream("/v1/chat/completions", body, {
        signal,
        onChunk: (chunk) => {
          const choice = chunk.choices?.[0];
          if (!choice) return;
          const delta = choice.delta?.content;
          if (delta) {
            chunks++;
            answer += delta;
            content.textContent = answer;
            msg.dataset.chunks = String(chunks);
          }
          if (choice.finish_reason) finish = choice.finish_reason;
        },
      });
      this.history.push({ role: "assistant", content: answer });
      if (!answer) content.append(h("span", { class: "muted" }, "(empty answer)"));
      if (finish) {
        msg.dataset.finishReason = finish;
        const why = { length: "stopped at the token limit", content_filter: "stopped by the content filter", stop: "finished" }[finish] || finish;
        msg.append(h("p", { class: `finish finish-${finish}` }, why));
      }
    } catch (err) {
      if (err.name === "AbortError") {
        msg.append(h("p", { class: "finish" }, "stopped by you"));
        this.history.push({ role: "assistant", content: answer });
      } else {
        this.history.pop(); // the failed turn is not part of the conversation
        msg.append(errorBox(err, { title: `${this.select.value} could not answer` }));
      }
    } finally {
      msg.dataset.streaming = "false";
      msg.removeAttribute("aria-busy");
      msg.dataset.chunks = String(chunks);
    }
  }
}

export async function render(main, { query = {} }) {
  const list = await api.get("models");
  const models = list.data;
  if (!models.length) {
    main.append(h("h1", {}, "Playground"), errorBox({ message: "No models are available to this key." }, { title: "Nothing to chat with" }));
    return;
  }
  const tuned = [...models].reverse().find((m) => modelKind(m) === "fine-tuned");
  const base = models.find((m) => modelKind(m) === "base") || models[0];
  const first = models.some((m) => m.id === query.model) ? query.model : (tuned || base).id;
  const second = models.some((m) => m.id === query.compare) ? query.compare : first === base.id && tuned ? tuned.id : base.id;
  const panes = [new Pane(0, models, first), new Pane(1, models, second)];

  const compare = h("input", { type: "checkbox", id: "pg-compare", checked: Boolean(query.compare) });
  const system = h("textarea", { id: "pg-system", rows: "2", placeholder: "Optional instructions for the model" });
  const temperature = h("input", { id: "pg-temperature", type: "number", min: "0", max: "2", step: "0.1", value: "0.7", inputmode: "decimal" });
  const maxTokens = h("input", { id: "pg-max-tokens", type: "number", min: "1", max: "4096", step: "1", value: "256", inputmode: "numeric" });
  const prompt = h("textarea", { id: "pg-prompt", rows: "3", required: true, placeholder: "Ask something… (Enter sends, Shift+Enter adds a line)", "aria-describedby": "pg-status" });
  const send = h("button", { type: "submit", class: "btn btn-primary", id: "pg-send" }, "Send");
  const stop = h("button", { type: "button", class: "btn", id: "pg-stop", disabled: true }, "Stop");
  const clear = h("button", { type: "button", class: "btn btn-quiet", id: "pg-clear" }, "Clear conversation");
  const status = h("p", { id: "pg-status", class: "help", "aria-live": "polite" });
  const paneRow = h("div", { class: "chat-panes" }, panes.map((p) => p.el));

  const layout = () => {
    panes[1].el.hidden = !compare.checked;
    paneRow.classList.toggle("compare", compare.checked);
  };
  compare.addEventListener("change", layout);
  layout();

  const form = h(
    "form",
    { class: "card chat-input", "aria-label": "Send a message" },
    h("label", { for: "pg-prompt" }, "Message"),
    prompt,
    status,
    h("div", { class: "actions" }, clear, stop, send),
  );

  main.append(
    h("div", { class: "page-head" }, h("h1", {}, "Playground")),
    h(
      "div",
      { class: "card settings-row" },
      h("div", { class: "field checkbox" }, compare, h("label", { for: "pg-compare" }, "Side by side: send each message to two models")),
      h("div", { class: "field grow" }, h("label", { for: "pg-system" }, "System message"), system),
      h("div", { class: "field narrow" }, h("label", { for: "pg-temperature" }, "Temperature"), temperature),
      h("div", { class: "field narrow" }, h("label", { for: "pg-max-tokens" }, "Max tokens"), maxTokens),
    ),
    paneRow,
    form,
  );

  let controller = null;
  prompt.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      form.requestSubmit();
    }
  });
  clear.addEventListener("click", () => panes.forEach((p) => p.clear()));
  stop.addEventListener("click", () => controller?.abort());
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const text = prompt.value.trim();
    if (!text || controller) {
      if (!text) status.textContent = "Type a message first.";
      return;
    }
    const t = temperature.value === "" ? null : Number(temperature.value);
    const settings = { system: system.value.trim(), temperature: t, maxTokens: Number(maxTokens.value) || 256 };
    const active = compare.checked ? panes : [panes[0]];
    controller = new AbortController();
    send.disabled = true;
    stop.disabled = false;
    prompt.value = "";
    status.textContent = compare.checked ? "Streaming both answers…" : "Streaming the answer…";
    try {
      await Promise.all(active.map((p) => p.send(text, settings, controller.signal)));
      status.textContent = "Done.";
    } finally {
      controller = null;
      send.disabled = false;
      stop.disabled = true;
      prompt.focus();
    }
  });
  prompt.focus();
  return () => controller?.abort();
}
