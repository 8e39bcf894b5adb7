// A container's life: create (its image resolved, its root file system prepared), start (networks, then
// its task in containerd), the exit (networks released, state saved, its restart policy or --rm), stop,
// kill, wait and remove. Operations on one container run one after another (Container.locked); a failed
// create or start leaves nothing behind.

import { mkdir, rm } from "node:fs/promises";
import { join } from "node:path";
import type { Logger } from "pino";
import { ApiError, badRequest, conflict } from "../api/errors.js";
import { delay, within } from "./async.js";
import {
  Container,
  errMessage,
  eventAttributes,
  newId,
  noSuchContainer,
  type Prepared,
  ZERO_TIME,
} from "./container.js";
import type { Mounts, TaskClient } from "./containerd/tasks.js";
import { type ContainerSpec, checkSpec, networkModeOf, newRecord } from "./create.js";
import type { EventLog } from "./events.js";
import { nowRFC3339Nano } from "./jsonlog.js";
import { type ExitInfo, LaunchError, type Launched, type Launcher } from "./launch.js";
import type { ContainerNetworks } from "./networks.js";
import { type EarlyRootfs, RootfsMaker, type RunImage } from "./rootfs.js";
import { parseSignal } from "./signals.js";
import type { ProcessUser } from "./spec.js";
import type { ContainerTable } from "./table.js";
import type { PendingWait, WaitCondition, WaitResponse } from "./types.js";

/** How long a stop waits after SIGKILL before it gives up. */
const KILL_WAIT_MS = 30_000;
/** Restart policy back-off: 100 ms, doubling, at most a minute (docker's). */
const RESTART_FIRST_MS = 100;
const RESTART_MAX_MS = 60_000;
/**
 * How long a task made ahead of a container's first start waits for it before it is deleted (`docker create`
 * without a start soon after: a shim and a waiting process each, for nothing), and how many there may be at once.
 */
const AHEAD_TTL_MS = 10_000;
const AHEAD_MAX = 8;

export interface LifecycleDeps {
  table: ContainerTable;
  networks: ContainerNetworks;
  launcher: Launcher;
  tasks: TaskClient;
  /** The image a container is created from (404 "No such image" when it is not here). */
  imageForRun(ref: string): Promise<RunImage>;
  /** The user a container's process runs as. */
  userOf(c: Container): Promise<ProcessUser>;
  /** Called when a container is removed (its exec instances go with it). */
  onRemoved(c: Container): void;
  /** How long a task made ahead waits for its start (default AHEAD_TTL_MS). */
  aheadTtlMs?: number;
  /** Where `docker events` hears of creates, starts, exits, kills, stops and removals. */
  events: EventLog;
  log: Logger;
}

export class Lifecycle {
  private readonly table: ContainerTable;
  private readonly log: Logger;
  private closed = false;
  /** Tasks being made, or made, ahead of a first start and not taken yet. */
  private aheadCount = 0;
  private readonly rootfs: RootfsMaker;

  constructor(private readonly d: LifecycleDeps) {
    this.table = d.table;
    this.log = d.log;
    this.rootfs = new RootfsMaker(d.tasks, d.log);
  }

  /** The daemon is going away: no restart policy starts anything any more. */
  close(): void {
    this.closed = true;
  }

