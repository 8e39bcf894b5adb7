// The Engine API's HTTP plumbing: routes and their matching (gorilla/mux-like paths, the optional /vX.Y
// prefix checked as dockerd checks it), the request context handlers get, request bodies read within the
// limits and decoded against a schema, and the plain answers (JSON, empty, no content).

import type { IncomingMessage, ServerResponse } from "node:http";
import type { Duplex } from "node:stream";
import type { Logger } from "pino";
import type { z } from "zod";
import { MAX_JSON_DEPTH } from "../api/limits.js";
import { parseJsonText } from "../api/schema.js";
import type { ImageService } from "../runtime/images/service.js";
import { API_VERSION } from "../version.js";
import { ApiError, badRequest } from "./errors.js";
import { type BodyBudget, type HttpLimits, readBody } from "./http.js";
import { decode } from "./schemas/decode.js";
import type { ContainerBackend, NetworkBackend, SwarmBackend } from "./types.js";
import { checkApiVersion } from "./versions.js";

/** A request that asked to take over the connection (attach, exec start). */
export interface Upgrade {
  socket: Duplex;
  /** Bytes that came after the request head. */
  head: Buffer;
}

export interface Ctx {
  req: IncomingMessage;
  /** Absent for an upgrade request: the handler writes on `upgrade.socket`. */
  res: ServerResponse;
  query: URLSearchParams;
  params: string[];
  /** The API version of the request path (the newest when unversioned). */
  version: string;
  upgrade?: Upgrade;
}

export type Handler = (ctx: Ctx) => Promise<void>;

export interface Route {
  method: string;
  re: RegExp;
  handler: Handler;
  /** The route can take over the connection (an upgrade request goes nowhere else). */
  hijack?: boolean;
}

/** A path segment (gorilla/mux `{name}`): anything but a slash. */
export const SEG = "([^/]+)";

/** A route: `path` is a regular expression over the whole path (without its /vX.Y prefix). */
export function route(method: string, path: string, handler: Handler, hijack = false): Route {
  return { method, re: new RegExp(`^${path}$`), handler, hijack };
}

/** How request bodies are read: the size and depth limits, and the budget all bodies being read share. */
export interface BodyIO {
  limits: HttpLimits;
  bodyBudget: BodyBudget;
}

/** What the routes files are given: the backends (a missing one answers 503), the log, the body limits. */
export interface RouteDeps extends BodyIO {
  backend: SwarmBackend;
  networks(): NetworkBackend;
  containers(): ContainerBackend;
  /** The image service (503 without). */
  images(): ImageService;
  /** The container backend when the daemon has one (for counts that are 0 without). */
  containerBackend: ContainerBackend | undefined;
  log: Logger | undefined;
}

/** A request URL's path and query string. */
export function splitUrl(rawUrl: string | undefined): { path: string; query: URLSearchParams } {
  const url = rawUrl ?? "/";
  const q = url.indexOf("?");
  return { path: q < 0 ? url : url.slice(0, q), query: new URLSearchParams(q < 0 ? "" : url.slice(q + 1)) };
}

export interface RouteMatch {
  route: Route;
  params: string[];
  version: string;
}

/**
 * The route for a request: its /vX.Y prefix taken off, the first route of `method` whose expression
 * matches. As in dockerd, the version is checked for known routes only, and an unknown path and a known
 * path with the wrong method are answered alike (404). `hijackOnly`: only routes that take a connection.
 */
export function matchRoute(
  routes: readonly Route[],
  method: string | undefined,
  path: string,
  hijackOnly = false,
): RouteMatch {
  const versioned = /^\/v([0-9.]+)(\/.*)$/.exec(path);
  if (versioned) path = versioned[2]!;
  for (const r of routes) {
    if (r.method !== method || (hijackOnly && !r.hijack)) continue;
    const m = r.re.exec(path);
    if (!m) continue;
    const params = m.slice(1).map(decodeSegment);
    if (params.some((p) => p === undefined)) break;
    if (versioned) checkApiVersion(versioned[1]!);
    const version = versioned ? versioned[1]! : API_VERSION;
    return { route: r, params: params as string[], version };
  }
  throw new ApiError(404, "page not found");
}

function decodeSegment(s: string | undefined): string | undefined {
  if (s === undefined) return undefined;
  try {
    return decodeURIComponent(s);
  } catch {
    return undefined;
  }
}

/** Any error as an ApiError (an unexpected one is a 500 with its message). */
export function asApiError(err: unknown): ApiError {
  return err instanceof ApiError ? err : new ApiError(500, err instanceof Error ? err.message : String(err));
}

// ---- answers --------------------------------------------------------------------------------------------

export function sendJSON(res: ServerResponse, status: number, value: unknown): void {
  sendJSONText(res, status, JSON.stringify(value));
}

/** A body already serialised (JSON text). */
export function sendJSONText(res: ServerResponse, status: number, json: string): void {
  // Exactly "application/json": with a charset the docker CLI prints error bodies raw.
  const body = Buffer.from(`${json}\n`, "utf8");
  res.writeHead(status, { "Content-Type": "application/json", "Content-Length": String(body.length) });
  res.end(body);
}

/** A body already serialised, as bytes of JSON text (written as they are: no copy). */
export function sendJSONBytes(res: ServerResponse, status: number, json: Uint8Array): void {
  res.writeHead(status, { "Content-Type": "application/json", "Content-Length": String(json.length + 1) });
  res.write(json);
  res.end("\n");
}

export function sendEmpty(res: ServerResponse): void {
  res.writeHead(200, { "Content-Length": "0" });
  res.end();
}

export function sendNoContent(res: ServerResponse, status = 204): void {
  res.writeHead(status);
  res.end();
}

// ---- request bodies -------------------------------------------------------------------------------------

/**
 * Reads the request's JSON body within the limits and decodes it against `schema` (an empty body is
 * null, which Go decodes to the zero value). `empty` answers instead when the body is empty.
 */
export async function jsonBody<S extends z.ZodType>(
  io: BodyIO,
  { req, res }: Ctx,
  schema: S,
  what: string,
  empty?: () => ApiError,
): Promise<z.infer<S>> {
  const { body, release } = await readBody(req, io.limits, io.bodyBudget);
  res.once("close", release);
  const value = parseBodyJson(req, body);
  if (value === undefined && empty) throw empty();
  return decode(schema, value ?? null, what);
}

/**
 * A request body's JSON: undefined when empty; a Content-Type other than application/json is refused (as
 * dockerd does). Its size and depth were bounded while it was read.
 */
function parseBodyJson(req: IncomingMessage, body: Buffer): unknown {
  const text = body.toString("utf8");
  if (text.trim() === "") return undefined;
  const ct = req.headers["content-type"];
  if (ct !== undefined && ct.split(";")[0]!.trim().toLowerCase() !== "application/json") {
    throw badRequest(`unsupported Content-Type header (${ct}): must be 'application/json'`);
  }
  try {
    return JSON.parse(text) as unknown;
  } catch (err) {
    throw badRequest(`invalid JSON: ${(err as Error).message}`);
  }
}

/** The body of an upgrade request (exec start): bounded in size and depth before it is parsed. */
export function parseUpgradeBody(text: string, maxBytes: number): unknown {
  if (text.trim() === "") return null;
  return parseJsonText(text, "JSON", maxBytes, MAX_JSON_DEPTH);
}

/** Reads a body the route does not use, within the limits (so the connection can carry the next request). */
export async function discardBody(req: IncomingMessage, io: BodyIO): Promise<void> {
  const { release } = await readBody(req, io.limits, io.bodyBudget);
  release();
}
