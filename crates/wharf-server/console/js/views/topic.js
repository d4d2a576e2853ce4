// Topics: the list (virtualized, filterable) with a create form, and one
// topic's page: settings and partitions, its groups, browsing stored
// messages by partition and offset or time (GET .../partitions/{p}/messages),
// publishing a test message, a live tail over SSE, and deleting it.

import { get, post, del, can, canAny, sse, seg } from '../api.js';
import { h, clear, fmtInt, fmtBytes, fmtTime, messageView, preview } from '../format.js';
import { VirtualList } from '../vlist.js';
import { confirmAction, notify, report } from '../app.js';
import { stored, bytesOf, dlqOf } from './overview.js';

export async function topics(main, _args, ctx) {
  const filter = h('input', { type: 'search', placeholder: 'Filter', 'aria-label': 'Filter topics' });
  const count = h('span', { class: 'muted' });
  const host = h('div', { id: 'topics-list' });
  main.append(h('h1', {}, 'Topics'));
  if (canAny('admin')) main.append(createForm());
  main.append(h('section', { class: 'panel' }, h('div', { class: 'row' }, h('h2', {}, 'All topics'), count, h('span', { class: 'spacer' }), filter), host));
  const header = h('div', { class: 'vrow head', role: 'row' },
    h('span', { role: 'columnheader' }, 'Topic'), h('span', { role: 'columnheader', class: 'num' }, 'Parts'),
    h('span', { role: 'columnheader', class: 'num' }, 'Messages'), h('span', { role: 'columnheader', class: 'num bytes' }, 'Bytes'),
    h('span', { role: 'columnheader', class: 'wide' }, 'Durability'),
    h('span', { role: 'columnheader', class: 'wide' }, 'Dead letters to'), h('span', { role: 'columnheader', class: 'num' }, ''));
  const list = new VirtualList(host, (t) => h('div', {},
    h('a', { href: `#/topics/${seg(t.name)}`, role: 'cell' }, t.name),
    h('span', { class: 'num', role: 'cell' }, t.partitions),
    h('span', { class: 'num', role: 'cell' }, fmtInt(stored(t))),
    h('span', { class: 'num bytes', role: 'cell' }, fmtBytes(bytesOf(t))),
    h('span', { class: 'wide', role: 'cell' }, t.durability),
    h('span', { class: 'wide', role: 'cell' }, t.name.startsWith('dlq.') ? '–' : dlqOf(t)),
    h('span', { role: 'cell' })), { header, label: 'Topics' });
  let all = [];
  const show = () => {
    const f = filter.value.trim().toLowerCase();
    const v = f ? all.filter((t) => t.name.toLowerCase().includes(f)) : all;
    count.textContent = `${fmtInt(v.length)} of ${fmtInt(all.length)}`;
    list.update(v);
  };
  filter.addEventListener('input', show);
  if (!canAny('admin')) {
    host.replaceChildren(h('p', { class: 'empty' }, 'This token has no admin right: topics are not listed.'));
    return;
  }
  ctx.every(5000, async () => { all = await get('/v1/topics', { signal: ctx.signal }); show(); });
}

function createForm() {
  const name = h('input', { id: 'new-topic', required: true, pattern: '[A-Za-z0-9_\\-]+(\\.[A-Za-z0-9_\\-]+)*', maxlength: '249' });
  const parts = h('input', { id: 'new-partitions', type: 'number', min: '1', max: '4096', placeholder: 'default' });
  const dur = h('select', { id: 'new-durability' }, ['', 'always', 'never', 'interval:100'].map((d) => h('option', { value: d }, d || 'default')));
  const maxd = h('input', { id: 'new-max-deliveries', type: 'number', min: '1', placeholder: 'default' });
  return h('section', { class: 'panel' }, h('h2', {}, 'Create a topic'),
    h('form', {
      class: 'row',
      onsubmit: async (e) => {
        e.preventDefault();
        const body = { name: name.value.trim() };
        if (parts.value) body.partitions = Number(parts.value);
        if (dur.value) body.durability = dur.value;
        if (maxd.value) body.max_deliveries = Number(maxd.value);
        try {
          await post('/v1/topics', body);
          notify(`Topic ${body.name} created`);
          location.hash = `#/topics/${seg(body.name)}`;
        } catch (err) { report(err); }
      },
    },
    h('label', {}, 'Name', name), h('label', {}, 'Partitions', parts), h('label', {}, 'Durability', dur),
    h('label', {}, 'Max deliveries', maxd), h('button', { type: 'submit' }, 'Create')));
}