  async create(spec: ContainerSpec): Promise<string> {
    // The id first: what needs only it is begun before the image lookup (the network namespace, the
    // directory), and the task of the first start as soon as the record is made (makeAhead).
    const id = newId();
    const dir = join(this.table.stateDir, id);
    const netns = networkModeOf(spec) === "host" ? undefined : this.d.networks.prepare(id);
    const dirMade = mkdir(dir, { recursive: true, mode: 0o700 }).then(() => undefined);
    dirMade.catch(() => undefined);
    // The root file system, on the snapshot the image had last time, while the image is looked up (the
    // lookup decides: another snapshot, and this one is removed and made again).
    const early = this.rootfs.early(id, spec.image);
    let c: Container;
    let image: RunImage;
    try {
      image = await this.d.imageForRun(spec.image);
      const name = checkSpec(spec, (n) => this.table.byName(n));
      c = new Container(newRecord(spec, name, image, id), dir);
    } catch (err) {
      await this.undoEarly(id, dir, netns, dirMade, early);
      throw err;
    }
    c.netnsAhead = netns;
    // The name is taken from here on (before any await), so two creates cannot both get it.
    this.table.add(c);
    // The root file system and state.json at once: a failure of either undoes both.
    const rootfs = this.rootfs.prepare(c.id, image, early);
    const saved = dirMade.then(() => this.table.persist(c));
    const made = Promise.allSettled([rootfs, saved]).then((rs) => {
      for (const r of rs) if (r.status === "rejected") throw r.reason;
    });
    this.makeAhead(c, { dirMade, saved, made, rootfs });
    try {
      await made;
    } catch (err) {
      this.table.delete(c.id);
      await this.dropAhead(c, "a failed create");
      await this.undoCreate(c);
      throw err;
    }
    const rec = c.rec;
    this.log.info({ id: c.id, name: rec.name, image: image.name, cmd: [rec.path, ...rec.args] }, "container created");
    this.d.events.emit("container", "create", c.id, eventAttributes(c));
    return c.id;
  }

  /**
   * What a create that failed before its container existed had begun: its namespace, root file system and
   * directory, removed.
   */
  private async undoEarly(
    id: string,
    dir: string,
    netns: Promise<boolean> | undefined,
    dirMade: Promise<void>,
    early: EarlyRootfs | undefined,
  ) {
    if (netns) await this.d.networks.dropPrepared(id, netns);
    if (early) await this.rootfs.drop(id, early);
    await dirMade.catch(() => undefined);
    await rm(dir, { recursive: true, force: true }).catch((err: unknown) =>
      this.log.warn(
        { err, dir },
        "could not remove the directory of a failed create (without state.json, skipped at restart)",
      ),
    );
  }

  private async undoCreate(c: Container): Promise<void> {
    await this.d.networks.release(c, "a failed create");
    try {
      await this.d.tasks.removeRootfs(c.id);
      await rm(c.dir, { recursive: true, force: true });
    } catch (err) {
      this.log.warn(
        { err, id: c.id, dir: c.dir },
        "could not undo a failed create: its directory (without state.json, skipped at restart) or snapshot stays",
      );
    }
  }

  /**
   * Starts making the task of a new container in the background, while its create makes the rest:
   * containerd's task create (the shim, runc's init process) is most of a start, and the client's start
   * request comes a few ms after the create's answer (`docker run`); the start then only starts the task.
   * The FIFOs are opened and the bind mounts' sources (resolv.conf, hosts, hostname) written once the
   * directory is there, containerd's container made once the record is saved (`saved`: never a containerd
   * container without its record; while the root file system is being prepared, which containerd's
   * container does not need), and the task once the root file system and the network namespace are there
   * too. A task that could not be made is made by the start; one no start took in AHEAD_TTL_MS is deleted.
   */
  private makeAhead(
    c: Container,
    created: {
      dirMade: Promise<void>;
      saved: Promise<void>;
      made: Promise<void>;
      rootfs: Promise<Mounts> | undefined;
    },
  ): void {
    if (this.closed || this.aheadCount >= AHEAD_MAX) return;
    this.aheadCount++;
    const netnsAhead = c.netnsAhead;
    c.taskAhead = (async () => {
      await created.dirMade;
      let netnsPath: string | null = null;
      let ready: Promise<unknown> | undefined;
      if (!c.hostNetwork) {
        const path = this.d.networks.netnsPathOf(c.id);
        netnsPath = path;
        const netnsMade = (netnsAhead ?? Promise.resolve(false)).then((ok) => {
          if (!ok) throw new Error(`no network namespace was made ahead on ${path}`);
        });
        // Written again by the start (setUp) after its endpoints are attached, if that changes them; written
        // as ahead only while no start has taken this task (else that start writes them itself).
        const files = c.taskAhead !== undefined ? this.d.networks.writeFilesAhead(c) : this.d.networks.writeFiles(c);
        ready = Promise.all([netnsMade, files]);
      }
      // A named user is looked up in the root file system (none is root's: not waited for).
      const user = (c.rec.config.User === "" ? Promise.resolve() : created.made).then(() => this.d.userOf(c));
      // Read by prepare at their steps: one a failed earlier step leaves unread is not an unhandled rejection.
      user.catch(() => undefined);
      ready?.catch(() => undefined);
      return await this.d.launcher.prepare(c, {
        netnsPath,
        user,
        waits: { container: created.saved, mounts: created.rootfs, task: ready },
      });
    })().catch((err: unknown) => {
      this.log.debug({ err, id: c.id }, "could not make a container's task ahead: its start makes it");
      return undefined;
    });
    c.taskAheadTimer = setTimeout(() => {
      void c.locked(() => this.dropAhead(c, "no start came"));
    }, this.d.aheadTtlMs ?? AHEAD_TTL_MS);
    c.taskAheadTimer.unref();
  }

