// The dashboard's change capture card in a real browser: a stream capturing a table of a
// MariaDB of the test's own (mariadb-install-db and mariadbd from the installed packages,
// binlog on, in a temporary directory, on a free port) shows its snapshot complete with
// the table's rows, its changes as they are made, and the outage when the server stops.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort, openPage, sleep, startHydrant } from './harness.mjs';

const which = (name) => ['/usr/sbin', '/usr/bin', ...(process.env.PATH || '').split(':')]
  .map((d) => join(d, name)).find((p) => existsSync(p));

test('the change capture card shows the snapshot, the changes and an outage', { timeout: 120_000 }, async (t) => {
  const [install, server, client] = ['mariadb-install-db', 'mariadbd', 'mariadb'].map(which);
  if (!install || !server || !client) {
    const why = 'mariadb-install-db, mariadbd and mariadb (Debian: mariadb-server) are needed';
    if (process.env.CI === 'true') throw new Error(why);
    t.skip(`SKIPPED LOUDLY: ${why}`);
    return;
  }
  const dir = await mkdtemp(join(tmpdir(), 'hydrant-cdc-dash-'));
  const sock = join(dir, 'sock');
  const root = process.getuid?.() === 0 ? ['--user=root'] : [];
  execFileSync(install, ['--no-defaults', `--datadir=${join(dir, 'db')}`, ...root,
    '--auth-root-authentication-method=normal', '--skip-test-db'], { stdio: 'ignore' });
  const port = await freePort();
  const mariadb = spawn(server, ['--no-defaults', ...root, `--datadir=${join(dir, 'db')}`, `--port=${port}`,
    '--bind-address=127.0.0.1', `--socket=${sock}`, `--log-error=${join(dir, 'err.log')}`,
    `--log-bin=${join(dir, 'db', 'binlog')}`, '--binlog-format=ROW', '--server-id=1',
    '--character-set-server=utf8mb4', '--skip-name-resolve'], { stdio: 'ignore' });
  const sql = (q) => execFileSync(client, [`--socket=${sock}`, '-uroot', '-N', '-e', q],
    { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim();
  let proc, browser;
  try {
    for (let i = 0; ; i++) {
      try { sql('SELECT 1'); break; } catch (e) { if (i > 300) throw e; await sleep(100); }
    }
    sql('CREATE DATABASE shop; CREATE TABLE shop.orders (id INT PRIMARY KEY, total DECIMAL(8,2));');
    const values = Array.from({ length: 500 }, (_, i) => `(${i}, ${i}.50)`).join(',');
    sql(`INSERT INTO shop.orders VALUES ${values}`);
    const config = join(dir, 'hydrant.yaml');
    const secret = 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:shop';
    await writeFile(config, JSON.stringify({
      secrets: { [secret]: { username: 'root', password: '' } },
      delivery_streams: [{
        DeliveryStreamName: 'shop',
        DeliveryStreamType: 'DatabaseAsSource',
        DatabaseSourceConfiguration: {
          Type: 'MySQL', Endpoint: '127.0.0.1', Port: port,
          Databases: { Include: ['shop'] }, Tables: { Include: ['shop.*'] },
          SnapshotWatermarkTable: 'hydrant_meta.watermarks',
          DatabaseSourceAuthenticationConfiguration: { SecretsManagerConfiguration: { SecretARN: secret, Enabled: true } },
          DatabaseSourceVPCConfiguration: { VpcEndpointServiceName: 'com.amazonaws.vpce.eu-west-1.vpce-svc-0123456789abcdef0' },
        },
        ExtendedS3DestinationConfiguration: {
          RoleARN: 'arn:aws:iam::123456789012:role/r', BucketARN: 'arn:aws:s3:::lake', Prefix: 'cdc/',
          BufferingHints: { SizeInMBs: 1, IntervalInSeconds: 1 },
        },
      }],
    }));
    let base;
    ({ proc, base } = await startHydrant('serve', ['--data-dir', join(dir, 'data'), '--config', config], 20_000));
    let page, problems;
    ({ browser, page, problems } = await openPage(() => false));
    await page.goto(`${base}/-/`);
    const row = '#captures tr[data-stream="shop"][data-table="shop.orders"]';
    const cell = (f) => page.textContent(`${row} td[data-field="${f}"]`);
    await page.waitForFunction((r) => document.querySelector(`${r} td[data-field="snapshot"]`)?.textContent === 'COMPLETE',
      row, { timeout: 30_000 });
    assert.equal(await page.isVisible('#capture-card'), true);
    assert.equal(await cell('snapshot_rows'), '500');
    assert.equal(await cell('lag_seconds'), '–'); // no change yet
    for (let i = 0; i < 20; i++) sql(`UPDATE shop.orders SET total = total + 1 WHERE id = ${i}`);
    await page.waitForFunction((r) => document.querySelector(`${r} td[data-field="changes"]`)?.textContent === '20',
      row, { timeout: 30_000 });
    assert.equal(await cell('state'), 'streaming');
    assert.match(await cell('lag_seconds'), /^\d+(\.\d)? s$/); // the last change's
    mariadb.kill('SIGKILL');
    await page.waitForFunction((r) => /^retrying/.test(document.querySelector(`${r} td[data-field="state"]`)?.textContent || ''),
      row, { timeout: 60_000 });
    assert.match(await page.getAttribute(`${row} td[data-field="state"]`, 'title'), new RegExp(`127\\.0\\.0\\.1:${port}`));
    assert.deepEqual(problems, []);
  } finally {
    await browser?.close();
    proc?.kill('SIGKILL');
    mariadb.kill('SIGKILL');
    await rm(dir, { recursive: true, force: true });
  }
});
