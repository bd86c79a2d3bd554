// The dashboard's warehouse card in a real browser: a stream loading into the shared
// PostgreSQL (127.0.0.1:5432, a table of its own) shows its rows loaded and its refused
// rows by reason, as the table and the error output hold them.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openPage, startHydrant } from './harness.mjs';

const psql = (sql) => execFileSync('psql', ['-h', '127.0.0.1', '-U', 'postgres', '-d', 'test', '-v', 'ON_ERROR_STOP=1', '-At', '-c', sql],
  { encoding: 'utf8' }).trim();

function postgresOr(t) {
  try {
    psql('SELECT 1');
    return true;
  } catch (e) {
    if (process.env.CI === 'true') throw new Error(`PostgreSQL at 127.0.0.1:5432 is needed (CI=true): ${e.message}`);
    t.skip(`SKIPPED LOUDLY: PostgreSQL at 127.0.0.1:5432 is not reachable: ${e.message}`);
    return false;
  }
}

test('the warehouse card shows rows loaded and rows refused by reason', { timeout: 60_000 }, async (t) => {
  if (!postgresOr(t)) return;
  const table = `dash_${Date.now().toString(36)}`;
  const started = psql('SELECT now()');
  psql(`CREATE TABLE ${table} (id int NOT NULL, source varchar(8))`);
  const dir = await mkdtemp(join(tmpdir(), 'hydrant-wh-dash-'));
  const config = join(dir, 'hydrant.yaml');
  await writeFile(config, JSON.stringify({
    delivery_streams: [{
      DeliveryStreamName: 'orders',
      RedshiftDestinationConfiguration: {
        RoleARN: 'arn:aws:iam::123456789012:role/r',
        ClusterJDBCURL: 'jdbc:postgresql://127.0.0.1:5432/test',
        Username: 'postgres',
        Password: 'unused',
        CopyCommand: { DataTableName: table, CopyOptions: "JSON 'auto' MAXERROR 10" },
        S3Configuration: {
          RoleARN: 'arn:aws:iam::123456789012:role/r',
          BucketARN: 'arn:aws:s3:::staging',
          Prefix: 'dash-',
          BufferingHints: { SizeInMBs: 1, IntervalInSeconds: 1 },
        },
        ProcessingConfiguration: { Enabled: true, Processors: [{ Type: 'AppendDelimiterToRecord' }] },
      },
    }],
  }));
  const { proc, base } = await startHydrant('serve', ['--data-dir', join(dir, 'data'), '--config', config], 20_000);
  let browser;
  try {
    const records = [];
    for (let i = 0; i < 40; i++) records.push({ id: i, source: 'web' });
    const data = records.map((r) => JSON.stringify(r)).concat(['{"id": "x"}', '{"source": "no id"}', 'not json']);
    const res = await fetch(base, {
      method: 'POST',
      headers: { 'Content-Type': 'application/x-amz-json-1.1', 'X-Amz-Target': 'Firehose_20150804.PutRecordBatch' },
      body: JSON.stringify({ DeliveryStreamName: 'orders', Records: data.map((d) => ({ Data: Buffer.from(d).toString('base64') })) }),
    });
    assert.equal(res.status, 200, await res.text());

    let page, problems;
    ({ browser, page, problems } = await openPage(() => false));
    await page.goto(`${base}/-/`);
    const cell = (f) => page.textContent(`#warehouses tr[data-stream="orders"] td[data-field="${f}"]`);
    await page.waitForFunction(() => document.querySelector('#warehouses td[data-field="rows_loaded"]')?.textContent === '40',
      null, { timeout: 30_000 });
    assert.equal(await page.isVisible('#warehouse-card'), true);
    assert.equal(psql(`SELECT count(*) FROM ${table}`), '40');
    assert.equal(await cell('rows_rejected'), '3');
    const reasons = await page.getAttribute('#warehouses td[data-field="rows_rejected"]', 'title');
    for (const r of ['invalid_text_representation', 'not_null_violation', 'unreadable_record']) assert.match(reasons, new RegExp(r));
    assert.equal(await cell('lag_records'), '0');
    assert.deepEqual(problems, []);
  } finally {
    await browser?.close();
    proc.kill('SIGKILL');
    psql(`DROP TABLE IF EXISTS ${table}`);
    // Its ledger rows too: the shared server is left as it was.
    try {
      psql(`DELETE FROM hydrant.loads WHERE stream = 'orders' AND object LIKE 'dash-%' AND loaded_at >= '${started}'`);
    } catch { /* no ledger yet: nothing was loaded */ }
    await rm(dir, { recursive: true, force: true });
  }
});
