// The containerd a shoald uses: one already running (shoald --containerd SOCK), or one of its own that it
// starts and supervises, as dockerd does with its managed containerd. A managed containerd keeps its root
// (content, snapshots, metadata) under shoald's data root and its state (sockets, task bundles) under its
// exec root, so several shoald on one machine (the lab's hosts) each have their own.
//
// A managed containerd dies with its shoald (the kernel sees to it), so none is left behind; containers
// outlive both (their shims keep them), and the next shoald's containerd finds them again. A containerd
// that dies while shoald runs is started again.

import { type ChildProcess, spawn } from "node:child_process";
import { closeSync, existsSync, openSync } from "node:fs";
import { mkdir, readFile, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { Logger } from "pino";
import { findOnPath } from "../../dataplane/programs.js";
import { clearIngest } from "./blobfile.js";
import { Containerd, ContainerdError } from "./client.js";

/** A wait that keeps the process alive (shoald may have nothing else to wait for while it starts). */
function pause(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * How long a managed containerd may take to answer on its socket after it was started, and a given one
 * (--containerd) whose socket is there but that does not answer at once (loaded, or starting itself).
 */
const START_TIMEOUT_MS = 20_000;

export interface ContainerdOptions {
  /** shoald --containerd: the socket of a containerd that is already running. */
  socket?: string;
  /** Where a managed containerd keeps its root (<dataRoot>/containerd) and state (<execRoot>/containerd). */
  dataRoot: string;
  execRoot: string;
  logger: Logger;
  /** The containerd program (tests); default "containerd" on $PATH. */
  program?: string;
}

/** The one line shoald and every container call say when containerd cannot be used. */
export function containerdUnavailable(socket: string, detail: string, managed: boolean): string {
  const fix = managed
    ? "install it (apt-get install containerd runc) or start shoald with --containerd SOCK"
    : "start containerd (systemctl start containerd) or leave out --containerd to let shoald run its own";
  return `containerd is not available at ${socket} (${detail}): ${fix}`;
}

function configToml(root: string, state: string, socket: string): string {
  const q = (s: string): string => JSON.stringify(s);
  return [
    "# Written by shoald: the containerd it manages (one per shoald).",
    "version = 2",
    `root = ${q(root)}`,
    `state = ${q(state)}`,
    // shoal drives containerd through its API only: no CRI, no snapshotters it does not use.
    'disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]',
    "[grpc]",
    `  address = ${q(socket)}`,
    "[ttrpc]",
    `  address = ${q(`${socket}.ttrpc`)}`,
    "[debug]",
    '  address = ""',
    '  level = "warn"',
    "[metrics]",
    '  address = ""',
    '[plugins."io.containerd.internal.v1.opt"]',
    `  path = ${q(join(root, "opt"))}`,
    "",
  ].join("\n");
}

async function alive(pid: number): Promise<boolean> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, "utf8");
    return !/\) [ZX] /.test(stat);
  } catch {
    // No /proc entry: the process is gone.
    return false;
  }
}

/** Whether a pid is a containerd (a pid file can outlive its process, and the pid be reused). */
async function isContainerd(pid: number): Promise<boolean> {
  try {
    return (await readFile(`/proc/${pid}/cmdline`, "utf8")).split("\0").some((a) => a.endsWith("containerd"));
  } catch {
    // No /proc entry: the process is gone.
    return false;
  }
}

/** Whether containerd answers on the client's socket (its Version call). */
export async function answers(client: Containerd, timeoutMs: number): Promise<string | undefined> {
  try {
    const v = await client.call(client.version, client.version.version, {}, { timeoutMs });
    return v.version;
  } catch (err) {
    if (err instanceof ContainerdError) return undefined;
    throw err;
  }
}

/** containerd's version once it answers, within START_TIMEOUT_MS; undefined if it does not, or `gone()`. */
async function waitForAnswer(client: Containerd, gone: () => boolean): Promise<string | undefined> {
  const deadline = Date.now() + START_TIMEOUT_MS;
  while (Date.now() < deadline) {
    const v = await answers(client, 1000);
    if (v !== undefined) return v;
    if (gone()) return undefined;
    await pause(100);
  }
  return undefined;
}

/** The pid a managed containerd left in its pid file; 0 when there is none (never started, or cleaned). */
async function readPid(path: string): Promise<number> {
  try {
    const n = Number((await readFile(path, "utf8")).trim());
    return Number.isInteger(n) && n > 0 ? n : 0;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return 0;
    throw err;
  }
}

export class ContainerdSupervisor {
  readonly socket: string;
  readonly managed: boolean;
  private child: ChildProcess | undefined;
  private readonly log: Logger;
  private stopping = false;
  /** The managed containerd answered once (an exit then is a crash, and it is started again). */
  private up = false;

