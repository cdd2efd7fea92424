// The meeting page: pre-join screen, participant grid and screen-share stage, people panel,
// chat and controls, on top of confab.js.
//
// Everything the page knows about the meeting comes from ConfabClient events; the DOM is
// updated from them only. Tests drive the page through `data-testid` hooks and read
// `window.confab` (the client) for peer-connection stats.
//
// Beside this file: prejoin.js (preview, meter, device choice before joining), devices.js
// (device lists and the remembered choice), speaking.js (levels, who speaks: the server's
// active speakers), quality.js (getStats network quality), people.js (the people panel),
// layout.js (paged gallery and speaker view), subscriptions.js (each tile tells the server
// whether and how large it shows a video), chat.js (the chat log's entries).

import { ConfabClient } from './confab.js';
import { canChooseSpeaker, deviceOf, fillSelect, listDevices, saveChoice } from './devices.js';
import { Prejoin } from './prejoin.js';
import { ActiveSpeakers } from './speaking.js';
import { QualityMonitor, renderBadges } from './quality.js';
import { renderPeople, sourceState } from './people.js';
import { StageLayout } from './layout.js';
import { SubscriptionReporter } from './subscriptions.js';
import { appendChat, appendSystemMessage } from './chat.js';

const $ = (sel) => document.querySelector(sel);

const ui = {
  status: $('[data-testid="status"]'),
  error: $('[data-testid="error"]'),
  errorText: $('[data-testid="error-text"]'),
  errorDismiss: $('[data-testid="error-dismiss"]'),
  banner: $('[data-testid="connection-banner"]'),
  roomLabel: $('[data-testid="room-label"]'),
  lobby: $('#lobby'),
  joinForm: $('#join-form'),
  nameInput: $('#name-input'),
  roomInput: $('#room-input'),
  joinButton: $('#join-button'),
  meeting: $('#meeting'),
  stage: $('#stage'),
  screenStage: $('#screen-stage'),
  screenVideo: $('#screen-video'),
  screenOwner: $('[data-testid="screen-owner"]'),
  stageStopShare: $('#stage-stop-share'),
  grid: $('#grid'),
  speakerMain: $('#speaker-main'),
  galleryButton: $('#gallery-button'),
  speakerButton: $('#speaker-button'),
  pager: $('[data-testid="pager"]'),
  pagePrev: $('#page-prev'),
  pageNext: $('#page-next'),
  pageLabel: $('#page-label'),
  localTile: $('[data-testid="local-tile"]'),
  localVideo: $('#local-video'),
  uploadBadge: $('[data-testid="upload-state"]'),
  audioSinks: $('#audio-sinks'),
  peopleList: $('#people-list'),
  peopleCount: $('[data-testid="people-count"]'),
  chatLog: $('#chat-log'),
  chatForm: $('#chat-form'),
  chatInput: $('#chat-input'),
  micButton: $('#mic-button'),
  camButton: $('#cam-button'),
  shareButton: $('#share-button'),
  devicesButton: $('#devices-button'),
  devicesDialog: $('#devices-dialog'),
  devicesNote: $('[data-testid="devices-note"]'),
  leaveButton: $('#leave-button'),
  tileTemplate: $('#tile-template'),
  personTemplate: $('#person-template'),
};

/** Errors that end with an automatic rejoin: no longer worth showing once connected. */
const TRANSIENT_ERRORS = new Set(['server_shutting_down', 'media_failed', 'slow_consumer', 'cluster_unavailable']);
const SELF = 'self'; // the speaking detector's key for our own microphone

/** @type {ConfabClient|null} */
let client = null;
/** @type {MediaStream|null} */
let localStream = null;
/**
 * participant id -> {el, video, audio, info, videoTrack, videoTrackId, audioTrack, screen}
 * where screen is {track, trackId} of their screen share track, live or not.
 */
