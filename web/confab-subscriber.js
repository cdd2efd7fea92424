// The subscriber side of ConfabClient (confab.js): the subscriber peer connection (the
// server offers everyone else's tracks, we answer), the remote tracks it carries, and what we
// ask of them: subscriptions (paused, quality, size) and pins.
//
// These are methods of ConfabClient, copied onto it by confab.js: `this` is the client, and
// the fields they use are declared in its constructor.

import { ConfabError } from './requests.js';

const QUALITIES = new Set(['off', 'low', 'medium', 'high']);

export class SubscriberMethods {
  // ---------------------------------------------------------------------------------------
  // Subscriber connection: the server offers, we answer
  // ---------------------------------------------------------------------------------------

  _createSubscriber() {
    const pc = new RTCPeerConnection(this.rtcConfig);
    this.subscriber = pc;
    pc.onicecandidate = (ev) => {
      if (ev.candidate && ev.candidate.candidate) {
        this._send({ type: 'candidate', target: 'subscriber', candidate: ev.candidate.toJSON() });
      }
    };
    pc.ondatachannel = (ev) => {
      if (ev.channel.label === 'chat') this._setupChat(ev.channel);
    };
    pc.onconnectionstatechange = () => {
      if (this.subscriber !== pc) return;
      this._emit('mediastate', { target: 'subscriber', state: pc.connectionState });
      this._iceStateChanged(pc);
    };
  }

  async _applySubscriberOffer(msg, session) {
    const pc = this.subscriber;
    if (session !== this._session || !pc) return;
    // Set the mapping first: `track` events fire during setRemoteDescription.
    this._subMids = new Map(msg.tracks.map((t) => [t.mid, t]));
    await pc.setRemoteDescription({ type: 'offer', sdp: msg.sdp });
    if (session !== this._session) return;
    await this._flushCandidates('subscriber', pc);
    const answer = await pc.createAnswer();
    await pc.setLocalDescription(answer);
    if (session !== this._session) return;
    this._send({ type: 'answer', sdp: pc.localDescription.sdp });
    this._reconcileRemoteTracks(pc);
  }

  /** Emits trackadded/trackremoved so that `remoteTracks` matches the latest offer. */
  _reconcileRemoteTracks(pc) {
    const seen = new Set();
    for (const tr of pc.getTransceivers()) {
      const mid = tr.mid;
      const info = mid != null ? this._subMids.get(mid) : undefined;
      if (!info || tr.stopped || tr.currentDirection === 'inactive') continue;
      seen.add(mid);
      const prev = this.remoteTracks.get(mid);
      if (prev && prev.trackId === info.track_id) continue;
      if (prev) {
        this.remoteTracks.delete(mid);
        this._subscriptions.delete(prev.trackId);
        this._emit('trackremoved', prev);
      }
      const t = {
        mid,
        trackId: info.track_id,
        participantId: info.participant_id,
        kind: info.kind,
        source: info.source,
        track: tr.receiver.track,
      };
      this.remoteTracks.set(mid, t);
      this._emit('trackadded', t);
    }
    for (const [mid, t] of this.remoteTracks) {
      if (!seen.has(mid)) {
        this.remoteTracks.delete(mid);
        this._subscriptions.delete(t.trackId);
        this._emit('trackremoved', t);
      }
    }
  }

  // ---------------------------------------------------------------------------------------
  // What we receive: subscriptions and pins
  // ---------------------------------------------------------------------------------------

  /**
   * How we want the remote track `trackId`: `subscribed` false pauses it; `quality` (off |
   * low | medium | high) caps its simulcast layer; `width` and `height` are the size it is
   * rendered at in device pixels, from which the server picks the smallest layer at least
   * that tall. Sent only when it differs from what was last sent for that track (and only
   * for tracks the room has). Returns whether a message was sent.
   */
  setSubscription(trackId, { subscribed = true, quality = 'high', width, height } = {}) {
    if (!QUALITIES.has(quality)) throw new ConfabError('invalid_quality', `unknown quality ${quality}`);
    if (!this._roomHasTrack(trackId)) return false;
    const msg = { type: 'subscription', track_id: trackId, subscribed: !!subscribed };
    if (subscribed) {
      msg.quality = quality;
      if (width > 0) msg.width = Math.round(width);
      if (height > 0) msg.height = Math.round(height);
    }
    const key = JSON.stringify(msg);
    if (this._subscriptions.get(trackId) === key) return false;
    if (!this._send(msg)) return false;
    this._subscriptions.set(trackId, key);
    return true;
  }

  /** What was last sent for `trackId` this session, as {subscribed, quality, width, height}. */
  subscriptionOf(trackId) {
    const key = this._subscriptions.get(trackId);
    if (!key) return null;
    const { subscribed, quality, width, height } = JSON.parse(key);
    return { subscribed, quality, width, height };
  }

  _roomHasTrack(trackId) {
    for (const t of this.remoteTracks.values()) if (t.trackId === trackId) return true;
    for (const p of this.participants.values()) {
      if (p.tracks?.some((tr) => tr.id === trackId)) return true;
    }
    return false;
  }

  /** Participants whose video we always get, whatever the server's last-N choice. */
  setPins(participantIds) {
    const ids = [...new Set(participantIds)];
    if (JSON.stringify(ids) === JSON.stringify(this._pins)) return;
    this._pins = ids;
    this._send({ type: 'pin', participant_ids: ids });
  }

  get pins() {
    return [...this._pins];
  }
}
