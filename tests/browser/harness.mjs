// Shared harness of the browser tests: starts the confab binary on free ports, launches
// headless Chromium with fake devices, and drives the meeting page through its
// `data-testid` hooks. Everything waits on conditions with deadlines, never fixed sleeps.

import { spawn } from 'node:child_process';
import { createWriteStream, mkdirSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { once } from 'node:events';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const ARTIFACTS = path.join(REPO_ROOT, 'target', 'browser-artifacts');
export const CHROMIUM = process.env.CHROMIUM_BIN ?? '/usr/lib/chromium/chromium';

/**
 * Whether this machine has no network interface but loopback. Chromium then needs
 * --allow-loopback-in-peer-connection to gather any candidate. Where there is another
 * interface it must not get it: with two host candidates Chromium may move its selected
 * pair from one to the other, and the server's ICE-lite agent (rtc-ice 0.21.1,
 * handle_binding_request) keeps the first nominated pair, stops hearing consent on it and
 * drops the participant ~15 s later as `media_failed`.
 */
const LOOPBACK_ONLY = Object.values(os.networkInterfaces())
  .flat()
  .every((a) => a.internal || a.family !== 'IPv4');

// From /work/shared/BROWSER-TESTING.md: what makes WebRTC work headless with fake devices.
// Three fake cameras (device-count=3) so that a camera can be switched: to fake_device_2,
// as fake_device_1 delivers Y16 (depth) frames that WebRTC does not encode (a sender given
// it stops sending). Chromium always has three fake microphones and three fake speakers.
// With fake devices and the fake UI, getDisplayMedia returns a fake screen without any
// picker (checked on Chromium 156: --auto-select-desktop-capture-source is not needed).
export const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--use-fake-device-for-media-stream=device-count=3',
  '--use-fake-ui-for-media-stream',
  // Loopback candidates only where loopback is all there is (see LOOPBACK_ONLY).
  ...(LOOPBACK_ONLY ? ['--allow-loopback-in-peer-connection'] : []),
];

/** Default wait for a condition; generous for a loaded 2-core machine, never slept. */
export const WAIT_MS = 20_000;

mkdirSync(ARTIFACTS, { recursive: true });

/**
 * Starts the server on free ports. Resolves once it prints its URL.
 * @returns {Promise<{url: string, port: number, proc: import('node:child_process').ChildProcess, stop: () => Promise<void>, logPath: string}>}
 */
export async function startServer({ label, env = {}, httpBind = '127.0.0.1:0', mediaPort = 0 } = {}) {
  const bin = process.env.CONFAB_BIN
    ? path.resolve(process.env.CONFAB_BIN)
    : path.join(REPO_ROOT, 'target', 'debug', 'confab');
  const logPath = path.join(ARTIFACTS, `${label}-server.log`);
  const log = createWriteStream(logPath, { flags: 'a' });
  // The server reads every CONFAB_* variable as configuration and refuses unknown keys, so
  // the test's own CONFAB_BIN must not reach it.
  const { CONFAB_BIN: _bin, ...inherited } = process.env;
  const proc = spawn(bin, ['--http-bind', httpBind, '--media-port', String(mediaPort)], {
    cwd: REPO_ROOT,
    env: {
      ...inherited,
      NO_COLOR: '1',
      RUST_LOG: process.env.RUST_LOG ?? 'confab=debug,webrtc=warn',
      // stop() sends SIGTERM: a short drain, so that a test never waits on a meeting.
      CONFAB_HTTP__DRAIN_TIMEOUT_MS: '1000',
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  proc.stderr.pipe(log, { end: false });
  const url = await new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error(`${bin} printed no URL within ${WAIT_MS} ms; see ${logPath}`)), WAIT_MS);
    proc.once('error', (err) => {
      clearTimeout(timer);
      reject(new Error(`cannot start ${bin}: ${err.message} (build it with \`cargo build -p confab\` or set CONFAB_BIN)`));
    });
    proc.once('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`${bin} exited (code ${code}, signal ${signal}) before printing its URL; see ${logPath}`));
    });
    proc.stdout.on('data', (chunk) => {
      log.write(chunk);
      out += chunk.toString();
      const m = out.match(/Confab is running: open (http:\/\/\S+) in a browser/);
      if (m) {
        clearTimeout(timer);
        resolve(m[1].replace(/\/$/, ''));
      }
    });
  });
  proc.removeAllListeners('exit');
  const port = Number(new URL(url).port);
  const stop = async () => {
    if (proc.exitCode === null && proc.signalCode === null) {
      proc.kill('SIGTERM');
      const killer = setTimeout(() => proc.kill('SIGKILL'), 5000);
      await once(proc, 'exit');
      clearTimeout(killer);
    }
    log.end();
  };
  return { url, port, proc, stop, logPath };
}

/** Headless Chromium; `extraArgs` are added to its command line. */
export async function launchBrowser(extraArgs = []) {
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args: [...CHROMIUM_ARGS, ...extraArgs] });
}

