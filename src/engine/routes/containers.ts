// /containers: create, list, inspect, start, stop, restart, kill, wait, resize, remove, logs, attach
// (hijacked or streamed), top, rename, pause, unpause, stats. (prune is in prune.ts.)

import { badRequest } from "../errors.js";
import { readBody, writeWithBackpressure } from "../http.js";
import {
  type Ctx,
  discardBody,
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
  ContainerAttachQuery,
  ContainerCreateBody,
  ContainerCreateQuery,
  ContainerInspectQuery,
  ContainerKillQuery,
  ContainerListQuery,
  ContainerLogsQuery,
  ContainerRemoveQuery,
  ContainerStartQuery,
  ContainerStopQuery,
  ContainerWaitQuery,
  containerCreateFromRequest,
  ResizeQuery,
} from "../schemas/container.js";
import { decodeQuery } from "../schemas/query.js";
import { ContainerRenameQuery, ContainerStatsQuery } from "../schemas/usage.js";
import { frame, openStream, streamMediaType, upgradeInput } from "../streams.js";
import type { WaitCondition } from "../types.js";

export function containerRoutes(d: RouteDeps): Route[] {
  const c = () => d.containers();
  const inspect = async ({ res, params, query }: Ctx): Promise<void> => {
    const { size } = decodeQuery(ContainerInspectQuery, query);
    sendJSON(res, 200, await c().containerInspect(params[0]!, { size }));
  };
  const stop = async ({ res, query, params }: Ctx): Promise<void> => {
    const stopped = await c().containerStop(params[0]!, stopOptions(query));
    sendNoContent(res, stopped ? 204 : 304);
  };
  const restart = async ({ res, query, params }: Ctx): Promise<void> => {
    const containers = c();
    await containers.containerStop(params[0]!, stopOptions(query));
    await containers.containerStart(params[0]!);
    sendNoContent(res);
  };
  const kill = async ({ res, query, params }: Ctx): Promise<void> => {
    const { signal } = decodeQuery(ContainerKillQuery, query);
    await c().containerKill(params[0]!, signal || "SIGKILL");
    sendNoContent(res);
  };
  const remove = async ({ res, query, params }: Ctx): Promise<void> => {
    const q = decodeQuery(ContainerRemoveQuery, query);
    if (q.link) throw badRequest("shoal has no container links to remove");
    await c().containerRemove(params[0]!, { force: q.force });
    sendNoContent(res);
  };
  /** POST /containers/{id}/resize: the TTY of a running container takes the client's terminal size. */
  const resize = async ({ res, query, params }: Ctx): Promise<void> => {
    const { h, w } = decodeResize(query);
    await c().containerResize?.(params[0]!, h, w);
    sendEmpty(res);
  };
  const rename = async ({ req, res, query, params }: Ctx): Promise<void> => {
    const { name } = decodeQuery(ContainerRenameQuery, query);
    await discardBody(req, d);
    await c().containerRename(params[0]!, name ?? "");
    sendNoContent(res);
  };
  const pause =
    (f: "containerPause" | "containerUnpause") =>
    async ({ req, res, params }: Ctx): Promise<void> => {
      await discardBody(req, d);
      await c()[f](params[0]!);
      sendNoContent(res);
    };
  const top = async ({ res, query, params }: Ctx): Promise<void> => {
    sendJSON(res, 200, await c().containerTop(params[0]!, query.get("ps_args") ?? ""));
  };
  return [
    route("POST", "/containers/create", (ctx) => create(d, ctx)),
    route("GET", "/containers/json", (ctx) => list(d, ctx)),
    route("GET", `/containers/${SEG}/json`, inspect),
    route("POST", `/containers/${SEG}/start`, (ctx) => start(d, ctx)),
    route("POST", `/containers/${SEG}/stop`, stop),
    route("POST", `/containers/${SEG}/restart`, restart),
    route("POST", `/containers/${SEG}/kill`, kill),
    route("POST", `/containers/${SEG}/wait`, (ctx) => wait(d, ctx)),
    route("POST", `/containers/${SEG}/resize`, resize),
    route("DELETE", `/containers/${SEG}`, remove),
    route("GET", `/containers/${SEG}/logs`, (ctx) => logs(d, ctx)),
    route("POST", `/containers/${SEG}/attach`, (ctx) => attach(d, ctx), true),
    route("GET", `/containers/${SEG}/top`, top),
    route("POST", `/containers/${SEG}/rename`, rename),
    route("POST", `/containers/${SEG}/pause`, pause("containerPause")),
    route("POST", `/containers/${SEG}/unpause`, pause("containerUnpause")),
    route("GET", `/containers/${SEG}/stats`, (ctx) => stats(d, ctx)),
  ];
}

async function create(d: RouteDeps, ctx: Ctx): Promise<void> {
  const q = decodeQuery(ContainerCreateQuery, ctx.query);
  if (q.platform && !/^linux(\/|$)/.test(q.platform)) {
    throw badRequest(`shoal runs Linux containers only: platform "${q.platform}" is not supported`);
  }
  const r = await jsonBody(d, ctx, ContainerCreateBody, "container config", () =>
    badRequest("config cannot be empty in order to create a container"),
  );
  const name = q.name || undefined;
  sendJSON(ctx.res, 201, await d.containers().containerCreate(name, containerCreateFromRequest(r)));
}

async function list(d: RouteDeps, { res, query }: Ctx): Promise<void> {
  const q = decodeQuery(ContainerListQuery, query);
  const limit = q.limit ?? -1;
  let found = await d.containers().containerList({ all: q.all || limit > 0, filters: q.filters, size: q.size });
  if (limit > 0) found = found.slice(0, limit);
  sendJSON(res, 200, found);
}

