// Raised hands and reactions of ConfabClient (confab.js): docs/protocol.md, Raise hand and
// reactions.
//
// A raised hand is room state: the server keeps it in the participant's ParticipantInfo
// (`hand_raised`) and tells everyone, the raiser included, with `participant_updated`; so
// `handRaised` is what the server last said about us, never a local guess. A reaction is an
// event: the server relays it to everyone, the sender included (the `reaction` event).
//
// These are methods of ConfabClient, copied onto it by confab.js: `this` is the client, and
// the fields they use are declared in its constructor.

import { ConfabError } from './requests.js';

/** The reactions the server relays, in the order a picker shows them. */
export const REACTIONS = Object.freeze(['👍', '👏', '😂', '❤️', '🎉', '😮']);

export class PresenceMethods {
  /** Whether our hand is raised, as the server last said (`participant.hand_raised`). */
  get handRaised() {
    return !!this.participant?.hand_raised;
  }

  /**
   * Raises (or, with false, lowers) our own hand. Everyone, us included, then gets a
   * `participantupdated` with `hand_raised`. Returns the request id.
   */
  raiseHand(raised = true) {
    return this._sendPresence({ type: 'raise_hand', raised: !!raised });
  }

  /**
   * Lowers someone else's hand: only with the `room_admin` grant (the server refuses it
   * otherwise with `forbidden`, and so does this method, without asking).
   */
  lowerHand(participantId) {
    if (participantId === this.participantId) return this.raiseHand(false);
    if (!this.grants?.room_admin) {
      throw new ConfabError('forbidden', 'only a room admin may lower another participant\'s hand', false);
    }
    return this._sendPresence({ type: 'lower_hand', participant_id: participantId });
  }

  /**
   * Sends a reaction (one of REACTIONS) to the room; everyone, us included, gets a
   * `reaction` event. The server allows 5 in any 5 s (`rate_limited` beyond).
   */
  react(emoji) {
    if (!REACTIONS.includes(emoji)) {
      throw new ConfabError('invalid_message', `not a reaction: ${emoji} (one of ${REACTIONS.join(' ')})`, false);
    }
    return this._sendPresence({ type: 'reaction', emoji });
  }

  _sendPresence(msg) {
    const id = this._send(msg);
    if (!id) throw new ConfabError('disconnected', 'not connected to the server', false);
    return id;
  }
}
