// The gRPC Raft transport over mutual TLS on 127.0.0.1: three RaftNodes (level storage) each behind its
// own grpc.Server (listenTLS) elect a leader and commit; a 4 MB snapshot reaches a new member in chunks;
// only manager certificates of this cluster may call the Raft service; a killed manager is seen as
// unreachable within 3 s while the others keep committing, and catches up when it comes back on the same
// port; a peer that stops reading (frozen TCP, as when a host dies) is detected by keepalive while the
// per-peer queue stays bounded.

import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import { afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { createRootCA, RootCA, type RootCAMaterial } from "../../src/ca/rootca.js";
import { CLIENT_CHANNEL_OPTIONS, listenTLS, type TLSListener } from "../../src/ca/tls.js";
import { clientCredentials } from "../../src/ca/tls-client.js";
import * as pb from "../../src/gen/raft.js";
import { messageToPb } from "../../src/raft/codec.js";
import { LevelStorage } from "../../src/raft/level-storage.js";
import { RaftNode, type RaftNodeOptions } from "../../src/raft/node.js";
import { SeededRand } from "../../src/raft/rand.js";
import { bootstrapSnapshot } from "../../src/raft/rawnode.js";
import {
  GrpcTransport,
  RAFT_SERVER_OPTIONS,
  RaftServiceDefinition,
  raftServiceImplementation,
  type SenderStatus,
} from "../../src/raft/transport.js";
import {
  ConfChangeType,
  EMPTY,
  EntryType,
  type Message,
  MessageType,
  type NodeId,
  newMessage,
} from "../../src/raft/types.js";
import { KVMachine } from "./kv-machine.js";
import { CLUSTER, issue, type Material, managerNodeId, startRelay, startSink, waitFor } from "./raft-fixtures.js";
import { TEST_DEK } from "./test-dek.js";

const OTHER_CLUSTER = "clusterid0000000000000002";

let rootM: RootCAMaterial;
const managers = new Map<NodeId, Material>();
let worker: Material;
let otherClusterManager: Material;

beforeAll(async () => {
  rootM = await createRootCA();
  const ca = await RootCA.fromPem(rootM.certPem, rootM.keyPem);
  for (const id of [1, 2, 3, 4]) managers.set(id, await issue(ca, managerNodeId(id), "manager"));
  worker = await issue(ca, "worker000000000000000000001", "worker");
  otherClusterManager = await issue(ca, "manager00000000000000000099", "manager", OTHER_CLUSTER);
});

const managerCreds = (id: NodeId): grpc.ChannelCredentials => {
  const m = managers.get(id)!;
  return clientCredentials(rootM.certPem, m.certPem, m.keyPem);
};

// ---------------------------------------------------------------------------------------------------
// Harness

interface Member {
  id: NodeId;
  port: number;
  storage: LevelStorage;
  sm: KVMachine;
  node: RaftNode;
  transport: GrpcTransport;
  server: grpc.Server;
  listener: TLSListener;
  /** Messages delivered by the server side, by type. */
  received: Map<MessageType, number>;
}

let root: string;
let members: Member[];
let addrs: Map<NodeId, string>;
let cleanups: (() => unknown)[];

beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), "shoal-transport-"));
  members = [];
  addrs = new Map();
  cleanups = [];
});

afterEach(async () => {
  for (const c of cleanups.reverse()) await c();
  await Promise.all(members.map((m) => stopMember(m)));
  members = [];
  await rm(root, { recursive: true, force: true });
});

/**
 * The daemon's membership rule, for members started with `strict`: raft id n is held by node managerNodeId(n)
 * while it is in the node's configuration; an id its log removed is "removed"; anything else "unknown".
 */
function memberRule(node: () => RaftNode | undefined): (from: NodeId, nodeId: string) => SenderStatus {
  return (from, nodeId) => {
    const n = node();
    if (!n) return "unknown";
    if (n.isRemovedId(from)) return "removed";
    const cs = n.status().confState;
    if (!cs.voters.includes(from) && !cs.learners.includes(from)) return "unknown";
    return managerNodeId(from) === nodeId ? "member" : "other-node";
  };
}

