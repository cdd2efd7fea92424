// Server-side recording of a real browser's fake camera and microphone, started and stopped
// through the admin API, checked with ffprobe (Debian's ffmpeg; tests/browser/run.sh and
// scripts/test.sh install it when missing).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import path from 'node:path';
import {
  ARTIFACTS, startServer, launchBrowser, newParticipantPage, joinRoom, dumpPages, waitFor,
} from './harness.mjs';

const KEY = 'test-admin-key';

/** @type {import('playwright-core').Browser} */
let browser;

before(async () => {
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
});

/** ffprobe's view of a file: {codec, duration} of its first stream. */
function ffprobe(file) {
  const out = execFileSync('ffprobe', [
    '-v', 'error', '-show_entries', 'stream=codec_name:format=duration', '-of', 'json', file,
  ]);
  const v = JSON.parse(out.toString());
  return { codec: v.streams?.[0]?.codec_name, duration: Number(v.format?.duration) };
}

/** Audio RTP packets the page has sent so far (from its publisher connection). */
async function audioPacketsSent(page) {
  return page.evaluate(async () => {
    let sent = 0;
    (await window.confab.publisher.getStats()).forEach((s) => {
      if (s.type === 'outbound-rtp' && s.kind === 'audio') sent += s.packetsSent ?? 0;
    });
    return sent;
  });
}

test("a browser's camera and microphone are recorded to files ffprobe reads", async (t) => {
  const dir = mkdtempSync(path.join(ARTIFACTS, 'recording-'));
  const server = await startServer({
    label: 'recording',
    env: { CONFAB_ADMIN__API_KEY: KEY, CONFAB_RECORDING__DIR: dir },
  });
  const page = await newParticipantPage(browser);
  t.after(async () => {
    await page.context().close();
    await server.stop();
  });
  try {
    const id = await joinRoom(page, server.url, 'recorded', 'Ada');
    const api = `${server.url}/api/rooms/recorded/recording`;
    const auth = { authorization: `Bearer ${KEY}` };
    // Both tracks published before the recording starts.
    await waitFor(page, 'two published tracks', async () => {
      const r = await fetch(`${server.url}/api/rooms/recorded`, { headers: auth });
      const room = await r.json();
      return room.participants?.[0]?.tracks?.length === 2;
    });
    assert.equal((await fetch(api, { method: 'POST' })).status, 401, 'refused without the key');
    const started = await fetch(api, { method: 'POST', headers: auth });
    assert.equal(started.status, 201, await started.text());
    const t0 = Date.now();
    // About four seconds of media, counted in Opus packets (50 per second), not slept.
    const base = await audioPacketsSent(page);
    await waitFor(page, '200 more audio packets', async () => (await audioPacketsSent(page)) - base >= 200);
    const stopped = await fetch(api, { method: 'DELETE', headers: auth });
    const recorded = (Date.now() - t0) / 1000;
    const body = await stopped.json();
    assert.equal(stopped.status, 200, JSON.stringify(body));

    const manifest = JSON.parse(readFileSync(body.manifest, 'utf8'));
    assert.equal(manifest.files.length, 2, JSON.stringify(manifest));
    const codecs = [];
    for (const f of manifest.files) {
      assert.equal(f.participant_id, id);
      assert.equal(f.participant_name, 'Ada');
      const { codec, duration } = ffprobe(path.join(path.dirname(body.manifest), f.path));
      // Within 10 % of the time recorded (plus the wait for the first keyframe of video).
      assert.ok(
        Math.abs(duration - recorded) <= recorded * 0.1 + 0.3,
        `${codec}: ${duration} s recorded for ${recorded} s`,
      );
      codecs.push(codec);
    }
    assert.deepEqual(codecs.sort(), ['opus', 'vp8']);
  } catch (err) {
    await dumpPages({ Ada: page }, 'recording');
    throw err;
  }
});
