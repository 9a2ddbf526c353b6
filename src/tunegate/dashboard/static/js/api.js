/**
 * The dashboard's only door to the server: the /v1 API with the signed-in key as a bearer token.
 *
 * Owns the key (sessionStorage, so it dies with the tab), JSON requests, uploads with progress
 * (XHR, because fetch cannot report upload progress), authenticated downloads, and reading
 * OpenAI-style Server-Sent Events. Every failure becomes an ApiError carrying OpenAI's
 * {message, type, param, code}, so pages can always show a sentence instead of a blank screen.
 * It knows nothing about the DOM.
 */

const KEY_STORAGE = "tunegate.apiKey";

export class ApiError extends Error {
  constructor({ message, type = null, param = null, code = null, status = 0 }) {
    super(message || "The request failed.");
    this.name = "ApiError";
    this.type = type;
    this.param = param;
    this.code = code;
    this.status = status;
  }
}

export function getKey() {
  return sessionStorage.getItem(KEY_STORAGE);
}

export function setKey(key) {
  if (key) sessionStorage.setItem(KEY_STORAGE, key);
  else sessionStorage.removeItem(KEY_STORAGE);
}

/** Listeners called when the server answers 401, so the app can return to the sign-in form. */
const unauthorizedListeners = new Set();
export function onUnauthorized(fn) {
  unauthorizedListeners.add(fn);
}

function statusSentence(status) {
  const known = {
    400: "The request was not accepted",
    401: "The API key was not accepted",
    403: "This API key is not allowed to do that",
    404: "Not found",
    409: "That conflicts with the current state",
    413: "The upload is too large",
    422: "The request was not valid",
    429: "The server is busy; try again in a moment",
    500: "The server had an error",
    502: "The server could not be reached",
    503: "The server is not ready",
  };
  return known[status] || `The server answered HTTP ${status}`;
}

/** Turn any response body (OpenAI error JSON, HTML from a proxy, nothing) into an ApiError. */
export function errorFromBody(status, text) {
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = null;
  }
  const err = body && typeof body === "object" ? body.error ?? body.detail ?? null : null;
  if (err && typeof err === "object" && err.message) {
    return new ApiError({ ...err, status });
  }
  if (typeof err === "string") return new ApiError({ message: err, status });
  const snippet = (text || "").replace(/<[^>]*>/g, " ").replace(/\s+/g, " ").trim().slice(0, 200);
  return new ApiError({ message: `${statusSentence(status)}.${snippet ? " " + snippet : ""}`, status });
}

function networkError(cause) {
  return new ApiError({
    message: "Could not reach the tunegate server. Check that `tunegate serve` is still running.",
    type: "network_error",
    code: "network_error",
    status: 0,
    cause,
  });
}

function authHeaders(extra = {}) {
  const key = getKey();
  return key ? { Authorization: `Bearer ${key}`, ...extra } : { ...extra };
}

function notifyUnauthorized(err) {
  if (err.status === 401) unauthorizedListeners.forEach((fn) => fn(err));
}

/** Send a request to the API; `body` objects are sent as JSON. Returns the parsed JSON or text. */
export async function request(method, path, { body, signal, key, query } = {}) {
  let url = path.startsWith("/") ? path : `/v1/${path}`;
  if (query) {
    const q = new URLSearchParams(Object.entries(query).filter(([, v]) => v !== undefined && v !== null));
    if ([...q].length) url += `?${q}`;
  }
  const headers = key ? { Authorization: `Bearer ${key}` } : authHeaders();
  const init = { method, headers, signal };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(url, init);
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw networkError(e);
  }
  const text = await response.text();
  if (!response.ok) {
    const err = errorFromBody(response.status, text);
    if (!key) notifyUnauthorized(err);
    throw err;
  }
  const type = response.headers.get("content-type") || "";
  if (type.includes("json")) {
    try {
      return JSON.parse(text);
    } catch {
      throw new ApiError({ message: "The server sent a response that is not valid JSON.", status: response.status });
    }
  }
  return text;
}

export const get = (path, opts) => request("GET", path, opts);
export const post = (path, body, opts = {}) => request("POST", path, { ...opts, body });
export const del = (path, opts) => request("DELETE", path, opts);

