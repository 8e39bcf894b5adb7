// The Raft consensus core: a pure, deterministic state machine in the style of etcd's raft. It is driven
// by step(message) and tick(), and produces messages, entries to persist and entries to apply; it does no
// I/O and reads time only as ticks and randomness only from the injected source.
//
// Beyond the Raft paper it has PreVote and CheckQuorum (§9.6 of the thesis), pipelined replication with
// probe/replicate flow control and conflict hints, chunked snapshot transfer, learners that the leader
// promotes once caught up, leadership transfer (§3.10) and ReadIndex reads (§6.4).
//
// The core is built in layers: raft-state.ts (state, sending, commit, roles), raft-leader.ts (the leader's
// replication, flow control, read index, learner promotion) and this file (step, ticks, elections, the
// follower's side, membership changes). Raft is the class callers use, through RawNode.

import { decodeConfChange } from "./confchange.js";
import { refusePeerMessage } from "./peer-checks.js";
import { Progress } from "./progress.js";
import { RaftLeader } from "./raft-leader.js";
import { addSnapshotChunk } from "./snapshot-assembly.js";
import { cloneConfState } from "./storage.js";
import {
  type ConfChange,
  ConfChangeType,
  type ConfState,
  EMPTY,
  type Entry,
  EntryType,
  ErrProposalDropped,
  type Message,
  MessageType,
  NONE,
  type NodeId,
  newMessage,
  type Snapshot,
  StateType,
} from "./types.js";

export { type Config, DEFAULTS, type RaftLogger } from "./raft-state.js";

enum CampaignType {
  PreElection = 0,
  Election = 1,
  Transfer = 2,
}

const CAMPAIGN_TRANSFER = new TextEncoder().encode("CampaignTransfer");
function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
export class Raft extends RaftLeader {
  private hup(t: CampaignType): void {
    if (this.state === StateType.Leader) return;
    if (!this.promotable()) return;
    // A conf change committed but not applied may change who votes: wait for it.
    if (this.raftLog.applied < this.raftLog.committed) {
      const ents = this.raftLog.slice(this.raftLog.applied + 1, this.raftLog.committed + 1, Number.MAX_SAFE_INTEGER);
      if (ents.some((e) => e.type === EntryType.ConfChange)) return;
    }
    this.campaign(t);
  }

  private campaign(t: CampaignType): void {
    if (!this.promotable()) return;
    let term: number;
    let voteMsg: MessageType;
    if (t === CampaignType.PreElection) {
      this.becomePreCandidate();
      voteMsg = MessageType.PreVote;
      // Pre-votes are asked for the term we would campaign in, without moving to it.
      term = this.term + 1;
    } else {
      this.becomeCandidate();
      voteMsg = MessageType.Vote;
      term = this.term;
    }
    if (this.poll(this.id, true) === VoteResult.Won) {
      // A single voter wins at once.
      if (t === CampaignType.PreElection) this.campaign(CampaignType.Election);
      else this.becomeLeader();
      return;
    }
    for (const id of this.voters()) {
      if (id === this.id) continue;
      this.send(
        newMessage({
          type: voteMsg,
          to: id,
          term,
          index: this.raftLog.lastIndex(),
          logTerm: this.raftLog.lastTerm(),
          context: t === CampaignType.Transfer ? CAMPAIGN_TRANSFER : EMPTY,
        }),
      );
    }
  }

  private poll(id: NodeId, granted: boolean): VoteResult {
    if (!this.votes.has(id)) this.votes.set(id, granted);
    let yes = 0;
    let no = 0;
    const voters = this.voters();
    for (const v of voters) {
      const r = this.votes.get(v);
      if (r === true) yes++;
      else if (r === false) no++;
    }
    const q = Math.floor(voters.length / 2) + 1;
    if (yes >= q) return VoteResult.Won;
    if (voters.length - no < q) return VoteResult.Lost;
    return VoteResult.Pending;
  }

  tick(): void {
    if (this.state === StateType.Leader) this.tickHeartbeat();
    else this.tickElection();
  }

