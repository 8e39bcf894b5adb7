// The nodes table: every node of the swarm, its desired spec, what it reports about itself, its status as
// the dispatcher sees it, and the role it actually has. Removing a node removes its endpoints too.

import type { NodeRecord } from "../api/objects.js";
import type { Command } from "./commands.js";
import { releaseEndpoint } from "./endpoints.js";
import { type ApplyContext, clone, fail, type Outcome, ok, type State } from "./state.js";

type NodeCommand = Extract<
  Command,
  { op: "node.create" | "node.update" | "node.status" | "node.describe" | "node.role" | "node.remove" }
>;

/** A batch of status changes: each node that still exists gets its own; the others are skipped. */
export function applyStatusBatch(
  s: State,
  c: Extract<Command, { op: "node.statusBatch" }>,
  ctx: ApplyContext,
): Outcome {
  for (const u of c.updates) {
    const rec = s.nodes.get(u.id);
    if (!rec) continue;
    rec.node.Status = {
      State: u.state,
      Addr: u.addr ?? rec.node.Status.Addr,
      ...(u.message !== undefined ? { Message: u.message } : {}),
    };
    if (u.description) rec.node.Description = clone(u.description);
    rec.node.Version = { Index: ctx.index };
    rec.node.UpdatedAt = ctx.at;
    ctx.emit({ kind: "node", action: "update", node: clone(rec) });
  }
  return ok(ctx.index);
}

export function applyNode(s: State, c: NodeCommand, ctx: ApplyContext): Outcome {
  if (c.op === "node.create") return createNode(s, c, ctx);
  const rec = s.nodes.get(c.id);
  if (!rec) return fail(404, `node ${c.id} not found`);
  switch (c.op) {
    case "node.update":
      if (rec.node.Version.Index !== c.version) return fail(500, "update out of sequence");
      rec.node.Spec = clone(c.spec);
      break;
    case "node.status":
      rec.node.Status = {
        State: c.state,
        Addr: c.addr ?? rec.node.Status.Addr,
        ...(c.message !== undefined ? { Message: c.message } : {}),
      };
      break;
    case "node.describe":
      rec.node.Description = clone(c.description);
      break;
    case "node.role":
      rec.role = c.role;
      break;
    case "node.remove":
      return removeNode(s, rec, ctx);
  }
  rec.node.Version = { Index: ctx.index };
  rec.node.UpdatedAt = ctx.at;
  ctx.emit({ kind: "node", action: "update", node: clone(rec) });
  return ok(ctx.index);
}

function createNode(s: State, c: Extract<Command, { op: "node.create" }>, ctx: ApplyContext): Outcome {
  if (s.nodes.has(c.node.ID)) return fail(409, `node ${c.node.ID} already exists`);
  if (s.removed.has(c.node.ID)) return fail(409, `node ${c.node.ID} was removed from the swarm`);
  const node = clone(c.node);
  delete node.ManagerStatus;
  node.Version = { Index: ctx.index };
  node.CreatedAt = ctx.at;
  node.UpdatedAt = ctx.at;
  const rec: NodeRecord = { node, role: c.role };
  s.nodes.set(node.ID, rec);
  ctx.emit({ kind: "node", action: "create", node: clone(rec) });
  return ok(ctx.index);
}

function removeNode(s: State, rec: NodeRecord, ctx: ApplyContext): Outcome {
  const id = rec.node.ID;
  s.nodes.delete(id);
  s.removed.add(id);
  // Its containers' endpoints go with it: the other hosts drop them from their data planes.
  for (const ep of [...s.endpoints.values()]) if (ep.nodeId === id) releaseEndpoint(s, ep, ctx);
  ctx.emit({ kind: "node", action: "remove", node: clone(rec) });
  return ok(ctx.index);
}
