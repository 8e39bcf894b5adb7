// Where an agent goes when its session breaks: the managers other than the one it lost first (from a random
// one of them, so that a swarm's nodes spread over the survivors), the lost one last; a redirect that names
// the lost manager (the survivors name the dead leader until they have elected a new one) is not followed at
// once. Real gRPC servers on loopback (plaintext) play the managers; the agent's randomness is injected and
// its steps are read from onEvent, so nothing here depends on timing.

import { Metadata, Server, type ServerWritableStream, status } from "@grpc/grpc-js";
import { afterEach, describe, expect, test } from "vitest";
import { type AgentEvent, attemptOrder } from "../../src/agent/agent.js";
import { DispatcherService, type SessionMessage } from "../../src/gen/cluster.js";
import { LEADER_ADDR_KEY } from "../../src/manager/grpc-util.js";
import { listenPlaintext, runAgent, sessionMessage, testAgentOptions } from "./agent-fixtures.js";

/** Short, so that the reconnect spread (a random part of it) is short whatever random() gives. */
const PERIOD_MS = 200;

/** A manager as the agent sees it: it holds sessions (the leader) or names another manager (a follower). */
interface Fake {
  server: Server;
  addr: string;
  /** "lead": hold the session; "break": hold the first session then break it; else: the leader to name. */
  mode: { lead: true; breakFirst?: boolean } | { names: () => string };
  opened: number;
}

const message = (n: number): SessionMessage => sessionMessage(n, PERIOD_MS);

let sessions = 0;
async function fake(mode: Fake["mode"]): Promise<Fake> {
  const f: Fake = { server: new Server(), addr: "", mode, opened: 0 };
  f.server.addService(DispatcherService, {
    session: (call: ServerWritableStream<unknown, SessionMessage>) => {
      f.opened++;
      const m = f.mode;
      if ("names" in m) {
        const md = new Metadata();
        md.set(LEADER_ADDR_KEY, m.names());
        call.emit(
          "error",
          Object.assign(new Error("this manager is not the leader"), { code: status.UNAVAILABLE, metadata: md }),
        );
        return;
      }
      call.write(message(++sessions));
      if (m.breakFirst && f.opened === 1) {
        setImmediate(() =>
          call.emit("error", Object.assign(new Error("the leader went away"), { code: status.UNAVAILABLE })),
        );
      }
    },
    heartbeat: (_c: unknown, cb: (e: null, r: { periodMs: number }) => void) => cb(null, { periodMs: PERIOD_MS }),
    attach: (_c: unknown, cb: (e: Error) => void) => cb(new Error("no")),
    detach: (_c: unknown, cb: (e: Error) => void) => cb(new Error("no")),
  });
  f.addr = await listenPlaintext(f.server);
  return f;
}

let cleanup: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanup) await c();
  cleanup = [];
});

/** Runs an agent over `managers` until `done` holds of its steps; returns the steps. */
function run(managers: string[], random: () => number, done: (ev: AgentEvent[]) => boolean): Promise<AgentEvent[]> {
  return runAgent({ ...testAgentOptions(() => managers), random }, done, cleanup);
}

const attempts = (ev: AgentEvent[]) => ev.filter((e) => e.kind === "attempt").map((e) => e.addr);
const ups = (ev: AgentEvent[]) => ev.filter((e) => e.kind === "up").map((e) => e.addr);

describe("the order an agent tries the managers in", () => {
  test("before any session broke: the daemon's order (a manager node's own manager first)", () => {
    expect(attemptOrder(["a", "b", "c"], undefined, () => 0.99)).toEqual(["a", "b", "c"]);
  });

  test("after its session with one broke: the others first, from a random one of them, the lost one last", () => {
    expect(attemptOrder(["a", "b", "c"], "a", () => 0)).toEqual(["b", "c", "a"]);
    expect(attemptOrder(["a", "b", "c"], "a", () => 0.6)).toEqual(["c", "b", "a"]);
    expect(attemptOrder(["a", "b", "c", "d"], "b", () => 0.5)).toEqual(["c", "d", "a", "b"]);
    // A lost manager no longer in the list is not tried; one alone is still tried.
    expect(attemptOrder(["b", "c"], "a", () => 0)).toEqual(["b", "c"]);
    expect(attemptOrder(["a"], "a", () => 0.7)).toEqual(["a"]);
  });
});

describe("agent failover", () => {
  test("after the leader's death, the first attempt goes to a survivor, and the agent ends on the new leader", async () => {
    const newLeader = await fake({ lead: true });
    const follower = await fake({ names: () => newLeader.addr });
    const old = await fake({ lead: true, breakFirst: true });
    cleanup.push(async () => {
      for (const f of [old, follower, newLeader]) f.server.forceShutdown();
    });
    // random() = 0.99: the round after the break starts from the last survivor in the list, the new leader.
    const ev = await run(
      [old.addr, follower.addr, newLeader.addr],
      () => 0.99,
      (e) => ups(e).length === 2,
    );
    expect(ups(ev)).toEqual([old.addr, newLeader.addr]);
    expect(attempts(ev)).toEqual([old.addr, newLeader.addr]);
    expect(follower.opened).toBe(0);
  });

  test("a survivor that still names the lost leader is not followed there; the agent finds the new leader", async () => {
    const old = await fake({ lead: true, breakFirst: true });
    const newLeader = await fake({ lead: true });
    // Until the survivors elect a new leader they name the old one: this follower never learns better.
    const follower = await fake({ names: () => old.addr });
    cleanup.push(async () => {
      for (const f of [old, follower, newLeader]) f.server.forceShutdown();
    });
    // The old leader is gone once it broke the session (its address refuses connections).
    const oldAddr = old.addr;
    const events = run(
      [oldAddr, follower.addr, newLeader.addr],
      () => 0,
      (e) => ups(e).length === 2,
    );
    while (old.opened === 0) await new Promise((r) => setImmediate(r));
    old.server.forceShutdown();
    const ev = await events;
    // random() = 0: after the break the round starts at the follower; its redirect names the lost leader,
    // so the agent goes on with the round (the new leader) instead of back to the dead one.
    expect(attempts(ev)).toEqual([oldAddr, follower.addr, newLeader.addr]);
    expect(ups(ev)).toEqual([oldAddr, newLeader.addr]);
  });

  test("if the manager it lost is still the leader, the agent gets back to it at the end of the round", async () => {
    const leader = await fake({ lead: true, breakFirst: true });
    const f1 = await fake({ names: () => leader.addr });
    const f2 = await fake({ names: () => leader.addr });
    cleanup.push(async () => {
      for (const f of [leader, f1, f2]) f.server.forceShutdown();
    });
    const ev = await run(
      [leader.addr, f1.addr, f2.addr],
      () => 0.6,
      (e) => ups(e).length === 2,
    );
    expect(attempts(ev)).toEqual([leader.addr, f2.addr, f1.addr, leader.addr]);
    expect(ups(ev)).toEqual([leader.addr, leader.addr]);
  });

  test("a redirect to any other manager is followed at once", async () => {
    const leader = await fake({ lead: true });
    const follower = await fake({ names: () => leader.addr });
    cleanup.push(async () => {
      for (const f of [leader, follower]) f.server.forceShutdown();
    });
    const ev = await run(
      [follower.addr, leader.addr],
      () => 0,
      (e) => ups(e).length === 1,
    );
    expect(attempts(ev)).toEqual([follower.addr, leader.addr]);
    expect(ev.filter((e) => e.kind === "wait")).toEqual([]);
  });
});
