// `exec`: more processes in a running container (create, start, inspect), started by containerd in the
// container's task, their output on FIFOs to the client, their exit code in docker's terms.

import type { Logger } from "pino";
import { ApiError, badRequest, conflict } from "../api/errors.js";
import { streamDone, within } from "./async.js";
import { type Container, newId, noSuchContainer } from "./container.js";
import {
  endInput,
  fifoPaths,
  type MakeFifos,
  mkfifos,
  openFifos,
  removeFifos,
  type TaskClient,
} from "./containerd/tasks.js";
import { DRAIN_MS, launchErrorOf } from "./launch.js";
import { type ProcessUser, processSpec } from "./spec.js";
import type { ContainerTable } from "./table.js";
import type { ExecCreateRequest, ExecInspect, ExecSession, OutputChunk } from "./types.js";

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
  /** -u of the exec ("" runs as the container's user). */
  user: string;
  started: boolean;
  running: boolean;
  exitCode: number | null;
  pid: number;
}

/** Where an exec's output goes; a returned promise means the client is behind: the output waits for it. */
type ExecIo = { output(chunk: OutputChunk): undefined | Promise<unknown>; stdin?: NodeJS.ReadableStream };

export class Execs {
  private readonly execs = new Map<string, ExecRecord>();

  constructor(
    private readonly table: ContainerTable,
    private readonly tasks: TaskClient,
    /** The user a process runs as: `user` ("" for the container's own) resolved in the container. */
    private readonly userOf: (c: Container, user: string) => Promise<ProcessUser>,
    private readonly log: Logger,
    private readonly makeFifos: MakeFifos = mkfifos,
  ) {}

  async create(ref: string, req: ExecCreateRequest): Promise<string> {
    const c = this.table.find(ref);
    if (!c.running) throw conflict(`container ${c.id} is not running`);
    if (c.paused) throw conflict(`Container ${c.id} is paused, unpause the container before exec`);
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
      user: req.User ?? "",
      started: false,
      running: false,
      exitCode: null,
      pid: 0,
    });
    c.execIds.add(id);
    return id;
  }

  private find(id: string): ExecRecord {
    const e = this.execs.get(id);
    if (!e) throw new ApiError(404, `No such exec instance: ${id}`);
    return e;
  }

  async start(execId: string): Promise<ExecSession> {
    const e = this.find(execId);
    if (e.started) throw conflict(`Exec command ${execId} has already run`);
    const c = this.table.get(e.containerId);
    if (!c || c.removed) throw noSuchContainer(e.containerId);
    if (!c.running || !c.proc) throw conflict(`container ${c.id} is not running`);
    e.started = true;
    return { tty: e.tty, attachStdin: e.attachStdin, run: (io) => this.run(e, c, io) };
  }

  async inspect(execId: string): Promise<ExecInspect> {
    const e = this.find(execId);
    return {
      ID: e.id,
      Running: e.running,
      ExitCode: e.exitCode,
      ProcessConfig: { tty: e.tty, entrypoint: e.cmd[0] ?? "", arguments: e.cmd.slice(1), privileged: false },
      OpenStdin: e.attachStdin,
      OpenStderr: e.attachStderr,
      OpenStdout: e.attachStdout,
      CanRemove: false,
      ContainerID: e.containerId,
      DetachKeys: e.detachKeys,
      Pid: e.pid,
    };
  }

  async resize(execId: string, height: number, width: number): Promise<void> {
    const e = this.find(execId);
    if (!e.running) throw conflict(`Exec ${execId} is not running`);
    if (e.tty) await this.tasks.resize(e.containerId, e.id, width, height);
  }

  /** The container's exec instances that run now (inspect's ExecIDs). */
  runningOf(c: Container): string[] {
    return [...c.execIds].filter((e) => this.execs.get(e)?.running);
  }

  /** A removed container's exec instances go with it. */
  forget(c: Container): void {
    for (const e of c.execIds) this.execs.delete(e);
  }

  private async run(e: ExecRecord, c: Container, io: ExecIo): Promise<number> {
    if (!c.running || !c.proc) {
      e.exitCode = 126;
      io.output({ stream: 2, data: Buffer.from(`container ${c.id} is not running\n`) });
      return 126;
    }
    e.running = true;
    const processId = `exec-${e.id.slice(0, 12)}`;
    const paths = fifoPaths(c.dir, processId, { stdin: e.attachStdin, tty: e.tty });
    const fifos = await openFifos(paths, true, this.makeFifos);
    try {
      const user = await this.userOf(c, e.user);
      const spec = processSpec({ args: e.cmd, env: e.env, cwd: e.workingDir, user, terminal: e.tty });
      e.pid = await this.tasks.exec(c.id, e.id, spec, paths, e.tty);
    } catch (err) {
      fifos.close();
      await removeFifos(paths);
      e.running = false;
      const started = launchErrorOf(err);
      e.exitCode = started.exitCode === 128 ? 126 : started.exitCode;
      io.output({
        stream: 2,
        data: Buffer.from(`${started.message.replace(/^failed to create task for container: /, "")}\n`),
      });
      return e.exitCode;
    }
    fifos.release();
    const drained = Promise.all([streamDone(fifos.stdout), fifos.stderr ? streamDone(fifos.stderr) : undefined]);
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
    forward(fifos.stdout, 1, e.attachStdout);
    if (fifos.stderr) forward(fifos.stderr, 2, e.attachStderr);
    if (fifos.stdin) {
      // The process may exit (or stop reading) while the client still writes: that input is dropped.
      fifos.stdin.on("error", (error) => this.log.debug({ err: error, exec: e.id }, "exec's stdin closed"));
      const input = fifos.stdin;
      const end = (): Promise<void> =>
        endInput(input, () => this.tasks.closeStdin(c.id, e.id)).catch((err: unknown) =>
          this.log.debug({ err, exec: e.id }, "could not close an exec's stdin: the process has exited"),
        );
      if (io.stdin) {
        io.stdin.pipe(input, { end: false });
        io.stdin.once("end", () => void end());
      } else await end();
    }
    const code = await this.tasks.wait(c.id, e.id).then(
      (x) => x.code,
      (err: unknown) => {
        this.log.warn({ err, exec: e.id }, "lost the wait for an exec'd process");
        return 255;
      },
    );
    // Deleting the process first: the shim's Delete waits (up to 2 s) for its copy of the process's output
    // into the FIFOs, then closes its ends, so the last bytes (wc's count, say) are in before the drain.
    // Draining first could close the FIFOs on a loaded machine while the shim was still copying.
    await this.tasks.deleteProcess(c.id, e.id);
    if (!(await within(drained, DRAIN_MS))) this.log.debug({ exec: e.id }, "exec output still open after exit");
    fifos.close();
    await removeFifos(paths);
    e.running = false;
    e.exitCode = code;
    e.pid = 0;
    return code;
  }
}
