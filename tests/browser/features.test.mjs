// The meeting page's features in real Chromium against the real server binary: the pre-join
// screen and devices, screen sharing, switching devices mid-call, the people panel, quality
// badges, the connection banner, audio-only and listen-only participants, phone-sized
// windows, keyboard use and an axe-core accessibility scan.
//
// Run: tests/browser/run.sh. Screenshots (prejoin, gallery, screen-share...) and axe reports
// land in target/browser-artifacts/.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startServer, launchBrowser, newParticipantPage, joinRoom, waitMediaFlowing, inboundByParticipant,
  waitScreenFlowing, waitRemoteTiles, waitChat, typeChat, waitFor, axeScan, screenshot, dumpPages,
} from './harness.mjs';

/** @type {import('playwright-core').Browser} */
let browser;

before(async () => {
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
});

/** The people panel of a page: [{id, name, local, microphone, camera, screen, speaking}]. */
function peoplePanel(page) {
  return page.$$eval('[data-testid="participant"]', (els) => els.map((el) => ({
    id: el.dataset.participantId,
    name: el.querySelector('[data-testid="participant-name"]').textContent,
    local: el.dataset.local === 'true',
    microphone: el.dataset.microphone,
    camera: el.dataset.camera,
    screen: el.dataset.screen,
    speaking: el.dataset.speaking === 'true',
  })));
}

/** Waits until the people panel lists exactly `want` ({id: partial entry}), in any order. */
async function waitPeople(page, want) {
  let got;
  try {
    await waitFor(page, 'the people panel', async () => {
      got = await peoplePanel(page);
      if (got.length !== Object.keys(want).length) return false;
      return got.every((p) => want[p.id] && Object.entries(want[p.id]).every(([k, v]) => p[k] === v));
    });
  } catch (err) {
    throw new Error(`${err.message}: want ${JSON.stringify(want)}, got ${JSON.stringify(got)}`);
  }
  return got;
}

function assertNoSeriousViolations(violations, where) {
  assert.deepEqual(violations, [], `axe: serious or critical violations on ${where}: ${JSON.stringify(violations, null, 2)}`);
}

/** No uncaught exception and no client error in any page's console. */
function assertCleanConsoles(pages) {
  for (const [name, page] of Object.entries(pages)) {
    const bad = (page.consoleLines ?? []).filter((l) => l.startsWith('[pageerror]') || l.startsWith('[error] confab'));
    assert.deepEqual(bad, [], `errors in ${name}'s page`);
  }
}

/** Whether nothing is wider than the window (no sideways scrolling). */
function fitsWidth(page) {
  return page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth);
}

