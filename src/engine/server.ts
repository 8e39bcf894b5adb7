// The Docker Engine API over HTTP/1.1 on a unix socket: what `shoal` and the real `docker` CLI talk to.
// This layer only speaks HTTP: it parses paths, query strings and bodies the way dockerd does, calls the
// SwarmBackend, and writes its answer (or its ApiError) in the shapes and words the docker CLI expects.

import { randomUUID } from "node:crypto";
import { chmod, lstat, mkdir, readdir, readFile, stat, unlink } from "node:fs/promises";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { connect } from "node:net";
import os from "node:os";
import { dirname } from "node:path";
import { fileURLToPath } from "node:url";
import type { Logger } from "pino";
import { API_VERSION, MIN_API_VERSION, VERSION } from "../version.js";
import { ApiError, badRequest } from "./errors.js";
import { parseFilters, validateFilterKeys } from "./filters.js";
import type {
  LocalNodeState,
  NodeListFilters,
  NodeSpec,
  SwarmBackend,
  SwarmInfo,
  SwarmInitRequest,
  SwarmJoinRequest,
  SwarmSpec,
} from "./types.js";

export interface EngineServerOptions {
  socketPath: string;
  backend: SwarmBackend;
  logger?: Logger;
  /** GitCommit of /version (default "unknown"). */
  gitCommit?: string;
  /** BuildTime of /version, RFC 3339 (default: when this module's file was written). */
  buildTime?: string;
  /** DockerRootDir of /info: the daemon's state directory (default "/var/lib/shoal"). */
  dataRoot?: string;
  /** ID of /info: the engine's identity, stable across restarts if the daemon persists it (default random). */
  engineId?: string;
}

/** Largest request body accepted (JSON specs are small). */
const MAX_BODY_BYTES = 4 * 1024 * 1024;
/** How long close() lets in-flight requests finish before cutting their connections. */
const CLOSE_GRACE_MS = 2000;

const NODE_FILTERS = ["id", "label", "node.label", "membership", "name", "role"] as const;

interface Ctx {
  req: IncomingMessage;
  res: ServerResponse;
  query: URLSearchParams;
  params: string[];
}

type Handler = (ctx: Ctx) => Promise<void>;

interface Route {
  method: string;
  re: RegExp;
  handler: Handler;
}

/** A path segment (gorilla/mux `{name}`): anything but a slash. */
const SEG = "([^/]+)";

export class EngineServer {
  readonly socketPath: string;
  private readonly backend: SwarmBackend;
  private readonly log: Logger | undefined;
  private readonly routes: Route[];
  private readonly gitCommit: string;
  private readonly buildTime: string;
  private readonly dataRoot: string;
  private readonly engineId: string;
  private operatingSystem = "Linux";
  private server: Server | undefined;
  private socketIno: number | undefined;
  private closing: Promise<void> | undefined;

  private constructor(opts: EngineServerOptions, buildTime: string) {
    this.socketPath = opts.socketPath;
    this.backend = opts.backend;
    this.log = opts.logger?.child({ component: "engine" });
    this.gitCommit = opts.gitCommit ?? "unknown";
    this.buildTime = opts.buildTime ?? buildTime;
    this.dataRoot = opts.dataRoot ?? "/var/lib/shoal";
    this.engineId = opts.engineId ?? randomUUID();
    const r = (method: string, path: string, handler: Handler): Route => ({
      method,
      re: new RegExp(`^${path}$`),
      handler: handler.bind(this),
    });
    this.routes = [
      r("GET", "/_ping", this.ping),
      r("HEAD", "/_ping", this.ping),
      r("GET", "/version", this.version),
      r("GET", "/info", this.info),
      r("GET", "/swarm", this.swarmInspect),
      r("POST", "/swarm/init", this.swarmInit),
      r("POST", "/swarm/join", this.swarmJoin),
      r("POST", "/swarm/leave", this.swarmLeave),
      r("POST", "/swarm/update", this.swarmUpdate),
      r("GET", "/nodes", this.nodeList),
      r("GET", `/nodes/${SEG}`, this.nodeInspect),
      r("POST", `/nodes/${SEG}/update`, this.nodeUpdate),
      r("DELETE", `/nodes/${SEG}`, this.nodeRemove),
    ];
  }

