// The replicated store as a state machine: the same entries give the same objects on every manager;
// allocation happens when an entry is applied, in log order; refused commands change nothing.

import { describe, expect, it, vi } from "vitest";
import { DEFAULT_SWARM_SPEC, type NetworkRecord } from "../../src/api/objects.js";
import { SeededRand } from "../../src/raft/rand.js";
import { cidrOverlaps } from "../../src/store/allocator/ipam.js";
import { CommandSchema } from "../../src/store/commands.js";
import {
  type Command,
  DecodedEntry,
  encodeCommand,
  type NetworkSpec,
  type Outcome,
  Store,
} from "../../src/store/store.js";

const at = new Date("2026-11-22T00:00:00Z");

/** A node or network id (25 base36 characters) made from a short name. */
const nid = (s: string): string =>
  s
    .toLowerCase()
    .replace(/[^0-9a-z]/g, "")
    .padEnd(25, "0")
    .slice(0, 25);
/** An endpoint or container id (64 hex digits) made from a short name. */
const eid = (s: string): string => Buffer.from(s).toString("hex").padEnd(64, "0").slice(0, 64);

function cluster(pool = ["10.0.0.0/8"], size = 24): Command {
  return {
    op: "cluster.create",
    info: {
      ID: nid("c1"),
      Version: { Index: 0 },
      CreatedAt: at.toISOString(),
      UpdatedAt: at.toISOString(),
      Spec: DEFAULT_SWARM_SPEC,
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
    id: eid(id),
    networkId: nid(networkId),
    nodeId: nid("n1"),
    containerId: eid(`c-${id}`),
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
      { op: "network.create", id: nid("ing"), spec: net("ingress", { ingress: true, attachable: false }) },
      { op: "network.create", id: nid("a"), spec: net("a") },
      { op: "network.create", id: nid("b"), spec: net("b") },
    ]);
    expect(outcomes.every((o) => o.ok)).toBe(true);
    expect(store.network(nid("ing"))!.alloc).toMatchObject({ subnet: "10.0.0.0/24", gateway: "10.0.0.1", vni: 4096 });
    expect(store.network(nid("a"))!.alloc).toMatchObject({ subnet: "10.0.1.0/24", gateway: "10.0.1.1", vni: 4097 });
    expect(store.network(nid("b"))!.alloc).toMatchObject({ subnet: "10.0.2.0/24", vni: 4098 });
  });

  it("refuses a second ingress network in log order, so two concurrent creates cannot both pass", () => {
    const { store, outcomes } = run([
      cluster(),
      { op: "network.create", id: nid("i1"), spec: net("ingress", { ingress: true, attachable: false }) },
      { op: "network.create", id: nid("i2"), spec: net("ingress2", { ingress: true, attachable: false }) },
    ]);
    expect(outcomes[2]).toEqual({ ok: false, status: 403, message: "an ingress network already exists in the swarm" });
    expect(store.networks().map((n) => n.spec.name)).toEqual(["ingress"]);
  });

  it("uses the cluster's address pool and subnet size", () => {
    const { store } = run([cluster(["172.30.0.0/16"], 26), { op: "network.create", id: nid("a"), spec: net("a") }]);
    expect(store.network(nid("a"))!.alloc.subnet).toBe("172.30.0.0/26");
  });

  it("refuses a used name, an overlapping subnet and removing a network in use, changing nothing", () => {
    const { store, outcomes } = run([
      cluster(),
      { op: "network.create", id: nid("a"), spec: net("a", { subnet: "10.9.0.0/16" }) },
      { op: "network.create", id: nid("a2"), spec: net("a") },
      { op: "network.create", id: nid("c"), spec: net("c", { subnet: "10.9.3.0/24" }) },
      ep("e1", "a", "web"),
      { op: "network.remove", id: nid("a") },
    ]);
    expect(outcomes[2]).toEqual({ ok: false, status: 409, message: "network with name a already exists" });
    expect(outcomes[3]).toMatchObject({
      ok: false,
      status: 403,
      message: "Pool overlaps with other one on this address space",
    });
    expect(outcomes[5]).toMatchObject({ ok: false, status: 403 });
    expect((outcomes[5] as { message: string }).message).toMatch(/has active endpoints/);
    expect(store.networks().map((n) => n.id)).toEqual([nid("a")]);
    expect(store.endpoints().map((e) => e.id)).toEqual([eid("e1")]);
  });

  it("hands endpoint addresses out serially: a freed address is not reused at once; --ip is honoured", () => {
    const { store, outcomes } = run([
      cluster(),
      { op: "network.create", id: nid("a"), spec: net("a", { subnet: "10.5.0.0/29" }) },
      ep("e1", "a", "c1"),
      ep("e2", "a", "c2"),
      { op: "endpoint.remove", id: eid("e1") },
      ep("e3", "a", "c3"),
      ep("e4", "a", "c4", { ip: "10.5.0.2" }),
      ep("e5", "a", "c5", { ip: "10.5.0.3" }),
    ]);
    expect(store.endpoint(eid("e2"))).toMatchObject({ ip: "10.5.0.3", mac: "02:42:0a:05:00:03" });
    expect(store.endpoint(eid("e3"))!.ip).toBe("10.5.0.4");
    expect(store.endpoint(eid("e4"))!.ip).toBe("10.5.0.2");
    expect(outcomes[7]).toMatchObject({ ok: false, status: 403, message: "Address already in use" });
  });

  it("refuses a standalone container on a network that is not attachable, and a full network", () => {
    const { store, outcomes } = run([
      cluster(),
      { op: "network.create", id: nid("s"), spec: net("svc", { attachable: false }) },
      ep("e1", "s", "c1"),
      { op: "network.create", id: nid("t"), spec: net("tiny", { subnet: "10.6.0.0/30" }) },
      ep("e2", "t", "c2"),
      ep("e3", "t", "c3"),
    ]);
    expect(outcomes[2]).toMatchObject({ ok: false, status: 403 });
    expect((outcomes[2] as { message: string }).message).toMatch(/not manually attachable/);
    expect(outcomes[4]!.ok).toBe(true);
    expect(outcomes[5]).toMatchObject({
      ok: false,
      message: `no available IPv4 addresses on this network's address pools: tiny (${nid("t")})`,
    });
    expect(store.endpoints().map((e) => e.id)).toEqual([eid("e2")]);
  });

  it("renames a running container's endpoints all or none: its own node only, a name free on every network", () => {
    const rename = (ids: string[], name: string, node = "n1"): Command => ({
      op: "endpoint.rename",
      ids: ids.map(eid),
      nodeId: nid(node),
      containerName: name,
    });
    const cmds: Command[] = [
      cluster(),
      { op: "network.create", id: nid("a"), spec: net("a") },
      { op: "network.create", id: nid("b"), spec: net("b") },
      ep("w1", "a", "web"),
      ep("w2", "b", "web"),
      ep("x1", "b", "www"),
      ep("y1", "a", "other", { nodeId: nid("n2") }),
      // 7: taken on b by another container: neither endpoint renamed.
      rename(["w1", "w2"], "www"),
      // 8: another node's endpoint among them: refused.
      rename(["w1", "y1"], "site"),
      // 9: an endpoint that is gone.
      rename(["w1", "gone"], "site"),
      // 10: done, on both networks.
      rename(["w1", "w2"], "site"),
    ];
    const refused = run(cmds.slice(0, 10)).store;
    const namesOf = (st: Store) =>
      Object.fromEntries(st.endpoints().map((e) => [`${e.containerName}@${e.networkId.slice(0, 1)}`, e.version]));
    // The refused renames changed nothing.
    expect(namesOf(refused)).toEqual({ "web@a": 4, "web@b": 5, "www@b": 6, "other@a": 7 });
    const { store, outcomes } = run(cmds);
    expect(outcomes[7]).toEqual({
      ok: false,
      status: 403,
      message: "endpoint with name www already exists in network b",
    });
    expect(outcomes[8]).toEqual({
      ok: false,
      status: 403,
      message: "Permission denied: the endpoint belongs to another node",
    });
    expect(outcomes[9]).toMatchObject({ ok: false, status: 404 });
    expect(outcomes[10]!.ok).toBe(true);
    const names = Object.fromEntries(store.endpoints().map((e) => [e.containerName, e.networkId]));
    expect(names).toEqual({ site: nid("b"), www: nid("b"), other: nid("a") });
    expect(store.endpoint(eid("w1"))!.containerName).toBe("site");
    expect(store.endpoint(eid("w1"))!.version).toBe(11);
    // The address stays the container's.
    expect(store.endpoint(eid("w1"))!.ip).toBe("10.0.0.2");
  });

  it("is deterministic: two replicas, and a replica restored from a snapshot, agree on every allocation", () => {
    const cmds: Command[] = [cluster()];
    for (let i = 0; i < 5; i++) cmds.push({ op: "network.create", id: nid(`n${i}`), spec: net(`n${i}`) });
    for (let i = 0; i < 20; i++) cmds.push(ep(`e${i}`, `n${i % 5}`, `c${i}`));
    for (let i = 0; i < 20; i += 3) cmds.push({ op: "endpoint.remove", id: eid(`e${i}`) });
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
    expect(c.endpoint(eid("late"))).toEqual(a.endpoint(eid("late")));
    expect(c.networks()).toEqual(a.networks());
  });
});

