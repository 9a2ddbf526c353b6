/**
 * Models page: base models, the organisation's fine-tuned models and their checkpoints, with
 * links to chat with them, adapter download and deletion of fine-tuned models.
 *
 * Owns GET/DELETE /v1/models and GET /v1/models/{id}/content.
 */

import * as api from "../api.js";
import { h, replace, table, badge, formatTime, errorBox, announce, confirmDialog } from "../ui.js";

export function modelKind(m) {
  if (m.id.includes(":ckpt-step-")) return "checkpoint";
  if (m.id.startsWith("ft:")) return "fine-tuned";
  return m.owned_by === "tunegate" ? "base" : "other";
}

export async function render(main) {
  const status = h("div");
  const holder = h("div");
  main.append(
    h("div", { class: "page-head" }, h("h1", {}, "Models"), h("a", { href: "#/playground", class: "btn btn-primary" }, "Open the playground")),
    h(
      "section",
      { class: "card", "aria-labelledby": "models-title" },
      h("h2", { id: "models-title" }, "Models you can use"),
      h("p", { class: "help" }, "Base models belong to the server. Fine-tuned models and their checkpoints belong to your organisation and are listed once they passed the safety gate."),
      status,
      holder,
    ),
  );

  async function refresh() {
    const list = await api.get("models");
    const rows = list.data.map((m) => {
      const kind = modelKind(m);
      const actions = [h("a", { class: "btn btn-small", href: `#/playground?model=${encodeURIComponent(m.id)}` }, "Chat", h("span", { class: "visually-hidden" }, ` with ${m.id}`))];
      if (kind === "fine-tuned" || kind === "checkpoint") {
        const dl = h("button", { type: "button", class: "btn btn-small btn-quiet", "aria-label": `Download the adapter of ${m.id}` }, "Download adapter");
        dl.addEventListener("click", () =>
          api.download(`/v1/models/${encodeURIComponent(m.id)}/content`, `${m.id.replace(/:/g, "_")}.tar.gz`).catch((err) => replace(status, errorBox(err, { title: `Could not download ${m.id}` }))),
        );
        actions.push(dl);
      }
      if (kind === "fine-tuned") {
        const del = h("button", { type: "button", class: "btn btn-small btn-quiet btn-danger-text", "aria-label": `Delete ${m.id}` }, "Delete");
        del.addEventListener("click", async () => {
          if (!(await confirmDialog(`Delete ${m.id} and its checkpoints? It can no longer be used for chat.`, { confirmLabel: "Delete", danger: true }))) return;
          try {
            await api.del(`models/${encodeURIComponent(m.id)}`);
            announce(`Deleted ${m.id}.`);
            await refresh();
          } catch (err) {
            replace(status, errorBox(err, { title: `Could not delete ${m.id}` }));
          }
        });
        actions.push(del);
      }
      return h(
        "tr",
        { dataset: { modelId: m.id } },
        h("td", {}, h("code", { class: "id" }, m.id)),
        h("td", {}, badge(kind === "base" ? "neutral" : "ok", kind)),
        h("td", {}, m.owned_by),
        h("td", {}, formatTime(m.created)),
        h("td", { class: "actions-cell" }, actions),
      );
    });
    replace(
      holder,
      table({ caption: "Models", captionHidden: true, columns: ["Model", "Kind", "Owner", "Created", h("span", { class: "visually-hidden" }, "Actions")], rows, empty: "No models are available." }),
    );
  }
  await refresh();
}
