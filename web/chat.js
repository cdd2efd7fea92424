// The chat log of the meeting page: messages (ours marked, history dimmed) and the page's
// own notices, kept scrolled to the newest unless the reader has scrolled up.

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
  appendToLog(log, li);
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
  const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
  log.append(li);
  if (atBottom) log.scrollTop = log.scrollHeight;
}
