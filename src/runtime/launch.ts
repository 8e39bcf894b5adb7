// Launching a container's process through containerd and learning how it ended: the FIFOs of its stdio
// feed its json-file log, containerd creates and starts its task (runc, in the network namespace shoal's
// data plane built), and the exit is read once containerd reports it and the output is drained. A
// restarted shoald reattaches to a task that is still running.

import { join } from "node:path";
import type { Logger } from "pino";
import { ApiError } from "../api/errors.js";
import { delay, streamDone, within } from "./async.js";
import type { Container, Prepared, Running } from "./container.js";
import { ContainerdError } from "./containerd/client.js";
import {
  endInput,
  fifoPaths,
  type MakeFifos,
  mkfifos,
  type OpenFifos,
  openFifos,
  type TaskClient,
  type TaskWaits,
} from "./containerd/tasks.js";
import { JsonLogWriter } from "./jsonlog.js";
import { containerSpec, type ProcessUser } from "./spec.js";

/** How long output may keep coming after the process exited before the log is closed anyway. */
export const DRAIN_MS = 2000;

export const DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/** The host image's root file system: the host's own, read-only (not its submounts). */
export const HOST_ROOTFS = [{ type: "bind", source: "/", target: "", options: ["bind", "ro"] }];

/** A start that failed before CMD ran: exit code 127 (no such command) and 126 are the user's. */
export class LaunchError extends ApiError {
  constructor(
    message: string,
    readonly exitCode: number,
  ) {
    super(exitCode === 127 || exitCode === 126 ? 400 : 500, message);
  }
}

export interface ExitInfo {
  code: number;
}

export interface Launched {
  running: Running;
  /** Resolves with the exit code once the process has exited and its output is in the log. */
  exited: Promise<ExitInfo>;
  /** To be called once the exit has been handled (networks released, state saved). */
  resolveHandled: () => void;
}

/** docker's reading of a runc start error: its exit code, and its words. */
export function launchErrorOf(err: unknown): LaunchError {
  const detail = err instanceof ContainerdError ? err.detail : err instanceof Error ? err.message : String(err);
  const text = `failed to create task for container: ${detail}`;
  if (/executable file not found|no such file or directory/.test(detail)) return new LaunchError(text, 127);
  if (/permission denied/.test(detail)) return new LaunchError(text, 126);
  return new LaunchError(text, 128);
}

/** What a task made ahead of a first start is made from, while the create makes the rest (lifecycle.ts makeAhead). */
export interface AheadInputs {
  /** Its network namespace's path (null: the host's network), known before the namespace is there. */
  netnsPath: string | null;
  user: Promise<ProcessUser>;
  /** What its steps wait for (TaskClient.create). */
  waits: TaskWaits;
}

export class Launcher {
  constructor(
    private readonly tasks: TaskClient,
    private readonly log: Logger,
    /** How a start makes its FIFOs (ContainerRuntime: from a FifoPool). */
    private readonly makeFifos: MakeFifos = mkfifos,
  ) {}

  /**
   * Starts the container's process in `netnsPath` (null: the host's network); resolves once it runs. A task
   * made ahead (`prepare`) is started when it was made for the same spec; else it is deleted and the task
   * made now.
   */
  async launch(
    c: Container,
    netnsPath: string | null,
    user: ProcessUser,
    ahead?: Prepared,
    /** Called with the task's pid when it is made, as containerd starts it. */
    starting?: (pid: number) => void,
  ): Promise<Launched> {
    const spec = this.specOf(c, netnsPath, user);
    let p = ahead;
    if (p && p.spec !== JSON.stringify(spec)) {
      this.log.debug({ id: c.id }, "the task made ahead has another spec: making it again");
      await this.discard(c, p);
      p = undefined;
    }
    p ??= await this.create(c, spec);
    // Asked of containerd before `starting` saves the record: that write is not between the two.
    const started = this.tasks.startCreated(c.id);
    starting?.(p.pid);
    let pid: number;
    try {
      pid = await started;
    } catch (err) {
      p.fifos.close();
      throw launchErrorOf(err);
    }
    return this.follow(c, p.fifos, pid);
  }

  /**
   * The container's task made (containerd's container, the shim, runc's init process with its namespaces,
   * mounts and cgroup) but not started, for `launch` to start: what a start waits for most, done ahead of it.
   */
  async prepare(c: Container, inputs: AheadInputs): Promise<Prepared> {
    const fifos = await this.openFifosOf(c);
    let spec: object;
    try {
      spec = this.specOf(c, inputs.netnsPath, await inputs.user);
    } catch (err) {
      fifos.close();
      throw err;
    }
    const p = await this.createTask(c, spec, fifos, inputs.waits);
    // Nothing reads the output before the start (there is none): an error of a FIFO meanwhile is logged.
    for (const s of [p.fifos.stdout, p.fifos.stderr, p.fifos.stdin]) {
      s?.on("error", (err) => this.log.debug({ err, id: c.id }, "a FIFO of a task made ahead failed"));
    }
    return p;
  }

  /** Deletes a task made ahead that will not be started (its FIFOs closed, its containerd container gone). */
  async discard(c: Container, p: Prepared): Promise<void> {
    p.fifos.close();
    await this.tasks.cleanup(c.id);
  }

