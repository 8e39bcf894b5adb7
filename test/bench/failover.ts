// Failover and full-stack commit benchmark.
//
//   npm run bench:failover                                   # both parts
//   npm run bench:failover -- --only failover --rounds 5
//   npm run bench:failover -- --only throughput --seconds 3 --writers 1,10,100 --managers 3 --via leader
//   npm run bench:failover -- --keep     # keep the temp dirs (daemon logs) for a look afterwards
//   BENCH_LOG_LEVEL=warn ...              # the in-process managers' logs (default: errors only)
//
// Part 1, failover: three real shoald processes (default Raft timing: 100 ms ticks, election timeout 30-60
// ticks) on 127.0.0.1, .2 and .3, each with its own data root and Engine API socket in a temp dir. Node 1
// inits the swarm, the others join as managers. Then, every round: find the leader (GET /nodes), SIGKILL
// it, and from a surviving manager attempt a committed write through the Engine API until one succeeds
// (GET /nodes/<id> for the version, then POST /nodes/<id>/update?version=N with a label changed; a new
// attempt starts every 20 ms, an attempt that takes more than 2 s is abandoned and counts as failed). The
// round's figure is the time from the kill to that write's answer. Meanwhile the other survivor is polled
// with GET /nodes until it names a new leader, and afterwards the survivors' logs are read for when the
// transport noticed the kill and when the new leader took over (pino timestamps, same machine clock).
// The killed daemon is restarted with the same data root and flags (it rejoins without a token), and the
// next round starts once all three managers are reachable again and agree on the leader.
//
// Part 2, throughput: managers started in this process with Manager.start, each with its own data root
// (level, sync on), node certificates from src/ca, talking gRPC over mutual TLS on 127.0.0.1 — the same
// stack shoald runs, without the Engine API. The cluster is built as `swarm init` + `swarm join` would:
// bootstrap the first manager, then add each other one as a learner through the leader, which promotes it
// once caught up. W writers each loop `await manager.write({op: "node.status", ...})` (an unversioned
// write, so concurrent writers never conflict) for a fixed time; writes/s counts the writes answered inside
// the measurement window, latency is from the write() call to its answer (committed by a quorum and
// applied on the manager that proposed it). "via follower" rows propose on a follower, which forwards to
// the leader and answers once the entry is applied locally. Before each 3-manager cell, 200 sequential
// unary Pings leader → follower (the transport's probe(), mutual TLS) give the machine's gRPC round trip;
// a unary call costs more than a message on the already open Raft stream, so it is an upper bound.
//
// Caveat for part 2: all managers share ONE Node.js process (one event loop, one libuv thread pool), on a
// machine whose CPUs the three shoald processes of a real cluster would not share. 3-manager figures are a
// lower bound for one manager per host.
//
// Everything started here (daemons, managers, temp dirs) is cleaned up on success, failure and SIGINT.

