// A client of a registry speaking the OCI distribution API: manifests and blobs of one repository, with
// anonymous, token (Bearer) and basic authentication, over HTTPS with the system's CAs, or plain HTTP for
// the registries shoald was told are insecure (--insecure-registry; localhost too, as in docker). A blob's
// body over plain HTTP is read by rawget.ts, into reused memory, not node:http (a registry on the LAN sends
// faster than node:http takes bytes on shoald's one thread).

import { readFileSync } from "node:fs";
import { request as httpRequest, type IncomingMessage } from "node:http";
import { request as httpsRequest } from "node:https";
import { z } from "zod";
import { ApiError } from "../../api/errors.js";
import { INDEX_TYPES, MANIFEST_TYPES, MEDIA } from "./oci.js";
import { NotRawError, rawGet } from "./rawget.js";
import type { Reference } from "./reference.js";

/** The registry the default domain means. */
const DOCKER_HUB = "registry-1.docker.io";
/** Redirects a blob download may take (registries hand blobs to a storage service). */
const MAX_REDIRECTS = 5;
/** Largest manifest or token response read. */
const MAX_DOCUMENT_BYTES = 4 * 1024 * 1024;
const REQUEST_TIMEOUT_MS = 30_000;

export interface Credentials {
  username: string;
  password: string;
}

const TokenSchema = z.object({ token: z.string().optional(), access_token: z.string().optional() });

let systemCas: string | undefined;
function systemCa(): string | undefined {
  if (systemCas === undefined) {
    try {
      systemCas = readFileSync("/etc/ssl/certs/ca-certificates.crt", "utf8");
    } catch {
      // No system bundle: Node's own CA list is used.
      systemCas = "";
    }
  }
  return systemCas === "" ? undefined : systemCas;
}

/** docker's words for a registry that cannot be used. */
export class RegistryError extends ApiError {}

function isLocal(host: string): boolean {
  const name = host.replace(/:\d+$/, "");
  return name === "localhost" || /^127\./.test(name) || name === "[::1]";
}

/** `key="value"` pairs of a WWW-Authenticate challenge. */
export function parseChallenge(header: string): { scheme: string; params: Record<string, string> } {
  const sp = header.indexOf(" ");
  const scheme = (sp < 0 ? header : header.slice(0, sp)).toLowerCase();
  const params: Record<string, string> = {};
  for (const m of header.slice(sp + 1).matchAll(/([a-zA-Z_]+)="([^"]*)"/g)) params[m[1]!.toLowerCase()] = m[2]!;
  return { scheme, params };
}

/** A response's body: node:http's, or a blob's read by rawget.ts (chunks to release once written). */
export type Body = AsyncIterable<Buffer> & {
  readonly readableLength: number;
  resume(): unknown;
  destroy(err?: Error): unknown;
};

export interface Response {
  status: number;
  headers: IncomingMessage["headers"];
  body: Body;
}

export class Registry {
  private readonly base: string;
  private readonly secure: boolean;
  private authorization: string | undefined;

  constructor(
    readonly ref: Reference,
    insecureRegistries: string[],
    private readonly credentials: Credentials | undefined,
  ) {
    const host = ref.domain === "docker.io" ? DOCKER_HUB : ref.domain;
    this.secure = !(insecureRegistries.includes(ref.domain) || isLocal(ref.domain));
    this.base = `${this.secure ? "https" : "http"}://${host}`;
  }

