// The pre-join screen: a preview of the camera, a microphone level meter, the choice of
// devices (remembered), and "join with microphone / camera off". The media opened here is
// what the meeting then publishes: no second getUserMedia, no second permission prompt.
// A viewer (an access token that does not allow sending media) opens no device at all.

import {
  acquireMedia, canChooseSpeaker, deviceOf, fillSelect, listDevices, rememberedDevice, saveChoice,
} from './devices.js';
import { AudioLevelMeter } from './speaking.js';

export class Prejoin {
  /**
   * @param {HTMLElement} root the preview section
   * @param {{onSpeakerChange: (deviceId: string) => void}} hooks
   */
  constructor(root, hooks = {}) {
    this.root = root;
    this.hooks = hooks;
    this.frame = root.querySelector('.preview-frame');
    this.video = root.querySelector('video');
    this.placeholder = root.querySelector('[data-testid="preview-placeholder"]');
    this.meterEl = root.querySelector('meter');
    this.micToggle = root.querySelector('#preview-mic');
    this.camToggle = root.querySelector('#preview-cam');
    this.selects = [...root.querySelectorAll('select[data-kind]')];
    /** @type {MediaStream|null} */
    this.stream = null;
    this.note = '';
    this.micOff = false;
    this.camOff = false;
    this.speakerId = '';
    /** Why this participant will send no media (a viewer), or '' */
    this.viewer = '';
    this._ready = null;
    this._meter = null;
    this._meterTimer = null;
    this._generation = 0;

    this.micToggle.addEventListener('click', () => {
      this.micOff = !this.micOff;
      this._render();
    });
    this.camToggle.addEventListener('click', () => {
      this.camOff = !this.camOff;
      this._render();
    });
    for (const select of this.selects) {
      select.addEventListener('change', () => this._choose(select.dataset.kind, select.value));
    }
    root.querySelector('.speaker-field').hidden = !canChooseSpeaker;
  }

  /**
   * Joins without media: no camera or microphone is opened (no permission prompt), and
   * `why` is shown in place of the preview. Call before start().
   */
  setViewer(why) {
    this.viewer = why;
    this.root.dataset.viewer = String(!!why);
    this.root.querySelector('h2').textContent = why ? 'You will join as a viewer' : 'Check your camera and microphone';
    this._render();
  }

  /** Opens the remembered (or default) devices for the preview. Safe to call again. */
  start() {
    if (this._ready) return this._ready;
    const gen = ++this._generation;
    this.placeholder.textContent = this.viewer || 'Starting camera…';
    this._ready = (async () => {
      if (this.viewer) {
        // Only the speaker is worth choosing; listing devices asks for no permission.
        await this.refreshDevices();
        this._render();
        return;
      }
      // Ids of remembered devices are only comparable once the page may see devices; before
      // the first grant, enumerateDevices gives no labels but does give ids on Chromium.
      const before = await listDevices();
      const { stream, note } = await acquireMedia({
        videoinput: rememberedDevice('videoinput', before.videoinput)?.deviceId,
        audioinput: rememberedDevice('audioinput', before.audioinput)?.deviceId,
      });
      if (gen !== this._generation) {
        for (const t of stream?.getTracks() ?? []) t.stop();
        return;
      }
      this.stream = stream;
      this.note = note;
      this.video.srcObject = stream;
      this._startMeter();
      await this.refreshDevices();
      this._render();
    })();
    return this._ready;
  }

  /** Re-reads the device list (after a grant, or when devices are plugged in or out). */
  async refreshDevices() {
    const devices = await listDevices();
    const current = {
      videoinput: deviceOf(this.stream?.getVideoTracks()[0]),
      audioinput: deviceOf(this.stream?.getAudioTracks()[0]),
      audiooutput: this.speakerId || rememberedDevice('audiooutput', devices.audiooutput)?.deviceId || 'default',
    };
    this.speakerId = current.audiooutput;
    for (const select of this.selects) fillSelect(select, devices[select.dataset.kind], current[select.dataset.kind]);
    return devices;
  }