const tiles = new Map();
/** Participant ids (or SELF) in the order their screen share went live: the last one is shown. */
let screenOrder = [];
/**
 * Participants who left. An offer in flight when someone left may still announce their
 * tracks: those are ignored. (A participant who rejoins gets a new id; the others come
 * back with theirs after our own reconnection, and are taken off this list then.)
 */
const departed = new Set();
/** The audio output chosen for remote audio ('' or 'default': the system's). */
let speakerId = '';
/** Who speaks: the server's `active_speakers`, measured locally until the server sends any. */
const speaking = new ActiveSpeakers();
/** @type {QualityMonitor|null} */
let quality = null;
/** @type {SubscriptionReporter|null} */
let reporter = null;
/** Participants we pin: shown first in the gallery, large in speaker view, always received. */
let pins = [];
let bannerTimer = null;

const layout = new StageLayout({
  stage: ui.stage,
  grid: ui.grid,
  main: ui.speakerMain,
  galleryButton: ui.galleryButton,
  speakerButton: ui.speakerButton,
  pager: ui.pager,
  prev: ui.pagePrev,
  next: ui.pageNext,
  pageLabel: ui.pageLabel,
}, { dominant: (accept) => speaking.dominant(accept) });
try {
  layout.setMode(localStorage.getItem('confab.layout') ?? 'gallery');
} catch { /* storage may be unavailable */ }
layout.addEventListener('change', () => {
  try {
    localStorage.setItem('confab.layout', layout.mode);
  } catch { /* ignore */ }
  renderLayout();
});
// For tests and debugging, like window.confab.
window.confabLayout = layout;

const prejoin = new Prejoin($('[data-testid="prejoin"]'), {
  onSpeakerChange: (id) => setSpeaker(id),
});

// ---------------------------------------------------------------------------------------
// Status, errors and the connection banner: always on screen, never only in the console
// ---------------------------------------------------------------------------------------

const STATUS_TEXT = {
  idle: 'Not connected',
  connecting: 'Connecting…',
  connected: 'Connected',
  reconnecting: 'Reconnecting…',
  disconnected: 'Disconnected',
};

function setStatus(state, reason = '') {
  ui.status.dataset.state = state;
  let text = STATUS_TEXT[state] ?? state;
  if (state === 'reconnecting' && reason) text = `Reconnecting… (${reason})`;
  if (state === 'disconnected') {
    if (reason === 'left') text = 'You left the meeting';
    else if (reason === 'server unreachable') text = 'Server unreachable';
    else if (reason) text = `Disconnected: ${reason}`;
  }
  ui.status.textContent = text;
}

function showError(message, code = '') {
  ui.errorText.textContent = message;
  ui.error.dataset.code = code;
  ui.error.hidden = false;
}

function clearError() {
  ui.errorText.textContent = '';
  ui.error.dataset.code = '';
  ui.error.hidden = true;
}

ui.errorDismiss.addEventListener('click', clearError);

/**
 * The banner over the meeting: `lost` while the connection is down (signaling or media),
 * `back` for a few seconds once it returns. It overlays the page: nothing moves.
 */
function showBanner(kind, text) {
  clearTimeout(bannerTimer);
  ui.banner.dataset.kind = kind;
  ui.banner.textContent = text;
  ui.banner.hidden = false;
  if (kind === 'back') bannerTimer = setTimeout(hideBanner, 4000);
}

function hideBanner() {
  clearTimeout(bannerTimer);
  ui.banner.hidden = true;
  ui.banner.dataset.kind = '';
}

function connectionLost(text) {
  if (!ui.meeting.hidden) showBanner('lost', text);
}

function connectionBack() {
  if (ui.banner.dataset.kind === 'lost') showBanner('back', 'Connection restored.');
}

// ---------------------------------------------------------------------------------------
// Lobby and pre-join
// ---------------------------------------------------------------------------------------

function roomFromUrl() {
  const m = location.pathname.match(/^\/room\/([^/]+)\/?$/);
  if (!m) return '';
  try {
    return decodeURIComponent(m[1]);
  } catch {
    return m[1];
  }
}

