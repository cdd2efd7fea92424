// Access tokens in the page: on a server that requires them, a join without one is refused
// with a message the page shows, and a token in the URL (minted by `confab token`) gets in,
// under the token's name.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import {
  startServer, launchBrowser, newParticipantPage, startJoin, dumpPages, WAIT_MS,
} from './harness.mjs';

const AUTH = { CONFAB_AUTH__REQUIRED: 'true', CONFAB_AUTH__SECRET: 'browser-test-secret-long-enough-for-hs256' };

/** @type {import('playwright-core').Browser} */
let browser;

before(async () => {
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
});

function mint(room, identity, name) {
  const { CONFAB_BIN: bin, ...env } = process.env;
  return execFileSync(path.resolve(bin), ['token', '--room', room, '--identity', identity, '--name', name, '--ttl', '10m'], {
    env: { ...env, ...AUTH },
  }).toString().trim();
}

test('a token in the URL joins; none is refused with a message', async () => {
  const server = await startServer({ label: 'access', env: AUTH });
  const page = await newParticipantPage(browser);
  try {
    await startJoin(page, server.url, 'secure', 'Nobody');
    await page.waitForFunction(() => {
      const e = document.querySelector('[data-testid="error"]');
      return !e.hidden && e.dataset.code === 'unauthorized';
    }, null, { timeout: WAIT_MS });
    assert.match(await page.getByTestId('error-text').textContent(), /access token/);
    assert.equal(await page.evaluate(() => window.confab.state), 'disconnected');

    const token = mint('secure', 'ada', 'Ada Lovelace');
    await page.goto(`${server.url}/room/secure?token=${encodeURIComponent(token)}`);
    await page.getByTestId('name-input').fill('Typed Name');
    await page.getByTestId('join-button').click();
    await page.waitForFunction(
      () => document.querySelector('[data-testid="status"]')?.dataset.state === 'connected',
      null,
      { timeout: WAIT_MS },
    );
    // The server named the participant from the token, and the token stays in the URL
    // (a reload joins again).
    assert.equal(await page.evaluate(() => window.confab.participant.name), 'Ada Lovelace');
    assert.equal(new URL(page.url()).searchParams.get('token'), token);
  } catch (err) {
    await dumpPages({ page }, 'access');
    throw err;
  } finally {
    await page.close();
    await server.stop();
  }
});
