// The meeting page in real Chromium against the real server binary.
//
// Run: tests/browser/run.sh (installs Chromium and playwright-core when missing), or
// `node --test tests/browser/` with CONFAB_BIN pointing at a built `confab`.
// Screenshots and server logs land in target/browser-artifacts/.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startRedis } from './services.mjs';
import {
  startServer, launchBrowser, newParticipantPage, joinRoom, startJoin, waitMediaFlowing,
  remoteTiles, waitRemoteTiles, waitChat, typeChat, openChat, screenshot, dumpPages, waitFor, WAIT_MS,
} from './harness.mjs';

/** @type {import('playwright-core').Browser} */
let browser;

before(async () => {
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
});

test('three participants see and hear each other, chat, and one leaves', async (t) => {
  const server = await startServer({ label: 'meeting' });
  const pages = {};
  t.after(async () => {
    await server.stop();
  });
  try {
    const names = ['Ada', 'Grace', 'Linus'];
    for (const n of names) pages[n] = await newParticipantPage(browser);
    const ids = {};
    // Join one after the other, as people do: each later joiner exercises the renegotiation
    // of everyone already there.
    for (const n of names) ids[n] = await joinRoom(pages[n], server.url, 'standup', n);

    // Each page: two remote tiles, named, whose video decodes and audio arrives.
    await Promise.all(names.map(async (n) => {
      const others = names.filter((o) => o !== n);
      await waitRemoteTiles(pages[n], others.map((o) => ids[o]));
      await waitMediaFlowing(pages[n], others.map((o) => ids[o]));
      await pages[n].waitForFunction(
        () => [...document.querySelectorAll('[data-testid="remote-tile"]')].every((el) => el.dataset.video === 'on'),
        null,
        { timeout: WAIT_MS },
      );
      const tiles = await remoteTiles(pages[n]);
      assert.deepEqual(
        tiles.map((x) => x.name).sort(),
        others.slice().sort(),
        `${n} labels its tiles with the others' names`,
      );
    }));
    for (const n of names) await screenshot(pages[n], `meeting-${n}`);

    // Audio reaches Ada as RED (issue 17): her answer keeps red/48000/2, and an audio
    // packet she receives carries the two before it. The others publish RED too (the
    // server's answer lists it first), one previous frame in each packet, which the server
    // takes off and restores from. So a packet Ada receives is about 3/2 of one sent:
    // 106 to 112 bytes sent, 159 to 164 received in three runs (1.45 to 1.55 times); the
    // same call with the others publishing plain Opus sent 51. With one block (as sent)
    // it would be about 1.0 times, without RED 0.5. Not every packet carries its blocks:
    // a block more than 16,383 ticks back (after a DTX silence) cannot be described, but
    // that is so for the sender's RED and the server's alike.
    const answer = await pages.Ada.evaluate(() => window.confab.subscriber.localDescription.sdp);
    assert.match(answer, /a=rtpmap:\d+ red\/48000\/2/, 'the subscriber answer keeps RED');
    const perPacket = (page, type) => page.evaluate(async (type) => {
      let bytes = 0;
      let packets = 0;
      const pc = type === 'inbound-rtp' ? window.confab.subscriber : window.confab.publisher;
      (await pc.getStats()).forEach((s) => {
        if (s.type === type && s.kind === 'audio') {
          bytes += s.bytesReceived ?? s.bytesSent;
          packets += s.packetsReceived ?? s.packetsSent;
        }
      });
      return bytes / Math.max(packets, 1);
    }, type);
    const received = await perPacket(pages.Ada, 'inbound-rtp');
    const sent = Math.max(await perPacket(pages.Grace, 'outbound-rtp'), await perPacket(pages.Linus, 'outbound-rtp'));
    t.diagnostic(`audio bytes a packet: ${sent.toFixed(0)} sent, ${received.toFixed(0)} received as RED`);
    assert.ok(received > 1.25 * sent, `RED carries redundancy: ${received} bytes a packet received, ${sent} sent`);

    // Chat: typed in one page, Enter sends; the other two show it with the sender's name.
    await typeChat(pages.Ada, 'hello from Ada');
    const mine = await waitChat(pages.Ada, 'hello from Ada');
    assert.ok(mine.some((m) => m.text === 'hello from Ada' && m.mine), 'the sender shows its own message');
    for (const n of ['Grace', 'Linus']) {
      const log = await waitChat(pages[n], 'hello from Ada');
      const m = log.find((x) => x.text === 'hello from Ada');
      assert.equal(m.name, 'Ada');
      assert.match(m.time, /\d/);
      assert.equal(m.history, false);
    }
    // Addresses become links (http and https only, opening without a handle on the page);
    // the rest, markup included, stays text.
    const linked = 'see https://example.com/a?b=1. <b>not bold</b> javascript:alert(1) http://x.test/';
    await typeChat(pages.Ada, linked);
    await waitChat(pages.Grace, linked);
    const links = await pages.Grace.$$eval('[data-testid="chat-link"]', (els) => els.map((a) => ({
      href: a.getAttribute('href'), text: a.textContent, rel: a.rel, target: a.target,
    })));
    assert.deepEqual(links, [
      { href: 'https://example.com/a?b=1', text: 'https://example.com/a?b=1', rel: 'noopener noreferrer', target: '_blank' },
      { href: 'http://x.test/', text: 'http://x.test/', rel: 'noopener noreferrer', target: '_blank' },
    ]);
    assert.equal(await pages.Grace.$$eval('[data-testid="chat-text"] b', (els) => els.length), 0, 'no markup');
    // And the send button works too.
    await openChat(pages.Grace);
    await pages.Grace.getByTestId('chat-input').fill('hi Ada');
    await pages.Grace.getByTestId('chat-send').click();
    await waitChat(pages.Ada, 'hi Ada');
    await waitChat(pages.Linus, 'hi Ada');

    // Mute state reaches the others' tiles.
    await pages.Grace.getByTestId('mic-button').click();
    await pages.Grace.getByTestId('cam-button').click();
    for (const n of ['Ada', 'Linus']) {
      await pages[n].waitForFunction(
        (id) => {
          const el = document.querySelector(`[data-testid="remote-tile"][data-participant-id="${id}"]`);
          return el?.dataset.micMuted === 'true' && el?.dataset.cameraOff === 'true' && el?.dataset.video === 'off';
        },
        ids.Grace,
        { timeout: WAIT_MS },
      );
    }
    await screenshot(pages.Ada, 'meeting-Ada-grace-muted');
    // A muted microphone sends silence, and the server asked for Opus DTX in its answer
    // (issue 17): a packet every few hundred ms instead of fifty a second.
    const fmtp = await pages.Grace.evaluate(() => window.confab.publisher.remoteDescription.sdp
      .split(/\r?\n/).find((l) => /^a=fmtp:\d+ .*useinbandfec/.test(l)));
    assert.match(fmtp ?? '', /usedtx=1/, `the answer's Opus parameters: ${fmtp}`);
    const audioSent = () => pages.Grace.evaluate(async () => {
      let n = 0;
      (await window.confab.publisher.getStats()).forEach((s) => {
        if (s.type === 'outbound-rtp' && s.kind === 'audio') n = s.packetsSent;
      });
      return n;
    });
    let before = await audioSent();
    await waitFor(pages.Grace, 'fewer than 15 audio packets in a second while muted (DTX)', async () => {
      const now = await audioSent();
      const quiet = now - before < 15;
      before = now;
      return quiet;
    }, { interval: 1000 });
    await pages.Grace.getByTestId('cam-button').click();
    await pages.Ada.waitForFunction(
      (id) => document.querySelector(`[data-participant-id="${id}"]`)?.dataset.video === 'on',
      ids.Grace,
      { timeout: WAIT_MS },
    );

    // Linus leaves: his tile disappears from the others' grids; his page is back in the lobby.
    await pages.Linus.getByTestId('leave-button').click();
    await pages.Linus.waitForFunction(
      () => document.querySelector('[data-testid="status"]').dataset.state === 'disconnected'
        && !document.querySelector('[data-testid="lobby"]').hidden,
      null,
      { timeout: WAIT_MS },
    );
    await waitRemoteTiles(pages.Ada, [ids.Grace]);
    await waitRemoteTiles(pages.Grace, [ids.Ada]);
    // Media keeps flowing between those who stayed.
    await waitMediaFlowing(pages.Ada, [ids.Grace]);
    await waitMediaFlowing(pages.Grace, [ids.Ada]);
    for (const n of names) await screenshot(pages[n], `meeting-after-leave-${n}`);
  } catch (err) {
    await dumpPages(pages, 'meeting');
    console.error(`server log: ${server.logPath}`);
    throw err;
  } finally {
    for (const p of Object.values(pages)) await p.context().close();
  }
});

