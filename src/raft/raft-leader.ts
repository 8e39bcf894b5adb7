// The leader's side of the Raft core: replication to each follower with probe/replicate flow control and
// conflict hints, chunked snapshot transfer with a window, heartbeats, the commit as acknowledgements
// arrive, ReadIndex reads confirmed by a quorum's heartbeats, leadership transfer, and the promotion of
// learners that have caught up. Like the rest of the core it does no I/O: it only queues messages.

import { encodeConfChange } from "./confchange.js";
import { type Progress, ProgressState } from "./progress.js";
import { RaftState } from "./raft-state.js";
import {
  type ConfChange,
  ConfChangeType,
  EMPTY,
  type Entry,
  EntryType,
  ErrProposalDropped,
  type Message,
  MessageType,
  NONE,
  type NodeId,
  newMessage,
  StateType,
} from "./types.js";

export class RaftLeader extends RaftState {
  protected sendAppend(to: NodeId): void {
    this.maybeSendAppend(to, true);
  }

  /** Send what the follower needs next, if flow control allows. Returns whether a message was sent. */
  protected maybeSendAppend(to: NodeId, sendIfEmpty: boolean): boolean {
    const pr = this.prs.get(to);
    if (!pr || pr.isPaused()) return false;
    let term: number | undefined;
    let ents: Entry[] | undefined;
    try {
      term = this.raftLog.term(pr.next - 1);
      ents = this.raftLog.entries(pr.next, this.maxMsgSize);
    } catch {
      // The follower needs entries we compacted away: send the snapshot instead.
      return this.sendSnapshot(to, pr);
    }
    if (ents.length === 0 && !sendIfEmpty) return false;
    const m = newMessage({
      type: MessageType.App,
      to,
      index: pr.next - 1,
      logTerm: term,
      entries: ents,
      commit: this.raftLog.committed,
    });
    if (ents.length > 0) {
      if (pr.state === ProgressState.Replicate) {
        const last = ents[ents.length - 1]!.index;
        pr.optimisticUpdate(last);
        pr.inflights.add(last);
      } else if (pr.state === ProgressState.Probe) {
        pr.probeSent = true;
      }
    }
    this.send(m);
    return true;
  }

  protected sendSnapshot(to: NodeId, pr: Progress): boolean {
    if (!pr.recentActive) return false;
    const snap = this.raftLog.snapshot();
    if (snap.metadata.index === 0) throw new Error("need non-empty snapshot");
    this.logger?.info({ to, index: snap.metadata.index, bytes: snap.data.length }, "sending snapshot");
    pr.becomeSnapshot(snap);
    this.sendSnapChunks(to, pr);
    return true;
  }

  /** Send snapshot chunks while the window allows; no message carries more than maxSnapshotChunk bytes. */
  protected sendSnapChunks(to: NodeId, pr: Progress): void {
    const snap = pr.snap!;
    const total = snap.data.length;
    while (!pr.snapAllSent && pr.snapSent - pr.snapAcked < this.snapshotWindow * this.maxSnapshotChunk) {
      const end = Math.min(total, pr.snapSent + this.maxSnapshotChunk);
      this.send(
        newMessage({
          type: MessageType.Snap,
          to,
          snapshot: { metadata: snap.metadata, offset: pr.snapSent, total, data: snap.data.subarray(pr.snapSent, end) },
        }),
      );
      pr.snapSent = end;
      if (end === total) {
        pr.snapAllSent = true;
        this.logger?.info({ to, index: snap.metadata.index, bytes: total }, "sent the last snapshot chunk");
      }
    }
  }

  protected sendHeartbeat(to: NodeId, ctx: Uint8Array): void {
    const pr = this.prs.get(to)!;
    // A follower may not have everything the leader has committed: never tell it to commit past its match.
    const commit = Math.min(pr.match, this.raftLog.committed);
    this.send(newMessage({ type: MessageType.Heartbeat, to, commit, context: ctx }));
  }

  protected bcastAppend(): void {
    for (const id of this.prs.keys()) if (id !== this.id) this.sendAppend(id);
  }

  protected bcastHeartbeat(): void {
    const ctx = this.readOnly.lastPendingRequestCtx() ?? EMPTY;
    for (const id of this.prs.keys()) if (id !== this.id) this.sendHeartbeat(id, ctx);
  }

  protected sendTimeoutNow(to: NodeId): void {
    this.send(newMessage({ type: MessageType.TimeoutNow, to }));
  }

