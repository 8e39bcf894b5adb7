// Swarm's other objects: services, tasks, secrets, configs. shoal runs no services, so on a manager there
// are none of them: lists are empty (`docker node ps` lists a node's tasks), an id is not found, and
// creating one is refused saying why.

import { z } from "zod";
import { ApiError, notManager, workerNode } from "../errors.js";
import { discardBody, type Handler, type Route, type RouteDeps, route, SEG, sendJSON } from "../router.js";
import { decodeQuery, filtersParam } from "../schemas/query.js";

/** Swarm objects shoal has none of: the path, the word dockerd's errors use, and the filters dockerd accepts. */
const SWARM_OBJECTS: [string, string, readonly string[]][] = [
  ["services", "service", ["id", "label", "mode", "name", "runtime"]],
  ["tasks", "task", ["_up-to-date", "desired-state", "id", "label", "name", "node", "runtime", "service"]],
  ["secrets", "secret", ["id", "label", "name", "names"]],
  ["configs", "config", ["id", "label", "name", "names"]],
];

export function noServiceRoutes(d: RouteDeps): Route[] {
  const out: Route[] = [];
  for (const [plural, kind, filters] of SWARM_OBJECTS) {
    const list: Handler = async ({ req, res, query }) => {
      await requireManager(d);
      decodeQuery(z.object({ filters: filtersParam(filters) }), query);
      await discardBody(req, d);
      sendJSON(res, 200, []);
    };
    const missing: Handler = async ({ req, params }) => {
      await requireManager(d);
      await discardBody(req, d);
      throw new ApiError(404, `${kind} ${params[0]} not found`);
    };
    const create: Handler = async ({ req }) => {
      await requireManager(d);
      await discardBody(req, d);
      throw new ApiError(
        501,
        `shoal runs no ${plural}: it manages nodes and overlay networks, and containers started with docker run`,
      );
    };
    out.push(
      route("GET", `/${plural}`, list),
      route("POST", `/${plural}/create`, create),
      route("GET", `/${plural}/${SEG}`, missing),
      route("POST", `/${plural}/${SEG}/update`, missing),
      route("DELETE", `/${plural}/${SEG}`, missing),
    );
    if (plural === "services" || plural === "tasks") out.push(route("GET", `/${plural}/${SEG}/logs`, missing));
  }
  return out;
}

/** 503 in dockerd's words unless this node is a manager of an active swarm. */
async function requireManager(d: RouteDeps): Promise<void> {
  const info = await d.backend.swarmInfo();
  if (info.LocalNodeState !== "active") throw notManager();
  if (!info.ControlAvailable) throw workerNode();
}