/** An access token given in the page's URL (`/room/standup?token=<jwt>`), if any. */
function tokenFromUrl() {
  return new URLSearchParams(location.search).get('token') || undefined;
}

function initLobby() {
  ui.roomInput.value = roomFromUrl();
  try {
    ui.nameInput.value = localStorage.getItem('confab.name') ?? '';
  } catch { /* storage may be unavailable */ }
  (ui.nameInput.value ? ui.roomInput : ui.nameInput).focus();
  if (ui.nameInput.value && ui.roomInput.value) ui.joinButton.focus();
  ui.joinForm.addEventListener('submit', (ev) => {
    ev.preventDefault();
    join();
  });
  prejoin.start();
  speakerId = prejoin.speakerId;
  navigator.mediaDevices?.addEventListener?.('devicechange', () => {
    if (ui.meeting.hidden) prejoin.refreshDevices();
    else if (ui.devicesDialog.open) fillMeetingDevices();
  });
}

async function join() {
  const name = ui.nameInput.value.trim();
  const room = ui.roomInput.value.trim();
  if (!name) {
    showError('Please enter your name.');
    ui.nameInput.focus();
    return;
  }
  if (!room) {
    showError('Please enter a room name.');
    ui.roomInput.focus();
    return;
  }
  clearError();
  try {
    localStorage.setItem('confab.name', name);
  } catch { /* ignore */ }
  ui.joinButton.disabled = true;
  setStatus('connecting');

  const media = await prejoin.take();
  localStream = media.stream;
  speakerId = prejoin.speakerId;

  client = new ConfabClient();
  window.confab = client;
  departed.clear();
  wireClient(client);
  // Muted before joining: the client corrects the server's state once the tracks start.
  if (media.micOff) client.setMuted('microphone', true);
  if (media.camOff) client.setMuted('camera', true);
  if (localStream) client.publish(localStream);

  try {
    await client.connect({ room, name, token: tokenFromUrl() });
  } catch (err) {
    // The client already emitted `state` (disconnected) and, for a server refusal, `error`.
    showError(err.message, err.code);
    localStream = null;
    prejoin.giveBack(media);
    ui.joinButton.disabled = false;
    return;
  }
  if (media.note) showError(media.note.replace('you will join', 'joined'), 'media');
  enterMeeting(room, name);
}

function enterMeeting(room, name) {
  ui.lobby.hidden = true;
  ui.meeting.hidden = false;
  ui.joinButton.disabled = false;
  ui.roomLabel.textContent = `Room ${room}`;
  ui.roomLabel.hidden = false;
  document.title = `${room} – Confab`;
  if (location.pathname !== `/room/${encodeURIComponent(room)}`) {
    // The token stays in the URL: a reload joins again with it.
    history.replaceState(null, '', `/room/${encodeURIComponent(room)}${location.search}`);
  }
  ui.localTile.querySelector('.tile-name').textContent = `${name} (you)`;
  ui.localTile.querySelector('.avatar').textContent = initials(name);
  ui.localVideo.srcObject = localStream;
  ui.shareButton.hidden = !navigator.mediaDevices?.getDisplayMedia;
  watchLocalSpeaking();
  reporter = new SubscriptionReporter(client);
  renderLayout();
  quality = new QualityMonitor(client);
  quality.addEventListener('update', ({ detail }) => renderBadges(detail, tiles, ui.uploadBadge));
  quality.start();
  renderControls();
  renderLocalTile();
  renderPeoplePanel();
  ui.chatInput.focus();
}

function leaveMeeting(message) {
  ui.meeting.hidden = true;
  ui.lobby.hidden = false;
  ui.roomLabel.hidden = true;
  document.title = 'Confab';
  if (ui.devicesDialog.open) ui.devicesDialog.close();
  hideBanner();
  quality?.stop();
  quality = null;
  for (const id of [...tiles.keys()]) removeTile(id);
  reporter?.clear();
  reporter = null;
  speaking.reset();
  pins = [];
  screenOrder = [];
  renderStage();
  ui.chatLog.replaceChildren();
  ui.localVideo.srcObject = null;
  stopLocalMedia();
  if (message) showError(message);
  prejoin.start();
  ui.joinButton.focus();
}

