// The Docker Engine API over HTTP/1.1 on a unix socket: what `shoal` and the real `docker` CLI talk to.
// This layer only speaks HTTP: it parses paths, query strings and bodies the way dockerd does, calls the
// SwarmBackend (and the NetworkBackend and ContainerBackend when the daemon has them), and writes its
// answer (or its ApiError) in the shapes and words the docker CLI expects.
//
// Streams (logs, attach, exec) use Docker's framing when the container has no TTY: each chunk is an
// 8-byte header [stream, 0, 0, 0, size as big-endian uint32] and the bytes. Attach and exec start are
// "hijacked" when the client asks for an upgrade (`Connection: Upgrade`, `Upgrade: tcp`): the answer is
// `101 UPGRADED` and the connection then carries the stream out and the client's stdin in.

import { randomUUID } from "node:crypto";
import { chmod, lstat, mkdir, readdir, readFile, stat, unlink } from "node:fs/promises";
import { type IncomingMessage, type ServerResponse, STATUS_CODES } from "node:http";
import { connect, type Socket } from "node:net";
import os from "node:os";
import { dirname } from "node:path";
import { type Duplex, PassThrough } from "node:stream";
import { fileURLToPath } from "node:url";
import type { Logger } from "pino";
import { z } from "zod";
import { MAX_JSON_DEPTH } from "../api/limits.js";
import { parseJsonText } from "../api/schema.js";
import type { ImageService } from "../runtime/images/service.js";
import { API_VERSION, MIN_API_VERSION, VERSION } from "../version.js";
import { ApiError, badRequest, conflict, notManager, unavailable, workerNode } from "./errors.js";
import { matchKVList } from "./filters.js";
import {
  BodyBudget,
  bodyTooLarge,
  DEFAULT_HTTP_LIMITS,
  type HttpLimits,
  LimitedServer,
  readBody,
  writeWithBackpressure,
} from "./http.js";
import { ImageRoutes } from "./images.js";
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
  ExecCreateBody,
  ExecStartBody,
  execCreateFromRequest,
  ResizeQuery,
} from "./schemas/container.js";
import { decode } from "./schemas/decode.js";
import {
  endpointFromRequest,
  NetworkConnectBody,
  NetworkCreateBody,
  NetworkDisconnectBody,
  NetworkInspectQuery,
  NetworkListQuery,
  NetworkPruneQuery,
  networkSpecFromRequest,
} from "./schemas/network.js";
import { NodeListQuery, NodeRemoveQuery, NodeSpecBody, NodeUpdateQuery, nodeSpecFromRequest } from "./schemas/node.js";
import { decodeQuery, filtersParam } from "./schemas/query.js";
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
} from "./schemas/swarm.js";
import { parseTimestampMs } from "./timestamps.js";
import type {
  ContainerBackend,
  LocalNodeState,
  NetworkBackend,
  NetworkResource,
  NodeListFilters,
  SwarmBackend,
  SwarmInfo,
  WaitCondition,
} from "./types.js";
import { checkApiVersion, compareApiVersions } from "./versions.js";

export { compareApiVersions };

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
  /** The /networks routes (503 without). */
  networks?: NetworkBackend;
  /** The /containers and /exec routes (503 without). */
  containers?: ContainerBackend;
  /** Connection, time and size limits (tests shorten them). */
  limits?: Partial<HttpLimits>;
  /** The /images routes (503 without). */
  images?: ImageService;
}

/** How long close() lets in-flight requests finish before cutting their connections. */
const CLOSE_GRACE_MS = 2000;

/** Swarm objects shoal has none of: the path, the word dockerd's errors use, and the filters dockerd accepts. */
const SWARM_OBJECTS: [string, string, readonly string[]][] = [
  ["services", "service", ["id", "label", "mode", "name", "runtime"]],
  ["tasks", "task", ["_up-to-date", "desired-state", "id", "label", "name", "node", "runtime", "service"]],
  ["secrets", "secret", ["id", "label", "name", "names"]],
  ["configs", "config", ["id", "label", "name", "names"]],
];

/** Networks every Docker engine has; `type=builtin` lists them, `type=custom` the others. */
const BUILTIN_NETWORKS = ["bridge", "host", "none", "ingress", "docker_gwbridge"];

const MEDIA_RAW_STREAM = "application/vnd.docker.raw-stream";
const MEDIA_MULTIPLEXED_STREAM = "application/vnd.docker.multiplexed-stream";

/** A request that asked to take over the connection (attach, exec start). */
interface Upgrade {
  socket: Duplex;
  /** Bytes that came after the request head. */
  head: Buffer;
}

interface Ctx {
  req: IncomingMessage;
  /** Absent for an upgrade request: the handler writes on `upgrade.socket`. */
  res: ServerResponse;
  query: URLSearchParams;
  params: string[];
  /** The API version of the request path (the newest when unversioned). */
  version: string;
  upgrade?: Upgrade;
}

