// The connection check page (/check, linked from the pre-join screen): whether a meeting on
// this server can work from this browser and network. Each media path is tried on its own
// connection: UDP and TCP to the server's host candidates (the other kind is taken out of
// the server's offer), and TURN (relayed candidates only, with the credentials the server
// mints), plus the camera and microphone; then a verdict in plain words.
//
// Each path is a `join` with `check: true` (docs/protocol.md): the server checks the token
// as for the meeting's room but puts the connection in a room of its own, hidden and
// receive-only, so nobody in the meeting sees the check.

import { PROTOCOL_VERSION } from './confab-session.js';

const PATH_TIMEOUT_MS = 8000;
const WS_TIMEOUT_MS = 5000;

const params = new URLSearchParams(location.search);
const token = params.get('token') || undefined;
// The room the token is for (a check with a room token is refused for any other room).
const room = params.get('room') || 'check';

function wsUrl() {
  const u = new URL('/ws', location.href);
  u.protocol = u.protocol === 'https:' ? 'wss:' : 'ws:';
  return u.href;
}

function row(name) {
  return document.querySelector(`[data-testid="check-${name}"]`);
}

/** status: pending | running | ok | fail | none (not available here, not a failure). */
function show(name, status, detail) {
  const el = row(name);
  el.dataset.status = status;
  const label = { pending: 'Waiting', running: 'Checking', ok: 'OK', fail: 'Failed', none: 'Not available' }[status];
  el.querySelector('.check-detail').textContent = detail ? `${label}: ${detail}` : `${label}…`;
}

function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`${what} within ${ms / 1000} s`)), ms); }),
  ]).finally(() => clearTimeout(timer));
}

/**
 * A check session: a WebSocket that joins with `check: true`. Resolves with the socket,
 * the `joined` message, how long the socket took to open and the join's round trip, and
 * `next(type)`, a promise of the next message of that type.
 */
async function openSession() {
  const started = performance.now();
  const ws = new WebSocket(wsUrl());
  const waiting = new Map(); // type -> resolve
  const inbox = [];
  let failed = null;
  ws.onmessage = (ev) => {
    let msg;
    try { msg = JSON.parse(ev.data); } catch { return; }
    const w = waiting.get(msg.type) ?? (msg.type === 'error' && msg.fatal ? waiting.get('joined') : null);
    if (w) {
      waiting.delete(msg.type);
      w(msg);
    } else inbox.push(msg);
  };
  const next = (type) => {
    const i = inbox.findIndex((m) => m.type === type);
    if (i >= 0) return Promise.resolve(inbox.splice(i, 1)[0]);
    if (failed) return Promise.reject(failed);
    return new Promise((resolve) => waiting.set(type, resolve));
  };
  await withTimeout(new Promise((resolve, reject) => {
    ws.onopen = resolve;
    ws.onerror = () => reject(new Error('the WebSocket could not be opened'));
    ws.onclose = () => reject(new Error('the WebSocket closed'));
  }), WS_TIMEOUT_MS, 'the WebSocket did not open');
  ws.onclose = () => { failed = new Error('the server closed the connection'); };
  const opened = performance.now();
  const join = { type: 'join', protocol: PROTOCOL_VERSION, room, name: 'Connection check', check: true, request_id: 1 };
  if (token) join.token = token;
  ws.send(JSON.stringify(join));
  const joined = await withTimeout(next('joined'), WS_TIMEOUT_MS, 'no answer to the join');
  if (joined.type === 'error') {
    ws.close();
    throw new Error(joined.message);
  }
  return { ws, joined, openMs: opened - started, joinMs: performance.now() - opened, next };
}

function closeSession(s, pc) {
  try { s?.ws.send(JSON.stringify({ type: 'leave' })); } catch { /* closed */ }
  s?.ws.close();
  pc?.close();
}

/** The server's offer with only the candidates of `transport` (udp | tcp); null if none. */
function onlyCandidates(sdp, transport) {
  let kept = 0;
  const lines = sdp.split('\r\n').filter((l) => {
    if (!l.startsWith('a=candidate:')) return true;
    const keep = l.split(' ')[2]?.toLowerCase() === transport;
    if (keep) kept += 1;
    return keep;
  });
  return kept > 0 ? lines.join('\r\n') : null;
}

async function selectedPair(pc) {
  const stats = await pc.getStats();
  let pair = null;
  stats.forEach((s) => {
    if (s.type === 'transport' && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId);
  });
  if (!pair) return null;
  return { pair, local: stats.get(pair.localCandidateId) };
}