  protected stepLeader(m: Message): void {
    switch (m.type) {
      case MessageType.Beat:
        this.bcastHeartbeat();
        return;
      case MessageType.CheckQuorum: {
        if (!this.quorumActive()) {
          this.logger?.warn({ term: this.term }, "stepped down: cannot reach a quorum");
          this.becomeFollower(this.term, NONE);
        }
        for (const [id, pr] of this.prs) if (id !== this.id) pr.recentActive = false;
        return;
      }
      case MessageType.Prop:
        this.propose(m);
        return;
      case MessageType.ReadIndex:
        this.leaderReadIndex(m);
        return;
      default:
        break;
    }
    const pr = this.prs.get(m.from);
    if (!pr) return;
    switch (m.type) {
      case MessageType.AppResp:
        this.handleAppResp(m, pr);
        return;
      case MessageType.HeartbeatResp:
        this.handleHeartbeatResp(m, pr);
        return;
      case MessageType.SnapResp:
        this.handleSnapResp(m, pr);
        return;
      case MessageType.Unreachable:
        if (pr.state === ProgressState.Replicate) pr.becomeProbe();
        return;
      case MessageType.TransferLeader:
        this.transferLeader(m, pr);
        return;
      default:
        return;
    }
  }

  /** Append a proposal (at most one conf change in flight: a second is dropped, or refused if it is ours). */
  private propose(m: Message): void {
    if (m.entries.length === 0) throw new Error("stepped empty MsgProp");
    if (!this.prs.has(this.id)) throw new ErrProposalDropped("this node was removed from the cluster");
    if (this.leadTransferee !== NONE) throw new ErrProposalDropped("leadership is being transferred");
    for (let i = 0; i < m.entries.length; i++) {
      const e = m.entries[i]!;
      if (e.type !== EntryType.ConfChange) continue;
      if (this.pendingConfIndex > this.raftLog.applied) {
        if (m.from === this.id) {
          throw new ErrProposalDropped("a membership change is already in progress; retry once it is applied");
        }
        m.entries[i] = { term: 0, index: 0, type: EntryType.Normal, data: EMPTY };
      } else {
        this.pendingConfIndex = this.raftLog.lastIndex() + i + 1;
      }
    }
    this.appendEntry(m.entries);
    this.bcastAppend();
  }

  private leaderReadIndex(m: Message): void {
    if (this.quorum() === 1 && this.prs.get(this.id)?.isLearner === false) {
      this.respondToReadIndex(m, this.raftLog.committed);
    } else if (!this.committedEntryInCurrentTerm()) {
      // The commit index may be stale until this term commits its no-op: answer then.
      this.pendingReadIndexMessages.push(m);
    } else {
      this.startReadIndex(m);
    }
  }

  /** A follower accepted or refused an append: move its progress, commit, and send what comes next. */
  private handleAppResp(m: Message, pr: Progress): void {
    pr.recentActive = true;
    if (m.reject) {
      let nextProbe = m.rejectHint;
      if (m.logTerm > 0) nextProbe = this.raftLog.findConflictByTerm(m.rejectHint, m.logTerm);
      if (pr.maybeDecrTo(m.index, nextProbe)) {
        if (pr.state === ProgressState.Replicate) pr.becomeProbe();
        this.sendAppend(m.from);
      }
    } else {
      const oldPaused = pr.isPaused();
      const moved = pr.maybeUpdate(m.index);
      // Leave the snapshot state once the follower holds everything the snapshot covers, even if the
      // match did not move: a follower answers a chunk it does not need with its commit index, which
      // may be a match we already knew. Waiting for the match to move would send chunks forever.
      const snapshotDone = pr.state === ProgressState.Snapshot && pr.match >= pr.pendingSnapshot;
      // A probe answered at the match we already had (the follower was caught up) also ends probing.
      const probeDone = pr.state === ProgressState.Probe && pr.match === m.index;
      if (moved || snapshotDone || probeDone) {
        if (snapshotDone) {
          this.logger?.info({ to: m.from, match: pr.match }, "follower has the snapshot; replicating");
          pr.becomeProbe();
          pr.becomeReplicate();
        } else if (pr.state === ProgressState.Probe) {
          pr.becomeReplicate();
        } else if (pr.state === ProgressState.Replicate) {
          pr.inflights.freeLE(m.index);
        }
        if (this.maybeCommit()) {
          this.releasePendingReadIndexMessages();
          this.bcastAppend();
        } else if (oldPaused) {
          this.sendAppend(m.from);
        }
        // Pipelining: fill the window.
        while (this.maybeSendAppend(m.from, false)) {
          /* keep sending */
        }
        if (m.from === this.leadTransferee && pr.match === this.raftLog.lastIndex()) {
          this.sendTimeoutNow(m.from);
        }
        if (pr.isLearner) {
          this.logger?.debug(
            { learner: m.from, match: pr.match, committed: this.raftLog.committed },
            "learner acknowledged",
          );
          this.maybePromoteLearner();
        }
      }
    }
  }

