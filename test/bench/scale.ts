// Scale benchmark: N simulated workers against three real shoald managers on loopback.
//
//   npm run bench:scale -- --nodes 250,1000,2500,5000
//   npm run bench:scale -- --nodes 1000 --profile        # CPU profiles: the leader's (no failover phase), and
//   npm run bench:scale -- --nodes 1000 --profile --failover --keep   # the new leader's over the failover
//   npm run bench:scale -- --nodes 2000 --heap-snapshot 1500 --keep   # leader heap snapshot at 1,500 joined
//   npm run bench:scale -- --nodes 250 --procs 4 --concurrency 16 --out bench-results/scale.json --keep
//
// Per N: three shoald processes (127.0.0.1, .2, .3, one port; default Raft timing) form a swarm through
// the Engine API (`swarm init`, `swarm join` with the manager token). `--procs` worker processes
// (test/bench/sim-worker.ts) then join N simulated workers, each through the real join path (root CA
// checked against the token, its own key, CA.IssueNodeCertificate with the worker token) and the real
// Agent (a Dispatcher session over mutual TLS, heartbeats). Figures:
//   join/s         N / time from the first join request to the last certificate issued
//   sessions up    time until every simulated worker holds a session
//   leader CPU     the leader process's CPU over --steady seconds once every session is up (% of one core;
//                  the simulators' CPU over the same window is printed as the phase ends)
//   hb p99         heartbeat round trips seen by the agents during the steady window; beside it, what of a
//                  round trip is not the leader's: the simulators' event-loop delay (p99, max over the
//                  processes) in that window, and the leader's own longest event-loop delay in it
//   node ls        `docker node ls` against the leader's socket (median of 3 after one warm-up, the real docker
//                  CLI); beside it the CLI alone: the same command with the leader's answers replayed from memory.
//                  Printed apart: the CLI's own CPU (user + system, /usr/bin/time) in both, and GET /nodes from
//                  the leader alone (until its head, until its last byte); once with every session up, once
//                  quiet (at the end, without --profile: the simulators stopped, the 5,000 records kept)
//   fan-out p99    POST /swarm/update changing the dispatcher heartbeat period: time until each session
//                  got the new period (p99 over sessions; the max over 3 changes). From just before the POST
//                  (this process's clock) to the simulated agent's onMessage (its process's clock, the same
//                  host) with the message deserialized and checked: it includes the POST itself (read
//                  barrier, Raft commit, apply on the leader: printed), the leader's writes, and the
//                  simulators' reading. Printed per change with the CPU each part spent meanwhile
//   leader RSS     at the end of the steady window
//   heap used      the leader's V8 heap in use at the end of the steady window (its /metrics)
//   longest stall  the longest event-loop delay of the leader from the first join to the failover (its
//                  /metrics, polled every 2 s: nodejs_eventloop_lag_max_seconds is reset by each read)
//   --heap-snapshot N  the leader writes a V8 heap snapshot (node --heapsnapshot-signal) once N nodes have
//                  joined, into <state dir>/heap/; analyse it with `node dist/test/bench/heap-summary.js FILE`
//   failover       SIGKILL the leader: sessions back on the new leader (time, or count at the timeout),
//                  nodes ever seen Down in GET /nodes meanwhile (all are alive: every one is false), and
//                  elections beyond the first (survivors' logs)
//   failover timeline  per node, from its agent's steps (Agent onEvent): when it noticed, each attempt's
//                  target (dead, follower, leader) and outcome, the spread and backoff it waited, when it was
//                  back; histograms of time-to-back and attempts, each attempt's time to its outcome (the
//                  agent's first-message bound must stay above it), TLS handshakes the simulators made per
//                  node, and the CPU each process spent from the SIGKILL until all were back
// Managers expose --metrics-addr when the daemon supports it; the bench then reads their /metrics.
// Everything started (daemons, worker processes, temp dirs) is cleaned up on success, failure and SIGINT.

import { type ChildProcess, execFile, fork } from "node:child_process";
import { existsSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { mkdir, mkdtemp, writeFile } from "node:fs/promises";
import http from "node:http";
import { cpus, loadavg, tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { performance } from "node:perf_hooks";
import { fileURLToPath } from "node:url";
import { children, cleanupOptions, cleanupSync, tempDirs } from "./cleanup.js";
import {
  commonFreePort,
  cpuSecondsOf,
  call as engineCall,
  metricValue,
  type Resp,
  SHOALD,
  Shoald,
  sleep,
  waitUntil as waitFor,
} from "./shoald.js";
import type { JoinStages, Timeline, ToWorker, WorkerStats, WorkerTimelines } from "./sim-worker.js";

const HERE = dirname(fileURLToPath(import.meta.url));
const SIM_WORKER = join(HERE, "sim-worker.js");
const DOCKER = process.env.DOCKER_CLI ?? "/usr/local/bin/docker";
/** GNU time, for the CPU the docker CLI spends (optional). */
const TIME = "/usr/bin/time";

interface Options {
  nodes: number[];
  procs: number;
  concurrency: number;
  steadySeconds: number;
  joinTimeoutS: number;
  recoverTimeoutS: number;
  profile: boolean;
  /** Take a heap snapshot of the leader once this many nodes have joined. */
  heapSnapshotAt: number | undefined;
  /** Extra flags for the managers' node (e.g. --trace-gc: its lines go to each manager's log). */
  nodeFlags: string[];
  failover: boolean;
  /** Half of the simulator processes (the odd ones) run agents that do not take deltas: fan-out per half. */
  deltasAb: boolean;
  out: string;
  keep: boolean;
}

function usage(): never {
  console.error(
    "usage: node dist/test/bench/scale.js [--nodes 250,1000] [--procs P] [--concurrency C (per process)]\n" +
      "         [--steady S] [--join-timeout S] [--recover-timeout S] [--profile] [--heap-snapshot N]\n" +
      '         [--node-flags "--trace-gc ..."] [--no-failover] [--failover (with --profile)] [--deltas-ab] [--out FILE] [--keep]',
  );
  process.exit(2);
}

function parseArgs(argv: string[]): Options {
  const o: Options = {
    nodes: [250],
    procs: 4,
    concurrency: 8,
    steadySeconds: 10,
    joinTimeoutS: 300,
    recoverTimeoutS: 90,
    profile: false,
    heapSnapshotAt: undefined,
    nodeFlags: [],
    failover: true,
    deltasAb: false,
    out: join("bench-results", "scale.json"),
    keep: false,
  };
  let profileFailover = false;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const num = (): number => {
      const n = Number(argv[++i]);
      if (!Number.isFinite(n) || n <= 0) usage();
      return n;
    };
    if (a === "--nodes") {
      o.nodes = (argv[++i] ?? "").split(",").map((x) => Number(x.trim()));
      if (o.nodes.some((n) => !Number.isInteger(n) || n < 1)) usage();
    } else if (a === "--procs") o.procs = Math.floor(num());
    else if (a === "--concurrency") o.concurrency = Math.floor(num());
    else if (a === "--steady") o.steadySeconds = num();
    else if (a === "--join-timeout") o.joinTimeoutS = num();
    else if (a === "--recover-timeout") o.recoverTimeoutS = num();
    else if (a === "--profile") o.profile = true;
    else if (a === "--heap-snapshot") o.heapSnapshotAt = Math.floor(num());
    else if (a === "--node-flags") o.nodeFlags = (argv[++i] ?? usage()).split(/\s+/).filter(Boolean);
    else if (a === "--no-failover") o.failover = false;
    else if (a === "--deltas-ab") o.deltasAb = true;
    else if (a === "--failover") profileFailover = true;
    else if (a === "--out") o.out = argv[++i] ?? usage();
    else if (a === "--keep") o.keep = true;
    else usage();
  }
  // A profile is of the leader through the steady phase, or (--failover) of the new leader through the failover.
  if (o.profile) o.failover = profileFailover;
  return o;
}

// ---------------------------------------------------------------------------------------------------
// Helpers (shoald.ts holds the shared ones)

function waitUntil<T>(what: string, ms: number, f: () => Promise<T | undefined>, everyMs = 200): Promise<T> {
  return waitFor(what, ms, f, everyMs);
}
function percentile(xs: readonly number[], p: number): number {
  if (xs.length === 0) return Number.NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]!;
}

