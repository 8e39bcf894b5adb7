// Reads on hot paths: the store's frozen views (no copy per read, never stale after a change), the
// batched node status entry, and the peer identity read once per certificate, straight from its DER.

import { beforeAll, describe, expect, test, vi } from "vitest";
import { generateNodeKeyAndCSR, parseNodeCert, signNodeCSR } from "../../src/ca/certs.js";
import { createRootCA, RootCA } from "../../src/ca/rootca.js";
import { identityOfDer, peerRole } from "../../src/ca/tls.js";
import { newNodeObject } from "../../src/manager/ca-server.js";
import { Control, type ControlCluster } from "../../src/manager/control.js";
import { type Command, encodeCommand, Store } from "../../src/store/store.js";

const at = new Date("2026-12-01T00:00:00Z");
const id = (i: number) => `n${String(i).padStart(24, "0")}`;

function storeWith(n: number): Store {
  const store = new Store();
  for (let i = 0; i < n; i++) {
    const c: Command = {
      op: "node.create",
      node: newNodeObject(id(i), "worker", "active", `h${i}`, ""),
      role: "worker",
    };
    store.apply(encodeCommand(c, at), store.appliedIndex + 1);
  }
  return store;
}

const apply = (store: Store, c: Command) => store.apply(encodeCommand(c, at), store.appliedIndex + 1);

