// What a proposer learns about its proposal around a failover (issue 10, item 5). The driver stamps each
// proposal with the term it was proposed in; an entry that reached the log at another term is skipped by
// every node, so once a node applies an entry of a later term, a proposal still pending there can never
// be applied: it is answered "not applied" at once. Only a proposer that learns nothing (it is cut off)
// answers "outcome unknown", when its timeout passes.
//
// The proposals' own timeouts are set far beyond the test's length wherever the answer must come from the
// log, so an answer in time cannot have come from the timer.

import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { encodeFrame, entryPayload, FRAME_V1_BYTES, stampTerm } from "../../src/raft/frame.js";
import { LevelStorage } from "../../src/raft/level-storage.js";
import { LocalHub } from "../../src/raft/local-transport.js";
import { RaftNode } from "../../src/raft/node.js";
import { SeededRand } from "../../src/raft/rand.js";
import { bootstrapSnapshot } from "../../src/raft/rawnode.js";
import {
  type Entry,
  EntryType,
  ErrProposalDropped,
  ErrProposalOutcomeUnknown,
  type NodeId,
} from "../../src/raft/types.js";
import { KVMachine } from "./kv-machine.js";
import { waitFor as waitUntil } from "./raft-fixtures.js";
import { TEST_DEK } from "./test-dek.js";

const NEVER_MS = 600_000;

interface Member {
  id: NodeId;
  storage: LevelStorage;
  sm: KVMachine;
  node: RaftNode;
}

let root: string;
let hub: LocalHub;
let members: Member[];

async function openStorage(id: NodeId, voters: NodeId[]): Promise<LevelStorage> {
  const storage = await LevelStorage.open(join(root, `n${id}`), { dek: TEST_DEK });
  if (storage.mem.lastIndex() === 0) {
    const b = bootstrapSnapshot(voters);
    await storage.save({ snapshot: b.snapshot, hardState: b.hardState, entries: [] }, true);
  }
  return storage;
}

async function startMember(id: NodeId, voters: NodeId[], storage?: LevelStorage): Promise<Member> {
  const st = storage ?? (await openStorage(id, voters));
  const sm = new KVMachine();
  const node = await RaftNode.start({
    id,
    storage: st,
    stateMachine: sm,
    transport: hub.transport(id),
    tickMs: 10,
    proposalTimeoutMs: NEVER_MS,
    rand: new SeededRand(id * 7919),
  });
  hub.register(node);
  const m = { id, storage: st, sm, node };
  members.push(m);
  return m;
}

/** Polls every 5 ms. */
const waitFor = <T>(what: string, f: () => T | undefined | false, ms?: number): Promise<T> => waitUntil(what, f, ms, 5);

/** Settle a promise into what it resolved or rejected with, without letting a rejection escape. */
function outcome<T>(p: Promise<T>): Promise<{ ok: true; value: T } | { ok: false; err: Error }> {
  return p.then(
    (value) => ({ ok: true as const, value }),
    (err: Error) => ({ ok: false as const, err }),
  );
}

async function threeNodes(): Promise<Member> {
  for (const id of [1, 2, 3]) await startMember(id, [1, 2, 3]);
  const l = await waitFor("a leader", () => members.find((m) => m.node.isLeader));
  await waitFor("everyone knows the leader", () => members.every((m) => m.node.leader === l.id));
  return l;
}

beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), "shoal-raft-outcome-"));
  hub = new LocalHub();
  members = [];
});

afterEach(async () => {
  for (const m of members) {
    await m.node.stop().catch(() => {});
    await m.storage.close().catch(() => {});
  }
  await rm(root, { recursive: true, force: true });
});