describe("store: the network table's index", () => {
  // A create reads an index of the table (names, the ingress, subnets, VXLAN ids) kept as networks come and
  // go, not every network. Whatever the history, it must decide exactly as a scan of the table does.
  it("allocates and refuses as a scan of every network would, through creates, removes and a restore", () => {
    const rand = new SeededRand(7);
    const pick = <T>(xs: T[]): T => xs[rand.intn(xs.length)]!;
    const store = new Store();
    let index = 1;
    store.apply(encodeCommand(cluster(["10.0.0.0/22", "192.168.0.0/24"], 26), at), index++);
    let checked = 0;
    for (let step = 0; step < 600; step++) {
      if (step === 300) {
        // A replica that starts from a snapshot carries on with a table it did not build.
        const restored = new Store();
        restored.restore(store.snapshot(), index - 1);
        expect(restored.networks()).toEqual(store.networks());
      }
      const table = store.networks();
      if (table.length > 0 && rand.intn(3) === 0) {
        const victim = pick(table);
        expect(store.apply(encodeCommand({ op: "network.remove", id: victim.id }, at), index++).ok).toBe(true);
        continue;
      }
      const spec = net(`n${rand.intn(40)}`, {
        ingress: rand.intn(20) === 0,
        ...(rand.intn(6) === 0 ? { subnet: `10.0.${rand.intn(4)}.${64 * rand.intn(4)}/26` } : {}),
        ...(rand.intn(6) === 0
          ? { options: { "com.docker.network.driver.overlay.vxlanid_list": `${4097 + rand.intn(8)}` } }
          : {}),
      });
      const id = nid(`x${step}`);
      const want = scanDecision(table, spec);
      const got = store.apply(encodeCommand({ op: "network.create", id, spec }, at), index++);
      if (typeof want === "string") {
        expect(got.ok, `step ${step}: ${want}`).toBe(false);
        expect(JSON.stringify(got)).toContain(want);
      } else {
        expect(got.ok, `step ${step}: ${JSON.stringify(got)}`).toBe(true);
        expect(store.network(id)?.alloc).toMatchObject(want);
        checked++;
      }
    }
    expect(checked).toBeGreaterThan(100);
  });
});

