// The leader's outstanding ReadIndex requests (§6.4 of the Raft thesis): each waits, keyed by its context,
// until a quorum's heartbeat acknowledgements confirm that the leader still leads, and they are answered
// in the order they came.

import type { Message, NodeId } from "./types.js";

function ctxKey(ctx: Uint8Array): string {
  return Buffer.from(ctx.buffer, ctx.byteOffset, ctx.byteLength).toString("latin1");
}

export interface ReadIndexStatus {
  index: number;
  req: Message;
  acks: Set<NodeId>;
}

/** Outstanding ReadIndex requests, answered in order once a quorum confirms the leader is still leader. */
export class ReadOnly {
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
