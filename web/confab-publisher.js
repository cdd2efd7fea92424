// The publisher side of ConfabClient (confab.js): our local media (microphone, camera, a
// screen share), the publisher peer connection we offer them on and its renegotiation, the
// camera's simulcast encodings, device switching and mute.
//
// These are methods of ConfabClient, copied onto it by confab.js: `this` is the client, and
// the fields they use are declared in its constructor.

import { cameraEncodings } from './simulcast.js';
import { ConfabError } from './requests.js';

// A publish the server never answers (dropped under its message rate, say) must not hold
// the publishes queued behind it forever. The server answers in milliseconds; this is long.
const PUBLISH_TIMEOUT_MS = 15000;
// Enough for a sharp 1080p screen of text at a modest frame rate.
const SCREEN_MAX_BITRATE = 2_500_000;

export class PublisherMethods {
  // ---------------------------------------------------------------------------------------
  // Publisher connection: we offer our own tracks
  // ---------------------------------------------------------------------------------------

  /**
   * Publishes a MediaStream (its audio as microphone, its video as camera), or a list of
   * `{track, source}`. Replaces what was published before. Kept across reconnections.
   * While connected, resolves once the server answered; rejects with a ConfabError when it
   * refused (`forbidden` without the grant, `limit_reached`...): the tracks are kept (a
   * later publish() replaces them) but not offered again by themselves until a rejoin.
   */
  async publish(what) {
    let list;
    if (what instanceof MediaStream) {
      list = what.getTracks().map((track) => ({
        track,
        source: track.kind === 'audio' ? 'microphone' : 'camera',
      }));
      this._localStream = what;
    } else {
      list = Array.from(what ?? []);
      this._localStream = new MediaStream(list.map((t) => t.track));
    }
    // The screen share is managed by start/stopScreenShare and outlives a new publish().
    this._local = this._screen ? [...list, this._screen] : list;
    for (const { track, source } of list) {
      if (this._muted.get(source)) track.enabled = false;
    }
    if (this.state === 'connected') await this._negotiatePublisher();
  }

  /**
   * Offers the publisher connection as it should now be, after the offers already queued.
   * The returned promise is this offer's outcome; the queue goes on whatever it is.
   */
  _negotiatePublisher() {
    const session = this._session;
    const run = this._pubChain.then(() => this._doPublish(session));
    this._pubChain = run.catch(() => { /* told to whoever awaits `run` */ });
    return run;
  }

  async _doPublish(session) {
    if (session !== this._session) return;
    let pc = this.publisher;
    if (!pc) {
      if (this._local.length === 0) return;
      pc = this._createPublisher();
    }
    // The same connection is renegotiated when tracks come or go (the first screen share, a
    // device added later): a transceiver per local entry; one whose entry went away (a new
    // publish() without it) is stopped. NB the server does not unpublish the track of a
    // stopped transceiver yet; stopScreenShare() does without stopping one.
    const live = new Set(this._local);
    for (const [entry, transceiver] of this._senders) {
      if (live.has(entry)) continue;
      this._senders.delete(entry);
      this._retire(transceiver);
    }
    for (const entry of this._local) {
      if (!this._senders.has(entry)) this._senders.set(entry, this._addSender(pc, entry));
    }
    this._reserveScreenSender(pc);
    await pc.setLocalDescription(await pc.createOffer());
    if (session !== this._session || this.publisher !== pc) return;
    const msg = {
      type: 'publish',
      sdp: pc.localDescription.sdp,
      tracks: [
        ...[...this._senders].map(([entry, transceiver]) => ({ mid: transceiver.mid, source: entry.source })),
        ...(this._parkedScreen?.mid ? [{ mid: this._parkedScreen.mid, source: 'screen' }] : []),
      ],
      request_id: this._requests.next(),
    };
    this._requests.sent(msg.request_id, 'publish');
    // Settled by the `answer` or `error` carrying this id only (an `invalid_sdp` about our
    // subscriber answer carries that answer's id, not this one's).
    const reply = this._requests.expect(msg.request_id, 'publish', {
      timeoutMs: PUBLISH_TIMEOUT_MS,
      patient: () => this.state !== 'connected', // resumed meanwhile? the offer is resent
    });
    this._lastPublish = msg;
    this._send(msg); // not sent (the socket is down): resent on a resume, else redone on a rejoin
    let answer;
    try {
      answer = await reply;
    } catch (err) {
      if (session !== this._session || this.publisher !== pc) return; // redone on the rejoin
      if (err.code === 'timeout') {
        // (A refusal was told by `_onError`; a silence only here.)
        this._emit('error', {
          code: err.code, message: err.message, fatal: false, requestId: msg.request_id, request: 'publish',
        });
      }
      // Nothing of a refused offer is kept by the server: forget it here too, so that the
      // next offer starts from what both sides have.
      if (!this._pubAnswered) {
        // The first offer: the server has no publisher connection (none was made, or the
        // one made for the offer is gone), so neither have we. The next publish starts anew.
        this._closePublisher();
      } else {
        try {
          await pc.setLocalDescription({ type: 'rollback' });
        } catch (rollbackErr) {
          console.warn('confab: cannot roll back the refused offer', rollbackErr);
        }
      }
      throw err;
    } finally {
      if (this._lastPublish === msg) this._lastPublish = null;
    }
    if (session !== this._session || this.publisher !== pc) return;
    await pc.setRemoteDescription({ type: 'answer', sdp: answer.sdp });
    if (!this._pubAnswered) {
      this._pubAnswered = true;
      for (const c of this._pubCandidatesHeld) this._send({ type: 'candidate', target: 'publisher', candidate: c });
      this._pubCandidatesHeld = [];
    }
    await this._flushCandidates('publisher', pc);
  }