  /** The task made ahead, taken (it is the caller's to start or delete); undefined when none was made. */
  private async takeAhead(c: Container): Promise<Prepared | undefined> {
    const ahead = c.taskAhead;
    if (ahead === undefined) return undefined;
    c.taskAhead = undefined;
    clearTimeout(c.taskAheadTimer);
    c.taskAheadTimer = undefined;
    try {
      return await ahead;
    } finally {
      this.aheadCount--;
    }
  }

  /** Deletes the task made ahead of the container's first start, if there is one (never rejects). */
  async dropAhead(c: Container, after: string): Promise<void> {
    const p = await this.takeAhead(c);
    if (!p) return;
    await this.discardQuietly(c, p, after);
    this.log.debug({ id: c.id }, `deleted the task made ahead of a start after ${after}`);
  }

  private async discardQuietly(c: Container, p: Prepared, after: string): Promise<void> {
    await this.d.launcher
      .discard(c, p)
      .catch((err: unknown) =>
        this.log.warn(
          { err, id: c.id },
          `could not delete the task made ahead of a start after ${after}: the next start (or daemon start) deletes it`,
        ),
      );
  }

  /** Starts a container by hand; false if it was running already. */
  async start(ref: string): Promise<boolean> {
    const c = this.table.find(ref);
    return c.locked(async () => {
      if (c.removed) throw noSuchContainer(ref);
      if (c.paused) throw conflict("cannot start a paused container, try unpause instead");
      if (c.running) return false;
      if (c.rec.state.status === "removing") {
        throw conflict(`container ${c.id} is marked for removal and cannot be started`);
      }
      c.rec.restartCount = 0;
      c.rec.stoppedByUser = false;
      c.restarting = false;
      await this.startLocked(c);
      return true;
    });
  }

