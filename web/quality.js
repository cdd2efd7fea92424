// Network quality from the peer connections' getStats(): per remote participant what we
// receive (loss, jitter, resolution, frame rate), and what we send (our upload).
//
//   const monitor = new QualityMonitor(client);   // a ConfabClient
//   monitor.addEventListener('update', (e) => { e.detail.remote; e.detail.local; });
//   monitor.start();  ...  monitor.stop();
//   renderBadges(e.detail, tiles, uploadBadge);   the meeting page's signal-bars badges
//   toggleDetail(badge);                          a badge's details (developer detail) open or shut
//
// remote: Map participantId -> {grade, lossPct, jitterMs, width, height, fps, audioOnly,
//         layer, layers}   layer: what the server forwards of their camera (0 lowest, null none)
// local:  {state, kbps, width, height, fps, limitedBy, screen}   state: none | connecting | sending | stalled
//         width, height, fps: the camera's (its largest simulcast layer being sent);
//         screen: {width, height, fps} while sharing
// grade:  good | fair | poor | unknown (nothing measured yet)
//
// path:   {subscriber, publisher}: how each connection reaches the server, from its
//         selected candidate pair: UDP | TCP | TURN/UDP | TURN/TCP | TURN/TLS (null: not yet)
//
// downlink: the server's last `downlink` ({estimateBps, signal, tracks}), or null
//
// Loss and jitter are deltas between two samples, so a loss burst long ago does not colour
// the badge forever.

const GRADES = [
  // [grade, max loss %, max jitter ms]
  ['good', 2, 30],
  ['fair', 8, 80],
];

/**
 * How a connection reaches the server, from a getStats() report: its selected candidate
 * pair's local candidate (a relayed one is TURN, over the protocol to the TURN server).
 */
export function pathOf(stats) {
  let pair = null;
  stats.forEach((s) => {
    if (s.type === 'transport' && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId);
  });
  if (!pair) {
    stats.forEach((s) => {
      if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') pair = s;
    });
  }
  const local = pair ? stats.get(pair.localCandidateId) : null;
  if (!local) return null;
  if (local.candidateType === 'relay') return `TURN/${(local.relayProtocol ?? 'udp').toUpperCase()}`;
  return (local.protocol ?? 'udp').toUpperCase();
}

/** Grade of a remote participant's reception, from loss and jitter. */
export function gradeOf(lossPct, jitterMs) {
  if (lossPct == null) return 'unknown';
  for (const [grade, loss, jitter] of GRADES) {
    if (lossPct <= loss && (jitterMs ?? 0) <= jitter) return grade;
  }
  return 'poor';
}

export class QualityMonitor extends EventTarget {
  constructor(client, { intervalMs = 2000 } = {}) {
    super();
    this.client = client;
    this.intervalMs = intervalMs;
    this._timer = null;
    this._prevIn = new Map(); // ssrc -> {packetsLost, packetsReceived}
    this._prevOut = null; // {bytes, ts, pc}
    this.remote = new Map();
    this.local = { state: 'none' };
    this.path = { subscriber: null, publisher: null };
  }

  start() {
    if (this._timer) return;
    const tick = () => this.sample().catch((err) => console.warn('quality: getStats failed', err));
    this._timer = setInterval(tick, this.intervalMs);
    tick();
  }

  stop() {
    clearInterval(this._timer);
    this._timer = null;
    this._prevIn.clear();
    this._prevOut = null;
  }

  async sample() {
    const [remote, local] = await Promise.all([this._inbound(), this._outbound()]);
    this.remote = remote;
    this.local = local;
    const path = this.path;
    const downlink = this.client.downlink ?? null;
    this.dispatchEvent(new CustomEvent('update', { detail: { remote, local, path, downlink } }));
  }

