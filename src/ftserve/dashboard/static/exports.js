// Downloading a model as the API exports it (/v1/ftserve/export): the request carries the key, so the file is
// fetched here and handed to the browser as a download, under the name the server gave it.

import {send} from "./api.js";
import {h} from "./dom.js";

// Format -> its label: an adapter (vLLM LoRA) or merged Hugging Face weights come as a tar, GGUF as one file.
export const FORMATS = {adapter: "Adapter (tar)", merged: "Merged (tar)", gguf: "GGUF"};
export const QUANTIZATIONS = ["f16", "bf16", "f32", "q8_0"];

export async function download(model, format, quantization, signal) {
  const query = new URLSearchParams({model, format});
  if (format === "gguf") query.set("quantization", quantization);
  const response = await send(`/ftserve/export?${query}`, {signal, accept: "*/*"});
  const disposition = response.headers.get("content-disposition") ?? "";
  const name = decodeURIComponent(disposition.match(/filename\*=utf-8''([^;]+)/i)?.[1] ?? disposition.match(/filename="?([^";]+)/)?.[1]
    ?? `${model}.${format === "gguf" ? "gguf" : "tar"}`);
  const url = URL.createObjectURL(await response.blob());
  const link = h("a", {href: url, download: name, hidden: true});
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
  return name;
}

// A format picker, a quantization picker (for GGUF) and a button; `run(format, quantization)` does the download.
export function exportControls(idPrefix, run) {
  const format = h("select", {id: `${idPrefix}-format`},
    Object.entries(FORMATS).map(([value, label]) => h("option", {value, selected: value === "gguf"}, label)));
  const quantization = h("select", {id: `${idPrefix}-quantization`},
    QUANTIZATIONS.map((value) => h("option", {value}, value)));
  format.addEventListener("change", () => { quantization.disabled = format.value !== "gguf"; });
  return h("span", {class: "export"},
    h("label", {for: format.id, class: "visually-hidden"}, "Export format"), format,
    h("label", {for: quantization.id, class: "visually-hidden"}, "Quantization"), quantization,
    h("button", {type: "button", class: "quiet", onclick: () => run(format.value, quantization.value)}, "Export"));
}
