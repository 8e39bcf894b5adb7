// A daemon's start: the containers a previous daemon left in stateDir are loaded (their state.json parsed
// against its schema) and brought in line with what containerd says. A task that still runs is adopted
// (its output and exit followed again, its endpoints kept: the node's networking takes them over from
// ContainerRuntime.runningEndpoints); one that ended while no daemon watched is
// reported exited and its endpoints released; containers whose restart policy says so are started again
// (after a containerd or host restart); namespace files of containers that are not running are removed.

import { existsSync } from "node:fs";
import { mkdir, readdir, readFile, rm } from "node:fs/promises";
import { join } from "node:path";
import type { Logger } from "pino";
import { Container, ContainerRecordSchema, ZERO_TIME } from "./container.js";
import type { TaskClient, TaskState } from "./containerd/tasks.js";
import { nowRFC3339Nano } from "./jsonlog.js";
import type { Launcher } from "./launch.js";
import type { Lifecycle } from "./lifecycle.js";
import type { ContainerNetworks } from "./networks.js";
import { deleteNetns, namesIn, netnsState } from "./sandbox.js";
import type { ContainerTable } from "./table.js";

/** Namespace files of containers are named by 12 hex digits (the data plane's overlays are "1-..."). */
const CONTAINER_NETNS_RE = /^[0-9a-f]{12}$/;
/** A container's id: its directory in stateDir, its containerd container, its root file system's snapshot. */
const CONTAINER_ID_RE = /^[0-9a-f]{64}$/;

/** Whether a container holds endpoints on networks now. */
export function hasEndpoints(c: Container): boolean {
  return c.rec.networks.some((n) => n.endpoint !== null);
}

export interface RecoveryDeps {
  table: ContainerTable;
  networks: ContainerNetworks;
  lifecycle: Lifecycle;
  launcher: Launcher;
  tasks: TaskClient;
  /** Whether containerd is this daemon's alone: only then are its containers without a record ours to remove. */
  ownsContainerd: boolean;
  log: Logger;
}

export class Recovery {
  private loaded = false;
  private readonly table: ContainerTable;
  private readonly log: Logger;

  constructor(private readonly d: RecoveryDeps) {
    this.table = d.table;
    this.log = d.log;
  }

  /** Loads the containers in stateDir (once) and brings them in line with containerd (see the top). */
  async reconcile(): Promise<void> {
    if (!this.loaded) {
      this.loaded = true;
      await mkdir(this.table.stateDir, { recursive: true, mode: 0o700 });
      for (const entry of await readdir(this.table.stateDir)) {
        if (!CONTAINER_ID_RE.test(entry) || this.table.has(entry)) continue;
        const c = await this.load(join(this.table.stateDir, entry));
        if (!c) continue;
        this.table.add(c);
        await this.adopt(c);
      }
      if (this.d.ownsContainerd) await this.removeUnrecorded();
    }
    await this.removeStaleNamespaces();
    // Those made ahead by a daemon that died (this one's pool holds its own).
    await this.d.networks.pool.removeStale();
  }

  /**
   * Containers and root file systems containerd keeps that no record names, when containerd is this daemon's
   * alone (managed): a daemon that died between creating one and saving it. Killed and removed with their root
   * file systems (a directory with a record that could not be read is left as it is, with its container).
   */
  private async removeUnrecorded(): Promise<void> {
    for (const id of await this.d.tasks.containerIds()) {
      if (this.recorded(id)) continue;
      this.log.info(
        { id },
        "removing a container containerd keeps that no record names (its daemon stopped before saving it)",
      );
      try {
        if ((await this.d.tasks.state(id)).state === "running") {
          await this.d.tasks.kill(id, 9);
          await this.d.tasks.wait(id);
        }
        await this.d.tasks.cleanup(id);
        await this.d.tasks.removeRootfs(id);
        await rm(join(this.table.stateDir, id), { recursive: true, force: true });
      } catch (err) {
        this.log.warn({ err, id }, "could not remove a container no record names: the next start tries again");
      }
    }
    // Root file systems no record names: a daemon that died after a create prepared one (rootfs.ts begins it
    // before the image lookup) and before its record was saved. containerd never collects them (gc.root).
    for (const id of await this.d.tasks.rootfsIds()) {
      if (!CONTAINER_ID_RE.test(id) || this.recorded(id)) continue;
      this.log.info(
        { id },
        "removing a root file system no container record names (its daemon stopped before saving it)",
      );
      await this.d.tasks
        .removeRootfs(id)
        .catch((err: unknown) =>
          this.log.warn({ err, id }, "could not remove a root file system no record names: the next start tries again"),
        );
    }
  }

