// Network quality from the peer connections' getStats(): per remote participant what we
// receive (loss, jitter, resolution, frame rate), and what we send (our upload).
//
//   const monitor = new QualityMonitor(client);   // a ConfabClient
//   monitor.addEventListener('update', (e) => { e.detail.remote; e.detail.local; });
//   monitor.start();  ...  monitor.stop();
//
// remote: Map participantId -> {grade, lossPct, jitterMs, width, height, fps, audioOnly}
// local:  {state, kbps, width, height, fps, limitedBy, screen}   state: none | connecting | sending | stalled
//         width, height, fps: the camera's; screen: {width, height, fps} while sharing
// grade:  good | fair | poor | unknown (nothing measured yet)
//
// Loss and jitter are deltas between two samples, so a loss burst long ago does not colour
// the badge forever.

const GRADES = [
  // [grade, max loss %, max jitter ms]
  ['good', 2, 30],
  ['fair', 8, 80],
];

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
    this.dispatchEvent(new CustomEvent('update', { detail: { remote, local } }));
  }

  async _inbound() {
    const out = new Map();
    const pc = this.client.subscriber;
    if (!pc) return out;
    const byMid = new Map([...this.client.remoteTracks.values()].map((t) => [t.mid, t]));
    const stats = await pc.getStats();
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
      else Object.assign(local, size);
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
