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

export async function api(path, {method = "GET", signal} = {}) {
  const headers = {accept: "application/json"};
  const key = apiKey.get();
  if (key) headers.authorization = `Bearer ${key}`;
  let response;
  try {
    response = await fetch(BASE + path, {method, headers, signal});
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, `Could not reach the server (${error.message}).`);
  }
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    throw new ApiError(response.status, body?.error?.message ?? `The server answered ${response.status} ${response.statusText}.`);
  }
  return body;
}

export const jobPath = (id) => `/fine_tuning/jobs/${encodeURIComponent(id)}`;
