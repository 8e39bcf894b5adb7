// The kernel side of a container that shoal makes itself: its network namespace file (the one the data
// plane wires its endpoints into and the OCI spec points runc at), and the short commands around it.
// Processes, mounts and cgroups are containerd's and runc's (containerd/tasks.ts, spec.ts).

import { type ChildProcess, spawn } from "node:child_process";
import { mkdir, readdir, rm, stat, writeFile } from "node:fs/promises";
import { dirname } from "node:path";
import { explainMissing, missingProgramMessage } from "../dataplane/programs.js";
import { CommandError, type RunResult, spawnRunner } from "../dataplane/runner.js";

/**
 * Runs a short command; resolves to its exit code and output (never rejects for a non-zero exit). A program
 * that is not installed gives code 127 and says which Debian package provides it.
 */
export function runCommand(argv: string[]): Promise<RunResult> {
  return spawnRunner(argv);
}

/** A word for sh, quoted: '...' with every ' written as '\''. */
function shellQuote(arg: string): string {
  return `'${arg.replaceAll("'", "'\\''")}'`;
}

/**
 * The shell's loop: a command a line; for each, its exit code and the length of what it wrote on stderr (in
 * bytes: LC_ALL=C), then that text. Its stdout goes nowhere, its stdin is /dev/null.
 */
const SHELL_LOOP = `while IFS= read -r cmd; do
err=$(eval "$cmd" 2>&1 >/dev/null </dev/null)
printf '%s %s\\n' "$?" "\${#err}"
printf '%s' "$err"
done`;

interface ShellJob {
  argv: string[];
  resolve: (r: RunResult) => void;
}

/**
 * Short commands (their exit code and stderr; no stdout) run by one shell kept for them, one after the
 * other. A spawn from shoald forks a process of shoald's size and blocks its event loop until the child
 * has exec'd: 10-25 ms a command on a loaded host, more the bigger its heap, and every request waits
 * meanwhile. The shell's fork is of a process of a few hundred KB, outside shoald. The shell is started
 * at the first command and again after it died; it holds the process open only while commands are
 * pending. Commands whose words hold a newline are spawned as before.
 */
export class CommandShell {
  private child: ChildProcess | undefined;
  private jobs: ShellJob[] = [];
  private buf: Buffer = Buffer.alloc(0);

  constructor(
    private readonly shell = "/bin/sh",
    private readonly fallback = spawnRunner,
  ) {}

  run(argv: string[]): Promise<RunResult> {
    if (argv.length === 0 || argv.some((a) => a.includes("\n") || a.includes("\0"))) return this.fallback(argv);
    return new Promise((resolve) => {
      const child = this.started();
      this.jobs.push({ argv, resolve });
      this.hold(true);
      child.stdin!.write(`${argv.map(shellQuote).join(" ")}\n`);
    });
  }

  /** Ends the shell (it finishes the command it runs; those after it are reported failed). */
  close(): void {
    const child = this.child;
    this.child = undefined;
    child?.stdin?.end();
    this.fail(this.jobs.splice(0), "the command shell was closed");
  }

  private started(): ChildProcess {
    if (this.child) return this.child;
    const child = spawn(this.shell, ["-c", SHELL_LOOP], {
      stdio: ["pipe", "pipe", "ignore"],
      env: { ...process.env, LC_ALL: "C" },
    });
    this.child = child;
    this.buf = Buffer.alloc(0);
    child.stdout!.on("data", (d: Buffer) => this.take(d));
    // A write to a shell that has died: its exit reports the commands.
    child.stdin!.on("error", () => {});
    const gone = (why: string): void => {
      if (this.child !== child) return;
      this.child = undefined;
      this.fail(this.jobs.splice(0), why);
    };
    child.on("error", (err) => gone(`the command shell could not run: ${err.message}`));
    child.on("exit", (code, signal) => gone(`the command shell exited (${signal ?? `code ${code}`})`));
    return child;
  }

  /** While commands are pending the shell keeps shoald's process open; idle, it does not. */
  private hold(on: boolean): void {
    holdChild(this.child, on);
  }

  private take(d: Buffer): void {
    this.buf = this.buf.length === 0 ? d : Buffer.concat([this.buf, d]);
    for (;;) {
      const nl = this.buf.indexOf(10);
      if (nl < 0) return;
      const m = /^(\d+) (\d+)$/.exec(this.buf.subarray(0, nl).toString("latin1"));
      if (!m) {
        // Not the loop's output: nothing after it can be trusted; the shell goes.
        this.child?.kill("SIGKILL");
        return;
      }
      const len = Number(m[2]);
      if (this.buf.length < nl + 1 + len) return;
      const stderr = this.buf.subarray(nl + 1, nl + 1 + len).toString("utf8");
      this.buf = this.buf.subarray(nl + 1 + len);
      const job = this.jobs.shift();
      if (!job) continue;
      job.resolve(resultOf(job.argv, Number(m[1]), stderr));
      if (this.jobs.length === 0) this.hold(false);
    }
  }

