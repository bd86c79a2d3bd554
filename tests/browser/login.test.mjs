// Logging in to the dashboard in a real browser, against a `hydrant serve` with an
// access key in its config: the login page shows, a wrong secret is refused with a
// message, the right one opens the dashboard (which then goes live with the stream),
// and the session cookie rides along on the page's own requests without being
// readable by its scripts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BIN, CHROMIUM, openPage, startHydrant } from './harness.mjs';

const KEY_ID = 'AKIAHYDRANTADMIN0001';
const SECRET = 'admin-secret-0123456789';
const STREAM = 'login-stream';


const exited = (proc) => (proc.exitCode !== null || proc.signalCode !== null
  ? Promise.resolve()
  : new Promise((ok) => proc.once('exit', ok)));

test('the dashboard asks for an access key, refuses a wrong secret and opens with the right one', { timeout: 90_000 }, async () => {
  assert.ok(existsSync(BIN), `no hydrant binary at ${BIN}: build it (cargo build --release) or set HYDRANT_BIN`);
  assert.ok(existsSync(CHROMIUM), `no browser at ${CHROMIUM}: apt-get install -y chromium`);

  const dir = await mkdtemp(join(tmpdir(), 'hydrant-login-'));
  const dataDir = join(dir, 'data');
  const configFile = join(dir, 'hydrant.yaml');
  // YAML is a superset of JSON.
  await writeFile(configFile, JSON.stringify({
    auth: { keys: [{ access_key_id: KEY_ID, secret_access_key: SECRET }] },
    delivery_streams: [{
      DeliveryStreamName: STREAM,
      DeliveryStreamType: 'DirectPut',
      ExtendedS3DestinationConfiguration: {
        RoleARN: 'arn:aws:iam::123456789012:role/firehose',
        BucketARN: 'arn:aws:s3:::lake-login',
        Prefix: 'events/',
        BufferingHints: { SizeInMBs: 1, IntervalInSeconds: 60 },
        CompressionFormat: 'UNCOMPRESSED',
      },
    }],
  }));
  const { proc, base, output } = await startHydrant('serve', ['--data-dir', dataDir, '--config', configFile], 30_000);
  let browser;
  try {
    // The wrong secret's 401 from /-/login is an answer the page shows, checked below;
    // Chromium still logs it as a failed resource.
    const refusedLogin = (url, status) => url.startsWith(`${base}/-/login`) && status === 401;
    let page, problems;
    ({ browser, page, problems } = await openPage(refusedLogin));
    page.on('requestfailed', (req) => {
      // Leaving a page aborts its live feed; that is not a failure.
      if (req.url().startsWith(base) && req.failure()?.errorText !== 'net::ERR_ABORTED') {
        problems.push(`request failed: ${req.url()} ${req.failure()?.errorText}`);
      }
    });
    page.on('response', (res) => {
      if (res.url().startsWith(base) && res.status() >= 400 && !refusedLogin(res.url(), res.status())) {
        problems.push(`HTTP ${res.status()} for ${res.url()}`);
      }
    });

    // Not logged in: the login page, not the dashboard.
    const first = await page.goto(`${base}/-/`);
    assert.equal(first.status(), 200);
    for (const sel of ['#access_key_id', '#secret_access_key', '#login-button']) {
      await page.locator(sel).waitFor({ state: 'visible', timeout: 10_000 })
        .catch((e) => { throw new Error(`the login page has no visible ${sel}: ${e.message}`); });
    }
    assert.equal(await page.locator('#streams').count(), 0, 'no dashboard before logging in');
    assert.equal(await page.getAttribute('#secret_access_key', 'type'), 'password', 'the secret is typed into a password field');

    // A wrong secret: an error shows, and the page stays the login page.
    await page.fill('#access_key_id', KEY_ID);
    await page.fill('#secret_access_key', 'not-the-admin-secret-000');
    const refused = page.waitForResponse((r) => r.url() === `${base}/-/login`, { timeout: 10_000 });
    await page.click('#login-button');
    assert.equal((await refused).status(), 401, 'a wrong secret is refused with 401');
    await page.waitForFunction(() => document.querySelector('#login-error')?.textContent.trim().length > 0, null, { timeout: 10_000 })
      .catch((e) => { throw new Error(`#login-error stayed empty after a wrong secret: ${e.message}`); });
    const message = (await page.textContent('#login-error')).trim();
    assert.ok(!message.includes(SECRET), 'the error does not echo a secret');
    assert.equal(await page.locator('#streams').count(), 0, 'still no dashboard after a wrong secret');
    assert.ok(!(await page.context().cookies(`${base}/-/`)).some((c) => c.name === 'hydrant_session'), 'no session cookie after a wrong secret');

    // The right secret: the page reloads into the dashboard.
    await page.fill('#secret_access_key', SECRET);
    const accepted = page.waitForResponse((r) => r.url() === `${base}/-/login`, { timeout: 10_000 });
    const reloaded = page.waitForEvent('load', { timeout: 20_000 });
    await page.click('#login-button');
    assert.equal((await accepted).status(), 200, 'the right secret is accepted');
    await reloaded;
    await page.locator('#streams').waitFor({ timeout: 15_000 })
      .catch((e) => { throw new Error(`the dashboard's #streams table never appeared after logging in: ${e.message}`); });
    assert.equal(await page.title(), 'hydrant');
    await page.waitForFunction((name) => document.querySelector('#streams')?.textContent.includes(name), STREAM, { timeout: 15_000 })
      .catch(async (e) => { throw new Error(`${STREAM} never appeared in #streams (it reads "${(await page.textContent('#streams')).trim().slice(0, 300)}"): ${e.message}`); });
    assert.equal(await page.locator(`#streams tr[data-stream="${STREAM}"]`).count(), 1, `one row for ${STREAM}`);
    await page.waitForFunction(() => document.querySelector('#status')?.textContent.trim() === 'live', null, { timeout: 15_000 })
      .catch(async (e) => { throw new Error(`#status never read "live" after logging in (it reads "${await page.textContent('#status')}"): ${e.message}`); });

    // The cookie: sent with the page's own requests, hidden from its scripts.
    const cookies = await page.context().cookies(`${base}/-/`);
    const session = cookies.find((c) => c.name === 'hydrant_session');
    assert.ok(session, `a hydrant_session cookie after logging in (cookies: ${JSON.stringify(cookies.map((c) => c.name))})`);
    assert.equal(session.httpOnly, true, 'the session cookie is HttpOnly');
    assert.equal(session.sameSite, 'Strict', 'the session cookie is SameSite=Strict');
    const fromPage = await page.evaluate(async () => {
      const res = await fetch('/-/streams', { cache: 'no-store' });
      return { status: res.status, body: await res.text(), cookie: document.cookie };
    });
    assert.equal(fromPage.status, 200, `fetch('/-/streams') from the page: ${fromPage.body}`);
    assert.ok(JSON.parse(fromPage.body).streams.some((s) => s.name === STREAM), `/-/streams lists ${STREAM}: ${fromPage.body}`);
    assert.ok(!fromPage.cookie.includes('hydrant_session'), `scripts cannot read the session cookie (document.cookie: ${fromPage.cookie})`);

    // Without the cookie (a fresh context), the same request is refused.
    const outside = await browser.newContext();
    const bare = await outside.request.get(`${base}/-/streams`);
    assert.equal(bare.status(), 401, 'GET /-/streams without a session is 401');
    await outside.close();

    assert.deepEqual(problems, [], 'no console errors and no failed requests besides the refused login');
  } finally {
    await browser?.close().catch(() => {});
    if (proc.exitCode === null && proc.signalCode === null) {
      proc.kill('SIGKILL');
      await exited(proc);
    }
    await rm(dir, { recursive: true, force: true });
  }
});