export async function topic(main, [name], ctx) {
  // Settings, partitions, groups and browsing need admin on the topic; a
  // token with only publish or consume still gets those panels.
  const t = can('admin', name) ? await get(`/v1/topics/${seg(name)}`) : null;
  const head = h('div', { class: 'row' }, h('h1', {}, name), h('span', { class: 'spacer' }));
  if (can('admin', name)) {
    head.append(h('button', {
      class: 'danger', id: 'delete-topic',
      onclick: async () => {
        if (!await confirmAction(`Delete topic ${name}, every message in it and its groups' positions? This cannot be undone.`, { word: name, ok: 'Delete topic' })) return;
        try { await del(`/v1/topics/${seg(name)}`); notify(`Topic ${name} deleted`); location.hash = '#/topics'; } catch (e) { report(e); }
      },
    }, 'Delete topic'));
  }
  main.append(h('p', { class: 'crumbs' }, h('a', { href: '#/topics' }, 'Topics'), ' / ', name), head);
  const side = h('div', { class: 'grid' });
  if (!t) {
    main.append(h('p', { class: 'muted', id: 'no-admin' }, 'This token has no admin right on this topic: settings, groups and stored messages are not shown.'), side);
    if (can('publish', name)) side.append(publishPanel(name));
    if (can('consume', name)) side.append(tailPanel(name, ctx));
    return;
  }
  const grid = h('div', { class: 'grid' });
  main.append(grid);
  grid.append(settingsPanel(t));
  const groupsEl = h('div', { class: 'table-wrap' });
  grid.append(h('section', { class: 'panel' }, h('h2', {}, 'Groups'), groupsEl));
  ctx.every(3000, async () => {
    const gs = await get(`/v1/groups?topic=${seg(name)}`, { signal: ctx.signal });
    const visible = gs.filter((g) => !g.group.startsWith('$'));
    clear(groupsEl, visible.length ? h('table', {}, h('thead', {}, h('tr', {}, h('th', {}, 'Group'), h('th', {}, 'Mode'), h('th', { class: 'num' }, 'Members'), h('th', { class: 'num' }, 'Lag'))),
      h('tbody', {}, visible.map((g) => h('tr', {}, h('td', {}, h('a', { href: `#/groups/${seg(g.group)}/${seg(g.topic)}` }, g.group)), h('td', {}, g.mode), h('td', { class: 'num' }, g.members.length), h('td', { class: 'num' }, fmtInt(g.lag)))))) : h('p', { class: 'muted' }, 'No group consumes this topic.'));
  });
  main.append(browsePanel(t), side);
  if (can('publish', name)) side.append(publishPanel(name));
  if (can('consume', name)) side.append(tailPanel(name, ctx));
}

