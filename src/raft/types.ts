// The data types of the Raft core. The core orders opaque entries: it knows nothing of what they mean.
// Everything here is plain data, so the same values flow through the core, the simulated network of the
// tests, level storage and the gRPC transport.

/**
 * The largest term or index the core accepts from a peer (2^48: millennia of elections and writes). Every
 * number the core computes from one (term + 1, index + 1) stays exact.
 */
export const MAX_RAFT_NUMBER = 2 ** 48;
/** A message whose term is further than this above ours is refused (no real cluster moves that fast). */
export const MAX_TERM_JUMP = 2 ** 24;

/** A Raft member id. 0 means "none". Ids are positive safe integers and are never reused once removed. */
export type NodeId = number;
export const NONE: NodeId = 0;

export enum EntryType {
  Normal = 0,
  ConfChange = 1,
}

export interface Entry {
  term: number;
  index: number;
  type: EntryType;
  /** An empty Normal entry is the no-op a new leader appends. */
  data: Uint8Array;
}

/** What must be on disk before a message that depends on it leaves the node. */
export interface HardState {
  term: number;
  vote: NodeId;
  commit: number;
}

export interface ConfState {
  voters: NodeId[];
  learners: NodeId[];
  /** Ids removed from the group; a removed id is never accepted back. */
  removed: NodeId[];
}

export interface SnapshotMetadata {
  index: number;
  term: number;
  confState: ConfState;
}

export interface Snapshot {
  metadata: SnapshotMetadata;
  data: Uint8Array;
}

export enum ConfChangeType {
  /** Add a new member as a non-voting learner. */
  AddLearner = 0,
  /** Make a learner a voter (the leader does this by itself once the learner has caught up). */
  PromoteVoter = 1,
  /** Remove a voter or learner for good. */
  RemoveNode = 2,
}

export interface ConfChange {
  type: ConfChangeType;
  nodeId: NodeId;
  /** Opaque to the core (the application puts the member's address here). */
  context: Uint8Array;
}

export enum MessageType {
  /** Local: start an election. */
  Hup = 0,
  /** Local: leader sends heartbeats. */
  Beat = 1,
  /** A proposal (local, or forwarded by a follower to the leader). */
  Prop = 2,
  App = 3,
  AppResp = 4,
  Vote = 5,
  VoteResp = 6,
  PreVote = 7,
  PreVoteResp = 8,
  /** One chunk of a snapshot. */
  Snap = 9,
  /** A follower's acknowledgement of the snapshot bytes it holds. */
  SnapResp = 10,
  Heartbeat = 11,
  HeartbeatResp = 12,
  /** Ask the leader to hand leadership to `from` (or, locally, to the node named in `index`). */
  TransferLeader = 13,
  /** Leader to transferee: start an election now, ignoring leases. */
  TimeoutNow = 14,
  ReadIndex = 15,
  ReadIndexResp = 16,
  /** Local: the transport could not reach `from`. */
  Unreachable = 17,
  /** Local: leader checks it still hears from a quorum. */
  CheckQuorum = 18,
  /**
   * A member to an id it has removed from the group (a committed removal): "you are no longer a member".
   * The receiver stops for good: it never campaigns again, and its driver shuts its Raft member down.
   */
  Removed = 19,
  /**
   * A node that cannot campaign (a learner, or a new member whose log does not yet show it was added) and
   * has heard from no leader for an election timeout, to the voters it knows: "am I still a member?" A
   * member that removed it answers Removed; others ignore it. (A voter in that position campaigns, which
   * has the same effect.) Carries no term.
   */
  MemberCheck = 20,
}

/** A piece of a snapshot on the wire: no message carries more than `maxSnapshotChunk` bytes of it. */
export interface SnapshotChunk {
  metadata: SnapshotMetadata;
  /** Byte offset of `data` within the whole snapshot. */
  offset: number;
  /** Size of the whole snapshot data. */
  total: number;
  data: Uint8Array;
}

export interface Message {
  type: MessageType;
  from: NodeId;
  to: NodeId;
  term: number;
  /** Term of the entry at `index` (App), or of the candidate's last entry (Vote). */
  logTerm: number;
  index: number;
  entries: Entry[];
  commit: number;
  reject: boolean;
  /** On a rejected AppResp: the follower's guess of where the logs may match. */
  rejectHint: number;
  /** ReadIndex request context, or campaign type on TimeoutNow-triggered votes. */
  context: Uint8Array;
  snapshot?: SnapshotChunk;
}

