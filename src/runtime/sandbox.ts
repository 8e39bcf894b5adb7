// The kernel side of a container: its network namespace file, the pipes its output comes through, the
// command line that launches it in its own namespaces, and what /proc says about its processes. The
// runtime (lifecycle.ts, launch.ts, exec.ts) decides when; this file knows how.
//
// A container is a process tree on the host's file system in new network, mount, UTS, IPC and PID
// namespaces:
//
//   nsenter --net=<execRoot>/netns/<id12>                       join the container's network namespace
//     unshare --mount --uts --ipc --pid --fork --kill-child      new namespaces; the forked child is pid 1
//             --mount-proc --propagation private
//       sh -c LAUNCH_SCRIPT ...                                  bind-mounts /etc files, sets the hostname,
//         exec CMD                                               then becomes CMD (still pid 1)
//
// The unshare parent stays outside the PID namespace and exits with CMD's status; it is the process the
// runtime spawns and watches. Killing the container's pid 1 (the parent's only child) kills every process
// in its PID namespace, exec'd ones included.

import { closeSync, constants as fsConstants, openSync, unlinkSync } from "node:fs";
import { mkdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { Socket } from "node:net";
import { dirname } from "node:path";
import { findOnPath } from "../dataplane/programs.js";
import { CommandError, type RunResult, spawnRunner } from "../dataplane/runner.js";

/**
 * Runs a short command; resolves to its exit code and output (never rejects for a non-zero exit). A program
 * that is not installed gives code 127 and says which Debian package provides it.
 */
export function runCommand(argv: string[]): Promise<RunResult> {
  return spawnRunner(argv);
}

async function mustRun(argv: string[]): Promise<void> {
  const r = await runCommand(argv);
  if (r.code !== 0) throw new CommandError(argv, r);
}

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
    const r = await runCommand(["umount", path]);
    if (r.code !== 0 && (await netnsState(path)) === "netns") {
      throw new Error(`umount ${path} exited with code ${r.code}: ${r.stderr.trim()}`);
    }
  }
  if ((await netnsState(path)) === "netns") throw new Error(`${path} is still a mounted namespace after 4 unmounts`);
  await rm(path, { force: true });
}

// ---- pipes -----------------------------------------------------------------------------------------------

/**
 * A real pipe (a FIFO, unlinked once open) rather than the socket pair Node would give a child: programs
 * that open /dev/stdout or /dev/stderr (log files symlinked there) cannot open a socket.
 */
export async function fifoPipe(path: string): Promise<{ reader: Socket; writeFd: number }> {
  await rm(path, { force: true });
  await mustRun(["mkfifo", "-m", "600", path]);
  let readFd: number | undefined;
  try {
    readFd = openSync(path, fsConstants.O_RDONLY | fsConstants.O_NONBLOCK);
    const writeFd = openSync(path, fsConstants.O_WRONLY);
    const reader = new Socket({ fd: readFd, readable: true, writable: false });
    return { reader, writeFd };
  } catch (err) {
    if (readFd !== undefined) closeSync(readFd);
    throw err;
  } finally {
    try {
      unlinkSync(path);
    } catch {
      // already gone
    }
  }
}

// ---- launching -----------------------------------------------------------------------------------------

/**
 * What pid 1 of a container runs before it becomes CMD. Arguments: $1 resolv.conf, $2 hosts, $3 hostname
 * file (each "" for none), $4 hostname ("" keeps it), $5 working directory, then CMD. File descriptors:
 * 2 is the unshare parent's own stderr (the runtime reads it), 3 reports readiness ("ok") or what went
 * wrong, 4 is the container's stderr.
 */
export const LAUNCH_SCRIPT = [
  "exec 2>&4 4>&-",
  'fail() { printf "%s\\n" "$2" >&3; exit "$1"; }',
  'bindfile() { [ -z "$1" ] && return 0; [ -e "$2" ] || return 0; mount --bind "$1" "$2" 2>&3 || fail 126 "could not bind-mount $1 on $2"; }',
  'bindfile "$1" /etc/resolv.conf',
  'bindfile "$2" /etc/hosts',
  'bindfile "$3" /etc/hostname',
  'if [ -n "$4" ]; then printf "%s" "$4" 2>&3 >/proc/sys/kernel/hostname || fail 126 "could not set the hostname to $4"; fi',
  // Namespace files the host had mounted (other containers', overlays') would stay pinned by this copy of
  // the mount table: drop them (the container is in its own namespaces already).
  "m=$(cat /proc/self/mountinfo 2>/dev/null)",
  'printf "%s\\n" "$m" | while read -r _ _ _ _ mp rest; do case "$rest" in *" - nsfs "*) umount -l "$mp" 2>/dev/null;; esac; done',
  'cd "$5" 2>/dev/null || fail 126 "chdir to cwd (\\"$5\\") failed: no such file or directory"',
  "shift 5",
  'command -v -- "$1" >/dev/null 2>&1 || fail 127 "exec: \\"$1\\": executable file not found in \\$PATH"',
  'printf "ok\\n" >&3',
  "exec 3>&-",
  'exec "$@"',
].join("\n");