test('pre-join: preview, level meter, devices chosen and remembered; keyboard, phone size, axe', async (t) => {
  const server = await startServer({ label: 'prejoin' });
  const pages = {};
  t.after(() => server.stop());
  try {
    const page = (pages.ada = await newParticipantPage(browser));
    await page.goto(`${server.url}/room/devices`);
    // A click is the user gesture that lets the meter's AudioContext run.
    await page.getByTestId('name-input').click();
    await page.getByTestId('name-input').fill('Ada');
    await page.waitForFunction(() => document.querySelector('[data-testid="preview-video"]').videoWidth > 0);
    await page.waitForFunction(() => document.querySelector('[data-testid="mic-meter"]').value > 5);

    const lobby = page.getByTestId('prejoin-devices');
    const options = (kind) => lobby.locator(`select[data-kind="${kind}"] option`).allTextContents();
    assert.deepEqual(await options('videoinput'), ['fake_device_0', 'fake_device_1', 'fake_device_2']);
    assert.ok((await options('audioinput')).includes('Fake Audio Input 1'));
    assert.ok(await lobby.locator('select[data-kind="audiooutput"]').isVisible(), 'Chromium can choose the speaker');

    await lobby.locator('select[data-kind="videoinput"]').selectOption({ label: 'fake_device_2' });
    await lobby.locator('select[data-kind="audioinput"]').selectOption({ label: 'Fake Audio Input 1' });
    await lobby.locator('select[data-kind="audiooutput"]').selectOption({ label: 'Fake Audio Output 1' });
    const previewLabels = () => page.evaluate(() => document.querySelector('[data-testid="preview-video"]')
      .srcObject?.getTracks().map((tr) => tr.label).sort().join(','));
    await waitFor(page, 'the preview on the chosen devices',
      async () => (await previewLabels()) === 'Fake Audio Input 1,fake_device_2');
    await page.waitForFunction(() => document.querySelector('[data-testid="mic-meter"]').value > 5);
    await screenshot(page, 'prejoin');
    assertNoSeriousViolations(await axeScan(page, 'prejoin'), 'the pre-join screen');

    // Remembered: a new visit opens the chosen devices and shows them selected.
    await page.reload();
    await waitFor(page, 'the remembered devices',
      async () => (await previewLabels()) === 'Fake Audio Input 1,fake_device_2');
    const selected = (kind) => lobby.locator(`select[data-kind="${kind}"]`)
      .evaluate((s) => s.selectedOptions[0]?.textContent);
    assert.equal(await selected('videoinput'), 'fake_device_2');
    assert.equal(await selected('audioinput'), 'Fake Audio Input 1');
    assert.equal(await selected('audiooutput'), 'Fake Audio Output 1');

    // Join with the microphone off: the meeting publishes exactly the preview's devices.
    await page.getByTestId('preview-mic').click();
    await page.getByTestId('name-input').fill('Ada');
    await page.getByTestId('join-button').click();
    await page.waitForFunction(() => window.confab?.state === 'connected' && window.confab.publisher?.connectionState === 'connected');
    const published = await page.evaluate(() => window.confab.localTracks
      .map((x) => `${x.source}:${x.track.label}:${x.track.enabled}`).sort());
    assert.deepEqual(published, ['camera:fake_device_2:true', 'microphone:Fake Audio Input 1:false']);
    await page.waitForFunction(() => window.confab.participant.tracks.some((tr) => tr.source === 'microphone' && tr.muted));
    assert.equal(await page.getByTestId('mic-button').getAttribute('aria-pressed'), 'true');

    // Keyboard: the toolbar's microphone, Space toggles, focus shows; the caret beside it
    // opens the devices popover, Escape closes it and gives the keyboard back.
    await page.getByTestId('mic-button').focus();
    await page.keyboard.press('Tab');
    await page.keyboard.press('Shift+Tab');
    assert.equal(await page.evaluate(() => document.activeElement.dataset.testid), 'mic-button');
    const outline = await page.evaluate(() => getComputedStyle(document.activeElement).outlineStyle);
    assert.equal(outline, 'solid', 'focus is visible');
    await page.keyboard.press('Space');
    assert.equal(await page.getByTestId('mic-button').getAttribute('aria-pressed'), 'false');
    await page.keyboard.press('Tab'); // the devices caret beside the microphone
    assert.equal(await page.evaluate(() => document.activeElement.dataset.testid), 'devices-button');
    await page.keyboard.press('Enter');
    await page.waitForFunction(() => document.querySelector('[data-testid="devices-dialog"]').open
      && document.activeElement.dataset.kind === 'audioinput');
    assertNoSeriousViolations(await axeScan(page, 'devices-dialog'), 'the devices dialog');
    await page.keyboard.press('Escape');
    await page.waitForFunction(() => !document.querySelector('[data-testid="devices-dialog"]').open
      && document.activeElement.dataset.testid === 'devices-button');

    // Phone-sized window: nothing scrolls sideways, the controls stay reachable.
    await page.setViewportSize({ width: 375, height: 700 });
    assert.ok(await fitsWidth(page), 'the meeting fits a phone-sized window');
    assert.ok(await page.getByTestId('leave-button').isVisible());
    await screenshot(page, 'phone-meeting');
    assertNoSeriousViolations(await axeScan(page, 'phone-meeting'), 'the meeting on a phone');
    await page.getByTestId('leave-button').click();
    await page.waitForFunction(() => !document.querySelector('[data-testid="lobby"]').hidden);
    assert.ok(await fitsWidth(page), 'the pre-join screen fits a phone-sized window');
    await screenshot(page, 'phone-prejoin');
    assertCleanConsoles(pages);
  } catch (err) {
    await dumpPages(pages, 'prejoin');
    throw err;
  } finally {
    for (const p of Object.values(pages)) await p.context().close();
  }
});