describe("proposal outcomes around a failover", () => {
  it("a write on a leader that is cut off before committing it is answered 'not applied' once the next leader's first entry is applied there", async () => {
    const old = await threeNodes();
    const term = old.node.status().term;
    hub.isolate(old.id);
    const p = outcome(old.node.proposeWithResult(KVMachine.put("lost", "1")));
    // The entry is in the old leader's log only. The others elect a new leader, which commits its no-op.
    const next = await waitFor("a new leader", () => members.find((m) => m !== old && m.node.isLeader));
    expect(next.node.status().term).toBeGreaterThan(term);
    await waitFor("the new leader commits", () => next.node.appliedIndex > 0 && next.node.status().commit > 1);
    hub.heal();
    const r = await p;
    expect(r.ok).toBe(false);
    if (r.ok) return;
    expect(r.err).toBeInstanceOf(ErrProposalDropped);
    expect(r.err.message).toMatch(/not applied/);
    // ...and answered by the log, not a timer: the old leader has applied an entry of the new term.
    expect(old.node.status().term).toBeGreaterThan(term);
    await waitFor("everyone applied the new leader's log", () =>
      members.every((m) => m.node.appliedIndex === next.node.appliedIndex),
    );
    for (const m of members) expect(m.sm.data.has("lost")).toBe(false);
    // The same write proposed again commits.
    await next.node.proposeWithResult(KVMachine.put("lost", "2"));
    await waitFor("the retry everywhere", () => members.every((m) => m.sm.data.get("lost") === "2"));
  });

  it("a write forwarded by a follower to a leader that died is answered 'not applied' when the next leader's entry is applied", async () => {
    const old = await threeNodes();
    const follower = members.find((m) => m !== old)!;
    // The leader's link goes silent; the follower, still taking it for its leader, forwards the proposal
    // into the void; then the leader dies.
    hub.isolate(old.id);
    const p = outcome(follower.node.proposeWithResult(KVMachine.put("k", "v")));
    await new Promise((r) => setImmediate(r));
    expect(follower.node.leader).toBe(old.id);
    hub.unregister(old.id);
    await old.node.stop();
    const r = await p;
    expect(r.ok).toBe(false);
    if (r.ok) return;
    expect(r.err).toBeInstanceOf(ErrProposalDropped);
    expect(r.err.message).toMatch(/not applied/);
    const next = members.find((m) => m !== old && m.node.isLeader);
    expect(next, "answered only once a new leader exists").toBeDefined();
    for (const m of members) expect(m.sm.data.has("k")).toBe(false);
  });

  it("a write a follower forwarded that the old leader did commit is answered with success, not failure", async () => {
    const leader = await threeNodes();
    const follower = members.find((m) => m !== leader)!;
    const r = await outcome(follower.node.proposeWithResult(KVMachine.put("k", "committed")));
    expect(r.ok).toBe(true);
    for (const m of members) await waitFor("applied", () => m.sm.data.get("k") === "committed");
  });

  it("a write on a node that knows no leader fails at once, for certain", async () => {
    const lonely = await startMember(1, [1, 2, 3]);
    const r = await outcome(lonely.node.proposeWithResult(KVMachine.put("k", "v")));
    expect(r.ok).toBe(false);
    if (r.ok) return;
    expect(r.err).toBeInstanceOf(ErrProposalDropped);
    expect(r.err.message).toMatch(/no leader/);
  });

  it("a proposer cut off from everyone answers 'outcome unknown' when its timeout passes, never 'not applied'", async () => {
    const leader = await threeNodes();
    const follower = members.find((m) => m !== leader)!;
    hub.isolate(follower.id);
    const r = await outcome(follower.node.proposeWithResult(KVMachine.put("k", "v"), 300));
    expect(r.ok).toBe(false);
    if (r.ok) return;
    expect(r.err).toBeInstanceOf(ErrProposalOutcomeUnknown);
    expect(r.err).not.toBeInstanceOf(ErrProposalDropped);
    expect(r.err.message).toMatch(/may still be applied/);
  });

  it("stopping a node with a proposal in flight answers 'outcome unknown': the leader may still commit it", async () => {
    const leader = await threeNodes();
    const follower = members.find((m) => m !== leader)!;
    const p = outcome(follower.node.proposeWithResult(KVMachine.put("k", "v")));
    await new Promise((r) => setImmediate(r)); // stepped and forwarded
    await follower.node.stop();
    const r = await p;
    if (r.ok) return; // it was applied before the stop: also a true answer
    expect(r.err).toBeInstanceOf(ErrProposalOutcomeUnknown);
  });
});

