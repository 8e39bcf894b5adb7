// Raft commit benchmark: throughput and commit latency of the driver over real level storage.
//
//   npm run bench:raft                 # 3 s per cell
//   npm run bench:raft -- --quick      # 1 s per cell
//   npm run bench:raft -- --seconds 5 --nodes 3 --proposers 1,256
//   npm run bench:raft -- --quick --clear   # the log in clear, to see what encryption costs
//
// For each cell (cluster size × concurrent proposers) a fresh cluster is bootstrapped in a temp dir, every
// node on its own LevelStorage (fsync on, log encrypted with its own DEK, as in production), connected
// through the in-process LocalHub (each message is encoded and decoded as on the wire, delivered on a
// later turn of the event loop).
// Node 1 campaigns at once and every proposal goes to it. Each proposer loops: propose a 256-byte entry,
// await its promise (committed by a quorum and applied on the leader), repeat. Latency is measured from the
// propose() call to the promise resolving; throughput is the number of proposals that resolved inside the
// measurement window divided by its length. Nodes run with the driver's defaults (100 ms ticks, a snapshot
// every 10,000 applied entries with log compaction), so a cell that commits more than ~10,000 entries includes
// a snapshot + compaction on every node at about the same moment; that is what sets p99 in the busy cells.
//
// Caveat: the whole cluster (every node's Raft core, codec, storage calls and the state machines) runs in
// ONE Node.js process, so the followers' work competes with the leader's for the same event loop, and
// libuv's thread pool (level's writes and fsyncs) shares the machine's CPUs with it. On a 2-core machine
// the 3- and 5-node numbers are a lower bound on what one manager per host would do; a real deployment
// also pays gRPC + TLS + network round trips, which this leaves out.

import { randomBytes } from "node:crypto";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { cpus, tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { performance } from "node:perf_hooks";
import { DEK_BYTES, LevelStorage } from "../../src/raft/level-storage.js";
import { LocalHub } from "../../src/raft/local-transport.js";
import { RaftNode, type StateMachine } from "../../src/raft/node.js";
import { SeededRand } from "../../src/raft/rand.js";
import { bootstrapSnapshot } from "../../src/raft/rawnode.js";
import type { NodeId } from "../../src/raft/types.js";

const PAYLOAD_BYTES = 256;
const TICK_MS = 100;

/** A state machine that only counts: the benchmark measures Raft and storage, not an application. */
class CountingMachine implements StateMachine {
  applied = 0;
  bytes = 0;
  apply(data: Uint8Array): void {
    this.applied++;
    this.bytes += data.length;
  }
  snapshot(): Uint8Array {
    const b = new Uint8Array(16);
    const dv = new DataView(b.buffer);
    dv.setFloat64(0, this.applied);
    dv.setFloat64(8, this.bytes);
    return b;
  }
  restore(data: Uint8Array): void {
    if (data.length < 16) {
      this.applied = 0;
      this.bytes = 0;
      return;
    }
    const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
    this.applied = dv.getFloat64(0);
    this.bytes = dv.getFloat64(8);
  }
}

interface Options {
  seconds: number;
  warmupSeconds: number;
  nodes: number[];
  proposers: number[];
  out: string;
  /** Write the log in clear instead of encrypted with a DEK (as managers do): to measure what it costs. */
  clear: boolean;
}

interface CellResult {
  nodes: number;
  proposers: number;
  seconds: number;
  committed: number;
  entriesPerSec: number;
  p50Ms: number;
  p90Ms: number;
  p99Ms: number;
  maxMs: number;
  meanMs: number;
  errors: number;
  /** Did node 1 stay the leader for the whole cell? */
  leaderStable: boolean;
  firstError?: string;
}

function usage(): never {
  console.error(
    "usage: node dist/test/bench/raft.js [--seconds N] [--quick] [--warmup S] [--nodes 1,3,5] [--proposers 1,16,256] [--out FILE] [--clear]",
  );
  process.exit(2);
}

function parseList(v: string | undefined): number[] {
  if (!v) usage();
  const xs = v.split(",").map((s) => Number(s.trim()));
  if (xs.length === 0 || xs.some((x) => !Number.isInteger(x) || x < 1)) usage();
  return xs;
}

function parseArgs(argv: string[]): Options {
  const o: Options = {
    seconds: 3,
    warmupSeconds: 1,
    nodes: [1, 3, 5],
    proposers: [1, 16, 256],
    out: join("bench-results", "raft.json"),
    clear: false,
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const num = (): number => {
      const n = Number(argv[++i]);
      if (!Number.isFinite(n) || n <= 0) usage();
      return n;
    };
    if (a === "--seconds") o.seconds = num();
    else if (a === "--quick") o.seconds = 1;
    else if (a === "--warmup") o.warmupSeconds = num();
    else if (a === "--nodes") o.nodes = parseList(argv[++i]);
    else if (a === "--proposers") o.proposers = parseList(argv[++i]);
    else if (a === "--out") o.out = argv[++i] ?? usage();
    else if (a === "--clear") o.clear = true;
    else if (a === "--help" || a === "-h") usage();
    else usage();
  }
  return o;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

async function waitFor(what: string, f: () => boolean, ms: number): Promise<void> {
  const deadline = performance.now() + ms;
  while (!f()) {
    if (performance.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(2);
  }
}

/** Nearest-rank percentile of an ascending array. */
function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length - 1, Math.max(0, rank - 1))]!;
}

