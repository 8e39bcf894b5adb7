// The container runtime: containers as sandboxes on the host's file system (image "host"), each in its own
// network namespace and its own mount, UTS, IPC and PID namespaces, with /etc/resolv.conf, /etc/hosts and
// /etc/hostname of its own. Networks are joined through a NetworkAttacher (the managers allocate the
// endpoint, the data plane wires it into the namespace). It serves the Engine API's container calls
// (ContainerBackend) in Docker's shapes and words.
//
// This class is the runtime's face; the work is done by its parts, one file each:
//   table.ts      the containers by id and name, and state.json       create.ts    a new container's spec
//   lifecycle.ts  create, start, exit, stop, kill, wait, remove       launch.ts    the process and its exit
//   networks.ts   namespace, endpoints, resolv.conf/hosts/hostname   present.ts   ps and inspect
//   streams.ts    logs and attach                                    exec.ts      exec
//   recovery.ts   what a previous daemon left; shutdown              sandbox.ts   namespaces, pipes, /proc
//   manage.ts     rename, pause, unpause, prune                      stats.ts     docker stats from cgroups
//   netns-pool.ts namespaces made ahead for containers to come (in <execRoot>/netns-pool, not netns)
//   sizes.ts      what a container wrote (ps -s, inspect --size, system df, prune's reclaimed space)
//   rootfs.ts     a new container's root file system (begun before its image lookup, on the snapshot last seen)
//
// State: every container has a directory under stateDir (state.json, its json-file log, resolv.conf,
// hosts, hostname). A daemon that restarts finds them there; containers a dead daemon left running are
// killed and reported exited, and their namespace files removed (recovery.ts).

import { join } from "node:path";
import type { Logger } from "pino";
import { ApiError, badRequest, conflict, notFound } from "../api/errors.js";
import { delay } from "./async.js";
import { type Container, eventAttributes, noSuchContainer } from "./container.js";
import { type Containerd, SNAPSHOTTER } from "./containerd/client.js";
import { FifoPool, TaskClient } from "./containerd/tasks.js";
import { type ContainerSpec, HOST_IMAGE, specFromRequest } from "./create.js";
import { EventLog } from "./events.js";
import { Execs } from "./exec.js";
import { familiarName, fullName, parseReference } from "./images/reference.js";
import { ImageService } from "./images/service.js";
import { ImageStore, type ResolvedImage } from "./images/store.js";
import { Launcher } from "./launch.js";
import { Lifecycle } from "./lifecycle.js";
import { ContainerManager } from "./manage.js";
import { ContainerNetworks } from "./networks.js";
import { checkListOptions, inspectOf, listed, summaryOf } from "./present.js";
import { hasEndpoints, Recovery } from "./recovery.js";
import type { RunImage } from "./rootfs.js";
import { mountMover, runCommand } from "./sandbox.js";
import { ContainerSizes } from "./sizes.js";
import type { ProcessUser } from "./spec.js";
import { statsStream } from "./stats.js";
import { containerAttach, containerLogs } from "./streams.js";
import { ContainerTable } from "./table.js";
import type {
  AttachedEndpoint,
  AttachOptions,
  AttachSession,
  ContainerBackend,
  ContainerCreateRequest,
  ContainerJSON,
  ContainerListOptions,
  ContainerPruneFilter,
  ContainerSummary,
  EndpointSettingsRequest,
  ExecCreateRequest,
  ExecInspect,
  ExecSession,
  LogsOptions,
  NetworkAttacher,
  OutputStream,
  PendingWait,
  StatsStream,
  WaitCondition,
} from "./types.js";
import { layerDirs, resolveUser } from "./user.js";

/** The rows of `ps` output whose PID is one of `pids`, split into docker's Titles and Processes. */
export function topOf(psOutput: string, pids: Set<string>): { Titles: string[]; Processes: string[][] } {
  const lines = psOutput.split("\n").filter((l) => l.trim() !== "");
  const titles = (lines[0] ?? "").trim().split(/\s+/);
  const pidCol = titles.indexOf("PID");
  if (pidCol < 0) throw badRequest(`Couldn't find PID field in ps output`);
  const processes: string[][] = [];
  for (const line of lines.slice(1)) {
    const fields = line.trim().split(/\s+/);
    if (!pids.has(fields[pidCol] ?? "")) continue;
    // The last column (the command) keeps its spaces.
    processes.push([...fields.slice(0, titles.length - 1), fields.slice(titles.length - 1).join(" ")]);
  }
  return { Titles: titles, Processes: processes };
}