describe("store views", () => {
  test("a view is frozen, shared until its node changes, and shows the change right after", () => {
    const store = storeWith(3);
    const v = store.nodeView(id(1))!;
    expect(Object.isFrozen(v)).toBe(true);
    expect(Object.isFrozen(v.node.Status)).toBe(true);
    expect(() => {
      (v.node.Status as { State: string }).State = "ready";
    }).toThrow(TypeError);
    expect(store.nodeView(id(1))).toBe(v);
    const list = store.nodeViews();
    expect(store.nodeViews()).toBe(list);
    apply(store, { op: "node.status", id: id(1), state: "ready", addr: "192.0.2.1" });
    expect(store.nodeView(id(1))!.node.Status).toEqual({ State: "ready", Addr: "192.0.2.1" });
    expect(store.nodeViews()).not.toBe(list);
    expect(store.nodeViews().find((r) => r.node.ID === id(1))!.node.Status.State).toBe("ready");
    // The untouched nodes keep their (shared) views; the old view itself never changed.
    expect(store.nodeView(id(0))).toBe(list[0]);
    expect(v.node.Status.State).toBe("unknown");
    expect(store.roleOf(id(2))).toBe("worker");
    expect(store.roleOf("nosuchnode0000000000000000")).toBeUndefined();
  });

  test("node inspect resolves an id, a hostname or a prefix over the views: only the node found is copied", async () => {
    const store = storeWith(500);
    const m = { store, nodeId: id(0), readBarrier: async () => undefined } as unknown as ControlCluster;
    const control = new Control(m);
    const copies = vi.spyOn(store, "nodes");
    expect((await control.resolve(id(42))).node.Description.Hostname).toBe("h42");
    expect((await control.resolve("h7")).node.ID).toBe(id(7));
    expect((await control.resolve("self")).node.ID).toBe(id(0));
    // A prefix: ids n...420 to n...429 share this one.
    await expect(control.resolve(id(42).slice(0, 24))).rejects.toThrow("ambiguous (10 matches found)");
    await expect(control.resolve("nosuch")).rejects.toThrow("nosuch");
    // What it returns is the caller's own copy.
    const r = await control.resolve("h3");
    (r.node.Status as { State: string }).State = "down";
    expect(store.nodeView(id(3))!.node.Status.State).toBe("unknown");
    expect(copies).not.toHaveBeenCalled();
  });

  test("node ls: the JSON of every node, each worker serialised once per version of it; managers live", async () => {
    const store = storeWith(300);
    apply(store, {
      op: "node.create",
      node: newNodeObject(id(300), "manager", "active", "mgr", ""),
      role: "manager",
    });
    const m = {
      store,
      nodeId: id(300),
      readBarrier: async () => undefined,
      leaderRaftId: () => "1",
      reachable: () => true,
    } as unknown as ControlCluster;
    const control = new Control(m);
    const stringify = vi.spyOn(JSON, "stringify");
    const first = JSON.parse(String(await control.nodeList({})));
    expect(first).toHaveLength(301);
    expect(first[5].Description.Hostname).toBe("h5");
    expect(first[5].ManagerStatus).toBeUndefined();
    expect(first[300].ManagerStatus).toEqual({ Reachability: "unreachable", Addr: "" });
    expect(stringify).toHaveBeenCalledTimes(301);
    // Nothing changed: only the manager (its status is Raft's, live) is serialised again.
    stringify.mockClear();
    expect(JSON.parse(String(await control.nodeList({})))).toEqual(first);
    expect(stringify).toHaveBeenCalledTimes(1);
    // One node changes: it shows at once, and it alone is serialised again.
    apply(store, { op: "node.status", id: id(5), state: "ready", addr: "192.0.2.5" });
    stringify.mockClear();
    const second = JSON.parse(String(await control.nodeList({})));
    expect(second[5].Status).toEqual({ State: "ready", Addr: "192.0.2.5" });
    expect(second[6]).toEqual(first[6]);
    expect(stringify).toHaveBeenCalledTimes(2);
    stringify.mockRestore();
    // Filters still apply, over the same texts.
    const named = JSON.parse(String(await control.nodeList({ name: ["h7"] })));
    expect(named.map((n: { ID: string }) => n.ID)).toEqual([id(7)]);
    expect(JSON.parse(String(await control.nodeList({ role: ["manager"] }))).map((n: { ID: string }) => n.ID)).toEqual([
      id(300),
    ]);
  });

  test("node ls: the whole body is kept between changes, and a node change or a leader move shows at once", async () => {
    const store = storeWith(200);
    for (const [i, raftId] of [
      [200, 1],
      [201, 2],
    ] as const) {
      apply(store, {
        op: "node.create",
        node: newNodeObject(id(i), "manager", "active", `mgr${i}`, ""),
        role: "manager",
      });
      apply(store, { op: "member.add", member: { raftId, nodeId: id(i), addr: `192.0.2.${i - 199}:2377` } });
    }
    let leader = 1;
    let reachable = true;
    const m = {
      store,
      nodeId: id(200),
      readBarrier: async () => undefined,
      leaderRaftId: () => leader,
      reachable: (r: number) => r === 1 || reachable,
    } as unknown as ControlCluster;
    const control = new Control(m);
    const statusOf = async (i: number) =>
      JSON.parse(String(await control.nodeList({}))).find((n: { ID: string }) => n.ID === id(i)).ManagerStatus;

    const first = await control.nodeList({});
    expect(JSON.parse(String(first))).toHaveLength(202);
    // Nothing changed: the very same bytes again (the list is not joined, nor encoded, anew).
    const joins = vi.spyOn(Array.prototype, "join");
    expect(await control.nodeList({})).toBe(first);
    expect(joins.mock.contexts.filter((a) => Array.isArray(a) && a.length >= 200)).toEqual([]);
    joins.mockRestore();
    expect(await statusOf(200)).toEqual({ Leader: true, Reachability: "reachable", Addr: "192.0.2.1:2377" });
    // Live Raft state changes nothing in the store, and still shows on the next call.
    leader = 2;
    expect(await statusOf(200)).toEqual({ Reachability: "reachable", Addr: "192.0.2.1:2377" });
    expect(await statusOf(201)).toEqual({ Leader: true, Reachability: "reachable", Addr: "192.0.2.2:2377" });
    leader = 1;
    reachable = false;
    expect(await statusOf(201)).toEqual({ Reachability: "unreachable", Addr: "192.0.2.2:2377" });
    // A worker changes: its new state shows at once, and the bytes are made anew once.
    const before = await control.nodeList({});
    apply(store, { op: "node.status", id: id(7), state: "down", message: "heartbeat failure" });
    const after = await control.nodeList({});
    expect(after).not.toBe(before);
    expect(JSON.parse(String(after))[7].Status).toEqual({ State: "down", Addr: "", Message: "heartbeat failure" });
    expect(await control.nodeList({})).toBe(after);
    // A filtered list is its own, and does not replace the kept one.
    expect(JSON.parse(String(await control.nodeList({ role: ["manager"] })))).toHaveLength(2);
    expect(await control.nodeList({})).toBe(after);
    // A restore (a snapshot installed) drops every view: the list is made from the restored state.
    store.restore(store.snapshot(), store.appliedIndex);
    const restored = await control.nodeList({});
    expect(restored).not.toBe(after);
    expect(JSON.parse(String(restored))).toEqual(JSON.parse(String(after)));
  });

  test("the cluster view follows cluster updates; a restore drops every view", () => {
    const store = storeWith(1);
    const before = store.snapshot();
    apply(store, { op: "node.status", id: id(0), state: "down" });
    expect(store.nodeView(id(0))!.node.Status.State).toBe("down");
    store.restore(before, 1);
    expect(store.nodeView(id(0))!.node.Status.State).toBe("unknown");
  });

  test("node.statusBatch: one entry changes many nodes, skips the ones that are gone, and tells watchers each", () => {
    const store = storeWith(3);
    const seen: string[] = [];
    store.events.on("event", (e) => e.kind === "node" && seen.push(`${e.node.node.ID}:${e.node.node.Status.State}`));
    const out = apply(store, {
      op: "node.statusBatch",
      updates: [
        { id: id(0), state: "ready", addr: "192.0.2.10" },
        { id: "gone00000000000000000000000".slice(0, 25), state: "ready" },
        { id: id(2), state: "down", message: "heartbeat failure" },
      ],
    });
    expect(out.ok).toBe(true);
    expect(seen).toEqual([`${id(0)}:ready`, `${id(2)}:down`]);
    expect(store.nodeView(id(2))!.node.Status).toEqual({ State: "down", Addr: "", Message: "heartbeat failure" });
    expect(store.nodeView(id(1))!.node.Status.State).toBe("unknown");
  });

  test("node.statusBatch is refused as a whole when one update is malformed", () => {
    const store = storeWith(1);
    const out = apply(store, {
      op: "node.statusBatch",
      updates: [{ id: id(0), state: "sleepy" }],
    } as unknown as Command);
    expect(out.ok).toBe(false);
    expect(store.nodeView(id(0))!.node.Status.State).toBe("unknown");
  });
});

