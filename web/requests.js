// Request ids (docs/protocol.md, Request ids) and the client's error type.
//
// Every message the client sends, on the WebSocket or the chat channel, carries a
// `request_id`: an integer, increasing, never reused by one client. The server echoes it
// on the reply the message causes (`joined`, `answer`, or an `error`), and on nothing else.
// An operation that waits for its reply (a publish) is settled by the reply carrying its
// own id only: an `error` about some other message never settles it. `Requests` is the
// book of them: what each recent id was sent for, and who waits for which reply.

/** Why an operation failed: carries the server's error code when there is one. */
export class ConfabError extends Error {
  constructor(code, message, fatal = true) {
    super(message);
    this.name = 'ConfabError';
    this.code = code;
    this.fatal = fatal;
  }
}

/** How many sent messages are remembered for the errors that may come back about them. */
const REMEMBERED = 256;

export class Requests {
  constructor() {
    this._next = 1;
    /** id -> {type, resolve, reject, timer}: operations waiting for their reply. */
    this._pending = new Map();
    /** id -> {type, ...info}: the last REMEMBERED messages sent, oldest first. */
    this._recent = new Map();
  }

  /** A fresh request id. */
  next() {
    return this._next++;
  }

  /** Notes that message `id` of `type` was sent; `info` is kept for its errors. */
  sent(id, type, info = {}) {
    this._recent.set(id, { type, ...info });
    while (this._recent.size > REMEMBERED) this._recent.delete(this._recent.keys().next().value);
  }

  /** What request `id` was ({type, ...info}), while remembered; else null. */
  lookup(id) {
    return (id != null && this._recent.get(id)) || null;
  }

  /**
   * A promise of the reply to request `id`: resolves with the reply (`answer`, `joined`),
   * rejects with a ConfabError for an `error` reply, or with code `timeout` when none came
   * within `timeoutMs`. While `patient()` says so (no connection to hear it on, say) the
   * timeout is put off rather than taken.
   */
  expect(id, type, { timeoutMs, patient = () => false }) {
    return new Promise((resolve, reject) => {
      const op = { type, resolve, reject, timer: null };
      const arm = () => {
        op.timer = setTimeout(() => {
          if (patient()) {
            arm();
            return;
          }
          this._pending.delete(id);
          reject(new ConfabError('timeout', `no reply from the server to ${type} (request ${id})`, false));
        }, timeoutMs);
      };
      arm();
      this._pending.set(id, op);
    });
  }

  /** Whether request `id` still waits for its reply. */
  waiting(id) {
    return this._pending.has(id);
  }

  /**
   * Settles the operation waiting for `msg` (a server message carrying `request_id`).
   * Returns false when nothing waits for that id (no id, not ours, or already settled).
   */
  settle(msg) {
    const op = msg.request_id == null ? undefined : this._pending.get(msg.request_id);
    if (!op) return false;
    this._pending.delete(msg.request_id);
    clearTimeout(op.timer);
    if (msg.type === 'error') op.reject(new ConfabError(msg.code, msg.message, !!msg.fatal));
    else op.resolve(msg);
    return true;
  }

  /** Rejects every waiting operation with `err`: the session they belong to is over. */
  abandon(err) {
    const ops = [...this._pending.values()];
    this._pending.clear();
    for (const op of ops) {
      clearTimeout(op.timer);
      op.reject(err);
    }
  }
}