/** An image reference as docker says it in "No such image: busybox:latest" (the tag filled in). */
function displayRef(ref: string): string {
  try {
    return familiarName(fullName(parseReference(ref)));
  } catch {
    // Not a reference (an id prefix): said as given.
    return ref;
  }
}

export interface ContainerRuntimeOptions {
  /** The daemon's run directory (shoald --exec-root): network namespace files go in <execRoot>/netns. */
  execRoot: string;
  /** Per-container files: state.json, the log, the stdio FIFOs, resolv.conf, hosts, hostname. */
  stateDir: string;
  attacher: NetworkAttacher;
  /** The containerd that runs the containers (in shoal's namespace). */
  containerd: Containerd;
  /**
   * Whether that containerd is this daemon's alone (managed by it). A given one (--containerd) may serve
   * other shoal daemons in the same namespace: containers without a record here may be theirs.
   */
  ownsContainerd?: boolean;
  /**
   * The root of that containerd when this daemon manages it (its local content store is there): a pull puts
   * its layers' blobs in place there itself (containerd/blobfile.ts).
   */
  containerdRoot?: string;
  /** Registries reached over plain HTTP (shoald --insecure-registry). */
  insecureRegistries?: string[];
  /** Layers of one pull downloaded at once (shoald --max-concurrent-downloads; default 3, as dockerd). */
  maxConcurrentDownloads?: number;
  /** This host's name (for the logs). */
  hostname?: () => string;
  /** How long a task made ahead of a new container's first start waits for it (default 10 s; tests). */
  aheadTtlMs?: number;
  logger: Logger;
}

/** The FIFO pool's directory in stateDir (beside the containers' directories: a rename moves a FIFO in). */
const FIFO_POOL_DIR = "fifo-pool";

/** The host image: the host's root file system, read-only; its config is empty (PATH only). */
const HOST_IMAGE_FOR_RUN = {
  id: "",
  rootfs: "host" as const,
  config: {},
  topChainId: "",
  unpack: async () => undefined,
};

export class ContainerRuntime implements ContainerBackend {
  readonly images: ImageStore;
  /** The Engine API's image calls. */
  readonly imageService: ImageService;
  private readonly cd: Containerd;
  private readonly table: ContainerTable;
  private readonly networks: ContainerNetworks;
  private readonly tasks: TaskClient;
  private readonly lifecycle: Lifecycle;
  private readonly execs: Execs;
  private readonly recovery: Recovery;
  private readonly manager: ContainerManager;
  /** What `docker events` reports: containers, images, and the networks the engine changes. */
  readonly events = new EventLog();
  /** The FIFOs of containers' and exec'd processes' stdio, made ahead (a process each batch, not each start). */
  private readonly fifos: FifoPool;
  private readonly log: Logger;

