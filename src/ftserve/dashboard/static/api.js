// The public /v1 API, called with the key this browser keeps. A refused call throws ApiError with
// OpenAI's error message, so the page shows what the server said.

const STORED_KEY = "ftserve.apiKey";
// Relative to the page, so a server behind a path prefix works too.
const BASE = new URL("../v1", location.href).href;

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// Session storage: the key lives as long as the tab, and a closed browser forgets it.
export const apiKey = {
  get: () => sessionStorage.getItem(STORED_KEY),
  set: (value) => sessionStorage.setItem(STORED_KEY, value),
  clear: () => sessionStorage.removeItem(STORED_KEY),
};

// `body`: FormData as it is (multipart), anything else as JSON.
export async function api(path, {method = "GET", signal, body} = {}) {
  const response = await send(path, {method, signal, body});
  const answer = await response.json().catch(() => null);
  if (!response.ok) throw refusal(response, answer);
  return answer;
}

// The raw response, for streams and downloads; a refusal still throws ApiError with the API's message.
export async function send(path, {method = "GET", signal, body, accept = "application/json"} = {}) {
  const headers = {accept};
  const key = apiKey.get();
  if (key) headers.authorization = `Bearer ${key}`;
  if (body !== undefined && !(body instanceof FormData)) {
    headers["content-type"] = "application/json";
    body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(BASE + path, {method, headers, signal, body});
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, `Could not reach the server (${error.message}).`);
  }
  if (!response.ok && accept !== "application/json") throw refusal(response, await response.json().catch(() => null));
  return response;
}

function refusal(response, answer) {
  return new ApiError(response.status, answer?.error?.message ?? `The server answered ${response.status} ${response.statusText}.`);
}

export const jobPath = (id) => `/fine_tuning/jobs/${encodeURIComponent(id)}`;
