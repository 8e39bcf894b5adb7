// Big-state join benchmark: a manager joins a swarm whose state is >= 100 MB.
//
//   npm run bench:bigjoin                              # 100 MB, 2 managers, then a third joins
//   npm run bench:bigjoin -- --mb 150 --writers 16 --out bench-results/bigjoin.json --keep
//   npm run bench:bigjoin -- --mb 20 --profile --keep   # CPU profiles of every daemon, under <dir>/profiles
//
// Two real shoald processes (127.0.0.1 and .2, one port, default Raft timing, --metrics-addr) form a
// swarm through the Engine API (`swarm init`, `swarm join` with the manager token). The state is filled
// through the Engine API: `--writers` concurrent POST /networks/create of overlay networks, each with
// labels of about (mb / 10,000) bytes (a real object: a subnet and a VNI are allocated for each), until the
// leader has taken a Raft snapshot (one every 10,000 entries) of at least `--mb` MB. Then a third shoald
// (127.0.0.3) joins as a manager; a new member starts from nothing, so the leader sends it that snapshot.
// Figures:
//   state           bytes of the snapshot the leader sends (its log: "snapshot taken")
//   join answered   POST /swarm/join on the joiner (certificate, raft learner) answered
//   snapshot in     the joiner has the whole snapshot (its log: "restored snapshot from leader")
//   applied         the joiner has persisted and applied it (its log: "snapshot applied"), if logged
//   voter           the leader promoted the joiner (its log: "promoting caught-up learner to voter")
//   node ls         the joiner answers GET /nodes listing 3 managers with a leader, and `docker node ls`
//                   (when the docker CLI is there); the join figure is from the join request to this
//   leader lag      the leader's event-loop lag (prom-client's monitorEventLoopDelay; every scrape resets
//                   it): max and p99 over the join, scraped every 500 ms; the same during the fill
//   RSS             peak resident set (VmHWM) of the leader and the joiner, and the max VmRSS sampled
//                   during the join
//   elections       "became leader" lines in any daemon's log after the join started (0 is right)
// Everything started (daemons, temp dirs) is cleaned up on success, failure and SIGINT.