  constructor(opts: ContainerRuntimeOptions) {
    const log = opts.logger.child({ component: "containers", ...(opts.hostname ? { host: opts.hostname() } : {}) });
    this.log = log;
    this.cd = opts.containerd;
    this.images = new ImageStore(opts.containerd, log, opts.containerdRoot);
    this.imageService = new ImageService(
      this.images,
      { insecureRegistries: opts.insecureRegistries ?? [], maxConcurrentDownloads: opts.maxConcurrentDownloads },
      (id) => this.containerUsing(id),
      this.events,
    );
    this.tasks = new TaskClient(opts.containerd, log, join(opts.execRoot, "runtime-runc"));
    this.table = new ContainerTable(opts.stateDir, log);
    this.networks = new ContainerNetworks(opts.attacher, this.table, opts.execRoot, log);
    this.fifos = new FifoPool(join(opts.stateDir, FIFO_POOL_DIR), log);
    this.execs = new Execs(
      this.table,
      this.tasks,
      (c, user) => this.userOf(c, user || c.rec.config.User),
      log,
      this.fifos.make,
    );
    const launcher = new Launcher(this.tasks, log, this.fifos.make);
    this.lifecycle = new Lifecycle({
      table: this.table,
      networks: this.networks,
      launcher,
      tasks: this.tasks,
      imageForRun: (ref) => this.imageForRun(ref),
      userOf: (c) => this.userOf(c, c.rec.config.User),
      onRemoved: (c) => this.execs.forget(c),
      events: this.events,
      ...(opts.aheadTtlMs !== undefined ? { aheadTtlMs: opts.aheadTtlMs } : {}),
      log,
    });
    this.manager = new ContainerManager(this.table, this.tasks, this.lifecycle, this.networks, this.events, log);
    this.recovery = new Recovery({
      table: this.table,
      networks: this.networks,
      lifecycle: this.lifecycle,
      launcher,
      tasks: this.tasks,
      ownsContainerd: opts.ownsContainerd ?? false,
      log,
    });
  }

  /** A runtime with the containers a previous daemon left (see reconcile). */
  static async open(opts: ContainerRuntimeOptions): Promise<ContainerRuntime> {
    const rt = new ContainerRuntime(opts);
    await rt.reconcile();
    return rt;
  }

  /**
   * The image a container is created from (404 in docker's words when it is not here), and how to unpack it:
   * the create prepares its root file system on the image's top snapshot and unpacks only when containerd
   * says that is not there (a round trip less for every create of an unpacked image).
   */
  private async imageForRun(ref: string): Promise<RunImage> {
    if (ref === HOST_IMAGE || ref === `${HOST_IMAGE}:latest`) return { ...HOST_IMAGE_FOR_RUN, name: ref };
    if (ref === "") throw badRequest("No image specified: use an image name (docker run IMAGE)");
    let img: ResolvedImage;
    try {
      img = await this.images.resolve(ref);
    } catch (err) {
      if (err instanceof ApiError && err.status === 404) throw notFound(`No such image: ${displayRef(ref)}`);
      throw err;
    }
    const unpack = async (): Promise<void> => {
      if (await this.images.unpacked(img)) return;
      const lease = await this.images.lease();
      try {
        await this.images.unpack(img.manifest, img.config, lease.id);
      } finally {
        await lease.done();
      }
    };
    return {
      name: ref,
      id: img.id,
      rootfs: "snapshot",
      config: img.config.config ?? {},
      topChainId: img.topChainId,
      unpack,
    };
  }

  /** A user spec resolved in the container's root file system (the host's, or its snapshot's layers). */
  private async userOf(c: Container, user: string): Promise<ProcessUser> {
    if (user === "") return { uid: 0, gid: 0 };
    if (c.rec.image.rootfs === "host") return resolveUser(user, ["/"]);
    const { mounts } = await this.cd.call(this.cd.snapshots, this.cd.snapshots.mounts, {
      snapshotter: SNAPSHOTTER,
      key: c.id,
    });
    return resolveUser(user, layerDirs(mounts));
  }

  /** Whether a container (any, running or not) uses the image with this id: docker's rmi check. */
  containerUsing(imageId: string): string | undefined {
    return this.table.live().find((c) => c.rec.image.id === imageId)?.id;
  }

  // ---- the Engine API's container calls ------------------------------------------------------------------

  /** Creates a container from a spec (containerCreate maps Docker's request onto one). */
  create(spec: ContainerSpec): Promise<string> {
    return this.lifecycle.create(spec);
  }

  async containerCreate(
    name: string | undefined,
    req: ContainerCreateRequest,
  ): Promise<{ Id: string; Warnings: string[] }> {
    return { Id: await this.lifecycle.create(specFromRequest(name, req)), Warnings: [] };
  }

  containerStart(ref: string): Promise<boolean> {
    return this.lifecycle.start(ref);
  }

  async containerStop(ref: string, opts: { timeout?: number; signal?: string }): Promise<boolean> {
    const c = this.table.find(ref);
    const stopped = await this.lifecycle.stop(ref, opts);
    if (stopped) this.events.emit("container", "stop", c.id, eventAttributes(c));
    return stopped;
  }

