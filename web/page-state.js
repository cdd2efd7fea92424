// The meeting page's shared state: the DOM elements it works on (`ui`), and what app.js,
// tiles.js, controls.js and notices.js all read: the client, our local media, the tiles of
// the others, who speaks. Holds no behaviour; app.js is where the page starts.

import { ActiveSpeakers } from './speaking.js';

const $ = (sel) => document.querySelector(sel);

export const ui = {
  status: $('[data-testid="status"]'),
  error: $('[data-testid="error"]'),
  errorText: $('[data-testid="error-text"]'),
  errorDismiss: $('[data-testid="error-dismiss"]'),
  banner: $('[data-testid="connection-banner"]'),
  roomLabel: $('[data-testid="room-label"]'),
  lobby: $('#lobby'),
  joinForm: $('#join-form'),
  nameInput: $('#name-input'),
  roomInput: $('#room-input'),
  joinButton: $('#join-button'),
  meeting: $('#meeting'),
  stage: $('#stage'),
  stageMain: $('#stage-main'),
  meetingBody: $('#meeting-body'),
  selfGridButton: $('#self-grid-button'),
  screenStage: $('#screen-stage'),
  screenVideo: $('#screen-video'),
  screenOwner: $('[data-testid="screen-owner"]'),
  stageStopShare: $('#stage-stop-share'),
  grid: $('#grid'),
  speakerMain: $('#speaker-main'),
  galleryButton: $('#gallery-button'),
  speakerButton: $('#speaker-button'),
  pager: $('[data-testid="pager"]'),
  pagePrev: $('#page-prev'),
  pageNext: $('#page-next'),
  pageLabel: $('#page-label'),
  localTile: $('[data-testid="local-tile"]'),
  localVideo: $('#local-video'),
  uploadBadge: $('[data-testid="upload-state"]'),
  audioSinks: $('#audio-sinks'),
  peopleList: $('#people-list'),
  peoplePanel: $('#people-panel'),
  chatPanel: $('#chat-panel'),
  peopleButton: $('#people-button'),
  chatButton: $('#chat-button'),
  chatUnread: $('[data-testid="chat-unread"]'),
  helpButton: $('#help-button'),
  helpDialog: $('#help-dialog'),
  handButton: $('#hand-button'),
  reactButton: $('#react-button'),
  reactionsMenu: $('#reactions-menu'),
  camDevicesButton: $('#cam-devices-button'),
  toast: $('[data-testid="toast"]'),
  inviteTop: $('[data-testid="invite-top"]'),
  inviteButton: $('[data-testid="invite-button"]'),
  peopleCount: $('[data-testid="people-count"]'),
  chatLog: $('#chat-log'),
  chatForm: $('#chat-form'),
  chatInput: $('#chat-input'),
  chatSend: $('[data-testid="chat-send"]'),
  chatNote: $('[data-testid="chat-note"]'),
  grantsNote: $('[data-testid="grants-note"]'),
  micButton: $('#mic-button'),
  camButton: $('#cam-button'),
  shareButton: $('#share-button'),
  devicesButton: $('#devices-button'),
  devicesDialog: $('#devices-dialog'),
  devicesNote: $('[data-testid="devices-note"]'),
  leaveButton: $('#leave-button'),
  tileTemplate: $('#tile-template'),
  personTemplate: $('#person-template'),
};

export const SELF = 'self'; // the speaking detector's key for our own microphone

/** What changes as the meeting goes: one object, so that every module sees the same values. */
export const meeting = {
  /** @type {import('./confab.js').ConfabClient|null} */
  client: null,
  /** @type {MediaStream|null} */
  localStream: null,
  /** The audio output chosen for remote audio ('' or 'default': the system's). */
  speakerId: '',
  /** @type {import('./subscriptions.js').SubscriptionReporter|null} */
  reporter: null,
  /** Participants we pin: shown first in the gallery, large in speaker view, always received. */
  pins: [],
  /** Participant ids (or SELF) in the order their screen share went live: the last one is shown. */
  screenOrder: [],
};

/**
 * participant id -> {el, video, audio, info, videoTrack, videoTrackId, audioTrack, screen}
 * where screen is {track, trackId} of their screen share track, live or not.
 */
export const tiles = new Map();
/**
 * Participants who left. An offer in flight when someone left may still announce their
 * tracks: those are ignored. (A participant who rejoins gets a new id; the others come
 * back with theirs after our own reconnection, and are taken off this list then.)
 */
export const departed = new Set();
/** Who speaks: the server's `active_speakers`, measured locally until the server sends any. */
export const speaking = new ActiveSpeakers();
