// #/upload: a JSONL dropped or picked is sent to the API and validated there, line by line. A file past
// PART_BYTES goes through /v1/uploads in parts, with a bar that moves as each part lands; a refused file
// shows the API's reason, which names the bad line. An accepted fine-tuning file shows what the validation
// found (the File object's `ftserve` field): its format, examples and estimated tokens.

import {api} from "./api.js";
import {alertBox, attempt, dash, h} from "./dom.js";

// OpenAI's SDK splits at 64 MB; smaller parts keep the bar moving on a slow link.
export const PART_BYTES = 1024 * 1024;

export function uploadView(view) {
  const alert = alertBox();
  const picker = h("input", {type: "file", id: "upload-file", accept: ".jsonl,application/jsonl,application/x-ndjson"});
  const purpose = h("select", {id: "upload-purpose"},
    ["fine-tune", "batch", "user_data"].map((name) => h("option", {value: name}, name)));
  const drop = h("div", {class: "drop"},
    h("p", {}, "Drop a JSONL file here, or ", h("label", {for: "upload-file", class: "link"}, "choose one"), "."),
    picker);
  const bar = h("progress", {id: "upload-progress", max: 1, value: 0, hidden: true, "aria-label": "Upload progress"});
  const state = h("p", {role: "status", "aria-live": "polite", class: "muted"});
  const result = h("section", {"aria-labelledby": "upload-result-title", hidden: true});
  view.main.append(h("h1", {}, "Upload a file"),
    h("p", {}, h("label", {for: "upload-purpose"}, "Purpose "), purpose),
    drop, bar, state, alert, result);

  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    if (event.dataTransfer.files[0]) send(event.dataTransfer.files[0]);
  });
  picker.addEventListener("change", () => { if (picker.files[0]) send(picker.files[0]); });

  async function send(file) {
    result.hidden = true;
    bar.hidden = false;
    bar.value = 0;
    state.textContent = `Uploading ${file.name}…`;
    picker.disabled = true;
    const uploaded = await attempt(view, alert, () => file.size > PART_BYTES ? inParts(file) : whole(file));
    picker.disabled = false;
    picker.value = "";
    bar.hidden = !uploaded;
    state.textContent = uploaded ? `${file.name} uploaded.` : `${file.name} was refused.`;
    if (uploaded) show(uploaded);
  }

  async function whole(file) {
    const form = new FormData();
    form.append("purpose", purpose.value);
    form.append("file", file, file.name);
    const uploaded = await api("/files", {method: "POST", body: form, signal: view.signal});
    bar.value = 1;
    return uploaded;
  }

  async function inParts(file) {
    const upload = await api("/uploads", {method: "POST", signal: view.signal, body: {
      filename: file.name, purpose: purpose.value, bytes: file.size, mime_type: "application/jsonl"}});
    const parts = [];
    for (let start = 0; start < file.size; start += PART_BYTES) {
      const form = new FormData();
      form.append("data", file.slice(start, start + PART_BYTES), "part");
      const part = await api(`/uploads/${upload.id}/parts`, {method: "POST", body: form, signal: view.signal});
      parts.push(part.id);
      bar.value = Math.min(start + PART_BYTES, file.size) / file.size;
    }
    const done = await api(`/uploads/${upload.id}/complete`, {method: "POST", signal: view.signal, body: {part_ids: parts}});
    return done.file;
  }

  async function show(file) {
    const rows = [["File", file.id], ["Name", file.filename], ["Bytes", file.bytes], ["Status", file.status],
      ...datasetRows(file.ftserve)];
    const details = h("dl", {class: "details"}, rows.flatMap(([term, value]) => [h("dt", {}, term), h("dd", {}, String(value))]));
    result.replaceChildren(h("h2", {id: "upload-result-title"}, "Uploaded"), details,
      file.purpose === "fine-tune" ? h("p", {}, h("a", {href: `#/new?training_file=${encodeURIComponent(file.id)}`},
        "Start a fine-tuning job with this file")) : null);
    result.hidden = false;
  }
}

// What validation found in a fine-tuning file; nothing for other files, which have no `ftserve` field.
function datasetRows(found) {
  if (!found) return [];
  return [["Format", found.format], ["Examples", found.examples.toLocaleString("en")],
    ["Estimated tokens", found.estimated_tokens === null ? dash : found.estimated_tokens.toLocaleString("en")]];
}