  /** Starts serving on opts.socketPath (parent directory created, stale socket removed, mode 0660). */
  static async listen(opts: EngineServerOptions): Promise<EngineServer> {
    const self = new EngineServer(opts, await moduleBuildTime());
    self.operatingSystem = await readOperatingSystem();
    await mkdir(dirname(opts.socketPath), { recursive: true });
    await removeStaleSocket(opts.socketPath);
    const server = createServer((req, res) => {
      void self.handle(req, res);
    });
    await new Promise<void>((resolve, reject) => {
      const onError = (err: Error) => reject(err);
      server.once("error", onError);
      server.listen(opts.socketPath, () => {
        server.off("error", onError);
        resolve();
      });
    });
    server.on("error", (err) => self.log?.error({ err }, "engine API server error"));
    self.server = server;
    await chmod(opts.socketPath, 0o660);
    self.socketIno = (await stat(opts.socketPath)).ino;
    self.log?.info({ socket: opts.socketPath }, "engine API listening");
    return self;
  }

  /** Stops accepting connections, lets in-flight requests finish (briefly), and removes the socket file. */
  close(): Promise<void> {
    this.closing ??= this.doClose();
    return this.closing;
  }

  private async doClose(): Promise<void> {
    const server = this.server;
    if (!server) return;
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    server.closeIdleConnections();
    const timer = setTimeout(() => server.closeAllConnections(), CLOSE_GRACE_MS);
    await closed;
    clearTimeout(timer);
    // Remove the socket file only if it is still ours (another server may have taken the path since).
    try {
      if ((await stat(this.socketPath)).ino === this.socketIno) await unlink(this.socketPath);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
    }
    this.log?.info({ socket: this.socketPath }, "engine API closed");
  }

