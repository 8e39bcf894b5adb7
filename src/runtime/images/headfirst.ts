// The bodies of a pull's layers, read lowest layer first. Every layer is applied as its bytes come, but
// they are moved into their snapshots and committed bottom up, each once the one below it is (store.ts
// unpack): the sooner the lowest one still coming is in, the more of that chain runs beside the rest of
// the download. A layer containerd applies (Diff.Apply, ~4 ms a MB, once it is in) gains the same way.
// A body is read on only while no body below it has bytes waiting to be read.
// From a registry whose bytes come faster than shoald takes them (a LAN: shoald's one thread is the
// bound), the lowest body always has bytes waiting: the others wait (their sockets fill and TCP holds
// the registry back) and layers come in one after the other at the speed they would all have come
// together. From a registry slower than that (far away, each connection held to its own pace), the lowest
// body is mostly empty and the others are read beside it: the downloads stay side by side.

import { setImmediate as nextTurn } from "node:timers/promises";

/** What HeadFirst reads: a body whose bytes waiting to be read it can see (an IncomingMessage). */
export type Body = AsyncIterable<Buffer> & { readonly readableLength: number };

export class HeadFirst {
  /** The bodies being read, by layer. */
  private readonly bodies = new Map<number, Body>();
  private waiting: (() => void)[] = [];

  private wake(): void {
    for (const w of this.waiting.splice(0)) w();
  }

  private hasBelow(i: number): boolean {
    for (const j of this.bodies.keys()) if (j < i) return true;
    return false;
  }

  /** Whether a body below layer `i` has bytes waiting. */
  private below(i: number): boolean {
    for (const [j, b] of this.bodies) if (j < i && b.readableLength > 0) return true;
    return false;
  }

  /** The chunks of layer `i`'s body, each one given once no body below has bytes waiting. */
  async *read(i: number, body: Body): AsyncGenerator<Buffer> {
    this.bodies.set(i, body);
    try {
      for await (const c of body) {
        // Taking a chunk: those above look again.
        this.wake();
        // What the bodies below have waiting is known once the network's bytes of this turn of the event
        // loop are in (its poll phase): looked at in the turn's next phase, and again after each chunk a
        // body below takes, until none has any. The lowest body is never held.
        if (this.hasBelow(i)) {
          await nextTurn();
          while (this.below(i)) {
            await new Promise<void>((resolve) => this.waiting.push(resolve));
            await nextTurn();
          }
        }
        yield c;
      }
    } finally {
      this.bodies.delete(i);
      this.wake();
    }
  }
}
