// Audio levels and "who is speaking", computed in the page from the audio tracks themselves.
//
//   const meter = new AudioLevelMeter(track);   meter.level() -> 0..1 (peak of the last window)
//   const speaking = new SpeakingDetector();
//   speaking.addEventListener('change', (e) => e.detail /* {id, speaking} */);
//   speaking.watch('PA_1', track);  speaking.unwatch('PA_1');  speaking.isSpeaking('PA_1');
//
// One WebAudio AnalyserNode per track, sampled on a timer (not per animation frame: the
// answer is needed even when the tab is in the background). A remote WebRTC track only
// feeds WebAudio while it also plays in a media element, which the meeting page does anyway.
//
// The server may later say who speaks (`active_speakers`); a page then feeds
// SpeakingDetector.set(id, speaking) from those events instead of watch(): the rest of the
// page listens to `change` either way.

let sharedContext = null;

// A context created before any user gesture starts suspended: the first gesture resumes it.
if (typeof document !== 'undefined') {
  const resume = () => {
    if (sharedContext?.state === 'suspended') sharedContext.resume().catch(() => {});
  };
  document.addEventListener('pointerdown', resume, { capture: true });
  document.addEventListener('keydown', resume, { capture: true });
}

/** One AudioContext for the page: browsers limit how many may exist. */
export function audioContext() {
  if (!sharedContext || sharedContext.state === 'closed') {
    const Ctx = window.AudioContext ?? window.webkitAudioContext;
    if (!Ctx) return null;
    sharedContext = new Ctx();
  }
  // Created outside a user gesture it starts suspended; any later gesture resumes it.
  if (sharedContext.state === 'suspended') sharedContext.resume().catch(() => {});
  return sharedContext;
}

/** The level of one audio track, read on demand. */
export class AudioLevelMeter {
  constructor(track) {
    this.track = track;
    const ctx = audioContext();
    this._buf = null;
    if (!ctx) return;
    this._source = ctx.createMediaStreamSource(new MediaStream([track]));
    this._analyser = ctx.createAnalyser();
    this._analyser.fftSize = 1024;
    this._analyser.smoothingTimeConstant = 0;
    this._source.connect(this._analyser);
    this._buf = new Float32Array(this._analyser.fftSize);
  }

  /** Peak amplitude of the last ~20 ms, 0..1; 0 when the track is disabled or ended. */
  level() {
    if (!this._buf || !this.track.enabled || this.track.readyState === 'ended') return 0;
    this._analyser.getFloatTimeDomainData(this._buf);
    let peak = 0;
    for (let i = 0; i < this._buf.length; i++) {
      const v = Math.abs(this._buf[i]);
      if (v > peak) peak = v;
    }
    return Math.min(1, peak);
  }

  close() {
    try { this._source?.disconnect(); } catch { /* already */ }
    this._source = this._analyser = this._buf = null;
  }
}

/**
 * Tells who is speaking among watched tracks: a level over `threshold` starts speaking at
 * once; `holdMs` of quiet ends it, so that pauses between words do not flicker.
 */
export class SpeakingDetector extends EventTarget {
  constructor({ threshold = 0.04, holdMs = 700, intervalMs = 100 } = {}) {
    super();
    this.threshold = threshold;
    this.holdMs = holdMs;
    this.intervalMs = intervalMs;
    /** id -> {meter, speaking, lastLoud} */
    this._watched = new Map();
    this._speaking = new Set();
    this._timer = null;
  }

  watch(id, track) {
    const prev = this._watched.get(id);
    if (prev?.meter?.track === track) return;
    prev?.meter?.close();
    this._watched.set(id, { meter: new AudioLevelMeter(track), lastLoud: 0 });
    this._timer ??= setInterval(() => this._sample(), this.intervalMs);
  }

  unwatch(id) {
    this._watched.get(id)?.meter?.close();
    this._watched.delete(id);
    this.set(id, false);
    if (this._watched.size === 0 && this._timer) {
      clearInterval(this._timer);
      this._timer = null;
    }
  }

  /** Sets one id's state directly (from server events, or when its audio goes away). */
  set(id, speaking) {
    if (speaking === this._speaking.has(id)) return;
    if (speaking) this._speaking.add(id);
    else this._speaking.delete(id);
    this.dispatchEvent(new CustomEvent('change', { detail: { id, speaking } }));
  }

  isSpeaking(id) {
    return this._speaking.has(id);
  }

  /** The current level (0..1) of a watched id, for meters. */
  level(id) {
    return this._watched.get(id)?.meter?.level() ?? 0;
  }

  close() {
    for (const id of [...this._watched.keys()]) this.unwatch(id);
  }

  _sample() {
    const now = performance.now();
    for (const [id, w] of this._watched) {
      if (w.meter.level() >= this.threshold) w.lastLoud = now;
      this.set(id, now - w.lastLoud < this.holdMs && w.lastLoud > 0);
    }
  }
}
