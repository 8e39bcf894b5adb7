// The key manager: the keyring of the encrypted overlays lives in the replicated store, with its schedule,
// so rotations survive failovers (neither skipped nor doubled) and downtime (one rotation on return).
// Everything runs on an injected clock and timer; the "store" applies applyKeys in proposal order.

import pino from "pino";
import { describe, expect, it } from "vitest";
import {
  agentView,
  applyInit,
  applyInterval,
  applyKeys,
  applyRotate,
  initialKeyring,
  KEY_BYTES,
  KeyManager,
  type Keyring,
  type KeysCommand,
  keysForNode,
  type NetworkLike,
  newKey,
  nextRotationAt,
  primaryKey,
  type RandomBytes,
  redact,
  rotateCommand,
  rotatedKeyring,
  rotationDue,
  SALT_BYTES,
  type SetTimer,
} from "../../src/manager/keymanager.js";

const H = 60 * 60 * 1000;
const T0 = Date.parse("2026-11-22T00:00:00Z");

// ------------------------------------------------------------------ fakes

class FakeClock {
  constructor(public t: number) {}
  now = (): Date => new Date(this.t);
}

interface Pending {
  at: number;
  fn: () => void;
  cancelled: boolean;
}

/** Timers on the fake clock; advancing fires them in time order and waits for the checks they start. */
class FakeTimers {
  private pending: Pending[] = [];
  fired = 0;
  constructor(
    private readonly clock: FakeClock,
    private readonly managers: () => KeyManager[],
  ) {}

  setTimer: SetTimer = (fn, ms) => {
    const p: Pending = { at: this.clock.t + ms, fn, cancelled: false };
    this.pending.push(p);
    return {
      cancel: () => {
        p.cancelled = true;
      },
    };
  };

  async settle(): Promise<void> {
    for (let i = 0; i < 3; i++) {
      for (const m of this.managers()) await m.settled();
      await new Promise((r) => setImmediate(r));
    }
  }

  async advanceTo(t: number): Promise<void> {
    await this.settle();
    for (;;) {
      this.pending = this.pending.filter((p) => !p.cancelled);
      this.pending.sort((a, b) => a.at - b.at);
      const next = this.pending[0];
      if (!next || next.at > t) break;
      this.pending.shift();
      this.clock.t = Math.max(this.clock.t, next.at);
      this.fired++;
      next.fn();
      await this.settle();
    }
    this.clock.t = t;
  }
}

/** A tiny replicated store: commands are JSON round-tripped (as through Raft) and applied in order. */
class MemStore {
  ring: Keyring | undefined;
  applied: KeysCommand[] = [];
  refused: string[] = [];
  /** When set, proposals wait in `queue` until commit(). */
  holding = false;
  private queue: Array<{ cmd: KeysCommand; resolve: () => void; reject: (e: Error) => void }> = [];

  read = (): Keyring | undefined => (this.ring ? structuredClone(this.ring) : undefined);

  propose = (cmd: KeysCommand): Promise<void> => {
    const wire = JSON.parse(JSON.stringify(cmd)) as KeysCommand;
    return new Promise<void>((resolve, reject) => {
      this.queue.push({ cmd: wire, resolve, reject });
      if (!this.holding) this.commit();
    });
  };

  commit(): void {
    for (const q of this.queue.splice(0)) {
      const r = applyKeys(this.ring, q.cmd);
      if (r.ok) {
        this.ring = r.ring;
        this.applied.push(q.cmd);
        q.resolve();
      } else {
        this.refused.push(r.reason);
        q.reject(new Error(r.reason));
      }
    }
  }

  get rotations(): number {
    return this.applied.filter((c) => c.op === "keys.rotate").length;
  }

  tags(): number[] {
    return (this.ring?.keys ?? []).map((k) => k.tag);
  }
}

function captureLogger() {
  const lines: string[] = [];
  const logger = pino({ level: "debug" }, { write: (s: string) => void lines.push(s) });
  return { logger, lines };
}

interface Harness {
  clock: FakeClock;
  timers: FakeTimers;
  store: MemStore;
  managers: KeyManager[];
  lines: string[];
  leader: (opts?: { intervalMs?: number }) => KeyManager;
}

