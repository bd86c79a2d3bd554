// The dashboard in a real browser against a real `hydrant demo`: it goes live, shows
// throughput, its charts move with new windows, answers SQL over the lake, and it
// notices when the server dies.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, mkdir, rm } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { BIN, CHROMIUM, openPage, sleep, startHydrant } from './harness.mjs';

// The README's picture is made with DASHBOARD_SCREENSHOT=docs/dashboard.png.
const SCREENSHOT = process.env.DASHBOARD_SCREENSHOT || join(tmpdir(), 'hydrant-dashboard.png');
const STREAM = 'my-event-staging';
const EVENT_NAMES = ['JOIN', 'LEAVE', 'OPEN_CHAT', 'SUBSCRIBE', 'SEND_MESSAGE'];
const EVENTS_SQL = 'SELECT event_name, count(*) AS events FROM my_event_staging GROUP BY event_name ORDER BY events DESC';


// Runs `sql` from the query box (typed, then Ctrl+Enter) and waits for its answer.
async function runQuery(page, sql) {
  await page.fill('#query-sql', sql);
  await page.press('#query-sql', 'Control+Enter');
  await page.waitForFunction(() => ['ok', 'error'].includes(document.querySelector('#query-status')?.dataset.state), null, { timeout: 10_000 })
    .catch(async (e) => { throw new Error(`query did not finish (status "${await page.textContent('#query-status')}"): ${e.message}`); });
  return {
    state: await page.getAttribute('#query-status', 'data-state'),
    status: (await page.textContent('#query-status')).trim(),
    rows: await page.locator('#query-result tbody tr').evaluateAll((trs) => trs.map((tr) => [...tr.cells].map((td) => td.textContent))),
  };
}

const exited = (proc) => (proc.exitCode !== null || proc.signalCode !== null
  ? Promise.resolve()
  : new Promise((ok) => proc.once('exit', ok)));

