// #/models: the models this project can use, base and fine-tuned, with where each fine-tuned one came from
// (its job and base model, found among the project's jobs), an export download, and delete for fine-tuned ones.

import {api} from "./api.js";
import {alertBox, attempt, dash, h, table, when} from "./dom.js";
import {download, exportControls} from "./exports.js";

export function modelsView(view) {
  const alert = alertBox();
  const state = h("p", {role: "status", "aria-live": "polite", class: "muted"});
  const list = table("Models", ["Model", "Owner", "Job", "Base model", "Created", "Export", ""]);
  view.main.append(h("h1", {}, "Models"), alert, state, list.element);

  const load = async () => {
    const [models, jobs] = await Promise.all([api("/models", view), api("/fine_tuning/jobs?limit=100", view)]);
    const madeBy = new Map(jobs.data.filter((job) => job.fine_tuned_model).map((job) => [job.fine_tuned_model, job]));
    list.body.replaceChildren(...models.data.map((model, index) => {
      const job = madeBy.get(model.id);
      return h("tr", {"data-model": model.id},
        h("td", {}, h("code", {}, model.id)),
        h("td", {}, model.owned_by),
        h("td", {}, job ? h("a", {href: `#/jobs/${encodeURIComponent(job.id)}`}, job.id) : dash),
        h("td", {}, job ? job.model : dash),
        h("td", {}, when(model.created)),
        h("td", {}, exportControls(`export-${index}`, (format, quantization) => exportModel(model.id, format, quantization))),
        h("td", {}, job ? h("button", {type: "button", class: "quiet", "aria-label": `Delete ${model.id}`,
          onclick: () => remove(model.id)}, "Delete") : null));
    }));
  };

  async function exportModel(model, format, quantization) {
    state.textContent = `Exporting ${model}…`;
    const name = await attempt(view, alert, () => download(model, format, quantization, view.signal));
    state.textContent = name ? `Downloaded ${name}.` : "";
  }

  async function remove(model) {
    if (!confirm(`Delete ${model}? Its weights are removed from the server.`)) return;
    const deleted = await attempt(view, alert, () => api(`/models/${encodeURIComponent(model)}`, {method: "DELETE", signal: view.signal}));
    if (deleted) {
      state.textContent = `Deleted ${model}.`;
      await attempt(view, alert, load);
    }
  }

  attempt(view, alert, load);
}
