// The Raft core's state: its configuration, term and vote, the log, the members' progress, and the role
// transitions (follower, pre-candidate, candidate, leader) with what each resets. Everything here is
// deterministic: time is ticks, randomness comes from the injected source.
//
// The core is one class built in three layers, each in its own file: RaftState (this file: state, sending,
// commit, roles), RaftLeader (raft-leader.ts: the leader's replication, flow control, read index and
// learner promotion) and Raft (raft.ts: step, ticks, elections, the follower's side, membership changes).
// Only Raft is the core's face (through RawNode); the layers below share their members as `protected`.

import { RaftLog } from "./log.js";
import { Progress } from "./progress.js";
import { ReadOnly } from "./read-only.js";
import type { SnapshotAssembly } from "./snapshot-assembly.js";
import type { Storage } from "./storage.js";
import {
  type ConfState,
  EMPTY,
  type Entry,
  EntryType,
  type HardState,
  type Message,
  MessageType,
  NONE,
  type NodeId,
  newMessage,
  type Rand,
  type ReadState,
  type SoftState,
  StateType,
} from "./types.js";

export interface RaftLogger {
  debug(obj: Record<string, unknown>, msg: string): void;
  info(obj: Record<string, unknown>, msg: string): void;
  warn(obj: Record<string, unknown>, msg: string): void;
}

export interface Config {
  id: NodeId;
  storage: Storage;
  rand: Rand;
  /** Ticks without hearing from a leader before a follower campaigns (randomised in [n, 2n)). */
  electionTick?: number;
  heartbeatTick?: number;
  /** The index the state machine has applied up to (on restart). */
  applied?: number;
  /** Bytes of entries in one App message (a single larger entry still goes alone). */
  maxSizePerMsg?: number;
  /** Appends in flight per follower in the replicate state. */
  maxInflightMsgs?: number;
  /** Bytes of snapshot data in one Snap message. */
  maxSnapshotChunk?: number;
  /** Snapshot chunks in flight per follower. */
  snapshotWindow?: number;
  /** A proposal larger than this is refused. */
  maxProposalSize?: number;
  /** Bytes of committed entries handed out in one Ready. */
  maxCommittedSizePerReady?: number;
  checkQuorum?: boolean;
  preVote?: boolean;
  /** The leader promotes a learner to voter once it has caught up. */
  autoPromoteLearners?: boolean;
  /** A learner within this many entries of the commit index counts as caught up. */
  learnerCatchUpLag?: number;
  logger?: RaftLogger;
  /** BROKEN ON PURPOSE: commit entries of earlier terms by counting replicas. Only for the simulation's self-test. */
  unsafeCommitAnyTerm?: boolean;
}

export const DEFAULTS = {
  electionTick: 10,
  heartbeatTick: 1,
  maxSizePerMsg: 1 << 20,
  maxInflightMsgs: 256,
  maxSnapshotChunk: 1 << 20,
  snapshotWindow: 4,
  maxProposalSize: 1.5 * (1 << 20),
  maxCommittedSizePerReady: 16 << 20,
  learnerCatchUpLag: 100,
} as const;

export class RaftState {
  readonly id: NodeId;
  term = 0;
  vote: NodeId = NONE;
  readStates: ReadState[] = [];
  readonly raftLog: RaftLog;
  /** Voters and learners (including this node, if a member). */
  prs = new Map<NodeId, Progress>();
  /** Ids removed from the group: never accepted back, their messages dropped. */
  removed = new Set<NodeId>();
  state: StateType = StateType.Follower;
  votes = new Map<NodeId, boolean>();
  msgs: Message[] = [];
  lead: NodeId = NONE;
  leadTransferee: NodeId = NONE;
  /** Index of the last conf change the leader appended: only one may be in flight. */
  pendingConfIndex = 0;
  protected readOnly = new ReadOnly();
  protected pendingReadIndexMessages: Message[] = [];
  electionElapsed = 0;
  protected heartbeatElapsed = 0;
  readonly checkQuorum: boolean;
  readonly preVote: boolean;
  readonly autoPromoteLearners: boolean;
  readonly heartbeatTimeout: number;
  readonly electionTimeout: number;
  randomizedElectionTimeout = 0;
  protected readonly maxMsgSize: number;
  protected readonly maxInflight: number;
  protected readonly maxSnapshotChunk: number;
  protected readonly snapshotWindow: number;
  readonly maxProposalSize: number;
  protected readonly learnerCatchUpLag: number;
  protected readonly rand: Rand;
  protected readonly logger: RaftLogger | undefined;
  protected readonly unsafeCommitAnyTerm: boolean;
  protected snapAsm: SnapshotAssembly | undefined;
  /** Set when the transport reported our leader dead, until a leader is known again. */
  protected fastElection = false;