  async _inbound() {
    const out = new Map();
    const pc = this.client.subscriber;
    if (!pc) return out;
    const byMid = new Map([...this.client.remoteTracks.values()].map((t) => [t.mid, t]));
    const stats = await pc.getStats();
    this.path.subscriber = pathOf(stats);
    const seen = new Set();
    stats.forEach((s) => {
      if (s.type !== 'inbound-rtp' || s.mid == null) return;
      const t = byMid.get(s.mid);
      if (!t) return;
      seen.add(s.ssrc);
      const q = out.get(t.participantId) ?? { lost: 0, received: 0, jitterMs: null, audioOnly: true };
      out.set(t.participantId, q);
      const prev = this._prevIn.get(s.ssrc);
      this._prevIn.set(s.ssrc, { packetsLost: s.packetsLost ?? 0, packetsReceived: s.packetsReceived ?? 0 });
      if (prev) {
        q.lost += Math.max(0, (s.packetsLost ?? 0) - prev.packetsLost);
        q.received += Math.max(0, (s.packetsReceived ?? 0) - prev.packetsReceived);
      }
      if (s.jitter != null) q.jitterMs = Math.max(q.jitterMs ?? 0, s.jitter * 1000);
      // The camera's resolution, not the screen share's (which has a view of its own).
      if (s.kind === 'video' && t.source !== 'screen') {
        const sent = this.client.downlink?.tracks.find((d) => d.trackId === t.trackId);
        if (sent) {
          q.layer = sent.layer;
          q.layers = sent.layers;
        }
        q.audioOnly = false;
        q.width = s.frameWidth;
        q.height = s.frameHeight;
        q.fps = s.framesPerSecond;
      }
    });
    for (const ssrc of this._prevIn.keys()) if (!seen.has(ssrc)) this._prevIn.delete(ssrc);
    for (const q of out.values()) {
      const total = q.lost + q.received;
      q.lossPct = total > 0 ? (100 * q.lost) / total : null;
      q.grade = gradeOf(q.lossPct, q.jitterMs);
      delete q.lost;
      delete q.received;
    }
    return out;
  }

  async _outbound() {
    const pc = this.client.publisher;
    if (!pc) {
      this._prevOut = null;
      return { state: this.client.localTracks.length ? 'connecting' : 'none' };
    }
    const stats = await pc.getStats();
    this.path.publisher = pathOf(stats);
    // outbound-rtp -> media-source -> track: tells the camera from the screen.
    const sourceOfTrack = new Map(this.client.localTracks.map((t) => [t.track.id, t.source]));
    let bytes = 0;
    let ts = 0;
    const local = { state: 'connecting' };
    stats.forEach((s) => {
      if (s.type !== 'outbound-rtp') return;
      bytes += s.bytesSent ?? 0;
      ts = Math.max(ts, s.timestamp);
      if (s.kind !== 'video' || !s.frameWidth) return;
      const media = s.mediaSourceId ? stats.get(s.mediaSourceId) : null;
      const size = { width: s.frameWidth, height: s.frameHeight, fps: s.framesPerSecond };
      if (sourceOfTrack.get(media?.trackIdentifier) === 'screen') local.screen = size;
      // A simulcast camera has one outbound-rtp per layer: the largest one sending counts
      // (a paused layer keeps its last frameWidth but is not `active`).
      else if (s.active !== false && !(local.width >= size.width)) Object.assign(local, size);
      if (s.qualityLimitationReason && s.qualityLimitationReason !== 'none') {
        local.limitedBy = s.qualityLimitationReason;
      }
    });
    const prev = this._prevOut?.pc === pc ? this._prevOut : null;
    this._prevOut = { bytes, ts, pc };
    if (pc.connectionState !== 'connected') {
      local.state = pc.connectionState === 'failed' || pc.connectionState === 'disconnected' ? 'stalled' : 'connecting';
      return local;
    }
    if (bytes === 0) return local; // connected, media not started yet
    if (!prev || ts <= prev.ts) return { ...local, state: 'sending' };
    local.kbps = Math.round(((bytes - prev.bytes) * 8) / (ts - prev.ts));
    local.state = local.kbps > 0 ? 'sending' : 'stalled';
    return local;
  }
}

const GRADE_TEXT = { good: 'Good', fair: 'Fair', poor: 'Poor', unknown: 'Measuring…' };
const STATE_TEXT = { none: 'Listen-only', connecting: 'Connecting…', stalled: 'Upload stalled', sending: 'Good' };

const SIGNAL_TEXT = { initial: 'not measured yet', loss: 'from loss', delay: 'from delay and loss' };

/**
 * The signal-bars badges: one per remote tile (`tiles`: participant id -> {el, info}) and
 * our upload's (`uploadBadge`), from a QualityMonitor `update`. A badge says only good, fair
 * or poor (its bars and its accessible name); the numbers (resolution, loss, jitter, layer,
 * path, the server's estimate) are its `data-detail`, shown when the badge is clicked.
 */