type Handler = (ctx: Ctx) => Promise<void>;

interface Route {
  method: string;
  re: RegExp;
  handler: Handler;
  /** The route can take over the connection (an upgrade request goes nowhere else). */
  hijack?: boolean;
}

/** A path segment (gorilla/mux `{name}`): anything but a slash. */
const SEG = "([^/]+)";

export class EngineServer {
  readonly socketPath: string;
  private readonly backend: SwarmBackend;
  private readonly networksBackend: NetworkBackend | undefined;
  private readonly containersBackend: ContainerBackend | undefined;
  private readonly imageRoutes: ImageRoutes;
  private readonly log: Logger | undefined;
  private readonly routes: Route[];
  private readonly gitCommit: string;
  private readonly buildTime: string;
  private readonly dataRoot: string;
  private readonly engineId: string;
  private operatingSystem = "Linux";
  private readonly limits: HttpLimits;
  private readonly bodyBudget: BodyBudget;
  private server: LimitedServer | undefined;
  private socketIno: number | undefined;
  private closing: Promise<void> | undefined;
  /** Connections handed over to streams (the HTTP server no longer tracks them). */
  private readonly hijacked = new Set<Duplex>();
  /** A network prune is running (dockerd runs one at a time). */
  private pruning = false;

  private constructor(opts: EngineServerOptions, buildTime: string) {
    this.socketPath = opts.socketPath;
    this.backend = opts.backend;
    this.networksBackend = opts.networks;
    this.containersBackend = opts.containers;
    const images = opts.images;
    this.imageRoutes = new ImageRoutes(
      () => {
        if (!images) throw unavailable("this daemon runs no containers: it has no images");
        return images;
      },
      opts.logger?.child({ component: "engine" }),
    );
    this.log = opts.logger?.child({ component: "engine" });
    this.gitCommit = opts.gitCommit ?? "unknown";
    this.buildTime = opts.buildTime ?? buildTime;
    this.dataRoot = opts.dataRoot ?? "/var/lib/shoal";
    this.engineId = opts.engineId ?? randomUUID();
    this.limits = { ...DEFAULT_HTTP_LIMITS, ...opts.limits };
    this.bodyBudget = new BodyBudget(this.limits.bodyBudgetBytes);
    const r = (method: string, path: string, handler: Handler, hijack = false): Route => ({
      method,
      re: new RegExp(`^${path}$`),
      handler: handler.bind(this),
      hijack,
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
      r("GET", "/swarm/unlockkey", this.swarmUnlockKey),
      r("POST", "/swarm/unlock", this.swarmUnlock),
      r("GET", "/nodes", this.nodeList),
      r("GET", `/nodes/${SEG}`, this.nodeInspect),
      r("POST", `/nodes/${SEG}/update`, this.nodeUpdate),
      r("DELETE", `/nodes/${SEG}`, this.nodeRemove),
      r("GET", "/networks", this.networkList),
      r("GET", "/networks/", this.networkList),
      r("POST", "/networks/create", this.networkCreate),
      r("POST", "/networks/prune", this.networkPrune),
      r("GET", `/networks/${SEG}`, this.networkInspect),
      r("DELETE", `/networks/${SEG}`, this.networkRemove),
      r("POST", `/networks/${SEG}/connect`, this.networkConnect),
      r("POST", `/networks/${SEG}/disconnect`, this.networkDisconnect),
      ...this.noServiceRoutes(r),
      r("POST", "/containers/create", this.containerCreate),
      r("GET", "/containers/json", this.containerList),
      r("GET", `/containers/${SEG}/json`, this.containerInspect),
      r("POST", `/containers/${SEG}/start`, this.containerStart),
      r("POST", `/containers/${SEG}/stop`, this.containerStop),
      r("POST", `/containers/${SEG}/restart`, this.containerRestart),
      r("POST", `/containers/${SEG}/kill`, this.containerKill),
      r("POST", `/containers/${SEG}/wait`, this.containerWait),
      r("POST", `/containers/${SEG}/resize`, this.containerResize),
      r("DELETE", `/containers/${SEG}`, this.containerRemove),
      r("GET", `/containers/${SEG}/logs`, this.containerLogs),
      r("POST", `/containers/${SEG}/attach`, this.containerAttach, true),
      r("POST", `/containers/${SEG}/exec`, this.execCreate),
      r("POST", `/exec/${SEG}/start`, this.execStart, true),
      r("POST", `/exec/${SEG}/resize`, this.execResize),
      r("GET", `/exec/${SEG}/json`, this.execInspect),
      r("GET", `/containers/${SEG}/top`, this.containerTop),
      r("GET", "/images/json", (ctx) => this.imageRoutes.list(ctx)),
      r("POST", "/images/create", (ctx) => this.imageRoutes.pull(ctx)),
      r("POST", "/images/load", (ctx) => this.imageRoutes.load(ctx)),
      r("GET", "/images/get", (ctx) => this.imageRoutes.save(ctx)),
      r("GET", "/images/(.+)/get", (ctx) => this.imageRoutes.save(ctx)),
      r("GET", "/images/(.+)/json", (ctx) => this.imageRoutes.inspect(ctx)),
      r("POST", "/images/(.+)/tag", (ctx) => this.imageRoutes.tag(ctx)),
      r("DELETE", "/images/(.+)", (ctx) => this.imageRoutes.remove(ctx)),
    ];
  }

  /** Starts serving on opts.socketPath (parent directory created, stale socket removed, mode 0660). */
  static async listen(opts: EngineServerOptions): Promise<EngineServer> {
    const self = new EngineServer(opts, await moduleBuildTime());
    self.operatingSystem = await readOperatingSystem();
    await mkdir(dirname(opts.socketPath), { recursive: true });
    await removeStaleSocket(opts.socketPath);
    const server = new LimitedServer(
      self.limits,
      (req, res) => void self.handle(req, res),
      (req, socket, head) => void self.handleUpgrade(req, socket, head),
    );
    await new Promise<void>((resolve, reject) => {
      const onError = (err: Error) => reject(err);
      server.http.once("error", onError);
      server.http.listen(opts.socketPath, () => {
        server.http.off("error", onError);
        resolve();
      });
    });
    server.http.on("error", (err) => self.log?.error({ err }, "engine API server error"));
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
    const closed = new Promise<void>((resolve) => server.http.close(() => resolve()));
    server.http.closeIdleConnections();
    const timer = setTimeout(() => {
      server.http.closeAllConnections();
      for (const s of this.hijacked) s.destroy();
      server.destroyAll();
    }, CLOSE_GRACE_MS);
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
        const version = versioned ? versioned[1]! : API_VERSION;
        await route.handler({ req, res, query, params: params as string[], version });
        return;
      }
      // dockerd answers an unknown path and a known path with the wrong method alike.
      throw new ApiError(404, "page not found");
    } catch (err) {
      this.sendError(req, res, err);
    }
  }

  /** An upgrade request: only the routes that can take over a connection answer it. */
  private async handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    socket.on("error", (err) => this.log?.debug({ err }, "hijacked connection error"));
    const rawUrl = req.url ?? "/";
    const q = rawUrl.indexOf("?");
    let path = q < 0 ? rawUrl : rawUrl.slice(0, q);
    const query = new URLSearchParams(q < 0 ? "" : rawUrl.slice(q + 1));
    this.log?.debug({ method: req.method, path }, "upgrade request");
    try {
      const versioned = /^\/v([0-9.]+)(\/.*)$/.exec(path);
      if (versioned) path = versioned[2]!;
      for (const route of this.routes) {
        if (route.method !== req.method || !route.hijack) continue;
        const m = route.re.exec(path);
        if (!m) continue;
        const params = m.slice(1).map(decodeSegment);
        if (params.some((p) => p === undefined)) break;
        if (versioned) checkApiVersion(versioned[1]!);
        const version = versioned ? versioned[1]! : API_VERSION;
        this.hijacked.add(socket);
        socket.once("close", () => this.hijacked.delete(socket));
        await route.handler({
          req,
          res: undefined as unknown as ServerResponse,
          query,
          params: params as string[],
          version,
          upgrade: { socket, head },
        });
        return;
      }
      throw new ApiError(404, "page not found");
    } catch (err) {
      const apiErr =
        err instanceof ApiError ? err : new ApiError(500, err instanceof Error ? err.message : String(err));
      if (!(err instanceof ApiError)) this.log?.error({ err, method: req.method, url: req.url }, "request failed");
      writeRawError(socket, apiErr);
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
    const counts = this.containersBackend?.containerCounts() ?? { total: 0, running: 0, paused: 0, stopped: 0 };
    const firewall = await this.backend.firewallInfo?.().catch((err: unknown) => {
      this.log?.warn({ err }, "firewall backend unavailable for /info");
      return undefined;
    });
    sendJSON(res, 200, {
      ID: this.engineId,
      Containers: counts.total,
      ContainersRunning: counts.running,
      ContainersPaused: counts.paused,
      ContainersStopped: counts.stopped,
      Images: 0,
      Driver: "shoal",
      // docker info (28.2) prints these pairs under "Storage Driver"; newer CLIs also read FirewallBackend.
      DriverStatus: firewall ? firewallStatusPairs(firewall) : [],
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
      ...(firewall ? { FirewallBackend: firewall } : {}),
      CDISpecDirs: [],
      Warnings: [],
    });
  }

  // ---- request bodies ---------------------------------------------------------------------------------

  /**
   * Reads the request's JSON body within the limits and decodes it against `schema` (an empty body is
   * null, which Go decodes to the zero value). `empty` answers instead when the body is empty.
   */
  private async body<S extends z.ZodType>(
    { req, res }: Ctx,
    schema: S,
    what: string,
    empty?: () => ApiError,
  ): Promise<z.infer<S>> {
    const { body, release } = await readBody(req, this.limits, this.bodyBudget);
    res.once("close", release);
    const value = parseBodyJson(req, body);
    if (value === undefined && empty) throw empty();
    return decode(schema, value ?? null, what);
  }

  // ---- swarm ------------------------------------------------------------------------------------------

  private async swarmInspect({ res }: Ctx): Promise<void> {
    sendJSON(res, 200, await this.backend.swarmInspect());
  }

  private async swarmInit(ctx: Ctx): Promise<void> {
    const r = await this.body(ctx, SwarmInitBody, "swarm init request");
    const nodeId = await this.backend.swarmInit(swarmInitFromRequest(r, ctx.version));
    // The docker CLI decodes the answer as a JSON string.
    sendJSON(ctx.res, 200, nodeId);
  }

  private async swarmJoin(ctx: Ctx): Promise<void> {
    const r = await this.body(ctx, SwarmJoinBody, "swarm join request");
    await this.backend.swarmJoin(swarmJoinFromRequest(r));
    sendEmpty(ctx.res);
  }

  private async swarmLeave({ res, query }: Ctx): Promise<void> {
    await this.backend.swarmLeave(decodeQuery(SwarmLeaveQuery, query).force);
    sendEmpty(res);
  }

  private async swarmUpdate(ctx: Ctx): Promise<void> {
    // As dockerd: the body first, then the version and flags.
    const spec = swarmSpecFromRequest(await this.body(ctx, SwarmSpecBody, "swarm spec"));
    const q = decodeQuery(SwarmUpdateQuery, ctx.query);
    await this.backend.swarmUpdate(spec, {
      version: q.version,
      rotateWorkerToken: q.rotateWorkerToken,
      rotateManagerToken: q.rotateManagerToken,
      rotateManagerUnlockKey: q.rotateManagerUnlockKey,
    });
    sendEmpty(ctx.res);
  }

  private async swarmUnlockKey({ res }: Ctx): Promise<void> {
    sendJSON(res, 200, { UnlockKey: await this.backend.swarmUnlockKey() });
  }

  private async swarmUnlock(ctx: Ctx): Promise<void> {
    const body = await this.body(ctx, SwarmUnlockBody, "swarm unlock request");
    await this.backend.swarmUnlock(body?.UnlockKey ?? "");
    sendEmpty(ctx.res);
  }

  // ---- nodes ------------------------------------------------------------------------------------------

  private async nodeList({ res, query }: Ctx): Promise<void> {
    const { filters } = decodeQuery(NodeListQuery, query);
    sendJSON(res, 200, await this.backend.nodeList(filters as NodeListFilters));
  }

  private async nodeInspect({ res, params }: Ctx): Promise<void> {
    sendJSON(res, 200, await this.backend.nodeInspect(params[0]!));
  }

  private async nodeUpdate(ctx: Ctx): Promise<void> {
    const spec = nodeSpecFromRequest(await this.body(ctx, NodeSpecBody, "node spec"));
    const { version } = decodeQuery(NodeUpdateQuery, ctx.query);
    await this.backend.nodeUpdate(ctx.params[0]!, version, spec);
    sendEmpty(ctx.res);
  }

  private async nodeRemove({ res, query, params }: Ctx): Promise<void> {
    await this.backend.nodeRemove(params[0]!, decodeQuery(NodeRemoveQuery, query).force);
    sendEmpty(res);
  }

  // ---- networks ---------------------------------------------------------------------------------------

  private networks(): NetworkBackend {
    if (!this.networksBackend)
      throw unavailable("networks are not available: this daemon runs without a network backend");
    return this.networksBackend;
  }

  private async networkList({ res, query }: Ctx): Promise<void> {
    const { filters } = decodeQuery(NetworkListQuery, query);
    const list = await this.networks().networkList(filters);
    sendJSON(res, 200, filterNetworks(list, filters));
  }

  private async networkInspect({ res, params, query }: Ctx): Promise<void> {
    // `verbose` adds the services on the network in dockerd: shoal runs no services, so there are none.
    const { scope } = decodeQuery(NetworkInspectQuery, query);
    const ref = params[0]!;
    // shoal's networks are all swarm-scoped: asked for another scope, there is no such network.
    if (scope && scope !== "swarm") throw new ApiError(404, `network ${ref} not found`);
    sendJSON(res, 200, await this.networks().networkInspect(ref));
  }

  private async networkCreate(ctx: Ctx): Promise<void> {
    const spec = networkSpecFromRequest(await this.body(ctx, NetworkCreateBody, "network create request"));
    sendJSON(ctx.res, 201, await this.networks().networkCreate(spec));
  }

  private async networkRemove({ res, params }: Ctx): Promise<void> {
    await this.networks().networkRemove(params[0]!);
    sendNoContent(res);
  }

  /**
   * POST /networks/prune, as dockerd does it: on a manager, every network but ingress that matches the
   * filters is removed unless it is in use; a worker may remove none. Answers the names removed.
   */
  private async networkPrune({ res, query }: Ctx): Promise<void> {
    const { filters } = decodeQuery(NetworkPruneQuery, query);
    const until = pruneUntil(filters.until);
    if (this.pruning) throw conflict("a prune operation is already running");
    this.pruning = true;
    try {
      const deleted: string[] = [];
      const info = await this.backend.swarmInfo();
      if (info.LocalNodeState === "active" && info.ControlAvailable) {
        for (const n of await this.networks().networkList({})) {
          if (n.Ingress) continue;
          if (until !== undefined && Date.parse(n.Created) > until) continue;
          if (!pruneLabelsMatch(filters, n.Labels ?? {})) continue;
          try {
            await this.networks().networkRemove(n.Id);
            deleted.push(n.Name);
          } catch (err) {
            // In use (or gone meanwhile): not for pruning now.
            this.log?.debug({ err, network: n.Name }, "network prune skipped a network");
          }
        }
      }
      sendJSON(res, 200, { NetworksDeleted: deleted.length > 0 ? deleted : null });
    } finally {
      this.pruning = false;
    }
  }

  private async networkConnect(ctx: Ctx): Promise<void> {
    const r = await this.body(ctx, NetworkConnectBody, "network connect request");
    if (!r.Container) throw badRequest("invalid network connect request: Container must name the container to connect");
    await this.networks().networkConnect(ctx.params[0]!, r.Container, endpointFromRequest(r.EndpointConfig));
    sendEmpty(ctx.res);
  }

  private async networkDisconnect(ctx: Ctx): Promise<void> {
    const r = await this.body(ctx, NetworkDisconnectBody, "network disconnect request");
    if (!r.Container) {
      throw badRequest("invalid network disconnect request: Container must name the container to disconnect");
    }
    await this.networks().networkDisconnect(ctx.params[0]!, r.Container, r.Force ?? false);
    sendEmpty(ctx.res);
  }

  // ---- services, tasks, secrets, configs: shoal runs none ------------------------------------------------

  /**
   * Swarm's other objects. shoal runs no services, so on a manager there are none of them: lists are empty
   * (`docker node ps` lists a node's tasks), an id is not found, and creating one is refused saying why.
   */
  private noServiceRoutes(r: (method: string, path: string, handler: Handler) => Route): Route[] {
    const out: Route[] = [];
    for (const [plural, kind, filters] of SWARM_OBJECTS) {
      const list: Handler = async ({ req, res, query }) => {
        await this.requireManager();
        decodeQuery(z.object({ filters: filtersParam(filters) }), query);
        await discardBody(req, this.limits, this.bodyBudget);
        sendJSON(res, 200, []);
      };
      const missing: Handler = async ({ req, params }) => {
        await this.requireManager();
        await discardBody(req, this.limits, this.bodyBudget);
        throw new ApiError(404, `${kind} ${params[0]} not found`);
      };
      const create: Handler = async ({ req }) => {
        await this.requireManager();
        await discardBody(req, this.limits, this.bodyBudget);
        throw new ApiError(
          501,
          `shoal runs no ${plural}: it manages nodes and overlay networks, and containers started with docker run`,
        );
      };
      out.push(
        r("GET", `/${plural}`, list),
        r("POST", `/${plural}/create`, create),
        r("GET", `/${plural}/${SEG}`, missing),
        r("POST", `/${plural}/${SEG}/update`, missing),
        r("DELETE", `/${plural}/${SEG}`, missing),
      );
      if (plural === "services" || plural === "tasks") out.push(r("GET", `/${plural}/${SEG}/logs`, missing));
    }
    return out;
  }

  /** 503 in dockerd's words unless this node is a manager of an active swarm. */
  private async requireManager(): Promise<void> {
    const info = await this.backend.swarmInfo();
    if (info.LocalNodeState !== "active") throw notManager();
    if (!info.ControlAvailable) throw workerNode();
  }

  // ---- containers -------------------------------------------------------------------------------------

  private containers(): ContainerBackend {
    if (!this.containersBackend) {
      throw unavailable("containers are not available: this daemon runs without a container runtime");
    }
    return this.containersBackend;
  }

  private async containerCreate(ctx: Ctx): Promise<void> {
    const q = decodeQuery(ContainerCreateQuery, ctx.query);
    if (q.platform && !/^linux(\/|$)/.test(q.platform)) {
      throw badRequest(`shoal runs Linux containers only: platform "${q.platform}" is not supported`);
    }
    const r = await this.body(ctx, ContainerCreateBody, "container config", () =>
      badRequest("config cannot be empty in order to create a container"),
    );
    const name = q.name || undefined;
    sendJSON(ctx.res, 201, await this.containers().containerCreate(name, containerCreateFromRequest(r)));
  }

  private async containerList({ res, query }: Ctx): Promise<void> {
    const q = decodeQuery(ContainerListQuery, query);
    const limit = q.limit ?? -1;
    let list = await this.containers().containerList({ all: q.all || limit > 0, filters: q.filters });
    if (limit > 0) list = list.slice(0, limit);
    sendJSON(res, 200, list);
  }

  private async containerInspect({ res, params, query }: Ctx): Promise<void> {
    decodeQuery(ContainerInspectQuery, query);
    sendJSON(res, 200, await this.containers().containerInspect(params[0]!));
  }

  private async containerStart({ req, res, params, query }: Ctx): Promise<void> {
    // dockerd: a body of more than 7 bytes (the shortest non-empty JSON object) is the HostConfig of old.
    const length = req.headers["content-length"];
    if ((length !== undefined && Number(length) > 7) || req.headers["transfer-encoding"] !== undefined) {
      throw badRequest(
        "starting container with non-empty request body was deprecated since API v1.22 and removed in v1.24",
      );
    }
    const { release } = await readBody(req, this.limits, this.bodyBudget);
    release();
    const q = decodeQuery(ContainerStartQuery, query);
    if (q.checkpoint || q["checkpoint-dir"]) throw badRequest("checkpoints are not supported by shoal");
    const started = await this.containers().containerStart(params[0]!);
    sendNoContent(res, started ? 204 : 304);
  }

  private stopOptions(query: URLSearchParams): { timeout?: number; signal?: string } {
    const q = decodeQuery(ContainerStopQuery, query);
    return { ...(q.t !== undefined ? { timeout: q.t } : {}), ...(q.signal ? { signal: q.signal } : {}) };
  }

  private async containerStop({ res, query, params }: Ctx): Promise<void> {
    const stopped = await this.containers().containerStop(params[0]!, this.stopOptions(query));
    sendNoContent(res, stopped ? 204 : 304);
  }

  private async containerRestart({ res, query, params }: Ctx): Promise<void> {
    const containers = this.containers();
    await containers.containerStop(params[0]!, this.stopOptions(query));
    await containers.containerStart(params[0]!);
    sendNoContent(res);
  }

  private async containerKill({ res, query, params }: Ctx): Promise<void> {
    const { signal } = decodeQuery(ContainerKillQuery, query);
    await this.containers().containerKill(params[0]!, signal || "SIGKILL");
    sendNoContent(res);
  }

  private async containerWait({ res, query, params }: Ctx): Promise<void> {
    const condition = decodeQuery(ContainerWaitQuery, query).condition || "not-running";
    if (condition !== "not-running" && condition !== "next-exit" && condition !== "removed") {
      throw badRequest(`invalid condition: "${condition}"`);
    }
    const pending = await this.containers().containerWait(params[0]!, condition as WaitCondition);
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

  private async containerRemove({ res, query, params }: Ctx): Promise<void> {
    const q = decodeQuery(ContainerRemoveQuery, query);
    if (q.link) throw badRequest("shoal has no container links to remove");
    await this.containers().containerRemove(params[0]!, { force: q.force });
    sendNoContent(res);
  }

  private async containerLogs({ res, query, params, version }: Ctx): Promise<void> {
    const q = decodeQuery(ContainerLogsQuery, query);
    if (!q.stdout && !q.stderr) throw badRequest("Bad parameters: you must choose at least one stream");
    const stream = await this.containers().containerLogs(params[0]!, {
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

  private async containerAttach({ req, res, query, params, version, upgrade }: Ctx): Promise<void> {
    const opts = decodeQuery(ContainerAttachQuery, query);
    const input = upgrade ? await upgradeInput(req, upgrade, this.limits.maxBodyBytes) : undefined;
    const session = await this.containers().containerAttach(params[0]!, {
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

  private async execCreate(ctx: Ctx): Promise<void> {
    const r = await this.body(ctx, ExecCreateBody, "exec configuration", () =>
      badRequest("invalid JSON: the request body must be the exec's configuration"),
    );
    const id = await this.containers().execCreate(ctx.params[0]!, execCreateFromRequest(r));
    sendJSON(ctx.res, 201, { Id: id });
  }

  private async execStart(ctx: Ctx): Promise<void> {
    const { req, res, params, version, upgrade } = ctx;
    const input = upgrade ? await upgradeInput(req, upgrade, this.limits.maxBodyBytes) : undefined;
    const body = input
      ? decode(ExecStartBody, parseUpgradeBody(input.body, this.limits.maxBodyBytes), "exec start request")
      : await this.body(ctx, ExecStartBody, "exec start request");
    const session = await this.containers().execStart(params[0]!);
    if (body.Detach === true) {
      void session
        .run({ output: () => undefined })
        .catch((err: unknown) => this.log?.warn({ err }, "detached exec failed"));
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

  /** POST /containers/{id}/resize: the TTY of a running container takes the client's terminal size. */
  private async containerResize({ res, query, params }: Ctx): Promise<void> {
    const { h, w } = decodeResize(query);
    await this.containers().containerResize?.(params[0]!, h, w);
    sendEmpty(res);
  }

  private async execResize({ res, query, params }: Ctx): Promise<void> {
    const { h, w } = decodeResize(query);
    await this.containers().execResize?.(params[0]!, h, w);
    sendEmpty(res);
  }

  private async containerTop({ res, query, params }: Ctx): Promise<void> {
    sendJSON(res, 200, await this.containers().containerTop(params[0]!, query.get("ps_args") ?? ""));
  }

  private async execInspect({ res, params }: Ctx): Promise<void> {
    sendJSON(res, 200, await this.containers().execInspect(params[0]!));
  }
}

// ---- helpers ------------------------------------------------------------------------------------------

/** The Swarm header value dockerd derives from the local node state. */
export function swarmStatusOf(state: LocalNodeState, controlAvailable: boolean): string {
  if (state === "active") return controlAvailable ? "active/manager" : "active/worker";
  return state;
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

function sendNoContent(res: ServerResponse, status = 204): void {
  res.writeHead(status);
  res.end();
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
function parseUpgradeBody(text: string, maxBytes: number): unknown {
  if (text.trim() === "") return null;
  return parseJsonText(text, "JSON", maxBytes, MAX_JSON_DEPTH);
}

/** Reads a body the route does not use, within the limits (so the connection can carry the next request). */
async function discardBody(req: IncomingMessage, limits: HttpLimits, budget: BodyBudget): Promise<void> {
  const { release } = await readBody(req, limits, budget);
  release();
}

/** `since`/`until` of logs: Unix seconds, with fractions ("1700000000.5"); absent or 0: no bound. */
function timeParam(key: string, raw: string | undefined): number {
  if (raw === undefined || raw === "") return 0;
  const n = Number(raw);
  if (!Number.isFinite(n)) throw badRequest(`invalid value for ${key}: ${raw}`);
  return n;
}

/** h and w of a resize: both required, as dockerd's strconv.Atoi reads them. */
function decodeResize(query: URLSearchParams): { h: number; w: number } {
  const { h, w } = decodeQuery(ResizeQuery, query);
  if (h === undefined) throw badRequest('strconv.Atoi: parsing "": invalid syntax');
  if (w === undefined) throw badRequest('strconv.Atoi: parsing "": invalid syntax');
  if (h < 0 || w < 0 || h > 65535 || w > 65535) throw badRequest(`invalid terminal size ${w}x${h}`);
  return { h, w };
}

/** The `until` filter of a prune, as dockerd reads it: a duration ago, a time, or Unix seconds. */
function pruneUntil(values: string[] | undefined): number | undefined {
  if (!values || values.length === 0) return undefined;
  if (values.length > 1) throw badRequest("more than one until filter specified");
  return parseTimestampMs(values[0]!, Date.now());
}

/** dockerd's matchLabels for prune: every `label` holds, and not every `label!` does. */
function pruneLabelsMatch(f: Record<string, string[]>, labels: Record<string, string>): boolean {
  if (!matchKVList(f.label, labels)) return false;
  if ((f["label!"]?.length ?? 0) > 0 && matchKVList(f["label!"], labels)) return false;
  return true;
}

/** dockerd's media type of a stream: multiplexed frames without a TTY (API 1.42+ says so). */
function streamMediaType(tty: boolean, version: string): string {
  return !tty && compareApiVersions(version, "1.42") >= 0 ? MEDIA_MULTIPLEXED_STREAM : MEDIA_RAW_STREAM;
}

/** One chunk of Docker's multiplexed stream: [stream, 0, 0, 0, size (BE32)] then the bytes. */
export function frame(stream: 0 | 1 | 2, data: Buffer): Buffer {
  const header = Buffer.alloc(8);
  header[0] = stream;
  header.writeUInt32BE(data.length, 4);
  return Buffer.concat([header, data]);
}

/** An answer written straight on a connection (one that asked for an upgrade). */
function writeRawResponse(
  socket: Duplex,
  status: number,
  reason: string,
  headers: Record<string, string>,
  body: string,
): void {
  if (socket.destroyed) return;
  const bytes = Buffer.from(body, "utf8");
  const head = [`HTTP/1.1 ${status} ${reason}`];
  for (const [k, v] of Object.entries({ ...headers, "Content-Length": String(bytes.length), Connection: "close" })) {
    head.push(`${k}: ${v}`);
  }
  socket.end(Buffer.concat([Buffer.from(`${head.join("\r\n")}\r\n\r\n`), bytes]));
}

function writeRawError(socket: Duplex, err: ApiError): void {
  writeRawResponse(
    socket,
    err.status,
    STATUS_CODES[err.status] ?? "Error",
    { "Content-Type": "application/json" },
    `${JSON.stringify({ message: err.message })}\n`,
  );
}

/**
 * The body of an upgrade request (Content-Length bytes after the head) and, after it, what the client
 * sends next: its stdin.
 */
async function upgradeInput(
  req: IncomingMessage,
  up: Upgrade,
  maxBytes: number,
): Promise<{ body: string; stream: PassThrough }> {
  const length = Number(req.headers["content-length"] ?? "0");
  if (!Number.isSafeInteger(length) || length < 0) throw badRequest("invalid Content-Length");
  if (length > maxBytes) throw bodyTooLarge(maxBytes);
  let buf = up.head;
  if (buf.length < length) {
    buf = await new Promise<Buffer>((resolve, reject) => {
      const chunks: Buffer[] = [buf];
      let size = buf.length;
      const onData = (c: Buffer): void => {
        chunks.push(c);
        size += c.length;
        if (size >= length) {
          cleanup();
          resolve(Buffer.concat(chunks));
        }
      };
      const onEnd = (): void => {
        cleanup();
        reject(badRequest("the request body ended early"));
      };
      const cleanup = (): void => {
        up.socket.off("data", onData);
        up.socket.off("end", onEnd);
        up.socket.pause();
      };
      up.socket.on("data", onData);
      up.socket.once("end", onEnd);
      up.socket.resume();
    });
  }
  const stream = new PassThrough();
  const rest = buf.subarray(length);
  if (rest.length > 0) stream.write(rest);
  up.socket.pipe(stream);
  return { body: buf.subarray(0, length).toString("utf8"), stream };
}

interface StreamOut {
  readonly closed: boolean;
  /** Resolves once the client has taken the bytes (false: the stream is closed). */
  write(b: Buffer): Promise<boolean>;
  end(): void;
  onClose(f: () => void): void;
}

/** Starts a stream answer: 101 on a hijacked connection, 200 otherwise. */
function openStream(res: ServerResponse, up: Upgrade | undefined, mediaType: string): StreamOut {
  if (up) {
    const socket = up.socket;
    let closed = socket.destroyed;
    const onClose: (() => void)[] = [];
    socket.once("close", () => {
      closed = true;
      for (const f of onClose) f();
    });
    (socket as Socket).setNoDelay?.(true);
    socket.write(`HTTP/1.1 101 UPGRADED\r\nContent-Type: ${mediaType}\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n`);
    return {
      get closed() {
        return closed;
      },
      write: (b) => (closed ? Promise.resolve(false) : writeWithBackpressure(socket, b)),
      end: () => {
        if (!closed) socket.end();
      },
      onClose: (f) => onClose.push(f),
    };
  }
  let closed = false;
  res.writeHead(200, { "Content-Type": mediaType });
  res.flushHeaders();
  res.once("close", () => {
    closed = true;
  });
  return {
    get closed() {
      return closed;
    },
    write: (b) => (closed ? Promise.resolve(false) : writeWithBackpressure(res, b)),
    end: () => {
      if (!closed) res.end();
    },
    onClose: (f) => res.once("close", f),
  };
}

/** dockerd's filters.Match: the value itself, or a regular expression that matches. */
function filterMatch(values: string[], source: string): boolean {
  return values.some((v) => {
    if (v === source) return true;
    try {
      return new RegExp(v).test(source);
    } catch {
      return false;
    }
  });
}

/**
 * GET /networks filters as dockerd applies them (driver, scope: exact; name, id: match; label: key or
 * key=value; type: builtin or custom; dangling: no local containers). Exported for backends.
 */
export function filterNetworks(list: NetworkResource[], f: Record<string, string[]>): NetworkResource[] {
  return list.filter((n) => {
    if (f.driver?.length && !f.driver.includes(n.Driver)) return false;
    if (f.scope?.length && !f.scope.includes(n.Scope)) return false;
    if (f.name?.length && !filterMatch(f.name, n.Name)) return false;
    if (f.id?.length && !filterMatch(f.id, n.Id)) return false;
    if (f.label?.length) {
      const labels = n.Labels ?? {};
      for (const l of f.label) {
        const eq = l.indexOf("=");
        const k = eq < 0 ? l : l.slice(0, eq);
        if (!Object.hasOwn(labels, k)) return false;
        if (eq >= 0 && labels[k] !== l.slice(eq + 1)) return false;
      }
    }
    if (f.type?.length) {
      const builtin = BUILTIN_NETWORKS.includes(n.Name);
      if (!f.type.some((t) => (t === "builtin" ? builtin : !builtin))) return false;
    }
    if (f.dangling?.length) {
      const dangling = Object.keys(n.Containers ?? {}).length === 0 && !BUILTIN_NETWORKS.includes(n.Name);
      if (!f.dangling.some((d) => (["1", "true"].includes(d.toLowerCase()) ? dangling : !dangling))) return false;
    }
    return true;
  });
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

/** The firewall backend as docker info's "Storage Driver" status pairs: "Firewall Backend: iptables", then its details. */
function firewallStatusPairs(fw: { Driver: string; Info: [string, string][] }): [string, string][] {
  return [["Firewall Backend", fw.Driver], ...fw.Info];
}