test('the dashboard goes live, charts new windows, queries the lake and notices a dead server', { timeout: 75_000 }, async () => {
  assert.ok(existsSync(BIN), `no hydrant binary at ${BIN}: build it (cargo build --release) or set HYDRANT_BIN`);
  assert.ok(existsSync(CHROMIUM), `no browser at ${CHROMIUM}: apt-get install -y chromium`);

  const dataDir = await mkdtemp(join(tmpdir(), 'hydrant-dashboard-'));
  const { proc, base, output } = await startHydrant('demo', ['--data-dir', dataDir, '--rate', '300'], 20_000);
  let browser;
  try {
    // A query the server rejects (400) is an answer the page shows, checked below, not a problem;
    // Chromium still logs it as a failed resource.
    const rejectedQuery = (url, status) => url.startsWith(`${base}/-/query`) && status === 400;
    let page, problems;
    ({ browser, page, problems } = await openPage(rejectedQuery));
    page.on('requestfailed', (req) => {
      if (req.url().startsWith(base)) problems.push(`request failed: ${req.url()} ${req.failure()?.errorText}`);
    });
    page.on('response', (res) => {
      if (res.url().startsWith(base) && res.status() >= 400 && !rejectedQuery(res.url(), res.status())) {
        problems.push(`HTTP ${res.status()} for ${res.url()}`);
      }
    });

    await page.goto(`${base}/-/`);
    assert.equal(await page.title(), 'hydrant');

    await page.waitForFunction(() => document.querySelector('#status')?.textContent.trim() === 'live', null, { timeout: 10_000 })
      .catch(async (e) => { throw new Error(`#status never read "live" (it reads "${await page.textContent('#status')}"): ${e.message}`); });

    const rate = page.locator(`tr[data-stream="${STREAM}"] td[data-field="records_per_s"]`);
    await rate.waitFor({ timeout: 10_000 });
    await page.waitForFunction((sel) => {
      const v = parseFloat(document.querySelector(sel)?.textContent.replace(/,/g, ''));
      return v > 0;
    }, `tr[data-stream="${STREAM}"] td[data-field="records_per_s"]`, { timeout: 10_000 })
      .catch(async (e) => { throw new Error(`records/s for ${STREAM} never became positive (it reads "${await rate.textContent()}"): ${e.message}`); });

    const chart = page.locator('.aggregate-chart').first();
    await chart.waitFor({ timeout: 15_000 });
    // Wait until the chart has something drawn, then watch it change as windows update.
    await page.waitForFunction(() => +document.querySelector('.aggregate-chart canvas')?.dataset.points > 0, null, { timeout: 15_000 });
    const key = await chart.getAttribute('data-aggregate');
    const card = page.locator(`.aggregate-chart[data-aggregate="${key}"]`);
    const before = { points: await card.locator('canvas').getAttribute('data-points'), updated: await card.getAttribute('data-updated') };
    await page.waitForFunction(({ key, before }) => {
      const c = [...document.querySelectorAll('.aggregate-chart')].find((e) => e.dataset.aggregate === key);
      return c && (c.dataset.updated !== before.updated || c.querySelector('canvas').dataset.points !== before.points);
    }, { key, before }, { timeout: 8_000 })
      .catch((e) => { throw new Error(`chart ${key} did not update within 8 s (data-points ${before.points}, data-updated ${before.updated}): ${e.message}`); });
    assert.ok(await page.locator('.aggregate-chart .legend .item').count() > 0, 'the chart has a legend');

    // The query box. The demo delivers an object every 10 s; until the first one lands the
    // query fails (with no file there is no event_name column yet) or finds no rows.
    let result;
    for (const deadline = Date.now() + 30_000; ;) {
      result = await runQuery(page, EVENTS_SQL);
      if (result.state === 'ok' && result.rows.length) break;
      if (Date.now() > deadline) throw new Error(`the events query had no rows after 30 s: ${result.status}\n${output()}`);
      await page.waitForTimeout(1000);
    }
    assert.deepEqual(await page.locator('#query-result thead th').allTextContents(), ['event_name', 'events']);
    assert.match(result.status, /^[\d,]+ rows? · [\d,]+ ms/, 'the status line counts rows and time');
    for (const [name, events] of result.rows) {
      assert.ok(EVENT_NAMES.includes(name), `unexpected event_name ${JSON.stringify(name)}`);
      assert.match(events, /^\d[\d,]*$/, `count for ${name} is an integer`);
      assert.ok(+events.replace(/,/g, '') > 0, `count for ${name} is positive`);
    }
    assert.equal(new Set(result.rows.map(([name]) => name)).size, result.rows.length, 'one row per event_name');
    assert.ok(await page.locator('#query-chart').isVisible(), 'a chart of events by event_name');
    assert.equal(await page.getAttribute('#query-chart', 'data-bars'), String(result.rows.length), 'one bar per row');

    // A bad query shows the server's message and leaves the page working.
    const bad = await runQuery(page, 'SELEC 1');
    assert.equal(bad.state, 'error');
    assert.ok(await page.locator('.query-error').isVisible(), 'the error is shown');
    assert.ok((await page.textContent('.query-error')).trim().length > 0, 'the error has a message');
    assert.equal(bad.rows.length, 0, 'no stale rows under an error');
    assert.ok(!(await page.locator('#query-chart').isVisible()), 'no chart under an error');
    await page.click('.examples button:has-text("events by name")');
    await page.waitForFunction(() => document.querySelector('#query-status')?.dataset.state === 'ok' && document.querySelector('#query-result tbody tr'), null, { timeout: 10_000 })
      .catch(async (e) => { throw new Error(`the query after the bad one did not work (status "${await page.textContent('#query-status')}"): ${e.message}`); });
    assert.equal(await page.locator('.query-error').count(), 0, 'the error is gone');
    assert.ok(await page.locator('#query-chart').isVisible(), 'the chart is back');

    // The counters tick once a second, so they may still trail the object the query just read.
    await page.waitForFunction((sel) => parseFloat(document.querySelector(sel)?.textContent.replace(/,/g, '')) > 0,
      `tr[data-stream="${STREAM}"] td[data-field="objects_delivered"]`, { timeout: 5_000 })
      .catch((e) => { throw new Error(`the lake has rows but ${STREAM} shows no delivered objects: ${e.message}`); });

    // Sparklines have drawn by now; the whole page shows the query box with its result
    // (the mouse moved off the button just clicked, which would show as hovered).
    await page.mouse.move(0, 0);
    await mkdir(dirname(SCREENSHOT), { recursive: true });
    await page.screenshot({ path: SCREENSHOT, fullPage: true });

    assert.deepEqual(problems, [], 'no console errors and no failed requests while the server is up');

    // A dead server must show: the page may not keep claiming "live" on a stale feed.
    proc.kill('SIGKILL');
    await exited(proc);
    await page.waitForFunction(() => /disconnected|error/i.test(document.querySelector('#status')?.textContent || ''), null, { timeout: 8_000 })
      .catch(async (e) => { throw new Error(`#status did not report the dead server (it reads "${await page.textContent('#status')}"): ${e.message}`); });
  } finally {
    await browser?.close().catch(() => {});
    if (proc.exitCode === null && proc.signalCode === null) {
      proc.kill('SIGKILL');
      await exited(proc);
    }
    await rm(dataDir, { recursive: true, force: true });
  }
});
