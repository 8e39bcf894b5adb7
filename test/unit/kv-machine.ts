// A small key-value state machine for driver tests, the demo and the benchmark.

import type { StateMachine } from "../../src/raft/node.js";

const enc = new TextEncoder();
const dec = new TextDecoder();

export class KVMachine implements StateMachine {
  data = new Map<string, string>();
  /** Every applied index, in order (to compare histories across restarts). */
  applied: number[] = [];

  apply(payload: Uint8Array, index: number): void {
    const { k, v } = JSON.parse(dec.decode(payload)) as { k: string; v: string };
    this.data.set(k, v);
    this.applied.push(index);
  }

  snapshot(): Uint8Array {
    return enc.encode(JSON.stringify([...this.data]));
  }

  restore(data: Uint8Array): void {
    this.data = data.length === 0 ? new Map() : new Map(JSON.parse(dec.decode(data)) as [string, string][]);
    this.applied = [];
  }

  static put(k: string, v: string): Uint8Array {
    return enc.encode(JSON.stringify({ k, v }));
  }
}