// ---------------------------------------------------------------------------------------------------
// Engine API

function call(sock: string, method: string, path: string, body?: unknown, timeoutMs = 30_000): Promise<Resp> {
  return engineCall(sock, method, path, body, timeoutMs);
}

async function callOk<T>(sock: string, method: string, path: string, body?: unknown, timeoutMs = 30_000): Promise<T> {
  const r = await call(sock, method, path, body, timeoutMs);
  if (r.status < 200 || r.status >= 300) throw new Error(`${method} ${path}: ${r.status} ${JSON.stringify(r.body)}`);
  return r.body as T;
}
interface ApiNode {
  ID: string;
  Description: { Hostname: string };
  Status: { State: string };
  ManagerStatus?: { Leader?: boolean; Reachability: string };
}

async function daemonSupportsMetrics(): Promise<boolean> {
  return new Promise((resolve) => {
    execFile(process.execPath, [SHOALD, "--help"], { timeout: 20_000 }, (_e, out) =>
      resolve(String(out).includes("--metrics-addr")),
    );
  });
}

// ---------------------------------------------------------------------------------------------------
// Worker processes

class Workers {
  private readonly procs: ChildProcess[] = [];
  private waiting: ((m: unknown) => void)[][] = [];
  /** How long a simulator may take to stop before it is killed (a profiled one writes its profile then). */
  private readonly stopMs: number;

  /** `profileDir`: each simulator writes a V8 CPU profile there when it stops. */
  constructor(count: number, profileDir?: string) {
    this.stopMs = profileDir ? 60_000 : 5000;
    for (let i = 0; i < count; i++) {
      const execArgv = profileDir ? ["--cpu-prof", "--cpu-prof-dir", profileDir] : [];
      const p = fork(SIM_WORKER, [], { stdio: ["ignore", "ignore", "inherit", "ipc"], execArgv });
      children.add(p);
      p.once("exit", () => children.delete(p));
      this.waiting.push([]);
      p.on("message", (m: unknown) => this.waiting[i]!.shift()?.(m));
      this.procs.push(p);
    }
  }

  /** CPU seconds of every simulator process together. */
  cpuSeconds(): number {
    return sum(this.procs.map((p) => (p.pid ? cpuSecondsOf(p.pid) : 0)));
  }

  send(i: number, m: ToWorker): void {
    this.procs[i]!.send(m);
  }

  broadcast(m: ToWorker): void {
    for (let i = 0; i < this.procs.length; i++) this.send(i, m);
  }

  private ask<T>(m: ToWorker): Promise<T[]> {
    return Promise.all(
      this.procs.map(
        (p, i) =>
          new Promise<T>((resolve) => {
            this.waiting[i]!.push((x) => resolve(x as T));
            p.send(m);
          }),
      ),
    );
  }

  stats(since = 0): Promise<WorkerStats[]> {
    return this.ask<WorkerStats>({ t: "stats", since });
  }

  timelines(): Promise<WorkerTimelines[]> {
    return this.ask<WorkerTimelines>({ t: "timeline" });
  }

  async stop(): Promise<void> {
    await Promise.all(
      this.procs.map(
        (p) =>
          new Promise<void>((resolve) => {
            if (p.exitCode !== null || p.signalCode !== null) return resolve();
            const t = setTimeout(() => p.kill("SIGKILL"), this.stopMs);
            p.once("exit", () => {
              clearTimeout(t);
              resolve();
            });
            p.send({ t: "stop" } satisfies ToWorker);
          }),
      ),
    );
  }
}

const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);

// ---------------------------------------------------------------------------------------------------
// One N

export interface Row {
  nodes: number;
  joined: number;
  joinPerS: number;
  joinSeconds: number;
  sessionsUpSeconds: number | undefined;
  leaderCpuPct: number;
  /** The simulator processes' CPU together over the steady window (% of one core). */
  simCpuPct?: number;
  heartbeatP99Ms: number;
  heartbeatCount: number;
  heartbeatFailures: number;
  /** The simulators' event-loop delay in the steady window (ms): the worst process's p99 and max. */
  simLoopP99Ms?: number;
  simLoopMaxMs?: number;
  /** The leader's longest event-loop delay in the steady window (ms, from its /metrics every 2 s). */
  leaderLoopMaxMs?: number;
  nodeLsMs: number;
  /** The same `docker node ls` with the leader's answers served from memory: the CLI's own time. */
  nodeLsFloorMs: number;
  /** Where node ls's time goes, with every session up, and quiet (the simulators stopped, the records kept). */
  nodeLs?: { loaded: NodeLsBreakdown; quiet?: NodeLsBreakdown };
  fanoutP99Ms: number;
  fanoutReached: number;
  /** Per change: the leader's push histogram bound on its own time to write the last session (ms). */
  fanoutLeaderBoundsMs?: (number | undefined)[];
  /**
   * Per change: CPU ms each part spent from the POST until every session had it (the leader, the other
   * managers together, the simulators together): on two shared cores, a fan-out is as fast as its CPU allows.
   */
  fanoutCpuMs?: { leader: number; followers: number; simulators: number }[];
  leaderRssMiB: number;
  /** The leader's V8 heap in use at the end of the steady window (MiB). */
  leaderHeapUsedMiB: number | undefined;
  /** The longest event-loop delay of the leader from the first join to the failover (ms). */
  longestStallMs: number | undefined;
  heapSnapshot?: string;
  failover?: {
    backSeconds: number | undefined;
    backAtTimeout: number;
    falselyDown: number;
    extraElections: number;
    /** CPU seconds of each surviving manager and of the simulators from the SIGKILL until all were back. */
    cpuToBack?: Record<string, number>;
    timeline?: FailoverTimeline;
    /** Each survivor's longest event-loop stall (ms) from the SIGKILL to the end of the phase (its /metrics). */
    survivorStallMs?: Record<string, number>;
    /** TLS handshakes the new leader completed since it started, full and resumed (its /metrics). */
    newLeaderHandshakes?: Record<string, number>;
  };
  metrics?: Record<string, number | undefined>;
  profile?: string[];
  simulatorProfile?: string[];
  /** CPU seconds spent during the join phase, per process (where a join's cost goes). */
  joinCpu?: { managers: Record<string, number>; simulators: number; wallSeconds: number };
  /** Median and p99 ms of each stage of a join (root CA, key and CSR, certificate, first session message). */
  joinStages?: Record<keyof JoinStages, { p50: number; p99: number }>;
}

