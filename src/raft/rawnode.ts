// The core's public face: feed it ticks, messages and proposals, take Ready batches, acknowledge them.

import { encodeConfChange } from "./confchange.js";
import type { ProgressState } from "./progress.js";
import { type Config, Raft } from "./raft.js";
import {
  type ConfChange,
  type ConfState,
  EMPTY,
  EntryType,
  ErrProposalDropped,
  ErrProposalTooLarge,
  ErrStepLocalMsg,
  type HardState,
  hardStateEqual,
  isLocalMessage,
  isResponseMessage,
  type Message,
  MessageType,
  type NodeId,
  newMessage,
  type Ready,
  type SoftState,
  StateType,
} from "./types.js";

export interface Status {
  id: NodeId;
  term: number;
  vote: NodeId;
  commit: number;
  applied: number;
  lead: NodeId;
  state: StateType;
  leadTransferee: NodeId;
  confState: ConfState;
  /** On the leader: each member's replication progress. */
  progress: Map<
    NodeId,
    { match: number; next: number; state: ProgressState; isLearner: boolean; recentActive: boolean }
  >;
}

export class RawNode {
  readonly raft: Raft;
  private prevSoftSt: SoftState;
  private prevHardSt: HardState;

  constructor(config: Config) {
    this.raft = new Raft(config);
    this.prevSoftSt = this.raft.softState();
    this.prevHardSt = this.raft.hardState();
  }

  get id(): NodeId {
    return this.raft.id;
  }

  tick(): void {
    this.raft.tick();
  }

  /** Start an election now (also how a single-node cluster elects itself without waiting). */
  campaign(): void {
    this.raft.step(newMessage({ type: MessageType.Hup, from: this.raft.id }));
  }

  /** Propose data. Throws ErrProposalDropped when it cannot be accepted now (no leader, transfer, too large). */
  propose(data: Uint8Array): void {
    this.proposeBatch([data]);
  }

  /** Propose several entries in one message (one append to each follower instead of one per entry). */
  proposeBatch(datas: Uint8Array[]): void {
    for (const data of datas) {
      if (data.length > this.raft.maxProposalSize) {
        throw new ErrProposalTooLarge(
          `proposal of ${data.length} bytes exceeds the maximum of ${this.raft.maxProposalSize} bytes`,
        );
      }
    }
    this.raft.step(
      newMessage({
        type: MessageType.Prop,
        from: this.raft.id,
        entries: datas.map((data) => ({ term: 0, index: 0, type: EntryType.Normal, data })),
      }),
    );
  }

  /** Propose a membership change. On the leader it is validated at once and a clear error thrown. */
  proposeConfChange(cc: ConfChange): void {
    if (this.raft.state === StateType.Leader) {
      const err = this.raft.confChangeError(cc);
      if (err) throw new ErrProposalDropped(err);
    }
    this.raft.step(
      newMessage({
        type: MessageType.Prop,
        from: this.raft.id,
        entries: [{ term: 0, index: 0, type: EntryType.ConfChange, data: encodeConfChange(cc) }],
      }),
    );
  }

  /** Apply a committed ConfChange entry; the driver calls this while applying entries, in log order. */
  applyConfChange(cc: ConfChange): ConfState {
    return this.raft.applyConfChange(cc);
  }

  /** Step a message from the network. Proposals the leader cannot take are dropped silently. */
  step(m: Message): void {
    if (isLocalMessage(m.type)) throw new ErrStepLocalMsg();
    const why =
      m.from === this.raft.id
        ? "a message from the network that claims to come from this node"
        : this.raft.refusePeerMessage(m);
    if (why !== undefined) {
      this.raft.warnDropped(m, why);
      return;
    }
    if (
      !this.raft.prs.has(m.from) &&
      !this.raft.removed.has(m.from) &&
      isResponseMessage(m.type) &&
      m.type !== MessageType.ReadIndexResp
    ) {
      // A response from someone who is not a member. (A removed member's messages reach the core, which
      // tells it that it was removed.)
      return;
    }
    try {
      this.raft.step(m);
    } catch (e) {
      // A proposal the leader cannot take is dropped silently (its proposer learns from the log). Anything
      // else a peer's message provokes is dropped with a log line: no message may stop the node.
      if (!(e instanceof ErrProposalDropped)) this.raft.warnDropped(m, e instanceof Error ? e.message : String(e));
    }
  }

