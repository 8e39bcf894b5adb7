// The dispatcher at scale: node status goes to Raft in few batched entries, a reconnect of a Ready node
// writes nothing, a new leader marks nobody down before a grace that grows with the swarm, and a change
// is sent only to the sessions it concerns. A real store (commands applied as Raft would apply them), the
// real ACL (real node certificates), the real Dispatcher; only the gRPC call objects are stand-ins.

import { EventEmitter } from "node:events";
import { Metadata, type ServerWritableStream, type UntypedServiceImplementation } from "@grpc/grpc-js";
import pino from "pino";
import { afterEach, beforeAll, describe, expect, test, vi } from "vitest";
import { type DecodedSession, decodeSessionMessage, type SessionDecodeMemo } from "../../src/agent/messages.js";
import { DEFAULT_SWARM_SPEC, type Node } from "../../src/api/objects.js";
import { generateNodeKeyAndCSR, signNodeCSR } from "../../src/ca/certs.js";
import { createRootCA, RootCA } from "../../src/ca/rootca.js";
import { HeartbeatResponse, SessionMessage } from "../../src/gen/cluster.js";
import { type AclContext, withAcl } from "../../src/manager/acl.js";
import { newNodeObject } from "../../src/manager/ca-server.js";
import { Dispatcher, GRACE_PER_NODE_MS, HEARTBEAT_MISSES } from "../../src/manager/dispatcher.js";
import { HOLD_MS, LOST_MANAGER_KEY } from "../../src/manager/grpc-util.js";
import { requestSchemas } from "../../src/manager/wire.js";
import { initialKeyring, rotateCommand } from "../../src/store/keyring.js";
import { type Command, encodeCommand, Store } from "../../src/store/store.js";

const CLUSTER = "c0000000000000000000000001";
const at = new Date("2026-12-01T00:00:00Z");
const PERIOD_MS = 1000;

interface Fixture {
  store: Store;
  writes: Command[];
  dispatcher: Dispatcher;
  service: UntypedServiceImplementation;
}

/**
 * `gate`: every Raft write waits for it before it is applied (a commit that takes its time). `leader`: the
 * leader as this manager knows it, and whether it has been silent lately (changed by the test).
 */
function fixture(
  gate?: Promise<void>,
  closeBatch?: number,
  leader: { addr: string | undefined; silent?: boolean } = { addr: "127.0.0.1:2377" },
): Fixture {
  const store = new Store();
  const writes: Command[] = [];
  let index = 0;
  const apply = (c: Command) => {
    const out = store.apply(encodeCommand(c, at), ++index);
    if (!out.ok) throw new Error(out.message);
    return out.version;
  };
  apply({
    op: "cluster.create",
    info: {
      ID: CLUSTER.slice(0, 25),
      Version: { Index: 0 },
      CreatedAt: at.toISOString(),
      UpdatedAt: at.toISOString(),
      Spec: { ...DEFAULT_SWARM_SPEC, Dispatcher: { HeartbeatPeriod: PERIOD_MS * 1e6 } },
      TLSInfo: { TrustRoot: "", CertIssuerSubject: "", CertIssuerPublicKey: "" },
      RootRotationInProgress: false,
      DefaultAddrPool: ["10.0.0.0/8"],
      SubnetSize: 24,
      DataPathPort: 4789,
    },
    secrets: { rootCACertPem: "", rootCAKeyPem: "", workerToken: "w", managerToken: "m" },
  });
  const dispatcher = new Dispatcher(
    {
      store,
      log: pino({ level: "silent" }),
      leaderAddr: () => leader.addr,
      leaderSilent: () => leader.silent ?? true,
      write: async (c) => {
        writes.push(c);
        await gate;
        return apply(c);
      },
      readBarrier: async () => undefined,
    },
    closeBatch,
  );
  const acl: AclContext = {
    clusterId: () => CLUSTER,
    isRemoved: (id) => store.isRemoved(id),
    roleOf: (id) => store.roleOf(id),
    readBarrier: async () => undefined,
  };
  const rule = (name: "session" | "heartbeat") => ({ allowed: ["worker" as const], request: requestSchemas[name] });
  const service = withAcl(
    dispatcher.service(),
    {
      session: rule("session"),
      heartbeat: rule("heartbeat"),
      heartbeats: { ...rule("heartbeat"), stream: true },
      attach: rule("session"),
      detach: rule("session"),
    },
    acl,
  );
  return { store, writes, dispatcher, service };
}

let root: RootCA;
const certs: Buffer[] = [];
const ids: string[] = [];

