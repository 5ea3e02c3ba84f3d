// The console API: JSON in and out; errors carry the server's message.

export class ApiError extends Error {
  constructor(status, message, param) {
    super(message);
    this.status = status;
    this.param = param;
  }
}

let onUnauthorised = () => {};
export function setUnauthorisedHandler(fn) {
  onUnauthorised = fn;
}

async function request(path, { method = "GET", body, signal } = {}) {
  const opts = { method, headers: {}, credentials: "same-origin", signal };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const r = await fetch("/api" + path, opts);
  if (r.status === 401) onUnauthorised();
  return r;
}

async function failure(r) {
  let msg = `${r.status} ${r.statusText}`;
  let param = null;
  try {
    const data = await r.json();
    if (data && data.error) {
      msg = data.error.message;
      param = data.error.param;
    }
  } catch {
    /* not JSON: keep the status line */
  }
  return new ApiError(r.status, msg, param);
}

export async function api(path, opts = {}) {
  const r = await request(path, opts);
  if (!r.ok) throw await failure(r);
  return r.json();
}

export const post = (path, body) => api(path, { method: "POST", body });

// POST and read an NDJSON stream, one parsed object per line, as it arrives.
export async function stream(path, body, onEvent, signal) {
  const r = await request(path, { method: "POST", body, signal });
  if (!r.ok) throw await failure(r);
  const reader = r.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += decoder.decode(value, { stream: true });
    let nl;
    while ((nl = buf.indexOf("\n")) >= 0) {
      const line = buf.slice(0, nl).trim();
      buf = buf.slice(nl + 1);
      if (line) onEvent(JSON.parse(line));
    }
  }
}

export function runFileUrl(name, file, download = false) {
  return `/api/runs/${encodeURIComponent(name)}/files/${file}${download ? "?download=true" : ""}`;
}