/** `docker node ls` taken apart (medians of 3, ms). */
interface NodeLsBreakdown {
  /** The CLI against the leader: wall, and its own CPU (user + system; NaN without /usr/bin/time). */
  cliMs: number;
  cliCpuMs: number;
  /** The CLI with the leader's answers replayed from memory. */
  floorMs: number;
  floorCpuMs: number;
  /** GET /nodes from the leader alone: until its head came, until its last byte came; its size. */
  getHeadMs: number;
  getTotalMs: number;
  bytes: number;
}

async function formCluster(dir: string, o: Options, metrics: boolean): Promise<Shoald[]> {
  const ips = ["127.0.0.1", "127.0.0.2", "127.0.0.3"];
  const port = await commonFreePort(ips);
  const mport = await commonFreePort(ips);
  const profileDir = o.profile ? join(dir, "profiles") : undefined;
  const ds = ips.map((ip, i) => {
    const name = `scale-m${i + 1}`;
    const heapDir = o.heapSnapshotAt !== undefined ? join(dir, "heap", name) : undefined;
    const metricsPort = metrics ? mport : undefined;
    return new Shoald(name, ip, port, join(dir, `m${i + 1}`), {
      metricsPort,
      profileDir,
      heapDir,
      nodeFlags: o.nodeFlags,
    });
  });
  for (const d of ds) await mkdir(d.dir, { recursive: true });
  const [d1, ...rest] = ds as [Shoald, Shoald, Shoald];
  d1.start();
  await d1.ready();
  await callOk(d1.sock, "POST", "/swarm/init", { ListenAddr: d1.addr, AdvertiseAddr: d1.addr });
  const swarm = await callOk<{ JoinTokens: { Manager: string } }>(d1.sock, "GET", "/swarm");
  for (const d of rest) {
    d.start();
    await d.ready();
    await callOk(d.sock, "POST", "/swarm/join", {
      RemoteAddrs: [d1.addr],
      JoinToken: swarm.JoinTokens.Manager,
      ListenAddr: d.addr,
      AdvertiseAddr: d.addr,
    });
  }
  for (const d of ds) await d.loadIdentity();
  return ds;
}

async function leaderOf(ds: Shoald[]): Promise<Shoald> {
  return waitUntil("a leader", 60_000, async () => {
    for (const d of ds.filter((x) => x.alive)) {
      try {
        const nodes = await callOk<ApiNode[]>(d.sock, "GET", "/nodes", undefined, 10_000);
        const id = nodes.find((n) => n.ManagerStatus?.Leader)?.ID;
        const l = ds.find((x) => x.nodeId === id && x.alive);
        if (l) return l;
      } catch {
        /* try the next */
      }
    }
    return undefined;
  });
}

/** `docker node ls`, the table a user reads: the CLI's wall time (ms). */
async function dockerNodeLs(sock: string): Promise<number> {
  return (await dockerNodeLsRun(sock)).wallMs;
}

/** One `docker node ls`: its wall time and, where /usr/bin/time is installed, the CLI's CPU (user + system). */
function dockerNodeLsRun(sock: string): Promise<{ wallMs: number; cpuMs: number }> {
  const timed = existsSync(TIME);
  const [cmd, args] = timed ? [TIME, ["-f", "%U %S", DOCKER, "node", "ls"]] : [DOCKER, ["node", "ls"]];
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    execFile(
      cmd,
      args,
      { env: { ...process.env, DOCKER_HOST: `unix://${sock}` }, maxBuffer: 64 << 20, timeout: 60_000 },
      (e, _out, err) => {
        if (e) return reject(e);
        const wallMs = performance.now() - t0;
        const [u, sys] = (timed ? (String(err).trim().split("\n").at(-1) ?? "") : "").split(" ").map(Number);
        resolve({ wallMs, cpuMs: u !== undefined && sys !== undefined ? (u + sys) * 1000 : Number.NaN });
      },
    );
  });
}

/** Median of three runs of `f` (one warm-up run first), per field. */
async function median3<T extends Record<string, number>>(f: () => Promise<T>): Promise<T> {
  await f();
  const runs: T[] = [];
  for (let i = 0; i < 3; i++) runs.push(await f());
  const out: Record<string, number> = {};
  for (const k of Object.keys(runs[0]!))
    out[k] = percentile(
      runs.map((r) => r[k]!),
      50,
    );
  return out as T;
}

/** GET /nodes straight from the leader, read as fast as this process can: until the head, until the end. */
function getNodes(sock: string): Promise<{ headMs: number; totalMs: number; bytes: number }> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const req = http.request({ socketPath: sock, path: "/v1.50/nodes", agent: false }, (res) => {
      const headMs = performance.now() - t0;
      let bytes = 0;
      res.on("data", (c: Buffer) => {
        bytes += c.length;
      });
      res.on("end", () => resolve({ headMs, totalMs: performance.now() - t0, bytes }));
      res.on("error", reject);
    });
    req.on("error", reject);
    req.end();
  });
}

/** Where `docker node ls`'s time goes: the CLI against the leader and against its answers replayed, and the leader's own GET /nodes. */
async function nodeLsBreakdown(sock: string, dir: string): Promise<NodeLsBreakdown> {
  const cli = await median3(() => dockerNodeLsRun(sock));
  const floor = await nodeLsFloor(sock, dir, (proxy) => median3(() => dockerNodeLsRun(proxy)));
  const get = await median3(() => getNodes(sock));
  return {
    cliMs: cli.wallMs,
    cliCpuMs: cli.cpuMs,
    floorMs: floor.wallMs,
    floorCpuMs: floor.cpuMs,
    getHeadMs: get.headMs,
    getTotalMs: get.totalMs,
    bytes: get.bytes,
  };
}

function printBreakdown(what: string, b: NodeLsBreakdown): void {
  const f = (x: number) => (Number.isFinite(x) ? x.toFixed(0) : "-");
  console.log(
    `  node ls ${what}: CLI ${f(b.cliMs)} ms (its CPU ${f(b.cliCpuMs)} ms); answers replayed ${f(b.floorMs)} ms (CPU ${f(b.floorCpuMs)} ms); ` +
      `GET /nodes alone: head after ${f(b.getHeadMs)} ms, all ${(b.bytes / 1e6).toFixed(1)} MB after ${f(b.getTotalMs)} ms`,
  );
}

/**
 * The docker CLI's own floor for `docker node ls`: the same answers, served from memory. A proxy on a unix
 * socket in `dir` forwards each request it has not seen to the leader and keeps the answer; the CLI runs
 * once through it (so every answer is kept), then `measure` runs it from memory alone.
 */
