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
//   joined              {participant, participants, room, config, grants, rejoined}
//   participantjoined   {participant}
//   participantupdated  {participant}
//   participantleft     {participantId, participant}
//   trackadded          {mid, trackId, participantId, kind, source, track}
//   trackremoved        {mid, trackId, participantId, kind, source, track}
//   chat                {id, from, name, text, ts, history, local, requestId}
//   chatfailed          {requestId, code, message, chat}  the server refused our chat message
//                                          `chat` (the `chat` event's detail, now `failed`)
//   chatopen            {}
//   error               {code, message, fatal, requestId, request}  `request`: the type of
//                                          our message that caused it (publish, chat...), or
//                                          null for the server's own (docs/protocol.md)
//   mediastate          {target, state}   a peer connection's connectionState: publisher | subscriber
//   localtrack          {source, track, previous}   a local track was added, replaced or removed
//   screenshare         {active, track}   our own screen share started or stopped
//   activespeakers      {speakers}        the server's `active_speakers` (loudest first), when it sends it
//   reaction            {participantId, emoji}  someone reacted (us too: the server relays ours back)
//   resumed             {participant}     the signaling connection broke and the session was
//                                          resumed over a new one (peer connections kept)
//   icerestart          {reason}          ICE restarted on both connections (reason:
//                                          disconnected | failed | network | asked): the
//                                          network changed; same session (confab-ice.js)
//   publisherlayers     {mid, activeRids, sending}  the server's `publisher_layers` (dynacast),
//                                          once applied; `sending`: the encodings left active
//   downlink            {estimateBps, signal, tracks: [{trackId, layer, layers}]}  the
//                                          server's `downlink`: its estimate of our downlink
//                                          (signal: initial | loss | delay) and the layer it
//                                          forwards of each video track (null: none now);
//                                          also kept as `client.downlink`
//
// Requests: every message sent carries a `request_id` (requests.js), and an operation that
// waits for a reply is settled by the reply carrying its own id only. publish(),
// startScreenShare() and replaceTrack() reject with a ConfabError when the server refuses
// the offer (forbidden, limit_reached, rate_limited, invalid_sdp, unknown_track, internal);
// the `error` event tells the page too, and the next publish goes ahead as if it had not
// been tried.
//
// Grants (`joined.grants`, from the access token): `canPublish` and `canChat` say what the
// server allows. Without `canPublish` the client never offers media by itself; an explicit
// publish() is still sent, and the server refuses it (`forbidden`).
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
// Hands and reactions (confab-presence.js):
//   raiseHand(raised = true)              our hand up or down; `handRaised` is the server's word,
//                                          everyone's in their ParticipantInfo `hand_raised`
//   lowerHand(participantId)              someone else's hand (the `room_admin` grant only)
//   react(emoji)                          one of REACTIONS (👍 👏 😂 ❤️ 🎉 😮); 5 in 5 s at most
// Levels, speaking and network quality live beside this file: speaking.js, quality.js;
// which tile shows what and at which size: layout.js, subscriptions.js.
//
// This file holds the client's state (its constructor) and the public entry points; its
// methods live by responsibility in confab-session.js (signaling, joins, resume and
// rejoin), confab-publisher.js (local media, the publisher connection, screen share,
// simulcast), confab-subscriber.js (remote tracks, subscriptions, pins), confab-chat.js
// (the chat channel), confab-ice.js (ICE restart) and confab-presence.js (hands and
// reactions), and are copied onto ConfabClient below: one object, one `this`.

import { Dynacast } from './simulcast.js';
import { ConfabError, Requests } from './requests.js';
import { ALL_GRANTS, PROTOCOL_VERSION, SessionMethods } from './confab-session.js';
import { PublisherMethods } from './confab-publisher.js';
import { SubscriberMethods } from './confab-subscriber.js';
import { ChatMethods } from './confab-chat.js';
import { IceMethods } from './confab-ice.js';
import { PresenceMethods, REACTIONS } from './confab-presence.js';

export { ConfabError, PROTOCOL_VERSION, REACTIONS };

const DEFAULT_RECONNECT = { attempts: 5, firstDelayMs: 500, maxDelayMs: 4000 };

