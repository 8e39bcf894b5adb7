// The wire's cost of a fan-out, without Raft or the store: one TLS listener as the cluster listener's
// (src/ca/tls.ts's listenTLS: mutual TLS, HTTP/2 by grpc-js, the listener's keepalive) serving the Session
// stream with the dispatcher's encoded-message service, and N session streams opened by a second process
// with the agent's client (DispatcherClient, the agent's channel options and credentials, one channel and
// connection each). Each round the server writes every session a delta of the size a heartbeat-period change
// is (the session id, the delta head, the period), PUSH_BATCH per event-loop turn as the dispatcher does; the
// client counts the messages its 'data' handlers got, decoded by grpc-js as the agent's are.
//
//   node dist/test/bench/wire-push.js [--sessions 1000] [--rounds 8] [--gap-ms 200] [--idle-ms 10000]
//   WIRE_PUSH_SERVER_KA=ms / WIRE_PUSH_CLIENT_KA=ms   another keepalive period for the server / the client
//   WIRE_PUSH_PERF=1   the client runs with --perf-basic-prof (both pids are printed, for perf record -p)
//
// Prints the CPU of 10 s (--idle-ms) with the sessions idle (keepalive pings only: no heartbeats here; from
// 11 s after they came up, so that a 10 s keepalive's pings are all in it; --idle-ms 60000 holds one ping of
// each side's 60 s keepalive per connection, and six of a 10 s one: the cost over a whole period), then per round:
// wall time to the last message, the spread of arrivals (p99 over sessions from the first), and CPU µs per
// message of each process (process.cpuUsage: the server's from its first write until the client had every
// message; the client's from --gap-ms before the first write until it had every message).

import { fork } from "node:child_process";
import { fileURLToPath } from "node:url";
import { Metadata, Server } from "@grpc/grpc-js";
import { CHANNEL_OPTIONS } from "../../src/agent/agent.js";
import { generateNodeKeyAndCSR, signNodeCSR } from "../../src/ca/certs.js";
import { createRootCA, RootCA } from "../../src/ca/rootca.js";
import { channelTarget, listenTLS } from "../../src/ca/tls.js";
import { clientCredentials } from "../../src/ca/tls-client.js";
import { DispatcherClient, type SessionMessage, SessionMessage as SM } from "../../src/gen/cluster.js";
import { PUSH_BATCH } from "../../src/manager/dispatcher.js";
import { withoutCallerStack } from "../../src/manager/grpc-util.js";
import { LISTENER_KEEPALIVE_MS } from "../../src/manager/listener.js";
import { DispatcherServiceEncoded, type SessionCall } from "../../src/manager/push-parts.js";

const CLUSTER = "c0000000000000000000000001";
function arg(name: string, d: number): number {
  const i = process.argv.indexOf(name);
  return i >= 0 ? Number(process.argv[i + 1]) : d;
}

const IDLE_MS = arg("--idle-ms", 10_000);

interface Material {
  rootPem: string;
  certPem: string;
  keyPem: string;
}

async function material(root: RootCA, rootPem: string, id: string, role: "manager" | "worker"): Promise<Material> {
  const { csrPem, keyPem } = await generateNodeKeyAndCSR(id);
  const certPem = await signNodeCSR(root, csrPem, { nodeId: id, role, clusterId: CLUSTER });
  return { rootPem, certPem, keyPem };
}

type ToClient =
  | { kind: "start"; port: number; n: number; m: Material }
  | { kind: "expect"; round: number }
  | { kind: "cpu?" };
type FromClient =
  | { kind: "up" }
  | { kind: "cpu"; us: number }
  | { kind: "got"; round: number; lastMs: number; p99Ms: number; cpuUs: number };

async function client(): Promise<void> {
  const send = (m: FromClient) => process.send?.(m);
  let n = 0;
  let round = 0;
  let got = 0;
  let at: number[] = [];
  let cpu0 = process.cpuUsage();
  const clients: InstanceType<typeof DispatcherClient>[] = [];
  // The server is gone (it ended, or failed): so is this process.
  process.on("disconnect", () => process.exit(0));
  process.on("message", (raw: ToClient) => {
    if (raw.kind === "start") {
      n = raw.n;
      const creds = clientCredentials(raw.m.rootPem, raw.m.certPem, raw.m.keyPem);
      let first = 0;
      for (let i = 0; i < n; i++) {
        const opts = process.env.WIRE_PUSH_CLIENT_KA
          ? { ...CHANNEL_OPTIONS, "grpc.keepalive_time_ms": Number(process.env.WIRE_PUSH_CLIENT_KA) }
          : CHANNEL_OPTIONS;
        const c = new DispatcherClient(channelTarget(`127.0.0.1:${raw.port}`), creds, opts);
        clients.push(c);
        const stream = withoutCallerStack(() =>
          c.session({ descriptionJson: "", addr: "", acceptsDeltas: true }, new Metadata()),
        );
        let seen = 0;
        stream.on("data", (_m: SessionMessage) => {
          if (seen++ === 0) {
            if (++first === n) send({ kind: "up" });
            return;
          }
          at.push(performance.now());
          if (++got === n) {
            const c = process.cpuUsage(cpu0);
            const t0 = at[0]!;
            const sorted = at.map((x) => x - t0).sort((a, b) => a - b);
            send({
              kind: "got",
              round,
              lastMs: sorted[sorted.length - 1]!,
              p99Ms: sorted[Math.floor(sorted.length * 0.99)]!,
              cpuUs: c.user + c.system,
            });
          }
        });
        stream.on("error", () => undefined);
      }
    } else if (raw.kind === "cpu?") {
      const c = process.cpuUsage(cpu0);
      send({ kind: "cpu", us: c.user + c.system });
    } else {
      round = raw.round;
      got = 0;
      at = [];
      cpu0 = process.cpuUsage();
    }
  });
}

