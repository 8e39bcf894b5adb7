// Network namespaces made ahead for containers not created yet, in a directory of their own
// (<execRoot>/netns-pool), never in the containers' (<execRoot>/netns): a create takes one and moves it
// onto its container's file (<execRoot>/netns/<id12>, sandbox.ts moveNetns), one `mount --move` run by
// the command shell, while the create writes its record; a namespace made for it instead costs two
// processes (unshare, ip: ~30 ms on a loaded host) before its task can be made. The pool's namespaces are
// the daemon's alone: removed when it stops (runtime.ts dropAhead), and those a daemon that died left are
// removed by the next one's reconcile (removeStale).

import { randomBytes } from "node:crypto";
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { CommandShell, deleteNetns, namesIn, netnsState } from "./sandbox.js";

/**
 * How many namespaces the pool holds at most (for a burst of creates), and how many it makes after a take
 * at most: a few at a time, so that what it makes beside a start (two processes a namespace) stays small;
 * one a take once it is full.
 */
const NETNS_POOL_MAX = 4;
const NETNS_POOL_STEP = 2;

/** The script that makes a batch of namespaces: one process for all (argv: the files, made already). */
const NETNS_BATCH_SCRIPT = 'for p do unshare --net="$p" ip link set lo up || exit 1; done';

export interface NetnsPoolOptions {
  /** The pool's directory (<execRoot>/netns-pool). */
  dir: string;
  log: { warn(obj: object, msg: string): void };
  /** A new file name (default: 16 random hex digits). */
  newName?: () => string;
}

/**
 * Network namespaces (loopback up) made ahead, each bind-mounted on a file of the pool's directory. The
 * first take starts the pool (a host that runs no container holds none); a take from an empty pool gets
 * nothing (the create makes its namespace itself) and the pool fills meanwhile. Batches are made by a
 * shell of the pool's own, so that they never hold up the commands a create waits for.
 */
export class NetnsPool {
  readonly dir: string;
  private free: string[] = [];
  /** The files of the batch being made. */
  private making: string[] = [];
  private filling: Promise<void> | undefined;
  private closed = false;
  private readonly shell = new CommandShell();
  private readonly newName: () => string;
  private readonly log: NetnsPoolOptions["log"];

  constructor(opts: NetnsPoolOptions) {
    this.dir = opts.dir;
    this.log = opts.log;
    this.newName = opts.newName ?? (() => randomBytes(8).toString("hex"));
  }

  /** The path of a namespace made ahead, now the caller's; undefined when the pool is empty (it fills meanwhile). */
  take(): string | undefined {
    if (this.closed) return undefined;
    const path = this.free.pop();
    this.refill();
    return path;
  }

  /** How many namespaces the pool holds now (tests). */
  get size(): number {
    return this.free.length;
  }

  /** Resolves once no batch is being made (tests). */
  async settled(): Promise<void> {
    await this.filling;
  }

  /**
   * Removes the files of the pool's directory that it does not hold (those a daemon that died left). Never
   * rejects: what cannot be removed is logged, and the next reconcile tries again.
   */
  async removeStale(): Promise<void> {
    for (const n of await namesIn(this.dir).catch(() => [])) {
      const path = join(this.dir, n);
      if (this.free.includes(path) || this.making.includes(path)) continue;
      await deleteNetns(path).catch((err: unknown) =>
        this.log.warn({ err, path }, "could not remove a network namespace made ahead: the next reconcile tries again"),
      );
    }
  }

  /** The daemon is going away: the pool makes no more, and every namespace in its directory is removed. */
  async close(): Promise<void> {
    this.closed = true;
    await this.filling;
    this.free = [];
    await this.removeStale();
    this.shell.close();
  }

  private refill(): void {
    if (this.filling || this.closed) return;
    const n = Math.min(NETNS_POOL_STEP, NETNS_POOL_MAX - this.free.length);
    if (n <= 0) return;
    this.making = Array.from({ length: n }, () => join(this.dir, this.newName()));
    this.filling = this.makeBatch(this.making)
      .then((made) => {
        if (!this.closed) this.free.push(...made);
        // Closed meanwhile: close() removes them with the rest of the directory.
      })
      .catch((err: unknown) =>
        this.log.warn({ err }, "could not make network namespaces ahead: creates make their own"),
      )
      .finally(() => {
        this.making = [];
        this.filling = undefined;
      });
  }

  /** New namespaces on `paths`, by one process for all; resolves to those made (the others are removed). */
  private async makeBatch(paths: string[]): Promise<string[]> {
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    for (const p of paths) await writeFile(p, "", { flag: "wx", mode: 0o444 });
    // At the lowest CPU priority: a batch is made while creates and starts run, and must not slow them.
    await this.shell.run(["nice", "-n", "19", "sh", "-c", NETNS_BATCH_SCRIPT, "sh", ...paths]);
    const made: string[] = [];
    for (const p of paths) {
      if ((await netnsState(p)) === "netns") made.push(p);
      else await deleteNetns(p).catch(() => undefined);
    }
    return made;
  }
}
