// A container's life: create, start (networks, then the process), the exit (networks released, state
// saved, auto-remove), stop, kill, wait and remove. Operations on one container run one after another
// (Container.locked); a failed start leaves no endpoint, namespace or process behind.

import { mkdir, rm } from "node:fs/promises";
import { join } from "node:path";
import type { Logger } from "pino";
import { ApiError, badRequest, conflict } from "../api/errors.js";
import { within } from "./async.js";
import { Container, errMessage, noSuchContainer, ZERO_TIME } from "./container.js";
import { type ContainerSpec, checkSpec, newRecord } from "./create.js";
import { nowRFC3339Nano } from "./jsonlog.js";
import { type ExitInfo, LaunchError, type Launcher, signalContainer } from "./launch.js";
import type { ContainerNetworks } from "./networks.js";
import { processStartTime } from "./sandbox.js";
import { parseSignal } from "./signals.js";
import type { ContainerTable } from "./table.js";
import type { PendingWait, WaitCondition, WaitResponse } from "./types.js";

/** How long a stop waits after SIGKILL before it gives up. */
const KILL_WAIT_MS = 30_000;

export class Lifecycle {
  constructor(
    private readonly table: ContainerTable,
    private readonly networks: ContainerNetworks,
    private readonly launcher: Launcher,
    /** Called when a container is removed (its exec instances go with it). */
    private readonly onRemoved: (c: Container) => void,
    private readonly log: Logger,
  ) {}

  async create(spec: ContainerSpec): Promise<string> {
    const { argv, name } = checkSpec(spec, (n) => this.table.byName(n));
    const rec = newRecord(spec, name, argv);
    const c = new Container(rec, join(this.table.stateDir, rec.id));
    // The name is taken from here on (before any await), so two creates cannot both get it.
    this.table.add(c);
    try {
      await mkdir(c.dir, { recursive: true, mode: 0o700 });
      await this.table.persist(c);
    } catch (err) {
      this.table.delete(c.id);
      await rm(c.dir, { recursive: true, force: true }).catch((e: unknown) =>
        this.log.warn(
          { err: e, dir: c.dir },
          "could not remove the directory of a container whose create failed: reconcile skips it (no state.json)",
        ),
      );
      throw err;
    }
    this.log.info({ id: c.id, name, cmd: argv }, "container created");
    return c.id;
  }

  /** Starts a container; false if it was running already. */
  async start(ref: string): Promise<boolean> {
    const c = this.table.find(ref);
    return c.locked(async () => {
      if (c.removed) throw noSuchContainer(ref);
      if (c.running) return false;
      if (c.rec.state.status === "removing") {
        throw conflict(`container ${c.id} is marked for removal and cannot be started`);
      }
      await this.startLocked(c);
      return true;
    });
  }

  private async startLocked(c: Container): Promise<void> {
    const rec = c.rec;
    let launched: Awaited<ReturnType<Launcher["launch"]>>;
    try {
      const netnsPath = await this.networks.setUp(c);
      try {
        launched = await this.launcher.launch(c, netnsPath);
      } catch (err) {
        await this.networks.release(c, "a failed start");
        throw err;
      }
    } catch (err) {
      const apiErr = err instanceof ApiError ? err : new ApiError(500, errMessage(err));
      rec.state.error = apiErr.message;
      rec.state.exitCode = err instanceof LaunchError ? err.exitCode : 128;
      await this.table.persistHappened(c, "a failed start");
      throw apiErr;
    }
    c.proc = launched.running;
    const initPid = launched.running.initPid;
    rec.state = {
      status: "running",
      pid: initPid,
      exitCode: 0,
      error: "",
      startedAt: nowRFC3339Nano(),
      finishedAt: ZERO_TIME,
    };
    const pidStart = await processStartTime(initPid);
    if (pidStart !== undefined) rec.state.pidStart = pidStart;
    await this.table.persistHappened(c, "its start");
    // `exited` never rejects: it reports how the process ended.
    void launched.exited.then((info) => this.handleExit(c, info, launched.resolveHandled));
    this.log.info({ id: rec.id, name: rec.name, pid: initPid }, "container started");
  }

