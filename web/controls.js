// The meeting toolbar: microphone, camera and screen-share toggles, raise hand, reactions,
// the devices popover (camera, microphone, speaker) beside the microphone and camera, the
// keyboard shortcuts and their help dialog, and what our grants (`joined.grants`) hide or
// disable, with the note that says why. Panels and the invite link: panels.js.
//
// Shortcuts (as in Meet): Ctrl+D microphone, Ctrl+E camera, Ctrl+Alt+H hand, Ctrl+Alt+C
// chat, Ctrl+Alt+P people, ? this list (⌘ for Ctrl on a Mac).

import { canChooseSpeaker, deviceOf, fillSelect, listDevices, saveChoice } from './devices.js';
import { REACTIONS } from './confab.js';
import { meeting, tiles, ui } from './page-state.js';
import { showError } from './notices.js';
import { togglePanel, toast } from './panels.js';
import { applySpeaker, renderLocalTile, renderPeoplePanel } from './tiles.js';

// ---------------------------------------------------------------------------------------
// Buttons, and what our grants allow
// ---------------------------------------------------------------------------------------

/** Why these grants send no media, or '' when they do. */
export function publishBlocked(grants) {
  if (grants?.hidden) return 'You are hidden from the others: you send no audio or video.';
  if (grants && !grants.can_publish) {
    return 'You are a viewer: your access token does not allow sending audio or video.';
  }
  return '';
}

/** Why these grants cannot chat, or '' when they can. */
function chatBlocked(grants) {
  if (grants?.hidden) return 'You are hidden from the others: you cannot chat.';
  if (grants && !grants.can_chat) return 'Your access token does not allow chatting.';
  return '';
}

export function renderControls() {
  // Toggle buttons: the accessible name stays put, aria-pressed carries the state.
  const micMuted = !!meeting.client?.isMuted('microphone');
  const camOff = !!meeting.client?.isMuted('camera');
  const hasAudio = !!meeting.localStream?.getAudioTracks().length;
  const hasVideo = !!meeting.localStream?.getVideoTracks().length;
  ui.micButton.setAttribute('aria-pressed', String(micMuted));
  ui.micButton.disabled = !hasAudio;
  ui.micButton.dataset.tip = !hasAudio ? 'No microphone'
    : micMuted ? 'Turn on microphone (Ctrl+D)' : 'Turn off microphone (Ctrl+D)';
  ui.camButton.setAttribute('aria-pressed', String(camOff));
  ui.camButton.disabled = !hasVideo;
  ui.camButton.dataset.tip = !hasVideo ? 'No camera'
    : camOff ? 'Turn on camera (Ctrl+E)' : 'Turn off camera (Ctrl+E)';
  const sharing = !!meeting.client?.screenSharing;
  ui.shareButton.setAttribute('aria-pressed', String(sharing));
  ui.shareButton.dataset.tip = sharing ? 'Stop sharing your screen' : 'Share your screen';
  const hand = !!meeting.client?.handRaised;
  ui.handButton.setAttribute('aria-pressed', String(hand));
  ui.handButton.dataset.tip = hand ? 'Lower your hand (Ctrl+Alt+H)' : 'Raise your hand (Ctrl+Alt+H)';
  renderGrants();
}

/** Hides what our grants do not allow, and says why. */
function renderGrants() {
  const grants = meeting.client?.grants ?? null;
  const noMedia = publishBlocked(grants);
  ui.micButton.hidden = !!noMedia;
  ui.camButton.hidden = !!noMedia;
  ui.shareButton.hidden = !!noMedia || !navigator.mediaDevices?.getDisplayMedia;
  // A viewer may still choose where the others are heard, nothing else.
  ui.devicesButton.hidden = !!noMedia && !canChooseSpeaker;
  ui.camDevicesButton.hidden = !!noMedia;
  // Hidden from the others: a hand or a reaction nobody may see.
  ui.handButton.hidden = !!grants?.hidden;
  ui.reactButton.hidden = !!grants?.hidden;
  ui.devicesButton.setAttribute('aria-label', noMedia ? 'Devices: speaker' : 'Devices: camera, microphone and speaker');
  for (const select of ui.devicesDialog.querySelectorAll('select[data-kind]')) {
    if (select.dataset.kind !== 'audiooutput') select.closest('label').hidden = !!noMedia;
  }
  ui.grantsNote.textContent = noMedia;
  ui.grantsNote.hidden = !noMedia;
  const noChat = chatBlocked(grants);
  ui.chatInput.disabled = !!noChat;
  ui.chatSend.disabled = !!noChat;
  ui.chatInput.placeholder = noChat ? 'Chat is not available to you' : 'Message everyone';
  ui.chatNote.textContent = noChat;
  ui.chatNote.hidden = !noChat;
}

