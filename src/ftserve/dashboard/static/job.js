// #/jobs/<id>: one job, kept live while it runs: the loss chart and events from its events, its
// checkpoints, settings, the before/after evaluation, and the buttons that cancel, pause and resume it.

import {api, jobPath} from "./api.js";
import {REWARD_SERIES, SERIES, lossChart} from "./chart.js";
import {alertBox, attempt, badge, dash, h, number, percent, poll, settings, table, when} from "./dom.js";
import {download, exportControls} from "./exports.js";

const REFRESH_MS = 1500;
const EVENTS_PAGE = 1000;
const EVENTS_SHOWN = 300;
const TERMINAL = ["succeeded", "failed", "cancelled"];
// Action -> the statuses it applies to, as the server's transitions allow.
const ACTIONS = {
  cancel: ["validating_files", "queued", "running", "pausing", "paused"],
  pause: ["validating_files", "queued", "running"],
  resume: ["paused"],
};
const EVALUATION_ROWS = [
  ["Loss", "loss", number], ["Token accuracy", "token_accuracy", percent],
  ["Exact match", "exact_match", percent], ["Preference accuracy", "preference_accuracy", percent],
  ["Mean reward", "reward_mean", number],
];

export function jobView(view, id) {
  const path = jobPath(id);
  let job = null;
  const events = [];  // newest first, as the API lists them
  const seen = new Set();

  const alert = alertBox();
  const status = h("span");
  const buttons = Object.keys(ACTIONS).map((action) => h("button", {
    type: "button", "data-action": action, disabled: true, onclick: () => act(action),
  }, action[0].toUpperCase() + action.slice(1)));
  const actionAlert = alertBox();
  const failure = alertBox();
  const details = h("dl", {class: "details"});
  const progress = h("p", {class: "muted"});
  const chart = h("div", {class: "chart"});
  const legend = h("ul", {class: "legend"}, SERIES.map((series) => h("li", {class: series.class}, series.label)));
  const rewardChart = h("div", {class: "chart"});
  const rewardLegend = h("ul", {class: "legend"}, REWARD_SERIES.map((series) => h("li", {class: series.class}, series.label)));
  const rewards = h("section", {"aria-labelledby": "reward-title", hidden: true}, h("h2", {id: "reward-title"}, "Reward"),
    h("figure", {}, rewardChart, h("figcaption", {}, rewardLegend)));
  const evaluation = h("section", {"aria-labelledby": "evaluation-title", hidden: true});
  const checkpoints = table("Checkpoints", ["Step", "Checkpoint", "Training loss", "Validation loss", "Created", "Actions"]);
  const noCheckpoints = h("p", {class: "muted"}, "None yet.");
  const checkpointAlert = alertBox();
  const checkpointState = h("p", {role: "status", "aria-live": "polite", class: "muted"});
  let drawnCheckpoints = null;
  const withMetrics = h("input", {type: "checkbox", id: "with-metrics", onchange: () => drawEvents()});
  const eventList = h("ol", {class: "events"});

  const content = h("div", {hidden: true},  // shown once the job is loaded
    failure, details,
    h("section", {"aria-labelledby": "loss-title"}, h("h2", {id: "loss-title"}, "Loss"), progress,
      h("figure", {}, chart, h("figcaption", {}, legend))),
    rewards,
    evaluation,
    h("section", {"aria-labelledby": "checkpoints-title"}, h("h2", {id: "checkpoints-title"}, "Checkpoints"),
      checkpointAlert, checkpointState, checkpoints.element, noCheckpoints),
    h("section", {"aria-labelledby": "events-title"}, h("h2", {id: "events-title"}, "Events"),
      h("p", {}, withMetrics, " ", h("label", {for: "with-metrics"}, "Show each step's metrics")), eventList));
  view.main.append(
    h("p", {class: "crumbs"}, h("a", {href: "#/jobs"}, "← All jobs")),
    h("div", {class: "title"}, h("h1", {}, id), status, h("div", {class: "actions"}, buttons)),
    actionAlert, alert, content);
  document.title = `${id} · ftserve`;

  async function act(action) {
    for (const button of buttons) button.disabled = true;
    const moved = await attempt(view, actionAlert, () => api(`${path}/${action}`, {method: "POST", signal: view.signal}));
    if (moved) job = moved;
    drawJob();
  }

  // New events are those before the first one already seen; a first load pages through them all.
  async function syncEvents() {
    const fresh = [];
    let after = "";
    for (;;) {
      const page = await api(`${path}/events?limit=${EVENTS_PAGE}${after}`, view);
      const unseen = page.data.filter((event) => !seen.has(event.id));
      fresh.push(...unseen);
      if (unseen.length < page.data.length || !page.has_more) break;
      after = `&after=${encodeURIComponent(page.data.at(-1).id)}`;
    }
    for (const event of fresh) seen.add(event.id);
    events.unshift(...fresh);
    return fresh.length > 0;
  }

  function drawJob() {
    status.replaceChildren(badge(job.status));
    for (const button of buttons) button.disabled = !ACTIONS[button.dataset.action].includes(job.status);
    failure.hidden = !job.error;
    failure.textContent = job.error ? `${job.error.message} (${job.error.code})` : "";
    const method = job.method?.type ?? "supervised";
    const extension = job.ftserve;
    const rows = [
      ["Base model", job.model],
      ["Fine-tuned model", job.fine_tuned_model ?? dash],
      ["Method", method],
      ["Hyperparameters", settings(job.method?.[method]?.hyperparameters ?? job.hyperparameters)],
      extension && ["Training options", settings(extension)],
      extension?.provider && ["Provider", settings(extension.provider)],
      ["Training file", job.training_file],
      ["Validation file", job.validation_file ?? dash],
      ["Result files", job.result_files.length ? job.result_files.join(", ") : dash],
      ["Trained tokens", job.trained_tokens ?? dash],
      ["Seed", job.seed],
      ["Suffix", job.user_provided_suffix ?? dash],
      job.metadata && ["Metadata", settings(job.metadata)],
      ["Created", when(job.created_at)],
      job.estimated_finish && ["Estimated finish", when(job.estimated_finish)],
      ["Finished", when(job.finished_at)],
    ].filter(Boolean);
    details.replaceChildren(...rows.flatMap(([term, value]) => [h("dt", {}, term), h("dd", {}, String(value))]));
  }

  function drawMetrics() {
    const byStep = new Map();
    let report = null;
    for (const event of [...events].reverse()) {  // oldest first: a step reported again after a resume wins
      if (event.type !== "metrics") continue;
      if (event.data?.evaluation) report = event.data.evaluation;
      else if (typeof event.data?.step === "number") byStep.set(event.data.step, event.data);
    }
    const points = [...byStep.values()].sort((a, b) => a.step - b.step);
    const totalSteps = points.at(-1)?.total_steps;
    progress.textContent = points.length ? `Step ${points.at(-1).step} of ${totalSteps}` : "No steps reported yet.";
    chart.replaceChildren(lossChart(points, totalSteps));
    legend.lastChild.hidden = !points.some((p) => typeof p.valid_loss === "number");
    // A reinforcement job reports its mean reward by step: drawn next to the loss.
    rewards.hidden = !points.some((p) => typeof p.train_reward_mean === "number");
    if (!rewards.hidden) rewardChart.replaceChildren(lossChart(points, totalSteps, REWARD_SERIES, "Mean reward"));
    rewardLegend.lastChild.hidden = !points.some((p) => typeof p.valid_reward_mean === "number");
    drawEvaluation(report);
  }

  function drawEvaluation(report) {
    evaluation.hidden = !report;
    if (!report) return;
    const scores = table("Evaluation of the base and fine-tuned models", ["Metric", "Base model", "Fine-tuned model"]);
    scores.body.append(...EVALUATION_ROWS.filter(([, key]) => key in report.base).map(([label, key, format]) =>
      h("tr", {}, h("th", {scope: "row"}, label), h("td", {}, format(report.base[key])), h("td", {}, format(report.fine_tuned[key])))));
    evaluation.replaceChildren(h("h2", {id: "evaluation-title"}, "Evaluation"),
      h("p", {class: "muted"}, report.metric === "reward"
        ? `${report.examples} prompts of the validation file, answered greedily before and after training and graded by the job's grader.`
        : `${report.examples} held-out examples of the validation file, scored before and after training; `
          + `exact match over the first ${report.generated}.`),
      scores.element);
  }

  function drawEvents() {
    const shown = events.filter((event) => withMetrics.checked || event.type !== "metrics" || event.data?.evaluation);
    eventList.replaceChildren(...shown.slice(0, EVENTS_SHOWN).map((event) => h("li", {class: `level-${event.level}`},
      h("time", {datetime: new Date(event.created_at * 1000).toISOString()}, when(event.created_at)),
      h("span", {}, event.message))));
    if (shown.length > EVENTS_SHOWN) eventList.append(h("li", {class: "muted"}, `and ${shown.length - EVENTS_SHOWN} older events`));
  }

  function drawCheckpoints(page) {
    const state = JSON.stringify(page.data);
    if (state === drawnCheckpoints) return;  // redrawing would reset a half-chosen export format and lose focus
    drawnCheckpoints = state;
    checkpoints.body.replaceChildren(...page.data.map((checkpoint, index) => {
      const name = checkpoint.fine_tuned_model_checkpoint;
      return h("tr", {"data-checkpoint": name},
        h("td", {class: "number"}, checkpoint.step_number),
        h("td", {}, h("code", {}, name)),
        h("td", {class: "number"}, number(checkpoint.metrics.train_loss)),
        h("td", {class: "number"}, number(checkpoint.metrics.valid_loss)),
        h("td", {}, when(checkpoint.created_at)),
        h("td", {class: "row-actions"},
          h("a", {href: `#/playground?model=${encodeURIComponent(name)}&compare=${encodeURIComponent(job.model)}`,
            "aria-label": `Chat with the checkpoint at step ${checkpoint.step_number}`}, "Chat"),
          exportControls(`checkpoint-${index}`, (format, quantization) => exportCheckpoint(name, format, quantization)),
          shareControls(name, index)));
    }));
    checkpoints.element.hidden = !page.data.length;
    noCheckpoints.hidden = Boolean(page.data.length);
  }

  async function exportCheckpoint(name, format, quantization) {
    checkpointState.textContent = `Exporting ${name}…`;
    const file = await attempt(view, checkpointAlert, () => download(name, format, quantization, view.signal));
    checkpointState.textContent = file ? `Downloaded ${file}.` : "";
  }

  // "Share with project": a checkpoint permission (/fine_tuning/checkpoints/<name>/permissions) for another project.
  function shareControls(name, index) {
    const project = h("input", {id: `share-${index}`, placeholder: "project id", size: 12});
    return h("form", {class: "share", onsubmit: async (event) => {
      event.preventDefault();
      if (!project.value.trim()) return;
      const granted = await attempt(view, checkpointAlert, () => api(
        `/fine_tuning/checkpoints/${encodeURIComponent(name)}/permissions`,
        {method: "POST", body: {project_ids: [project.value.trim()]}, signal: view.signal}));
      if (granted) checkpointState.textContent = `Shared ${name} with ${project.value.trim()}.`;
    }}, h("label", {for: project.id, class: "visually-hidden"}, `Project to share ${name} with`), project,
    h("button", {type: "submit", class: "quiet"}, "Share with project"));
  }

  poll(view, REFRESH_MS, alert, async () => {
    // The job first: its final events are written with its final status, so they are in the read after it.
    job = await api(path, view);
    drawJob();
    const [changed, page] = await Promise.all([syncEvents(), api(`${path}/checkpoints?limit=100`, view)]);
    drawCheckpoints(page);
    if (changed || !chart.firstChild) {
      drawMetrics();
      drawEvents();
    }
    content.hidden = false;
    return !TERMINAL.includes(job.status);
  });
}