describe("peer identity", () => {
  let der: Buffer;
  const CLUSTER = "c0000000000000000000000001";

  beforeAll(async () => {
    const m = await createRootCA();
    const ca = await RootCA.fromPem(m.certPem, m.keyPem);
    const { csrPem } = await generateNodeKeyAndCSR(id(7));
    const pem = await signNodeCSR(ca, csrPem, { nodeId: id(7), role: "manager", clusterId: CLUSTER });
    der = Buffer.from(pem.replace(/-----[A-Z ]+-----|\s/g, ""), "base64");
  });

  test("the identity read from the DER is the one the ASN.1 parser reads", () => {
    const ref = parseNodeCert(der);
    expect(identityOfDer(der)).toEqual({ nodeId: ref.nodeId, role: ref.role, clusterId: ref.clusterId });
    expect(identityOfDer(Buffer.from("not a certificate"))).toBeNull();
  });

  test("a connection's certificate is read once: later calls on it get the identity without a parse", () => {
    const cert = { raw: der };
    const call = { getAuthContext: () => ({ sslPeerCertificate: cert }) };
    const first = peerRole(call);
    expect(first).toEqual({ nodeId: id(7), role: "manager", clusterId: CLUSTER });
    // Were the bytes read again, this would now be null.
    cert.raw = Buffer.from("garbage");
    expect(peerRole(call)).toEqual(first);
    expect(peerRole({ getAuthContext: () => ({}) })).toBeNull();
  });
});

describe("the CA key is imported once", () => {
  test("the same root and key give the same imported CA; another key another one", async () => {
    const a = await createRootCA();
    const b = await createRootCA();
    const first = await RootCA.fromPemCached(a.certPem, a.keyPem);
    expect(await RootCA.fromPemCached(a.certPem, a.keyPem)).toBe(first);
    const other = await RootCA.fromPemCached(b.certPem, b.keyPem);
    expect(other).not.toBe(first);
    await expect(RootCA.fromPemCached(a.certPem, b.keyPem)).rejects.toThrow();
  });
});
