// One process of the scale bench's simulated workers (test/bench/scale.ts forks several). Each simulated
// worker goes through the real join path of a worker node, the function `swarm join` runs
// (requestCertificate, src/daemon/bootstrap.ts): the root CA fetched anonymously and checked against the
// token's digest, a fresh key and CSR, CA.IssueNodeCertificate with the worker join token on the same
// connection (a real certificate signed by the swarm's CA), then the real Agent (src/agent/agent.ts): a Dispatcher
// session over mutual TLS with its own certificate, heartbeats at the period the managers ask for, and
// failover to another manager when the session breaks. Nothing here stands in for a manager.
//
// The parent drives it over the IPC channel (messages below) and reads its figures: joins, sessions
// (and when each was last established), heartbeat round trips, and when each session saw a change.

import { createRequire, syncBuiltinESMExports } from "node:module";
import { monitorEventLoopDelay } from "node:perf_hooks";
import pino from "pino";
import { Agent, type AgentEvent } from "../../src/agent/agent.js";
import type { DecodedSession } from "../../src/agent/messages.js";
import { clientCredentials } from "../../src/ca/tls-client.js";
import { parseJoinToken } from "../../src/ca/token.js";
import { type JoinStage, requestCertificate } from "../../src/daemon/bootstrap.js";
import { nodeDescription } from "../../src/daemon/info.js";

export type ToWorker =
  | {
      t: "join";
      managers: string[];
      token: string;
      count: number;
      prefix: string;
      concurrency: number;
      /** Whether the agents take deltas (false: as agents before them did). */
      deltas: boolean;
    }
  /** From now on, note when each session first sees heartbeatPeriodMs === periodMs. */
  | { t: "expect"; periodMs: number }
  /** Report; `since` (wall ms): count sessions established after it. Heartbeat samples are reset. */
  | { t: "stats"; since: number }
  /** From now on, record every agent's steps (and count TLS handshakes); reported by "timeline". */
  | { t: "mark" }
  | { t: "timeline" }
  | { t: "stop" };

/** One simulated worker's steps since the mark (wall ms), as its agent reported them. */
export interface Timeline {
  events: (AgentEvent & { at: number })[];
}

export interface WorkerTimelines {
  t: "timeline";
  timelines: Timeline[];
  /** TLS connections this process began and completed since the mark, by target address. */
  handshakesBegun: Record<string, number>;
  handshakesDone: Record<string, number>;
  /** Of those done, the ones that resumed a TLS session (src/ca/tls.ts, "Session resumption"). */
  handshakesResumed: Record<string, number>;
}

export interface WorkerStats {
  t: "stats";
  joined: number;
  joinFailures: number;
  /** Wall ms of every successful join (to compute join/s). */
  joinDoneAt: number[];
  sessions: number;
  sessionsSince: number;
  /** Heartbeat round trips (ms) since the last report, and how many failed. */
  heartbeatsMs: number[];
  heartbeatFailures: number;
  /** Wall ms at which each session saw the expected period (one per session that did). */
  sawExpectedAt: number[];
  /** Where each join's time went since the last report (ms per successful join, by stage). */
  joinStagesMs: JoinStages[];
  /**
   * This process's event-loop delay since the last report (ms, p99 and max): a heartbeat's answer waits that
   * long here before its agent reads it, so a heartbeat round trip includes it.
   */
  loopP99Ms: number;
  loopMaxMs: number;
}

/** One join, stage by stage: root CA fetched, key and CSR made, certificate issued, first session message. */
export interface JoinStages {
  root: number;
  key: number;
  issue: number;
  session: number;
}

interface Sim {
  agent: Agent;
  timeline: Timeline | undefined;
  sessionId: string;
  sessionAtMs: number;
  sawAtMs: number;
  /** Until its first session message: then reported once. */
  stages: JoinStages | undefined;
  startedAt: number;
}

const log = pino({ level: process.env.SIM_LOG_LEVEL ?? "silent" });
const sims: Sim[] = [];
let joinFailures = 0;
let joinDoneAt: number[] = [];
let heartbeatsMs: number[] = [];
let heartbeatFailures = 0;
let expectPeriodMs = 0;
let joinStagesMs: JoinStages[] = [];
const loop = monitorEventLoopDelay({ resolution: 10 });
loop.enable();

/** The real join path of a worker (the daemon's swarm join: requestCertificate), then the real Agent. */
async function joinOne(managers: string[], token: string, hostname: string, deltas: boolean): Promise<Sim> {
  const t0 = performance.now();
  const at: Partial<Record<JoinStage, number>> = {};
  const remote = managers[Math.floor(Math.random() * managers.length)]!;
  const { rootPem, keyPem, issued } = await requestCertificate(
    remote,
    parseJoinToken(token),
    { token, availability: "active", hostname, advertiseAddr: "127.0.0.1:2377", listenAddrError: "" },
    (stage) => {
      at[stage] = performance.now();
    },
  );
  const t3 = performance.now();
  const t1 = at.root ?? t0;
  const t2 = at.key ?? t1;
  const certPem = issued.certificatePem;
  const nodeId = issued.nodeId;
  const creds = clientCredentials(rootPem, certPem, keyPem);
  const description = nodeDescription(hostname, { rootPem, certPem, keyPem });
  const sim: Sim = {
    agent: undefined as unknown as Agent,
    timeline: undefined,
    sessionId: "",
    sessionAtMs: 0,
    sawAtMs: 0,
    stages: { root: t1 - t0, key: t2 - t1, issue: t3 - t2, session: 0 },
    startedAt: t3,
  };
  sim.agent = new Agent({
    nodeId,
    managers: () => managers,
    credentials: () => creds,
    // What a real worker describes, TLSInfo (its trust root's PEM) included: ~1.3 kB a node in GET /nodes.
    // Made once: a daemon makes it per session (its certificate may have been renewed), on its own host's
    // CPU; here 1,250 nodes share a process, and their certificates never change.
    description: () => description,
    addr: "",
    logger: log,
    onMessage: (m: DecodedSession) => onMessage(sim, m),
    onEvent: (e) => sim.timeline?.events.push({ ...e, at: Date.now() }),
    acceptsDeltas: deltas,
    onHeartbeat: (ms, ok) => {
      if (ok) heartbeatsMs.push(ms);
      else heartbeatFailures++;
    },
  });
  sim.agent.start();
  return sim;
}

