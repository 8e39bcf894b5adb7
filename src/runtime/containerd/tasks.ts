// A container's processes in containerd: the containerd container (its OCI spec, its root file system
// snapshot) made when it starts, its task created with FIFOs for stdio in the container's directory and
// started, waited for, signalled, deleted when it has exited; and processes exec'd into it. The shim that
// runs a task outlives containerd and shoald: a shoald that restarts reattaches to the FIFOs and waits again.

import { closeSync, constants as fsConstants, openSync } from "node:fs";
import { mkdir, rename, rm } from "node:fs/promises";
import { Socket } from "node:net";
import { join } from "node:path";
import type { Logger } from "pino";
import { Options as RuncOptions } from "../../gen/containerd/runc_options.js";
import { Kind } from "../../gen/containerd/snapshots.js";
import { Status } from "../../gen/containerd/task_types.js";
import type { Mount } from "../../gen/containerd/types.js";
import { commandShell } from "../sandbox.js";
import { type Containerd, ContainerdError, isAlreadyExists, isNotFound, RUNTIME, SNAPSHOTTER } from "./client.js";

/** The type URL containerd and the runc shim know runc's options by (their registered message name). */
const RUNC_OPTIONS_TYPE_URL = "containerd.runc.v1.Options";

/** The FIFOs of a process, in the container's directory. */
export interface FifoPaths {
  stdin: string;
  stdout: string;
  stderr: string;
}

export function fifoPaths(dir: string, processId: string, opts: { stdin: boolean; tty: boolean }): FifoPaths {
  return {
    stdin: opts.stdin ? join(dir, `${processId}-stdin`) : "",
    stdout: join(dir, `${processId}-stdout`),
    stderr: opts.tty ? "" : join(dir, `${processId}-stderr`),
  };
}

/** The reading (and, for stdin, writing) ends shoald holds of a process's FIFOs. */
export interface OpenFifos {
  stdout: Socket;
  stderr: Socket | undefined;
  /** The writing end of stdin: there once the shim holds its reading end (after `release`). */
  stdin: Socket | undefined;
  /**
   * Call once the process was created: the readers see EOF from then on when the shim closes its ends,
   * and stdin is opened for writing.
   */
  release(): void;
  close(): void;
}

/** Makes FIFOs at `paths` (mode 600), replacing what is there. */
export type MakeFifos = (paths: string[]) => Promise<void>;

/**
 * One mkfifo for all of `paths`: Node cannot make a FIFO itself. Run by the command shell (sandbox.ts): no
 * process is forked from shoald, whose event loop a fork stops.
 */
export const mkfifos: MakeFifos = async (paths) => {
  if (paths.length === 0) return;
  await Promise.all(paths.map((p) => rm(p, { force: true })));
  const r = await commandShell.run(["mkfifo", "-m", "600", ...paths]);
  if (r.code !== 0) throw new Error(`mkfifo ${paths.join(" ")} exited with code ${r.code}: ${r.stderr.trim()}`);
};

/** How many FIFOs a pool makes at once, and how few it may hold before it makes more. */
const POOL_BATCH = 32;
const POOL_LOW = 12;

/**
 * FIFOs made ahead of need, a batch per mkfifo, in a directory on the file system of the containers'
 * directories: a start takes its FIFOs by renaming them into place (no process on its way). When the
 * pool is empty (or a rename fails: another file system), the FIFOs are made there and then.
 */
export class FifoPool {
  private free: string[] = [];
  private filling: Promise<void> | undefined;
  private seq = 0;
  private opened: Promise<void> | undefined;
  private dirMade = false;

  constructor(
    private readonly dir: string,
    private readonly log: Logger,
  ) {}

  /**
   * Drops what a previous daemon left in the pool's directory, and makes the first batch, in the background
   * (once; until then, and if the directory cannot be made, starts make their own FIFOs).
   */
  open(): void {
    this.opened ??= (async () => {
      await rm(this.dir, { recursive: true, force: true });
      await mkdir(this.dir, { recursive: true, mode: 0o700 });
    })().then(
      () => {
        this.dirMade = true;
        this.refill();
      },
      (err: unknown) => this.log.warn({ err, dir: this.dir }, "no FIFO pool: every start makes its own FIFOs"),
    );
  }