  /** Closes the publisher connection and forgets its senders (the local entries stay). */
  _closePublisher() {
    const pc = this.publisher;
    if (!pc) return;
    this.publisher = null;
    pc.onicecandidate = pc.onconnectionstatechange = null;
    try { pc.close(); } catch { /* ignore */ }
    this._senders.clear();
    this._parkedScreen = null;
    this._pubCandidatesHeld = [];
    this._pubAnswered = false;
  }

  /**
   * A sender no longer wanted. A negotiated one is stopped; one that was only ever in an
   * offer taken back (rollback) is left idle instead: Chromium (156) gives the m-line of a
   * stopped, rolled-back transceiver back to it in the next offer, leaving a new one out.
   */
  _retire(transceiver) {
    if (transceiver.stopped) return;
    if (transceiver.mid != null) {
      try { transceiver.stop(); } catch { /* already stopped */ }
      return;
    }
    transceiver.sender.replaceTrack(null).catch(() => { /* closed meanwhile */ });
  }

  _createPublisher() {
    const pc = new RTCPeerConnection(this.rtcConfig);
    this.publisher = pc;
    this._pubAnswered = false;
    this._pubCandidatesHeld = [];
    pc.onicecandidate = (ev) => {
      if (!ev.candidate || !ev.candidate.candidate) return;
      const c = ev.candidate.toJSON();
      // Held until the server answers a publish on this connection: before, it may have no
      // publisher connection to add it to (none yet, or a refused first offer) and would
      // refuse it as out of order.
      if (this._pubAnswered) this._send({ type: 'candidate', target: 'publisher', candidate: c });
      else this._pubCandidatesHeld.push(c);
    };
    pc.onconnectionstatechange = () => {
      if (this.publisher !== pc) return;
      this._emit('mediastate', { target: 'publisher', state: pc.connectionState });
      this._iceStateChanged(pc);
    };
    return pc;
  }

  /**
   * With a simulcast camera, the screen share's transceiver is created (idle, no track) in
   * the first offer, so that sharing later is a replaceTrack, not a renegotiation. The
   * server (rtc 0.21.1) forgets the SSRCs of a simulcast track on every renegotiated offer
   * and can only learn them again from the mid/rid header extensions, which Chromium stops
   * sending once the server's receiver reports arrive: the camera would go dark for
   * everyone the moment a share starts. An idle transceiver sends nothing, so the server
   * publishes no screen track until a share starts.
   */
  _reserveScreenSender(pc) {
    if (this._screen || this._parkedScreen || !navigator.mediaDevices?.getDisplayMedia) return;
    const camera = [...this._senders].find(([entry]) => entry.source === 'camera')?.[1];
    const layered = camera?.sender.getParameters().encodings?.length > 1;
    if (!layered) return;
    this._parkedScreen = pc.addTransceiver('video', {
      direction: 'sendonly',
      sendEncodings: this._sendEncodings({ source: 'screen' }),
    });
  }

  /** Adds the sending transceiver of one local entry. */
  _addSender(pc, entry) {
    const init = { direction: 'sendonly', streams: [entry.stream ?? this._localStream] };
    const encodings = this._sendEncodings(entry);
    if (encodings) init.sendEncodings = encodings;
    return pc.addTransceiver(entry.track, init);
  }

