// An agent asks for deltas, applies each to its session's state (the daemon is handed the whole state every
// time), and starts a new session (whose first message is the whole state) when a delta cannot be applied.
// A real gRPC server (plaintext, loopback) that plays the manager, and the real Agent.

import { Server, type ServerWritableStream } from "@grpc/grpc-js";
import { afterEach, describe, expect, test } from "vitest";
import { Agent } from "../../src/agent/agent.js";
import type { DecodedSession } from "../../src/agent/messages.js";
import { DispatcherService, type SessionMessage, type SessionRequest } from "../../src/gen/cluster.js";
import { listenPlaintext, sessionMessage, testAgentOptions } from "./agent-fixtures.js";

const PERIOD_MS = 60_000;
const M1 = { nodeId: "m".repeat(25), addr: "192.0.2.1:2377" };
const M2 = { nodeId: "k".repeat(25), addr: "192.0.2.2:2377" };
const PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

/** A delta of session n: only what the test sets. */
function delta(n: number, m: Partial<SessionMessage>): SessionMessage {
  return {
    ...sessionMessage(n, 0),
    role: "",
    delta: true,
    ...m,
  };
}

let cleanup: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanup) await c();
  cleanup = [];
});

async function until(what: () => boolean, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!what() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  expect(what()).toBe(true);
}

describe("agent session deltas", () => {
  test("the agent asks for deltas, and the daemon is handed the whole state after each", async () => {
    const requests: SessionRequest[] = [];
    const server = new Server();
    server.addService(DispatcherService, {
      session: (call: ServerWritableStream<SessionRequest, SessionMessage>) => {
        requests.push(call.request);
        const n = requests.length;
        call.write({ ...sessionMessage(n, PERIOD_MS), managers: [M1], rootCaPem: PEM, renewCertificateIssuer: "AAAA" });
        if (n > 1) return;
        call.write(delta(n, { heartbeatPeriodMs: 2 * PERIOD_MS }));
        call.write(delta(n, { managers: [M1, M2], cleared: [9] }));
        call.write(delta(n, { role: "manager", cleared: [3] }));
        // Another session's delta: this agent cannot apply it.
        call.write(delta(n + 1, { heartbeatPeriodMs: 3 * PERIOD_MS }));
      },
      heartbeats: () => {},
    } as never);
    const addr = await listenPlaintext(server);
    const seen: DecodedSession[] = [];
    const agent = new Agent({ ...testAgentOptions(() => [addr]), random: () => 0, onMessage: (m) => seen.push(m) });
    cleanup.push(async () => {
      await agent.stop();
      server.forceShutdown();
    });
    agent.start();
    await until(() => seen.length >= 5);
    expect(requests[0]!.acceptsDeltas).toBe(true);
    const pick = (m: DecodedSession) => [
      m.sessionId,
      m.heartbeatPeriodMs,
      m.managers.length,
      m.role,
      m.rootCaPem,
      m.renewCertificateIssuer,
    ];
    const s1 = "1".padStart(24, "0");
    expect(seen.slice(0, 4).map(pick)).toEqual([
      [s1, PERIOD_MS, 1, "worker", PEM, "AAAA"],
      [s1, 2 * PERIOD_MS, 1, "worker", PEM, "AAAA"],
      [s1, 2 * PERIOD_MS, 2, "worker", PEM, ""],
      [s1, 2 * PERIOD_MS, 0, "manager", PEM, ""],
    ]);
    // The delta it could not apply ended that session; the next one began with the whole state.
    expect(requests).toHaveLength(2);
    expect(pick(seen[4]!)).toEqual(["2".padStart(24, "0"), PERIOD_MS, 1, "worker", PEM, "AAAA"]);
    expect(seen.every((m) => m.heartbeatPeriodMs !== 3 * PERIOD_MS)).toBe(true);
  });
});
