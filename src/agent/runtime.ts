// The container runtime: containers as sandboxes on the host's file system (image "host"), each in its own
// network namespace (a file under <execRoot>/netns/<id12>, like Docker's /var/run/docker/netns) and its
// own mount, UTS, IPC and PID namespaces, with /etc/resolv.conf, /etc/hosts and /etc/hostname of its own.
// Networks are joined through a NetworkAttacher (the managers allocate the endpoint, the data plane wires
// it into the namespace). It serves the Engine API's container calls (ContainerBackend) in Docker's shapes
// and words.
//
// State: every container has a directory under stateDir (state.json, its json-file log, resolv.conf,
// hosts, hostname). A daemon that restarts finds them there; containers a dead daemon left running are
// killed and reported exited, and their namespace files removed (reconcile).

import { type ChildProcess, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { closeSync } from "node:fs";
import { mkdir, readdir, readFile, rm } from "node:fs/promises";
import { join } from "node:path";
import { type Readable, Writable } from "node:stream";
import type { Logger } from "pino";
import { ApiError, badRequest, conflict } from "../api/errors.js";
import { explainMissing } from "../dataplane/programs.js";
import { humanDuration } from "../engine/humanize.js";
import type {
  AttachedEndpoint,
  AttachOptions,
  AttachSession,
  ContainerBackend,
  ContainerConfig,
  ContainerCreateRequest,
  ContainerJSON,
  ContainerListOptions,
  ContainerStatus,
  ContainerSummary,
  EndpointSettings,
  EndpointSettingsRequest,
  ExecCreateRequest,
  ExecInspect,
  ExecSession,
  LogsOptions,
  NetworkAttacher,
  OutputChunk,
  OutputStream,
  PendingWait,
  WaitCondition,
  WaitResponse,
} from "../engine/types.js";
import { Serial } from "../serial.js";
import { rewriteInPlace, writeFileDurable } from "./files.js";
import { JsonLogWriter, type LogRecord, nowRFC3339Nano, readLogRecords, recordMatches, toChunk } from "./jsonlog.js";
import { randomName } from "./names.js";
import {
  childrenOf,
  createNetns,
  deleteNetns,
  dieWithParent,
  execArgv,
  fifoPipe,
  isSameProcess,
  launchArgv,
  netnsState,
  onPath,
  parseSignal,
  processStartTime,
  signalNumberOf,
} from "./sandbox.js";

export { humanDuration } from "../engine/humanize.js";

export const HOST_IMAGE = "host";
const ZERO_TIME = "0001-01-01T00:00:00Z";
const DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/** How long output may keep coming after pid 1 exited before the log is closed anyway. */
const DRAIN_MS = 2000;
/** How long a stop waits after SIGKILL before it gives up. */
const KILL_WAIT_MS = 30_000;

export interface ContainerRuntimeOptions {
  /** The daemon's run directory (shoald --exec-root): network namespace files go in <execRoot>/netns. */
  execRoot: string;
  /** Per-container files: state.json, the log, resolv.conf, hosts, hostname. */
  stateDir: string;
  attacher: NetworkAttacher;
  /** This host's name (for the logs). */
  hostname?: () => string;
  logger: Logger;
  /**
   * Let containers run on when the daemon dies without stopping them (the next daemon kills them in
   * reconcile). Default: they die with it (setpriv --pdeathsig), as nothing would manage them.
   */
  containersOutliveDaemon?: boolean;
}

/** What `create` needs; containerCreate maps Docker's request onto it. */
export interface ContainerSpec {
  name?: string;
  image: string;
  cmd: string[];
  entrypoint?: string[] | null;
  env?: string[];
  workingDir?: string;
  labels?: Record<string, string>;
  tty?: boolean;
  openStdin?: boolean;
  stdinOnce?: boolean;
  /** Default: the first network's ref, or "none". "host" shares the host's network namespace. */
  networkMode?: string;
  networks: { ref: string; cfg: EndpointSettingsRequest }[];
  hostnameOverride?: string;
  domainname?: string;
  autoRemove?: boolean;
  stopSignal?: string;
  stopTimeout?: number;
}

interface NetworkAttachment {
  /** The network as the user named it. */
  ref: string;
  cfg: EndpointSettingsRequest;
  /** While running: what the attacher made. */
  endpoint: AttachedEndpoint | null;
}

interface RecordState {
  status: ContainerStatus;
  /** Host pid of the container's pid 1, and its start time (to recognise it after a daemon restart). */
  pid: number;
  pidStart?: number;
  exitCode: number;
  error: string;
  startedAt: string;
  finishedAt: string;
}

/** What state.json holds. */
interface ContainerRecord {
  id: string;
  /** Without the leading "/". */
  name: string;
  created: string;
  path: string;
  args: string[];
  config: ContainerConfig;
  networkMode: string;
  autoRemove: boolean;
  networks: NetworkAttachment[];
  state: RecordState;
}

interface ExitInfo {
  code: number;
}

interface Running {
  child: ChildProcess;
  /** 0 if pid 1 was gone before it could be seen. */
  initPid: number;
  stdin: Writable | undefined;
  /** Resolves once the exit has been handled (networks detached, state saved). */
  handled: Promise<void>;
}

class Container {
  proc: Running | undefined;
  readonly chain = new Serial();
  removed = false;
  readonly outputListeners = new Set<(r: LogRecord) => void>();
  readonly exitListeners = new Set<(code: number) => void>();
  readonly removeListeners = new Set<(code: number) => void>();
  readonly execIds = new Set<string>();
  /** Input written by attached clients before the process was there (and whether it ended). */
  pendingStdin: Buffer[] = [];
  pendingStdinEnd = false;
  constructor(
    public rec: ContainerRecord,
    readonly dir: string,
  ) {}
  get id(): string {
    return this.rec.id;
  }
  get running(): boolean {
    return this.rec.state.status === "running";
  }
}

interface ExecRecord {
  id: string;
  containerId: string;
  cmd: string[];
  env: string[];
  workingDir: string;
  tty: boolean;
  attachStdin: boolean;
  attachStdout: boolean;
  attachStderr: boolean;
  detachKeys: string;
  started: boolean;
  running: boolean;
  exitCode: number | null;
  pid: number;
}

const noSuchContainer = (ref: string): ApiError => new ApiError(404, `No such container: ${ref}`);

/** A random 64-hex id whose 12-character short form is not all digits (Docker's rule). */
function newId(): string {
  for (;;) {
    const id = randomBytes(32).toString("hex");
    if (!/^[0-9]+$/.test(id.slice(0, 12))) return id;
  }
}

const NAME_RE = /^\/?[a-zA-Z0-9][a-zA-Z0-9_.-]+$/;

function isSpecialMode(mode: string): boolean {
  return mode === "" || mode === "default" || mode === "none" || mode === "host";
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}

/** Resolves true if `p` settles within `ms`. */
async function within(p: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), ms);
  });
  const r = await Promise.race([p.then(() => true), t]);
  clearTimeout(timer);
  return r;
}

function killQuietly(pid: number, signal: number): boolean {
  if (pid <= 0) return false;
  try {
    process.kill(pid, signal);
    return true;
  } catch {
    return false;
  }
}

function errMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** The hosts file of a container: localhost lines, then its own addresses with its names. */
export function renderHosts(
  hostname: string,
  name: string,
  endpoints: AttachedEndpoint[],
  cfgAliases: string[][],
): string {
  const lines = [
    "127.0.0.1\tlocalhost",
    "::1\tlocalhost ip6-localhost ip6-loopback",
    "fe00::0\tip6-localnet",
    "ff00::0\tip6-mcastprefix",
    "ff02::1\tip6-allnodes",
    "ff02::2\tip6-allrouters",
  ];
  endpoints.forEach((ep, i) => {
    if (!ep.ip) return;
    const names = [hostname, name, ...(cfgAliases[i] ?? [])].filter((n, j, all) => n !== "" && all.indexOf(n) === j);
    lines.push(`${ep.ip}\t${names.join(" ")}`);
  });
  return `${lines.join("\n")}\n`;
}

/** The host's resolv.conf without loopback name servers (unreachable from a container's namespace). */
async function hostResolvConf(): Promise<string> {
  let text = "";
  try {
    text = await readFile("/etc/resolv.conf", "utf8");
  } catch {
    return "";
  }
  const lines = text
    .split("\n")
    .filter((l) => !/^\s*nameserver\s+(127\.|::1\b)/.test(l))
    .join("\n");
  return lines.endsWith("\n") ? lines : `${lines}\n`;
}

/** docker's command column: args with spaces are quoted. */
function commandText(path: string, args: string[]): string {
  if (args.length === 0) return path;
  return `${path} ${args.map((a) => (a.includes(" ") ? `'${a}'` : a)).join(" ")}`;
}

/** Bytes an attached client may fall behind a container's output before its stream is ended. */
const MAX_ATTACH_BACKLOG_BYTES = 8 * 1024 * 1024;

/**
 * An async iterable fed by pushes, ended by end(); for output streams. A consumer that falls more than
 * `maxBytes` behind is cut off (the stream ends): the container is never slowed by one slow client, and
 * the daemon never holds more than that for it.
 */
class ChunkQueue implements AsyncIterable<OutputChunk> {
  /** Chunks, each with the bytes it counts against the limit (a replay of the log does not). */
  private items: { c: OutputChunk; counted: number }[] = [];
  private bytes = 0;
  private done = false;
  private wake: (() => void) | undefined;
  constructor(private readonly maxBytes = MAX_ATTACH_BACKLOG_BYTES) {}
  /** Live output; `replay`: what the container printed before (already in memory, not counted). */
  push(c: OutputChunk, replay = false): void {
    if (this.done) return;
    const counted = replay ? 0 : c.data.length;
    if (this.bytes + counted > this.maxBytes) {
      this.items = [];
      this.bytes = 0;
      this.end();
      return;
    }
    this.items.push({ c, counted });
    this.bytes += counted;
    this.wake?.();
  }
  end(): void {
    this.done = true;
    this.wake?.();
  }
  async *[Symbol.asyncIterator](): AsyncIterator<OutputChunk> {
    for (;;) {
      while (this.items.length > 0) {
        const { c, counted } = this.items.shift()!;
        this.bytes -= counted;
        yield c;
      }
      if (this.done) return;
      await new Promise<void>((resolve) => {
        this.wake = resolve;
      });
      this.wake = undefined;
    }
  }
}

export class ContainerRuntime implements ContainerBackend {
  private readonly containers = new Map<string, Container>();
  private readonly execs = new Map<string, ExecRecord>();
  private readonly log: Logger;
  private loaded = false;
  private readonly tieToDaemon: boolean;

  constructor(private readonly opts: ContainerRuntimeOptions) {
    this.tieToDaemon = opts.containersOutliveDaemon !== true && onPath("setpriv");
    this.log = opts.logger.child({ component: "containers", ...(opts.hostname ? { host: opts.hostname() } : {}) });
  }

  /** A runtime with the containers a previous daemon left (see reconcile). */
  static async open(opts: ContainerRuntimeOptions): Promise<ContainerRuntime> {
    const rt = new ContainerRuntime(opts);
    await rt.reconcile();
    return rt;
  }

  get netnsDir(): string {
    return join(this.opts.execRoot, "netns");
  }

  netnsPathOf(id: string): string {
    return join(this.netnsDir, id.slice(0, 12));
  }

  // ---- lookup -----------------------------------------------------------------------------------------

  /** A full id, a name (with or without "/"), or a unique id prefix. */
  private find(ref: string): Container {
    const exact = this.containers.get(ref);
    if (exact && !exact.removed) return exact;
    const name = ref.startsWith("/") ? ref.slice(1) : ref;
    for (const c of this.containers.values()) if (!c.removed && c.rec.name === name) return c;
    if (ref !== "" && /^[0-9a-f]+$/.test(ref)) {
      const matches = [...this.containers.values()].filter((c) => !c.removed && c.id.startsWith(ref));
      if (matches.length === 1) return matches[0]!;
      if (matches.length > 1) throw badRequest(`multiple IDs found with provided prefix: ${ref}`);
    }
    throw noSuchContainer(ref);
  }

  /** Runs f after every earlier operation on this container has finished. */
  private locked<T>(c: Container, f: () => Promise<T>): Promise<T> {
    return c.chain.run(f);
  }

  private async persist(c: Container): Promise<void> {
    if (c.removed) return;
    await writeFileDurable(join(c.dir, "state.json"), `${JSON.stringify(c.rec, null, 2)}\n`);
  }

  // ---- create -----------------------------------------------------------------------------------------

  async create(spec: ContainerSpec): Promise<string> {
    const image = spec.image;
    if (image !== HOST_IMAGE && image !== `${HOST_IMAGE}:latest`) {
      throw badRequest(
        `image ${JSON.stringify(image)} is not available: shoal runs containers on the host's file system; use the image name "${HOST_IMAGE}"`,
      );
    }
    const argv = [...(spec.entrypoint ?? []), ...spec.cmd];
    if (argv.length === 0) throw badRequest("no command specified");
    let name = spec.name ?? "";
    if (name !== "") {
      if (!NAME_RE.test(name)) {
        throw badRequest(`Invalid container name (${name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed`);
      }
      if (name.startsWith("/")) name = name.slice(1);
      const holder = this.byName(name);
      if (holder) {
        throw conflict(
          `Conflict. The container name "/${name}" is already in use by container "${holder.id}". You have to remove (or rename) that container to be able to reuse that name.`,
        );
      }
    } else {
      for (let i = 0; name === "" || this.byName(name); i++) name = randomName(i);
    }
    const networkMode = spec.networkMode ?? spec.networks[0]?.ref ?? "none";
    if (networkMode.startsWith("container:")) {
      throw badRequest("shoal does not share network namespaces between containers: use a network instead");
    }
    if ((networkMode === "host" || networkMode === "none") && spec.networks.length > 0) {
      throw badRequest(
        `container cannot be connected to network(s) ${spec.networks.map((n) => n.ref).join(", ")} and to the ${networkMode} network`,
      );
    }
    const id = newId();
    const env = [
      `PATH=${DEFAULT_PATH}`,
      `HOSTNAME=${spec.hostnameOverride || id.slice(0, 12)}`,
      ...(spec.tty ? ["TERM=xterm"] : []),
      ...(spec.env ?? []),
    ];
    const config: ContainerConfig = {
      Hostname: spec.hostnameOverride || id.slice(0, 12),
      Domainname: spec.domainname ?? "",
      User: "",
      AttachStdin: false,
      AttachStdout: false,
      AttachStderr: false,
      Tty: spec.tty ?? false,
      OpenStdin: spec.openStdin ?? false,
      StdinOnce: spec.stdinOnce ?? false,
      Env: env,
      Cmd: spec.cmd.length > 0 ? [...spec.cmd] : null,
      Image: image,
      Volumes: null,
      WorkingDir: spec.workingDir ?? "",
      Entrypoint: spec.entrypoint && spec.entrypoint.length > 0 ? [...spec.entrypoint] : null,
      OnBuild: null,
      Labels: { ...(spec.labels ?? {}) },
      ...(spec.stopSignal ? { StopSignal: spec.stopSignal } : {}),
      ...(spec.stopTimeout !== undefined ? { StopTimeout: spec.stopTimeout } : {}),
    };
    const rec: ContainerRecord = {
      id,
      name,
      created: nowRFC3339Nano(),
      path: argv[0]!,
      args: argv.slice(1),
      config,
      networkMode,
      autoRemove: spec.autoRemove ?? false,
      networks: spec.networks.map((n) => ({ ref: n.ref, cfg: n.cfg, endpoint: null })),
      state: { status: "created", pid: 0, exitCode: 0, error: "", startedAt: ZERO_TIME, finishedAt: ZERO_TIME },
    };
    const c = new Container(rec, join(this.opts.stateDir, id));
    // The name is taken from here on (before any await), so two creates cannot both get it.
    this.containers.set(id, c);
    try {
      await mkdir(c.dir, { recursive: true, mode: 0o700 });
      await this.persist(c);
    } catch (err) {
      this.containers.delete(id);
      await rm(c.dir, { recursive: true, force: true }).catch(() => undefined);
      throw err;
    }
    this.log.info({ id, name, cmd: argv }, "container created");
    return id;
  }