test('screen share: shown large with the sharer\'s name, to late joiners too; stopped from the page or the browser', async (t) => {
  const server = await startServer({ label: 'share' });
  const pages = {};
  t.after(() => server.stop());
  try {
    pages.Ada = await newParticipantPage(browser);
    pages.Grace = await newParticipantPage(browser);
    const ada = await joinRoom(pages.Ada, server.url, 'demo', 'Ada');
    const grace = await joinRoom(pages.Grace, server.url, 'demo', 'Grace');
    await waitMediaFlowing(pages.Grace, [ada]);
    await waitMediaFlowing(pages.Ada, [grace]);

    // The people panel matches the room, our own entry marked.
    await waitPeople(pages.Grace, {
      [grace]: { name: 'Grace (you)', local: true, microphone: 'on', camera: 'on', screen: 'off' },
      [ada]: { name: 'Ada', local: false, microphone: 'on', camera: 'on', screen: 'off' },
    });
    assert.equal(await pages.Grace.getByTestId('people-count').textContent(), '(2)');
    // Badges measured (upload, network quality) before the picture is taken.
    await pages.Grace.waitForFunction(() => document.querySelector('[data-testid="upload-state"]').dataset.state === 'sending'
      && [...document.querySelectorAll('[data-testid="quality-badge"]')].every((b) => b.dataset.grade !== 'unknown'));
    await screenshot(pages.Grace, 'gallery');
    assertNoSeriousViolations(await axeScan(pages.Grace, 'gallery'), 'the meeting page');

    // Ada shares her screen: Grace sees it large, named, decoding; Ada's camera goes on.
    await pages.Ada.getByTestId('share-button').click();
    await pages.Ada.waitForFunction(() => window.confab.screenSharing
      && document.querySelector('[data-testid="share-button"]').getAttribute('aria-pressed') === 'true');
    const sender = await pages.Ada.evaluate(() => {
      const tr = window.confab.publisher.getTransceivers().find((x) => x.sender.track === window.confab.screenShareTrack);
      return { hint: tr.sender.track.contentHint, priority: tr.sender.getParameters().encodings[0]?.priority };
    });
    assert.deepEqual(sender, { hint: 'detail', priority: 'high' }, 'screen favoured over the camera, tuned for text');
    const stageShows = async (page, ownerId, ownerName) => {
      await page.waitForFunction(
        ({ id, name }) => {
          const stage = document.querySelector('[data-testid="screen-stage"]');
          const video = document.querySelector('[data-testid="screen-video"]');
          const screen = [...window.confab.remoteTracks.values()].find((x) => x.participantId === id && x.source === 'screen');
          return !stage.hidden && stage.dataset.participantId === id
            && document.querySelector('[data-testid="screen-owner"]').textContent.includes(name)
            && screen && video.srcObject?.getVideoTracks()[0] === screen.track && video.videoWidth > 0;
        },
        { id: ownerId, name: ownerName },
      );
    };
    await stageShows(pages.Grace, ada, 'Ada');
    await waitScreenFlowing(pages.Grace, ada);
    await waitMediaFlowing(pages.Grace, [ada], { minFrames: 5, minPackets: 10 });
    await waitPeople(pages.Grace, {
      [grace]: { local: true, screen: 'off' },
      [ada]: { local: false, screen: 'on' },
    });

    // A late joiner gets the share in the large view too.
    pages.Linus = await newParticipantPage(browser);
    const linus = await joinRoom(pages.Linus, server.url, 'demo', 'Linus');
    await stageShows(pages.Linus, ada, 'Ada');
    await waitScreenFlowing(pages.Linus, ada);
    await waitPeople(pages.Linus, {
      [linus]: { name: 'Linus (you)', local: true },
      [ada]: { name: 'Ada', screen: 'on' },
      [grace]: { name: 'Grace', screen: 'off' },
    });
    await screenshot(pages.Linus, 'screen-share');
    await screenshot(pages.Ada, 'screen-share-sharer');
    assertNoSeriousViolations(await axeScan(pages.Ada, 'screen-share-sharer'), 'the page while sharing');

    const stageHidden = (page) => page.waitForFunction(
      () => document.querySelector('[data-testid="screen-stage"]').hidden,
    );
    // Stopped from the page: the stage goes away everywhere; the camera keeps flowing.
    await pages.Ada.getByTestId('stage-stop-share').click();
    await Promise.all([stageHidden(pages.Ada), stageHidden(pages.Grace), stageHidden(pages.Linus)]);
    await waitPeople(pages.Linus, {
      [linus]: { local: true }, [ada]: { screen: 'off' }, [grace]: { screen: 'off' },
    });
    await waitMediaFlowing(pages.Linus, [ada, grace], { minFrames: 5, minPackets: 10 });

    // Shared again, then ended by the browser's own control (the capture track ends).
    await pages.Ada.getByTestId('share-button').click();
    await stageShows(pages.Grace, ada, 'Ada');
    await waitScreenFlowing(pages.Grace, ada);
    await pages.Ada.evaluate(() => {
      const track = window.confab.screenShareTrack;
      track.stop(); // what the browser does, and it then fires `ended`
      track.dispatchEvent(new Event('ended'));
    });
    await Promise.all([stageHidden(pages.Ada), stageHidden(pages.Grace), stageHidden(pages.Linus)]);
    assert.equal(await pages.Ada.getByTestId('share-button').getAttribute('aria-pressed'), 'false');
    await waitPeople(pages.Grace, { [grace]: { screen: 'off' }, [ada]: { screen: 'off' }, [linus]: { screen: 'off' } });
    assertCleanConsoles(pages);
  } catch (err) {
    await dumpPages(pages, 'share');
    console.error(`server log: ${server.logPath}`);
    throw err;
  } finally {
    for (const p of Object.values(pages)) await p.context().close();
  }
});

