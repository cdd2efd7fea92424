// A page whose WebSocket breaks (no close frame: a proxy or a network dropping the TCP
// connection) resumes its session on a new one. The others never see it leave, its camera
// keeps reaching them, and its chat works again. Then it restarts ICE (as it does by itself
// when its network changes): new credentials on both connections, the same session.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import {
  startServer, launchBrowser, newParticipantPage, joinRoom, waitMediaFlowing, typeChat, waitChat,
  dumpPages, WAIT_MS,
} from './harness.mjs';

/** @type {import('playwright-core').Browser} */
let browser;

before(async () => {
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
});

/** A TCP proxy in front of the server's HTTP port whose connections can all be cut. */
async function tcpProxy(port) {
  const pairs = new Set();
  const server = net.createServer((client) => {
    const upstream = net.connect(port, '127.0.0.1');
    const pair = [client, upstream];
    pairs.add(pair);
    client.pipe(upstream);
    upstream.pipe(client);
    const drop = () => {
      pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on('error', drop);
    upstream.on('error', drop);
    client.on('close', drop);
    upstream.on('close', drop);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    /** Ends every connection at the TCP level: no WebSocket close frame either way. */
    cut() {
      const n = pairs.size;
      for (const [a, b] of [...pairs]) {
        a.destroy();
        b.destroy();
      }
      pairs.clear();
      return n;
    },
    close: () => new Promise((resolve) => server.close(resolve)),
  };
}

test('a broken WebSocket is resumed, then ICE restarts; the others never see a leave', async () => {
  const server = await startServer({ label: 'resume' });
  const proxy = await tcpProxy(server.port);
  const pages = {
    ada: await newParticipantPage(browser),
    bob: await newParticipantPage(browser),
  };
  try {
    const adaId = await joinRoom(pages.ada, proxy.url, 'resume', 'Ada');
    await joinRoom(pages.bob, server.url, 'resume', 'Bob');
    await pages.bob.evaluate(() => {
      window.__left = [];
      window.confab.addEventListener('participantleft', (e) => window.__left.push(e.detail.participantId));
    });
    await pages.ada.evaluate(() => {
      window.__states = [];
      window.__resumed = 0;
      window.confab.addEventListener('state', (e) => window.__states.push(e.detail.state));
      window.confab.addEventListener('resumed', () => { window.__resumed += 1; });
    });
    await waitMediaFlowing(pages.bob, [adaId]);

    assert.ok(proxy.cut() >= 1, 'the WebSocket went through the proxy');
    await pages.ada.waitForFunction(() => window.__resumed === 1, null, { timeout: WAIT_MS });
    const after = await pages.ada.evaluate(() => ({
      id: window.confab.participantId,
      state: window.confab.state,
      states: window.__states,
    }));
    assert.equal(after.id, adaId, 'the same participant');
    assert.equal(after.state, 'connected');
    assert.ok(after.states.includes('reconnecting'), JSON.stringify(after.states));

    // Bob still gets Ada's camera and microphone, and never saw her leave.
    await waitMediaFlowing(pages.bob, [adaId]);
    await typeChat(pages.ada, 'back again');
    await waitChat(pages.bob, 'back again');
    assert.deepEqual(await pages.bob.evaluate(() => window.__left), []);

    // ICE restart: both of Ada's connections get new server credentials and come back up.
    const ufrags = () => pages.ada.evaluate(() => [window.confab.subscriber, window.confab.publisher]
      .map((pc) => /a=ice-ufrag:(\S+)/.exec(pc.remoteDescription.sdp)[1]));
    const before = await ufrags();
    assert.equal(await pages.ada.evaluate(() => window.confab.restartIce()), true);
    await pages.ada.waitForFunction((old) => {
      const pcs = [window.confab.subscriber, window.confab.publisher];
      return pcs.every((pc, i) => pc.connectionState === 'connected'
        && pc.signalingState === 'stable'
        && /a=ice-ufrag:(\S+)/.exec(pc.remoteDescription.sdp)[1] !== old[i]);
    }, before, { timeout: WAIT_MS });
    const bobId = await pages.bob.evaluate(() => window.confab.participantId);
    await waitMediaFlowing(pages.bob, [adaId]);
    await waitMediaFlowing(pages.ada, [bobId]);
    await typeChat(pages.bob, 'after the restart');
    await waitChat(pages.ada, 'after the restart');
    assert.deepEqual(await pages.bob.evaluate(() => window.__left), []);
    assert.equal(await pages.ada.evaluate(() => window.confab.participantId), adaId);
  } catch (err) {
    await dumpPages(pages, 'resume');
    throw err;
  } finally {
    for (const p of Object.values(pages)) await p.close();
    await proxy.close();
    await server.stop();
  }
});
