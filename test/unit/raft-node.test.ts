// The driver over real level storage: a 3-node cluster in one process elects a leader, commits writes,
// survives the loss of its leader, and a node reopened from its data directory has the same log and state.

import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { LevelStorage } from "../../src/raft/level-storage.js";
import { LocalHub } from "../../src/raft/local-transport.js";
import { RaftNode } from "../../src/raft/node.js";
import { SeededRand } from "../../src/raft/rand.js";
import { bootstrapSnapshot } from "../../src/raft/rawnode.js";
import { ConfChangeType, EMPTY, type Message, MessageType, type NodeId, StateType } from "../../src/raft/types.js";
import { KVMachine } from "./kv-machine.js";
import { waitFor as waitUntil } from "./raft-fixtures.js";
import { TEST_DEK } from "./test-dek.js";

interface Member {
  id: NodeId;
  dir: string;
  storage: LevelStorage;
  sm: KVMachine;
  node: RaftNode;
}

let root: string;
let hub: LocalHub;
let members: Member[];

async function startMember(
  id: NodeId,
  bootstrap?: NodeId[],
  extra: Partial<Parameters<typeof RaftNode.start>[0]> = {},
): Promise<Member> {
  const dir = join(root, `n${id}`);
  const storage = await LevelStorage.open(dir, { dek: TEST_DEK });
  if (bootstrap && storage.mem.lastIndex() === 0) {
    const b = bootstrapSnapshot(bootstrap);
    await storage.save({ snapshot: b.snapshot, hardState: b.hardState, entries: [] }, true);
  }
  const sm = new KVMachine();
  const node = await RaftNode.start({
    id,
    storage,
    stateMachine: sm,
    transport: hub.transport(id),
    tickMs: 10,
    rand: new SeededRand(id * 7919),
    ...extra,
  });
  hub.register(node);
  const m = { id, dir, storage, sm, node };
  members = members.filter((x) => x.id !== id).concat(m);
  return m;
}

async function kill(m: Member): Promise<void> {
  hub.unregister(m.id);
  await m.node.stop();
  await m.storage.close();
}

/** Polls every 5 ms. */
const waitFor = <T>(what: string, f: () => T | undefined | false, ms?: number): Promise<T> => waitUntil(what, f, ms, 5);

async function putViaLeader(k: string, v: string): Promise<number> {
  for (let attempt = 0; ; attempt++) {
    const l = members.find((m) => m.node.isLeader && !m.node.fatal);
    try {
      if (!l) throw new Error("no leader");
      return await l.node.propose(KVMachine.put(k, v));
    } catch (e) {
      if (attempt > 200) throw e;
      await new Promise((r) => setTimeout(r, 10));
    }
  }
}

beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), "shoal-raft-node-"));
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

