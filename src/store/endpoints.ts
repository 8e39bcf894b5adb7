// The endpoints table: a container's attachment to a network, wherever it runs. Its address is allocated
// from the network's subnet when the entry is applied, in log order.

import type { EndpointRecord } from "../api/objects.js";
import { notAttachable } from "./allocator/errors.js";
import { allocateIp, macFromIp, releaseIp } from "./allocator/ipam.js";
import type { Command } from "./commands.js";
import { type ApplyContext, clone, fail, failWith, type Outcome, ok, type State } from "./state.js";

type EndpointCommand = Extract<Command, { op: "endpoint.create" | "endpoint.remove" | "endpoint.rename" }>;

export function applyEndpoint(s: State, c: EndpointCommand, ctx: ApplyContext): Outcome {
  if (c.op === "endpoint.remove") {
    const ep = s.endpoints.get(c.id);
    if (ep) releaseEndpoint(s, ep, ctx);
    return ok(ctx.index);
  }
  if (c.op === "endpoint.rename") return renameEndpoints(s, c, ctx);
  const n = s.networks.get(c.networkId);
  if (!n) return fail(404, `network ${c.networkId} not found`);
  if (s.endpoints.has(c.id)) return fail(409, `endpoint ${c.id} already exists`);
  if (c.standalone && !n.spec.attachable) return failWith(notAttachable(n.spec.name));
  for (const e of s.endpoints.values()) {
    if (e.networkId === c.networkId && e.containerName === c.containerName) {
      return fail(403, `endpoint with name ${c.containerName} already exists in network ${n.spec.name}`);
    }
  }
  let ip: string;
  try {
    ip = allocateIp(n.alloc, c.id, c.ip, { name: n.spec.name, id: n.id });
  } catch (e) {
    return failWith(e);
  }
  n.version = ctx.index;
  const ep: EndpointRecord = {
    id: c.id,
    networkId: c.networkId,
    nodeId: c.nodeId,
    containerId: c.containerId,
    containerName: c.containerName,
    aliases: [...c.aliases],
    ip,
    mac: macFromIp(ip),
    version: ctx.index,
  };
  s.endpoints.set(c.id, ep);
  ctx.emit({ kind: "endpoint", action: "create", endpoint: clone(ep) });
  return ok(ctx.index);
}

/** Remove an endpoint and give its address back to its network. */
export function releaseEndpoint(s: State, ep: EndpointRecord, ctx: ApplyContext): void {
  s.endpoints.delete(ep.id);
  const n = s.networks.get(ep.networkId);
  if (n) {
    releaseIp(n.alloc, ep.ip, ep.id);
    n.version = ctx.index;
  }
  ctx.emit({ kind: "endpoint", action: "remove", endpoint: clone(ep) });
}

/**
 * A running container renamed: every one of its endpoints takes the new name, or none does (an endpoint gone
 * or another node's, or the name taken on one of the networks, refuses the whole command).
 */
function renameEndpoints(s: State, c: Extract<EndpointCommand, { op: "endpoint.rename" }>, ctx: ApplyContext): Outcome {
  const eps: EndpointRecord[] = [];
  for (const id of new Set(c.ids)) {
    const ep = s.endpoints.get(id);
    if (!ep) return fail(404, `endpoint ${id} not found`);
    if (ep.nodeId !== c.nodeId) return fail(403, "Permission denied: the endpoint belongs to another node");
    eps.push(ep);
  }
  for (const ep of eps) {
    for (const e of s.endpoints.values()) {
      if (e.id !== ep.id && e.networkId === ep.networkId && e.containerName === c.containerName) {
        const name = s.networks.get(ep.networkId)?.spec.name ?? ep.networkId;
        return fail(403, `endpoint with name ${c.containerName} already exists in network ${name}`);
      }
    }
  }
  for (const ep of eps) {
    if (ep.containerName === c.containerName) continue;
    ep.containerName = c.containerName;
    ep.version = ctx.index;
    const n = s.networks.get(ep.networkId);
    if (n) n.version = ctx.index;
    ctx.emit({ kind: "endpoint", action: "update", endpoint: clone(ep) });
  }
  return ok(ctx.index);
}
