// The meeting page: pre-join screen, participant grid and screen-share stage, people panel,
// chat and controls, on top of confab.js.
//
// Everything the page knows about the meeting comes from ConfabClient events; the DOM is
// updated from them only. Tests drive the page through `data-testid` hooks and read
// `window.confab` (the client) for peer-connection stats.
//
// Beside this file: prejoin.js (preview, meter, device choice before joining), devices.js
// (device lists and the remembered choice), speaking.js (levels, who speaks), quality.js
// (getStats network quality), people.js (the people panel).

import { ConfabClient } from './confab.js';
import { canChooseSpeaker, deviceOf, fillSelect, listDevices, saveChoice } from './devices.js';
import { Prejoin } from './prejoin.js';
import { SpeakingDetector } from './speaking.js';
import { QualityMonitor } from './quality.js';
import { renderPeople, sourceState } from './people.js';

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
const TRANSIENT_ERRORS = new Set(['server_shutting_down', 'media_failed', 'slow_consumer']);
const SELF = 'self'; // the speaking detector's key for our own microphone

/** @type {ConfabClient|null} */
let client = null;
/** @type {MediaStream|null} */
let localStream = null;
/**
 * participant id -> {el, video, audio, info, videoTrack, audioTrack, screen}
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
const speaking = new SpeakingDetector();
/** @type {QualityMonitor|null} */
let quality = null;
let bannerTimer = null;

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
    await client.connect({ room, name });
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
    history.replaceState(null, '', `/room/${encodeURIComponent(room)}`);
  }
  ui.localTile.querySelector('.tile-name').textContent = `${name} (you)`;
  ui.localTile.querySelector('.avatar').textContent = initials(name);
  ui.localVideo.srcObject = localStream;
  ui.shareButton.hidden = !navigator.mediaDevices?.getDisplayMedia;
  watchLocalSpeaking();
  quality = new QualityMonitor(client);
  quality.addEventListener('update', ({ detail }) => renderQuality(detail));
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
  speaking.unwatch(SELF);
  for (const id of [...tiles.keys()]) removeTile(id);
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
  c.addEventListener('error', mine((detail) => showError(detail.message, detail.code)));
  c.addEventListener('joined', mine((detail) => {
    if (detail.rejoined) {
      appendSystemMessage('Reconnected.');
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
  }));
  c.addEventListener('trackadded', mine((detail) => attachTrack(detail)));
  c.addEventListener('trackremoved', mine((detail) => detachTrack(detail)));
  c.addEventListener('chat', mine((detail) => appendChat(detail)));
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
  t = { el, video: el.querySelector('video'), audio, info: null, videoTrack: null, audioTrack: null, screen: null };
  t.video.dataset.testid = 'remote-video';
  tiles.set(id, t);
  ui.grid.append(el);
  renderTile(t);
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
  t.el.remove();
  t.audio.remove();
  tiles.delete(id);
  speaking.unwatch(id);
  updateScreenOrder(id);
  renderPeoplePanel();
}

function renderTile(t) {
  const name = t.info?.name ?? 'Joining…';
  t.el.querySelector('.tile-name').textContent = name;
  t.el.querySelector('.avatar').textContent = initials(t.info?.name);
  t.el.setAttribute('aria-label', name);
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
    t.video.srcObject = new MediaStream([track]);
    // A receiver's track is muted until media flows (and again when it stops).
    track.onmute = track.onunmute = () => renderTile(t);
  } else {
    t.audioTrack = track;
    t.audio.srcObject = new MediaStream([track]);
    speaking.watch(participantId, track);
  }
  renderTile(t);
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
    t.video.srcObject = null;
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
  if (!owner || !track) {
    ui.screenStage.hidden = true;
    ui.stage.classList.remove('sharing');
    ui.screenVideo.srcObject = null;
    delete ui.screenStage.dataset.participantId;
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
// Who is speaking. Computed here from each audio track's level (speaking.js). When the
// server sends `active_speakers` (the client's `activespeakers` event), feed
// speaking.set(id, ...) from it instead of watch(): everything below listens to `change`.
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

// ---------------------------------------------------------------------------------------
// People panel and quality badges
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
  ui.peopleCount.textContent = `(${1 + others.length})`;
}