async function nodeLsFloor<T>(leaderSock: string, dir: string, measure: (proxySock: string) => Promise<T>): Promise<T> {
  const kept = new Map<string, { status: number; headers: http.IncomingHttpHeaders; body: Buffer }>();
  const forward = (req: http.IncomingMessage) =>
    new Promise<{ status: number; headers: http.IncomingHttpHeaders; body: Buffer }>((resolve, reject) => {
      const up = http.request(
        { socketPath: leaderSock, path: req.url, method: req.method, headers: req.headers },
        (r) => {
          const chunks: Buffer[] = [];
          r.on("data", (c: Buffer) => chunks.push(c));
          r.on("end", () => resolve({ status: r.statusCode ?? 500, headers: r.headers, body: Buffer.concat(chunks) }));
          r.on("error", reject);
        },
      );
      up.on("error", reject);
      req.pipe(up);
    });
  const server = http.createServer((req, res) => {
    const key = `${req.method} ${req.url}`;
    const got = kept.get(key);
    const answer = got
      ? Promise.resolve(got)
      : forward(req).then((a) => {
          kept.set(key, a);
          return a;
        });
    answer.then(
      (a) => {
        const headers = { ...a.headers };
        delete headers["transfer-encoding"];
        headers["content-length"] = String(a.body.length);
        res.writeHead(a.status, headers);
        res.end(req.method === "HEAD" ? undefined : a.body);
      },
      () => {
        res.writeHead(502);
        res.end();
      },
    );
  });
  const sock = join(dir, "node-ls-floor.sock");
  await new Promise<void>((resolve) => server.listen(sock, resolve));
  try {
    await dockerNodeLs(sock);
    return await measure(sock);
  } finally {
    server.close();
    server.closeAllConnections();
  }
}

/**
 * node ls on a quiet machine: the simulators stopped (no session, no heartbeat), the leader's node records
 * kept. Measured once no node changes any more (every worker marked down), so the leader serves its list.
 */
async function quietNodeLs(ds: Shoald[], w: Workers, dir: string): Promise<NodeLsBreakdown> {
  await w.stop();
  const leader = await leaderOf(ds.filter((d) => d.alive));
  let last = "";
  await waitUntil(
    "every node's status to settle",
    120_000,
    async () => {
      const r = await call(leader.sock, "GET", "/nodes", undefined, 30_000);
      const nodes = r.body as ApiNode[];
      const now = nodes.map((n) => n.Status.State).join();
      const settled = now === last && !nodes.some((n) => n.Status.State === "ready" && !n.ManagerStatus);
      last = now;
      return settled ? true : undefined;
    },
    3_000,
  );
  const quiet = await nodeLsBreakdown(leader.sock, dir);
  printBreakdown("quiet (simulators stopped)", quiet);
  return quiet;
}

async function joinPhase(o: Options, n: number, ds: Shoald[], w: Workers, row: Row): Promise<void> {
  const swarm = await callOk<{ JoinTokens: { Worker: string } }>(ds[0]!.sock, "GET", "/swarm");
  const per = Math.ceil(n / o.procs);
  const cpu0 = { managers: ds.map((d) => d.cpuSeconds()), sims: w.cpuSeconds() };
  const t0 = Date.now();
  for (let i = 0; i < o.procs; i++) {
    const count = Math.max(0, Math.min(per, n - i * per));
    w.send(i, {
      t: "join",
      managers: ds.map((d) => d.addr),
      token: swarm.JoinTokens.Worker,
      count,
      prefix: `sim${i}`,
      concurrency: o.concurrency,
      deltas: !(o.deltasAb && i % 2 === 1),
    });
  }
  let lastJoin = t0;
  let joined = 0;
  const stages: JoinStages[] = [];
  let lastPrint = 0;
  const deadline = t0 + o.joinTimeoutS * 1000;
  for (;;) {
    await sleep(1000);
    const st = await w.stats();
    joined = sum(st.map((s) => s.joined));
    for (const s of st) stages.push(...s.joinStagesMs);
    for (const s of st) for (const at of s.joinDoneAt) lastJoin = Math.max(lastJoin, at);
    const sessions = sum(st.map((s) => s.sessions));
    if (o.heapSnapshotAt !== undefined && row.heapSnapshot === undefined && joined >= o.heapSnapshotAt) {
      row.heapSnapshot = await (await leaderOf(ds)).heapSnapshot();
    }
    if (Date.now() - lastPrint > 10_000) {
      lastPrint = Date.now();
      console.log(`  ${((Date.now() - t0) / 1000).toFixed(0)} s: ${joined} joined, ${sessions} sessions`);
    }
    if (sessions >= n) {
      row.sessionsUpSeconds = (Date.now() - t0) / 1000;
      break;
    }
    if (Date.now() > deadline) break;
  }
  const stage = (k: keyof JoinStages) => {
    const xs = stages.map((x) => x[k]);
    return { p50: percentile(xs, 50), p99: percentile(xs, 99) };
  };
  row.joinStages = { root: stage("root"), key: stage("key"), issue: stage("issue"), session: stage("session") };
  row.joinCpu = {
    managers: Object.fromEntries(ds.map((d, i) => [d.name, d.cpuSeconds() - cpu0.managers[i]!])),
    simulators: w.cpuSeconds() - cpu0.sims,
    wallSeconds: (Date.now() - t0) / 1000,
  };
  row.joined = joined;
  row.joinSeconds = (lastJoin - t0) / 1000;
  row.joinPerS = joined / Math.max(0.001, row.joinSeconds);
}

async function steadyPhase(o: Options, leader: Shoald, w: Workers, row: Row, stalls: StallWatch): Promise<void> {
  await sleep(5000);
  await w.stats(); // drop the samples of the join
  const c0 = leader.cpuSeconds();
  const s0 = w.cpuSeconds();
  const t0 = performance.now();
  const from = Date.now();
  await sleep(o.steadySeconds * 1000);
  const c1 = leader.cpuSeconds();
  const s1 = w.cpuSeconds();
  const st = await w.stats();
  row.simLoopP99Ms = Math.max(...st.map((s) => s.loopP99Ms));
  row.simLoopMaxMs = Math.max(...st.map((s) => s.loopMaxMs));
  // The leader's reads that cover the window (each covers the 2 s before it).
  row.leaderLoopMaxMs = stalls.maxBetween(leader, from + 2000, Date.now());
  row.leaderCpuPct = ((c1 - c0) / ((performance.now() - t0) / 1000)) * 100;
  row.simCpuPct = ((s1 - s0) / ((performance.now() - t0) / 1000)) * 100;
  console.log(
    `  steady ${o.steadySeconds} s: leader ${row.leaderCpuPct.toFixed(1)} %, simulators ${row.simCpuPct.toFixed(1)} % of one core`,
  );
  const hb = st.flatMap((s) => s.heartbeatsMs);
  row.heartbeatP99Ms = percentile(hb, 99);
  row.heartbeatCount = hb.length;
  row.heartbeatFailures = sum(st.map((s) => s.heartbeatFailures));
  row.leaderRssMiB = leader.memMiB().rss;
  const used = metricValue(await leader.metrics(), "nodejs_heap_size_used_bytes");
  row.leaderHeapUsedMiB = used === undefined ? undefined : used / 2 ** 20;
}

/**
 * The longest event-loop delay of each manager, from its /metrics every 2 s (prom-client resets
 * nodejs_eventloop_lag_max_seconds at each read, so the max of the reads is the max over the time).
 */
