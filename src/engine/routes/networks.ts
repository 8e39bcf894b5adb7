// /networks: list (with dockerd's filters), inspect, create, remove, prune, connect, disconnect.

import { ApiError, badRequest, conflict } from "../errors.js";
import { matchKVList } from "../filters.js";
import {
  type Ctx,
  jsonBody,
  type Route,
  type RouteDeps,
  route,
  SEG,
  sendEmpty,
  sendJSON,
  sendNoContent,
} from "../router.js";
import {
  endpointFromRequest,
  NetworkConnectBody,
  NetworkCreateBody,
  NetworkDisconnectBody,
  NetworkInspectQuery,
  NetworkListQuery,
  NetworkPruneQuery,
  networkSpecFromRequest,
} from "../schemas/network.js";
import { decodeQuery } from "../schemas/query.js";
import type { NetworkResource } from "../types.js";
import { networkEvent } from "./events.js";
import { pruneLabelsMatch, pruneUntil } from "./prune.js";

/** Networks every Docker engine has; `type=builtin` lists them, `type=custom` the others. */
const BUILTIN_NETWORKS = ["bridge", "host", "none", "ingress", "docker_gwbridge"];

export function networkRoutes(d: RouteDeps): Route[] {
  const list = async ({ res, query }: Ctx): Promise<void> => {
    const { filters } = decodeQuery(NetworkListQuery, query);
    const found = await d.networks().networkList(filters);
    sendJSON(res, 200, filterNetworks(found, filters));
  };
  const inspect = async ({ res, params, query }: Ctx): Promise<void> => {
    // `verbose` adds the services on the network in dockerd: shoal runs no services, so there are none.
    const { scope } = decodeQuery(NetworkInspectQuery, query);
    const ref = params[0]!;
    // shoal's networks are all swarm-scoped: asked for another scope, there is no such network.
    if (scope && scope !== "swarm") throw new ApiError(404, `network ${ref} not found`);
    sendJSON(res, 200, await d.networks().networkInspect(ref));
  };
  const create = async (ctx: Ctx): Promise<void> => {
    const spec = networkSpecFromRequest(await jsonBody(d, ctx, NetworkCreateBody, "network create request"));
    const created = await d.networks().networkCreate(spec);
    networkEvent(d, "create", created.Id, { name: spec.name });
    sendJSON(ctx.res, 201, created);
  };
  const remove = async ({ res, params }: Ctx): Promise<void> => {
    const n = await d
      .networks()
      .networkInspect(params[0]!)
      .catch(() => undefined);
    await d.networks().networkRemove(params[0]!);
    if (n) networkEvent(d, "destroy", n.Id, { name: n.Name });
    sendNoContent(res);
  };
  return [
    route("GET", "/networks", list),
    route("GET", "/networks/", list),
    route("POST", "/networks/create", create),
    route("POST", "/networks/prune", pruneHandler(d)),
    route("GET", `/networks/${SEG}`, inspect),
    route("DELETE", `/networks/${SEG}`, remove),
    route("POST", `/networks/${SEG}/connect`, async (ctx) => connect(d, ctx)),
    route("POST", `/networks/${SEG}/disconnect`, async (ctx) => disconnect(d, ctx)),
  ];
}

async function connect(d: RouteDeps, ctx: Ctx): Promise<void> {
  const r = await jsonBody(d, ctx, NetworkConnectBody, "network connect request");
  if (!r.Container) throw badRequest("invalid network connect request: Container must name the container to connect");
  await d.networks().networkConnect(ctx.params[0]!, r.Container, endpointFromRequest(r.EndpointConfig));
  await connectEvent(d, "connect", ctx.params[0]!, r.Container);
  sendEmpty(ctx.res);
}