  private byName(name: string): Container | undefined {
    for (const c of this.containers.values()) if (!c.removed && c.rec.name === name) return c;
    return undefined;
  }

  async containerCreate(
    name: string | undefined,
    req: ContainerCreateRequest,
  ): Promise<{ Id: string; Warnings: string[] }> {
    const mode = req.HostConfig?.NetworkMode || "default";
    const endpoints = req.NetworkingConfig?.EndpointsConfig ?? {};
    const networks: { ref: string; cfg: EndpointSettingsRequest }[] = [];
    const special = isSpecialMode(mode);
    if (!special) networks.push({ ref: mode, cfg: endpointRequest(endpoints[mode]) });
    for (const [key, cfg] of Object.entries(endpoints)) {
      if (key === mode || key === "default") continue;
      if (special && mode !== "default") {
        throw badRequest(`container cannot be connected to network ${key} and to the ${mode} network`);
      }
      networks.push({ ref: key, cfg: endpointRequest(cfg) });
    }
    const spec: ContainerSpec = {
      image: req.Image ?? "",
      cmd: req.Cmd ?? [],
      entrypoint: req.Entrypoint ?? null,
      env: req.Env ?? [],
      workingDir: req.WorkingDir ?? "",
      labels: req.Labels ?? {},
      tty: req.Tty ?? false,
      openStdin: req.OpenStdin ?? false,
      stdinOnce: req.StdinOnce ?? false,
      networkMode: mode === "default" || mode === "" ? (networks[0]?.ref ?? "none") : mode,
      networks,
      hostnameOverride: req.Hostname ?? "",
      domainname: req.Domainname ?? "",
      autoRemove: req.HostConfig?.AutoRemove === true,
    };
    if (name !== undefined && name !== "") spec.name = name;
    if (req.StopSignal) {
      if (parseSignal(req.StopSignal) === undefined) throw badRequest(`invalid signal: ${req.StopSignal}`);
      spec.stopSignal = req.StopSignal;
    }
    if (typeof req.StopTimeout === "number") spec.stopTimeout = req.StopTimeout;
    return { Id: await this.create(spec), Warnings: [] };
  }

  // ---- start ------------------------------------------------------------------------------------------

  /** Starts a container; false if it was running already. */
  async start(ref: string): Promise<boolean> {
    return this.containerStart(ref);
  }

  async containerStart(ref: string): Promise<boolean> {
    const c = this.find(ref);
    return this.locked(c, async () => {
      if (c.removed) throw noSuchContainer(ref);
      if (c.running) return false;
      if (c.rec.state.status === "removing")
        throw conflict(`container ${c.id} is marked for removal and cannot be started`);
      await this.startLocked(c);
      return true;
    });
  }

  private async startLocked(c: Container): Promise<void> {
    const rec = c.rec;
    const hostNet = rec.networkMode === "host";
    const netnsPath = hostNet ? null : this.netnsPathOf(rec.id);
    const attached: NetworkAttachment[] = [];
    try {
      if (netnsPath) await createNetns(netnsPath);
      for (const n of rec.networks) {
        n.endpoint = await this.opts.attacher.attach(
          { id: rec.id, name: rec.name, netnsPath: netnsPath!, ifname: `eth${attached.length}` },
          n.ref,
          n.cfg,
        );
        attached.push(n);
      }
      if (!hostNet) await this.writeNetworkFiles(c);
      const proc = await this.launch(c, netnsPath);
      c.proc = proc.running;
      rec.state = {
        status: "running",
        pid: proc.running.initPid,
        exitCode: 0,
        error: "",
        startedAt: nowRFC3339Nano(),
        finishedAt: ZERO_TIME,
      };
      const pidStart = await processStartTime(proc.running.initPid);
      if (pidStart !== undefined) rec.state.pidStart = pidStart;
      await this.persist(c).catch((err: unknown) =>
        this.log.error({ err, id: rec.id }, "could not save container state"),
      );
      proc.exited.then(
        (info) => this.handleExit(c, info, proc.resolveHandled),
        () => undefined,
      );
      this.log.info({ id: rec.id, name: rec.name, pid: proc.running.initPid }, "container started");
    } catch (err) {
      for (const n of attached.reverse()) {
        await this.opts.attacher
          .detach({ id: rec.id, name: rec.name, netnsPath: netnsPath! }, n.endpoint!)
          .catch((e: unknown) =>
            this.log.warn({ err: e, id: rec.id, network: n.ref }, "could not detach after a failed start"),
          );
        n.endpoint = null;
      }
      if (netnsPath) {
        await deleteNetns(netnsPath).catch((e: unknown) =>
          this.log.warn({ err: e, path: netnsPath }, "could not remove the namespace after a failed start"),
        );
      }
      const apiErr = err instanceof ApiError ? err : new ApiError(500, errMessage(err));
      rec.state.error = apiErr.message;
      rec.state.exitCode = err instanceof LaunchError ? err.exitCode : 128;
      await this.persist(c).catch(() => undefined);
      throw apiErr;
    }
  }

  /** resolv.conf, hosts and hostname for the container's current endpoints (rewritten in place). */
  private async writeNetworkFiles(c: Container): Promise<void> {
    const rec = c.rec;
    const eps = rec.networks.filter((n) => n.endpoint).map((n) => n.endpoint!);
    const resolv = eps.length > 0 ? this.opts.attacher.resolvConf(eps) : await hostResolvConf();
    const aliases = rec.networks.filter((n) => n.endpoint).map((n) => n.cfg.Aliases ?? []);
    await rewriteInPlace(join(c.dir, "resolv.conf"), resolv);
    await rewriteInPlace(join(c.dir, "hosts"), renderHosts(rec.config.Hostname, rec.name, eps, aliases));
    await rewriteInPlace(join(c.dir, "hostname"), `${rec.config.Hostname}\n`);
  }

