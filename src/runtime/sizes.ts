// What `docker ps -s`, `docker inspect --size`, `docker system df -v` and `docker container prune` show of a
// container's disk, as dockerd counts it: SizeRw, the bytes of the files the container wrote to its root
// file system (the regular files and links in its snapshot's upper directory, each inode once; directories
// and empty files count nothing, so an untouched container is 0 B), and SizeRootFs, those with its image's.

import { lstat, opendir } from "node:fs/promises";
import { join } from "node:path";
import type { TaskClient } from "./containerd/tasks.js";
import { sizeOf } from "./images/service.js";
import type { ImageStore } from "./images/store.js";

/** The bytes of the files under `dir` (not following links; hard links once); 0 when it is gone. */
export async function diffSize(dir: string): Promise<number> {
  const seen = new Set<string>();
  let total = 0;
  const walk = async (d: string): Promise<void> => {
    let entries: Awaited<ReturnType<typeof opendir>>;
    try {
      entries = await opendir(d);
    } catch {
      return; // removed meanwhile (the container was removed, or wrote and deleted it)
    }
    for await (const e of entries) {
      const path = join(d, e.name);
      if (e.isDirectory()) {
        await walk(path);
        continue;
      }
      const st = await lstat(path, { bigint: true }).catch(() => undefined);
      if (!st || st.size === 0n) continue;
      if (st.nlink > 1n) {
        const key = `${st.dev}:${st.ino}`;
        if (seen.has(key)) continue;
        seen.add(key);
      }
      total += Number(st.size);
    }
  };
  await walk(dir);
  return total;
}

/** SizeRw: what container `id` wrote (0 for one without a snapshot: the host image). */
export async function writtenBytes(tasks: Pick<TaskClient, "rootfsDiffDir">, id: string): Promise<number> {
  const dir = await tasks.rootfsDiffDir(id);
  return dir === undefined ? 0 : diffSize(dir);
}

export class ContainerSizes {
  /** Image sizes by id, each image read once per listing. */
  private readonly images = new Map<string, Promise<number>>();

  constructor(
    private readonly tasks: Pick<TaskClient, "rootfsDiffDir">,
    private readonly store: Pick<ImageStore, "find">,
  ) {}

  async of(id: string, imageId: string): Promise<{ SizeRw: number; SizeRootFs: number }> {
    const [rw, image] = await Promise.all([writtenBytes(this.tasks, id), this.imageSize(imageId)]);
    return { SizeRw: rw, SizeRootFs: rw + image };
  }

  private imageSize(imageId: string): Promise<number> {
    let size = this.images.get(imageId);
    if (!size) {
      // An image removed since (docker rmi -f) or the host image: the container's own bytes only.
      size = imageId.startsWith("sha256:")
        ? this.store.find(imageId).then((img) => (img ? sizeOf(img) : 0))
        : Promise.resolve(0);
      this.images.set(imageId, size);
    }
    return size;
  }
}
