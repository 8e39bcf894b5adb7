// A narrated demo of shoal's Raft: three managers in one process, each with its own data directory
// (level, fsync on), connected by the in-process LocalHub (every message encoded as on the wire).
// It elects a leader, replicates writes, loses the leader, elects another, keeps accepting writes, and
// brings the lost node back from its data directory. Real timings: 100 ms ticks, 1-2 s election timeout.
//
//   npm run demo
//
// Exits 0 when every step checked out, 1 (with the reason) otherwise. The data directories live under one
// temp directory that is removed at the end either way.

import { randomBytes } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { entryPayload } from "../src/raft/frame.js";
import { DEK_BYTES, LevelStorage } from "../src/raft/level-storage.js";
import { LocalHub } from "../src/raft/local-transport.js";
import { RaftNode, type StateMachine } from "../src/raft/node.js";
import { bootstrapSnapshot } from "../src/raft/rawnode.js";
import { type NodeId, type SoftState, StateType } from "../src/raft/types.js";

const TICK_MS = 100;
const IDS: NodeId[] = [1, 2, 3];
/** The whole demo must finish within this (it normally takes 5-10 s). */
const DEMO_DEADLINE_MS = 40_000;
const ELECTION_TIMEOUT_MS = 10_000;
const CATCH_UP_TIMEOUT_MS = 10_000;

const enc = new TextEncoder();
const dec = new TextDecoder();

/** A tiny key-value store: the replicated state machine of the demo. */
class KV implements StateMachine {
  data = new Map<string, string>();
  appliedIndex = 0;
  apply(payload: Uint8Array, index: number): void {
    const { k, v } = JSON.parse(dec.decode(payload)) as { k: string; v: string };
    this.data.set(k, v);
    this.appliedIndex = index;
  }
  snapshot(): Uint8Array {
    return enc.encode(JSON.stringify([...this.data]));
  }
  restore(data: Uint8Array, index: number): void {
    this.data = data.length === 0 ? new Map() : new Map(JSON.parse(dec.decode(data)) as [string, string][]);
    this.appliedIndex = index;
  }
}

const put = (k: string, v: string): Uint8Array => enc.encode(JSON.stringify({ k, v }));

interface Member {
  id: NodeId;
  dir: string;
  storage: LevelStorage;
  kv: KV;
  node: RaftNode;
  alive: boolean;
}

class DemoError extends Error {}

const t0 = performance.now();
const sec = (ms: number): string => `${(ms / 1000).toFixed(2)} s`;
const stamp = (): string => `[${((performance.now() - t0) / 1000).toFixed(2).padStart(6)} s]`;
const say = (msg: string): void => console.log(`${stamp()} ${msg}`);
const detail = (msg: string): void => console.log(`           ${msg}`);
let stepNo = 0;
const step = (title: string): void => console.log(`\n── Step ${++stepNo}: ${title}`);

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

const root = await mkdtemp(join(tmpdir(), "shoal-demo-"));
const hub = new LocalHub();
const members = new Map<NodeId, Member>();
/** Each node's data encryption key (its log is encrypted at rest, as on a manager), kept for a restart. */
const deks = new Map<NodeId, Uint8Array>();

function roleName(m: Member): string {
  if (!m.alive) return "stopped";
  switch (m.node.rawNode.raft.state) {
    case StateType.Leader:
      return "leader";
    case StateType.Candidate:
      return "candidate";
    case StateType.PreCandidate:
      return "pre-candidate";
    default:
      return "follower";
  }
}

function describeCluster(): string {
  return [...members.values()]
    .map((m) => {
      if (!m.alive) return `node ${m.id}: stopped`;
      const s = m.node.status();
      return `node ${m.id}: ${roleName(m)} term ${s.term} lead ${s.lead || "none"} commit ${s.commit} applied ${m.kv.appliedIndex}`;
    })
    .join("; ");
}

async function waitFor<T>(what: string, f: () => T | undefined | false, ms: number): Promise<T> {
  const deadline = performance.now() + ms;
  for (;;) {
    const v = f();
    if (v) return v;
    if (performance.now() > deadline) {
      throw new DemoError(`timed out after ${sec(ms)} waiting for ${what} (${describeCluster()})`);
    }
    await sleep(5);
  }
}