async function disconnect(d: RouteDeps, ctx: Ctx): Promise<void> {
  const r = await jsonBody(d, ctx, NetworkDisconnectBody, "network disconnect request");
  if (!r.Container) {
    throw badRequest("invalid network disconnect request: Container must name the container to disconnect");
  }
  await d.networks().networkDisconnect(ctx.params[0]!, r.Container, r.Force ?? false);
  await connectEvent(d, "disconnect", ctx.params[0]!, r.Container);
  sendEmpty(ctx.res);
}

/** The event of a connect or disconnect that was done: the network's id and name, the container's id. */
async function connectEvent(d: RouteDeps, action: string, networkRef: string, containerRef: string): Promise<void> {
  try {
    const n = await d.networks().networkInspect(networkRef);
    const c = await d.containers().containerInspect(containerRef);
    networkEvent(d, action, n.Id, { name: n.Name, container: c.Id });
  } catch (err) {
    d.log?.debug({ err, network: networkRef }, "no event for a network connect: its network or container went");
  }
}

/**
 * POST /networks/prune, as dockerd does it: on a manager, every network but ingress that matches the
 * filters is removed unless it is in use; a worker may remove none. Answers the names removed. One prune
 * runs at a time (as in dockerd).
 */
function pruneHandler(d: RouteDeps): (ctx: Ctx) => Promise<void> {
  let pruning = false;
  return async ({ res, query }) => {
    const { filters } = decodeQuery(NetworkPruneQuery, query);
    const until = pruneUntil(filters.until);
    if (pruning) throw conflict("a prune operation is already running");
    pruning = true;
    try {
      const deleted: string[] = [];
      const info = await d.backend.swarmInfo();
      if (info.LocalNodeState === "active" && info.ControlAvailable) {
        for (const n of await d.networks().networkList({})) {
          if (n.Ingress) continue;
          if (until !== undefined && Date.parse(n.Created) > until) continue;
          if (!pruneLabelsMatch(filters, n.Labels ?? {})) continue;
          if (await pruneOne(d, n)) deleted.push(n.Name);
        }
      }
      sendJSON(res, 200, { NetworksDeleted: deleted.length > 0 ? deleted : null });
    } finally {
      pruning = false;
    }
  };
}

async function pruneOne(d: RouteDeps, n: NetworkResource): Promise<boolean> {
  try {
    await d.networks().networkRemove(n.Id);
    networkEvent(d, "destroy", n.Id, { name: n.Name });
    return true;
  } catch (err) {
    // In use (or gone meanwhile): not for pruning now.
    d.log?.debug({ err, network: n.Name }, "network prune skipped a network");
    return false;
  }
}

/** dockerd's filters.Match: the value itself, or a regular expression that matches. */
function filterMatch(values: string[], source: string): boolean {
  return values.some((v) => {
    if (v === source) return true;
    try {
      return new RegExp(v).test(source);
    } catch {
      return false;
    }
  });
}

/**
 * GET /networks filters as dockerd applies them (driver, scope: exact; name, id: match; label: key or
 * key=value; type: builtin or custom; dangling: no local containers).
 */
export function filterNetworks(list: NetworkResource[], f: Record<string, string[]>): NetworkResource[] {
  return list.filter((n) => {
    if (f.driver?.length && !f.driver.includes(n.Driver)) return false;
    if (f.scope?.length && !f.scope.includes(n.Scope)) return false;
    if (f.name?.length && !filterMatch(f.name, n.Name)) return false;
    if (f.id?.length && !filterMatch(f.id, n.Id)) return false;
    if (f.label?.length && !matchKVList(f.label, n.Labels ?? {})) return false;
    if (f.type?.length) {
      const builtin = BUILTIN_NETWORKS.includes(n.Name);
      if (!f.type.some((t) => (t === "builtin" ? builtin : !builtin))) return false;
    }
    if (f.dangling?.length) {
      const dangling = Object.keys(n.Containers ?? {}).length === 0 && !BUILTIN_NETWORKS.includes(n.Name);
      if (!f.dangling.some((d) => (["1", "true"].includes(d.toLowerCase()) ? dangling : !dangling))) return false;
    }
    return true;
  });
}