  constructor(private readonly opts: ContainerdOptions) {
    this.managed = opts.socket === undefined;
    this.socket = opts.socket ?? join(opts.execRoot, "containerd", "containerd.sock");
    this.log = opts.logger.child({ component: "containerd" });
  }

  /** The managed containerd's root (content, snapshots, metadata); undefined for a given one. */
  get root(): string | undefined {
    return this.managed ? join(this.opts.dataRoot, "containerd") : undefined;
  }

  private get stateDir(): string {
    return join(this.opts.execRoot, "containerd");
  }

  private get pidFile(): string {
    return join(this.stateDir, "containerd.pid");
  }

  /**
   * A client of a containerd that answers: the given one, or the managed one (reused if a previous shoald
   * left it running, else started). Throws the one-line error saying what to do when there is none.
   */
  async start(): Promise<Containerd> {
    // What blob writes a previous shoald's end cut short left (blobfile.ts): none is under way yet.
    if (this.root !== undefined) await clearIngest(this.root);
    const client = new Containerd(this.socket);
    const version = await answers(client, 2000);
    if (version !== undefined) {
      this.log.info({ socket: this.socket, version, managed: this.managed }, "using containerd");
      return client;
    }
    if (!this.managed) {
      // No socket: nothing runs there. A socket: a containerd that may just be slow to answer; wait for it.
      if (existsSync(this.socket)) {
        this.log.warn(
          { socket: this.socket },
          `containerd does not answer yet; waiting up to ${START_TIMEOUT_MS / 1000} s`,
        );
        const v = await waitForAnswer(client, () => false);
        if (v !== undefined) {
          this.log.info({ socket: this.socket, version: v, managed: false }, "using containerd");
          return client;
        }
      }
      client.close();
      throw new Error(containerdUnavailable(this.socket, "it does not answer", false));
    }
    await this.spawnManaged();
    const v = await waitForAnswer(client, () => this.child !== undefined && this.child.exitCode !== null);
    if (v !== undefined) {
      this.log.info({ socket: this.socket, version: v, pid: this.child?.pid }, "started containerd");
      this.up = true;
      return client;
    }
    client.close();
    throw new Error(
      containerdUnavailable(this.socket, "it did not start: see its log in containerd.log beside the socket", true),
    );
  }

  private async spawnManaged(): Promise<void> {
    const root = join(this.opts.dataRoot, "containerd");
    await mkdir(root, { recursive: true, mode: 0o711 });
    await mkdir(this.stateDir, { recursive: true, mode: 0o711 });
    const old = await readPid(this.pidFile);
    if (old > 0 && (await alive(old)) && (await isContainerd(old))) {
      // A containerd of ours that does not answer: it is stuck; a new one takes its place.
      this.log.warn({ pid: old }, "a previous containerd does not answer: stopping it");
      process.kill(old, "SIGKILL");
    }
    await rm(this.socket, { force: true });
    const config = join(this.stateDir, "config.toml");
    await writeFile(config, configToml(root, this.stateDir, this.socket));
    const logFd = openSync(join(this.stateDir, "containerd.log"), "a", 0o600);
    const program = this.opts.program ?? "containerd";
    if (findOnPath(program) === undefined) {
      throw new Error(containerdUnavailable(this.socket, `${program} is not installed`, true));
    }
    // containerd dies with shoald (the kernel kills it): the containers do not (their shims keep them), and
    // the next shoald's containerd finds them again. No containerd is left behind by a shoald that crashed.
    const argv = findOnPath("setpriv") ? ["setpriv", "--pdeathsig", "KILL", program] : [program];
    const child = spawn(argv[0]!, [...argv.slice(1), "--config", config], { stdio: ["ignore", logFd, logFd] });
    closeSync(logFd);
    child.on("error", (err) => this.log.error({ err }, containerdUnavailable(this.socket, err.message, true)));
    child.on("exit", (code, signal) => this.onExit(code, signal));
    child.unref();
    this.child = child;
    if (child.pid) await writeFile(this.pidFile, `${child.pid}\n`);
  }

  private onExit(code: number | null, signal: NodeJS.Signals | null): void {
    if (this.stopping || !this.up) return;
    this.up = false;
    this.log.error(
      { code, signal },
      "containerd exited: starting it again in a second (running containers keep running)",
    );
    setTimeout(() => {
      void this.spawnManaged()
        .then(() => {
          this.up = true;
        })
        .catch((err: unknown) =>
          this.log.error({ err }, "could not start containerd again: container calls fail until shoald restarts"),
        );
    }, 1000).unref();
  }

  /** Stops a managed containerd (its containers' shims keep running); a given one is left alone. */
  async stop(): Promise<void> {
    this.stopping = true;
    const child = this.child;
    if (!this.managed || !child?.pid || child.exitCode !== null) return;
    const exited = new Promise((resolve) => child.once("exit", resolve));
    child.kill("SIGTERM");
    await Promise.race([exited, pause(5000)]);
    if (child.exitCode === null) child.kill("SIGKILL");
  }
}
