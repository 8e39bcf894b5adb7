// The containers of this daemon, by id, and how a reference names one (a full id, a name with or without
// "/", or a unique id prefix, as docker resolves them); and the one place a container's record is written
// to its state.json.

import { join } from "node:path";
import type { Logger } from "pino";
import { badRequest } from "../api/errors.js";
import { writeFileDurable } from "../durable.js";
import { delay } from "./async.js";
import { type Container, type ContainerRecord, errMessage, noSuchContainer } from "./container.js";

/** How often a failed write of state.json is tried before it is reported. */
const PERSIST_TRIES = 3;
const PERSIST_RETRY_MS = 50;

export class ContainerTable {
  private readonly byId = new Map<string, Container>();

  constructor(
    readonly stateDir: string,
    private readonly log: Logger,
  ) {}

  has(id: string): boolean {
    return this.byId.has(id);
  }

  get(id: string): Container | undefined {
    return this.byId.get(id);
  }

  add(c: Container): void {
    this.byId.set(c.id, c);
  }

  delete(id: string): void {
    this.byId.delete(id);
  }

  /** The containers that are not being removed. */
  live(): Container[] {
    return [...this.byId.values()].filter((c) => !c.removed);
  }

  /** A full id, a name (with or without "/"), or a unique id prefix. */
  find(ref: string): Container {
    const exact = this.byId.get(ref);
    if (exact && !exact.removed) return exact;
    const byName = this.byName(ref.startsWith("/") ? ref.slice(1) : ref);
    if (byName) return byName;
    if (ref !== "" && /^[0-9a-f]+$/.test(ref)) {
      const matches = this.live().filter((c) => c.id.startsWith(ref));
      if (matches.length === 1) return matches[0]!;
      if (matches.length > 1) throw badRequest(`multiple IDs found with provided prefix: ${ref}`);
    }
    throw noSuchContainer(ref);
  }

  byName(name: string): Container | undefined {
    return this.live().find((c) => c.rec.name === name);
  }

  /**
   * Writes the container's record (or `rec`, what it is about to be) to its state.json, durably; a removed
   * container has none.
   */
  async persist(c: Container, rec: ContainerRecord = c.rec): Promise<void> {
    if (c.removed) return;
    await writeFileDurable(join(c.dir, "state.json"), `${JSON.stringify(rec, null, 2)}\n`);
  }

  /**
   * persist, tried a few times, for state changes that have already happened (a process started or
   * exited): they cannot be undone, so a write that keeps failing is logged as an error saying what a
   * daemon restart would find.
   */
  async persistHappened(c: Container, what: string): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      try {
        await this.persist(c);
        return;
      } catch (err) {
        if (attempt >= PERSIST_TRIES) {
          this.log.error(
            { err, id: c.id, state: c.rec.state.status },
            `could not save container state after ${what} (${errMessage(err)}): it is right in memory, but a daemon restart would read the state saved before`,
          );
          return;
        }
        await delay(PERSIST_RETRY_MS * attempt);
      }
    }
  }
}