  private async launch(
    c: Container,
    netnsPath: string | null,
  ): Promise<{ running: Running; exited: Promise<ExitInfo>; resolveHandled: () => void }> {
    const rec = c.rec;
    const hostNet = rec.networkMode === "host";
    const argv = launchArgv({
      netnsPath,
      resolvConf: hostNet ? "" : join(c.dir, "resolv.conf"),
      hosts: hostNet ? "" : join(c.dir, "hosts"),
      hostnameFile: hostNet ? "" : join(c.dir, "hostname"),
      hostname: hostNet ? "" : rec.config.Hostname,
      workingDir: rec.config.WorkingDir || "/",
      argv: [rec.path, ...rec.args],
    });
    const out = await fifoPipe(join(c.dir, "stdout.fifo"));
    let err: Awaited<ReturnType<typeof fifoPipe>>;
    try {
      err = await fifoPipe(join(c.dir, "stderr.fifo"));
    } catch (e) {
      out.reader.destroy();
      closeSync(out.writeFd);
      throw e;
    }
    const logWriter = new JsonLogWriter(join(c.dir, `${rec.id}-json.log`), (r) => {
      for (const l of c.outputListeners) l(r);
    });
    const command = this.tieToDaemon ? dieWithParent(argv) : argv;
    let child: ChildProcess;
    try {
      child = spawn(command[0]!, command.slice(1), {
        stdio: [rec.config.OpenStdin ? "pipe" : "ignore", out.writeFd, "pipe", "pipe", err.writeFd],
        env: envObject(rec.config.Env),
        cwd: "/",
        detached: true,
      });
    } finally {
      closeSync(out.writeFd);
      closeSync(err.writeFd);
    }
    out.reader.on("data", (d: Buffer) => logWriter.write(1, d));
    err.reader.on("data", (d: Buffer) => logWriter.write(2, d));
    const drained = Promise.all([streamDone(out.reader), streamDone(err.reader)]);
    let launcherErr = "";
    child.stderr!.setEncoding("utf8").on("data", (d: string) => {
      launcherErr += d;
    });
    const status = new Promise<{ code: number | null; signal: NodeJS.Signals | null; error?: Error }>((resolve) => {
      let settled = false;
      child.once("exit", (code, signal) => {
        if (!settled) resolve({ code, signal });
        settled = true;
      });
      child.once("error", (error) => {
        if (!settled) resolve({ code: 127, signal: null, error });
        settled = true;
      });
    });
    const exited = status.then(async (st) => {
      if (!(await within(drained, DRAIN_MS))) {
        out.reader.destroy();
        err.reader.destroy();
      }
      logWriter.close();
      let code: number;
      if (st.signal) code = 128 + signalNumberOf(st.signal);
      else if (st.code === 1 && /^unshare: /m.test(launcherErr)) {
        // pid 1 of a PID namespace dies of a signal only if it is SIGKILL; unshare cannot re-raise that
        // one and exits 1 saying so.
        code = 137;
      } else code = st.code ?? 255;
      return { code, launcherErr, error: st.error };
    });
    // Readiness: the launch script writes "ok" on fd 3 just before it becomes CMD, or why it could not.
    let report = "";
    const ready = new Promise<boolean>((resolve) => {
      const fd3 = child.stdio[3] as Readable | null;
      fd3?.setEncoding("utf8");
      fd3?.on("data", (d: string) => {
        report += d;
        if (/(^|\n)ok\n/.test(report)) resolve(true);
      });
      fd3?.on("error", () => undefined);
      void status.then(() => resolve(/(^|\n)ok\n/.test(report)));
    });
    const ok = await ready;
    if (!ok) {
      const info = await exited;
      // nsenter, unshare or setpriv missing on this host: a server-side fault, said with its package.
      const missing = explainMissing(command[0]!, info.error, info.launcherErr);
      if (missing !== undefined) throw new LaunchError(missing, 128);
      const text =
        report.trim() || info.launcherErr.trim() || info.error?.message || "the container exited before it started";
      throw new LaunchError(text, /executable file not found/.test(text) ? 127 : info.code === 0 ? 128 : info.code);
    }
    (child.stdio[3] as Readable | null)?.destroy();
    // pid 1 of the container is the unshare parent's only child.
    let initPid = 0;
    for (let i = 0; i < 50 && initPid === 0; i++) {
      initPid = (await childrenOf(child.pid!))[0] ?? 0;
      if (initPid === 0) {
        if (child.exitCode !== null || child.signalCode !== null) break;
        await delay(10);
      }
    }
    let resolveHandled!: () => void;
    const handled = new Promise<void>((resolve) => {
      resolveHandled = resolve;
    });
    const stdin = rec.config.OpenStdin ? (child.stdin ?? undefined) : undefined;
    stdin?.on("error", () => undefined);
    if (stdin) {
      for (const b of c.pendingStdin) stdin.write(b);
      if (c.pendingStdinEnd) stdin.end();
    }
    c.pendingStdin = [];
    c.pendingStdinEnd = false;
    child.unref();
    return { running: { child, initPid, stdin, handled }, exited, resolveHandled };
  }

  private async handleExit(c: Container, info: ExitInfo, resolveHandled: () => void): Promise<void> {
    try {
      await this.locked(c, async () => {
        c.proc = undefined;
        await this.releaseNetworks(c);
        c.rec.state = {
          ...c.rec.state,
          status: "exited",
          pid: 0,
          exitCode: info.code,
          finishedAt: nowRFC3339Nano(),
        };
        delete c.rec.state.pidStart;
        await this.persist(c).catch((err: unknown) =>
          this.log.error({ err, id: c.id }, "could not save container state"),
        );
        this.log.info({ id: c.id, name: c.rec.name, exitCode: info.code }, "container exited");
      });
    } finally {
      resolveHandled();
      for (const l of [...c.exitListeners]) l(info.code);
    }
    if (c.rec.autoRemove && !c.removed) {
      await this.containerRemove(c.id, { force: true }).catch((err: unknown) =>
        this.log.warn({ err, id: c.id }, "could not remove an auto-remove container"),
      );
    }
  }

  /** Detaches every endpoint and removes the network namespace (errors are logged: nothing to undo). */
  private async releaseNetworks(c: Container): Promise<void> {
    const rec = c.rec;
    const netnsPath = this.netnsPathOf(rec.id);
    for (const n of [...rec.networks].reverse()) {
      if (!n.endpoint) continue;
      await this.opts.attacher
        .detach({ id: rec.id, name: rec.name, netnsPath }, n.endpoint)
        .catch((err: unknown) =>
          this.log.warn({ err, id: rec.id, network: n.ref }, "could not detach from the network"),
        );
      n.endpoint = null;
    }
    if (rec.networkMode !== "host") {
      await deleteNetns(netnsPath).catch((err: unknown) =>
        this.log.warn({ err, path: netnsPath }, "could not remove the container's network namespace"),
      );
    }
  }

  // ---- stop / kill ------------------------------------------------------------------------------------

  /** SIGTERM (or the container's stop signal), then SIGKILL after timeoutSecs; false if it was not running. */
  async stop(ref: string, timeoutSecs?: number): Promise<boolean> {
    return this.containerStop(ref, timeoutSecs === undefined ? {} : { timeout: timeoutSecs });
  }

  async containerStop(ref: string, opts: { timeout?: number; signal?: string }): Promise<boolean> {
    const c = this.find(ref);
    const proc = c.proc;
    if (!c.running || !proc) return false;
    const sigName = opts.signal || c.rec.config.StopSignal || "SIGTERM";
    const sig = parseSignal(sigName);
    if (sig === undefined) throw badRequest(`Invalid signal: ${sigName}`);
    const timeout = opts.timeout ?? c.rec.config.StopTimeout ?? 10;
    this.signal(proc, sig);
    if (timeout < 0) {
      await proc.handled;
      return true;
    }
    if (await within(proc.handled, timeout * 1000)) return true;
    this.log.info({ id: c.id, timeout }, "container did not stop in time: killing it");
    this.signal(proc, 9);
    if (!(await within(proc.handled, KILL_WAIT_MS))) {
      throw new ApiError(500, `cannot stop container: ${ref}: the container's processes did not exit after SIGKILL`);
    }
    return true;
  }

