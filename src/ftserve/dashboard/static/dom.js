// Building the page: elements from data (text is always set as text, never parsed as HTML),
// formatting, and polling that stops when the page moves on.

export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else element.setAttribute(name, value === true ? "" : value);
  }
  element.append(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return element;
}

export const dash = "—";

export function when(seconds) {
  return seconds ? new Date(seconds * 1000).toLocaleString() : dash;
}

export function number(value) {
  return typeof value === "number" ? value.toFixed(4) : dash;
}

export function percent(value) {
  return typeof value === "number" ? `${(value * 100).toFixed(1)} %` : dash;
}

export function badge(status) {
  return h("span", {class: `status status-${status}`}, status.replaceAll("_", " "));
}

// "key=value, ..." for a flat object of settings, leaving out unset ones.
export function settings(object) {
  const pairs = Object.entries(object ?? {}).filter(([, v]) => v !== null && v !== undefined && typeof v !== "object");
  return pairs.length ? pairs.map(([k, v]) => `${k}=${v}`).join(", ") : dash;
}

export function table(caption, headings) {
  const body = h("tbody");
  const element = h("table", {},
    h("caption", {class: "visually-hidden"}, caption),
    h("thead", {}, h("tr", {}, headings.map((text) => h("th", {scope: "col"}, text)))),
    body);
  return {element, body};
}

export function alertBox() {
  return h("p", {class: "error", role: "alert", hidden: true});
}

// Runs `work`, showing its failure in `alert` (a success clears it); its result, or undefined if it failed.
export async function attempt(view, alert, work) {
  try {
    const result = await work();
    alert.hidden = true;
    return result;
  } catch (error) {
    view.report(error, alert);
  }
}

// Runs `load` now and `ms` after each run ends, until the view is left or `load` returns false. Polling
// goes on through failures, as the server may be back at the next try, but not past a 404: gone is gone.
export function poll(view, ms, alert, load) {
  const tick = async () => {
    if (view.signal.aborted) return;
    let again = true;
    try {
      again = (await load()) !== false;
      alert.hidden = true;
    } catch (error) {
      view.report(error, alert);
      again = error.status !== 404;
    }
    if (again && !view.signal.aborted) setTimeout(tick, ms);
  };
  tick();
}
