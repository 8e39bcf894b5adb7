// Crash recovery: "a node killed at any point of the loop reopens with the same committed log and state
// machine."
//
// 1. In process: the driver's crashAt hook kills a node at every loop point ("beforePersist",
//    "afterPersist", "afterSend", "afterApply") of its Nth Ready, in a single-node cluster and in a 3-node
//    cluster (the leader, and separately a follower), while writers keep proposals in flight. The dead
//    node's LevelStorage is closed with no further write (a process death), reopened from its directory
//    with a fresh state machine, and restarted. Checked: (a) every acknowledged write is in the reopened
//    node's state machine once it has caught up; (b) the reopened storage holds exactly what the node had
//    durably written before the crash (hard state, snapshot, log), and the entries it had applied are
//    committed there with the same term and data; (c) the cluster still commits a new write on every node,
//    and all members agree on the committed log and the state.
// 2. kill -9: a child process (dist/test/unit/crash-child.js) writes as fast as it can and is SIGKILLed at
//    random moments; after each kill the parent reopens the directory and checks that every write the child
//    printed as acknowledged is in the log (or in the snapshot) at its index, that commit covers it, and
//    that the state machine rebuilt from the directory has it. The child then restarts on the same
//    directory, so the log grows across kills.

import { type ChildProcess, execFile, spawn } from "node:child_process";
import { existsSync, readdirSync, statSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { entryPayload, FRAME_V2_BYTES } from "../../src/raft/frame.js";
import { LevelStorage } from "../../src/raft/level-storage.js";
import { LocalHub } from "../../src/raft/local-transport.js";
import { type CrashPoint, RaftNode, SimulatedCrash } from "../../src/raft/node.js";
import { SeededRand } from "../../src/raft/rand.js";
import { bootstrapSnapshot } from "../../src/raft/rawnode.js";
import type { Entry, HardState, NodeId, Ready } from "../../src/raft/types.js";
import { KVMachine } from "./kv-machine.js";
import { waitFor as waitUntil } from "./raft-fixtures.js";
import { TEST_DEK } from "./test-dek.js";

const dec = new TextDecoder();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Polls every 2 ms. */
const waitFor = <T>(what: string, f: () => T | undefined | false, ms?: number): Promise<T> => waitUntil(what, f, ms, 2);

/** An entry as plain comparable data. */
interface Rec {
  index: number;
  term: number;
  type: number;
  data: string;
}

function rec(e: Entry): Rec {
  return { index: e.index, term: e.term, type: e.type, data: Buffer.from(e.data).toString("hex") };
}

/** Everything the storage holds, as the core sees it (mem is updated only after a batch is on disk). */
interface Durable {
  hardState: HardState;
  snapIndex: number;
  snapTerm: number;
  snapData: string;
  firstIndex: number;
  entries: Rec[];
}

function durable(s: LevelStorage): Durable {
  const mem = s.mem;
  const snap = mem.snapshot();
  return {
    hardState: { ...mem.hardState },
    snapIndex: snap.metadata.index,
    snapTerm: snap.metadata.term,
    snapData: Buffer.from(snap.data).toString("hex"),
    firstIndex: mem.firstIndex(),
    entries: mem.ents.slice(1).map(rec),
  };
}

function entryAt(s: LevelStorage, index: number): Entry | undefined {
  const mem = s.mem;
  if (index < mem.firstIndex() || index > mem.lastIndex()) return undefined;
  return mem.ents[index - mem.ents[0]!.index];
}

/**
 * The KV machine, recording every applied entry as (index, term, payload) and checking as it applies that
 * the entry is durable: in the stored log with the same payload, and at or below the stored commit index.
 */
class TapMachine extends KVMachine {
  history: { index: number; term: number; data: string }[] = [];
  constructor(
    private readonly storage: LevelStorage,
    private readonly violations: string[],
    private readonly who: string,
  ) {
    super();
  }

  override apply(payload: Uint8Array, index: number): void {
    const mem = this.storage.mem;
    if (index > mem.hardState.commit) {
      this.violations.push(`${this.who} applied ${index} beyond the stored commit index ${mem.hardState.commit}`);
    }
    const e = entryAt(this.storage, index);
    if (!e) {
      this.violations.push(
        `${this.who} applied ${index}, which is not in its stored log [${mem.firstIndex()}, ${mem.lastIndex()}]`,
      );
    } else if (Buffer.compare(Buffer.from(entryPayload(e) ?? []), Buffer.from(payload)) !== 0) {
      this.violations.push(`${this.who} applied ${index} with a payload that differs from its stored entry`);
    }
    this.history.push({ index, term: e?.term ?? -1, data: Buffer.from(payload).toString("hex") });
    super.apply(payload, index);
  }
}

// ---------------------------------------------------------------------------------------------------
// In-process clusters

interface Member {
  id: NodeId;
  dir: string;
  storage: LevelStorage;
  sm: TapMachine;
  node: RaftNode;
}

interface CrashPlan {
  /** The node to crash; undefined until armed. */
  target: NodeId | undefined;
  point: CrashPoint;
  /** Crash in the target's nth Ready counted from arming. */
  n: number;
  count: number;
  fired: boolean;
  ready?: string;
}

class Cluster {
  readonly hub = new LocalHub();
  members: Member[] = [];
  readonly violations: string[] = [];

  constructor(
    readonly root: string,
    readonly ids: NodeId[],
    readonly plan: CrashPlan,
    readonly opts: { snapshotInterval: number; keepTail: number },
  ) {}

  async start(id: NodeId): Promise<Member> {
    const dir = join(this.root, `n${id}`);
    const storage = await LevelStorage.open(dir, { dek: TEST_DEK });
    if (storage.mem.lastIndex() === 0) {
      const b = bootstrapSnapshot(this.ids);
      await storage.save({ snapshot: b.snapshot, hardState: b.hardState, entries: [] }, true);
    }
    const sm = new TapMachine(storage, this.violations, `node ${id}`);
    const plan = this.plan;
    const node = await RaftNode.start({
      id,
      storage,
      stateMachine: sm,
      transport: this.hub.transport(id),
      tickMs: 5,
      rand: new SeededRand(id * 7919 + plan.n * 31 + plan.point.length),
      proposalTimeoutMs: 3000,
      snapshotInterval: this.opts.snapshotInterval,
      keepTail: this.opts.keepTail,
      crashAt: (point: CrashPoint, rd: Ready) => {
        if (plan.fired || plan.target !== id) return false;
        if (point === "beforePersist") plan.count++;
        if (plan.count !== plan.n || point !== plan.point) return false;
        plan.fired = true;
        plan.ready =
          `entries [${rd.entries.map((e) => e.index).join(",")}] committed [${rd.committedEntries.map((e) => e.index).join(",")}]` +
          ` hardState ${rd.hardState ? JSON.stringify(rd.hardState) : "-"} messages ${rd.messages.length}`;
        return true;
      },
    });
    this.hub.register(node);
    const m: Member = { id, dir, storage, sm, node };
    this.members = this.members.filter((x) => x.id !== id).concat(m);
    return m;
  }

  member(id: NodeId): Member {
    return this.members.find((m) => m.id === id)!;
  }

  leader(): Member | undefined {
    return this.members.find((m) => m.node.isLeader && !m.node.fatal);
  }

  /** A process death: the loop is dead already; drop the node and close its db without writing anything. */
  async bury(m: Member): Promise<void> {
    this.hub.unregister(m.id);
    await m.node.stop();
    await m.storage.close();
  }

  async put(k: string, v: string, exclude?: Set<NodeId>): Promise<number> {
    for (let attempt = 0; ; attempt++) {
      const l = this.leader();
      try {
        if (!l) throw new Error("no leader");
        if (exclude?.has(l.id)) throw new Error(`node ${l.id} leads but may not take proposals yet`);
        return await l.node.propose(KVMachine.put(k, v));
      } catch (e) {
        if (attempt > 500) throw e;
        await sleep(5);
      }
    }
  }

  async close(): Promise<void> {
    for (const m of this.members) {
      this.hub.unregister(m.id);
      await m.node.stop().catch(() => {});
      await m.storage.close().catch(() => {});
    }
  }
}

/**
 * Writers keeping `k` proposals in flight through whichever node leads (never one in `exclude`); records each
 * acknowledged write and the index it was acknowledged at.
 */
function startWriters(c: Cluster, k: number, exclude: Set<NodeId>) {
  let stop = false;
  let seq = 0;
  const acked = new Map<string, number>();
  const workers = Array.from({ length: k }, async () => {
    while (!stop) {
      const l = c.leader();
      if (l && exclude.has(l.id)) {
        await sleep(2);
        continue;
      }
      if (!l) {
        await sleep(2);
        continue;
      }
      const key = `w${++seq}`;
      try {
        acked.set(key, await l.node.propose(KVMachine.put(key, key)));
      } catch {
        await sleep(2);
      }
    }
  });
  return {
    acked,
    stop: async () => {
      stop = true;
      await Promise.allSettled(workers);
    },
  };
}

const POINTS: CrashPoint[] = ["beforePersist", "afterPersist", "afterSend", "afterApply"];
/** Which Ready (counted from arming) dies; with snapshots (every 12 applied entries) for the odd ones. */
const NTHS: { n: number; snap: boolean }[] = [
  { n: 1, snap: false },
  { n: 2, snap: true },
  { n: 3, snap: false },
  { n: 7, snap: true },
  { n: 20, snap: false },
  { n: 45, snap: true },
];

type Role = "single" | "leader" | "follower";

let root: string;
let cluster: Cluster | undefined;
/** One line per in-process case: what the dying Ready held, and what the node had on disk. */
const summary: string[] = [];

async function crashAndRecover(role: Role, point: CrashPoint, n: number, snap: boolean): Promise<void> {
  const ids = role === "single" ? [1] : [1, 2, 3];
  const plan: CrashPlan = { target: undefined, point, n, count: 0, fired: false };
  const c = new Cluster(
    root,
    ids,
    plan,
    snap ? { snapshotInterval: 12, keepTail: 3 } : { snapshotInterval: 10_000, keepTail: 500 },
  );
  cluster = c;
  for (const id of ids) await c.start(id);

  // Single node: armed from its very first Ready, so the election's Readies die too.
  if (role === "single") plan.target = 1;
  c.member(1).node.campaign();
  if (role !== "single") {
    // A few writes so that the log has something committed everywhere before the crash.
    for (let i = 0; i < 3; i++) await c.put(`pre${i}`, `${i}`);
    const leader = await waitFor("a leader", () => c.leader());
    plan.target = role === "leader" ? leader.id : ids.find((id) => id !== leader.id)!;
  }
  const victim = c.member(plan.target!);

  // The victim takes no proposal while it is down; after its restart it takes them again.
  const exclude = new Set<NodeId>();
  const writers = startWriters(c, 4, exclude);
  await waitFor(`node ${victim.id} to crash ${point} in Ready ${n}`, () => victim.node.fatal, 10_000);
  exclude.add(victim.id);
  expect(victim.node.fatal).toBeInstanceOf(SimulatedCrash);
  const ackedAtCrash = new Map(writers.acked);
  const before = durable(victim.storage);
  const appliedBefore = victim.sm.history.slice();
  summary.push(
    `${role.padEnd(8)} ${point.padEnd(13)} Ready ${String(n).padStart(2)}: node ${victim.id} died with ${plan.ready}; ` +
      `on disk: commit ${before.hardState.commit}, last ${before.firstIndex + before.entries.length - 1}, ` +
      `snapshot ${before.snapIndex}; ${ackedAtCrash.size} writes acked`,
  );

  // Process death: close the db with no further write, reopen from the directory, fresh state machine.
  await c.bury(victim);
  const reopenedStorage = await LevelStorage.open(victim.dir, { dek: TEST_DEK });
  const after = durable(reopenedStorage);
  await reopenedStorage.close();

  // (b) The reopened storage is exactly what had been written before the crash: same hard state, snapshot
  // and log; in particular the committed prefix is unchanged.
  expect(after.hardState).toEqual(before.hardState);
  expect(after.snapIndex).toBe(before.snapIndex);
  expect(after.snapTerm).toBe(before.snapTerm);
  expect(after.snapData).toBe(before.snapData);
  expect(after.firstIndex).toBe(before.firstIndex);
  expect(after.entries).toEqual(before.entries);
  const committedBefore = before.entries.filter((e) => e.index <= before.hardState.commit);
  expect(after.entries.filter((e) => e.index <= after.hardState.commit)).toEqual(committedBefore);
  // Everything it had applied is committed in the reopened log, with the same term and payload.
  for (const h of appliedBefore) {
    expect(h.index).toBeLessThanOrEqual(after.hardState.commit);
    const e = after.entries.find((x) => x.index === h.index);
    if (h.index >= after.firstIndex) {
      expect(e, `applied entry ${h.index}`).toBeDefined();
      expect(e!.term).toBe(h.term);
      expect(Buffer.from(e!.data, "hex").subarray(FRAME_V2_BYTES).toString("hex")).toBe(h.data);
    }
  }

  // Restart it on the same directory with a fresh state machine.
  const back = await c.start(victim.id);
  if (role === "single") back.node.campaign();
  await waitFor(
    "the restarted node to re-apply its committed log",
    () => back.node.appliedIndex >= after.hardState.commit,
  );
  exclude.delete(victim.id);

  // (c) The cluster keeps working: once the writers are done, a new write commits on every node.
  await sleep(20);
  await writers.stop();
  const finalIndex = await c.put("after", `${role}-${point}-${n}`, exclude);
  await waitFor(
    "every node to apply the new write",
    () =>
      c.members.every((m) => m.sm.data.get("after") === `${role}-${point}-${n}` && m.node.appliedIndex >= finalIndex),
    10_000,
  );

  // (a) Nothing acknowledged is lost: every acked write (before the crash, and since) is in the reopened
  // node's state machine, and in every other member's.
  expect(ackedAtCrash.size).toBeLessThanOrEqual(writers.acked.size);
  for (const m of c.members) {
    for (const [k, index] of writers.acked) {
      expect(m.sm.data.get(k), `node ${m.id} has ${k} (acked at ${index})`).toBe(k);
      const e = entryAt(m.storage, index);
      if (e) expect(dec.decode(entryPayload(e))).toBe(JSON.stringify({ k, v: k }));
    }
  }
  // The restarted node's state machine went through the same history as before the crash.
  const replay = new Map(back.sm.history.map((h) => [h.index, h]));
  for (const h of appliedBefore) {
    const r = replay.get(h.index);
    if (r) expect(r).toEqual(h);
    else
      expect(h.index, `entry ${h.index} not replayed: it must be in the restored snapshot`).toBeLessThanOrEqual(
        back.storage.mem.snapshot().metadata.index,
      );
  }
  // All members agree on the committed log and the state.
  const commit = Math.min(...c.members.map((m) => m.storage.mem.hardState.commit));
  const from = Math.max(...c.members.map((m) => m.storage.mem.firstIndex()));
  for (let i = from; i <= commit; i++) {
    const recs = c.members.map((m) => rec(entryAt(m.storage, i)!));
    for (const r of recs) expect(r).toEqual(recs[0]);
  }
  const states = c.members.map((m) => JSON.stringify([...m.sm.data].sort()));
  for (const s of states) expect(s).toBe(states[0]);
  expect(c.violations).toEqual([]);
}

describe("crash at any point of the loop (in process)", () => {
  beforeEach(async () => {
    root = await mkdtemp(join(tmpdir(), "shoal-raft-crash-"));
  });

  afterEach(async () => {
    await cluster?.close();
    cluster = undefined;
    await rm(root, { recursive: true, force: true });
  });

  afterAll(() => {
    console.log(summary.join("\n"));
  });

  for (const role of ["single", "leader", "follower"] as Role[]) {
    describe(role === "single" ? "single-node cluster" : `3-node cluster, ${role} crashes`, () => {
      for (const point of POINTS) {
        for (const { n, snap } of NTHS) {
          it(`${point}, Ready ${n}${snap ? ", with snapshots" : ""}`, async () => {
            await crashAndRecover(role, point, n, snap);
          });
        }
      }
    });
  }
});

// ---------------------------------------------------------------------------------------------------
// Regression: proposals after a restart.
//
// RaftNode tags each proposal with a run id and a sequence number and resolves its pending proposal when it
// applies an entry carrying that tag. The tags once restarted at 1 with the process, so re-applying the
// previous run's committed log on start (or applying an old uncommitted entry that a leader commits later)
// resolved a new proposal with an old entry's index: the write was acknowledged though it was not yet in the
// log, and a crash before it was persisted lost an acknowledged write. The run id is now random per start.

/** A KV machine whose apply takes a millisecond, like one that writes to a store. */
class SlowKV extends KVMachine {
  override async apply(payload: Uint8Array, index: number): Promise<void> {
    await sleep(1);
    super.apply(payload, index);
  }
}

async function singleNode(
  dir: string,
  sm: KVMachine,
  crashAt?: (point: CrashPoint, rd: Ready) => boolean,
): Promise<{ storage: LevelStorage; node: RaftNode }> {
  const storage = await LevelStorage.open(dir, { dek: TEST_DEK });
  if (storage.mem.lastIndex() === 0) {
    const b = bootstrapSnapshot([1]);
    await storage.save({ snapshot: b.snapshot, hardState: b.hardState, entries: [] }, true);
  }
  const node = await RaftNode.start({
    id: 1,
    storage,
    stateMachine: sm,
    transport: { send: () => {} },
    tickMs: 3_600_000,
    ...(crashAt ? { crashAt } : {}),
  });
  return { storage, node };
}

describe("proposals after a restart", () => {
  const open: { storage: LevelStorage; node: RaftNode }[] = [];
  let dir: string;

  beforeEach(async () => {
    root = await mkdtemp(join(tmpdir(), "shoal-raft-crash-"));
    dir = join(root, "n1");
  });

  afterEach(async () => {
    for (const x of open.splice(0)) {
      await x.node.stop().catch(() => {});
      await x.storage.close().catch(() => {});
    }
    await rm(root, { recursive: true, force: true });
  });

  async function firstIncarnation(writes: number): Promise<void> {
    const first = await singleNode(dir, new KVMachine());
    open.push(first);
    first.node.campaign();
    for (let i = 0; i < writes; i++) await first.node.propose(KVMachine.put(`old-${i}`, `old-${i}`));
    await first.node.stop();
    await first.storage.close();
  }

  // The previous run's entries are re-applied on start before the fresh entry: none of them may resolve it.
  it("a proposal made right after a restart is acknowledged with its own entry's index", async () => {
    await firstIncarnation(5);
    const second = await singleNode(dir, new KVMachine());
    open.push(second);
    second.node.campaign();
    const index = await second.node.propose(KVMachine.put("fresh", "fresh"));
    const e = entryAt(second.storage, index);
    expect(e && dec.decode(entryPayload(e))).toBe(JSON.stringify({ k: "fresh", v: "fresh" }));
  });

  // Proposals made while the restarted node re-applies its log must not be acknowledged by old entries;
  // the node dies before persisting them, and nothing acknowledged may be missing after reopening.
  it("a write acknowledged after a restart survives a crash", async () => {
    await firstIncarnation(20);
    const sm = new SlowKV();
    const second = await singleNode(dir, sm, (point, rd) => {
      // Die before persisting the Ready that carries the new writes.
      return (
        point === "beforePersist" &&
        rd.entries.some((e) => {
          const p = entryPayload(e);
          return p !== undefined && dec.decode(p).includes('"new-');
        })
      );
    });
    open.push(second);
    second.node.campaign();
    await waitFor("the replay to start", () => sm.applied.length > 0);
    const acked: string[] = [];
    const proposals = Array.from({ length: 20 }, (_, i) =>
      second.node.propose(KVMachine.put(`new-${i}`, `new-${i}`)).then(
        () => acked.push(`new-${i}`),
        () => undefined,
      ),
    );
    await Promise.all(proposals);
    expect(second.node.fatal).toBeInstanceOf(SimulatedCrash);
    await second.node.stop();
    await second.storage.close();

    const kv = new KVMachine();
    const third = await singleNode(dir, kv);
    open.push(third);
    await waitFor("the replay", () => third.node.appliedIndex >= third.storage.mem.hardState.commit);
    const lost = acked.filter((k) => kv.data.get(k) !== k);
    expect(lost, `${acked.length} writes acknowledged, ${lost.length} of them lost after the crash`).toEqual([]);
  });
});

// ---------------------------------------------------------------------------------------------------
// kill -9

const repo = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const childJs = join(repo, "dist/test/unit/crash-child.js");
const children = new Set<ChildProcess>();
let killRoot: string | undefined;

process.once("exit", () => killChildren());

function killChildren(): void {
  for (const ch of children) {
    if (ch.exitCode === null && ch.signalCode === null) ch.kill("SIGKILL");
  }
  children.clear();
}

describe("kill -9 of a process writing as fast as it can", () => {
  beforeAll(async () => {
    const out = await new Promise<{ code: number; text: string }>((res) => {
      execFile("npm", ["run", "build", "--silent"], { cwd: repo, timeout: 120_000 }, (err, stdout, stderr) =>
        res({ code: err ? ((err as { code?: number }).code ?? 1) : 0, text: `${stdout}${stderr}` }),
      );
    });
    // tsc emits even when some other file of the tree does not type-check (other work in progress): the
    // child is usable as long as its JS, and that of everything it runs, is at least as new as the source.
    const stale = [
      "test/unit/crash-child.ts",
      "test/unit/kv-machine.ts",
      "test/unit/test-dek.ts",
      ...readdirSync(join(repo, "src/raft"))
        .filter((f) => f.endsWith(".ts"))
        .map((f) => `src/raft/${f}`),
    ].filter((ts) => {
      const js = join(repo, "dist", ts.replace(/\.ts$/, ".js"));
      return !existsSync(js) || statSync(js).mtimeMs < statSync(join(repo, ts)).mtimeMs;
    });
    if (stale.length > 0) {
      throw new Error(`the build left no up-to-date JS for ${stale.join(", ")} (exit ${out.code}):\n${out.text}`);
    }
    if (out.code !== 0) console.warn(`npm run build exited ${out.code}, continuing with the emitted JS:\n${out.text}`);
    killRoot = await mkdtemp(join(tmpdir(), "shoal-raft-kill9-"));
  }, 120_000);

  afterEach(() => {
    killChildren();
  });

  afterAll(async () => {
    killChildren();
    if (killRoot) await rm(killRoot, { recursive: true, force: true });
  });

  it("every acknowledged write survives SIGKILL, across repeated kills of the same directory", async () => {
    const dir = join(killRoot!, "data");
    /** value -> index, over all rounds. */
    const acked = new Map<string, number>();
    let maxAcked = 0;
    const rounds: string[] = [];
    // Rounds 0 and 3 snapshot and compact often (so kills land around snapshot writes too); round 5 is killed
    // right after spawn, during open/recovery.
    const plan = [
      { snap: 50, keep: 10 },
      { snap: 10_000, keep: 500 },
      { snap: 10_000, keep: 500 },
      { snap: 37, keep: 5 },
      { snap: 10_000, keep: 500 },
      { snap: 10_000, keep: 500, early: true },
    ];
    for (let round = 0; round < plan.length; round++) {
      const p = plan[round]!;
      const ch = spawn(process.execPath, [childJs, dir, `r${round}`, String(p.snap), String(p.keep)], {
        cwd: repo,
        stdio: ["ignore", "pipe", "pipe"],
      });
      children.add(ch);
      const exited = new Promise<void>((r) => ch.once("exit", () => r()));
      let buf = "";
      let stderr = "";
      let ready = false;
      let roundAcks = 0;
      let firstAck = false;
      ch.stdout!.setEncoding("utf8");
      ch.stdout!.on("data", (s: string) => {
        buf += s;
        let nl = buf.indexOf("\n");
        while (nl >= 0) {
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          nl = buf.indexOf("\n");
          const parts = line.split(" ");
          if (parts[0] === "ready") ready = true;
          if (parts[0] === "acked" && parts.length === 3) {
            const index = Number(parts[1]);
            acked.set(parts[2]!, index);
            maxAcked = Math.max(maxAcked, index);
            roundAcks++;
            firstAck = true;
          }
        }
      });
      ch.stderr!.setEncoding("utf8");
      ch.stderr!.on("data", (s: string) => {
        stderr += s;
      });

      const delay = p.early ? 20 + Math.floor(Math.random() * 60) : 100 + Math.floor(Math.random() * 500);
      if (!p.early)
        await waitFor(`round ${round}: the child's first ack`, () => firstAck || ch.exitCode !== null, 10_000);
      expect(ch.exitCode, `the child died on its own: ${stderr}`).toBeNull();
      await sleep(delay);
      ch.kill("SIGKILL");
      await exited;
      children.delete(ch);
      expect(ch.signalCode).toBe("SIGKILL");
      expect(stderr).toBe("");

      // Reopen: no corruption after kill -9, and every acked write is there.
      const s = await LevelStorage.open(dir, { dek: TEST_DEK });
      try {
        const mem = s.mem;
        const snap = mem.snapshot();
        const snapState = new Map<string, string>(snap.data.length ? JSON.parse(dec.decode(snap.data)) : []);
        expect(mem.hardState.commit).toBeGreaterThanOrEqual(maxAcked);
        for (const [v, index] of acked) {
          const e = entryAt(s, index);
          if (e) {
            expect(dec.decode(entryPayload(e)), `entry ${index}`).toBe(JSON.stringify({ k: v, v }));
          } else {
            expect(index, `entry ${index} (${v}) is neither in the log nor under the snapshot`).toBeLessThanOrEqual(
              snap.metadata.index,
            );
            expect(snapState.get(v), `${v} (index ${index}) in the snapshot`).toBe(v);
          }
        }
        // The state machine rebuilt from the directory (snapshot + committed entries) holds every acked write.
        // No ticks and the default snapshot interval: nothing is written to the directory.
        const sm = new KVMachine();
        const node = await RaftNode.start({
          id: 1,
          storage: s,
          stateMachine: sm,
          transport: { send: () => {} },
          tickMs: 3_600_000,
        });
        try {
          await waitFor("the committed log to be applied", () => node.appliedIndex >= mem.hardState.commit, 10_000);
          for (const v of acked.keys()) expect(sm.data.get(v), v).toBe(v);
        } finally {
          await node.stop();
        }
        rounds.push(
          `round ${round}: killed ${delay} ms after ${p.early ? "spawn" : "the first ack"}${ready ? "" : " (before it was ready)"}, ` +
            `${roundAcks} acks this round, ${acked.size} in all; log [${mem.firstIndex()}, ${mem.lastIndex()}], ` +
            `commit ${mem.hardState.commit}, snapshot ${snap.metadata.index}`,
        );
      } finally {
        await s.close();
      }
    }
    console.log(rounds.join("\n"));
    expect(acked.size).toBeGreaterThan(100);
  }, 60_000);
});
