// The driver: runs the Raft core against real storage, a transport and a state machine.
//
// One loop, strictly in order for each Ready: persist (synced) → send → apply → advance. The leader sends
// its appends before its own write finishes (Raft thesis §10.2.1). The core counts the leader's own new
// entries towards a commit as soon as they are appended, before they are on disk; that is safe only
// because this loop handles one Ready at a time: a commit index that depends on them is neither sent nor
// applied before the next Ready, which starts after this one's write has finished. Keep it that way. Everything that must survive a crash is
// written through LevelStorage with sync on. Messages, ticks and proposals step the core between the
// loop's awaits; their effects come out in the next Ready.

import { randomInt } from "node:crypto";
import { setImmediate as turn } from "node:timers/promises";
import type { Logger } from "pino";
import { encodeFrame, frameApplies, parseFrame, stampTerm } from "./frame.js";
import type { LevelStorage } from "./level-storage.js";
import {
  type CrashPoint,
  NodeStoppedError,
  type RaftNodeOptions,
  SimulatedCrash,
  type StateMachine,
} from "./node-options.js";
import { NodeReads } from "./node-reads.js";
import { NodeSnapshots } from "./node-snapshots.js";
import { Raft } from "./raft.js";
import { CryptoRand } from "./rand.js";
import { RawNode, type Status } from "./rawnode.js";
import {
  type ConfChange,
  type ConfState,
  type Entry,
  EntryType,
  ErrProposalDropped,
  ErrProposalOutcomeUnknown,
  ErrProposalTooLarge,
  type Message,
  MessageType,
  NONE,
  type NodeId,
  newMessage,
  type Ready,
  StateType,
} from "./types.js";

export {
  type CrashPoint,
  NodeStoppedError,
  type RaftNodeOptions,
  SimulatedCrash,
  type StateMachine,
  type Transport,
} from "./node-options.js";

// Entries carry a frame (./frame.ts) before the payload: the proposer's run id, a sequence number and the
// term it proposed in. The run id is random for every RaftNode instance: after a restart, entries of the
// previous run that are re-applied (or committed late) must not resolve this run's proposals.

/** Bytes of proposals stepped as one message (well under the transport's message limit). */
const MAX_BATCH_BYTES = 1 << 20;
/** A Ready that takes this long to persist, send and apply is logged (with where the time went). */
const SLOW_READY_MS = 500;
/** Applying committed entries lets the event loop turn at least this often. */
const APPLY_SLICE_MS = 50;

interface Pending {
  resolve: (r: { index: number; result: unknown }) => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout;
  /** The term stamped in its frame: it can be applied only at this term. */
  term: number;
  local: unknown;
}

interface Queued {
  framed: Uint8Array;
  seq: number;
  timeoutMs: number;
  local: unknown;
  resolve: Pending["resolve"];
  reject: Pending["reject"];
}

export class RaftNode {
  readonly id: NodeId;
  readonly rawNode: RawNode;
  private readonly opts: RaftNodeOptions;
  private readonly storage: LevelStorage;
  private readonly sm: StateMachine;
  private readonly log: Logger | undefined;
  private ticker: NodeJS.Timeout | undefined;
  private running = false;
  private scheduled = false;
  private stopped = false;
  /** Stopped because this member was removed from the group. */
  private removedSelf = false;
  private seq = 0;
  private readonly runId = randomInt(1, 2 ** 48 - 1);
  private pending = new Map<number, Pending>();
  private queued: Queued[] = [];
  /** The term of the last entry applied here (pending proposals of earlier terms can no longer apply). */
  private appliedTerm = 0;
  private readonly reads: NodeReads;
  appliedIndex: number;
  /** The loop failed (storage error, or a simulated crash): the node is dead. */
  fatal: Error | undefined;
  private idleWaiters: (() => void)[] = [];
  private readonly snapshots: NodeSnapshots;