  private specOf(c: Container, netnsPath: string | null, user: ProcessUser): object {
    const rec = c.rec;
    return containerSpec({
      id: rec.id,
      dir: c.dir,
      hostname: rec.config.Hostname,
      args: [rec.path, ...rec.args],
      env: rec.config.Env,
      cwd: rec.config.WorkingDir || "/",
      user,
      terminal: rec.config.Tty,
      netnsPath,
      binds: rec.hostConfig.binds,
      memoryBytes: rec.hostConfig.memoryBytes,
      nanoCpus: rec.hostConfig.nanoCpus,
      readonlyRootfs: rec.image.rootfs === "host",
    });
  }

  /** The container's FIFOs opened and its task created (not started). */
  private async create(c: Container, spec: object): Promise<Prepared> {
    return this.createTask(c, spec, await this.openFifosOf(c));
  }

  /** The FIFOs of the container's init process, made new and opened. */
  private openFifosOf(c: Container): Promise<OpenFifos> {
    const paths = fifoPaths(c.dir, "init", { stdin: c.rec.config.OpenStdin, tty: c.rec.config.Tty });
    return openFifos(paths, true, this.makeFifos);
  }

  /** The container's task created (not started), with its FIFOs opened by openFifosOf (closed on failure). */
  private async createTask(c: Container, spec: object, fifos: OpenFifos, waits?: TaskWaits): Promise<Prepared> {
    const rec = c.rec;
    const tty = rec.config.Tty;
    const paths = fifoPaths(c.dir, "init", { stdin: rec.config.OpenStdin, tty });
    const hostImage = rec.image.rootfs === "host";
    let pid: number;
    try {
      const labels = { "io.shoal.container.name": rec.name };
      pid = await this.tasks.create(rec.id, spec, hostImage ? HOST_ROOTFS : "snapshot", paths, tty, labels, waits);
    } catch (err) {
      fifos.close();
      throw launchErrorOf(err);
    }
    // The shim holds its ends now: readers see EOF when it closes them, and stdin can be opened.
    fifos.release();
    return { fifos, spec: JSON.stringify(spec), pid };
  }

  /** A task a previous shoald started that still runs: its output and its exit, followed again. */
  async reattach(c: Container, pid: number): Promise<Launched> {
    const rec = c.rec;
    const paths = fifoPaths(c.dir, "init", { stdin: rec.config.OpenStdin, tty: rec.config.Tty });
    return this.follow(c, await openFifos(paths, false), pid);
  }

  private follow(c: Container, fifos: OpenFifos, pid: number): Launched {
    const logWriter = new JsonLogWriter(join(c.logPath), (r) => {
      for (const l of c.outputListeners) l(r);
    });
    fifos.stdout.on("data", (d: Buffer) => logWriter.write(1, d));
    fifos.stderr?.on("data", (d: Buffer) => logWriter.write(2, d));
    const drained = Promise.all([streamDone(fifos.stdout), fifos.stderr ? streamDone(fifos.stderr) : undefined]);
    const exited = this.exitOf(c, fifos, drained, logWriter);
    let resolveHandled!: () => void;
    const handled = new Promise<void>((resolve) => {
      resolveHandled = resolve;
    });
    // A container that stops reading its stdin while a client still writes: that input has nowhere to go.
    fifos.stdin?.on("error", (err) => this.log.debug({ err, id: c.id }, "container's stdin closed"));
    if (fifos.stdin) {
      for (const b of c.pendingStdin) fifos.stdin.write(b);
    }
    const stdin = fifos.stdin;
    const closeStdin = async (): Promise<void> => {
      if (!stdin) return;
      await endInput(stdin, () => this.tasks.closeStdin(c.id)).catch((err: unknown) =>
        this.log.debug({ err, id: c.id }, "could not close the container's stdin: it has exited"),
      );
    };
    if (c.pendingStdinEnd) void closeStdin();
    c.pendingStdin = [];
    c.pendingStdinEnd = false;
    return { running: { initPid: pid, stdin, closeStdin, handled }, exited, resolveHandled };
  }

  private async exitOf(
    c: Container,
    fifos: OpenFifos,
    drained: Promise<unknown>,
    logWriter: JsonLogWriter,
  ): Promise<ExitInfo> {
    let code = await this.waitThroughRestarts(c);
    // The task is deleted before the output is drained: the shim's Delete waits (up to 2 s) for its copy
    // of the output into the FIFOs and then closes its ends, so the last lines reach the log.
    try {
      code = (await this.tasks.cleanup(c.id)) ?? code;
    } catch (err) {
      this.log.warn({ err, id: c.id }, "could not delete an exited task: the next start deletes it");
    }
    if (!(await within(drained, DRAIN_MS)))
      this.log.debug({ id: c.id }, "output still open after exit: closing the log");
    fifos.close();
    logWriter.close();
    return { code };
  }

  /**
   * The task's exit code. A containerd that restarts while the task runs (its shim keeps the task) is
   * waited for and asked again; a task that is gone without a word ended unseen (255, as docker says).
   */
  private async waitThroughRestarts(c: Container): Promise<number> {
    for (let attempt = 0; ; attempt++) {
      try {
        return (await this.tasks.wait(c.id)).code;
      } catch (err) {
        if (err instanceof ContainerdError && err.notFound) return 255;
        if (attempt % 20 === 0) {
          this.log.warn(
            { err, id: c.id },
            "lost containerd while waiting for a container's exit: waiting for it to come back",
          );
        }
        await delay(Math.min(250 * (attempt + 1), 2000));
      }
    }
  }

  /** Signals the container's init process (SIGKILL there kills its whole PID namespace). */
  async signal(c: Container, sig: number): Promise<void> {
    await this.tasks.kill(c.id, sig);
  }
}
