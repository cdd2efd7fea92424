// Confab browser client: signaling, the two peer connections and chat.
//
// A small ES module with no dependencies. The protocol it speaks is docs/protocol.md.
//
//   const client = new ConfabClient();
//   client.addEventListener('trackadded', (e) => show(e.detail));
//   await client.connect({ room: 'standup', name: 'Ada' });   // token: '<jwt>' when required
//   await client.publish(await navigator.mediaDevices.getUserMedia({ audio: true, video: true }));
//
// Each participant has two peer connections, as in LiveKit: `publisher` (we offer our own
// tracks) and `subscriber` (the server offers everyone else's tracks and the `chat` data
// channel). Each side only offers on its own connection, so offers never cross.
//
// Events (all CustomEvents; the payload is `event.detail`):
//   state               {state, reason}  state: idle | connecting | connected | reconnecting | disconnected
//   joined              {participant, participants, room, config, rejoined}
//   participantjoined   {participant}
//   participantupdated  {participant}
//   participantleft     {participantId, participant}
//   trackadded          {mid, trackId, participantId, kind, source, track}
//   trackremoved        {mid, trackId, participantId, kind, source, track}
//   chat                {id, from, name, text, ts, history, local}
//   chatopen            {}
//   error               {code, message, fatal}
//   mediastate          {target, state}   a peer connection's connectionState: publisher | subscriber
//   localtrack          {source, track, previous}   a local track was added, replaced or removed
//   screenshare         {active, track}   our own screen share started or stopped
//   activespeakers      {speakers}        the server's `active_speakers` (loudest first), when it sends it
//   resumed             {participant}     the signaling connection broke and the session was
//                                          resumed over a new one (peer connections kept)
//   publisherlayers     {mid, activeRids, sending}  the server's `publisher_layers` (dynacast),
//                                          once applied; `sending`: the encodings left active
//
// Local media (all keep working across reconnections):
//   publish(stream | [{track, source}])   camera and microphone (source: microphone | camera)
//   setMuted(source, muted)               stops sending real media; the room is told
//   switchDevice(kind, deviceId)          'audioinput' | 'videoinput': a new device, same sender
//                                          (RTCRtpSender.replaceTrack, no renegotiation), mute kept
//   replaceTrack(source, track)           the same with a track of your own
//   startScreenShare() / stopScreenShare()  getDisplayMedia as a third transceiver, source
//                                          `screen`; also stops when the browser's own control
//                                          ends the capture. A stopped share stays published but
//                                          muted (`mute {source: screen}`); receivers show a
//                                          screen track only while it is not muted
//
// Large rooms (docs/protocol.md, Simulcast):
//   options.simulcast (default true)      the camera is published as three encodings, rids
//                                          q (1/4 size), h (1/2) and f (full), lowest first;
//                                          the server forwards one of them to each subscriber.
//                                          Encodings nobody wants are paused when the server
//                                          says so (`publisher_layers`, dynacast: simulcast.js)
//   setSubscription(trackId, {subscribed, quality, width, height})
//                                          how we want one remote track: paused or not, the
//                                          highest quality (off | low | medium | high) and the
//                                          size it is shown at (CSS px x devicePixelRatio).
//                                          Sent only when it changes; again after a rejoin
//   setPins(participantIds)               whose video we always get, whatever last-N
// Levels, speaking and network quality live beside this file: speaking.js, quality.js;
// which tile shows what and at which size: layout.js, subscriptions.js.

import { Dynacast, cameraEncodings } from './simulcast.js';

export const PROTOCOL_VERSION = 1;