function localState(source) {
  const has = source === 'microphone' ? localStream?.getAudioTracks().length : localStream?.getVideoTracks().length;
  if (!has) return 'none';
  return client?.isMuted(source) ? 'off' : 'on';
}

const GRADE_TEXT = { good: 'Good', fair: 'Fair', poor: 'Poor', unknown: 'Measuring…' };

function renderQuality({ remote, local }) {
  for (const [id, t] of tiles) {
    const q = remote.get(id);
    const badge = t.el.querySelector('[data-testid="quality-badge"]');
    if (!q && t.info && t.info.tracks.length === 0) {
      // Listen-only: nothing to measure, nothing to worry about.
      badge.textContent = 'Listen-only';
      badge.dataset.grade = 'none';
      badge.title = 'Sends no audio or video';
      continue;
    }
    const grade = q?.grade ?? 'unknown';
    const parts = [GRADE_TEXT[grade]];
    if (q?.width) parts.push(`${q.width}×${q.height}`);
    if (q?.fps != null && !q.audioOnly) parts.push(`${Math.round(q.fps)} fps`);
    if (q?.audioOnly) parts.push('audio');
    // Below "good", say why.
    if (grade === 'fair' || grade === 'poor') {
      parts.push(`loss ${q.lossPct.toFixed(1)} %`, `jitter ${Math.round(q.jitterMs ?? 0)} ms`);
    }
    badge.textContent = parts.join(' · ');
    badge.dataset.grade = grade;
    badge.dataset.width = q?.width ?? '';
    badge.dataset.fps = q?.fps != null ? String(Math.round(q.fps)) : '';
    badge.title = q?.lossPct != null
      ? `Network: ${GRADE_TEXT[grade]}. Loss ${q.lossPct.toFixed(1)} %, jitter ${Math.round(q.jitterMs ?? 0)} ms`
      : 'Network quality: measuring';
  }
  const b = ui.uploadBadge;
  b.dataset.state = local.state;
  if (local.state === 'none') b.textContent = 'Listen-only';
  else if (local.state === 'connecting') b.textContent = 'Connecting…';
  else if (local.state === 'stalled') b.textContent = 'Upload stalled';
  else {
    const parts = ['Sending'];
    if (local.width) parts.push(`${local.width}×${local.height}`);
    if (local.fps != null) parts.push(`${Math.round(local.fps)} fps`);
    if (local.screen) parts.push(`screen ${local.screen.width}×${local.screen.height}`);
    if (local.kbps != null) parts.push(`${local.kbps} kb/s`);
    b.textContent = parts.join(' · ');
  }
  b.title = local.limitedBy ? `Upload limited by ${local.limitedBy}` : 'Your upload';
  b.dataset.kbps = local.kbps ?? '';
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

function formatTime(ts) {
  return new Date(ts).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
}

function appendChat(msg) {
  const li = document.createElement('li');
  li.className = 'chat-message';
  li.dataset.testid = 'chat-message';
  if (msg.local) li.classList.add('mine');
  if (msg.history) li.classList.add('history');
  li.dataset.from = msg.from ?? '';
  li.dataset.history = String(!!msg.history);
  const head = document.createElement('div');
  head.className = 'chat-meta';
  const who = document.createElement('span');
  who.className = 'chat-name';
  who.dataset.testid = 'chat-name';
  who.textContent = msg.local ? `${msg.name} (you)` : msg.name;
  const time = document.createElement('time');
  time.dateTime = new Date(msg.ts).toISOString();
  time.textContent = formatTime(msg.ts);
  head.append(who, ' ', time);
  const text = document.createElement('p');
  text.className = 'chat-text';
  text.dataset.testid = 'chat-text';
  text.textContent = msg.text;
  li.append(head, text);
  appendToLog(li);
}

function appendSystemMessage(text) {
  const li = document.createElement('li');
  li.className = 'chat-system';
  li.textContent = text;
  appendToLog(li);
}

function appendToLog(li) {
  const log = ui.chatLog;
  const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
  log.append(li);
  if (atBottom) log.scrollTop = log.scrollHeight;
}

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