  /** Whether a record names container `id`: loaded, or a state.json there that could not be read. */
  private recorded(id: string): boolean {
    return this.table.has(id) || existsSync(join(this.table.stateDir, id, "state.json"));
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
    for (const n of await namesIn(this.d.networks.netnsDir)) {
      if (!CONTAINER_NETNS_RE.test(n)) continue;
      const owner = this.table.live().find((c) => c.id.startsWith(n));
      // A running container's, or one made ahead for a container's first start.
      if (owner?.running || owner?.netnsAhead) continue;
      const path = join(this.d.networks.netnsDir, n);
      this.log.info({ path }, "removing a network namespace left by a container that is not running");
      await deleteNetns(path).catch((err: unknown) =>
        this.log.warn({ err, path }, "could not remove a stale network namespace: the next reconcile tries again"),
      );
    }
  }

  /** A container found on disk: adopt it, or finish what its daemon could not. */
  private async adopt(c: Container): Promise<void> {
    if (c.rec.state.status === "removing") {
      c.removed = true;
      await this.d.tasks.cleanup(c.id);
      await this.d.tasks.removeRootfs(c.id);
      await rm(c.dir, { recursive: true, force: true });
      this.table.delete(c.id);
      return;
    }
    if (c.rec.state.status === "created") {
      // A task made ahead of a first start that its daemon did not see (lifecycle.ts makeAhead): deleted,
      // the start makes it again.
      await this.d.tasks
        .cleanup(c.id)
        .catch((err: unknown) =>
          this.log.warn({ err, id: c.id }, "could not delete a task made ahead of a start: the start deletes it"),
        );
    }
    const wasRunning = c.rec.state.status === "running";
    if (wasRunning) {
      let task = await this.d.tasks.state(c.id);
      if (task.state === "running" && (!hasEndpoints(c) || this.d.networks.adoptable(c))) {
        this.log.info({ id: c.id, name: c.rec.name, pid: task.pid }, "adopting a running container");
        this.d.lifecycle.running(c, await this.d.launcher.reattach(c, task.pid), c.rec.state.startedAt);
        return;
      }
      if (task.state === "running") task = await this.stopUnadoptable(c);
      // Ended while no daemon watched: its code if containerd kept it, else 255 (as docker reports it).
      const code = task.state === "stopped" ? task.code : 255;
      await this.d.tasks.cleanup(c.id);
      await this.d.networks.release(c, "its daemon's restart");
      c.rec.state = { ...c.rec.state, status: "exited", pid: 0, exitCode: code, finishedAt: nowRFC3339Nano() };
      await this.table.persistHappened(c, "its daemon's restart");
      if (c.rec.autoRemove) {
        await this.d.lifecycle.autoRemove(c);
        return;
      }
    }
    if (this.restartsAtBoot(c)) {
      await c
        .locked(() => this.d.lifecycle.startLocked(c))
        .catch((err: unknown) =>
          this.log.warn({ err, id: c.id }, "could not start a container its restart policy brings back"),
        );
    }
  }

  /**
   * A running container on networks the node's networking cannot take over (a record without the
   * endpoints' wiring, or endpoints of another node id): stopped (SIGKILL), so its endpoints are released and nothing is left half-wired;
   * its restart policy may start it again, on fresh endpoints.
   */
  private async stopUnadoptable(c: Container): Promise<TaskState> {
    this.log.info(
      { id: c.id, name: c.rec.name },
      "stopping a container a previous daemon left on networks: its endpoints are not taken over",
    );
    await this.d.tasks.kill(c.id, 9).catch((err: unknown) => this.log.debug({ err, id: c.id }, "the task had exited"));
    try {
      return { state: "stopped", code: (await this.d.tasks.wait(c.id)).code };
    } catch (err) {
      this.log.debug({ err, id: c.id }, "no exit status for a stopped task: reported as killed");
      return { state: "stopped", code: 137 };
    }
  }

  /**
   * docker's rule at daemon start, for a container that has run before (one only created stays so):
   * always; unless-stopped if not stopped by hand; on-failure if it ended with a failure (an end no daemon
   * saw counts as one) and has retries left, and was not stopped by hand.
   */
  private restartsAtBoot(c: Container): boolean {
    if (c.rec.state.startedAt === ZERO_TIME) return false;
    const p = c.rec.hostConfig.restartPolicy;
    if (p.name === "always") return true;
    if (p.name === "unless-stopped") return !c.rec.stoppedByUser;
    if (p.name !== "on-failure" || c.rec.stoppedByUser || c.rec.state.exitCode === 0) return false;
    return p.maximumRetryCount === 0 || c.rec.restartCount < p.maximumRetryCount;
  }

  /** Namespace files under <execRoot>/netns that belong to containers (for tests and diagnostics). */
  async containerNetnsFiles(): Promise<string[]> {
    const out: string[] = [];
    for (const n of await namesIn(this.d.networks.netnsDir)) {
      if (!CONTAINER_NETNS_RE.test(n)) continue;
      if ((await netnsState(join(this.d.networks.netnsDir, n))) !== "absent") out.push(n);
    }
    return out;
  }
}
