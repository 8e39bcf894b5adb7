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

/** The script that makes a batch of namespaces: one process for all (argv: the files, made already). */
const NETNS_BATCH_SCRIPT = 'for p do unshare --net="$p" ip link set lo up || exit 1; done';

/**
 * New network namespaces (loopback up) bind-mounted on each of `paths`, by one process for all of them: a
 * process spawned from shoald stops its event loop while it forks (~10-25 ms on a loaded host, as much for
 * one namespace as for eight). Resolves to the paths that hold a namespace; the others are removed again.
 */
export async function createNetnsBatch(paths: string[]): Promise<string[]> {
  if (paths.length === 0) return [];
  for (const p of paths) assertPath(p);
  await mkdir(dirname(paths[0]!), { recursive: true });
  const fresh: string[] = [];
  for (const p of paths) {
    // A file that is there already is not ours to mount over.
    if ((await netnsState(p)) !== "absent") continue;
    await writeFile(p, "", { flag: "wx", mode: 0o444 });
    fresh.push(p);
  }
  await runCommand(["sh", "-c", NETNS_BATCH_SCRIPT, "sh", ...fresh]);
  const made: string[] = [];
  for (const p of fresh) {
    if ((await netnsState(p)) === "netns") made.push(p);
    else await deleteNetns(p).catch(() => undefined);
  }
  return made;
}

/** How many namespaces a pool makes at once, and how few it may hold before it makes more. */
const NETNS_POOL_BATCH = 8;
const NETNS_POOL_LOW = 3;

/**
 * Network namespaces made ahead for containers not created yet, each on the file of the container id it
 * was made for (<dir>/<id12>): a create takes an id with its namespace made, and its start does not wait
 * for one (two processes, forked from shoald, ~20-30 ms on a loaded host). The first take starts the
 * pool (a host that runs no container holds none); when it is empty a create makes its own namespace.
 */
export class NetnsPool {
  private free: string[] = [];
  private filling: Promise<void> | undefined;
  private closed = false;

  constructor(
    private readonly pathOf: (id: string) => string,
    /** A new container id (container.ts newId). */
    private readonly newId: () => string,
    private readonly log: { warn(obj: object, msg: string): void },
  ) {}

  /** An id whose namespace is made, taken from the pool; undefined when it is empty (it fills meanwhile). */
  take(): string | undefined {
    const id = this.free.pop();
    if (this.free.length < NETNS_POOL_LOW) this.refill();
    return id;
  }

  /** Whether the namespace file `name` (12 hex digits) is one the pool holds (not stale). */
  holds(name: string): boolean {
    return this.free.some((id) => id.startsWith(name));
  }

  /** Resolves once no batch is being made (tests). */
  async settled(): Promise<void> {
    await this.filling;
  }

  /** Removes the namespaces the pool holds; it makes no more. */
  async close(): Promise<void> {
    this.closed = true;
    await this.filling;
    for (const id of this.free.splice(0)) {
      await deleteNetns(this.pathOf(id)).catch((err: unknown) =>
        this.log.warn({ err, id }, "could not remove a network namespace made ahead: the next daemon removes it"),
      );
    }
  }

  private refill(): void {
    if (this.filling || this.closed) return;
    const ids = Array.from({ length: NETNS_POOL_BATCH }, () => this.newId());
    this.filling = createNetnsBatch(ids.map(this.pathOf))
      .then(async (made) => {
        const ok = ids.filter((id) => made.includes(this.pathOf(id)));
        if (!this.closed) {
          this.free.push(...ok);
          return;
        }
        for (const id of ok) await deleteNetns(this.pathOf(id)).catch(() => undefined);
      })
      .catch((err: unknown) =>
        this.log.warn({ err }, "could not make network namespaces ahead: creates make their own"),
      )
      .finally(() => {
        this.filling = undefined;
      });
  }
}