import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, writeFile } from "node:fs/promises";
import { cpus, loadavg, tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { performance } from "node:perf_hooks";
import { cleanupOptions, cleanupSync, tempDirs } from "./cleanup.js";
import {
  commonFreePort,
  call as engineCall,
  type LogLine,
  metricValue,
  type Resp,
  Shoald,
  sleep,
  waitUntil as waitFor,
} from "./shoald.js";

const DOCKER = process.env.DOCKER_CLI ?? "/usr/local/bin/docker";
/** Entries between two Raft snapshots (src/raft/node.ts, the swarm's SnapshotInterval). */
const SNAPSHOT_INTERVAL = 10_000;

interface Options {
  mb: number;
  writers: number;
  joinTimeoutS: number;
  out: string;
  keep: boolean;
  profile: boolean;
}

function usage(): never {
  console.error(
    "usage: node dist/test/bench/bigjoin.js [--mb MB] [--writers W] [--join-timeout S] [--out FILE] [--keep] [--profile]",
  );
  process.exit(2);
}

function parseArgs(argv: string[]): Options {
  const o: Options = {
    mb: 100,
    writers: 16,
    joinTimeoutS: 300,
    out: join("bench-results", "bigjoin.json"),
    keep: false,
    profile: false,
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const num = (min: number): number => {
      const n = Number(argv[++i]);
      if (!Number.isFinite(n) || n < min) usage();
      return n;
    };
    if (a === "--mb") o.mb = num(1);
    else if (a === "--writers") o.writers = Math.floor(num(1));
    else if (a === "--join-timeout") o.joinTimeoutS = num(1);
    else if (a === "--out") o.out = argv[++i] ?? usage();
    else if (a === "--keep") o.keep = true;
    else if (a === "--profile") o.profile = true;
    else usage();
  }
  return o;
}

// ---------------------------------------------------------------------------------------------------
// Helpers

function waitUntil<T>(what: string, ms: number, f: () => Promise<T | undefined>, everyMs = 100): Promise<T> {
  return waitFor(what, ms, f, everyMs);
}

function call(sock: string, method: string, path: string, body?: unknown, timeoutMs = 10_000): Promise<Resp> {
  return engineCall(sock, method, path, body, timeoutMs);
}

async function callOk<T>(sock: string, method: string, path: string, body?: unknown, timeoutMs = 10_000): Promise<T> {
  const r = await call(sock, method, path, body, timeoutMs);
  if (r.status < 200 || r.status >= 300) {
    throw new Error(`${method} ${path}: ${r.status} ${r.text.trim().slice(0, 300)}`);
  }
  return r.body as T;
}

interface ApiNode {
  ID: string;
  ManagerStatus?: { Leader?: boolean; Reachability: string; Addr: string };
}

// ---------------------------------------------------------------------------------------------------
// Event-loop lag of a daemon, scraped from its metrics (each scrape resets the histogram)

class LagSampler {
  private timer: NodeJS.Timeout | undefined;
  private busy = false;
  maxS: number[] = [];
  p99S: number[] = [];

  constructor(private readonly d: Shoald) {}

  async start(everyMs: number): Promise<void> {
    await this.d.metrics(10_000); // reset the histogram: what follows is this window's
    this.timer = setInterval(() => void this.scrape(), everyMs);
  }

  private async scrape(): Promise<void> {
    if (this.busy) return;
    this.busy = true;
    try {
      const text = await this.d.metrics(10_000);
      const max = metricValue(text, "nodejs_eventloop_lag_max_seconds");
      const p99 = metricValue(text, "nodejs_eventloop_lag_p99_seconds");
      if (max !== undefined) this.maxS.push(max);
      if (p99 !== undefined) this.p99S.push(p99);
    } finally {
      this.busy = false;
    }
  }

  async stop(): Promise<{ maxMs: number; p99Ms: number; scrapes: number }> {
    if (this.timer) clearInterval(this.timer);
    while (this.busy) await sleep(20);
    await this.scrape();
    const ms = (xs: number[]) => Math.round(Math.max(0, ...xs) * 1000);
    return { maxMs: ms(this.maxS), p99Ms: ms(this.p99S), scrapes: this.maxS.length };
  }
}

// ---------------------------------------------------------------------------------------------------
// The run

interface Result {
  when: string;
  machine: { cpus: number; model: string; loadavg: number[] };
  options: Options;
  fill: {
    networks: number;
    labelBytesPerNetwork: number;
    seconds: number;
    writesPerS: number;
    leaderLagMaxMs: number;
    leaderLagP99Ms: number;
    /** Writes refused (no leader) and tried again. */
    failedWrites: number;
    /** Times the first leader stepped down during the fill. */
    leaderLostLeadership: number;
  };
  snapshotBytes: number;
  snapshotIndex: number;
  join: {
    answeredMs: number;
    snapshotReceivedMs: number | undefined;
    snapshotAppliedMs: number | undefined;
    voterMs: number | undefined;
    nodeLsMs: number;
    dockerNodeLsMs: number | undefined;
  };
  leaderLagDuringJoin: { maxMs: number; p99Ms: number; scrapes: number };
  rssMiB: {
    leaderPeak: number;
    joinerPeak: number;
    leaderMaxDuringJoin: number;
    joinerMaxDuringJoin: number;
  };
  electionsDuringJoin: number;
  /** The Raft and join steps of the join, from every daemon's log: ms after the join request, daemon, message. */
  timeline: string[];
  leaderTermBefore: number | undefined;
  leaderTermAfter: number | undefined;
}

function labelsOf(i: number, bytes: number): Record<string, string> {
  const per = 1000;
  const n = Math.max(1, Math.ceil(bytes / per));
  const out: Record<string, string> = {};
  const seed = `network-${i}-`;
  for (let k = 0; k < n; k++) {
    const base = `${seed}${k}-`;
    out[`bench.label.${k}`] = base.repeat(Math.ceil(per / base.length)).slice(0, Math.min(per, bytes - k * per));
  }
  return out;
}

/** Fill the store through the Engine API until the leader took a snapshot of at least `mb` MB. */
async function fill(o: Options, leader: Shoald, since: number): Promise<Result["fill"] & { snap: LogLine }> {
  const target = o.mb * 1_000_000;
  // The first snapshot covers about SNAPSHOT_INTERVAL entries: make them big enough, with a margin.
  const labelBytes = Math.min(60_000, Math.ceil((target * 1.08) / SNAPSHOT_INTERVAL));
  const lag = new LagSampler(leader);
  await lag.start(500);
  const t0 = performance.now();
  let next = 0;
  let done: LogLine | undefined;
  let lastReport = t0;
  let failedWrites = 0;
  const bigEnough = (l: LogLine) => Number(l.bytes) >= target;
  const writer = async (): Promise<void> => {
    while (done === undefined) {
      const i = next++;
      const body = { Name: `big-${i}`, Driver: "overlay", Labels: labelsOf(i, labelBytes) };
      // A write refused while the managers elect a leader is tried again (a 409 then: it was applied).
      for (let attempt = 0; ; attempt++) {
        const r = await call(leader.sock, "POST", "/networks/create", body, 30_000).catch((e: Error) => e);
        if (!(r instanceof Error) && ((r.status >= 200 && r.status < 300) || (attempt > 0 && r.status === 409))) break;
        failedWrites++;
        if (attempt >= 100) throw new Error(`POST /networks/create: ${r instanceof Error ? r.message : r.text}`);
        await sleep(200);
      }
      if (i % 500 === 0) done = leader.logged("snapshot taken", since, bigEnough);
      if (performance.now() - lastReport > 5000) {
        lastReport = performance.now();
        console.log(`  fill: ${next} networks, ${((next * labelBytes) / 1e6).toFixed(0)} MB of labels`);
      }
    }
  };
  await Promise.all(Array.from({ length: o.writers }, writer));
  const seconds = (performance.now() - t0) / 1000;
  const l = await lag.stop();
  return {
    networks: next,
    labelBytesPerNetwork: labelBytes,
    seconds: Math.round(seconds * 10) / 10,
    writesPerS: Math.round(next / seconds),
    leaderLagMaxMs: l.maxMs,
    leaderLagP99Ms: l.p99Ms,
    failedWrites,
    leaderLostLeadership: leader.logSince().filter((x) => x.msg === "stepped down: cannot reach a quorum").length,
    snap: done!,
  };
}

/** The log lines of the join's steps (snapshot transfer, install, replication, promotion, connections). */
const TIMELINE = [
  "manager joined the raft group as a learner",
  "sending snapshot",
  "sent the last snapshot chunk",
  "snapshot transfer stalled; resending unacknowledged chunks",
  "restored snapshot from leader",
  "snapshot applied",
  "slow raft ready",
  "follower has the snapshot; replicating",
  "promoting caught-up learner to voter",
  "raft transport: lost connection to peer",
  "raft transport: connected to peer",
  "raft transport: peer is not keeping up; dropping its oldest messages",
  "lost the connection to the leader; campaigning soon",
  "joined the swarm",
];

function joinTimeline(ds: Shoald[], fromMs: number): string[] {
  const keep = new Set(TIMELINE);
  const skip = new Set(["time", "msg", "level", "pid", "hostname", "name", "component"]);
  const lines: { t: number; s: string }[] = [];
  for (const d of ds) {
    for (const l of d.logSince()) {
      if (l.time < fromMs || !keep.has(l.msg)) continue;
      const fields = Object.entries(l)
        .filter(([k]) => !skip.has(k))
        .map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : String(v)}`)
        .join(" ");
      lines.push({
        t: l.time - fromMs,
        s: `${String(l.time - fromMs).padStart(6)} ms  ${d.name}  ${l.msg}  ${fields}`,
      });
    }
  }
  return lines.sort((a, b) => a.t - b.t).map((x) => x.s);
}

function dockerNodeLs(sock: string): Promise<number | undefined> {
  if (!existsSync(DOCKER)) return Promise.resolve(undefined);
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    execFile(
      DOCKER,
      ["node", "ls", "-q"],
      { env: { ...process.env, DOCKER_HOST: `unix://${sock}` }, timeout: 60_000 },
      (e) => (e ? reject(e) : resolve(performance.now() - t0)),
    );
  });
}