export class ConfabClient extends EventTarget {
  /**
   * @param {object} [options]
   * @param {RTCConfiguration} [options.rtcConfig] passed to both peer connections.
   * @param {{attempts:number, firstDelayMs:number, maxDelayMs:number}} [options.reconnect]
   * @param {boolean} [options.simulcast] publish the camera in three layers (default true;
   *   also off when the server's `joined.config.simulcast` is false).
   * @param {'udp'|'tcp'|'tls'} [options.turnTransport] use only the server's TURN URLs of
   *   this transport (diagnostics: with `iceTransportPolicy: 'relay'`, which path is tried).
   */
  constructor(options = {}) {
    super();
    this.rtcConfig = options.rtcConfig ?? { bundlePolicy: 'max-bundle', rtcpMuxPolicy: 'require' };
    this.reconnectPolicy = { ...DEFAULT_RECONNECT, ...(options.reconnect ?? {}) };
    this.simulcast = options.simulcast ?? true;
    this.turnTransport = options.turnTransport ?? null;

    this.state = 'idle';
    this.url = null;
    this.room = null;
    this.name = null;
    /** Our own ParticipantInfo, as the server last described it. */
    this.participant = null;
    /** Everyone else in the room: id -> ParticipantInfo. */
    this.participants = new Map();
    this.config = null;
    /** What the server lets us do (`joined.grants`), once joined. */
    this.grants = null;

    /** @type {RTCPeerConnection|null} */
    this.publisher = null;
    /** @type {RTCPeerConnection|null} */
    this.subscriber = null;
    /** @type {RTCDataChannel|null} */
    this.chatChannel = null;

    /** Remote tracks by subscriber transceiver mid. */
    this.remoteTracks = new Map();
    /** The server's last `downlink` report (see the `downlink` event), or null. */
    this.downlink = null;

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
    this._iceRestartAt = null; // performance.now() of the last ICE restart (confab-ice.js)
    this._networkListener = null;
    this._requests = new Requests(); // request ids, for the life of this client
    this._resetNegotiation();
  }

  _resetNegotiation() {
    this._subOffers = Promise.resolve(); // subscriber offers are applied one at a time, in order
    this._subMids = new Map(); // mid -> SubscribedTrack, from the latest applied offer
    this._pubChain = Promise.resolve();
    // Publishes waiting for their answer belong to the session that ends here: the tracks
    // are offered again after a rejoin.
    this._requests?.abandon(new ConfabError('disconnected', 'the session ended before the reply', false));
    this._lastPublish = null; // the publish sent last, resent on a resume while unanswered
    this._pubAnswered = false; // the server answered a publish on the current publisher
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

  /** Whether the server lets us send media (not while hidden). True until joined. */
  get canPublish() {
    const g = this.grants ?? ALL_GRANTS;
    return g.can_publish && !g.hidden;
  }

  /** Whether the server lets us chat (not while hidden). True until joined. */
  get canChat() {
    const g = this.grants ?? ALL_GRANTS;
    return g.can_chat && !g.hidden;
  }
}

/**
 * Copies the methods and accessors of each of `parts` (classes never instantiated) onto
 * `target.prototype`: the client stays one object with one set of fields, while its code is
 * kept in files by responsibility. A name defined twice is a mistake, refused at load.
 */
function mixin(target, ...parts) {
  for (const part of parts) {
    for (const [name, descriptor] of Object.entries(Object.getOwnPropertyDescriptors(part.prototype))) {
      if (name === 'constructor') continue;
      if (Object.hasOwn(target.prototype, name)) throw new Error(`ConfabClient.${name} is defined twice`);
      Object.defineProperty(target.prototype, name, descriptor);
    }
  }
}

mixin(ConfabClient, SessionMethods, PublisherMethods, SubscriberMethods, ChatMethods, IceMethods, PresenceMethods);

/**
 * The grants an access token (JWT) claims, read without checking its signature: a hint for
 * the page before it joins (a viewer is not asked for a camera). The server checks the
 * token, and `joined.grants` is what holds. Null without a readable token.
 */
export function tokenGrants(token) {
  if (!token) return null;
  try {
    const b64 = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const bytes = Uint8Array.from(atob(b64.padEnd(Math.ceil(b64.length / 4) * 4, '=')), (c) => c.charCodeAt(0));
    const claims = JSON.parse(new TextDecoder().decode(bytes));
    return { ...ALL_GRANTS, ...(claims.grants ?? {}) };
  } catch {
    return null;
  }
}
