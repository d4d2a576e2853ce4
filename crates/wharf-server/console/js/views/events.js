// The event store's pages, in the same pattern as the broker's: streams
// (list by prefix, read one forwards or backwards), projections with their
// lag, and a place kept for sagas, which the server does not have yet.

import { get, canStream, seg } from '../api.js';
import { h, clear, fmtInt, fmtTime, messageView } from '../format.js';
import { sparkline } from '../charts.js';

export async function streams(main) {
  const prefix = h('input', { type: 'search', id: 'stream-prefix', placeholder: 'prefix', 'aria-label': 'Stream-name prefix' });
  const out = h('div', { id: 'streams-list' });
  const more = h('button', { type: 'button', class: 'ghost', hidden: true }, 'More');
  main.append(h('h1', {}, 'Event streams'),
    h('section', { class: 'panel' }, h('form', { class: 'row', onsubmit: (e) => { e.preventDefault(); load(); } }, prefix, h('button', { type: 'submit' }, 'List')), out, more));
  let last = null;
  async function load(after = null) {
    if (!canStream('events_read', prefix.value || '*')) {
      clear(out, h('p', { class: 'empty' }, 'This token has no events_read right on that prefix.'));
      return;
    }
    const q = new URLSearchParams({ prefix: prefix.value, max_count: '200' });
    if (after) q.set('after', after);
    const r = await get(`/v1/eventstore/streams?${q}`);
    if (!after) clear(out);
    if (!r.streams.length && !after) out.append(h('p', { class: 'empty' }, 'No streams.'));
    const ul = h('ul', {}, r.streams.map((s) => h('li', {}, h('a', { href: `#/streams/${seg(s)}` }, s))));
    out.append(ul);
    last = r.streams.at(-1) ?? null;
    more.hidden = r.streams.length < 200;
  }
  more.addEventListener('click', () => load(last));
  await load();
}

export async function stream(main, [name]) {
  const out = h('div', { id: 'events' });
  const dir = h('select', { 'aria-label': 'Direction' }, h('option', { value: 'backwards' }, 'newest first'), h('option', { value: 'forwards' }, 'oldest first'));
  main.append(h('p', { class: 'crumbs' }, h('a', { href: '#/streams' }, 'Streams'), ' / ', name), h('h1', {}, name),
    h('section', { class: 'panel' }, h('div', { class: 'row' }, h('h2', {}, 'Events'), h('span', { class: 'spacer' }), dir), out));
  async function load() {
    const r = await get(`/v1/eventstore/streams/${seg(name)}?direction=${dir.value}&max_count=100`);
    clear(out, r.events.length ? r.events.map((e) => {
      const d = h('details', { class: 'msg' }, h('summary', {}, h('span', { class: 'tag' }, `v${e.version}`), h('strong', {}, e.type),
        h('span', { class: 'muted' }, `position ${e.position} · ${fmtTime(e.timestamp_ms)}`), e.tags.map((t) => h('span', { class: 'tag' }, t))));
      d.addEventListener('toggle', () => { if (d.open && d.childElementCount === 1) d.append(messageView({ ...e, headers: e.metadata, key: null })); });
      return d;
    }) : h('p', { class: 'empty' }, 'No events.'));
  }
  dir.addEventListener('change', load);
  await load();
}

export async function projections(main, _args, ctx) {
  const el = h('div', { class: 'table-wrap', id: 'projections-table' });
  main.append(h('h1', {}, 'Projections'), h('section', { class: 'panel' }, el));
  const history = new Map();
  ctx.every(3000, async () => {
    const r = await get('/v1/eventstore/projections', { signal: ctx.signal });
    for (const p of r.projections) {
      const hst = history.get(p.name) || [];
      hst.push(p.lag);
      if (hst.length > 60) hst.shift();
      history.set(p.name, hst);
    }
    clear(el, r.projections.length ? h('table', {},
      h('thead', {}, h('tr', {}, ['Name', 'Prefix', 'Topic', 'State', 'Checkpoint', 'Head', 'Lag', '', 'Applied', 'Failures'].map((c) => h('th', {}, c)))),
      h('tbody', {}, r.projections.map((p) => h('tr', {},
        h('td', {}, p.name), h('td', { class: 'mono' }, p.prefix || '*'), h('td', {}, h('a', { href: `#/topics/${seg(p.topic)}` }, p.topic)),
        h('td', { class: p.error ? 'bad' : p.caught_up ? 'good' : null }, p.state, p.error ? `: ${p.error}` : ''),
        h('td', { class: 'num' }, fmtInt(p.checkpoint)), h('td', { class: 'num' }, fmtInt(p.head)), h('td', { class: 'num' }, fmtInt(p.lag)),
        h('td', {}, sparkline(history.get(p.name), { label: `lag of ${p.name}`, width: 80, height: 20 })),
        h('td', { class: 'num' }, fmtInt(p.applied)), h('td', { class: 'num' }, fmtInt(p.failures))))))
      : h('p', { class: 'empty' }, 'No projections. Define one with POST /v1/eventstore/projections or `wharf projection create`.'));
  });
}

export async function sagas(main) {
  main.append(h('h1', {}, 'Sagas'), h('section', { class: 'panel' }, h('p', { class: 'empty' },
    'The server has no saga feature yet. When it does, its instances appear here in the same pattern as the other pages.')));
}