function stopLocalMedia() {
  if (client?.screenSharing) client.stopScreenShare();
  for (const t of localStream?.getTracks() ?? []) t.stop();
  localStream = null;
}

// ---------------------------------------------------------------------------------------
// Client events -> DOM
// ---------------------------------------------------------------------------------------

function wireClient(c) {
  const mine = (fn) => (ev) => {
    if (c === client) fn(ev.detail);
  };
  c.addEventListener('state', mine((detail) => {
    setStatus(detail.state, detail.reason);
    if (detail.state === 'reconnecting') connectionLost('Connection lost. Reconnecting…');
    if (detail.state === 'disconnected' && !ui.meeting.hidden && detail.reason !== 'left') {
      leaveMeeting(detail.reason === 'server unreachable'
        ? 'Lost the connection to the server and could not reconnect.'
        : detail.reason);
    }
    if (detail.state === 'connected' && TRANSIENT_ERRORS.has(ui.error.dataset.code)) {
      clearError(); // what made us reconnect is over
    }
  }));
  c.addEventListener('mediastate', mine((detail) => {
    if (c.state !== 'connected') return;
    if (detail.state === 'disconnected' || detail.state === 'failed') {
      connectionLost('Media connection interrupted. Trying to recover…');
    } else if (detail.state === 'connected') {
      connectionBack();
    }
  }));
  c.addEventListener('error', mine((detail) => {
    // A subscription that crossed the track's removal: nothing for a person to act on.
    if (detail.code === 'unknown_track') {
      console.info('confab: subscription for a track that just went away', detail.message);
      return;
    }
    showError(detail.message, detail.code);
  }));
  c.addEventListener('activespeakers', mine((detail) => {
    speaking.fromServer(detail.speakers.map((id) => (id === c.participantId ? SELF : id)));
    if (ui.peopleList.dataset.speakingSource !== speaking.source) renderPeoplePanel();
  }));
  c.addEventListener('joined', mine((detail) => {
    if (detail.rejoined) {
      appendSystemMessage(ui.chatLog, 'Reconnected.');
      connectionBack();
    }
    renderPeoplePanel();
  }));
  c.addEventListener('participantjoined', mine((detail) => {
    // After our own reconnection everyone "leaves" and comes back with the same id.
    departed.delete(detail.participant.id);
    upsertTile(detail.participant);
  }));
  c.addEventListener('participantupdated', mine((detail) => {
    if (detail.participant.id === c.participantId) renderPeoplePanel();
    else upsertTile(detail.participant);
  }));
  c.addEventListener('participantleft', mine((detail) => {
    departed.add(detail.participantId);
    removeTile(detail.participantId);
    // Pins are kept: after our own reconnection everyone comes back with the same id (the
    // server ignores pins of people who are gone).
  }));
  c.addEventListener('trackadded', mine((detail) => attachTrack(detail)));
  c.addEventListener('trackremoved', mine((detail) => detachTrack(detail)));
  c.addEventListener('chat', mine((detail) => appendChat(ui.chatLog, detail)));
  c.addEventListener('localtrack', mine((detail) => {
    if (detail.source === 'screen') {
      screenOrder = screenOrder.filter((id) => id !== SELF);
      if (detail.track) screenOrder.push(SELF);
      renderStage();
    } else {
      // The client swapped the track inside its stream (or made one: we had no devices).
      localStream = c.localStream ?? localStream;
      ui.localVideo.srcObject = localStream;
      if (detail.source === 'microphone') watchLocalSpeaking();
    }
    renderControls();
    renderLocalTile();
    renderPeoplePanel();
  }));
}

// ---------------------------------------------------------------------------------------
// Tiles
// ---------------------------------------------------------------------------------------

