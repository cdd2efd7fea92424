// What an access token allows, in the page, and request ids end to end (docs/protocol.md,
// Request ids): a viewer (no `can_publish`) opens no device, has no publish controls and
// still gets everyone's media; a publish it tries anyway is refused with its reason, the
// refusal settles exactly that publish (by its request id) and nothing queues behind it; a
// burst of chat over the server's rate marks the refused messages "not sent", and exactly
// the others reach the room.
//
// One server for the file; the two tests use rooms of their own and run side by side.

import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import {
  startServer, launchBrowser, newParticipantPage, waitMediaFlowing, waitChat, typeChat, openChat, waitFor,
  screenshot, dumpPages, WAIT_MS,
} from './harness.mjs';

const AUTH = { CONFAB_AUTH__REQUIRED: 'true', CONFAB_AUTH__SECRET: 'browser-test-secret-long-enough-for-hs256' };

/** @type {import('playwright-core').Browser} */
let browser;
let server;

before(async () => {
  [browser, server] = await Promise.all([launchBrowser(), startServer({ label: 'grants', env: AUTH })]);
});

after(async () => {
  await server?.stop();
  await browser?.close();
});

/** A token from `confab token` with exactly `grants` (publish, subscribe, chat...). */
function mint(room, identity, grants) {
  const { CONFAB_BIN: bin, ...env } = process.env;
  const args = ['token', '--room', room, '--identity', identity, '--grant', grants.join(','), '--ttl', '10m'];
  return execFileSync(path.resolve(bin), args, { env: { ...env, ...AUTH } }).toString().trim();
}

/** Opens the page of `room` with `token` in its URL (the pre-join screen). */
async function openWithToken(page, room, token) {
  await page.goto(`${server.url}/room/${room}?token=${encodeURIComponent(token)}`);
}

/** Joins from the pre-join screen as `name`; resolves with the participant id. */
async function join(page, name) {
  await page.getByTestId('name-input').fill(name);
  await page.getByTestId('join-button').click();
  await page.waitForFunction(
    () => window.confab?.state === 'connected' && !document.querySelector('[data-testid="meeting"]').hidden,
    null,
    { timeout: WAIT_MS },
  );
  return page.evaluate(() => window.confab.participantId);
}

/** Every signaling message of `page`, parsed, both ways: [{dir: 'out' | 'in', msg}]. */
function recordSignaling(page) {
  const frames = [];
  page.on('websocket', (ws) => {
    const keep = (dir) => ({ payload }) => {
      try {
        frames.push({ dir, msg: JSON.parse(payload) });
      } catch { /* not JSON: not ours */ }
    };
    ws.on('framesent', keep('out'));
    ws.on('framereceived', keep('in'));
  });
  return frames;
}

/** Whether the element of `testid` is shown (present, and neither it nor a parent hidden). */
function shown(page, testid) {
  return page.getByTestId(testid).first().isVisible();
}

/** The `error` events of the page's client, from now on, in `window.__errors`. */
function recordErrors(page) {
  return page.evaluate(() => {
    window.__errors = [];
    window.confab.addEventListener('error', (e) => window.__errors.push(e.detail));
  });
}