async function server(): Promise<void> {
  const n = arg("--sessions", 1000);
  const rounds = arg("--rounds", 8);
  const m = await createRootCA();
  const root = await RootCA.fromPem(m.certPem, m.keyPem);
  const mgr = await material(root, m.certPem, "m00000000000000000000000a", "manager");
  const wrk = await material(root, m.certPem, "w00000000000000000000000a", "worker");
  const calls: SessionCall[] = [];
  const grpc = new Server({
    "grpc.keepalive_time_ms": Number(process.env.WIRE_PUSH_SERVER_KA ?? LISTENER_KEEPALIVE_MS),
    "grpc.keepalive_timeout_ms": 10_000,
    "grpc.keepalive_permit_without_calls": 1,
    "grpc.http2.min_ping_interval_without_data_ms": 500,
    "grpc.max_concurrent_streams": 64,
    "grpc.enable_channelz": 0,
  });
  let ids = 0;
  grpc.addService(DispatcherServiceEncoded, {
    session: (call: SessionCall) => {
      calls.push(call);
      call.write(Buffer.from(SM.encode({ ...SM.fromPartial({}), sessionId: `s${ids++}` }).finish()));
    },
    heartbeat: () => undefined,
    heartbeats: () => undefined,
    attach: () => undefined,
    detach: () => undefined,
  } as never);
  const listener = await listenTLS(grpc, { host: "127.0.0.1", port: 0, ...mgr });
  const child = fork(fileURLToPath(import.meta.url), ["--client"], {
    stdio: "inherit",
    execArgv: process.env.WIRE_PUSH_PERF ? ["--perf-basic-prof"] : [],
  });
  console.log(`server pid ${process.pid}, client pid ${child.pid}`);
  const waitFor = <K extends FromClient["kind"]>(kind: K) =>
    new Promise<Extract<FromClient, { kind: K }>>((resolve) => {
      const on = (msg: FromClient) => {
        if (msg.kind !== kind) return;
        child.off("message", on);
        resolve(msg as Extract<FromClient, { kind: K }>);
      };
      child.on("message", on);
    });
  const up = waitFor("up");
  child.send({ kind: "start", port: listener.port, n, m: wrk } satisfies ToClient);
  await up;
  console.log(`${n} sessions up`);
  await new Promise((r) => setTimeout(r, 1000));
  {
    // Idle: keepalive pings and nothing else (no heartbeats here). From 11 s after the sessions came up (a
    // connection's first ping comes a keepalive period after it was made) for IDLE_MS: with a 10 s keepalive
    // and 10 s, every connection's pings of a period; with 60 s, one period of a 60 s keepalive's.
    await new Promise((r) => setTimeout(r, 10_000));
    child.send({ kind: "expect", round: 0 } satisfies ToClient);
    const c0 = process.cpuUsage();
    await new Promise((r) => setTimeout(r, IDLE_MS));
    const cli = waitFor("cpu");
    child.send({ kind: "cpu?" } satisfies ToClient);
    const c = process.cpuUsage(c0);
    const idle = (await cli).us;
    console.log(
      `idle ${IDLE_MS / 1000} s: server ${((c.user + c.system) / IDLE_MS).toFixed(1)} ms/s, ` +
        `client ${(idle / IDLE_MS).toFixed(1)} ms/s`,
    );
  }
  const rows: { wall: number; p99: number; srv: number; cli: number }[] = [];
  for (let r = 1; r <= rounds; r++) {
    child.send({ kind: "expect", round: r } satisfies ToClient);
    await new Promise((res) => setTimeout(res, arg("--gap-ms", 200)));
    const msgs = calls.map((_, i) =>
      Buffer.from(
        SM.encode({ ...SM.fromPartial({}), sessionId: `s${i}`, delta: true, heartbeatPeriodMs: 5000 + r }).finish(),
      ),
    );
    const got = waitFor("got");
    const c0 = process.cpuUsage();
    const t0 = performance.now();
    for (let i = 0; i < calls.length; i += PUSH_BATCH) {
      if (i > 0) await new Promise((res) => setImmediate(res));
      for (let j = i; j < Math.min(calls.length, i + PUSH_BATCH); j++) calls[j]!.write(msgs[j]!);
    }
    const g = await got;
    const wall = performance.now() - t0;
    const c = process.cpuUsage(c0);
    const row = { wall, p99: g.p99Ms, srv: (c.user + c.system) / n, cli: g.cpuUs / n };
    rows.push(row);
    console.log(
      `round ${r}: last ${wall.toFixed(0)} ms, spread p99 ${g.p99Ms.toFixed(0)} ms; CPU per message: ` +
        `server ${row.srv.toFixed(1)} µs, client ${row.cli.toFixed(1)} µs`,
    );
  }
  const med = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  console.log(
    `median: last ${med(rows.map((x) => x.wall)).toFixed(0)} ms; CPU per message: server ` +
      `${med(rows.map((x) => x.srv)).toFixed(1)} µs, client ${med(rows.map((x) => x.cli)).toFixed(1)} µs`,
  );
  child.kill();
  grpc.forceShutdown();
  await listener.close();
  process.exit(0);
}

if (process.argv.includes("--client")) void client();
else void server();
