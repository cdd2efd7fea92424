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
// layout.js (a gallery that fills the stage, speaker view), subscriptions.js (each tile tells
// the server whether and how large it shows a video), chat.js (the chat log's entries),
// panels.js (people and chat panels, unread badge, invite link, toasts).
//
// This file is the page's wiring: the lobby, joining and leaving, and the client's events
// turned into DOM updates. The rest of the page: page-state.js (its elements and shared
// state), notices.js (status, errors, banner), tiles.js (tiles, screen-share stage,
// layout, pins, speaking, people panel, reactions), controls.js (toolbar, devices popover,
// hand and reactions, shortcuts and their help, grants).
//
// What the access token allows (`joined.grants`) decides the controls: a viewer (no
// `can_publish`, or hidden) gets no microphone, camera, screen-share or input-device
// controls and opens no device (the token in the URL already says so before joining); a
// participant without `can_chat` gets a disabled chat input that says why.

import { ConfabClient, tokenGrants } from './confab.js';
import { Prejoin } from './prejoin.js';
import { QualityMonitor, renderBadges, toggleDetail } from './quality.js';
import { SubscriptionReporter } from './subscriptions.js';
import { appendChat, appendSystemMessage, markChatFailed, onChatRetry } from './chat.js';
import { closePanels, noteChat } from './panels.js';
import { SELF, departed, meeting, speaking, tiles, ui } from './page-state.js';
import { clearError, connectionBack, connectionLost, hideBanner, setStatus, showError } from './notices.js';
import {
  attachTrack, detachTrack, paintAvatar, removeTile, renderLayout, renderLocalTile, renderPeoplePanel,
  renderStage, showReaction, upsertTile, watchLocalSpeaking,
} from './tiles.js';
import { fillMeetingDevices, presenceRefused, publishBlocked, renderControls, setSpeaker } from './controls.js';

/** Errors that end with an automatic rejoin: no longer worth showing once connected. */
const TRANSIENT_ERRORS = new Set([
  'server_shutting_down', 'media_failed', 'slow_consumer', 'cluster_unavailable', 'timeout', 'internal',
]);
/** @type {QualityMonitor|null} */
let quality = null;

const prejoin = new Prejoin(document.querySelector('[data-testid="prejoin"]'), {
  onSpeakerChange: (id) => setSpeaker(id),
});

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

/**
 * The connection check page, for this room and token (a room token is only good for its
 * room), coming back here afterwards.
 */
function checkLink() {
  const q = new URLSearchParams();
  const room = roomFromUrl() || document.getElementById('room-input')?.value.trim();
  if (room) q.set('room', room);
  const token = tokenFromUrl();
  if (token) q.set('token', token);
  q.set('back', location.pathname + location.search);
  return `/check?${q}`;
}

const checkAnchor = document.getElementById('check-link');
checkAnchor?.addEventListener('click', () => { checkAnchor.href = checkLink(); });
checkAnchor?.addEventListener('focus', () => { checkAnchor.href = checkLink(); });

/** An access token given in the page's URL (`/room/standup?token=<jwt>`), if any. */
function tokenFromUrl() {
  return new URLSearchParams(location.search).get('token') || undefined;
}

