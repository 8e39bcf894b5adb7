// What takes room and what frees it: POST /containers/prune, POST /images/prune, POST /build/prune (shoal
// builds nothing: there is no cache) and GET /system/df, as dockerd answers them. `docker system prune`
// is the CLI calling the prunes one after another (networks prune is in networks.ts). The filters `until`
// and `label`/`label!` of every prune are read here.

import type { ContainerSummary } from "../../runtime/types.js";
import { badRequest, conflict } from "../errors.js";
import { type Filters, matchKVList } from "../filters.js";
import { type Ctx, discardBody, type Route, type RouteDeps, route, sendJSON } from "../router.js";
import { decodeQuery } from "../schemas/query.js";
import { BuildPruneQuery, ContainerPruneQuery, ImagePruneQuery, SystemDfTypes } from "../schemas/usage.js";
import { parseTimestampMs } from "../timestamps.js";

/** The `until` filter of a prune, as dockerd reads it: a duration ago, a time, or Unix seconds. */
export function pruneUntil(values: string[] | undefined): number | undefined {
  if (!values || values.length === 0) return undefined;
  if (values.length > 1) throw badRequest("more than one until filter specified");
  return parseTimestampMs(values[0]!, Date.now());
}

/** dockerd's matchLabels for prune: every `label` holds, and not every `label!` does. */
export function pruneLabelsMatch(f: Filters, labels: Record<string, string>): boolean {
  if (!matchKVList(f.label, labels)) return false;
  if ((f["label!"]?.length ?? 0) > 0 && matchKVList(f["label!"], labels)) return false;
  return true;
}

/** filters.GetBoolOrDefault("dangling", true): "true"/"1" or "false"/"0", not both, not anything else. */
function danglingOnly(f: Filters): boolean {
  const v = f.dangling;
  if (v === undefined) return true;
  const isTrue = v.includes("true") || v.includes("1");
  const isFalse = v.includes("false") || v.includes("0");
  if (isTrue === isFalse) throw badRequest(`invalid filter 'dangling=${v.join(",")}'`);
  return isTrue;
}

/** One prune of a kind at a time, as dockerd runs them ("a prune operation is already running"). */
function oneAtATime(f: (ctx: Ctx) => Promise<void>): (ctx: Ctx) => Promise<void> {
  let running = false;
  return async (ctx) => {
    if (running) throw conflict("a prune operation is already running");
    running = true;
    try {
      await f(ctx);
    } finally {
      running = false;
    }
  };
}

export function pruneRoutes(d: RouteDeps): Route[] {
  const containers = async (ctx: Ctx): Promise<void> => {
    const { filters } = decodeQuery(ContainerPruneQuery, ctx.query);
    const untilMs = pruneUntil(filters.until);
    await discardBody(ctx.req, d);
    const { deleted, reclaimedBytes } = await d.containers().containerPrune({
      ...(untilMs !== undefined ? { untilMs } : {}),
      labels: (l) => pruneLabelsMatch(filters, l),
    });
    sendJSON(ctx.res, 200, {
      ContainersDeleted: deleted.length > 0 ? deleted : null,
      SpaceReclaimed: reclaimedBytes,
    });
  };
  const images = async (ctx: Ctx): Promise<void> => {
    const { filters } = decodeQuery(ImagePruneQuery, ctx.query);
    const untilMs = pruneUntil(filters.until);
    const dangling = danglingOnly(filters);
    await discardBody(ctx.req, d);
    const r = await d.images().prune({
      danglingOnly: dangling,
      ...(untilMs !== undefined ? { untilMs } : {}),
      labels: (l) => pruneLabelsMatch(filters, l),
    });
    sendJSON(ctx.res, 200, {
      ImagesDeleted: r.deleted.length > 0 ? r.deleted : null,
      SpaceReclaimed: r.reclaimedBytes,
    });
  };
  const build = async (ctx: Ctx): Promise<void> => {
    decodeQuery(BuildPruneQuery, ctx.query);
    await discardBody(ctx.req, d);
    sendJSON(ctx.res, 200, { CachesDeleted: null, SpaceReclaimed: 0 });
  };
  return [
    route("POST", "/containers/prune", oneAtATime(containers)),
    route("POST", "/images/prune", oneAtATime(images)),
    route("POST", "/build/prune", build),
    route("GET", "/system/df", (ctx) => systemDf(d, ctx)),
  ];
}

/** GET /system/df: images, containers, volumes (none) and build cache (none); `type` picks some of them. */
async function systemDf(d: RouteDeps, { res, query }: Ctx): Promise<void> {
  const parsed = SystemDfTypes.safeParse(query.getAll("type"));
  if (!parsed.success) throw badRequest(parsed.error.issues[0]?.message ?? "invalid value for type");
  const types = parsed.data;
  const wants = (t: string) => types.length === 0 || types.includes(t as (typeof types)[number]);
  const out: Record<string, unknown> = {};
  let list: ContainerSummary[] = [];
  if (wants("container") || wants("image")) {
    list = await d.containers().containerList({ all: true, filters: {}, size: wants("container") });
  }
  if (wants("image")) {
    const usage = await d.images().diskUsage(list.map((c) => c.ImageID));
    out.LayersSize = usage.layersSize;
    out.Images = usage.images;
  }
  if (wants("container")) out.Containers = list;
  if (wants("volume")) out.Volumes = [];
  if (wants("build-cache")) out.BuildCache = [];
  sendJSON(res, 200, out);
}
