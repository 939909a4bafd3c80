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

/** Lowercase hex SHA-256 of an ArrayBuffer. */
export async function sha256Hex(buf) {
  const d = new Uint8Array(await crypto.subtle.digest('SHA-256', buf));
  return [...d].map((b) => b.toString(16).padStart(2, '0')).join('');
}

/** A byte count for people: 1.2 MB, 340 kB, 12 bytes. */
export function sizeOf(n) {
  if (n >= 1e6) return `${(n / 1e6).toFixed(1)} MB`;
  if (n >= 1e3) return `${Math.round(n / 1e3)} kB`;
  return `${n} bytes`;
}

/**
 * Uploads a file to a chat-files route (docs/protocol.md, Files); `onProgress(sent, total)`.
 * Resolves with the server's file reference; rejects with the server's message.
 */
export function uploadFile(url, headers, file, onProgress = () => {}) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open('POST', `${url}?name=${encodeURIComponent(file.name || 'file')}`);
    for (const [k, v] of Object.entries(headers)) xhr.setRequestHeader(k, v);
    xhr.setRequestHeader('Content-Type', file.type || 'application/octet-stream');
    xhr.upload.onprogress = (e) => onProgress(e.loaded, e.total || file.size);
    xhr.onload = () => {
      let data = null;
      try { data = JSON.parse(xhr.responseText); } catch { /* not JSON */ }
      if (xhr.status === 201 && data) resolve(data);
      else reject(new Error(data?.error?.message || `upload failed (${xhr.status})`));
    };
    xhr.onerror = () => reject(new Error('the connection failed'));
    xhr.send(file);
  });
}

/**
 * A shared file in the chat: a button that downloads it, checks its SHA-256 against the server's, and saves
 * it. The item gets `data-verified` (the hash) once checked. `headers` may be a function (read at click time:
 * a visitor's token changes with every `welcome`).
 */
export function fileItem(file, url, headers, who, cls) {
  const status = el('span', { class: 'ts' }, sizeOf(file.size));
  const li = el('li', { class: `msg ${cls} file`, 'data-file': file.id, 'data-sha256': file.sha256, 'data-size': file.size });
  const btn = el('button', { type: 'button', class: 'link download', 'aria-label': `Download ${file.name}` }, file.name);
  btn.addEventListener('click', async () => {
    status.textContent = 'Downloading…';
    try {
      const r = await fetch(url, { headers: typeof headers === 'function' ? headers() : headers, credentials: 'same-origin' });
      if (!r.ok) throw new Error(r.status === 404 ? 'no longer available' : `failed (${r.status})`);
      const buf = await r.arrayBuffer();
      const got = await sha256Hex(buf);
      if (got !== file.sha256) throw new Error('checksum mismatch');
      li.dataset.verified = got;
      status.textContent = `${sizeOf(buf.byteLength)} · verified`;
      const a = el('a', { href: URL.createObjectURL(new Blob([buf])), download: file.name });
      a.click();
      setTimeout(() => URL.revokeObjectURL(a.href), 60000);
    } catch (e) { status.textContent = `Download ${e.message}.`; }
  });
  li.append(el('span', { class: 'who' }, who), btn, status);
  return li;
}
