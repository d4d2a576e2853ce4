// End-to-end tests of `wharf serve`'s web console in Debian's chromium,
// driven by playwright-core. Run by crates/wharf-cli/tests/console.rs,
// which starts the server and passes:
//   WHARF_URL        http://127.0.0.1:PORT
//   ADMIN_TOKEN      a token with every right
//   READER_TOKEN     a token with only the consume right (read-only)
//   SCREENSHOT_DIR   where page screenshots go (test artefacts)
//   CHROMIUM         the browser binary (default /usr/bin/chromium)
// Usage: node console.test.mjs dlq-replay | auth-and-tail
// Prints one line `RESULT {json}` for the Rust test to check the broker
// independently; exits non-zero on the first failed check.

import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';

const url = process.env.WHARF_URL;
const ADMIN = process.env.ADMIN_TOKEN;
const READER = process.env.READER_TOKEN;
const shots = process.env.SCREENSHOT_DIR || 'screenshots';
const which = process.argv[2];
mkdirSync(shots, { recursive: true });

function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
  console.log(`ok - ${what}`);
}

async function api(method, path, body, token = ADMIN) {
  const res = await fetch(url + path, {
    method,
    headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

const unique = `${Date.now().toString(36)}-${process.pid}`;

async function browser() {
  const b = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
  });
  const context = await b.newContext({ viewport: { width: 1280, height: 860 } });
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(`pageerror: ${e.message}`));
  page.on('console', (m) => { if (m.type() === 'error' && !/status of 40[139]/.test(m.text())) errors.push(`console: ${m.text()}`); });
  return { b, context, page, errors };
}

async function signIn(page, token) {
  await page.goto(url + '/');
  await page.locator('#token').fill(token);
  await page.getByRole('button', { name: 'Open console' }).click();
}

async function shot(page, name) {
  await page.screenshot({ path: join(shots, `${name}.png`), fullPage: false });
}

