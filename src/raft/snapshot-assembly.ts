// A snapshot received from the leader in chunks: each chunk must follow the one before it (same sender,
// term, snapshot and total, the next offset); a chunk out of place is refused with how much is held, so
// that the leader resends from there. Pure: the core sends the answers. The chunks are copied into one
// buffer of the snapshot's size, made at the first chunk: a 100 MB snapshot is held once, not twice (the
// chunks, then their concatenation).

import type { Message, NodeId, Snapshot } from "./types.js";

/** A snapshot being received chunk by chunk from the leader. */
export interface SnapshotAssembly {
  from: NodeId;
  term: number;
  index: number;
  snapTerm: number;
  total: number;
  received: number;
  /** `total` bytes, filled up to `received`. */
  data: Uint8Array;
}

export type ChunkOutcome =
  /** Out of place: refuse, saying how many bytes of this snapshot are held. */
  | { kind: "reject"; have: number; asm: SnapshotAssembly | undefined }
  /** Taken: ask for what follows `received`. */
  | { kind: "more"; received: number; asm: SnapshotAssembly }
  /** The last chunk: the whole snapshot. */
  | { kind: "done"; snapshot: Snapshot };

/** Adds the chunk `m` carries (m.snapshot is set) to `asm` (a chunk at offset 0 starts a new assembly). */
export function addSnapshotChunk(asm: SnapshotAssembly | undefined, m: Message): ChunkOutcome {
  const c = m.snapshot!;
  const { index, term } = c.metadata;
  if (c.offset === 0) {
    const data = allocate(c.total);
    if (data === undefined) return { kind: "reject", have: 0, asm: undefined };
    asm = { from: m.from, term: m.term, index, snapTerm: term, total: c.total, received: 0, data };
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
    return { kind: "reject", have, asm };
  }
  asm.data.set(c.data, asm.received);
  asm.received += c.data.length;
  if (asm.received < asm.total) return { kind: "more", received: asm.received, asm };
  return { kind: "done", snapshot: { metadata: c.metadata, data: asm.data } };
}

/** A buffer for a whole snapshot, or undefined if this process cannot hold one that large. */
function allocate(total: number): Uint8Array | undefined {
  try {
    return new Uint8Array(total);
  } catch {
    return undefined;
  }
}
