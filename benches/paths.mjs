// Time to first frame over each network path (issue 16), in real Chromium on loopback:
// UDP, ICE-TCP (a browser that may not use UDP), TURN/UDP and TURN/TCP (relay-only pages
// through a local coturn with Confab-minted credentials).
//
//   CONFAB_BIN=target/release/confab node benches/paths.mjs [runs]    (default 5 runs)
//
// Per run: Grace (a normal page) is in the room and sending; Ada joins over the path
// measured; the time is from Ada's click on Join to the first video frame of Grace's that
// Ada's subscriber connection decodes (getStats polled every 20 ms). Prints each path's
// runs and median. Needs what tests/browser/run.sh installs, and coturn's turnserver.

import { startCoturn } from '../tests/browser/services.mjs';
import {
  startServer, launchBrowser, newParticipantPage, joinRoom, startJoin, inboundByParticipant,
  waitMediaFlowing,
} from '../tests/browser/harness.mjs';

const RUNS = Number(process.argv[2] ?? 5);
const SECRET = 'paths-bench-secret-0123456789';

/** ms from Ada's Join click to her first decoded frame of `from`'s video. */
async function firstFrame(browser, url, room, from, query) {
  const page = await newParticipantPage(browser);
  try {
    const t0 = Date.now();
    await startJoin(page, url, room, 'Ada', query);
    for (;;) {
      const got = await inboundByParticipant(page).catch(() => ({}));
      if (got[from]?.framesDecoded > 0) return Date.now() - t0;
      if (Date.now() - t0 > 30_000) throw new Error(`no frame within 30 s (${query || 'udp'})`);
      await page.waitForTimeout(20); // polling interval of a measurement
    }
  } finally {
    await page.context().close();
  }
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

const turn = await startCoturn(SECRET);
const server = await startServer({
  label: 'bench-paths',
  env: {
    CONFAB_TURN__URLS: `["turn:127.0.0.1:${turn.port}?transport=udp", "turn:127.0.0.1:${turn.port}?transport=tcp"]`,
    CONFAB_TURN__SECRET: SECRET,
    RUST_LOG: 'confab=warn',
  },
});
const browser = await launchBrowser();
const noUdp = await launchBrowser(['--webrtc-ip-handling-policy=disable_non_proxied_udp']);
const results = {};
try {
  const grace = await newParticipantPage(browser);
  const graceId = await joinRoom(grace, server.url, 'paths', 'Grace');
  // Warm-up: the first join of a fresh server pays for its own first handshakes.
  const warm = await newParticipantPage(browser);
  await joinRoom(warm, server.url, 'paths', 'Warm');
  await waitMediaFlowing(warm, [graceId]);
  await warm.context().close();
  const paths = [
    ['UDP', browser, ''],
    ['ICE-TCP', noUdp, ''],
    // Relay-only; TURN/TCP from the browser that may not use UDP (its only TURN path).
    ['TURN/UDP', browser, '?relay'],
    ['TURN/TCP', noUdp, '?relay'],
  ];
  for (let run = 0; run < RUNS; run++) {
    for (const [name, b, query] of paths) {
      const ms = await firstFrame(b, server.url, 'paths', graceId, query);
      (results[name] ??= []).push(ms);
    }
  }
} finally {
  await noUdp.close();
  await browser.close();
  await server.stop();
  await turn.stop();
}
for (const [name, runs] of Object.entries(results)) {
  console.log(`${name.padEnd(9)} first frame median ${median(runs)} ms  (runs: ${runs.join(', ')})`);
}