  /** Resolves once the pool's directory is made (a test waits for it). */
  async ready(): Promise<void> {
    await this.opened;
    await this.filling;
  }

  readonly make: MakeFifos = async (paths) => {
    const missing: string[] = [];
    await Promise.all(
      paths.map(async (p) => {
        const f = this.free.pop();
        if (f === undefined) {
          missing.push(p);
          return;
        }
        // rename replaces a FIFO a previous run left at `p`, as mkfifos does.
        await rename(f, p).catch((err: unknown) => {
          // Its directory went, or is on another file system: the pool is made again (the others would fail too).
          this.log.debug({ err, fifo: f, path: p }, "a FIFO of the pool could not be moved: making one");
          this.free = [];
          missing.push(p);
        });
      }),
    );
    this.refill();
    await mkfifos(missing);
  };

  private refill(): void {
    if (!this.dirMade || this.filling || this.free.length >= POOL_LOW) return;
    const names = Array.from({ length: POOL_BATCH }, () => join(this.dir, `fifo-${++this.seq}`));
    this.filling = mkdir(this.dir, { recursive: true, mode: 0o700 })
      .then(() => mkfifos(names))
      .then(() => {
        this.free.push(...names);
      })
      .catch((err: unknown) =>
        this.log.warn({ err, dir: this.dir }, "could not make FIFOs ahead: starts make their own"),
      )
      .finally(() => {
        this.filling = undefined;
      });
  }
}

/** A FIFO's writing end (the reader must be there: the shim's). */
function writer(path: string): Socket {
  return new Socket({
    fd: openSync(path, fsConstants.O_WRONLY | fsConstants.O_NONBLOCK),
    readable: false,
    writable: true,
  });
}

/**
 * Opens a process's FIFOs: `create` makes them first (a new process); without it they are the ones a
 * running process has (a restarted shoald reattaching). Until `release`, shoald holds a writer of its own
 * on each output FIFO, so no reader sees EOF before the shim has opened its end.
 */
export async function openFifos(paths: FifoPaths, create: boolean, make: MakeFifos = mkfifos): Promise<OpenFifos> {
  const outs = [paths.stdout, paths.stderr].filter((p) => p !== "");
  if (create) await make([...outs, paths.stdin].filter((x) => x !== ""));
  const holders: number[] = [];
  const reader = (path: string): Socket => {
    const fd = openSync(path, fsConstants.O_RDONLY | fsConstants.O_NONBLOCK);
    if (create) holders.push(openSync(path, fsConstants.O_WRONLY | fsConstants.O_NONBLOCK));
    return new Socket({ fd, readable: true, writable: false });
  };
  const out: OpenFifos = {
    stdout: reader(paths.stdout),
    stderr: paths.stderr ? reader(paths.stderr) : undefined,
    // A running process's stdin (reattaching): the shim holds the reading end already.
    stdin: paths.stdin && !create ? writer(paths.stdin) : undefined,
    release: () => {
      for (const fd of holders.splice(0)) closeSync(fd);
      if (paths.stdin && !out.stdin) out.stdin = writer(paths.stdin);
    },
    close: () => {
      for (const fd of holders.splice(0)) closeSync(fd);
      out.stdout.destroy();
      out.stderr?.destroy();
      out.stdin?.destroy();
    },
  };
  return out;
}

/**
 * Ends a process's input: what was written goes into the FIFO, shoald's end is closed (the shim reads the
 * rest, then EOF), and the shim is told to close the process's stdin (CloseIO), as containerd's clients do.
 */
export async function endInput(stdin: Socket, closeIo: () => Promise<void>): Promise<void> {
  if (!stdin.destroyed) {
    await new Promise<void>((resolve) => stdin.write("", () => resolve()));
    stdin.destroy();
  }
  await closeIo();
}