/**
 * A page in its own browser context (its own participant). `noDevices` makes getUserMedia
 * fail as on a machine without camera or microphone; `noCamera` as on one with a
 * microphone only.
 */
export async function newParticipantPage(browser, { noDevices = false, noCamera = false } = {}) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 720 } });
  if (noDevices) {
    await context.addInitScript(() => {
      const refuse = () => Promise.reject(new DOMException('Requested device not found', 'NotFoundError'));
      if (navigator.mediaDevices) navigator.mediaDevices.getUserMedia = refuse;
    });
  } else if (noCamera) {
    await context.addInitScript(() => {
      const md = navigator.mediaDevices;
      if (!md) return;
      const gum = md.getUserMedia.bind(md);
      const list = md.enumerateDevices.bind(md);
      md.getUserMedia = (c) => (c?.video
        ? Promise.reject(new DOMException('Requested device not found', 'NotFoundError'))
        : gum(c));
      md.enumerateDevices = async () => (await list()).filter((d) => d.kind !== 'videoinput');
    });
  }
  context.setDefaultTimeout(WAIT_MS);
  const page = await context.newPage();
  const consoleLines = [];
  page.on('console', (m) => consoleLines.push(`[${m.type()}] ${m.text()}`));
  page.on('pageerror', (e) => consoleLines.push(`[pageerror] ${e.message}`));
  page.consoleLines = consoleLines;
  return page;
}

/** Opens `/room/<room>`, types the name, clicks Join. Does not wait for the outcome. */
export async function startJoin(page, baseUrl, room, name, query = '') {
  await page.goto(`${baseUrl}/room/${encodeURIComponent(room)}${query}`);
  await page.getByTestId('name-input').fill(name);
  const roomInput = page.getByTestId('room-input');
  if ((await roomInput.inputValue()) !== room) await roomInput.fill(room);
  await page.getByTestId('join-button').click();
}

/** Joins through the lobby and waits for "connected". Returns the participant id. */
export async function joinRoom(page, baseUrl, room, name, query = '') {
  await startJoin(page, baseUrl, room, name, query);
  await page.waitForFunction(
    () => document.querySelector('[data-testid="status"]')?.dataset.state === 'connected'
      && !document.querySelector('[data-testid="meeting"]').hidden,
    null,
    { timeout: WAIT_MS },
  );
  return page.evaluate(() => window.confab.participantId);
}

/**
 * Per remote participant, from the subscriber connection's getStats(): camera video
 * framesDecoded, screen-share framesDecoded and audio packetsReceived and packetsLost, mapped through the
 * client's mid -> track table.
 */
export async function inboundByParticipant(page) {
  return page.evaluate(async () => {
    const c = window.confab;
    if (!c?.subscriber) return {};
    const byMid = new Map([...c.remoteTracks.values()].map((t) => [t.mid, t]));
    const out = {};
    const stats = await c.subscriber.getStats();
    stats.forEach((s) => {
      if (s.type !== 'inbound-rtp' || s.mid == null) return;
      const t = byMid.get(s.mid);
      if (!t) return;
      const p = (out[t.participantId] ??= {
        framesDecoded: 0, audioPackets: 0, audioLost: 0, videoMid: null, audioMid: null, screenFrames: 0, screenMid: null,
      });
      if (s.kind === 'video' && t.source === 'screen') {
        p.screenFrames = s.framesDecoded ?? 0;
        p.screenMid = s.mid;
      } else if (s.kind === 'video') {
        p.framesDecoded = s.framesDecoded ?? 0;
        p.videoMid = s.mid;
      } else if (s.kind === 'audio') {
        p.audioPackets = s.packetsReceived ?? 0;
        p.audioLost = s.packetsLost ?? 0;
        p.audioMid = s.mid;
      }
    });
    return out;
  });
}

/**
 * Waits until, on `page`, every participant of `ids` has video frames being decoded and
 * audio packets arriving: both counters must rise past a first sample taken once they are
 * non-zero (so that a stalled stream does not pass on its first few packets).
 */
export async function waitMediaFlowing(page, ids, { minFrames = 10, minPackets = 20, timeout = WAIT_MS } = {}) {
  const deadline = Date.now() + timeout;
  let base = null;
  let last = {};
  while (Date.now() < deadline) {
    last = await inboundByParticipant(page);
    const ready = ids.every((id) => last[id]?.framesDecoded > 0 && last[id]?.audioPackets > 0);
    if (ready && !base) base = last;
    if (ready && base) {
      const rising = ids.every((id) =>
        last[id].framesDecoded - base[id].framesDecoded >= minFrames
        && last[id].audioPackets - base[id].audioPackets >= minPackets);
      if (rising) return { base, last };
    }
    await page.waitForTimeout(250); // polling interval, not synchronisation
  }
  throw new Error(`media not flowing on ${await label(page)} from ${ids.join(', ')} within ${timeout} ms: ${JSON.stringify({ base, last })}`);
}