  /**
   * Encodings of a new sender, or undefined for the browser's default (one layer). The
   * camera is simulcast (three layers, lowest first) unless turned off; the screen stays one
   * layer, favoured over the camera when bandwidth is short (its track's contentHint keeps
   * text sharp). A replaced track (switchDevice) keeps its sender, hence its encodings.
   */
  _sendEncodings(entry) {
    if (entry.source === 'screen') {
      return [{ priority: 'high', networkPriority: 'high', maxBitrate: SCREEN_MAX_BITRATE }];
    }
    if (entry.source === 'camera' && entry.track.kind === 'video' && this.simulcastEnabled) {
      return cameraEncodings();
    }
    return undefined;
  }

  /** Whether the camera is published in layers: our option, unless the server says no. */
  get simulcastEnabled() {
    return this.simulcast && this.config?.simulcast !== false;
  }

  /** Local tracks being published, as `{track, source}`. */
  get localTracks() {
    return this._local.map(({ track, source }) => ({ track, source }));
  }

  /** The MediaStream of our microphone and camera (what publish() was given, kept current). */
  get localStream() {
    return this._localStream;
  }

  /** Our local track of `source` (microphone | camera | screen), or null. */
  localTrack(source) {
    return this._local.find((e) => e.source === source)?.track ?? null;
  }