function initials(name) {
  return (name ?? '?')
    .split(/\s+/)
    .filter(Boolean)
    .slice(0, 2)
    .map((w) => [...w][0].toUpperCase())
    .join('') || '?';
}

function ensureTile(id) {
  let t = tiles.get(id);
  if (t) return t;
  const el = ui.tileTemplate.content.firstElementChild.cloneNode(true);
  el.dataset.participantId = id;
  el.dataset.testid = 'remote-tile';
  const audio = document.createElement('audio');
  audio.autoplay = true;
  audio.dataset.participantId = id;
  audio.dataset.testid = 'remote-audio';
  applySpeaker(audio);
  ui.audioSinks.append(audio);
  t = {
    el, video: el.querySelector('video'), audio, info: null,
    videoTrack: null, videoTrackId: null, audioTrack: null, screen: null,
  };
  t.video.dataset.testid = 'remote-video';
  el.querySelector('.tile-pin').addEventListener('click', () => togglePin(id));
  tiles.set(id, t);
  ui.grid.append(el);
  renderTile(t);
  renderLayout();
  return t;
}

function upsertTile(info) {
  const t = ensureTile(info.id);
  t.info = info;
  renderTile(t);
  updateScreenOrder(info.id);
  renderPeoplePanel();
}

function removeTile(id) {
  const t = tiles.get(id);
  if (!t) return;
  t.video.srcObject = null;
  t.audio.srcObject = null;
  reporter?.unobserve(t.el);
  t.el.remove();
  t.audio.remove();
  tiles.delete(id);
  speaking.unwatch(id);
  updateScreenOrder(id);
  renderLayout();
  renderPeoplePanel();
}

function renderTile(t) {
  const name = t.info?.name ?? 'Joining…';
  t.el.querySelector('.tile-name').textContent = name;
  t.el.querySelector('.avatar').textContent = initials(t.info?.name);
  t.el.setAttribute('aria-label', name);
  const pin = t.el.querySelector('.tile-pin');
  const pinned = pins.includes(t.el.dataset.participantId);
  pin.setAttribute('aria-label', `Pin ${name}`);
  pin.setAttribute('aria-pressed', String(pinned));
  pin.title = pinned ? `${name} is pinned: click to unpin` : `Pin ${name}: always shown, large in speaker view`;
  t.el.dataset.pinned = String(pinned);
  const micMuted = sourceState(t.info, 'microphone') === 'off';
  const camOff = sourceState(t.info, 'camera') === 'off';
  t.el.querySelector('.flag-mic').hidden = !micMuted;
  t.el.querySelector('.flag-cam').hidden = !camOff;
  t.el.querySelector('.flag-screen').hidden = !screenLive(t);
  t.el.dataset.micMuted = String(micMuted);
  t.el.dataset.cameraOff = String(camOff);
  const showVideo = !!t.videoTrack && !camOff && !t.videoTrack.muted;
  t.el.dataset.video = showVideo ? 'on' : 'off';
}

function attachTrack({ participantId, kind, source, track, trackId }) {
  if (departed.has(participantId)) return;
  const t = ensureTile(participantId);
  if (source === 'screen') {
    t.screen = { track, trackId };
    track.onmute = track.onunmute = () => renderStage();
    updateScreenOrder(participantId);
  } else if (kind === 'video') {
    t.videoTrack = track;
    t.videoTrackId = trackId;
    t.video.srcObject = new MediaStream([track]);
    // A receiver's track is muted until media flows (and again when it stops).
    track.onmute = track.onunmute = () => renderTile(t);
  } else {
    t.audioTrack = track;
    t.audio.srcObject = new MediaStream([track]);
    speaking.watch(participantId, track);
  }
  renderTile(t);
  if (kind === 'video') renderLayout();
  renderPeoplePanel();
}