function toggleMute(source) {
  const button = source === 'microphone' ? ui.micButton : ui.camButton;
  if (!meeting.client || button.disabled || button.hidden) return;
  meeting.client.setMuted(source, !meeting.client.isMuted(source));
  renderControls();
  renderLocalTile();
  renderPeoplePanel();
}

ui.micButton.addEventListener('click', () => toggleMute('microphone'));
ui.camButton.addEventListener('click', () => toggleMute('camera'));

// ---------------------------------------------------------------------------------------
// Raise hand and reactions (the server relays both: confab-presence.js)
// ---------------------------------------------------------------------------------------

function toggleHand() {
  if (!meeting.client || ui.handButton.hidden) return;
  try {
    meeting.client.raiseHand(!meeting.client.handRaised);
  } catch (err) {
    showError(err.message, err.code);
  }
}

ui.handButton.addEventListener('click', toggleHand);

ui.reactionsMenu.replaceChildren(...REACTIONS.map((emoji) => {
  const b = document.createElement('button');
  b.type = 'button';
  b.textContent = emoji;
  b.dataset.emoji = emoji;
  b.dataset.testid = 'reaction';
  b.setAttribute('aria-label', `React ${emoji}`);
  b.addEventListener('click', () => {
    setReactionsOpen(false);
    ui.reactButton.focus();
    try {
      meeting.client?.react(emoji);
    } catch (err) {
      showError(err.message, err.code);
    }
  });
  return b;
}));

function setReactionsOpen(open) {
  ui.reactionsMenu.hidden = !open;
  ui.reactButton.setAttribute('aria-expanded', String(open));
  if (open) ui.reactionsMenu.querySelector('button')?.focus();
}

ui.reactButton.addEventListener('click', () => setReactionsOpen(ui.reactionsMenu.hidden));
ui.reactionsMenu.addEventListener('keydown', (ev) => {
  const buttons = [...ui.reactionsMenu.querySelectorAll('button')];
  const at = buttons.indexOf(document.activeElement);
  if (ev.key === 'Escape') {
    setReactionsOpen(false);
    ui.reactButton.focus();
  } else if (ev.key === 'ArrowRight' || ev.key === 'ArrowLeft') {
    const step = ev.key === 'ArrowRight' ? 1 : -1;
    buttons[(at + step + buttons.length) % buttons.length].focus();
  } else {
    return;
  }
  ev.preventDefault();
  ev.stopPropagation();
});
ui.reactionsMenu.addEventListener('focusout', (ev) => {
  if (!ui.reactionsMenu.contains(ev.relatedTarget) && ev.relatedTarget !== ui.reactButton) setReactionsOpen(false);
});

/** Tells about refusals of a hand or a reaction in a few words (not a red banner). */
export function presenceRefused(detail) {
  if (detail.request === 'reaction' && detail.code === 'rate_limited') {
    toast('Too many reactions: wait a few seconds');
    return true;
  }
  if (detail.request === 'lower_hand' && detail.code === 'forbidden') {
    toast('Only a host can lower someone else\'s hand');
    return true;
  }
  return false;
}

// ---------------------------------------------------------------------------------------
// Screen share
// ---------------------------------------------------------------------------------------

async function toggleScreenShare() {
  if (!meeting.client) return;
  try {
    if (meeting.client.screenSharing) await meeting.client.stopScreenShare();
    else await meeting.client.startScreenShare();
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
  meeting.client?.stopScreenShare();
  ui.shareButton.focus();
});

// ---------------------------------------------------------------------------------------
// Devices dialog: camera, microphone and speaker
// ---------------------------------------------------------------------------------------

export function setSpeaker(id) {
  meeting.speakerId = id;
  for (const t of tiles.values()) applySpeaker(t.audio);
}

export async function fillMeetingDevices() {
  const devices = await listDevices();
  const current = {
    videoinput: deviceOf(meeting.client?.localTrack('camera')),
    audioinput: deviceOf(meeting.client?.localTrack('microphone')),
    audiooutput: meeting.speakerId || 'default',
  };
  for (const select of ui.devicesDialog.querySelectorAll('select[data-kind]')) {
    fillSelect(select, devices[select.dataset.kind], current[select.dataset.kind]);
  }
}