  // ---- dispatch ---------------------------------------------------------------------------------------

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const started = process.hrtime.bigint();
    const rawUrl = req.url ?? "/";
    const q = rawUrl.indexOf("?");
    const rawPath = q < 0 ? rawUrl : rawUrl.slice(0, q);
    let path = rawPath;
    const query = new URLSearchParams(q < 0 ? "" : rawUrl.slice(q + 1));
    res.once("close", () => {
      const ms = Number(process.hrtime.bigint() - started) / 1e6;
      const status = res.writableFinished ? res.statusCode : 0; // 0: the client went away first
      this.log?.debug({ method: req.method, path: rawPath, status, ms: Math.round(ms * 100) / 100 }, "request");
    });
    try {
      const versioned = /^\/v([0-9.]+)(\/.*)$/.exec(path);
      if (versioned) path = versioned[2]!;
      for (const route of this.routes) {
        if (route.method !== req.method) continue;
        const m = route.re.exec(path);
        if (!m) continue;
        const params = m.slice(1).map(decodeSegment);
        if (params.some((p) => p === undefined)) break;
        // As in dockerd, the version is checked for known routes only (an unknown one is just not found).
        if (versioned) checkApiVersion(versioned[1]!);
        await route.handler({ req, res, query, params: params as string[] });
        return;
      }
      // dockerd answers an unknown path and a known path with the wrong method alike.
      throw new ApiError(404, "page not found");
    } catch (err) {
      this.sendError(req, res, err);
    }
  }

  private sendError(req: IncomingMessage, res: ServerResponse, err: unknown): void {
    const apiErr = err instanceof ApiError ? err : new ApiError(500, err instanceof Error ? err.message : String(err));
    if (!(err instanceof ApiError)) this.log?.error({ err, method: req.method, url: req.url }, "request failed");
    if (res.headersSent) {
      res.destroy();
      return;
    }
    // Unread request bytes would otherwise be taken for the next request on this connection.
    if (!req.complete) res.setHeader("Connection", "close");
    sendJSON(res, apiErr.status, { message: apiErr.message });
  }

  // ---- system -----------------------------------------------------------------------------------------

  private async ping({ req, res }: Ctx): Promise<void> {
    res.setHeader("Api-Version", API_VERSION);
    res.setHeader("Ostype", "linux");
    res.setHeader("Docker-Experimental", "false");
    res.setHeader("Swarm", await this.swarmStatus());
    res.setHeader("Cache-Control", "no-cache, no-store, must-revalidate");
    res.setHeader("Pragma", "no-cache");
    res.setHeader("Builder-Version", "1");
    res.setHeader("Content-Type", "text/plain; charset=utf-8");
    if (req.method === "HEAD") {
      res.setHeader("Content-Length", "0");
      res.writeHead(200).end();
      return;
    }
    res.setHeader("Content-Length", "2");
    res.writeHead(200).end("OK");
  }

  /** The Swarm header of /_ping: "inactive", "pending", "active/manager", "active/worker", ... */
  private async swarmStatus(): Promise<string> {
    let info: SwarmInfo;
    try {
      info = await this.backend.swarmInfo();
    } catch (err) {
      this.log?.warn({ err }, "swarm status unavailable for /_ping");
      return "error";
    }
    return swarmStatusOf(info.LocalNodeState, info.ControlAvailable);
  }

  private async version({ res }: Ctx): Promise<void> {
    const common = {
      Version: VERSION,
      ApiVersion: API_VERSION,
      MinAPIVersion: MIN_API_VERSION,
      GitCommit: this.gitCommit,
      GoVersion: `node ${process.version}`,
      Os: "linux",
      Arch: dockerArch(),
      KernelVersion: os.release(),
      BuildTime: this.buildTime,
    };
    sendJSON(res, 200, {
      Platform: { Name: "shoal" },
      Components: [
        {
          Name: "Engine",
          Version: VERSION,
          Details: {
            ApiVersion: API_VERSION,
            Arch: common.Arch,
            BuildTime: common.BuildTime,
            Experimental: "false",
            GitCommit: common.GitCommit,
            GoVersion: common.GoVersion,
            KernelVersion: common.KernelVersion,
            MinAPIVersion: MIN_API_VERSION,
            Os: common.Os,
          },
        },
      ],
      ...common,
    });
  }

  private async info({ res }: Ctx): Promise<void> {
    let swarm: SwarmInfo;
    try {
      swarm = await this.backend.swarmInfo();
    } catch (err) {
      // dockerd's /info never fails for swarm trouble: it reports it in Swarm.Error.
      this.log?.warn({ err }, "swarm info unavailable for /info");
      swarm = {
        NodeID: "",
        NodeAddr: "",
        LocalNodeState: "error",
        ControlAvailable: false,
        Error: err instanceof Error ? err.message : String(err),
        RemoteManagers: null,
      };
    }
    sendJSON(res, 200, {
      ID: this.engineId,
      Containers: 0,
      ContainersRunning: 0,
      ContainersPaused: 0,
      ContainersStopped: 0,
      Images: 0,
      Driver: "shoal",
      DriverStatus: [],
      Plugins: { Volume: [], Network: ["overlay"], Authorization: null, Log: [] },
      MemoryLimit: false,
      SwapLimit: false,
      CpuCfsPeriod: false,
      CpuCfsQuota: false,
      CPUShares: false,
      CPUSet: false,
      PidsLimit: false,
      IPv4Forwarding: true,
      Debug: this.log?.isLevelEnabled("debug") ?? false,
      NFd: await openFileCount(),
      OomKillDisable: false,
      NGoroutines: 0,
      SystemTime: rfc3339Nano(new Date()),
      LoggingDriver: "",
      CgroupDriver: "",
      CgroupVersion: "",
      NEventsListener: 0,
      KernelVersion: os.release(),
      OperatingSystem: this.operatingSystem,
      OSVersion: "",
      OSType: "linux",
      Architecture: os.machine(),
      IndexServerAddress: "https://index.docker.io/v1/",
      RegistryConfig: { InsecureRegistryCIDRs: [], IndexConfigs: {}, Mirrors: [] },
      NCPU: os.availableParallelism(),
      MemTotal: os.totalmem(),
      GenericResources: null,
      DockerRootDir: this.dataRoot,
      HttpProxy: "",
      HttpsProxy: "",
      NoProxy: "",
      Name: this.backend.hostname(),
      Labels: [],
      ExperimentalBuild: false,
      ServerVersion: VERSION,
      Runtimes: {},
      DefaultRuntime: "",
      Swarm: swarm,
      LiveRestoreEnabled: false,
      Isolation: "",
      InitBinary: "",
      ContainerdCommit: { ID: "" },
      RuncCommit: { ID: "" },
      InitCommit: { ID: "" },
      SecurityOptions: [],
      CDISpecDirs: [],
      Warnings: [],
    });
  }

  // ---- swarm ------------------------------------------------------------------------------------------

  private async swarmInspect({ res }: Ctx): Promise<void> {
    sendJSON(res, 200, await this.backend.swarmInspect());
  }

  private async swarmInit({ req, res }: Ctx): Promise<void> {
    const body = (await readJSONObject(req)) ?? {};
    const nodeId = await this.backend.swarmInit(body as SwarmInitRequest);
    // The docker CLI decodes the answer as a JSON string.
    sendJSON(res, 200, nodeId);
  }

  private async swarmJoin({ req, res }: Ctx): Promise<void> {
    const body = (await readJSONObject(req)) ?? {};
    if (body.RemoteAddrs === undefined || body.RemoteAddrs === null) body.RemoteAddrs = [];
    if (!Array.isArray(body.RemoteAddrs) || !body.RemoteAddrs.every((a) => typeof a === "string")) {
      throw badRequest("invalid JSON: RemoteAddrs must be an array of strings");
    }
    if (body.JoinToken === undefined || body.JoinToken === null) body.JoinToken = "";
    if (typeof body.JoinToken !== "string") throw badRequest("invalid JSON: JoinToken must be a string");
    await this.backend.swarmJoin(body as unknown as SwarmJoinRequest);
    sendEmpty(res);
  }

  private async swarmLeave({ res, query }: Ctx): Promise<void> {
    await this.backend.swarmLeave(boolValue(query, "force"));
    sendEmpty(res);
  }

  private async swarmUpdate({ req, res, query }: Ctx): Promise<void> {
    const version = parseVersion(query);
    const opts = {
      version,
      rotateWorkerToken: parseBoolParam(query, "rotateWorkerToken"),
      rotateManagerToken: parseBoolParam(query, "rotateManagerToken"),
      rotateManagerUnlockKey: parseBoolParam(query, "rotateManagerUnlockKey"),
    };
    const spec = await readJSONObject(req);
    if (spec === undefined) throw badRequest("invalid JSON: the request body must be the swarm's Spec");
    await this.backend.swarmUpdate(spec as unknown as SwarmSpec, opts);
    sendEmpty(res);
  }

  // ---- nodes ------------------------------------------------------------------------------------------

  private async nodeList({ res, query }: Ctx): Promise<void> {
    const filters = parseFilters(query.get("filters"));
    validateFilterKeys(filters, NODE_FILTERS);
    sendJSON(res, 200, await this.backend.nodeList(filters as NodeListFilters));
  }

  private async nodeInspect({ res, params }: Ctx): Promise<void> {
    sendJSON(res, 200, await this.backend.nodeInspect(params[0]!));
  }

  private async nodeUpdate({ req, res, query, params }: Ctx): Promise<void> {
    const version = parseVersion(query);
    const spec = await readJSONObject(req);
    if (spec === undefined) throw badRequest("invalid JSON: the request body must be the node's Spec");
    await this.backend.nodeUpdate(params[0]!, version, spec as unknown as NodeSpec);
    sendEmpty(res);
  }

  private async nodeRemove({ res, query, params }: Ctx): Promise<void> {
    await this.backend.nodeRemove(params[0]!, boolValue(query, "force"));
    sendEmpty(res);
  }
}

