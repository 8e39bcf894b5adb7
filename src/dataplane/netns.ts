// Network namespaces as bind-mounted files under a directory we own (like Docker's /var/run/docker/netns),
// not under /run/netns: `ip netns` never sees them, so `ip -n NAME` cannot be used. Commands run inside one
// with `nsenter --net=PATH`, and `ip link add ... netns PATH` takes the path directly (iproute2 opens a
// netns argument that contains '/' as a file instead of looking it up under /run/netns).
//
// A namespace is made with `unshare --net=PATH CMD`: unshare bind-mounts the new namespace on PATH (which
// must exist) before it executes CMD inside it, so CMD can be the first `ip -batch` for that namespace and
// the namespace costs no process of its own.

import { mkdir, readdir, rm, stat, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { CommandError, type Runner, type RunResult, spawnRunner } from "./runner.js";

/** absent: no file; file: a plain file (not a mounted namespace, e.g. left by a crash or a reboot). */
export type NetnsState = "absent" | "file" | "netns";
export type NetnsProbe = (path: string) => Promise<NetnsState>;

let nsfsDev: number | undefined;

/**
 * The default probe: a file with a network namespace bind-mounted on it stats as an nsfs inode, the same
 * device as /proc/self/ns/net. No process is spawned.
 */
export const statProbe: NetnsProbe = async (path) => {
  if (nsfsDev === undefined) nsfsDev = (await stat("/proc/self/ns/net")).dev;
  try {
    const st = await stat(path);
    return st.dev === nsfsDev ? "netns" : "file";
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return "absent";
    throw err;
  }
};

export interface NetnsDeps {
  runner?: Runner;
  probe?: NetnsProbe;
}

class NetnsExistsError extends Error {
  constructor(readonly path: string) {
    super(`network namespace ${path} already exists`);
    this.name = "NetnsExistsError";
  }
}

/** Characters that would split an `ip -batch` line or confuse nsenter/unshare option parsing. */
function assertNetnsPath(path: string): void {
  if (!path.startsWith("/") || /[\s"'\\]/.test(path) || path.endsWith("/")) {
    throw new Error(`invalid namespace path ${JSON.stringify(path)}: use an absolute path without spaces or quotes`);
  }
}

/**
 * Create a network namespace bind-mounted on `path` (its directory is created if needed). With `exec`, that
 * command runs inside the new namespace (with `stdin`) as part of the same process; otherwise `true` does.
 * All or nothing: if unshare or the command fails, the namespace is removed again and a CommandError thrown.
 */
export async function createNetns(
  path: string,
  opts: NetnsDeps & { exec?: string[]; stdin?: string } = {},
): Promise<void> {
  assertNetnsPath(path);
  const runner = opts.runner ?? spawnRunner;
  const probe = opts.probe ?? statProbe;
  await mkdir(dirname(path), { recursive: true });
  const state = await probe(path);
  if (state === "netns") throw new NetnsExistsError(path);
  if (state === "absent") await writeFile(path, "", { flag: "wx", mode: 0o444 });
  const argv = ["unshare", `--net=${path}`, ...(opts.exec ?? ["true"])];
  const runOpts = opts.stdin === undefined ? undefined : { stdin: opts.stdin };
  const result = await runner(argv, runOpts);
  // The creation's error is the one thrown: a namespace file this cleanup could not remove is found and
  // deleted by the overlay reconcile (a namespace no network wants), or adopted by the next create's caller.
  if (result.code !== 0) {
    await deleteNetns(path, { runner, probe }).catch(() => {});
    throw new CommandError(argv, result, opts.stdin);
  }
  if ((await probe(path)) !== "netns") {
    await deleteNetns(path, { runner, probe }).catch(() => {});
    throw new Error(`${argv.join(" ")} succeeded but left no network namespace mounted on ${path}`);
  }
}

/** Unmount and remove a namespace file. Already gone (or never mounted) is fine. */
export async function deleteNetns(path: string, opts: NetnsDeps = {}): Promise<void> {
  assertNetnsPath(path);
  const runner = opts.runner ?? spawnRunner;
  const probe = opts.probe ?? statProbe;
  // A file can carry more than one mount (a crash between two creates); peel them all.
  for (let i = 0; i < 4 && (await probe(path)) === "netns"; i++) {
    const result = await runner(["umount", path]);
    if (result.code !== 0 && (await probe(path)) === "netns") throw new CommandError(["umount", path], result);
  }
  if ((await probe(path)) === "netns") throw new Error(`${path} is still a mounted namespace after 4 unmounts`);
  await rm(path, { force: true });
}

export interface NetnsEntry {
  name: string;
  path: string;
  /** false: a stale plain file with no namespace mounted on it. */
  mounted: boolean;
}

/** The namespace files in `dir` (none if it does not exist), sorted by name. */
export async function listNetns(dir: string, opts: { probe?: NetnsProbe } = {}): Promise<NetnsEntry[]> {
  const probe = opts.probe ?? statProbe;
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return [];
    throw err;
  }
  const out: NetnsEntry[] = [];
  for (const name of names.sort()) {
    const path = join(dir, name);
    const state = await probe(path);
    if (state !== "absent") out.push({ name, path, mounted: state === "netns" });
  }
  return out;
}

/** Run argv inside the namespace at `path`: `nsenter --net=PATH argv...`. */
export function runInNetns(
  path: string,
  argv: string[],
  opts: { stdin?: string; runner?: Runner } = {},
): Promise<RunResult> {
  assertNetnsPath(path);
  const runner = opts.runner ?? spawnRunner;
  return runner(["nsenter", `--net=${path}`, ...argv], opts.stdin === undefined ? undefined : { stdin: opts.stdin });
}