async function run(o: Options): Promise<Result> {
  const dir = await mkdtemp(join(tmpdir(), "shoal-bigjoin-"));
  tempDirs.add(dir);
  const ips = ["127.0.0.1", "127.0.0.2", "127.0.0.3"];
  const port = await commonFreePort(ips);
  const mport = await commonFreePort(ips);
  const ds = ips.map(
    (ip, i) =>
      new Shoald(`bigjoin-m${i + 1}`, ip, port, join(dir, `m${i + 1}`), {
        metricsPort: mport,
        ...(o.profile ? { profileDir: join(dir, "profiles") } : {}),
      }),
  );
  for (const d of ds) await mkdir(d.dir, { recursive: true });
  const [d1, d2, d3] = ds as [Shoald, Shoald, Shoald];
  try {
    const since = Date.now();
    d1.start();
    await d1.ready();
    await callOk(d1.sock, "POST", "/swarm/init", { ListenAddr: d1.addr, AdvertiseAddr: d1.addr });
    const swarm = await callOk<{ JoinTokens: { Manager: string } }>(d1.sock, "GET", "/swarm");
    const token = swarm.JoinTokens.Manager;
    d2.start();
    await d2.ready();
    await callOk(d2.sock, "POST", "/swarm/join", {
      RemoteAddrs: [d1.addr],
      JoinToken: token,
      ListenAddr: d2.addr,
      AdvertiseAddr: d2.addr,
    });
    for (const d of [d1, d2]) await d.loadIdentity();
    console.log(`cluster of 2 managers up; filling to a snapshot of >= ${o.mb} MB with ${o.writers} writers`);
    const f = await fill(o, d1, since);
    const { snap, ...fillFigures } = f;
    const snapshotBytes = Number(snap.bytes);
    const snapshotIndex = Number(snap.index);
    console.log(
      `  filled: ${f.networks} networks in ${f.seconds} s (${f.writesPerS}/s); leader snapshot ${(snapshotBytes / 1e6).toFixed(1)} MB at index ${snapshotIndex}; leader lag during fill max ${f.leaderLagMaxMs} ms p99 ${f.leaderLagP99Ms} ms; ${f.failedWrites} writes refused, leader stepped down ${f.leaderLostLeadership} times`,
    );
    await sleep(3000); // let the follower take its own snapshot and settle
    // The leader now (it may have changed during the fill, if a snapshot stalled the first one).
    const leader = await waitUntil("a leader", 60_000, async () => {
      const nodes = await callOk<ApiNode[]>(d1.sock, "GET", "/nodes", undefined, 10_000);
      const id = nodes.find((n) => n.ManagerStatus?.Leader)?.ID;
      return [d1, d2].find((d) => d.nodeId === id);
    });
    console.log(`  leader before the join: ${leader.name}`);
    const termBefore = metricValue(await leader.metrics(), "shoal_raft_term");

    // The join.
    d3.start();
    await d3.ready();
    const lag = new LagSampler(leader);
    await lag.start(500);
    const rssMax = { leader: 0, joiner: 0 };
    const rssTimer = setInterval(() => {
      rssMax.leader = Math.max(rssMax.leader, leader.memMiB().rss);
      rssMax.joiner = Math.max(rssMax.joiner, d3.memMiB().rss);
    }, 200);
    const joinWall = Date.now();
    const t0 = performance.now();
    await callOk(
      d3.sock,
      "POST",
      "/swarm/join",
      { RemoteAddrs: [leader.addr], JoinToken: token, ListenAddr: d3.addr, AdvertiseAddr: d3.addr },
      o.joinTimeoutS * 1000,
    );
    const answeredMs = performance.now() - t0;
    console.log(`  join answered after ${answeredMs.toFixed(0)} ms`);
    await d3.loadIdentity();
    await waitUntil(
      "the joiner to serve node ls with 3 managers and a leader",
      o.joinTimeoutS * 1000,
      async () => {
        if (!d3.alive) throw new Error(`the joiner exited: ${d3.logTail()}`);
        const nodes = await callOk<ApiNode[]>(d3.sock, "GET", "/nodes", undefined, 10_000);
        const ms = nodes.filter((n) => n.ManagerStatus);
        if (ms.length !== 3 || !ms.some((n) => n.ManagerStatus?.Leader)) return undefined;
        const promoted = [d1, d2].some((d) =>
          d.logged("promoting caught-up learner to voter", joinWall, (l) => l.learner === d3.raftId),
        );
        return promoted ? true : undefined;
      },
      200,
    );
    const nodeLsMs = performance.now() - t0;
    const dockerMs = await dockerNodeLs(d3.sock);
    clearInterval(rssTimer);
    const lagJoin = await lag.stop();
    const termAfter = metricValue(await leader.metrics(), "shoal_raft_term");
    const at = (l: LogLine | undefined) => (l ? l.time - joinWall : undefined);
    const received = d3.logged("restored snapshot from leader", joinWall);
    const applied = d3.logged("snapshot applied", joinWall);
    const voter = [d1, d2]
      .map((d) => d.logged("promoting caught-up learner to voter", joinWall, (l) => l.learner === d3.raftId))
      .find((l) => l !== undefined);
    const elections = ds.reduce(
      (n, d) => n + d.logSince().filter((l) => l.msg === "became leader" && l.time >= joinWall).length,
      0,
    );
    const timeline = joinTimeline(ds, joinWall);
    const m1 = leader.memMiB();
    const m3 = d3.memMiB();
    return {
      when: new Date().toISOString(),
      machine: { cpus: cpus().length, model: cpus()[0]?.model ?? "", loadavg: loadavg() },
      options: o,
      fill: fillFigures,
      snapshotBytes,
      snapshotIndex,
      join: {
        answeredMs: Math.round(answeredMs),
        snapshotReceivedMs: at(received),
        snapshotAppliedMs: at(applied),
        voterMs: at(voter),
        nodeLsMs: Math.round(nodeLsMs),
        dockerNodeLsMs: dockerMs === undefined ? undefined : Math.round(dockerMs),
      },
      leaderLagDuringJoin: lagJoin,
      rssMiB: {
        leaderPeak: Math.round(m1.peak),
        joinerPeak: Math.round(m3.peak),
        leaderMaxDuringJoin: Math.round(rssMax.leader),
        joinerMaxDuringJoin: Math.round(rssMax.joiner),
      },
      electionsDuringJoin: elections,
      timeline,
      leaderTermBefore: termBefore,
      leaderTermAfter: termAfter,
    };
  } catch (e) {
    for (const d of ds) if (d.proc) console.error(`--- ${d.name} log tail:\n${d.logTail(30)}`);
    throw e;
  } finally {
    await Promise.all(ds.map((d) => d.stop()));
  }
}