export enum StateType {
  Follower = 0,
  Candidate = 1,
  Leader = 2,
  PreCandidate = 3,
}

export interface SoftState {
  lead: NodeId;
  state: StateType;
}

/** A linearizable read point: once `index` is applied, a read tagged `ctx` may be served locally. */
export interface ReadState {
  index: number;
  ctx: Uint8Array;
}

/**
 * What the core asks its driver to do, in order: persist `hardState`, `entries` and `snapshot` (synced
 * if `mustSync`), send `messages`, apply `snapshot` then `committedEntries` to the state machine, then
 * call `advance()`. A leader may send its App messages before its own entries are on disk (Raft thesis
 * 10.2.1); every other message must wait for the persist.
 */
export interface Ready {
  softState?: SoftState;
  hardState?: HardState;
  entries: Entry[];
  snapshot?: Snapshot;
  committedEntries: Entry[];
  messages: Message[];
  readStates: ReadState[];
  mustSync: boolean;
}

/** Injected randomness: returns an integer in [0, n). */
export interface Rand {
  intn(n: number): number;
}

export function emptyHardState(): HardState {
  return { term: 0, vote: NONE, commit: 0 };
}

export function emptyConfState(): ConfState {
  return { voters: [], learners: [], removed: [] };
}

export function hardStateEqual(a: HardState, b: HardState): boolean {
  return a.term === b.term && a.vote === b.vote && a.commit === b.commit;
}

export function emptySnapshot(): Snapshot {
  return { metadata: { index: 0, term: 0, confState: emptyConfState() }, data: new Uint8Array(0) };
}

export function isEmptySnapshot(s: Snapshot | undefined): boolean {
  return s === undefined || s.metadata.index === 0;
}

export function newMessage(partial: Partial<Message> & { type: MessageType }): Message {
  return {
    from: NONE,
    to: NONE,
    term: 0,
    logTerm: 0,
    index: 0,
    entries: [],
    commit: 0,
    reject: false,
    rejectHint: 0,
    context: EMPTY,
    ...partial,
  };
}

export const EMPTY: Uint8Array = new Uint8Array(0);

/** Approximate wire size of an entry, for batching under the message size limit. */
export function entrySize(e: Entry): number {
  return e.data.length + 24;
}

export function isLocalMessage(t: MessageType): boolean {
  return (
    t === MessageType.Hup || t === MessageType.Beat || t === MessageType.Unreachable || t === MessageType.CheckQuorum
  );
}

export function isResponseMessage(t: MessageType): boolean {
  return (
    t === MessageType.AppResp ||
    t === MessageType.VoteResp ||
    t === MessageType.HeartbeatResp ||
    t === MessageType.Unreachable ||
    t === MessageType.PreVoteResp ||
    t === MessageType.SnapResp ||
    t === MessageType.ReadIndexResp
  );
}

class RaftError extends Error {}
/** The requested index is older than the first one the log still holds (compacted into a snapshot). */
export class ErrCompacted extends RaftError {
  constructor() {
    super("requested index is unavailable due to compaction");
  }
}
/** The requested index is beyond the end of the log. */
export class ErrUnavailable extends RaftError {
  constructor() {
    super("requested entry at index is unavailable");
  }
}
export class ErrSnapOutOfDate extends RaftError {
  constructor() {
    super("requested index is older than the existing snapshot");
  }
}
/** A definite failure: the proposal was not applied and never will be (it is safe to propose it again). */
export class ErrProposalDropped extends RaftError {
  constructor(reason = "raft proposal dropped") {
    super(reason);
  }
}
/** A definite failure that retrying cannot cure: the proposal is larger than the core accepts. */
export class ErrProposalTooLarge extends ErrProposalDropped {}
/**
 * Nothing decided the proposal in time (this node may be cut off from the leader): it may still be
 * applied, or may never be. Not a failure the caller may retry blindly.
 */
export class ErrProposalOutcomeUnknown extends RaftError {}
export class ErrStepLocalMsg extends RaftError {
  constructor() {
    super("raft: cannot step raft local message");
  }
}