  constructor(c: Config) {
    if (c.id === NONE) throw new Error("cannot use none as id");
    this.id = c.id;
    this.heartbeatTimeout = c.heartbeatTick ?? DEFAULTS.heartbeatTick;
    this.electionTimeout = c.electionTick ?? DEFAULTS.electionTick;
    if (this.heartbeatTimeout <= 0) throw new Error("heartbeat tick must be greater than 0");
    if (this.electionTimeout <= this.heartbeatTimeout) {
      throw new Error("election tick must be greater than heartbeat tick");
    }
    this.maxMsgSize = c.maxSizePerMsg ?? DEFAULTS.maxSizePerMsg;
    this.maxInflight = c.maxInflightMsgs ?? DEFAULTS.maxInflightMsgs;
    this.maxSnapshotChunk = c.maxSnapshotChunk ?? DEFAULTS.maxSnapshotChunk;
    this.snapshotWindow = c.snapshotWindow ?? DEFAULTS.snapshotWindow;
    this.maxProposalSize = c.maxProposalSize ?? DEFAULTS.maxProposalSize;
    this.learnerCatchUpLag = c.learnerCatchUpLag ?? DEFAULTS.learnerCatchUpLag;
    this.checkQuorum = c.checkQuorum ?? true;
    this.preVote = c.preVote ?? true;
    this.autoPromoteLearners = c.autoPromoteLearners ?? true;
    this.rand = c.rand;
    this.logger = c.logger;
    this.unsafeCommitAnyTerm = c.unsafeCommitAnyTerm ?? false;
    this.raftLog = new RaftLog(c.storage, c.maxCommittedSizePerReady ?? DEFAULTS.maxCommittedSizePerReady);

    const { hardState, confState } = c.storage.initialState();
    this.applyConfState(confState);
    if (!(hardState.term === 0 && hardState.vote === NONE && hardState.commit === 0)) this.loadState(hardState);
    if (c.applied !== undefined && c.applied > 0) this.raftLog.appliedTo(c.applied);
    this.becomeFollower(this.term, NONE);
  }

  softState(): SoftState {
    return { lead: this.lead, state: this.state };
  }

  hardState(): HardState {
    return { term: this.term, vote: this.vote, commit: this.raftLog.committed };
  }

  confState(): ConfState {
    const voters: NodeId[] = [];
    const learners: NodeId[] = [];
    for (const [id, pr] of this.prs) (pr.isLearner ? learners : voters).push(id);
    return {
      voters: voters.sort((a, b) => a - b),
      learners: learners.sort((a, b) => a - b),
      removed: [...this.removed].sort((a, b) => a - b),
    };
  }

  voters(): NodeId[] {
    const out: NodeId[] = [];
    for (const [id, pr] of this.prs) if (!pr.isLearner) out.push(id);
    return out;
  }

  protected quorum(): number {
    return Math.floor(this.voters().length / 2) + 1;
  }

  protected loadState(hs: HardState): void {
    if (hs.commit < this.raftLog.committed || hs.commit > this.raftLog.lastIndex()) {
      throw new Error(
        `${this.id} state.commit ${hs.commit} is out of range [${this.raftLog.committed}, ${this.raftLog.lastIndex()}]`,
      );
    }
    this.raftLog.committed = hs.commit;
    this.term = hs.term;
    this.vote = hs.vote;
  }

  protected applyConfState(cs: ConfState): void {
    const last = this.raftLog.lastIndex();
    const next = new Map<NodeId, Progress>();
    for (const id of cs.voters) next.set(id, this.prs.get(id) ?? new Progress(last + 1, this.maxInflight, false));
    for (const id of cs.learners) next.set(id, this.prs.get(id) ?? new Progress(last + 1, this.maxInflight, true));
    for (const [id, pr] of next) pr.isLearner = cs.learners.includes(id);
    this.prs = next;
    this.removed = new Set(cs.removed);
  }

  /** This node was removed from the group (it applied its removal, or a member told it so). */
  isRemoved(): boolean {
    return this.removed.has(this.id);
  }

  protected tellRemoved(to: NodeId): void {
    this.send(newMessage({ type: MessageType.Removed, to }));
  }

  /**
   * A member told us that our removal committed (only a member that applied it knows the id as removed,
   * and ids are never reused): leave the group as if we had applied it. We never campaign again.
   */
  protected learnRemoved(from: NodeId): void {
    if (this.isRemoved()) return;
    // No leader sends to an id it removed, so a node that hears from a live leader (or leads) was not
    // removed, unless that leader itself says so: a claim from anyone else then is confused or hostile.
    const live = this.state === StateType.Leader || (this.lead !== NONE && this.electionElapsed < this.electionTimeout);
    if (live && from !== this.lead) {
      this.logger?.warn({ from }, "ignored a claim that this member was removed: it hears from a live leader");
      return;
    }
    this.prs.delete(this.id);
    this.removed.add(this.id);
    this.becomeFollower(this.term, NONE);
    this.logger?.warn({ from }, "removed from the raft group (told by a member); this member stops");
  }

