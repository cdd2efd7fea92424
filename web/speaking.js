// Audio levels and "who is speaking".
//
//   const meter = new AudioLevelMeter(track);   meter.level() -> 0..1 (peak of the last window)
//   const speaking = new SpeakingDetector();    from the audio tracks themselves
//   speaking.addEventListener('change', (e) => e.detail /* {id, speaking} */);
//   speaking.watch('PA_1', track);  speaking.unwatch('PA_1');  speaking.isSpeaking('PA_1');
//
//   const speakers = new ActiveSpeakers();      the page's one answer: the server's
//   speakers.fromServer(['PA_1', ...]);         `active_speakers` once it has sent any, the
//   speakers.watch(id, track) / unwatch(id);    local detector until then (a fallback)
//   speakers.addEventListener('change', ...);   {id, speaking}
//   speakers.addEventListener('dominant', ...); {id}: the main speaker changed (steadied)
//   speakers.dominant((id) => id !== 'self');   the latest dominant speaker passing a filter
//
// One WebAudio AnalyserNode per track, sampled on a timer (not per animation frame: the
// answer is needed even when the tab is in the background). A remote WebRTC track only
// feeds WebAudio while it also plays in a media element, which the meeting page does anyway.
//
// The server says who speaks (`active_speakers`, from the RFC 6464 level of every audio
// packet): ActiveSpeakers uses it as soon as it arrives and stops measuring levels itself.

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

/**
 * Who is speaking, for the whole page: the server's `active_speakers` when it sends them,
 * the local SpeakingDetector until it does (a server without the audio-level extension, or
 * before anyone has spoken). It also keeps the *dominant* speaker for a speaker view: the
 * server's first entry, taken only once it has led for `steadyMs`, so that two people
 * talking at once (or equal fake-microphone beeps, which make the server's order rotate
 * every 300 ms) do not swap the large tile several times a second.
 */
export class ActiveSpeakers extends EventTarget {
  constructor({ steadyMs = 1500, detector = {} } = {}) {
    super();
    this.steadyMs = steadyMs;
    this._detectorOptions = detector;
    this.reset();
  }

  /** Forgets everything (a new meeting): back to local detection until the server speaks. */
  reset() {
    this._local?.close();
    this._local = new SpeakingDetector(this._detectorOptions);
    this._local.addEventListener('change', ({ detail }) => {
      if (this.source !== 'local') return;
      this._set(detail.id, detail.speaking);
      if (detail.speaking) this._lead(detail.id);
    });
    for (const id of this._speaking ?? []) this._emitChange(id, false);
    /** 'local' until the first server event, then 'server'. */
    this.source = 'local';
    this._speaking = new Set();
    this._recent = []; // ids, most recently dominant first
    this._leader = null; // the current first speaker and since when: {id, since}
    clearTimeout(this._steadyTimer);
  }

  watch(id, track) {
    if (this.source === 'local') this._local.watch(id, track);
  }

  unwatch(id) {
    this._local.unwatch(id);
    this._set(id, false);
    this._recent = this._recent.filter((x) => x !== id);
  }

  /** The server's list, loudest first (ids as the page knows them). */
  fromServer(ids) {
    if (this.source === 'local') {
      // The server is the source from now on: stop sampling levels in the page.
      this.source = 'server';
      this._local.close();
    }
    const now = new Set(ids);
    for (const id of [...this._speaking]) if (!now.has(id)) this._set(id, false);
    for (const id of ids) this._set(id, true);
    if (ids.length > 0) this._lead(ids[0]);
  }

  isSpeaking(id) {
    return this._speaking.has(id);
  }

  /** The latest dominant speaker for which `accept(id)` is true, or null. */
  dominant(accept = () => true) {
    return this._recent.find(accept) ?? null;
  }

  _set(id, speaking) {
    if (speaking === this._speaking.has(id)) return;
    if (speaking) this._speaking.add(id);
    else this._speaking.delete(id);
    this._emitChange(id, speaking);
  }

  _emitChange(id, speaking) {
    this.dispatchEvent(new CustomEvent('change', { detail: { id, speaking } }));
  }

  /** `id` leads now; it becomes dominant once it has led for steadyMs. */
  _lead(id) {
    if (this._leader?.id === id) return;
    this._leader = { id, since: performance.now() };
    clearTimeout(this._steadyTimer);
    if (this._recent[0] === id) return;
    const leader = this._leader;
    const promote = () => {
      if (this._leader !== leader) return;
      this._recent = [id, ...this._recent.filter((x) => x !== id)];
      this.dispatchEvent(new CustomEvent('dominant', { detail: { id } }));
    };
    // The very first speaker needs no wait: there is nobody to flicker with.
    if (this._recent.length === 0) promote();
    else this._steadyTimer = setTimeout(promote, this.steadyMs);
  }
}