async function startMember(
  id: NodeId,
  o: { bootstrap?: NodeId[]; port?: number; raft?: Partial<RaftNodeOptions>; strict?: boolean } = {},
): Promise<Member> {
  const storage = await LevelStorage.open(join(root, `n${id}`), { dek: TEST_DEK });
  if (o.bootstrap && storage.mem.lastIndex() === 0) {
    const b = bootstrapSnapshot(o.bootstrap);
    await storage.save({ snapshot: b.snapshot, hardState: b.hardState, entries: [] }, true);
  }
  const sm = new KVMachine();
  const received = new Map<MessageType, number>();
  let node: RaftNode | undefined;
  const transport = new GrpcTransport({
    selfId: id,
    resolve: (x) => addrs.get(x),
    credentials: () => managerCreds(id),
    onUnreachable: (x) => node?.reportUnreachable(x),
    onToldRemoved: (by) => node?.toldRemoved(by),
  });
  const server = new grpc.Server(RAFT_SERVER_OPTIONS);
  server.addService(
    RaftServiceDefinition,
    raftServiceImplementation({
      deliver: (m) => {
        received.set(m.type, (received.get(m.type) ?? 0) + 1);
        node?.step(m);
      },
      clusterId: () => CLUSTER,
      onHeard: (x) => transport.markHeard(x),
      selfId: () => id,
      ...(o.strict ? { member: memberRule(() => node) } : {}),
    }),
  );
  const listener = await listenTLS(server, {
    host: "127.0.0.1",
    port: o.port ?? 0,
    rootPem: rootM.certPem,
    ...managers.get(id)!,
  });
  addrs.set(id, `127.0.0.1:${listener.port}`);
  node = await RaftNode.start({
    id,
    storage,
    stateMachine: sm,
    transport,
    tickMs: 20,
    rand: new SeededRand(id * 7919),
    ...o.raft,
  });
  const m: Member = { id, port: listener.port, storage, sm, node, transport, server, listener, received };
  members.push(m);
  return m;
}

/** Everything at once, as a crash would: nothing is sent or answered from the moment this is called. */
async function stopMember(m: Member): Promise<void> {
  const stopping = [m.node.stop().catch(() => {}), m.transport.close()];
  m.server.forceShutdown();
  await Promise.all([...stopping, m.listener.close()]);
  await m.storage.close().catch(() => {});
}

async function kill(m: Member): Promise<void> {
  members = members.filter((x) => x !== m);
  await stopMember(m);
}

