// Overview: server health (fsync percentiles, resident memory, CPU), every
// topic with stored messages and bytes on disk, publish/consume rates as
// live sparklines and DLQ depth (a virtualized list: 1,000s of topics), and every consumer
// group with its lag over time and per partition. Polls /v1/topics,
// /v1/groups and /metrics every 2 s.

import { get, canAny, me, seg } from '../api.js';
import { h, clear, fmtInt, fmtRate, fmtBytes, fmtSeconds } from '../format.js';
import { Sampler, quantile, sumBy } from '../metrics.js';
import { sparkline, bars } from '../charts.js';
import { VirtualList } from '../vlist.js';

export const POLL_MS = 2000;

export const stored = (t) => t.offsets.reduce((n, p) => n + (p.end_offset - p.start_offset), 0);
/** Bytes the topic holds on disk (`bytes`; servers before it: the partitions' sum, else unknown). */
export const bytesOf = (t) => t.bytes ?? (t.offsets.every((p) => p.bytes !== undefined) ? t.offsets.reduce((n, p) => n + p.bytes, 0) : null);
export const dlqOf = (t) => t.dead_letter_topic || `dlq.${t.name}`;

function stat(key, value, extra, id) {
  return h('div', { class: 'stat', id }, h('div', { class: 'k' }, key), h('div', { class: 'v' }, value), extra);
}

export function topicHeader() {
  return h('div', { class: 'vrow head', role: 'row' },
    h('span', { role: 'columnheader' }, 'Topic'), h('span', { role: 'columnheader', class: 'num' }, 'Parts'),
    h('span', { role: 'columnheader', class: 'num' }, 'Messages'), h('span', { role: 'columnheader', class: 'num bytes' }, 'Bytes'),
    h('span', { role: 'columnheader', class: 'wide' }, 'Publish'),
    h('span', { role: 'columnheader', class: 'wide' }, 'Consume'), h('span', { role: 'columnheader', class: 'num' }, 'DLQ'));
}

export async function overview(main, _args, ctx) {
  const sampler = new Sampler(60);
  const statsEl = h('div', { class: 'stats', id: 'server-stats' });
  const metricsNote = h('p', { class: 'muted', id: 'metrics-note' });
  const listHost = h('div', { id: 'topic-list' });
  const filter = h('input', { type: 'search', placeholder: 'Filter topics', 'aria-label': 'Filter topics', id: 'topic-filter' });
  const count = h('span', { class: 'muted', id: 'topic-count' });
  const groupsEl = h('div', { id: 'group-table', class: 'table-wrap' });
  main.append(
    h('h1', {}, 'Overview'),
    statsEl, metricsNote,
    h('section', { class: 'panel', 'aria-labelledby': 'topics-h' },
      h('div', { class: 'row' }, h('h2', { id: 'topics-h' }, 'Topics'), count, h('span', { class: 'spacer' }), filter),
      listHost),
    h('section', { class: 'panel', 'aria-labelledby': 'groups-h' }, h('h2', { id: 'groups-h' }, 'Consumer groups'), groupsEl));

  let topics = [];
  let dlqDepth = {};
  const lagHistory = new Map();
  const list = new VirtualList(listHost, (t) => {
    const pub = sampler.rates('wharf_published_messages_total', 'topic', t.name);
    const con = sampler.rates('wharf_delivered_messages_total', 'topic', t.name);
    const depth = dlqDepth[dlqOf(t)];
    return h('div', { 'data-topic': t.name },
      h('a', { href: `#/topics/${seg(t.name)}`, role: 'cell' }, t.name),
      h('span', { class: 'num', role: 'cell' }, t.partitions),
      h('span', { class: 'num', role: 'cell' }, fmtInt(stored(t))),
      h('span', { class: 'num bytes', role: 'cell', 'data-bytes': bytesOf(t) ?? '' }, fmtBytes(bytesOf(t))),
      h('span', { class: 'wide', role: 'cell' }, sparkline(pub.slice(-30), { width: 60, height: 20, label: `publish rate of ${t.name}` }), ' ', fmtRate(pub.at(-1))),
      h('span', { class: 'wide', role: 'cell' }, sparkline(con.slice(-30), { width: 60, height: 20, label: `consume rate of ${t.name}`, color: 'var(--spark2)' }), ' ', fmtRate(con.at(-1))),
      h('span', { class: 'num', role: 'cell' }, depth ? h('a', { href: `#/dlq/${seg(dlqOf(t))}`, class: 'bad' }, fmtInt(depth)) : fmtInt(depth ?? 0)));
  }, { header: topicHeader(), label: 'Topics' });

  const shown = () => {
    const f = filter.value.trim().toLowerCase();
    const user = topics.filter((t) => !t.name.startsWith('dlq.'));
    const v = f ? user.filter((t) => t.name.toLowerCase().includes(f)) : user;
    count.textContent = `${fmtInt(v.length)} of ${fmtInt(user.length)}`;
    return v;
  };
  filter.addEventListener('input', () => list.update(shown()));

  ctx.every(POLL_MS, async () => {
    const [ts, gs, fams] = await Promise.all([
      canAny('admin') ? get('/v1/topics', { signal: ctx.signal }) : Promise.resolve(null),
      canAny('admin') ? get('/v1/groups', { signal: ctx.signal }) : Promise.resolve(null),
      me().metrics ? sampler.sample() : Promise.resolve(null),
    ]);
    if (ctx.signal.aborted) return;
    topics = ts || [];
    // DLQ depth: the metrics gauge (letters not yet replayed/purged), else the stored count.
    dlqDepth = fams ? sumBy(fams, 'wharf_dlq_depth', 'topic') : Object.fromEntries(topics.filter((t) => t.name.startsWith('dlq.')).map((t) => [t.name, stored(t)]));
    list.update(shown());
    if (!ts) clear(listHost.querySelector('.vspace'), h('p', { class: 'empty' }, 'This token has no admin right: topics are not listed.'));
    renderStats(statsEl, sampler, topics, gs, dlqDepth);
    metricsNote.textContent = me().metrics ? (sampler.error ? `metrics: ${sampler.error.message}` : '') : 'This token has no metrics right: rates, fsync latency and process figures are not shown.';
    renderGroups(groupsEl, gs, lagHistory);
  });
}