class StallWatch {
  private readonly maxMs = new Map<Shoald, number>();
  /** Every read: when (wall ms) and the longest delay since the previous read. */
  private readonly reads = new Map<Shoald, { at: number; ms: number }[]>();
  private timer: NodeJS.Timeout | undefined;
  private busy = false;

  start(ds: Shoald[]): void {
    this.timer = setInterval(() => {
      if (this.busy) return;
      this.busy = true;
      void Promise.all(
        ds
          .filter((d) => d.alive)
          .map(async (d) => {
            const lag = metricValue(await d.metrics(), "nodejs_eventloop_lag_max_seconds");
            if (lag === undefined) return;
            this.maxMs.set(d, Math.max(this.maxMs.get(d) ?? 0, lag * 1000));
            const reads = this.reads.get(d) ?? [];
            reads.push({ at: Date.now(), ms: lag * 1000 });
            this.reads.set(d, reads);
          }),
      ).finally(() => {
        this.busy = false;
      });
    }, 2000);
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
  }

  of(d: Shoald): number | undefined {
    return this.maxMs.get(d);
  }

  /** The longest delay of the reads made between `from` and `to` (wall ms). */
  maxBetween(d: Shoald, from: number, to: number): number | undefined {
    const ms = (this.reads.get(d) ?? []).filter((r) => r.at >= from && r.at <= to).map((r) => r.ms);
    return ms.length > 0 ? Math.max(...ms) : undefined;
  }
}

/** The cumulative bucket counts of the leader's push latency histogram (le in seconds -> count). */
function pushBuckets(text: string | undefined): Map<number, number> {
  const out = new Map<number, number>();
  for (const m of (text ?? "").matchAll(/^shoal_dispatcher_push_seconds_bucket\{le="([^"]+)"\} (\S+)$/gm)) {
    out.set(m[1] === "+Inf" ? Number.POSITIVE_INFINITY : Number(m[1]), Number(m[2]));
  }
  return out;
}

/**
 * The bound (ms) under which every batch the leader sent between two reads of its histogram was sent: for a
 * fan-out, the leader's own time from the change to its write to the last session (a bucket's upper edge).
 */
function leaderPushBoundMs(before: Map<number, number>, after: Map<number, number>): number | undefined {
  const les = [...after.keys()].sort((a, b) => a - b);
  const total = (after.get(Number.POSITIVE_INFINITY) ?? 0) - (before.get(Number.POSITIVE_INFINITY) ?? 0);
  if (total <= 0) return undefined;
  const le = les.find((x) => (after.get(x) ?? 0) - (before.get(x) ?? 0) >= total);
  return le === undefined ? undefined : le * 1000;
}

async function fanoutPhase(ds: Shoald[], leader: Shoald, w: Workers, row: Row, ab: boolean): Promise<void> {
  const followers = ds.filter((d) => d !== leader && d.alive);
  const cpu = () => ({
    leader: leader.cpuSeconds(),
    followers: sum(followers.map((d) => d.cpuSeconds())),
    simulators: w.cpuSeconds(),
  });
  const cpus: { leader: number; followers: number; simulators: number }[] = [];
  const p99s: number[] = [];
  const bounds: (number | undefined)[] = [];
  let reached = Number.POSITIVE_INFINITY;
  for (const periodS of [6, 5, 6]) {
    const swarm = await callOk<{ Version: { Index: number }; Spec: { Dispatcher: { HeartbeatPeriod: number } } }>(
      leader.sock,
      "GET",
      "/swarm",
    );
    w.broadcast({ t: "expect", periodMs: periodS * 1000 });
    await sleep(200);
    const spec = { ...swarm.Spec, Dispatcher: { ...swarm.Spec.Dispatcher, HeartbeatPeriod: periodS * 1e9 } };
    const buckets0 = pushBuckets(await leader.metrics());
    const cpu0 = cpu();
    const t0 = Date.now();
    await callOk(leader.sock, "POST", `/swarm/update?version=${swarm.Version.Index}`, spec);
    // The change is committed and applied on the leader (its dispatcher has marked the sessions) by now.
    const postMs = Date.now() - t0;
    let seen: number[] = [];
    let byProc: number[][] = [];
    await waitUntil(
      "the change to reach every session",
      30_000,
      async () => {
        byProc = (await w.stats()).map((s) => s.sawExpectedAt);
        seen = byProc.flat();
        return seen.length >= row.joined ? true : undefined;
      },
      250,
    ).catch(() => undefined);
    // Read when the last session had it (to the bench's 250 ms poll): clock ticks of 10 ms.
    const cpu1 = cpu();
    const used = {
      leader: Math.round((cpu1.leader - cpu0.leader) * 1000),
      followers: Math.round((cpu1.followers - cpu0.followers) * 1000),
      simulators: Math.round((cpu1.simulators - cpu0.simulators) * 1000),
    };
    cpus.push(used);
    if (ab) {
      // The even processes' agents take deltas, the odd ones' do not: the same leader, the same batches.
      const half = (odd: number) =>
        byProc
          .filter((_, i) => i % 2 === odd)
          .flat()
          .map((at) => at - t0);
      const p = (xs: number[]) => [50, 90, 99].map((q) => percentile(xs, q).toFixed(0)).join("/");
      console.log(
        `    A/B: agents taking deltas p50/p90/p99 ${p(half(0))} ms; agents taking whole messages ${p(half(1))} ms`,
      );
    }
    reached = Math.min(reached, seen.length);
    const took = seen.map((at) => at - t0);
    p99s.push(percentile(took, 99));
    const bound = leaderPushBoundMs(buckets0, pushBuckets(await leader.metrics()));
    bounds.push(bound);
    const ps = [10, 50, 90, 99, 100].map((p) => `p${p} ${percentile(took, p).toFixed(0)}`).join(", ");
    const lb = bound === undefined ? "" : `; the leader wrote the last within ${bound} ms of the change`;
    console.log(`  fan-out of a ${periodS} s period: ${ps} ms (${seen.length} sessions)${lb}`);
    console.log(`    POST /swarm/update answered (committed, applied on the leader) after ${postMs} ms`);
    console.log(
      `    CPU until then: leader ${used.leader} ms, other managers ${used.followers} ms, simulators ${used.simulators} ms`,
    );
    await sleep(1000);
  }
  row.fanoutP99Ms = Math.max(...p99s);
  row.fanoutLeaderBoundsMs = bounds;
  row.fanoutCpuMs = cpus;
  row.fanoutReached = reached;
}