/** Removes a process's FIFOs (an exec'd process that has ended: its names are not used again). */
export async function removeFifos(paths: FifoPaths): Promise<void> {
  for (const p of [paths.stdin, paths.stdout, paths.stderr]) if (p !== "") await rm(p, { force: true });
}

export interface TaskExit {
  code: number;
  exitedAt: Date | undefined;
}

/** What a container's task looks like now (a restarted shoald asks). */
export type TaskState = { state: "running"; pid: number } | { state: "stopped"; code: number } | { state: "absent" };

/** A container's root file system: its snapshot (keyed by the container's id), or mounts of its own. */
export type RootfsSource = Mounts | "snapshot";

/** Mounts of a root file system, as containerd gives them. */
export type Mounts = { type: string; source: string; target: string; options: string[] }[];

/**
 * What the making of a task waits for, each at its step (one rejected: nothing is left, and its error is
 * thrown), so that a task made ahead is begun before all it needs is there.
 */
export interface TaskWaits {
  /** Before containerd's container: its record saved (never a containerd container without one), its root file system made. */
  container?: Promise<unknown>;
  /** The snapshot's mounts, as its prepare answered them (else they are asked for). */
  mounts?: Promise<Mounts>;
  /** Before the task: what runc needs that containerd's container does not (the network namespace, the bind mounts' sources). */
  task?: Promise<unknown>;
}

export class TaskClient {
  private readonly log: Logger;
  /** The runtime options of every container: runc's state under `runcRoot` when given. */
  private readonly runtimeOptions: { typeUrl: string; value: Buffer } | undefined;

  /**
   * `runcRoot`: where runc keeps its containers' state (as dockerd's <exec-root>/runtime-runc). In a run
   * directory of shoald's, it goes with a host restart like the containers it describes; runc's default
   * (/run/containerd/runc/<namespace>) is shared by every containerd on the machine and outlived a wiped
   * exec root, so a container brought back after a restart failed ("container with given ID already exists").
   */
  constructor(
    private readonly cd: Containerd,
    logger: Logger,
    runcRoot?: string,
  ) {
    this.log = logger.child({ component: "tasks" });
    this.runtimeOptions =
      runcRoot === undefined
        ? undefined
        : {
            typeUrl: RUNC_OPTIONS_TYPE_URL,
            value: Buffer.from(RuncOptions.encode(RuncOptions.fromPartial({ root: runcRoot })).finish()),
          };
  }

  /** A root file system for a new container: a snapshot on the image's top layer ("" for none); resolves to its mounts. */
  async prepareRootfs(id: string, parent: string): Promise<Mounts> {
    const labels = { "containerd.io/gc.root": new Date().toISOString() };
    const r = await this.cd.call(this.cd.snapshots, this.cd.snapshots.prepare, {
      snapshotter: SNAPSHOTTER,
      key: id,
      parent,
      labels,
    });
    return r.mounts;
  }

  /**
   * The directory that holds what a container wrote to its root file system: its snapshot's overlay upper
   * directory (or, on no image layers, the bind-mounted snapshot itself); undefined when it has no snapshot.
   */
  async rootfsDiffDir(id: string): Promise<string | undefined> {
    let mounts: Mount[];
    try {
      mounts = (await this.cd.call(this.cd.snapshots, this.cd.snapshots.mounts, { snapshotter: SNAPSHOTTER, key: id }))
        .mounts;
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw err;
    }
    const m = mounts[0];
    if (!m) return undefined;
    if (m.type === "bind") return m.source;
    return m.options.find((o) => o.startsWith("upperdir="))?.slice("upperdir=".length);
  }

  /** The keys of the containers' root file systems containerd keeps (its active snapshots) in shoal's namespace. */
  async rootfsIds(): Promise<string[]> {
    const stream = this.cd.snapshots.list({ snapshotter: SNAPSHOTTER, filters: [] }, this.cd.metadata());
    const parts = await this.cd.collect(stream, "List");
    return parts.flatMap((p) => p.info.filter((i) => i.kind === Kind.ACTIVE).map((i) => i.name));
  }