beforeAll(async () => {
  const m = await createRootCA();
  root = await RootCA.fromPem(m.certPem, m.keyPem);
  for (let i = 0; i < 40; i++) {
    const id = `n${String(i).padStart(24, "0")}`;
    const { csrPem } = await generateNodeKeyAndCSR(id);
    const pem = await signNodeCSR(root, csrPem, { nodeId: id, role: "worker", clusterId: CLUSTER });
    const b64 = pem.replace(/-----[A-Z ]+-----|\s/g, "");
    ids.push(id);
    certs.push(Buffer.from(b64, "base64"));
  }
}, 60_000);

afterEach(() => {
  vi.useRealTimers();
});

/** A stand-in for grpc-js's server stream: what the dispatcher writes, and whether it ended. */
class FakeStream extends EventEmitter {
  readonly messages: SessionMessage[] = [];
  /** The bytes of each message, as written. */
  readonly sizes: number[] = [];
  readonly metadata = new Metadata();
  error: Error | undefined;
  constructor(
    readonly request: { descriptionJson: string; addr: string; acceptsDeltas?: boolean },
    private readonly der: Buffer,
  ) {
    super();
    this.on("error", (e: Error) => {
      this.error = e;
    });
  }
  getPeer(): string {
    return "127.0.0.1:40000";
  }
  getAuthContext() {
    return { sslPeerCertificate: { raw: this.der } };
  }
  /** `bytes`: the message as the dispatcher writes it, encoded (grpc-js sends those bytes as they are). */
  write(bytes: Buffer): boolean {
    this.messages.push(SessionMessage.decode(bytes));
    this.sizes.push(bytes.length);
    return true;
  }
  end(): void {}
}

/** A command applied to the fixture's store, as a commit would (throws when the store refuses it). */
function applier(f: Fixture): (c: Command) => void {
  return (c) => {
    const out = f.store.apply(encodeCommand(c, at), f.store.appliedIndex + 1);
    if (!out.ok) throw new Error(out.message);
  };
}

/** The overlay keys, an encrypted network ("secret") and a plain one ("plain"); their ids. */
function keysAndTwoNetworks(apply: (c: Command) => void): { secret: string; plain: string } {
  apply({ op: "keys.init", ring: initialKeyring(at) });
  const spec = { driver: "overlay" as const, internal: false, attachable: true, ingress: false, labels: {} };
  const secret = "net000000000000000000000s";
  const plain = "net000000000000000000000p";
  apply({ op: "network.create", id: secret, spec: { name: "secret", ...spec, options: { encrypted: "" } } });
  apply({ op: "network.create", id: plain, spec: { name: "plain", ...spec, options: {} } });
  return { secret, plain };
}

function addNode(f: Fixture, i: number, state: "unknown" | "ready" = "unknown"): void {
  const node: Node = newNodeObject(ids[i]!, "worker", "active", `host${i}`, "127.0.0.1");
  f.store.apply(encodeCommand({ op: "node.create", node, role: "worker" }, at), f.store.appliedIndex + 1);
  if (state === "ready") {
    f.store.apply(
      encodeCommand({ op: "node.status", id: ids[i]!, state: "ready", addr: "127.0.0.1" }, at),
      f.store.appliedIndex + 1,
    );
  }
}

/**
 * `lost`: the manager the node says it lost (the agent's session request metadata). `deltas`: the agent
 * takes deltas (an agent of this tree); without it the request is an older agent's.
 */
function open(f: Fixture, i: number, lost?: string, deltas?: boolean, descriptionJson = ""): FakeStream {
  const request =
    deltas === undefined ? { descriptionJson, addr: "" } : { descriptionJson, addr: "", acceptsDeltas: deltas };
  const s = new FakeStream(request, certs[i]!);
  if (lost !== undefined) s.metadata.set(LOST_MANAGER_KEY, lost);
  (f.service.session as (c: ServerWritableStream<unknown, unknown>) => void)(
    s as unknown as ServerWritableStream<unknown, unknown>,
  );
  return s;
}

/** One heartbeat on the stream's session. */
function beat(f: Fixture, s: FakeStream): Promise<void> {
  const sessionId = s.messages[0]?.sessionId ?? "";
  return new Promise<void>((resolve, reject) =>
    (f.service.heartbeat as (c: unknown, cb: (e: unknown) => void) => void)(
      { request: { sessionId }, getPeer: () => "127.0.0.1:1", getAuthContext: () => s.getAuthContext() },
      (e) => (e ? reject(e) : resolve()),
    ),
  );
}

