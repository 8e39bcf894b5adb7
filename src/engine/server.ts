// The Docker Engine API over HTTP/1.1 on a unix socket: what `shoal` and the real `docker` CLI talk to.
// This layer only speaks HTTP: it parses paths, query strings and bodies the way dockerd does, calls the
// SwarmBackend (and the NetworkBackend and ContainerBackend when the daemon has them), and writes its
// answer (or its ApiError) in the shapes and words the docker CLI expects.
//
// This file holds the server's life (listen, close) and its dispatch; router.ts the plumbing (routes,
// context, bodies, answers), streams.ts the stream framing and hijacking, routes/ one file per resource.

import { randomUUID } from "node:crypto";
import { chmod, lstat, mkdir, stat, unlink } from "node:fs/promises";
import type { IncomingMessage, ServerResponse } from "node:http";
import { connect } from "node:net";
import { dirname } from "node:path";
import type { Duplex } from "node:stream";
import { fileURLToPath } from "node:url";
import type { Logger } from "pino";
import type { ImageService } from "../runtime/images/service.js";
import { ApiError, unavailable } from "./errors.js";
import { answerPastBody, BodyBudget, DEFAULT_HTTP_LIMITS, type HttpLimits, LimitedServer } from "./http.js";
import { ImageRoutes } from "./images.js";
import { asApiError, matchRoute, type Route, type RouteDeps, route, sendJSON, splitUrl } from "./router.js";
import { containerRoutes } from "./routes/containers.js";
import { eventRoutes } from "./routes/events.js";
import { execRoutes } from "./routes/exec.js";
import { networkRoutes } from "./routes/networks.js";
import { nodeRoutes } from "./routes/nodes.js";
import { pruneRoutes } from "./routes/prune.js";
import { swarmRoutes } from "./routes/swarm.js";
import { type EngineIdentity, readOperatingSystem, rfc3339Nano, systemRoutes } from "./routes/system.js";
import { noServiceRoutes } from "./routes/unsupported.js";
import { writeRawError } from "./streams.js";
import type { ContainerBackend, NetworkBackend, SwarmBackend } from "./types.js";

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

export class EngineServer {
  readonly socketPath: string;
  private readonly log: Logger | undefined;
  private readonly routes: Route[];
  private readonly limits: HttpLimits;
  private server: LimitedServer | undefined;
  private socketIno: number | undefined;
  private closing: Promise<void> | undefined;
  /** Connections handed over to streams (the HTTP server no longer tracks them). */
  private readonly hijacked = new Set<Duplex>();

  private constructor(opts: EngineServerOptions, identity: EngineIdentity) {
    this.socketPath = opts.socketPath;
    this.log = opts.logger?.child({ component: "engine" });
    this.limits = { ...DEFAULT_HTTP_LIMITS, ...opts.limits };
    const deps: RouteDeps = {
      backend: opts.backend,
      networks: () => {
        if (!opts.networks) throw unavailable("networks are not available: this daemon runs without a network backend");
        return opts.networks;
      },
      containers: () => {
        if (!opts.containers) {
          throw unavailable("containers are not available: this daemon runs without a container runtime");
        }
        return opts.containers;
      },
      images: () => {
        if (!opts.images) throw unavailable("this daemon runs no containers: it has no images");
        return opts.images;
      },
      containerBackend: opts.containers,
      log: this.log,
      limits: this.limits,
      bodyBudget: new BodyBudget(this.limits.bodyBudgetBytes),
    };
    this.routes = [
      ...systemRoutes(deps, identity),
      ...swarmRoutes(deps),
      ...nodeRoutes(deps),
      ...networkRoutes(deps),
      ...noServiceRoutes(deps),
      ...pruneRoutes(deps),
      ...eventRoutes(deps),
      ...containerRoutes(deps),
      ...execRoutes(deps),
      ...imageRouteTable(opts.images, this.log),
    ];
  }

  /** Starts serving on opts.socketPath (parent directory created, stale socket removed, mode 0660). */
  static async listen(opts: EngineServerOptions): Promise<EngineServer> {
    const self = new EngineServer(opts, {
      gitCommit: opts.gitCommit ?? "unknown",
      buildTime: opts.buildTime ?? (await moduleBuildTime()),
      dataRoot: opts.dataRoot ?? "/var/lib/shoal",
      engineId: opts.engineId ?? randomUUID(),
      operatingSystem: await readOperatingSystem(),
    });
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
    const { path, query } = splitUrl(req.url);
    res.once("close", () => {
      const ms = Number(process.hrtime.bigint() - started) / 1e6;
      const status = res.writableFinished ? res.statusCode : 0; // 0: the client went away first
      this.log?.debug({ method: req.method, path, status, ms: Math.round(ms * 100) / 100 }, "request");
    });
    try {
      const { route, params, version } = matchRoute(this.routes, req.method, path);
      await route.handler({ req, res, query, params, version });
    } catch (err) {
      this.sendError(req, res, err);
    }
  }

  /** An upgrade request: only the routes that can take over a connection answer it. */
  private async handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    socket.on("error", (err) => this.log?.debug({ err }, "hijacked connection error"));
    const { path, query } = splitUrl(req.url);
    this.log?.debug({ method: req.method, path }, "upgrade request");
    try {
      const { route, params, version } = matchRoute(this.routes, req.method, path, true);
      this.hijacked.add(socket);
      socket.once("close", () => this.hijacked.delete(socket));
      const res = undefined as unknown as ServerResponse;
      await route.handler({ req, res, query, params, version, upgrade: { socket, head } });
    } catch (err) {
      if (!(err instanceof ApiError)) this.log?.error({ err, method: req.method, url: req.url }, "request failed");
      writeRawError(socket, asApiError(err));
    }
  }

  private sendError(req: IncomingMessage, res: ServerResponse, err: unknown): void {
    const apiErr = asApiError(err);
    if (!(err instanceof ApiError)) this.log?.error({ err, method: req.method, url: req.url }, "request failed");
    if (res.headersSent) {
      res.destroy();
      return;
    }
    answerPastBody(req, () => sendJSON(res, apiErr.status, { message: apiErr.message }), !res.shouldKeepAlive);
  }
}

/** The /images routes (images.ts); 503 without an image service. */
function imageRouteTable(images: ImageService | undefined, log: Logger | undefined): Route[] {
  const i = new ImageRoutes(() => {
    if (!images) throw unavailable("this daemon runs no containers: it has no images");
    return images;
  }, log);
  return [
    route("GET", "/images/json", (ctx) => i.list(ctx)),
    route("POST", "/images/create", (ctx) => i.pull(ctx)),
    route("POST", "/images/load", (ctx) => i.load(ctx)),
    route("GET", "/images/get", (ctx) => i.save(ctx)),
    route("GET", "/images/(.+)/get", (ctx) => i.save(ctx)),
    route("GET", "/images/(.+)/json", (ctx) => i.inspect(ctx)),
    route("GET", "/images/(.+)/history", (ctx) => i.history(ctx)),
    route("POST", "/images/(.+)/tag", (ctx) => i.tag(ctx)),
    route("DELETE", "/images/(.+)", (ctx) => i.remove(ctx)),
  ];
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

/** When this module's file was written: the build time of a dist/ tree, or of the source under test. */
async function moduleBuildTime(): Promise<string> {
  try {
    return rfc3339Nano((await stat(fileURLToPath(import.meta.url))).mtime);
  } catch {
    return "";
  }
}
