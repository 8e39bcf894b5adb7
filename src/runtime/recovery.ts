// A daemon's start and stop: the containers a previous daemon left in stateDir are loaded (their
// state.json parsed against its schema), what it left running is killed and reported exited, its
// endpoints released, and namespace files of containers that are not running are removed; at shutdown
// every running container is stopped.

import { mkdir, readdir, readFile, rm } from "node:fs/promises";
import { join } from "node:path";
import type { Logger } from "pino";
import { delay } from "./async.js";
import { Container, ContainerRecordSchema } from "./container.js";
import { nowRFC3339Nano } from "./jsonlog.js";
import { killQuietly } from "./launch.js";
import type { Lifecycle } from "./lifecycle.js";
import type { ContainerNetworks } from "./networks.js";
import { deleteNetns, isSameProcess, netnsState } from "./sandbox.js";
import type { ContainerTable } from "./table.js";

/** Namespace files of containers are named by 12 hex digits (the data plane's overlays are "1-..."). */
const CONTAINER_NETNS_RE = /^[0-9a-f]{12}$/;

async function namesIn(dir: string): Promise<string[]> {
  try {
    return await readdir(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return [];
    throw err;
  }
}

export class Recovery {
  private loaded = false;

  constructor(
    private readonly table: ContainerTable,
    private readonly networks: ContainerNetworks,
    private readonly lifecycle: Lifecycle,
    private readonly log: Logger,
  ) {}

  /**
   * Loads the containers in stateDir (once) and brings what a previous daemon left in line: a container
   * recorded as running whose daemon is gone is killed (its PID namespace with it) and reported exited;
   * its endpoints are detached. Namespace files of containers that are not running are removed.
   */
  async reconcile(): Promise<void> {
    if (!this.loaded) {
      this.loaded = true;
      await mkdir(this.table.stateDir, { recursive: true, mode: 0o700 });
      for (const entry of await readdir(this.table.stateDir)) {
        if (!/^[0-9a-f]{64}$/.test(entry) || this.table.has(entry)) continue;
        const c = await this.load(join(this.table.stateDir, entry));
        if (!c) continue;
        this.table.add(c);
        await this.adopt(c);
      }
    }
    await this.removeStaleNamespaces();
  }

  /** A container directory's record; undefined (logged) when state.json is missing or not a record. */
  private async load(dir: string): Promise<Container | undefined> {
    try {
      const parsed = ContainerRecordSchema.safeParse(JSON.parse(await readFile(join(dir, "state.json"), "utf8")));
      if (parsed.success) return new Container(parsed.data, dir);
      this.log.warn(
        { dir, issues: parsed.error.issues },
        "skipping a container directory whose state.json is not a container record",
      );
    } catch (err) {
      this.log.warn({ err, dir }, "skipping a container directory without a readable state.json");
    }
    return undefined;
  }

  private async removeStaleNamespaces(): Promise<void> {
    for (const n of await namesIn(this.networks.netnsDir)) {
      if (!CONTAINER_NETNS_RE.test(n)) continue;
      const owner = this.table.live().find((c) => c.id.startsWith(n));
      if (owner?.running) continue;
      const path = join(this.networks.netnsDir, n);
      this.log.info({ path }, "removing a network namespace left by a container that is not running");
      await deleteNetns(path).catch((err: unknown) =>
        this.log.warn({ err, path }, "could not remove a stale network namespace: the next reconcile tries again"),
      );
    }
  }

  /** A container found on disk: finish what its daemon could not. */
  private async adopt(c: Container): Promise<void> {
    const s = c.rec.state;
    if (s.status === "removing") {
      c.removed = true;
      await rm(c.dir, { recursive: true, force: true });
      this.table.delete(c.id);
      return;
    }
    if (s.status !== "running") return;
    let exitCode = 255;
    // Without its start time a pid may name someone else's process by now: never kill that.
    if (s.pidStart !== undefined && (await isSameProcess(s.pid, s.pidStart))) {
      this.log.info({ id: c.id, pid: s.pid }, "killing a container left running by a previous daemon");
      killQuietly(s.pid, 9);
      for (let i = 0; i < 100 && (await isSameProcess(s.pid, s.pidStart)); i++) await delay(20);
      exitCode = 137;
    }
    await this.networks.release(c, "its daemon's restart");
    c.rec.state = { ...s, status: "exited", pid: 0, exitCode, finishedAt: nowRFC3339Nano() };
    delete c.rec.state.pidStart;
    await this.table.persistHappened(c, "its daemon's restart");
    if (c.rec.autoRemove) await this.lifecycle.autoRemove(c);
  }

  /** Stops every running container (the daemon is going away), each with its stop timeout or `timeoutSecs`. */
  async shutdown(timeoutSecs?: number): Promise<void> {
    const running = this.table.live().filter((c) => c.running);
    await Promise.all(
      running.map((c) =>
        this.lifecycle
          .stop(c.id, timeoutSecs === undefined ? {} : { timeout: timeoutSecs })
          .catch((err: unknown) => this.log.warn({ err, id: c.id }, "could not stop a container at shutdown")),
      ),
    );
  }

  /** Namespace files under <execRoot>/netns that belong to containers (for tests and diagnostics). */
  async containerNetnsFiles(): Promise<string[]> {
    let names: string[];
    try {
      names = await readdir(this.networks.netnsDir);
    } catch {
      // No namespace directory yet: no container has had a namespace.
      return [];
    }
    const out: string[] = [];
    for (const n of names) {
      if (CONTAINER_NETNS_RE.test(n) && (await netnsState(join(this.networks.netnsDir, n))) !== "absent") out.push(n);
    }
    return out;
  }
}