  /**
   * A GET of `url`. `raw`: a blob's body, read by rawget.ts when it comes over plain HTTP with a length (else
   * through node:http, asked again).
   */
  private async send(url: string, headers: Record<string, string>, raw = false): Promise<Response> {
    if (raw && url.startsWith("http:")) {
      try {
        return await rawGet(new URL(url), headers, REQUEST_TIMEOUT_MS);
      } catch (err) {
        if (!(err instanceof NotRawError)) throw this.unreachable(err as Error);
      }
    }
    return new Promise((resolve, reject) => {
      const u = new URL(url);
      const opts = { method: "GET", headers, timeout: REQUEST_TIMEOUT_MS };
      const req =
        u.protocol === "https:"
          ? httpsRequest(u, { ...opts, ...(systemCa() ? { ca: systemCa() } : {}) }, (res) =>
              resolve({ status: res.statusCode ?? 0, headers: res.headers, body: res }),
            )
          : httpRequest(u, opts, (res) => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: res }));
      req.on("timeout", () => req.destroy(new Error(`no answer from ${u.host} in ${REQUEST_TIMEOUT_MS} ms`)));
      req.on("error", (err) => reject(this.unreachable(err)));
      req.end();
    });
  }

  private unreachable(err: Error): RegistryError {
    const hint = this.secure
      ? ` (if ${this.ref.domain} serves plain HTTP, start shoald with --insecure-registry ${this.ref.domain})`
      : "";
    return new RegistryError(500, `Get "${this.base}/v2/": ${err.message}${hint}`);
  }

  /** A GET of a registry path, authenticating once when the registry asks (401 with a challenge). */
  async get(path: string, accept: string[] = [], raw = false): Promise<Response> {
    const headers: Record<string, string> = {};
    if (accept.length > 0) headers.Accept = accept.join(", ");
    let res = await this.follow(`${this.base}${path}`, headers, raw);
    if (res.status === 401) {
      res.body.resume();
      await this.authenticate(String(res.headers["www-authenticate"] ?? ""));
      res = await this.follow(`${this.base}${path}`, headers, raw);
    }
    return res;
  }

  private async follow(url: string, headers: Record<string, string>, raw = false): Promise<Response> {
    let target = url;
    for (let i = 0; i <= MAX_REDIRECTS; i++) {
      const sameHost = new URL(target).host === new URL(this.base).host;
      const h = { ...headers, ...(sameHost && this.authorization ? { Authorization: this.authorization } : {}) };
      const res = await this.send(target, h, raw);
      if (![301, 302, 303, 307, 308].includes(res.status) || !res.headers.location) return res;
      res.body.resume();
      target = new URL(res.headers.location, target).toString();
    }
    throw new RegistryError(500, `too many redirects fetching ${url}`);
  }

  private async authenticate(header: string): Promise<void> {
    const { scheme, params } = parseChallenge(header);
    const basic = this.credentials
      ? `Basic ${Buffer.from(`${this.credentials.username}:${this.credentials.password}`).toString("base64")}`
      : undefined;
    if (scheme === "basic") {
      if (!basic) throw this.denied();
      this.authorization = basic;
      return;
    }
    if (scheme !== "bearer" || !params.realm) throw this.denied();
    const realm = new URL(params.realm);
    if (params.service) realm.searchParams.set("service", params.service);
    realm.searchParams.set("scope", params.scope ?? `repository:${this.ref.path}:pull`);
    const res = await this.send(realm.toString(), basic ? { Authorization: basic } : {});
    const body = await readBody(res.body, MAX_DOCUMENT_BYTES);
    if (res.status === 401 || res.status === 403)
      throw new RegistryError(
        401,
        `Head "${this.base}/v2/${this.ref.path}/manifests/${this.ref.tag ?? this.ref.digest}": unauthorized: incorrect username or password`,
      );
    if (res.status !== 200)
      throw new RegistryError(500, `getting a token from ${realm.host} failed: HTTP ${res.status}`);
    let parsed: z.infer<typeof TokenSchema>;
    try {
      parsed = TokenSchema.parse(JSON.parse(body.toString("utf8")));
    } catch {
      throw new RegistryError(500, `the token server ${realm.host} answered something that is not a token`);
    }
    const token = parsed.token ?? parsed.access_token;
    if (!token) throw new RegistryError(500, `the token server ${realm.host} gave no token`);
    this.authorization = `Bearer ${token}`;
  }

  denied(): RegistryError {
    return new RegistryError(
      404,
      `pull access denied for ${this.ref.domain === "docker.io" ? this.ref.path.replace(/^library\//, "") : `${this.ref.domain}/${this.ref.path}`}, repository does not exist or may require 'docker login'`,
    );
  }

  /** A manifest or index by tag or digest: its bytes, media type and digest header. */
  async manifest(reference: string): Promise<{ data: Buffer; mediaType: string; digestHeader: string | undefined }> {
    const res = await this.get(`/v2/${this.ref.path}/manifests/${reference}`, [...MANIFEST_TYPES, ...INDEX_TYPES]);
    if (res.status === 404) {
      res.body.resume();
      throw new RegistryError(
        404,
        `manifest for ${this.display(reference)} not found: manifest unknown: manifest unknown`,
      );
    }
    if (res.status === 401 || res.status === 403) {
      res.body.resume();
      throw this.denied();
    }
    if (res.status !== 200) {
      res.body.resume();
      throw new RegistryError(500, `fetching the manifest of ${this.display(reference)}: HTTP ${res.status}`);
    }
    const data = await readBody(res.body, MAX_DOCUMENT_BYTES);
    const mediaType =
      String(res.headers["content-type"] ?? "")
        .split(";")[0]!
        .trim() || MEDIA.ociManifest;
    const digestHeader = res.headers["docker-content-digest"];
    return { data, mediaType, digestHeader: typeof digestHeader === "string" ? digestHeader : undefined };
  }

  /**
   * A blob's bytes as they come. Over plain HTTP they are views of reused memory (rawget.ts): a reader that
   * is done with a chunk (wrote it) gives it back with releaseChunk; one that keeps it need not.
   */
  async blob(digest: string): Promise<Body> {
    const res = await this.get(`/v2/${this.ref.path}/blobs/${digest}`, [], true);
    if (res.status !== 200) {
      res.body.resume();
      throw new RegistryError(500, `fetching blob ${digest} of ${this.ref.path}: HTTP ${res.status}`);
    }
    return res.body;
  }

  private display(reference: string): string {
    const repo =
      this.ref.domain === "docker.io" ? this.ref.path.replace(/^library\//, "") : `${this.ref.domain}/${this.ref.path}`;
    return reference.startsWith("sha256:") ? `${repo}@${reference}` : `${repo}:${reference}`;
  }
}

/** A response body, refused when it is larger than `max` bytes. */
export async function readBody(body: Body, max: number): Promise<Buffer> {
  const parts: Buffer[] = [];
  let n = 0;
  for await (const chunk of body) {
    n += (chunk as Buffer).length;
    if (n > max) {
      body.destroy();
      throw new RegistryError(500, `a registry response is larger than ${max} bytes`);
    }
    parts.push(chunk as Buffer);
  }
  return Buffer.concat(parts);
}