const DEFAULT_RECONNECT = { attempts: 5, firstDelayMs: 500, maxDelayMs: 4000 };
const CONNECT_TIMEOUT_MS = 10000;
// Enough for a sharp 1080p screen of text at a modest frame rate.
const SCREEN_MAX_BITRATE = 2_500_000;
const QUALITIES = new Set(['off', 'low', 'medium', 'high']);
// Fatal errors after which rejoining can work: the server restarts, our media connection
// failed, we fell behind, the cluster could not place the room for a moment, or the server
// gave up waiting for our join or first answer (`timeout`, e.g. a suspended tab). Any other
// fatal error (room full...) is final.
const REJOINABLE = new Set(['server_shutting_down', 'media_failed', 'slow_consumer', 'cluster_unavailable', 'timeout']);

/** Why `connect()` failed: carries the server's error code when there is one. */
export class ConfabError extends Error {
  constructor(code, message, fatal = true) {
    super(message);
    this.name = 'ConfabError';
    this.code = code;
    this.fatal = fatal;
  }
}

export class ConfabClient extends EventTarget {
  /**
   * @param {object} [options]
   * @param {RTCConfiguration} [options.rtcConfig] passed to both peer connections.
   * @param {{attempts:number, firstDelayMs:number, maxDelayMs:number}} [options.reconnect]
   * @param {boolean} [options.simulcast] publish the camera in three layers (default true;
   *   also off when the server's `joined.config.simulcast` is false).
   */
  constructor(options = {}) {
    super();
    this.rtcConfig = options.rtcConfig ?? { bundlePolicy: 'max-bundle', rtcpMuxPolicy: 'require' };
    this.reconnectPolicy = { ...DEFAULT_RECONNECT, ...(options.reconnect ?? {}) };
    this.simulcast = options.simulcast ?? true;

    this.state = 'idle';
    this.url = null;
    this.room = null;
    this.name = null;
    /** Our own ParticipantInfo, as the server last described it. */
    this.participant = null;
    /** Everyone else in the room: id -> ParticipantInfo. */
    this.participants = new Map();
    this.config = null;

    /** @type {RTCPeerConnection|null} */
    this.publisher = null;
    /** @type {RTCPeerConnection|null} */
    this.subscriber = null;
    /** @type {RTCDataChannel|null} */
    this.chatChannel = null;

    /** Remote tracks by subscriber transceiver mid. */
    this.remoteTracks = new Map();

    // What we publish, kept across reconnections: [{track, source}].
    this._local = [];
    this._localStream = null;
    this._muted = new Map(); // source -> bool, what the user asked for
    this._screen = null; // our screen share while it lasts: {track, source: 'screen', stream}
    this._ws = null;
    this._session = 0; // bumped on every (re)join, so stale callbacks can tell they are stale
    this._epoch = 0; // bumped by connect() and leave(): ends a reconnection loop of the past
    this._leaving = false;
    this._fatalError = null; // the last fatal `error`, read when the socket then closes
    this._pins = []; // participant ids we pin, kept across reconnections
    this._resetNegotiation();
  }

  _resetNegotiation() {
    this._subOffers = Promise.resolve(); // subscriber offers are applied one at a time, in order
    this._subMids = new Map(); // mid -> SubscribedTrack, from the latest applied offer
    this._pubChain = Promise.resolve();
    this._pubAnswerWaiter = null;
    this._published = false; // a publish has been sent on this session
    this._senders = new Map(); // entry of _local -> its transceiver on the current publisher
    this._parkedScreen = null; // the screen transceiver while not sharing (idle, or an ended share)
    this._pendingCandidates = { publisher: [], subscriber: [] };
    this._pubCandidatesHeld = [];
    this._subscriptions = new Map(); // track id -> the last `subscription` sent (JSON), this session
    this._dynacast?.close();
    this._dynacast = new Dynacast({ onApplied: (detail) => this._emit('publisherlayers', detail) });
  }

  get participantId() {
    return this.participant?.id ?? null;
  }

  // ---------------------------------------------------------------------------------------
  // Connection lifecycle
  // ---------------------------------------------------------------------------------------