// ---- helpers ------------------------------------------------------------------------------------------

/** The Swarm header value dockerd derives from the local node state. */
export function swarmStatusOf(state: LocalNodeState, controlAvailable: boolean): string {
  if (state === "active") return controlAvailable ? "active/manager" : "active/worker";
  return state;
}

/** Compares dotted versions numerically, as dockerd's versions.Compare does ("1.9" < "1.24"). */
export function compareApiVersions(a: string, b: string): number {
  const pa = a.split(".");
  const pb = b.split(".");
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const x = Number.parseInt(pa[i] ?? "0", 10) || 0;
    const y = Number.parseInt(pb[i] ?? "0", 10) || 0;
    if (x !== y) return x < y ? -1 : 1;
  }
  return 0;
}

function checkApiVersion(v: string): void {
  if (compareApiVersions(v, API_VERSION) > 0) {
    throw badRequest(`client version ${v} is too new. Maximum supported API version is ${API_VERSION}`);
  }
  if (compareApiVersions(v, MIN_API_VERSION) < 0) {
    throw badRequest(
      `client version ${v} is too old. Minimum supported API version is ${MIN_API_VERSION}, please upgrade your client to a newer version`,
    );
  }
}

function decodeSegment(s: string | undefined): string | undefined {
  if (s === undefined) return undefined;
  try {
    return decodeURIComponent(s);
  } catch {
    return undefined;
  }
}

function sendJSON(res: ServerResponse, status: number, value: unknown): void {
  // Exactly "application/json": with a charset the docker CLI prints error bodies raw.
  const body = Buffer.from(`${JSON.stringify(value)}\n`, "utf8");
  res.writeHead(status, { "Content-Type": "application/json", "Content-Length": String(body.length) });
  res.end(body);
}