  /**
   * Hands the media over to the meeting: resolves with {stream, note, micOff, camOff}. The
   * preview lets go of the stream (the meeting now owns and stops it).
   */
  async take() {
    await this.start();
    const taken = { stream: this.stream, note: this.note, micOff: this.micOff, camOff: this.camOff };
    this._stopMeter();
    this.stream = null;
    this.video.srcObject = null;
    this._ready = null;
    this._generation++;
    return taken;
  }

  /** Gives the media back when a join fails, so that the preview goes on. */
  giveBack({ stream, note }) {
    this.stream = stream;
    this.note = note;
    this.video.srcObject = stream;
    this._ready = Promise.resolve();
    this._startMeter();
    this._render();
  }

  /** Stops the preview and its devices. */
  stop() {
    this._generation++;
    this._stopMeter();
    for (const t of this.stream?.getTracks() ?? []) t.stop();
    this.stream = null;
    this.video.srcObject = null;
    this._ready = null;
  }

  async _choose(kind, deviceId) {
    const devices = await listDevices();
    const device = devices[kind].find((d) => d.deviceId === deviceId);
    if (device) saveChoice(kind, device);
    if (kind === 'audiooutput') {
      this.speakerId = deviceId;
      this.hooks.onSpeakerChange?.(deviceId);
      return;
    }
    if (!this.stream) return;
    const media = kind === 'videoinput' ? 'video' : 'audio';
    const old = media === 'video' ? this.stream.getVideoTracks()[0] : this.stream.getAudioTracks()[0];
    try {
      old?.stop(); // some cameras cannot be open twice
      const got = await navigator.mediaDevices.getUserMedia({
        [media]: { ...(old?.getConstraints() ?? {}), deviceId: { exact: deviceId } },
      });
      if (old) this.stream.removeTrack(old);
      this.stream.addTrack(got.getTracks()[0]);
      this.video.srcObject = this.stream;
      if (media === 'audio') this._startMeter();
    } catch (err) {
      console.warn('cannot open the chosen device', err);
      this.placeholder.textContent = `Cannot open that device (${err.name}).`;
    }
    this._render();
  }

  _startMeter() {
    this._stopMeter();
    const track = this.stream?.getAudioTracks()[0];
    if (!track) return;
    this._meter = new AudioLevelMeter(track);
    let shown = 0;
    this._meterTimer = setInterval(() => {
      // Rise at once, fall slowly: a readable meter, not a flicker.
      const level = this.micOff ? 0 : Math.round(100 * Math.sqrt(this._meter.level()));
      shown = Math.max(level, shown - 8);
      this.meterEl.value = shown;
    }, 60);
  }

  _stopMeter() {
    clearInterval(this._meterTimer);
    this._meterTimer = null;
    this._meter?.close();
    this._meter = null;
    this.meterEl.value = 0;
  }

  _render() {
    const viewer = !!this.viewer;
    this.root.querySelector('.preview-toggles').hidden = viewer;
    this.root.querySelector('.meter-row').hidden = viewer;
    for (const select of this.selects) {
      if (select.dataset.kind !== 'audiooutput') select.closest('label').hidden = viewer;
    }
    const hasVideo = !!this.stream?.getVideoTracks().length;
    const hasAudio = !!this.stream?.getAudioTracks().length;
    for (const t of this.stream?.getVideoTracks() ?? []) t.enabled = !this.camOff;
    for (const t of this.stream?.getAudioTracks() ?? []) t.enabled = !this.micOff;
    this.frame.dataset.video = hasVideo && !this.camOff ? 'on' : 'off';
    if (viewer) this.placeholder.textContent = this.viewer;
    else if (!hasVideo) this.placeholder.textContent = this.stream ? 'No camera' : 'No camera or microphone';
    else if (this.camOff) this.placeholder.textContent = 'Camera off';
    this.micToggle.disabled = !hasAudio;
    this.camToggle.disabled = !hasVideo;
    this.micToggle.setAttribute('aria-pressed', String(this.micOff));
    this.camToggle.setAttribute('aria-pressed', String(this.camOff));
    this.micToggle.title = this.micOff ? 'You will join muted' : 'You will join with your microphone on';
    this.camToggle.title = this.camOff ? 'You will join with your camera off' : 'You will join with your camera on';
  }
}