  /** Signals the container's pid 1 (SIGKILL there kills its whole PID namespace). */
  private signal(proc: Running, sig: number): void {
    if (proc.initPid > 0) {
      killQuietly(proc.initPid, sig);
    } else if (sig === 9 && proc.child.pid) {
      // pid 1 was never seen: the launcher's --kill-child takes it down with it.
      killQuietly(proc.child.pid, 9);
    }
  }

  async containerKill(ref: string, signal: string): Promise<void> {
    const c = this.find(ref);
    const sig = parseSignal(signal || "SIGKILL");
    if (sig === undefined) throw badRequest(`Invalid signal: ${signal}`);
    const proc = c.proc;
    if (!c.running || !proc) throw conflict(`cannot kill container: ${ref}: container ${c.id} is not running`);
    this.signal(proc, sig);
    if (sig === 9) await within(proc.handled, KILL_WAIT_MS);
  }

  // ---- wait -------------------------------------------------------------------------------------------

  async wait(ref: string, condition: WaitCondition = "not-running"): Promise<WaitResponse> {
    return (await this.containerWait(ref, condition)).result;
  }

  async containerWait(ref: string, condition: WaitCondition): Promise<PendingWait> {
    const c = this.find(ref);
    if (condition === "not-running" && !c.running) {
      return { result: Promise.resolve({ StatusCode: c.rec.state.exitCode }), cancel: () => undefined };
    }
    const set = condition === "removed" ? c.removeListeners : c.exitListeners;
    let listener: ((code: number) => void) | undefined;
    const result = new Promise<WaitResponse>((resolve) => {
      listener = (code) => {
        c.exitListeners.delete(listener!);
        c.removeListeners.delete(listener!);
        resolve({ StatusCode: code });
      };
      set.add(listener);
      // A removed container exits no more: exit waiters end with it too.
      if (condition !== "removed") c.removeListeners.add(listener);
    });
    return {
      result,
      cancel: () => {
        c.exitListeners.delete(listener!);
        c.removeListeners.delete(listener!);
      },
    };
  }

  // ---- remove -----------------------------------------------------------------------------------------

  async remove(ref: string, force = false): Promise<void> {
    return this.containerRemove(ref, { force });
  }

  async containerRemove(ref: string, opts: { force: boolean }): Promise<void> {
    const c = this.find(ref);
    const notStopped = (): ApiError =>
      conflict(
        `cannot remove container "/${c.rec.name}": container is running: stop the container before removing or force remove`,
      );
    if (c.running) {
      if (!opts.force) throw notStopped();
      const proc = c.proc;
      if (proc) {
        this.signal(proc, 9);
        if (!(await within(proc.handled, KILL_WAIT_MS))) {
          throw new ApiError(500, `could not kill container ${c.id}: its processes did not exit after SIGKILL`);
        }
      }
    }
    await this.locked(c, async () => {
      if (c.removed) throw noSuchContainer(ref);
      if (c.running) throw notStopped();
      c.rec.state.status = "removing";
      c.removed = true;
      // Nothing of it may stay behind: a namespace left by a crash, its files.
      await deleteNetns(this.netnsPathOf(c.id)).catch((err: unknown) =>
        this.log.warn({ err, id: c.id }, "could not remove the container's network namespace"),
      );
      await rm(c.dir, { recursive: true, force: true });
      this.containers.delete(c.id);
      for (const e of c.execIds) this.execs.delete(e);
      this.log.info({ id: c.id, name: c.rec.name }, "container removed");
    });
    for (const l of [...c.removeListeners]) l(c.rec.state.exitCode);
  }

  // ---- list / inspect ---------------------------------------------------------------------------------

  async list(all = false): Promise<ContainerSummary[]> {
    return this.containerList({ all, filters: {} });
  }

  async containerList(opts: ContainerListOptions): Promise<ContainerSummary[]> {
    const f = opts.filters;
    for (const key of Object.keys(f)) {
      if (!["id", "name", "status", "label", "exited", "network", "before", "since", "ancestor"].includes(key)) {
        throw badRequest(`invalid filter '${key}'`);
      }
    }
    for (const s of f.status ?? []) {
      if (!["created", "restarting", "running", "removing", "paused", "exited", "dead"].includes(s)) {
        throw badRequest(`invalid filter 'status=${s}'`);
      }
    }
    const all = opts.all || (f.status?.length ?? 0) > 0 || (f.exited?.length ?? 0) > 0;
    const out: ContainerSummary[] = [];
    for (const c of this.containers.values()) {
      if (c.removed) continue;
      const r = c.rec;
      if (!all && !c.running) continue;
      if (f.id && !f.id.some((v) => c.id.startsWith(v))) continue;
      if (f.name && !f.name.some((v) => matchesName(r.name, v))) continue;
      if (f.status && !f.status.includes(r.state.status)) continue;
      if (f.exited && !(r.state.status === "exited" && f.exited.includes(String(r.state.exitCode)))) continue;
      if (f.label && !f.label.every((l) => labelMatches(r.config.Labels, l))) continue;
      if (f.ancestor && !f.ancestor.some((a) => a === r.config.Image || a === HOST_IMAGE)) continue;
      if (f.network && !f.network.some((n) => this.networkMatches(c, n))) continue;
      out.push(this.summaryOf(c));
    }
    // Newest first, as dockerd lists them.
    out.sort((a, b) => (a.Created === b.Created ? 0 : b.Created - a.Created));
    return out;
  }

  private networkMatches(c: Container, ref: string): boolean {
    if (c.rec.networkMode === ref) return true;
    return c.rec.networks.some(
      (n) => n.ref === ref || n.endpoint?.networkName === ref || (ref !== "" && n.endpoint?.networkId.startsWith(ref)),
    );
  }

  private statusText(c: Container): string {
    const s = c.rec.state;
    const now = Date.now();
    switch (s.status) {
      case "created":
        return "Created";
      case "running":
        return `Up ${humanDuration(now - Date.parse(s.startedAt))}`;
      case "removing":
        return "Removal In Progress";
      case "exited":
        return `Exited (${s.exitCode}) ${humanDuration(now - Date.parse(s.finishedAt))} ago`;
    }
  }

  private endpointSettings(c: Container): Record<string, EndpointSettings> {
    const rec = c.rec;
    const out: Record<string, EndpointSettings> = {};
    if (rec.networks.length === 0) {
      out[rec.networkMode === "host" ? "host" : "none"] = endpointSettingsOf({ ref: "", cfg: {}, endpoint: null }, rec);
      return out;
    }
    for (const n of rec.networks) out[n.endpoint?.networkName || n.ref] = endpointSettingsOf(n, rec);
    return out;
  }

  private summaryOf(c: Container): ContainerSummary {
    const r = c.rec;
    return {
      Id: r.id,
      Names: [`/${r.name}`],
      Image: r.config.Image,
      ImageID: "",
      Command: commandText(r.path, r.args),
      Created: Math.floor(Date.parse(r.created) / 1000),
      Ports: [],
      Labels: { ...r.config.Labels },
      State: r.state.status,
      Status: this.statusText(c),
      HostConfig: { NetworkMode: r.networkMode },
      NetworkSettings: { Networks: this.endpointSettings(c) },
      Mounts: [],
    };
  }

  async inspect(ref: string): Promise<ContainerJSON> {
    return this.containerInspect(ref);
  }