  private tickElection(): void {
    this.electionElapsed++;
    if (this.electionElapsed < this.randomizedElectionTimeout) return;
    if (this.promotable()) {
      this.electionElapsed = 0;
      this.step(newMessage({ type: MessageType.Hup, from: this.id }));
    } else if (
      !this.isRemoved() &&
      (this.electionElapsed - this.randomizedElectionTimeout) % this.electionTimeout === 0
    ) {
      // A learner, or a new member whose log does not yet show it was added, cannot campaign. If it hears
      // no leader it may have been removed while cut off, and no one sends anything to a removed id: ask,
      // once per election timeout. Its election clock keeps running: its lease over the leader it last
      // heard must expire, or it would never answer a candidate's (pre-)vote.
      for (const id of this.voters())
        if (id !== this.id) this.send(newMessage({ type: MessageType.MemberCheck, to: id }));
    }
  }

  private tickHeartbeat(): void {
    this.heartbeatElapsed++;
    this.electionElapsed++;
    if (this.electionElapsed >= this.electionTimeout) {
      this.electionElapsed = 0;
      if (this.checkQuorum) this.step(newMessage({ type: MessageType.CheckQuorum, from: this.id }));
      if (this.state === StateType.Leader && this.leadTransferee !== NONE) this.abortLeaderTransfer();
    }
    if (this.state !== StateType.Leader) return;
    if (this.heartbeatElapsed >= this.heartbeatTimeout) {
      this.heartbeatElapsed = 0;
      this.step(newMessage({ type: MessageType.Beat, from: this.id }));
    }
    this.maybePromoteLearner();
  }

  /**
   * Why a message from a peer cannot be handled, checked before it changes anything; undefined if it can.
   * The transport's schema bounds every field; these are the checks that need the node's own state.
   */
  refusePeerMessage(m: Message): string | undefined {
    return refusePeerMessage(m, {
      term: this.term,
      isLeader: this.state === StateType.Leader,
      lastIndex: this.raftLog.lastIndex(),
      maxProposalSize: this.maxProposalSize,
    });
  }

  /** Log a message from a peer that the core drops without handling it. */
  warnDropped(m: Message, reason: string): void {
    this.logger?.warn(
      { from: m.from.toString(16), type: MessageType[m.type], term: m.term, reason },
      "dropped a raft message the core cannot handle",
    );
  }

  step(m: Message): void {
    if (m.from !== NONE && m.from !== this.id && this.removed.has(m.from)) {
      // A removed leader's last word is the TimeoutNow that hands leadership over: we may already have
      // applied its removal when it arrives.
      const handover = m.type === MessageType.TimeoutNow && m.term === this.term && m.from === this.lead;
      if (!handover) {
        // It speaks, so it has not heard that its removal committed: tell it, so that it stops.
        if (m.type !== MessageType.Removed && !this.isRemoved()) this.tellRemoved(m.from);
        return;
      }
    }
    if (m.type === MessageType.Removed) {
      this.learnRemoved(m.from);
      return;
    }

    if (m.term === 0) {
      // local message
    } else if (m.term > this.term) {
      if (m.type === MessageType.Vote || m.type === MessageType.PreVote) {
        const force = bytesEqual(m.context, CAMPAIGN_TRANSFER);
        const inLease = this.checkQuorum && this.lead !== NONE && this.electionElapsed < this.electionTimeout;
        // We heard from a live leader recently: a node that cannot see it must not depose it.
        if (!force && inLease) return;
      }
      if (m.type === MessageType.PreVote) {
        // Never change term in response to a pre-vote.
      } else if (m.type === MessageType.PreVoteResp && !m.reject) {
        // Pre-vote grants carry the future term; the term moves when the real election wins.
      } else if (m.type === MessageType.App || m.type === MessageType.Heartbeat || m.type === MessageType.Snap) {
        this.becomeFollower(m.term, m.from);
      } else {
        this.becomeFollower(m.term, NONE);
      }
    } else if (m.term < this.term) {
      if ((this.checkQuorum || this.preVote) && (m.type === MessageType.Heartbeat || m.type === MessageType.App)) {
        // A leader of an older term: tell it about ours so it steps down (we may have moved on during a
        // partition and be unable to win an election on our own term or rejoin at the old one).
        this.send(newMessage({ type: MessageType.AppResp, to: m.from }));
      } else if (m.type === MessageType.PreVote) {
        this.send(newMessage({ type: MessageType.PreVoteResp, to: m.from, term: this.term, reject: true }));
      }
      return;
    }

    switch (m.type) {
      case MessageType.Hup:
        this.hup(this.preVote ? CampaignType.PreElection : CampaignType.Election);
        return;
      case MessageType.Vote:
      case MessageType.PreVote: {
        const canVote =
          this.vote === m.from ||
          (this.vote === NONE && this.lead === NONE) ||
          (m.type === MessageType.PreVote && m.term > this.term);
        const respType = m.type === MessageType.Vote ? MessageType.VoteResp : MessageType.PreVoteResp;
        if (canVote && this.raftLog.isUpToDate(m.index, m.logTerm)) {
          this.send(newMessage({ type: respType, to: m.from, term: m.term }));
          if (m.type === MessageType.Vote) {
            this.electionElapsed = 0;
            this.vote = m.from;
          }
        } else {
          this.send(newMessage({ type: respType, to: m.from, term: this.term, reject: true }));
        }
        return;
      }
      default:
        if (this.state === StateType.Leader) this.stepLeader(m);
        else if (this.state === StateType.Follower) this.stepFollower(m);
        else this.stepCandidate(m);
    }
  }