test('late joiner gets the chat history; a listen-only participant; refusals are shown', async (t) => {
  // A room holds two here, so that the third join is refused as full.
  const server = await startServer({ label: 'history', env: { CONFAB_ROOM__MAX_PARTICIPANTS: '2' } });
  const pages = {};
  t.after(async () => {
    await server.stop();
  });
  try {
    pages.ada = await newParticipantPage(browser);
    const ada = await joinRoom(pages.ada, server.url, 'retro', 'Ada');
    await typeChat(pages.ada, 'first');
    await waitChat(pages.ada, 'first');
    await typeChat(pages.ada, 'second');
    await waitChat(pages.ada, 'second');

    // Bob has no camera or microphone: he joins listen-only, gets the history and Ada's media.
    pages.bob = await newParticipantPage(browser, { noDevices: true });
    const bob = await joinRoom(pages.bob, server.url, 'retro', 'Bob');
    const log = await waitChat(pages.bob, 'second');
    assert.deepEqual(
      log.map((m) => [m.name, m.text, m.history]),
      [['Ada', 'first', true], ['Ada', 'second', true]],
      'history replayed in order, marked as history',
    );
    await waitMediaFlowing(pages.bob, [ada]);
    assert.equal(await pages.bob.evaluate(() => window.confab.publisher), null, 'no publisher without devices');
    // Ada sees Bob as a name tile, not black video; and Bob can chat.
    await waitRemoteTiles(pages.ada, [bob]);
    const [bobTile] = await remoteTiles(pages.ada);
    assert.equal(bobTile.name, 'Bob');
    assert.equal(bobTile.video, 'off');
    await typeChat(pages.bob, 'listening in');
    await waitChat(pages.ada, 'listening in');
    await screenshot(pages.ada, 'history-Ada');
    await screenshot(pages.bob, 'history-Bob-listen-only');

    // A third participant is refused: the page says so, it does not only log it.
    pages.carol = await newParticipantPage(browser);
    await startJoin(pages.carol, server.url, 'retro', 'Carol');
    await pages.carol.waitForFunction(
      () => {
        const err = document.querySelector('[data-testid="error"]');
        return !err.hidden && /full/i.test(err.textContent)
          && document.querySelector('[data-testid="status"]').dataset.state === 'disconnected';
      },
      null,
      { timeout: WAIT_MS },
    );
    assert.ok(await pages.carol.getByTestId('lobby').isVisible(), 'a refused join stays in the lobby');
    await screenshot(pages.carol, 'history-Carol-room-full');

    // An invalid room name is refused by the server, and the page shows its message.
    await startJoin(pages.carol, server.url, 'no spaces allowed', 'Carol');
    await pages.carol.waitForFunction(
      () => /room name/i.test(document.querySelector('[data-testid="error"]').textContent),
      null,
      { timeout: WAIT_MS },
    );
    await screenshot(pages.carol, 'history-Carol-invalid-room');
  } catch (err) {
    await dumpPages(pages, 'history');
    console.error(`server log: ${server.logPath}`);
    throw err;
  } finally {
    for (const p of Object.values(pages)) await p.context().close();
  }
});