async function failoverPhase(o: Options, ds: Shoald[], leader: Shoald, w: Workers, row: Row): Promise<void> {
  const n = row.joined;
  const survivors = ds.filter((d) => d !== leader);
  const down = new Set<string>();
  w.broadcast({ t: "mark" });
  await sleep(200);
  const cpu0 = { survivors: survivors.map((d) => d.cpuSeconds()), sims: w.cpuSeconds() };
  let cpuToBack: Record<string, number> | undefined;
  const t0 = Date.now();
  await leader.kill();
  // The survivors' longest event-loop stalls through the failover: a new leader that stalls past Raft's
  // keepalive and election timeout loses its peers, and a second election follows.
  const stalls = new StallWatch();
  stalls.start(survivors);
  let back: number | undefined;
  let backCount = 0;
  let lastPoll = 0;
  const graceEndMs = t0 + 25_000;
  while (Date.now() - t0 < o.recoverTimeoutS * 1000) {
    await sleep(500);
    backCount = sum((await w.stats(t0)).map((s) => s.sessionsSince));
    if (back === undefined && backCount >= n) {
      back = (Date.now() - t0) / 1000;
      cpuToBack = Object.fromEntries(survivors.map((d, i) => [d.name, d.cpuSeconds() - cpu0.survivors[i]!]));
      cpuToBack.simulators = w.cpuSeconds() - cpu0.sims;
    }
    if (Date.now() - lastPoll > 2000) {
      lastPoll = Date.now();
      for (const d of survivors) {
        try {
          const nodes = await callOk<ApiNode[]>(d.sock, "GET", "/nodes", undefined, 10_000);
          for (const x of nodes) if (x.Status.State === "down" && !x.ManagerStatus) down.add(x.ID);
          break;
        } catch {
          /* no leader yet */
        }
      }
    }
    if (back !== undefined && Date.now() > graceEndMs) break;
  }
  stalls.stop();
  const stallMs = Object.fromEntries(survivors.map((d) => [d.name, Math.round(stalls.of(d) ?? Number.NaN)]));
  const elections = sum(survivors.map((d) => d.electionsSince(t0)));
  let timeline: FailoverTimeline | undefined;
  let handshakes: Record<string, number> | undefined;
  try {
    const newLeader = await leaderOf(survivors);
    timeline = failoverTimeline(await w.timelines(), t0, leader.addr, newLeader.addr);
    const text = await newLeader.metrics();
    if (text) {
      handshakes = {};
      for (const kind of ["full", "resumed"]) {
        const v = metricValue(text, "shoal_tls_handshakes_total", `kind="${kind}"`);
        if (v !== undefined) handshakes[kind] = v;
      }
    }
  } catch (e) {
    console.error(`  no failover timeline: ${e instanceof Error ? e.message : String(e)}`);
  }
  row.failover = {
    backSeconds: back,
    backAtTimeout: backCount,
    falselyDown: down.size,
    extraElections: Math.max(0, elections - 1),
    ...(cpuToBack ? { cpuToBack } : {}),
    ...(timeline ? { timeline } : {}),
    survivorStallMs: stallMs,
    ...(handshakes ? { newLeaderHandshakes: handshakes } : {}),
  };
}

/** Where each node's time to get back went, from its agent's steps (test/bench/sim-worker.ts). */
export interface FailoverTimeline {
  nodes: number;
  /** Seconds after the SIGKILL: when nodes noticed, when the first session on the new leader was up. */
  noticedS: { p50: number; p99: number; max: number };
  firstBackS: number;
  backS: { p50: number; p90: number; p99: number; max: number };
  /** Nodes back per 5 s after the SIGKILL ("0-5": ..., "never"). */
  backHistogram: Record<string, number>;
  /** Session attempts per node until it was back (1, 2, ..., "6+"). */
  attemptsHistogram: Record<string, number>;
  /** Attempts by target (dead, follower, leader) and outcome (up, redirect, no-leader, refused, code N). */
  attempts: Record<string, number>;
  /** Per node, seconds waited on purpose (the spread after the break, backoff after failures). */
  spreadS: { p50: number; max: number };
  backoffS: { p50: number; p99: number; max: number };
  /** Per node, seconds from noticing to back that were not waiting: connecting, handshakes, answers. */
  workingS: { p50: number; p99: number; max: number };
  /**
   * Seconds from each attempt to its outcome (the session up, or the attempt failed), over every attempt: what
   * the agent's bound on the wait for a first message (FIRST_MESSAGE_TIMEOUT_MS) must stay above.
   */
  attemptS: { p50: number; p99: number; max: number };
  /** TLS handshakes the simulators began and completed, by target (dead, follower, leader), per node. */
  handshakesPerNode: { begun: number; done: number; resumed: number; byTarget: Record<string, number> };
}

function failoverTimeline(
  reports: WorkerTimelines[],
  t0: number,
  deadAddr: string,
  leaderAddr: string,
): FailoverTimeline {
  const s = (ms: number) => Math.round(ms / 100) / 10;
  const target = (addr: string) => (addr === deadAddr ? "dead" : addr === leaderAddr ? "leader" : "follower");
  const timelines: Timeline[] = reports.flatMap((r) => r.timelines);
  const noticed: number[] = [];
  const back: number[] = [];
  const spread: number[] = [];
  const backoff: number[] = [];
  const working: number[] = [];
  const attemptMs: number[] = [];
  const backHistogram: Record<string, number> = {};
  const attemptsHistogram: Record<string, number> = {};
  const attempts: Record<string, number> = {};
  const bump = (m: Record<string, number>, k: string, by = 1) => {
    m[k] = (m[k] ?? 0) + by;
  };
  for (const t of timelines) {
    const lost = t.events.find((e) => e.kind === "failed" && e.established) ?? t.events[0];
    const up = t.events.find((e) => e.kind === "up");
    if (lost) noticed.push(lost.at - t0);
    let tries = 0;
    let waitedSpread = 0;
    let waitedBackoff = 0;
    let attemptAt: number | undefined;
    for (const e of t.events) {
      if (up && e.at > up.at) break;
      if (attemptAt !== undefined && (e.kind === "up" || e.kind === "failed")) {
        attemptMs.push(e.at - attemptAt);
        attemptAt = undefined;
      }
      if (e.kind === "attempt") {
        tries++;
        attemptAt = e.at;
      } else if (e.kind === "wait" && e.why === "spread") waitedSpread += e.ms;
      else if (e.kind === "wait") waitedBackoff += e.ms;
      else if (e.kind === "up") bump(attempts, `${target(e.addr)} up`);
      else if (e.kind === "failed" && !e.established) {
        const outcome = e.hint
          ? "redirect"
          : e.code === 14 && target(e.addr) === "dead"
            ? "refused"
            : e.code === 14
              ? "no-leader"
              : `code ${e.code}`;
        bump(attempts, `${target(e.addr)} ${outcome}`);
      }
    }
    spread.push(waitedSpread);
    backoff.push(waitedBackoff);
    bump(attemptsHistogram, tries >= 6 ? "6+" : String(tries));
    if (!up) {
      bump(backHistogram, "never");
      continue;
    }
    back.push(up.at - t0);
    const bucket = Math.floor((up.at - t0) / 5000) * 5;
    bump(backHistogram, `${bucket}-${bucket + 5}`);
    if (lost) working.push(up.at - lost.at - waitedSpread - waitedBackoff);
  }
  const p = (xs: number[], q: number) => s(percentile(xs, q));
  const byTarget: Record<string, number> = {};
  let begun = 0;
  let done = 0;
  let resumed = 0;
  for (const r of reports) {
    for (const n of Object.values(r.handshakesBegun)) begun += n;
    for (const n of Object.values(r.handshakesResumed ?? {})) resumed += n;
    for (const [addr, n] of Object.entries(r.handshakesDone)) {
      done += n;
      bump(byTarget, target(addr), n);
    }
  }
  const n = Math.max(1, timelines.length);
  const sortedHistogram = Object.fromEntries(
    Object.entries(backHistogram).sort((a, b) => bucketStart(a[0]) - bucketStart(b[0])),
  );
  return {
    nodes: timelines.length,
    noticedS: { p50: p(noticed, 50), p99: p(noticed, 99), max: s(Math.max(...noticed)) },
    firstBackS: s(Math.min(...back)),
    backS: { p50: p(back, 50), p90: p(back, 90), p99: p(back, 99), max: s(Math.max(...back)) },
    backHistogram: sortedHistogram,
    attemptsHistogram,
    attempts,
    spreadS: { p50: p(spread, 50), max: s(Math.max(...spread)) },
    backoffS: { p50: p(backoff, 50), p99: p(backoff, 99), max: s(Math.max(...backoff)) },
    workingS: { p50: p(working, 50), p99: p(working, 99), max: s(Math.max(...working)) },
    attemptS: { p50: p(attemptMs, 50), p99: p(attemptMs, 99), max: s(Math.max(...attemptMs)) },
    handshakesPerNode: {
      begun: Math.round((begun / n) * 100) / 100,
      done: Math.round((done / n) * 100) / 100,
      resumed: Math.round((resumed / n) * 100) / 100,
      byTarget: Object.fromEntries(Object.entries(byTarget).map(([k, v]) => [k, Math.round((v / n) * 100) / 100])),
    },
  };
}