/** Test 1: a message fails into the DLQ; the page replays it; broker and page agree. */
async function dlqReplay() {
  const topic = `console.orders-${unique}`;
  const dlq = `dlq.${topic}`;
  await api('POST', '/v1/topics', { name: topic, partitions: 2 });
  // Some background so the overview has something to show.
  await api('POST', `/v1/topics/console.audit-${unique}/messages`, { messages: Array.from({ length: 30 }, (_, i) => ({ payload: `audit ${i}` })) });
  const receipt = (await api('POST', `/v1/topics/${topic}/messages`, { payload: { order: 42, item: 'anchor' }, key: 'k42', headers: { 'content-type': 'application/json' } })).receipts[0];
  // Make it fail: a consumer takes it and rejects it.
  const polled = await api('POST', `/v1/topics/${topic}/consume?group=billing&wait_ms=5000`);
  check(polled.deliveries.length === 1, 'the consumer got the message');
  await api('POST', `/v1/deliveries/${polled.deliveries[0].delivery_id}/reject`, { reason: 'card declined' });
  const letters = await api('GET', `/v1/dlq/${dlq}`);
  check(letters.letters.length === 1 && letters.letters[0].message.id === receipt.id, 'the broker holds it as a dead letter');

  // 1,000 more topics: the overview's list must stay virtualized.
  const many = Array.from({ length: 1000 }, (_, i) => `console.load-${unique}.t${String(i).padStart(4, '0')}`);
  for (let i = 0; i < many.length; i += 50) await Promise.all(many.slice(i, i + 50).map((name) => api('POST', '/v1/topics', { name })));

  const { b, page, errors } = await browser();
  // Traffic while the overview is open, so rates and lag move.
  let loading = true;
  const audit = `console.audit-${unique}`;
  const traffic = (async () => {
    let n = 0;
    while (loading) {
      await api('POST', `/v1/topics/${audit}/messages`, { messages: Array.from({ length: 20 + (n++ % 7) * 5 }, (_, i) => ({ payload: `audit ${n}.${i}` })) });
      const got = await api('POST', `/v1/topics/${audit}/consume?group=auditor&max=15&wait_ms=100`);
      for (const d of got.deliveries) await api('POST', `/v1/deliveries/${d.delivery_id}/ack`);
      await new Promise((r) => setTimeout(r, 150));
    }
  })();
  try {
    await signIn(page, ADMIN);
    await page.locator('#server-stats').waitFor();
    await page.locator('#topic-count', { hasText: `of ${(many.length + 2).toLocaleString('en-US')}` }).waitFor();
    // Let the sampler take a few samples so sparklines have a shape.
    await page.waitForTimeout(9000);
    loading = false;
    await traffic;
    await shot(page, 'overview');
    const rows = await page.locator('#topic-list .vspace .vrow').count();
    check(rows > 0 && rows < 100, `the topic list of ${many.length + 2} topics keeps ${rows} rows in the DOM (virtualized)`);
    const frames = await page.evaluate(() => new Promise((resolve) => {
      const list = document.querySelector('#topic-list .vlist');
      const times = [];
      let last = performance.now();
      const step = () => {
        const now = performance.now();
        times.push(now - last);
        last = now;
        list.scrollTop += 400;
        if (times.length < 100) requestAnimationFrame(step);
        else resolve(times.slice(1).sort((a, b) => a - b));
      };
      requestAnimationFrame(step);
    }));
    console.log(`# scrolling 1,002 topics: frame time p50 ${frames[49].toFixed(1)} ms, p95 ${frames[94].toFixed(1)} ms, max ${frames.at(-1).toFixed(1)} ms`);
    await page.locator('#topic-list .vlist').evaluate((el) => { el.scrollTop = el.scrollHeight; });
    await page.locator(`[data-topic="${many.at(-1)}"]`).waitFor();
    check(true, 'scrolled to the end, the last topic is rendered');
    // Filtering while scrolled to the end: the list must show the match at
    // once, in the same task as the input event, not after a later scroll
    // event (CI once caught an empty list here: the window of rows was
    // computed from the old, unclamped scroll position).
    const atOnce = await page.evaluate((name) => {
      const f = document.querySelector('#topic-filter');
      f.value = name;
      f.dispatchEvent(new Event('input', { bubbles: true }));
      return {
        rows: document.querySelectorAll('#topic-list .vspace .vrow').length,
        count: document.querySelector('#topic-count').textContent,
      };
    }, topic);
    check(atOnce.rows === 1 && atOnce.count.startsWith('1 of'), `the filter narrows the list to the one topic at once (${atOnce.rows} rows, "${atOnce.count}")`);
    await page.locator('#topic-filter').fill('');
    await page.locator('#topic-count', { hasText: `${(many.length + 2).toLocaleString('en-US')} of` }).waitFor();
    await page.locator('#topic-list .vlist').evaluate((el) => { el.scrollTop = el.scrollHeight; });
    await page.locator(`[data-topic="${many.at(-1)}"]`).waitFor();
    await page.locator('#topic-filter').fill(topic);
    await page.locator('#topic-count', { hasText: /^1 of/ }).waitFor();
    check(await page.locator('#topic-list .vspace .vrow').count() === 1, 'typed into the filter, it narrows the list to the one topic');
    const apiBytes = (await api('GET', `/v1/topics/${topic}`)).bytes;
    const cell = page.locator(`[data-topic="${topic}"] .bytes`);
    const shownBytes = Number(await cell.getAttribute('data-bytes'));
    check(apiBytes > 0 && shownBytes > 0 && shownBytes <= apiBytes, `the overview row shows the bytes the broker reports (${shownBytes} of ${apiBytes})`);
    check(/^\d+(\.\d)? (B|KiB|MiB)$/.test(await cell.innerText()), `bytes are shown human-readably (${await cell.innerText()})`);

    await page.goto(`${url}/#/dlq`);
    await page.locator(`#dlq-table a[href="#/dlq/${encodeURIComponent(dlq)}"]`).waitFor();
    await shot(page, 'dlq-topics');

    await page.goto(`${url}/#/dlq/${encodeURIComponent(dlq)}`);
    const letter = page.locator(`details.letter[data-id="${receipt.id}"]`);
    await letter.waitFor();
    const summary = await letter.locator('summary').innerText();
    check(summary.includes('card declined') && summary.includes(topic), 'the page shows the reason and original topic');
    await letter.locator('summary .payload').click();
    await letter.locator('pre.payload-view').waitFor();
    check((await letter.locator('pre.payload-view').innerText()).includes('"order": 42'), 'inspecting shows the payload as pretty JSON');
    await shot(page, 'dlq-letters');
    // Purge asks first: the button stays disabled until the word is typed; Escape cancels.
    await page.locator('#purge').click();
    await page.locator('#confirm[open]').waitFor();
    check(await page.locator('#confirm-ok').isDisabled(), 'purging waits for the typed confirmation');
    await page.keyboard.press('Escape');
    await page.locator('#confirm[open]').waitFor({ state: 'detached' }).catch(() => {});
    check(!(await page.locator('#confirm').evaluate((d) => d.open)), 'Escape closes the confirmation');
    check((await api('GET', `/v1/dlq/${dlq}`)).letters.length === 1, 'a cancelled purge purges nothing');
    // Keyboard: the replay button is reachable with Tab and works with Enter.
    await letter.locator(`button[data-replay="${receipt.id}"]`).focus();
    await page.keyboard.press('Enter');
    await page.locator('#no-letters').waitFor();
    check(true, 'the page shows no dead letters left after the replay');

    // The broker agrees: no letter left, and the message is back in its topic.
    const after = await api('GET', `/v1/dlq/${dlq}`);
    check(after.letters.length === 0, 'the broker has no dead letter left');
    const back = await api('POST', `/v1/topics/${topic}/consume?group=billing&wait_ms=5000`);
    check(back.deliveries.length === 1 && back.deliveries[0].message.id === receipt.id, 'the replayed message is delivered again with its id');
    await api('POST', `/v1/deliveries/${back.deliveries[0].delivery_id}/ack`);

    // The topic page shows it stored twice (original and replay) in its partition.
    await page.goto(`${url}/#/topics/${encodeURIComponent(topic)}`);
    await page.locator('#topic-settings').waitFor();
    await page.locator('#browse-partition').selectOption(String(receipt.partition));
    await page.locator('#browse-read').click();
    await page.locator(`#browse-results details[data-id="${receipt.id}"]`).nth(1).waitFor();
    const stored = await page.locator(`#browse-results details[data-id="${receipt.id}"]`).count();
    check(stored === 2, 'browsing the partition shows the original and the replayed copy');
    check(/^\d+(\.\d)? (B|KiB|MiB)$/.test(await page.locator('#topic-bytes').innerText()), 'the topic page shows its bytes on disk');
    await page.locator('#browse-results details summary').first().click();
    await page.locator('#browse-results [data-view="hex"]').first().click();
    check((await page.locator('#browse-results pre.payload-view').first().innerText()).startsWith('00000000  7b'), 'the hex view shows the bytes');
    await shot(page, 'topic');

    // Publish a test message from the page; the broker stores it.
    await page.locator('#publish-payload').fill('{"from": "the console"}');
    await page.locator('#publish-key').fill('k42');
    await page.locator('#publish-send').click();
    await page.locator('#publish-result', { hasText: 'Stored' }).waitFor();
    const stored3 = await api('GET', `/v1/topics/${topic}/partitions/${receipt.partition}/messages`);
    check(stored3.messages.length === 3 && stored3.messages[2].message.payload === '{"from": "the console"}', 'a message published from the page is stored');
    // Browse by time: from now on there is nothing.
    await page.locator('#browse-mode').selectOption('time');
    await page.locator('#browse-time').fill(new Date(Date.now() + 60000 - new Date().getTimezoneOffset() * 60000).toISOString().slice(0, 19));
    await page.locator('#browse-read').click();
    await page.locator('#browse-results .empty').waitFor();
    check(true, 'browsing from a time after the last message shows none');
    // Consume what the page published, so the group's lag is the two copies again.
    const extra = await api('POST', `/v1/topics/${topic}/consume?group=billing&wait_ms=5000`);
    for (const d of extra.deliveries) await api('POST', `/v1/deliveries/${d.delivery_id}/ack`);

    await page.goto(`${url}/#/groups/billing/${encodeURIComponent(topic)}`);
    await page.locator('#group-partitions table').waitFor();
    await page.locator('#group-lag', { hasText: /^0$/ }).waitFor();
    // While a consumer polls, the server refuses the reset and the page says so.
    const polling = api('POST', `/v1/topics/${topic}/consume?group=billing&wait_ms=8000`);
    await page.waitForTimeout(300);
    await page.locator('#reset-to').selectOption('earliest');
    await page.locator('#reset-go').click();
    await page.locator('#confirm-ok').click();
    await page.locator('#toast .error', { hasText: 'in use' }).waitFor();
    check(true, 'a reset while a consumer is bound is refused (409) and the page shows why');
    check((await polling).deliveries.length === 0, 'the consumer had nothing to take');
    // Once its long-poll subscription idles out (poller_idle_ms), the reset goes through.
    let moved = false;
    for (let i = 0; i < 20 && !moved; i++) {
      await page.waitForTimeout(500);
      await page.locator('#reset-go').click();
      await page.locator('#confirm-ok').click();
      moved = await page.locator('#reset-result', { hasText: 'Moved' }).waitFor({ timeout: 2000 }).then(() => true, () => false);
    }
    check(moved, 'the reset to earliest goes through once no consumer is bound');
    await page.locator('#group-lag', { hasText: /^3$/ }).waitFor();
    const [g] = await api('GET', `/v1/groups?group=billing&topic=${topic}`);
    check(g.lag === 3, 'the broker agrees: all three stored messages are unsettled again');
    await page.waitForTimeout(2500);
    await shot(page, 'group');
    await page.goto(`${url}/#/groups`);
    await page.locator('#groups-table table').waitFor();
    await shot(page, 'groups');
    await page.goto(`${url}/#/topics`);
    await page.locator('#topics-list .vrow a').first().waitFor();
    await shot(page, 'topics');
    await page.goto(`${url}/#/streams`);
    await page.locator('#streams-list p, #streams-list ul').first().waitFor();
    await shot(page, 'streams');
    await page.goto(`${url}/#/projections`);
    await page.locator('#projections-table p, #projections-table table').first().waitFor();
    await shot(page, 'projections');

    // Create a topic from the page, then delete it (typing its name).
    const made = `console.made-${unique}`;
    await page.goto(`${url}/#/topics`);
    await page.locator('#new-topic').fill(made);
    await page.locator('#new-partitions').fill('3');
    await page.getByRole('button', { name: 'Create' }).click();
    await page.locator('#topic-settings').waitFor();
    check((await api('GET', `/v1/topics/${made}`)).partitions === 3, 'a topic created from the page exists with its settings');
    await page.locator('#delete-topic').click();
    check(await page.locator('#confirm-ok').isDisabled(), 'deleting waits for the typed name');
    await page.locator('#confirm-input').fill(made);
    await page.locator('#confirm-ok').click();
    await page.waitForURL(/#\/topics$/);
    const gone = await fetch(`${url}/v1/topics/${made}`, { headers: { Authorization: `Bearer ${ADMIN}` } });
    check(gone.status === 404, 'the deleted topic is gone from the broker');

    // Phone width: the menu collapses, the overview still renders.
    await page.setViewportSize({ width: 390, height: 800 });
    await page.goto(`${url}/#/`);
    await page.locator('#server-stats .stat').first().waitFor();
    check(await page.locator('#menu').isVisible(), 'on a phone the navigation folds into a menu button');
    await shot(page, 'overview-phone');

    check(errors.length === 0, `no script errors (${errors.join('; ')})`);
  } finally {
    await b.close();
  }
  console.log('RESULT ' + JSON.stringify({ topic, dlq, id: receipt.id }));
}

/** Test 2: a wrong token shows no data; the live tail shows a message published meanwhile. */
async function authAndTail() {
  const topic = `console.tail-${unique}`;
  await api('POST', '/v1/topics', { name: topic });
  await api('POST', `/v1/topics/${topic}/messages`, { payload: 'secret stored payload' });
  const { b, page, errors } = await browser();
  try {
    await signIn(page, 'not-a-token');
    await page.locator('#login-error').waitFor();
    check((await page.locator('#login-error').innerText()).includes('refused'), 'a wrong token is refused');
    const body = await page.locator('body').innerText();
    check(!body.includes(topic) && !body.includes('secret stored payload'), 'no data is shown with a wrong token');
    check(await page.locator('[data-topic]').count() === 0, 'no topic rows with a wrong token');
    await shot(page, 'login-refused');

    // A read-only token: no mutating buttons, but the live tail.
    await page.locator('#token').fill(READER);
    await page.getByRole('button', { name: 'Open console' }).click();
    await page.locator('#read-only').waitFor();
    await page.goto(`${url}/#/topics/${encodeURIComponent(topic)}`);
    await page.locator('#live-tail').waitFor();
    check(await page.locator('#delete-topic').count() === 0, 'a read-only token sees no delete button');
    check(await page.locator('#publish').count() === 0, 'a read-only token sees no publish form');
    await page.locator('#tail-toggle').click();
    await page.locator('#tail-status', { hasText: 'live' }).waitFor();
    const payload = `live ${unique}`;
    await api('POST', `/v1/topics/${topic}/messages`, { payload });
    await page.locator('#tail details summary', { hasText: payload }).waitFor({ timeout: 10000 });
    check(true, 'the live tail shows a message published while the page is open');
    check(!(await page.locator('#tail').innerText()).includes('secret stored payload'), 'the tail starts at the end (no old messages)');
    await shot(page, 'live-tail');
    await page.locator('#tail-toggle').click();
    await page.locator('#tail-status', { hasText: 'stopped' }).waitFor();

    // Signing out forgets the token: a reload asks again and shows nothing.
    await page.getByRole('button', { name: 'Sign out' }).click();
    await page.reload();
    await page.locator('#token').waitFor();
    check(await page.evaluate(() => sessionStorage.getItem('wharf.token')) === null, 'signing out clears the stored token');
    check(errors.length === 0, `no script errors (${errors.join('; ')})`);
  } finally {
    await b.close();
  }
  console.log('RESULT ' + JSON.stringify({ topic }));
}

const tests = { 'dlq-replay': dlqReplay, 'auth-and-tail': authAndTail };
if (!tests[which]) {
  console.error(`usage: node console.test.mjs ${Object.keys(tests).join(' | ')}`);
  process.exit(2);
}
tests[which]().catch((e) => { console.error(e.stack || String(e)); process.exit(1); });