function report(r: Result): void {
  const ms = (x: number | undefined) => (x === undefined ? "-" : `${(x / 1000).toFixed(2)} s`);
  console.log("");
  console.log(`state (snapshot the leader sends)  ${(r.snapshotBytes / 1e6).toFixed(1)} MB (${r.snapshotBytes} bytes)`);
  console.log(
    `fill                               ${r.fill.networks} networks, ${r.fill.seconds} s, leader lag max ${r.fill.leaderLagMaxMs} ms p99 ${r.fill.leaderLagP99Ms} ms, ${r.fill.failedWrites} writes refused, first leader stepped down ${r.fill.leaderLostLeadership}x`,
  );
  console.log(`join answered                      ${ms(r.join.answeredMs)}`);
  console.log(`snapshot received by the joiner    ${ms(r.join.snapshotReceivedMs)}`);
  console.log(`snapshot applied by the joiner     ${ms(r.join.snapshotAppliedMs)}`);
  console.log(`joiner promoted to voter           ${ms(r.join.voterMs)}`);
  console.log(`joiner serves node ls (3 managers) ${ms(r.join.nodeLsMs)}   <- join time`);
  console.log(
    `docker node ls on the joiner       ${r.join.dockerNodeLsMs === undefined ? "-" : `${r.join.dockerNodeLsMs} ms`}`,
  );
  console.log(
    `leader event-loop lag during join  max ${r.leaderLagDuringJoin.maxMs} ms, p99 ${r.leaderLagDuringJoin.p99Ms} ms (${r.leaderLagDuringJoin.scrapes} scrapes)`,
  );
  console.log(
    `peak RSS                           leader ${r.rssMiB.leaderPeak} MiB, joiner ${r.rssMiB.joinerPeak} MiB`,
  );
  console.log(
    `max RSS during the join            leader ${r.rssMiB.leaderMaxDuringJoin} MiB, joiner ${r.rssMiB.joinerMaxDuringJoin} MiB`,
  );
  console.log("timeline of the join (ms after the join request):");
  for (const l of r.timeline) console.log(`  ${l}`);
  console.log(
    `elections during the join          ${r.electionsDuringJoin} (leader term ${r.leaderTermBefore} -> ${r.leaderTermAfter})`,
  );
}

async function main(): Promise<void> {
  const o = parseArgs(process.argv.slice(2));
  cleanupOptions.keepTemp = o.keep;
  const r = await run(o);
  report(r);
  await mkdir(dirname(o.out), { recursive: true });
  await writeFile(o.out, `${JSON.stringify(r, null, 2)}\n`);
  console.log(`\nJSON: ${o.out}`);
}

main().then(
  () => {
    cleanupSync();
    process.exit(0);
  },
  (e) => {
    console.error(e instanceof Error ? (e.stack ?? e.message) : e);
    cleanupSync();
    process.exit(1);
  },
);