  /**
   * Switches the microphone ('audioinput') or camera ('videoinput') to another device. The
   * new track replaces the old one on the same sender, so nothing is renegotiated and the
   * others keep receiving; the mute state is kept. Resolves with the new track.
   */
  async switchDevice(kind, deviceId) {
    const source = { audioinput: 'microphone', videoinput: 'camera' }[kind];
    if (!source) throw new ConfabError('invalid_device', `cannot switch a device of kind ${kind}`);
    const old = this.localTrack(source);
    const media = old?.kind ?? (source === 'microphone' ? 'audio' : 'video');
    const wanted = { ...(old?.getConstraints() ?? {}), deviceId: { exact: deviceId } };
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ [media]: wanted });
    } catch (err) {
      // Some devices cannot be open twice (or two cameras at once): free the old one, retry.
      if (!old || err.name !== 'NotReadableError') throw err;
      old.stop();
      stream = await navigator.mediaDevices.getUserMedia({ [media]: wanted });
    }
    const track = stream.getTracks()[0];
    let previous;
    try {
      previous = await this.replaceTrack(source, track);
    } catch (err) {
      track.stop(); // refused: the device is let go
      throw err;
    }
    previous?.stop();
    return track;
  }

  /**
   * Puts `track` in place of our `source` track (microphone | camera) without renegotiating,
   * keeping its mute state; a source not published yet is added (that renegotiates, and
   * rejects with a ConfabError if the server refuses: the source is then not added). Returns
   * the previous track, which the caller owns (and usually stops).
   */
  async replaceTrack(source, track) {
    track.enabled = !this._muted.get(source);
    const entry = this._local.find((e) => e.source === source);
    this._localStream ??= new MediaStream();
    if (!entry) {
      const added = { track, source };
      this._local.push(added);
      this._localStream.addTrack(track);
      this._emit('localtrack', { source, track, previous: null });
      if (this.state !== 'connected') return null;
      try {
        await this._negotiatePublisher();
      } catch (err) {
        this._dropLocal(added);
        this._localStream.removeTrack(track);
        this._emit('localtrack', { source, track: null, previous: track });
        throw err;
      }
      return null;
    }
    const previous = entry.track;
    entry.track = track;
    if (entry.stream) {
      entry.stream.removeTrack(previous);
      entry.stream.addTrack(track);
    } else {
      this._localStream.removeTrack(previous);
      this._localStream.addTrack(track);
    }
    const transceiver = this._senders.get(entry);
    if (transceiver && !transceiver.stopped) await transceiver.sender.replaceTrack(track);
    this._emit('localtrack', { source, track, previous });
    return previous;
  }

  /** Whether we are sharing our screen. */
  get screenSharing() {
    return this._screen !== null;
  }

  /** The track of our screen share, or null. */
  get screenShareTrack() {
    return this._screen?.track ?? null;
  }

  /**
   * Asks the browser for a screen, window or tab (getDisplayMedia) and publishes it as the
   * `screen` source, on a transceiver of its own. Ends by stopScreenShare() or by the
   * browser's own "stop sharing" control. Resolves with the track; rejects when the user
   * declines, or with a ConfabError when the server refuses the offer (the share then ends).
   */
  async startScreenShare({ video = { frameRate: { ideal: 15, max: 30 } } } = {}) {
    if (this._screen) return this._screen.track;
    if (!navigator.mediaDevices?.getDisplayMedia) {
      throw new ConfabError('unsupported', 'this browser cannot share its screen');
    }
    const stream = await navigator.mediaDevices.getDisplayMedia({ video, audio: false });
    const track = stream.getVideoTracks()[0];
    // Text on a shared screen must stay legible: resolution over frame rate.
    if ('contentHint' in track) track.contentHint = 'detail';
    const entry = { track, source: 'screen', stream };
    this._screen = entry;
    track.addEventListener('ended', () => {
      if (this._screen === entry) this.stopScreenShare();
    });
    this._local.push(entry);
    const parked = this._parkedScreen;
    this._parkedScreen = null;
    const onPc = !!parked && !parked.stopped && parked === this._senderOn(this.publisher, parked);
    if (onPc) {
      // The transceiver of an earlier share (or the one reserved) carries the new one.
      this._senders.set(entry, parked);
      await parked.sender.replaceTrack(track);
    }
    // No renegotiation when the server has it already (answered, or in an offer on its
    // way); one taken back with a refused offer is offered again.
    const reuse = onPc && parked.mid != null;
    const wasMuted = !!this._muted.get('screen');
    if (wasMuted) {
      this._muted.set('screen', false);
      this._send({ type: 'mute', source: 'screen', muted: false });
    }
    this._emit('localtrack', { source: 'screen', track, previous: null });
    this._emit('screenshare', { active: true, track });
    if (reuse || this.state !== 'connected') return track;
    try {
      await this._negotiatePublisher();
    } catch (err) {
      if (this._screen === entry) {
        // Refused: the share ends here, as if it had not started. Its transceiver, if the
        // connection still has it, waits idle for the next share.
        this._screen = null;
        const transceiver = this._dropLocal(entry);
        if (transceiver) this._parkedScreen = transceiver;
        track.stop();
        if (wasMuted) {
          this._muted.set('screen', true);
          this._send({ type: 'mute', source: 'screen', muted: true });
        }
        this._emit('localtrack', { source: 'screen', track: null, previous: track });
        this._emit('screenshare', { active: false, track });
      }
      throw err;
    }
    return track;
  }

  /**
   * Forgets a local entry whose offer was refused. Returns its transceiver when the
   * publisher connection still has it (a refused renegotiation), idle; else null.
   */
  _dropLocal(entry) {
    this._local = this._local.filter((e) => e !== entry);
    const transceiver = this._senders.get(entry);
    this._senders.delete(entry);
    if (!transceiver || transceiver.stopped || !this._senderOn(this.publisher, transceiver)) return null;
    transceiver.sender.replaceTrack(null).catch(() => { /* closed meanwhile */ });
    return transceiver;
  }

  _senderOn(pc, transceiver) {
    return pc?.getTransceivers().includes(transceiver) ? transceiver : null;
  }

  /**
   * Stops sharing: the capture ends and the room is told (`screen` muted, which is what
   * receivers go by). The transceiver is kept, sending nothing, and carries the next share
   * without renegotiation: the server neither unpublishes a stopped transceiver's track nor
   * answers a second switch to `inactive` correctly, so removing it is left for later.
   */
  async stopScreenShare() {
    const entry = this._screen;
    if (!entry) return;
    this._screen = null;
    this._local = this._local.filter((e) => e !== entry);
    entry.track.stop();
    const transceiver = this._senders.get(entry);
    this._senders.delete(entry);
    this._muted.set('screen', true);
    this._send({ type: 'mute', source: 'screen', muted: true });
    this._emit('localtrack', { source: 'screen', track: null, previous: entry.track });
    this._emit('screenshare', { active: false, track: entry.track });
    if (transceiver && !transceiver.stopped && this._senderOn(this.publisher, transceiver)) {
      this._parkedScreen = transceiver;
      try {
        await transceiver.sender.replaceTrack(null);
      } catch { /* the connection closed meanwhile: nothing is sent anyway */ }
    }
  }

  /**
   * Mutes or unmutes our `source` ('microphone' | 'camera'): the track stops sending real
   * media (silence, black frames) and the room is told.
   */
  setMuted(source, muted) {
    this._muted.set(source, muted);
    for (const t of this._local) {
      if (t.source === source) t.track.enabled = !muted;
    }
    this._send({ type: 'mute', source, muted });
  }

  isMuted(source) {
    return !!this._muted.get(source);
  }

  /**
   * The server records mute state only on tracks it already has; a track that started after
   * the user muted (or after a reconnection) is corrected here, once the server reports it.
   */
  _reconcileMute() {
    const tracks = this.participant?.tracks ?? [];
    for (const [source, muted] of this._muted) {
      if (tracks.some((t) => t.source === source && t.muted !== muted)) {
        this._send({ type: 'mute', source, muted });
      }
    }
  }
}
