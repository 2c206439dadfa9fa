// #/files: the project's files and what validation made of them. A fine-tune file is checked line by
// line as it uploads and refused if invalid, so a listed one has passed; status_details says otherwise,
// and the details of a passed one are what its validation found (the File object's `ftserve` field).

import {api} from "./api.js";
import {alertBox, attempt, badge, dash, h, table, when} from "./dom.js";

const PAGE = 100;

export function filesView(view) {
  let limit = PAGE;
  const alert = alertBox();
  const list = table("Files", ["File", "Name", "Purpose", "Size", "Validation", "Details", "Created"]);
  list.element.hidden = true;  // until loaded
  const empty = h("p", {class: "muted", hidden: true}, "No files yet.");
  const more = h("button", {type: "button", class: "quiet", hidden: true, onclick: () => { limit += PAGE; attempt(view, alert, load); }},
    "Show older files");
  view.main.append(h("h1", {}, "Files"), alert, list.element, empty, more);

  const load = async () => {
    const page = await api(`/files?limit=${limit}`, view);
    list.body.replaceChildren(...page.data.map((file) => h("tr", {"data-file": file.id},
      h("td", {}, h("code", {}, file.id)),
      h("td", {}, file.filename),
      h("td", {}, file.purpose),
      h("td", {class: "number"}, size(file.bytes)),
      h("td", {}, badge(file.status)),
      h("td", {}, file.status_details ?? dataset(file.ftserve)),
      h("td", {}, when(file.created_at)))));
    list.element.hidden = !page.data.length;
    empty.hidden = Boolean(page.data.length);
    more.hidden = !page.has_more;
  };
  attempt(view, alert, load);  // files change only when someone uploads: loaded once, not polled
}

function dataset(found) {
  if (!found) return dash;
  const tokens = found.estimated_tokens === null ? "" : `, about ${found.estimated_tokens.toLocaleString("en")} tokens`;
  return `${found.format}, ${found.examples.toLocaleString("en")} examples${tokens}`;
}

function size(bytes) {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let value = bytes, unit = 0;
  while (value >= 1000 && unit < units.length - 1) [value, unit] = [value / 1000, unit + 1];
  return `${unit ? value.toFixed(1) : value} ${units[unit]}`;
}
