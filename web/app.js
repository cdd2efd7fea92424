// The meeting page: lobby, participant grid, chat and controls, on top of confab.js.
//
// Everything the page knows about the meeting comes from ConfabClient events; the DOM is
// updated from them only. Tests drive the page through `data-testid` hooks and read
// `window.confab` (the client) for peer-connection stats.

import { ConfabClient } from './confab.js';

const $ = (sel) => document.querySelector(sel);

const ui = {
  status: $('[data-testid="status"]'),
  error: $('[data-testid="error"]'),
  roomLabel: $('[data-testid="room-label"]'),
  lobby: $('#lobby'),
  joinForm: $('#join-form'),
  nameInput: $('#name-input'),
  roomInput: $('#room-input'),
  joinButton: $('#join-button'),
  meeting: $('#meeting'),
  grid: $('#grid'),
  localTile: $('[data-testid="local-tile"]'),
  localVideo: $('#local-video'),
  audioSinks: $('#audio-sinks'),
  chatLog: $('#chat-log'),
  chatForm: $('#chat-form'),
  chatInput: $('#chat-input'),
  micButton: $('#mic-button'),
  camButton: $('#cam-button'),
  leaveButton: $('#leave-button'),
  tileTemplate: $('#tile-template'),
};

/** Errors that end with an automatic rejoin: no longer worth showing once connected. */
const TRANSIENT_ERRORS = new Set(['server_shutting_down', 'media_failed', 'slow_consumer']);

/** @type {ConfabClient|null} */
let client = null;
/** @type {MediaStream|null} */
let localStream = null;
/** participant id -> {el, video, audio, info, videoTrack, audioTrack} */
const tiles = new Map();

// ---------------------------------------------------------------------------------------
// Status and errors: always on screen, never only in the console
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
  ui.error.textContent = message;
  ui.error.dataset.code = code;
  ui.error.hidden = false;
}

function clearError() {
  ui.error.textContent = '';
  ui.error.dataset.code = '';
  ui.error.hidden = true;
}

// ---------------------------------------------------------------------------------------
// Lobby
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
}

/** Camera and microphone if possible, else whatever is there, else nothing (listen-only). */
async function acquireMedia() {
  if (!navigator.mediaDevices?.getUserMedia) {
    return { stream: null, note: 'No media devices available here: joined listen-only.' };
  }
  const attempts = [
    [{ audio: true, video: { width: 640, height: 480 } }, ''],
    [{ audio: true }, 'No camera: joined with audio only.'],
    [{ video: { width: 640, height: 480 } }, 'No microphone: joined with video only.'],
  ];
  for (const [constraints, note] of attempts) {
    try {
      return { stream: await navigator.mediaDevices.getUserMedia(constraints), note };
    } catch (err) {
      console.info('getUserMedia failed', constraints, err.name);
    }
  }
  return { stream: null, note: 'No camera or microphone available: joined listen-only (chat works).' };
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

  const { stream, note } = await acquireMedia();
  localStream = stream;

  client = new ConfabClient();
  window.confab = client;
  wireClient(client);
  if (stream) client.publish(stream);

  try {
    await client.connect({ room, name });
  } catch (err) {
    // The client already emitted `state` (disconnected) and, for a server refusal, `error`.
    showError(err.message, err.code);
    stopLocalMedia();
    ui.joinButton.disabled = false;
    return;
  }
  if (note) showError(note, 'media');
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
  const hasAudio = !!localStream?.getAudioTracks().length;
  const hasVideo = !!localStream?.getVideoTracks().length;
  renderControls();
  ui.micButton.disabled = !hasAudio;
  ui.camButton.disabled = !hasVideo;
  if (!hasAudio) ui.micButton.title = 'No microphone';
  if (!hasVideo) ui.camButton.title = 'No camera';
  renderLocalTile();
  ui.chatInput.focus();
}

function leaveMeeting(message) {
  ui.meeting.hidden = true;
  ui.lobby.hidden = false;
  ui.roomLabel.hidden = true;
  document.title = 'Confab';
  for (const id of [...tiles.keys()]) removeTile(id);
  ui.chatLog.replaceChildren();
  ui.localVideo.srcObject = null;
  stopLocalMedia();
  if (message) showError(message);
  ui.joinButton.focus();
}

function stopLocalMedia() {
  for (const t of localStream?.getTracks() ?? []) t.stop();
  localStream = null;
}

// ---------------------------------------------------------------------------------------
// Client events -> DOM
// ---------------------------------------------------------------------------------------

