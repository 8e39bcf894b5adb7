// What the Raft driver (node.ts) is given: the state machine it applies to, the transport it sends with,
// its options; and the errors it stops with.

import type { Logger } from "pino";
import type { LevelStorage } from "./level-storage.js";
import type { ConfChange, ConfState, Message, NodeId, Rand, Ready, SoftState } from "./types.js";

export interface StateMachine {
  /**
   * Apply one committed entry's payload, in log order. What it returns reaches the proposer. `local`: what
   * this node's proposeWithResult was given with the payload, when this node proposed the entry and still
   * waits for it (the proposer's own parsing of its payload, say); the apply must not depend on having it.
   */
  apply(data: Uint8Array, index: number, local?: unknown): unknown;
  /** Serialise the whole state (as of the last applied index). */
  snapshot(): Uint8Array | Promise<Uint8Array>;
  /** Replace the whole state with a snapshot's (empty data: the empty state). */
  restore(data: Uint8Array, index: number): void | Promise<void>;
}

export interface Transport {
  /** Send without waiting. A message that cannot be delivered is reported with node.reportUnreachable. */
  send(messages: Message[]): void;
}

/** Where a test may make the loop die, as a crash would. */
export type CrashPoint = "beforePersist" | "afterPersist" | "afterSend" | "afterApply";

export interface RaftNodeOptions {
  id: NodeId;
  storage: LevelStorage;
  stateMachine: StateMachine;
  transport: Transport;
  /** Milliseconds per tick (default 100). */
  tickMs?: number;
  electionTick?: number;
  heartbeatTick?: number;
  /** Snapshot the state machine every N applied entries (default 10,000). */
  snapshotInterval?: number;
  /** Entries kept behind a snapshot for slow followers (default 500). */
  keepTail?: number;
  /** How long a proposal may wait to be applied (default 10 s). */
  proposalTimeoutMs?: number;
  maxSnapshotChunk?: number;
  rand?: Rand;
  logger?: Logger;
  onConfChange?: (cc: ConfChange, cs: ConfState, index: number) => void;
  onSoftState?: (ss: SoftState) => void;
  /**
   * This member learnt that it was removed from the group (it applied its removal, or a member told it):
   * the node has stopped for good. Called once.
   */
  onRemoved?: () => void;
  /** Tests only: throw at this point of the loop, like a crash. */
  crashAt?: (point: CrashPoint, rd: Ready) => boolean;
}

export class NodeStoppedError extends Error {
  constructor() {
    super("raft node is stopped");
  }
}

export class SimulatedCrash extends Error {}
