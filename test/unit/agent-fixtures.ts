// What the agent tests share: a fake manager's session message, a plaintext gRPC server on loopback, the
// options of an agent with a test node's identity (no TLS, a silent logger), and a run of one.

import { credentials, type Server, ServerCredentials } from "@grpc/grpc-js";
import pino from "pino";
import { Agent, type AgentEvent, type AgentOptions } from "../../src/agent/agent.js";
import { SessionMessage } from "../../src/gen/cluster.js";

/** The n-th session's first message: its id (n, 24 digits) and the heartbeat period. */
export function sessionMessage(n: number, periodMs: number): SessionMessage {
  return SessionMessage.fromPartial({
    sessionId: `${n}`.padStart(24, "0"),
    heartbeatPeriodMs: periodMs,
    role: "worker",
  });
}

/** Binds `server` (its services added) to a free port of 127.0.0.1, plaintext; returns its host:port. */
export async function listenPlaintext(server: Server): Promise<string> {
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))),
  );
  return `127.0.0.1:${port}`;
}

/** An agent's options for a test node that talks plaintext to `managers`; the test adds the rest. */
export function testAgentOptions(managers: () => string[]): AgentOptions {
  return {
    nodeId: "n".repeat(25),
    managers,
    credentials: () => credentials.createInsecure(),
    description: () => ({
      Hostname: "h",
      Platform: { Architecture: "x86_64", OS: "linux" },
      Resources: { NanoCPUs: 0, MemoryBytes: 0 },
      Engine: { EngineVersion: "", Plugins: [] },
    }),
    addr: "",
    logger: pino({ level: "silent" }),
    onMessage: () => {},
  };
}

/**
 * Runs an agent with `opts` until `done` holds of its steps (or, given `timeoutMs`, that long at most);
 * returns the steps. Its stop goes into `cleanup`.
 */
export async function runAgent(
  opts: AgentOptions,
  done: (ev: AgentEvent[]) => boolean,
  cleanup: (() => Promise<void>)[],
  timeoutMs?: number,
): Promise<AgentEvent[]> {
  const events: AgentEvent[] = [];
  let resolve!: () => void;
  const finished = new Promise<void>((r) => {
    resolve = r;
  });
  const agent = new Agent({
    ...opts,
    onEvent: (e) => {
      events.push(e);
      if (done(events)) resolve();
    },
  });
  cleanup.push(() => agent.stop());
  agent.start();
  if (timeoutMs === undefined) await finished;
  else {
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<void>((r) => {
      timer = setTimeout(r, timeoutMs);
    });
    await Promise.race([finished, timedOut]);
    clearTimeout(timer);
  }
  return events;
}
