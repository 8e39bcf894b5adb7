// The driver's own snapshots (RaftNode): every snapshotInterval applied entries, the state machine is
// snapshotted and stored, which compacts the log.

import type { Logger } from "pino";
import type { LevelStorage } from "./level-storage.js";
import type { StateMachine } from "./node-options.js";
import { type ConfState, ErrSnapOutOfDate } from "./types.js";

export interface NodeSnapshotsOptions {
  storage: LevelStorage;
  stateMachine: StateMachine;
  /** Applied entries between two snapshots. */
  interval: number;
  /** Entries kept in the log behind a snapshot. */
  keepTail: number;
  log: Logger | undefined;
  /** A snapshot that could not be stored: the node is dead. */
  fail: (err: unknown) => void;
}

export class NodeSnapshots {
  /** The index of the newest snapshot taken here or installed from the leader. */
  private index: number;
  /** A snapshot being put together and stored beside the loop. */
  private inProgress: Promise<void> | undefined;

  constructor(
    applied: number,
    private readonly o: NodeSnapshotsOptions,
  ) {
    this.index = applied;
  }

  /** A snapshot from the leader replaced the state machine. */
  installed(index: number): void {
    this.index = Math.max(this.index, index);
  }

  /** The snapshot being stored beside the loop, if any. */
  get busy(): Promise<void> | undefined {
    return this.inProgress;
  }

  /**
   * Takes a snapshot when `appliedIndex` is snapshotInterval past the last one. A state machine whose
   * snapshot() returns a promise captures its state in the call and puts the bytes together afterwards: then
   * the bytes are made and stored beside the loop, which goes on persisting, sending (heartbeats above all:
   * a 100 MB state takes seconds to write out) and applying meanwhile. One snapshot at a time; storage
   * orders its write after the saves before it.
   */
  async maybe(appliedIndex: number, confState: () => ConfState): Promise<void> {
    if (this.inProgress || appliedIndex - this.index < this.o.interval) return;
    const index = appliedIndex;
    const cs = confState();
    const data = this.o.stateMachine.snapshot();
    if (!(data instanceof Promise)) {
      await this.store(index, cs, data);
      return;
    }
    this.inProgress = data
      .then((bytes) => this.store(index, cs, bytes))
      .catch((err: unknown) => {
        if (err instanceof ErrSnapOutOfDate) {
          // A newer snapshot from the leader was installed meanwhile.
          this.o.log?.info({ index }, "snapshot skipped: a newer one was installed meanwhile");
          return;
        }
        this.o.fail(err);
      })
      .finally(() => {
        this.inProgress = undefined;
      });
  }

  private async store(index: number, confState: ConfState, data: Uint8Array): Promise<void> {
    await this.o.storage.createSnapshot(index, confState, data, this.o.keepTail);
    this.index = Math.max(this.index, index);
    this.o.log?.info({ index, bytes: data.length }, "snapshot taken");
  }
}