import { rmSync } from "node:fs";
import { mkdir, mkdtemp, writeFile } from "node:fs/promises";
import { cpus, loadavg, tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { performance } from "node:perf_hooks";
import pino, { type Logger } from "pino";
import { generateNodeKeyAndCSR, signNodeCSR } from "../../src/ca/certs.js";
import { newClusterId, newNodeId } from "../../src/ca/ids.js";
import { createRootCA, RootCA } from "../../src/ca/rootca.js";
import { generateJoinToken } from "../../src/ca/token.js";
import { DEFAULT_SPEC } from "../../src/daemon/daemon.js";
import { type Certificates, DataRoot, type LocalState } from "../../src/daemon/state.js";
import type { ClusterInfo, NodeSpec } from "../../src/engine/types.js";
import { newNodeObject } from "../../src/manager/ca-server.js";
import { Manager } from "../../src/manager/manager.js";
import { cleanupOptions, cleanupSync, tempDirs } from "./cleanup.js";
import {
  apiMessage,
  commonFreePort,
  call as engineCall,
  freePort,
  type Resp,
  Shoald,
  sleep,
  TimeoutError,
  waitUntil as waitFor,
} from "./shoald.js";

// ---------------------------------------------------------------------------------------------------
// Options

interface Options {
  only: "failover" | "throughput" | undefined;
  rounds: number;
  attemptEveryMs: number;
  attemptTimeoutMs: number;
  settleMs: number;
  port: number | undefined;
  seconds: number;
  warmupSeconds: number;
  writers: number[];
  managers: number[];
  via: ("leader" | "follower")[];
  out: string;
  keep: boolean;
}

function usage(): never {
  console.error(
    [
      "usage: node dist/test/bench/failover.js [--only failover|throughput] [--out FILE] [--keep]",
      "         failover:   [--rounds N] [--attempt-every MS] [--attempt-timeout MS] [--settle MS] [--port P]",
      "         throughput: [--seconds S] [--warmup S] [--writers 1,10,100] [--managers 1,3] [--via leader,follower]",
    ].join("\n"),
  );
  process.exit(2);
}

function parseArgs(argv: string[]): Options {
  const o: Options = {
    only: undefined,
    rounds: 20,
    attemptEveryMs: 20,
    attemptTimeoutMs: 2000,
    settleMs: 1000,
    port: undefined,
    seconds: 3,
    warmupSeconds: 1,
    writers: [1, 10, 100],
    managers: [1, 3],
    via: ["leader", "follower"],
    out: join("bench-results", "failover.json"),
    keep: false,
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const num = (min = 0): number => {
      const n = Number(argv[++i]);
      if (!Number.isFinite(n) || n < min) usage();
      return n;
    };
    if (a === "--only") {
      const v = argv[++i];
      if (v !== "failover" && v !== "throughput") usage();
      o.only = v;
    } else if (a === "--rounds") o.rounds = Math.floor(num(1));
    else if (a === "--attempt-every") o.attemptEveryMs = num(1);
    else if (a === "--attempt-timeout") o.attemptTimeoutMs = num(1);
    else if (a === "--settle") o.settleMs = num(0);
    else if (a === "--port") o.port = Math.floor(num(1));
    else if (a === "--seconds") o.seconds = num(0.1);
    else if (a === "--warmup") o.warmupSeconds = num(0);
    else if (a === "--writers") {
      const xs = (argv[++i] ?? "").split(",").map((s) => Number(s.trim()));
      if (xs.length === 0 || xs.some((x) => !Number.isInteger(x) || x < 1)) usage();
      o.writers = xs;
    } else if (a === "--managers") {
      const xs = (argv[++i] ?? "").split(",").map((s) => Number(s.trim()));
      if (xs.length === 0 || xs.some((x) => !Number.isInteger(x) || x < 1)) usage();
      o.managers = xs;
    } else if (a === "--via") {
      const xs = (argv[++i] ?? "").split(",").map((s) => s.trim());
      if (xs.length === 0 || xs.some((x) => x !== "leader" && x !== "follower")) usage();
      o.via = xs as ("leader" | "follower")[];
    } else if (a === "--out") o.out = argv[++i] ?? usage();
    else if (a === "--keep") o.keep = true;
    else usage();
  }
  return o;
}

// ---------------------------------------------------------------------------------------------------
// Cleanup: whatever happens, no daemon and no temp dir outlives the benchmark.

async function makeTempDir(prefix: string): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), prefix));
  tempDirs.add(d);
  return d;
}

function removeTempDir(d: string): void {
  if (!cleanupOptions.keepTemp) rmSync(d, { recursive: true, force: true });
  tempDirs.delete(d);
}

// ---------------------------------------------------------------------------------------------------
// Small helpers

function waitUntil<T>(what: string, ms: number, f: () => Promise<T | undefined>, everyMs = 50): Promise<T> {
  return waitFor(what, ms, f, everyMs);
}

/** Nearest-rank percentile of an ascending array. */
function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length - 1, Math.max(0, rank - 1))]!;
}

function median(sorted: readonly number[]): number {
  const n = sorted.length;
  if (n === 0) return Number.NaN;
  return n % 2 === 1 ? sorted[(n - 1) / 2]! : (sorted[n / 2 - 1]! + sorted[n / 2]!) / 2;
}

interface Summary {
  n: number;
  min: number;
  median: number;
  p90: number;
  max: number;
  mean: number;
}

