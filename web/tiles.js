// The others on screen: their tiles (video, audio, name, flags, initials avatar, raised
// hand, reactions), our own tile (floating or in the grid), the screen-share stage, the
// layout (layout.js: a gallery that fills the stage, or speaker view) and pins, who is
// speaking, and the people panel. Driven by app.js from the client's events.

import { canChooseSpeaker } from './devices.js';
import { renderPeople, sourceState } from './people.js';
import { StageLayout } from './layout.js';
import { SELF, departed, meeting, speaking, tiles, ui } from './page-state.js';

const layout = new StageLayout({
  stage: ui.stage,
  area: ui.stageMain,
  grid: ui.grid,
  selfButton: ui.selfGridButton,
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
  layout.setSelfView(localStorage.getItem('confab.selfView') ?? 'float');
  layout.setCorner(localStorage.getItem('confab.corner') ?? 'br');
} catch { /* storage may be unavailable */ }
layout.addEventListener('change', () => {
  try {
    localStorage.setItem('confab.layout', layout.mode);
    localStorage.setItem('confab.selfView', layout.selfView);
    localStorage.setItem('confab.corner', layout.corner);
  } catch { /* ignore */ }
  renderLayout();
});
layout.addEventListener('resize', () => renderLayout());

// Our floating tile: the arrow keys move it to another corner; a drag drops it in the
// corner nearest to where it is let go.
ui.localTile.addEventListener('keydown', (ev) => {
  if (ui.localTile.dataset.float !== 'true' || ev.target !== ui.localTile) return;
  const to = layout.cornerToward(ev.key);
  if (to === layout.corner) return;
  ev.preventDefault();
  layout.setCorner(to, true);
});
ui.localTile.addEventListener('pointerdown', (ev) => {
  if (ui.localTile.dataset.float !== 'true' || ev.button !== 0 || ev.target.closest('button')) return;
  const tile = ui.localTile;
  const start = { x: ev.clientX, y: ev.clientY };
  tile.setPointerCapture(ev.pointerId);
  tile.dataset.dragging = 'true';
  const move = (e) => {
    tile.style.transform = `translate(${e.clientX - start.x}px, ${e.clientY - start.y}px)`;
  };
  const up = (e) => {
    tile.removeEventListener('pointermove', move);
    tile.removeEventListener('pointerup', up);
    tile.removeEventListener('pointercancel', up);
    tile.style.transform = '';
    tile.dataset.dragging = 'false';
    const area = ui.stageMain.getBoundingClientRect();
    const v = e.clientY < area.top + area.height / 2 ? 't' : 'b';
    const h = e.clientX < area.left + area.width / 2 ? 'l' : 'r';
    layout.setCorner(`${v}${h}`, true);
  };
  tile.addEventListener('pointermove', move);
  tile.addEventListener('pointerup', up);
  tile.addEventListener('pointercancel', up);
});
// For tests and debugging, like window.confab.
window.confabLayout = layout;

// ---------------------------------------------------------------------------------------
// Tiles
// ---------------------------------------------------------------------------------------

export function initials(name) {
  // The first letter of the first two words that have one ("pub-0-0 (2)" is "P", not "P(").
  const letters = (name ?? '')
    .split(/\s+/)
    .map((w) => w.match(/\p{L}|\p{N}/u)?.[0])
    .filter(Boolean);
  const words = letters.some((c) => /\p{L}/u.test(c)) ? letters.filter((c) => /\p{L}/u.test(c)) : letters;
  return words.slice(0, 2).map((c) => c.toUpperCase()).join('') || '?';
}

/** A hue (0-359) from a name: the same name gets the same avatar colour everywhere. */
export function avatarHue(name) {
  let h = 0;
  for (const ch of String(name ?? '')) h = (h * 31 + ch.codePointAt(0)) >>> 0;
  return h % 360;
}

/** Fills an avatar element with the initials of `name`, coloured from the name. */
export function paintAvatar(el, name) {
  const text = initials(name);
  if (el.textContent !== text) el.textContent = text;
  el.style.setProperty('--avatar-hue', String(avatarHue(name)));
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

export function upsertTile(info) {
  const t = ensureTile(info.id);
  t.info = info;
  renderTile(t);
  updateScreenOrder(info.id);
  renderPeoplePanel();
}

export function removeTile(id) {
  const t = tiles.get(id);
  if (!t) return;
  t.video.srcObject = null;
  t.audio.srcObject = null;
  meeting.reporter?.unobserve(t.el);
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
  paintAvatar(t.el.querySelector('.avatar'), t.info?.name);
  const hand = !!t.info?.hand_raised;
  t.el.dataset.hand = String(hand);
  t.el.querySelector('.hand-flag').hidden = !hand;
  t.el.setAttribute('aria-label', name);
  const pin = t.el.querySelector('.tile-pin');
  const pinned = meeting.pins.includes(t.el.dataset.participantId);
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

export function attachTrack({ participantId, kind, source, track, trackId }) {
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

export function detachTrack({ participantId, kind, source, track }) {
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
    meeting.reporter?.unobserve(t.el);
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

export function renderLocalTile() {
  // Flags say "turned off"; a device we do not have is the people panel's "No cam".
  const hand = !!meeting.client?.handRaised;
  ui.localTile.dataset.hand = String(hand);
  ui.localTile.querySelector('.hand-flag').hidden = !hand;
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
 * keeps the track of an ended share and marks it muted (see stopScreenShare in confab-publisher.js).
 */
function screenLive(t) {
  if (!t?.screen) return false;
  const info = t.info?.tracks?.find((tr) => tr.id === t.screen.trackId);
  return !!info && !info.muted;
}

function updateScreenOrder(id) {
  const live = screenLive(tiles.get(id));
  const listed = meeting.screenOrder.includes(id);
  if (live && !listed) meeting.screenOrder.push(id);
  if (!live && listed) meeting.screenOrder = meeting.screenOrder.filter((x) => x !== id);
  renderStage();
  const t = tiles.get(id);
  if (t) t.el.querySelector('.flag-screen').hidden = !live;
}

export function renderStage() {
  const owner = meeting.screenOrder[meeting.screenOrder.length - 1];
  const local = owner === SELF;
  const track = local ? meeting.client?.screenShareTrack : tiles.get(owner)?.screen?.track;
  // Only the screen on the stage is received; others (ended, or older) are paused.
  for (const [id, t] of tiles) {
    if (t.screen) meeting.client?.setSubscription(t.screen.trackId, { subscribed: id === owner && screenLive(t) });
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
  ui.screenStage.dataset.participantId = local ? (meeting.client?.participantId ?? '') : owner;
  ui.screenStage.dataset.local = String(local);
  ui.screenStage.setAttribute('aria-label', ui.screenOwner.textContent);
  ui.stageStopShare.hidden = !local;
  ui.screenStage.hidden = false;
  ui.stage.classList.add('sharing');
  renderLayout();
}

// ---------------------------------------------------------------------------------------
// Layout: the paged gallery or the speaker view (layout.js), pins, and what each tile
// asks of the server (subscriptions.js)
// ---------------------------------------------------------------------------------------

export function renderLayout() {
  if (!meeting.reporter) return; // not in a meeting
  layout.setTiles([
    { id: SELF, el: ui.localTile, remote: false },
    ...[...tiles].map(([id, t]) => ({ id, el: t.el, remote: true })),
  ]);
  layout.setSharing(!ui.screenStage.hidden);
  layout.setPinned(meeting.pins);
  const placed = layout.render();
  for (const [id, t] of tiles) {
    const where = placed.get(id);
    if (t.videoTrackId && where) {
      meeting.reporter.observe(t.el, { trackId: t.videoTrackId, quality: where.quality, shown: where.shown });
    }
  }
}

function setPins(ids) {
  meeting.pins = ids;
  meeting.client?.setPins(meeting.pins);
  for (const t of tiles.values()) renderTile(t);
  renderLayout();
}

function togglePin(id) {
  setPins(meeting.pins.includes(id) ? meeting.pins.filter((x) => x !== id) : [...meeting.pins, id]);
}

// ---------------------------------------------------------------------------------------
// Who is speaking: speaking.js gives one answer (the server's active speakers, or levels
// measured here until the server sends any); the tiles, the people panel and the speaker
// view follow its events.
// ---------------------------------------------------------------------------------------

export function watchLocalSpeaking() {
  const mic = meeting.localStream?.getAudioTracks()[0];
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

export function renderPeoplePanel() {
  if (!meeting.client) return;
  const self = {
    id: meeting.client.participantId ?? SELF,
    name: meeting.client.participant?.name ?? meeting.client.name,
    local: true,
    microphone: localState('microphone'),
    camera: localState('camera'),
    screen: meeting.client.screenSharing ? 'on' : 'off',
    speaking: speaking.isSpeaking(SELF),
    hand: !!meeting.client.handRaised,
    canLower: false,
    joinedAt: 0,
  };
  const admin = !!meeting.client.grants?.room_admin;
  const others = [...tiles.entries()].filter(([, t]) => t.info).map(([id, t]) => ({
    id,
    name: t.info.name,
    local: false,
    microphone: sourceState(t.info, 'microphone'),
    camera: sourceState(t.info, 'camera'),
    screen: screenLive(t) ? 'on' : 'off',
    speaking: speaking.isSpeaking(id),
    hand: !!t.info.hand_raised,
    canLower: admin && !!t.info.hand_raised,
    joinedAt: t.info.joined_at ?? 0,
  }));
  others.sort((a, b) => a.joinedAt - b.joinedAt || a.name.localeCompare(b.name));
  renderPeople(ui.peopleList, ui.personTemplate, [self, ...others], paintAvatar);
  // Where "speaking" comes from: 'server' (active_speakers) or 'local' (levels measured here).
  ui.peopleList.dataset.speakingSource = speaking.source;
  ui.peopleCount.textContent = `(${1 + others.length})`;
  ui.peopleButton.setAttribute('aria-label', `People (${1 + others.length})`);
}

function localState(source) {
  const has = source === 'microphone'
    ? meeting.localStream?.getAudioTracks().length
    : meeting.localStream?.getVideoTracks().length;
  if (!has) return 'none';
  return meeting.client?.isMuted(source) ? 'off' : 'on';
}

/** Plays a tile's audio on the chosen speaker (devices dialog or pre-join). */
export function applySpeaker(audio) {
  if (!canChooseSpeaker || !meeting.speakerId) return;
  audio.setSinkId(meeting.speakerId).catch((err) => console.warn('setSinkId failed', err));
}

// ---------------------------------------------------------------------------------------
// Reactions: shown briefly over the sender's tile
// ---------------------------------------------------------------------------------------

const REACTION_MS = 3000;

/** Floats `emoji` over the tile of `participantId` (ours when it is our own id). */
export function showReaction(participantId, emoji) {
  const own = participantId === meeting.client?.participantId;
  const el = own ? ui.localTile : tiles.get(participantId)?.el;
  if (!el) return;
  // What a test (or a person with a screen reader, through the people list) can read after
  // the bubble has gone.
  el.dataset.reaction = emoji;
  el.dataset.reactions = String(Number(el.dataset.reactions ?? 0) + 1);
  const bubble = document.createElement('span');
  bubble.className = 'reaction-bubble';
  bubble.dataset.testid = 'reaction-bubble';
  bubble.textContent = emoji;
  // A little spread, so that a burst is not one pile.
  bubble.style.left = `${35 + Math.random() * 30}%`;
  el.querySelector('.reactions-float').append(bubble);
  setTimeout(() => bubble.remove(), REACTION_MS);
}