  async startLocked(c: Container): Promise<void> {
    const rec = c.rec;
    let launched: Launched;
    // The task made ahead is waited for while the networks are set up (in the namespace it was made in).
    const taking = this.takeAhead(c);
    let ahead: Prepared | undefined;
    let startedAt = "";
    let early: { pid: number; saved: Promise<boolean> } | undefined;
    // The record saved as running while containerd starts the task (an fsync off the start's path), with
    // its endpoints and pid: a daemon that dies from here on finds it running, and adopts the task, or
    // reports it exited (255) when containerd has it only created or not at all (recovery.ts).
    const starting = (pid: number): void => {
      startedAt = nowRFC3339Nano();
      const state = { status: "running" as const, pid, exitCode: 0, error: "", startedAt, finishedAt: ZERO_TIME };
      const saved = this.table.persist(c, { ...rec, state }).then(
        () => true,
        () => false,
      );
      early = { pid, saved };
    };
    try {
      let user: ProcessUser;
      let netnsPath: string | null;
      try {
        user = await this.d.userOf(c);
        // setUp undoes itself on failure; a user that could not be found leaves nothing to undo.
        netnsPath = await this.d.networks.setUp(c);
      } finally {
        ahead = await taking;
      }
      // The launcher starts the task made ahead, or deletes it (another spec) or it is deleted by its failure.
      const given = ahead;
      ahead = undefined;
      try {
        launched = await this.d.launcher.launch(c, netnsPath, user, given, starting);
      } catch (err) {
        await this.d.networks.release(c, "a failed start");
        throw err;
      }
    } catch (err) {
      if (ahead) await this.discardQuietly(c, ahead, "a failed start");
      const apiErr = err instanceof ApiError ? err : new ApiError(500, errMessage(err));
      rec.state.error = apiErr.message;
      rec.state.exitCode = err instanceof LaunchError ? err.exitCode : 128;
      // After the record saved as running, if there is one: the last write is this one.
      await early?.saved;
      await this.table.persistHappened(c, "a failed start");
      throw apiErr;
    }
    this.running(c, launched, startedAt || nowRFC3339Nano());
    const savedEarly = early !== undefined && early.pid === launched.running.initPid && (await early.saved);
    if (!savedEarly) await this.table.persistHappened(c, "its start");
    this.log.info({ id: rec.id, name: rec.name, pid: launched.running.initPid }, "container started");
    this.d.events.emit("container", "start", c.id, eventAttributes(c));
  }

  /** The container runs `launched` (started now, or found running by a new daemon): follow its exit. */
  running(c: Container, launched: Launched, startedAt: string): void {
    c.proc = launched.running;
    c.rec.state = {
      status: "running",
      pid: launched.running.initPid,
      exitCode: 0,
      error: "",
      startedAt,
      finishedAt: ZERO_TIME,
    };
    // `exited` never rejects: it reports how the process ended.
    void launched.exited.then((info) => this.handleExit(c, info, launched.resolveHandled));
  }

  private async handleExit(c: Container, info: ExitInfo, resolveHandled: () => void): Promise<void> {
    let restart = false;
    try {
      await c.locked(async () => {
        c.proc = undefined;
        await this.d.networks.release(c, "its exit");
        const finishedAt = nowRFC3339Nano();
        c.rec.state = { ...c.rec.state, status: "exited", pid: 0, exitCode: info.code, finishedAt, paused: false };
        // Decided here, with the exit: inspect says "restarting" (and the count) until it runs again.
        restart = !c.rec.autoRemove && this.restarts(c, info.code);
        if (restart) {
          c.restarting = true;
          c.rec.restartCount++;
        }
        await this.table.persistHappened(c, "its exit");
        this.log.info({ id: c.id, name: c.rec.name, exitCode: info.code }, "container exited");
        this.d.events.emit("container", "die", c.id, eventAttributes(c, { exitCode: String(info.code) }));
      });
    } finally {
      resolveHandled();
      for (const l of [...c.exitListeners]) l(info.code);
    }
    if (c.rec.autoRemove && !c.removed) await this.autoRemove(c);
    else if (restart) void this.restartLater(c);
  }

  /** Whether the container's restart policy starts it again after it exited with `code`. */
  restarts(c: Container, code: number): boolean {
    if (this.closed || c.removed || c.rec.stoppedByUser) return false;
    const p = c.rec.hostConfig.restartPolicy;
    switch (p.name) {
      case "always":
      case "unless-stopped":
        return true;
      case "on-failure":
        return code !== 0 && (p.maximumRetryCount === 0 || c.rec.restartCount < p.maximumRetryCount);
      case "no":
        return false;
    }
  }