function summarize(xs: readonly (number | undefined)[]): Summary {
  const s = xs.filter((x): x is number => x !== undefined && Number.isFinite(x)).sort((a, b) => a - b);
  const r = (x: number) => Math.round(x * 10) / 10;
  return {
    n: s.length,
    min: r(s[0] ?? Number.NaN),
    median: r(median(s)),
    p90: r(percentile(s, 90)),
    max: r(s[s.length - 1] ?? Number.NaN),
    mean: r(s.reduce((a, b) => a + b, 0) / (s.length || 1)),
  };
}

const fmt = (x: number | undefined, w = 7): string =>
  (x === undefined || !Number.isFinite(x) ? "-" : x.toFixed(0)).padStart(w);

function errText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

// ---------------------------------------------------------------------------------------------------
// Engine API over a unix socket

function call(sock: string, method: string, path: string, body?: unknown, timeoutMs = 5000): Promise<Resp> {
  return engineCall(sock, method, path, body, timeoutMs);
}

async function callOk<T>(sock: string, method: string, path: string, body?: unknown, timeoutMs = 5000): Promise<T> {
  const r = await call(sock, method, path, body, timeoutMs);
  if (r.status < 200 || r.status >= 300) throw new Error(`${method} ${path}: ${r.status} ${apiMessage(r)}`);
  return r.body as T;
}

interface ApiNode {
  ID: string;
  Version: { Index: number };
  Spec: NodeSpec;
  Description: { Hostname: string };
  ManagerStatus?: { Leader?: boolean; Reachability: string; Addr: string };
}

// ---------------------------------------------------------------------------------------------------
// Part 1: failover

interface Round {
  round: number;
  killed: string;
  writer: string;
  observer: string;
  newLeader: string | undefined;
  /** ms from the kill to: */
  transportNoticedMs: number | undefined;
  campaignSoonMs: number | undefined;
  becameLeaderMs: number | undefined;
  leaderInGetNodesMs: number | undefined;
  firstWriteMs: number;
  /** How long the successful attempt itself took (GET + POST). */
  successfulAttemptMs: number;
  attempts: number;
  failures: Record<string, number>;
  /** How long until all three managers were back and reachable. */
  recoveryMs: number;
}

/** GET /nodes on `d`: the id of the manager it names leader, if every manager is reachable. */
async function clusterView(
  d: Shoald,
  timeoutMs = 2000,
): Promise<{ leader: string | undefined; managers: number; reachable: number }> {
  const nodes = await callOk<ApiNode[]>(d.sock, "GET", "/nodes", undefined, timeoutMs);
  const ms = nodes.filter((n) => n.ManagerStatus);
  return {
    leader: ms.find((n) => n.ManagerStatus?.Leader)?.ID,
    managers: ms.length,
    reachable: ms.filter((n) => n.ManagerStatus?.Reachability === "reachable").length,
  };
}

/** Every daemon answers GET /nodes with 3 reachable managers and the same leader; returns the leader. */
async function waitHealthy(ds: Shoald[], ms: number): Promise<Shoald> {
  return waitUntil(
    "3 reachable managers that agree on a leader",
    ms,
    async () => {
      const views = await Promise.all(ds.map((d) => clusterView(d)));
      const leader = views[0]!.leader;
      if (!leader) return undefined;
      for (const v of views) if (v.managers !== 3 || v.reachable !== 3 || v.leader !== leader) return undefined;
      return ds.find((d) => d.nodeId === leader);
    },
    100,
  );
}

/** One attempt at a committed write through `d`'s Engine API: read the node's version, update its labels. */
async function attemptWrite(d: Shoald, nodeId: string, label: string, timeoutMs: number): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  const g = await call(d.sock, "GET", `/nodes/${nodeId}`, undefined, timeoutMs);
  if (g.status !== 200) throw new Error(`GET ${g.status} ${apiMessage(g)}`);
  const node = g.body as ApiNode;
  const spec: NodeSpec = { ...node.Spec, Labels: { ...node.Spec.Labels, "bench.failover": label } };
  const left = Math.max(1, deadline - performance.now());
  const p = await call(d.sock, "POST", `/nodes/${nodeId}/update?version=${node.Version.Index}`, spec, left);
  if (p.status !== 200) throw new Error(`POST ${p.status} ${apiMessage(p)}`);
}