test('the page reconnects after a server restart and says when the server is unreachable', async (t) => {
  let server = await startServer({ label: 'reconnect' });
  const port = server.port;
  const pages = {};
  t.after(async () => {
    await server.stop();
  });
  try {
    pages.ada = await newParticipantPage(browser);
    pages.bob = await newParticipantPage(browser);
    const ada0 = await joinRoom(pages.ada, server.url, 'sturdy', 'Ada');
    const bob0 = await joinRoom(pages.bob, server.url, 'sturdy', 'Bob');
    await waitMediaFlowing(pages.ada, [bob0]);

    await server.stop();
    for (const p of Object.values(pages)) {
      await p.waitForFunction(
        () => document.querySelector('[data-testid="status"]').dataset.state === 'reconnecting'
          && /reconnecting/i.test(document.querySelector('[data-testid="status"]').textContent),
        null,
        { timeout: WAIT_MS },
      );
    }
    await screenshot(pages.ada, 'reconnect-Ada-reconnecting');

    // Same port, fresh server: both pages rejoin on their own and media flows again.
    server = await startServer({ label: 'reconnect', httpBind: `127.0.0.1:${port}` });
    const ada1 = await pages.ada.waitForFunction(
      (old) => window.confab.state === 'connected' && window.confab.participantId !== old && window.confab.participantId,
      ada0,
      { timeout: WAIT_MS },
    ).then((h) => h.jsonValue());
    const bob1 = await pages.bob.waitForFunction(
      (old) => window.confab.state === 'connected' && window.confab.participantId !== old && window.confab.participantId,
      bob0,
      { timeout: WAIT_MS },
    ).then((h) => h.jsonValue());
    await waitRemoteTiles(pages.ada, [bob1]);
    await waitRemoteTiles(pages.bob, [ada1]);
    await waitMediaFlowing(pages.ada, [bob1]);
    await waitMediaFlowing(pages.bob, [ada1]);
    await screenshot(pages.ada, 'reconnect-Ada-reconnected');

    // Down for good: after a few attempts the page says the server is unreachable.
    await server.stop();
    await pages.ada.waitForFunction(
      () => /server unreachable/i.test(document.querySelector('[data-testid="status"]').textContent),
      null,
      { timeout: 30_000 },
    );
    await screenshot(pages.ada, 'reconnect-Ada-unreachable');
  } catch (err) {
    await dumpPages(pages, 'reconnect');
    console.error(`server log: ${server.logPath}`);
    throw err;
  } finally {
    for (const p of Object.values(pages)) await p.context().close();
  }
});

