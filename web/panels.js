// The meeting's side panels (people, chat), the chat button's unread badge, the invite link
// and the page's short notices (toasts).
//
// Panels open and close from the toolbar (and Ctrl+Alt+P / Ctrl+Alt+C). On a wide window
// both may be open beside the stage; on a narrow one they lie over the stage, one at a time;
// on a phone each is a full-screen sheet above the toolbar (style.css). Opening the chat
// clears its unread count and puts the cursor in the composer.

import { meeting, ui } from './page-state.js';

const NARROW = window.matchMedia('(max-width: 60rem)');
const PANELS = {
  people: { panel: ui.peoplePanel, button: ui.peopleButton },
  chat: { panel: ui.chatPanel, button: ui.chatButton },
};
let unread = 0;
let toastTimer = null;

export function isOpen(name) {
  return !PANELS[name].panel.hidden;
}

/** Opens (or closes) panel `name`; `focus`: where the keyboard goes. */
export function setPanel(name, open, { focus = true } = {}) {
  const { panel, button } = PANELS[name];
  if (open && NARROW.matches) {
    for (const other of Object.keys(PANELS)) if (other !== name) setPanel(other, false, { focus: false });
  }
  const wasOpen = !panel.hidden;
  panel.hidden = !open;
  button.setAttribute('aria-expanded', String(open));
  if (name === 'chat' && open) {
    setUnread(0);
    const log = ui.chatLog;
    log.scrollTop = log.scrollHeight;
    if (focus && !ui.chatInput.disabled) ui.chatInput.focus();
  } else if (open && focus) {
    panel.querySelector('.panel-close')?.focus();
  }
  // Closing the panel that has the keyboard gives it back to the toolbar.
  if (!open && wasOpen && focus && (panel.contains(document.activeElement) || document.activeElement === document.body)) {
    button.focus();
  }
}

export function togglePanel(name) {
  setPanel(name, !isOpen(name));
}

export function closePanels() {
  for (const name of Object.keys(PANELS)) setPanel(name, false, { focus: false });
  setUnread(0);
}

function setUnread(n) {
  unread = n;
  ui.chatUnread.textContent = n > 99 ? '99+' : String(n);
  ui.chatUnread.hidden = n === 0;
  ui.chatButton.setAttribute('aria-label', n === 0 ? 'Chat' : `Chat, ${n} unread`);
}

/** A chat message arrived: counted while the chat is closed (ours and history are not). */
export function noteChat(msg) {
  if (msg.local || msg.history || isOpen('chat')) return;
  setUnread(unread + 1);
}

for (const [name, { panel, button }] of Object.entries(PANELS)) {
  button.addEventListener('click', () => togglePanel(name));
  panel.querySelector('.panel-close').addEventListener('click', () => setPanel(name, false));
  panel.addEventListener('keydown', (ev) => {
    if (ev.key === 'Escape' && !ev.defaultPrevented) {
      ev.preventDefault();
      setPanel(name, false);
    }
  });
}
// Narrowed with both open: the chat stays.
NARROW.addEventListener('change', () => {
  if (NARROW.matches && isOpen('people') && isOpen('chat')) setPanel('people', false, { focus: false });
});

// ---------------------------------------------------------------------------------------
// Toasts and the invite link
// ---------------------------------------------------------------------------------------

export function toast(text, ms = 2500) {
  clearTimeout(toastTimer);
  ui.toast.textContent = text;
  ui.toast.hidden = false;
  toastTimer = setTimeout(() => { ui.toast.hidden = true; }, ms);
}

/**
 * The room's address, for others to join: without our access token (a token is one
 * person's; on a server that requires them, each guest gets their own).
 */
export function inviteLink() {
  const room = meeting.client?.room ?? '';
  return `${location.origin}/room/${encodeURIComponent(room)}`;
}

async function copyInvite() {
  const link = inviteLink();
  try {
    await navigator.clipboard.writeText(link);
    toast('Invite link copied');
  } catch {
    // No clipboard access (an insecure origin, a refused permission): the old way.
    const area = document.createElement('textarea');
    area.value = link;
    area.setAttribute('readonly', '');
    area.style.position = 'fixed';
    area.style.opacity = '0';
    document.body.append(area);
    area.select();
    const ok = document.execCommand('copy');
    area.remove();
    toast(ok ? 'Invite link copied' : `Invite link: ${link}`, ok ? 2500 : 8000);
  }
}

ui.inviteTop.addEventListener('click', copyInvite);
ui.inviteButton.addEventListener('click', copyInvite);
