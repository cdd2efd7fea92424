// Connectivity (issue 16) in real Chromium against the real server binary: media over
// ICE-TCP from a browser that may not use UDP at all, through an external TURN server
// (Debian's coturn, started here with `use-auth-secret`) with the credentials Confab mints
// for each participant, and through the embedded TURN server over UDP and TCP; the
// connection check page (/check) says which paths work.
//
// Run: tests/browser/run.sh, or `node --test tests/browser/` with CONFAB_BIN set.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { startCoturn, freePort } from './services.mjs';
import {
  REPO_ROOT, inboundByParticipant, waitFor, startServer, launchBrowser, newParticipantPage, joinRoom, waitMediaFlowing,
  waitRemoteTiles, waitChat, typeChat, dumpPages, axeScan, screenshot, WAIT_MS,
} from './harness.mjs';

/**
 * Opens the check page from the pre-join screen's link and waits for its verdict: each
 * row's status ({ws, udp, tcp, turn, camera, microphone}) and the verdict's text.
 */
async function runCheck(page, baseUrl, room) {
  await page.goto(`${baseUrl}/room/${room}`);
  await page.getByTestId('check-link').click();
  await page.waitForURL(/\/check\?/);
  await page.waitForSelector('body[data-checked="true"]', { timeout: WAIT_MS });
  const rows = await page.$$eval('.check-row', (els) => Object.fromEntries(els.map((el) => [
    el.dataset.testid.replace('check-', ''), { status: el.dataset.status, detail: el.querySelector('.check-detail').textContent },
  ])));
  const verdict = await page.getByTestId('check-verdict').textContent();
  return { rows, verdict };
}

/** @type {import('playwright-core').Browser} */
let browser;
before(async () => { browser = await launchBrowser(); });
after(async () => { await browser?.close(); });

/** Waits until the quality panel says both connections use `path` (UDP, TCP, TURN/UDP...). */
async function waitPanelPath(page, path) {
  try {
    await page.waitForFunction((want) => {
      const b = document.querySelector('[data-testid="upload-state"]');
      return b?.dataset.path === want && b.dataset.receivePath === want;
    }, path, { timeout: WAIT_MS });
  } catch (err) {
    const seen = await page.evaluate(() => {
      const b = document.querySelector('[data-testid="upload-state"]');
      return { path: b?.dataset.path, receivePath: b?.dataset.receivePath };
    });
    throw new Error(`the panel says ${JSON.stringify(seen)}, not ${path} both ways: ${err.message}`);
  }
}

