// The Engine API's image routes: GET /images/json, POST /images/create (pull), POST /images/load, GET
// /images/get and /images/{name}/get (save), GET /images/{name}/json, POST /images/{name}/tag, DELETE
// /images/{name}. Every query and header is parsed against a schema (the types come from them) before it is
// used; errors keep docker's words and statuses. Parameters a route does not know are ignored, as dockerd
// ignores them. The load body is an archive, parsed by runtime/images/load.ts.

import { createWriteStream } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import type { IncomingMessage, ServerResponse } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pipeline } from "node:stream/promises";
import type { Logger } from "pino";
import { z } from "zod";
import { badRequest } from "../api/errors.js";
import { MAX_IMAGE_REF_LENGTH, MAX_LIST_ENTRIES } from "../api/limits.js";
import { loadImages } from "../runtime/images/load.js";
import { hostPlatform } from "../runtime/images/oci.js";
import type { PullProgress } from "../runtime/images/pull.js";
import { familiarRepository, parseReference } from "../runtime/images/reference.js";
import type { ImageService, ImageSummary } from "../runtime/images/service.js";
import type { Filters } from "./filters.js";
import { decodeQuery, filtersParam, lenientBool, textParam } from "./schemas/query.js";

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

/** `--platform`: shoal runs images for its own platform only ("linux", "linux/amd64"; dockerd's words else). */
function platformParam() {
  return textParam("platform", 64).transform((v, ctx) => {
    if (v === undefined || v === "") return undefined;
    const here = hostPlatform();
    const [os, arch, variant] = v.toLowerCase().split("/");
    if (os === here.os && (arch === undefined || arch === here.architecture) && variant === undefined) return v;
    ctx.issues.push({
      code: "custom",
      message: `image with reference for platform ${JSON.stringify(v)} is not available: shoal runs ${here.os}/${here.architecture} images only`,
      input: v,
    });
    return z.NEVER;
  });
}

/** An image name or reference given in a query (bounded; its syntax is checked where it is used). */
const imageRef = (name: string) => textParam(name, MAX_IMAGE_REF_LENGTH);

/** GET /images/json (docker images [-a] [--digests] [--filter]). */
const ImageListQuery = z.object({
  all: lenientBool(),
  filters: filtersParam(IMAGE_FILTERS),
  digests: lenientBool(),
  "shared-size": lenientBool(),
  manifests: lenientBool(),
});

/** POST /images/create (docker pull). */
const ImagePullQuery = z.object({
  fromImage: imageRef("fromImage"),
  fromSrc: textParam("fromSrc", MAX_IMAGE_REF_LENGTH),
  repo: imageRef("repo"),
  tag: textParam("tag", MAX_IMAGE_REF_LENGTH),
  message: textParam("message", 4096),
  platform: platformParam(),
});

/** POST /images/load (docker load [-q]). */
const ImageLoadQuery = z.object({ quiet: lenientBool(), platform: platformParam() });

/** GET /images/{name}/json. */
const ImageInspectQuery = z.object({ manifests: lenientBool() });

/** GET /images/{name}/history: --platform only (one platform here). */
const ImageHistoryQuery = z.object({ platform: platformParam() });

/** POST /images/{name}/tag (docker tag). */
const ImageTagQuery = z.object({ repo: imageRef("repo"), tag: textParam("tag", MAX_IMAGE_REF_LENGTH) });

/** DELETE /images/{name} (docker rmi [-f] [--no-prune]). */
const ImageRemoveQuery = z.object({ force: lenientBool(), noprune: lenientBool() });

/** GET /images/get?names=a&names=b (docker save): every `names` value, each a bounded reference. */
const ImageSaveNames = z
  .array(z.string().max(MAX_IMAGE_REF_LENGTH, "invalid value for names: a name is too long"))
  .max(MAX_LIST_ENTRIES, `invalid value for names: at most ${MAX_LIST_ENTRIES} images`);

const ImageSaveQuery = z.object({ platform: platformParam() });

function sendJSON(res: ServerResponse, status: number, value: unknown): void {
  const body = JSON.stringify(value);
  res.writeHead(status, { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(body) });
  res.end(body);
}

