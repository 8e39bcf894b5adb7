// The Engine API client: HTTP over the daemon's unix socket, the way the docker CLI talks to dockerd. The
// first call pings (HEAD /_ping) to negotiate the API version; every later path is /v<version>/...; errors
// come back as the words docker prints ("Error response from daemon: ...", "Cannot connect to ...").

import http from "node:http";
import { API_VERSION, VERSION } from "../src/version.js";

/** Where shoald listens unless told otherwise. */
export const DEFAULT_HOST = "unix:///run/shoal/shoald.sock";

/** An error to print on stderr (as it is) before exiting with `exitCode`. */
export class CliError extends Error {
  constructor(
    message: string,
    readonly exitCode = 1,
  ) {
    super(message);
  }
}

/** -H, else $SHOAL_HOST, else $DOCKER_HOST when it is a unix socket, else the default socket. */
export function resolveHost(flag: string | undefined, env: NodeJS.ProcessEnv = process.env): string {
  if (flag) return flag;
  if (env.SHOAL_HOST) return env.SHOAL_HOST;
  if (env.DOCKER_HOST?.startsWith("unix://")) return env.DOCKER_HOST;
  return DEFAULT_HOST;
}

/** The socket path of a unix:// host; anything else is refused, since shoald only listens on a socket. */
export function socketPathOf(host: string): string {
  // Like docker, a bare file system path means a unix socket.
  if (host.startsWith("/") || host.startsWith("./")) return host;
  if (!host.startsWith("unix://") || host.length <= "unix://".length) {
    throw new CliError(
      `invalid host ${JSON.stringify(host)}: shoal talks to shoald over its unix socket (unix:///path/to/shoald.sock)`,
    );
  }
  return host.slice("unix://".length);
}

/** Go's url.QueryEscape. */
export function queryEscape(s: string): string {
  return encodeURIComponent(s)
    .replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`)
    .replace(/%20/g, "+");
}

/** Go's url.URL.EscapedPath for a path the CLI built by string concatenation ("/nodes/" + ref). */
export function pathEscape(p: string): string {
  return encodeURIComponent(p)
    .replace(/%(2F|24|26|2B|2C|3A|3B|3D|40)/g, (_, hex: string) => String.fromCharCode(Number.parseInt(hex, 16)))
    .replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
}

/** A query string as Go's url.Values.Encode writes it: keys sorted. */
export function encodeQuery(q: Record<string, string | undefined>): string {
  return Object.keys(q)
    .filter((k) => q[k] !== undefined)
    .sort()
    .map((k) => `${queryEscape(k)}=${queryEscape(q[k]!)}`)
    .join("&");
}

function compareVersions(a: string, b: string): number {
  const pa = a.split(".").map((x) => Number.parseInt(x, 10) || 0);
  const pb = b.split(".").map((x) => Number.parseInt(x, 10) || 0);
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const d = (pa[i] ?? 0) - (pb[i] ?? 0);
    if (d !== 0) return d < 0 ? -1 : 1;
  }
  return 0;
}

interface RawResponse {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

const STATUS_TEXT = http.STATUS_CODES;

export interface RequestOptions {
  query?: Record<string, string | undefined>;
  /** Already encoded (see gojson.requestBody). */
  body?: string;
}

export class EngineClient {
  readonly socketPath: string;
  /** unix:///path, as errors name it. */
  readonly host: string;
  private negotiated: string | undefined;

  constructor(host: string) {
    this.socketPath = socketPathOf(host);
    this.host = `unix://${this.socketPath}`;
  }

  /** The API version in use: the daemon's if older than ours, ours otherwise (after the first call). */
  get apiVersion(): string {
    return this.negotiated ?? API_VERSION;
  }

  private connectError(err: NodeJS.ErrnoException): CliError {
    if (err.code === "EACCES" || err.code === "EPERM") {
      return new CliError(
        `permission denied while trying to connect to the shoal daemon socket at ${this.host}: dial unix ${this.socketPath}: connect: permission denied`,
      );
    }
    return new CliError(`Cannot connect to the shoal daemon at ${this.host}. Is the shoal daemon running?`);
  }

  private raw(method: string, path: string, body?: string): Promise<RawResponse> {
    return new Promise((resolve, reject) => {
      const headers: http.OutgoingHttpHeaders = { "User-Agent": `Shoal-Client/${VERSION} (${process.platform})` };
      if (body !== undefined) {
        headers["Content-Type"] = "application/json";
        headers["Content-Length"] = Buffer.byteLength(body);
      }
      const req = http.request({ socketPath: this.socketPath, method, path, headers, agent: false }, (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () =>
          resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString("utf8") }),
        );
        res.on("error", (e) => reject(this.connectError(e)));
      });
      req.on("error", (e: NodeJS.ErrnoException) => reject(this.connectError(e)));
      if (body !== undefined) req.write(body);
      req.end();
    });
  }

  /** The error docker makes of a response with status >= 400. */
  private responseError(res: RawResponse, path: string): CliError {
    if (res.body.length === 0) {
      const url = `http://${encodeURIComponent(this.socketPath)}${path}`;
      return new CliError(
        `request returned ${res.status} ${STATUS_TEXT[res.status] ?? ""} for API route and version ${url}, check if the server supports the requested API version`,
      );
    }
    if (res.headers["content-type"] === "application/json") {
      let message: unknown;
      try {
        message = (JSON.parse(res.body) as { message?: unknown } | null)?.message;
      } catch (e) {
        return new CliError(`Error reading JSON: ${(e as Error).message}`);
      }
      if (typeof message !== "string" || message === "") {
        return new CliError(
          `Error response from daemon: API returned a ${res.status} (${STATUS_TEXT[res.status] ?? ""}) but provided no error-message`,
        );
      }
      return new CliError(`Error response from daemon: ${message.trim()}`);
    }
    return new CliError(`Error response from daemon: ${res.body.trim()}`);
  }

  /** HEAD /_ping (GET if HEAD is not answered) and settle the API version: the older of ours and the daemon's. */
  async ping(): Promise<string> {
    if (this.negotiated) return this.negotiated;
    let res = await this.raw("HEAD", "/_ping");
    if (res.status !== 200 && res.status !== 500) res = await this.raw("GET", "/_ping");
    const header = res.headers["api-version"];
    const server = typeof header === "string" && header !== "" ? header : "1.24";
    this.negotiated = compareVersions(server, API_VERSION) < 0 ? server : API_VERSION;
    if (res.status >= 400) throw this.responseError(res, "/_ping");
    return this.negotiated;
  }

  /** A versioned call; resolves to the response body, throws the docker-worded error for status >= 400. */
  async call(method: string, path: string, opts: RequestOptions = {}): Promise<string> {
    const version = await this.ping();
    const query = opts.query ? encodeQuery(opts.query) : "";
    const full = `/v${version}${pathEscape(path)}${query ? `?${query}` : ""}`;
    const res = await this.raw(method, full, opts.body);
    if (res.status >= 400) throw this.responseError(res, full);
    return res.body;
  }

  /** A call whose answer is JSON. */
  async json<T = unknown>(method: string, path: string, opts: RequestOptions = {}): Promise<T> {
    const body = await this.call(method, path, opts);
    try {
      return JSON.parse(body) as T;
    } catch (e) {
      throw new CliError(`Error reading JSON: ${(e as Error).message}`);
    }
  }

  get<T = unknown>(path: string, query?: Record<string, string | undefined>): Promise<T> {
    return this.json<T>("GET", path, query ? { query } : {});
  }
}