  private constructor(opts: RaftNodeOptions, applied: number) {
    this.opts = opts;
    this.id = opts.id;
    this.storage = opts.storage;
    this.sm = opts.stateMachine;
    this.log = opts.logger;
    this.reads = new NodeReads(opts.id);
    this.appliedIndex = applied;
    this.snapshots = new NodeSnapshots(applied, {
      storage: opts.storage,
      stateMachine: opts.stateMachine,
      interval: opts.snapshotInterval ?? 10_000,
      keepTail: opts.keepTail ?? 500,
      log: opts.logger,
      fail: (err) => this.fail(err),
    });
    this.rawNode = new RawNode({
      id: opts.id,
      storage: opts.storage.mem,
      rand: opts.rand ?? new CryptoRand(),
      applied,
      ...(opts.electionTick !== undefined ? { electionTick: opts.electionTick } : {}),
      ...(opts.heartbeatTick !== undefined ? { heartbeatTick: opts.heartbeatTick } : {}),
      ...(opts.maxSnapshotChunk !== undefined ? { maxSnapshotChunk: opts.maxSnapshotChunk } : {}),
      ...(opts.logger ? { logger: opts.logger } : {}),
    });
  }

  /** Restore the state machine from the stored snapshot and start ticking. Committed entries after the
   * snapshot are re-applied by the loop. */
  static async start(opts: RaftNodeOptions): Promise<RaftNode> {
    const snap = opts.storage.mem.snapshot();
    await opts.stateMachine.restore(snap.data, snap.metadata.index);
    const node = new RaftNode(opts, snap.metadata.index);
    const tickMs = opts.tickMs ?? 100;
    node.ticker = setInterval(() => node.tick(), tickMs);
    node.ticker.unref?.();
    node.kick();
    return node;
  }

  // ------------------------------------------------------------------ inputs

  tick(): void {
    if (this.stopped) return;
    this.rawNode.tick();
    this.kick();
  }

  /** Deliver a message from a peer. */
  step(m: Message): void {
    if (this.stopped) return;
    this.rawNode.step(m);
    this.kick();
  }

  campaign(): void {
    if (this.stopped) return;
    this.rawNode.campaign();
    this.kick();
  }

  /** Whether `id` was removed from the group (as far as this node's log goes). */
  isRemovedId(id: NodeId): boolean {
    return this.rawNode.raft.removed.has(id);
  }

  /** A member refused our messages because it removed us from the group: leave it, and stop. */
  toldRemoved(by: NodeId): void {
    this.step(newMessage({ type: MessageType.Removed, from: by, to: this.id }));
  }

  reportUnreachable(id: NodeId): void {
    if (this.stopped) return;
    this.rawNode.reportUnreachable(id);
  }

  transferLeadership(to: NodeId): void {
    this.rawNode.transferLeadership(to);
    this.kick();
  }

  /** Propose data; resolves with its index once it is committed and applied here. */
  async propose(data: Uint8Array): Promise<number> {
    return (await this.proposeWithResult(data)).index;
  }

  /**
   * Propose data; resolves once it is applied here, with what the state machine's apply returned. Rejects
   * with ErrProposalDropped when it is certain the proposal was not applied and never will be (no leader, or
   * a newer leader's entries superseded it: proposing again is safe), ErrProposalTooLarge when it is too
   * large, ErrProposalOutcomeUnknown when nothing decided it within `timeoutMs` (default: the node's
   * proposalTimeoutMs, 10 s). `local` goes to this node's apply of the entry (StateMachine.apply).
   */
  proposeWithResult(
    data: Uint8Array,
    timeoutMs?: number,
    local?: unknown,
  ): Promise<{ index: number; result: unknown }> {
    if (this.stopped) return Promise.reject(this.stoppedError());
    const seq = ++this.seq;
    const framed = encodeFrame(this.runId, seq, data);
    if (framed.length > this.rawNode.raft.maxProposalSize) {
      return Promise.reject(
        new ErrProposalTooLarge(
          `proposal of ${framed.length} bytes exceeds the maximum of ${this.rawNode.raft.maxProposalSize} bytes`,
        ),
      );
    }
    const t = timeoutMs ?? this.opts.proposalTimeoutMs ?? 10_000;
    return new Promise<{ index: number; result: unknown }>((resolve, reject) => {
      this.queued.push({ framed, seq, timeoutMs: t, resolve, reject, local });
      this.kick();
    });
  }

