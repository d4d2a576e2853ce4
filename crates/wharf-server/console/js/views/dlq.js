// Dead letters, as `wharf dlq` does them, through the same HTTP API: the
// dead-letter topics with their depth, and one topic's letters with reason,
// attempts and original topic; inspect one, replay one or all, purge.

import { get, post, can, canAny, me, seg } from '../api.js';
import { h, clear, fmtInt, fmtTime } from '../format.js';
import { Sampler, sumBy } from '../metrics.js';
import { confirmAction, notify, report } from '../app.js';
import { messageRow } from './topic.js';
import { stored } from './overview.js';

export async function dlqList(main, _args, ctx) {
  const el = h('div', { class: 'table-wrap', id: 'dlq-table' });
  main.append(h('h1', {}, 'Dead letters'), h('section', { class: 'panel' }, el));
  if (!canAny('admin')) { clear(el, h('p', { class: 'empty' }, 'This token has no admin right: dead letters are not listed.')); return; }
  const sampler = new Sampler(2);
  ctx.every(3000, async () => {
    const [ts, fams] = await Promise.all([get('/v1/topics', { signal: ctx.signal }), me().metrics ? sampler.sample() : null]);
    const depth = fams ? sumBy(fams, 'wharf_dlq_depth', 'topic') : null;
    const dlqs = ts.filter((t) => t.name.startsWith('dlq.'));
    clear(el, dlqs.length ? h('table', {},
      h('thead', {}, h('tr', {}, h('th', {}, 'Dead-letter topic'), h('th', { class: 'num' }, depth ? 'Waiting' : 'Stored'))),
      h('tbody', {}, dlqs.map((t) => h('tr', {},
        h('td', {}, h('a', { href: `#/dlq/${seg(t.name)}` }, t.name)),
        h('td', { class: 'num' }, fmtInt(depth ? depth[t.name] ?? 0 : stored(t)))))))
      : h('p', { class: 'empty' }, 'No dead-letter topics: nothing has failed.'));
  });
}

const hdr = (m, k) => m.headers?.[k];

export async function dlqTopic(main, [topic]) {
  const list = h('div', { id: 'letters' });
  const count = h('span', { class: 'muted', id: 'letter-count' });
  const more = h('button', { type: 'button', class: 'ghost', hidden: true }, 'More');
  const admin = can('admin', topic);
  const head = h('div', { class: 'row' }, h('h1', {}, `Dead letters of ${topic.replace(/^dlq\./, '')}`), h('span', { class: 'spacer' }));
  if (admin) {
    head.append(
      h('button', { id: 'replay-all', onclick: async () => {
        if (!await confirmAction(`Replay every dead letter of ${topic} to its original topic?`, { ok: 'Replay all' })) return;
        try { const r = await post(`/v1/dlq/${seg(topic)}/replay`, { all: true }); notify(`${r.count} letter(s) replayed`); await load(); } catch (e) { report(e); }
      } }, 'Replay all'),
      h('button', { class: 'danger', id: 'purge', onclick: async () => {
        if (!await confirmAction(`Discard every dead letter of ${topic}? They can no longer be replayed.`, { word: 'purge', ok: 'Purge' })) return;
        try { const r = await post(`/v1/dlq/${seg(topic)}/purge`); notify(`${r.count} letter(s) purged`); await load(); } catch (e) { report(e); }
      } }, 'Purge'));
  }
  main.append(h('p', { class: 'crumbs' }, h('a', { href: '#/dlq' }, 'Dead letters'), ' / ', topic), head,
    h('section', { class: 'panel' }, h('div', { class: 'row' }, h('h2', {}, 'Letters'), count, h('span', { class: 'spacer' }), h('button', { class: 'ghost', onclick: () => load() }, 'Refresh')), list, more));
  let cursor = null;
  let shown = 0;
  async function load(from = null) {
    const q = new URLSearchParams({ limit: '100' });
    if (from) q.set('cursor', from);
    const page = await get(`/v1/dlq/${seg(topic)}?${q}`);
    if (!from) { clear(list); shown = 0; }
    cursor = page.next_cursor ?? null;
    more.hidden = !cursor;
    shown += page.letters.length;
    count.textContent = `${fmtInt(shown)} waiting${cursor ? ' (more may follow)' : ''}`;
    if (!shown) list.append(h('p', { class: 'empty', id: 'no-letters' }, 'No dead letters waiting.'));
    for (const l of page.letters) {
      const m = l.message;
      const original = hdr(m, 'wharf-original-topic');
      const replay = admin && original && can('publish', original)
        ? h('button', { class: 'small', 'data-replay': m.id, onclick: async (e) => {
          e.preventDefault();
          try { const r = await post(`/v1/dlq/${seg(topic)}/replay`, { id: m.id }); notify(r.count ? `Replayed to ${original}` : 'Nothing replayed (already gone?)'); await load(); } catch (err) { report(err); }
        } }, 'Replay') : null;
      const facts = h('span', { class: 'muted' },
        `from ${original ?? '?'} · ${hdr(m, 'wharf-attempts') ?? '?'} attempt(s) · ${hdr(m, 'wharf-dlq-reason') ?? 'no reason'}`,
        hdr(m, 'wharf-last-failure-ms') ? ` · last ${fmtTime(Number(hdr(m, 'wharf-last-failure-ms')))}` : '');
      const row = messageRow(l.offset, m, `${l.partition}:${l.offset}`, h('span', {}, facts, ' ', replay));
      row.classList.add('letter');
      list.append(row);
    }
  }
  more.addEventListener('click', () => cursor && load(cursor).catch(report));
  await load();
}