/** Groups error messages so a round's failures fit on a line. */
function errorClass(e: unknown): string {
  if (e instanceof TimeoutError) return "timeout";
  const m = errText(e);
  if (/ECONNREFUSED|ENOENT|ECONNRESET|socket hang up/.test(m)) return "socket";
  if (/does not have a leader/.test(m)) return `${m.slice(0, 8)}no leader`;
  return m.replace(/[0-9a-z]{25}/g, "<id>").slice(0, 120);
}

async function runFailover(o: Options): Promise<{ rounds: Round[]; summary: Record<string, Summary> }> {
  const dir = await makeTempDir("shoal-failover-");
  const ips = ["127.0.0.1", "127.0.0.2", "127.0.0.3"];
  const port = o.port ?? (await commonFreePort(ips));
  const ds = ips.map((ip, i) => new Shoald(`bench-m${i + 1}`, ip, port, join(dir, `m${i + 1}`), { stopGraceMs: 5000 }));
  for (const d of ds) await mkdir(d.dir, { recursive: true });
  const rounds: Round[] = [];
  try {
    console.log(`failover: 3 shoald on ${ips.join(", ")} port ${port}, state in ${dir}`);
    // --- the cluster
    const [d1, d2, d3] = ds as [Shoald, Shoald, Shoald];
    d1.start();
    await d1.ready();
    await callOk(d1.sock, "POST", "/swarm/init", { ListenAddr: d1.addr, AdvertiseAddr: d1.addr }, 30_000);
    const swarm = await callOk<{ JoinTokens: { Manager: string } }>(d1.sock, "GET", "/swarm");
    for (const d of [d2, d3]) {
      d.start();
      await d.ready();
      await callOk(
        d.sock,
        "POST",
        "/swarm/join",
        { RemoteAddrs: [d1.addr], JoinToken: swarm.JoinTokens.Manager, ListenAddr: d.addr, AdvertiseAddr: d.addr },
        60_000,
      );
    }
    for (const d of ds) await d.loadIdentity();
    let leader = await waitHealthy(ds, 60_000);
    await sleep(o.settleMs);
    console.log(
      `cluster up: ${ds.map((d) => `${d.name}=${d.nodeId.slice(0, 8)}/raft ${d.raftId.toString(16)}`).join(", ")}`,
    );
    console.log("");
    console.log(
      "round  killed    writer    new leader | noticed  campaign  elected  GET/nodes | 1st write  attempts | recovery",
    );

    // --- the rounds
    for (let r = 1; r <= o.rounds; r++) {
      const killed = leader;
      const survivors = ds.filter((d) => d !== killed);
      const writer = survivors[r % 2]!;
      const observer = survivors[(r + 1) % 2]!;
      const logFrom = new Map(survivors.map((d) => [d, d.logSize()]));

      const wall0 = Date.now();
      const t0 = performance.now();
      await killed.kill("SIGKILL");

      // Observer: GET /nodes on the other survivor until it names a leader that is not the killed one.
      let leaderInGetNodesMs: number | undefined;
      let stopObserver = false;
      const observing = (async () => {
        while (!stopObserver && performance.now() - t0 < 30_000) {
          const started = performance.now();
          try {
            const v = await clusterView(observer, o.attemptTimeoutMs);
            if (v.leader && v.leader !== killed.nodeId) {
              leaderInGetNodesMs = performance.now() - t0;
              return;
            }
          } catch {
            /* no leader yet */
          }
          const wait = o.attemptEveryMs - (performance.now() - started);
          if (wait > 0) await sleep(wait);
        }
      })();

      // Writer: attempt a committed write until one succeeds.
      let attempts = 0;
      const failures: Record<string, number> = {};
      let firstWriteMs = Number.NaN;
      let successfulAttemptMs = Number.NaN;
      for (;;) {
        const started = performance.now();
        if (started - t0 > 60_000) throw new Error(`round ${r}: no committed write within 60 s of the kill`);
        attempts++;
        try {
          await attemptWrite(writer, writer.nodeId, `r${r}a${attempts}`, o.attemptTimeoutMs);
          const now = performance.now();
          firstWriteMs = now - t0;
          successfulAttemptMs = now - started;
          break;
        } catch (e) {
          const k = errorClass(e);
          failures[k] = (failures[k] ?? 0) + 1;
        }
        const wait = o.attemptEveryMs - (performance.now() - started);
        if (wait > 0) await sleep(wait);
      }
      await Promise.race([observing, sleep(5000)]);
      stopObserver = true;
      await observing;

      // The survivors' logs: when the transport noticed, when a follower decided to campaign, who won.
      await sleep(200);
      const hex = killed.raftId.toString(16);
      let noticed: number | undefined;
      let campaign: number | undefined;
      let elected: number | undefined;
      let newLeader: string | undefined;
      for (const d of survivors) {
        for (const l of d.logSince(logFrom.get(d)!)) {
          if (l.time < wall0) continue;
          const at = l.time - wall0;
          if (l.msg === "raft transport: lost connection to peer" && l.peer === hex)
            noticed = Math.min(noticed ?? at, at);
          if (l.msg === "lost the connection to the leader; campaigning soon") campaign = Math.min(campaign ?? at, at);
          if (l.msg === "became leader" && (elected === undefined || at < elected)) {
            elected = at;
            newLeader = d.name;
          }
        }
      }

      // Bring the killed manager back and wait for the cluster to be whole again.
      const tr = performance.now();
      killed.start();
      await killed.ready();
      leader = await waitHealthy(ds, 60_000);
      const recoveryMs = performance.now() - tr;

      const round: Round = {
        round: r,
        killed: killed.name,
        writer: writer.name,
        observer: observer.name,
        newLeader,
        transportNoticedMs: noticed,
        campaignSoonMs: campaign,
        becameLeaderMs: elected,
        leaderInGetNodesMs,
        firstWriteMs,
        successfulAttemptMs,
        attempts,
        failures,
        recoveryMs,
      };
      rounds.push(round);
      const fails = Object.entries(failures)
        .map(([k, v]) => `${v}× ${k}`)
        .join("; ");
      console.log(
        `${String(r).padStart(5)}  ${killed.name.padEnd(8)}  ${writer.name.padEnd(8)}  ${(newLeader ?? "?").padEnd(10)} |` +
          `${fmt(noticed)}  ${fmt(campaign, 8)}  ${fmt(elected)}  ${fmt(leaderInGetNodesMs, 9)} |` +
          `${fmt(firstWriteMs, 10)}  ${String(attempts).padStart(8)} |${fmt(recoveryMs, 9)}` +
          (fails ? `   failed: ${fails}` : ""),
      );
      await sleep(o.settleMs);
    }

    const summary = {
      transportNoticedMs: summarize(rounds.map((x) => x.transportNoticedMs)),
      campaignSoonMs: summarize(rounds.map((x) => x.campaignSoonMs)),
      becameLeaderMs: summarize(rounds.map((x) => x.becameLeaderMs)),
      leaderInGetNodesMs: summarize(rounds.map((x) => x.leaderInGetNodesMs)),
      firstWriteMs: summarize(rounds.map((x) => x.firstWriteMs)),
      successfulAttemptMs: summarize(rounds.map((x) => x.successfulAttemptMs)),
      recoveryMs: summarize(rounds.map((x) => x.recoveryMs)),
    };
    console.log("");
    console.log(`ms from SIGKILL of the leader (${rounds.length} rounds)   min  median     p90     max`);
    const row = (label: string, s: Summary) =>
      console.log(`  ${label.padEnd(40)}${fmt(s.min, 5)}${fmt(s.median, 8)}${fmt(s.p90, 8)}${fmt(s.max, 8)}`);
    row("transport noticed (survivor log)", summary.transportNoticedMs);
    row("new leader elected (its log)", summary.becameLeaderMs);
    row("new leader in GET /nodes (other survivor)", summary.leaderInGetNodesMs);
    row("first committed write (GET+POST answered)", summary.firstWriteMs);
    console.log(`  (the successful attempt itself took median ${summary.successfulAttemptMs.median} ms)`);
    return { rounds, summary };
  } catch (e) {
    for (const d of ds) console.error(`--- ${d.name} log tail:\n${d.logTail(20)}`);
    throw e;
  } finally {
    await Promise.all(ds.map((d) => d.stop().catch(() => d.kill())));
    removeTempDir(dir);
  }
}

