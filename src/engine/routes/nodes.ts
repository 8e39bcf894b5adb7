// /nodes: list, inspect, update, remove.

import {
  type Ctx,
  jsonBody,
  type Route,
  type RouteDeps,
  route,
  SEG,
  sendEmpty,
  sendJSON,
  sendJSONBytes,
} from "../router.js";
import { NodeListQuery, NodeRemoveQuery, NodeSpecBody, NodeUpdateQuery, nodeSpecFromRequest } from "../schemas/node.js";
import { decodeQuery } from "../schemas/query.js";
import type { NodeListFilters } from "../types.js";

export function nodeRoutes(d: RouteDeps): Route[] {
  const b = d.backend;
  const list = async ({ res, query }: Ctx): Promise<void> => {
    const { filters } = decodeQuery(NodeListQuery, query);
    sendJSONBytes(res, 200, await b.nodeList(filters as NodeListFilters));
  };
  const update = async (ctx: Ctx): Promise<void> => {
    const spec = nodeSpecFromRequest(await jsonBody(d, ctx, NodeSpecBody, "node spec"));
    const { version } = decodeQuery(NodeUpdateQuery, ctx.query);
    await b.nodeUpdate(ctx.params[0]!, version, spec);
    sendEmpty(ctx.res);
  };
  const remove = async ({ res, query, params }: Ctx): Promise<void> => {
    await b.nodeRemove(params[0]!, decodeQuery(NodeRemoveQuery, query).force);
    sendEmpty(res);
  };
  return [
    route("GET", "/nodes", list),
    route("GET", `/nodes/${SEG}`, async ({ res, params }) => sendJSON(res, 200, await b.nodeInspect(params[0]!))),
    route("POST", `/nodes/${SEG}/update`, update),
    route("DELETE", `/nodes/${SEG}`, remove),
  ];
}
