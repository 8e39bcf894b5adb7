// An agent's heartbeats go on one Heartbeats stream for its session, not one call each; a manager that does
// not serve the stream gets Heartbeat calls; a beat refused on the stream ends the session, as a refused call
// does. A real gRPC server (plaintext, loopback) and the real Agent.

import { Server, type ServerDuplexStream, type ServerWritableStream, status } from "@grpc/grpc-js";
import { afterEach, describe, expect, test } from "vitest";
import { Agent } from "../../src/agent/agent.js";
import {
  DispatcherService,
  type HeartbeatRequest,
  type HeartbeatResponse,
  type SessionMessage,
} from "../../src/gen/cluster.js";
import { listenPlaintext, sessionMessage, testAgentOptions } from "./agent-fixtures.js";

const PERIOD_MS = 300;

interface Served {
  server: Server;
  addr: string;
  sessions: number;
  /** Beats received on each Heartbeats stream opened, in order. */
  streams: HeartbeatRequest[][];
  calls: number;
}

/** `stream`: whether the manager serves Heartbeats; `refuseAfter`: the stream answers NOT_FOUND to that beat. */
async function serve(stream: boolean, refuseAfter = Number.POSITIVE_INFINITY): Promise<Served> {
  const s: Served = { server: new Server(), addr: "", sessions: 0, streams: [], calls: 0 };
  const msg = (n: number): SessionMessage => sessionMessage(n, PERIOD_MS);
  const impl: Record<string, unknown> = {
    session: (call: ServerWritableStream<unknown, SessionMessage>) => {
      s.sessions++;
      call.write(msg(s.sessions));
    },
    heartbeat: (_c: unknown, cb: (e: null, r: { periodMs: number }) => void) => {
      s.calls++;
      cb(null, { periodMs: PERIOD_MS });
    },
    attach: (_c: unknown, cb: (e: Error) => void) => cb(new Error("no")),
    detach: (_c: unknown, cb: (e: Error) => void) => cb(new Error("no")),
  };
  if (stream) {
    impl.heartbeats = (call: ServerDuplexStream<HeartbeatRequest, HeartbeatResponse>) => {
      const beats: HeartbeatRequest[] = [];
      s.streams.push(beats);
      call.on("data", (req: HeartbeatRequest) => {
        beats.push(req);
        if (beats.length >= refuseAfter) {
          call.emit("error", Object.assign(new Error("session invalid"), { code: status.NOT_FOUND }));
        } else call.write({ periodMs: PERIOD_MS });
      });
    };
  }
  s.server.addService(DispatcherService, impl as never);
  s.addr = await listenPlaintext(s.server);
  return s;
}

let cleanup: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanup) await c();
  cleanup = [];
});

function agentFor(s: Served, beats: { ok: boolean }[]): Agent {
  const agent = new Agent({
    ...testAgentOptions(() => [s.addr]),
    onHeartbeat: (_ms, ok) => beats.push({ ok }),
    random: () => 0,
  });
  cleanup.push(async () => {
    await agent.stop();
    s.server.forceShutdown();
  });
  agent.start();
  return agent;
}

async function until(what: () => boolean, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!what() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  expect(what()).toBe(true);
}

describe("agent heartbeats", () => {
  test("go on one stream for the session, each answered, no call per beat", async () => {
    const s = await serve(true);
    const beats: { ok: boolean }[] = [];
    agentFor(s, beats);
    await until(() => (s.streams[0]?.length ?? 0) >= 4);
    expect(s.streams).toHaveLength(1);
    expect(s.streams[0]!.every((b) => b.sessionId === "1".padStart(24, "0"))).toBe(true);
    expect(s.calls).toBe(0);
    expect(s.sessions).toBe(1);
    expect(beats.length).toBeGreaterThanOrEqual(3);
    expect(beats.every((b) => b.ok)).toBe(true);
  });

  test("a manager without the stream (UNIMPLEMENTED) gets a Heartbeat call per beat, on the same session", async () => {
    const s = await serve(false);
    const beats: { ok: boolean }[] = [];
    agentFor(s, beats);
    await until(() => s.calls >= 3);
    expect(s.sessions).toBe(1);
    expect(beats.every((b) => b.ok)).toBe(true);
  });

  test("a beat refused on the stream (an unknown session) ends the session: the agent starts a new one", async () => {
    const s = await serve(true, 2);
    const beats: { ok: boolean }[] = [];
    agentFor(s, beats);
    await until(() => s.sessions >= 2 && s.streams.length >= 2);
    expect(s.streams[0]).toHaveLength(2);
    expect(s.streams[1]![0]!.sessionId).toBe("2".padStart(24, "0"));
    expect(beats.filter((b) => !b.ok)).toHaveLength(1);
  });
});