test('devices switched mid-call: the others keep receiving, mute is kept; speaker output; speaking; quality', async (t) => {
  const server = await startServer({ label: 'switch' });
  const pages = {};
  t.after(() => server.stop());
  try {
    pages.Ada = await newParticipantPage(browser);
    pages.Grace = await newParticipantPage(browser);
    const publishes = [];
    pages.Ada.on('websocket', (ws) => ws.on('framesent', (f) => {
      if (typeof f.payload === 'string' && f.payload.includes('"type":"publish"')) publishes.push(Date.now());
    }));
    const ada = await joinRoom(pages.Ada, server.url, 'switch', 'Ada');
    const grace = await joinRoom(pages.Grace, server.url, 'switch', 'Grace');
    const { last: before } = await waitMediaFlowing(pages.Grace, [ada]);

    // Who is speaking: the fake microphone beeps, Grace sees Ada speaking (panel and tile).
    await pages.Grace.waitForFunction((id) =>
      document.querySelector(`[data-testid="participant"][data-participant-id="${id}"]`)?.dataset.speaking === 'true'
      && document.querySelector(`[data-testid="remote-tile"][data-participant-id="${id}"]`)?.dataset.speaking === 'true', ada);

    // Quality: a badge per remote participant, our own upload state.
    await pages.Grace.waitForFunction((id) => {
      const b = document.querySelector(`[data-testid="remote-tile"][data-participant-id="${id}"] [data-testid="quality-badge"]`);
      // The width of the simulcast layer the server picked for the tile's size.
      return b?.dataset.grade === 'good' && ['320', '640', '1280'].includes(b.dataset.width) && Number(b.dataset.fps) > 0;
    }, ada);
    await pages.Ada.waitForFunction(() => {
      const b = document.querySelector('[data-testid="upload-state"]');
      return b.dataset.state === 'sending' && Number(b.dataset.kbps) > 0;
    });

    // Ada mutes her microphone, then switches both devices in the devices dialog.
    await pages.Ada.getByTestId('mic-button').click();
    await pages.Grace.waitForFunction((id) => document.querySelector(
      `[data-testid="participant"][data-participant-id="${id}"]`)?.dataset.microphone === 'off', ada);
    const publishesBefore = publishes.length;
    await pages.Ada.getByTestId('devices-button').click();
    const dialog = pages.Ada.getByTestId('meeting-devices');
    await dialog.locator('select[data-kind="videoinput"]').selectOption({ label: 'fake_device_2' });
    await pages.Ada.waitForFunction(() => window.confab.localTrack('camera')?.label === 'fake_device_2');
    await dialog.locator('select[data-kind="audioinput"]').selectOption({ label: 'Fake Audio Input 2' });
    await pages.Ada.waitForFunction(() => window.confab.localTrack('microphone')?.label === 'Fake Audio Input 2');
    await pages.Ada.getByTestId('devices-close').click();

    // (The screen share's transceiver is reserved, idle, beside a simulcast camera.)
    const ownSenders = await pages.Ada.evaluate(() => window.confab.publisher.getTransceivers()
      .filter((x) => x.sender.track)
      .map((x) => `${x.sender.track.label}:${x.sender.track.enabled}`).sort());
    assert.deepEqual(ownSenders, ['Fake Audio Input 2:false', 'fake_device_2:true'], 'same senders, new tracks, mute kept');
    assert.equal(publishes.length, publishesBefore, 'switching devices does not renegotiate');
    // Grace keeps receiving on the same transceivers; Ada is still muted for everyone.
    const { last: after } = await waitMediaFlowing(pages.Grace, [ada]);
    assert.equal(after[ada].videoMid, before[ada].videoMid);
    assert.equal(after[ada].audioMid, before[ada].audioMid);
    assert.ok(after[ada].framesDecoded > before[ada].framesDecoded);
    const adaOnGrace = (await peoplePanel(pages.Grace)).find((p) => p.id === ada);
    assert.equal(adaOnGrace.microphone, 'off');
    assert.equal(await pages.Ada.getByTestId('mic-button').getAttribute('aria-pressed'), 'true');

    // Grace picks another speaker: remote audio plays there.
    await pages.Grace.getByTestId('devices-button').click();
    const speaker = pages.Grace.getByTestId('meeting-devices').locator('select[data-kind="audiooutput"]');
    await speaker.selectOption({ label: 'Fake Audio Output 2' });
    const sinkWanted = await speaker.inputValue();
    await pages.Grace.waitForFunction((sink) => {
      const audios = [...document.querySelectorAll('[data-testid="remote-audio"]')];
      return audios.length > 0 && audios.every((a) => a.sinkId === sink);
    }, sinkWanted);
    await pages.Grace.keyboard.press('Escape');
    await screenshot(pages.Grace, 'devices-switched-Grace');
    assertCleanConsoles(pages);
  } catch (err) {
    await dumpPages(pages, 'switch');
    console.error(`server log: ${server.logPath}`);
    throw err;
  } finally {
    for (const p of Object.values(pages)) await p.context().close();
  }
});

