// The console's shell: hash routes (#/, #/topics, #/topics/NAME,
// #/groups, #/groups/GROUP/TOPIC, #/dlq, #/dlq/TOPIC, #/streams,
// #/streams/NAME, #/projections, #/sagas), the token prompt, the
// confirmation dialog and notices. Each page is a function that fills
// <main> and registers its timers and streams on a context that is torn
// down on navigation.

import { token, whoami, me, ApiError } from './api.js';
import { h, clear } from './format.js';
import { overview } from './views/overview.js';
import { topics, topic } from './views/topic.js';
import { groups, group } from './views/group.js';
import { dlqList, dlqTopic } from './views/dlq.js';
import { streams, stream, projections, sagas } from './views/events.js';

const main = document.getElementById('main');

const routes = [
  [/^$/, 'overview', () => overview],
  [/^topics$/, 'topics', () => topics],
  [/^topics\/(.+)$/, 'topics', () => topic],
  [/^groups$/, 'groups', () => groups],
  [/^groups\/([^/]+)\/(.+)$/, 'groups', () => group],
  [/^dlq$/, 'dlq', () => dlqList],
  [/^dlq\/(.+)$/, 'dlq', () => dlqTopic],
  [/^streams$/, 'streams', () => streams],
  [/^streams\/(.+)$/, 'streams', () => stream],
  [/^projections$/, 'projections', () => projections],
  [/^sagas$/, 'sagas', () => sagas],
];

/** What a page registers so that leaving it stops its work. */
class Context {
  constructor() { this.timers = []; this.aborts = new AbortController(); }
  get signal() { return this.aborts.signal; }
  /** Runs `fn` now and every `ms` until the page is left. */
  every(ms, fn) {
    const run = () => Promise.resolve(fn()).catch((e) => report(e));
    run();
    this.timers.push(setInterval(run, ms));
  }
  close() { this.timers.forEach(clearInterval); this.aborts.abort(); }
}

let ctx = null;

export function notify(text, kind = 'info') {
  const t = h('div', { class: kind }, text);
  document.getElementById('toast').append(t);
  setTimeout(() => t.remove(), kind === 'error' ? 8000 : 4000);
}

export function report(e) {
  if (e?.name === 'AbortError') return;
  if (e instanceof ApiError && e.status === 401) return; // the login prompt shows
  notify(e instanceof ApiError ? `${e.status}: ${e.message}` : String(e?.message || e), 'error');
}

/**
 * Asks before a destructive action. With `word`, the user must type it.
 * Resolves true only on an explicit confirmation.
 */
export function confirmAction(text, { word = null, ok = 'Confirm' } = {}) {
  const d = document.getElementById('confirm');
  document.getElementById('confirm-text').textContent = text;
  const label = document.getElementById('confirm-type-label');
  const input = document.getElementById('confirm-input');
  const okBtn = document.getElementById('confirm-ok');
  okBtn.textContent = ok;
  label.hidden = !word;
  input.value = '';
  document.getElementById('confirm-word').textContent = word || '';
  okBtn.disabled = !!word;
  input.oninput = () => { okBtn.disabled = input.value !== word; };
  return new Promise((resolve) => {
    d.onclose = () => resolve(d.returnValue === 'ok' && (!word || input.value === word));
    d.returnValue = '';
    d.showModal();
    (word ? input : d.querySelector('button[value=cancel]')).focus();
  });
}

function login(message) {
  ctx?.close();
  ctx = null;
  document.getElementById('who').replaceChildren();
  const input = h('input', { type: 'password', id: 'token', name: 'token', autocomplete: 'current-password', required: true, 'aria-describedby': 'login-help' });
  const form = h('form', {
    onsubmit: async (e) => {
      e.preventDefault();
      token.set(input.value.trim());
      await start();
    },
  },
  h('label', { for: 'token' }, 'API token'), input,
  h('p', { id: 'login-help', class: 'muted' }, 'The token of a [[tokens]] entry of the server’s config. It is kept in this tab only (sessionStorage) and sent as a Bearer token.'),
  h('button', { type: 'submit' }, 'Open console'));
  clear(main, h('section', { class: 'panel login', 'aria-labelledby': 'login-title' },
    h('h1', { id: 'login-title' }, 'Wharf console'),
    message ? h('p', { class: 'bad', role: 'alert', id: 'login-error' }, message) : null,
    form));
  input.focus();
}

function showWho() {
  const r = me();
  const who = document.getElementById('who');
  if (!r.auth) { clear(who, h('span', {}, 'no auth configured')); return; }
  const ro = !(r.publish.length || r.admin.length);
  clear(who,
    h('span', {}, r.name ? `token: ${r.name}` : 'token set'),
    ro ? h('span', { class: 'tag', id: 'read-only' }, 'read-only') : null,
    h('button', { class: 'ghost small', onclick: () => { token.clear(); login(); } }, 'Sign out'));
}

async function route() {
  ctx?.close();
  ctx = new Context();
  const path = decodeURIComponent(location.hash.replace(/^#\/?/, '')).replace(/\/$/, '');
  const found = routes.find(([re]) => re.test(path));
  for (const a of document.querySelectorAll('[data-nav]')) {
    a.toggleAttribute('aria-current', false);
    if (found && a.dataset.nav === found[1]) a.setAttribute('aria-current', 'page');
  }
  document.getElementById('nav').classList.remove('open');
  document.getElementById('menu').setAttribute('aria-expanded', 'false');
  clear(main);
  if (!found) {
    main.append(h('h1', {}, 'Not found'), h('p', {}, h('a', { href: '#/' }, 'Back to the overview')));
    return;
  }
  const args = path.match(found[0]).slice(1);
  try {
    await found[2]()(main, args, ctx);
  } catch (e) {
    report(e);
    if (!(e instanceof ApiError && e.status === 401)) main.append(h('p', { class: 'bad' }, `Could not load: ${e.message}`));
  }
  if (document.activeElement === document.body) main.focus({ preventScroll: true });
}

async function start() {
  try {
    await whoami();
  } catch (e) {
    // A 401 has shown the token prompt (the wharf:unauthorized listener).
    if (e instanceof ApiError && e.status === 401) return;
    clear(main, h('p', { class: 'bad' }, `The server did not answer: ${e.message}`));
    return;
  }
  showWho();
  await route();
}

window.addEventListener('hashchange', () => { if (me()) route(); });
window.addEventListener('wharf:unauthorized', () => {
  const had = token.get();
  token.clear();
  login(had ? 'The token was refused (401): type it again.' : null);
});
document.getElementById('menu').addEventListener('click', (e) => {
  const nav = document.getElementById('nav');
  const open = nav.classList.toggle('open');
  e.currentTarget.setAttribute('aria-expanded', String(open));
});
start();
