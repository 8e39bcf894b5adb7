// /containers/{id}/exec and /exec/{id}: create, start (hijacked, streamed or detached), resize, inspect.

import { badRequest } from "../errors.js";
import {
  type Ctx,
  jsonBody,
  parseUpgradeBody,
  type Route,
  type RouteDeps,
  route,
  SEG,
  sendEmpty,
  sendJSON,
} from "../router.js";
import { ExecCreateBody, ExecStartBody, execCreateFromRequest } from "../schemas/container.js";
import { decode } from "../schemas/decode.js";
import { frame, openStream, streamMediaType, upgradeInput, writeRawResponse } from "../streams.js";
import { decodeResize } from "./containers.js";

export function execRoutes(d: RouteDeps): Route[] {
  const create = async (ctx: Ctx): Promise<void> => {
    const r = await jsonBody(d, ctx, ExecCreateBody, "exec configuration", () =>
      badRequest("invalid JSON: the request body must be the exec's configuration"),
    );
    const id = await d.containers().execCreate(ctx.params[0]!, execCreateFromRequest(r));
    sendJSON(ctx.res, 201, { Id: id });
  };
  const resize = async ({ res, query, params }: Ctx): Promise<void> => {
    const { h, w } = decodeResize(query);
    await d.containers().execResize?.(params[0]!, h, w);
    sendEmpty(res);
  };
  const inspect = async ({ res, params }: Ctx): Promise<void> => {
    sendJSON(res, 200, await d.containers().execInspect(params[0]!));
  };
  return [
    route("POST", `/containers/${SEG}/exec`, create),
    route("POST", `/exec/${SEG}/start`, (ctx) => start(d, ctx), true),
    route("POST", `/exec/${SEG}/resize`, resize),
    route("GET", `/exec/${SEG}/json`, inspect),
  ];
}

async function start(d: RouteDeps, ctx: Ctx): Promise<void> {
  const { req, res, params, version, upgrade } = ctx;
  const input = upgrade ? await upgradeInput(req, upgrade, d.limits) : undefined;
  const body = input
    ? decode(ExecStartBody, parseUpgradeBody(input.body, d.limits.maxBodyBytes), "exec start request")
    : await jsonBody(d, ctx, ExecStartBody, "exec start request");
  const session = await d.containers().execStart(params[0]!);
  if (body.Detach === true) {
    void session.run({ output: () => undefined }).catch((err: unknown) => d.log?.warn({ err }, "detached exec failed"));
    if (upgrade) {
      writeRawResponse(upgrade.socket, 200, "OK", {}, "");
    } else {
      sendEmpty(res);
    }
    return;
  }
  const tty = session.tty || body.Tty === true;
  const out = openStream(res, upgrade, streamMediaType(tty, version));
  await session.run({
    // The process's output waits while the client is behind (the promise is its backpressure).
    output: (c) => out.write(tty ? c.data : frame(c.stream, c.data)),
    ...(input && session.attachStdin ? { stdin: input.stream } : {}),
  });
  out.end();
}
