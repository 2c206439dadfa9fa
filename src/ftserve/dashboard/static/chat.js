// One streamed chat completion (/v1/chat/completions, stream=true): `onText` gets each piece of the answer as it
// arrives; the whole answer is returned. A refusal throws ApiError with the API's message.

import {send} from "./api.js";

export async function streamChat(model, messages, maxTokens, signal, onText) {
  const response = await send("/chat/completions", {
    method: "POST", signal, accept: "text/event-stream", body: {model, messages, stream: true, max_completion_tokens: maxTokens},
  });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "", answer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    buffer += value;
    const events = buffer.split("\n\n");
    buffer = events.pop();
    for (const event of events) {
      const data = event.split("\n").filter((line) => line.startsWith("data:")).map((line) => line.slice(5).trim()).join("");
      if (!data || data === "[DONE]") continue;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      const text = chunk.choices?.[0]?.delta?.content ?? "";
      if (text) {
        answer += text;
        onText(answer);
      }
    }
  }
  return answer;
}