function sendEmpty(res: ServerResponse): void {
  res.writeHead(200, { "Content-Length": "0" });
  res.end();
}

/** dockerd's httputils.BoolValue: anything but "", "0", "no", "false", "none" is true. */
function boolValue(query: URLSearchParams, key: string): boolean {
  const s = (query.get(key) ?? "").trim().toLowerCase();
  return !(s === "" || s === "0" || s === "no" || s === "false" || s === "none");
}

/** A strict boolean query parameter (Go's strconv.ParseBool); absent → false. */
function parseBoolParam(query: URLSearchParams, key: string): boolean {
  const s = query.get(key);
  if (s === null || s === "") return false;
  if (["1", "t", "T", "true", "TRUE", "True"].includes(s)) return true;
  if (["0", "f", "F", "false", "FALSE", "False"].includes(s)) return false;
  throw badRequest(`invalid value for ${key}: ${s}`);
}

/** The `version` query parameter of an update (the object's current Version.Index). */
function parseVersion(query: URLSearchParams): number {
  const raw = query.get("version");
  if (raw === null || !/^[0-9]+$/.test(raw)) throw badRequest("invalid version");
  const n = Number(raw);
  if (!Number.isSafeInteger(n)) throw badRequest("invalid version");
  return n;
}

/**
 * Reads a JSON object body. An empty body gives undefined; anything but one JSON object is a 400, and so
 * is a Content-Type other than application/json.
 */
async function readJSONObject(req: IncomingMessage): Promise<Record<string, unknown> | undefined> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    const buf = chunk as Buffer;
    size += buf.length;
    if (size > MAX_BODY_BYTES) throw new ApiError(413, `request body is larger than ${MAX_BODY_BYTES} bytes`);
    chunks.push(buf);
  }
  const text = Buffer.concat(chunks).toString("utf8");
  if (text.trim() === "") return undefined;
  const ct = req.headers["content-type"];
  if (ct !== undefined && ct.split(";")[0]!.trim().toLowerCase() !== "application/json") {
    throw badRequest(`unsupported Content-Type header (${ct}): must be 'application/json'`);
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw badRequest(`invalid JSON: ${(err as Error).message}`);
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw badRequest("invalid JSON: the request body must be a JSON object");
  }
  return value as Record<string, unknown>;
}

/** Removes a socket file left by a daemon that is gone; refuses a live socket or a file that is no socket. */
async function removeStaleSocket(path: string): Promise<void> {
  let st: Awaited<ReturnType<typeof lstat>>;
  try {
    st = await lstat(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return;
    throw err;
  }
  if (!st.isSocket()) {
    throw new Error(`${path} exists and is not a socket: remove it or choose another socket path`);
  }
  const live = await new Promise<boolean>((resolve) => {
    const sock = connect(path);
    sock.once("connect", () => {
      sock.destroy();
      resolve(true);
    });
    sock.once("error", () => resolve(false));
  });
  if (live) throw new Error(`${path} is in use: another daemon is listening on it; stop it first`);
  await unlink(path);
}

/** Go's GOARCH names for Node's process.arch. */
function dockerArch(): string {
  switch (process.arch) {
    case "x64":
      return "amd64";
    case "ia32":
      return "386";
    case "ppc64":
      return os.endianness() === "LE" ? "ppc64le" : "ppc64";
    default:
      return process.arch;
  }
}

/** Go's RFC3339Nano-ish timestamp, as dockerd reports times. */
function rfc3339Nano(d: Date): string {
  return d.toISOString().replace(/\.(\d{3})Z$/, ".$1000000Z");
}

/** When this module's file was written: the build time of a dist/ tree, or of the source under test. */
async function moduleBuildTime(): Promise<string> {
  try {
    return rfc3339Nano((await stat(fileURLToPath(import.meta.url))).mtime);
  } catch {
    return "";
  }
}

async function readOperatingSystem(): Promise<string> {
  for (const f of ["/etc/os-release", "/usr/lib/os-release"]) {
    try {
      const text = await readFile(f, "utf8");
      const m = /^PRETTY_NAME=(.*)$/m.exec(text);
      if (m) return m[1]!.trim().replace(/^["']|["']$/g, "");
    } catch {
      // try the next one
    }
  }
  return "Linux";
}

async function openFileCount(): Promise<number> {
  try {
    return (await readdir("/proc/self/fd")).length;
  } catch {
    return -1;
  }
}