// ---------------------------------------------------------------------------------------------------
// Part 2: full-stack commit throughput with in-process managers

interface Cluster {
  managers: Manager[];
  /** The node object the writers update. */
  nodeId: string;
  dir: string;
}

async function startCluster(size: number, logger: Logger): Promise<Cluster> {
  const dir = await makeTempDir("shoal-throughput-");
  const managers: Manager[] = [];
  try {
    const ca = await createRootCA();
    const rootCA = await RootCA.fromPem(ca.certPem, ca.keyPem);
    const clusterId = newClusterId();
    const issue = async (nodeId: string): Promise<Certificates> => {
      const { keyPem, csrPem } = await generateNodeKeyAndCSR(nodeId);
      const certPem = await signNodeCSR(rootCA, csrPem, { nodeId, role: "manager", clusterId });
      return { rootPem: ca.certPem, certPem, keyPem };
    };
    const stateFor = async (nodeId: string, raftId: number, port: number): Promise<LocalState> => {
      const addr = `127.0.0.1:${port}`;
      return {
        version: 1,
        nodeId,
        clusterId,
        role: "manager",
        raftId,
        listenAddr: addr,
        advertiseAddr: addr,
        dataPathAddr: "127.0.0.1",
        managers: [],
      };
    };

    // The first manager, as swarm init makes it.
    const id1 = newNodeId();
    const s1 = await stateFor(id1, 1 + Math.floor(Math.random() * (2 ** 47 - 2)), await freePort("127.0.0.1"));
    const root1 = new DataRoot(join(dir, "m1"));
    const certs1 = await issue(id1);
    await root1.saveCertificates(certs1);
    await root1.saveState(s1);
    const m1 = await Manager.start({
      openRaftStorage: () => root1.openRaftStorage(),
      state: s1,
      certs: certs1,
      logger,
      bootstrap: true,
    });
    managers.push(m1);
    await waitUntil("the first manager to lead", 10_000, async () => (m1.isLeader ? true : undefined), 10);
    const now = new Date().toISOString();
    const info: ClusterInfo = {
      ID: clusterId,
      Version: { Index: 0 },
      CreatedAt: now,
      UpdatedAt: now,
      Spec: structuredClone(DEFAULT_SPEC),
      TLSInfo: { TrustRoot: ca.certPem, CertIssuerSubject: "", CertIssuerPublicKey: "" },
      RootRotationInProgress: false,
      DefaultAddrPool: ["10.0.0.0/8"],
      SubnetSize: 24,
      DataPathPort: 4789,
    };
    await m1.write({
      op: "cluster.create",
      info,
      secrets: {
        rootCACertPem: ca.certPem,
        rootCAKeyPem: ca.keyPem,
        workerToken: generateJoinToken(ca.certPem),
        managerToken: generateJoinToken(ca.certPem),
      },
    });
    await m1.write({
      op: "node.create",
      node: newNodeObject(id1, "manager", "active", "bench-m1", "127.0.0.1"),
      role: "manager",
    });
    await m1.write({ op: "member.add", member: { raftId: s1.raftId!, nodeId: id1, addr: s1.advertiseAddr } });

    // The others, as swarm join makes them: a node object, then a learner that the leader promotes.
    for (let i = 2; i <= size; i++) {
      const id = newNodeId();
      const port = await freePort("127.0.0.1");
      await m1.write({
        op: "node.create",
        node: newNodeObject(id, "manager", "active", `bench-m${i}`, "127.0.0.1"),
        role: "manager",
      });
      const raftId = await m1.addMember(id, `127.0.0.1:${port}`);
      const st = await stateFor(id, raftId, port);
      const root = new DataRoot(join(dir, `m${i}`));
      const certs = await issue(id);
      await root.saveCertificates(certs);
      await root.saveState(st);
      const peers = m1.store.members().map((m) => ({ raftId: m.raftId, nodeId: m.nodeId, addr: m.addr }));
      const m = await Manager.start({
        openRaftStorage: () => root.openRaftStorage(),
        state: st,
        certs,
        logger,
        bootstrap: false,
        peers,
      });
      managers.push(m);
      await waitUntil(
        `manager ${i} to become a voter`,
        30_000,
        async () => (m1.raft.status().confState.voters.includes(raftId) ? true : undefined),
        10,
      );
    }
    await waitUntil(
      "every manager to catch up",
      30_000,
      async () => (managers.every((m) => m.store.cluster() !== undefined) ? true : undefined),
      10,
    );
    // The object the writers update: a worker's, as the dispatcher would mark it ready.
    const nodeId = newNodeId();
    await m1.write({
      op: "node.create",
      node: newNodeObject(nodeId, "worker", "active", "bench-w", "10.0.0.1"),
      role: "worker",
    });
    return { managers, nodeId, dir };
  } catch (e) {
    await stopCluster({ managers, nodeId: "", dir });
    throw e;
  }
}

