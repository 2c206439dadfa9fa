// The single page: a hash route per view, and the API key prompt when the server asks for one.

import {ApiError, api, apiKey} from "./api.js";
import {h} from "./dom.js";
import {filesView} from "./files.js";
import {jobView} from "./job.js";
import {jobsView} from "./jobs.js";
import {modelsView} from "./models.js";
import {newJobView} from "./new_job.js";
import {playgroundView} from "./playground.js";
import {uploadView} from "./upload.js";

const main = document.getElementById("main");
const signOut = document.getElementById("sign-out");
let view = null;

// A fresh view: the one before it stops polling and its requests are dropped.
function newView() {
  view?.controller.abort();
  const controller = new AbortController();
  const signal = controller.signal;
  view = {controller, signal, main, report: (error, alert) => report(signal, error, alert)};
  main.replaceChildren();
  signOut.hidden = !apiKey.get();
  return view;
}

// A failure of the view's work: a 401 asks for a key, anything else is shown in `alert` as the server said it.
function report(signal, error, alert) {
  if (error.name === "AbortError" || signal.aborted) return;
  if (error instanceof ApiError && error.status === 401) {
    askForKey(apiKey.get() ? error.message : "");
    return;
  }
  alert.textContent = error.message;
  alert.hidden = false;
}

// Section -> its view and title; #/jobs is the default, #/jobs/<id> a job.
const SECTIONS = {
  jobs: [jobsView, "Jobs"], files: [filesView, "Files"], upload: [uploadView, "Upload"], new: [newJobView, "New job"],
  playground: [playgroundView, "Playground"], models: [modelsView, "Models"],
};

// #/jobs (the default), #/jobs?status=running, #/jobs/<id>, #/files, #/upload, #/new?training_file=<id>,
// #/playground?model=<id>&compare=<id>, #/models
function show() {
  const [path, query] = location.hash.replace(/^#\/?/, "").split("?");
  const [section, id] = path.split("/").map(decodeURIComponent);
  const current = Object.hasOwn(SECTIONS, section) ? section : "jobs";
  for (const link of document.querySelectorAll("nav a")) {
    link.toggleAttribute("aria-current", link.dataset.section === current);
  }
  const next = newView();
  next.params = new URLSearchParams(query);
  if (current === "jobs" && id) {
    jobView(next, id);
    return;
  }
  const [draw, title] = SECTIONS[current];
  draw(next);
  document.title = `${title} · ftserve`;
}

function askForKey(problem) {
  newView();
  const input = h("input", {id: "api-key", name: "api-key", type: "password", autocomplete: "current-password",
    required: true, spellcheck: "false"});
  const error = h("p", {class: "error", role: "alert", hidden: !problem}, problem);
  const submit = h("button", {type: "submit"}, "Sign in");
  const form = h("form", {class: "sign-in", "aria-labelledby": "sign-in-title"},
    h("h1", {id: "sign-in-title"}, "Sign in"),
    h("p", {}, "This server needs a project's API key. The dashboard keeps it in this tab's session storage and shows only that project's jobs, files and models."),
    h("label", {for: "api-key"}, "API key"), input, error, submit);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    submit.disabled = true;
    apiKey.set(input.value.trim());
    try {
      await api("/fine_tuning/jobs?limit=1");
      show();
    } catch (refused) {
      apiKey.clear();
      error.textContent = refused.message;
      error.hidden = false;
      submit.disabled = false;
      input.select();
    }
  });
  main.append(form);
  input.focus();
}

signOut.addEventListener("click", () => {
  apiKey.clear();
  show();
});
window.addEventListener("hashchange", show);
show();