/** The candidate types of the subscriber connection's selected pair. */
async function selectedPath(page) {
  return page.evaluate(async () => {
    const stats = await window.confab.subscriber.getStats();
    let pair = null;
    stats.forEach((s) => {
      if (s.type === 'transport' && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId);
    });
    if (!pair) stats.forEach((s) => { if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') pair = s; });
    if (!pair) return null;
    return {
      local: stats.get(pair.localCandidateId)?.candidateType,
      remote: stats.get(pair.remoteCandidateId)?.candidateType,
    };
  });
}

test('media through an external TURN server (coturn, use-auth-secret) with credentials minted by Confab', async (t) => {
  const secret = 'coturn-test-secret-0123456789';
  const turn = await startCoturn(secret);
  const server = await startServer({
    label: 'turn',
    env: {
      CONFAB_TURN__URLS: `["${turn.url}"]`,
      CONFAB_TURN__SECRET: secret,
    },
  });
  const pages = {};
  t.after(async () => {
    await server.stop();
    await turn.stop();
  });
  try {
    for (const n of ['Ada', 'Grace']) pages[n] = await newParticipantPage(browser);
    const ids = {};
    // `?relay`: the pages may use only the TURN server's relayed candidates.
    for (const n of ['Ada', 'Grace']) ids[n] = await joinRoom(pages[n], server.url, 'relayed', n, '?relay');
    const servers = await pages.Ada.evaluate(() => window.confab.rtcConfig.iceServers);
    assert.equal(servers.length, 1);
    assert.deepEqual(servers[0].urls, [turn.url]);
    assert.match(servers[0].username, new RegExp(`^\\d+:${ids.Ada}$`), 'expiry:participant');
    await waitRemoteTiles(pages.Ada, [ids.Grace]);
    await waitRemoteTiles(pages.Grace, [ids.Ada]);
    await waitMediaFlowing(pages.Ada, [ids.Grace]);
    await waitMediaFlowing(pages.Grace, [ids.Ada]);
    for (const n of ['Ada', 'Grace']) {
      const path = await selectedPath(pages[n]);
      assert.equal(path?.local, 'relay', `${n} receives through the TURN server: ${JSON.stringify(path)}`);
    }
    // The quality panel says so, for both connections.
    await waitPanelPath(pages.Ada, 'TURN/UDP');
    await typeChat(pages.Grace, 'through the relay');
    await waitChat(pages.Ada, 'through the relay');

    // The check page: every path works on loopback, and nobody in the meeting sees it.
    pages.check = await newParticipantPage(browser);
    const check = await runCheck(pages.check, server.url, 'relayed');
    await screenshot(pages.check, 'check-all-paths');
    for (const r of ['ws', 'udp', 'tcp', 'turn', 'camera', 'microphone']) {
      assert.equal(check.rows[r].status, 'ok', `${r}: ${JSON.stringify(check.rows)}`);
    }
    assert.match(check.rows.turn.detail, /TURN server over UDP/);
    assert.match(check.rows.udp.detail, /round trip \d+ ms/);
    assert.match(check.verdict, /media goes over UDP/);
    assert.deepEqual(await axeScan(pages.check, 'check-page'), []);
    const people = await pages.Ada.evaluate(() => window.confab.participants.size);
    assert.equal(people, 1, 'the check joined no one\'s meeting');
  } catch (err) {
    await dumpPages(pages, 'turn');
    console.error(`server log: ${server.logPath}\ncoturn log:\n${turn.log().slice(-4000)}`);
    throw err;
  } finally {
    for (const p of Object.values(pages)) await p.context().close();
  }
});

test('a browser that may not use UDP joins over ICE-TCP; both sides see and hear each other', async (t) => {
  // `disable_non_proxied_udp`: Chromium gathers no UDP candidate and sends no UDP datagram
  // (checked on this Chromium); the server's passive TCP candidate is its only way in.
  const noUdp = await launchBrowser(['--webrtc-ip-handling-policy=disable_non_proxied_udp']);
  const server = await startServer({ label: 'ice-tcp' });
  const pages = {};
  t.after(async () => {
    await noUdp.close();
    await server.stop();
  });
  try {
    pages.Ada = await newParticipantPage(noUdp);
    pages.Grace = await newParticipantPage(browser);
    const ids = {};
    for (const n of ['Ada', 'Grace']) ids[n] = await joinRoom(pages[n], server.url, 'tcp', n);
    await waitRemoteTiles(pages.Ada, [ids.Grace]);
    await waitRemoteTiles(pages.Grace, [ids.Ada]);
    await waitMediaFlowing(pages.Ada, [ids.Grace]);
    await waitMediaFlowing(pages.Grace, [ids.Ada]);
    // Direct (not relayed: there is no TURN server here); Chromium reports its side of
    // an active TCP connection as peer-reflexive.
    const path = await selectedPath(pages.Ada);
    assert.ok(path && path.local !== 'relay' && path.remote === 'host', JSON.stringify(path));
    // Ada's connections go over TCP, Grace's over UDP, and the quality panel says so.
    await waitPanelPath(pages.Ada, 'TCP');
    await waitPanelPath(pages.Grace, 'UDP');
    const metrics = await (await fetch(`${server.url}/metrics`)).text();
    const open = Number(/^confab_tcp_connections (\d+)/m.exec(metrics)?.[1] ?? 0);
    assert.ok(open >= 2, `TCP connections open: ${open}`);
    await typeChat(pages.Ada, 'over tcp');
    await waitChat(pages.Grace, 'over tcp');

    // The check page in the browser without UDP: UDP blocked, TCP works, and it says so.
    pages.check = await newParticipantPage(noUdp);
    const check = await runCheck(pages.check, server.url, 'tcp');
    await screenshot(pages.check, 'check-no-udp');
    assert.equal(check.rows.ws.status, 'ok');
    assert.equal(check.rows.udp.status, 'fail', JSON.stringify(check.rows));
    assert.equal(check.rows.tcp.status, 'ok', JSON.stringify(check.rows));
    assert.equal(check.rows.turn.status, 'none', 'no TURN server here');
    assert.match(check.verdict, /UDP is blocked on your network; Confab will use TCP/);
    await pages.check.getByTestId('check-back').click();
    await pages.check.waitForURL(/\/room\/tcp$/);
  } catch (err) {
    await dumpPages(pages, 'ice-tcp');
    console.error(`server log: ${server.logPath}`);
    throw err;
  } finally {
    for (const p of Object.values(pages)) await p.context().close();
  }
});

test('the embedded TURN server: a relay-only page over TURN/UDP, a browser without UDP over TURN/TCP', async (t) => {
  // The server offers only its UDP candidate (CONFAB_MEDIA__TCP=false) and runs its own
  // TURN server (turn.port): a browser that may not use UDP can reach it only through TURN
  // over TCP; a relay-only page (`?relay`) goes through it over UDP.
  const noUdp = await launchBrowser(['--webrtc-ip-handling-policy=disable_non_proxied_udp']);
  const server = await startServer({
    label: 'turn-embedded',
    env: {
      CONFAB_MEDIA__TCP: 'false',
      CONFAB_TURN__PORT: String(await freePort()),
    },
  });
  const pages = {};
  t.after(async () => {
    await noUdp.close();
    await server.stop();
  });
  try {
    pages.Ada = await newParticipantPage(noUdp);
    pages.Grace = await newParticipantPage(browser);
    const ids = {};
    ids.Ada = await joinRoom(pages.Ada, server.url, 'turn-embedded', 'Ada');
    // Relay-only over UDP: Chromium may nominate the TCP relay of a plain `?relay` page
    // (one run in nine did), and this page is the test of TURN/UDP.
    ids.Grace = await joinRoom(pages.Grace, server.url, 'turn-embedded', 'Grace', '?relay=udp');
    const servers = await pages.Ada.evaluate(() => window.confab.rtcConfig.iceServers);
    assert.equal(servers.length, 1);
    assert.ok(servers[0].urls.some((u) => u.endsWith('?transport=tcp')), JSON.stringify(servers));
    await waitMediaFlowing(pages.Ada, [ids.Grace]);
    await waitMediaFlowing(pages.Grace, [ids.Ada]);
    // The selected pair settles on the relayed candidate (once, a first read caught
    // Ada's pair as peer-reflexive: polled, with a deadline).
    for (const n of ['Ada', 'Grace']) {
      let path;
      const deadline = Date.now() + WAIT_MS;
      while ((path = await selectedPath(pages[n]))?.local !== 'relay' && Date.now() < deadline) {
        await pages[n].waitForTimeout(250); // polling interval, not synchronisation
      }
      assert.equal(path?.local, 'relay', `${n}: ${JSON.stringify(path)}`);
    }
    await waitPanelPath(pages.Ada, 'TURN/TCP');
    await waitPanelPath(pages.Grace, 'TURN/UDP');
    const metrics = await (await fetch(`${server.url}/metrics`)).text();
    const open = Number(/^confab_turn_allocations (\d+)/m.exec(metrics)?.[1] ?? 0);
    assert.ok(open >= 4, `allocations open: ${open} (two connections each)`);
  } catch (err) {
    await dumpPages(pages, 'turn-embedded');
    console.error(`server log: ${server.logPath}`);
    throw err;
  } finally {
    for (const p of Object.values(pages)) await p.context().close();
  }
});

const RELAY_BIN = process.env.CONFAB_RELAY_BIN
  ?? path.join(path.dirname(path.resolve(process.env.CONFAB_BIN ?? path.join(REPO_ROOT, 'target', 'debug', 'confab'))), 'confab-relay');

/** What the publisher connection of `page` sends: bytes so far, Chromium's estimate of its uplink, and why its layers are limited. */
function uplink(page) {
  return page.evaluate(async () => {
    const stats = await window.confab.publisher.getStats();
    const out = { bytesSent: 0, available: null, limited: [] };
    stats.forEach((s) => {
      if (s.type === 'outbound-rtp' && s.kind === 'video') {
        out.bytesSent += s.bytesSent ?? 0;
        if (s.qualityLimitationReason) out.limited.push(s.qualityLimitationReason);
      }
      if (s.type === 'transport' && s.selectedCandidatePairId) {
        out.available = stats.get(s.selectedCandidatePairId)?.availableOutgoingBitrate ?? null;
      }
    });
    return out;
  });
}

/**
 * A server on one media worker announcing 127.0.0.2, and `confab-relay` there in front of
 * it with `args` (its rule covers every client: Chromium's loopback traffic reaches the
 * relay from an address other than the one its stats name). `uplinkDropped()` is the
 * relay's latest count of client -> server datagrams dropped, `dropped()` of server ->
 * client ones.
 */
async function behindRelay(label, args) {
  const mediaPort = await freePort();
  const server = await startServer({ label, mediaPort, env: { CONFAB_MEDIA__ANNOUNCE_IP: '127.0.0.2', CONFAB_MEDIA__WORKERS: '1' } });
  const proc = spawn(RELAY_BIN, [
    '--listen', `127.0.0.2:${mediaPort}`, '--server', `127.0.0.1:${mediaPort}`, ...args,
  ], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  proc.stdout.on('data', (c) => { out += c.toString(); });
  const relay = {
    last: () => out.trim().split('\n').at(-1),
    uplinkDropped: () => Number([...out.matchAll(/uplink_dropped=(\d+)/g)].at(-1)?.[1] ?? 0),
    dropped: () => Number([...out.matchAll(/ dropped=(\d+)/g)].at(-1)?.[1] ?? 0),
    stop: () => proc.kill('SIGKILL'),
  };
  try {
    await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${RELAY_BIN} did not start: ${out}`)), WAIT_MS);
      const seen = () => { if (out.includes('relay listening')) { clearTimeout(timer); resolve(); } };
      proc.stdout.on('data', seen);
      proc.once('exit', (code) => { clearTimeout(timer); reject(new Error(`${RELAY_BIN} exited (${code})`)); });
      seen();
    });
  } catch (err) {
    relay.stop();
    await server.stop();
    throw err;
  }
  return { server, relay };
}

/**
 * Ada publishing and Grace, listen-only, in room `label` behind the relay (`relayArgs`);
 * once Ada's media reaches Grace, `body({ pages, ids, relay, server })`. Pages, relay and server
 * are closed after it; on a failure the pages are dumped first.
 */
async function adaToGraceBehindRelay(label, relayArgs, body) {
  const { server, relay } = await behindRelay(label, relayArgs);
  const pages = {};
  try {
    pages.Ada = await newParticipantPage(browser);
    pages.Grace = await newParticipantPage(browser, { noDevices: true });
    const ids = {};
    ids.Ada = await joinRoom(pages.Ada, server.url, label, 'Ada');
    ids.Grace = await joinRoom(pages.Grace, server.url, label, 'Grace');
    await waitMediaFlowing(pages.Grace, [ids.Ada]);
    await body({ pages, ids, relay, server });
  } catch (err) {
    await dumpPages(pages, label);
    console.error(`server log: ${server.logPath}; relay: ${relay.last()}`);
    throw err;
  } finally {
    for (const p of Object.values(pages)) await p.context().close();
    relay.stop();
    await server.stop();
  }
}

test('a publisher whose uplink is the bottleneck adapts to it from the server\'s feedback, and its video keeps flowing', async (t) => {
  // Issue 17, toward publishers: Ada's uplink is 500 kbit/s with a second of buffer (the
  // relay, `confab-relay`, between the pages and the server's announced address). The
  // camera alone sends over 1 Mbit/s. With a deep buffer nothing is lost for a long time,
  // so it is the delay in the server's transport-wide feedback (rtc's receiver on the
  // publisher connection) that tells Chromium's estimator where the link is.
  const CAP = 500_000;
  await adaToGraceBehindRelay('uplink', ['--uplink-kbps', String(CAP / 1000), '--queue-ms', '1000'], async ({ pages, ids, relay }) => {
    // Chromium's estimate reaches the link (it starts at 300 kbit/s and probes upward)...
    await waitFor(pages.Ada, 'Chromium\'s estimate to reach 70 % of the link',
      async () => (await uplink(pages.Ada)).available >= CAP * 0.7);
    // ...and over the next 4 s it stays under it, sends what fits, and Grace's video of
    // Ada keeps decoding.
    const framesOf = async () => (await inboundByParticipant(pages.Grace))[ids.Ada]?.framesDecoded ?? 0;
    const first = { up: await uplink(pages.Ada), frames: await framesOf(), at: Date.now() };
    const estimates = [];
    while (Date.now() - first.at < 4_000) {
      await pages.Ada.waitForTimeout(500); // sampling interval, not synchronisation
      estimates.push((await uplink(pages.Ada)).available);
    }
    const last = { up: await uplink(pages.Ada), frames: await framesOf(), at: Date.now() };
    const sentBps = ((last.up.bytesSent - first.up.bytesSent) * 8 * 1000) / (last.at - first.at);
    const drops = relay.uplinkDropped();
    t.diagnostic(`Ada sent ${Math.round(sentBps / 1000)} kbit/s of video over a ${CAP / 1000} kbit/s uplink; Chromium's estimates ${estimates.map((e) => Math.round(e / 1000)).join(', ')} kbit/s; limited by ${last.up.limited.join(', ')}; Grace decoded ${last.frames - first.frames} frames in ${last.at - first.at} ms; the relay dropped ${drops}; relay: ${relay.last()}`);
    // Without the server's feedback (checked by taking the receiver of it out of the
    // publisher connection) Chromium's estimate sank from 300 to 166 kbit/s and it sent
    // 108 kbit/s; without the relay's shaping it was over 5 Mbit/s.
    assert.ok(estimates.every((e) => e !== null && e <= CAP * 1.5), `Chromium's estimate stays near the link: ${estimates}`);
    assert.ok(sentBps <= CAP * 1.1 && sentBps >= CAP * 0.3, `sent ${sentBps} bit/s`);
    assert.ok(last.up.limited.includes('bandwidth'), `the encoder says bandwidth limits it: ${last.up.limited}`);
    assert.ok(last.frames - first.frames >= 40, `Grace kept decoding Ada's video: ${last.frames - first.frames} frames`);
    assert.equal(drops, 0, 'the uplink\'s buffer never overflowed');
  });
});

test('audio a publisher sends as RED comes through its lossy uplink whole', async (t) => {
  // Issue 17: the server's answer lists RED before Opus, so Chromium sends its audio as
  // RED, each packet carrying the one before it. Ada's uplink loses 5 % of her packets.
  // The server restores them from the ones after before forwarding Opus: Grace's receiver
  // sees next to no audio lost (two lost in a row, or a packet DTX sent alone, cannot be
  // restored: 0 to 2 of about 255 in ten runs; 9 to 11 restored by the server).
  await adaToGraceBehindRelay('redup', ['--uplink-loss', '5'], async ({ pages, ids, relay, server }) => {
    const audioOf = async (page) => {
      const { audioPackets: received, audioLost: lost } = (await inboundByParticipant(page))[ids.Ada];
      return { received, lost };
    };
    const restoredSoFar = async () => Number(/^confab_red_restored_total (\d+)/m.exec(await (await fetch(`${server.url}/metrics`)).text())?.[1] ?? 0);
    const first = { audio: await audioOf(pages.Grace), dropped: relay.uplinkDropped(), restored: await restoredSoFar() };
    // 250 packets of Ada's audio at Grace, while the relay keeps losing Ada's packets.
    await waitFor(pages.Grace, 'Ada\'s audio at Grace', async () => (await audioOf(pages.Grace)).received - first.audio.received >= 250);
    const last = { audio: await audioOf(pages.Grace), dropped: relay.uplinkDropped(), restored: await restoredSoFar() };
    const received = last.audio.received - first.audio.received;
    const lost = last.audio.lost - first.audio.lost;
    const dropped = last.dropped - first.dropped;
    const restored = last.restored - first.restored;
    t.diagnostic(`Grace received ${received} of Ada's audio packets and lost ${lost}; the relay dropped ${dropped} of Ada's packets (audio and video) meanwhile; the server restored ${restored}`);
    assert.ok(dropped >= 10, `the uplink lost packets: ${dropped}`);
    // Some of what was dropped was audio, and the server restored it from Chromium's RED
    // (so the next assertion is not met by a path that lost only video).
    assert.ok(restored > 0, `audio packets restored: ${restored}`);
    // Without the restoring (checked by taking it out) Grace lost 13 of 269.
    assert.ok(lost * 50 <= received, `${lost} of ${received + lost} audio packets lost after the server restored them`);
  });
});

test('a subscriber behind a narrow downlink is probed before an upgrade: Chromium\'s feedback measures the probe clusters', async (t) => {
  // Issue 17: Grace's downlink is 300 kbit/s with 200 ms of buffer, less than Ada's
  // camera's top layer. Grace is moved down, and then, rather than trying the top layer
  // to see, the server sends probe clusters: 50 ms of RTX copies of packets Grace already
  // has, at the rate the upgrade would need. Chromium drops the copies and counts them in
  // its transport-wide feedback, from which the server reads what the link carried: its
  // estimate of Grace's downlink stays near the link.
  const CAP = 300_000;
  await adaToGraceBehindRelay('probe', ['--downlink-kbps', String(CAP / 1000), '--queue-ms', '200'], async ({ pages, ids, relay, server }) => {
    const counters = async () => {
      const metrics = await (await fetch(`${server.url}/metrics`)).text();
      const read = (name) => Number(new RegExp(`^${name}_total (\\d+)`, 'm').exec(metrics)?.[1] ?? 0);
      return { probes: read('confab_bwe_probes'), measured: read('confab_bwe_probes_measured') };
    };
    await waitFor(pages.Grace, 'a probe cluster measured from Chromium\'s feedback', async () => (await counters()).measured > 0);
    const framesOf = async () => (await inboundByParticipant(pages.Grace))[ids.Ada]?.framesDecoded ?? 0;
    const first = { frames: await framesOf(), dropped: relay.dropped(), at: Date.now() };
    const estimates = [];
    while (Date.now() - first.at < 6_000) {
      await pages.Grace.waitForTimeout(500); // sampling interval, not synchronisation
      estimates.push(await pages.Grace.evaluate(() => window.confab.downlink?.estimateBps ?? null));
    }
    const last = { frames: await framesOf(), dropped: relay.dropped(), counters: await counters() };
    t.diagnostic(`${last.counters.probes} probes sent, ${last.counters.measured} measured; Grace's estimates ${estimates.map((e) => Math.round(e / 1000)).join(', ')} kbit/s; ${last.frames - first.frames} frames decoded and ${last.dropped - first.dropped} packets dropped by the relay in 6 s; relay: ${relay.last()}`);
    assert.ok(estimates.every((e) => e !== null && e <= CAP * 1.5), `the estimate stays near the link: ${estimates}`);
    assert.ok(last.frames - first.frames >= 30, `Grace kept decoding Ada's video: ${last.frames - first.frames} frames`);
  });
});
