// Every manager (not only the leader) keeps its own secrets at rest sealed the way the cluster says: under
// the cluster's unlock key while autolock is on, in clear while it is off. The key lives in the replicated
// cluster record (managers only); when it is set, rotated or removed, each manager re-seals its raft-dek
// (src/daemon/state.ts sealSecrets). Re-seals are coalesced: only the newest wanted key is written.

import type { Logger } from "pino";
import { parseUnlockKey, sameKek } from "../ca/unlockkey.js";
import type { ClusterRecord } from "../store/store.js";

export interface AutolockDeps {
  /** The cluster record now (undefined before it exists). */
  cluster: () => ClusterRecord | undefined;
  /** Subscribe to cluster changes; returns the unsubscribe function. */
  onClusterChange: (f: () => void) => () => void;
  /** The KEK this manager's secrets are sealed under now: null in clear, undefined if not known. */
  currentKek: () => Buffer | null | undefined;
  /** Seal this manager's secrets under `kek`, or put them in clear (null). */
  seal: (kek: Buffer | null) => Promise<void>;
  logger: Logger;
}

/** The KEK the cluster wants its managers sealed under: its unlock key while autolock is on, else null. */
export function wantedKek(cluster: ClusterRecord | undefined): Buffer | null | undefined {
  if (cluster === undefined) return undefined;
  const key = cluster.secrets.unlockKey;
  if (!cluster.info.Spec.EncryptionConfig?.AutoLockManagers || key === undefined) return null;
  try {
    return parseUnlockKey(key);
  } catch {
    return null;
  }
}

export class AutolockKeeper {
  private unsubscribe: (() => void) | undefined;
  private running: Promise<void> | undefined;
  private again = false;
  private stopped = false;

  constructor(private readonly deps: AutolockDeps) {}

  start(): void {
    this.unsubscribe = this.deps.onClusterChange(() => this.check());
    this.check();
  }

  stop(): void {
    this.stopped = true;
    this.unsubscribe?.();
  }

  /** Resolves once every re-seal asked for so far is done (for tests and orderly shutdown). */
  async settled(): Promise<void> {
    while (this.running) await this.running;
  }

  private check(): void {
    if (this.stopped) return;
    if (this.running) {
      this.again = true;
      return;
    }
    this.running = this.reseal().finally(() => {
      this.running = undefined;
      if (this.again) {
        this.again = false;
        this.check();
      }
    });
  }

  private async reseal(): Promise<void> {
    const want = wantedKek(this.deps.cluster());
    const have = this.deps.currentKek();
    if (want === undefined || (have !== undefined && sameKek(want, have))) return;
    try {
      await this.deps.seal(want);
      this.deps.logger.info(
        {},
        want === null
          ? "autolock is off: this manager's raft key and TLS key are stored in clear"
          : "sealed this manager's raft key and TLS key under the swarm's unlock key",
      );
    } catch (e) {
      this.deps.logger.error({ err: e }, "could not re-seal this manager's keys; will retry on the next change");
    }
  }
}
