// The cluster's secrets in the replicated store: the unlock key follows the autolock setting of the spec
// (kept, replaced, dropped) the same way on every manager.

import { describe, expect, it } from "vitest";
import { DEFAULT_SWARM_SPEC, type SwarmSpec } from "../../src/api/objects.js";
import { type Command, encodeCommand, type Outcome, Store } from "../../src/store/store.js";

const at = new Date("2026-11-22T00:00:00Z");
const K1 = `SWMKEY-1-${"A".repeat(42)}E`;
const K2 = `SWMKEY-1-${"B".repeat(42)}E`;

function create(): Command {
  return {
    op: "cluster.create",
    info: {
      ID: "c1uster000000000000000000",
      Version: { Index: 0 },
      CreatedAt: "2026-11-22T00:00:00.000Z",
      UpdatedAt: "2026-11-22T00:00:00.000Z",
      Spec: structuredClone(DEFAULT_SWARM_SPEC),
      TLSInfo: { TrustRoot: "", CertIssuerSubject: "", CertIssuerPublicKey: "" },
      RootRotationInProgress: false,
      DefaultAddrPool: ["10.0.0.0/8"],
      SubnetSize: 24,
      DataPathPort: 4789,
    },
    secrets: { rootCACertPem: "", rootCAKeyPem: "", workerToken: "w", managerToken: "m" },
  };
}

function spec(autolock: boolean): SwarmSpec {
  return { ...structuredClone(DEFAULT_SWARM_SPEC), EncryptionConfig: { AutoLockManagers: autolock } };
}

class Log {
  readonly store = new Store();
  private index = 0;
  apply(c: Command): Outcome {
    return this.store.apply(encodeCommand(c, at), ++this.index);
  }
  get version(): number {
    return this.store.cluster()!.info.Version.Index;
  }
  update(autolock: boolean, unlockKey?: string): Outcome {
    return this.apply({
      op: "cluster.update",
      version: this.version,
      spec: spec(autolock),
      ...(unlockKey ? { unlockKey } : {}),
    });
  }
}

describe("store: the unlock key", () => {
  it("is set with autolock, kept by later updates, replaced by a rotation, dropped with autolock off", () => {
    const log = new Log();
    expect(log.apply(create()).ok).toBe(true);
    expect(log.store.cluster()!.secrets.unlockKey).toBeUndefined();
    expect(log.update(true, K1).ok).toBe(true);
    expect(log.store.cluster()!.secrets.unlockKey).toBe(K1);
    expect(log.update(true).ok).toBe(true);
    expect(log.store.cluster()!.secrets.unlockKey).toBe(K1);
    expect(log.update(true, K2).ok).toBe(true);
    expect(log.store.cluster()!.secrets.unlockKey).toBe(K2);
    expect(log.update(false).ok).toBe(true);
    expect(log.store.cluster()!.secrets.unlockKey).toBeUndefined();
    // A key proposed with autolock off is not kept.
    expect(log.update(false, K1).ok).toBe(true);
    expect(log.store.cluster()!.secrets.unlockKey).toBeUndefined();
    // The key is never part of what the Engine API shows (the cluster's info).
    log.update(true, K1);
    expect(JSON.stringify(log.store.cluster()!.info)).not.toContain("SWMKEY");
  });

  it("a stale update changes nothing, the key included", () => {
    const log = new Log();
    log.apply(create());
    log.update(true, K1);
    const stale = log.apply({ op: "cluster.update", version: 1, spec: spec(true), unlockKey: K2 });
    expect(stale).toEqual({ ok: false, status: 500, message: "update out of sequence" });
    expect(log.store.cluster()!.secrets.unlockKey).toBe(K1);
  });
});
