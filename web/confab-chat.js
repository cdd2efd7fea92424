// The chat channel of ConfabClient (confab.js): the `chat` data channel the server opens on
// the subscriber connection, and sending messages on it.
//
// These are methods of ConfabClient, copied onto it by confab.js: `this` is the client, and
// the fields they use are declared in its constructor.

import { ConfabError } from './requests.js';

export class ChatMethods {
  // ---------------------------------------------------------------------------------------
  // Chat
  // ---------------------------------------------------------------------------------------

  _setupChat(channel) {
    this.chatChannel = channel;
    channel.onmessage = (ev) => {
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch {
        return;
      }
      if (msg.type === 'chat') this._emit('chat', { ...msg, local: false });
    };
    const opened = () => this._emit('chatopen', {});
    // A channel received through ondatachannel may already be open.
    if (channel.readyState === 'open') opened();
    else channel.onopen = opened;
  }

  get chatReady() {
    return this.chatChannel?.readyState === 'open';
  }

  /**
   * Sends a chat message to the room. The server does not echo it back, so the message is
   * also emitted locally as a `chat` event with `local: true` and its `requestId`. Throws
   * when it cannot be sent. There is no acknowledgement: a message the server refuses (too
   * many a second, no `can_chat`...) comes back as an `error` with its request id, and a
   * `chatfailed` event names it (its `failed` is then {code, message}).
   */
  sendChat(text) {
    const t = String(text ?? '');
    if (t.trim() === '') throw new ConfabError('chat_invalid', 'empty message');
    const max = this.config?.chat_max_bytes;
    if (max && new TextEncoder().encode(t).length > max) {
      throw new ConfabError('chat_too_long', `message is longer than ${max} bytes`);
    }
    if (!this.chatReady) throw new ConfabError('chat_unavailable', 'chat is not connected yet');
    const requestId = this._requests.next();
    this.chatChannel.send(JSON.stringify({ type: 'chat', text: t, request_id: requestId }));
    const msg = {
      type: 'chat',
      id: null,
      from: this.participantId,
      name: this.participant?.name ?? this.name,
      text: t,
      ts: Date.now(),
      history: false,
      local: true,
      requestId,
      failed: null,
    };
    this._requests.sent(requestId, 'chat', { chat: msg });
    this._emit('chat', msg);
    return msg;
  }
}