  /** A heartbeat answered: the follower is alive; resend a stalled snapshot; count read-index acknowledgements. */
  private handleHeartbeatResp(m: Message, pr: Progress): void {
    pr.recentActive = true;
    pr.probeSent = false;
    if (pr.state === ProgressState.Replicate && pr.inflights.full()) pr.inflights.freeFirstOne();
    if (pr.state === ProgressState.Snapshot) {
      // No acknowledgement for a while: a chunk was lost, or the follower restarted. Resend.
      if (++pr.snapStall >= 3) {
        this.logger?.info(
          { to: m.from, index: pr.pendingSnapshot, from: pr.snapAcked, sent: pr.snapSent, allSent: pr.snapAllSent },
          "snapshot transfer stalled; resending unacknowledged chunks",
        );
        pr.snapStall = 0;
        pr.snapSent = pr.snapAcked;
        pr.snapAllSent = false;
        this.sendSnapChunks(m.from, pr);
      }
    } else if (pr.match < this.raftLog.lastIndex() || pr.state === ProgressState.Probe) {
      // Behind, or probing: a follower that is caught up answers the probe, which ends probing (a learner
      // is promoted only once replication to it runs normally).
      this.sendAppend(m.from);
    }
    if (m.context.length === 0) return;
    const acks = this.readOnly.recvAck(m.from, m.context);
    if (!acks) return;
    let n = 0;
    for (const id of acks) if (this.prs.get(id)?.isLearner === false) n++;
    if (n < this.quorum()) return;
    for (const rs of this.readOnly.advance(m.context)) this.respondToReadIndex(rs.req, rs.index);
  }

  private handleSnapResp(m: Message, pr: Progress): void {
    if (pr.state !== ProgressState.Snapshot || pr.pendingSnapshot !== m.index) return;
    pr.recentActive = true;
    pr.snapStall = 0;
    const total = pr.snap!.data.length;
    if (m.reject) {
      pr.snapSent = pr.snapAcked = Math.min(m.rejectHint, total);
      pr.snapAllSent = false;
    } else {
      pr.snapAcked = Math.max(pr.snapAcked, Math.min(m.rejectHint, total));
    }
    this.sendSnapChunks(m.from, pr);
  }

  private transferLeader(m: Message, pr: Progress): void {
    if (pr.isLearner) return;
    const transferee = m.from;
    if (this.leadTransferee !== NONE) {
      if (this.leadTransferee === transferee) return;
      this.abortLeaderTransfer();
    }
    if (transferee === this.id) return;
    this.electionElapsed = 0;
    this.leadTransferee = transferee;
    if (pr.match === this.raftLog.lastIndex()) this.sendTimeoutNow(transferee);
    else this.sendAppend(transferee);
  }

  protected startReadIndex(m: Message): void {
    this.readOnly.addRequest(this.raftLog.committed, m);
    this.readOnly.recvAck(this.id, m.context);
    this.bcastHeartbeat();
  }

  protected respondToReadIndex(req: Message, index: number): void {
    if (req.from === NONE || req.from === this.id) {
      this.readStates.push({ index, ctx: req.context });
    } else {
      this.send(newMessage({ type: MessageType.ReadIndexResp, to: req.from, index, context: req.context }));
    }
  }

  protected releasePendingReadIndexMessages(): void {
    if (this.pendingReadIndexMessages.length === 0 || !this.committedEntryInCurrentTerm()) return;
    const msgs = this.pendingReadIndexMessages;
    this.pendingReadIndexMessages = [];
    for (const m of msgs) this.startReadIndex(m);
  }

  protected quorumActive(): boolean {
    let active = 0;
    for (const [id, pr] of this.prs) {
      if (pr.isLearner) continue;
      if (id === this.id || pr.recentActive) active++;
    }
    return active >= this.quorum();
  }

  /** Leader: propose promoting one learner that has caught up. */
  protected maybePromoteLearner(): void {
    if (!this.autoPromoteLearners || this.state !== StateType.Leader || this.leadTransferee !== NONE) return;
    if (this.pendingConfIndex > this.raftLog.applied || !this.prs.has(this.id)) return;
    for (const [id, pr] of this.prs) {
      if (!pr.isLearner || pr.state !== ProgressState.Replicate || !pr.recentActive) continue;
      if (pr.match + this.learnerCatchUpLag < this.raftLog.committed) continue;
      const cc: ConfChange = { type: ConfChangeType.PromoteVoter, nodeId: id, context: EMPTY };
      this.logger?.info({ learner: id, match: pr.match }, "promoting caught-up learner to voter");
      this.pendingConfIndex = this.raftLog.lastIndex() + 1;
      this.appendEntry([{ term: 0, index: 0, type: EntryType.ConfChange, data: encodeConfChange(cc) }]);
      this.bcastAppend();
      return;
    }
  }
}