  /**
   * Step the proposals queued since the last turn of the loop as few messages as possible (each under
   * MAX_BATCH_BYTES): while one Ready is being written, the next one's proposals gather here. Each is
   * stamped with the term the core is in now: the leader of that term is the only one that can append it.
   */
  private flushProposals(): void {
    while (this.queued.length > 0) {
      let bytes = 0;
      let n = 0;
      while (n < this.queued.length && (n === 0 || bytes + this.queued[n]!.framed.length <= MAX_BATCH_BYTES)) {
        bytes += this.queued[n]!.framed.length;
        n++;
      }
      const batch = this.queued.splice(0, n);
      const term = this.rawNode.raft.term;
      for (const b of batch) stampTerm(b.framed, term);
      try {
        this.rawNode.proposeBatch(batch.map((b) => b.framed));
      } catch (e) {
        // Dropped by the core (no leader, a leadership transfer): it was never appended anywhere.
        for (const b of batch) b.reject(e instanceof Error ? e : new Error(String(e)));
        continue;
      }
      for (const b of batch) {
        const timer = setTimeout(() => {
          this.pending.delete(b.seq);
          b.reject(
            new ErrProposalOutcomeUnknown(
              `nothing decided the proposal within ${b.timeoutMs} ms (this node may be cut off from the leader): it may still be applied`,
            ),
          );
        }, b.timeoutMs);
        this.pending.set(b.seq, { resolve: b.resolve, reject: b.reject, timer, term, local: b.local });
      }
    }
  }

  /** A pending proposal is decided: it failed for certain (not applied, never will be) or its fate is unknown. */
  private settleFailed(seq: number, err: Error): void {
    const p = this.pending.get(seq);
    if (!p) return;
    clearTimeout(p.timer);
    this.pending.delete(seq);
    p.reject(err);
  }

  /**
   * This node applied an entry of `term`: every pending proposal stamped with an earlier term can never be
   * applied any more (see ./frame.ts). Every new leader commits an entry of its term at once, so a proposal
   * lost with its leader is answered as soon as the next leader's first entry is applied here.
   */
  private supersede(term: number): void {
    if (term <= this.appliedTerm) return;
    this.appliedTerm = term;
    for (const [seq, p] of this.pending) {
      if (p.term < term) {
        this.settleFailed(
          seq,
          new ErrProposalDropped(
            `the proposal was not applied: the leader of term ${p.term} lost its leadership before committing it`,
          ),
        );
      }
    }
  }

  /** Propose a membership change; resolves once it is applied here. */
  proposeConfChange(cc: ConfChange): Promise<ConfState> {
    if (this.stopped) return Promise.reject(this.stoppedError());
    return new Promise<ConfState>((resolve, reject) => {
      try {
        this.rawNode.proposeConfChange(cc);
      } catch (e) {
        reject(e);
        return;
      }
      const timer = setTimeout(() => {
        this.confWaiters = this.confWaiters.filter((w) => w.resolve !== resolve);
        reject(new ErrProposalDropped("timed out waiting for the membership change to commit"));
      }, this.opts.proposalTimeoutMs ?? 10_000);
      this.confWaiters.push({ cc, resolve, reject, timer });
      this.kick();
    });
  }

  private confWaiters: {
    cc: ConfChange;
    resolve: (cs: ConfState) => void;
    reject: (e: Error) => void;
    timer: NodeJS.Timeout;
  }[] = [];

  /** A linearizable read barrier: resolves once this node has applied everything committed before the call. */
  readBarrier(timeoutMs = 5_000): Promise<void> {
    if (this.stopped) return Promise.reject(this.stoppedError());
    return this.reads.add(
      timeoutMs,
      (ctx) => this.rawNode.readIndex(ctx),
      () => this.kick(),
    );
  }

  status(): Status {
    return this.rawNode.status();
  }

  /** Whether this node leads now (a stopped node leads nothing, whatever its last state was). */
  get isLeader(): boolean {
    return !this.stopped && this.rawNode.raft.state === StateType.Leader;
  }

  get leader(): NodeId {
    return this.rawNode.raft.lead;
  }

  /** Resolves when the loop has nothing left to do and no snapshot is being taken (tests). */
  async idle(): Promise<void> {
    for (;;) {
      if (this.running || this.scheduled) await new Promise<void>((r) => this.idleWaiters.push(r));
      else if (this.snapshots.busy) await this.snapshots.busy;
      else return;
    }
  }

