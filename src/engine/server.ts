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
import { createServer, type IncomingMessage, type Server, type ServerResponse, STATUS_CODES } from "node:http";
import { connect, type Socket } from "node:net";
import os from "node:os";
import { dirname } from "node:path";
import { type Duplex, PassThrough } from "node:stream";
import { fileURLToPath } from "node:url";
import type { Logger } from "pino";
import { API_VERSION, MIN_API_VERSION, VERSION } from "../version.js";
import { ApiError, badRequest, unavailable } from "./errors.js";
import { parseFilters, validateFilterKeys } from "./filters.js";
import type {
  ContainerBackend,
  ContainerCreateRequest,
  EndpointSettingsRequest,
  ExecCreateRequest,
  LocalNodeState,
  NetworkBackend,
  NetworkCreateRequest,
  NetworkResource,
  NodeListFilters,
  NodeSpec,
  SwarmBackend,
  SwarmInfo,
  SwarmInitRequest,
  SwarmJoinRequest,
  SwarmSpec,
  WaitCondition,
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
  /** The /networks routes (503 without). */
  networks?: NetworkBackend;
  /** The /containers and /exec routes (503 without). */
  containers?: ContainerBackend;
}

/** Largest request body accepted (JSON specs are small). */
const MAX_BODY_BYTES = 4 * 1024 * 1024;
/** How long close() lets in-flight requests finish before cutting their connections. */
const CLOSE_GRACE_MS = 2000;