  /**
   * Joins `room` as `name`. Resolves with the `joined` message; rejects with a ConfabError
   * when the server refuses (room full, invalid name...) or cannot be reached.
   */
  async connect({ url, room, name, token }) {
    if (this.state === 'connecting' || this.state === 'connected' || this.state === 'reconnecting') {
      throw new ConfabError('already_connected', 'this client is already connected');
    }
    this.url = url ?? defaultUrl();
    // Where joins start: a rejoin goes back here (a load balancer, any node), while
    // `this.url` follows a redirect to the node that hosts the room (resumes go there).
    this._entryUrl = this.url;
    this.room = room;
    this.name = name;
    this.token = token || null; // an access token (JWT), when the server requires one
    this._leaving = false;
    this._pins = [];
    const epoch = ++this._epoch;
    this._setState('connecting');
    try {
      return await this._join(false);
    } catch (err) {
      if (epoch === this._epoch) {
        this._teardown();
        this._setState('disconnected', err.message);
      }
      throw err;
    }
  }

  /** Leaves the room: tells the server, closes everything. Local tracks are not stopped. */
  leave() {
    this._leaving = true;
    this._epoch++;
    this._send({ type: 'leave' });
    this._teardown();
    this._setState('disconnected', 'left');
  }

  _setState(state, reason = '') {
    if (this.state === state && !reason) return;
    this.state = state;
    this._emit('state', { state, reason });
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  /**
   * Opens a WebSocket and joins. Resolves on `joined`; rejects on an error before it, a
   * close before it, or a timeout. A `redirect` (the room lives on another node) is
   * followed once.
   */
  _join(rejoined, redirected = false) {
    if (!redirected && this._entryUrl) this.url = this._entryUrl;
    const session = ++this._session;
    this._resetNegotiation();
    this._fatalError = null;
    const join = { type: 'join', protocol: PROTOCOL_VERSION, room: this.room, name: this.name };
    if (this.token) join.token = this.token;
    return this._openSignaling(session, join, 'join', (msg, ws) => {
      if (msg.type === 'joined') {
        this._onJoined(msg, rejoined);
        return msg;
      }
      if (msg.type === 'redirect' && !redirected) {
        // The room lives on another node: join there instead.
        ws.onclose = null;
        try { ws.close(1000, 'redirected'); } catch { /* already closed */ }
        this.url = msg.url;
        return this._join(rejoined, true);
      }
      const { code, message } = msg.type === 'redirect'
        ? { code: 'redirect_loop', message: `redirected again (to ${msg.url})` }
        : msg;
      // A refused join (invalid room or name, room full...): the connection is useless.
      this._emit('error', { code, message, fatal: true });
      throw new ConfabError(code, message, true);
    });
  }

  /**
   * Opens a WebSocket for `session` and sends `join` on it. The first `joined`, `redirect`
   * or `error` goes to `onAnswer(msg, ws)`, whose result (or throw) settles the returned
   * promise; a timeout or a close before it rejects. Everything else, before and after,
   * goes to `_onMessage`, and the socket's end to `_onSocketClosed`.
   */
  _openSignaling(session, join, what, onAnswer) {
    return new Promise((resolve, reject) => {
      let settled = false;
      const settle = (fn) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        fn();
      };
      const timer = setTimeout(
        () => settle(() => reject(new ConfabError('timeout', `server unreachable (no answer to ${what})`))),
        CONNECT_TIMEOUT_MS,
      );
      let ws;
      try {
        ws = new WebSocket(this.url);
      } catch (err) {
        settle(() => reject(new ConfabError('unreachable', `server unreachable: ${err.message}`)));
        return;
      }
      this._ws = ws;
      const current = () => session === this._session && this._ws === ws;
      ws.onopen = () => ws.send(JSON.stringify(join));
      ws.onmessage = (ev) => {
        if (!current()) return;
        let msg;
        try {
          msg = JSON.parse(ev.data);
        } catch {
          console.warn('confab: unreadable server message', ev.data);
          return;
        }
        if (settled || !['joined', 'redirect', 'error'].includes(msg.type)) {
          this._onMessage(msg, session);
          return;
        }
        settle(() => {
          try {
            resolve(onAnswer(msg, ws));
          } catch (err) {
            ws.onclose = null;
            try { ws.close(1000, `${what} refused`); } catch { /* already closed */ }
            reject(err);
          }
        });
      };
      ws.onclose = (ev) => {
        if (!current()) return;
        if (!settled) {
          settle(() => reject(new ConfabError('unreachable', `server unreachable${ev.reason ? `: ${ev.reason}` : ''}`)));
          return;
        }
        this._onSocketClosed();
      };
      ws.onerror = () => { /* onclose follows and says what to do */ };
    });
  }