test('audio-only and listen-only participants join and chat; their tiles show names; the connection banner', async (t) => {
  const server = await startServer({ label: 'audio-only' });
  const pages = {};
  t.after(() => server.stop());
  try {
    pages.Ada = await newParticipantPage(browser);
    pages.Bob = await newParticipantPage(browser, { noCamera: true });
    pages.Carol = await newParticipantPage(browser, { noDevices: true });
    const ada = await joinRoom(pages.Ada, server.url, 'radio', 'Ada');
    const bob = await joinRoom(pages.Bob, server.url, 'radio', 'Bob');
    const carol = await joinRoom(pages.Carol, server.url, 'radio', 'Carol');

    await waitPeople(pages.Ada, {
      [ada]: { name: 'Ada (you)', local: true, microphone: 'on', camera: 'on' },
      [bob]: { name: 'Bob', local: false, microphone: 'on', camera: 'none' },
      [carol]: { name: 'Carol', local: false, microphone: 'none', camera: 'none' },
    });
    await waitPeople(pages.Carol, {
      [carol]: { name: 'Carol (you)', local: true, microphone: 'none', camera: 'none' },
      [ada]: { microphone: 'on', camera: 'on' },
      [bob]: { microphone: 'on', camera: 'none' },
    });
    await waitRemoteTiles(pages.Ada, [bob, carol]);
    // Names, not black video.
    const tileOf = (page, id) => page.evaluate((pid) => {
      const el = document.querySelector(`[data-testid="remote-tile"][data-participant-id="${pid}"]`);
      const placeholder = el.querySelector('.tile-placeholder');
      return {
        name: el.querySelector('[data-testid="tile-name"]').textContent,
        video: el.dataset.video,
        initials: placeholder.textContent,
        placeholderShown: getComputedStyle(placeholder).display !== 'none',
      };
    }, id);
    assert.deepEqual(await tileOf(pages.Ada, bob), { name: 'Bob', video: 'off', initials: 'B', placeholderShown: true });
    assert.deepEqual(await tileOf(pages.Ada, carol), { name: 'Carol', video: 'off', initials: 'C', placeholderShown: true });
    // Bob is heard; Carol receives everyone although she sends nothing.
    await waitFor(pages.Ada, 'audio from Bob', async () => {
      const s = (await inboundByParticipant(pages.Ada))[bob];
      return s?.audioPackets > 50;
    });
    await waitMediaFlowing(pages.Carol, [ada]);
    await waitFor(pages.Carol, 'audio from Bob', async () => (await inboundByParticipant(pages.Carol))[bob]?.audioPackets > 50);
    assert.equal(await pages.Carol.evaluate(() => window.confab.publisher), null);
    await pages.Carol.waitForFunction(() => document.querySelector('[data-testid="upload-state"]').dataset.state === 'none');
    await pages.Bob.waitForFunction(() => document.querySelector('[data-testid="upload-state"]').dataset.state === 'sending');
    assert.equal(await pages.Bob.getByTestId('cam-button').isDisabled(), true, 'no camera to turn on');

    await typeChat(pages.Bob, 'audio only here');
    await typeChat(pages.Carol, 'just listening');
    for (const n of ['Ada', 'Bob', 'Carol']) {
      await waitChat(pages[n], 'audio only here');
      await waitChat(pages[n], 'just listening');
    }
    await screenshot(pages.Ada, 'audio-only-gallery');

    // The connection drops (the socket closes under Bob) and comes back: a clear banner.
    await pages.Bob.evaluate(() => window.confab._ws.close());
    await pages.Bob.waitForFunction(() => {
      const b = document.querySelector('[data-testid="connection-banner"]');
      return !b.hidden && b.dataset.kind === 'lost' && /reconnecting/i.test(b.textContent);
    });
    await screenshot(pages.Bob, 'banner-lost');
    await pages.Bob.waitForFunction(() => {
      const b = document.querySelector('[data-testid="connection-banner"]');
      return !b.hidden && b.dataset.kind === 'back' && window.confab.state === 'connected';
    });
    const bob2 = await pages.Bob.evaluate(() => window.confab.participantId);
    await waitPeople(pages.Ada, {
      [ada]: { local: true }, [bob2]: { name: 'Bob', camera: 'none' }, [carol]: { name: 'Carol' },
    });
    // Bob leaves: two of them left, Ada's own tile floats in a corner of the stage.
    await pages.Bob.getByTestId('leave-button').click();
    await waitRemoteTiles(pages.Ada, [carol]);
    await pages.Ada.waitForFunction(() => document.querySelector('[data-testid="local-tile"]').dataset.float === 'true');
    assertCleanConsoles(pages);
  } catch (err) {
    await dumpPages(pages, 'audio-only');
    console.error(`server log: ${server.logPath}`);
    throw err;
  } finally {
    for (const p of Object.values(pages)) await p.context().close();
  }
});
