// The page's notices: the connection status, the error box and the connection banner
// (lost / restored). Always on screen, never only in the console.

import { ui } from './page-state.js';

let bannerTimer = null;

const STATUS_TEXT = {
  idle: 'Not connected',
  connecting: 'Connecting…',
  connected: 'Connected',
  reconnecting: 'Reconnecting…',
  disconnected: 'Disconnected',
};

export function setStatus(state, reason = '') {
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

export function showError(message, code = '') {
  ui.errorText.textContent = message;
  ui.error.dataset.code = code;
  ui.error.hidden = false;
}

export function clearError() {
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

export function hideBanner() {
  clearTimeout(bannerTimer);
  ui.banner.hidden = true;
  ui.banner.dataset.kind = '';
}

export function connectionLost(text) {
  if (!ui.meeting.hidden) showBanner('lost', text);
}

export function connectionBack() {
  if (ui.banner.dataset.kind === 'lost') showBanner('back', 'Connection restored.');
}