  private fail(jobs: ShellJob[], why: string): void {
    for (const j of jobs) j.resolve({ stdout: "", stderr: `${j.argv[0]}: not run: ${why}\n`, code: 127 });
  }
}

/** A command's result as a spawn reports it: a program that is not installed named with its package. */
function resultOf(argv: string[], code: number, stderr: string): RunResult {
  const text = stderr === "" || stderr.endsWith("\n") ? stderr : `${stderr}\n`;
  if (code !== 127) return { stdout: "", stderr: text, code };
  // sh's "sh: 1: mkfifo: not found", or a wrapper's "unshare: failed to execute ip: ...".
  const missing = /not found$/m.test(stderr)
    ? missingProgramMessage(argv[0]!)
    : explainMissing(argv[0]!, undefined, stderr);
  return missing === undefined
    ? { stdout: "", stderr: text, code }
    : { stdout: "", stderr: `${missing}\n`, code: 127, missing };
}

/** The shell of this process's short commands (network namespaces, FIFOs). */
export const commandShell = new CommandShell();

async function mustRun(argv: string[]): Promise<void> {
  const r = await commandShell.run(argv);
  if (r.code !== 0) throw new CommandError(argv, r);
}

/** A helper process kept open while it has work pending (ref), and not keeping shoald's open while idle (unref). */
function holdChild(child: ChildProcess | undefined, on: boolean): void {
  if (!child) return;
  for (const h of [child, child.stdin, child.stdout] as ({ ref(): void; unref(): void } | null)[]) {
    if (on) h?.ref();
    else h?.unref();
  }
}

// ---- moves of mounts, without a process each -------------------------------------------------------------

/** mount(2)'s number where it is known (x86_64's own; the generic table's, on arm64). */
const MOUNT_SYSCALL: Readonly<Partial<Record<string, number>>> = { x64: 165, arm64: 40 };
const MS_MOVE = 8192;

/** The mover's loop: a line "FROM<TAB>TO" moves the mount on FROM onto TO; it answers the errno (0: moved). */
const MOVER_LOOP = (nr: number): string =>
  `$|=1; while (my $l = <STDIN>) { chomp $l; my ($f, $t) = split /\\t/, $l, 2; ` +
  `print((syscall(${nr}, $f, $t, 0, ${MS_MOVE}, 0) == 0 ? 0 : $! + 0), "\\n"); }`;

interface MoveJob {
  resolve: (errno: number | undefined) => void;
}

/**
 * mount(2) with MS_MOVE by one perl process kept for it (perl-base is in Debian's essential set): a move is
 * a line written to it and a line read back, no process made. `mount --move` run by the command shell costs
 * a fork and an exec of mount, 20-35 ms on a loaded host, and it was the last step a new container's task
 * waited for. A move resolves to its errno (0: moved), or undefined when the mover cannot run (no perl, an
 * architecture whose syscall number is not known here, the process gone): the caller runs mount instead.
 */
export class MountMover {
  private child: ChildProcess | undefined;
  private jobs: MoveJob[] = [];
  private buf = "";
  private broken = false;

  constructor(
    private readonly perl = "perl",
    /** mount(2)'s number; null where it is not known (the mover does not run). */
    private readonly nr: number | null = MOUNT_SYSCALL[process.arch] ?? null,
  ) {}

  move(from: string, to: string): Promise<number | undefined> {
    if (this.broken || this.nr === null || /[\t\n\0]/.test(from + to)) return Promise.resolve(undefined);
    return new Promise((resolve) => {
      const child = this.started();
      this.jobs.push({ resolve });
      this.hold(true);
      child.stdin!.write(`${from}\t${to}\n`);
    });
  }

  close(): void {
    const child = this.child;
    this.child = undefined;
    child?.stdin?.end();
    for (const j of this.jobs.splice(0)) j.resolve(undefined);
  }

  private started(): ChildProcess {
    if (this.child) return this.child;
    const child = spawn(this.perl, ["-e", MOVER_LOOP(this.nr!)], { stdio: ["pipe", "pipe", "ignore"] });
    this.child = child;
    this.buf = "";
    child.stdout!.setEncoding("latin1");
    child.stdout!.on("data", (d: string) => this.take(d));
    child.stdin!.on("error", () => {});
    const gone = (): void => {
      if (this.child !== child) return;
      this.child = undefined;
      // Not started (no perl), or died: mount does the moves from now on.
      this.broken = true;
      for (const j of this.jobs.splice(0)) j.resolve(undefined);
    };
    child.on("error", gone);
    child.on("exit", gone);
    return child;
  }

  private hold(on: boolean): void {
    holdChild(this.child, on);
  }

  private take(d: string): void {
    this.buf += d;
    for (let nl = this.buf.indexOf("\n"); nl >= 0; nl = this.buf.indexOf("\n")) {
      const line = this.buf.slice(0, nl);
      this.buf = this.buf.slice(nl + 1);
      const job = this.jobs.shift();
      job?.resolve(/^\d+$/.test(line) ? Number(line) : undefined);
      if (this.jobs.length === 0) this.hold(false);
    }
  }
}

