// The kernel side of a container that shoal makes itself: its network namespace file (the one the data
// plane wires its endpoints into and the OCI spec points runc at), and the short commands around it.
// Processes, mounts and cgroups are containerd's and runc's (containerd/tasks.ts, spec.ts).

import { mkdir, rm, stat, writeFile } from "node:fs/promises";
import { dirname } from "node:path";
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
