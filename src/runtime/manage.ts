// What a user does to containers beside their life: rename, pause and unpause (containerd freezes and
// thaws the task's processes), and prune (every container that does not run, as `docker container prune`).
// In dockerd's order of checks and in its words.

import type { Logger } from "pino";
import { badRequest, conflict } from "../api/errors.js";
import { eventAttributes, noSuchContainer } from "./container.js";
import type { TaskClient } from "./containerd/tasks.js";
import { NAME_RE } from "./create.js";
import type { EventLog } from "./events.js";
import type { Lifecycle } from "./lifecycle.js";
import type { ContainerNetworks } from "./networks.js";
import { writtenBytes } from "./sizes.js";
import type { ContainerTable } from "./table.js";
import type { ContainerPruneFilter } from "./types.js";

export class ContainerManager {
  constructor(
    private readonly table: ContainerTable,
    private readonly tasks: TaskClient,
    private readonly lifecycle: Lifecycle,
    private readonly networks: ContainerNetworks,
    private readonly events: EventLog,
    private readonly log: Logger,
  ) {}

  /**
   * `docker rename OLD NEW`. A running container's endpoints on networks take the new name first (the
   * managers' record, so every host's DNS answers it; they refuse a name another container has on one of
   * them, and nothing changes). The name is checked again after that and taken with no await between, so a
   * create or another rename cannot take it meanwhile.
   */
  async rename(ref: string, newNameRaw: string): Promise<void> {
    if (ref === "" || newNameRaw === "") throw badRequest("Neither old nor new names may be empty");
    if (!NAME_RE.test(newNameRaw)) {
      throw badRequest(`Invalid container name (${newNameRaw}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed`);
    }
    const newName = newNameRaw.startsWith("/") ? newNameRaw.slice(1) : newNameRaw;
    const c = this.table.find(ref);
    await c.locked(async () => {
      if (c.removed) throw noSuchContainer(ref);
      const oldName = c.rec.name;
      if (oldName === newName) throw badRequest("Renaming a container with the same name as its current name");
      const taken = (): void => {
        const holder = this.table.byName(newName);
        if (holder) {
          throw conflict(
            `Error when allocating new name: Conflict. The container name "/${newName}" is already in use by container "${holder.id}". You have to remove (or rename) that container to be able to reuse that name.`,
          );
        }
      };
      taken();
      // Only endpoints of a running container exist: a stopped one's get the name at its next start.
      const endpointsRenamed = c.running && (await this.networks.rename(c, newName));
      const undoEndpoints = async (): Promise<void> => {
        if (!endpointsRenamed) return;
        await this.networks
          .rename(c, oldName)
          .catch((err: unknown) =>
            this.log.warn({ err, id: c.id, name: oldName }, "could not give the container's endpoints their name back"),
          );
      };
      try {
        taken();
      } catch (err) {
        await undoEndpoints();
        throw err;
      }
      c.rec = { ...c.rec, name: newName };
      try {
        await this.table.persist(c);
      } catch (err) {
        c.rec = { ...c.rec, name: oldName };
        await undoEndpoints();
        throw err;
      }
      this.log.info({ id: c.id, from: oldName, to: newName }, "container renamed");
      this.events.emit("container", "rename", c.id, eventAttributes(c, { oldName: `/${oldName}` }));
    });
  }

  /** `docker pause`: every process of the container frozen (the cgroup freezer, through containerd). */
  async pause(ref: string): Promise<void> {
    const c = this.table.find(ref);
    await c.locked(async () => {
      if (c.removed) throw noSuchContainer(ref);
      if (!c.running) throw conflict(`Container ${c.id} is not running`);
      if (c.paused) throw conflict(`Container ${c.id} is already paused`);
      if (c.restarting) throw conflict(`Container ${c.id} is restarting, wait until the container is running`);
      await this.tasks.pause(c.id);
      c.rec.state.paused = true;
      await this.table.persistHappened(c, "its pause");
      this.log.info({ id: c.id, name: c.rec.name }, "container paused");
      this.events.emit("container", "pause", c.id, eventAttributes(c));
    });
  }

  /** `docker unpause`. */
  async unpause(ref: string): Promise<void> {
    const c = this.table.find(ref);
    await c.locked(async () => {
      if (c.removed) throw noSuchContainer(ref);
      if (!c.paused) throw conflict(`Container ${c.id} is not paused`);
      await this.tasks.resume(c.id);
      c.rec.state.paused = false;
      await this.table.persistHappened(c, "its unpause");
      this.log.info({ id: c.id, name: c.rec.name }, "container unpaused");
      this.events.emit("container", "unpause", c.id, eventAttributes(c));
    });
  }

  /**
   * `docker container prune`: removes every container that is not running (nor restarting) and passes the
   * filter; one that cannot be removed now (it started meanwhile) is skipped. Answers the ids removed.
   */
  async prune(filter: ContainerPruneFilter): Promise<{ deleted: string[]; reclaimedBytes: number }> {
    const deleted: string[] = [];
    let reclaimedBytes = 0;
    for (const c of this.table.live()) {
      if (c.running || c.restarting) continue;
      if (filter.untilMs !== undefined && Date.parse(c.rec.created) > filter.untilMs) continue;
      if (!filter.labels(c.rec.config.Labels)) continue;
      try {
        // What its root file system held of its own, as dockerd counts a pruned container's space.
        const bytes = await writtenBytes(this.tasks, c.id).catch(() => 0);
        await this.lifecycle.remove(c.id, { force: false });
        deleted.push(c.id);
        reclaimedBytes += bytes;
      } catch (err) {
        this.log.debug({ err, id: c.id }, "container prune skipped a container");
      }
    }
    return { deleted, reclaimedBytes };
  }
}
