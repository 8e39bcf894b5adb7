// The checks a message from a peer must pass before the Raft core handles it, beyond the transport's
// schema (which bounds every field): those that need the node's own state. Pure functions.

import { decodeConfChange } from "./confchange.js";
import { EntryType, MAX_RAFT_NUMBER, MAX_TERM_JUMP, type Message, MessageType } from "./types.js";

/** What the checks need of the node. */
export interface PeerCheckView {
  term: number;
  isLeader: boolean;
  lastIndex: number;
  maxProposalSize: number;
}

/** Why a message from a peer cannot be handled, checked before it changes anything; undefined if it can. */
export function refusePeerMessage(m: Message, v: PeerCheckView): string | undefined {
  if (m.term > MAX_RAFT_NUMBER || m.term > v.term + MAX_TERM_JUMP) {
    return `term ${m.term} is too far above this node's term ${v.term}`;
  }
  if (m.index > MAX_RAFT_NUMBER || m.commit > MAX_RAFT_NUMBER || m.logTerm > MAX_RAFT_NUMBER) {
    return "an index or term beyond the largest the core accepts";
  }
  // Forwarded requests carry no term (and must not move ours); everything else but Removed carries one
  // (a term of 0 is how the core tells a local message).
  const termless =
    m.type === MessageType.Prop || m.type === MessageType.ReadIndex || m.type === MessageType.MemberCheck;
  if (termless && m.term !== 0) return "a forwarded request that carries a term";
  if (!termless && m.type !== MessageType.Removed && m.term === 0) return "a message without a term";
  switch (m.type) {
    case MessageType.App:
      return refuseAppend(m);
    case MessageType.AppResp:
      if (!m.reject && v.isLeader && m.index > v.lastIndex) {
        return `acknowledges index ${m.index}, beyond this leader's log (${v.lastIndex})`;
      }
      return undefined;
    case MessageType.Prop:
      return v.isLeader ? refuseProposal(m, v.maxProposalSize) : undefined;
    default:
      return undefined;
  }
}

/** An append's entries follow on from (index, logTerm), one index apart, with terms in order, none above
 * the sender's term. */
function refuseAppend(m: Message): string | undefined {
  let prevTerm = m.logTerm;
  for (let i = 0; i < m.entries.length; i++) {
    const e = m.entries[i]!;
    if (e.index !== m.index + 1 + i) return `entry ${i} has index ${e.index}, not ${m.index + 1 + i}`;
    if (e.term < prevTerm || e.term > m.term) return `entry ${e.index} has term ${e.term} out of order`;
    prevTerm = e.term;
  }
  if (m.logTerm > m.term) return `log term ${m.logTerm} above the message's term ${m.term}`;
  return undefined;
}

/** A proposal forwarded to the leader: sizes within limits, and conf changes the driver can read back. */
function refuseProposal(m: Message, maxProposalSize: number): string | undefined {
  for (const e of m.entries) {
    if (e.data.length > maxProposalSize) return `a proposed entry of ${e.data.length} bytes`;
    if (e.type !== EntryType.ConfChange) continue;
    try {
      const cc = decodeConfChange(e.data);
      if (!Number.isSafeInteger(cc.nodeId) || cc.nodeId <= 0) return `a conf change for node id ${cc.nodeId}`;
    } catch (err) {
      return `an unreadable conf change (${(err as Error).message})`;
    }
  }
  return undefined;
}
