// Devices for the meeting page: which camera, microphone and speaker, remembered in
// localStorage, and getting the media with graceful fallbacks (audio-only, listen-only).

const STORE_KEY = 'confab.devices';

export const KINDS = ['videoinput', 'audioinput', 'audiooutput'];

/** Whether this browser can choose where audio plays (HTMLMediaElement.setSinkId). */
export const canChooseSpeaker = typeof HTMLMediaElement !== 'undefined'
  && 'setSinkId' in HTMLMediaElement.prototype;

/** The remembered choice: kind -> {id, label}. */
export function loadChoices() {
  try {
    return JSON.parse(localStorage.getItem(STORE_KEY) ?? '{}') ?? {};
  } catch {
    return {};
  }
}

export function saveChoice(kind, device) {
  const all = loadChoices();
  all[kind] = { id: device.deviceId, label: device.label };
  try {
    localStorage.setItem(STORE_KEY, JSON.stringify(all));
  } catch { /* storage may be unavailable: the choice lasts this page only */ }
}

/** Devices by kind. Labels are empty until the page has been granted some media. */
export async function listDevices() {
  const out = { videoinput: [], audioinput: [], audiooutput: [] };
  if (!navigator.mediaDevices?.enumerateDevices) return out;
  try {
    for (const d of await navigator.mediaDevices.enumerateDevices()) {
      if (out[d.kind] && d.deviceId) out[d.kind].push(d);
    }
  } catch (err) {
    console.info('enumerateDevices failed', err);
  }
  return out;
}

/**
 * The remembered device of `kind` among `devices`: by id (stable per origin), else by label
 * (ids may change when the browser's data is cleared). Undefined when gone.
 */
export function rememberedDevice(kind, devices) {
  const want = loadChoices()[kind];
  if (!want) return undefined;
  return devices.find((d) => d.deviceId === want.id)
    ?? (want.label ? devices.find((d) => d.label === want.label) : undefined);
}

function constraint(deviceId, base) {
  if (!deviceId) return base;
  return { ...(base === true ? {} : base), deviceId: { exact: deviceId } };
}

/**
 * Camera and microphone if possible (the remembered ones first), else whatever is there,
 * else nothing (listen-only). Resolves with {stream, note}: the note says what is missing.
 */
export async function acquireMedia({ videoinput, audioinput } = {}) {
  if (!navigator.mediaDevices?.getUserMedia) {
    return { stream: null, note: 'No media devices available here: you will join listen-only.' };
  }
  // 720p when the camera has it: the top simulcast layer, with 640x360 and 320x180 below.
  const video = { width: { ideal: 1280 }, height: { ideal: 720 } };
  const attempts = [
    [{ audio: constraint(audioinput, true), video: constraint(videoinput, video) }, ''],
    [{ audio: true, video }, ''],
    [{ audio: constraint(audioinput, true) }, 'No camera: you will join with audio only.'],
    [{ audio: true }, 'No camera: you will join with audio only.'],
    [{ video }, 'No microphone: you will join with video only.'],
  ];
  for (const [constraints, note] of attempts) {
    try {
      return { stream: await navigator.mediaDevices.getUserMedia(constraints), note };
    } catch (err) {
      console.info('getUserMedia failed', JSON.stringify(constraints), err.name);
    }
  }
  return { stream: null, note: 'No camera or microphone available: you will join listen-only (chat works).' };
}

/** The deviceId a track comes from. */
export function deviceOf(track) {
  return track?.getSettings?.().deviceId ?? '';
}

/**
 * Fills a <select> with `devices`, selecting `currentId`. A kind with no device gets one
 * disabled "None found" option, so that the control never looks broken.
 */
export function fillSelect(select, devices, currentId) {
  const opts = devices.map((d, i) => {
    const o = document.createElement('option');
    o.value = d.deviceId;
    o.textContent = d.label || `${labelOfKind(d.kind)} ${i + 1}`;
    return o;
  });
  if (opts.length === 0) {
    const o = document.createElement('option');
    o.value = '';
    o.textContent = 'None found';
    opts.push(o);
  }
  select.replaceChildren(...opts);
  select.disabled = devices.length === 0;
  if (currentId && devices.some((d) => d.deviceId === currentId)) select.value = currentId;
}

function labelOfKind(kind) {
  return { videoinput: 'Camera', audioinput: 'Microphone', audiooutput: 'Speaker' }[kind] ?? kind;
}