/** Fetch every page of a list endpoint that paginates with `after` (at most `maxPages`). */
export async function listAll(path, { limit = 100, maxPages = 50, query = {} } = {}) {
  const out = [];
  let after;
  for (let i = 0; i < maxPages; i++) {
    const page = await get(path, { query: { ...query, limit, after } });
    out.push(...page.data);
    if (!page.has_more || !page.data.length) break;
    after = page.data[page.data.length - 1].id;
  }
  return out;
}

/**
 * Upload a file with multipart form data, reporting progress as fraction 0..1.
 * Resolves with the FileObject; rejects with an ApiError.
 */
export function uploadFile(file, purpose, onProgress = () => {}) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/v1/files");
    const key = getKey();
    if (key) xhr.setRequestHeader("Authorization", `Bearer ${key}`);
    xhr.responseType = "text";
    xhr.upload.addEventListener("progress", (e) => {
      if (e.lengthComputable) onProgress(e.loaded / e.total);
    });
    xhr.addEventListener("load", () => {
      if (xhr.status >= 200 && xhr.status < 300) {
        onProgress(1);
        try {
          resolve(JSON.parse(xhr.responseText));
        } catch {
          reject(new ApiError({ message: "The server accepted the upload but sent an unreadable answer.", status: xhr.status }));
        }
      } else {
        const err = errorFromBody(xhr.status, xhr.responseText);
        notifyUnauthorized(err);
        reject(err);
      }
    });
    // A server that refuses a large body (413) may close the connection before the browser has
    // sent it all; the browser then reports a network error with no response to read.
    xhr.addEventListener("error", () =>
      reject(new ApiError({
        message: "The upload was interrupted. The server may have refused the file (for example because it is over the upload size limit), or it stopped.",
        code: "upload_interrupted",
      })),
    );
    xhr.addEventListener("abort", () => reject(new ApiError({ message: "The upload was cancelled.", code: "aborted" })));
    const form = new FormData();
    form.append("purpose", purpose);
    form.append("file", file, file.name);
    xhr.send(form);
  });
}

/** Download an authenticated URL and hand it to the browser as a file named `filename`. */
export async function download(path, filename) {
  let response;
  try {
    response = await fetch(path, { headers: authHeaders() });
  } catch (e) {
    throw networkError(e);
  }
  if (!response.ok) {
    const err = errorFromBody(response.status, await response.text());
    notifyUnauthorized(err);
    throw err;
  }
  const blob = await response.blob();
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = filename;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
  return blob;
}

/**
 * POST a request whose answer is an SSE stream of OpenAI chunks; calls onChunk(object) for each
 * `data:` payload until `[DONE]`. An `{"error": ...}` payload inside the stream rejects with it.
 */
export async function stream(path, body, { signal, onChunk }) {
  let response;
  try {
    response = await fetch(path, {
      method: "POST",
      headers: authHeaders({ "Content-Type": "application/json", Accept: "text/event-stream" }),
      body: JSON.stringify(body),
      signal,
    });
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw networkError(e);
  }
  if (!response.ok) {
    const err = errorFromBody(response.status, await response.text());
    notifyUnauthorized(err);
    throw err;
  }
  if (!response.body) throw new ApiError({ message: "This browser cannot read streamed responses." });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let done = false;
  while (!done) {
    const { value, done: finished } = await reader.read();
    if (finished) break;
    buffer += value;
    // SSE events end with a blank line; a partial event stays in the buffer for the next read.
    const events = buffer.split(/\r?\n\r?\n/);
    buffer = events.pop();
    for (const event of events) {
      const data = event
        .split(/\r?\n/)
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).replace(/^ /, ""))
        .join("\n");
      if (!data) continue;
      if (data === "[DONE]") {
        done = true;
        break;
      }
      let chunk;
      try {
        chunk = JSON.parse(data);
      } catch {
        throw new ApiError({ message: "The server sent a stream event that is not valid JSON." });
      }
      if (chunk.error) throw new ApiError(chunk.error);
      onChunk(chunk);
    }
  }
  reader.cancel().catch(() => {});
}
