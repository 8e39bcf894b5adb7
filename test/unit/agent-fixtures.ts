// What the agent tests share: a fake manager's session message, a plaintext gRPC server on loopback, and the
// options of an agent with a test node's identity (no TLS, a silent logger).

import { credentials, type Server, ServerCredentials } from "@grpc/grpc-js";
import pino from "pino";
import type { AgentOptions } from "../../src/agent/agent.js";
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
