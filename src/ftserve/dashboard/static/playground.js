// #/playground: chat with any served model, streaming. "Side by side" sends the same prompt to two models (a
// fine-tuned one and its base, say) and streams both answers at once. #/playground?model=<id>&compare=<id>.

import {api} from "./api.js";
import {streamChat} from "./chat.js";
import {alertBox, attempt, h} from "./dom.js";

export function playgroundView(view) {
  const alert = alertBox();
  const left = h("select", {id: "chat-model"});
  const right = h("select", {id: "chat-compare"});
  const sideBySide = h("input", {type: "checkbox", id: "side-by-side"});
  const prompt = h("textarea", {id: "chat-prompt", rows: 3, required: true});
  const maxTokens = h("input", {id: "chat-max-tokens", inputmode: "numeric", value: "256"});
  const sendButton = h("button", {type: "submit"}, "Send");
  const panes = h("div", {class: "panes"});
  const form = h("form", {class: "job-form"},
    h("div", {class: "field"}, h("label", {for: "chat-model"}, "Model"), left),
    h("p", {}, sideBySide, " ", h("label", {for: "side-by-side"}, "Side by side with another model")),
    h("div", {class: "field", hidden: true}, h("label", {for: "chat-compare"}, "Compare with"), right),
    h("div", {class: "field"}, h("label", {for: "chat-prompt"}, "Prompt"), prompt),
    h("div", {class: "field"}, h("label", {for: "chat-max-tokens"}, "Longest answer (tokens)"), maxTokens),
    h("div", {class: "actions"}, sendButton));
  view.main.append(h("h1", {}, "Playground"), alert, form, panes);
  const compareField = right.parentElement;
  sideBySide.addEventListener("change", () => { compareField.hidden = !sideBySide.checked; });

  attempt(view, alert, async () => {
    const models = await api("/models", view);
    for (const select of [left, right]) select.replaceChildren(...models.data.map((m) => h("option", {value: m.id}, m.id)));
    if (view.params.get("model")) left.value = view.params.get("model");
    if (view.params.get("compare")) {
      right.value = view.params.get("compare");
      sideBySide.checked = true;
      compareField.hidden = false;
    }
  });

  // One pane per model: its name, and its answer as it streams (announced politely to screen readers).
  function pane(model, index) {
    const answer = h("div", {class: "answer", "aria-live": "polite", "aria-busy": "true", "data-model": model});
    const failure = alertBox();
    const element = h("section", {class: "pane", "aria-labelledby": `pane-${index}`},
      h("h2", {id: `pane-${index}`}, model), answer, failure);
    return {element, answer, failure};
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!prompt.value.trim()) return;
    const models = sideBySide.checked ? [left.value, right.value] : [left.value];
    const messages = [{role: "user", content: prompt.value}];
    const shown = models.map(pane);
    panes.replaceChildren(...shown.map((p) => p.element));
    sendButton.disabled = true;
    await Promise.all(models.map((model, i) => attempt(view, shown[i].failure,
      () => streamChat(model, messages, Number(maxTokens.value) || undefined, view.signal, (text) => { shown[i].answer.textContent = text; }))
      .finally(() => shown[i].answer.setAttribute("aria-busy", "false"))));
    sendButton.disabled = false;
  });
}
