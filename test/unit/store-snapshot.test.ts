// The store's snapshots of a big state: taken at one applied index whatever is applied while its bytes are
// put together, read back in slices with the event loop turning in between, and either format read.

import { describe, expect, it } from "vitest";
import { type Command, encodeCommand, type NetworkSpec, Store } from "../../src/store/store.js";
import { clusterCreate } from "./store-fixtures.js";

const at = new Date("2026-11-22T00:00:00Z");
const nid = (s: string): string =>
  s
    .toLowerCase()
    .replace(/[^0-9a-z]/g, "")
    .padEnd(25, "0")
    .slice(0, 25);
const eid = (s: string): string => Buffer.from(s).toString("hex").padEnd(64, "0").slice(0, 64);

const cluster = clusterCreate(at, nid("c1"));

function network(i: number, labelBytes = 0): Command {
  const labels: Record<string, string> = {};
  for (let k = 0; k * 1000 < labelBytes; k++) labels[`l${k}`] = `${i}-${k}-`.repeat(200).slice(0, 1000);
  const spec: NetworkSpec = {
    name: `net${i}`,
    driver: "overlay",
    internal: false,
    attachable: true,
    ingress: false,
    options: {},
    labels,
  };
  return { op: "network.create", id: nid(`n${i}z`), spec };
}

function endpoint(i: number, net: number): Command {
  return {
    op: "endpoint.create",
    id: eid(`e${i}`),
    networkId: nid(`n${net}z`),
    nodeId: nid("node1"),
    containerId: eid(`c${i}`),
    containerName: `c${i}`,
    aliases: [],
    standalone: true,
  };
}

class Log {
  readonly store = new Store();
  index = 0;
  apply(c: Command): void {
    const out = this.store.apply(encodeCommand(c, at), ++this.index);
    expect(out.ok, JSON.stringify(out)).toBe(true);
  }
}

/** The state of a store, in the format that is one JSON object (to compare two stores). */
const stateOf = (s: Store): unknown => JSON.parse(new TextDecoder().decode(s.snapshot()));

describe("store snapshots of a big state", () => {
  it("holds the state of the moment it was taken, whatever is applied while its bytes are put together", async () => {
    const log = new Log();
    log.apply(cluster);
    for (let i = 0; i < 20; i++) log.apply(network(i, 2000));
    for (let i = 0; i < 10; i++) log.apply(endpoint(i, i % 3));
    // A first snapshot: the records' JSON is kept for the next one.
    await log.store.snapshotInSlices();

    const then = stateOf(log.store);
    const taking = log.store.snapshotInSlices();
    // Meanwhile: an endpoint on network 0 (which changes that network's allocation in place), a new
    // network, and an endpoint removed.
    log.apply(endpoint(100, 0));
    log.apply(network(50, 2000));
    log.apply({ op: "endpoint.remove", id: eid("e1") });
    const bytes = await taking;

    const restored = new Store();
    await restored.restoreInSlices(bytes, 31);
    expect(stateOf(restored)).toEqual(then);

    // The next snapshot has the changes (the network changed in place too), read either way.
    const now = await log.store.snapshotInSlices();
    const again = new Store();
    await again.restoreInSlices(now, log.index);
    expect(stateOf(again)).toEqual(stateOf(log.store));
    const sync = new Store();
    sync.restore(now, log.index);
    expect(stateOf(sync)).toEqual(stateOf(log.store));
    // And a snapshot taken right after a restore (from the JSON made during it) is the same state.
    const third = new Store();
    await third.restoreInSlices(await again.snapshotInSlices(), log.index);
    expect(stateOf(third)).toEqual(stateOf(log.store));
  });

  it("writes and reads a snapshot of many megabytes in slices, the event loop turning in between", async () => {
    const log = new Log();
    log.apply(cluster);
    for (let i = 0; i < 1500; i++) log.apply(network(i, 4000));
    let turns = 0;
    let counting = true;
    const count = (): void => {
      turns++;
      if (counting) setImmediate(count);
    };
    setImmediate(count);
    const bytes = await log.store.snapshotInSlices();
    expect(bytes.length).toBeGreaterThan(6 << 20);
    const turnsWriting = turns;
    const restored = new Store();
    await restored.restoreInSlices(bytes, log.index);
    const turnsReading = turns - turnsWriting;
    counting = false;
    expect(turnsWriting).toBeGreaterThan(2);
    expect(turnsReading).toBeGreaterThan(2);
    expect(restored.counts().networks).toBe(1500);
    expect(stateOf(restored)).toEqual(stateOf(log.store));
  });

  it("reads a snapshot in the one-object format written before (force-new-cluster, older managers)", async () => {
    const log = new Log();
    log.apply(cluster);
    for (let i = 0; i < 5; i++) log.apply(network(i, 100));
    log.apply(endpoint(1, 2));
    const restored = new Store();
    await restored.restoreInSlices(log.store.snapshot(), log.index);
    expect(stateOf(restored)).toEqual(stateOf(log.store));
  });

  it("refuses a snapshot cut short, and changes nothing", async () => {
    const log = new Log();
    log.apply(cluster);
    for (let i = 0; i < 5; i++) log.apply(network(i, 100));
    const bytes = await log.store.snapshotInSlices();
    const cut = bytes.subarray(0, bytes.lastIndexOf(0x0a, bytes.length - 2) + 1);
    const other = new Log();
    other.apply(cluster);
    const before = stateOf(other.store);
    await expect(other.store.restoreInSlices(cut, 9)).rejects.toThrow(/ends before network 5 of 5/);
    expect(stateOf(other.store)).toEqual(before);
  });
});
