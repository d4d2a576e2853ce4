// Small DOM and formatting helpers: element building without innerHTML
// (nothing from the API is ever parsed as HTML), numbers, times, and a
// message payload as text, pretty JSON or hex.

/** `h('a', {href: '#/'}, 'text', child)`: an element; `on*` props are listeners. */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2).toLowerCase(), v);
    else if (k === 'class') el.className = v;
    else if (k === 'text') el.textContent = v;
    else if (v === true) el.setAttribute(k, '');
    else el.setAttribute(k, v);
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export function clear(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export const fmtInt = (n) => (n === null || n === undefined ? '–' : Number(n).toLocaleString('en-US'));

export function fmtRate(n) {
  if (n === null || n === undefined || Number.isNaN(n)) return '–';
  if (n >= 1000) return `${(n / 1000).toFixed(1)}k/s`;
  return `${n < 10 ? n.toFixed(1) : Math.round(n)}/s`;
}

export function fmtBytes(n) {
  if (n === null || n === undefined) return '–';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return `${n < 10 && i ? n.toFixed(1) : Math.round(n)} ${u[i]}`;
}

export function fmtSeconds(s) {
  if (s === null || s === undefined || Number.isNaN(s)) return '–';
  if (s < 1e-3) return `${Math.round(s * 1e6)} µs`;
  if (s < 1) return `${(s * 1e3).toFixed(s < 0.01 ? 2 : 1)} ms`;
  return `${s.toFixed(2)} s`;
}

export const fmtTime = (ms) => new Date(ms).toISOString().replace('T', ' ').replace('Z', ' UTC');

/** The payload's bytes (the API sends UTF-8 text, or base64 with `encoding: base64`). */
export function payloadBytes(m) {
  if (m.encoding === 'base64') return Uint8Array.from(atob(m.payload), (c) => c.charCodeAt(0));
  return new TextEncoder().encode(m.payload);
}

export function payloadAs(m, view) {
  if (view === 'hex') {
    const b = payloadBytes(m);
    const lines = [];
    for (let i = 0; i < b.length; i += 16) {
      const row = Array.from(b.slice(i, i + 16));
      const hex = row.map((x) => x.toString(16).padStart(2, '0')).join(' ');
      const txt = row.map((x) => (x >= 32 && x < 127 ? String.fromCharCode(x) : '.')).join('');
      lines.push(`${i.toString(16).padStart(8, '0')}  ${hex.padEnd(47)}  ${txt}`);
    }
    return lines.join('\n') || '(empty)';
  }
  if (m.encoding === 'base64') return view === 'json' ? '(binary payload: not JSON)' : `(binary, base64) ${m.payload}`;
  if (view === 'json') {
    try { return JSON.stringify(JSON.parse(m.payload), null, 2); } catch { return '(not JSON)\n' + m.payload; }
  }
  return m.payload;
}

/** The best first view of a payload: JSON when it parses, else text (hex for binary). */
export function defaultView(m) {
  if (m.encoding === 'base64') return 'hex';
  try { const v = JSON.parse(m.payload); return typeof v === 'object' && v ? 'json' : 'text'; } catch { return 'text'; }
}

/** A payload viewer with text / JSON / hex toggles, and the headers. */
export function messageView(m) {
  const pre = h('pre', { class: 'payload-view', tabindex: '0' });
  let view = defaultView(m);
  const seg = h('div', { class: 'seg', role: 'group', 'aria-label': 'Payload view' });
  const buttons = ['text', 'json', 'hex'].map((v) => h('button', {
    type: 'button', 'aria-pressed': String(v === view), 'data-view': v,
    onclick: () => { view = v; show(); },
  }, v === 'json' ? 'JSON' : v));
  seg.append(...buttons);
  function show() {
    pre.textContent = payloadAs(m, view);
    for (const b of buttons) b.setAttribute('aria-pressed', String(b.dataset.view === view));
  }
  show();
  const hdrs = Object.entries(m.headers || {});
  return h('div', { class: 'message-view' },
    h('div', { class: 'row' }, seg, h('span', { class: 'muted mono' }, `id ${m.id}`),
      m.key ? h('span', { class: 'tag' }, `key ${m.key}`) : null,
      h('span', { class: 'muted' }, fmtTime(m.timestamp_ms))),
    pre,
    hdrs.length ? h('table', { class: 'headers' },
      h('thead', {}, h('tr', {}, h('th', {}, 'Header'), h('th', {}, 'Value'))),
      h('tbody', {}, hdrs.map(([k, v]) => h('tr', {}, h('td', { class: 'mono' }, k), h('td', { class: 'mono' }, v)))))
      : h('p', { class: 'muted' }, 'No headers.'));
}

/** A one-line preview of a payload for a summary row. */
export function preview(m) {
  const s = m.encoding === 'base64' ? `(binary, ${payloadBytes(m).length} bytes)` : m.payload;
  return s.length > 160 ? s.slice(0, 160) + '…' : s;
}