  /** Stop ticking and processing; pending proposals fail. Does not close the storage. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    if (this.ticker) clearInterval(this.ticker);
    await this.idle();
    this.failAll(new NodeStoppedError());
  }

  // ------------------------------------------------------------------ the loop

  private kick(): void {
    if (this.running || this.scheduled || this.fatal) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      void this.loop();
    });
  }

  private async loop(): Promise<void> {
    if (this.running) return;
    this.running = true;
    try {
      for (;;) {
        if (this.fatal) break;
        this.flushProposals();
        if (!this.rawNode.hasReady()) break;
        await this.handle(this.rawNode.ready());
      }
      // Only once everything is handled: a removed leader's last Ready hands leadership over.
      if (!this.fatal && this.rawNode.raft.isRemoved()) this.stopRemoved();
    } catch (e) {
      this.fail(e);
    } finally {
      this.running = false;
      if (!this.scheduled) {
        const w = this.idleWaiters;
        this.idleWaiters = [];
        for (const r of w) r();
      }
    }
  }

  /** The loop (or a snapshot beside it) failed: a storage error, or a simulated crash. The node is dead. */
  private fail(e: unknown): void {
    if (this.fatal) return;
    this.fatal = e instanceof Error ? e : new Error(String(e));
    this.stopped = true;
    if (this.ticker) clearInterval(this.ticker);
    if (!(e instanceof SimulatedCrash)) this.log?.error({ err: this.fatal }, "raft loop failed; node stopped");
    this.failAll(this.fatal);
  }

  /** Why new work is refused once the node stopped. */
  private stoppedError(): Error {
    return this.removedSelf
      ? new ErrProposalDropped("this node was removed from the raft group")
      : new NodeStoppedError();
  }

  /** Removed from the group: stop ticking and taking work, and tell the owner (once). */
  private stopRemoved(): void {
    if (this.stopped) return;
    this.stopped = true;
    this.removedSelf = true;
    if (this.ticker) clearInterval(this.ticker);
    this.log?.warn({}, "this member was removed from the raft group; its raft member stops");
    this.failAll(new ErrProposalDropped("this node was removed from the raft group"));
    this.opts.onRemoved?.();
  }

  private crash(point: CrashPoint, rd: Ready): void {
    if (this.opts.crashAt?.(point, rd)) throw new SimulatedCrash(`simulated crash ${point}`);
  }

  private async handle(rd: Ready): Promise<void> {
    const started = performance.now();
    if (rd.softState) {
      this.opts.onSoftState?.(rd.softState);
      if (rd.softState.state !== StateType.Leader && rd.softState.lead === NONE) this.reads.failOnLeaderLoss();
    }
    const isLeader = this.rawNode.raft.state === StateType.Leader;
    const early: Message[] = [];
    const late: Message[] = [];
    for (const m of rd.messages) {
      if (isLeader && (m.type === MessageType.App || m.type === MessageType.Snap)) early.push(m);
      else late.push(m);
    }
    if (early.length > 0) this.opts.transport.send(early);
    this.crash("beforePersist", rd);
    if (rd.hardState || rd.entries.length > 0 || rd.snapshot) {
      await this.storage.save(
        {
          ...(rd.hardState ? { hardState: rd.hardState } : {}),
          entries: rd.entries,
          ...(rd.snapshot ? { snapshot: rd.snapshot } : {}),
        },
        rd.mustSync,
      );
    }
    this.crash("afterPersist", rd);
    const persisted = performance.now();
    if (late.length > 0) this.opts.transport.send(late);
    this.crash("afterSend", rd);
    // send() only queues: the transport writes to its sockets when the event loop turns. Let it, before
    // applying: a follower's acknowledgement of what it just persisted must not wait behind the apply (a
    // manager that joined through a snapshot applies the entries after it in the Ready that persists them).
    if (late.length > 0 && (rd.snapshot || rd.committedEntries.length > 0)) await turn();
    if (rd.snapshot) {
      const t0 = performance.now();
      await this.sm.restore(rd.snapshot.data, rd.snapshot.metadata.index);
      this.appliedIndex = rd.snapshot.metadata.index;
      this.snapshots.installed(rd.snapshot.metadata.index);
      this.restoredPastPending(rd.snapshot.metadata.term);
      this.log?.info(
        {
          index: rd.snapshot.metadata.index,
          bytes: rd.snapshot.data.length,
          restoreMs: Math.round(performance.now() - t0),
        },
        "snapshot applied",
      );
    }
    let turned = performance.now();
    for (const e of rd.committedEntries) {
      const p = this.applyEntry(e);
      if (p) await p;
      // A long apply lets the event loop turn now and then: what was sent goes out, peers' pings are answered.
      if (performance.now() - turned >= APPLY_SLICE_MS) {
        await turn();
        turned = performance.now();
      }
    }
    this.crash("afterApply", rd);
    const done = performance.now();
    if (done - started >= SLOW_READY_MS) {
      this.log?.info(
        {
          persistMs: Math.round(persisted - started),
          applyMs: Math.round(done - persisted),
          entries: rd.entries.length,
          committed: rd.committedEntries.length,
          messages: rd.messages.length,
          snapshot: rd.snapshot?.metadata.index,
        },
        "slow raft ready",
      );
    }
    this.rawNode.advance(rd);
    this.reads.granted(rd.readStates);
    this.reads.serve(this.appliedIndex);
    await this.snapshots.maybe(this.appliedIndex, () => this.rawNode.raft.confState());
  }