describe("raft node driver", () => {
  it("elects a leader, replicates writes, re-elects after the leader dies, and keeps the log on disk", async () => {
    for (const id of [1, 2, 3]) await startMember(id, [1, 2, 3]);
    const leader = await waitFor("a leader", () => members.find((m) => m.node.isLeader));
    for (let i = 0; i < 20; i++) await putViaLeader(`k${i}`, `v${i}`);
    await waitFor("all applied", () => members.every((m) => m.sm.data.get("k19") === "v19"));

    await kill(leader);
    const next = await waitFor("a new leader", () => members.find((m) => m !== leader && m.node.isLeader));
    expect(next.id).not.toBe(leader.id);
    await putViaLeader("after", "failover");
    await waitFor("the survivors apply it", () =>
      members.filter((m) => m !== leader).every((m) => m.sm.data.get("after") === "failover"),
    );

    // The old leader comes back from its data directory, catches up, and agrees.
    const back = await startMember(leader.id);
    await waitFor("the old leader catches up", () => back.sm.data.get("after") === "failover");
    for (let i = 0; i < 20; i++) expect(back.sm.data.get(`k${i}`)).toBe(`v${i}`);
    expect(back.node.isLeader).toBe(false);
  });

  it("the proposer's apply of its own entry gets what it proposed with (its own parsing), no other node's does", async () => {
    const seen = new Map<NodeId, unknown[]>();
    for (const id of [1, 2, 3]) {
      const m = await startMember(id, [1, 2, 3]);
      const apply = m.sm.apply.bind(m.sm);
      m.sm.apply = (payload: Uint8Array, index: number, local?: unknown) => {
        seen.set(id, [...(seen.get(id) ?? []), local]);
        apply(payload, index);
      };
    }
    const leader = await waitFor("a leader", () => members.find((m) => m.node.isLeader));
    const follower = members.find((m) => m !== leader)!;
    const mine = { parsed: "k=v" };
    await leader.node.proposeWithResult(KVMachine.put("k", "v"), 5000, mine);
    await follower.node.proposeWithResult(KVMachine.put("k2", "v2"), 5000, "from the follower");
    await waitFor("all applied", () => members.every((m) => m.sm.data.get("k2") === "v2"));
    for (const m of members) {
      const locals = seen.get(m.id)!.filter((x) => x !== undefined);
      if (m === leader) expect(locals).toEqual([mine]);
      else if (m === follower) expect(locals).toEqual(["from the follower"]);
      else expect(locals).toEqual([]);
    }
  });

  it("reads through the read barrier see every write that finished before", async () => {
    for (const id of [1, 2, 3]) await startMember(id, [1, 2, 3]);
    await waitFor("a leader", () => members.find((m) => m.node.isLeader));
    const follower = members.find((m) => !m.node.isLeader)!;
    for (let i = 0; i < 10; i++) {
      await putViaLeader("x", `${i}`);
      await follower.node.readBarrier();
      expect(follower.sm.data.get("x")).toBe(`${i}`);
    }
  });

  it("a burst of reads shares read-index requests, and each read still sees the writes before it", async () => {
    // What every member sends, by type: the follower's ReadIndex requests, the leader's heartbeats.
    const sent = new Map<NodeId, MessageType[]>();
    for (const id of [1, 2, 3]) {
      const inner = hub.transport(id);
      const transport = {
        send: (ms: Message[]) => {
          sent.set(id, [...(sent.get(id) ?? []), ...ms.map((m) => m.type)]);
          inner.send(ms);
        },
      };
      await startMember(id, [1, 2, 3], { transport });
    }
    const leader = await waitFor("a leader", () => members.find((m) => m.node.isLeader));
    const follower = members.find((m) => !m.node.isLeader)!;
    await putViaLeader("x", "0");
    await follower.node.readBarrier();
    const count = (id: NodeId, t: MessageType) => (sent.get(id) ?? []).filter((x) => x === t).length;
    const before = count(follower.id, MessageType.ReadIndex);
    const heartbeatsBefore = count(leader.id, MessageType.Heartbeat);

    await putViaLeader("x", "1");
    const reads = Array.from({ length: 40 }, () => follower.node.readBarrier().then(() => follower.sm.data.get("x")));
    // Every read started after x=1 finished: every one sees it.
    expect(await Promise.all(reads)).toEqual(Array(40).fill("1"));
    // One request for the first read, one for the 39 that came while it was out (not one per read).
    expect(count(follower.id, MessageType.ReadIndex) - before).toBeLessThanOrEqual(3);
    // The leader's heartbeat rounds for them, two followers each, besides its ticks' (tickMs 10).
    expect(count(leader.id, MessageType.Heartbeat) - heartbeatsBefore).toBeLessThan(40);
  });

  it("a member removed while cut off learns it when it speaks again: its node stops and onRemoved fires once", async () => {
    let removedCalls = 0;
    for (const id of [1, 2, 3]) {
      await startMember(id, [1, 2, 3], id === 3 ? { onRemoved: () => removedCalls++ } : {});
    }
    const three = members.find((m) => m.id === 3)!;
    const leader = await waitFor("a leader", () => members.find((m) => m.node.isLeader));
    // Node 3 is the one removed: it must not be the leader.
    if (leader === three) three.node.transferLeadership(1);
    const lead = await waitFor("a leader other than 3", () => members.find((m) => m !== three && m.node.isLeader));
    hub.isolate(3);
    await lead.node.proposeConfChange({ type: ConfChangeType.RemoveNode, nodeId: 3, context: EMPTY });
    expect(three.node.status().confState.voters).toContain(3);
    hub.heal();
    // Node 3 hears nothing (no one sends to a removed id); it campaigns, is told, and stops.
    await waitFor("node 3 learns it was removed", () => removedCalls > 0, 5000);
    expect(three.node.status().confState.removed).toContain(3);
    await expect(three.node.propose(KVMachine.put("k", "v"))).rejects.toThrow(/removed from the raft group/);
    const term = lead.node.status().term;
    await new Promise((r) => setTimeout(r, 300)); // 30 ticks: no campaign from node 3
    expect(removedCalls).toBe(1);
    expect(lead.node.isLeader).toBe(true);
    expect(lead.node.status().term).toBe(term);
    expect(three.node.status().state).toBe(StateType.Follower);
  });

  it("goes on committing, applying and heartbeating while a snapshot of a big state is still being written out", async () => {
    // A state machine whose snapshot captures the state in the call and delivers the bytes later (as the
    // store does with 100 MB): until the test lets it finish, the loop must not wait for it.
    let release!: () => void;
    const released = new Promise<void>((r) => {
      release = r;
    });
    let captured: string | undefined;
    const opts = { snapshotInterval: 20, keepTail: 5 };
    for (const id of [1, 2, 3]) await startMember(id, [1, 2, 3], opts);
    const leader = await waitFor("a leader", () => members.find((m) => m.node.isLeader));
    const sm = leader.sm;
    sm.snapshot = (() => {
      const bytes = KVMachine.prototype.snapshot.call(sm);
      captured ??= JSON.stringify([...sm.data]);
      return released.then(() => bytes);
    }) as unknown as () => Uint8Array;
    // The first snapshot stored, as it was when stored: once it is, applied is already 20 past it, so a
    // second one (legitimately) follows on the leader's next Ready, a heartbeat tick's, which may come
    // before idle() below returns on a loaded machine.
    let first: { index: number; data: string; firstIndex: number } | undefined;
    const storage = leader.storage;
    const createSnapshot = storage.createSnapshot.bind(storage);
    storage.createSnapshot = async (...args: Parameters<LevelStorage["createSnapshot"]>) => {
      const snap = await createSnapshot(...args);
      first ??= {
        index: snap.metadata.index,
        data: new TextDecoder().decode(snap.data),
        firstIndex: storage.mem.firstIndex(),
      };
      return snap;
    };
    for (let i = 0; i < 25; i++) await putViaLeader(`k${i}`, "before");
    await waitFor("the snapshot captured", () => captured);
    const term = leader.node.status().term;
    // The snapshot is still being written out: writes keep committing and applying on the leader, and
    // its followers keep hearing from it (no election: the term stays).
    for (let i = 0; i < 40; i++) await putViaLeader(`after${i}`, "x");
    await new Promise((r) => setTimeout(r, 300)); // 30 ticks: 3 election timeouts without heartbeats
    expect(leader.node.isLeader).toBe(true);
    expect(leader.node.status().term).toBe(term);
    expect(sm.data.get("after39")).toBe("x");
    expect(leader.storage.mem.snapshot().metadata.index).toBe(1);
    // Once written out, the snapshot is stored at the index it was captured at, with the state of then.
    expect(first).toBeUndefined();
    release();
    const stored = await waitFor("the snapshot stored", () => first);
    expect(stored.index).toBeGreaterThanOrEqual(20);
    expect(stored.index).toBeLessThan(30);
    expect(stored.data).toBe(captured);
    expect(stored.firstIndex).toBe(stored.index - opts.keepTail + 1);
    await leader.node.idle();
  });

  it("a follower catching up acknowledges what it persisted before it applies it, so the leader hears at once", async () => {
    // A manager that joins a big swarm gets the entries after the snapshot already committed: it persists
    // and applies them in one Ready, and applying took ~10 s there. Its acknowledgement must reach the leader
    // (which promotes it on it) before that apply, not after: the transport sends on the next turn of the
    // event loop, as a socket does.
    for (const id of [1, 2, 3]) await startMember(id, [1, 2, 3]);
    const leader = await waitFor("a leader", () => members.find((m) => m.node.isLeader));
    const lagging = members.find((m) => m !== leader)!;
    hub.isolate(lagging.id);
    for (let i = 0; i < 30; i++) await putViaLeader(`k${i}`, "x");
    const last = leader.node.status().commit;
    // What the leader knows the follower holds, at the moment the follower applies each entry.
    const leaderSawAtApply = new Map<number, number>();
    const apply = lagging.sm.apply.bind(lagging.sm);
    lagging.sm.apply = (payload: Uint8Array, index: number) => {
      leaderSawAtApply.set(index, leader.node.status().progress.get(lagging.id)?.match ?? 0);
      apply(payload, index);
    };
    hub.heal(lagging.id);
    await waitFor("the follower caught up", () => lagging.sm.data.get("k29") === "x");
    const caughtUp = [...leaderSawAtApply].filter(([index]) => index <= last);
    expect(caughtUp.length).toBeGreaterThan(0);
    for (const [index, match] of caughtUp) expect(match, `entry ${index}`).toBeGreaterThanOrEqual(index);
  });

  it("snapshots every N entries, compacts, and brings a new member up from the snapshot", async () => {
    const opts = { snapshotInterval: 50, keepTail: 10 };
    for (const id of [1, 2, 3]) await startMember(id, [1, 2, 3], opts);
    const leader = await waitFor("a leader", () => members.find((m) => m.node.isLeader));
    for (let i = 0; i < 120; i++) await putViaLeader(`k${i}`, "x".repeat(100));
    await waitFor("a snapshot", () => leader.storage.mem.firstIndex() > 1);
    expect(leader.storage.mem.snapshot().metadata.index).toBeGreaterThanOrEqual(50);

    // Node 4 joins as a learner; it needs the snapshot (the log was compacted) and is promoted once caught up.
    const fresh = await startMember(4, undefined, opts);
    await leader.node.proposeConfChange({ type: ConfChangeType.AddLearner, nodeId: 4, context: EMPTY });
    await waitFor("node 4 promoted to voter", () => leader.node.status().confState.voters.includes(4), 10_000);
    await waitFor("node 4 has the data", () => fresh.sm.data.get("k119") === "x".repeat(100));
    expect(fresh.storage.mem.snapshot().metadata.index).toBeGreaterThan(0);
  });
});