  _onJoined(msg, rejoined) {
    this.participant = msg.participant;
    this._resumeToken = msg.resume_token || null;
    this.config = msg.config;
    this.participants = new Map(msg.participants.map((p) => [p.id, p]));
    this._createSubscriber();
    this._setState('connected');
    this._emit('joined', {
      participant: msg.participant,
      participants: msg.participants,
      room: msg.room,
      config: msg.config,
      rejoined,
    });
    for (const p of msg.participants) this._emit('participantjoined', { participant: p });
    if (this._local.length > 0) this._negotiatePublisher();
    // Pins of those still here survive our reconnection (the others keep their ids).
    const pins = this._pins.filter((id) => this.participants.has(id));
    if (pins.length > 0) this._send({ type: 'pin', participant_ids: pins });
  }

  _onSocketClosed() {
    if (this._leaving || this.state === 'disconnected') return;
    const fatal = this._fatalError;
    this._fatalError = null;
    // Only the signaling connection broke: resume the session over a new one, keeping the
    // peer connections (the others see nothing). Otherwise, or if that fails, rejoin.
    if (!fatal && this._resumeToken && this._mediaAlive()) {
      this._resumeOrRejoin();
      return;
    }
    this._teardown();
    if (fatal && !REJOINABLE.has(fatal.code)) {
      this._setState('disconnected', fatal.message);
      return;
    }
    this._reconnect();
  }

  _mediaAlive() {
    const s = this.subscriber?.connectionState;
    return !!s && s !== 'failed' && s !== 'closed';
  }

  async _resumeOrRejoin() {
    const { attempts, firstDelayMs, maxDelayMs } = this.reconnectPolicy;
    const epoch = this._epoch;
    let delay = Math.min(250, firstDelayMs);
    for (let attempt = 1; attempt <= attempts; attempt++) {
      this._setState('reconnecting', `resuming, attempt ${attempt} of ${attempts}`);
      await sleep(delay);
      if (epoch !== this._epoch) return;
      delay = Math.min(delay * 2, maxDelayMs);
      try {
        await this._resume();
        return;
      } catch (err) {
        if (epoch !== this._epoch) return;
        // The server answered but has no session to resume: join afresh.
        if (err.code !== 'unreachable' && err.code !== 'timeout') break;
      }
    }
    if (epoch !== this._epoch) return;
    this._teardown();
    this._reconnect();
  }

  /**
   * A new WebSocket that resumes this session (`join.resume`): same participant, same peer
   * connections, tracks and subscriptions. Resolves on `joined`.
   */
  _resume() {
    const join = {
      type: 'join', protocol: PROTOCOL_VERSION, room: this.room, name: this.name, resume: this._resumeToken,
    };
    return this._openSignaling(this._session, join, 'resume', (msg) => {
      if (msg.type === 'joined') {
        this._onResumed(msg);
        return msg;
      }
      // A redirect: the room moved to another node, so the session is not there.
      if (msg.type === 'redirect') throw new ConfabError('resume_failed', 'the room moved to another node', true);
      throw new ConfabError(msg.code, msg.message, true);
    });
  }