/** Opens (or reopens) node `id`'s data directory and starts it. `bootstrap`: write the initial membership. */
async function startMember(id: NodeId, bootstrap: boolean): Promise<Member> {
  const dir = join(root, `node-${id}`);
  let dek = deks.get(id);
  if (dek === undefined) {
    dek = randomBytes(DEK_BYTES);
    deks.set(id, dek);
  }
  const storage = await LevelStorage.open(dir, { dek });
  try {
    if (bootstrap) {
      if (storage.mem.lastIndex() !== 0) throw new DemoError(`${dir} is not empty; refusing to bootstrap over it`);
      const b = bootstrapSnapshot(IDS);
      await storage.save({ snapshot: b.snapshot, hardState: b.hardState, entries: [] }, true);
    }
    const kv = new KV();
    const m: Member = { id, dir, storage, kv, node: undefined as unknown as RaftNode, alive: true };
    m.node = await RaftNode.start({
      id,
      storage,
      stateMachine: kv,
      transport: hub.transport(id),
      tickMs: TICK_MS,
      onSoftState: (ss: SoftState) => onSoftState(id, ss),
    });
    hub.register(m.node);
    members.set(id, m);
    return m;
  } catch (e) {
    await storage.close().catch(() => undefined);
    throw e;
  }
}

/** Who became leader, and when (from the nodes' own state changes). */
const leaderEvents: { at: number; id: NodeId; term: number }[] = [];
function onSoftState(id: NodeId, ss: SoftState): void {
  if (ss.state === StateType.Leader) {
    const term = members.get(id)?.node.status().term ?? 0;
    leaderEvents.push({ at: performance.now(), id, term });
  }
}

async function kill(m: Member): Promise<void> {
  m.alive = false;
  hub.unregister(m.id);
  await m.node.stop();
  await m.storage.close();
}

function currentLeader(exclude?: NodeId): Member | undefined {
  return [...members.values()].find((m) => m.alive && m.id !== exclude && m.node.isLeader && !m.node.fatal);
}

async function write(leader: Member, k: string, v: string): Promise<{ index: number; ms: number }> {
  const start = performance.now();
  const index = await leader.node.propose(put(k, v));
  return { index, ms: performance.now() - start };
}

/** The key-value entries of a node's log on disk (what LevelStorage loaded/saved), in index order. */
function logOf(m: Member): string[] {
  const mem = m.storage.mem;
  const out: string[] = [];
  const ents = mem.entries(mem.firstIndex(), mem.lastIndex() + 1, Number.MAX_SAFE_INTEGER);
  for (const e of ents) {
    const p = entryPayload(e);
    if (p === undefined || p.length === 0) continue;
    const { k, v } = JSON.parse(dec.decode(p)) as { k: string; v: string };
    out.push(`${e.index}@${e.term} ${k}=${v}`);
  }
  return out;
}

function table(): void {
  console.log(
    `           ${"node".padEnd(6)}${"role".padEnd(10)}${"term".padEnd(6)}${"commit".padEnd(8)}${"applied".padEnd(9)}keys`,
  );
  for (const m of members.values()) {
    if (!m.alive) {
      console.log(`           ${String(m.id).padEnd(6)}stopped`);
      continue;
    }
    const s = m.node.status();
    const keys = [...m.kv.data.keys()].join(" ");
    console.log(
      `           ${String(m.id).padEnd(6)}${roleName(m).padEnd(10)}${String(s.term).padEnd(6)}${String(s.commit).padEnd(8)}${String(m.kv.appliedIndex).padEnd(9)}${keys}`,
    );
  }
}

