// The one network-reference resolver (dockerd's rules), used by the control API, the managers' Attach and a
// worker's network inspect.
import { describe, expect, it, vi } from "vitest";
import { findNetwork, networkKeysFor, resolveNetworkRef } from "../../src/manager/networks.js";
import { initialKeyring } from "../../src/store/keyring.js";
import { type Command, encodeCommand, Store } from "../../src/store/store.js";
import { clusterCreate } from "./store-fixtures.js";

const at = new Date("2026-12-07T00:00:00Z");

interface Net {
  id: string;
  name: string;
}

const find = (nets: Net[], ref: string) =>
  resolveNetworkRef(
    nets,
    ref,
    (n) => n.id,
    (n) => n.name,
  );

describe("resolveNetworkRef", () => {
  const a: Net = { id: "abc123", name: "front" };
  const b: Net = { id: "abd456", name: "abc" };
  const c: Net = { id: "ffff00", name: "back" };

  it("takes an exact id before a name, and a name before an id prefix", () => {
    expect(find([a, b, c], "abc123")).toBe(a);
    // "abc" is b's name and a prefix of a's id: the name wins.
    expect(find([a, b, c], "abc")).toBe(b);
    expect(find([a, b, c], "back")).toBe(c);
    expect(find([a, b, c], "ff")).toBe(c);
  });

  it("refuses an id prefix that several networks share, saying how many", () => {
    expect(() => find([a, b, c], "ab")).toThrow("network ab is ambiguous (2 matches found based on ID prefix)");
  });

  it("refuses a name that several networks have", () => {
    const twin: Net = { id: "999999", name: "front" };
    expect(() => find([a, twin], "front")).toThrow("network front is ambiguous (2 matches found based on name)");
  });

  it("finds nothing for an unknown reference", () => {
    expect(find([a, b, c], "zzz")).toBeUndefined();
  });
});

/** A store holding a cluster, and `apply`, which commits a command to it (throwing if it is refused). */
function clusterStore(): { store: Store; apply: (c: Command) => void } {
  const store = new Store();
  let index = 0;
  const apply = (c: Command) => {
    const out = store.apply(encodeCommand(c, at), ++index);
    if (!out.ok) throw new Error(out.message);
  };
  apply(clusterCreate(at));
  return { store, apply };
}

describe("findNetwork (the store's networks)", () => {
  it("finds by id, name and id prefix among many, copying only the network found", () => {
    const { store, apply } = clusterStore();
    const ids: string[] = [];
    for (let i = 0; i < 200; i++) {
      const id = `n${String(i).padStart(4, "0")}`.padEnd(25, "x");
      ids.push(id);
      apply({
        op: "network.create",
        id,
        spec: {
          name: `net${i}`,
          driver: "overlay",
          internal: false,
          attachable: true,
          ingress: false,
          options: {},
          labels: { big: "x".repeat(1000) },
        },
      });
    }
    const copies = vi.spyOn(store, "networks");
    expect(findNetwork(store, ids[17]!)?.spec.name).toBe("net17");
    expect(findNetwork(store, "net42")?.id).toBe(ids[42]);
    expect(findNetwork(store, "n0199")?.id).toBe(ids[199]);
    expect(() => findNetwork(store, "n01")).toThrow("ambiguous (100 matches found based on ID prefix)");
    expect(findNetwork(store, "nope")).toBeUndefined();
    // What a lookup returns is a copy: changing it changes nothing in the store.
    findNetwork(store, "net1")!.spec.name = "renamed";
    expect(findNetwork(store, "net1")?.id).toBe(ids[1]);
    expect(copies).not.toHaveBeenCalled();
  });
});

describe("networkKeysFor (the keys an Attach answer carries)", () => {
  it("gives the keys only to a node with an endpoint on an encrypted network, copying no network or endpoint", () => {
    const { store, apply } = clusterStore();
    apply({ op: "keys.init", ring: initialKeyring(at) });
    const node = (i: number) => `node${i}`.padEnd(25, "0");
    const net = (name: string, options: Record<string, string>) => {
      const id = name.padEnd(25, "0");
      apply({
        op: "network.create",
        id,
        spec: { name, driver: "overlay", internal: false, attachable: true, ingress: false, options, labels: {} },
      });
      return id;
    };
    const plain = net("plain", {});
    const secret = net("secret", { encrypted: "" });
    let ep = 0;
    const attach = (networkId: string, nodeId: string) =>
      apply({
        op: "endpoint.create",
        id: (++ep).toString(16).padStart(64, "0"),
        networkId,
        nodeId,
        containerId: ep.toString(16).padStart(64, "a"),
        containerName: `c${ep}`,
        aliases: [],
        standalone: true,
      });
    attach(plain, node(1));
    attach(secret, node(2));
    attach(plain, node(3));
    attach(secret, node(3));
    const copies = [vi.spyOn(store, "networks"), vi.spyOn(store, "endpoints")];
    expect(networkKeysFor(store, node(1))).toBe("");
    expect(networkKeysFor(store, node(4))).toBe("");
    const keys = JSON.parse(networkKeysFor(store, node(2))) as { keys: unknown[]; primaryTag: number };
    expect(keys.keys).toHaveLength(3);
    expect(JSON.parse(networkKeysFor(store, node(3)))).toEqual(keys);
    for (const c of copies) expect(c).not.toHaveBeenCalled();
  });
});
