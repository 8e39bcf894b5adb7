// The networks table: overlay networks with their allocation (subnet, gateway, VNI), made when the entry is
// applied so every manager allocates the same. Names are unique; a network with endpoints cannot go.

import type { NetworkAlloc, NetworkRecord } from "../api/objects.js";
import { nameConflict, networkInUse } from "./allocator/errors.js";
import { allocateNetwork, INGRESS_VNI, normalizePoolConfig, parseVxlanIdList } from "./allocator/ipam.js";
import type { Command } from "./commands.js";
import { type ApplyContext, clone, fail, failWith, type Outcome, ok, type State } from "./state.js";

type NetworkCommand = Extract<Command, { op: "network.create" | "network.remove" }>;

export function applyNetwork(s: State, c: NetworkCommand, ctx: ApplyContext): Outcome {
  if (c.op === "network.remove") {
    const n = s.networks.get(c.id);
    if (!n) return fail(404, `network ${c.id} not found`);
    for (const e of s.endpoints.values()) if (e.networkId === c.id) return failWith(networkInUse(n.spec.name, n.id));
    s.networks.delete(c.id);
    ctx.emit({ kind: "network", action: "remove", network: clone(n) });
    return ok(ctx.index);
  }
  if (s.networks.has(c.id)) return fail(409, `network ${c.id} already exists`);
  for (const n of s.networks.values()) {
    if (n.spec.name === c.spec.name) return failWith(nameConflict(c.spec.name));
    // Checked here, in log order, so two concurrent creates cannot both pass.
    if (c.spec.ingress && n.spec.ingress) return fail(403, "an ingress network already exists in the swarm");
  }
  let alloc: NetworkAlloc;
  try {
    alloc = allocate(s, c.spec);
  } catch (e) {
    return failWith(e);
  }
  const rec: NetworkRecord = { id: c.id, spec: clone(c.spec), alloc, createdAt: ctx.at, version: ctx.index };
  s.networks.set(c.id, rec);
  ctx.emit({ kind: "network", action: "create", network: clone(rec) });
  return ok(ctx.index);
}

function allocate(s: State, spec: NetworkRecord["spec"]): NetworkAlloc {
  const pool = normalizePoolConfig({
    pools: s.cluster?.info.DefaultAddrPool ?? [],
    subnetSize: s.cluster?.info.SubnetSize ?? 0,
  });
  const vniOpt = spec.options["com.docker.network.driver.overlay.vxlanid_list"];
  const requestedVni = spec.ingress ? INGRESS_VNI : vniOpt ? parseVxlanIdList(vniOpt)[0] : undefined;
  return allocateNetwork(
    {
      subnets: [...s.networks.values()].map((n) => n.alloc.subnet),
      vnis: [...s.networks.values()].map((n) => n.alloc.vni),
    },
    pool,
    {
      ...(spec.subnet ? { subnet: spec.subnet } : {}),
      ...(spec.gateway ? { gateway: spec.gateway } : {}),
      ...(requestedVni !== undefined ? { vni: requestedVni } : {}),
    },
  );
}