  containerKill(ref: string, signal: string): Promise<void> {
    return this.lifecycle.kill(ref, signal);
  }

  containerWait(ref: string, condition: WaitCondition): Promise<PendingWait> {
    return this.lifecycle.wait(ref, condition);
  }

  containerRemove(ref: string, opts: { force: boolean }): Promise<void> {
    return this.lifecycle.remove(ref, opts);
  }

  containerRename(ref: string, newName: string): Promise<void> {
    return this.manager.rename(ref, newName);
  }

  containerPause(ref: string): Promise<void> {
    return this.manager.pause(ref);
  }

  containerUnpause(ref: string): Promise<void> {
    return this.manager.unpause(ref);
  }

  async containerStats(ref: string, opts: { stream: boolean; oneShot: boolean }): Promise<StatsStream> {
    const c = this.table.find(ref);
    const current = () =>
      c.running && !c.removed && c.rec.state.pid > 0
        ? { id: c.id, name: c.rec.name, pid: c.rec.state.pid, memoryLimitBytes: c.rec.hostConfig.memoryBytes }
        : undefined;
    return statsStream({ id: c.id, name: c.rec.name }, current, opts, delay);
  }

  containerPrune(filter: ContainerPruneFilter): Promise<{ deleted: string[]; reclaimedBytes: number }> {
    return this.manager.prune(filter);
  }

  async containerList(opts: ContainerListOptions): Promise<ContainerSummary[]> {
    const all = checkListOptions(opts);
    const now = Date.now();
    const out = this.table
      .live()
      .filter((c) => (all || c.running) && listed(c, opts.filters))
      .map((c) => summaryOf(c, now));
    // Newest first, as dockerd lists them.
    out.sort((a, b) => b.Created - a.Created);
    if (opts.size) {
      const sizes = new ContainerSizes(this.tasks, this.images);
      await Promise.all(out.map(async (s) => Object.assign(s, await sizes.of(s.Id, s.ImageID))));
    }
    return out;
  }

  async containerInspect(ref: string, opts: { size?: boolean } = {}): Promise<ContainerJSON> {
    const c = this.table.find(ref);
    const out = inspectOf(c, this.execs.runningOf(c), this.networks.netnsPathOf(c.id));
    if (opts.size) Object.assign(out, await new ContainerSizes(this.tasks, this.images).of(c.id, out.Image));
    return out;
  }

  async containerResize(ref: string, height: number, width: number): Promise<void> {
    const c = this.table.find(ref);
    if (!c.running) throw conflict(`Container ${c.id} is not running`);
    if (!c.rec.config.Tty) return;
    await this.tasks.resize(c.id, "", width, height);
  }

  /** `docker top`: the host's `ps` (with the given options, "-ef" by default), only the container's processes. */
  async containerTop(ref: string, psArgs: string): Promise<{ Titles: string[]; Processes: string[][] }> {
    const c = this.table.find(ref);
    if (!c.running) throw conflict(`container ${c.id} is not running`);
    const pids = new Set((await this.tasks.pids(c.id)).map(String));
    const args = (psArgs || "-ef").split(/\s+/).filter((a) => a !== "");
    const r = await runCommand(["ps", ...args]);
    if (r.code !== 0) throw new ApiError(500, `ps: ${r.stderr.trim() || `exited with code ${r.code}`}`);
    return topOf(r.stdout, pids);
  }

  containerCounts(): { total: number; running: number; paused: number; stopped: number } {
    const live = this.table.live();
    const paused = live.filter((c) => c.paused).length;
    const running = live.filter((c) => c.running).length - paused;
    return { total: live.length, running, paused, stopped: live.length - running - paused };
  }

  async containerLogs(ref: string, opts: LogsOptions): Promise<OutputStream> {
    return containerLogs(this.table.find(ref), opts);
  }

  containerAttach(ref: string, opts: AttachOptions): Promise<AttachSession> {
    return containerAttach(this.table.find(ref), opts);
  }

  execCreate(ref: string, req: ExecCreateRequest): Promise<string> {
    return this.execs.create(ref, req);
  }