  /** Starts a container again after docker's back-off (100 ms doubling with each restart, at most a minute). */
  private async restartLater(c: Container): Promise<void> {
    const waitMs = Math.min(RESTART_FIRST_MS * 2 ** Math.min(c.rec.restartCount - 1, 20), RESTART_MAX_MS);
    await delay(waitMs);
    await c
      .locked(async () => {
        const still = c.restarting && !c.running && !c.removed && !this.closed && !c.rec.stoppedByUser;
        if (!still) {
          c.restarting = false;
          return;
        }
        this.log.info(
          { id: c.id, name: c.rec.name, restartCount: c.rec.restartCount },
          "restarting a container (its restart policy)",
        );
        try {
          await this.startLocked(c);
        } finally {
          c.restarting = false;
        }
      })
      .catch((err: unknown) => {
        this.log.warn({ err, id: c.id }, "a restart by the restart policy failed: trying again later");
        if (this.restarts(c, 1)) {
          c.restarting = true;
          c.rec.restartCount++;
          void this.restartLater(c);
        }
      });
  }

  /** --rm: the container goes once it has exited; a failure is logged (the user can `rm` it). */
  async autoRemove(c: Container): Promise<void> {
    await this.remove(c.id, { force: true }).catch((err: unknown) =>
      this.log.warn({ err, id: c.id }, "could not remove an auto-remove container: it stays listed as exited"),
    );
  }

  /** SIGTERM (or the container's stop signal), then SIGKILL after the timeout; false if it was not running. */
  async stop(ref: string, opts: { timeout?: number; signal?: string }, byUser = true): Promise<boolean> {
    const c = this.table.find(ref);
    // unless-stopped brings back what the daemon stopped, not what a user did.
    if (byUser) c.rec.stoppedByUser = true;
    c.restarting = false;
    const proc = c.proc;
    if (!c.running || !proc) return false;
    const sigName = opts.signal || c.rec.config.StopSignal || "SIGTERM";
    const sig = parseSignal(sigName);
    if (sig === undefined) throw badRequest(`Invalid signal: ${sigName}`);
    const timeout = opts.timeout ?? c.rec.config.StopTimeout ?? 10;
    await this.signal(c, sig);
    await this.thawAfter(c, sig);
    if (timeout < 0) {
      await proc.handled;
      return true;
    }
    if (await within(proc.handled, timeout * 1000)) return true;
    this.log.info({ id: c.id, timeout }, "container did not stop in time: killing it");
    await this.signal(c, 9);
    await this.thawAfter(c, 9);
    if (!(await within(proc.handled, KILL_WAIT_MS))) {
      throw new ApiError(500, `cannot stop container: ${ref}: the container's processes did not exit after SIGKILL`);
    }
    return true;
  }

  /** Nothing of a container may stay behind: a namespace left by a crash, its task, its root file system, its files. */
  private async removeLocked(c: Container): Promise<void> {
    c.rec.state.status = "removing";
    c.removed = true;
    await this.dropAhead(c, "its removal");
    await this.d.networks.release(c, "its removal");
    await this.d.tasks.cleanup(c.id);
    await this.d.tasks.removeRootfs(c.id);
    await rm(c.dir, { recursive: true, force: true });
    this.table.delete(c.id);
    this.d.onRemoved(c);
    this.log.info({ id: c.id, name: c.rec.name }, "container removed");
    this.d.events.emit("container", "destroy", c.id, eventAttributes(c));
  }

  /** SIGKILL and the exit handled; nothing when it does not run. */
  private async killAndWait(c: Container): Promise<void> {
    const proc = c.proc;
    if (!c.running || !proc) return;
    await this.signal(c, 9);
    await this.thawAfter(c, 9);
    if (!(await within(proc.handled, KILL_WAIT_MS))) {
      throw new ApiError(500, `could not kill container ${c.id}: its processes did not exit after SIGKILL`);
    }
  }