describe('grants and request ids', { concurrency: true }, () => {
  it('a viewer opens no device, has no publish controls, receives everyone; its refused publish says why', async () => {
    const room = 'viewers';
    const pages = {};
    try {
      pages.ada = await newParticipantPage(browser);
      pages.vic = await newParticipantPage(browser);
      // Every getUserMedia call of the viewer's page is counted: it must make none.
      await pages.vic.addInitScript(() => {
        const md = navigator.mediaDevices;
        const gum = md.getUserMedia.bind(md);
        window.__gumCalls = 0;
        md.getUserMedia = (c) => {
          window.__gumCalls += 1;
          return gum(c);
        };
      });
      const wire = recordSignaling(pages.vic);
      await Promise.all([
        openWithToken(pages.ada, room, mint(room, 'ada', ['publish', 'subscribe', 'chat'])),
        openWithToken(pages.vic, room, mint(room, 'vic', ['subscribe', 'chat'])),
      ]);

      // Before joining, the viewer's token already says it: no preview, no mic toggles.
      await pages.vic.waitForFunction(() => document.querySelector('[data-testid="prejoin"]').dataset.viewer === 'true');
      assert.match(await pages.vic.getByTestId('preview-placeholder').textContent(), /viewer/);
      assert.equal(await shown(pages.vic, 'preview-mic'), false);
      assert.equal(await shown(pages.vic, 'mic-meter'), false);
      assert.equal(await pages.ada.getByTestId('prejoin').getAttribute('data-viewer'), null);

      const ada = await join(pages.ada, 'Ada');
      const vic = await join(pages.vic, 'Vic');

      // (a) No publish controls, and why; chat allowed. Ada, who may publish, has them all.
      for (const id of ['mic-button', 'cam-button', 'share-button']) {
        assert.equal(await shown(pages.vic, id), false, `viewer has no ${id}`);
        assert.equal(await shown(pages.ada, id), true, `publisher has ${id}`);
      }
      assert.equal(await shown(pages.vic, 'grants-note'), true);
      assert.match(await pages.vic.getByTestId('grants-note').textContent(), /viewer.*does not allow sending audio or video/);
      assert.equal(await shown(pages.ada, 'grants-note'), false);
      const deviceFields = (page) => page.$$eval('[data-testid="meeting-devices"] select',
        (els) => els.filter((s) => !s.closest('label').hidden).map((s) => s.dataset.kind));
      assert.deepEqual(await deviceFields(pages.vic), ['audiooutput'], 'a viewer only chooses the speaker');
      assert.deepEqual(await deviceFields(pages.ada), ['videoinput', 'audioinput', 'audiooutput']);
      assert.equal(await pages.vic.getByTestId('chat-input').isEnabled(), true);
      assert.equal(await shown(pages.vic, 'chat-note'), false);

      // It sees and hears Ada, and never tried to send anything.
      await waitMediaFlowing(pages.vic, [ada]);
      const quiet = await pages.vic.evaluate(() => ({
        gum: window.__gumCalls,
        publisher: window.confab.publisher,
        grants: window.confab.grants,
      }));
      assert.deepEqual(quiet, {
        gum: 0,
        publisher: null,
        grants: { can_publish: false, can_subscribe: true, can_chat: true, room_admin: false, hidden: false },
      });
      assert.deepEqual(wire.filter((f) => f.dir === 'out' && f.msg.type === 'publish'), []);
      // The join's reply carries the join's request id.
      const joinMsg = wire.find((f) => f.dir === 'out' && f.msg.type === 'join').msg;
      const joined = wire.find((f) => f.dir === 'in' && f.msg.type === 'joined').msg;
      assert.ok(Number.isInteger(joinMsg.request_id), JSON.stringify(joinMsg.request_id));
      assert.equal(joined.request_id, joinMsg.request_id);
      await screenshot(pages.vic, 'grants-viewer');

      // (b) A publish tried anyway is refused: the promise rejects with the server's code,
      // the page says why, and a second one is answered too (nothing queued behind the first).
      await recordErrors(pages.vic);
      const tryPublish = () => pages.vic.evaluate(async () => {
        const stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: true });
        try {
          await window.confab.publish(stream);
          return { resolved: true };
        } catch (err) {
          return { name: err.name, code: err.code, message: err.message };
        } finally {
          for (const t of stream.getTracks()) t.stop();
        }
      });
      const first = await tryPublish();
      assert.equal(first.name, 'ConfabError', JSON.stringify(first));
      assert.equal(first.code, 'forbidden', JSON.stringify(first));
      assert.match(first.message, /does not allow publishing/);
      await pages.vic.waitForFunction(() => {
        const e = document.querySelector('[data-testid="error"]');
        return !e.hidden && e.dataset.code === 'forbidden';
      });
      assert.match(await pages.vic.getByTestId('error-text').textContent(), /^Could not publish: .*does not allow publishing/);
      const second = await tryPublish();
      assert.equal(second.code, 'forbidden', JSON.stringify(second));
      // On the wire: each refusal carries the id of the publish it refuses.
      const publishes = wire.filter((f) => f.dir === 'out' && f.msg.type === 'publish').map((f) => f.msg.request_id);
      const refusals = wire.filter((f) => f.dir === 'in' && f.msg.type === 'error' && f.msg.code === 'forbidden')
        .map((f) => f.msg.request_id);
      assert.equal(publishes.length, 2);
      assert.equal(new Set(publishes).size, 2, 'each publish has its own request id');
      assert.deepEqual(refusals, publishes);
      // Nothing of it was kept, here as on the server: no publisher connection.
      assert.equal(await pages.vic.evaluate(() => window.confab.publisher), null);

      // A later operation works: Vic's chat reaches Ada, and stays marked as sent.
      await typeChat(pages.vic, 'only watching');
      await waitChat(pages.ada, 'only watching');
      const mine = await pages.vic.$$eval('[data-testid="chat-message"].mine',
        (els) => els.map((el) => ({ state: el.dataset.state, failed: !!el.querySelector('[data-testid="chat-failed"]') })));
      assert.deepEqual(mine, [{ state: 'sent', failed: false }]);
      // The two refusals, and nothing else (no candidate of the refused offers was sent).
      const errors = await pages.vic.evaluate(() => window.__errors.map((e) => `${e.request}:${e.code}`));
      assert.deepEqual(errors, ['publish:forbidden', 'publish:forbidden']);
      assert.deepEqual(wire.filter((f) => f.dir === 'out' && f.msg.type === 'candidate' && f.msg.target === 'publisher'), []);
      // Still a viewer of Ada after all this.
      await waitMediaFlowing(pages.vic, [ada], { minFrames: 5, minPackets: 10 });
      await pages.ada.waitForFunction((id) => window.confab.participants.has(id), vic);
      await screenshot(pages.vic, 'grants-refused-publish');
    } catch (err) {
      await dumpPages(pages, 'grants-viewer');
      console.error(`server log: ${server.logPath}`);
      throw err;
    } finally {
      for (const p of Object.values(pages)) await p.context().close();
    }
  });

  it('a chat burst over the rate: refused messages marked not sent, the others exactly what the room got', async () => {
    const room = 'burst';
    const pages = {};
    const N = 30; // chat_per_second = 5 by default, bursts of 10: many are refused
    try {
      pages.ann = await newParticipantPage(browser);
      pages.bob = await newParticipantPage(browser);
      // Ann may chat (and only watch); Bob may only watch: no chat either.
      await Promise.all([
        openWithToken(pages.ann, room, mint(room, 'ann', ['subscribe', 'chat'])),
        openWithToken(pages.bob, room, mint(room, 'bob', ['subscribe'])),
      ]);
      await join(pages.ann, 'Ann');
      await join(pages.bob, 'Bob');

      // Bob cannot chat, and is told why (in the chat panel); Ann can.
      await openChat(pages.bob);
      assert.equal(await pages.bob.getByTestId('chat-input').isDisabled(), true);
      assert.equal(await pages.bob.getByTestId('chat-send').isDisabled(), true);
      assert.equal(await shown(pages.bob, 'chat-note'), true);
      assert.match(await pages.bob.getByTestId('chat-note').textContent(), /does not allow chatting/);
      assert.equal(await pages.ann.getByTestId('chat-input').isEnabled(), true);
      assert.equal(await shown(pages.ann, 'chat-note'), false);

      // The burst, through the page's own form, all at once.
      await pages.ann.waitForFunction(() => window.confab.chatReady);
      await pages.bob.waitForFunction(() => window.confab.chatReady);
      await pages.ann.evaluate((n) => {
        const input = document.querySelector('[data-testid="chat-input"]');
        const form = document.querySelector('[data-testid="chat-form"]');
        for (let i = 0; i < n; i++) {
          input.value = `burst ${i}`;
          form.requestSubmit();
        }
      }, N);

      const annLog = () => pages.ann.$$eval('[data-testid="chat-message"].mine', (els) => els.map((el) => ({
        text: el.querySelector('[data-testid="chat-text"]').textContent,
        state: el.dataset.state,
        note: el.querySelector('[data-testid="chat-failed"]')?.textContent ?? null,
        code: el.querySelector('[data-testid="chat-failed"]')?.dataset.code ?? null,
      })));
      const bobGot = () => pages.bob.$$eval('[data-testid="chat-message"] [data-testid="chat-text"]',
        (els) => els.map((el) => el.textContent).filter((t) => t.startsWith('burst ')));
      // Every message ends one way or the other: refused (marked) or relayed (received).
      let ann;
      let got;
      await waitFor(pages.ann, 'every burst message either refused or received', async () => {
        [ann, got] = await Promise.all([annLog(), bobGot()]);
        return ann.length === N && ann.filter((m) => m.state === 'failed').length + got.length >= N;
      }).catch((err) => {
        throw new Error(`${err.message}: ann ${JSON.stringify(ann)}, bob got ${JSON.stringify(got)}`);
      });
      const sent = ann.filter((m) => m.state === 'sent').map((m) => m.text);
      const failed = ann.filter((m) => m.state === 'failed');
      assert.ok(failed.length >= 1, `some of ${N} were refused`);
      assert.ok(sent.length >= 10, `the burst allowance (10) went through: ${sent.length}`);
      // Exactly the messages marked sent reached Bob, in order: each refusal marked its own.
      assert.deepEqual(got, sent);
      assert.equal(sent.length + failed.length, N);
      for (const m of failed) {
        assert.deepEqual({ note: m.note, code: m.code }, { note: 'Not sent: rate limited', code: 'rate_limited' }, m.text);
      }
      // Refused chat is told beside the message, not in the page's error banner.
      assert.equal(await pages.ann.getByTestId('error').isHidden(), true);
      await screenshot(pages.ann, 'grants-chat-burst');
    } catch (err) {
      await dumpPages(pages, 'grants-burst');
      console.error(`server log: ${server.logPath}`);
      throw err;
    } finally {
      for (const p of Object.values(pages)) await p.context().close();
    }
  });
});
