// What the browser tests share: the hydrant binary and Chromium they use, a free
// port, and waiting for a started hydrant to be ready.
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