  private stepCandidate(m: Message): void {
    const myVoteResp = this.state === StateType.PreCandidate ? MessageType.PreVoteResp : MessageType.VoteResp;
    switch (m.type) {
      case MessageType.Prop:
        throw new ErrProposalDropped("no leader");
      case MessageType.ReadIndex:
        throw new ErrProposalDropped("no leader");
      case MessageType.App:
        this.becomeFollower(m.term, m.from);
        this.handleAppendEntries(m);
        return;
      case MessageType.Heartbeat:
        this.becomeFollower(m.term, m.from);
        this.handleHeartbeat(m);
        return;
      case MessageType.Snap:
        this.becomeFollower(m.term, m.from);
        this.handleSnapshotChunk(m);
        return;
      default:
        if (m.type !== myVoteResp) return;
        switch (this.poll(m.from, !m.reject)) {
          case VoteResult.Won:
            if (this.state === StateType.PreCandidate) {
              this.campaign(CampaignType.Election);
            } else {
              this.becomeLeader();
              this.bcastAppend();
            }
            return;
          case VoteResult.Lost:
            // Pre-candidates keep their term; real candidates stay in theirs.
            this.becomeFollower(this.term, NONE);
            return;
          default:
            return;
        }
    }
  }

  private stepFollower(m: Message): void {
    switch (m.type) {
      case MessageType.Prop:
        if (this.lead === NONE) throw new ErrProposalDropped("no leader");
        m.to = this.lead;
        this.send(m);
        return;
      case MessageType.App:
        this.electionElapsed = 0;
        this.lead = m.from;
        this.leaderHeard();
        this.handleAppendEntries(m);
        return;
      case MessageType.Heartbeat:
        this.electionElapsed = 0;
        this.lead = m.from;
        this.leaderHeard();
        this.handleHeartbeat(m);
        return;
      case MessageType.Snap:
        this.electionElapsed = 0;
        this.lead = m.from;
        this.handleSnapshotChunk(m);
        return;
      case MessageType.TransferLeader:
        if (this.lead === NONE) return;
        m.to = this.lead;
        this.send(m);
        return;
      case MessageType.TimeoutNow:
        // The leader asks us to take over: campaign at once, skipping pre-vote and leases. Only our leader
        // may ask that.
        if (m.from !== this.lead) return;
        this.hup(CampaignType.Transfer);
        return;
      case MessageType.ReadIndex:
        if (this.lead === NONE) throw new ErrProposalDropped("no leader");
        m.to = this.lead;
        this.send(m);
        return;
      case MessageType.ReadIndexResp:
        if (m.from !== this.lead) return;
        this.readStates.push({ index: m.index, ctx: m.context });
        return;
      default:
        return;
    }
  }

