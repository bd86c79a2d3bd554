// What the browser tests share: the hydrant binary and Chromium they use, a free
// port, and starting hydrant and waiting for it to be ready.
import { spawn } from 'node:child_process';
import { chromium } from 'playwright-core';
import { createServer } from 'node:net';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
export const BIN = process.env.HYDRANT_BIN
  || (process.env.CARGO_TARGET_DIR
    ? join(resolve(process.env.CARGO_TARGET_DIR), 'release', 'hydrant')
    : resolve(here, '../../target/release/hydrant'));
export const CHROMIUM = '/usr/bin/chromium';
// As root, in a machine with no network: no sandbox, and none of Chromium's own traffic.
export const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];

export function freePort() {
  return new Promise((ok, fail) => {
    const srv = createServer();
    srv.on('error', fail);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => ok(port));
    });
  });
}

export const sleep = (ms) => new Promise((ok) => setTimeout(ok, ms));

export async function waitReady(base, proc, output, timeoutMs) {
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

// Starts `hydrant <command> --listen 127.0.0.1:<free port> ...args` and waits for it to
// be ready; `log()` is the tail of its output, for failure messages.
export async function startHydrant(command, args, readyMs) {
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  let log = '';
  const proc = spawn(BIN, [command, '--listen', `127.0.0.1:${port}`, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const keep = (chunk) => { log = (log + chunk).slice(-8000); };
  proc.stdout.on('data', keep);
  proc.stderr.on('data', keep);
  const output = () => log;
  try {
    await waitReady(base, proc, output, readyMs);
  } catch (e) {
    proc.kill('SIGKILL');
    throw e;
  }
  return { proc, base, output };
}

// Launches Chromium and opens a page whose console errors and page errors are
// collected in `problems`, except a console error for a response `expected(url,
// status)` says the page shows as an answer (Chromium logs those as failed resources).
export async function openPage(expected) {
  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  const problems = [];
  page.on('console', (msg) => {
    if (msg.type() !== 'error' || expected(msg.location().url, +msg.text().match(/status of (\d+)/)?.[1])) return;
    problems.push(`console error: ${msg.text()}`);
  });
  page.on('pageerror', (err) => problems.push(`page error: ${err.message}`));
  return { browser, page, problems };
}