describe("proposal outcomes on a fake clock", () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  /** Let the nodes' loops (setImmediate and storage I/O, both real) run until they are idle. */
  async function settle(): Promise<void> {
    for (let i = 0; i < 3; i++) {
      await new Promise((r) => setImmediate(r));
      await Promise.all(members.map((m) => m.node.idle()));
    }
  }

  /** Advance the fake clock by `ms`, one 10 ms tick at a time, letting the loops run after each. */
  async function advance(ms: number): Promise<void> {
    for (let t = 0; t < ms; t += 10) {
      vi.advanceTimersByTime(10);
      await settle();
    }
  }

  it("a proposer cut off from the leader answers 'outcome unknown' exactly when its 10 s pass, and not before", async () => {
    // Ticks and proposal timers run on the fake clock; the loops and level storage run for real.
    vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout", "setInterval", "clearInterval", "Date"] });
    for (const id of [1, 2, 3]) await startMember(id, [1, 2, 3]);
    const leader = await (async () => {
      for (let t = 0; t < 2000; t += 10) {
        await advance(10);
        const l = members.find((m) => m.node.isLeader);
        if (l && members.every((m) => m.node.leader === l.id)) return l;
      }
      throw new Error("no leader on the fake clock");
    })();
    const follower = members.find((m) => m !== leader)!;
    hub.isolate(follower.id);
    let settled: { ok: boolean; err?: Error } | undefined;
    void follower.node.proposeWithResult(KVMachine.put("k", "v"), 10_000).then(
      () => {
        settled = { ok: true };
      },
      (err: Error) => {
        settled = { ok: false, err };
      },
    );
    await advance(9_990);
    expect(settled, "nothing can decide it while the proposer is cut off").toBeUndefined();
    await advance(20);
    expect(settled?.ok).toBe(false);
    expect(settled?.err).toBeInstanceOf(ErrProposalOutcomeUnknown);
    expect(settled?.err?.message).toMatch(/within 10000 ms.*may still be applied/);
  }, 60_000);
});

describe("the proposal frame", () => {
  function entry(index: number, term: number, data: Uint8Array): Entry {
    return { index, term, type: EntryType.Normal, data };
  }

  function v1(k: string): Uint8Array {
    const payload = KVMachine.put(k, "old");
    const out = new Uint8Array(FRAME_V1_BYTES + payload.length);
    const dv = new DataView(out.buffer);
    dv.setFloat64(0, 12345);
    dv.setFloat64(8, 1);
    out.set(payload, FRAME_V1_BYTES);
    return out;
  }

  function v2(k: string, stamped: number): Uint8Array {
    const f = encodeFrame(777, 1, KVMachine.put(k, "new"));
    stampTerm(f, stamped);
    return f;
  }

  it("an entry appended at another term than its proposer's is skipped by every node; old 16-byte entries still apply", async () => {
    const log = [
      entry(2, 1, v1("from-an-old-log")),
      entry(3, 2, v2("same-term", 2)),
      entry(4, 3, v2("other-term", 2)),
      entry(5, 3, new Uint8Array(0)),
    ];
    for (const id of [1, 2]) {
      const st = await openStorage(id, [id]);
      await st.save({ hardState: { term: 3, vote: id, commit: 5 }, entries: log }, true);
      const m = await startMember(id, [id], st);
      await waitFor(`node ${id} applies the log`, () => m.node.appliedIndex === 5);
      expect([...m.sm.data.keys()].sort()).toEqual(["from-an-old-log", "same-term"]);
      expect(m.sm.applied).toEqual([2, 3]);
    }
    // Tools that read the log directly (force-new-cluster) make the same decision.
    expect(log.map((e) => entryPayload(e) !== undefined)).toEqual([true, true, false, false]);
  });
});
