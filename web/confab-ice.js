// ICE restart for ConfabClient (confab.js): when a peer connection goes `disconnected` and
// stays so, or `failed`, or the browser says its network changed, both connections get new
// ICE credentials and look for a path again (docs/protocol.md, `restart_ice`). The
// participant, its tracks, subscriptions and chat go on; the others see nothing.
//
// These are methods of ConfabClient, copied onto it by confab.js: `this` is the client.

// A short `disconnected` often heals by itself (a lost burst, a busy Wi-Fi): wait a little.
const RESTART_AFTER_DISCONNECTED_MS = 1500;
// One restart at a time: its checks need a moment before a second one could help.
const RESTART_MIN_INTERVAL_MS = 3000;

export class IceMethods {
  /**
   * Restarts ICE on both peer connections: the subscriber connection by asking the server
   * (`restart_ice`: its next offer has new credentials), the publisher connection by
   * offering with new credentials. Called by itself on `disconnected`/`failed` and network
   * changes; a page may call it too. Returns false when not connected or a restart was just
   * made.
   */
  restartIce(reason = 'asked') {
    if (this.state !== 'connected') return false;
    const now = performance.now();
    if (this._iceRestartAt != null && now - this._iceRestartAt < RESTART_MIN_INTERVAL_MS) return false;
    this._iceRestartAt = now;
    if (this.subscriber && !this._send({ type: 'restart_ice' })) return false;
    if (this.publisher && this._pubAnswered) {
      this.publisher.restartIce();
      this._negotiatePublisher().catch((err) => console.warn('confab: publisher ICE restart', err));
    }
    this._emit('icerestart', { reason });
    return true;
  }

  /** A peer connection's state changed: restart when it is lost. */
  _iceStateChanged(pc) {
    const s = pc.connectionState;
    if (s === 'failed') {
      this.restartIce('failed');
    } else if (s === 'disconnected') {
      setTimeout(() => {
        const current = pc === this.subscriber || pc === this.publisher;
        if (current && pc.connectionState === 'disconnected') this.restartIce('disconnected');
      }, RESTART_AFTER_DISCONNECTED_MS);
    }
  }

  /** Listens for the browser's network changes (once per client, until leave()). */
  _watchNetwork() {
    if (this._networkListener || typeof window === 'undefined') return;
    this._networkListener = () => this.restartIce('network');
    window.addEventListener('online', this._networkListener);
    navigator.connection?.addEventListener?.('change', this._networkListener);
  }

  _unwatchNetwork() {
    if (!this._networkListener) return;
    window.removeEventListener('online', this._networkListener);
    navigator.connection?.removeEventListener?.('change', this._networkListener);
    this._networkListener = null;
  }
}
