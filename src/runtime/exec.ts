// `exec`: more processes in a running container's namespaces (create, start, inspect), their output on
// FIFOs to the client, their exit code in docker's terms.

import { type ChildProcess, spawn } from "node:child_process";
import { closeSync } from "node:fs";
import { join } from "node:path";
import type { Logger } from "pino";
import { ApiError, badRequest, conflict } from "../api/errors.js";
import { explainMissing } from "../dataplane/programs.js";
import { streamDone, within } from "./async.js";
import { type Container, newId, noSuchContainer } from "./container.js";
import { DRAIN_MS, envObject, processEnd } from "./launch.js";
import { execArgv, fifoPipe } from "./sandbox.js";
import { signalNumberOf } from "./signals.js";
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
  started: boolean;
  running: boolean;
  exitCode: number | null;
  pid: number;
}

type ExecIo = { output(chunk: OutputChunk): void; stdin?: NodeJS.ReadableStream };

export class Execs {
  private readonly execs = new Map<string, ExecRecord>();

  constructor(
    private readonly table: ContainerTable,
    private readonly log: Logger,
  ) {}

  async create(ref: string, req: ExecCreateRequest): Promise<string> {
    const c = this.table.find(ref);
    if (!c.running) throw conflict(`container ${c.id} is not running`);
    const cmd = req.Cmd ?? [];
    if (cmd.length === 0) throw badRequest("No exec command specified");
    if (req.User) throw badRequest("shoal runs containers as the daemon's user: --user is not supported");
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

  /** The container's exec instances that run now (inspect's ExecIDs). */
  runningOf(c: Container): string[] {
    return [...c.execIds].filter((e) => this.execs.get(e)?.running);
  }

  /** A removed container's exec instances go with it. */
  forget(c: Container): void {
    for (const e of c.execIds) this.execs.delete(e);
  }

  private async run(e: ExecRecord, c: Container, io: ExecIo): Promise<number> {
    const proc = c.proc;
    if (!proc || proc.initPid <= 0) {
      e.exitCode = 126;
      io.output({ stream: 2, data: Buffer.from(`container ${c.id} is not running\n`) });
      return 126;
    }
    e.running = true;
    const argv = execArgv(proc.initPid, c.hostNetwork, e.workingDir, e.cmd);
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
    out.reader.on("data", (d: Buffer) => {
      if (e.attachStdout) io.output({ stream: 1, data: d });
    });
    err.reader.on("data", (d: Buffer) => {
      if (e.attachStderr) io.output({ stream: 2, data: d });
    });
    if (e.attachStdin && child.stdin) {
      // The process may exit (or close its stdin) while the client still writes: that input is dropped.
      child.stdin.on("error", (error) => this.log.debug({ err: error, exec: e.id }, "exec's stdin closed"));
      if (io.stdin) io.stdin.pipe(child.stdin);
      else child.stdin.end();
    }
    const status = await processEnd(child, 126);
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
}