async function label(page) {
  return page.evaluate(() => window.confab?.name ?? '(page)').catch(() => '(page)');
}

/** The remote tiles currently in the grid: [{id, name, video}]. */
export async function remoteTiles(page) {
  return page.$$eval('[data-testid="remote-tile"]', (els) => els.map((el) => ({
    id: el.dataset.participantId,
    name: el.querySelector('[data-testid="tile-name"]').textContent,
    video: el.dataset.video,
    micMuted: el.dataset.micMuted,
    cameraOff: el.dataset.cameraOff,
  })));
}

/** Waits until the remote tiles are exactly `ids` (any order). */
export async function waitRemoteTiles(page, ids, timeout = WAIT_MS) {
  await page.waitForFunction(
    (want) => {
      const got = [...document.querySelectorAll('[data-testid="remote-tile"]')].map((el) => el.dataset.participantId).sort();
      return JSON.stringify(got) === JSON.stringify([...want].sort());
    },
    ids,
    { timeout },
  );
}

/** Waits for a chat message with `text` in the page's chat log; returns its details. */
export async function waitChat(page, text, timeout = WAIT_MS) {
  await page.waitForFunction(
    (t) => [...document.querySelectorAll('[data-testid="chat-message"] [data-testid="chat-text"]')].some((el) => el.textContent === t),
    text,
    { timeout },
  );
  return page.$$eval('[data-testid="chat-message"]', (els) => els.map((el) => ({
    name: el.querySelector('[data-testid="chat-name"]').textContent,
    text: el.querySelector('[data-testid="chat-text"]').textContent,
    time: el.querySelector('time').textContent,
    history: el.dataset.history === 'true',
    mine: el.classList.contains('mine'),
  })));
}

/** Opens the chat panel (from the toolbar) unless it is open. */
export async function openChat(page) {
  if (await page.getByTestId('chat-panel').isHidden()) await page.getByTestId('chat-button').click();
  await page.getByTestId('chat-input').waitFor({ state: 'visible', timeout: WAIT_MS });
}

/**
 * Types `text` in the chat input and presses Enter (opening the chat panel first). Waits
 * for the chat channel first.
 */
export async function typeChat(page, text) {
  await page.waitForFunction(() => window.confab?.chatReady === true, null, { timeout: WAIT_MS });
  await openChat(page);
  const input = page.getByTestId('chat-input');
  await input.fill(text);
  await input.press('Enter');
}

export async function screenshot(page, name) {
  await page.screenshot({ path: path.join(ARTIFACTS, `${name}.png`) });
}

/** On failure, what a person needs: each page's console and a screenshot. */
export async function dumpPages(pages, prefix) {
  for (const [name, page] of Object.entries(pages)) {
    if (!page || page.isClosed()) continue;
    try {
      await screenshot(page, `${prefix}-${name}-failure`);
    } catch { /* the page may be gone */ }
    if (page.consoleLines?.length) {
      console.error(`--- console of ${name} ---\n${page.consoleLines.join('\n')}`);
    }
  }
}

/** A condition on `page` polled until true (each poll may be async); throws with `what`. */
export async function waitFor(page, what, fn, { timeout = WAIT_MS, interval = 250 } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    last = await fn();
    if (last) return last;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${what}`);
    await page.waitForTimeout(interval); // polling interval, not synchronisation
  }
}

/**
 * Waits until the screen share of participant `id` decodes on `page`: its frame counter must
 * rise by `minFrames` past a first non-zero sample. Returns the last sample.
 */
export async function waitScreenFlowing(page, id, { minFrames = 5, timeout = WAIT_MS } = {}) {
  let base = null;
  let last = null;
  try {
    return await waitFor(page, `screen frames from ${id}`, async () => {
      last = (await inboundByParticipant(page))[id];
      if (!last?.screenFrames) return false;
      base ??= last;
      return last.screenMid === base.screenMid && last.screenFrames - base.screenFrames >= minFrames && last;
    }, { timeout });
  } catch (err) {
    throw new Error(`${err.message}: ${JSON.stringify({ base, last })}`);
  }
}

const require = createRequire(import.meta.url);
export const AXE_PATH = require.resolve('axe-core/axe.min.js');

/**
 * Runs axe-core on the page as it is now. Returns the violations of impact serious or
 * critical (each as {id, impact, help, targets}), and writes every violation to
 * `<name>-axe.json` in the artifacts for a person to read.
 */
export async function axeScan(page, name) {
  if (!(await page.evaluate(() => typeof window.axe !== 'undefined'))) {
    await page.addScriptTag({ path: AXE_PATH });
  }
  const violations = await page.evaluate(async () => {
    const r = await window.axe.run(document, { resultTypes: ['violations'] });
    return r.violations.map((v) => ({
      id: v.id, impact: v.impact, help: v.help, targets: v.nodes.map((n) => n.target.join(' ')).slice(0, 5),
    }));
  });
  writeFileSync(path.join(ARTIFACTS, `${name}-axe.json`), JSON.stringify(violations, null, 2));
  return violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
}
