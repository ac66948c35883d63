// The admin API as the console uses it: JSON requests with the tab's token, problem+json
// errors as ApiError, and the /v1/events stream (read with fetch, because EventSource cannot
// send an Authorization header and a token never goes in a URL).

const TOKEN_KEY = "lbcp-token";

export function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.code = problem.code || "http-error";
    this.title = problem.title || `HTTP ${status}`;
    this.errors = problem.errors || [];
    this.problem = problem; // every member, e.g. a refused drain's fleet, in_service, override
  }

  // The detail for one field (a JSON pointer such as "/weight"), if the API named it.
  fieldError(pointer) {
    const e = this.errors.find((x) => x.pointer === pointer);
    return e ? e.detail : null;
  }
}

function headers(extra = {}) {
  const h = { accept: "application/json", ...extra };
  if (token()) h.authorization = `Bearer ${token()}`;
  return h;
}

export async function request(method, path, { body, params, headers: extra, contentType } = {}) {
  const url = new URL(path, location.origin);
  for (const [k, v] of Object.entries(params || {})) if (v !== undefined && v !== null) url.searchParams.set(k, v);
  const init = { method, headers: headers(extra) };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["content-type"] = contentType || "application/json";
  }
  let resp;
  try {
    resp = await fetch(url, init);
  } catch (err) {
    throw new ApiError(0, { code: "api-unreachable", title: "Admin API unreachable", detail: String(err) });
  }
  const type = resp.headers.get("content-type") || "";
  const doc = type.includes("json") ? await resp.json().catch(() => ({})) : { text: await resp.text() };
  if (!resp.ok) throw new ApiError(resp.status, doc);
  return doc;
}

export const get = (path, params) => request("GET", path, { params });

// Every item of a paged list (`items`, `next_page_token`).
export async function listAll(path, params = {}) {
  const items = [];
  let page;
  do {
    const doc = await request("GET", path, { params: { ...params, limit: 1000, page_token: page } });
    items.push(...doc.items);
    page = doc.next_page_token;
  } while (page);
  return items;
}
export const text = async (path, params) => (await request("GET", path, { params })).text;

// Follow /v1/events: `onEvent(name, data)` for each event, `onState(state)` with
// "live" | "reconnecting" | "unauthorized". Reconnects by itself (a new snapshot comes first).
export function follow(onEvent, onState) {
  let stopped = false;
  let controller = null;
  (async () => {
    let delay = 500;
    while (!stopped) {
      controller = new AbortController();
      try {
        const resp = await fetch("/v1/events", { headers: headers({ accept: "text/event-stream" }), signal: controller.signal });
        if (resp.status === 401 || resp.status === 403) {
          onState("unauthorized");
          return;
        }
        if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
        onState("live");
        delay = 500;
        await readEvents(resp.body, onEvent);
      } catch (err) {
        if (stopped) return;
      }
      onState("reconnecting");
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 5000);
    }
  })();
  return () => {
    stopped = true;
    if (controller) controller.abort();
  };
}

async function readEvents(body, onEvent) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value;
    let end;
    while ((end = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, end);
      buf = buf.slice(end + 2);
      let name = "message";
      let data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data += line.slice(5).trim();
      }
      if (data) onEvent(name, JSON.parse(data));
    }
  }
}
