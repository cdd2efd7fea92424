// Large rooms in real Chromium against the real server binary: the camera published in
// three simulcast layers, each subscriber getting the layer its tile's size needs (and none
// for a tile it does not show), dynacast pausing layers nobody wants, the speaking
// highlight driven by the server's active speakers, the speaker view with a pin, and the
// paged gallery operated from the keyboard.
//
// The meeting page captures 1280x720 (fake camera), so Chromium sends q 320x180,
// h 640x360 and f 1280x720. Run: tests/browser/run.sh. Screenshots in
// target/browser-artifacts/simulcast-*.png.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startServer, launchBrowser, newParticipantPage, joinRoom, waitMediaFlowing, waitRemoteTiles,
  waitFor, axeScan, screenshot, dumpPages,
} from './harness.mjs';

/** @type {import('playwright-core').Browser} */
let browser;

before(async () => {
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
});

/** What `page` receives of participant `id`'s camera: {trackId, frameWidth, frameHeight, framesDecoded}. */
function cameraIn(page, id) {
  return page.evaluate(async (pid) => {
    const c = window.confab;
    const t = [...c.remoteTracks.values()].find((x) => x.participantId === pid && x.source === 'camera');
    if (!t) return null;
    let got = null;
    (await c.subscriber.getStats()).forEach((s) => {
      if (s.type === 'inbound-rtp' && s.mid === t.mid) {
        got = {
          trackId: t.trackId,
          frameWidth: s.frameWidth ?? 0,
          frameHeight: s.frameHeight ?? 0,
          framesDecoded: s.framesDecoded ?? 0,
        };
      }
    });
    return got;
  }, id);
}

/**
 * The page's own camera layers: rid -> {bytesSent, frameWidth, active}, `active` from the
 * sender's encodings (what dynacast set).
 */
function cameraOut(page) {
  return page.evaluate(async () => {
    const c = window.confab;
    const camera = c.localTrack('camera');
    const tr = c.publisher.getTransceivers().find((x) => x.sender.track === camera);
    const out = {};
    for (const e of tr.sender.getParameters().encodings) out[e.rid] = { bytesSent: 0, frameWidth: 0, active: e.active };
    (await tr.sender.getStats()).forEach((s) => {
      if (s.type === 'outbound-rtp' && out[s.rid]) {
        out[s.rid].bytesSent = s.bytesSent ?? 0;
        out[s.rid].frameWidth = s.frameWidth ?? 0;
      }
    });
    return out;
  });
}

/** Why a publisher sends what it sends: per rid, and its send-side bandwidth estimate. */
function uplink(page) {
  return page.evaluate(async () => {
    const stats = await window.confab.publisher.getStats();
    const out = { layers: {}, availableOutgoingBitrate: null };
    stats.forEach((s) => {
      if (s.type === 'outbound-rtp' && s.kind === 'video' && s.rid) {
        out.layers[s.rid] = {
          width: s.frameWidth ?? 0, bytes: s.bytesSent, limitedBy: s.qualityLimitationReason,
          targetBitrate: s.targetBitrate, active: s.active,
        };
      }
      if (s.type === 'candidate-pair' && s.nominated && s.availableOutgoingBitrate) {
        out.availableOutgoingBitrate = s.availableOutgoingBitrate;
      }
    });
    return out;
  });
}

/** Waits until `id`'s camera arrives on `page` `width` pixels wide, frames still decoding. */
async function waitCameraWidth(page, id, width, what) {
  let base = null;
  let last = null;
  try {
    return await waitFor(page, what, async () => {
      last = await cameraIn(page, id);
      if (last?.frameWidth !== width) {
        base = null;
        return false;
      }
      base ??= last;
      return last.framesDecoded - base.framesDecoded >= 3 && last;
    }, { interval: 300 });
  } catch (err) {
    throw new Error(`${err.message}: last ${JSON.stringify(last)}`);
  }
}

/** Waits until the camera encodings of `page` are active exactly as `want` ({q, h, f}). */
async function waitActiveLayers(page, want, what) {
  let last = null;
  try {
    return await waitFor(page, what, async () => {
      last = await cameraOut(page);
      return Object.entries(want).every(([rid, on]) => last[rid]?.active === on) && last;
    }, { interval: 300 });
  } catch (err) {
    throw new Error(`${err.message}: last ${JSON.stringify(last)}`);
  }
}

/** Waits until `id`'s camera frames on `page` stop (no new frame over three polls) or rise. */
async function waitCameraFlow(page, id, flowing, what) {
  const seen = [];
  try {
    await waitFor(page, what, async () => {
      seen.push((await cameraIn(page, id))?.framesDecoded ?? 0);
      if (seen.length < 4) return false;
      const [a, , , d] = seen.slice(-4);
      return flowing ? d - a >= 3 : d === a;
    }, { interval: 400 });
  } catch (err) {
    throw new Error(`${err.message}: frames ${seen.slice(-6).join(',')}`);
  }
}