function initLobby() {
  ui.roomInput.value = roomFromUrl();
  // A viewer's token says so before joining: no camera or microphone is opened for nothing.
  const viewer = publishBlocked(tokenGrants(tokenFromUrl()));
  if (viewer) prejoin.setViewer(viewer);
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
  meeting.speakerId = prejoin.speakerId;
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
  meeting.localStream = media.stream;
  meeting.speakerId = prejoin.speakerId;

  // `?relay` in the page's URL: media only through the TURN server (diagnostics, and
  // networks where only the TURN server is reachable); `?relay=udp` (tcp, tls): only over
  // that transport to it.
  const relay = new URLSearchParams(window.location.search).get('relay');
  meeting.client = new ConfabClient(relay != null ? {
    rtcConfig: { bundlePolicy: 'max-bundle', rtcpMuxPolicy: 'require', iceTransportPolicy: 'relay' },
    turnTransport: ['udp', 'tcp', 'tls'].includes(relay) ? relay : null,
  } : undefined);
  window.confab = meeting.client;
  departed.clear();
  wireClient(meeting.client);
  // Muted before joining: the client corrects the server's state once the tracks start.
  if (media.micOff) meeting.client.setMuted('microphone', true);
  if (media.camOff) meeting.client.setMuted('camera', true);
  if (meeting.localStream) meeting.client.publish(meeting.localStream);

  try {
    await meeting.client.connect({ room, name, token: tokenFromUrl() });
  } catch (err) {
    // The client already emitted `state` (disconnected) and, for a server refusal, `error`.
    showError(err.message, err.code);
    meeting.localStream = null;
    prejoin.giveBack(media);
    ui.joinButton.disabled = false;
    return;
  }
  if (!meeting.client.canPublish && meeting.localStream) {
    // The server says we send nothing (a token the page could not read): let the devices go.
    for (const t of meeting.localStream.getTracks()) t.stop();
    meeting.localStream = null;
    meeting.client.publish([]);
  }
  if (media.note && meeting.client.canPublish) showError(media.note.replace('you will join', 'joined'), 'media');
  enterMeeting(room, name);
}

function enterMeeting(room, name) {
  ui.lobby.hidden = true;
  ui.meeting.hidden = false;
  ui.joinButton.disabled = false;
  ui.roomLabel.textContent = `Room ${room}`;
  ui.roomLabel.hidden = false;
  ui.inviteTop.hidden = false;
  document.title = `${room} – Confab`;
  if (location.pathname !== `/room/${encodeURIComponent(room)}`) {
    // The token stays in the URL: a reload joins again with it.
    history.replaceState(null, '', `/room/${encodeURIComponent(room)}${location.search}`);
  }
  ui.localTile.querySelector('.tile-name').textContent = `${name} (you)`;
  paintAvatar(ui.localTile.querySelector('.avatar'), name);
  ui.localVideo.srcObject = meeting.localStream;
  watchLocalSpeaking();
  meeting.reporter = new SubscriptionReporter(meeting.client);
  renderLayout();
  quality = new QualityMonitor(meeting.client);
  quality.addEventListener('update', ({ detail }) => renderBadges(detail, tiles, ui.uploadBadge));
  quality.start();
  renderControls();
  renderLocalTile();
  renderPeoplePanel();
  ui.micButton.focus();
}

function leaveMeeting(message) {
  ui.meeting.hidden = true;
  ui.lobby.hidden = false;
  ui.roomLabel.hidden = true;
  ui.inviteTop.hidden = true;
  document.title = 'Confab';
  if (ui.devicesDialog.open) ui.devicesDialog.close();
  if (ui.helpDialog.open) ui.helpDialog.close();
  closePanels();
  hideBanner();
  quality?.stop();
  quality = null;
  for (const id of [...tiles.keys()]) removeTile(id);
  meeting.reporter?.clear();
  meeting.reporter = null;
  speaking.reset();
  meeting.pins = [];
  meeting.screenOrder = [];
  renderStage();
  ui.chatLog.replaceChildren();
  ui.localVideo.srcObject = null;
  stopLocalMedia();
  if (message) showError(message);
  prejoin.start();
  ui.joinButton.focus();
}

function stopLocalMedia() {
  if (meeting.client?.screenSharing) meeting.client.stopScreenShare();
  for (const t of meeting.localStream?.getTracks() ?? []) t.stop();
  meeting.localStream = null;
}

// ---------------------------------------------------------------------------------------
// Client events -> DOM
// ---------------------------------------------------------------------------------------