/**
 * What creating `spec` on `table` (pool 10.0.0.0/22 then 192.168.0.0/24 in /26s) gives, found by reading
 * every network: the error's words, or the subnet and VXLAN id.
 */
function scanDecision(table: NetworkRecord[], spec: NetworkSpec): string | { subnet: string; vni: number } {
  for (const n of table) {
    if (n.spec.name === spec.name) return "already exists";
    if (spec.ingress && n.spec.ingress) return "an ingress network already exists";
  }
  const overlaps = (c: string) => table.some((n) => cidrOverlaps(c, n.alloc.subnet));
  let subnet: string | undefined;
  if (spec.subnet) {
    if (overlaps(spec.subnet)) return "Pool overlaps";
    subnet = spec.subnet;
  } else {
    for (const [base, count] of [
      ["10.0", 16],
      ["192.168", 4],
    ] as const) {
      for (let i = 0; i < count && !subnet; i++) {
        const c = `${base}.${Math.floor(i / 4)}.${64 * (i % 4)}/26`;
        if (!overlaps(c)) subnet = c;
      }
    }
    if (!subnet) return "could not find an available";
  }
  const vnis = new Set(table.map((n) => n.alloc.vni));
  // The ingress network takes VXLAN id 4096; another may ask for one.
  const asked = spec.ingress ? "4096" : spec.options["com.docker.network.driver.overlay.vxlanid_list"];
  if (asked !== undefined) {
    if (vnis.has(Number(asked))) return "already allocated";
    return { subnet, vni: Number(asked) };
  }
  let vni = 4097;
  while (vnis.has(vni)) vni++;
  return { subnet, vni };
}