async function demo(): Promise<void> {
  console.log("shoal Raft demo: 3 managers, real storage (level, fsync on), 100 ms ticks, in one process");
  console.log(`data directories under ${root}`);

  // ------------------------------------------------------------------------------------------------
  step("bootstrap a 3-node cluster");
  for (const id of IDS) {
    const m = await startMember(id, true);
    detail(`node ${id}: data dir ${m.dir}, members {${IDS.join(", ")}}, term ${m.node.status().term}`);
  }
  const started = performance.now();
  say("all 3 nodes started as followers; no leader yet. Waiting for an election timeout (1-2 s)...");

  // ------------------------------------------------------------------------------------------------
  step("elect a leader");
  const leader1 = await waitFor("the first leader to be elected", () => currentLeader(), ELECTION_TIMEOUT_MS);
  const ev1 = leaderEvents.find((e) => e.id === leader1.id) ?? {
    at: performance.now(),
    term: leader1.node.status().term,
  };
  const term1 = leader1.node.status().term;
  say(`node ${leader1.id} is the leader, term ${term1}, elected ${sec(ev1.at - started)} after start`);
  await waitFor(
    "the followers to recognise the leader",
    () => [...members.values()].every((m) => m.node.leader === leader1.id),
    ELECTION_TIMEOUT_MS,
  );
  detail(
    `followers: ${[...members.values()]
      .filter((m) => m !== leader1)
      .map((m) => `node ${m.id}`)
      .join(", ")} follow node ${leader1.id}`,
  );

  // ------------------------------------------------------------------------------------------------
  step(`write 5 entries through the leader (node ${leader1.id})`);
  const written: string[] = [];
  for (let i = 1; i <= 5; i++) {
    const k = `key-${i}`;
    const v = `written-to-node-${leader1.id}-in-term-${term1}`;
    const { index, ms } = await write(leader1, k, v);
    written.push(k);
    say(`${k} committed at log index ${index} in ${ms.toFixed(2)} ms (replicated to a quorum, fsync'd, applied)`);
  }
  await waitFor(
    "all 3 nodes to apply the 5 entries",
    () => [...members.values()].every((m) => written.every((k) => m.kv.data.has(k))),
    CATCH_UP_TIMEOUT_MS,
  );
  say("all 3 nodes have applied all 5 entries:");
  table();

  // ------------------------------------------------------------------------------------------------
  step(`kill the leader (node ${leader1.id})`);
  const killedAt = performance.now();
  await kill(leader1);
  say(`node ${leader1.id} stopped, its storage closed and it is cut off from the others`);
  detail("the survivors notice when they stop hearing heartbeats (election timeout 1-2 s), then vote");

  // ------------------------------------------------------------------------------------------------
  step("re-election");
  const leader2 = await waitFor(
    "a new leader among the survivors",
    () => currentLeader(leader1.id),
    ELECTION_TIMEOUT_MS,
  );
  const term2 = leader2.node.status().term;
  const ev2 = [...leaderEvents].reverse().find((e) => e.id === leader2.id) ?? { at: performance.now() };
  if (term2 <= term1) throw new DemoError(`the new leader's term ${term2} is not above the old term ${term1}`);
  say(`node ${leader2.id} is the new leader, term ${term2} (was ${term1}), ${sec(ev2.at - killedAt)} after the kill`);
  const firstAfter = await write(leader2, "key-6", `written-to-node-${leader2.id}-in-term-${term2}`);
  written.push("key-6");
  const failoverMs = performance.now() - killedAt;
  say(
    `key-6 committed at log index ${firstAfter.index} in ${firstAfter.ms.toFixed(2)} ms: ` +
      `${sec(failoverMs)} from the kill to the next committed write`,
  );

  // ------------------------------------------------------------------------------------------------
  step(`write more entries through node ${leader2.id} (2 of 3 nodes up: still a quorum)`);
  for (let i = 7; i <= 10; i++) {
    const k = `key-${i}`;
    const { index, ms } = await write(leader2, k, `written-to-node-${leader2.id}-in-term-${term2}`);
    written.push(k);
    say(`${k} committed at log index ${index} in ${ms.toFixed(2)} ms`);
  }
  await waitFor(
    "both survivors to apply every entry",
    () => [...members.values()].filter((m) => m.alive).every((m) => written.every((k) => m.kv.data.has(k))),
    CATCH_UP_TIMEOUT_MS,
  );
  table();

  // ------------------------------------------------------------------------------------------------
  step(`restart node ${leader1.id} from its data directory`);
  const restartAt = performance.now();
  const back = await startMember(leader1.id, false);
  const hs = back.storage.mem.hardState;
  say(
    `node ${back.id} reopened ${back.dir}: term ${hs.term}, commit ${hs.commit}, ` +
      `log ends at index ${back.storage.mem.lastIndex()} (${logOf(back).length} key-value entries on disk)`,
  );
  const leaderNow = await waitFor("a leader", () => currentLeader(), ELECTION_TIMEOUT_MS);
  const target = leaderNow.storage.mem.lastIndex();
  await waitFor(
    `node ${back.id} to catch up to index ${target}`,
    () =>
      back.node.leader === leaderNow.id && back.kv.appliedIndex >= target && written.every((k) => back.kv.data.has(k)),
    CATCH_UP_TIMEOUT_MS,
  );
  const rejoinMs = performance.now() - restartAt;
  if (back.node.isLeader) throw new DemoError(`node ${back.id} took over leadership on rejoin`);
  if (leaderNow.id !== leader2.id || leaderNow.node.status().term !== term2) {
    throw new DemoError(
      `the rejoin disturbed the leader: now node ${leaderNow.id}, term ${leaderNow.node.status().term}`,
    );
  }
  say(
    `node ${back.id} rejoined as a follower of node ${leaderNow.id} (term ${term2} undisturbed) and caught up ` +
      `to index ${target} in ${sec(rejoinMs)}`,
  );
  detail(
    `it re-applied entries up to ${hs.commit} from its own disk and received ${hs.commit + 1}-${target} from node ${leaderNow.id}`,
  );
  table();

  // ------------------------------------------------------------------------------------------------
  step("check the full log on every node");
  const reference = logOf(leaderNow);
  const expectedKeys = written;
  const keysInLog = reference.map((l) => l.split(" ")[1]!.split("=")[0]!);
  if (keysInLog.join(",") !== expectedKeys.join(",")) {
    throw new DemoError(`the leader's log holds ${keysInLog.join(",")}, expected ${expectedKeys.join(",")}`);
  }
  for (const m of members.values()) {
    const log = logOf(m);
    if (log.join("\n") !== reference.join("\n")) {
      throw new DemoError(
        `node ${m.id}'s log differs from the leader's:\n  node ${m.id}: ${log.join(", ")}\n  leader: ${reference.join(", ")}`,
      );
    }
    for (const k of expectedKeys) {
      const want = reference.find((l) => l.includes(` ${k}=`))!.split("=")[1];
      if (m.kv.data.get(k) !== want) throw new DemoError(`node ${m.id} has ${k}=${m.kv.data.get(k)}, expected ${want}`);
    }
  }
  say(`all 3 nodes hold the same ${reference.length} key-value entries on disk (index@term key=value):`);
  for (const l of reference) detail(l);
  const mem = leaderNow.storage.mem;
  const gaps: number[] = [];
  const kvIdx = new Set(reference.map((l) => Number(l.split("@")[0])));
  for (let i = mem.firstIndex(); i <= mem.lastIndex(); i++) if (!kvIdx.has(i)) gaps.push(i);
  if (gaps.length > 0) {
    detail(`(index ${gaps.join(" and ")}: the empty entry each new leader appends when it takes office)`);
  }

  // ------------------------------------------------------------------------------------------------
  console.log("\n── Summary");
  detail(`first election:         node ${leader1.id} in term ${term1}, ${sec(ev1.at - started)} after start`);
  detail(`leader killed:          node ${leader1.id}`);
  detail(`re-election:            node ${leader2.id} in term ${term2}, ${sec(ev2.at - killedAt)} after the kill`);
  detail(`kill → next commit:     ${sec(failoverMs)}`);
  detail(`restart → caught up:    node ${back.id} in ${sec(rejoinMs)}, as a follower`);
  detail(`log:                    ${reference.length} entries written, identical on all 3 nodes`);
  detail(`total time:             ${sec(performance.now() - t0)}`);
}