interface Member {
  id: NodeId;
  storage: LevelStorage;
  node?: RaftNode;
}

async function runCell(n: number, proposers: number, opts: Options): Promise<CellResult> {
  const root = await mkdtemp(join(tmpdir(), `shoal-bench-raft-${n}n-${proposers}p-`));
  const hub = new LocalHub();
  const members: Member[] = [];
  const voters = Array.from({ length: n }, (_, i) => i + 1);
  let stopProposers = true;
  const loops: Promise<void>[] = [];
  try {
    for (const id of voters) {
      const storage = await LevelStorage.open(join(root, `n${id}`), opts.clear ? {} : { dek: randomBytes(DEK_BYTES) });
      const m: Member = { id, storage };
      members.push(m);
      const b = bootstrapSnapshot(voters);
      await storage.save({ snapshot: b.snapshot, hardState: b.hardState, entries: [] }, true);
      m.node = await RaftNode.start({
        id,
        storage,
        stateMachine: new CountingMachine(),
        transport: hub.transport(id),
        tickMs: TICK_MS,
        rand: new SeededRand(id * 7919 + n),
      });
      hub.register(m.node);
    }
    const leader = members[0]!.node!;
    leader.campaign();
    await waitFor("node 1 to become the leader", () => leader.isLeader, 10_000);
    const leaderTerm = leader.status().term;

    const payload = new Uint8Array(PAYLOAD_BYTES);
    for (let i = 0; i < payload.length; i++) payload[i] = (i * 31 + 7) & 0xff;

    // Closed loop: each proposer keeps exactly one proposal outstanding.
    let lat = new Float64Array(1 << 16);
    let nLat = 0;
    let measuring = false;
    let windowStart = 0;
    let windowEnd = Number.POSITIVE_INFINITY;
    let errors = 0;
    let firstError: string | undefined;
    stopProposers = false;
    const proposer = async (): Promise<void> => {
      while (!stopProposers) {
        const t0 = performance.now();
        try {
          await leader.propose(payload);
        } catch (e) {
          if (stopProposers) return;
          errors++;
          firstError ??= e instanceof Error ? e.message : String(e);
          await sleep(10);
          continue;
        }
        const t1 = performance.now();
        if (measuring && t1 >= windowStart && t1 <= windowEnd) {
          if (nLat === lat.length) {
            const bigger = new Float64Array(lat.length * 2);
            bigger.set(lat);
            lat = bigger;
          }
          lat[nLat++] = t1 - t0;
        }
      }
    };
    for (let i = 0; i < proposers; i++) loops.push(proposer());

    await sleep(opts.warmupSeconds * 1000);
    errors = 0;
    firstError = undefined;
    windowStart = performance.now();
    measuring = true;
    await sleep(opts.seconds * 1000);
    windowEnd = performance.now();
    measuring = false;
    stopProposers = true;
    await Promise.all(loops);

    const sorted = lat.subarray(0, nLat).sort();
    let sum = 0;
    for (const x of sorted) sum += x;
    const seconds = (windowEnd - windowStart) / 1000;
    const leaderStable = leader.isLeader && leader.status().term === leaderTerm && !leader.fatal;
    return {
      nodes: n,
      proposers,
      seconds,
      committed: nLat,
      entriesPerSec: nLat / seconds,
      p50Ms: percentile(sorted, 50),
      p90Ms: percentile(sorted, 90),
      p99Ms: percentile(sorted, 99),
      maxMs: nLat > 0 ? sorted[nLat - 1]! : Number.NaN,
      meanMs: nLat > 0 ? sum / nLat : Number.NaN,
      errors,
      leaderStable,
      ...(firstError !== undefined ? { firstError } : {}),
    };
  } finally {
    stopProposers = true;
    await Promise.allSettled(loops);
    for (const m of members) {
      hub.unregister(m.id);
      await m.node?.stop().catch(() => undefined);
      await m.storage.close().catch(() => undefined);
    }
    await rm(root, { recursive: true, force: true });
  }
}