function onMessage(sim: Sim, m: DecodedSession): void {
  const now = Date.now();
  if (m.sessionId !== sim.sessionId) {
    sim.sessionId = m.sessionId;
    sim.sessionAtMs = now;
  }
  if (sim.stages) {
    joinStagesMs.push({ ...sim.stages, session: performance.now() - sim.startedAt });
    sim.stages = undefined;
  }
  if (expectPeriodMs > 0 && m.heartbeatPeriodMs === expectPeriodMs && sim.sawAtMs === 0) sim.sawAtMs = now;
}

async function joinAll(m: Extract<ToWorker, { t: "join" }>): Promise<void> {
  let next = 0;
  const lane = async () => {
    while (next < m.count) {
      const i = next++;
      for (let attempt = 0; ; attempt++) {
        try {
          sims.push(await joinOne(m.managers, m.token, `${m.prefix}-${i}`, m.deltas));
          joinDoneAt.push(Date.now());
          break;
        } catch {
          joinFailures++;
          await new Promise((r) => setTimeout(r, Math.min(5000, 200 * 2 ** attempt) * (0.5 + Math.random())));
        }
      }
    }
  };
  await Promise.all(Array.from({ length: m.concurrency }, lane));
}

function stats(since: number): WorkerStats {
  const out: WorkerStats = {
    t: "stats",
    joined: sims.length,
    joinFailures,
    joinDoneAt,
    sessions: sims.filter((s) => s.agent.connectedTo !== undefined).length,
    sessionsSince: sims.filter((s) => s.sessionAtMs > since).length,
    heartbeatsMs,
    heartbeatFailures,
    sawExpectedAt: sims.filter((s) => s.sawAtMs > 0).map((s) => s.sawAtMs),
    joinStagesMs,
    loopP99Ms: loop.percentile(99) / 1e6,
    loopMaxMs: loop.max / 1e6,
  };
  loop.reset();
  joinStagesMs = [];
  joinDoneAt = [];
  heartbeatsMs = [];
  heartbeatFailures = 0;
  return out;
}

// Every TLS connection this process makes goes through tls.connect (grpc-js calls it through the module
// object, so the counter below sees them); counted only after the mark.
let counting = false;
let handshakesBegun: Record<string, number> = {};
let handshakesDone: Record<string, number> = {};
let handshakesResumed: Record<string, number> = {};
const tlsModule = createRequire(import.meta.url)("node:tls") as typeof import("node:tls");
const realConnect = tlsModule.connect;
tlsModule.connect = ((...args: Parameters<typeof realConnect>) => {
  const socket = realConnect(...args);
  if (counting) {
    const o = args[0] as { host?: string; socket?: { remoteAddress?: string; remotePort?: number } };
    const target = o.socket?.remoteAddress ? `${o.socket.remoteAddress}:${o.socket.remotePort}` : (o.host ?? "?");
    handshakesBegun[target] = (handshakesBegun[target] ?? 0) + 1;
    socket.once("secureConnect", () => {
      handshakesDone[target] = (handshakesDone[target] ?? 0) + 1;
      if (socket.isSessionReused()) handshakesResumed[target] = (handshakesResumed[target] ?? 0) + 1;
    });
  }
  return socket;
}) as typeof realConnect;
// The ESM view of node:tls (src/ca/tls.ts imports it so) follows the patch only once synced.
syncBuiltinESMExports();

function mark(): void {
  counting = true;
  handshakesBegun = {};
  handshakesDone = {};
  handshakesResumed = {};
  for (const s of sims) s.timeline = { events: [] };
}

process.on("message", (raw: unknown) => {
  const m = raw as ToWorker;
  if (m.t === "join") void joinAll(m);
  else if (m.t === "expect") {
    expectPeriodMs = m.periodMs;
    for (const s of sims) s.sawAtMs = 0;
  } else if (m.t === "stats") process.send?.(stats(m.since));
  else if (m.t === "mark") mark();
  else if (m.t === "timeline") {
    const out: WorkerTimelines = {
      t: "timeline",
      timelines: sims.map((s) => s.timeline ?? { events: [] }),
      handshakesBegun,
      handshakesDone,
      handshakesResumed,
    };
    process.send?.(out);
  } else if (m.t === "stop") {
    void Promise.all(sims.map((s) => s.agent.stop())).finally(() => process.exit(0));
  }
});
process.on("disconnect", () => process.exit(0));
