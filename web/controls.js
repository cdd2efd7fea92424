// The meeting controls: microphone, camera and screen-share buttons, the devices dialog
// (camera, microphone, speaker), and what our grants (`joined.grants`) hide or disable,
// with the note that says why.

import { canChooseSpeaker, deviceOf, fillSelect, listDevices, saveChoice } from './devices.js';
import { meeting, tiles, ui } from './page-state.js';
import { showError } from './notices.js';
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
  ui.micButton.title = !hasAudio ? 'No microphone'
    : micMuted ? 'Microphone is off: click to unmute' : 'Microphone is on';
  ui.camButton.setAttribute('aria-pressed', String(camOff));
  ui.camButton.disabled = !hasVideo;
  ui.camButton.title = !hasVideo ? 'No camera'
    : camOff ? 'Camera is off: click to turn it on' : 'Camera is on';
  const sharing = !!meeting.client?.screenSharing;
  ui.shareButton.setAttribute('aria-pressed', String(sharing));
  ui.shareButton.title = sharing ? 'You are sharing your screen: click to stop' : 'Share your screen';
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

ui.micButton.addEventListener('click', () => {
  if (!meeting.client) return;
  meeting.client.setMuted('microphone', !meeting.client.isMuted('microphone'));
  renderControls();
  renderLocalTile();
  renderPeoplePanel();
});

ui.camButton.addEventListener('click', () => {
  if (!meeting.client) return;
  meeting.client.setMuted('camera', !meeting.client.isMuted('camera'));
  renderControls();
  renderLocalTile();
  renderPeoplePanel();
});

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