function wireClient(c) {
  c.addEventListener('state', ({ detail }) => {
    if (c !== client) return;
    setStatus(detail.state, detail.reason);
    if (detail.state === 'disconnected' && !ui.meeting.hidden && detail.reason !== 'left') {
      leaveMeeting(detail.reason === 'server unreachable'
        ? 'Lost the connection to the server and could not reconnect.'
        : detail.reason);
    }
    if (detail.state === 'connected' && TRANSIENT_ERRORS.has(ui.error.dataset.code)) {
      clearError(); // what made us reconnect is over
    }
  });
  c.addEventListener('error', ({ detail }) => {
    if (c !== client) return;
    showError(detail.message, detail.code);
  });
  c.addEventListener('joined', ({ detail }) => {
    if (detail.rejoined) {
      appendSystemMessage('Reconnected.');
    }
  });
  c.addEventListener('participantjoined', ({ detail }) => upsertTile(detail.participant));
  c.addEventListener('participantupdated', ({ detail }) => {
    if (detail.participant.id === c.participantId) return;
    upsertTile(detail.participant);
  });
  c.addEventListener('participantleft', ({ detail }) => removeTile(detail.participantId));
  c.addEventListener('trackadded', ({ detail }) => attachTrack(detail));
  c.addEventListener('trackremoved', ({ detail }) => detachTrack(detail));
  c.addEventListener('chat', ({ detail }) => appendChat(detail));
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
  ui.audioSinks.append(audio);
  t = { el, video: el.querySelector('video'), audio, info: null, videoTrack: null, audioTrack: null };
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
}

function removeTile(id) {
  const t = tiles.get(id);
  if (!t) return;
  t.video.srcObject = null;
  t.audio.srcObject = null;
  t.el.remove();
  t.audio.remove();
  tiles.delete(id);
}

function sourceMuted(info, source) {
  const tracks = (info?.tracks ?? []).filter((tr) => tr.source === source);
  return tracks.length > 0 && tracks.every((tr) => tr.muted);
}

function renderTile(t) {
  const name = t.info?.name ?? 'Joining…';
  t.el.querySelector('.tile-name').textContent = name;
  t.el.querySelector('.avatar').textContent = initials(t.info?.name);
  t.el.setAttribute('aria-label', name);
  const micMuted = sourceMuted(t.info, 'microphone');
  const camOff = sourceMuted(t.info, 'camera');
  t.el.querySelector('.flag-mic').hidden = !micMuted;
  t.el.querySelector('.flag-cam').hidden = !camOff;
  t.el.dataset.micMuted = String(micMuted);
  t.el.dataset.cameraOff = String(camOff);
  const showVideo = !!t.videoTrack && !camOff && !t.videoTrack.muted;
  t.el.dataset.video = showVideo ? 'on' : 'off';
}

function attachTrack({ participantId, kind, track }) {
  const t = ensureTile(participantId);
  if (kind === 'video') {
    t.videoTrack = track;
    t.video.srcObject = new MediaStream([track]);
    // A receiver's track is muted until media flows (and again when it stops).
    track.onmute = track.onunmute = () => renderTile(t);
  } else {
    t.audioTrack = track;
    t.audio.srcObject = new MediaStream([track]);
  }
  renderTile(t);
}

function detachTrack({ participantId, kind, track }) {
  const t = tiles.get(participantId);
  if (!t) return;
  if (kind === 'video' && t.videoTrack === track) {
    track.onmute = track.onunmute = null;
    t.videoTrack = null;
    t.video.srcObject = null;
  } else if (kind === 'audio' && t.audioTrack === track) {
    t.audioTrack = null;
    t.audio.srcObject = null;
  }
  renderTile(t);
}

function renderLocalTile() {
  const camOff = !!client?.isMuted('camera') || !localStream?.getVideoTracks().length;
  const micMuted = !!client?.isMuted('microphone') || !localStream?.getAudioTracks().length;
  ui.localTile.dataset.video = camOff ? 'off' : 'on';
  ui.localTile.querySelector('.flag-mic').hidden = !micMuted;
  ui.localTile.querySelector('.flag-cam').hidden = !camOff;
}

// ---------------------------------------------------------------------------------------
// Controls
// ---------------------------------------------------------------------------------------

function renderControls() {
  // Toggle buttons: the accessible name stays put, aria-pressed carries the state.
  const micMuted = !!client?.isMuted('microphone');
  const camOff = !!client?.isMuted('camera');
  ui.micButton.setAttribute('aria-pressed', String(micMuted));
  ui.micButton.title = micMuted ? 'Microphone is off: click to unmute' : 'Microphone is on';
  ui.camButton.setAttribute('aria-pressed', String(camOff));
  ui.camButton.title = camOff ? 'Camera is off: click to turn it on' : 'Camera is on';
}

ui.micButton.addEventListener('click', () => {
  if (!client) return;
  client.setMuted('microphone', !client.isMuted('microphone'));
  renderControls();
  renderLocalTile();
});

ui.camButton.addEventListener('click', () => {
  if (!client) return;
  client.setMuted('camera', !client.isMuted('camera'));
  renderControls();
  renderLocalTile();
});

ui.leaveButton.addEventListener('click', () => {
  if (client) client.leave();
  leaveMeeting('');
});

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
