// When a leader goes, every node loses its session at once. Each agent waits a random part of the heartbeat
// period before it reconnects, so the new leader sees the reconnections spread out instead of in one burst.
// A real gRPC server (plaintext, loopback) that serves one session, breaks it, and records when the agent
// comes back; the agent's randomness is injected.

import { Server, type ServerWritableStream, status } from "@grpc/grpc-js";
import { afterEach, describe, expect, test } from "vitest";
import { Agent } from "../../src/agent/agent.js";
import { DispatcherService, type SessionMessage } from "../../src/gen/cluster.js";
import { listenPlaintext, sessionMessage, testAgentOptions } from "./agent-fixtures.js";

const PERIOD_MS = 800;

interface Served {
  server: Server;
  addr: string;
  /** Date.now() of every session the agent opened, and of the moment the first one was broken. */
  opened: number[];
  brokeAt: number;
  /** Date.now() of every heartbeat. */
  beats: number[];
}

async function serve(): Promise<Served> {
  const s: Served = { server: new Server(), addr: "", opened: [], brokeAt: 0, beats: [] };
  const msg = (n: number): SessionMessage => sessionMessage(n, PERIOD_MS);
  s.server.addService(DispatcherService, {
    session: (call: ServerWritableStream<unknown, SessionMessage>) => {
      s.opened.push(Date.now());
      call.write(msg(s.opened.length));
      if (s.opened.length === 1) {
        setTimeout(() => {
          s.brokeAt = Date.now();
          call.emit("error", Object.assign(new Error("the leader went away"), { code: status.UNAVAILABLE }));
        }, 200);
      }
    },
    heartbeat: (_c: unknown, cb: (e: null, r: { periodMs: number }) => void) => {
      s.beats.push(Date.now());
      cb(null, { periodMs: PERIOD_MS });
    },
    attach: (_c: unknown, cb: (e: Error) => void) => cb(new Error("no")),
    detach: (_c: unknown, cb: (e: Error) => void) => cb(new Error("no")),
  });
  s.addr = await listenPlaintext(s.server);
  return s;
}

let cleanup: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanup) await c();
  cleanup = [];
});

async function reconnectGapMs(
  random: () => number,
  during?: (agent: Agent) => void,
  served?: (s: Served) => void,
): Promise<number> {
  const s = await serve();
  const agent = new Agent({
    ...testAgentOptions(() => [s.addr]),
    random,
  });
  cleanup.push(async () => {
    await agent.stop();
    s.server.forceShutdown();
  });
  agent.start();
  const deadline = Date.now() + 10_000;
  while (s.opened.length < 2 && Date.now() < deadline) {
    if (s.brokeAt > 0) during?.(agent);
    await new Promise((r) => setTimeout(r, 20));
  }
  expect(s.opened.length).toBeGreaterThanOrEqual(2);
  served?.(s);
  return s.opened[1]! - s.brokeAt;
}

describe("agent reconnect", () => {
  test("after its session broke, an agent waits a random part of the heartbeat period before reconnecting", async () => {
    // random() = 0.9: at least 0.9 of the period passes before the agent is back.
    expect(await reconnectGapMs(() => 0.9)).toBeGreaterThanOrEqual(0.9 * PERIOD_MS - 20);
  });

  test("the wait is drawn anew: random() = 0 reconnects after the short backoff only", async () => {
    expect(await reconnectGapMs(() => 0)).toBeLessThan(0.6 * PERIOD_MS);
  });

  test("heartbeats go out at 85 to 95 % of the period, never sooner (the leader answers every one)", async () => {
    let s: Served | undefined;
    await reconnectGapMs(
      () => 0,
      undefined,
      (x) => (s = x),
    );
    const deadline = Date.now() + 10_000;
    while (s!.beats.length < 3 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    const beats = s!.beats;
    expect(beats.length).toBeGreaterThanOrEqual(3);
    // random() = 0: the shortest delay the agent draws. The first beat comes that long after the session's
    // first message (the reconnect), each next one that long after the previous answer.
    expect(beats[0]! - s!.opened[1]!).toBeGreaterThanOrEqual(0.85 * PERIOD_MS - 5);
    for (let i = 1; i < beats.length; i++)
      expect(beats[i]! - beats[i - 1]!).toBeGreaterThanOrEqual(0.85 * PERIOD_MS - 5);
  });

  test("while it waits to reconnect, the agent offers no session client (an attach waits for the next session)", async () => {
    const seen: boolean[] = [];
    await reconnectGapMs(
      () => 0.9,
      (agent) => seen.push(agent.sessionClient() !== undefined),
    );
    // Polled from just after the break until the next session: never the broken session's client.
    expect(seen.length).toBeGreaterThan(5);
    expect(seen.slice(3).every((held) => !held)).toBe(true);
  });
});
