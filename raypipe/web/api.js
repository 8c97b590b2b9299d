// The /v1 API, called with the user's key. The key lives in localStorage and travels only
// in the Authorization header, never in a URL (URLs end up in logs and histories).

const KEY_STORAGE = "raypipe.apiKey";
let key = localStorage.getItem(KEY_STORAGE) || "";

export const currentKey = () => key;

export function useKey(value) {
  key = value;
  localStorage.setItem(KEY_STORAGE, key);
}

export function forgetKey() {
  key = "";
  localStorage.removeItem(KEY_STORAGE);
}

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export async function call(path, options = {}) {
  const headers = { ...options.headers, Authorization: `Bearer ${key}` };
  const response = await fetch(path, { ...options, headers, cache: "no-store" });
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      message = (await response.json()).error.message;
    } catch {
      // not the API's error format: keep the status line
    }
    throw new ApiError(response.status, message);
  }
  return response;
}

export const getJson = async (path) => (await call(path)).json();
export const postJson = async (path) => (await call(path, { method: "POST" })).json();
export const jobPath = (id) => `/v1/jobs/${encodeURIComponent(id)}`;
export const batchPath = (id) => `/v1/batches/${encodeURIComponent(id)}`;

// A path with its query; empty values are left out.
export function withQuery(path, params) {
  const query = new URLSearchParams(Object.entries(params).filter(([, value]) => value));
  return query.toString() ? `${path}?${query}` : path;
}

// Server-Sent Events read with fetch(): EventSource cannot send an Authorization header.
// Yields {id, event, data} until the server closes the stream.
export async function* events(path, { signal, lastEventId }) {
  const headers = lastEventId ? { "Last-Event-ID": lastEventId } : {};
  const response = await call(path, { headers, signal });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replaceAll("\r\n", "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = { data: [] };
      for (const line of buffer.slice(0, end).split("\n")) {
        if (line.startsWith(":")) continue; // a keep-alive comment
        const [field, ...rest] = line.split(":");
        const text = rest.join(":").replace(/^ /, "");
        if (field === "data") event.data.push(text);
        else if (field === "id" || field === "event") event[field] = text;
      }
      buffer = buffer.slice(end + 2);
      yield { ...event, data: event.data.join("\n") };
    }
  }
}
