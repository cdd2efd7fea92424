// The signaling and session core of ConfabClient (confab.js): connecting and leaving, the
// WebSocket and the server's messages on it, resuming or rejoining after a break, teardown,
// errors, and the remote ICE candidates of both peer connections.
//
// These are methods of ConfabClient, copied onto it by confab.js: `this` is the client, and
// the fields they use are declared in its constructor.

import { ConfabError } from './requests.js';

/** The transport of a TURN URL: tls (turns:), tcp (?transport=tcp) or udp. */
function turnTransportOf(url) {
  if (url.startsWith('turns:')) return 'tls';
  return /[?&]transport=tcp\b/.test(url) ? 'tcp' : 'udp';
}

export const PROTOCOL_VERSION = 1;

const CONNECT_TIMEOUT_MS = 10000;
// Fatal errors after which rejoining can work: the server restarts, our media connection
// failed, we fell behind, the cluster could not place the room for a moment, the server
// gave up waiting for our join or first answer (`timeout`, e.g. a suspended tab), or our
// room hit an internal error and was closed (`internal`: joining again opens a fresh one).
// Any other fatal error (room full...) is final.
const REJOINABLE = new Set([
  'server_shutting_down', 'media_failed', 'slow_consumer', 'cluster_unavailable', 'timeout', 'internal',
]);
// What a participant may do when the server does not say (an older server): everything.
export const ALL_GRANTS = { can_publish: true, can_subscribe: true, can_chat: true, room_admin: false, hidden: false };

export class SessionMethods {
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
    this._watchNetwork();
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
    this._unwatchNetwork();
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
   * or `error` (one not about another request of ours) goes to `onAnswer(msg, ws)`, whose
   * result (or throw) settles the returned promise; a timeout or a close before it
   * rejects. Everything else, before and after, goes to `_onMessage`, and the socket's end
   * to `_onSocketClosed`.
   */
  _openSignaling(session, join, what, onAnswer) {
    join.request_id = this._requests.next();
    this._requests.sent(join.request_id, 'join');
    // A refusal of the join may come without its id (a connection refused before the
    // server reads it: too many from one address).
    const answers = (msg) => msg.type === 'joined' || msg.type === 'redirect'
      || (msg.type === 'error' && (msg.request_id == null || msg.request_id === join.request_id));
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
        if (settled || !answers(msg)) {
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

  /**
   * The server's ICE servers (TURN, with credentials minted for this participant), after
   * any the page configured itself, for the peer connections made from now on.
   */
  _useIceServers(servers) {
    if (!servers?.length) return;
    const own = (this.rtcConfig.iceServers ?? []).filter((s) => !s.fromServer);
    const given = servers.map((s) => ({
      urls: s.urls.filter((u) => !this.turnTransport || turnTransportOf(u) === this.turnTransport),
      ...(s.username ? { username: s.username, credential: s.credential } : {}),
      fromServer: true,
    })).filter((s) => s.urls.length > 0);
    this.rtcConfig = { ...this.rtcConfig, iceServers: [...own, ...given] };
  }

  _onJoined(msg, rejoined) {
    this.participant = msg.participant;
    this._resumeToken = msg.resume_token || null;
    this.config = msg.config;
    this.grants = { ...ALL_GRANTS, ...(msg.grants ?? {}) };
    this.participants = new Map(msg.participants.map((p) => [p.id, p]));
    this._useIceServers(msg.ice_servers);
    this._createSubscriber();
    this._setState('connected');
    this._emit('joined', {
      participant: msg.participant,
      participants: msg.participants,
      room: msg.room,
      config: msg.config,
      grants: this.grants,
      rejoined,
    });
    for (const p of msg.participants) this._emit('participantjoined', { participant: p });
    // Media the grants do not allow is not offered: the server would only refuse it.
    if (this._local.length > 0 && this.canPublish) {
      this._negotiatePublisher().catch((err) => this._publishFailed(err));
    }
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
    this._useIceServers(msg.ice_servers);
    this.participant = msg.participant;
    this.config = msg.config;
    this.grants = { ...ALL_GRANTS, ...(msg.grants ?? {}) };
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
    // A publish offer the broken connection may have swallowed: the server answers again,
    // with the same request id (a second reply to it, if the first came after all, is
    // ignored: nothing waits for that id any more).
    const pending = this._lastPublish;
    if (pending && this._requests.waiting(pending.request_id)) this._send(pending);
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

  /**
   * Sends `msg` with a request id (a fresh one, unless it has one: a resent publish keeps
   * its own). Returns the id, or 0 when there is no open connection to send it on.
   */
  _send(msg) {
    const ws = this._ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return 0;
    if (msg.request_id == null) {
      msg.request_id = this._requests.next();
      this._requests.sent(msg.request_id, msg.type);
    }
    ws.send(JSON.stringify(msg));
    return msg.request_id;
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
        // Only the publish it names: a late answer to one given up on is not applied.
        if (!this._requests.settle(msg)) console.warn('confab: answer to no pending publish', msg.request_id);
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
      case 'reaction':
        this._emit('reaction', { participantId: msg.participant_id, emoji: msg.emoji });
        break;
      case 'publisher_layers':
        this._dynacast.wish(this.publisher, msg.mid, msg.active_rids ?? []);
        break;
      case 'downlink':
        this.downlink = {
          estimateBps: msg.estimate_bps,
          signal: msg.signal,
          tracks: (msg.tracks ?? []).map((t) => ({ trackId: t.track_id, layer: t.layer ?? null, layers: t.layers })),
        };
        this._emit('downlink', this.downlink);
        break;
      case 'error':
        this._onError(msg);
        break;
      default:
        console.warn('confab: unknown server message', msg.type);
    }
  }

  /**
   * An `error`. One carrying a request id is about that message of ours: it settles the
   * operation waiting for it (a publish, whatever the code), or marks a chat message as
   * not sent. Either way the page hears of it (`error`).
   */
  _onError(msg) {
    if (msg.fatal) this._fatalError = msg;
    const request = this._requests.lookup(msg.request_id);
    this._requests.settle(msg);
    if (request?.type === 'chat') {
      request.chat.failed = { code: msg.code, message: msg.message };
      this._emit('chatfailed', {
        requestId: msg.request_id, code: msg.code, message: msg.message, chat: request.chat,
      });
    }
    this._emit('error', {
      code: msg.code,
      message: msg.message,
      fatal: !!msg.fatal,
      requestId: msg.request_id ?? null,
      request: request?.type ?? null,
    });
  }

  /** A publish the page did not wait for (one after a (re)join) failed. */
  _publishFailed(err) {
    // A refusal or a timeout was told already (`error`); anything else happened here.
    if (!(err instanceof ConfabError)) this._localError('publish', err);
  }

  _localError(what, err) {
    console.error(`confab: ${what}:`, err);
    this._emit('error', {
      code: 'client', message: `${what}: ${err.message ?? err}`, fatal: false, requestId: null, request: null,
    });
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
}

function defaultUrl() {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${scheme}//${location.host}/ws`;
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