async function putViaLeader(k: string, v: string): Promise<number> {
  for (let attempt = 0; ; attempt++) {
    const l = members.find((m) => m.node.isLeader && !m.node.fatal);
    try {
      if (!l) throw new Error("no leader");
      return await l.node.propose(KVMachine.put(k, v));
    } catch (e) {
      if (attempt > 300) throw e;
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}

async function putMany(prefix: string, n: number, value: (i: number) => string, batch = 25): Promise<void> {
  for (let i = 0; i < n; i += batch) {
    const ps: Promise<number>[] = [];
    for (let j = i; j < Math.min(n, i + batch); j++) ps.push(putViaLeader(`${prefix}${j}`, value(j)));
    await Promise.all(ps);
  }
}

/** What the daemon does for MANAGER STATUS: every member probes every other one periodically. */
function startProbing(everyMs: number): void {
  const timer = setInterval(() => {
    for (const a of members) for (const b of members) if (a !== b) void a.transport.probe(b.id);
  }, everyMs);
  cleanups.push(() => clearInterval(timer));
}

// ---------------------------------------------------------------------------------------------------

describe("gRPC raft transport", () => {
  it("a 3-manager cluster elects a leader and commits 200 proposals over mutual TLS", async () => {
    for (const id of [1, 2, 3]) await startMember(id, { bootstrap: [1, 2, 3] });
    await waitFor("a leader", () => members.find((m) => m.node.isLeader));
    await putMany("k", 200, (i) => `v${i}`);
    await waitFor("every member applied all 200", () => members.every((m) => m.sm.data.get("k199") === "v199"));
    for (const m of members) {
      expect(m.sm.data.size).toBe(200);
      for (let i = 0; i < 200; i++) expect(m.sm.data.get(`k${i}`)).toBe(`v${i}`);
    }
    const followers = members.filter((m) => !m.node.isLeader);
    for (const f of followers) expect(f.received.get(MessageType.App) ?? 0).toBeGreaterThan(0);
  });

  it("brings a new member up from a 4 MB snapshot sent in chunks over the stream", async () => {
    const raft = { snapshotInterval: 20, keepTail: 5 };
    for (const id of [1, 2, 3]) await startMember(id, { bootstrap: [1, 2, 3], raft });
    const leader = await waitFor("a leader", () => members.find((m) => m.node.isLeader));
    const big = (i: number): string => `${i}:`.padEnd(20 * 1024, "x");
    await putMany("big", 200, big, 20);
    await waitFor(
      "a compacted log behind a >3 MiB snapshot",
      () => leader.storage.mem.firstIndex() > 1 && leader.storage.mem.snapshot().data.length > 3 << 20,
    );

    const fresh = await startMember(4, { raft });
    await leader.node.proposeConfChange({ type: ConfChangeType.AddLearner, nodeId: 4, context: EMPTY });
    await waitFor("node 4 has the data", () => fresh.sm.data.get("big199") === big(199), 15_000);
    for (let i = 0; i < 200; i += 37) expect(fresh.sm.data.get(`big${i}`)).toBe(big(i));
    expect(fresh.storage.mem.snapshot().metadata.index).toBeGreaterThan(0);
    // At least 4 chunks of at most 1 MiB each went through the gRPC stream.
    expect(fresh.received.get(MessageType.Snap) ?? 0).toBeGreaterThanOrEqual(4);
    await waitFor("node 4 promoted to voter", () => leader.node.status().confState.voters.includes(4), 10_000);
  });

  it("only managers of this cluster may call the Raft service", async () => {
    const sink = await startSink(2, rootM.certPem, managers.get(2)!, cleanups);
    const target = `127.0.0.1:${sink.port}`;
    const req: pb.RaftMessageRequest = {
      message: messageToPb(newMessage({ type: MessageType.Heartbeat, from: 1, to: 2, term: 1 })),
    };
    const stream = (creds: grpc.ChannelCredentials): Promise<grpc.ServiceError | null> => {
      const client = new pb.RaftClient(target, creds, CLIENT_CHANNEL_OPTIONS);
      cleanups.push(() => client.close());
      return new Promise((resolve) => {
        const call = client.streamRaftMessage((err) => resolve(err));
        call.write(req);
        call.end();
      });
    };
    const ping = (creds: grpc.ChannelCredentials): Promise<grpc.ServiceError | null> => {
      const client = new pb.RaftClient(target, creds, CLIENT_CHANNEL_OPTIONS);
      cleanups.push(() => client.close());
      return new Promise((resolve) => client.ping({ from: 1, to: 2 }, (err) => resolve(err)));
    };

    // A worker certificate: PERMISSION_DENIED, naming the role it needs.
    const asWorker = clientCredentials(rootM.certPem, worker.certPem, worker.keyPem);
    const w = await stream(asWorker);
    expect(w?.code).toBe(grpc.status.PERMISSION_DENIED);
    expect(w?.details).toContain("unauthorized peer role");
    expect(w?.details).toContain("requires role swarm-manager");
    expect((await ping(asWorker))?.code).toBe(grpc.status.PERMISSION_DENIED);

    // A manager certificate of another cluster (same root): PERMISSION_DENIED.
    const other = await stream(
      clientCredentials(rootM.certPem, otherClusterManager.certPem, otherClusterManager.keyPem),
    );
    expect(other?.code).toBe(grpc.status.PERMISSION_DENIED);
    expect(other?.details).toContain(OTHER_CLUSTER);

    // No client certificate at all: refused.
    const anon = await stream(clientCredentials(rootM.certPem));
    expect(anon?.code).toBe(grpc.status.UNAUTHENTICATED);
    expect(anon?.details).toContain("swarm-manager");
    expect(sink.delivered).toHaveLength(0);

    // A manager of this cluster gets through.
    expect(await stream(managerCreds(1))).toBeNull();
    expect(await ping(managerCreds(1))).toBeNull();
    expect(sink.delivered).toHaveLength(1);
    expect(sink.delivered[0]).toMatchObject({ type: MessageType.Heartbeat, from: 1, to: 2, term: 1 });

    // A transport that holds only a worker certificate: its stream is refused, Raft hears the peer is
    // unreachable (once per failure), and the peer never counts as reachable.
    const unreachable: NodeId[] = [];
    const t = new GrpcTransport({
      selfId: 1,
      resolve: () => target,
      credentials: () => asWorker,
      onUnreachable: (id) => unreachable.push(id),
    });
    cleanups.push(() => t.close());
    t.send([newMessage({ type: MessageType.Heartbeat, from: 1, to: 2, term: 1 })]);
    await waitFor("the refusal reported", () => unreachable.length > 0);
    expect(unreachable).toEqual([2]);
    expect(t.peerStats(2)).toMatchObject({ state: "backoff", failures: 1 });
    expect(await t.probe(2)).toBe(false);
    expect(t.reachable(2)).toBe(false);
    expect(sink.delivered).toHaveLength(1);
  });

  describe("only current members, each from its own node, with bounded terms (issue 9)", () => {
    /** One Raft message over a raw client stream, as `as` (a manager certificate of this cluster). */
    const sendAs = (as: NodeId, to: Member, m: Message | pb.Message): Promise<grpc.ServiceError | null> => {
      const client = new pb.RaftClient(`127.0.0.1:${to.port}`, managerCreds(as), CLIENT_CHANNEL_OPTIONS);
      cleanups.push(() => client.close());
      // A core Message is converted as the transport does; a pb.Message (Buffer context) goes as it is.
      const message = Buffer.isBuffer(m.context) ? (m as pb.Message) : messageToPb(m as Message);
      return new Promise((resolve) => {
        const call = client.streamRaftMessage((err) => resolve(err));
        call.write({ message });
        call.end();
      });
    };

    async function strictCluster(): Promise<{ leader: Member; term: number }> {
      for (const id of [1, 2, 3]) await startMember(id, { bootstrap: [1, 2, 3], strict: true });
      const leader = await waitFor("a leader", () => members.find((m) => m.node.isLeader));
      await putMany("k", 5, (i) => `${i}`);
      return { leader, term: leader.node.status().term };
    }

    it("a forged append from an unknown raft id, with a valid manager certificate, is refused; the leader keeps leading", async () => {
      const { leader, term } = await strictCluster();
      // Manager 4 holds a valid manager certificate of this cluster but is no member: it claims raft id 99,
      // at a higher term, to make the leader step down and follow it.
      const forged = newMessage({
        type: MessageType.App,
        from: 99,
        to: leader.id,
        term: term + 5,
        index: 0,
        logTerm: 0,
      });
      const err = await sendAs(4, leader, forged);
      expect(err?.code).toBe(grpc.status.PERMISSION_DENIED);
      expect(err?.details).toContain("63 is not a member of this raft group");
      expect(leader.received.get(MessageType.App) ?? 0).toBe(0);
      await new Promise((r) => setTimeout(r, 300));
      expect(leader.node.isLeader).toBe(true);
      expect(leader.node.status().term).toBe(term);
      await putViaLeader("after", "forgery");
    });

    it("a message claiming another member's raft id is refused", async () => {
      const { leader, term } = await strictCluster();
      const follower = members.find((m) => m !== leader)!;
      const other = members.find((m) => m !== leader && m !== follower)!;
      // A real member (its own certificate) speaking as another member; and a non-member doing the same.
      for (const as of [other.id, 4]) {
        const m = newMessage({ type: MessageType.Heartbeat, from: leader.id, to: follower.id, term: term + 1 });
        const err = await sendAs(as, follower, m);
        expect(err?.code).toBe(grpc.status.PERMISSION_DENIED);
        expect(err?.details).toContain(`may not send raft messages as member ${leader.id.toString(16)}`);
      }
      expect(follower.node.status().term).toBe(term);
      expect(leader.node.isLeader).toBe(true);
    });

    it("a proposal or read relayed by one member on behalf of another is taken, as a follower that was the leader a moment ago relays them", async () => {
      // Raft followers pass proposals and read requests on to their leader with the original member as the
      // sender. At 1,800 nodes a manager that had just lost the leadership relayed such a read; the new
      // leader refused it as impersonation and failed the whole stream, and the relaying manager, cut off
      // from its leader, started an election.
      const { leader } = await strictCluster();
      const [asker, relay] = members.filter((m) => m !== leader) as [Member, Member];
      const before = leader.node.status().commit;
      const prop = newMessage({
        type: MessageType.Prop,
        from: asker.id,
        to: leader.id,
        entries: [{ term: 0, index: 0, type: EntryType.Normal, data: new Uint8Array([1]) }],
      });
      const read = newMessage({
        type: MessageType.ReadIndex,
        from: asker.id,
        to: leader.id,
        context: new TextEncoder().encode("relayed read"),
      });
      expect(await sendAs(relay.id, leader, prop)).toBeNull();
      expect(await sendAs(relay.id, leader, read)).toBeNull();
      await waitFor("the relayed proposal committed", () => leader.node.status().commit > before);
      // The read's answer goes to the member that asked, not to the one that relayed it.
      await waitFor("the answer to the relayed read", () => (asker.received.get(MessageType.ReadIndexResp) ?? 0) > 0);
      expect(relay.received.get(MessageType.ReadIndexResp) ?? 0).toBe(0);
      // Anything else still has to come from the member itself (the test above).
      const beat = newMessage({ type: MessageType.Heartbeat, from: asker.id, to: leader.id, term: 1 });
      expect((await sendAs(relay.id, leader, beat))?.code).toBe(grpc.status.PERMISSION_DENIED);
      expect(leader.node.isLeader).toBe(true);
    });

    it("a term of 2^53-1 is refused at the boundary, a term far ahead is dropped by the core, and the node runs and restarts fine", async () => {
      const { leader, term } = await strictCluster();
      const victim = members.find((m) => m !== leader)!;
      const huge = newMessage({ type: MessageType.Heartbeat, from: leader.id, to: victim.id, term: 2 ** 53 - 1 });
      const err = await sendAs(leader.id, victim, huge);
      expect(err?.code).toBe(grpc.status.INVALID_ARGUMENT);
      expect(err?.details).toMatch(/term/);
      // Within the wire's bounds but 2^25 terms ahead of the node: the core drops it.
      const ahead = newMessage({ type: MessageType.Heartbeat, from: leader.id, to: victim.id, term: term + 2 ** 25 });
      expect(await sendAs(leader.id, victim, ahead)).toBeNull();
      await waitFor("delivered", () => (victim.received.get(MessageType.Heartbeat) ?? 0) > 0);
      await new Promise((r) => setTimeout(r, 200));
      expect(victim.node.fatal).toBeUndefined();
      expect(victim.node.status().term).toBe(term);
      await putViaLeader("still", "working");
      await waitFor("the victim applies", () => victim.sm.data.get("still") === "working");
      // It restarts from its data directory with a sane term and catches up.
      await kill(victim);
      const back = await startMember(victim.id, { port: victim.port, strict: true });
      expect(back.node.status().term).toBeLessThanOrEqual(term + 1);
      await putViaLeader("after", "restart");
      await waitFor("the restarted node applies", () => back.sm.data.get("after") === "restart");
    });

    it("malformed messages are refused with the field named (types, counts, sizes)", async () => {
      const { leader } = await strictCluster();
      const f = members.find((m) => m !== leader)!;
      const base = messageToPb(newMessage({ type: MessageType.Heartbeat, from: leader.id, to: f.id, term: 1 }));
      const cases: [pb.Message, RegExp][] = [
        [{ ...base, type: 1 as pb.MessageType }, /type: is a local message type/],
        [{ ...base, type: 77 as pb.MessageType }, /type/],
        [{ ...base, context: Buffer.alloc(4096) }, /context: must be at most 1024 bytes/],
        [{ ...base, from: 0 }, /from/],
        [{ ...base, snapshot: { offset: 0, total: 0, data: Buffer.alloc(0) } }, /snapshot/],
        [
          {
            ...base,
            type: pb.MessageType.MESSAGE_TYPE_SNAP,
            snapshot: {
              metadata: { index: 5, term: 1, confState: { voters: [1, 1], learners: [], removed: [] } },
              offset: 0,
              total: 1,
              data: Buffer.alloc(1),
            },
          },
          /listed twice/,
        ],
        [
          {
            ...base,
            type: pb.MessageType.MESSAGE_TYPE_SNAP,
            snapshot: {
              metadata: { index: 5, term: 1, confState: { voters: [1], learners: [], removed: [] } },
              offset: 10,
              total: 11,
              data: Buffer.alloc(5),
            },
          },
          /past the snapshot's total/,
        ],
      ];
      for (const [m, want] of cases) {
        const err = await sendAs(leader.id, f, m);
        expect(err?.code, String(want)).toBe(grpc.status.INVALID_ARGUMENT);
        expect(err?.details).toMatch(want);
      }
      expect(f.node.fatal).toBeUndefined();
      expect(leader.node.isLeader).toBe(true);
      await putViaLeader("after", "malformed");
      await waitFor("the follower applies", () => f.sm.data.get("after") === "malformed");
    });

    it("a member removed while it was down is told so when it comes back: it stops for good", async () => {
      let removedCalls = 0;
      for (const id of [1, 2, 3]) await startMember(id, { bootstrap: [1, 2, 3], strict: true });
      const leader = await waitFor("a leader", () => members.find((m) => m.node.isLeader));
      const victim = members.find((m) => m !== leader)!;
      await putMany("k", 3, (i) => `${i}`);
      await kill(victim);
      await leader.node.proposeConfChange({ type: ConfChangeType.RemoveNode, nodeId: victim.id, context: EMPTY });
      const back = await startMember(victim.id, {
        port: victim.port,
        strict: true,
        raft: { onRemoved: () => removedCalls++ },
      });
      expect(back.node.status().confState.voters).toContain(victim.id);
      await waitFor("the removed member learns it", () => removedCalls > 0, 10_000);
      expect(back.node.status().confState.removed).toContain(victim.id);
      const term = leader.node.status().term;
      await new Promise((r) => setTimeout(r, 500));
      expect(removedCalls).toBe(1);
      expect(leader.node.isLeader).toBe(true);
      expect(leader.node.status().term).toBe(term);
    });
  });

  it("a killed manager is unreachable within 3 s, the rest keep committing, and it catches up on return", async () => {
    for (const id of [1, 2, 3]) await startMember(id, { bootstrap: [1, 2, 3] });
    await waitFor("a leader", () => members.find((m) => m.node.isLeader));
    await putMany("a", 20, (i) => `${i}`);
    startProbing(250);
    await waitFor("every member sees every other as reachable", () =>
      members.every((a) => members.every((b) => a === b || a.transport.reachable(b.id))),
    );

    const victim = members.find((m) => m.node.isLeader)!;
    const survivors = members.filter((m) => m !== victim);
    const killedAt = Date.now();
    await kill(victim);
    await waitFor("the survivors see the victim unreachable", () =>
      survivors.every((s) => !s.transport.reachable(victim.id)),
    );
    const detectedMs = Date.now() - killedAt;
    expect(detectedMs).toBeLessThan(3000);
    // And it stays unreachable while it is down (probes fail, nothing arrives from it).
    await new Promise((r) => setTimeout(r, 500));
    for (const s of survivors) expect(s.transport.reachable(victim.id)).toBe(false);

    // The two survivors are a quorum: a new leader, and writes commit.
    await waitFor("a new leader", () => survivors.find((m) => m.node.isLeader));
    await putMany("b", 50, (i) => `${i}`);
    await waitFor("survivors applied", () => survivors.every((m) => m.sm.data.get("b49") === "49"));

    // Back on the same port from its data directory: it rejoins and catches up.
    const back = await startMember(victim.id, { port: victim.port });
    await waitFor("the victim catches up", () => back.sm.data.get("b49") === "49", 10_000);
    for (let i = 0; i < 20; i++) expect(back.sm.data.get(`a${i}`)).toBe(`${i}`);
    await waitFor("the victim is reachable again", () =>
      survivors.every((s) => s.transport.reachable(victim.id) && back.transport.reachable(s.id)),
    );
    await putViaLeader("c", "after-return");
    await waitFor("all three apply a new write", () => members.every((m) => m.sm.data.get("c") === "after-return"));
  });

  it("a peer that stops reading is detected by keepalive, with the queue bounded meanwhile", async () => {
    const sink = await startSink(2, rootM.certPem, managers.get(2)!, cleanups);
    const proxy = await startRelay(sink.port, cleanups);
    const unreachable: NodeId[] = [];
    const t = new GrpcTransport({
      selfId: 1,
      resolve: (id) => (id === 2 ? `127.0.0.1:${proxy.port}` : undefined),
      credentials: () => managerCreds(1),
      onUnreachable: (id) => unreachable.push(id),
      maxQueueMessages: 64,
      maxQueueBytes: 1 << 20,
    });
    cleanups.push(() => t.close());
    const hb = (i: number): Message => newMessage({ type: MessageType.Heartbeat, from: 1, to: 2, term: 1, index: i });

    // In order, none lost, while the peer keeps up.
    // (In bursts that fit the small queue: messages beyond its bound would be dropped by design.)
    for (let i = 1; i <= 500; i += 50) {
      for (let j = i; j < i + 50; j++) t.send([hb(j)]);
      await waitFor("a burst delivered", () => sink.delivered.length === i + 49);
    }
    expect(sink.delivered.map((m) => m.index)).toEqual(Array.from({ length: 500 }, (_, i) => i + 1));
    expect(await t.probe(2)).toBe(true);
    expect(t.reachable(2)).toBe(true);
    expect(unreachable).toEqual([]);

    // The peer stops reading (its TCP connection stays open): a leader keeps sending appends and
    // heartbeats every 10 ms, and probes as the daemon does.
    proxy.freeze();
    const frozenAt = Date.now();
    const entry = { term: 1, index: 1, type: EntryType.Normal, data: new Uint8Array(32 * 1024) };
    let maxQueued = 0;
    let maxBytes = 0;
    let i = 1000;
    const load = setInterval(() => {
      t.send([newMessage({ type: MessageType.App, from: 1, to: 2, term: 1, index: i++, entries: [entry] }), hb(i++)]);
      const s = t.peerStats(2)!;
      maxQueued = Math.max(maxQueued, s.queuedMessages);
      maxBytes = Math.max(maxBytes, s.queuedBytes);
      void t.probe(2, 500);
    }, 10);
    cleanups.push(() => clearInterval(load));

    await waitFor("reachable() false", () => !t.reachable(2), 3000);
    const unreachableMs = Date.now() - frozenAt;
    await waitFor("keepalive fails the stream", () => (t.peerStats(2)?.failures ?? 0) > 0, 3000);
    const detectedMs = Date.now() - frozenAt;
    expect(unreachableMs).toBeLessThan(3000);
    expect(detectedMs).toBeLessThan(3000);
    expect(unreachable.length).toBeGreaterThan(0);
    expect(unreachable.every((id) => id === 2)).toBe(true);
    expect(maxQueued).toBeLessThanOrEqual(64);
    expect(maxBytes).toBeLessThanOrEqual(1 << 20);
    expect(t.peerStats(2)!.dropped).toBeGreaterThan(0);

    // Still frozen: the reconnection's TLS handshake never completes; it gives up after the 2 s connect
    // timeout instead of hanging (gRPC's own would wait 20 s), and the queue stays bounded meanwhile.
    await waitFor("the reconnection attempt times out", () => (t.peerStats(2)?.failures ?? 0) >= 2, 3500);
    expect(maxQueued).toBeLessThanOrEqual(64);
    expect(t.reachable(2)).toBe(false);

    // The peer comes back: the transport reconnects after its backoff and delivery resumes.
    proxy.thaw();
    const before = sink.delivered.length;
    await waitFor("reachable again, delivering", () => t.reachable(2) && sink.delivered.length > before + 10, 8000);
    clearInterval(load);
    const after = sink.delivered.slice(before).map((m) => m.index);
    for (let k = 1; k < after.length; k++) expect(after[k]).toBeGreaterThan(after[k - 1]!);
  });
});
