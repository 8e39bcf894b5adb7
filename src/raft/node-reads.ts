// The driver's linearizable reads (RaftNode.readBarrier): each waits for the leader to grant it a read
// index (a ReadState whose ctx names the request it rode on), then for this node to apply up to that index. A request still
// waiting for its index is lost with the leader; an index already granted stays valid.

import { ErrProposalDropped, type NodeId, type ReadState } from "./types.js";

/**
 * A request unanswered this long counts as lost (the leader it went to is gone, say): the reads that queued
 * behind it go out in a new one. One that is merely slow costs an extra request, as every read did before.
 */
export const RESEND_AFTER_MS = 500;

interface PendingRead {
  /** The request this read rides on; "" while it waits for the next one. */
  ctx: string;
  /** The read index the leader granted; -1 until then. */
  index: number;
  resolve: () => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout;
}

/**
 * Reads share requests, as etcd's linearizable read loop does: at most one request for a read index is out
 * at a time, and every read that starts while it is out waits for the next one, sent when that one is
 * answered (or lost). A read never rides on a request sent before it started, so it still sees every write
 * that finished before it; a burst of reads (a join each asks one) costs the leader a heartbeat round per
 * request, not per read.
 */
export class NodeReads {
  private reads: PendingRead[] = [];
  /** Reads waiting for the next request. */
  private queued: PendingRead[] = [];
  /** The request out now, and when it counts as lost (RESEND_AFTER_MS: the reads behind it go in a new one). */
  private inFlight: { ctx: string; timer: NodeJS.Timeout } | null = null;
  private request: ((ctx: Uint8Array) => void) | null = null;
  private onWaiting: () => void = () => undefined;
  private timeoutMs = 5_000;
  private seq = 0;

  constructor(private readonly id: NodeId) {}

  /**
   * A new read: `request` asks the core for a read index under a ctx (if it throws, the reads of that
   * request fail with that error); it fails after `timeoutMs` without an index served. `onWaiting` is called
   * when a request was made.
   */
  add(timeoutMs: number, request: (ctx: Uint8Array) => void, onWaiting: () => void): Promise<void> {
    this.request = request;
    this.onWaiting = onWaiting;
    this.timeoutMs = timeoutMs;
    return new Promise<void>((resolve, reject) => {
      const r: PendingRead = { ctx: "", index: -1, resolve, reject, timer: undefined as unknown as NodeJS.Timeout };
      r.timer = setTimeout(() => {
        this.reads = this.reads.filter((x) => x !== r);
        this.queued = this.queued.filter((x) => x !== r);
        reject(new ErrProposalDropped("timed out waiting for a read index from the leader"));
      }, timeoutMs);
      this.queued.push(r);
      this.sendQueued();
    });
  }

  /** Sends one request for every queued read, unless a request is out already. */
  private sendQueued(): void {
    if (this.inFlight !== null || this.queued.length === 0 || this.request === null) return;
    const ctx = `${this.id}:${++this.seq}`;
    const batch = this.queued;
    this.queued = [];
    try {
      this.request(new TextEncoder().encode(ctx));
    } catch (e) {
      for (const r of batch) {
        clearTimeout(r.timer);
        r.reject(e instanceof Error ? e : new Error(String(e)));
      }
      return;
    }
    for (const r of batch) r.ctx = ctx;
    this.reads.push(...batch);
    const timer = setTimeout(
      () => {
        if (this.inFlight?.ctx !== ctx) return;
        this.inFlight = null;
        this.sendQueued();
      },
      Math.min(this.timeoutMs, RESEND_AFTER_MS),
    );
    timer.unref?.();
    this.inFlight = { ctx, timer };
    this.onWaiting();
  }

  /** The read indexes a Ready carried. */
  granted(states: ReadState[]): void {
    for (const rs of states) {
      const ctx = new TextDecoder().decode(rs.ctx);
      for (const r of this.reads) if (r.ctx === ctx) r.index = rs.index;
      if (this.inFlight?.ctx === ctx) {
        clearTimeout(this.inFlight.timer);
        this.inFlight = null;
      }
    }
    this.sendQueued();
  }

  /** Resolve every read whose index this node has applied. */
  serve(appliedIndex: number): void {
    if (this.reads.length === 0) return;
    const keep: PendingRead[] = [];
    for (const r of this.reads) {
      if (r.index >= 0 && r.index <= appliedIndex) {
        clearTimeout(r.timer);
        r.resolve();
      } else {
        keep.push(r);
      }
    }
    this.reads = keep;
  }

  failOnLeaderLoss(): void {
    // A read index granted by a leader stays valid; requests still waiting for one are lost with it.
    const keep: PendingRead[] = [];
    for (const r of [...this.reads, ...this.queued]) {
      if (r.index < 0) {
        clearTimeout(r.timer);
        r.reject(new ErrProposalDropped("leader lost while waiting for a read index"));
      } else {
        keep.push(r);
      }
    }
    this.reads = keep;
    this.queued = [];
    this.forgetInFlight();
  }

  failAll(err: Error): void {
    for (const r of [...this.reads, ...this.queued]) {
      clearTimeout(r.timer);
      r.reject(err);
    }
    this.reads = [];
    this.queued = [];
    this.forgetInFlight();
  }

  private forgetInFlight(): void {
    if (this.inFlight) clearTimeout(this.inFlight.timer);
    this.inFlight = null;
  }
}
