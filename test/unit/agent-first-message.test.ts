// An agent does not wait forever for its session's first message: a manager that takes the connection and the
// Session call and then says nothing (its host gone between the request and the answer, a half-open
// connection that keepalive, pinging once a minute, would find only after a minute or more) is given up after
// the agent's own bound (FIRST_MESSAGE_TIMEOUT_MS, made small here), and the agent goes on to the next
// manager as after any failed attempt. Real grpc-js servers on shoal's TLS listener play the managers; the
// agent has a worker's certificate.

import { createServer, type Server as NetServer, type Socket } from "node:net";
import { Server, type ServerWritableStream, status } from "@grpc/grpc-js";
import { afterEach, beforeAll, describe, expect, test } from "vitest";
import { type AgentEvent, CHANNEL_OPTIONS, FIRST_MESSAGE_TIMEOUT_MS } from "../../src/agent/agent.js";
import { generateNodeKeyAndCSR, type NodeRole, signNodeCSR } from "../../src/ca/certs.js";
import { createRootCA, RootCA } from "../../src/ca/rootca.js";
import { listenTLS, type TLSListener, type TLSMaterial } from "../../src/ca/tls.js";
import { nodeCredentials } from "../../src/ca/tls-client.js";
import { DispatcherService, type SessionMessage } from "../../src/gen/cluster.js";
import { HOLD_MS } from "../../src/manager/grpc-util.js";
import { runAgent, sessionMessage, testAgentOptions } from "./agent-fixtures.js";

const CLUSTER = "clusterid0000000000000001";
/** The agent's bound on the wait for a first message, in these tests. */
const BOUND_MS = 400;

let managerTls: TLSMaterial;
let workerTls: TLSMaterial;

async function issue(ca: RootCA, rootPem: string, nodeId: string, role: NodeRole): Promise<TLSMaterial> {
  const { keyPem, csrPem } = await generateNodeKeyAndCSR(nodeId);
  return { rootPem, keyPem, certPem: await signNodeCSR(ca, csrPem, { nodeId, role, clusterId: CLUSTER }) };
}

beforeAll(async () => {
  const root = await createRootCA();
  const ca = await RootCA.fromPem(root.certPem, root.keyPem);
  managerTls = await issue(ca, root.certPem, "manager000000000000000001", "manager");
  workerTls = await issue(ca, root.certPem, "worker0000000000000000001", "worker");
});

let cleanup: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanup.reverse()) await c();
  cleanup = [];
});

/** A manager on shoal's TLS listener: it serves sessions, or (silent) takes the Session call and never writes. */
async function manager(silent: boolean): Promise<{ addr: string; calls: number; cancelled: number }> {
  const m = { addr: "", calls: 0, cancelled: 0 };
  const server = new Server();
  server.addService(DispatcherService, {
    session: (call: ServerWritableStream<unknown, SessionMessage>) => {
      m.calls++;
      call.on("cancelled", () => m.cancelled++);
      if (!silent) call.write(sessionMessage(m.calls, 5000));
    },
    heartbeat: (_c: unknown, cb: (e: null, r: { periodMs: number }) => void) => cb(null, { periodMs: 5000 }),
    attach: (_c: unknown, cb: (e: Error) => void) => cb(new Error("no")),
    detach: (_c: unknown, cb: (e: Error) => void) => cb(new Error("no")),
  } as never);
  const l: TLSListener = await listenTLS(server, { host: "127.0.0.1", port: 0, ...managerTls });
  cleanup.push(async () => {
    server.forceShutdown();
    await l.close();
  });
  m.addr = `127.0.0.1:${l.port}`;
  return m;
}

/** A host that accepts TCP connections and then says nothing, ever (a manager gone after the SYN-ACK). */
async function blackHole(): Promise<string> {
  const sockets = new Set<Socket>();
  const server: NetServer = createServer((s) => {
    sockets.add(s);
    s.on("error", () => {});
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  cleanup.push(async () => {
    for (const s of sockets) s.destroy();
    await new Promise((r) => server.close(r));
  });
  const a = server.address();
  if (!a || typeof a === "string") throw new Error("no address");
  return `127.0.0.1:${a.port}`;
}

/** Runs an agent (a worker's TLS identity, the bound BOUND_MS) over `managers` until `done` holds of its steps. */
function run(managers: string[], done: (ev: AgentEvent[]) => boolean, timeoutMs = 5000): Promise<AgentEvent[]> {
  const opts = {
    ...testAgentOptions(() => managers),
    credentials: () => nodeCredentials(workerTls),
    random: () => 0,
    firstMessageTimeoutMs: BOUND_MS,
  };
  return runAgent(opts, done, cleanup, timeoutMs);
}

const up = (ev: AgentEvent[]) => ev.some((e) => e.kind === "up");
const steps = (ev: AgentEvent[]) =>
  ev.map((e) =>
    e.kind === "failed"
      ? `failed ${e.addr} ${e.code}`
      : e.kind === "wait"
        ? `wait ${e.why}`
        : `${e.kind} ${"addr" in e ? e.addr : ""}`,
  );

describe("an agent's wait for its session's first message", () => {
  test("a manager that takes the Session call and never answers is given up within the bound; the next one serves", async () => {
    const silent = await manager(true);
    const serving = await manager(false);
    const t0 = performance.now();
    const ev = await run([silent.addr, serving.addr], up);
    const tookMs = performance.now() - t0;
    // As any failed attempt: the failure (DEADLINE_EXCEEDED, not established), the backoff, the next manager.
    expect(steps(ev)).toEqual([
      `attempt ${silent.addr}`,
      `failed ${silent.addr} ${status.DEADLINE_EXCEEDED}`,
      "wait backoff",
      `attempt ${serving.addr}`,
      `up ${serving.addr}`,
    ]);
    // The call reached the silent manager, and the agent's cancel reached it too (a held request is freed).
    expect(silent.calls).toBe(1);
    await until(() => silent.cancelled === 1);
    expect(tookMs).toBeGreaterThanOrEqual(BOUND_MS);
    expect(tookMs).toBeLessThan(BOUND_MS + 2000);
  });

  test("a manager gone after accepting the TCP connection (no TLS answer, no RST) is given up too", async () => {
    const hole = await blackHole();
    const serving = await manager(false);
    const ev = await run([hole, serving.addr], up);
    expect(steps(ev)).toEqual([
      `attempt ${hole}`,
      `failed ${hole} ${status.DEADLINE_EXCEEDED}`,
      "wait backoff",
      `attempt ${serving.addr}`,
      `up ${serving.addr}`,
    ]);
  });

  test("a session whose first message came is not cut by the bound", async () => {
    const serving = await manager(false);
    const ev = await run([serving.addr], () => false, BOUND_MS * 4);
    expect(steps(ev)).toEqual([`attempt ${serving.addr}`, `up ${serving.addr}`]);
    expect(serving.calls).toBe(1);
  });

  test("the bound exceeds the longest a manager holds a session request, and keepalive is no longer the guard", () => {
    expect(FIRST_MESSAGE_TIMEOUT_MS).toBeGreaterThan(HOLD_MS);
    expect(CHANNEL_OPTIONS["grpc.keepalive_time_ms"]).toBe(60_000);
  });
});

async function until(what: () => boolean, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!what() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  expect(what()).toBe(true);
}
