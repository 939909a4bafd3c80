// Shared helpers of the RelayDesk pages (ES module, no build step).

/** Creates an element: el('button', {class: 'x', onclick: fn, 'aria-label': 'Send'}, 'text', child). */
export function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') e.addEventListener(k.slice(2), v);
    else if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

/** Calls the JSON API of this origin. Throws ApiError with the server's code and message. */
export async function api(path, { method = 'GET', body } = {}) {
  const headers = { 'X-RelayDesk-CSRF': '1' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const r = await fetch(path, {
    method, headers, credentials: 'same-origin',
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (r.status === 204) return null;
  let data = null;
  try { data = await r.json(); } catch { /* empty or not JSON */ }
  if (!r.ok) {
    const code = data?.error?.code ?? 'http_' + r.status;
    const msg = data?.error?.message ?? `request failed (${r.status})`;
    throw new ApiError(r.status, code, msg);
  }
  return data;
}

/** An error answer of the API. */
export class ApiError extends Error {
  constructor(status, code, message) { super(message); this.status = status; this.code = code; }
}

/** The WebSocket URL of a path on this origin. */
export function wsUrl(path) {
  const u = new URL(path, location.href);
  u.protocol = u.protocol === 'https:' ? 'wss:' : 'ws:';
  return u.href;
}

/** A time of day for a message timestamp (Unix milliseconds). */
export function timeOf(ts) {
  try { return new Date(ts).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' }); } catch { return ''; }
}

/** A client id for a message: unique per sender and page life. */
let counter = 0;
export function clientId(prefix) {
  counter += 1;
  const rnd = Math.random().toString(36).slice(2, 8);
  return `${prefix}-${Date.now().toString(36)}-${rnd}-${counter}`;
}

/** Sends typing on/off with a quiet period, calling send(active). */
export function typingNotifier(send, quietMs = 2500) {
  let active = false, timer = null;
  return {
    poke() {
      if (!active) { active = true; send(true); }
      clearTimeout(timer);
      timer = setTimeout(() => { active = false; send(false); }, quietMs);
    },
    stop() {
      clearTimeout(timer);
      if (active) { active = false; send(false); }
    },
  };
}
