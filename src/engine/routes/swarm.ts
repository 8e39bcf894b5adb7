// /swarm: inspect, init, join, leave, update, unlockkey, unlock.

import { type Ctx, jsonBody, type Route, type RouteDeps, route, sendEmpty, sendJSON } from "../router.js";
import { decodeQuery } from "../schemas/query.js";
import {
  SwarmInitBody,
  SwarmJoinBody,
  SwarmLeaveQuery,
  SwarmSpecBody,
  SwarmUnlockBody,
  SwarmUpdateQuery,
  swarmInitFromRequest,
  swarmJoinFromRequest,
  swarmSpecFromRequest,
} from "../schemas/swarm.js";

export function swarmRoutes(d: RouteDeps): Route[] {
  const b = d.backend;
  const init = async (ctx: Ctx): Promise<void> => {
    const r = await jsonBody(d, ctx, SwarmInitBody, "swarm init request");
    const nodeId = await b.swarmInit(swarmInitFromRequest(r, ctx.version));
    // The docker CLI decodes the answer as a JSON string.
    sendJSON(ctx.res, 200, nodeId);
  };
  const join = async (ctx: Ctx): Promise<void> => {
    const r = await jsonBody(d, ctx, SwarmJoinBody, "swarm join request");
    await b.swarmJoin(swarmJoinFromRequest(r));
    sendEmpty(ctx.res);
  };
  const leave = async ({ res, query }: Ctx): Promise<void> => {
    await b.swarmLeave(decodeQuery(SwarmLeaveQuery, query).force);
    sendEmpty(res);
  };
  const update = async (ctx: Ctx): Promise<void> => {
    // As dockerd: the body first, then the version and flags.
    const spec = swarmSpecFromRequest(await jsonBody(d, ctx, SwarmSpecBody, "swarm spec"));
    const q = decodeQuery(SwarmUpdateQuery, ctx.query);
    await b.swarmUpdate(spec, {
      version: q.version,
      rotateWorkerToken: q.rotateWorkerToken,
      rotateManagerToken: q.rotateManagerToken,
      rotateManagerUnlockKey: q.rotateManagerUnlockKey,
    });
    sendEmpty(ctx.res);
  };
  const unlock = async (ctx: Ctx): Promise<void> => {
    const body = await jsonBody(d, ctx, SwarmUnlockBody, "swarm unlock request");
    await b.swarmUnlock(body?.UnlockKey ?? "");
    sendEmpty(ctx.res);
  };
  return [
    route("GET", "/swarm", async ({ res }) => sendJSON(res, 200, await b.swarmInspect())),
    route("POST", "/swarm/init", init),
    route("POST", "/swarm/join", join),
    route("POST", "/swarm/leave", leave),
    route("POST", "/swarm/update", update),
    route("GET", "/swarm/unlockkey", async ({ res }) => sendJSON(res, 200, { UnlockKey: await b.swarmUnlockKey() })),
    route("POST", "/swarm/unlock", unlock),
  ];
}