  async containerInspect(ref: string): Promise<ContainerJSON> {
    const c = this.find(ref);
    const r = c.rec;
    const s = r.state;
    const execIds = [...c.execIds].filter((e) => this.execs.get(e)?.running);
    const hostNet = r.networkMode === "host";
    return {
      Id: r.id,
      Created: r.created,
      Path: r.path,
      Args: [...r.args],
      State: {
        Status: s.status,
        Running: s.status === "running",
        Paused: false,
        Restarting: false,
        OOMKilled: false,
        Dead: false,
        Pid: s.pid,
        ExitCode: s.exitCode,
        Error: s.error,
        StartedAt: s.startedAt,
        FinishedAt: s.finishedAt,
      },
      Image: r.config.Image,
      ResolvConfPath: hostNet ? "" : join(c.dir, "resolv.conf"),
      HostnamePath: hostNet ? "" : join(c.dir, "hostname"),
      HostsPath: hostNet ? "" : join(c.dir, "hosts"),
      LogPath: join(c.dir, `${r.id}-json.log`),
      Name: `/${r.name}`,
      RestartCount: 0,
      Driver: HOST_IMAGE,
      Platform: "linux",
      MountLabel: "",
      ProcessLabel: "",
      AppArmorProfile: "",
      ExecIDs: execIds.length > 0 ? execIds : null,
      HostConfig: {
        NetworkMode: r.networkMode,
        AutoRemove: r.autoRemove,
        LogConfig: { Type: "json-file", Config: {} },
      },
      GraphDriver: { Data: null, Name: HOST_IMAGE },
      Mounts: [],
      Config: { ...r.config, Env: [...r.config.Env], Labels: { ...r.config.Labels } },
      NetworkSettings: {
        SandboxID: c.running && !hostNet ? r.id : "",
        SandboxKey: c.running && !hostNet ? this.netnsPathOf(r.id) : "",
        Ports: {},
        Networks: this.endpointSettings(c),
      },
    };
  }

  containerCounts(): { total: number; running: number; paused: number; stopped: number } {
    let total = 0;
    let running = 0;
    for (const c of this.containers.values()) {
      if (c.removed) continue;
      total++;
      if (c.running) running++;
    }
    return { total, running, paused: 0, stopped: total - running };
  }

  // ---- networks of a container --------------------------------------------------------------------------

  /** `network connect`: joins now if the container runs, else on its next start. */
  async connect(ref: string, networkRef: string, cfg: EndpointSettingsRequest): Promise<void> {
    const c = this.find(ref);
    await this.locked(c, async () => {
      if (c.removed) throw noSuchContainer(ref);
      const rec = c.rec;
      if (rec.networkMode === "host") {
        throw badRequest("container cannot be disconnected from host network or connected to host network");
      }
      if (rec.networks.some((n) => attachmentIs(n, networkRef))) {
        throw new ApiError(403, `endpoint with name ${rec.name} already exists in network ${networkRef}`);
      }
      const n: NetworkAttachment = { ref: networkRef, cfg: endpointRequest(cfg), endpoint: null };
      if (c.running) {
        const netnsPath = this.netnsPathOf(rec.id);
        const used = new Set(rec.networks.map((_, i) => `eth${i}`));
        let i = 0;
        while (used.has(`eth${i}`)) i++;
        n.endpoint = await this.opts.attacher.attach(
          { id: rec.id, name: rec.name, netnsPath, ifname: `eth${i}` },
          networkRef,
          n.cfg,
        );
        if (rec.networks.some((x) => x.endpoint?.networkId === n.endpoint!.networkId)) {
          await this.opts.attacher.detach({ id: rec.id, name: rec.name, netnsPath }, n.endpoint).catch(() => undefined);
          throw new ApiError(403, `endpoint with name ${rec.name} already exists in network ${n.endpoint.networkName}`);
        }
      }
      rec.networks.push(n);
      if (rec.networkMode === "none" || rec.networkMode === "default") rec.networkMode = networkRef;
      if (c.running) await this.writeNetworkFiles(c);
      await this.persist(c);
    });
  }

  /** `network disconnect`: leaves now if the container runs. */
  async disconnect(ref: string, networkRef: string, force: boolean): Promise<void> {
    const c = this.find(ref);
    await this.locked(c, async () => {
      if (c.removed) throw noSuchContainer(ref);
      const rec = c.rec;
      if (rec.networkMode === "host") {
        throw badRequest("container cannot be disconnected from host network or connected to host network");
      }
      const i = rec.networks.findIndex((n) => attachmentIs(n, networkRef));
      if (i < 0) {
        if (force) return;
        throw badRequest(`container ${rec.id} is not connected to network ${networkRef}`);
      }
      const n = rec.networks[i]!;
      const networkName = n.endpoint?.networkName;
      if (n.endpoint) {
        await this.opts.attacher.detach(
          { id: rec.id, name: rec.name, netnsPath: this.netnsPathOf(rec.id) },
          n.endpoint,
        );
        n.endpoint = null;
      }
      rec.networks.splice(i, 1);
      if (rec.networkMode === n.ref || rec.networkMode === networkName) {
        rec.networkMode = rec.networks[0]?.ref ?? "none";
      }
      if (c.running) await this.writeNetworkFiles(c);
      await this.persist(c);
    });
  }

  // ---- logs and attach ----------------------------------------------------------------------------------

  /** Everything the container printed (stdout and stderr interleaved), for tests and tools. */
  async logs(ref: string): Promise<string> {
    const c = this.find(ref);
    const { records } = await readLogRecords(join(c.dir, `${c.id}-json.log`));
    return Buffer.concat(records.map((r) => r.data)).toString("utf8");
  }

  async containerLogs(ref: string, opts: LogsOptions): Promise<OutputStream> {
    const c = this.find(ref);
    const path = join(c.dir, `${c.id}-json.log`);
    const filter = { stdout: opts.stdout, stderr: opts.stderr, since: opts.since, until: opts.until };
    let tail = Number.POSITIVE_INFINITY;
    if (opts.tail !== "" && opts.tail !== "all") {
      const n = Number(opts.tail);
      tail = Number.isInteger(n) && n >= 0 ? n : Number.POSITIVE_INFINITY;
    }
    let cancelled = false;
    let wake: (() => void) | undefined;
    const listener = (): void => wake?.();
    const onExit = (): void => wake?.();
    async function* chunks(): AsyncGenerator<OutputChunk> {
      const first = await readLogRecords(path);
      let next = first.next;
      const matching = first.records.filter((r) => recordMatches(r, filter));
      const start = Number.isFinite(tail) ? Math.max(0, matching.length - tail) : 0;
      for (const r of matching.slice(start)) yield toChunk(r, opts.timestamps);
      if (!opts.follow) return;
      c.outputListeners.add(listener);
      c.exitListeners.add(onExit);
      c.removeListeners.add(onExit);
      try {
        for (;;) {
          const wasRunning = c.running && !c.removed;
          const more = await readLogRecords(path, next);
          next = more.next;
          for (const r of more.records) if (recordMatches(r, filter)) yield toChunk(r, opts.timestamps);
          if (cancelled || !wasRunning) return;
          await new Promise<void>((resolve) => {
            wake = resolve;
            setTimeout(resolve, 1000).unref();
          });
          wake = undefined;
        }
      } finally {
        c.outputListeners.delete(listener);
        c.exitListeners.delete(onExit);
        c.removeListeners.delete(onExit);
      }
    }
    return {
      tty: c.rec.config.Tty,
      chunks: chunks(),
      cancel: () => {
        cancelled = true;
        wake?.();
      },
    };
  }