async function stopCluster(c: Cluster): Promise<void> {
  for (const m of [...c.managers].reverse()) await m.stop().catch(() => {});
  removeTempDir(c.dir);
}

interface Cell {
  managers: number;
  via: "leader" | "follower";
  writers: number;
  seconds: number;
  writes: number;
  writesPerSec: number;
  p50Ms: number;
  p90Ms: number;
  p99Ms: number;
  maxMs: number;
  errors: number;
  firstError?: string;
  leaderStable: boolean;
  /** Round trip of the transport's unary Ping, leader → a follower, measured before the writers start. */
  pingRttP50Ms?: number;
  pingRttP99Ms?: number;
}

/** Sequential gRPC Pings (mutual TLS, over the channel the Raft stream uses) from `from` to `to`. */
async function pingRtt(from: Manager, to: Manager, n: number): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const t = performance.now();
    if (await from.transport.probe(to.raftId, 1000)) out.push(performance.now() - t);
  }
  return out.sort((a, b) => a - b);
}

async function measure(
  c: Cluster,
  via: "leader" | "follower",
  writers: number,
  seconds: number,
  warmup: number,
): Promise<Cell> {
  const leader = c.managers.find((m) => m.isLeader);
  if (!leader) throw new Error("no leader");
  const target = via === "leader" ? leader : c.managers.find((m) => !m.isLeader);
  if (!target) throw new Error("no follower");
  const leaderId = leader.raftId;
  const follower = c.managers.find((m) => m !== leader);
  const rtt = follower ? await pingRtt(leader, follower, 200) : [];
  const startAt = performance.now() + warmup * 1000;
  const endAt = startAt + seconds * 1000;
  const lat: number[] = [];
  let writes = 0;
  let errors = 0;
  let firstError: string | undefined;
  const writer = async (w: number) => {
    const addr = `10.1.${w >> 8}.${w & 255}`;
    for (;;) {
      const t = performance.now();
      if (t >= endAt) return;
      try {
        await target.write({ op: "node.status", id: c.nodeId, state: "ready", addr });
        const e = performance.now();
        if (e >= startAt && e <= endAt) {
          writes++;
          lat.push(e - t);
        }
      } catch (e) {
        errors++;
        firstError ??= errText(e);
        await sleep(10);
      }
    }
  };
  await Promise.all(Array.from({ length: writers }, (_, w) => writer(w)));
  lat.sort((a, b) => a - b);
  const r = (x: number) => Math.round(x * 1000) / 1000;
  return {
    managers: c.managers.length,
    via,
    writers,
    seconds,
    writes,
    writesPerSec: Math.round((writes / seconds) * 10) / 10,
    p50Ms: r(percentile(lat, 50)),
    p90Ms: r(percentile(lat, 90)),
    p99Ms: r(percentile(lat, 99)),
    maxMs: r(lat[lat.length - 1] ?? Number.NaN),
    errors,
    ...(firstError ? { firstError } : {}),
    leaderStable: c.managers.every((m) => m.leaderRaftId() === leaderId),
    ...(rtt.length > 0 ? { pingRttP50Ms: r(percentile(rtt, 50)), pingRttP99Ms: r(percentile(rtt, 99)) } : {}),
  };
}

