// The replicated store as a state machine: the same entries give the same objects on every manager;
// allocation happens when an entry is applied, in log order; refused commands change nothing.

import { describe, expect, it } from "vitest";
import type { ClusterInfo } from "../../src/engine/types.js";
import { type Command, encodeCommand, type NetworkSpec, type Outcome, Store } from "../../src/store/store.js";

const at = new Date("2026-11-22T00:00:00Z");

function cluster(pool = ["10.0.0.0/8"], size = 24): Command {
  return {
    op: "cluster.create",
    info: {
      ID: "c1",
      Version: { Index: 0 },
      CreatedAt: "",
      UpdatedAt: "",
      Spec: {} as ClusterInfo["Spec"],
      TLSInfo: { TrustRoot: "", CertIssuerSubject: "", CertIssuerPublicKey: "" },
      RootRotationInProgress: false,
      DefaultAddrPool: pool,
      SubnetSize: size,
      DataPathPort: 4789,
    },
    secrets: { rootCACertPem: "", rootCAKeyPem: "", workerToken: "w", managerToken: "m" },
  };
}

function net(name: string, extra: Partial<NetworkSpec> = {}): NetworkSpec {
  return {
    name,
    driver: "overlay",
    internal: false,
    attachable: true,
    ingress: false,
    options: {},
    labels: {},
    ...extra,
  };
}

/** Apply commands in order to a fresh store; returns the store and each outcome. */
function run(cmds: Command[]): { store: Store; outcomes: Outcome[] } {
  const store = new Store();
  const outcomes = cmds.map((c, i) => store.apply(encodeCommand(c, at), i + 1));
  return { store, outcomes };
}

function ep(
  id: string,
  networkId: string,
  name: string,
  extra: Partial<Extract<Command, { op: "endpoint.create" }>> = {},
): Command {
  return {
    op: "endpoint.create",
    id,
    networkId,
    nodeId: "n1",
    containerId: `c-${id}`,
    containerName: name,
    aliases: [],
    standalone: true,
    ...extra,
  };
}

describe("store: networks and endpoints", () => {
  it("allocates ingress first (10.0.0.0/24, VNI 4096), then /24s and VNIs from 4097, gateway at the first host", () => {
    const { store, outcomes } = run([
      cluster(),
      { op: "network.create", id: "ing", spec: net("ingress", { ingress: true, attachable: false }) },
      { op: "network.create", id: "a", spec: net("a") },
      { op: "network.create", id: "b", spec: net("b") },
    ]);
    expect(outcomes.every((o) => o.ok)).toBe(true);
    expect(store.network("ing")!.alloc).toMatchObject({ subnet: "10.0.0.0/24", gateway: "10.0.0.1", vni: 4096 });
    expect(store.network("a")!.alloc).toMatchObject({ subnet: "10.0.1.0/24", gateway: "10.0.1.1", vni: 4097 });
    expect(store.network("b")!.alloc).toMatchObject({ subnet: "10.0.2.0/24", vni: 4098 });
  });

  it("uses the cluster's address pool and subnet size", () => {
    const { store } = run([cluster(["172.30.0.0/16"], 26), { op: "network.create", id: "a", spec: net("a") }]);
    expect(store.network("a")!.alloc.subnet).toBe("172.30.0.0/26");
  });

  it("refuses a used name, an overlapping subnet and removing a network in use, changing nothing", () => {
    const { store, outcomes } = run([
      cluster(),
      { op: "network.create", id: "a", spec: net("a", { subnet: "10.9.0.0/16" }) },
      { op: "network.create", id: "a2", spec: net("a") },
      { op: "network.create", id: "c", spec: net("c", { subnet: "10.9.3.0/24" }) },
      ep("e1", "a", "web"),
      { op: "network.remove", id: "a" },
    ]);
    expect(outcomes[2]).toEqual({ ok: false, status: 409, message: "network with name a already exists" });
    expect(outcomes[3]).toMatchObject({
      ok: false,
      status: 403,
      message: "Pool overlaps with other one on this address space",
    });
    expect(outcomes[5]).toMatchObject({ ok: false, status: 403 });
    expect((outcomes[5] as { message: string }).message).toMatch(/has active endpoints/);
    expect(store.networks().map((n) => n.id)).toEqual(["a"]);
    expect(store.endpoints().map((e) => e.id)).toEqual(["e1"]);
  });

  it("hands endpoint addresses out serially: a freed address is not reused at once; --ip is honoured", () => {
    const { store, outcomes } = run([
      cluster(),
      { op: "network.create", id: "a", spec: net("a", { subnet: "10.5.0.0/29" }) },
      ep("e1", "a", "c1"),
      ep("e2", "a", "c2"),
      { op: "endpoint.remove", id: "e1" },
      ep("e3", "a", "c3"),
      ep("e4", "a", "c4", { ip: "10.5.0.2" }),
      ep("e5", "a", "c5", { ip: "10.5.0.3" }),
    ]);
    expect(store.endpoint("e2")).toMatchObject({ ip: "10.5.0.3", mac: "02:42:0a:05:00:03" });
    expect(store.endpoint("e3")!.ip).toBe("10.5.0.4");
    expect(store.endpoint("e4")!.ip).toBe("10.5.0.2");
    expect(outcomes[7]).toMatchObject({ ok: false, status: 403, message: "Address already in use" });
  });

  it("refuses a standalone container on a network that is not attachable, and a full network", () => {
    const { store, outcomes } = run([
      cluster(),
      { op: "network.create", id: "s", spec: net("svc", { attachable: false }) },
      ep("e1", "s", "c1"),
      { op: "network.create", id: "t", spec: net("tiny", { subnet: "10.6.0.0/30" }) },
      ep("e2", "t", "c2"),
      ep("e3", "t", "c3"),
    ]);
    expect(outcomes[2]).toMatchObject({ ok: false, status: 403 });
    expect((outcomes[2] as { message: string }).message).toMatch(/not manually attachable/);
    expect(outcomes[4]!.ok).toBe(true);
    expect(outcomes[5]).toMatchObject({
      ok: false,
      message: "no available IPv4 addresses on this network's address pools: tiny (t)",
    });
    expect(store.endpoints().map((e) => e.id)).toEqual(["e2"]);
  });

  it("is deterministic: two replicas, and a replica restored from a snapshot, agree on every allocation", () => {
    const cmds: Command[] = [cluster()];
    for (let i = 0; i < 5; i++) cmds.push({ op: "network.create", id: `n${i}`, spec: net(`n${i}`) });
    for (let i = 0; i < 20; i++) cmds.push(ep(`e${i}`, `n${i % 5}`, `c${i}`));
    for (let i = 0; i < 20; i += 3) cmds.push({ op: "endpoint.remove", id: `e${i}` });
    const a = run(cmds).store;
    const b = run(cmds).store;
    expect(a.snapshot()).toEqual(b.snapshot());
    // A third replica restores a snapshot taken half-way and applies the rest.
    const half = Math.floor(cmds.length / 2);
    const first = run(cmds.slice(0, half)).store;
    const c = new Store();
    c.restore(first.snapshot(), half);
    for (const [i, cmd] of cmds.slice(half).entries()) c.apply(encodeCommand(cmd, at), half + i + 1);
    const more: Command = ep("late", "n1", "late");
    for (const s of [a, c]) s.apply(encodeCommand(more, at), cmds.length + 1);
    expect(c.endpoint("late")).toEqual(a.endpoint("late"));
    expect(c.networks()).toEqual(a.networks());
  });
});