  private applyEntry(e: Entry): Promise<void> | undefined {
    if (e.type === EntryType.ConfChange) {
      let cc: ConfChange;
      try {
        cc = Raft.decodeConfChange(e);
      } catch (err) {
        // The leader checks conf changes before appending them; one that still cannot be read is skipped,
        // the same way on every node, rather than stopping the loop.
        this.log?.error({ index: e.index, err }, "skipped a committed conf change entry that cannot be read");
        return this.applied(e);
      }
      const cs = this.rawNode.applyConfChange(cc);
      this.opts.onConfChange?.(cc, cs, e.index);
      const w = this.confWaiters.find((x) => x.cc.type === cc.type && x.cc.nodeId === cc.nodeId);
      if (w) {
        clearTimeout(w.timer);
        this.confWaiters = this.confWaiters.filter((x) => x !== w);
        w.resolve(cs);
      }
      return this.applied(e);
    }
    const f = parseFrame(e);
    if (!f) return this.applied(e);
    const ours = f.proposer === this.runId;
    if (!frameApplies(f, e)) {
      // Appended by a leader of another term than the proposer's: skipped on every node alike.
      if (ours) {
        this.settleFailed(
          f.seq,
          new ErrProposalDropped(`the proposal was not applied: it reached the log in term ${e.term}, not ${f.term}`),
        );
      }
      return this.applied(e);
    }
    const done = (result: unknown): void => {
      if (ours) {
        const p = this.pending.get(f.seq);
        if (p) {
          clearTimeout(p.timer);
          this.pending.delete(f.seq);
          p.resolve({ index: e.index, result });
        }
      }
      this.applied(e);
    };
    const result = this.sm.apply(f.payload, e.index, ours ? this.pending.get(f.seq)?.local : undefined);
    // Only an asynchronous state machine costs a turn of the event loop per entry.
    if (result instanceof Promise) return result.then(done);
    done(result);
    return undefined;
  }

  private applied(e: Entry): undefined {
    this.appliedIndex = e.index;
    this.supersede(e.term);
    return undefined;
  }

  /**
   * A snapshot replaced the state machine: a pending proposal of a term up to the snapshot's may be inside
   * it or may have been lost, and this node cannot tell which.
   */
  private restoredPastPending(snapTerm: number): void {
    for (const [seq, p] of this.pending) {
      if (p.term <= snapTerm) {
        this.settleFailed(
          seq,
          new ErrProposalOutcomeUnknown(
            "this node caught up from a snapshot that may or may not include the proposal: it may have been applied",
          ),
        );
      }
    }
    this.appliedTerm = Math.max(this.appliedTerm, snapTerm);
  }

  /** The node stops: proposals not yet stepped fail with `err`; those already out may still be applied. */
  private failAll(err: Error): void {
    for (const q of this.queued.splice(0)) q.reject(err);
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(
        new ErrProposalOutcomeUnknown(`${err.message} before the proposal was decided: it may still be applied`),
      );
    }
    this.pending.clear();
    this.reads.failAll(err);
    for (const w of this.confWaiters) {
      clearTimeout(w.timer);
      w.reject(err);
    }
    this.confWaiters = [];
  }
}
