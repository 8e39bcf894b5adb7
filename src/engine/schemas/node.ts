// POST /nodes/{id}/update: Docker's swarm.NodeSpec, and the node spec shoal stores for it. Role and
// Availability are required (dockerd's conversion refuses "" as it refuses any unknown value) and are
// matched in any case, as dockerd matches them.

import { z } from "zod";
import { badRequest } from "../../api/errors.js";
import { MAX_NAME_LENGTH } from "../../api/limits.js";
import type { NodeRole, NodeSpec } from "../../api/objects.js";
import { labels, text } from "./common.js";
import { bodySchema } from "./decode.js";
import { type GoOut, goString, goStruct } from "./go.js";
import { filtersParam, lenientBool, parseUintError, uintParam } from "./query.js";

const NodeSpecType = goStruct("swarm.NodeSpec", {
  Name: text(MAX_NAME_LENGTH),
  Labels: labels(),
  Role: goString("swarm.NodeRole"),
  Availability: goString("swarm.NodeAvailability"),
});
export const NodeSpecBody = bodySchema(NodeSpecType);
export type NodeSpecRequest = NonNullable<GoOut<typeof NodeSpecType>>;

export function nodeSpecFromRequest(r: NodeSpecRequest): NodeSpec {
  const role = (r.Role ?? "").toLowerCase();
  if (role !== "worker" && role !== "manager") throw badRequest(`invalid Role: ${JSON.stringify(r.Role ?? "")}`);
  const availability = (r.Availability ?? "").toLowerCase();
  if (availability !== "active" && availability !== "pause" && availability !== "drain") {
    throw badRequest(`invalid Availability: ${JSON.stringify(r.Availability ?? "")}`);
  }
  return {
    ...(r.Name ? { Name: r.Name } : {}),
    Labels: { ...(r.Labels ?? {}) },
    Role: role as NodeRole,
    Availability: availability,
  };
}

// ------------------------------------------------------------------ query parameters

const NODE_FILTERS = ["id", "label", "node.label", "membership", "name", "role"] as const;

export const NodeListQuery = z.object({ filters: filtersParam(NODE_FILTERS) });
export const NodeUpdateQuery = z.object({
  version: uintParam((v) => `invalid node version '${v}': ${parseUintError(v)}`),
});
export const NodeRemoveQuery = z.object({ force: lenientBool() });