  async removeRootfs(id: string): Promise<void> {
    try {
      await this.cd.call(this.cd.snapshots, this.cd.snapshots.remove, { snapshotter: SNAPSHOTTER, key: id });
    } catch (err) {
      if (!isNotFound(err)) throw err;
    }
  }

  /** Creates the containerd container and its task, and starts it; resolves to the task's pid. */
  async start(
    id: string,
    spec: object,
    rootfs: RootfsSource,
    fifos: FifoPaths,
    terminal: boolean,
    labels: Record<string, string>,
  ): Promise<number> {
    await this.create(id, spec, rootfs, fifos, terminal, labels);
    return this.startCreated(id);
  }

  /**
   * Creates the containerd container and its task (the shim, and runc's init process waiting to run the
   * command), not started; resolves to the task's pid. Each step first waits for what `waits` gives for it.
   * On failure nothing is left.
   */
  async create(
    id: string,
    spec: object,
    rootfs: RootfsSource,
    fifos: FifoPaths,
    terminal: boolean,
    labels: Record<string, string>,
    waits: TaskWaits = {},
  ): Promise<number> {
    const cd = this.cd;
    const container = {
      id,
      labels,
      image: "",
      runtime: { name: RUNTIME, options: this.runtimeOptions },
      spec: {
        typeUrl: "types.containerd.io/opencontainers/runtime-spec/1/Spec",
        value: Buffer.from(JSON.stringify(spec)),
      },
      snapshotter: rootfs === "snapshot" ? SNAPSHOTTER : "",
      snapshotKey: rootfs === "snapshot" ? id : "",
      extensions: {},
    };
    // Read at their steps; one not read (an earlier step failed) is not an unhandled rejection.
    for (const w of [waits.mounts, waits.task]) w?.catch(() => undefined);
    await waits.container;
    try {
      await cd.call(cd.containers, cd.containers.create, { container });
    } catch (err) {
      // One a previous start left (its task deleted, the container not): replaced. Asking first would cost
      // every start a round trip for what is rare.
      if (!isAlreadyExists(err)) throw err;
      await this.cleanup(id);
      await cd.call(cd.containers, cd.containers.create, { container });
    }
    try {
      const mounts =
        rootfs !== "snapshot"
          ? rootfs
          : waits.mounts
            ? await waits.mounts
            : (await cd.call(cd.snapshots, cd.snapshots.mounts, { snapshotter: SNAPSHOTTER, key: id })).mounts;
      await waits.task;
      const r = await cd.call(cd.tasks, cd.tasks.create, {
        containerId: id,
        rootfs: mounts,
        stdin: fifos.stdin,
        stdout: fifos.stdout,
        stderr: fifos.stderr,
        terminal,
        runtimePath: "",
      });
      return r.pid;
    } catch (err) {
      await this.deleteContainer(id);
      throw err;
    }
  }

  /** Starts a task `create` made; resolves to its pid. On failure the task and the container are deleted. */
  async startCreated(id: string): Promise<number> {
    try {
      return (await this.cd.call(this.cd.tasks, this.cd.tasks.start, { containerId: id, execId: "" })).pid;
    } catch (err) {
      await this.cleanup(id);
      throw err;
    }
  }

  /** Resolves when the process (the task's, or an exec'd one) has exited. */
  async wait(id: string, execId = ""): Promise<TaskExit> {
    const r = await this.cd.call(this.cd.tasks, this.cd.tasks.wait, { containerId: id, execId });
    return { code: r.exitStatus, exitedAt: r.exitedAt };
  }

  async kill(id: string, signal: number, execId = ""): Promise<void> {
    await this.cd.call(this.cd.tasks, this.cd.tasks.kill, { containerId: id, execId, signal, all: false });
  }

