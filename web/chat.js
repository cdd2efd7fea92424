// The chat log of the meeting page: messages (ours marked, history dimmed, ours that the
// server refused marked "not sent" with the reason and a Retry button) and the page's own
// notices, kept scrolled to the newest unless the reader has scrolled up.

/** What Retry does with a refused message's text: set by the page (onChatRetry). */
let retryHandler = null;

/** `fn(text, li)` sends `text` again; it returns true when it could (the entry then goes). */
export function onChatRetry(fn) {
  retryHandler = fn;
}

/** Why a chat message was refused, in a few words, by error code. */
const NOT_SENT = {
  rate_limited: 'rate limited',
  forbidden: 'chat not allowed',
  chat_too_long: 'too long',
  chat_invalid: 'invalid message',
};

/** Refusals that sending the same text again would only repeat. */
const FINAL = new Set(['forbidden', 'chat_too_long', 'chat_invalid']);

/** Web addresses in chat text: http and https only, up to white space or a quote. */
const LINK = /\bhttps?:\/\/[^\s<>"']+/gi;
/** Punctuation that ends a sentence more often than it ends an address. */
const TRAILING = /[.,;:!?)\]}]+$/;

/**
 * Appends `text` to `parent` as text, with each http(s) address in it a link that opens in
 * a new tab without giving that page a handle on this one (`rel=noopener noreferrer`).
 * Nothing in the text is ever parsed as HTML; another scheme (javascript:, data:) stays text.
 */
export function appendLinkedText(parent, text) {
  let at = 0;
  for (const m of text.matchAll(LINK)) {
    const url = m[0].replace(TRAILING, '');
    let href = null;
    try {
      const u = new URL(url);
      if (u.protocol === 'http:' || u.protocol === 'https:') href = u.href;
    } catch { /* not an address after all: stays text */ }
    if (!href) continue;
    parent.append(text.slice(at, m.index));
    const a = document.createElement('a');
    a.href = href;
    a.textContent = url;
    a.target = '_blank';
    a.rel = 'noopener noreferrer';
    a.dataset.testid = 'chat-link';
    parent.append(a);
    at = m.index + url.length;
  }
  parent.append(text.slice(at));
}

function formatTime(ts) {
  return new Date(ts).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
}

/** Appends a chat message (a ConfabClient `chat` event's detail) to `log`. */
export function appendChat(log, msg) {
  const li = document.createElement('li');
  li.className = 'chat-message';
  li.dataset.testid = 'chat-message';
  if (msg.local) li.classList.add('mine');
  if (msg.history) li.classList.add('history');
  li.dataset.from = msg.from ?? '';
  li.chatText = msg.text;
  li.dataset.history = String(!!msg.history);
  if (msg.local) {
    // There is no acknowledgement: ours count as sent unless the server refuses them.
    li.dataset.requestId = String(msg.requestId ?? '');
    li.dataset.state = 'sent';
  }
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
  appendLinkedText(text, msg.text);
  li.append(head, text);
  appendToLog(log, li);
  if (msg.failed) markChatFailed(log, msg.requestId, msg.failed.code, msg.failed.message);
}

/** Marks our message of request `requestId` as not sent, saying why (`code`, `message`). */
export function markChatFailed(log, requestId, code, message) {
  const li = [...log.querySelectorAll('.chat-message.mine')].find((el) => el.dataset.requestId === String(requestId));
  if (!li || li.dataset.state === 'failed') return;
  li.dataset.state = 'failed';
  li.classList.add('failed');
  const note = document.createElement('p');
  note.className = 'chat-failed';
  note.dataset.testid = 'chat-failed';
  note.dataset.code = code;
  note.textContent = `Not sent: ${NOT_SENT[code] ?? code.replace(/_/g, ' ')}`;
  note.title = message;
  let retry = null;
  if (retryHandler && li.chatText != null && !FINAL.has(code)) {
    retry = document.createElement('button');
    retry.type = 'button';
    retry.className = 'chat-retry';
    retry.dataset.testid = 'chat-retry';
    retry.innerHTML = '<svg class="icon" aria-hidden="true"><use href="#i-retry"/></svg> Retry';
    retry.setAttribute('aria-label', 'Retry sending this message');
    retry.addEventListener('click', () => {
      if (retryHandler(li.chatText, li)) li.remove();
    });
  }
  const atBottom = isAtBottom(log);
  li.append(note);
  if (retry) li.append(retry);
  if (atBottom) log.scrollTop = log.scrollHeight;
}

/** Appends a line from the page itself ("Reconnected."). */
export function appendSystemMessage(log, text) {
  const li = document.createElement('li');
  li.className = 'chat-system';
  li.textContent = text;
  appendToLog(log, li);
}

/** Keeps the log scrolled to the end unless the reader scrolled up. */
function appendToLog(log, li) {
  const atBottom = isAtBottom(log);
  log.append(li);
  if (atBottom) log.scrollTop = log.scrollHeight;
}

function isAtBottom(log) {
  return log.scrollHeight - log.scrollTop - log.clientHeight < 40;
}
