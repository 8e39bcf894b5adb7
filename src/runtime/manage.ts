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
import { writtenBytes } from "./sizes.js";
import type { ContainerTable } from "./table.js";
import type { ContainerPruneFilter } from "./types.js";

export class ContainerManager {
  constructor(
    private readonly table: ContainerTable,
    private readonly tasks: TaskClient,
    private readonly lifecycle: Lifecycle,
    private readonly events: EventLog,
    private readonly log: Logger,
  ) {}

  /**
   * `docker rename OLD NEW`. The name is taken at once (no await between the check and the change), so a
   * create or another rename cannot take it meanwhile. A running container's endpoints on networks keep the
   * name the managers gave them until it starts again: shoal refuses that rename instead of half doing it.
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
      const holder = this.table.byName(newName);
      if (holder) {
        throw conflict(
          `Error when allocating new name: Conflict. The container name "/${newName}" is already in use by container "${holder.id}". You have to remove (or rename) that container to be able to reuse that name.`,
        );
      }
      const attached = c.rec.networks.filter((n) => n.endpoint).map((n) => n.endpoint!.networkName);
      if (c.running && attached.length > 0) {
        throw conflict(
          `shoal cannot rename a running container on network(s) ${attached.join(", ")}: their names are the cluster's; stop the container, rename it, and start it again`,
        );
      }
      c.rec = { ...c.rec, name: newName };
      try {
        await this.table.persist(c);
      } catch (err) {
        c.rec = { ...c.rec, name: oldName };
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