async function cleanup(): Promise<void> {
  for (const m of members.values()) {
    hub.unregister(m.id);
    if (m.alive) {
      m.alive = false;
      await m.node.stop().catch(() => undefined);
      await m.storage.close().catch(() => undefined);
    }
  }
  await rm(root, { recursive: true, force: true });
}

let code = 0;
const watchdog = setTimeout(() => {
  console.error(`\nDEMO FAILED: did not finish within ${sec(DEMO_DEADLINE_MS)} (${describeCluster()})`);
  void cleanup().finally(() => process.exit(1));
}, DEMO_DEADLINE_MS);
watchdog.unref();
try {
  await demo();
  console.log("\nDemo finished: every step checked out.");
} catch (e) {
  code = 1;
  console.error(
    `\nDEMO FAILED: ${e instanceof DemoError ? e.message : e instanceof Error ? (e.stack ?? e.message) : String(e)}`,
  );
} finally {
  clearTimeout(watchdog);
  await cleanup().then(
    () => console.log(`removed ${root}`),
    (e: unknown) => {
      code = 1;
      console.error(`cleanup failed: ${e instanceof Error ? e.message : String(e)} (remove ${root} by hand)`);
    },
  );
}
process.exitCode = code;
// Everything is stopped; don't let a stray handle keep the process alive.
setTimeout(() => process.exit(code), 2000).unref();
