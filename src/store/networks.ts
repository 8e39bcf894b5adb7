// The networks table: overlay networks with their allocation (subnet, gateway, VNI), made when the entry is
// applied so every manager allocates the same. Names are unique; a network with endpoints cannot go.
// What the networks hold (names, the ingress, subnets, VXLAN ids) is indexed beside the table, so that a
// create does not read every network (at 10,000 networks that took ~17 ms per create, and a manager that
// joined through a snapshot spent seconds applying the entries after it).

import type { NetworkAlloc, NetworkRecord } from "../api/objects.js";
import { nameConflict, networkInUse } from "./allocator/errors.js";
import {
  allocateNetworkAmong,
  INGRESS_VNI,
  normalizePoolConfig,
  parseVxlanIdList,
  TakenBlocks,
} from "./allocator/ipam.js";
import type { Command } from "./commands.js";
import { type ApplyContext, clone, fail, failWith, type Outcome, ok, type State } from "./state.js";

type NetworkCommand = Extract<Command, { op: "network.create" | "network.remove" }>;

export function applyNetwork(s: State, c: NetworkCommand, ctx: ApplyContext): Outcome {
  const ix = indexOf(s.networks);
  if (c.op === "network.remove") {
    const n = s.networks.get(c.id);
    if (!n) return fail(404, `network ${c.id} not found`);
    for (const e of s.endpoints.values()) if (e.networkId === c.id) return failWith(networkInUse(n.spec.name, n.id));
    s.networks.delete(c.id);
    ix.remove(n);
    ctx.emit({ kind: "network", action: "remove", network: clone(n) });
    return ok(ctx.index);
  }
  if (s.networks.has(c.id)) return fail(409, `network ${c.id} already exists`);
  // Checked here, in log order, so two concurrent creates cannot both pass. A name taken and an ingress
  // already there: the error is the one of the first such network in the table, as a scan finds it.
  const nameTaken = ix.names.has(c.spec.name);
  const ingressTaken = c.spec.ingress && ix.ingress > 0;
  if (nameTaken && ingressTaken) {
    for (const n of s.networks.values()) {
      if (n.spec.name === c.spec.name) return failWith(nameConflict(c.spec.name));
      if (n.spec.ingress) break;
    }
  }
  if (ingressTaken) return fail(403, "an ingress network already exists in the swarm");
  if (nameTaken) return failWith(nameConflict(c.spec.name));
  let alloc: NetworkAlloc;
  try {
    alloc = allocate(s, ix, c.spec);
  } catch (e) {
    return failWith(e);
  }
  const rec: NetworkRecord = { id: c.id, spec: clone(c.spec), alloc, createdAt: ctx.at, version: ctx.index };
  s.networks.set(c.id, rec);
  ix.add(rec);
  ctx.emit({ kind: "network", action: "create", network: clone(rec) });
  return ok(ctx.index);
}

function allocate(s: State, ix: NetworkIndex, spec: NetworkRecord["spec"]): NetworkAlloc {
  const pool = normalizePoolConfig({
    pools: s.cluster?.info.DefaultAddrPool ?? [],
    subnetSize: s.cluster?.info.SubnetSize ?? 0,
  });
  const vniOpt = spec.options["com.docker.network.driver.overlay.vxlanid_list"];
  const requestedVni = spec.ingress ? INGRESS_VNI : vniOpt ? parseVxlanIdList(vniOpt)[0] : undefined;
  return allocateNetworkAmong(ix, pool, {
    ...(spec.subnet ? { subnet: spec.subnet } : {}),
    ...(spec.gateway ? { gateway: spec.gateway } : {}),
    ...(requestedVni !== undefined ? { vni: requestedVni } : {}),
  });
}

/** How many networks hold each name, ingress and VXLAN id, and their subnets: the table's content, indexed. */
class NetworkIndex {
  readonly names = new Map<string, number>();
  ingress = 0;
  readonly subnets = new TakenBlocks();
  readonly vnis = new Map<number, number>();

  constructor(table: Map<string, NetworkRecord>) {
    for (const n of table.values()) this.add(n);
  }

  add(n: NetworkRecord): void {
    bump(this.names, n.spec.name, 1);
    if (n.spec.ingress) this.ingress++;
    this.subnets.add(n.alloc.subnet);
    bump(this.vnis, n.alloc.vni, 1);
  }

  remove(n: NetworkRecord): void {
    bump(this.names, n.spec.name, -1);
    if (n.spec.ingress) this.ingress--;
    this.subnets.remove(n.alloc.subnet);
    bump(this.vnis, n.alloc.vni, -1);
  }
}

function bump<K>(m: Map<K, number>, k: K, by: number): void {
  const v = (m.get(k) ?? 0) + by;
  if (v > 0) m.set(k, v);
  else m.delete(k);
}

/**
 * The index of a network table, made at its first use. Every change to a table goes through applyNetwork,
 * which keeps its index up to date; a table read from a snapshot is a new table, with a new index.
 */
const indexes = new WeakMap<Map<string, NetworkRecord>, NetworkIndex>();

function indexOf(table: Map<string, NetworkRecord>): NetworkIndex {
  let ix = indexes.get(table);
  if (!ix) {
    ix = new NetworkIndex(table);
    indexes.set(table, ix);
  }
  return ix;
}