export function renderBadges({ remote, local, path = {}, downlink = null }, tiles, uploadBadge) {
  for (const [id, t] of tiles) {
    const q = remote.get(id);
    const badge = t.el.querySelector('[data-testid="quality-badge"]');
    if (!q && t.info && t.info.tracks.length === 0) {
      // Listen-only: nothing to measure, nothing to worry about.
      badge.dataset.grade = 'none';
      setDetail(badge, 'Listen-only: sends no audio or video.');
      badge.setAttribute('aria-label', 'Connection: listen-only');
      continue;
    }
    const grade = q?.grade ?? 'unknown';
    const parts = [GRADE_TEXT[grade]];
    if (q?.width) parts.push(`${q.width}×${q.height}`);
    if (q?.fps != null && !q.audioOnly) parts.push(`${Math.round(q.fps)} fps`);
    if (q?.audioOnly) parts.push('audio');
    badge.dataset.grade = grade;
    badge.dataset.width = q?.width ?? '';
    badge.dataset.fps = q?.fps != null ? String(Math.round(q.fps)) : '';
    const via = path.subscriber ? ` Received over ${path.subscriber}.` : '';
    const layer = q?.layers > 1
      ? ` The server sends ${q.layer == null ? 'no layer now' : `layer ${q.layer + 1} of ${q.layers}`}.`
      : '';
    badge.dataset.layer = q?.layer ?? '';
    const network = q?.lossPct != null
      ? `Network: ${GRADE_TEXT[grade]}. Loss ${q.lossPct.toFixed(1)} %, jitter ${Math.round(q.jitterMs ?? 0)} ms.`
      : 'Network quality: measuring.';
    setDetail(badge, `${parts.join(' · ')}. ${network}${via}${layer}`);
    badge.setAttribute('aria-label', `Connection: ${GRADE_TEXT[grade].replace('…', '')}. Details`);
  }
  const b = uploadBadge;
  b.dataset.state = local.state;
  let summary;
  if (local.state === 'none') summary = 'Listen-only';
  else if (local.state === 'connecting') summary = 'Connecting…';
  else if (local.state === 'stalled') summary = 'Upload stalled';
  else {
    const parts = ['Sending'];
    if (local.width) parts.push(`${local.width}×${local.height}`);
    if (local.fps != null) parts.push(`${Math.round(local.fps)} fps`);
    if (local.screen) parts.push(`screen ${local.screen.width}×${local.screen.height}`);
    if (local.kbps != null) parts.push(`${local.kbps} kb/s`);
    if (path.publisher) parts.push(`via ${path.publisher}`);
    summary = parts.join(' · ');
  }
  const paths = [['Sending', path.publisher], ['receiving', path.subscriber]]
    .filter(([, p]) => p).map(([what, p]) => `${what} over ${p}`).join(', ');
  const down = downlink
    ? `The server estimates your download at ${(downlink.estimateBps / 1e6).toFixed(1)} Mb/s (${SIGNAL_TEXT[downlink.signal] ?? downlink.signal})`
    : null;
  const title = [local.limitedBy ? `Upload limited by ${local.limitedBy}` : 'Your upload', paths, down]
    .filter(Boolean).join('. ');
  setDetail(b, `${summary}. ${title}.`);
  b.setAttribute('aria-label', `Your connection: ${STATE_TEXT[local.state] ?? local.state}. Details`);
  b.dataset.downlinkBps = downlink?.estimateBps ?? '';
  b.dataset.downlinkSignal = downlink?.signal ?? '';
  b.dataset.kbps = local.kbps ?? '';
  b.dataset.path = path.publisher ?? '';
  b.dataset.receivePath = path.subscriber ?? '';
}

/** The badge's details, also in its tile's open details panel. */
function setDetail(badge, text) {
  badge.dataset.detail = text;
  const panel = badge.closest('.tile')?.querySelector('.signal-detail');
  if (panel && !panel.hidden && panel.textContent !== text) panel.textContent = text;
}

/** Opens or closes the details of a signal badge (a click on it). */
export function toggleDetail(badge, open = badge.getAttribute('aria-expanded') !== 'true') {
  const panel = badge.closest('.tile')?.querySelector('.signal-detail');
  if (!panel) return;
  badge.setAttribute('aria-expanded', String(open));
  panel.hidden = !open;
  if (open) panel.textContent = badge.dataset.detail || 'Measuring…';
}