  async containerAttach(ref: string, opts: AttachOptions): Promise<AttachSession> {
    const c = this.find(ref);
    if (c.rec.state.status === "exited" && opts.stream) {
      throw conflict("You cannot attach to a stopped container, start it first");
    }
    const queue = new ChunkQueue();
    const wanted = (stream: 1 | 2): boolean => (stream === 1 ? opts.stdout : opts.stderr);
    const buffered: LogRecord[] = [];
    let replaying = opts.logs;
    const listener = (r: LogRecord): void => {
      if (!wanted(r.stream)) return;
      if (replaying) buffered.push(r);
      else queue.push({ stream: r.stream, data: r.data, time: r.time });
    };
    const finish = (): void => {
      cleanup();
      queue.end();
    };
    const cleanup = (): void => {
      c.outputListeners.delete(listener);
      c.exitListeners.delete(finish);
      c.removeListeners.delete(finish);
    };
    if (opts.stream) {
      c.outputListeners.add(listener);
      c.exitListeners.add(finish);
      c.removeListeners.add(finish);
    }
    if (opts.logs) {
      const { records } = await readLogRecords(join(c.dir, `${c.id}-json.log`));
      const matching = records.filter((r) => wanted(r.stream));
      for (const r of matching) queue.push({ stream: r.stream, data: r.data, time: r.time }, true);
      // What was logged while the file was read is in both: skip the copies.
      const seen = new Set(
        matching.slice(-buffered.length).map((r) => `${r.time}|${r.stream}|${r.data.toString("base64")}`),
      );
      for (const r of buffered) {
        if (!seen.has(`${r.time}|${r.stream}|${r.data.toString("base64")}`))
          queue.push({ stream: r.stream, data: r.data, time: r.time }, true);
      }
      replaying = false;
    }
    if (!opts.stream) queue.end();
    let stdin: NodeJS.WritableStream | undefined;
    if (opts.stdin && c.rec.config.OpenStdin) {
      stdin = new Writable({
        write: (chunk: Buffer, _enc, cb) => {
          const target = c.proc?.stdin;
          if (target) target.write(chunk, () => cb());
          else {
            c.pendingStdin.push(chunk);
            cb();
          }
        },
        final: (cb) => {
          if (c.rec.config.StdinOnce) {
            if (c.proc?.stdin) c.proc.stdin.end();
            else c.pendingStdinEnd = true;
          }
          cb();
        },
      });
    }
    return { tty: c.rec.config.Tty, chunks: queue, stdin, cancel: finish };
  }

  // ---- exec -------------------------------------------------------------------------------------------

  /** Runs cmd in the container and collects its output (for tests and tools). */
  async exec(ref: string, cmd: string[]): Promise<{ exitCode: number; stdout: string; stderr: string }> {
    const id = await this.execCreate(ref, { Cmd: cmd, AttachStdout: true, AttachStderr: true });
    const session = await this.execStart(id);
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    const exitCode = await session.run({
      output: (c) => {
        (c.stream === 1 ? out : err).push(c.data);
        return undefined;
      },
    });
    return { exitCode, stdout: Buffer.concat(out).toString("utf8"), stderr: Buffer.concat(err).toString("utf8") };
  }

  async execCreate(ref: string, req: ExecCreateRequest): Promise<string> {
    const c = this.find(ref);
    if (!c.running) throw conflict(`container ${c.id} is not running`);
    const cmd = req.Cmd ?? [];
    if (cmd.length === 0) throw badRequest("No exec command specified");
    const id = newId();
    this.execs.set(id, {
      id,
      containerId: c.id,
      cmd: [...cmd],
      env: [...c.rec.config.Env, ...(req.Env ?? [])],
      workingDir: req.WorkingDir || c.rec.config.WorkingDir || "/",
      tty: req.Tty === true,
      attachStdin: req.AttachStdin === true,
      attachStdout: req.AttachStdout === true,
      attachStderr: req.AttachStderr === true,
      detachKeys: req.DetachKeys ?? "",
      started: false,
      running: false,
      exitCode: null,
      pid: 0,
    });
    c.execIds.add(id);
    return id;
  }

  private findExec(id: string): ExecRecord {
    const e = this.execs.get(id);
    if (!e) throw new ApiError(404, `No such exec instance: ${id}`);
    return e;
  }

  async execStart(execId: string): Promise<ExecSession> {
    const e = this.findExec(execId);
    if (e.started) throw conflict(`Exec command ${execId} has already run`);
    const c = this.containers.get(e.containerId);
    if (!c || c.removed) throw noSuchContainer(e.containerId);
    if (!c.running || !c.proc) throw conflict(`container ${c.id} is not running`);
    e.started = true;
    return {
      tty: e.tty,
      attachStdin: e.attachStdin,
      run: (io) => this.runExec(e, c, io),
    };
  }

  private async runExec(
    e: ExecRecord,
    c: Container,
    io: { output(chunk: OutputChunk): undefined | Promise<unknown>; stdin?: NodeJS.ReadableStream },
  ): Promise<number> {
    const proc = c.proc;
    if (!proc || proc.initPid <= 0) {
      e.exitCode = 126;
      io.output({ stream: 2, data: Buffer.from(`container ${c.id} is not running\n`) });
      return 126;
    }
    e.running = true;
    const argv = execArgv(proc.initPid, c.rec.networkMode === "host", e.workingDir, e.cmd);
    const out = await fifoPipe(join(c.dir, `exec-${e.id.slice(0, 12)}-out.fifo`));
    const err = await fifoPipe(join(c.dir, `exec-${e.id.slice(0, 12)}-err.fifo`));
    let child: ChildProcess;
    try {
      child = spawn(argv[0]!, argv.slice(1), {
        stdio: [e.attachStdin ? "pipe" : "ignore", out.writeFd, err.writeFd],
        env: envObject(e.env),
        cwd: "/",
        detached: true,
      });
    } finally {
      closeSync(out.writeFd);
      closeSync(err.writeFd);
    }
    e.pid = child.pid ?? 0;
    // A pending output (the client is behind) pauses its pipe: the process waits, memory does not grow.
    const forward = (reader: NodeJS.ReadableStream, stream: 1 | 2, attached: boolean): void => {
      reader.on("data", (d: Buffer) => {
        if (!attached) return;
        const pending = io.output({ stream, data: d });
        if (pending) {
          reader.pause();
          void pending.finally(() => reader.resume());
        }
      });
    };
    forward(out.reader, 1, e.attachStdout);
    forward(err.reader, 2, e.attachStderr);
    if (e.attachStdin && child.stdin) {
      child.stdin.on("error", () => undefined);
      if (io.stdin) io.stdin.pipe(child.stdin);
      else child.stdin.end();
    }
    const status = await new Promise<{ code: number | null; signal: NodeJS.Signals | null; error?: Error }>(
      (resolve) => {
        let settled = false;
        child.once("exit", (code, signal) => {
          if (!settled) resolve({ code, signal });
          settled = true;
        });
        child.once("error", (error) => {
          if (!settled) resolve({ code: 126, signal: null, error });
          settled = true;
        });
      },
    );
    if (!(await within(Promise.all([streamDone(out.reader), streamDone(err.reader)]), DRAIN_MS))) {
      out.reader.destroy();
      err.reader.destroy();
    }
    if (status.error) {
      const why = explainMissing(argv[0]!, status.error) ?? status.error.message;
      io.output({ stream: 2, data: Buffer.from(`${why}\n`) });
    }
    const code = status.signal ? 128 + signalNumberOf(status.signal) : (status.code ?? 255);
    e.running = false;
    e.exitCode = code;
    e.pid = 0;
    return code;
  }