const fmt = (x: number, digits: number) => (Number.isFinite(x) ? x.toFixed(digits) : "-");

function row(cols: string[]): string {
  const widths = [7, 11, 11, 8, 8];
  return cols.map((c, i) => (i < widths.length - 1 ? c.padEnd(widths[i]!) : c)).join("");
}

async function main(): Promise<void> {
  const opts = parseArgs(process.argv.slice(2));
  const cpuList = cpus();
  console.log(
    `raft commit benchmark: ${PAYLOAD_BYTES}-byte entries, level storage with fsync, ` +
      `${opts.clear ? "in clear" : "encrypted (AES-256-GCM)"}, tick ${TICK_MS} ms, ` +
      `${opts.warmupSeconds} s warm-up + ${opts.seconds} s per cell`,
  );
  console.log(
    `node ${process.version}, ${cpuList.length} CPUs (${cpuList[0]?.model.trim() ?? "unknown"}); ` +
      "all nodes of a cluster share this one process\n",
  );
  console.log(row(["nodes", "proposers", "entries/s", "p50 ms", "p99 ms"]));
  const results: CellResult[] = [];
  for (const n of opts.nodes) {
    for (const p of opts.proposers) {
      const r = await runCell(n, p, opts);
      results.push(r);
      let line = row([String(n), String(p), fmt(r.entriesPerSec, 0), fmt(r.p50Ms, 2), fmt(r.p99Ms, 2)]);
      if (r.errors > 0) line += `   (${r.errors} failed proposals: ${r.firstError})`;
      if (!r.leaderStable) line += "   (leader changed during the run)";
      console.log(line);
    }
  }

  const report = {
    benchmark: "raft-commit",
    date: new Date().toISOString(),
    node: process.version,
    platform: `${process.platform}-${process.arch}`,
    cpus: cpuList.length,
    cpuModel: cpuList[0]?.model.trim() ?? "unknown",
    config: {
      payloadBytes: PAYLOAD_BYTES,
      tickMs: TICK_MS,
      warmupSeconds: opts.warmupSeconds,
      seconds: opts.seconds,
      storage: opts.clear ? "level, sync: true, in clear" : "level, sync: true, AES-256-GCM records (DEK)",
      transport: "LocalHub (in-process, wire-encoded)",
      note: "all nodes in one process; latency = propose() call to resolve (committed and applied on the leader)",
    },
    results,
  };
  await mkdir(dirname(opts.out), { recursive: true });
  await writeFile(opts.out, `${JSON.stringify(report, null, 2)}\n`);
  console.log(`\nwrote ${opts.out}`);
}

main().catch((e: unknown) => {
  console.error(e instanceof Error ? (e.stack ?? e.message) : e);
  process.exit(1);
});