function detachTrack({ participantId, kind, source, track }) {
  const t = tiles.get(participantId);
  if (!t) return;
  if (source === 'screen' && t.screen?.track === track) {
    track.onmute = track.onunmute = null;
    t.screen = null;
    updateScreenOrder(participantId);
  } else if (kind === 'video' && t.videoTrack === track) {
    track.onmute = track.onunmute = null;
    t.videoTrack = null;
    t.videoTrackId = null;
    t.video.srcObject = null;
    // A track that comes back (our reconnection) is reported afresh.
    reporter?.unobserve(t.el);
  } else if (kind === 'audio' && t.audioTrack === track) {
    t.audioTrack = null;
    t.audio.srcObject = null;
    speaking.unwatch(participantId);
  }
  if (!t.info && !t.videoTrack && !t.audioTrack && !t.screen) {
    removeTile(participantId); // tracks of someone we never heard of, now gone
    return;
  }
  renderTile(t);
  renderPeoplePanel();
}

function renderLocalTile() {
  // Flags say "turned off"; a device we do not have is the people panel's "No cam".
  const camState = localState('camera');
  ui.localTile.dataset.video = camState === 'on' ? 'on' : 'off';
  ui.localTile.querySelector('.flag-mic').hidden = localState('microphone') !== 'off';
  ui.localTile.querySelector('.flag-cam').hidden = camState !== 'off';
}

// ---------------------------------------------------------------------------------------
// Screen share: the stage shows the latest live share, with the sharer's name
// ---------------------------------------------------------------------------------------

/**
 * A remote screen share is live while its track is published and not muted: the server
 * keeps the track of an ended share and marks it muted (see confab.js stopScreenShare).
 */
function screenLive(t) {
  if (!t?.screen) return false;
  const info = t.info?.tracks?.find((tr) => tr.id === t.screen.trackId);
  return !!info && !info.muted;
}

function updateScreenOrder(id) {
  const live = screenLive(tiles.get(id));
  const listed = screenOrder.includes(id);
  if (live && !listed) screenOrder.push(id);
  if (!live && listed) screenOrder = screenOrder.filter((x) => x !== id);
  renderStage();
  const t = tiles.get(id);
  if (t) t.el.querySelector('.flag-screen').hidden = !live;
}

function renderStage() {
  const owner = screenOrder[screenOrder.length - 1];
  const local = owner === SELF;
  const track = local ? client?.screenShareTrack : tiles.get(owner)?.screen?.track;
  // Only the screen on the stage is received; others (ended, or older) are paused.
  for (const [id, t] of tiles) {
    if (t.screen) client?.setSubscription(t.screen.trackId, { subscribed: id === owner && screenLive(t) });
  }
  if (!owner || !track) {
    ui.screenStage.hidden = true;
    ui.stage.classList.remove('sharing');
    ui.screenVideo.srcObject = null;
    delete ui.screenStage.dataset.participantId;
    renderLayout();
    return;
  }
  if (ui.screenVideo.srcObject?.getVideoTracks()[0] !== track) {
    ui.screenVideo.srcObject = new MediaStream([track]);
  }
  const name = local ? 'You are' : `${tiles.get(owner)?.info?.name ?? 'Someone'} is`;
  ui.screenOwner.textContent = `${name} sharing the screen`;
  ui.screenStage.dataset.participantId = local ? (client?.participantId ?? '') : owner;
  ui.screenStage.dataset.local = String(local);
  ui.screenStage.setAttribute('aria-label', ui.screenOwner.textContent);
  ui.stageStopShare.hidden = !local;
  ui.screenStage.hidden = false;
  ui.stage.classList.add('sharing');
  renderLayout();
}

async function toggleScreenShare() {
  if (!client) return;
  try {
    if (client.screenSharing) await client.stopScreenShare();
    else await client.startScreenShare();
  } catch (err) {
    // Declining the browser's picker is a choice, not an error worth a red banner.
    if (err.name !== 'NotAllowedError' && err.name !== 'AbortError') {
      showError(`Cannot share the screen: ${err.message}`, 'screen');
    }
  }
  renderControls();
}