function wireClient(c) {
  const mine = (fn) => (ev) => {
    if (c === meeting.client) fn(ev.detail);
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
    // A refused chat message is marked in the chat log, beside the message itself.
    if (detail.request === 'chat') return;
    if (presenceRefused(detail)) return;
    if (detail.request === 'publish') {
      showError(`Could not publish: ${detail.message}`, detail.code);
      return;
    }
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
    // A rejoin is a new participant: a hand raised before it is down now.
    renderControls();
    renderLocalTile();
    renderPeoplePanel();
  }));
  c.addEventListener('participantjoined', mine((detail) => {
    // After our own reconnection everyone "leaves" and comes back with the same id.
    departed.delete(detail.participant.id);
    upsertTile(detail.participant);
  }));
  c.addEventListener('participantupdated', mine((detail) => {
    if (detail.participant.id === c.participantId) {
      renderControls();
      renderLocalTile();
      renderPeoplePanel();
    } else {
      upsertTile(detail.participant);
    }
  }));
  c.addEventListener('participantleft', mine((detail) => {
    departed.add(detail.participantId);
    removeTile(detail.participantId);
    // Pins are kept: after our own reconnection everyone comes back with the same id (the
    // server ignores pins of people who are gone).
  }));
  c.addEventListener('trackadded', mine((detail) => attachTrack(detail)));
  c.addEventListener('trackremoved', mine((detail) => detachTrack(detail)));
  c.addEventListener('chat', mine((detail) => {
    appendChat(ui.chatLog, detail);
    noteChat(detail);
  }));
  c.addEventListener('reaction', mine((detail) => showReaction(detail.participantId, detail.emoji)));
  c.addEventListener('chatfailed', mine((detail) => {
    markChatFailed(ui.chatLog, detail.requestId, detail.code, detail.message);
  }));
  c.addEventListener('localtrack', mine((detail) => {
    if (detail.source === 'screen') {
      meeting.screenOrder = meeting.screenOrder.filter((id) => id !== SELF);
      if (detail.track) meeting.screenOrder.push(SELF);
      renderStage();
    } else {
      // The client swapped the track inside its stream (or made one: we had no devices).
      meeting.localStream = c.localStream ?? meeting.localStream;
      ui.localVideo.srcObject = meeting.localStream;
      if (detail.source === 'microphone') watchLocalSpeaking();
    }
    renderControls();
    renderLocalTile();
    renderPeoplePanel();
  }));
}

ui.leaveButton.addEventListener('click', () => {
  if (meeting.client) meeting.client.leave();
  leaveMeeting('');
});

// ---------------------------------------------------------------------------------------
// Chat
// ---------------------------------------------------------------------------------------

ui.chatForm.addEventListener('submit', (ev) => {
  ev.preventDefault();
  const text = ui.chatInput.value;
  // The composer keeps the keyboard (the Send button would take it otherwise).
  ui.chatInput.focus();
  if (!meeting.client || text.trim() === '') return;
  try {
    meeting.client.sendChat(text);
    ui.chatInput.value = '';
  } catch (err) {
    showError(err.message, err.code);
  }
});

// Retry of a message the server refused: sent again as a new message, the old entry goes.
onChatRetry((text) => {
  if (!meeting.client) return false;
  try {
    meeting.client.sendChat(text);
    ui.chatInput.focus();
    return true;
  } catch (err) {
    showError(err.message, err.code);
    return false;
  }
});

// ---------------------------------------------------------------------------------------
// Tiles' signal badges (details on click) and the people list's "Lower hand"
// ---------------------------------------------------------------------------------------

ui.stage.addEventListener('click', (ev) => {
  const badge = ev.target.closest('.signal');
  if (badge) toggleDetail(badge);
});
ui.stage.addEventListener('keydown', (ev) => {
  if (ev.key !== 'Escape') return;
  const badge = ev.target.closest?.('.signal[aria-expanded="true"]');
  if (badge) toggleDetail(badge, false);
});
ui.peopleList.addEventListener('click', (ev) => {
  const button = ev.target.closest('[data-testid="lower-hand"]');
  const id = button?.closest('[data-participant-id]')?.dataset.participantId;
  if (!id || !meeting.client) return;
  try {
    meeting.client.lowerHand(id);
  } catch (err) {
    showError(err.message, err.code);
  }
});

initLobby();