function harness(start = T0): Harness {
  const clock = new FakeClock(start);
  const managers: KeyManager[] = [];
  const timers = new FakeTimers(clock, () => managers);
  const store = new MemStore();
  const { logger, lines } = captureLogger();
  const leader = (opts: { intervalMs?: number } = {}) => {
    const m = new KeyManager({
      now: clock.now,
      propose: store.propose,
      read: store.read,
      setTimer: timers.setTimer,
      logger,
      ...opts,
    });
    managers.push(m);
    return m;
  };
  return { clock, timers, store, managers, lines, leader };
}

/** Every key and salt string the ring has ever held. */
function material(store: MemStore): string[] {
  const out = new Set<string>();
  for (const c of store.applied) {
    if (c.op === "keys.init") for (const k of c.ring.keys) out.add(k.key).add(k.salt);
    if (c.op === "keys.rotate") out.add(c.key.key).add(c.key.salt);
  }
  return [...out];
}

function expectNoMaterial(text: string, secrets: string[]): void {
  expect(secrets.length).toBeGreaterThan(0);
  for (const s of secrets) expect(text.includes(s), `key material leaked: ${s}`).toBe(false);
}

/** A deterministic byte source: 0, 1, 2, ... */
function counterBytes(): RandomBytes {
  let i = 0;
  return (n) => Uint8Array.from({ length: n }, () => i++ & 0xff);
}

// ------------------------------------------------------------------ pure functions