function settingsPanel(t) {
  const rows = [
    ['Partitions', t.partitions],
    ['Stored', h('span', { id: 'topic-stored' }, `${fmtInt(stored(t))} messages, `, h('span', { id: 'topic-bytes', title: bytesOf(t) === null ? null : `${fmtInt(bytesOf(t))} bytes` }, fmtBytes(bytesOf(t))))],
    ['Durability', t.durability],
    ['Retention', [t.retention_bytes ? `${fmtInt(t.retention_bytes)} bytes` : null, t.retention_ms ? `${fmtInt(t.retention_ms)} ms` : null].filter(Boolean).join(', ') || 'unlimited'],
    ['Max message', `${fmtInt(t.max_message_bytes)} bytes`], ['TTL', t.ttl_ms ? `${fmtInt(t.ttl_ms)} ms` : 'none'],
    ['Dedup window', t.dedup_window_ms ? `${fmtInt(t.dedup_window_ms)} ms` : 'off'],
    ['Dead letters to', t.name.startsWith('dlq.') ? '–' : h('a', { href: `#/dlq/${encodeURIComponent(dlqOf(t))}` }, dlqOf(t))],
    ['Max deliveries', t.max_deliveries ?? 'unlimited'], ['Visibility timeout', t.visibility_timeout_ms ? `${fmtInt(t.visibility_timeout_ms)} ms` : 'server lease'],
    ['On damage', t.skip_damaged_batches ? 'skip batch' : 'stop partition'],
  ];
  return h('section', { class: 'panel', id: 'topic-settings' }, h('h2', {}, 'Settings'),
    h('table', {}, h('tbody', {}, rows.map(([k, v]) => h('tr', {}, h('th', { scope: 'row' }, k), h('td', {}, v))))),
    h('h2', {}, 'Partitions'),
    h('table', {}, h('thead', {}, h('tr', {}, h('th', {}, '#'), h('th', { class: 'num' }, 'First offset'), h('th', { class: 'num' }, 'Next offset'), h('th', { class: 'num' }, 'Stored'), h('th', { class: 'num' }, 'Bytes'), h('th', {}, 'Damage'))),
      h('tbody', {}, t.offsets.map((p) => h('tr', {}, h('td', {}, p.partition), h('td', { class: 'num' }, fmtInt(p.start_offset)), h('td', { class: 'num' }, fmtInt(p.end_offset)),
        h('td', { class: 'num' }, fmtInt(p.end_offset - p.start_offset)), h('td', { class: 'num', title: p.bytes === undefined ? null : `${fmtInt(p.bytes)} bytes` }, fmtBytes(p.bytes)), h('td', { class: p.damage.length ? 'bad' : 'muted' }, p.damage.length ? `${p.damage.length} damaged batch(es)` : 'none'))))));
}

function browsePanel(t) {
  const part = h('select', { id: 'browse-partition' }, t.offsets.map((p) => h('option', { value: p.partition }, `partition ${p.partition}`)));
  const mode = h('select', { id: 'browse-mode', 'aria-label': 'Start at' }, h('option', { value: 'offset' }, 'offset'), h('option', { value: 'time' }, 'time'));
  const offset = h('input', { id: 'browse-offset', type: 'number', min: '0', placeholder: 'first', 'aria-label': 'Offset' });
  const time = h('input', { id: 'browse-time', type: 'datetime-local', step: '1', hidden: true, 'aria-label': 'Time (local)' });
  const limit = h('select', { id: 'browse-limit', 'aria-label': 'Page size' }, [20, 50, 200].map((n) => h('option', { value: n, selected: n === 20 }, `${n} per page`)));
  const out = h('div', { id: 'browse-results', 'aria-live': 'polite' });
  const more = h('button', { type: 'button', class: 'ghost', hidden: true, id: 'browse-next' }, 'Next page');
  let next = null;
  mode.addEventListener('change', () => { offset.hidden = mode.value !== 'offset'; time.hidden = mode.value !== 'time'; });
  async function read(from) {
    const q = new URLSearchParams({ limit: limit.value });
    if (from !== undefined) q.set('offset', from);
    else if (mode.value === 'offset' && offset.value !== '') q.set('offset', offset.value);
    else if (mode.value === 'time' && time.value) q.set('time_ms', String(new Date(time.value).getTime()));
    try {
      const page = await get(`/v1/topics/${seg(t.name)}/partitions/${part.value}/messages?${q}`);
      next = page.next_offset ?? null;
      more.hidden = next === null;
      if (from === undefined) clear(out);
      if (!page.messages.length && from === undefined) out.append(h('p', { class: 'empty' }, `No messages from offset ${page.from_offset} (partition holds ${page.start_offset}–${page.end_offset}).`));
      for (const m of page.messages) out.append(messageRow(m.offset, m.message, `offset ${m.offset}`));
    } catch (e) { report(e); }
  }
  more.addEventListener('click', () => next !== null && read(next));
  if (!can('admin', t.name)) {
    return h('section', { class: 'panel' }, h('h2', {}, 'Messages'), h('p', { class: 'muted' }, 'Browsing stored messages needs the admin right on this topic.'));
  }
  return h('section', { class: 'panel', id: 'browse' }, h('h2', {}, 'Messages'),
    h('form', { class: 'row', onsubmit: (e) => { e.preventDefault(); read(); } },
      h('label', {}, 'Partition', part), h('label', {}, 'From', mode), h('label', {}, 'Offset / time', offset, time), h('label', {}, 'Page', limit),
      h('button', { type: 'submit', id: 'browse-read' }, 'Read')),
    out, more);
}