ui.shareButton.addEventListener('click', toggleScreenShare);
ui.stageStopShare.addEventListener('click', () => {
  client?.stopScreenShare();
  ui.shareButton.focus();
});

// ---------------------------------------------------------------------------------------
// Layout: the paged gallery or the speaker view (layout.js), pins, and what each tile
// asks of the server (subscriptions.js)
// ---------------------------------------------------------------------------------------

function renderLayout() {
  if (!reporter) return; // not in a meeting
  layout.setTiles([
    { id: SELF, el: ui.localTile, remote: false },
    ...[...tiles].map(([id, t]) => ({ id, el: t.el, remote: true })),
  ]);
  layout.setSharing(!ui.screenStage.hidden);
  layout.setPinned(pins);
  const placed = layout.render();
  for (const [id, t] of tiles) {
    const where = placed.get(id);
    if (t.videoTrackId && where) {
      reporter.observe(t.el, { trackId: t.videoTrackId, quality: where.quality, shown: where.shown });
    }
  }
}

function setPins(ids) {
  pins = ids;
  client?.setPins(pins);
  for (const t of tiles.values()) renderTile(t);
  renderLayout();
}

function togglePin(id) {
  setPins(pins.includes(id) ? pins.filter((x) => x !== id) : [...pins, id]);
}

// ---------------------------------------------------------------------------------------
// Who is speaking: speaking.js gives one answer (the server's active speakers, or levels
// measured here until the server sends any); the tiles, the people panel and the speaker
// view follow its events.
// ---------------------------------------------------------------------------------------

function watchLocalSpeaking() {
  const mic = localStream?.getAudioTracks()[0];
  if (mic) speaking.watch(SELF, mic);
  else speaking.unwatch(SELF);
}

speaking.addEventListener('change', ({ detail: { id, speaking: on } }) => {
  const el = id === SELF ? ui.localTile : tiles.get(id)?.el;
  if (el) el.dataset.speaking = String(on);
  renderPeoplePanel();
});

speaking.addEventListener('dominant', () => {
  if (layout.mode === 'speaker') renderLayout();
});

// ---------------------------------------------------------------------------------------
// People panel
// ---------------------------------------------------------------------------------------

function renderPeoplePanel() {
  if (!client) return;
  const self = {
    id: client.participantId ?? SELF,
    name: client.participant?.name ?? client.name,
    local: true,
    microphone: localState('microphone'),
    camera: localState('camera'),
    screen: client.screenSharing ? 'on' : 'off',
    speaking: speaking.isSpeaking(SELF),
    joinedAt: 0,
  };
  const others = [...tiles.entries()].filter(([, t]) => t.info).map(([id, t]) => ({
    id,
    name: t.info.name,
    local: false,
    microphone: sourceState(t.info, 'microphone'),
    camera: sourceState(t.info, 'camera'),
    screen: screenLive(t) ? 'on' : 'off',
    speaking: speaking.isSpeaking(id),
    joinedAt: t.info.joined_at ?? 0,
  }));
  others.sort((a, b) => a.joinedAt - b.joinedAt || a.name.localeCompare(b.name));
  renderPeople(ui.peopleList, ui.personTemplate, [self, ...others]);
  // Where "speaking" comes from: 'server' (active_speakers) or 'local' (levels measured here).
  ui.peopleList.dataset.speakingSource = speaking.source;
  ui.peopleCount.textContent = `(${1 + others.length})`;
}

function localState(source) {
  const has = source === 'microphone' ? localStream?.getAudioTracks().length : localStream?.getVideoTracks().length;
  if (!has) return 'none';
  return client?.isMuted(source) ? 'off' : 'on';
}

// ---------------------------------------------------------------------------------------
// Controls and devices
// ---------------------------------------------------------------------------------------