async function runThroughput(o: Options): Promise<Cell[]> {
  const logger = pino(
    { level: process.env.BENCH_LOG_LEVEL ?? "error", base: { bench: "throughput" } },
    pino.destination(2),
  );
  const configs: { managers: number; via: "leader" | "follower" }[] = [];
  for (const managers of o.managers) {
    for (const via of o.via) if (via === "leader" || managers > 1) configs.push({ managers, via });
  }
  const cells: Cell[] = [];
  console.log("");
  console.log(
    `full-stack commit throughput: in-process managers, gRPC + mutual TLS on 127.0.0.1, level (sync on); ${o.seconds} s per cell after ${o.warmupSeconds} s warm-up`,
  );
  console.log(
    "managers  via       writers   writes/s    p50 ms    p90 ms    p99 ms    max ms  errors   ping p50/p99 ms",
  );
  for (const cfg of configs) {
    for (const w of o.writers) {
      // A fresh cluster per cell, so no cell pays for an earlier one's log or snapshot.
      const c = await startCluster(cfg.managers, logger);
      try {
        const cell = await measure(c, cfg.via, w, o.seconds, o.warmupSeconds);
        cells.push(cell);
        const f = (x: number) => (Number.isFinite(x) ? x.toFixed(2) : "-").padStart(10);
        console.log(
          `${String(cell.managers).padStart(8)}  ${cell.via.padEnd(8)}  ${String(w).padStart(7)}  ${cell.writesPerSec
            .toFixed(0)
            .padStart(
              9,
            )}${f(cell.p50Ms)}${f(cell.p90Ms)}${f(cell.p99Ms)}${f(cell.maxMs)}  ${String(cell.errors).padStart(6)}` +
            (cell.pingRttP50Ms !== undefined
              ? `   ${cell.pingRttP50Ms.toFixed(2)}/${(cell.pingRttP99Ms ?? Number.NaN).toFixed(2)}`
              : "") +
            (cell.leaderStable ? "" : "  (leader changed!)") +
            (cell.firstError ? `  first error: ${cell.firstError}` : ""),
        );
      } finally {
        await stopCluster(c);
      }
    }
  }
  return cells;
}

