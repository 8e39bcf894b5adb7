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
//
// State: every container has a directory under stateDir (state.json, its json-file log, resolv.conf,
// hosts, hostname). A daemon that restarts finds them there; containers a dead daemon left running are
// killed and reported exited, and their namespace files removed (recovery.ts).

import type { Logger } from "pino";
import { noSuchContainer } from "./container.js";
import { type ContainerSpec, specFromRequest } from "./create.js";
import { Execs } from "./exec.js";
import { Launcher } from "./launch.js";
import { Lifecycle } from "./lifecycle.js";
import { ContainerNetworks } from "./networks.js";
import { checkListOptions, inspectOf, listed, summaryOf } from "./present.js";
import { Recovery } from "./recovery.js";
import { containerAttach, containerLogs } from "./streams.js";
import { ContainerTable } from "./table.js";
import type {
  AttachOptions,
  AttachSession,
  ContainerBackend,
  ContainerCreateRequest,
  ContainerJSON,
  ContainerListOptions,
  ContainerSummary,
  EndpointSettingsRequest,
  ExecCreateRequest,
  ExecInspect,
  ExecSession,
  LogsOptions,
  NetworkAttacher,
  OutputStream,
  PendingWait,
  WaitCondition,
} from "./types.js";

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

export class ContainerRuntime implements ContainerBackend {
  private readonly table: ContainerTable;
  private readonly networks: ContainerNetworks;
  private readonly lifecycle: Lifecycle;
  private readonly execs: Execs;
  private readonly recovery: Recovery;

  constructor(opts: ContainerRuntimeOptions) {
    const log = opts.logger.child({ component: "containers", ...(opts.hostname ? { host: opts.hostname() } : {}) });
    this.table = new ContainerTable(opts.stateDir, log);
    this.networks = new ContainerNetworks(opts.attacher, this.table, opts.execRoot, log);
    this.execs = new Execs(this.table, log);
    const launcher = new Launcher(opts.containersOutliveDaemon === true, log);
    this.lifecycle = new Lifecycle(this.table, this.networks, launcher, (c) => this.execs.forget(c), log);
    this.recovery = new Recovery(this.table, this.networks, this.lifecycle, log);
  }

  /** A runtime with the containers a previous daemon left (see reconcile). */
  static async open(opts: ContainerRuntimeOptions): Promise<ContainerRuntime> {
    const rt = new ContainerRuntime(opts);
    await rt.reconcile();
    return rt;
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

  containerStop(ref: string, opts: { timeout?: number; signal?: string }): Promise<boolean> {
    return this.lifecycle.stop(ref, opts);
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

  async containerList(opts: ContainerListOptions): Promise<ContainerSummary[]> {
    const all = checkListOptions(opts);
    const now = Date.now();
    const out = this.table
      .live()
      .filter((c) => (all || c.running) && listed(c, opts.filters))
      .map((c) => summaryOf(c, now));
    // Newest first, as dockerd lists them.
    return out.sort((a, b) => b.Created - a.Created);
  }

  async containerInspect(ref: string): Promise<ContainerJSON> {
    const c = this.table.find(ref);
    return inspectOf(c, this.execs.runningOf(c), this.networks.netnsPathOf(c.id));
  }

  containerCounts(): { total: number; running: number; paused: number; stopped: number } {
    const live = this.table.live();
    const running = live.filter((c) => c.running).length;
    return { total: live.length, running, paused: 0, stopped: live.length - running };
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
    return this.recovery.reconcile();
  }

  /** Stops every running container (the daemon is going away), each with its stop timeout or `timeoutSecs`. */
  shutdown(timeoutSecs?: number): Promise<void> {
    return this.recovery.shutdown(timeoutSecs);
  }

  /** Namespace files under <execRoot>/netns that belong to containers (for tests and diagnostics). */
  containerNetnsFiles(): Promise<string[]> {
    return this.recovery.containerNetnsFiles();
  }
}