describe("store: the apply is total", () => {
  const raw = (o: unknown): Uint8Array => new TextEncoder().encode(JSON.stringify(o));

  it("refuses a partial swarm spec (the entry that once killed every leader), changing nothing", () => {
    const { store } = run([cluster()]);
    const before = store.snapshot();
    const out = store.apply(raw({ op: "cluster.update", version: 1, spec: {}, at: at.toISOString() }), 2);
    expect(out).toMatchObject({ ok: false, status: 400 });
    expect((out as { message: string }).message).toMatch(/index 2: spec\.Name/);
    expect(new TextDecoder().decode(store.snapshot())).toBe(
      new TextDecoder().decode(before).replace('"appliedIndex":1', '"appliedIndex":2'),
    );
    // The next good write goes through.
    const ok = store.apply(encodeCommand({ op: "cluster.update", version: 1, spec: DEFAULT_SWARM_SPEC }, at), 3);
    expect(ok).toEqual({ ok: true, version: 3 });
  });

  it("an entry its proposer decoded is applied without parsing it again, and the same as elsewhere", () => {
    const proposer = run([cluster()]).store;
    const other = run([cluster()]).store;
    const a = encodeCommand({ op: "network.create", id: nid("a"), spec: net("a") }, at);
    const b = encodeCommand({ op: "network.create", id: nid("b"), spec: net("b") }, at);
    const checked = DecodedEntry.of(a);
    expect(checked.result.ok).toBe(true);
    const parse = vi.spyOn(CommandSchema, "safeParse");
    try {
      // The Raft log hands the apply a copy of the bytes (inside its frame): the decoding is still of them.
      expect(proposer.apply(new Uint8Array(a), 2, checked)).toEqual({ ok: true, version: 2 });
      expect(parse).not.toHaveBeenCalled();
      // A decoding of other bytes is not used for these.
      expect(proposer.apply(b, 3, checked)).toEqual({ ok: true, version: 3 });
      expect(parse).toHaveBeenCalledTimes(1);
    } finally {
      parse.mockRestore();
    }
    other.apply(a, 2);
    other.apply(b, 3);
    expect(new TextDecoder().decode(proposer.snapshot())).toBe(new TextDecoder().decode(other.snapshot()));
  });

  it("refuses garbage, unknown commands, wrong types and oversized values alike on every replica", () => {
    const entries: Uint8Array[] = [
      new TextEncoder().encode("not json"),
      raw(null),
      raw([1, 2]),
      raw({ op: "node.explode", at: at.toISOString() }),
      raw({ op: "network.create", id: nid("x"), spec: { ...net("x"), labels: { a: 1 } }, at: at.toISOString() }),
      raw({ op: "network.create", id: nid("y"), spec: net("y".repeat(10_000)), at: at.toISOString() }),
      raw({ op: "network.create", id: nid("z"), spec: net("z"), at: "yesterday" }),
      raw({ op: "network.create", id: nid("w"), spec: net("w"), junk: 1, at: at.toISOString() }),
      raw({ op: "node.update", id: nid("n"), version: 1, spec: { Labels: "[".repeat(100_000) }, at: at.toISOString() }),
    ];
    const replicas = [run([cluster()]).store, run([cluster()]).store];
    for (const r of replicas) {
      const outs = entries.map((e, i) => r.apply(e, i + 2));
      expect(outs.every((o) => !o.ok && o.status === 400)).toBe(true);
      expect(r.networks()).toEqual([]);
    }
    expect(replicas[0]!.snapshot()).toEqual(replicas[1]!.snapshot());
  });

  it("keeps applying when a watcher throws: the others still see the event", () => {
    const store = new Store();
    const seen: string[] = [];
    store.events.on("event", () => {
      throw new TypeError("Cannot read properties of undefined (reading 'HeartbeatPeriod')");
    });
    store.events.on("event", (e: { kind: string }) => seen.push(e.kind));
    expect(store.apply(encodeCommand(cluster(), at), 1)).toEqual({ ok: true, version: 1 });
    expect(seen).toEqual(["cluster"]);
  });

  it("repairs a snapshot holding a label a former version stored as a number, the same on every replica", () => {
    const { store } = run([cluster(), { op: "network.create", id: nid("a"), spec: net("a") }]);
    const snap = JSON.parse(new TextDecoder().decode(store.snapshot())) as {
      networks: { spec: { labels: Record<string, unknown> } }[];
    };
    snap.networks[0]!.spec.labels = { good: "yes", bad: 5 };
    const data = new TextEncoder().encode(JSON.stringify(snap));
    const a = new Store();
    const b = new Store();
    a.restore(data, 2);
    b.restore(data, 2);
    expect(a.network(nid("a"))!.spec.labels).toEqual({ good: "yes" });
    expect(a.snapshot()).toEqual(b.snapshot());
  });
});
