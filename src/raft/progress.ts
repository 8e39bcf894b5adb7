// The leader's view of each follower: how far its log matches, what to send next, and flow control.

import type { Snapshot } from "./types.js";

export enum ProgressState {
  /** One append in flight at a time, until we learn where the follower's log matches. */
  Probe = 0,
  /** Optimistic: a window of appends in flight (pipelining). */
  Replicate = 1,
  /** Sending a snapshot, chunk by chunk. */
  Snapshot = 2,
}

/** A ring of the last indexes of in-flight appends; full means the window is used up. */
class Inflights {
  private start = 0;
  count = 0;
  private readonly buffer: number[];

  constructor(readonly size: number) {
    this.buffer = new Array<number>(size).fill(0);
  }

  add(inflight: number): void {
    if (this.full()) throw new Error("cannot add into a full inflights");
    let next = this.start + this.count;
    if (next >= this.size) next -= this.size;
    this.buffer[next] = inflight;
    this.count++;
  }

  /** Free every in-flight append whose last index is <= to. */
  freeLE(to: number): void {
    if (this.count === 0 || to < this.buffer[this.start]!) return;
    let idx = this.start;
    let i = 0;
    for (; i < this.count; i++) {
      if (to < this.buffer[idx]!) break;
      idx++;
      if (idx >= this.size) idx -= this.size;
    }
    this.count -= i;
    this.start = idx;
    if (this.count === 0) this.start = 0;
  }

  freeFirstOne(): void {
    if (this.count === 0) return;
    this.freeLE(this.buffer[this.start]!);
  }

  full(): boolean {
    return this.count === this.size;
  }

  reset(): void {
    this.count = 0;
    this.start = 0;
  }
}

/**
 * The leader's view of one follower. Invariant: 0 <= match < next. `match` only grows while this leader
 * leads (an acknowledgement is never taken back); `next` is where the next append starts.
 */
export class Progress {
  match = 0;
  next: number;
  state = ProgressState.Probe;
  /** In Probe: an append is out and we wait for its answer (or a heartbeat response). */
  probeSent = false;
  /** Heard from since the last CheckQuorum. */
  recentActive = false;
  isLearner: boolean;
  inflights: Inflights;

  // Snapshot transfer (state Snapshot).
  pendingSnapshot = 0;
  snap: Snapshot | undefined;
  /** Bytes sent, and acknowledged by the follower. */
  snapSent = 0;
  snapAcked = 0;
  snapAllSent = false;
  /** Heartbeat responses seen without any acknowledgement progress: a lost chunk is resent after a few. */
  snapStall = 0;

  constructor(next: number, maxInflight: number, isLearner: boolean) {
    this.next = next;
    this.inflights = new Inflights(maxInflight);
    this.isLearner = isLearner;
  }

  private resetState(state: ProgressState): void {
    this.probeSent = false;
    this.pendingSnapshot = 0;
    this.snap = undefined;
    this.snapSent = 0;
    this.snapAcked = 0;
    this.snapAllSent = false;
    this.snapStall = 0;
    this.state = state;
    this.inflights.reset();
  }

  becomeProbe(): void {
    if (this.state === ProgressState.Snapshot) {
      const pending = this.pendingSnapshot;
      this.resetState(ProgressState.Probe);
      this.next = Math.max(this.match + 1, pending + 1);
    } else {
      this.resetState(ProgressState.Probe);
      this.next = this.match + 1;
    }
  }

  becomeReplicate(): void {
    this.resetState(ProgressState.Replicate);
    this.next = this.match + 1;
  }

  becomeSnapshot(snap: Snapshot): void {
    this.resetState(ProgressState.Snapshot);
    this.pendingSnapshot = snap.metadata.index;
    this.snap = snap;
  }

  /** The follower has everything up to n. Returns whether match moved. */
  maybeUpdate(n: number): boolean {
    let updated = false;
    if (this.match < n) {
      this.match = n;
      updated = true;
      this.probeSent = false;
    }
    this.next = Math.max(this.next, n + 1);
    return updated;
  }

  optimisticUpdate(n: number): void {
    this.next = n + 1;
  }

  /**
   * The follower rejected an append at `rejected`; `matchHint` is where it thinks the logs may match.
   * Returns false if the rejection is stale. Keeps the invariant 0 <= match < next: the follower has
   * acknowledged everything up to `match`, so nothing at or below it is ever sent again, whatever a late
   * or duplicated rejection says.
   */
  maybeDecrTo(rejected: number, matchHint: number): boolean {
    // A rejection of an index the follower has since acknowledged was sent before that acknowledgement.
    if (rejected <= this.match) return false;
    if (this.state === ProgressState.Replicate) {
      this.next = this.match + 1;
      return true;
    }
    if (this.next - 1 !== rejected) return false;
    this.next = Math.max(Math.min(rejected, matchHint + 1), this.match + 1);
    this.probeSent = false;
    return true;
  }

  isPaused(): boolean {
    switch (this.state) {
      case ProgressState.Probe:
        return this.probeSent;
      case ProgressState.Replicate:
        return this.inflights.full();
      default:
        return true;
    }
  }

  toString(): string {
    return `${ProgressState[this.state]} match=${this.match} next=${this.next}${this.isLearner ? " learner" : ""}${this.state === ProgressState.Snapshot ? ` pendingSnap=${this.pendingSnapshot}` : ""}`;
  }
}