/** Tries one media path: udp | tcp | turn. Resolves {status, detail, rttMs}. */
async function tryPath(kind) {
  let s;
  let pc;
  try {
    s = await openSession();
    const iceServers = s.joined.ice_servers ?? [];
    if (kind === 'turn' && iceServers.length === 0) {
      return { status: 'none', detail: 'this server has no TURN server configured' };
    }
    pc = new RTCPeerConnection({
      bundlePolicy: 'max-bundle',
      iceServers: kind === 'turn' ? iceServers : [],
      iceTransportPolicy: kind === 'turn' ? 'relay' : 'all',
    });
    const offer = await withTimeout(s.next('offer'), WS_TIMEOUT_MS, 'no offer from the server');
    const sdp = kind === 'turn' ? offer.sdp : onlyCandidates(offer.sdp, kind);
    if (!sdp) return { status: 'none', detail: `this server offers no ${kind.toUpperCase()} path` };
    const started = performance.now();
    await pc.setRemoteDescription({ type: 'offer', sdp });
    await pc.setLocalDescription(await pc.createAnswer());
    s.ws.send(JSON.stringify({ type: 'answer', sdp: pc.localDescription.sdp }));
    await withTimeout(new Promise((resolve, reject) => {
      const seen = () => {
        if (pc.connectionState === 'connected') resolve();
        else if (pc.connectionState === 'failed') reject(new Error('no connection'));
      };
      pc.onconnectionstatechange = seen;
      seen();
    }), PATH_TIMEOUT_MS, 'no connection');
    const connectMs = performance.now() - started;
    const sel = await selectedPair(pc);
    const rttMs = sel?.pair.currentRoundTripTime != null ? sel.pair.currentRoundTripTime * 1000 : null;
    const via = kind === 'turn' && sel?.local?.relayProtocol ? ` (to the TURN server over ${sel.local.relayProtocol.toUpperCase()})` : '';
    const rtt = rttMs != null ? `, round trip ${rttMs.toFixed(0)} ms` : '';
    return { status: 'ok', detail: `connected in ${connectMs.toFixed(0)} ms${rtt}${via}`, rttMs };
  } catch (err) {
    return { status: 'fail', detail: err.message };
  } finally {
    closeSession(s, pc);
  }
}

async function checkSignaling() {
  let s;
  try {
    s = await openSession();
    return { status: 'ok', detail: `reached in ${s.openMs.toFixed(0)} ms, join answered in ${s.joinMs.toFixed(0)} ms` };
  } catch (err) {
    return { status: 'fail', detail: err.message };
  } finally {
    closeSession(s);
  }
}

const DEVICE_ERRORS = {
  NotAllowedError: 'the browser was not allowed to use it (see the site settings)',
  NotFoundError: 'none found',
  NotReadableError: 'another application is using it',
  OverconstrainedError: 'none suits',
};

async function checkDevice(kind) {
  if (!navigator.mediaDevices?.getUserMedia) return { status: 'fail', detail: 'this browser cannot use devices here (an https page is needed)' };
  try {
    const stream = await navigator.mediaDevices.getUserMedia(kind === 'camera' ? { video: true } : { audio: true });
    const track = stream.getTracks()[0];
    const settings = track.getSettings();
    const size = kind === 'camera' && settings.width ? ` at ${settings.width}×${settings.height}` : '';
    const detail = `${track.label || 'works'}${size}`;
    stream.getTracks().forEach((t) => t.stop());
    return { status: 'ok', detail };
  } catch (err) {
    return { status: 'fail', detail: DEVICE_ERRORS[err.name] ?? err.message };
  }
}

/** The verdict in plain words, from the results. */
export function verdict(r) {
  const parts = [];
  if (r.ws.status !== 'ok') {
    parts.push('This server cannot be reached from here: a proxy or firewall may block WebSockets. Try another network.');
  } else if (r.udp.status === 'ok') {
    parts.push('Your network is fine for meetings: media goes over UDP, the best path.');
  } else if (r.tcp.status === 'ok') {
    parts.push('UDP is blocked on your network; Confab will use TCP, which may add delay.');
  } else if (r.turn.status === 'ok') {
    parts.push('Direct paths to this server are blocked on your network; Confab will relay your media through the TURN server, which may add delay.');
  } else {
    parts.push('No media path to this server works from your network: you could join and chat, but without sound or video. Ask your network administrator to allow UDP or TCP to this server, or the server\'s operator to set up TURN.');
  }
  const missing = ['camera', 'microphone'].filter((d) => r[d].status !== 'ok');
  if (missing.length > 0 && r.ws.status === 'ok') {
    parts.push(`Your ${missing.join(' and ')} ${missing.length > 1 ? 'are' : 'is'} not available; you can still join to listen and chat.`);
  }
  return parts.join(' ');
}

async function run() {
  const state = document.querySelector('[data-testid="check-state"]');
  const again = document.getElementById('check-again');
  again.disabled = true;
  state.dataset.state = 'connecting';
  state.textContent = 'Checking…';
  document.querySelector('[data-testid="check-verdict"]').textContent = '';
  const names = ['ws', 'udp', 'tcp', 'turn', 'camera', 'microphone'];
  for (const n of names) show(n, 'running');
  const jobs = {
    ws: checkSignaling(),
    udp: tryPath('udp'),
    tcp: tryPath('tcp'),
    turn: tryPath('turn'),
    camera: checkDevice('camera'),
    microphone: checkDevice('microphone'),
  };
  const results = {};
  await Promise.all(names.map(async (n) => {
    results[n] = await jobs[n];
    show(n, results[n].status, results[n].detail);
  }));
  document.querySelector('[data-testid="check-verdict"]').textContent = verdict(results);
  state.dataset.state = 'connected';
  state.textContent = 'Check complete';
  document.body.dataset.checked = 'true';
  again.disabled = false;
}

document.getElementById('check-again').addEventListener('click', run);
// Back to the page this check was opened from (its room and token), else the start page.
const back = params.get('back');
if (back && back.startsWith('/') && !back.startsWith('//')) document.getElementById('check-back').href = back;
run();