/** The mover of this process's namespace files. */
export const mountMover = new MountMover();

// ---- network namespace files -----------------------------------------------------------------------------

let nsfsDev: number | undefined;

/** Whether a network namespace is bind-mounted on `path` (an nsfs inode), a plain file is there, or nothing. */
export async function netnsState(path: string): Promise<"absent" | "file" | "netns"> {
  nsfsDev ??= (await stat("/proc/self/ns/net")).dev;
  try {
    return (await stat(path)).dev === nsfsDev ? "netns" : "file";
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return "absent";
    throw err;
  }
}

function assertPath(path: string): void {
  if (!path.startsWith("/") || /[\s"'\\]/.test(path)) {
    throw new Error(`invalid namespace path ${JSON.stringify(path)}: use an absolute path without spaces or quotes`);
  }
}

/**
 * A new network namespace bind-mounted on `path`, with its loopback up. All or nothing: on failure the
 * file is gone again.
 */
export async function createNetns(path: string): Promise<void> {
  assertPath(path);
  await mkdir(dirname(path), { recursive: true });
  const state = await netnsState(path);
  if (state === "netns") throw new Error(`network namespace ${path} already exists`);
  if (state === "absent") await writeFile(path, "", { flag: "wx", mode: 0o444 });
  try {
    await mustRun(["unshare", `--net=${path}`, "ip", "link", "set", "lo", "up"]);
    if ((await netnsState(path)) !== "netns") throw new Error(`unshare left no network namespace on ${path}`);
  } catch (err) {
    // All or nothing: a namespace file that cannot be removed again is named in the error, not dropped.
    try {
      await deleteNetns(path);
    } catch (cleanup) {
      const why = cleanup instanceof Error ? cleanup.message : String(cleanup);
      throw new Error(`${err instanceof Error ? err.message : String(err)} (and ${path} could not be removed: ${why})`);
    }
    throw err;
  }
}

/** Unmounts and removes a namespace file; a missing or unmounted file is fine. */
export async function deleteNetns(path: string): Promise<void> {
  assertPath(path);
  // A file can carry more than one mount (a crash between two creates): peel them all.
  for (let i = 0; i < 4 && (await netnsState(path)) === "netns"; i++) {
    const r = await commandShell.run(["umount", path]);
    if (r.code !== 0 && (await netnsState(path)) === "netns") {
      throw new Error(`umount ${path} exited with code ${r.code}: ${r.stderr.trim()}`);
    }
  }
  if ((await netnsState(path)) === "netns") throw new Error(`${path} is still a mounted namespace after 4 unmounts`);
  await rm(path, { force: true });
}

/** Moves the mount on `from` onto `to`: by the mover, or by `mount --move` where it cannot run; 0 when moved. */
async function moveMount(from: string, to: string): Promise<number> {
  const errno = await mountMover.move(from, to);
  if (errno !== undefined) return errno;
  return (await commandShell.run(["mount", "--move", from, to])).code;
}

/** Set once a `mount --move` was refused (a shared parent mount, as on a systemd host): binds from then on. */
let moveRefused = false;

/**
 * Moves the network namespace on `from` (made ahead, netns-pool.ts) onto a new file `to`; `from` is gone
 * after. One move by the mount mover (mount(2), no process); where the kernel refuses a move (the parent mount of
 * `from` is shared), a bind mount and an unmount. All or nothing for `to`: on failure it is gone again,
 * and so is `from`'s namespace (a pool's namespace is never given twice).
 */
export async function moveNetns(from: string, to: string): Promise<void> {
  assertPath(from);
  assertPath(to);
  try {
    if ((await netnsState(from)) !== "netns") throw new Error(`no network namespace on ${from}`);
    await mkdir(dirname(to), { recursive: true });
    await writeFile(to, "", { flag: "wx", mode: 0o444 });
    try {
      const moved = moveRefused ? undefined : await moveMount(from, to);
      if (moved !== 0) {
        const bound = await commandShell.run(["mount", "--bind", from, to]);
        if (bound.code !== 0) throw new CommandError(["mount", "--bind", from, to], bound);
        moveRefused = true;
      }
      if ((await netnsState(to)) !== "netns") throw new Error(`mount left no network namespace on ${to}`);
    } catch (err) {
      await deleteNetns(to).catch(() => undefined);
      throw err;
    }
  } finally {
    // Moved: a plain file. Bound, or not moved: its namespace's mount goes too (else the pool's directory
    // keeps it until the daemon's stop or next start removes it).
    await deleteNetns(from).catch(() => undefined);
  }
}

/** The names in a directory; none when it does not exist. */
export async function namesIn(dir: string): Promise<string[]> {
  try {
    return await readdir(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return [];
    throw err;
  }
}