  async execInspect(execId: string): Promise<ExecInspect> {
    const e = this.findExec(execId);
    return {
      ID: e.id,
      Running: e.running,
      ExitCode: e.exitCode,
      ProcessConfig: {
        tty: e.tty,
        entrypoint: e.cmd[0] ?? "",
        arguments: e.cmd.slice(1),
        privileged: false,
      },
      OpenStdin: e.attachStdin,
      OpenStderr: e.attachStderr,
      OpenStdout: e.attachStdout,
      CanRemove: false,
      ContainerID: e.containerId,
      DetachKeys: e.detachKeys,
      Pid: e.pid,
    };
  }

  // ---- restart and shutdown -------------------------------------------------------------------------

  /**
   * Loads the containers in stateDir (once) and brings what a previous daemon left in line: a container
   * recorded as running whose daemon is gone is killed (its PID namespace with it) and reported exited;
   * its endpoints are detached. Namespace files of containers that are not running are removed.
   */
  async reconcile(): Promise<void> {
    if (!this.loaded) {
      this.loaded = true;
      await mkdir(this.opts.stateDir, { recursive: true, mode: 0o700 });
      for (const entry of await readdir(this.opts.stateDir)) {
        if (!/^[0-9a-f]{64}$/.test(entry)) continue;
        const dir = join(this.opts.stateDir, entry);
        let rec: ContainerRecord;
        try {
          rec = JSON.parse(await readFile(join(dir, "state.json"), "utf8")) as ContainerRecord;
        } catch (err) {
          this.log.warn({ err, dir }, "skipping a container directory without a readable state.json");
          continue;
        }
        if (this.containers.has(rec.id)) continue;
        const c = new Container(rec, dir);
        this.containers.set(rec.id, c);
        await this.adopt(c);
      }
    }
    // Namespace files: ours are named by 12 hex digits (the data plane's overlays are "1-...").
    let names: string[] = [];
    try {
      names = await readdir(this.netnsDir);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
    }
    for (const n of names) {
      if (!/^[0-9a-f]{12}$/.test(n)) continue;
      const owner = [...this.containers.values()].find((c) => c.id.startsWith(n));
      if (owner?.running) continue;
      const path = join(this.netnsDir, n);
      this.log.info({ path }, "removing a network namespace left by a container that is not running");
      await deleteNetns(path).catch((err: unknown) =>
        this.log.warn({ err, path }, "could not remove a stale network namespace"),
      );
    }
  }

  /** A container found on disk: finish what its daemon could not. */
  private async adopt(c: Container): Promise<void> {
    const s = c.rec.state;
    if (s.status === "removing") {
      c.removed = true;
      await rm(c.dir, { recursive: true, force: true });
      this.containers.delete(c.id);
      return;
    }
    if (s.status !== "running") return;
    let exitCode = 255;
    // Without its start time a pid may name someone else's process by now: never kill that.
    if (s.pidStart !== undefined && (await isSameProcess(s.pid, s.pidStart))) {
      this.log.info({ id: c.id, pid: s.pid }, "killing a container left running by a previous daemon");
      killQuietly(s.pid, 9);
      for (let i = 0; i < 100 && (await isSameProcess(s.pid, s.pidStart)); i++) await delay(20);
      exitCode = 137;
    }
    await this.releaseNetworks(c);
    c.rec.state = { ...s, status: "exited", pid: 0, exitCode, finishedAt: nowRFC3339Nano() };
    delete c.rec.state.pidStart;
    await this.persist(c);
    if (c.rec.autoRemove) await this.containerRemove(c.id, { force: true }).catch(() => undefined);
  }

  /** Stops every running container (the daemon is going away), each with its stop timeout or `timeoutSecs`. */
  async shutdown(timeoutSecs?: number): Promise<void> {
    const running = [...this.containers.values()].filter((c) => c.running && !c.removed);
    await Promise.all(
      running.map((c) =>
        this.containerStop(c.id, timeoutSecs === undefined ? {} : { timeout: timeoutSecs }).catch((err: unknown) =>
          this.log.warn({ err, id: c.id }, "could not stop a container at shutdown"),
        ),
      ),
    );
  }

  /** Namespace files under <execRoot>/netns that belong to containers (for tests and diagnostics). */
  async containerNetnsFiles(): Promise<string[]> {
    let names: string[] = [];
    try {
      names = await readdir(this.netnsDir);
    } catch {
      return [];
    }
    const out: string[] = [];
    for (const n of names) {
      if (/^[0-9a-f]{12}$/.test(n) && (await netnsState(join(this.netnsDir, n))) !== "absent") out.push(n);
    }
    return out;
  }
}

class LaunchError extends ApiError {
  constructor(
    message: string,
    readonly exitCode: number,
  ) {
    super(exitCode === 127 ? 400 : 500, message);
  }
}

function streamDone(s: Readable): Promise<void> {
  return new Promise((resolve) => {
    if (s.destroyed || s.readableEnded) {
      resolve();
      return;
    }
    s.once("close", () => resolve());
    s.once("end", () => resolve());
    s.once("error", () => resolve());
  });
}

function envObject(env: string[]): NodeJS.ProcessEnv {
  const out: NodeJS.ProcessEnv = {};
  for (const kv of env) {
    const eq = kv.indexOf("=");
    if (eq > 0) out[kv.slice(0, eq)] = kv.slice(eq + 1);
  }
  return out;
}

function endpointRequest(v: EndpointSettingsRequest | null | undefined): EndpointSettingsRequest {
  const out: EndpointSettingsRequest = {};
  const ip = v?.IPAMConfig?.IPv4Address;
  if (ip) out.IPAMConfig = { IPv4Address: ip };
  const aliases = (v?.Aliases ?? []).filter((a) => typeof a === "string" && a !== "");
  if (aliases.length > 0) out.Aliases = aliases;
  return out;
}

function attachmentIs(n: NetworkAttachment, ref: string): boolean {
  if (n.ref === ref) return true;
  const ep = n.endpoint;
  if (!ep) return false;
  return ep.networkName === ref || ep.networkId === ref || (ref.length >= 3 && ep.networkId.startsWith(ref));
}

function endpointSettingsOf(n: NetworkAttachment, rec: ContainerRecord): EndpointSettings {
  const ep = n.endpoint;
  return {
    IPAMConfig: n.cfg.IPAMConfig?.IPv4Address ? { IPv4Address: n.cfg.IPAMConfig.IPv4Address } : null,
    Links: null,
    Aliases: n.cfg.Aliases && n.cfg.Aliases.length > 0 ? [...n.cfg.Aliases] : null,
    MacAddress: ep?.mac ?? "",
    DriverOpts: null,
    GwPriority: 0,
    NetworkID: ep?.networkId ?? "",
    EndpointID: ep?.endpointId ?? "",
    Gateway: ep?.gateway ?? "",
    IPAddress: ep?.ip ?? "",
    IPPrefixLen: ep?.prefixLen ?? 0,
    IPv6Gateway: "",
    GlobalIPv6Address: "",
    GlobalIPv6PrefixLen: 0,
    DNSNames: ep ? [rec.name, ...(n.cfg.Aliases ?? []), rec.id.slice(0, 12)] : null,
  };
}

/** dockerd's name filter: a regular expression matched against the name (and "/name"). */
function matchesName(name: string, pattern: string): boolean {
  if (name === pattern || `/${name}` === pattern) return true;
  try {
    return new RegExp(pattern).test(`/${name}`);
  } catch {
    return false;
  }
}

/** "key" or "key=value" against labels. */
function labelMatches(labels: Record<string, string>, f: string): boolean {
  const eq = f.indexOf("=");
  if (eq < 0) return Object.hasOwn(labels, f);
  const k = f.slice(0, eq);
  return Object.hasOwn(labels, k) && labels[k] === f.slice(eq + 1);
}