const NODE_FILTERS = ["id", "label", "node.label", "membership", "name", "role"] as const;
const NETWORK_FILTERS = ["dangling", "driver", "id", "label", "name", "scope", "type"] as const;
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
  /** Connections handed over to streams (the HTTP server no longer tracks them). */
  private readonly hijacked = new Set<Duplex>();

  private constructor(opts: EngineServerOptions, buildTime: string) {
    this.socketPath = opts.socketPath;
    this.backend = opts.backend;
    this.networksBackend = opts.networks;
    this.containersBackend = opts.containers;
    this.log = opts.logger?.child({ component: "engine" });
    this.gitCommit = opts.gitCommit ?? "unknown";
    this.buildTime = opts.buildTime ?? buildTime;
    this.dataRoot = opts.dataRoot ?? "/var/lib/shoal";
    this.engineId = opts.engineId ?? randomUUID();
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
      r("POST", "/networks/create", this.networkCreate),
      r("GET", `/networks/${SEG}`, this.networkInspect),
      r("DELETE", `/networks/${SEG}`, this.networkRemove),
      r("POST", `/networks/${SEG}/connect`, this.networkConnect),
      r("POST", `/networks/${SEG}/disconnect`, this.networkDisconnect),
      r("POST", "/containers/create", this.containerCreate),
      r("GET", "/containers/json", this.containerList),
      r("GET", `/containers/${SEG}/json`, this.containerInspect),
      r("POST", `/containers/${SEG}/start`, this.containerStart),
      r("POST", `/containers/${SEG}/stop`, this.containerStop),
      r("POST", `/containers/${SEG}/restart`, this.containerRestart),
      r("POST", `/containers/${SEG}/kill`, this.containerKill),
      r("POST", `/containers/${SEG}/wait`, this.containerWait),
      r("DELETE", `/containers/${SEG}`, this.containerRemove),
      r("GET", `/containers/${SEG}/logs`, this.containerLogs),
      r("POST", `/containers/${SEG}/attach`, this.containerAttach, true),
      r("POST", `/containers/${SEG}/exec`, this.execCreate),
      r("POST", `/exec/${SEG}/start`, this.execStart, true),
      r("GET", `/exec/${SEG}/json`, this.execInspect),
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
    server.on("upgrade", (req: IncomingMessage, socket: Duplex, head: Buffer) => {
      void self.handleUpgrade(req, socket, head);
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
    const timer = setTimeout(() => {
      server.closeAllConnections();
      for (const s of this.hijacked) s.destroy();
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

  private async swarmUnlockKey({ res }: Ctx): Promise<void> {
    sendJSON(res, 200, { UnlockKey: await this.backend.swarmUnlockKey() });
  }

  private async swarmUnlock({ req, res }: Ctx): Promise<void> {
    const body = (await readJSONObject(req)) ?? {};
    const key = body.UnlockKey ?? "";
    if (typeof key !== "string") throw badRequest("invalid JSON: UnlockKey must be a string");
    await this.backend.swarmUnlock(key);
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

  // ---- networks ---------------------------------------------------------------------------------------

  private networks(): NetworkBackend {
    if (!this.networksBackend)
      throw unavailable("networks are not available: this daemon runs without a network backend");
    return this.networksBackend;
  }

  private async networkList({ res, query }: Ctx): Promise<void> {
    const filters = parseFilters(query.get("filters"));
    validateFilterKeys(filters, NETWORK_FILTERS);
    for (const t of filters.type ?? []) {
      if (t !== "custom" && t !== "builtin") throw badRequest(`invalid filter: 'type'='${t}'`);
    }
    const list = await this.networks().networkList(filters);
    sendJSON(res, 200, filterNetworks(list, filters));
  }

  private async networkInspect({ res, params }: Ctx): Promise<void> {
    sendJSON(res, 200, await this.networks().networkInspect(params[0]!));
  }

  private async networkCreate({ req, res }: Ctx): Promise<void> {
    const body = await readJSONObject(req);
    if (body === undefined) throw badRequest("invalid JSON: the request body must be the network's configuration");
    if (typeof body.Name !== "string" || body.Name.trim() === "") throw badRequest("network name must not be empty");
    const networks = this.networks();
    sendJSON(res, 201, await networks.networkCreate(body as unknown as NetworkCreateRequest));
  }

  private async networkRemove({ res, params }: Ctx): Promise<void> {
    await this.networks().networkRemove(params[0]!);
    sendNoContent(res);
  }

  private async networkConnect({ req, res, params }: Ctx): Promise<void> {
    const body = (await readJSONObject(req)) ?? {};
    if (typeof body.Container !== "string" || body.Container === "") {
      throw badRequest("invalid JSON: Container must name the container to connect");
    }
    const cfg = (isObject(body.EndpointConfig) ? body.EndpointConfig : {}) as EndpointSettingsRequest;
    await this.networks().networkConnect(params[0]!, body.Container, cfg);
    sendEmpty(res);
  }

  private async networkDisconnect({ req, res, params }: Ctx): Promise<void> {
    const body = (await readJSONObject(req)) ?? {};
    if (typeof body.Container !== "string" || body.Container === "") {
      throw badRequest("invalid JSON: Container must name the container to disconnect");
    }
    await this.networks().networkDisconnect(params[0]!, body.Container, body.Force === true);
    sendEmpty(res);
  }

  // ---- containers -------------------------------------------------------------------------------------

  private containers(): ContainerBackend {
    if (!this.containersBackend) {
      throw unavailable("containers are not available: this daemon runs without a container runtime");
    }
    return this.containersBackend;
  }

  private async containerCreate({ req, res, query }: Ctx): Promise<void> {
    const body = await readJSONObject(req);
    if (body === undefined) throw badRequest("config cannot be empty in order to create a container");
    const name = query.get("name") ?? undefined;
    sendJSON(res, 201, await this.containers().containerCreate(name, body as ContainerCreateRequest));
  }

  private async containerList({ res, query }: Ctx): Promise<void> {
    const filters = parseFilters(query.get("filters"));
    const limitText = query.get("limit");
    const limit = limitText === null || limitText === "" ? -1 : Number.parseInt(limitText, 10);
    if (Number.isNaN(limit)) throw badRequest(`invalid value for limit: ${limitText}`);
    let list = await this.containers().containerList({ all: boolValue(query, "all") || limit > 0, filters });
    if (limit > 0) list = list.slice(0, limit);
    sendJSON(res, 200, list);
  }

  private async containerInspect({ res, params }: Ctx): Promise<void> {
    sendJSON(res, 200, await this.containers().containerInspect(params[0]!));
  }

  private async containerStart({ res, params }: Ctx): Promise<void> {
    const started = await this.containers().containerStart(params[0]!);
    sendNoContent(res, started ? 204 : 304);
  }

  private stopOptions(query: URLSearchParams): { timeout?: number; signal?: string } {
    const opts: { timeout?: number; signal?: string } = {};
    const t = query.get("t");
    if (t !== null && t !== "") {
      if (!/^-?[0-9]+$/.test(t)) throw badRequest(`invalid value for t: ${t}`);
      opts.timeout = Number(t);
    }
    const signal = query.get("signal");
    if (signal) opts.signal = signal;
    return opts;
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
    await this.containers().containerKill(params[0]!, query.get("signal") || "SIGKILL");
    sendNoContent(res);
  }

  private async containerWait({ res, query, params }: Ctx): Promise<void> {
    const condition = query.get("condition") || "not-running";
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
    if (boolValue(query, "link")) throw badRequest("shoal has no container links to remove");
    await this.containers().containerRemove(params[0]!, { force: boolValue(query, "force") });
    sendNoContent(res);
  }

  private async containerLogs({ res, query, params, version }: Ctx): Promise<void> {
    const stdout = boolValue(query, "stdout");
    const stderr = boolValue(query, "stderr");
    if (!stdout && !stderr) throw badRequest("Bad parameters: you must choose at least one stream");
    const stream = await this.containers().containerLogs(params[0]!, {
      stdout,
      stderr,
      follow: boolValue(query, "follow"),
      timestamps: boolValue(query, "timestamps"),
      tail: query.get("tail") ?? "all",
      since: parseTimeParam(query, "since"),
      until: parseTimeParam(query, "until"),
    });
    res.writeHead(200, { "Content-Type": streamMediaType(stream.tty, version) });
    res.flushHeaders();
    let closed = false;
    res.once("close", () => {
      closed = true;
      stream.cancel();
    });
    for await (const c of stream.chunks) {
      if (closed) break;
      res.write(stream.tty ? c.data : frame(c.stream, c.data));
    }
    if (!closed) res.end();
  }

  private async containerAttach({ req, res, query, params, version, upgrade }: Ctx): Promise<void> {
    const opts = {
      stream: boolValue(query, "stream"),
      logs: boolValue(query, "logs"),
      stdin: boolValue(query, "stdin"),
      stdout: boolValue(query, "stdout"),
      stderr: boolValue(query, "stderr"),
    };
    const input = upgrade ? await upgradeInput(req, upgrade) : undefined;
    const session = await this.containers().containerAttach(params[0]!, opts);
    const out = openStream(res, upgrade, streamMediaType(session.tty, version));
    out.onClose(() => session.cancel());
    if (input && session.stdin) {
      input.stream.pipe(session.stdin);
    }
    for await (const c of session.chunks) {
      if (out.closed) break;
      out.write(session.tty ? c.data : frame(c.stream, c.data));
    }
    out.end();
  }

  private async execCreate({ req, res, params }: Ctx): Promise<void> {
    const body = await readJSONObject(req);
    if (body === undefined) throw badRequest("invalid JSON: the request body must be the exec's configuration");
    const id = await this.containers().execCreate(params[0]!, body as ExecCreateRequest);
    sendJSON(res, 201, { Id: id });
  }

  private async execStart({ req, res, params, version, upgrade }: Ctx): Promise<void> {
    const input = upgrade ? await upgradeInput(req, upgrade) : undefined;
    const body = input ? parseJSONText(input.body) : ((await readJSONObject(req)) ?? {});
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
      output: (c) => {
        if (!out.closed) out.write(tty ? c.data : frame(c.stream, c.data));
      },
      ...(input && session.attachStdin ? { stdin: input.stream } : {}),
    });
    out.end();
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

function sendNoContent(res: ServerResponse, status = 204): void {
  res.writeHead(status);
  res.end();
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function parseJSONText(text: string): Record<string, unknown> {
  if (text.trim() === "") return {};
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw badRequest(`invalid JSON: ${(err as Error).message}`);
  }
  if (!isObject(value)) throw badRequest("invalid JSON: the request body must be a JSON object");
  return value;
}

/** `since`/`until` of logs: Unix seconds, with fractions ("1700000000.5"); absent or 0: no bound. */
function parseTimeParam(query: URLSearchParams, key: string): number {
  const raw = query.get(key);
  if (raw === null || raw === "") return 0;
  const n = Number(raw);
  if (!Number.isFinite(n)) throw badRequest(`invalid value for ${key}: ${raw}`);
  return n;
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
async function upgradeInput(req: IncomingMessage, up: Upgrade): Promise<{ body: string; stream: PassThrough }> {
  const length = Number(req.headers["content-length"] ?? "0");
  if (!Number.isSafeInteger(length) || length < 0 || length > MAX_BODY_BYTES) {
    throw badRequest("invalid Content-Length");
  }
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
  write(b: Buffer): void;
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
      write: (b) => {
        if (!closed) socket.write(b);
      },
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
    write: (b) => {
      if (!closed) res.write(b);
    },
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

/** The firewall backend as docker info's "Storage Driver" status pairs: "Firewall Backend: iptables", then its details. */
function firewallStatusPairs(fw: { Driver: string; Info: [string, string][] }): [string, string][] {
  return [["Firewall Backend", fw.Driver], ...fw.Info];
}
