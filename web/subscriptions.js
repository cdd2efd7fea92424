// Tells the server, per remote video, whether it is seen and how large: the server then
// sends the smallest simulcast layer at least as tall as the tile, and nothing at all for a
// tile that is hidden, scrolled away or on another gallery page.
//
//   const reporter = new SubscriptionReporter(client);      // a ConfabClient
//   reporter.observe(tileElement, { trackId, quality: 'low' | 'medium' | 'high', shown });
//   reporter.unobserve(tileElement);
//
// One ResizeObserver and one IntersectionObserver for every tile. Changes are debounced
// (300 ms) per tile, so that a window being dragged to a new size sends one message per
// tile, not one per frame; and the client sends a `subscription` only when it differs from
// the last one for that track. Sizes are in device pixels (CSS px x devicePixelRatio).

const DEBOUNCE_MS = 300;

export class SubscriptionReporter {
  constructor(client, { debounceMs = DEBOUNCE_MS } = {}) {
    this.client = client;
    this.debounceMs = debounceMs;
    /** element -> {trackId, quality, shown, intersecting, width, height, timer} */
    this._tiles = new Map();
    this._resize = new ResizeObserver((entries) => {
      for (const e of entries) {
        const s = this._tiles.get(e.target);
        if (!s) continue;
        const box = e.borderBoxSize?.[0];
        const width = box ? box.inlineSize : e.contentRect.width;
        const height = box ? box.blockSize : e.contentRect.height;
        if (width === s.width && height === s.height) continue;
        s.width = width;
        s.height = height;
        this._schedule(s);
      }
    });
    // The root is the viewport: a tile clipped away by a scrolling ancestor (the stage,
    // the speaker strip) does not intersect it either.
    this._intersect = new IntersectionObserver((entries) => {
      for (const e of entries) {
        const s = this._tiles.get(e.target);
        if (!s || s.intersecting === e.isIntersecting) continue;
        s.intersecting = e.isIntersecting;
        this._schedule(s);
      }
    });
  }

  /**
   * Reports `el` (a tile) for `trackId` from now on. `quality` caps the layer (strip tiles
   * ask for low); `shown` false unsubscribes whatever the observers say (a tile about to be
   * hidden). Calling it again with other options updates them.
   */
  observe(el, { trackId, quality = 'high', shown = true }) {
    let s = this._tiles.get(el);
    if (!s) {
      s = { el, trackId: null, quality, shown, intersecting: false, width: 0, height: 0, timer: null };
      this._tiles.set(el, s);
      this._resize.observe(el);
      this._intersect.observe(el);
    }
    if (s.trackId === trackId && s.quality === quality && s.shown === shown) return;
    s.trackId = trackId;
    s.quality = quality;
    s.shown = shown;
    this._schedule(s);
  }

  unobserve(el) {
    const s = this._tiles.get(el);
    if (!s) return;
    clearTimeout(s.timer);
    this._tiles.delete(el);
    this._resize.unobserve(el);
    this._intersect.unobserve(el);
  }

  /** Stops observing everything. */
  clear() {
    for (const el of [...this._tiles.keys()]) this.unobserve(el);
  }

  /** What would be reported for `el` now: {subscribed, quality, width, height}. */
  wanted(el) {
    const s = this._tiles.get(el);
    if (!s) return null;
    const visible = s.shown && s.intersecting && s.width > 0 && s.height > 0 && s.quality !== 'off';
    if (!visible) return { subscribed: false };
    const dpr = window.devicePixelRatio || 1;
    return {
      subscribed: true,
      quality: s.quality,
      width: Math.ceil(s.width * dpr),
      height: Math.ceil(s.height * dpr),
    };
  }

  _schedule(s) {
    clearTimeout(s.timer);
    s.timer = setTimeout(() => {
      s.timer = null;
      if (s.trackId && this._tiles.get(s.el) === s) this.client.setSubscription(s.trackId, this.wanted(s.el));
    }, this.debounceMs);
  }
}
