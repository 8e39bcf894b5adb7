// A new container's root file system: a snapshot on its image's top layer (the image unpacked first when
// containerd has not that layer's snapshot). A create begins it before it has looked its image up, on the
// snapshot the image's reference had the last time here; the lookup then decides (on another snapshot, or no
// image at all, it is removed).

import type { Logger } from "pino";
import { isNotFound } from "./containerd/client.js";
import type { Mounts, TaskClient } from "./containerd/tasks.js";
import type { ImageForRun } from "./create.js";

/** How many image references the top snapshot they were last found with is kept for. */
const LAST_CHAIN_ENTRIES = 64;

/** An image to create a container from: its top snapshot, and how to unpack it when that is not there. */
export type RunImage = ImageForRun & { topChainId: string; unpack(): Promise<void> };

/** A root file system prepared on the top snapshot an image reference had last (undefined mounts: it could not be). */
export interface EarlyRootfs {
  chain: string;
  mounts: Promise<Mounts | undefined>;
}

export class RootfsMaker {
  /** The top snapshot each image reference was found with last (the most recent LAST_CHAIN_ENTRIES). */
  private readonly lastChain = new Map<string, string>();

  constructor(
    private readonly tasks: TaskClient,
    private readonly log: Logger,
  ) {}

  /**
   * A root file system prepared for a new container `id` on the top snapshot the image reference `ref` had
   * the last time it was looked up; undefined when it was never looked up here.
   */
  early(id: string, ref: string): EarlyRootfs | undefined {
    const chain = this.lastChain.get(ref);
    if (chain === undefined) return undefined;
    const mounts = this.tasks.prepareRootfs(id, chain).then(
      (m) => m,
      (err: unknown) => {
        // The snapshot is gone (the image removed, or not unpacked): the create prepares it as before.
        this.log.debug({ err, id, chain }, "could not prepare a root file system ahead of the image lookup");
        return undefined;
      },
    );
    return { chain, mounts };
  }

  /** Removes a root file system `early` made for a create that does not use it (never rejects). */
  async drop(id: string, early: EarlyRootfs): Promise<void> {
    if ((await early.mounts) === undefined) return;
    await this.tasks
      .removeRootfs(id)
      .catch((err: unknown) =>
        this.log.warn({ err, id }, "could not remove a root file system prepared for a failed create: it stays"),
      );
  }

  /**
   * The root file system of a new container `id` on its image's top snapshot (undefined: the host's): the
   * one prepared early when it is on that snapshot, else made.
   */
  prepare(id: string, image: RunImage, early: EarlyRootfs | undefined): Promise<Mounts> | undefined {
    if (image.rootfs !== "snapshot") {
      if (early) void this.drop(id, early);
      return undefined;
    }
    this.lastChain.delete(image.name);
    this.lastChain.set(image.name, image.topChainId);
    if (this.lastChain.size > LAST_CHAIN_ENTRIES) this.lastChain.delete(this.lastChain.keys().next().value!);
    if (early === undefined) return this.snapshot(id, image);
    return (async () => {
      if (early.chain === image.topChainId) {
        const mounts = await early.mounts;
        if (mounts !== undefined) return mounts;
      } else await this.drop(id, early);
      return await this.snapshot(id, image);
    })();
  }

  /** The snapshot on the image's top layer; the image unpacked first if containerd has not that. */
  private async snapshot(id: string, image: RunImage): Promise<Mounts> {
    try {
      return await this.tasks.prepareRootfs(id, image.topChainId);
    } catch (err) {
      if (!isNotFound(err)) throw err;
      await image.unpack();
      return await this.tasks.prepareRootfs(id, image.topChainId);
    }
  }
}