  /** The session goes on: bring the room up to date from the fresh `joined`. */
  _onResumed(msg) {
    this.participant = msg.participant;
    this.config = msg.config;
    this._resumeToken = msg.resume_token || this._resumeToken;
    const now = new Map(msg.participants.map((p) => [p.id, p]));
    for (const [id, p] of this.participants) {
      if (now.has(id)) continue;
      this.participants.delete(id);
      this._emit('participantleft', { participantId: id, participant: p });
    }
    for (const [id, p] of now) {
      const known = this.participants.has(id);
      this.participants.set(id, p);
      this._emit(known ? 'participantupdated' : 'participantjoined', { participant: p });
    }
    this._setState('connected', 'resumed');
    this._emit('resumed', { participant: msg.participant });
    // A publish offer the broken connection may have swallowed: the server answers again.
    if (this._pubAnswerWaiter && this._lastPublish) this._send(this._lastPublish);
  }

  async _reconnect() {
    const { attempts, firstDelayMs, maxDelayMs } = this.reconnectPolicy;
    const epoch = this._epoch;
    let delay = firstDelayMs;
    for (let attempt = 1; attempt <= attempts; attempt++) {
      this._setState('reconnecting', `attempt ${attempt} of ${attempts}`);
      await sleep(delay);
      if (epoch !== this._epoch) return; // left (or connected anew) meanwhile
      delay = Math.min(delay * 2, maxDelayMs);
      try {
        await this._join(true);
        return;
      } catch (err) {
        if (epoch !== this._epoch) return;
        this._teardown();
        if (err.code !== 'unreachable' && err.code !== 'timeout' && !REJOINABLE.has(err.code)) {
          // The server answered and refused (room now full...): trying again will not help.
          this._setState('disconnected', err.message);
          return;
        }
      }
    }
    if (epoch === this._epoch) this._setState('disconnected', 'server unreachable');
  }