/** The people panel's speaking entries and the tiles' rings, read with the last server list. */
function speakingState(page) {
  return page.evaluate(() => {
    const self = window.confab.participantId;
    const panel = [...document.querySelectorAll('[data-testid="participant"]')]
      .filter((el) => el.dataset.speaking === 'true')
      .map((el) => (el.dataset.local === 'true' ? self : el.dataset.participantId)).sort();
    const tiles = [...document.querySelectorAll('.tile')]
      .filter((el) => el.dataset.speaking === 'true')
      .map((el) => (el.dataset.local === 'true' ? self : el.dataset.participantId)).sort();
    return {
      source: document.querySelector('[data-testid="participants-list"]').dataset.speakingSource,
      server: window.__speakers ? [...window.__speakers].sort() : null,
      events: window.__speakerEvents ?? 0,
      panel,
      tiles,
    };
  });
}

test('simulcast: layers by tile size, dynacast, server active speakers, speaker view with a pin, paged gallery', async (t) => {
  const server = await startServer({ label: 'simulcast' });
  const pages = {};
  t.after(() => server.stop());
  try {
    const names = ['Ada', 'Grace', 'Linus'];
    for (const n of names) pages[n] = await newParticipantPage(browser);
    const ids = {};
    for (const n of names) {
      ids[n] = await joinRoom(pages[n], server.url, 'large', n);
      await pages[n].evaluate(() => {
        window.confab.addEventListener('activespeakers', (e) => {
          window.__speakers = e.detail.speakers;
          window.__speakerEvents = (window.__speakerEvents ?? 0) + 1;
        });
      });
    }
    await Promise.all(names.map(async (n) => {
      const others = names.filter((o) => o !== n).map((o) => ids[o]);
      await waitRemoteTiles(pages[n], others);
      await waitMediaFlowing(pages[n], others, { minFrames: 5, minPackets: 10 });
    }));

    // Chromium sends transport-wide feedback for what the server forwards it, and the
    // server's estimate of each subscriber's downlink rests on it (issue 17).
    await waitFor(pages.Ada, 'transport-wide feedback from Chromium counted by the server', async () => {
      const metrics = await (await fetch(`${server.url}/metrics`)).text();
      return Number(/^confab_twcc_feedback_in_total (\d+)/m.exec(metrics)?.[1] ?? 0) > 0;
    });

    // Every publisher sends its camera in several layers (rids with bytes still rising).
    for (const n of names) {
      let prev = null;
      let rising = [];
      let sample = null;
      await waitFor(pages[n], `${n} sending several simulcast layers`, async () => {
        sample = await cameraOut(pages[n]);
        rising = prev ? Object.keys(sample).filter((rid) => sample[rid].bytesSent > prev[rid].bytesSent) : [];
        prev = sample;
        return rising.length >= 2;
      }, { interval: 500 });
      assert.deepEqual(Object.keys(sample).sort(), ['f', 'h', 'q'], `${n} publishes three encodings`);
      t.diagnostic(`${n} sends ${rising.join(',')} now; ever sent: ${Object.entries(sample)
        .filter(([, s]) => s.bytesSent > 0).map(([rid, s]) => `${rid} ${s.frameWidth || '(paused)'}`).join(', ')}`);
    }

    // Gallery: a tile about 360x200 gets the 640x360 layer.
    await waitCameraWidth(pages.Grace, ids.Linus, 640, 'Grace receiving h (640) of Linus in the gallery');
    // The quality badges say what the server sees: Linus's tile that it sends layer 2 of 3
    // (h), Grace's own badge its estimate of her download, from the delay signal.
    await pages.Grace.waitForFunction((id) => {
      const badge = document.querySelector(`[data-participant-id="${id}"] [data-testid="quality-badge"]`);
      return badge?.dataset.layer === '1' && badge.dataset.detail.includes('layer 2 of 3');
    }, ids.Linus, { timeout: 20_000 });
    await pages.Grace.waitForFunction(() => {
      const b = document.querySelector('[data-testid="upload-state"]');
      return b?.dataset.downlinkSignal === 'delay' && Number(b.dataset.downlinkBps) > 0
        && b.dataset.detail.includes('estimates your download');
    }, null, { timeout: 20_000 });

    // Ada, from the keyboard: speaker view, Linus pinned (large): she gets his top layer,
    // 1280x720. Chromium starts that layer only once its send-side estimate allows about
    // 1.2 Mb/s: seconds here, but on a machine saturated by other work its probing fails and
    // the estimate creeps up for half a minute. Then h is his top layer, and the test says so.
    await pages.Ada.getByTestId('layout-speaker').press('Enter');
    assert.equal(await pages.Ada.getByTestId('layout-speaker').getAttribute('aria-pressed'), 'true');
    const linusPin = pages.Ada.locator(`[data-participant-id="${ids.Linus}"] [data-testid="pin-button"]`);
    await linusPin.press('Space');
    assert.equal(await linusPin.getAttribute('aria-pressed'), 'true');
    assert.deepEqual(await pages.Ada.evaluate(() => window.confab.pins), [ids.Linus]);
    await pages.Ada.waitForFunction(
      (id) => document.querySelector('[data-testid="speaker-main"] .tile')?.dataset.participantId === id,
      ids.Linus,
    );
    let top = 1280;
    try {
      await waitCameraWidth(pages.Ada, ids.Linus, 1280, 'Ada receiving f (1280) of Linus, large');
    } catch (err) {
      const up = await uplink(pages.Linus);
      // The server can only forward what the publisher sends: Chromium's own uplink
      // estimate may hold f back (not started, or `limitedBy: bandwidth` on a busy machine).
      const held = !(up.layers.f?.bytes > 0) || up.layers.f?.limitedBy === 'bandwidth';
      if (!held) throw new Error(`${err.message}; Linus's uplink: ${JSON.stringify(up)}`);
      t.diagnostic(`Linus's Chromium holds f back (uplink ${JSON.stringify(up)}): h is the top layer`);
      top = 640;
      await waitCameraWidth(pages.Ada, ids.Linus, 640, 'Ada receiving h (640) of Linus, large');
    }
    // Strip tiles ask for the lowest layer.
    await waitCameraWidth(pages.Ada, ids.Grace, 320, 'Ada receiving q (320) of Grace in the strip');
    await screenshot(pages.Ada, 'simulcast-speaker-view');
    const violations = await axeScan(pages.Ada, 'simulcast-speaker-view');
    assert.deepEqual(violations, [], `axe: serious or critical violations: ${JSON.stringify(violations, null, 2)}`);

    // Grace shrinks Linus's tile: her layer drops to 320x180; Ada keeps the top layer.
    await pages.Grace.evaluate((id) => {
      const el = document.querySelector(`[data-testid="remote-tile"][data-participant-id="${id}"]`);
      el.style.width = '160px';
      el.style.height = '90px';
    }, ids.Linus);
    const small = await waitCameraWidth(pages.Grace, ids.Linus, 320, 'Grace receiving q (320) of the shrunk tile');
    const sent = await pages.Grace.evaluate((tr) => window.confab.subscriptionOf(tr), small.trackId);
    assert.deepEqual(sent, { subscribed: true, quality: 'high', width: 160, height: 90 }, 'the tile reports its size');
    // Read over a few frames, not at one instant: a probe of Ada's estimate may move her
    // layer for a moment (a clean-clone run read 640 once at 0d4fc9c; 3 runs after it
    // passed).
    const big = await waitCameraWidth(pages.Ada, ids.Linus, top, 'Ada still gets the top layer');
    assert.equal(big.frameWidth, top, 'Ada still gets the top layer');
    await screenshot(pages.Grace, 'simulcast-shrunk-tile');
    if (top === 1280) {
      // Linus sends all three layers at once (the server keeps every layer up to the highest
      // anyone wants: Ada's f, and h and q below it).
      await waitActiveLayers(pages.Linus, { q: true, h: true, f: true }, 'Linus sending q, h and f');
      // Active is the page's decision; frames follow once the encoder produces them.
      await waitFor(pages.Linus, 'Linus encoding q, h and f at their sizes', async () => {
        const out = await cameraOut(pages.Linus);
        return out.q?.frameWidth === 320 && out.h?.frameWidth === 640 && out.f?.frameWidth === 1280;
      });
    }

    // Dynacast: Ada shows Grace large instead, Linus goes to her strip. Nobody wants more
    // than q of Linus now: he pauses h (and f); Ada back in the gallery wants h: resumed.
    await linusPin.press('Space');
    await pages.Ada.locator(`[data-participant-id="${ids.Grace}"] [data-testid="pin-button"]`).click();
    await waitCameraWidth(pages.Ada, ids.Linus, 320, 'Ada receiving q (320) of Linus in the strip');
    const paused = await waitActiveLayers(pages.Linus, top === 1280 ? { q: true, h: false, f: false } : { q: true, h: false },
      'Linus pausing the layers nobody wants');
    const pausedAt = paused.h.bytesSent;
    await pages.Ada.getByTestId('layout-gallery').click();
    await waitActiveLayers(pages.Linus, { q: true, h: true }, 'Linus resuming h');
    await waitCameraWidth(pages.Ada, ids.Linus, 640, 'Ada receiving h (640) of Linus in the gallery');
    assert.ok((await cameraOut(pages.Linus)).h.bytesSent > pausedAt, 'h is sent again');

    // Who speaks comes from the server: every page has had `active_speakers` (the fake
    // microphone beeps loudly enough), and its panel and tiles show exactly that list.
    for (const n of names) {
      await waitFor(pages[n], `${n} using the server's active speakers`, async () => {
        const s = await speakingState(pages[n]);
        return s.source === 'server' && s.events > 0;
      });
    }
    const levels = await pages.Ada.evaluate(async () => {
      const out = [];
      (await window.confab.publisher.getStats()).forEach((s) => {
        if (s.type === 'media-source' && s.kind === 'audio') out.push(s.audioLevel);
      });
      return out;
    });
    t.diagnostic(`Ada's fake microphone: media-source audioLevel ${levels.map((l) => l.toFixed(3)).join(', ')}`);
    // Grace mutes: the server drops her from the list; the others' pages follow it.
    await pages.Grace.getByTestId('mic-button').click();
    for (const n of ['Ada', 'Linus']) {
      let s = null;
      try {
        await waitFor(pages[n], `${n} showing the server's speakers without Grace`, async () => {
          s = await speakingState(pages[n]);
          return s.server && s.server.length > 0 && !s.server.includes(ids.Grace)
            && JSON.stringify(s.panel) === JSON.stringify(s.server)
            && JSON.stringify(s.tiles) === JSON.stringify(s.server);
        });
      } catch (err) {
        throw new Error(`${err.message}: ${JSON.stringify(s)}`);
      }
      t.diagnostic(`${n}: server speakers ${s.server.join(',')} after ${s.events} events`);
    }

    // Paged gallery on Linus's page, two tiles a page: his own and Ada's, Grace on page 2.
    // A tile on another page is unsubscribed: its frames stop, and come back on its page.
    const grid = (page) => page.evaluate(() => ({
      label: document.querySelector('[data-testid="page-label"]').textContent,
      shown: [...document.querySelectorAll('#grid .tile')].filter((el) => !el.hidden)
        .map((el) => el.dataset.participantId ?? 'self'),
      next: document.querySelector('[data-testid="page-next"]').disabled,
      prev: document.querySelector('[data-testid="page-prev"]').disabled,
      top: document.querySelector('#grid').getBoundingClientRect().top,
    }));
    const before = await grid(pages.Linus);
    await pages.Linus.evaluate(() => window.confabLayout.setPageSize(2));
    const page1 = await grid(pages.Linus);
    assert.deepEqual(
      { label: page1.label, shown: page1.shown, next: page1.next, prev: page1.prev },
      { label: 'Page 1 of 2', shown: ['self', ids.Ada], next: false, prev: true },
    );
    assert.equal(page1.top, before.top, 'the pager showing up moves nothing');
    const graceTrack = (await cameraIn(pages.Linus, ids.Grace)).trackId;
    await waitFor(pages.Linus, 'Grace unsubscribed off-page', () => pages.Linus.evaluate(
      (tr) => window.confab.subscriptionOf(tr)?.subscribed === false, graceTrack,
    ));
    await waitCameraFlow(pages.Linus, ids.Grace, false, 'Grace\'s frames stopping off-page');
    await screenshot(pages.Linus, 'simulcast-gallery-page-1');
    // Page Down on the stage turns the page.
    await pages.Linus.locator('#stage').focus();
    await pages.Linus.keyboard.press('PageDown');
    const page2 = await grid(pages.Linus);
    assert.deepEqual([page2.label, page2.shown], ['Page 2 of 2', [ids.Grace]]);
    await waitCameraFlow(pages.Linus, ids.Grace, true, 'Grace\'s frames back on her page');
    await waitCameraFlow(pages.Linus, ids.Ada, false, 'Ada\'s frames stopping off-page');
    await screenshot(pages.Linus, 'simulcast-gallery-page-2');
    await pages.Linus.getByTestId('page-prev').click();
    assert.equal((await grid(pages.Linus)).label, 'Page 1 of 2');
    await waitCameraFlow(pages.Linus, ids.Ada, true, 'Ada\'s frames back');

    for (const [n, page] of Object.entries(pages)) {
      const bad = page.consoleLines.filter((l) => l.startsWith('[pageerror]') || l.startsWith('[error] confab'));
      assert.deepEqual(bad, [], `errors in ${n}'s page`);
    }
  } catch (err) {
    await dumpPages(pages, 'simulcast');
    console.error(`server log: ${server.logPath}`);
    throw err;
  } finally {
    for (const p of Object.values(pages)) await p.context().close();
  }
});
