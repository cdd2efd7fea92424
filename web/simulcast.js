// Simulcast publishing for confab.js: the camera's encodings, and dynacast (pausing the
// encodings nobody wants, as the server's `publisher_layers` says).
//
//   addTransceiver(track, { direction: 'sendonly', sendEncodings: cameraEncodings() });
//   const dynacast = new Dynacast({ onApplied: ({mid, activeRids, sending}) => ... });
//   dynacast.wish(publisherPc, mid, ['q', 'h']);   // from `publisher_layers`
//   dynacast.close();                              // the connection is gone

/** Camera layers, lowest first (the order the server expects); at 1280x720 capture:
 *  320x180, 640x360 and 1280x720, at bitrates that keep each sharp at 30 fps. */
const CAMERA_ENCODINGS = [
  { rid: 'q', scaleResolutionDownBy: 4, maxBitrate: 150_000 },
  { rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 500_000 },
  { rid: 'f', scaleResolutionDownBy: 1, maxBitrate: 1_700_000 },
];

/** A fresh copy of the camera's simulcast encodings, for addTransceiver's sendEncodings. */
export function cameraEncodings() {
  return CAMERA_ENCODINGS.map((e) => ({ ...e }));
}

/** How long a layer must have been sending before dynacast may pause it (see Dynacast). */
export const LAYER_SEEN_MS = 1000;

/**
 * Applies the server's wishes to our simulcast senders: of the track on transceiver `mid`,
 * only the listed rids are wanted; the other encodings get `active: false`, and `true`
 * again when listed later. getParameters and setParameters form a transaction, so changes
 * are applied one at a time, always to the latest wish.
 *
 * An encoding that has not been sending for LAYER_SEEN_MS yet is never paused. The server
 * lists only rids it has received, and Chromium starts layers one after the other (the top
 * one may wait for bandwidth): an early message (for instance while we are alone in the
 * room) omits layers that have not started. Paused before their first packet, the server
 * would never see them, never list them, and they would stay off for good. Such layers are
 * looked at again once they run (after 1 s, then less and less often: one may never start).
 */
export class Dynacast {
  constructor({ onApplied = () => {} } = {}) {
    this.onApplied = onApplied;
    this._wants = new Map(); // mid -> Set of wanted rids
    this._chain = Promise.resolve();
    this._retry = new Map(); // mid -> {want, delay, timer}
    this._firstSent = new WeakMap(); // sender -> Map rid -> when we first saw it sending
    this._closed = false;
  }

  /** The server wants only `rids` of our track on transceiver `mid` of `pc`. */
  wish(pc, mid, rids) {
    if (this._closed || !pc) return;
    this._wants.set(mid, new Set(rids));
    this._queue(pc, mid);
  }

  close() {
    this._closed = true;
    for (const retry of this._retry.values()) clearTimeout(retry.timer);
    this._retry.clear();
  }

  _queue(pc, mid) {
    this._chain = this._chain
      .then(() => this._apply(pc, mid))
      .catch((err) => console.warn('confab: cannot pause or resume simulcast layers', err));
  }

  async _apply(pc, mid) {
    const want = this._wants.get(mid);
    const transceiver = pc.getTransceivers().find((t) => t.mid === mid && !t.stopped);
    if (this._closed || !want || !transceiver) return;
    const sender = transceiver.sender;
    const started = await this._started(sender);
    if (this._closed || want !== this._wants.get(mid)) return; // a newer wish
    const params = sender.getParameters();
    let changed = false;
    let heldBack = false;
    for (const enc of params.encodings ?? []) {
      if (!enc.rid) continue;
      let active = want.has(enc.rid);
      if (!active && enc.active !== false && !started.has(enc.rid)) {
        active = true; // not seen by the server yet: see above
        heldBack = true;
      }
      if (enc.active !== active) {
        enc.active = active;
        changed = true;
      }
    }
    if (changed) await sender.setParameters(params);
    const retry = this._retry.get(mid);
    clearTimeout(retry?.timer);
    if (heldBack && !this._closed) {
      const delay = retry?.want === want ? Math.min(retry.delay * 2, 8 * LAYER_SEEN_MS) : LAYER_SEEN_MS;
      const timer = setTimeout(() => {
        if (want === this._wants.get(mid)) this._queue(pc, mid);
      }, delay);
      this._retry.set(mid, { want, delay, timer });
    } else {
      this._retry.delete(mid);
    }
    const sending = (params.encodings ?? []).filter((e) => e.rid && e.active !== false).map((e) => e.rid);
    this.onApplied({ mid, activeRids: [...want], sending });
  }

  /** Rids of `sender` that have been sending for LAYER_SEEN_MS at least. */
  async _started(sender) {
    const now = performance.now();
    const firstSent = this._firstSent.get(sender) ?? new Map();
    this._firstSent.set(sender, firstSent);
    (await sender.getStats()).forEach((s) => {
      if (s.type === 'outbound-rtp' && s.rid && s.bytesSent > 0 && !firstSent.has(s.rid)) {
        firstSent.set(s.rid, now);
      }
    });
    return new Set([...firstSent].filter(([, at]) => now - at >= LAYER_SEEN_MS).map(([rid]) => rid));
  }
}