const bucketStart = (k: string) => (k === "never" ? Number.POSITIVE_INFINITY : Number.parseInt(k, 10));

async function readMetrics(leader: Shoald, row: Row): Promise<void> {
  const text = await leader.metrics();
  if (!text) return;
  row.metrics = {
    raftTerm: metricValue(text, "shoal_raft_term"),
    raftLeaderChanges: metricValue(text, "shoal_raft_leader_changes_total"),
    sessions: metricValue(text, "shoal_dispatcher_sessions"),
    heartbeats: metricValue(text, "shoal_dispatcher_heartbeats_total"),
    pushes: metricValue(text, "shoal_dispatcher_pushes_total"),
    nodesReady: metricValue(text, "shoal_dispatcher_nodes", 'state="ready"'),
    nodesDown: metricValue(text, "shoal_dispatcher_nodes", 'state="down"'),
    eventLoopLagP99S: metricValue(text, "nodejs_eventloop_lag_p99_seconds"),
    rssBytes: metricValue(text, "process_resident_memory_bytes"),
  };
}

async function runOne(o: Options, n: number, metrics: boolean): Promise<Row> {
  const dir = await mkdtemp(join(tmpdir(), `shoal-scale-${n}-`));
  tempDirs.add(dir);
  const row: Row = {
    nodes: n,
    joined: 0,
    joinPerS: 0,
    joinSeconds: 0,
    sessionsUpSeconds: undefined,
    leaderCpuPct: Number.NaN,
    heartbeatP99Ms: Number.NaN,
    heartbeatCount: 0,
    heartbeatFailures: 0,
    nodeLsMs: Number.NaN,
    nodeLsFloorMs: Number.NaN,
    fanoutP99Ms: Number.NaN,
    fanoutReached: 0,
    leaderRssMiB: Number.NaN,
    leaderHeapUsedMiB: undefined,
    longestStallMs: undefined,
  };
  let ds: Shoald[] = [];
  const stalls = new StallWatch();
  const w = new Workers(Math.min(o.procs, n), o.profile ? join(dir, "profiles", "simulators") : undefined);
  try {
    console.log(`N=${n}: 3 managers, ${o.procs} worker processes, state in ${dir}`);
    ds = await formCluster(dir, o, metrics);
    let leader = await leaderOf(ds);
    if (metrics) stalls.start(ds);
    const joinFrom = ((Date.now() - leader.startedAtMs) / 1000).toFixed(1);
    await joinPhase(o, n, ds, w, row);
    if (o.profile) {
      // Seconds into the leader's profile (from its process start, within ~0.1 s) of the join phase.
      const joinTo = ((Date.now() - leader.startedAtMs) / 1000).toFixed(1);
      console.log(`  leader ${leader.name}: join ${joinFrom}-${joinTo} s`);
      console.log(
        `  (node /work/tools/incl.mjs ${join(dir, "profiles", leader.name)}/*.cpuprofile ${joinFrom} ${joinTo})`,
      );
    }
    console.log(
      `  joined ${row.joined} in ${row.joinSeconds.toFixed(1)} s; sessions up: ${row.sessionsUpSeconds ?? "no"}`,
    );
    leader = await leaderOf(ds);
    const into = (): string => ((Date.now() - leader.startedAtMs) / 1000).toFixed(1);
    const steadyFrom = into();
    await steadyPhase(o, leader, w, row, stalls);
    const steadyTo = into();
    const loaded = await nodeLsBreakdown(leader.sock, dir);
    row.nodeLsMs = loaded.cliMs;
    row.nodeLsFloorMs = loaded.floorMs;
    row.nodeLs = { loaded };
    printBreakdown("with every session up", loaded);
    const fanoutFrom = into();
    await fanoutPhase(ds, leader, w, row, o.deltasAb);
    if (o.profile) {
      // Seconds into the leader's profile (from its process start, within ~0.1 s) of each phase.
      const file = join(dir, "profiles", leader.name);
      console.log(`  leader ${leader.name}: steady ${steadyFrom}-${steadyTo} s, fan-out ${fanoutFrom}-${into()} s`);
      console.log(`  (node /work/tools/incl.mjs ${file}/*.cpuprofile ${steadyFrom} ${steadyTo})`);
    }
    await readMetrics(leader, row);
    stalls.stop();
    row.longestStallMs = stalls.of(leader);
    const killedAt = Date.now();
    if (o.failover) await failoverPhase(o, ds, leader, w, row);
    if (!o.profile && row.nodeLs) row.nodeLs.quiet = await quietNodeLs(ds, w, dir);
    if (o.profile) {
      const profiled = o.failover ? await leaderOf(ds.filter((d) => d !== leader)) : leader;
      await w.stop();
      await Promise.all(ds.map((d) => d.stop()));
      row.profile = topOfProfile(join(dir, "profiles", profiled.name));
      if (o.failover) {
        // Seconds into the new leader's profile (from its process start, within ~0.1 s) when the old one was killed.
        const at = ((killedAt - profiled.startedAtMs) / 1000).toFixed(1);
        console.log(`  profile of the new leader ${profiled.name} in ${join(dir, "profiles", profiled.name)}`);
        console.log(`  the failover starts ${at} s into it (node /work/tools/incl.mjs FILE ${at} ${Number(at) + 60})`);
      }
      row.simulatorProfile = topOfProfile(join(dir, "profiles", "simulators"));
    }
    return row;
  } catch (e) {
    for (const d of ds) console.error(`--- ${d.name} log tail:\n${d.logTail(10)}`);
    throw e;
  } finally {
    stalls.stop();
    await w.stop();
    await Promise.all(ds.map((d) => d.stop().catch(() => d.kill())));
    if (!o.keep) {
      rmSync(dir, { recursive: true, force: true });
      tempDirs.delete(dir);
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// Profiles: self time per function, from V8's .cpuprofile

interface CpuProfile {
  nodes: { id: number; callFrame: { functionName: string; url: string; lineNumber: number } }[];
  samples: number[];
}

export function topOfProfile(dir: string, top = 15): string[] {
  let files: string[];
  try {
    files = readdirSync(dir).filter((f) => f.endsWith(".cpuprofile"));
  } catch {
    return [];
  }
  const self = new Map<string, number>();
  let total = 0;
  for (const f of files) {
    const p = JSON.parse(readFileSync(join(dir, f), "utf8")) as CpuProfile;
    const byId = new Map(p.nodes.map((x) => [x.id, x.callFrame]));
    for (const id of p.samples) {
      const cf = byId.get(id);
      if (!cf) continue;
      const file = cf.url.replace(/^.*\/(dist|node_modules)\//, "$1/");
      const key = `${cf.functionName || "(anonymous)"} ${file}:${cf.lineNumber + 1}`;
      self.set(key, (self.get(key) ?? 0) + 1);
      total++;
    }
  }
  return [...self.entries()]
    .sort((a, b) => b[1] - a[1])
    .slice(0, top)
    .map(([k, v]) => `${((v / total) * 100).toFixed(1).padStart(5)} %  ${k}`);
}

// ---------------------------------------------------------------------------------------------------

function printTable(rows: Row[]): void {
  const f = (x: number | undefined, d = 0) => (x === undefined || !Number.isFinite(x) ? "-" : x.toFixed(d));
  console.log("");
  console.log(
    "| nodes | joined | join/s | sessions up | leader CPU | hb p99 | node ls | fan-out p99 | leader RSS | heap used | longest stall | after leader SIGKILL |",
  );
  console.log("|---|---|---|---|---|---|---|---|---|---|---|---|");
  for (const r of rows) {
    const fo = r.failover;
    const after = fo
      ? `${fo.backSeconds !== undefined ? `all back in ${f(fo.backSeconds, 1)} s` : `${fo.backAtTimeout}/${r.joined} back`}; ${fo.falselyDown} falsely Down; ${fo.extraElections} extra elections`
      : "-";
    console.log(
      `| ${r.nodes} | ${r.joined} | ${f(r.joinPerS, 1)} | ${r.sessionsUpSeconds !== undefined ? `${f(r.sessionsUpSeconds, 1)} s` : "no"} | ${f(r.leaderCpuPct)} % | ${f(r.heartbeatP99Ms)} ms (sim loop p99/max ${f(r.simLoopP99Ms)}/${f(r.simLoopMaxMs)}, leader loop max ${f(r.leaderLoopMaxMs)}) | ${f(r.nodeLsMs)} ms (CLI alone ${f(r.nodeLsFloorMs)}) | ${f(r.fanoutP99Ms)} ms (${r.fanoutReached}) | ${f(r.leaderRssMiB)} MiB | ${f(r.leaderHeapUsedMiB)} MiB | ${f(r.longestStallMs)} ms | ${after} |`,
    );
  }
  for (const r of rows) {
    const jc = r.joinCpu;
    if (!jc) continue;
    const parts = Object.entries(jc.managers).map(([name, sec]) => `${name} ${f(sec, 1)} s`);
    console.log(
      `join phase, N=${r.nodes}: ${f(jc.wallSeconds, 1)} s wall; CPU ${parts.join(", ")}, simulators ${f(jc.simulators, 1)} s`,
    );
    if (r.joinStages) {
      const st = Object.entries(r.joinStages).map(([k, v]) => `${k} ${f(v.p50)}/${f(v.p99)} ms`);
      console.log(`  a join's stages (p50/p99): ${st.join(", ")}`);
    }
  }
  for (const r of rows) {
    const tl = r.failover?.timeline;
    if (!tl) continue;
    console.log(`failover timeline, N=${r.nodes} (seconds after the SIGKILL):`);
    console.log(
      `  noticed p50/p99/max ${tl.noticedS.p50}/${tl.noticedS.p99}/${tl.noticedS.max}; first back ${tl.firstBackS}; back p50/p90/p99/max ${tl.backS.p50}/${tl.backS.p90}/${tl.backS.p99}/${tl.backS.max}`,
    );
    console.log(`  back per 5 s: ${JSON.stringify(tl.backHistogram)}`);
    console.log(`  attempts per node: ${JSON.stringify(tl.attemptsHistogram)}`);
    console.log(`  attempts (target outcome): ${JSON.stringify(tl.attempts)}`);
    console.log(
      `  per node: spread p50/max ${tl.spreadS.p50}/${tl.spreadS.max}; backoff p50/p99/max ${tl.backoffS.p50}/${tl.backoffS.p99}/${tl.backoffS.max}; working p50/p99/max ${tl.workingS.p50}/${tl.workingS.p99}/${tl.workingS.max}`,
    );
    console.log(`  each attempt to its outcome p50/p99/max ${tl.attemptS.p50}/${tl.attemptS.p99}/${tl.attemptS.max}`);
    console.log(`  TLS handshakes per node: ${JSON.stringify(tl.handshakesPerNode)}`);
    const cpu = r.failover?.cpuToBack;
    if (cpu) {
      const parts = Object.entries(cpu).map(([k, v]) => `${k} ${v.toFixed(1)} s`);
      console.log(`  CPU from the SIGKILL until all were back: ${parts.join(", ")}`);
    }
    const fo = r.failover;
    if (fo?.survivorStallMs) console.log(`  survivors' longest stall (ms): ${JSON.stringify(fo.survivorStallMs)}`);
    if (fo?.newLeaderHandshakes) {
      console.log(`  new leader's TLS handshakes since its start: ${JSON.stringify(fo.newLeaderHandshakes)}`);
    }
  }
  for (const r of rows) {
    if (r.profile?.length) {
      console.log(`\nleader profile, N=${r.nodes} (self time):`);
      for (const l of r.profile) console.log(`  ${l}`);
    }
    if (r.simulatorProfile?.length) {
      console.log(`\nsimulators' profile, N=${r.nodes} (self time):`);
      for (const l of r.simulatorProfile) console.log(`  ${l}`);
    }
  }
}

async function main(): Promise<void> {
  const o = parseArgs(process.argv.slice(2));
  cleanupOptions.keepTemp = o.keep;
  const metrics = await daemonSupportsMetrics();
  const rows: Row[] = [];
  for (const n of o.nodes) {
    rows.push(await runOne(o, n, metrics));
    printTable(rows);
  }
  const result = {
    benchmark: "scale",
    date: new Date().toISOString(),
    node: process.version,
    cpus: cpus().length,
    cpuModel: cpus()[0]?.model.trim() ?? "unknown",
    loadAverageAtEnd: loadavg(),
    options: o,
    rows,
  };
  await mkdir(dirname(o.out), { recursive: true });
  await writeFile(o.out, `${JSON.stringify(result, null, 2)}\n`);
  console.log(`\nresults written to ${o.out}`);
}

try {
  await main();
  cleanupSync();
  process.exit(0);
} catch (e) {
  console.error(`bench:scale failed: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`);
  cleanupSync();
  process.exit(1);
}