/** A collapsible message: summary line, then payload views and headers. */
export function messageRow(key, m, label, extra = null) {
  const body = h('div', {});
  const d = h('details', { class: 'msg', 'data-id': m.id },
    h('summary', {}, h('span', { class: 'tag' }, label), h('span', { class: 'payload mono' }, preview(m)), h('span', { class: 'muted' }, fmtTime(m.timestamp_ms)), extra),
    body);
  d.addEventListener('toggle', () => { if (d.open && !body.firstChild) body.append(messageView(m)); });
  return d;
}

function publishPanel(name) {
  const payload = h('textarea', { id: 'publish-payload', 'aria-label': 'Payload' }, '{"hello": "wharf"}');
  const key = h('input', { id: 'publish-key', placeholder: 'optional' });
  const headers = h('input', { id: 'publish-headers', placeholder: '{"content-type": "application/json"}', class: 'mono' });
  const result = h('p', { class: 'muted', id: 'publish-result', 'aria-live': 'polite' });
  return h('section', { class: 'panel', id: 'publish' }, h('h2', {}, 'Publish a test message'),
    h('form', {
      onsubmit: async (e) => {
        e.preventDefault();
        const msg = { payload: payload.value };
        if (key.value) msg.key = key.value;
        try {
          if (headers.value.trim()) msg.headers = JSON.parse(headers.value);
          const r = await post(`/v1/topics/${seg(name)}/messages`, msg);
          const rc = r.receipts[0];
          result.textContent = `Stored: partition ${rc.partition}, offset ${rc.offset}${rc.duplicate ? ' (duplicate)' : ''}, id ${rc.id}`;
        } catch (err) { report(err); }
      },
    },
    h('label', { for: 'publish-payload', class: 'muted' }, 'Payload (text; JSON is sent as text)'), payload,
    h('div', { class: 'row' }, h('label', {}, 'Key', key), h('label', {}, 'Headers (JSON object)', headers), h('button', { type: 'submit', id: 'publish-send' }, 'Publish')),
    result));
}

function tailPanel(name, ctx) {
  const out = h('div', { class: 'tail', id: 'tail', 'aria-live': 'polite' });
  const status = h('span', { class: 'muted', id: 'tail-status' }, 'stopped');
  let stop = null;
  const btn = h('button', { type: 'button', id: 'tail-toggle', 'aria-pressed': 'false' }, 'Start live tail');
  btn.addEventListener('click', () => {
    if (stop) { stop.abort(); return; }
    stop = new AbortController();
    ctx.signal.addEventListener('abort', () => stop?.abort());
    btn.textContent = 'Stop live tail';
    btn.setAttribute('aria-pressed', 'true');
    status.textContent = 'connecting…';
    const done = () => { stop = null; btn.textContent = 'Start live tail'; btn.setAttribute('aria-pressed', 'false'); status.textContent = 'stopped'; };
    sse(`/v1/topics/${seg(name)}/events?from=latest`, (ev) => {
      if (ev.event !== 'message') return;
      const d = JSON.parse(ev.data);
      out.prepend(messageRow(d.offset, d.message, `p${d.partition} @${d.offset}`));
      while (out.childElementCount > 200) out.lastElementChild.remove();
    }, stop.signal, () => { status.textContent = 'live'; }).then(done, (e) => { done(); report(e); });
  });
  return h('section', { class: 'panel', id: 'live-tail' }, h('div', { class: 'row' }, h('h2', {}, 'Live tail'), status, h('span', { class: 'spacer' }), btn),
    h('p', { class: 'muted' }, 'Messages published from now on (a private stream: no group moves).'), out);
}
