// A peer's outgoing queue in the Raft transport: encoded messages, first in first out, with byte
// accounting; when full it sheds the messages Raft can lose (App, Heartbeat, Snap) first.

import { MessageType } from "./types.js";

export interface Item {
  type: MessageType;
  buf: Buffer;
}

/** FIFO of encoded messages with O(1) push/shift and byte accounting. */
export class OutQueue {
  private items: Item[] = [];
  private head = 0;
  bytes = 0;

  get length(): number {
    return this.items.length - this.head;
  }

  push(it: Item): void {
    this.items.push(it);
    this.bytes += it.buf.length;
  }

  shift(): Item | undefined {
    if (this.head >= this.items.length) return undefined;
    const it = this.items[this.head]!;
    this.items[this.head] = undefined as unknown as Item;
    this.head++;
    this.bytes -= it.buf.length;
    if (this.head === this.items.length) {
      this.items = [];
      this.head = 0;
    } else if (this.head >= 1024 && this.head * 2 >= this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
    return it;
  }

  /** Drops the oldest message that is safe to lose first (App, Heartbeat, Snap), else the oldest. */
  dropOldest(): void {
    for (let i = this.head; i < this.items.length; i++) {
      const t = this.items[i]!.type;
      if (t === MessageType.App || t === MessageType.Heartbeat || t === MessageType.Snap) {
        if (i === this.head) {
          this.shift();
        } else {
          this.bytes -= this.items[i]!.buf.length;
          this.items.splice(i, 1);
        }
        return;
      }
    }
    this.shift();
  }

  clear(): number {
    const n = this.length;
    this.items = [];
    this.head = 0;
    this.bytes = 0;
    return n;
  }
}