function renderControls() {
  // Toggle buttons: the accessible name stays put, aria-pressed carries the state.
  const micMuted = !!client?.isMuted('microphone');
  const camOff = !!client?.isMuted('camera');
  const hasAudio = !!localStream?.getAudioTracks().length;
  const hasVideo = !!localStream?.getVideoTracks().length;
  ui.micButton.setAttribute('aria-pressed', String(micMuted));
  ui.micButton.disabled = !hasAudio;
  ui.micButton.title = !hasAudio ? 'No microphone'
    : micMuted ? 'Microphone is off: click to unmute' : 'Microphone is on';
  ui.camButton.setAttribute('aria-pressed', String(camOff));
  ui.camButton.disabled = !hasVideo;
  ui.camButton.title = !hasVideo ? 'No camera'
    : camOff ? 'Camera is off: click to turn it on' : 'Camera is on';
  const sharing = !!client?.screenSharing;
  ui.shareButton.setAttribute('aria-pressed', String(sharing));
  ui.shareButton.title = sharing ? 'You are sharing your screen: click to stop' : 'Share your screen';
}

ui.micButton.addEventListener('click', () => {
  if (!client) return;
  client.setMuted('microphone', !client.isMuted('microphone'));
  renderControls();
  renderLocalTile();
  renderPeoplePanel();
});

ui.camButton.addEventListener('click', () => {
  if (!client) return;
  client.setMuted('camera', !client.isMuted('camera'));
  renderControls();
  renderLocalTile();
  renderPeoplePanel();
});

ui.leaveButton.addEventListener('click', () => {
  if (client) client.leave();
  leaveMeeting('');
});

function applySpeaker(audio) {
  if (!canChooseSpeaker || !speakerId) return;
  audio.setSinkId(speakerId).catch((err) => console.warn('setSinkId failed', err));
}

function setSpeaker(id) {
  speakerId = id;
  for (const t of tiles.values()) applySpeaker(t.audio);
}

async function fillMeetingDevices() {
  const devices = await listDevices();
  const current = {
    videoinput: deviceOf(client?.localTrack('camera')),
    audioinput: deviceOf(client?.localTrack('microphone')),
    audiooutput: speakerId || 'default',
  };
  for (const select of ui.devicesDialog.querySelectorAll('select[data-kind]')) {
    fillSelect(select, devices[select.dataset.kind], current[select.dataset.kind]);
  }
}

ui.devicesDialog.querySelector('.speaker-field').hidden = !canChooseSpeaker;

ui.devicesButton.addEventListener('click', async () => {
  ui.devicesNote.textContent = '';
  await fillMeetingDevices();
  ui.devicesDialog.showModal();
});

ui.devicesDialog.addEventListener('close', () => ui.devicesButton.focus());

for (const select of ui.devicesDialog.querySelectorAll('select[data-kind]')) {
  select.addEventListener('change', async () => {
    const kind = select.dataset.kind;
    const deviceId = select.value;
    const device = (await listDevices())[kind].find((d) => d.deviceId === deviceId);
    if (device) saveChoice(kind, device);
    if (kind === 'audiooutput') {
      setSpeaker(deviceId);
      ui.devicesNote.textContent = `Speaker: ${device?.label || 'changed'}.`;
      return;
    }
    if (!client) return;
    select.disabled = true;
    try {
      const track = await client.switchDevice(kind, deviceId);
      ui.devicesNote.textContent = `${kind === 'videoinput' ? 'Camera' : 'Microphone'}: ${track.label}.`;
    } catch (err) {
      ui.devicesNote.textContent = `Cannot switch to that device: ${err.message}`;
      await fillMeetingDevices();
    } finally {
      select.disabled = false;
    }
  });
}

// ---------------------------------------------------------------------------------------
// Chat
// ---------------------------------------------------------------------------------------

ui.chatForm.addEventListener('submit', (ev) => {
  ev.preventDefault();
  const text = ui.chatInput.value;
  if (!client || text.trim() === '') return;
  try {
    client.sendChat(text);
    ui.chatInput.value = '';
  } catch (err) {
    showError(err.message, err.code);
  }
});

initLobby();