async function start(d: RouteDeps, { req, res, params, query }: Ctx): Promise<void> {
  // dockerd: a body of more than 7 bytes (the shortest non-empty JSON object) is the HostConfig of old.
  const length = req.headers["content-length"];
  if ((length !== undefined && Number(length) > 7) || req.headers["transfer-encoding"] !== undefined) {
    throw badRequest(
      "starting container with non-empty request body was deprecated since API v1.22 and removed in v1.24",
    );
  }
  const { release } = await readBody(req, d.limits, d.bodyBudget);
  release();
  const q = decodeQuery(ContainerStartQuery, query);
  if (q.checkpoint || q["checkpoint-dir"]) throw badRequest("checkpoints are not supported by shoal");
  const started = await d.containers().containerStart(params[0]!);
  sendNoContent(res, started ? 204 : 304);
}

function stopOptions(query: URLSearchParams): { timeout?: number; signal?: string } {
  const q = decodeQuery(ContainerStopQuery, query);
  return { ...(q.t !== undefined ? { timeout: q.t } : {}), ...(q.signal ? { signal: q.signal } : {}) };
}

async function wait(d: RouteDeps, { res, query, params }: Ctx): Promise<void> {
  const condition = decodeQuery(ContainerWaitQuery, query).condition || "not-running";
  if (condition !== "not-running" && condition !== "next-exit" && condition !== "removed") {
    throw badRequest(`invalid condition: "${condition}"`);
  }
  const pending = await d.containers().containerWait(params[0]!, condition as WaitCondition);
  // The docker CLI waits for the headers before it starts the container: send them now.
  res.writeHead(200, { "Content-Type": "application/json" });
  res.flushHeaders();
  const gone = new Promise<undefined>((resolve) => res.once("close", () => resolve(undefined)));
  const result = await Promise.race([pending.result, gone]);
  if (result === undefined) {
    pending.cancel();
    return;
  }
  res.end(`${JSON.stringify(result)}\n`);
}

async function logs(d: RouteDeps, { res, query, params, version }: Ctx): Promise<void> {
  const q = decodeQuery(ContainerLogsQuery, query);
  if (!q.stdout && !q.stderr) throw badRequest("Bad parameters: you must choose at least one stream");
  const stream = await d.containers().containerLogs(params[0]!, {
    stdout: q.stdout,
    stderr: q.stderr,
    follow: q.follow,
    timestamps: q.timestamps,
    tail: q.tail ?? "all",
    since: timeParam("since", q.since),
    until: timeParam("until", q.until),
  });
  res.writeHead(200, { "Content-Type": streamMediaType(stream.tty, version) });
  res.flushHeaders();
  res.once("close", () => stream.cancel());
  for await (const c of stream.chunks) {
    if (!(await writeWithBackpressure(res, stream.tty ? c.data : frame(c.stream, c.data)))) break;
  }
  if (!res.destroyed) res.end();
}

/** GET /containers/{id}/stats: JSON samples, one a line (dockerd's json.Encoder), while the client reads. */
async function stats(d: RouteDeps, { res, query, params }: Ctx): Promise<void> {
  const q = decodeQuery(ContainerStatsQuery, query);
  if (q.stream && q["one-shot"]) throw badRequest("cannot have stream=true and one-shot=true");
  const s = await d.containers().containerStats(params[0]!, { stream: q.stream, oneShot: q["one-shot"] });
  res.writeHead(200, { "Content-Type": "application/json" });
  res.flushHeaders();
  res.once("close", () => s.cancel());
  for await (const sample of s.samples) {
    if (!(await writeWithBackpressure(res, Buffer.from(`${JSON.stringify(sample)}\n`)))) break;
  }
  if (!res.destroyed) res.end();
}

async function attach(d: RouteDeps, { req, res, query, params, version, upgrade }: Ctx): Promise<void> {
  const opts = decodeQuery(ContainerAttachQuery, query);
  const input = upgrade ? await upgradeInput(req, upgrade, d.limits) : undefined;
  const session = await d.containers().containerAttach(params[0]!, {
    stream: opts.stream,
    logs: opts.logs,
    stdin: opts.stdin,
    stdout: opts.stdout,
    stderr: opts.stderr,
  });
  const out = openStream(res, upgrade, streamMediaType(session.tty, version));
  out.onClose(() => session.cancel());
  if (input && session.stdin) {
    input.stream.pipe(session.stdin);
  }
  for await (const c of session.chunks) {
    if (!(await out.write(session.tty ? c.data : frame(c.stream, c.data)))) break;
  }
  out.end();
}

/** `since`/`until` of logs: Unix seconds, with fractions ("1700000000.5"); absent or 0: no bound. */
function timeParam(key: string, raw: string | undefined): number {
  if (raw === undefined || raw === "") return 0;
  const n = Number(raw);
  if (!Number.isFinite(n)) throw badRequest(`invalid value for ${key}: ${raw}`);
  return n;
}

/** h and w of a resize (containers and execs): both required, as dockerd's strconv.Atoi reads them. */
export function decodeResize(query: URLSearchParams): { h: number; w: number } {
  const { h, w } = decodeQuery(ResizeQuery, query);
  if (h === undefined) throw badRequest('strconv.Atoi: parsing "": invalid syntax');
  if (w === undefined) throw badRequest('strconv.Atoi: parsing "": invalid syntax');
  if (h < 0 || w < 0 || h > 65535 || w > 65535) throw badRequest(`invalid terminal size ${w}x${h}`);
  return { h, w };
}