// ---------------------------------------------------------------------------------------------------

async function main(): Promise<void> {
  const o = parseArgs(process.argv.slice(2));
  cleanupOptions.keepTemp = o.keep;
  const result: Record<string, unknown> = {
    benchmark: "failover",
    date: new Date().toISOString(),
    node: process.version,
    platform: `${process.platform}-${process.arch}`,
    cpus: cpus().length,
    cpuModel: cpus()[0]?.model.trim() ?? "unknown",
    loadAverageAtStart: loadavg().map((x) => Math.round(x * 100) / 100),
  };
  if (o.only !== "throughput") {
    const f = await runFailover(o);
    result.failover = {
      config: {
        managers: 3,
        daemonFlags: "defaults (100 ms ticks, election timeout 30-60 ticks)",
        rounds: o.rounds,
        attemptEveryMs: o.attemptEveryMs,
        attemptTimeoutMs: o.attemptTimeoutMs,
        write: "GET /nodes/<writer's node id>, then POST /nodes/<id>/update?version=N with a label changed",
        note: "times in ms from the SIGKILL; log-derived figures come from pino timestamps of the survivors",
      },
      summary: f.summary,
      rounds: f.rounds,
    };
    await saveResult(o.out, result);
  }
  if (o.only !== "failover") {
    const cells = await runThroughput(o);
    result.throughput = {
      config: {
        seconds: o.seconds,
        warmupSeconds: o.warmupSeconds,
        command: "node.status (unversioned), all writers on one node object",
        stack: "Manager.start in one process; gRPC + mutual TLS on 127.0.0.1; level, sync on; 100 ms ticks",
        note: "all managers share one Node.js process; latency = manager.write() call to its answer",
      },
      results: cells,
    };
    await saveResult(o.out, result);
  }
  console.log(`\nresults written to ${o.out}`);
}

async function saveResult(out: string, result: Record<string, unknown>): Promise<void> {
  result.loadAverageAtEnd = loadavg().map((x) => Math.round(x * 100) / 100);
  await mkdir(dirname(out), { recursive: true });
  await writeFile(out, `${JSON.stringify(result, null, 2)}\n`);
}

try {
  await main();
  cleanupSync();
  process.exit(0);
} catch (e) {
  console.error(`bench:failover failed: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`);
  cleanupSync();
  process.exit(1);
}