  async state(id: string): Promise<TaskState> {
    try {
      const { process } = await this.cd.call(this.cd.tasks, this.cd.tasks.get, { containerId: id, execId: "" });
      if (!process) return { state: "absent" };
      if (process.status === Status.STOPPED) return { state: "stopped", code: process.exitStatus };
      // Created and never started (its daemon died between the two): its process never ran CMD, and no one
      // will start it; it ended as one that died unseen (255), and its deletion removes it.
      if (process.status === Status.CREATED) return { state: "stopped", code: 255 };
      return { state: "running", pid: process.pid };
    } catch (err) {
      if (isNotFound(err)) return { state: "absent" };
      throw err;
    }
  }

  /** The ids of the containers containerd keeps in shoal's namespace. */
  async containerIds(): Promise<string[]> {
    const r = await this.cd.call(this.cd.containers, this.cd.containers.list, { filters: [] });
    return r.containers.map((c) => c.id);
  }

  /** Deletes an exited task and its containerd container (the root file system snapshot stays). */
  async cleanup(id: string): Promise<number | undefined> {
    const code = await this.deleteTask(id);
    await this.deleteContainer(id);
    return code;
  }

  private async deleteTask(id: string): Promise<number | undefined> {
    try {
      return (await this.cd.call(this.cd.tasks, this.cd.tasks.delete, { containerId: id })).exitStatus;
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw err;
    }
  }

  private async deleteContainer(id: string): Promise<void> {
    try {
      await this.cd.call(this.cd.containers, this.cd.containers.delete, { id });
    } catch (err) {
      if (!isNotFound(err)) throw err;
    }
  }

  /** Starts a process in a running container; resolves to its pid. */
  async exec(id: string, execId: string, process: object, fifos: FifoPaths, terminal: boolean): Promise<number> {
    const cd = this.cd;
    await cd.call(cd.tasks, cd.tasks.exec, {
      containerId: id,
      execId,
      stdin: fifos.stdin,
      stdout: fifos.stdout,
      stderr: fifos.stderr,
      terminal,
      spec: {
        typeUrl: "types.containerd.io/opencontainers/runtime-spec/1/Process",
        value: Buffer.from(JSON.stringify(process)),
      },
    });
    try {
      return (await cd.call(cd.tasks, cd.tasks.start, { containerId: id, execId })).pid;
    } catch (err) {
      await this.deleteProcess(id, execId);
      throw err;
    }
  }

  async deleteProcess(id: string, execId: string): Promise<void> {
    try {
      await this.cd.call(this.cd.tasks, this.cd.tasks.deleteProcess, { containerId: id, execId });
    } catch (err) {
      if (!isNotFound(err))
        this.log.warn({ err, id, execId }, "could not delete an exec'd process: containerd drops it with the task");
    }
  }

  async closeStdin(id: string, execId = ""): Promise<void> {
    await this.cd.call(this.cd.tasks, this.cd.tasks.closeIo, { containerId: id, execId, stdin: true });
  }

  async resize(id: string, execId: string, width: number, height: number): Promise<void> {
    await this.cd.call(this.cd.tasks, this.cd.tasks.resizePty, { containerId: id, execId, width, height });
  }

  /** Freezes every process of a running task (docker pause). */
  async pause(id: string): Promise<void> {
    await this.cd.call(this.cd.tasks, this.cd.tasks.pause, { containerId: id });
  }

  /** Thaws a paused task (docker unpause). */
  async resume(id: string): Promise<void> {
    await this.cd.call(this.cd.tasks, this.cd.tasks.resume, { containerId: id });
  }

  /** The host pids of a task's processes (`docker top`). */
  async pids(id: string): Promise<number[]> {
    const r = await this.cd.call(this.cd.tasks, this.cd.tasks.listPids, { containerId: id });
    return r.processes.map((p) => p.pid);
  }
}

/** containerd's words for a process that could not start, as docker passes them on. */
export function startError(err: unknown): string {
  const text = err instanceof ContainerdError ? err.detail : err instanceof Error ? err.message : String(err);
  return `failed to create task for container: ${text}`;
}