  /** A node that may campaign: a voter that is not waiting to persist a snapshot. */
  promotable(): boolean {
    const pr = this.prs.get(this.id);
    return pr !== undefined && !pr.isLearner && !this.raftLog.hasPendingSnapshot();
  }

  protected send(m: Message): void {
    if (m.from === NONE) m.from = this.id;
    if (
      m.type === MessageType.Vote ||
      m.type === MessageType.VoteResp ||
      m.type === MessageType.PreVote ||
      m.type === MessageType.PreVoteResp
    ) {
      if (m.term === 0) throw new Error(`term should be set when sending ${MessageType[m.type]}`);
    } else {
      if (m.term !== 0) throw new Error(`term should not be set when sending ${MessageType[m.type]} (was ${m.term})`);
      // Proposals and read requests forwarded to the leader are local messages: they carry no term, and
      // neither does a learner's MemberCheck (a learner's term must never depose a leader).
      if (m.type !== MessageType.Prop && m.type !== MessageType.ReadIndex && m.type !== MessageType.MemberCheck) {
        m.term = this.term;
      }
    }
    this.msgs.push(m);
  }

  /** Advance the commit index to what a quorum of voters has, if that entry is of the current term. */
  maybeCommit(): boolean {
    const matches: number[] = [];
    for (const pr of this.prs.values()) if (!pr.isLearner) matches.push(pr.match);
    if (matches.length === 0) return false;
    matches.sort((a, b) => b - a);
    const mci = matches[this.quorum() - 1]!;
    return this.raftLog.maybeCommit(mci, this.term, this.unsafeCommitAnyTerm);
  }

  protected committedEntryInCurrentTerm(): boolean {
    return this.raftLog.zeroTermOnOutOfBounds(this.raftLog.committed) === this.term;
  }

  protected appendEntry(proposed: Entry[]): void {
    let li = this.raftLog.lastIndex();
    // New objects: the proposal's entries may be shared with a message that is delivered again.
    const es = proposed.map((e) => ({ term: this.term, index: ++li, type: e.type, data: e.data }));
    li = this.raftLog.append(es);
    this.prs.get(this.id)?.maybeUpdate(li);
    this.maybeCommit();
  }

  protected reset(term: number): void {
    if (this.term !== term) {
      this.term = term;
      this.vote = NONE;
      this.snapAsm = undefined;
    }
    this.lead = NONE;
    this.electionElapsed = 0;
    this.heartbeatElapsed = 0;
    this.resetRandomizedElectionTimeout();
    this.abortLeaderTransfer();
    this.votes.clear();
    const last = this.raftLog.lastIndex();
    for (const [id, old] of this.prs) {
      const pr = new Progress(last + 1, this.maxInflight, old.isLearner);
      if (id === this.id) pr.match = last;
      this.prs.set(id, pr);
    }
    this.pendingConfIndex = 0;
    this.readOnly = new ReadOnly();
  }

  protected resetRandomizedElectionTimeout(): void {
    // After the transport saw the leader die, survivors that collide (both candidates in one term) retry
    // within a few ticks rather than a whole election timeout.
    this.randomizedElectionTimeout = this.fastElection
      ? 1 + this.rand.intn(5)
      : this.electionTimeout + this.rand.intn(this.electionTimeout);
  }

  becomeFollower(term: number, lead: NodeId): void {
    if (lead !== NONE) this.fastElection = false;
    this.reset(term);
    this.lead = lead;
    this.state = StateType.Follower;
    this.pendingReadIndexMessages = [];
  }

  protected becomeCandidate(): void {
    if (this.state === StateType.Leader) throw new Error("invalid transition [leader -> candidate]");
    this.reset(this.term + 1);
    this.vote = this.id;
    this.state = StateType.Candidate;
  }

  protected becomePreCandidate(): void {
    if (this.state === StateType.Leader) throw new Error("invalid transition [leader -> pre-candidate]");
    // A pre-candidate changes neither its term nor its vote.
    this.votes.clear();
    this.lead = NONE;
    this.state = StateType.PreCandidate;
  }

  protected becomeLeader(): void {
    if (this.state === StateType.Follower) throw new Error("invalid transition [follower -> leader]");
    this.fastElection = false;
    this.reset(this.term);
    this.lead = this.id;
    this.state = StateType.Leader;
    this.prs.get(this.id)?.becomeReplicate();
    // No conf change may be proposed until everything before this term is applied (and this term has
    // committed an entry): this closes the known hole in single-server membership changes.
    this.pendingConfIndex = this.raftLog.lastIndex();
    this.appendEntry([{ term: 0, index: 0, type: EntryType.Normal, data: EMPTY }]);
    this.logger?.info({ term: this.term }, "became leader");
  }

  protected abortLeaderTransfer(): void {
    this.leadTransferee = NONE;
  }
}