function renderStats(el, sampler, topics, groups, dlqDepth) {
  const fams = sampler.latest();
  const totalLag = (groups || []).filter((g) => !g.group.startsWith('$')).reduce((n, g) => n + g.lag, 0);
  const dlq = Object.values(dlqDepth).reduce((a, b) => a + b, 0);
  const cards = [
    stat('Topics', fmtInt(topics.filter((t) => !t.name.startsWith('dlq.')).length), null, 'stat-topics'),
    stat('Messages stored', fmtInt(topics.reduce((n, t) => n + stored(t), 0)), null, 'stat-stored'),
    stat('Bytes stored', fmtBytes(topics.reduce((n, t) => n + (bytesOf(t) ?? 0), 0)), null, 'stat-bytes'),
    stat('Group lag', fmtInt(totalLag), null, 'stat-lag'),
    stat('Dead letters', fmtInt(dlq), null, 'stat-dlq'),
  ];
  if (fams) {
    const pub = sampler.rates('wharf_published_messages_total', null, '');
    const con = sampler.rates('wharf_delivered_messages_total', null, '');
    const cpu = sampler.rates('process_cpu_seconds_total', null, '');
    const rss = sumBy(fams, 'process_resident_memory_bytes')[''];
    const q = (x) => fmtSeconds(quantile(fams, 'wharf_fsync_duration_seconds', x));
    cards.push(
      stat('Publish', fmtRate(pub.at(-1)), sparkline(pub, { label: 'publish rate, all topics' }), 'stat-publish'),
      stat('Consume', fmtRate(con.at(-1)), sparkline(con, { label: 'consume rate, all topics', color: 'var(--spark2)' }), 'stat-consume'),
      stat('fsync p50 / p99', `${q(0.5)} / ${q(0.99)}`, h('div', { class: 'muted' }, `p99.9 ${q(0.999)} · ${fmtInt(sumBy(fams, 'wharf_fsync_duration_seconds_count')[''])} syncs`), 'stat-fsync'),
      stat('Resident memory', fmtBytes(rss), sparkline(sampler.gauge('process_resident_memory_bytes', null, ''), { label: 'resident memory' }), 'stat-rss'),
      stat('CPU', cpu.length ? `${(cpu.at(-1) * 100).toFixed(1)} %` : '–', sparkline(cpu, { label: 'CPU use' }), 'stat-cpu'),
    );
    if (sumBy(fams, 'wharf_storage_full')[''] > 0) cards.push(stat('Storage', h('span', { class: 'bad' }, 'FULL')));
  }
  clear(el, cards);
}

function renderGroups(el, gs, history) {
  if (!gs) { clear(el, h('p', { class: 'empty' }, 'This token has no admin right: groups are not listed.')); return; }
  const visible = gs.filter((g) => !g.group.startsWith('$'));
  if (!visible.length) { clear(el, h('p', { class: 'empty' }, 'No consumer groups yet.')); return; }
  for (const g of visible) {
    const k = `${g.group}\u0000${g.topic}`;
    const hist = history.get(k) || [];
    hist.push(g.lag);
    if (hist.length > 60) hist.shift();
    history.set(k, hist);
  }
  clear(el, h('table', {},
    h('thead', {}, h('tr', {}, ['Group', 'Topic', 'Mode', 'Members', 'Lag', 'Lag over time', 'Lag per partition'].map((c, i) => h('th', { class: i === 3 || i === 4 ? 'num' : null }, c)))),
    h('tbody', {}, visible.map((g) => h('tr', { 'data-group': g.group },
      h('td', {}, h('a', { href: `#/groups/${seg(g.group)}/${seg(g.topic)}` }, g.group)),
      h('td', {}, h('a', { href: `#/topics/${seg(g.topic)}` }, g.topic)),
      h('td', {}, g.mode, g.loaded ? null : h('span', { class: 'tag' }, 'idle')),
      h('td', { class: 'num' }, g.members.length),
      h('td', { class: 'num' }, fmtInt(g.lag)),
      h('td', {}, sparkline(history.get(`${g.group}\u0000${g.topic}`), { label: `lag of ${g.group} on ${g.topic}`, color: 'var(--spark2)' })),
      h('td', {}, bars(g.partitions.map((p) => ({ label: `partition ${p.partition}`, value: p.lag })), { width: 160, height: 28, label: `lag per partition of ${g.group}` })))))));
}