  /** Signals the container's init process; a process that is already gone is not an error. */
  private async signal(c: Container, sig: number): Promise<void> {
    await this.d.launcher.signal(c, sig).then(
      () => this.killed(c, sig),
      (err: unknown) =>
        this.log.debug({ err, id: c.id, sig }, "signal not delivered: the container's process has exited"),
    );
  }

  /** A signal was sent (docker kill, stop, rm -f): dockerd's "kill" event. */
  private killed(c: Container, sig: number): void {
    this.d.events.emit("container", "kill", c.id, eventAttributes(c, { signal: String(sig) }));
  }

  async kill(ref: string, signal: string): Promise<void> {
    const c = this.table.find(ref);
    const sig = parseSignal(signal || "SIGKILL");
    if (sig === undefined) throw badRequest(`Invalid signal: ${signal}`);
    const proc = c.proc;
    if (!c.running || !proc) throw conflict(`cannot kill container: ${ref}: container ${c.id} is not running`);
    await this.d.launcher.signal(c, sig);
    this.killed(c, sig);
    await this.thawAfter(c, sig);
    if (sig === 9) await within(proc.handled, KILL_WAIT_MS);
  }

  /**
   * As dockerd: a paused container that was sent SIGKILL or its stop signal is thawed, so that the signal
   * (pending while it is frozen) is delivered and it exits; other signals wait for an unpause.
   */
  private async thawAfter(c: Container, sig: number): Promise<void> {
    if (!c.paused) return;
    if (sig !== 9 && sig !== parseSignal(c.rec.config.StopSignal || "SIGTERM")) return;
    try {
      await this.d.tasks.resume(c.id);
      c.rec.state.paused = false;
      await this.table.persistHappened(c, "its unpause");
    } catch (err) {
      // runc thaws a container itself to deliver SIGKILL: it may have exited already.
      const now = await this.d.tasks.state(c.id).catch(() => undefined);
      if (now?.state === "running") {
        this.log.warn({ err, id: c.id }, "could not unpause a container to deliver its stop signal");
      }
    }
  }

  async wait(ref: string, condition: WaitCondition): Promise<PendingWait> {
    const c = this.table.find(ref);
    if (condition === "not-running" && !c.running) {
      return { result: Promise.resolve({ StatusCode: c.rec.state.exitCode }), cancel: () => undefined };
    }
    const set = condition === "removed" ? c.removeListeners : c.exitListeners;
    let listener: ((code: number) => void) | undefined;
    const forget = (): void => {
      c.exitListeners.delete(listener!);
      c.removeListeners.delete(listener!);
    };
    const result = new Promise<WaitResponse>((resolve) => {
      listener = (code) => {
        forget();
        resolve({ StatusCode: code });
      };
      set.add(listener);
      // A removed container exits no more: exit waiters end with it too.
      if (condition !== "removed") c.removeListeners.add(listener);
    });
    return { result, cancel: forget };
  }

  async remove(ref: string, opts: { force: boolean }): Promise<void> {
    const c = this.table.find(ref);
    const notStopped = (): ApiError =>
      conflict(
        `cannot remove container "/${c.rec.name}": container is running: stop the container before removing or force remove`,
      );
    if (opts.force) {
      // No restart policy brings it back while it goes.
      c.rec.stoppedByUser = true;
      c.restarting = false;
    }
    // A restart that was under way when the kill came may have started it again: kill again (three times at most).
    for (let attempt = 0; ; attempt++) {
      if (opts.force) await this.killAndWait(c);
      else if (c.running) throw notStopped();
      const removed = await c.locked(async () => {
        if (c.removed) throw noSuchContainer(ref);
        if (c.running) {
          if (opts.force && attempt < 3) return false;
          throw notStopped();
        }
        await this.removeLocked(c);
        return true;
      });
      if (removed) break;
    }
    for (const l of [...c.removeListeners]) l(c.rec.state.exitCode);
  }
}
