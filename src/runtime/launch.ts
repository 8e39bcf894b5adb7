// Launching a container's process and learning how it ended: the launcher (sandbox.ts) is spawned with
// the container's output on FIFOs that feed its json-file log, the launch script reports on fd 3 that it
// is about to become CMD (or why it could not), and the exit status is read once the output is drained.

import { type ChildProcess, spawn } from "node:child_process";
import { closeSync } from "node:fs";
import { join } from "node:path";
import type { Readable } from "node:stream";
import type { Logger } from "pino";
import { ApiError } from "../api/errors.js";
import { explainMissing } from "../dataplane/programs.js";
import { delay, streamDone, within } from "./async.js";
import type { Container, Running } from "./container.js";
import { JsonLogWriter } from "./jsonlog.js";
import { childrenOf, dieWithParent, fifoPipe, launchArgv, onPath } from "./sandbox.js";
import { signalNumberOf } from "./signals.js";

/** How long output may keep coming after pid 1 exited before the log is closed anyway. */
export const DRAIN_MS = 2000;

export const DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/** A start that failed before CMD ran: exit code 127 (no such command) is the user's, others the host's. */
export class LaunchError extends ApiError {
  constructor(
    message: string,
    readonly exitCode: number,
  ) {
    super(exitCode === 127 ? 400 : 500, message);
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

interface ProcessEnd {
  code: number | null;
  signal: NodeJS.Signals | null;
  error?: Error;
}

type Pipe = Awaited<ReturnType<typeof fifoPipe>>;

export function envObject(env: string[]): NodeJS.ProcessEnv {
  const out: NodeJS.ProcessEnv = {};
  for (const kv of env) {
    const eq = kv.indexOf("=");
    if (eq > 0) out[kv.slice(0, eq)] = kv.slice(eq + 1);
  }
  return out;
}

/** How a spawned child ended: its exit, or the spawn error (with `errorCode`). */
export function processEnd(child: ChildProcess, errorCode: number): Promise<ProcessEnd> {
  return new Promise((resolve) => {
    let settled = false;
    child.once("exit", (code, signal) => {
      if (!settled) resolve({ code, signal });
      settled = true;
    });
    child.once("error", (error) => {
      if (!settled) resolve({ code: errorCode, signal: null, error });
      settled = true;
    });
  });
}

/** Whether a pid may still be signalled; false when it is gone (nothing left to signal). */
export function killQuietly(pid: number, signal: number): boolean {
  if (pid <= 0) return false;
  try {
    process.kill(pid, signal);
    return true;
  } catch {
    return false;
  }
}

/** Signals the container's pid 1 (SIGKILL there kills its whole PID namespace). */
export function signalContainer(proc: Running, sig: number): void {
  if (proc.initPid > 0) {
    killQuietly(proc.initPid, sig);
  } else if (sig === 9 && proc.child.pid) {
    // pid 1 was never seen: the launcher's --kill-child takes it down with it.
    killQuietly(proc.child.pid, 9);
  }
}

export class Launcher {
  /** Containers die with the daemon (setpriv --pdeathsig) unless told to outlive it. */
  private readonly tieToDaemon: boolean;

  constructor(
    containersOutliveDaemon: boolean,
    private readonly log: Logger,
  ) {
    this.tieToDaemon = !containersOutliveDaemon && onPath("setpriv");
  }

  /** Starts the container's process in `netnsPath` (null: the host's network); resolves once CMD runs. */
  async launch(c: Container, netnsPath: string | null): Promise<Launched> {
    const command = this.commandOf(c, netnsPath);
    const { out, err } = await this.outputPipes(c);
    const logWriter = new JsonLogWriter(c.logPath, (r) => {
      for (const l of c.outputListeners) l(r);
    });
    let child: ChildProcess;
    try {
      child = spawn(command[0]!, command.slice(1), {
        stdio: [c.rec.config.OpenStdin ? "pipe" : "ignore", out.writeFd, "pipe", "pipe", err.writeFd],
        env: envObject(c.rec.config.Env),
        cwd: "/",
        detached: true,
      });
    } finally {
      closeSync(out.writeFd);
      closeSync(err.writeFd);
    }
    out.reader.on("data", (d: Buffer) => logWriter.write(1, d));
    err.reader.on("data", (d: Buffer) => logWriter.write(2, d));
    let launcherErr = "";
    child.stderr!.setEncoding("utf8").on("data", (d: string) => {
      launcherErr += d;
    });
    const status = processEnd(child, 127);
    const exited = status.then(async (st) => {
      if (!(await within(Promise.all([streamDone(out.reader), streamDone(err.reader)]), DRAIN_MS))) {
        out.reader.destroy();
        err.reader.destroy();
      }
      logWriter.close();
      return { code: exitCodeOf(st, launcherErr), launcherErr, error: st.error };
    });
    const report = await readiness(child, status);
    if (!report.ok) {
      const info = await exited;
      // nsenter, unshare or setpriv missing on this host: a server-side fault, said with its package.
      const missing = explainMissing(command[0]!, info.error, info.launcherErr);
      if (missing !== undefined) throw new LaunchError(missing, 128);
      const text =
        report.text.trim() ||
        info.launcherErr.trim() ||
        info.error?.message ||
        "the container exited before it started";
      throw new LaunchError(text, /executable file not found/.test(text) ? 127 : info.code === 0 ? 128 : info.code);
    }
    (child.stdio[3] as Readable | null)?.destroy();
    const initPid = await initPidOf(child);
    let resolveHandled!: () => void;
    const handled = new Promise<void>((resolve) => {
      resolveHandled = resolve;
    });
    const stdin = this.connectStdin(c, child);
    child.unref();
    return { running: { child, initPid, stdin, handled }, exited, resolveHandled };
  }

  private commandOf(c: Container, netnsPath: string | null): string[] {
    const rec = c.rec;
    const hostNet = c.hostNetwork;
    const argv = launchArgv({
      netnsPath,
      resolvConf: hostNet ? "" : join(c.dir, "resolv.conf"),
      hosts: hostNet ? "" : join(c.dir, "hosts"),
      hostnameFile: hostNet ? "" : join(c.dir, "hostname"),
      hostname: hostNet ? "" : rec.config.Hostname,
      workingDir: rec.config.WorkingDir || "/",
      argv: [rec.path, ...rec.args],
    });
    return this.tieToDaemon ? dieWithParent(argv) : argv;
  }

  /** The FIFOs stdout and stderr go through; both or neither. */
  private async outputPipes(c: Container): Promise<{ out: Pipe; err: Pipe }> {
    const out = await fifoPipe(join(c.dir, "stdout.fifo"));
    try {
      return { out, err: await fifoPipe(join(c.dir, "stderr.fifo")) };
    } catch (e) {
      out.reader.destroy();
      closeSync(out.writeFd);
      throw e;
    }
  }

  /** The process's stdin, fed first with what attached clients wrote before it was there. */
  private connectStdin(c: Container, child: ChildProcess): Running["stdin"] {
    const stdin = c.rec.config.OpenStdin ? (child.stdin ?? undefined) : undefined;
    // A container that closes its stdin while a client still writes: the client's input has nowhere to go.
    stdin?.on("error", (err) => this.log.debug({ err, id: c.id }, "container's stdin closed"));
    if (stdin) {
      for (const b of c.pendingStdin) stdin.write(b);
      if (c.pendingStdinEnd) stdin.end();
    }
    c.pendingStdin = [];
    c.pendingStdinEnd = false;
    return stdin;
  }
}

function exitCodeOf(st: ProcessEnd, launcherErr: string): number {
  if (st.signal) return 128 + signalNumberOf(st.signal);
  // pid 1 of a PID namespace dies of a signal only if it is SIGKILL; unshare cannot re-raise that one and
  // exits 1 saying so.
  if (st.code === 1 && /^unshare: /m.test(launcherErr)) return 137;
  return st.code ?? 255;
}

/** Readiness: the launch script writes "ok" on fd 3 just before it becomes CMD, or why it could not. */
function readiness(child: ChildProcess, status: Promise<ProcessEnd>): Promise<{ ok: boolean; text: string }> {
  let text = "";
  return new Promise((resolve) => {
    const fd3 = child.stdio[3] as Readable | null;
    fd3?.setEncoding("utf8");
    fd3?.on("data", (d: string) => {
      text += d;
      if (/(^|\n)ok\n/.test(text)) resolve({ ok: true, text });
    });
    // The pipe fails only when the launcher is gone: its exit (below) says how the start ended.
    fd3?.on("error", () => resolve({ ok: /(^|\n)ok\n/.test(text), text }));
    void status.then(() => resolve({ ok: /(^|\n)ok\n/.test(text), text }));
  });
}

/** pid 1 of the container is the unshare parent's only child; 0 if it is gone before it is seen. */
async function initPidOf(child: ChildProcess): Promise<number> {
  let initPid = 0;
  for (let i = 0; i < 50 && initPid === 0; i++) {
    initPid = (await childrenOf(child.pid!))[0] ?? 0;
    if (initPid === 0) {
      if (child.exitCode !== null || child.signalCode !== null) break;
      await delay(10);
    }
  }
  return initPid;
}