  private handleAppendEntries(m: Message): void {
    if (m.index < this.raftLog.committed) {
      this.send(newMessage({ type: MessageType.AppResp, to: m.from, index: this.raftLog.committed }));
      return;
    }
    const last = this.raftLog.maybeAppend(m.index, m.logTerm, m.commit, m.entries);
    if (last >= 0) {
      this.send(newMessage({ type: MessageType.AppResp, to: m.from, index: last }));
      return;
    }
    // Reject, with a hint that lets the leader skip every entry of a term we do not share.
    let hintIndex = Math.min(m.index, this.raftLog.lastIndex());
    hintIndex = this.raftLog.findConflictByTerm(hintIndex, m.logTerm);
    const hintTerm = this.raftLog.zeroTermOnOutOfBounds(hintIndex);
    this.send(
      newMessage({
        type: MessageType.AppResp,
        to: m.from,
        index: m.index,
        reject: true,
        rejectHint: hintIndex,
        logTerm: hintTerm,
      }),
    );
  }

  private handleHeartbeat(m: Message): void {
    // A leader never tells a follower to commit past what it acknowledged; if we lost entries since (a
    // crash before they were synced), commit only what we still hold.
    this.raftLog.commitTo(Math.min(m.commit, this.raftLog.lastIndex()));
    this.send(newMessage({ type: MessageType.HeartbeatResp, to: m.from, context: m.context }));
  }

  private handleSnapshotChunk(m: Message): void {
    const c = m.snapshot;
    if (!c) return;
    const { index, term } = c.metadata;
    if (index <= this.raftLog.committed) {
      // We have all of it already.
      this.snapAsm = undefined;
      this.send(newMessage({ type: MessageType.AppResp, to: m.from, index: this.raftLog.committed }));
      return;
    }
    const got = addSnapshotChunk(this.snapAsm, m);
    if (got.kind !== "done") {
      this.snapAsm = got.asm;
      const reject = got.kind === "reject";
      const rejectHint = reject ? got.have : got.received;
      this.send(newMessage({ type: MessageType.SnapResp, to: m.from, index, reject, rejectHint }));
      return;
    }
    this.snapAsm = undefined;
    if (this.restore(got.snapshot)) {
      this.logger?.info({ index, term }, "restored snapshot from leader");
      this.send(newMessage({ type: MessageType.AppResp, to: m.from, index: this.raftLog.lastIndex() }));
    } else {
      this.send(newMessage({ type: MessageType.AppResp, to: m.from, index: this.raftLog.committed }));
    }
  }

  /** Install a snapshot from the leader. Returns false if it is not newer than what we committed. */
  private restore(s: Snapshot): boolean {
    if (s.metadata.index <= this.raftLog.committed) return false;
    if (this.state !== StateType.Follower) {
      // Only a follower receives snapshots; be safe and step down into a new term.
      this.becomeFollower(this.term + 1, NONE);
      return false;
    }
    const cs = s.metadata.confState;
    // The snapshot may predate our own AddLearner: we then learn of our membership from the entries
    // that follow it. A snapshot that lists us as removed tells us we were.
    if (cs.removed.includes(this.id)) {
      this.learnRemoved(this.lead);
      return false;
    }
    if (this.raftLog.matchTerm(s.metadata.index, s.metadata.term)) {
      // We already have the entry: fast-forward the commit index instead.
      this.raftLog.commitTo(s.metadata.index);
      return false;
    }
    this.raftLog.restore(s);
    this.prs = new Map();
    this.applyConfState(cloneConfState(cs));
    const pr = this.prs.get(this.id);
    if (pr) pr.match = s.metadata.index;
    return true;
  }

