// The Raft consensus core: a pure, deterministic state machine in the style of etcd's raft. It is driven
// by step(message) and tick(), and produces messages, entries to persist and entries to apply; it does no
// I/O and reads time only as ticks and randomness only from the injected source.
//
// Beyond the Raft paper it has PreVote and CheckQuorum (§9.6 of the thesis), pipelined replication with
// probe/replicate flow control and conflict hints, chunked snapshot transfer, learners that the leader
// promotes once caught up, leadership transfer (§3.10) and ReadIndex reads (§6.4).

import { decodeConfChange, encodeConfChange } from "./confchange.js";
import { RaftLog } from "./log.js";
import { Progress, ProgressState } from "./progress.js";
import { cloneConfState, type Storage } from "./storage.js";
import {
  type ConfChange,
  ConfChangeType,
  type ConfState,
  EMPTY,
  type Entry,
  EntryType,
  ErrProposalDropped,
  type HardState,
  MAX_RAFT_NUMBER,
  MAX_TERM_JUMP,
  type Message,
  MessageType,
  NONE,
  type NodeId,
  newMessage,
  type Rand,
  type ReadState,
  type Snapshot,
  type SoftState,
  StateType,
} from "./types.js";

export interface RaftLogger {
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

function ctxKey(ctx: Uint8Array): string {
  return Buffer.from(ctx.buffer, ctx.byteOffset, ctx.byteLength).toString("latin1");
}

interface ReadIndexStatus {
  index: number;
  req: Message;
  acks: Set<NodeId>;
}

/** Outstanding ReadIndex requests, answered in order once a quorum confirms the leader is still leader. */
class ReadOnly {
  private pending = new Map<string, ReadIndexStatus>();
  private queue: string[] = [];

  addRequest(index: number, m: Message): void {
    const key = ctxKey(m.context);
    if (this.pending.has(key)) return;
    this.pending.set(key, { index, req: m, acks: new Set() });
    this.queue.push(key);
  }

  recvAck(id: NodeId, ctx: Uint8Array): Set<NodeId> | undefined {
    const rs = this.pending.get(ctxKey(ctx));
    if (!rs) return undefined;
    rs.acks.add(id);
    return rs.acks;
  }

  /** Dequeue every request up to and including the one with `ctx`. */
  advance(ctx: Uint8Array): ReadIndexStatus[] {
    const key = ctxKey(ctx);
    const at = this.queue.indexOf(key);
    if (at < 0) return [];
    const done = this.queue.splice(0, at + 1);
    const out: ReadIndexStatus[] = [];
    for (const k of done) {
      const rs = this.pending.get(k);
      if (!rs) throw new Error("cannot find corresponding read state from pending map");
      this.pending.delete(k);
      out.push(rs);
    }
    return out;
  }

  lastPendingRequestCtx(): Uint8Array | undefined {
    if (this.queue.length === 0) return undefined;
    return this.pending.get(this.queue[this.queue.length - 1]!)!.req.context;
  }
}

interface SnapshotAssembly {
  from: NodeId;
  term: number;
  index: number;
  snapTerm: number;
  total: number;
  received: number;
  parts: Uint8Array[];
}

export class Raft {
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
  private readOnly = new ReadOnly();
  private pendingReadIndexMessages: Message[] = [];
  electionElapsed = 0;
  private heartbeatElapsed = 0;
  readonly checkQuorum: boolean;
  readonly preVote: boolean;
  readonly autoPromoteLearners: boolean;
  readonly heartbeatTimeout: number;
  readonly electionTimeout: number;
  randomizedElectionTimeout = 0;
  private readonly maxMsgSize: number;
  private readonly maxInflight: number;
  private readonly maxSnapshotChunk: number;
  private readonly snapshotWindow: number;
  readonly maxProposalSize: number;
  private readonly learnerCatchUpLag: number;
  private readonly rand: Rand;
  private readonly logger: RaftLogger | undefined;
  private readonly unsafeCommitAnyTerm: boolean;
  private snapAsm: SnapshotAssembly | undefined;
  /** Set when the transport reported our leader dead, until a leader is known again. */
  private fastElection = false;

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

  // ---------------------------------------------------------------- state

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

  private quorum(): number {
    return Math.floor(this.voters().length / 2) + 1;
  }

  private loadState(hs: HardState): void {
    if (hs.commit < this.raftLog.committed || hs.commit > this.raftLog.lastIndex()) {
      throw new Error(
        `${this.id} state.commit ${hs.commit} is out of range [${this.raftLog.committed}, ${this.raftLog.lastIndex()}]`,
      );
    }
    this.raftLog.committed = hs.commit;
    this.term = hs.term;
    this.vote = hs.vote;
  }