test('two pages on two media workers of one room see and hear each other and chat', async (t) => {
  // One participant per worker: the second page joins a copy of the room on the other
  // worker, and every track crosses between the copies (issue 15: relays).
  const server = await startServer({
    label: 'spread',
    env: { CONFAB_MEDIA__WORKERS: '2', CONFAB_ROOM__PARTICIPANTS_PER_WORKER: '1' },
  });
  const pages = {};
  t.after(async () => {
    await server.stop();
  });
  try {
    for (const n of ['Ada', 'Grace']) pages[n] = await newParticipantPage(browser);
    const ids = {};
    for (const n of ['Ada', 'Grace']) ids[n] = await joinRoom(pages[n], server.url, 'spread', n);
    await waitRemoteTiles(pages.Ada, [ids.Grace]);
    await waitRemoteTiles(pages.Grace, [ids.Ada]);
    await waitMediaFlowing(pages.Ada, [ids.Grace]);
    await waitMediaFlowing(pages.Grace, [ids.Ada]);
    const tiles = await remoteTiles(pages.Grace);
    assert.deepEqual(tiles.map((x) => x.name), ['Ada'], 'named across the copies');
    await typeChat(pages.Grace, 'from the other worker');
    await waitChat(pages.Ada, 'from the other worker');
    // The media really crossed between workers.
    const metrics = await (await fetch(`${server.url}/metrics`)).text();
    const relayed = Number(/^confab_relayed_packets_total (\d+)/m.exec(metrics)?.[1] ?? 0);
    assert.ok(relayed > 0, `relayed packets: ${relayed}`);
    await screenshot(pages.Grace, 'spread-Grace');
  } catch (err) {
    await dumpPages(pages, 'spread');
    console.error(`server log: ${server.logPath}`);
    throw err;
  } finally {
    for (const p of Object.values(pages)) await p.context().close();
  }
});

test('two pages on two nodes of one room (cascade) see and hear each other and chat', async (t) => {
  // Each page joins a different node; the room is one meeting across them (issue 15):
  // facts through Redis, media over the nodes' relay link.
  const redis = await startRedis();
  const node = (id) =>
    startServer({
      label: `cascade-${id}`,
      env: {
        CONFAB_CLUSTER__REDIS_URL: redis.url,
        CONFAB_CLUSTER__NODE_ID: id,
        CONFAB_CLUSTER__SECRET: 'browser-cascade-secret-0123456789',
      },
    });
  const servers = [await node('node-a'), await node('node-b')];
  const pages = {};
  t.after(async () => {
    for (const s of servers) await s.stop();
    await redis.stop();
  });
  try {
    for (const n of ['Ada', 'Grace']) pages[n] = await newParticipantPage(browser);
    const ids = {};
    ids.Ada = await joinRoom(pages.Ada, servers[0].url, 'cascade', 'Ada');
    ids.Grace = await joinRoom(pages.Grace, servers[1].url, 'cascade', 'Grace');
    await waitRemoteTiles(pages.Ada, [ids.Grace]);
    await waitRemoteTiles(pages.Grace, [ids.Ada]);
    await waitMediaFlowing(pages.Ada, [ids.Grace]);
    await waitMediaFlowing(pages.Grace, [ids.Ada]);
    const tiles = await remoteTiles(pages.Grace);
    assert.deepEqual(tiles.map((x) => x.name), ['Ada'], 'named across the nodes');
    // The quality panel names the path: straight to the node, over UDP.
    await pages.Grace.waitForFunction(() => {
      const b = document.querySelector('[data-testid="upload-state"]');
      return b?.dataset.path === 'UDP' && b.dataset.receivePath === 'UDP';
    }, null, { timeout: WAIT_MS });
    await typeChat(pages.Grace, 'from the other node');
    await waitChat(pages.Ada, 'from the other node');
    // The media really crossed between the nodes, each way.
    for (const s of servers) {
      const metrics = await (await fetch(`${s.url}/metrics`)).text();
      const sent = Number(/^confab_cascade_relay_packets_sent_total (\d+)/m.exec(metrics)?.[1] ?? 0);
      assert.ok(sent > 0, `${s.url}: relay packets sent: ${sent}`);
    }
    await screenshot(pages.Grace, 'cascade-Grace');
  } catch (err) {
    await dumpPages(pages, 'cascade');
    for (const s of servers) console.error(`server log: ${s.logPath}`);
    throw err;
  } finally {
    for (const p of Object.values(pages)) await p.context().close();
  }
});