  /** Closes the socket and both peer connections; forgets remote state (emitting removals). */
  _teardown() {
    this._session++;
    const ws = this._ws;
    this._ws = null;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      try { ws.close(1000, 'bye'); } catch { /* ignore */ }
    }
    for (const [mid, t] of this.remoteTracks) {
      this.remoteTracks.delete(mid);
      this._emit('trackremoved', t);
    }
    for (const [id, p] of this.participants) {
      this.participants.delete(id);
      this._emit('participantleft', { participantId: id, participant: p });
    }
    if (this.chatChannel) {
      this.chatChannel.onmessage = this.chatChannel.onopen = null;
      try { this.chatChannel.close(); } catch { /* ignore */ }
      this.chatChannel = null;
    }
    for (const pc of [this.publisher, this.subscriber]) {
      if (pc) {
        pc.onicecandidate = pc.ondatachannel = pc.onconnectionstatechange = null;
        try { pc.close(); } catch { /* ignore */ }
      }
    }
    this.publisher = null;
    this.subscriber = null;
    this._resetNegotiation();
  }

  _send(msg) {
    const ws = this._ws;
    if (ws && ws.readyState === WebSocket.OPEN) {
      ws.send(JSON.stringify(msg));
      return true;
    }
    return false;
  }

  // ---------------------------------------------------------------------------------------
  // Server messages
  // ---------------------------------------------------------------------------------------

  _onMessage(msg, session) {
    switch (msg.type) {
      case 'offer':
        this._subOffers = this._subOffers
          .then(() => this._applySubscriberOffer(msg, session))
          .catch((err) => this._localError('subscriber', err));
        break;
      case 'answer':
        if (this._pubAnswerWaiter) this._pubAnswerWaiter(msg);
        else console.warn('confab: answer with no publish pending');
        break;
      case 'candidate':
        this._addRemoteCandidate(msg.target, msg.candidate);
        break;
      case 'participant_joined':
        this.participants.set(msg.participant.id, msg.participant);
        this._emit('participantjoined', { participant: msg.participant });
        break;
      case 'participant_updated':
        if (msg.participant.id === this.participantId) {
          this.participant = msg.participant;
          this._reconcileMute();
        } else {
          this.participants.set(msg.participant.id, msg.participant);
        }
        this._emit('participantupdated', { participant: msg.participant });
        break;
      case 'participant_left': {
        const p = this.participants.get(msg.participant_id);
        this.participants.delete(msg.participant_id);
        this._emit('participantleft', { participantId: msg.participant_id, participant: p });
        break;
      }
      case 'active_speakers':
        this._emit('activespeakers', { speakers: msg.speakers ?? [] });
        break;
      case 'publisher_layers':
        this._dynacast.wish(this.publisher, msg.mid, msg.active_rids ?? []);
        break;
      case 'error':
        if (msg.fatal) this._fatalError = msg;
        // A refused publish offer gets no answer: let the publish chain go on.
        if (msg.code === 'invalid_sdp' && this._pubAnswerWaiter) this._pubAnswerWaiter(null);
        this._emit('error', { code: msg.code, message: msg.message, fatal: !!msg.fatal });
        break;
      default:
        console.warn('confab: unknown server message', msg.type);
    }
  }

  _localError(what, err) {
    console.error(`confab: ${what}:`, err);
    this._emit('error', { code: 'client', message: `${what}: ${err.message ?? err}`, fatal: false });
  }

  _addRemoteCandidate(target, candidate) {
    const pc = target === 'publisher' ? this.publisher : this.subscriber;
    if (!candidate || !candidate.candidate) return;
    if (!pc || !pc.remoteDescription) {
      // Arrived before the description it belongs to: applied right after it.
      this._pendingCandidates[target].push(candidate);
      return;
    }
    pc.addIceCandidate(candidate).catch((err) => console.warn('confab: bad remote candidate', err));
  }

  async _flushCandidates(target, pc) {
    const queued = this._pendingCandidates[target];
    this._pendingCandidates[target] = [];
    for (const c of queued) {
      try {
        await pc.addIceCandidate(c);
      } catch (err) {
        console.warn('confab: bad remote candidate', err);
      }
    }
  }

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
      if (this.subscriber === pc) this._emit('mediastate', { target: 'subscriber', state: pc.connectionState });
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
  // Publisher connection: we offer our own tracks
  // ---------------------------------------------------------------------------------------

  /**
   * Publishes a MediaStream (its audio as microphone, its video as camera), or a list of
   * `{track, source}`. Replaces what was published before. Kept across reconnections.
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

  _negotiatePublisher() {
    const session = this._session;
    this._pubChain = this._pubChain
      .then(() => this._doPublish(session))
      .catch((err) => this._localError('publish', err));
    return this._pubChain;
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
      try { transceiver.stop(); } catch { /* already stopped */ }
    }
    for (const entry of this._local) {
      if (!this._senders.has(entry)) this._senders.set(entry, this._addSender(pc, entry));
    }
    this._reserveScreenSender(pc);
    await pc.setLocalDescription(await pc.createOffer());
    if (session !== this._session || this.publisher !== pc) return;
    const answered = new Promise((resolve) => { this._pubAnswerWaiter = resolve; });
    this._lastPublish = {
      type: 'publish',
      sdp: pc.localDescription.sdp,
      tracks: [
        ...[...this._senders].map(([entry, transceiver]) => ({ mid: transceiver.mid, source: entry.source })),
        ...(this._parkedScreen?.mid ? [{ mid: this._parkedScreen.mid, source: 'screen' }] : []),
      ],
    };
    this._send(this._lastPublish);
    this._published = true;
    for (const c of this._pubCandidatesHeld) this._send({ type: 'candidate', target: 'publisher', candidate: c });
    this._pubCandidatesHeld = [];
    const answer = await answered;
    this._pubAnswerWaiter = null;
    if (session !== this._session || this.publisher !== pc) return;
    if (!answer) throw new Error('the server refused the publish offer');
    await pc.setRemoteDescription({ type: 'answer', sdp: answer.sdp });
    await this._flushCandidates('publisher', pc);
  }

  _createPublisher() {
    const pc = new RTCPeerConnection(this.rtcConfig);
    this.publisher = pc;
    this._published = false;
    this._pubCandidatesHeld = [];
    pc.onicecandidate = (ev) => {
      if (!ev.candidate || !ev.candidate.candidate) return;
      const c = ev.candidate.toJSON();
      // A publisher candidate before `publish` is out of order for the server.
      if (this._published) this._send({ type: 'candidate', target: 'publisher', candidate: c });
      else this._pubCandidatesHeld.push(c);
    };
    pc.onconnectionstatechange = () => {
      if (this.publisher === pc) this._emit('mediastate', { target: 'publisher', state: pc.connectionState });
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
    const previous = await this.replaceTrack(source, track);
    previous?.stop();
    return track;
  }

  /**
   * Puts `track` in place of our `source` track (microphone | camera) without renegotiating,
   * keeping its mute state; a source not published yet is added (that renegotiates). Returns
   * the previous track, which the caller owns (and usually stops).
   */
  async replaceTrack(source, track) {
    track.enabled = !this._muted.get(source);
    const entry = this._local.find((e) => e.source === source);
    this._localStream ??= new MediaStream();
    if (!entry) {
      this._local.push({ track, source });
      this._localStream.addTrack(track);
      this._emit('localtrack', { source, track, previous: null });
      if (this.state === 'connected') await this._negotiatePublisher();
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
   * declines.
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
    const reuse = !!parked && !parked.stopped && parked === this._senderOn(this.publisher, parked);
    if (reuse) {
      // The transceiver of an earlier share on this connection carries the new one.
      this._senders.set(entry, parked);
      await parked.sender.replaceTrack(track);
    }
    if (this._muted.get('screen')) {
      this._muted.set('screen', false);
      this._send({ type: 'mute', source: 'screen', muted: false });
    }
    this._emit('localtrack', { source: 'screen', track, previous: null });
    this._emit('screenshare', { active: true, track });
    if (!reuse && this.state === 'connected') await this._negotiatePublisher();
    return track;
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

  // ---------------------------------------------------------------------------------------
  // Chat
  // ---------------------------------------------------------------------------------------

  _setupChat(channel) {
    this.chatChannel = channel;
    channel.onmessage = (ev) => {
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch {
        return;
      }
      if (msg.type === 'chat') this._emit('chat', { ...msg, local: false });
    };
    const opened = () => this._emit('chatopen', {});
    // A channel received through ondatachannel may already be open.
    if (channel.readyState === 'open') opened();
    else channel.onopen = opened;
  }

  get chatReady() {
    return this.chatChannel?.readyState === 'open';
  }

  /**
   * Sends a chat message to the room. The server does not echo it back, so the message is
   * also emitted locally as a `chat` event with `local: true`. Throws when it cannot be sent.
   */
  sendChat(text) {
    const t = String(text ?? '');
    if (t.trim() === '') throw new ConfabError('chat_invalid', 'empty message');
    const max = this.config?.chat_max_bytes;
    if (max && new TextEncoder().encode(t).length > max) {
      throw new ConfabError('chat_too_long', `message is longer than ${max} bytes`);
    }
    if (!this.chatReady) throw new ConfabError('chat_unavailable', 'chat is not connected yet');
    this.chatChannel.send(JSON.stringify({ type: 'chat', text: t }));
    const msg = {
      type: 'chat',
      id: null,
      from: this.participantId,
      name: this.participant?.name ?? this.name,
      text: t,
      ts: Date.now(),
      history: false,
      local: true,
    };
    this._emit('chat', msg);
    return msg;
  }
}

function defaultUrl() {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${scheme}//${location.host}/ws`;
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
