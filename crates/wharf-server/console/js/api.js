// The HTTP API as the console calls it: the token (typed once, kept in
// sessionStorage, sent as `Authorization: Bearer`), JSON requests, the
// token's rights from GET /v1/whoami, and SSE read with fetch (EventSource
// cannot send the Authorization header, and a token in a URL would end up
// in logs).

const KEY = 'wharf.token';

export const token = {
  get: () => sessionStorage.getItem(KEY) || '',
  set: (t) => sessionStorage.setItem(KEY, t),
  clear: () => sessionStorage.removeItem(KEY),
};

export class ApiError extends Error {
  constructor(status, body) {
    super(body?.error?.message || body?.message || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

function headers(extra = {}) {
  const h = { ...extra };
  const t = token.get();
  if (t) h.Authorization = `Bearer ${t}`;
  return h;
}

/** `encodeURIComponent` for a path segment. */
export const seg = (s) => encodeURIComponent(s);

/** Calls the API; resolves to the parsed JSON (or text, or null for 204). */
export async function api(method, path, body, { signal } = {}) {
  const init = { method, headers: headers({ Accept: 'application/json' }), signal };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const res = await fetch(path, init);
  const type = res.headers.get('content-type') || '';
  const data = res.status === 204 ? null
    : type.includes('json') ? await res.json().catch(() => null) : await res.text();
  if (!res.ok) {
    if (res.status === 401) window.dispatchEvent(new CustomEvent('wharf:unauthorized'));
    throw new ApiError(res.status, typeof data === 'object' && data ? data : { message: String(data).slice(0, 200) });
  }
  return data;
}

export const get = (path, opts) => api('GET', path, undefined, opts);
export const post = (path, body) => api('POST', path, body);
export const del = (path) => api('DELETE', path);

/** Whether topic right `pattern` covers `topic` (auth.rs `covers`). */
export function covers(pattern, topic) {
  const t = topic.split('.');
  let i = 0;
  for (const r of pattern.split('.')) {
    if (r === '>') return i < t.length;
    if (i >= t.length) return false;
    if (r !== '*' && r !== t[i]) return false;
    if (r === '*' && t[i] === '>') return false;
    i++;
  }
  return i === t.length;
}

let rights = null;

/** The token's rights (GET /v1/whoami); throws ApiError 401 on a bad token. */
export async function whoami() {
  rights = await get('/v1/whoami');
  return rights;
}

export const me = () => rights;

/** Whether the token holds topic right `right` (publish, consume, admin) on `topic`. */
export function can(right, topic) {
  if (!rights) return false;
  return (rights[right] || []).some((p) => covers(p, topic));
}

/** Whether the token holds `right` on any topic. */
export const canAny = (right) => !!rights && (rights[right] || []).length > 0;

/** Whether the token holds event store right `right` on stream `name` (`*`: all). */
export function canStream(right, name) {
  if (!rights) return false;
  return (rights[right] || []).some((p) => p === '*' || (name !== '*' && name.startsWith(p)));
}

/**
 * Reads a text/event-stream with fetch and calls `onEvent({event, data, id})`
 * per event until `signal` aborts; `onOpen()` once the server has answered
 * (subscribed). Resolves when the stream ends.
 */
export async function sse(path, onEvent, signal, onOpen = () => {}) {
  const res = await fetch(path, { headers: headers({ Accept: 'text/event-stream' }), signal });
  if (!res.ok) {
    const body = await res.json().catch(() => ({}));
    if (res.status === 401) window.dispatchEvent(new CustomEvent('wharf:unauthorized'));
    throw new ApiError(res.status, body);
  }
  // The server subscribes before it answers: from here nothing is missed.
  onOpen();
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value.replace(/\r\n?/g, '\n');
    let cut;
    while ((cut = buf.indexOf('\n\n')) >= 0) {
      const block = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      const ev = { event: 'message', data: '', id: null };
      const data = [];
      for (const line of block.split('\n')) {
        if (!line || line.startsWith(':')) continue;
        const i = line.indexOf(':');
        const k = i < 0 ? line : line.slice(0, i);
        const v = i < 0 ? '' : line.slice(i + 1).replace(/^ /, '');
        if (k === 'event') ev.event = v;
        else if (k === 'data') data.push(v);
        else if (k === 'id') ev.id = v;
      }
      if (data.length) {
        ev.data = data.join('\n');
        onEvent(ev);
      }
    }
  }
}
