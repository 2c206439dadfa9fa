// #/new: a fine-tuning job over the real options. "Preview" asks the API's dry run
// (/v1/ftserve/fine_tuning/resolve) what the job would be: tokens, epochs, cost, and each parameter the
// provider converts or drops; "Create" posts the same request to /v1/fine_tuning/jobs.

import {api} from "./api.js";
import {alertBox, attempt, dash, h, table} from "./dom.js";

const METHODS = ["supervised", "dpo", "reinforcement"];
// Hyperparameter -> how its text is read; blank means "auto", which the server resolves.
const HYPERPARAMETERS = {
  n_epochs: Number, batch_size: Number, learning_rate_multiplier: Number,
  beta: Number, // dpo
};
const SHOWN_ESTIMATE = ["trained_tokens", "epochs", "cost_usd", "basis", "memory_gb", "memory_limit_gb"];
// Blank: the server's default (LoRA; a job continuing an ft: model trains as its parent did).
const TRAINING_TYPES = [["", "default"], ["lora", "lora"], ["full", "full"], ["qlora", "qlora (CUDA only)"]];
const CHECKPOINTING = [["", "auto"], ["true", "on"], ["false", "off"]];
const gib = (value) => `${value.toFixed(1)} GiB`;
const EXAMPLE_GRADER = {type: "string_check", name: "exact", input: "{{sample.output_text}}", reference: "{{item.answer}}", operation: "eq"};

// What validation found in a file (its `ftserve` field), before its id in the file lists.
const described = (file) => file.ftserve ? `${file.ftserve.format}, ${file.ftserve.examples} examples · ` : "";

function field(id, label, control, hint) {
  return h("div", {class: "field"}, h("label", {for: id}, label), control, hint ? h("small", {id: `${id}-hint`, class: "muted"}, hint) : null);
}

