// The driver's linearizable reads (RaftNode.readBarrier): each waits for the leader to grant it a read
// index (a ReadState whose ctx names it), then for this node to apply up to that index. A request still
// waiting for its index is lost with the leader; an index already granted stays valid.

import { ErrProposalDropped, type NodeId, type ReadState } from "./types.js";

interface PendingRead {
  ctx: string;
  /** The read index the leader granted; -1 until then. */
  index: number;
  resolve: () => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout;
}

export class NodeReads {
  private reads: PendingRead[] = [];
  private seq = 0;

  constructor(private readonly id: NodeId) {}

  /**
   * A new read: `request` asks the core for a read index under the read's ctx (if it throws, the read fails
   * with that error and `onWaiting` is not called); it fails after `timeoutMs` without an index served.
   */
  add(timeoutMs: number, request: (ctx: Uint8Array) => void, onWaiting: () => void): Promise<void> {
    const ctx = `${this.id}:${++this.seq}`;
    return new Promise<void>((resolve, reject) => {
      try {
        request(new TextEncoder().encode(ctx));
      } catch (e) {
        reject(e);
        return;
      }
      const timer = setTimeout(() => {
        this.reads = this.reads.filter((r) => r.ctx !== ctx);
        reject(new ErrProposalDropped("timed out waiting for a read index from the leader"));
      }, timeoutMs);
      this.reads.push({ ctx, index: -1, resolve, reject, timer });
      onWaiting();
    });
  }

  /** The read indexes a Ready carried. */
  granted(states: ReadState[]): void {
    for (const rs of states) {
      const ctx = new TextDecoder().decode(rs.ctx);
      const r = this.reads.find((x) => x.ctx === ctx);
      if (r) r.index = rs.index;
    }
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
    for (const r of this.reads) {
      if (r.index < 0) {
        clearTimeout(r.timer);
        r.reject(new ErrProposalDropped("leader lost while waiting for a read index"));
      } else {
        keep.push(r);
      }
    }
    this.reads = keep;
  }

  failAll(err: Error): void {
    for (const r of this.reads) {
      clearTimeout(r.timer);
      r.reject(err);
    }
    this.reads = [];
  }
}
