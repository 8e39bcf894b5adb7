// The Engine API's image routes (and `top`): GET /images/json, POST /images/create (pull), POST
// /images/load, GET /images/get and /images/{name}/get (save), GET /images/{name}/json, POST
// /images/{name}/tag, DELETE /images/{name}. Queries and headers are parsed against schemas; errors keep
// docker's words and statuses.

import { createWriteStream } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import type { IncomingMessage, ServerResponse } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pipeline } from "node:stream/promises";
import type { Logger } from "pino";
import { z } from "zod";
import { badRequest } from "../api/errors.js";
import { loadImages } from "../runtime/images/load.js";
import type { PullProgress } from "../runtime/images/pull.js";
import { familiarRepository, parseReference } from "../runtime/images/reference.js";
import type { ImageService, ImageSummary } from "../runtime/images/service.js";

export interface ImageCtx {
  req: IncomingMessage;
  res: ServerResponse;
  query: URLSearchParams;
  params: string[];
}

/** Largest image archive `docker load` takes (the body is spooled to a file). */
const MAX_LOAD_BYTES = 8 * 1024 * 1024 * 1024;
const IMAGE_FILTERS = ["reference", "dangling", "label", "before", "since"];

/** X-Registry-Auth: base64url JSON of docker's AuthConfig (what shoal uses of it). */
const AuthConfigSchema = z.object({
  username: z.string().max(1024).optional(),
  password: z.string().max(4096).optional(),
  serveraddress: z.string().max(1024).optional(),
  identitytoken: z.string().max(8192).optional(),
});

function sendJSON(res: ServerResponse, status: number, value: unknown): void {
  const body = JSON.stringify(value);
  res.writeHead(status, { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(body) });
  res.end(body);
}

export function registryAuth(
  header: string | string[] | undefined,
): { username: string; password: string } | undefined {
  if (typeof header !== "string" || header === "") return undefined;
  let value: unknown;
  try {
    value = JSON.parse(Buffer.from(header, "base64url").toString("utf8"));
  } catch {
    throw badRequest("invalid X-Registry-Auth header: not base64url-encoded JSON");
  }
  const auth = AuthConfigSchema.safeParse(value);
  if (!auth.success) throw badRequest("invalid X-Registry-Auth header: not an AuthConfig");
  const { username, password } = auth.data;
  return username ? { username, password: password ?? "" } : undefined;
}

function parseFilterParam(text: string | null): Record<string, string[]> {
  if (!text) return {};
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw badRequest("invalid filter: the filters parameter is not JSON");
  }
  const parsed = z
    .record(z.string(), z.union([z.array(z.string()), z.record(z.string(), z.boolean())]))
    .safeParse(value);
  if (!parsed.success) throw badRequest("invalid filter: the filters parameter is not a map of lists");
  const out: Record<string, string[]> = {};
  for (const [k, v] of Object.entries(parsed.data)) {
    if (!IMAGE_FILTERS.includes(k)) throw badRequest(`invalid filter '${k}'`);
    out[k] = Array.isArray(v) ? v : Object.keys(v).filter((x) => v[x]);
  }
  return out;
}

/** docker's reference filter: "busybox", "busybox:1*", a glob over repository[:tag]. */
function referenceMatches(tags: string[], pattern: string): boolean {
  const re = new RegExp(`^${pattern.replace(/[.+?^${}()|[\]\\]/g, "\\$&").replace(/\*/g, "[^/]*")}$`);
  return tags.some((t) => re.test(t) || re.test(t.slice(0, t.lastIndexOf(":"))));
}

function labelMatches(labels: Record<string, string>, f: string): boolean {
  const eq = f.indexOf("=");
  if (eq < 0) return Object.hasOwn(labels, f);
  return labels[f.slice(0, eq)] === f.slice(eq + 1);
}

function filtered(list: ImageSummary[], f: Record<string, string[]>): ImageSummary[] {
  return list.filter(
    (i) =>
      (!f.reference || f.reference.some((p) => referenceMatches(i.RepoTags, p))) &&
      (!f.dangling || f.dangling.includes(String(i.RepoTags.length === 0))) &&
      (!f.label || f.label.every((l) => labelMatches(i.Labels, l))),
  );
}

export class ImageRoutes {
  constructor(
    private readonly images: () => ImageService,
    private readonly log: Logger | undefined,
  ) {}

  async list({ res, query }: ImageCtx): Promise<void> {
    sendJSON(res, 200, filtered(await this.images().list(), parseFilterParam(query.get("filters"))));
  }

  async inspect({ res, params }: ImageCtx): Promise<void> {
    sendJSON(res, 200, await this.images().inspect(params[0]!));
  }

  async remove({ res, query, params }: ImageCtx): Promise<void> {
    const force = ["1", "true", "True"].includes(query.get("force") ?? "");
    sendJSON(res, 200, await this.images().remove(params[0]!, force));
  }

  async tag({ res, query, params }: ImageCtx): Promise<void> {
    await this.images().tag(params[0]!, query.get("repo") ?? "", query.get("tag") ?? "");
    res.writeHead(201).end();
  }

  async save({ res, query, params }: ImageCtx): Promise<void> {
    const names = params[0] !== undefined ? [params[0]] : query.getAll("names");
    const tar = await this.images().save(names);
    res.writeHead(200, { "Content-Type": "application/x-tar", "Content-Length": tar.length });
    res.end(tar);
  }

  /** POST /images/load: the archive is spooled to a file, then loaded all or nothing. */
  async load({ req, res }: ImageCtx): Promise<void> {
    const dir = await mkdtemp(join(tmpdir(), "shoal-load-"));
    try {
      const path = join(dir, "image.tar");
      let bytes = 0;
      req.on("data", (c: Buffer) => {
        bytes += c.length;
        if (bytes > MAX_LOAD_BYTES) req.destroy(badRequest(`the archive is larger than ${MAX_LOAD_BYTES} bytes`));
      });
      await pipeline(req, createWriteStream(path));
      const lines = await loadImages(this.images().store, path);
      // docker load prints these lines with and without --quiet.
      res.writeHead(200, { "Content-Type": "application/json" });
      for (const l of lines) res.write(`${JSON.stringify({ stream: `${l}\n` })}\n`);
      res.end();
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }

  /** POST /images/create?fromImage=&tag=: a pull, its progress as docker's JSON message stream. */
  async pull({ req, res, query }: ImageCtx): Promise<void> {
    if (query.get("fromSrc"))
      throw badRequest("shoal does not import root file systems: use docker load or docker pull");
    const from = query.get("fromImage") ?? "";
    if (from === "") throw badRequest("fromImage is required: name the image to pull");
    const tag = query.get("tag") ?? "";
    const ref = tag === "" ? from : tag.startsWith("sha256:") ? `${from}@${tag}` : `${from}:${tag}`;
    parseReference(ref);
    const credentials = registryAuth(req.headers["x-registry-auth"]);
    let started = false;
    const say = (p: PullProgress): void => {
      if (!started) {
        res.writeHead(200, { "Content-Type": "application/json" });
        started = true;
      }
      res.write(`${JSON.stringify(p)}\n`);
    };
    try {
      await this.images().pull(ref, credentials ? { credentials } : {}, say);
    } catch (err) {
      if (!started) throw err;
      const message = err instanceof Error ? err.message : String(err);
      this.log?.warn({ err, image: familiarRepository(parseReference(ref)) }, "pull failed");
      res.write(`${JSON.stringify({ errorDetail: { message }, error: message })}\n`);
    }
    res.end();
  }
}