export interface LaunchPlan {
  /** null: the host's network namespace (NetworkMode "host"). */
  netnsPath: string | null;
  resolvConf: string;
  hosts: string;
  hostnameFile: string;
  /** "" keeps the host's (NetworkMode "host"). */
  hostname: string;
  workingDir: string;
  argv: string[];
}

/** The command line that starts a container (see the top of this file). */
export function launchArgv(plan: LaunchPlan): string[] {
  const unshare = [
    "unshare",
    "--mount",
    "--uts",
    "--ipc",
    "--pid",
    "--fork",
    "--kill-child",
    "--mount-proc",
    "--propagation",
    "private",
  ];
  const script = [
    "sh",
    "-c",
    LAUNCH_SCRIPT,
    "shoal-init",
    plan.resolvConf,
    plan.hosts,
    plan.hostnameFile,
    plan.hostname,
    plan.workingDir,
    ...plan.argv,
  ];
  return plan.netnsPath === null
    ? [...unshare, ...script]
    : ["nsenter", `--net=${plan.netnsPath}`, ...unshare, ...script];
}

/** Whether a program is on $PATH. */
export function onPath(name: string): boolean {
  return findOnPath(name) !== undefined;
}

/**
 * argv with the kernel told to SIGKILL it when its parent (the daemon) dies: the launcher then takes the
 * container down with it (--kill-child), so a daemon that crashes leaves no container running unmanaged.
 */
export function dieWithParent(argv: string[]): string[] {
  return ["setpriv", "--pdeathsig", "KILL", ...argv];
}

/** The wrapper an exec'd command runs in: docker's words when the command does not exist. */
export const EXEC_SCRIPT = [
  'cd "$1" 2>/dev/null || { printf "%s\\n" "chdir to cwd (\\"$1\\") failed: no such file or directory" >&2; exit 126; }',
  "shift",
  'command -v -- "$1" >/dev/null 2>&1 || { printf "%s\\n" "OCI runtime exec failed: exec failed: unable to start container process: exec: \\"$1\\": executable file not found in \\$PATH: unknown" >&2; exit 127; }',
  'exec "$@"',
].join("\n");

/** Runs argv in all the namespaces of the container whose pid 1 is `pid`. */
export function execArgv(pid: number, hostNetwork: boolean, workingDir: string, argv: string[]): string[] {
  const ns = hostNetwork ? ["-m", "-u", "-i", "-p"] : ["-n", "-m", "-u", "-i", "-p"];
  return ["nsenter", "-t", String(pid), ...ns, "sh", "-c", EXEC_SCRIPT, "shoal-exec", workingDir, ...argv];
}

// ---- /proc -----------------------------------------------------------------------------------------------

/** The children of a process (Linux 3.5+ with CONFIG_PROC_CHILDREN). */
export async function childrenOf(pid: number): Promise<number[]> {
  try {
    const text = await readFile(`/proc/${pid}/task/${pid}/children`, "utf8");
    return text
      .trim()
      .split(/\s+/)
      .filter((s) => s !== "")
      .map(Number);
  } catch {
    // The process is gone: it has no children.
    return [];
  }
}

/** A process's start time (clock ticks since boot): with the pid, it names one process for good. */
export async function processStartTime(pid: number): Promise<number | undefined> {
  try {
    const text = await readFile(`/proc/${pid}/stat`, "utf8");
    // The command name (field 2) may hold spaces and parentheses: count from the last ")".
    const fields = text.slice(text.lastIndexOf(")") + 2).split(" ");
    const start = Number(fields[19]);
    return Number.isFinite(start) ? start : undefined;
  } catch {
    // The process is gone: it has no start time.
    return undefined;
  }
}

/** Whether pid is still the process that started at `startTime` (and not a zombie). */
export async function isSameProcess(pid: number, startTime: number | undefined): Promise<boolean> {
  if (pid <= 0) return false;
  try {
    const text = await readFile(`/proc/${pid}/stat`, "utf8");
    const fields = text.slice(text.lastIndexOf(")") + 2).split(" ");
    if (fields[0] === "Z" || fields[0] === "X") return false;
    return startTime === undefined || Number(fields[19]) === startTime;
  } catch {
    // No /proc entry: the process is gone.
    return false;
  }
}
