// #/jobs: every job of the project, newest first, filtered by status and refreshed while shown.

import {api} from "./api.js";
import {alertBox, attempt, badge, dash, h, poll, table, when} from "./dom.js";

const REFRESH_MS = 3000;
const PAGE = 50;
// Filter -> the statuses it shows; a pausing job is on its way to paused.
const FILTERS = {
  all: null, validating_files: ["validating_files"], queued: ["queued"], running: ["running"],
  paused: ["pausing", "paused"], succeeded: ["succeeded"], failed: ["failed"], cancelled: ["cancelled"],
};

export function jobsView(view) {
  const chosen = Object.hasOwn(FILTERS, view.params.get("status")) ? view.params.get("status") : "all";
  const shown = FILTERS[chosen];
  let limit = PAGE;
  let drawn = null;

  const filters = h("div", {class: "filters", role: "group", "aria-label": "Filter jobs by status"},
    Object.keys(FILTERS).map((name) => h("button", {
      type: "button", "aria-pressed": String(name === chosen),
      onclick: () => { location.hash = name === "all" ? "#/jobs" : `#/jobs?status=${name}`; },
    }, name.replace("_", " "))));
  const alert = alertBox();
  const list = table("Fine-tuning jobs", ["Job", "Status", "Base model", "Fine-tuned model", "Created"]);
  list.element.hidden = true;  // until loaded
  const empty = h("p", {class: "muted", hidden: true});
  const more = h("button", {type: "button", class: "quiet", hidden: true, onclick: () => { limit += PAGE; attempt(view, alert, refresh); }},
    "Show older jobs");
  view.main.append(h("h1", {}, "Fine-tuning jobs"), filters, alert, list.element, empty, more);

  const refresh = async () => {
    const page = await api(`/fine_tuning/jobs?limit=${limit}`, view);
    const jobs = page.data.filter((job) => !shown || shown.includes(job.status));
    more.hidden = !page.has_more;
    list.element.hidden = !jobs.length;
    empty.hidden = Boolean(jobs.length);
    empty.textContent = shown ? `No ${chosen.replace("_", " ")} jobs among the newest ${page.data.length}.` : "No jobs yet.";
    const state = JSON.stringify(jobs);
    if (state === drawn) return;  // redrawing an unchanged table would lose the reader's focus
    drawn = state;
    list.body.replaceChildren(...jobs.map((job) => h("tr", {"data-job": job.id},
      h("td", {}, h("a", {href: `#/jobs/${encodeURIComponent(job.id)}`}, job.id)),
      h("td", {}, badge(job.status)),
      h("td", {}, job.model),
      h("td", {}, job.fine_tuned_model ?? dash),
      h("td", {}, when(job.created_at)))));
  };
  poll(view, REFRESH_MS, alert, refresh);
}