  private applyConfState(cs: ConfState): void {
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

  private tellRemoved(to: NodeId): void {
    this.send(newMessage({ type: MessageType.Removed, to }));
  }

  /**
   * A member told us that our removal committed (only a member that applied it knows the id as removed,
   * and ids are never reused): leave the group as if we had applied it. We never campaign again.
   */
  private learnRemoved(from: NodeId): void {
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

  // ---------------------------------------------------------------- sending

  private send(m: Message): void {
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

  private sendAppend(to: NodeId): void {
    this.maybeSendAppend(to, true);
  }

  /** Send what the follower needs next, if flow control allows. Returns whether a message was sent. */
  private maybeSendAppend(to: NodeId, sendIfEmpty: boolean): boolean {
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

  private sendSnapshot(to: NodeId, pr: Progress): boolean {
    if (!pr.recentActive) return false;
    const snap = this.raftLog.snapshot();
    if (snap.metadata.index === 0) throw new Error("need non-empty snapshot");
    this.logger?.info({ to, index: snap.metadata.index, bytes: snap.data.length }, "sending snapshot");
    pr.becomeSnapshot(snap);
    this.sendSnapChunks(to, pr);
    return true;
  }

  /** Send snapshot chunks while the window allows; no message carries more than maxSnapshotChunk bytes. */
  private sendSnapChunks(to: NodeId, pr: Progress): void {
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
      if (end === total) pr.snapAllSent = true;
    }
  }

  private sendHeartbeat(to: NodeId, ctx: Uint8Array): void {
    const pr = this.prs.get(to)!;
    // A follower may not have everything the leader has committed: never tell it to commit past its match.
    const commit = Math.min(pr.match, this.raftLog.committed);
    this.send(newMessage({ type: MessageType.Heartbeat, to, commit, context: ctx }));
  }

  private bcastAppend(): void {
    for (const id of this.prs.keys()) if (id !== this.id) this.sendAppend(id);
  }

  private bcastHeartbeat(): void {
    const ctx = this.readOnly.lastPendingRequestCtx() ?? EMPTY;
    for (const id of this.prs.keys()) if (id !== this.id) this.sendHeartbeat(id, ctx);
  }

  private sendTimeoutNow(to: NodeId): void {
    this.send(newMessage({ type: MessageType.TimeoutNow, to }));
  }

  // ---------------------------------------------------------------- commit

  /** Advance the commit index to what a quorum of voters has, if that entry is of the current term. */
  maybeCommit(): boolean {
    const matches: number[] = [];
    for (const pr of this.prs.values()) if (!pr.isLearner) matches.push(pr.match);
    if (matches.length === 0) return false;
    matches.sort((a, b) => b - a);
    const mci = matches[this.quorum() - 1]!;
    return this.raftLog.maybeCommit(mci, this.term, this.unsafeCommitAnyTerm);
  }

  private committedEntryInCurrentTerm(): boolean {
    return this.raftLog.zeroTermOnOutOfBounds(this.raftLog.committed) === this.term;
  }

  private appendEntry(proposed: Entry[]): void {
    let li = this.raftLog.lastIndex();
    // New objects: the proposal's entries may be shared with a message that is delivered again.
    const es = proposed.map((e) => ({ term: this.term, index: ++li, type: e.type, data: e.data }));
    li = this.raftLog.append(es);
    this.prs.get(this.id)?.maybeUpdate(li);
    this.maybeCommit();
  }

  // ---------------------------------------------------------------- roles

  private reset(term: number): void {
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

  private resetRandomizedElectionTimeout(): void {
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

  private becomeCandidate(): void {
    if (this.state === StateType.Leader) throw new Error("invalid transition [leader -> candidate]");
    this.reset(this.term + 1);
    this.vote = this.id;
    this.state = StateType.Candidate;
  }

  private becomePreCandidate(): void {
    if (this.state === StateType.Leader) throw new Error("invalid transition [leader -> pre-candidate]");
    // A pre-candidate changes neither its term nor its vote.
    this.votes.clear();
    this.lead = NONE;
    this.state = StateType.PreCandidate;
  }

  private becomeLeader(): void {
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

  // ---------------------------------------------------------------- ticks

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

  // ---------------------------------------------------------------- step

  /**
   * Why a message from a peer cannot be handled, checked before it changes anything; undefined if it can.
   * The transport's schema bounds every field; these are the checks that need the node's own state.
   */
  refusePeerMessage(m: Message): string | undefined {
    if (m.term > MAX_RAFT_NUMBER || m.term > this.term + MAX_TERM_JUMP) {
      return `term ${m.term} is too far above this node's term ${this.term}`;
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
        return this.refuseAppend(m);
      case MessageType.AppResp:
        if (!m.reject && this.state === StateType.Leader && m.index > this.raftLog.lastIndex()) {
          return `acknowledges index ${m.index}, beyond this leader's log (${this.raftLog.lastIndex()})`;
        }
        return undefined;
      case MessageType.Prop:
        return this.state === StateType.Leader ? this.refuseProposal(m) : undefined;
      default:
        return undefined;
    }
  }

  /** An append's entries follow on from (index, logTerm), one index apart, with terms in order, none above
   * the sender's term. */
  private refuseAppend(m: Message): string | undefined {
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
  private refuseProposal(m: Message): string | undefined {
    for (const e of m.entries) {
      if (e.data.length > this.maxProposalSize) return `a proposed entry of ${e.data.length} bytes`;
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

  private stepLeader(m: Message): void {
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
      case MessageType.Prop: {
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
        return;
      }
      case MessageType.ReadIndex: {
        if (this.quorum() === 1 && this.prs.get(this.id)?.isLearner === false) {
          this.respondToReadIndex(m, this.raftLog.committed);
        } else if (!this.committedEntryInCurrentTerm()) {
          // The commit index may be stale until this term commits its no-op: answer then.
          this.pendingReadIndexMessages.push(m);
        } else {
          this.startReadIndex(m);
        }
        return;
      }
      default:
        break;
    }

    const pr = this.prs.get(m.from);
    if (!pr) return;
    switch (m.type) {
      case MessageType.AppResp: {
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
            if (pr.isLearner) this.maybePromoteLearner();
          }
        }
        return;
      }
      case MessageType.HeartbeatResp: {
        pr.recentActive = true;
        pr.probeSent = false;
        if (pr.state === ProgressState.Replicate && pr.inflights.full()) pr.inflights.freeFirstOne();
        if (pr.state === ProgressState.Snapshot) {
          // No acknowledgement for a while: a chunk was lost, or the follower restarted. Resend.
          if (++pr.snapStall >= 3) {
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
        return;
      }
      case MessageType.SnapResp: {
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
        return;
      }
      case MessageType.Unreachable:
        if (pr.state === ProgressState.Replicate) pr.becomeProbe();
        return;
      case MessageType.TransferLeader: {
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
        return;
      }
      default:
        return;
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
    let asm = this.snapAsm;
    if (c.offset === 0) {
      asm = { from: m.from, term: m.term, index, snapTerm: term, total: c.total, received: 0, parts: [] };
      this.snapAsm = asm;
    }
    const matches =
      asm !== undefined &&
      asm.from === m.from &&
      asm.term === m.term &&
      asm.index === index &&
      asm.snapTerm === term &&
      asm.total === c.total &&
      c.offset === asm.received;
    if (!matches || asm === undefined) {
      const have = asm !== undefined && asm.index === index && asm.snapTerm === term ? asm.received : 0;
      this.send(newMessage({ type: MessageType.SnapResp, to: m.from, index, reject: true, rejectHint: have }));
      return;
    }
    asm.parts.push(c.data.slice());
    asm.received += c.data.length;
    if (asm.received < asm.total) {
      this.send(newMessage({ type: MessageType.SnapResp, to: m.from, index, rejectHint: asm.received }));
      return;
    }
    this.snapAsm = undefined;
    const data = asm.parts.length === 1 ? asm.parts[0]! : Buffer.concat(asm.parts);
    const snap: Snapshot = {
      metadata: c.metadata,
      data: new Uint8Array(data.buffer, data.byteOffset, data.byteLength),
    };
    if (this.restore(snap)) {
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

  // ---------------------------------------------------------------- reads

  private startReadIndex(m: Message): void {
    this.readOnly.addRequest(this.raftLog.committed, m);
    this.readOnly.recvAck(this.id, m.context);
    this.bcastHeartbeat();
  }

  private respondToReadIndex(req: Message, index: number): void {
    if (req.from === NONE || req.from === this.id) {
      this.readStates.push({ index, ctx: req.context });
    } else {
      this.send(newMessage({ type: MessageType.ReadIndexResp, to: req.from, index, context: req.context }));
    }
  }

  private releasePendingReadIndexMessages(): void {
    if (this.pendingReadIndexMessages.length === 0 || !this.committedEntryInCurrentTerm()) return;
    const msgs = this.pendingReadIndexMessages;
    this.pendingReadIndexMessages = [];
    for (const m of msgs) this.startReadIndex(m);
  }

  // ---------------------------------------------------------------- membership

  private quorumActive(): boolean {
    let active = 0;
    for (const [id, pr] of this.prs) {
      if (pr.isLearner) continue;
      if (id === this.id || pr.recentActive) active++;
    }
    return active >= this.quorum();
  }

  /** Leader: propose promoting one learner that has caught up. */
  private maybePromoteLearner(): void {
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

  private abortLeaderTransfer(): void {
    this.leadTransferee = NONE;
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