describe("keyring", () => {
  it("starts with 3 distinct keys, tags 1..3, 16-byte keys and 4-byte salts", () => {
    const ring = initialKeyring(new Date(T0), 12 * H);
    expect(ring.keys.map((k) => k.tag)).toEqual([1, 2, 3]);
    expect(ring.lastRotation).toBe(new Date(T0).toISOString());
    expect(ring.intervalMs).toBe(12 * H);
    for (const k of ring.keys) {
      expect(Buffer.from(k.key, "base64")).toHaveLength(KEY_BYTES);
      expect(Buffer.from(k.salt, "base64")).toHaveLength(SALT_BYTES);
    }
    expect(new Set(ring.keys.map((k) => k.key)).size).toBe(3);
    expect(new Set(ring.keys.map((k) => k.salt)).size).toBe(3);
    expect(initialKeyring(new Date(T0)).intervalMs).toBe(12 * H);
  });

  it("takes its bytes from the injected source", () => {
    const k = newKey(7, counterBytes());
    expect(k).toEqual({
      tag: 7,
      key: Buffer.from([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]).toString("base64"),
      salt: Buffer.from([16, 17, 18, 19]).toString("base64"),
    });
    expect(() => newKey(1, () => new Uint8Array(3))).toThrow(/expected 16/);
    expect(() => newKey(0)).toThrow(RangeError);
  });

  it("is due one interval after the last rotation, and once however long it waited", () => {
    const ring = initialKeyring(new Date(T0), 12 * H);
    expect(rotationDue(ring, new Date(T0 + 12 * H - 1))).toBe(false);
    expect(rotationDue(ring, new Date(T0 + 12 * H))).toBe(true);
    expect(rotationDue(ring, new Date(T0 + 40 * H))).toBe(true);
    const after = rotatedKeyring(ring, newKey(4), new Date(T0 + 40 * H));
    expect(rotationDue(after, new Date(T0 + 40 * H))).toBe(false);
    expect(nextRotationAt(after).getTime()).toBe(T0 + 52 * H);
  });

  it("rotation appends, drops the oldest and moves lastRotation, without touching the input", () => {
    const ring = initialKeyring(new Date(T0), 12 * H);
    const before = structuredClone(ring);
    const cmd = rotateCommand(ring, new Date(T0 + 12 * H));
    expect(cmd.expectTag).toBe(3);
    expect(cmd.key.tag).toBe(4);
    const r = applyRotate(ring, cmd);
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    expect(r.ring.keys.map((k) => k.tag)).toEqual([2, 3, 4]);
    expect(r.ring.keys[2]).toEqual(cmd.key);
    expect(r.ring.lastRotation).toBe(new Date(T0 + 12 * H).toISOString());
    expect(ring).toEqual(before);
  });

  it("apply refuses a stale, malformed or orphan rotation and a second init", () => {
    const ring = initialKeyring(new Date(T0), 12 * H);
    const at = new Date(T0 + 12 * H).toISOString();
    const stale = applyRotate(ring, { op: "keys.rotate", expectTag: 2, key: newKey(3), rotatedAt: at });
    expect(stale).toMatchObject({ ok: false, conflict: true });
    const bad = { op: "keys.rotate", expectTag: 3, key: { ...newKey(4), key: "AAAA" }, rotatedAt: at } as const;
    expect(applyRotate(ring, bad)).toMatchObject({ ok: false, conflict: false });
    const badSalt = {
      op: "keys.rotate",
      expectTag: 3,
      key: { ...newKey(4), salt: "AAAAAAAA" },
      rotatedAt: at,
    } as const;
    expect(applyRotate(ring, badSalt).ok).toBe(false);
    expect(applyRotate(ring, { op: "keys.rotate", expectTag: 3, key: newKey(3), rotatedAt: at }).ok).toBe(false);
    expect(applyRotate(ring, { op: "keys.rotate", expectTag: 3, key: newKey(4), rotatedAt: "soon" }).ok).toBe(false);
    expect(applyRotate(undefined, rotateCommand(ring, new Date(T0))).ok).toBe(false);
    expect(applyInit(ring, { op: "keys.init", ring })).toMatchObject({ ok: false, conflict: true });
    expect(applyInit(undefined, { op: "keys.init", ring: { ...ring, keys: ring.keys.slice(1) } }).ok).toBe(false);
    expect(applyInterval(ring, { op: "keys.interval", intervalMs: 0 }).ok).toBe(false);
    // No refusal reason echoes key material.
    const secrets = ring.keys.flatMap((k) => [k.key, k.salt]);
    const reasons = [stale, applyRotate(ring, bad), applyInit(ring, { op: "keys.init", ring })];
    expectNoMaterial(JSON.stringify(reasons), secrets);
  });

  it("the primary is the middle key; agents get all three, the primary marked", () => {
    const ring = rotatedKeyring(initialKeyring(new Date(T0)), newKey(4), new Date(T0 + 12 * H));
    expect(primaryKey(ring).tag).toBe(3);
    const v = agentView(ring);
    expect(v.algorithm).toBe("AES_128_GCM");
    expect(v.primaryTag).toBe(3);
    expect(v.keys.map((k) => [k.tag, k.primary])).toEqual([
      [2, false],
      [3, true],
      [4, false],
    ]);
    expect(v.keys.map((k) => k.key)).toEqual(ring.keys.map((k) => k.key));
    expect(v.lastRotation).toBe(new Date(T0 + 12 * H).toISOString());
    expect(v.intervalMs).toBe(12 * H);
  });

  it("only nodes holding an encrypted network get keys", () => {
    const ring = initialKeyring(new Date(T0));
    const networks: NetworkLike[] = [
      { id: "plain", spec: { options: {} } },
      { id: "secret", spec: { options: { encrypted: "" } } },
    ];
    const endpoints = [
      { nodeId: "n1", networkId: "plain" },
      { nodeId: "n2", networkId: "secret" },
      { nodeId: "n3", networkId: "plain" },
      { nodeId: "n3", networkId: "secret" },
    ];
    expect(keysForNode(ring, "n1", networks, endpoints)).toBeUndefined();
    expect(keysForNode(ring, "n2", networks, endpoints)?.keys).toHaveLength(3);
    expect(keysForNode(ring, "n3", networks, endpoints)?.primaryTag).toBe(2);
    expect(keysForNode(ring, "n4", networks, endpoints)).toBeUndefined();
    expect(keysForNode(undefined, "n2", networks, endpoints)).toBeUndefined();
  });

  it("redact keeps tags and times only", () => {
    const ring = initialKeyring(new Date(T0), 12 * H);
    const r = redact(ring);
    expect(r).toEqual({
      algorithm: "AES_128_GCM",
      tags: [1, 2, 3],
      primaryTag: 2,
      lastRotation: new Date(T0).toISOString(),
      nextRotation: new Date(T0 + 12 * H).toISOString(),
      intervalMs: 12 * H,
    });
    expectNoMaterial(
      JSON.stringify(r),
      ring.keys.flatMap((k) => [k.key, k.salt]),
    );
  });
});

// ------------------------------------------------------------------ the leader loop