ui.devicesDialog.querySelector('.speaker-field').hidden = !canChooseSpeaker;

/** The caret that opened the devices popover: where the keyboard goes back to. */
let devicesOpener = ui.devicesButton;

async function openDevices(opener, kind) {
  if (ui.devicesDialog.open) {
    const same = opener === devicesOpener;
    ui.devicesDialog.close();
    if (same) return;
  }
  devicesOpener = opener;
  ui.devicesNote.textContent = '';
  await fillMeetingDevices();
  // Next to the caret, above the toolbar, inside the window.
  const box = opener.getBoundingClientRect();
  const width = Math.min(352, window.innerWidth - 16);
  const left = Math.max(8, Math.min(box.left + box.width / 2 - width / 2, window.innerWidth - width - 8));
  ui.devicesDialog.style.setProperty('--popover-left', `${Math.round(left)}px`);
  ui.devicesDialog.show();
  opener.setAttribute('aria-expanded', 'true');
  ui.devicesDialog.querySelector(`select[data-kind="${kind}"]`)?.focus();
}

ui.devicesButton.addEventListener('click', () => openDevices(ui.devicesButton, 'audioinput'));
ui.camDevicesButton.addEventListener('click', () => openDevices(ui.camDevicesButton, 'videoinput'));

ui.devicesDialog.addEventListener('close', () => {
  ui.devicesButton.setAttribute('aria-expanded', 'false');
  ui.camDevicesButton.setAttribute('aria-expanded', 'false');
  if (ui.devicesDialog.contains(document.activeElement) || document.activeElement === document.body) devicesOpener.focus();
});
// A popover, not a modal: Escape and a click elsewhere close it.
ui.devicesDialog.addEventListener('keydown', (ev) => {
  if (ev.key === 'Escape') {
    ev.preventDefault();
    ui.devicesDialog.close();
  }
});
document.addEventListener('pointerdown', (ev) => {
  if (ui.devicesDialog.open && !ui.devicesDialog.contains(ev.target)
    && !ui.devicesButton.contains(ev.target) && !ui.camDevicesButton.contains(ev.target)) {
    ui.devicesDialog.close();
  }
  if (!ui.reactionsMenu.hidden && !ui.reactionsMenu.contains(ev.target) && !ui.reactButton.contains(ev.target)) {
    setReactionsOpen(false);
  }
});

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
    if (!meeting.client) return;
    select.disabled = true;
    try {
      const track = await meeting.client.switchDevice(kind, deviceId);
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
// Keyboard shortcuts and their help dialog
// ---------------------------------------------------------------------------------------

ui.helpButton.addEventListener('click', () => ui.helpDialog.showModal());
ui.helpDialog.addEventListener('close', () => ui.helpButton.focus());

/** Whether the keyboard is typing somewhere (a `?` there is text, not a shortcut). */
function typing(target) {
  return target instanceof HTMLElement
    && (target.isContentEditable || ['INPUT', 'TEXTAREA', 'SELECT'].includes(target.tagName));
}

document.addEventListener('keydown', (ev) => {
  if (ui.meeting.hidden || !meeting.client || ev.repeat) return;
  const ctrl = ev.ctrlKey || ev.metaKey;
  const key = ev.key.toLowerCase();
  // Ctrl+Alt+letter: `key` may be another character on some layouts; `code` is the key.
  const letter = ev.code?.startsWith('Key') ? ev.code.slice(3).toLowerCase() : key;
  let action = null;
  if (ctrl && !ev.altKey && !ev.shiftKey && letter === 'd') action = () => toggleMute('microphone');
  else if (ctrl && !ev.altKey && !ev.shiftKey && letter === 'e') action = () => toggleMute('camera');
  else if (ctrl && ev.altKey && letter === 'h') action = toggleHand;
  else if (ctrl && ev.altKey && letter === 'c') action = () => togglePanel('chat');
  else if (ctrl && ev.altKey && letter === 'p') action = () => togglePanel('people');
  else if (!ctrl && !ev.altKey && key === '?' && !typing(ev.target) && !ui.helpDialog.open) action = () => ui.helpDialog.showModal();
  if (!action) return;
  ev.preventDefault();
  action();
});