  /** Why a conf change cannot be proposed now, or undefined if it can. */
  confChangeError(cc: ConfChange): string | undefined {
    if (this.pendingConfIndex > this.raftLog.applied) {
      return "a membership change is already in progress; retry once it is applied";
    }
    const pr = this.prs.get(cc.nodeId);
    switch (cc.type) {
      case ConfChangeType.AddLearner:
        if (this.removed.has(cc.nodeId)) return `raft member ${cc.nodeId.toString(16)} was removed and cannot rejoin`;
        if (pr) return `raft member ${cc.nodeId.toString(16)} is already a member`;
        return undefined;
      case ConfChangeType.PromoteVoter:
        if (!pr) return `raft member ${cc.nodeId.toString(16)} is not a member`;
        if (!pr.isLearner) return `raft member ${cc.nodeId.toString(16)} is already a voter`;
        return undefined;
      case ConfChangeType.RemoveNode:
        if (!pr) return `raft member ${cc.nodeId.toString(16)} is not a member`;
        if (!pr.isLearner && this.voters().length === 1) return "cannot remove the last voter";
        return undefined;
      default:
        return `unknown conf change type ${String(cc.type)}`;
    }
  }

  /** Apply a committed conf change. Changes that are no longer valid are ignored. */
  applyConfChange(cc: ConfChange): ConfState {
    const last = this.raftLog.lastIndex();
    switch (cc.type) {
      case ConfChangeType.AddLearner:
        if (!this.removed.has(cc.nodeId) && !this.prs.has(cc.nodeId)) {
          const pr = new Progress(last + 1, this.maxInflight, true);
          // A new member starts probing from our last index, and counts as active so that it can be sent
          // a snapshot at once.
          pr.recentActive = true;
          this.prs.set(cc.nodeId, pr);
        }
        break;
      case ConfChangeType.PromoteVoter: {
        const pr = this.prs.get(cc.nodeId);
        if (pr?.isLearner) pr.isLearner = false;
        break;
      }
      case ConfChangeType.RemoveNode: {
        if (!this.prs.has(cc.nodeId)) {
          this.removed.add(cc.nodeId);
          break;
        }
        const wasLeader = this.state === StateType.Leader;
        this.prs.delete(cc.nodeId);
        this.removed.add(cc.nodeId);
        // The leader stops sending to it now: tell it so that it stops too (if this is lost, it campaigns
        // and whoever it asks tells it).
        if (wasLeader && cc.nodeId !== this.id) this.tellRemoved(cc.nodeId);
        if (cc.nodeId === this.id) {
          if (wasLeader) {
            // Hand over to the most up-to-date remaining voter so the group does not wait out an election.
            let best: NodeId = NONE;
            let bestMatch = -1;
            for (const [id, pr] of this.prs) {
              if (!pr.isLearner && pr.match > bestMatch) {
                best = id;
                bestMatch = pr.match;
              }
            }
            if (best !== NONE) this.sendTimeoutNow(best);
          }
          this.becomeFollower(this.term, NONE);
          this.logger?.info({}, "removed from the raft group");
          return this.confState();
        }
        if (this.leadTransferee === cc.nodeId) this.abortLeaderTransfer();
        break;
      }
      default:
        break;
    }
    if (this.state === StateType.Leader && this.voters().length > 0) {
      // The quorum may be smaller now.
      if (this.maybeCommit()) this.bcastAppend();
      else for (const id of this.prs.keys()) if (id !== this.id) this.maybeSendAppend(id, false);
    }
    return this.confState();
  }

  private leaderHeard(): void {
    if (!this.fastElection) return;
    this.fastElection = false;
    this.resetRandomizedElectionTimeout();
  }

  /**
   * The transport lost its connection to `id` (the peer process died, or the link broke). If that is our
   * leader, stop trusting it: campaign within a few ticks instead of waiting out the election timeout, and
   * stop refusing votes on its behalf. PreVote keeps this safe against false alarms: followers that still
   * hear the leader refuse to pre-vote, so a healthy leader is not deposed.
   */
  leaderUnreachable(id: NodeId): void {
    if (this.state !== StateType.Follower || id === NONE || id !== this.lead) return;
    this.lead = NONE;
    this.fastElection = true;
    const soon = 1 + this.rand.intn(3);
    this.electionElapsed = Math.max(this.electionElapsed, this.randomizedElectionTimeout - soon);
    this.logger?.info({ leader: id }, "lost the connection to the leader; campaigning soon");
  }

  /** Decode a ConfChange entry (for drivers). */
  static decodeConfChange(e: Entry): ConfChange {
    return decodeConfChange(e.data);
  }
}

enum VoteResult {
  Pending = 0,
  Won = 1,
  Lost = 2,
}
