// The dashboard in a real browser against a real `hydrant demo`: it goes live, shows
// throughput, its charts move with new windows, and it notices when the server dies.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtemp, mkdir, rm } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
const BIN = process.env.HYDRANT_BIN
  || (process.env.CARGO_TARGET_DIR
    ? join(resolve(process.env.CARGO_TARGET_DIR), 'release', 'hydrant')
    : resolve(here, '../../target/release/hydrant'));
const SCREENSHOT = process.env.DASHBOARD_SCREENSHOT || '/work/main/docs/dashboard.png';
const CHROMIUM = '/usr/bin/chromium';
const STREAM = 'my-event-staging';

function freePort() {
  return new Promise((ok, fail) => {
    const srv = createServer();
    srv.on('error', fail);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => ok(port));
    });
  });
}

const sleep = (ms) => new Promise((ok) => setTimeout(ok, ms));

async function waitReady(base, proc, output, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (proc.exitCode !== null || proc.signalCode !== null) {
      throw new Error(`hydrant exited (${proc.exitCode ?? proc.signalCode}) before it was ready:\n${output()}`);
    }
    try {
      const res = await fetch(`${base}/-/ready`, { signal: AbortSignal.timeout(1000) });
      if (res.status === 200) return;
    } catch { /* not listening yet */ }
    await sleep(100);
  }
  throw new Error(`hydrant was not ready within ${timeoutMs} ms:\n${output()}`);
}

const exited = (proc) => (proc.exitCode !== null || proc.signalCode !== null
  ? Promise.resolve()
  : new Promise((ok) => proc.once('exit', ok)));

test('the dashboard goes live, charts new windows and notices a dead server', { timeout: 60_000 }, async () => {
  assert.ok(existsSync(BIN), `no hydrant binary at ${BIN}: build it (cargo build --release) or set HYDRANT_BIN`);
  assert.ok(existsSync(CHROMIUM), `no browser at ${CHROMIUM}: apt-get install -y chromium`);

  const dataDir = await mkdtemp(join(tmpdir(), 'hydrant-dashboard-'));
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  let log = '';
  const proc = spawn(BIN, ['demo', '--listen', `127.0.0.1:${port}`, '--data-dir', dataDir, '--rate', '300'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const keep = (chunk) => { log = (log + chunk).slice(-8000); };
  proc.stdout.on('data', keep);
  proc.stderr.on('data', keep);
  let browser;
  try {
    await waitReady(base, proc, () => log, 20_000);

    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
    const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
    const problems = [];
    page.on('console', (msg) => { if (msg.type() === 'error') problems.push(`console error: ${msg.text()}`); });
    page.on('pageerror', (err) => problems.push(`page error: ${err.message}`));
    page.on('requestfailed', (req) => {
      if (req.url().startsWith(base)) problems.push(`request failed: ${req.url()} ${req.failure()?.errorText}`);
    });
    page.on('response', (res) => {
      if (res.url().startsWith(base) && res.status() >= 400) problems.push(`HTTP ${res.status()} for ${res.url()}`);
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

    // A few more seconds of feed let the sparklines draw, so the picture shows a settled page.
    await page.waitForTimeout(3000);
    await mkdir(dirname(SCREENSHOT), { recursive: true });
    await page.screenshot({ path: SCREENSHOT });

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
