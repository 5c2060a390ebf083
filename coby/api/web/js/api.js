// The public API, as a browser sees it: REST under /api/v1 and WebSocket URLs.
// A token given to the page as ?token= goes into the Authorization header of REST calls and into
// ?token= of WebSocket URLs (browsers cannot set headers on a WebSocket), as docs/api.md describes.

const params = new URLSearchParams(location.search);
export const TOKEN = params.get("token") || "";

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function call(method, path, body) {
  const headers = { Accept: "application/json" };
  if (TOKEN) headers.Authorization = `Bearer ${TOKEN}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let resp;
  try {
    resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (e) {
    throw new ApiError(0, `${method} ${path}: ${e.message || "network error"}`);
  }
  let data = null;
  try {
    data = await resp.json();
  } catch {
    data = null;
  }
  if (!resp.ok || !data || data.ok === false) {
    throw new ApiError(resp.status, (data && data.error) || `${method} ${path}: HTTP ${resp.status}`);
  }
  return data;
}

export const get = (path) => call("GET", path);
export const post = (path, body) => call("POST", path, body);

/** ws://host/path (wss: on https), with ?token= when the page has one. */
export function wsUrl(path) {
  const u = new URL(path, location.href);
  u.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  if (TOKEN) u.searchParams.set("token", TOKEN);
  return u.toString();
}

/** A query string from an object, leaving out null and undefined values. */
export function query(obj) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(obj)) if (v != null) q.set(k, String(v));
  const s = q.toString();
  return s ? `?${s}` : "";
}