  execStart(execId: string): Promise<ExecSession> {
    return this.execs.start(execId);
  }

  execResize(execId: string, height: number, width: number): Promise<void> {
    return this.execs.resize(execId, height, width);
  }

  execInspect(execId: string): Promise<ExecInspect> {
    return this.execs.inspect(execId);
  }

  // ---- networks of a container (network connect/disconnect come through the daemon) ---------------------

  /** `network connect`: joins now if the container runs, else on its next start. */
  async connect(ref: string, networkRef: string, cfg: EndpointSettingsRequest): Promise<void> {
    const c = this.table.find(ref);
    await c.locked(async () => {
      if (c.removed) throw noSuchContainer(ref);
      await this.networks.connect(c, networkRef, cfg);
    });
  }

  /** `network disconnect`: leaves now if the container runs. */
  async disconnect(ref: string, networkRef: string, force: boolean): Promise<void> {
    const c = this.table.find(ref);
    await c.locked(async () => {
      if (c.removed) throw noSuchContainer(ref);
      await this.networks.disconnect(c, networkRef, force);
    });
  }

  // ---- restart and shutdown ------------------------------------------------------------------------------

  /** Loads what a previous daemon left and brings it in line (recovery.ts). */
  reconcile(): Promise<void> {
    this.fifos.open();
    return this.recovery.reconcile();
  }

  /**
   * The daemon is going away: containers keep running (containerd keeps them; the next daemon adopts
   * them, with their endpoints when the node's networking can take those over), except those on networks
   * it cannot (see NetworkAttacher.adoptable), which are stopped (each with its stop timeout, or
   * `timeoutSecs`). Restart policies stop acting.
   */
  async shutdown(timeoutSecs?: number): Promise<void> {
    this.lifecycle.close();
    const networked = this.table.live().filter((c) => c.running && hasEndpoints(c) && !this.networks.adoptable(c));
    await Promise.all(
      networked.map((c) =>
        this.lifecycle
          .stop(c.id, timeoutSecs === undefined ? {} : { timeout: timeoutSecs }, false)
          .catch((err: unknown) => this.log.warn({ err, id: c.id }, "could not stop a container at shutdown")),
      ),
    );
    await this.dropAhead();
    // The mount mover's process (sandbox.ts) goes with the daemon's last move.
    mountMover.close();
    await this.images.close();
    this.cd.close();
  }

  /**
   * Removes what was made ahead for creates and starts that will not come now (the next daemon would find
   * it stale): tasks and namespaces of containers not started yet, the namespaces for containers to come.
   * The daemon is going away: no more is made ahead, and restart policies stop acting.
   */
  async dropAhead(): Promise<void> {
    this.lifecycle.close();
    const ahead = this.table.live().filter((c) => c.netnsAhead || c.taskAhead);
    await Promise.all(
      ahead.map((c) =>
        c.locked(async () => {
          await this.lifecycle.dropAhead(c, "the daemon's shutdown");
          if (!c.running) await this.networks.release(c, "the daemon's shutdown");
        }),
      ),
    );
    await this.networks.pool.close();
  }

  /**
   * The endpoints of the containers that run now (after reconcile: the adopted ones), for the node's
   * networking to keep (overlays, names) instead of removing them as a previous run's.
   */
  runningEndpoints(): { id: string; name: string; netnsPath: string; endpoint: AttachedEndpoint }[] {
    return this.table
      .live()
      .filter((c) => c.running)
      .flatMap((c) =>
        c.rec.networks
          .filter((n) => n.endpoint)
          .map((n) => ({
            id: c.id,
            name: c.rec.name,
            netnsPath: this.networks.netnsPathOf(c.id),
            endpoint: n.endpoint!,
          })),
      );
  }

  /** Resolves once no namespaces are being made ahead for containers to come (tests). */
  netnsPoolSettled(): Promise<void> {
    return this.networks.pool.settled();
  }

  /** Namespace files under <execRoot>/netns that belong to containers (for tests and diagnostics). */
  containerNetnsFiles(): Promise<string[]> {
    return this.recovery.containerNetnsFiles();
  }
}