function registryAuth(header: string | string[] | undefined): { username: string; password: string } | undefined {
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

/** docker's reference filter: "busybox", "busybox:1*", a glob over repository[:tag] (or repository@digest). */
function referenceMatches(name: string, pattern: string): boolean {
  const re = new RegExp(`^${pattern.replace(/[.+?^${}()|[\]\\]/g, "\\$&").replace(/\*/g, "[^/]*")}$`);
  const cut = name.includes("@") ? name.indexOf("@") : name.lastIndexOf(":");
  return re.test(name) || (cut > 0 && re.test(name.slice(0, cut)));
}

function labelMatches(labels: Record<string, string>, f: string): boolean {
  const eq = f.indexOf("=");
  if (eq < 0) return Object.hasOwn(labels, f);
  return labels[f.slice(0, eq)] === f.slice(eq + 1);
}

/**
 * The images that pass the filters. With a reference filter an image shows only the names that match it
 * (as dockerd lists it: `docker images busybox` shows no other tag of the same image), and an image none of
 * whose names match is left out.
 */
function filtered(list: ImageSummary[], f: Filters): ImageSummary[] {
  const out: ImageSummary[] = [];
  for (const i of list) {
    if (f.dangling && !f.dangling.includes(String(i.RepoTags.length === 0))) continue;
    if (f.label && !f.label.every((l) => labelMatches(i.Labels, l))) continue;
    if (!f.reference) {
      out.push(i);
      continue;
    }
    const patterns = f.reference;
    const matching = (names: string[]) => names.filter((n) => patterns.some((p) => referenceMatches(n, p)));
    const tags = matching(i.RepoTags);
    const digests = matching(i.RepoDigests);
    if (tags.length > 0 || digests.length > 0) out.push({ ...i, RepoTags: tags, RepoDigests: digests });
  }
  return out;
}

export class ImageRoutes {
  constructor(
    private readonly images: () => ImageService,
    private readonly log: Logger | undefined,
  ) {}

  async list({ res, query }: ImageCtx): Promise<void> {
    const { filters } = decodeQuery(ImageListQuery, query);
    sendJSON(res, 200, filtered(await this.images().list(), filters));
  }

  async inspect({ res, query, params }: ImageCtx): Promise<void> {
    decodeQuery(ImageInspectQuery, query);
    sendJSON(res, 200, await this.images().inspect(params[0]!));
  }

  /** GET /images/{name}/history (docker history). */
  async history({ res, query, params }: ImageCtx): Promise<void> {
    decodeQuery(ImageHistoryQuery, query);
    sendJSON(res, 200, await this.images().history(params[0]!));
  }

  async remove({ res, query, params }: ImageCtx): Promise<void> {
    const { force } = decodeQuery(ImageRemoveQuery, query);
    sendJSON(res, 200, await this.images().remove(params[0]!, force));
  }

  async tag({ res, query, params }: ImageCtx): Promise<void> {
    const { repo, tag } = decodeQuery(ImageTagQuery, query);
    if (!repo) throw badRequest("repository name must have at least one component");
    await this.images().tag(params[0]!, repo, tag ?? "");
    res.writeHead(201).end();
  }

  async save({ res, query, params }: ImageCtx): Promise<void> {
    decodeQuery(ImageSaveQuery, query);
    const parsed = ImageSaveNames.safeParse(params[0] !== undefined ? [params[0]] : query.getAll("names"));
    if (!parsed.success) throw badRequest(parsed.error.issues[0]?.message ?? "invalid value for names");
    const names = parsed.data;
    if (names.length === 0) throw badRequest("no images to save: name at least one");
    const tar = await this.images().save(names);
    res.writeHead(200, { "Content-Type": "application/x-tar", "Content-Length": tar.length });
    res.end(tar);
  }

  /** POST /images/load: the archive is spooled to a file, then loaded all or nothing. */
  async load({ req, res, query }: ImageCtx): Promise<void> {
    decodeQuery(ImageLoadQuery, query);
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
      for (const l of lines) {
        const name = /^Loaded image(?: ID)?: (.+)$/.exec(l)?.[1];
        if (name) this.images().events.emit("image", "load", name, { name });
      }
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
    const q = decodeQuery(ImagePullQuery, query);
    if (q.fromSrc) throw badRequest("shoal does not import root file systems: use docker load or docker pull");
    const from = q.fromImage ?? "";
    if (from === "") throw badRequest("fromImage is required: name the image to pull");
    const tag = q.tag ?? "";
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