describe("KeyManager", () => {
  it("creates the ring at once, then rotates every 12 h: three rotations, always 3 keys", async () => {
    const h = harness();
    const a = h.leader();
    a.start();
    await h.timers.settle();
    expect(h.store.tags()).toEqual([1, 2, 3]);
    expect(h.store.rotations).toBe(0);

    const seen: number[][] = [];
    for (let i = 1; i <= 3; i++) {
      await h.timers.advanceTo(T0 + i * 12 * H - 1);
      expect(h.store.rotations).toBe(i - 1);
      await h.timers.advanceTo(T0 + i * 12 * H);
      expect(h.store.rotations).toBe(i);
      expect(h.store.ring?.keys).toHaveLength(3);
      expect(h.store.ring?.lastRotation).toBe(new Date(T0 + i * 12 * H).toISOString());
      seen.push(h.store.tags());
    }
    expect(seen).toEqual([
      [2, 3, 4],
      [3, 4, 5],
      [4, 5, 6],
    ]);
    // Polling is capped at 60 s: a long stretch is a bounded number of checks, none of them rotating.
    await h.timers.advanceTo(T0 + 36 * H + 11 * H);
    expect(h.store.rotations).toBe(3);
    a.stop();
    expectNoMaterial(h.lines.join(""), material(h.store));
    expect(h.lines.some((l) => l.includes("network encryption key rotated"))).toBe(true);
  });

  it("a failover between two rotations neither skips nor doubles one", async () => {
    const h = harness();
    const a = h.leader();
    a.start();
    await h.timers.advanceTo(T0 + 12 * H);
    expect(h.store.rotations).toBe(1);

    // The old leader goes away at 13 h; the new one takes over an hour later.
    await h.timers.advanceTo(T0 + 13 * H);
    a.stop();
    await h.timers.advanceTo(T0 + 14 * H);
    const b = h.leader();
    b.start();
    await h.timers.settle();
    expect(h.store.rotations).toBe(1);

    await h.timers.advanceTo(T0 + 24 * H - 1);
    expect(h.store.rotations).toBe(1);
    await h.timers.advanceTo(T0 + 24 * H);
    expect(h.store.rotations).toBe(2);
    await h.timers.advanceTo(T0 + 36 * H - 1);
    expect(h.store.rotations).toBe(2);
    await h.timers.advanceTo(T0 + 36 * H);
    expect(h.store.rotations).toBe(3);
    expect(h.store.tags()).toEqual([4, 5, 6]);
    b.stop();
    expectNoMaterial(h.lines.join(""), material(h.store));
  });

  it("two leaders proposing at once (stale expectTag): exactly one rotation applies", async () => {
    const h = harness();
    h.store.ring = initialKeyring(new Date(T0), 12 * H);
    h.clock.t = T0 + 12 * H;
    const a = h.leader();
    const b = h.leader();
    h.store.holding = true;
    const ta = a.tick();
    const tb = b.tick();
    await new Promise((r) => setImmediate(r));
    h.store.commit();
    await Promise.all([ta, tb]);
    expect(h.store.rotations).toBe(1);
    expect(h.store.tags()).toEqual([2, 3, 4]);
    expect(h.store.refused).toHaveLength(1);
    expect(h.store.refused[0]).toMatch(/moved on/);
    expect(h.lines.some((l) => l.includes("will retry"))).toBe(true);

    // The loser's next check sees the rotated ring: nothing more to do.
    h.store.holding = false;
    await b.tick();
    await a.tick();
    expect(h.store.rotations).toBe(1);
    expectNoMaterial(h.lines.join(""), material(h.store));
  });

  it("a rotation in flight across a failover is not doubled", async () => {
    const h = harness();
    h.store.ring = initialKeyring(new Date(T0), 12 * H);
    const a = h.leader();
    a.start();
    await h.timers.settle();
    await h.timers.advanceTo(T0 + 12 * H - 1);
    h.store.holding = true;
    h.clock.t = T0 + 12 * H;
    const inFlight = a.tick(); // a proposes; the entry is not applied yet
    a.stop();
    const b = h.leader();
    b.start(); // reads the ring before the old leader's entry applies: proposes too
    await new Promise((r) => setImmediate(r));
    h.store.holding = false;
    h.store.commit();
    await inFlight;
    await h.timers.advanceTo(T0 + 12 * H + 5000);
    expect(h.store.refused).toHaveLength(1); // the new leader's stale proposal
    expect(h.store.rotations).toBe(1);
    expect(h.store.tags()).toEqual([2, 3, 4]);
    await h.timers.advanceTo(T0 + 24 * H - 1);
    expect(h.store.rotations).toBe(1);
    await h.timers.advanceTo(T0 + 24 * H);
    expect(h.store.rotations).toBe(2);
    b.stop();
  });

  it("a cluster down for 40 h rotates once on return, then 12 h after that", async () => {
    const h = harness();
    const a = h.leader();
    a.start();
    await h.timers.settle();
    expect(h.store.tags()).toEqual([1, 2, 3]);
    a.stop(); // the whole cluster goes down

    await h.timers.advanceTo(T0 + 40 * H);
    expect(h.store.rotations).toBe(0);
    const b = h.leader();
    b.start();
    await h.timers.settle();
    expect(h.store.rotations).toBe(1);
    expect(h.store.tags()).toEqual([2, 3, 4]);
    expect(h.store.ring?.lastRotation).toBe(new Date(T0 + 40 * H).toISOString());

    await h.timers.advanceTo(T0 + 52 * H - 1);
    expect(h.store.rotations).toBe(1);
    await h.timers.advanceTo(T0 + 52 * H);
    expect(h.store.rotations).toBe(2);
    expect(h.store.tags()).toEqual([3, 4, 5]);
    b.stop();
  });

  it("a timer firing 1 ms early while the clock ticks between two readings does not delay the rotation", async () => {
    // The check reads the clock 1 ms before the due time (not due); the delay to the next one reads it at
    // the due time. That must mean "check again now", not "wait a whole retry period".
    const I = 2500;
    let ring = initialKeyring(new Date(T0), I);
    const readings = [T0 + 10, T0 + 10, T0 + I - 1, T0 + I, T0 + I + 1, T0 + I + 1];
    const delays: number[] = [];
    const pending: (() => void)[] = [];
    const km = new KeyManager({
      now: () => new Date(readings.length > 1 ? readings.shift()! : readings[0]!),
      propose: async (c) => {
        const r = applyKeys(ring, c);
        if (r.ok) ring = r.ring;
      },
      read: () => ring,
      intervalMs: I,
      retryMs: 1000,
      setTimer: (fn, ms) => {
        delays.push(ms);
        pending.push(fn);
        return { cancel: () => {} };
      },
    });
    km.start();
    for (let i = 0; i < 2; i++) {
      await km.settled();
      pending.shift()?.();
    }
    await km.settled();
    km.stop();
    expect(delays.slice(0, 2)).toEqual([I - 10, 1]);
    expect(ring.keys.map((k) => k.tag)).toEqual([2, 3, 4]);
  });

  it("honours a custom interval (1 s)", async () => {
    const h = harness();
    const a = h.leader({ intervalMs: 1000 });
    a.start();
    await h.timers.settle();
    expect(h.store.ring?.intervalMs).toBe(1000);
    await h.timers.advanceTo(T0 + 999);
    expect(h.store.rotations).toBe(0);
    await h.timers.advanceTo(T0 + 3500);
    expect(h.store.rotations).toBe(3);
    expect(h.store.tags()).toEqual([4, 5, 6]);
    expect(h.store.ring?.keys).toHaveLength(3);
    a.stop();
    // Stopped: time passes, nothing rotates.
    await h.timers.advanceTo(T0 + 10_000);
    expect(h.store.rotations).toBe(3);
  });

  it("a leader configured with another interval stores it; the schedule still counts from lastRotation", async () => {
    const h = harness();
    h.store.ring = initialKeyring(new Date(T0), 12 * H);
    h.clock.t = T0 + 30_000;
    const a = h.leader({ intervalMs: 10_000 });
    a.start();
    await h.timers.settle();
    expect(h.store.applied.map((c) => c.op)).toEqual(["keys.interval", "keys.rotate"]);
    expect(h.store.ring?.intervalMs).toBe(10_000);
    await h.timers.advanceTo(T0 + 40_000 - 1);
    expect(h.store.rotations).toBe(1);
    await h.timers.advanceTo(T0 + 40_000);
    expect(h.store.rotations).toBe(2);
    a.stop();
  });

  it("nothing it logs, and nothing redact returns, carries key material", async () => {
    const h = harness();
    const a = h.leader({ intervalMs: 1000 });
    a.start();
    await h.timers.advanceTo(T0 + 5000);
    // A refused proposal is logged too.
    h.store.holding = true;
    const b = h.leader();
    h.clock.t = T0 + 6000;
    const t1 = a.tick();
    const t2 = b.tick();
    await new Promise((r) => setImmediate(r));
    h.store.commit();
    await Promise.all([t1, t2]);
    a.stop();
    const secrets = material(h.store);
    expect(secrets.length).toBeGreaterThanOrEqual(2 * 9);
    expect(h.lines.length).toBeGreaterThan(0);
    expectNoMaterial(h.lines.join(""), secrets);
    const ring = h.store.ring;
    if (!ring) throw new Error("no ring");
    expectNoMaterial(JSON.stringify(redact(ring)), secrets);
  });
});