  /** Ask for a linearizable read point; it arrives as a ReadState tagged `ctx` in a later Ready. */
  readIndex(ctx: Uint8Array): void {
    this.raft.step(newMessage({ type: MessageType.ReadIndex, from: this.raft.id, context: ctx }));
  }

  /** Hand leadership to `transferee` (a voter). Works on any member: followers forward it. */
  transferLeadership(transferee: NodeId): void {
    this.raft.step(newMessage({ type: MessageType.TransferLeader, from: transferee }));
  }

  /**
   * The transport could not reach `id`. On the leader, replication to it drops back to probing; on a
   * follower whose leader it is, the follower campaigns soon instead of waiting out the election timeout.
   */
  reportUnreachable(id: NodeId): void {
    if (this.raft.state === StateType.Follower) {
      this.raft.leaderUnreachable(id);
      return;
    }
    this.raft.step(newMessage({ type: MessageType.Unreachable, from: id }));
  }

  hasReady(): boolean {
    const r = this.raft;
    if (r.msgs.length > 0 || r.readStates.length > 0) return true;
    if (r.raftLog.unstableEntries().length > 0 || r.raftLog.hasPendingSnapshot()) return true;
    if (r.raftLog.hasNextEnts()) return true;
    if (r.lead !== this.prevSoftSt.lead || r.state !== this.prevSoftSt.state) return true;
    const hs = r.hardState();
    return !hardStateEqual(hs, this.prevHardSt);
  }

  ready(): Ready {
    const r = this.raft;
    const rd: Ready = {
      entries: r.raftLog.unstableEntries().slice(),
      committedEntries: r.raftLog.nextEnts(),
      messages: r.msgs,
      readStates: r.readStates,
      mustSync: false,
    };
    r.msgs = [];
    r.readStates = [];
    const ss = r.softState();
    if (ss.lead !== this.prevSoftSt.lead || ss.state !== this.prevSoftSt.state) rd.softState = ss;
    const hs = r.hardState();
    if (!hardStateEqual(hs, this.prevHardSt)) rd.hardState = hs;
    if (r.raftLog.unstable.snapshot) rd.snapshot = r.raftLog.unstable.snapshot;
    rd.mustSync =
      rd.entries.length > 0 ||
      rd.snapshot !== undefined ||
      hs.term !== this.prevHardSt.term ||
      hs.vote !== this.prevHardSt.vote;
    return rd;
  }

  /** The Ready has been persisted, sent and applied. */
  advance(rd: Ready): void {
    if (rd.softState) this.prevSoftSt = rd.softState;
    if (rd.hardState) this.prevHardSt = rd.hardState;
    const log = this.raft.raftLog;
    if (rd.snapshot) {
      log.stableSnapTo(rd.snapshot.metadata.index);
      if (rd.committedEntries.length === 0) log.appliedTo(rd.snapshot.metadata.index);
    }
    if (rd.committedEntries.length > 0) log.appliedTo(rd.committedEntries[rd.committedEntries.length - 1]!.index);
    if (rd.entries.length > 0) {
      const last = rd.entries[rd.entries.length - 1]!;
      log.stableTo(last.index, last.term);
    }
  }

  status(): Status {
    const r = this.raft;
    const progress: Status["progress"] = new Map();
    if (r.state === StateType.Leader) {
      for (const [id, pr] of r.prs) {
        progress.set(id, {
          match: pr.match,
          next: pr.next,
          state: pr.state,
          isLearner: pr.isLearner,
          recentActive: pr.recentActive,
        });
      }
    }
    return {
      id: r.id,
      term: r.term,
      vote: r.vote,
      commit: r.raftLog.committed,
      applied: r.raftLog.applied,
      lead: r.lead,
      state: r.state,
      leadTransferee: r.leadTransferee,
      confState: r.confState(),
      progress,
    };
  }
}

/** The snapshot a brand-new cluster starts from: `voters` at index 1, term 1, and an empty state machine. */
export function bootstrapSnapshot(voters: NodeId[]) {
  return {
    snapshot: {
      metadata: { index: 1, term: 1, confState: { voters: [...voters], learners: [], removed: [] } },
      data: EMPTY,
    },
    hardState: { term: 1, vote: 0, commit: 1 },
  };
}