  private async handleExit(c: Container, info: ExitInfo, resolveHandled: () => void): Promise<void> {
    try {
      await c.locked(async () => {
        c.proc = undefined;
        await this.networks.release(c, "its exit");
        c.rec.state = { ...c.rec.state, status: "exited", pid: 0, exitCode: info.code, finishedAt: nowRFC3339Nano() };
        delete c.rec.state.pidStart;
        await this.table.persistHappened(c, "its exit");
        this.log.info({ id: c.id, name: c.rec.name, exitCode: info.code }, "container exited");
      });
    } finally {
      resolveHandled();
      for (const l of [...c.exitListeners]) l(info.code);
    }
    if (c.rec.autoRemove && !c.removed) await this.autoRemove(c);
  }

  /** --rm: the container goes once it has exited; a failure is logged (the user can `rm` it). */
  async autoRemove(c: Container): Promise<void> {
    await this.remove(c.id, { force: true }).catch((err: unknown) =>
      this.log.warn({ err, id: c.id }, "could not remove an auto-remove container: it stays listed as exited"),
    );
  }

  /** SIGTERM (or the container's stop signal), then SIGKILL after the timeout; false if it was not running. */
  async stop(ref: string, opts: { timeout?: number; signal?: string }): Promise<boolean> {
    const c = this.table.find(ref);
    const proc = c.proc;
    if (!c.running || !proc) return false;
    const sigName = opts.signal || c.rec.config.StopSignal || "SIGTERM";
    const sig = parseSignal(sigName);
    if (sig === undefined) throw badRequest(`Invalid signal: ${sigName}`);
    const timeout = opts.timeout ?? c.rec.config.StopTimeout ?? 10;
    signalContainer(proc, sig);
    if (timeout < 0) {
      await proc.handled;
      return true;
    }
    if (await within(proc.handled, timeout * 1000)) return true;
    this.log.info({ id: c.id, timeout }, "container did not stop in time: killing it");
    signalContainer(proc, 9);
    if (!(await within(proc.handled, KILL_WAIT_MS))) {
      throw new ApiError(500, `cannot stop container: ${ref}: the container's processes did not exit after SIGKILL`);
    }
    return true;
  }

  async kill(ref: string, signal: string): Promise<void> {
    const c = this.table.find(ref);
    const sig = parseSignal(signal || "SIGKILL");
    if (sig === undefined) throw badRequest(`Invalid signal: ${signal}`);
    const proc = c.proc;
    if (!c.running || !proc) throw conflict(`cannot kill container: ${ref}: container ${c.id} is not running`);
    signalContainer(proc, sig);
    if (sig === 9) await within(proc.handled, KILL_WAIT_MS);
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
    if (c.running) {
      if (!opts.force) throw notStopped();
      const proc = c.proc;
      if (proc) {
        signalContainer(proc, 9);
        if (!(await within(proc.handled, KILL_WAIT_MS))) {
          throw new ApiError(500, `could not kill container ${c.id}: its processes did not exit after SIGKILL`);
        }
      }
    }
    await c.locked(async () => {
      if (c.removed) throw noSuchContainer(ref);
      if (c.running) throw notStopped();
      c.rec.state.status = "removing";
      c.removed = true;
      // Nothing of it may stay behind: a namespace left by a crash, its files.
      await this.networks.release(c, "its removal");
      await rm(c.dir, { recursive: true, force: true });
      this.table.delete(c.id);
      this.onRemoved(c);
      this.log.info({ id: c.id, name: c.rec.name }, "container removed");
    });
    for (const l of [...c.removeListeners]) l(c.rec.state.exitCode);
  }
}