export function newJobView(view) {
  const alert = alertBox();
  const model = h("select", {id: "job-model", required: true});
  const method = h("select", {id: "job-method"}, METHODS.map((name) => h("option", {value: name}, name)));
  const training = h("select", {id: "job-training-file", required: true});
  const validation = h("select", {id: "job-validation-file"});
  const inputs = Object.fromEntries(Object.keys(HYPERPARAMETERS).map((name) =>
    [name, h("input", {id: `job-${name}`, inputmode: "decimal", placeholder: "auto", "aria-describedby": "auto-hint"})]));
  const suffix = h("input", {id: "job-suffix", maxlength: 64});
  const seed = h("input", {id: "job-seed", inputmode: "numeric"});
  const choice = (id, values) => h("select", {id}, values.map(([value, label]) => h("option", {value}, label)));
  const trainingType = choice("job-training-type", TRAINING_TYPES);
  const checkpointing = choice("job-gradient-checkpointing", CHECKPOINTING);
  const packing = h("input", {id: "job-packing", type: "checkbox"});
  const loraRank = h("input", {id: "job-lora-rank", inputmode: "numeric", placeholder: "16"});
  const maxSeq = h("input", {id: "job-max-seq-length", inputmode: "numeric", placeholder: "2048"});
  const grader = h("textarea", {id: "job-grader", rows: 8, spellcheck: "false"}, JSON.stringify(EXAMPLE_GRADER, null, 2));
  const graderState = h("p", {role: "status", "aria-live": "polite", class: "muted"});
  const graderBox = h("fieldset", {hidden: true}, h("legend", {}, "Grader"), field("job-grader", "Grader (JSON)", grader),
    h("button", {type: "button", class: "quiet", onclick: () => validateGrader()}, "Validate grader"), graderState);
  const previewButton = h("button", {type: "button", class: "quiet", onclick: () => preview()}, "Preview");
  const createButton = h("button", {type: "submit"}, "Create job");
  const previewBox = h("section", {"aria-labelledby": "preview-title", "aria-live": "polite", hidden: true});

  const hyper = Object.entries(inputs).map(([name, input]) => field(input.id, name.replaceAll("_", " "), input));
  const form = h("form", {class: "job-form", novalidate: true},
    field("job-model", "Base model", model),
    field("job-method", "Method", method),
    field("job-training-file", "Training file", training),
    field("job-validation-file", "Validation file", validation),
    graderBox,
    h("fieldset", {}, h("legend", {}, "Hyperparameters"),
      h("p", {id: "auto-hint", class: "muted"}, "Blank is auto: the preview shows the value it resolves to."), hyper),
    h("fieldset", {}, h("legend", {}, "ftserve options"),
      field("job-training-type", "Training type", trainingType), field("job-lora-rank", "LoRA rank", loraRank),
      field("job-max-seq-length", "Max sequence length", maxSeq),
      field("job-gradient-checkpointing", "Gradient checkpointing", checkpointing, "auto: on only where the memory estimate needs it"),
      field("job-packing", "Packing (supervised)", packing)),
    field("job-suffix", "Suffix", suffix), field("job-seed", "Seed", seed),
    h("div", {class: "actions"}, previewButton, createButton));
  view.main.append(h("h1", {}, "New fine-tuning job"), alert, form, previewBox);

  const showMethod = () => {
    graderBox.hidden = method.value !== "reinforcement";
    hyper[3].hidden = method.value !== "dpo";
  };
  method.addEventListener("change", showMethod);
  showMethod();

  attempt(view, alert, async () => {
    const [models, files] = await Promise.all([api("/models", view), api("/files?limit=100&purpose=fine-tune", view)]);
    model.replaceChildren(...models.data.map((m) => h("option", {value: m.id}, m.owned_by === "system" ? m.id : `${m.id} (${m.owned_by})`)));
    const usable = files.data.filter((file) => file.purpose === "fine-tune" && file.status === "processed");
    const options = () => usable.map((file) => h("option", {value: file.id}, `${file.filename} · ${described(file)}${file.id}`));
    training.replaceChildren(...options());
    validation.replaceChildren(h("option", {value: ""}, "None"), ...options());
    const wanted = view.params.get("training_file");
    if (wanted) training.value = wanted;
  });

  // The request the form describes; a value that is not a number throws, naming its field.
  function request() {
    const hyperparameters = {};
    for (const [name, input] of Object.entries(inputs)) {
      if (input.closest("[hidden]") || !input.value.trim()) continue;
      const value = HYPERPARAMETERS[name](input.value.trim());
      if (Number.isNaN(value)) throw new Error(`${name.replaceAll("_", " ")} must be a number or blank (auto).`);
      hyperparameters[name] = value;
    }
    const kind = method.value;
    const body = {model: model.value, training_file: training.value, method: {type: kind, [kind]: {hyperparameters}}};
    if (kind === "reinforcement") body.method.reinforcement.grader = parseGrader();
    if (validation.value) body.validation_file = validation.value;
    if (suffix.value.trim()) body.suffix = suffix.value.trim();
    if (seed.value.trim()) body.seed = Number(seed.value.trim());
    const ftserve = {};
    if (trainingType.value) ftserve.training_type = trainingType.value;
    if (checkpointing.value) ftserve.gradient_checkpointing = checkpointing.value === "true";
    if (packing.checked) ftserve.packing = true;
    if (loraRank.value.trim()) ftserve.lora_rank = Number(loraRank.value.trim());
    if (maxSeq.value.trim()) ftserve.max_seq_length = Number(maxSeq.value.trim());
    if (Object.keys(ftserve).length) body.ftserve = ftserve;
    return body;
  }

  function parseGrader() {
    try {
      return JSON.parse(grader.value);
    } catch (error) {
      throw new Error(`The grader is not valid JSON: ${error.message}`);
    }
  }

  async function validateGrader() {
    graderState.textContent = "";
    const ok = await attempt(view, alert, () => api("/fine_tuning/alpha/graders/validate",
      {method: "POST", body: {grader: parseGrader()}, signal: view.signal}));
    if (ok) graderState.textContent = "The grader is valid.";
  }

  async function preview() {
    const plan = await attempt(view, alert, () => api("/ftserve/fine_tuning/resolve", {method: "POST", body: request(), signal: view.signal}));
    if (plan) drawPreview(plan);
  }

  // The hyperparameters as the provider's request has them (at its top level, as the local engine's spec, or
  // under `hyperparameters`): a blank field's placeholder becomes "auto (<value>)", and each is a preview row.
  function resolved(native) {
    const values = {...native, ...(typeof native.hyperparameters === "object" ? native.hyperparameters : {})};
    const rows = [];
    for (const [name, input] of Object.entries(inputs)) {
      const value = values[name];
      if (input.closest("[hidden]") || (typeof value !== "number" && typeof value !== "string")) continue;
      const auto = !input.value.trim();
      if (auto) input.placeholder = `auto (${value})`;
      rows.push([name.replaceAll("_", " "), auto ? `${value} (auto)` : String(value)]);
    }
    if (typeof values.learning_rate === "number") rows.push(["learning rate", String(values.learning_rate)]);
    return rows;
  }

  function drawPreview(plan) {
    const estimate = plan.estimate;
    const rows = [
      ["Provider", `${plan.provider} (${plan.kind})`], ["Model", plan.model],
      ["Trained tokens", estimate?.trained_tokens ?? dash], ["Epochs", estimate?.epochs ?? dash],
      ["Estimated cost", typeof estimate?.cost_usd === "number" ? `$${estimate.cost_usd.toFixed(2)}` : dash],
      ["Basis", estimate?.basis ?? dash],
      ["Memory", typeof estimate?.memory_gb === "number"
        ? `${gib(estimate.memory_gb)} of ${typeof estimate.memory_limit_gb === "number" ? gib(estimate.memory_limit_gb) : "no set limit"}`
        : dash],
      // Whatever else the estimate carries (a memory estimate, say), under its own name.
      ...Object.entries(estimate ?? {}).filter(([name, value]) => !SHOWN_ESTIMATE.includes(name) && value !== null)
        .map(([name, value]) => [name.replaceAll("_", " "), typeof value === "object" ? JSON.stringify(value) : String(value)]),
      ...resolved(plan.native ?? {}),
    ];
    const changes = table("Converted and dropped parameters", ["Parameter", "Value", "Becomes", "Why"]);
    changes.body.append(
      ...plan.converted.map((c) => h("tr", {}, h("td", {}, c.field), h("td", {}, JSON.stringify(c.value)),
        h("td", {}, `${c.native ?? dash} = ${JSON.stringify(c.native_value)}`), h("td", {}, c.reason))),
      ...plan.dropped.map((c) => h("tr", {class: "dropped"}, h("td", {}, c.field), h("td", {}, JSON.stringify(c.value)),
        h("td", {}, "dropped"), h("td", {}, c.reason))));
    previewBox.replaceChildren(h("h2", {id: "preview-title"}, "Preview"),
      h("dl", {class: "details"}, rows.flatMap(([term, value]) => [h("dt", {}, term), h("dd", {}, String(value))])),
      plan.converted.length || plan.dropped.length ? changes.element : h("p", {class: "muted"}, "Every parameter is used as given."),
      h("details", {}, h("summary", {}, "The provider's request"), h("pre", {}, JSON.stringify(plan.native, null, 2))));
    previewBox.hidden = false;
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    createButton.disabled = true;
    const job = await attempt(view, alert, () => api("/fine_tuning/jobs", {method: "POST", body: request(), signal: view.signal}));
    createButton.disabled = false;
    if (job) location.hash = `#/jobs/${encodeURIComponent(job.id)}`;
  });
}
