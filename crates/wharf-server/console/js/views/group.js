// Consumer groups: the list, and one group on one topic: mode, members and
// per partition the committed offset, settled-above, end offset, lag and
// assigned member (stream mode), with the lag as a live chart.
// Resetting it to earliest, latest, an offset or a time (with
// confirmation; the server refuses while a consumer is bound).

import { get, post, can, seg } from '../api.js';
import { h, clear, fmtInt } from '../format.js';
import { sparkline, bars } from '../charts.js';
import { confirmAction, notify, report } from '../app.js';

export async function groups(main, _args, ctx) {
  const el = h('div', { class: 'table-wrap', id: 'groups-table' });
  main.append(h('h1', {}, 'Consumer groups'), h('section', { class: 'panel' }, el));
  ctx.every(3000, async () => {
    const gs = (await get('/v1/groups', { signal: ctx.signal })).filter((g) => !g.group.startsWith('$'));
    clear(el, gs.length ? h('table', {},
      h('thead', {}, h('tr', {}, h('th', {}, 'Group'), h('th', {}, 'Topic'), h('th', {}, 'Mode'), h('th', { class: 'num' }, 'Members'), h('th', { class: 'num' }, 'Lag'))),
      h('tbody', {}, gs.map((g) => h('tr', {},
        h('td', {}, h('a', { href: `#/groups/${seg(g.group)}/${seg(g.topic)}` }, g.group)),
        h('td', {}, h('a', { href: `#/topics/${seg(g.topic)}` }, g.topic)),
        h('td', {}, g.mode, g.loaded ? null : h('span', { class: 'tag' }, 'idle')),
        h('td', { class: 'num' }, g.members.length), h('td', { class: 'num' }, fmtInt(g.lag))))))
      : h('p', { class: 'empty' }, 'No consumer groups yet.'));
  });
}

export async function group(main, [name, topic], ctx) {
  const head = h('div', {});
  const chart = h('div', { id: 'lag-chart' });
  const parts = h('div', { class: 'table-wrap', id: 'group-partitions' });
  main.append(h('p', { class: 'crumbs' }, h('a', { href: '#/groups' }, 'Groups'), ' / ', name, ' on ', h('a', { href: `#/topics/${seg(topic)}` }, topic)),
    h('h1', {}, `${name} on ${topic}`), head,
    h('div', { class: 'grid' },
      h('section', { class: 'panel' }, h('h2', {}, 'Lag'), chart),
      can('admin', topic) ? resetPanel(name, topic) : null),
    h('section', { class: 'panel' }, h('h2', {}, 'Partitions'), parts));
  const history = [];
  ctx.every(2000, async () => {
    const gs = await get(`/v1/groups?group=${seg(name)}&topic=${seg(topic)}`, { signal: ctx.signal });
    const g = gs[0];
    if (!g) { clear(head, h('p', { class: 'bad' }, 'This group has no position on this topic.')); return; }
    history.push(g.lag);
    if (history.length > 90) history.shift();
    clear(head, h('div', { class: 'stats' },
      h('div', { class: 'stat' }, h('div', { class: 'k' }, 'Mode'), h('div', { class: 'v' }, g.mode)),
      h('div', { class: 'stat' }, h('div', { class: 'k' }, 'Members'), h('div', { class: 'v', id: 'group-members' }, g.members.length ? g.members.join(', ') : 'none'), g.loaded ? null : h('div', { class: 'muted' }, 'idle: persisted position')),
      h('div', { class: 'stat' }, h('div', { class: 'k' }, 'Lag'), h('div', { class: 'v', id: 'group-lag' }, fmtInt(g.lag)))));
    clear(chart, sparkline(history, { width: 300, height: 60, label: 'total lag over time', color: 'var(--spark2)' }),
      h('p', { class: 'muted' }, 'Lag per partition'),
      bars(g.partitions.map((p) => ({ label: `partition ${p.partition}`, value: p.lag })), { label: 'lag per partition' }));
    clear(parts, h('table', {},
      h('thead', {}, h('tr', {}, ['Partition', 'Committed', 'Settled above', 'End', 'Lag', 'Member'].map((c, i) => h('th', { class: i && i < 5 ? 'num' : null }, c)))),
      h('tbody', {}, g.partitions.map((p) => h('tr', {},
        h('td', {}, p.partition), h('td', { class: 'num' }, fmtInt(p.committed_offset)), h('td', { class: 'num' }, fmtInt(p.settled_above)),
        h('td', { class: 'num' }, fmtInt(p.end_offset)), h('td', { class: 'num' }, fmtInt(p.lag)), h('td', {}, p.member ?? (g.mode === 'stream' ? 'unassigned' : 'any')))))));
  });
}

function resetPanel(name, topic) {
  const to = h('select', { id: 'reset-to', 'aria-label': 'Reset to' }, ['earliest', 'latest', 'offset', 'time'].map((v) => h('option', { value: v }, v)));
  const offset = h('input', { id: 'reset-offset', type: 'number', min: '0', hidden: true, 'aria-label': 'Offset' });
  const time = h('input', { id: 'reset-time', type: 'datetime-local', step: '1', hidden: true, 'aria-label': 'Time (local)' });
  const result = h('p', { class: 'muted', id: 'reset-result', 'aria-live': 'polite' });
  to.addEventListener('change', () => { offset.hidden = to.value !== 'offset'; time.hidden = to.value !== 'time'; });
  return h('section', { class: 'panel', id: 'reset' }, h('h2', {}, 'Reset position'),
    h('p', { class: 'muted' }, 'Moves the group in every partition. Only while no consumer is bound and no delivery is unsettled.'),
    h('form', {
      class: 'row',
      onsubmit: async (e) => {
        e.preventDefault();
        let target = to.value;
        if (target === 'offset') target = String(offset.value || 0);
        if (target === 'time') {
          const ms = new Date(time.value).getTime();
          if (Number.isNaN(ms)) { report(new Error('pick a time')); return; }
          target = `time:${ms}`;
        }
        if (!await confirmAction(`Move group ${name} on ${topic} to ${target}? Messages below it count as settled; messages above it are delivered again.`, { ok: 'Reset group' })) return;
        try {
          const r = await post(`/v1/groups/${seg(name)}/topics/${seg(topic)}/reset`, { to: target });
          result.textContent = `Moved: ${r.partitions.map((p) => `partition ${p.partition} → ${p.offset}`).join(', ')}`;
          notify(`Group ${name} reset to ${target}`);
        } catch (err) { report(err); }
      },
    }, h('label', {}, 'To', to), h('label', {}, 'Offset / time', offset, time), h('button', { type: 'submit', class: 'danger', id: 'reset-go' }, 'Reset')),
    result);
}
