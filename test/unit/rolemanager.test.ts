// The role manager makes each node's role follow its desired role, looking only at what changed: a
// promotion or demotion asked for is carried out, one that could not be finished is tried again without
// any further change, and nodes that did not change are not walked again.

import pino from "pino";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { newNodeObject } from "../../src/manager/ca-server.js";
import { RoleManager } from "../../src/manager/rolemanager.js";
import { type Command, encodeCommand, Store } from "../../src/store/store.js";
import { clusterCreate } from "./store-fixtures.js";

const at = new Date("2026-12-07T00:00:00Z");
const id = (n: number): string => `n${String(n).padStart(3, "0")}`.padEnd(25, "0");

function setup(opts: { transfer?: () => boolean } = {}) {
  const store = new Store();
  const writes: Command[] = [];
  const apply = (c: Command): number => {
    const out = store.apply(encodeCommand(c, at), store.appliedIndex + 1);
    if (!out.ok) throw new Error(out.message);
    return out.version;
  };
  apply(clusterCreate(at));
  const transfers: number[] = [];
  const rm = new RoleManager({
    store,
    log: pino({ level: "silent" }),
    raftId: 1,
    isLeader: true,
    write: async (c) => {
      writes.push(c);
      return apply(c);
    },
    removeMember: async () => undefined,
    transferLeadershipAway: () => {
      transfers.push(Date.now());
      return opts.transfer?.() ?? true;
    },
  });
  const addNode = (n: number, role: "worker" | "manager") =>
    apply({ op: "node.create", node: newNodeObject(id(n), role, "active", `h${n}`, "127.0.0.1"), role });
  const setDesired = (n: number, role: "worker" | "manager") =>
    apply({
      op: "node.update",
      id: id(n),
      version: store.node(id(n))!.node.Version.Index,
      spec: { Labels: {}, Role: role, Availability: "active" },
    });
  return { store, writes, rm, transfers, apply, addNode, setDesired };
}

describe("role manager", () => {
  beforeEach(() => vi.useFakeTimers());
  afterEach(() => vi.useRealTimers());

  it("promotes a node whose desired role became manager, looking at that node only, not at the 49 that did not change", async () => {
    const f = setup();
    for (let n = 1; n <= 50; n++) f.addNode(n, "worker");
    f.rm.start();
    await vi.advanceTimersByTimeAsync(1000);
    expect(f.writes).toEqual([]);
    // From now on only the changed node is looked at, not all of them (the cost rule).
    const walks = vi.spyOn(f.store, "nodeViews");
    f.setDesired(17, "manager");
    await vi.advanceTimersByTimeAsync(1000);
    expect(f.writes).toEqual([{ op: "node.role", id: id(17), role: "manager" }]);
    expect(walks).not.toHaveBeenCalled();
    expect(f.store.roleOf(id(17))).toBe("manager");
    // And back.
    f.setDesired(17, "worker");
    await vi.advanceTimersByTimeAsync(1000);
    expect(f.writes.at(-1)).toEqual({ op: "node.role", id: id(17), role: "worker" });
    f.rm.stop();
  });

  it("a demotion of the leader whose hand-over failed is tried again with no further change", async () => {
    let ok = false;
    const f = setup({ transfer: () => ok });
    f.addNode(1, "manager");
    f.apply({ op: "member.add", member: { raftId: 1, nodeId: id(1), addr: "127.0.0.1:2377" } });
    f.rm.start();
    await vi.advanceTimersByTimeAsync(1000);
    expect(f.transfers).toEqual([]);
    f.setDesired(1, "worker");
    await vi.advanceTimersByTimeAsync(1000);
    const tried = f.transfers.length;
    expect(tried).toBeGreaterThan(0);
    // No voter could take over; nothing in the store changes, yet it keeps trying until one can.
    await vi.advanceTimersByTimeAsync(1000);
    expect(f.transfers.length).toBeGreaterThan(tried);
    ok = true;
    f.rm.stop();
  });
});
