// The people panel: everyone in the room, their microphone, camera and screen state, who is
// speaking, and which entry is us. Rendered from plain records, keyed by participant id, so
// that an update never rebuilds the list (nothing flickers, nothing loses focus).

/**
 * State of one source of a participant, from the server's ParticipantInfo:
 * 'none' (not published), 'off' (every track of it muted) or 'on'.
 */
export function sourceState(info, source) {
  const tracks = (info?.tracks ?? []).filter((tr) => tr.source === source);
  if (tracks.length === 0) return 'none';
  return tracks.every((tr) => tr.muted) ? 'off' : 'on';
}

const CHIP_TEXT = {
  microphone: { on: 'Mic on', off: 'Mic off', none: 'No mic' },
  camera: { on: 'Cam on', off: 'Cam off', none: 'No cam' },
  screen: { on: 'Sharing screen', off: '', none: '' },
};

/**
 * @param {HTMLUListElement} list
 * @param {HTMLTemplateElement} template
 * @param {{id, name, local, microphone, camera, screen, speaking, hand, canLower}[]} people
 *   in display order (`hand`: raised; `canLower`: we may lower it, as a room admin)
 * @param {(el: HTMLElement, name: string) => void} [paintAvatar] draws the initials avatar
 */
export function renderPeople(list, template, people, paintAvatar) {
  const existing = new Map([...list.children].map((li) => [li.dataset.participantId, li]));
  let prev = null;
  for (const p of people) {
    let li = existing.get(p.id);
    existing.delete(p.id);
    if (!li) li = template.content.firstElementChild.cloneNode(true);
    li.dataset.participantId = p.id;
    li.dataset.local = String(p.local);
    li.dataset.microphone = p.microphone;
    li.dataset.camera = p.camera;
    li.dataset.screen = p.screen;
    li.dataset.speaking = String(p.speaking);
    li.dataset.hand = String(!!p.hand);
    li.querySelector('[data-testid="participant-hand"]').hidden = !p.hand;
    const lower = li.querySelector('[data-testid="lower-hand"]');
    lower.hidden = !p.canLower;
    lower.setAttribute('aria-label', `Lower hand of ${p.name}`);
    const avatar = li.querySelector('.avatar');
    if (avatar && paintAvatar) paintAvatar(avatar, p.name);
    setText(li.querySelector('.person-name'), p.local ? `${p.name} (you)` : p.name);
    setText(li.querySelector('.person-speaking-text'), p.speaking ? ', speaking' : '');
    for (const chip of li.querySelectorAll('[data-chip]')) {
      const source = chip.dataset.chip;
      const state = p[source];
      chip.dataset.state = state;
      setText(chip, CHIP_TEXT[source][state]);
      chip.hidden = CHIP_TEXT[source][state] === '';
    }
    // Insert or move only when out of place.
    const want = prev ? prev.nextElementSibling : list.firstElementChild;
    if (want !== li) list.insertBefore(li, want);
    prev = li;
  }
  for (const li of existing.values()) li.remove();
}

function setText(el, text) {
  if (el.textContent !== text) el.textContent = text;
}