/** A stand-in for grpc-js's server duplex stream of heartbeats: what the dispatcher answers, and how it ended. */
class FakeBeats extends EventEmitter {
  readonly answers: HeartbeatResponse[] = [];
  error: (Error & { code?: number }) | undefined;
  ended = false;
  constructor(private readonly der: Buffer) {
    super();
    this.on("error", (e: Error) => {
      this.error = e;
    });
  }
  getPeer(): string {
    return "127.0.0.1:40001";
  }
  getAuthContext() {
    return { sslPeerCertificate: { raw: this.der } };
  }
  write(bytes: Buffer): boolean {
    this.answers.push(HeartbeatResponse.decode(bytes));
    return true;
  }
  end(): void {
    this.ended = true;
  }
}

/** A heartbeat stream opened by node i (its certificate); the ACL admits it on a later microtask. */
async function openBeats(f: Fixture, i: number): Promise<FakeBeats> {
  const b = new FakeBeats(certs[i]!);
  (f.service.heartbeats as (c: unknown) => void)(b);
  await Promise.resolve();
  await Promise.resolve();
  return b;
}

const settle = async (ms = 300) => {
  await vi.advanceTimersByTimeAsync(ms);
};

describe("dispatcher", () => {
  test("40 sessions starting make their nodes Ready in one or two Raft entries, not 40", async () => {
    vi.useFakeTimers({ toFake: ["setTimeout", "setInterval", "setImmediate", "performance"] });
    const f = fixture();
    for (let i = 0; i < 40; i++) addNode(f, i);
    f.dispatcher.becomeLeader();
    const streams = ids.map((_, i) => open(f, i));
    await settle();
    expect(f.store.nodeViews().filter((n) => n.node.Status.State === "ready")).toHaveLength(40);
    expect(f.writes.length).toBeLessThanOrEqual(2);
    expect(f.writes.every((w) => w.op === "node.statusBatch")).toBe(true);
    // Every session was told its node is Ready.
    for (const s of streams) {
      const last = s.messages.at(-1)!;
      expect((JSON.parse(last.nodeJson) as Node).Status.State).toBe("ready");
    }
    f.dispatcher.loseLeadership();
  });

  test("a joining node's session is sent nothing until its Ready status is committed (join ends on Ready)", async () => {
    vi.useFakeTimers({ toFake: ["setTimeout", "setInterval", "setImmediate", "performance"] });
    let commit = () => {};
    const f = fixture(new Promise<void>((resolve) => (commit = resolve)));
    addNode(f, 0);
    f.dispatcher.becomeLeader();
    const s = open(f, 0);
    await settle();
    expect(f.writes.map((w) => w.op)).toEqual(["node.statusBatch"]);
    expect(s.messages).toEqual([]);
    // However long the commit takes, the session is not expired for heartbeats it could not send yet.
    await settle(PERIOD_MS * (HEARTBEAT_MISSES + 1));
    expect(s.error).toBeUndefined();
    commit();
    await settle();
    expect(s.messages).toHaveLength(1);
    expect((JSON.parse(s.messages[0]!.nodeJson) as Node).Status.State).toBe("ready");
    f.dispatcher.loseLeadership();
  });

  test("a node that is already Ready reconnecting writes nothing", async () => {
    vi.useFakeTimers({ toFake: ["setTimeout", "setInterval", "setImmediate", "performance"] });
    const f = fixture();
    addNode(f, 0, "ready");
    f.dispatcher.becomeLeader();
    const s = open(f, 0);
    await settle();
    expect(s.messages.length).toBe(1);
    expect(f.writes).toEqual([]);
    f.dispatcher.loseLeadership();
  });

  test("a reconnect with the description the store holds writes nothing; a changed one is written, a malformed one refused", async () => {
    vi.useFakeTimers({ toFake: ["setTimeout", "setInterval", "setImmediate", "performance"] });
    const f = fixture();
    addNode(f, 0, "ready");
    f.dispatcher.becomeLeader();
    const held = f.store.nodeView(ids[0]!)!.node.Description;
    const same = open(f, 0, undefined, true, JSON.stringify(held));
    await settle();
    expect(same.messages.length).toBe(1);
    expect(f.writes).toEqual([]);
    // The same description in another key order is the same description: nothing to write either.
    const { Hostname, ...rest } = held;
    open(f, 0, undefined, true, JSON.stringify({ ...rest, Hostname }));
    await settle();
    expect(f.writes).toEqual([]);
    const renamed = open(f, 0, undefined, true, JSON.stringify({ ...held, Hostname: "renamed" }));
    await settle();
    expect(renamed.messages.length).toBe(1);
    expect(f.writes.map((w) => w.op)).toEqual(["node.statusBatch"]);
    expect(f.store.nodeView(ids[0]!)!.node.Description.Hostname).toBe("renamed");
    const bad = open(f, 0, undefined, true, JSON.stringify({ ...held, Hostname: 5 }));
    await settle();
    expect(bad.messages).toEqual([]);
    expect(bad.error?.message).toMatch(/invalid session request: .*Hostname/);
    f.dispatcher.loseLeadership();
  });

  test("a new leader marks nobody down before a grace that grows with the swarm, then all at once", async () => {
    vi.useFakeTimers({ toFake: ["setTimeout", "setInterval", "setImmediate", "performance"] });
    const f = fixture();
    for (let i = 0; i < 40; i++) addNode(f, i, "ready");
    f.dispatcher.becomeLeader();
    const graceMs = PERIOD_MS * HEARTBEAT_MISSES + 40 * GRACE_PER_NODE_MS;
    // Half the nodes come back within the grace (and keep beating), the last of them only just in time.
    const open19 = Array.from({ length: 19 }, (_, i) => open(f, i));
    await settle(50);
    for (let elapsed = 50; elapsed < graceMs - 200; elapsed += 200) {
      for (const s of open19) await beat(f, s);
      await settle(200);
    }
    const late = open(f, 19);
    await settle(50);
    expect(f.writes).toEqual([]);
    // The fixed grace is over, but a node came back less than a heartbeat period ago: nodes may still be
    // waiting their turn, so nobody is marked down yet.
    for (let t = 0; t < PERIOD_MS - 300; t += 200) {
      for (const s of [...open19, late]) await beat(f, s);
      await settle(200);
    }
    expect(f.writes).toEqual([]);
    for (let t = 0; t < PERIOD_MS + 200; t += 200) {
      for (const s of [...open19, late]) await beat(f, s);
      await settle(200);
    }
    const down = f.store.nodeViews().filter((n) => n.node.Status.State === "down");
    expect(down.map((n) => n.node.ID).sort()).toEqual(ids.slice(20).sort());
    expect(f.writes).toHaveLength(1);
    f.dispatcher.loseLeadership();
  });

  test("a leader that could not listen for a while (a stall) marks nobody down for the heartbeats it could not read", async () => {
    // Timers are faked; performance.now() is driven by hand, so that time can pass with no timer running,
    // as it does for a process whose event loop is blocked or which gets no CPU.
    vi.useFakeTimers({ toFake: ["setTimeout", "setInterval", "setImmediate"] });
    let now = 1_000_000;
    vi.spyOn(performance, "now").mockImplementation(() => now);
    const pass = async (ms: number) => {
      for (let t = 0; t < ms; t += 100) {
        now += 100;
        await vi.advanceTimersByTimeAsync(100);
      }
    };
    const f = fixture();
    for (let i = 0; i < 10; i++) addNode(f, i, "ready");
    f.dispatcher.becomeLeader();
    const streams = Array.from({ length: 10 }, (_, i) => open(f, i));
    await pass(300);
    for (let t = 0; t < PERIOD_MS * (HEARTBEAT_MISSES + 2); t += PERIOD_MS) {
      for (const s of streams) await beat(f, s);
      await pass(PERIOD_MS);
    }
    // Stalled for longer than the heartbeat deadline: no timer ran, no heartbeat was read.
    now += PERIOD_MS * (HEARTBEAT_MISSES + 2);
    await pass(PERIOD_MS);
    // The heartbeats sent meanwhile are read now.
    for (const s of streams) await beat(f, s);
    await pass(PERIOD_MS);
    expect(streams.filter((s) => s.error !== undefined)).toEqual([]);
    expect(f.store.nodeViews().filter((n) => n.node.Status.State === "down")).toEqual([]);
    // A node that really stops beating is still marked down.
    for (let t = 0; t < PERIOD_MS * (HEARTBEAT_MISSES + 2); t += PERIOD_MS) {
      for (const s of streams.slice(1)) await beat(f, s);
      await pass(PERIOD_MS);
    }
    expect(
      f.store
        .nodeViews()
        .filter((n) => n.node.Status.State === "down")
        .map((n) => n.node.ID),
    ).toEqual([ids[0]]);
    f.dispatcher.loseLeadership();
    vi.restoreAllMocks();
  });

  test("a node's status change is sent to its own session only; a swarm-wide change to every session", async () => {
    vi.useFakeTimers({ toFake: ["setTimeout", "setInterval", "setImmediate", "performance"] });
    const f = fixture();
    for (let i = 0; i < 3; i++) addNode(f, i, "ready");
    f.dispatcher.becomeLeader();
    const [a, b, c] = [open(f, 0), open(f, 1), open(f, 2)];
    await settle();
    const before = [a.messages.length, b.messages.length, c.messages.length];
    f.store.apply(
      encodeCommand(
        {
          op: "node.update",
          id: ids[0]!,
          version: f.store.node(ids[0]!)!.node.Version.Index,
          spec: { Labels: { x: "1" }, Role: "worker", Availability: "active" },
        },
        at,
      ),
      f.store.appliedIndex + 1,
    );
    await settle();
    expect([a.messages.length, b.messages.length, c.messages.length]).toEqual([before[0]! + 1, before[1], before[2]]);
    const cl = f.store.cluster()!;
    f.store.apply(
      encodeCommand(
        {
          op: "cluster.update",
          version: cl.info.Version.Index,
          spec: { ...cl.info.Spec, Dispatcher: { HeartbeatPeriod: 2 * PERIOD_MS * 1e6 } },
        },
        at,
      ),
      f.store.appliedIndex + 1,
    );
    await settle();
    for (const s of [a, b, c]) expect(s.messages.at(-1)!.heartbeatPeriodMs).toBe(2 * PERIOD_MS);
    f.dispatcher.loseLeadership();
  });

  test("a change is serialised once for every session it concerns, not once per session", async () => {
    vi.useFakeTimers({ toFake: ["setTimeout", "setInterval", "setImmediate", "performance"] });
    const f = fixture();
    const n = 30;
    for (let i = 0; i < n; i++) addNode(f, i, "ready");
    const apply = applier(f);
    const netId = "net000000000000000000000a";
    const spec = {
      driver: "overlay" as const,
      internal: false,
      attachable: true,
      ingress: false,
      options: {},
      labels: {},
    };
    apply({ op: "network.create", id: netId, spec: { name: "web", ...spec } });
    const endpoint = (i: number): Command => ({
      op: "endpoint.create",
      id: `${String(i).padStart(4, "0")}`.padEnd(64, "e"),
      networkId: netId,
      nodeId: ids[i]!,
      containerId: `${String(i).padStart(4, "0")}`.padEnd(64, "c"),
      containerName: `web${i}`,
      aliases: [],
      standalone: true,
    });
    // The first 10 nodes hold the network.
    for (let i = 0; i < 10; i++) apply(endpoint(i));
    f.dispatcher.becomeLeader();
    const streams = Array.from({ length: n }, (_, i) => open(f, i));
    await settle();
    const counts = () => streams.map((s) => s.messages.length);
    const stringify = vi.spyOn(JSON, "stringify");

    // A swarm-wide change: every session gets it, from one encoding of what everyone gets.
    const before = counts();
    const encoded = f.dispatcher.encodedPieces();
    const cl = f.store.cluster()!;
    const period = { Dispatcher: { HeartbeatPeriod: 3 * PERIOD_MS * 1e6 } };
    apply({ op: "cluster.update", version: cl.info.Version.Index, spec: { ...cl.info.Spec, ...period } });
    stringify.mockClear();
    await settle();
    expect(counts()).toEqual(before.map((c) => c + 1));
    for (const [i, s] of streams.entries()) {
      const m = s.messages.at(-1)!;
      expect(m.heartbeatPeriodMs).toBe(3 * PERIOD_MS);
      // Still the whole state of the session: its own node, the networks it holds.
      expect((JSON.parse(m.nodeJson) as Node).ID).toBe(ids[i]);
      expect(m.networks.length).toBe(i < 10 ? 1 : 0);
      expect(m.sessionId).toBe(s.messages[0]!.sessionId);
    }
    expect(f.dispatcher.encodedPieces() - encoded).toBe(1);
    expect(stringify).not.toHaveBeenCalled(); // no node and no message turned into JSON again per session

    // A new endpoint on the network: its 11 holders get it, from one encoding of the network.
    const before2 = counts();
    const encoded2 = f.dispatcher.encodedPieces();
    apply(endpoint(10));
    await settle();
    expect(counts().map((c, i) => c - before2[i]!)).toEqual(streams.map((_, i) => (i <= 10 ? 1 : 0)));
    // The network once, what everyone gets once per batch; no node piece (no node changed).
    expect(f.dispatcher.encodedPieces() - encoded2).toBe(2);
    for (let i = 0; i <= 10; i++) expect(streams[i]!.messages.at(-1)!.networks[0]!.endpoints.length).toBe(11);
    stringify.mockRestore();
    f.dispatcher.loseLeadership();
  });

  test("overlay keys go to the holders of an encrypted network only; a rotation is encoded once for all of them", async () => {
    vi.useFakeTimers({ toFake: ["setTimeout", "setInterval", "setImmediate", "performance"] });
    const f = fixture();
    const apply = applier(f);
    for (let i = 0; i < 6; i++) addNode(f, i, "ready");
    const { secret, plain } = keysAndTwoNetworks(apply);
    // Nodes 0-2 hold the encrypted network, 3-4 the plain one, 5 none.
    for (let i = 0; i < 5; i++) {
      apply({
        op: "endpoint.create",
        id: String(i).padEnd(64, "e"),
        networkId: i < 3 ? secret : plain,
        nodeId: ids[i]!,
        containerId: String(i).padEnd(64, "c"),
        containerName: `c${i}`,
        aliases: [],
        standalone: true,
      });
    }
    f.dispatcher.becomeLeader();
    const streams = Array.from({ length: 6 }, (_, i) => open(f, i));
    await settle();
    const keysOf = (i: number) => streams[i]!.messages.at(-1)!.networkKeysJson;
    for (let i = 0; i < 6; i++) expect(keysOf(i) !== "").toBe(i < 3);
    const before = streams.map((s) => s.messages.length);
    const encoded = f.dispatcher.encodedPieces();
    apply(rotateCommand(f.store.keyring()!, at));
    await settle();
    // Those holding a network are looked at; only the holders of the encrypted one get a new message.
    expect(streams.map((s, i) => s.messages.length - before[i]!)).toEqual([1, 1, 1, 0, 0, 0]);
    for (let i = 0; i < 3; i++) {
      expect((JSON.parse(keysOf(i)) as { keys: { tag: number }[] }).keys.map((k) => k.tag)).toEqual([2, 3, 4]);
    }
    expect(f.dispatcher.encodedPieces() - encoded).toBe(2); // the keys, and what everyone gets
    f.dispatcher.loseLeadership();
  });

  test("an agent that takes deltas is sent only what changed, and after any sequence of them holds the whole state", async () => {
    vi.useFakeTimers({ toFake: ["setTimeout", "setInterval", "setImmediate", "performance"] });
    const f = fixture();
    const apply = applier(f);
    for (let i = 0; i < 3; i++) addNode(f, i, "ready");
    const { secret, plain } = keysAndTwoNetworks(apply);
    const endpoint = (n: number, node: number, net: string): Command => ({
      op: "endpoint.create",
      id: String(n).padEnd(64, "e"),
      networkId: net,
      nodeId: ids[node]!,
      containerId: String(n).padEnd(64, "c"),
      containerName: `c${n}`,
      aliases: [],
      standalone: true,
    });
    apply(endpoint(0, 0, plain));
    f.dispatcher.becomeLeader();
    // Node 0's agent takes deltas; node 1's is an older one (whole state each time); node 2 is a peer.
    let a = open(f, 0, undefined, true);
    const old = open(f, 1);
    await settle();
    // The agent's side: every message applied in order to the state the previous ones left.
    const follow = (stream: FakeStream) => {
      const memo: SessionDecodeMemo = { nodeJson: "", node: undefined };
      let state: DecodedSession | undefined;
      let read = 0;
      return (): DecodedSession => {
        for (; read < stream.messages.length; read++) state = decodeSessionMessage(stream.messages[read]!, memo, state);
        return state!;
      };
    };
    let agentState = follow(a);
    /** A new session of node 0: its first message is the whole state, the same as the deltas left. */
    const restart = async () => {
      const merged = agentState();
      expect(a.messages.slice(1).every((m) => m.delta)).toBe(true);
      a = open(f, 0, undefined, true);
      await settle();
      expect(a.messages).toHaveLength(1);
      expect(a.messages[0]!.delta).toBe(false);
      agentState = follow(a);
      expect({ ...merged, sessionId: "" }).toEqual({ ...agentState(), sessionId: "" });
    };
    expect(a.messages[0]!.delta).toBe(false);
    expect(agentState().networks.map((n) => n.network.id)).toEqual([plain]);
    const step = async (c: Command) => {
      apply(c);
      await settle();
    };

    // A new heartbeat period: a few bytes (the session id and the period), not the node nor the network.
    const cl = f.store.cluster()!;
    const period = { Dispatcher: { HeartbeatPeriod: 3 * PERIOD_MS * 1e6 } };
    await step({ op: "cluster.update", version: cl.info.Version.Index, spec: { ...cl.info.Spec, ...period } });
    const d = a.messages.at(-1)!;
    expect(d.delta).toBe(true);
    expect([d.nodeJson, d.networks.length, d.managers.length]).toEqual(["", 0, 0]);
    expect(a.sizes.at(-1)).toBeLessThan(64);
    expect(agentState().heartbeatPeriodMs).toBe(3 * PERIOD_MS);
    // The older agent got its whole state, as before.
    expect(old.messages.at(-1)!.delta).toBe(false);
    expect(old.messages.at(-1)!.heartbeatPeriodMs).toBe(3 * PERIOD_MS);
    expect(JSON.parse(old.messages.at(-1)!.nodeJson).ID).toBe(ids[1]);

    // The node holds the encrypted network too (keys come), a peer joins it, the node's labels change, the
    // keys rotate, the node leaves the plain network, then the encrypted one (keys go).
    await step(endpoint(1, 0, secret));
    expect(agentState().keys).toBeDefined();
    await step(endpoint(2, 2, secret));
    const node = f.store.node(ids[0]!)!.node;
    await step({
      op: "node.update",
      id: ids[0]!,
      version: node.Version.Index,
      spec: { Labels: { zone: "a" }, Role: "worker", Availability: "active" },
    });
    await step(rotateCommand(f.store.keyring()!, at));
    await step({ op: "endpoint.remove", id: String(0).padEnd(64, "e") });
    const mid = agentState();
    expect(mid.networks.map((n) => [n.network.id, n.endpoints.length])).toEqual([[secret, 2]]);
    expect(mid.node?.Spec.Labels).toEqual({ zone: "a" });
    expect(mid.keys?.keys.map((k) => k.tag)).toEqual([2, 3, 4]);
    await restart();
    // It leaves the encrypted network: the network and the keys go.
    await step({ op: "endpoint.remove", id: String(1).padEnd(64, "e") });
    expect(a.messages.at(-1)!.removedNetworks).toEqual([secret]);
    expect(agentState().networks).toEqual([]);
    expect(agentState().keys).toBeUndefined();
    expect(agentState().networkKeysJson).toBe("");
    await restart();
    f.dispatcher.loseLeadership();
  });

  test("a manager that stops leading closes its sessions a batch per event-loop turn, each told the leader", async () => {
    vi.useFakeTimers({ toFake: ["setTimeout", "setInterval", "setImmediate", "performance"] });
    const f = fixture(undefined, 10);
    for (let i = 0; i < 40; i++) addNode(f, i, "ready");
    f.dispatcher.becomeLeader();
    const streams = ids.map((_, i) => open(f, i));
    await settle();
    const closed = () => streams.filter((s) => s.error !== undefined).length;
    expect(closed()).toBe(0);
    const done = f.dispatcher.loseLeadership();
    // Not all at once: the first batch now, the next ones on later turns of the event loop.
    expect(closed()).toBe(10);
    await settle();
    await done;
    expect(closed()).toBe(40);
    for (const s of streams) expect(s.error?.message).toContain("127.0.0.1:2377");
    // Forgotten at once: a heartbeat on any of them is told to go to the leader.
    await expect(beat(f, streams[39]!)).rejects.toThrow(/127\.0\.0\.1:2377/);
  });

  test("a session whose heartbeats stop is expired and its node marked down", async () => {
    vi.useFakeTimers({ toFake: ["setTimeout", "setInterval", "setImmediate", "performance"] });
    const f = fixture();
    addNode(f, 0, "ready");
    addNode(f, 1, "ready");
    f.dispatcher.becomeLeader();
    const [a, b] = [open(f, 0), open(f, 1)];
    await settle();
    for (let t = 0; t < 6; t++) {
      await beat(f, b);
      await settle(PERIOD_MS);
    }
    expect(a.error?.message).toMatch(/missed heartbeats/);
    expect(b.error).toBeUndefined();
    const states = Object.fromEntries(f.store.nodeViews().map((n) => [n.node.ID, n.node.Status.State]));
    expect(states).toEqual({ [ids[0]!]: "down", [ids[1]!]: "ready" });
    f.dispatcher.loseLeadership();
  });

  test("heartbeats on one stream keep a session alive, each answered with the period", async () => {
    vi.useFakeTimers({ toFake: ["setTimeout", "setInterval", "setImmediate", "performance"] });
    const f = fixture();
    addNode(f, 0, "ready");
    addNode(f, 1, "ready");
    f.dispatcher.becomeLeader();
    const [a, b] = [open(f, 0), open(f, 1)];
    await settle();
    const beats = await openBeats(f, 1);
    for (let t = 0; t < 6; t++) {
      beats.emit("data", { sessionId: b.messages[0]!.sessionId });
      await settle(PERIOD_MS);
    }
    expect(beats.answers).toEqual(Array(6).fill({ periodMs: PERIOD_MS }));
    expect(beats.error).toBeUndefined();
    expect(b.error).toBeUndefined();
    expect(a.error?.message).toMatch(/missed heartbeats/);
    f.dispatcher.loseLeadership();
  });

  test("a beat on the stream for an unknown session, or another node's, ends the stream NOT_FOUND", async () => {
    vi.useFakeTimers({ toFake: ["setTimeout", "setInterval", "setImmediate", "performance"] });
    const f = fixture();
    addNode(f, 0, "ready");
    addNode(f, 1, "ready");
    f.dispatcher.becomeLeader();
    const a = open(f, 0);
    await settle();
    const unknown = await openBeats(f, 0);
    unknown.emit("data", { sessionId: "0".repeat(24) });
    expect(unknown.error?.code).toBe(5); // NOT_FOUND
    // Node 1 naming node 0's session (a session id is not a credential on its own).
    const other = await openBeats(f, 1);
    other.emit("data", { sessionId: a.messages[0]!.sessionId });
    expect(other.error?.code).toBe(5);
    expect(other.answers).toEqual([]);
    const bad = await openBeats(f, 0);
    bad.emit("data", { sessionId: "not a session" });
    expect(bad.error?.code).toBe(3); // INVALID_ARGUMENT
    f.dispatcher.loseLeadership();
    // After this manager stops leading, a beat is told where the leader is.
    const late = await openBeats(f, 0);
    late.emit("data", { sessionId: a.messages[0]!.sessionId });
    expect(late.error?.message).toContain("127.0.0.1:2377");
  });

  describe("a manager that is not the leader", () => {
    const OLD = "192.0.2.1:2377";
    const NEW = "192.0.2.2:2377";

    test("holds the request of a node that lost the manager it takes for leader, then names the new leader", async () => {
      vi.useFakeTimers({ toFake: ["setTimeout", "setInterval", "setImmediate", "performance"] });
      const leader = { addr: OLD as string | undefined };
      const f = fixture(undefined, undefined, leader);
      for (let i = 0; i < 3; i++) addNode(f, i, "ready");
      // Its election timeout has not run out yet: it still names the dead leader.
      const held = [open(f, 0, OLD), open(f, 1, OLD)];
      const other = open(f, 2);
      await settle();
      expect(held.map((s) => s.error)).toEqual([undefined, undefined]);
      expect(f.dispatcher.heldRequests()).toBe(2);
      // A node that lost no manager (or another one) is told the leader at once, as before.
      expect(other.error?.message).toContain(OLD);
      // Elected: the held requests are answered with the new leader, and none became a session here.
      leader.addr = undefined;
      f.dispatcher.leaderChanged();
      await settle();
      expect(f.dispatcher.heldRequests()).toBe(2);
      leader.addr = NEW;
      f.dispatcher.leaderChanged();
      await settle();
      for (const s of held) {
        expect(s.error?.message).toContain(NEW);
        expect(s.messages).toEqual([]);
      }
      expect(f.dispatcher.heldRequests()).toBe(0);
      expect(f.writes).toEqual([]);
    });

    test("sends a node straight back to the manager it lost while that one is still heard from", async () => {
      vi.useFakeTimers({ toFake: ["setTimeout", "setInterval", "setImmediate", "performance"] });
      const f = fixture(undefined, undefined, { addr: OLD, silent: false });
      addNode(f, 0, "ready");
      // The leader is alive (the node's session broke on its side): nothing to wait for.
      const s = open(f, 0, OLD);
      await settle();
      expect(s.error?.message).toContain(OLD);
      expect(f.dispatcher.heldRequests()).toBe(0);
    });

    test("answers a held request once its time is up, and forgets one the node gave up", async () => {
      vi.useFakeTimers({ toFake: ["setTimeout", "setInterval", "setImmediate", "performance"] });
      const f = fixture(undefined, undefined, { addr: undefined });
      addNode(f, 0, "ready");
      addNode(f, 1, "ready");
      const s = open(f, 0, OLD);
      const gaveUp = open(f, 1);
      await settle(0);
      expect(f.dispatcher.heldRequests()).toBe(2);
      gaveUp.emit("cancelled");
      expect(f.dispatcher.heldRequests()).toBe(1);
      // Held a random 75-100 % of HOLD_MS.
      await settle(0.75 * HOLD_MS - 100);
      expect(s.error).toBeUndefined();
      await settle(0.25 * HOLD_MS + 200);
      expect(s.error?.message).toMatch(/does not have a leader/);
      expect(f.dispatcher.heldRequests()).toBe(0);
    });

    test("serves the requests it held once it is the leader itself", async () => {
      vi.useFakeTimers({ toFake: ["setTimeout", "setInterval", "setImmediate", "performance"] });
      const leader = { addr: OLD as string | undefined };
      const f = fixture(undefined, undefined, leader);
      addNode(f, 0, "ready");
      const s = open(f, 0, OLD);
      await settle();
      expect(s.error).toBeUndefined();
      leader.addr = "127.0.0.1:2377";
      f.dispatcher.becomeLeader();
      f.dispatcher.leaderChanged();
      await settle();
      expect(s.error).toBeUndefined();
      expect(s.messages).toHaveLength(1);
      expect((JSON.parse(s.messages[0]!.nodeJson) as Node).Status.State).toBe("ready");
      f.dispatcher.loseLeadership();
    });
  });
});
