// Network namespaces made ahead (src/runtime/netns-pool.ts) and moved onto a container's file (sandbox.ts
// moveNetns), with real namespaces (root only). The pool's namespaces live in a directory of their own,
// never in the containers' one; a taken namespace is the one the pool made (the same inode), moved, not
// made again; a closed pool leaves no namespace, file or mount; and those a pool left when its process
// died are removed by the next one.

import { mkdtemp, readdir, readFile, rm, stat } from "node:fs/promises";
import os from "node:os";
import { basename, join } from "node:path";
import { afterEach, beforeEach, describe, expect, test } from "vitest";
import { NetnsPool } from "../../src/runtime/netns-pool.js";
import { deleteNetns, MountMover, moveNetns, netnsState } from "../../src/runtime/sandbox.js";
import { CAN_RUN_CONTAINERS } from "./runtime-fixtures.js";

const log = { warn: () => undefined };

/** The mounts under `dir` (/proc/self/mountinfo's 5th field). */
async function mountsUnder(dir: string): Promise<string[]> {
  const info = await readFile("/proc/self/mountinfo", "utf8");
  return info
    .split("\n")
    .map((l) => l.split(" ")[4] ?? "")
    .filter((m) => m.startsWith(`${dir}/`));
}

/** A pool that holds namespaces (its first take starts it; the batch made). */
async function filled(pool: NetnsPool): Promise<void> {
  expect(pool.take()).toBeUndefined();
  await pool.settled();
  expect(pool.size).toBeGreaterThan(0);
}

describe.skipIf(!CAN_RUN_CONTAINERS)("NetnsPool (real namespaces)", () => {
  let dir: string;
  let poolDir: string;
  let containersDir: string;
  const pools: NetnsPool[] = [];

  const newPool = (): NetnsPool => {
    const p = new NetnsPool({ dir: poolDir, log });
    pools.push(p);
    return p;
  };

  beforeEach(async () => {
    dir = await mkdtemp(join(os.tmpdir(), "shoal-netns-pool-"));
    poolDir = join(dir, "netns-pool");
    containersDir = join(dir, "netns");
  });

  afterEach(async () => {
    for (const p of pools.splice(0)) await p.close();
    for (const d of [poolDir, containersDir]) {
      for (const n of await readdir(d).catch(() => [] as string[])) await deleteNetns(join(d, n));
    }
    const left = await mountsUnder(dir);
    await rm(dir, { recursive: true, force: true });
    expect(left).toEqual([]);
  });

  test("a taken namespace is moved onto the container's file: the pool's own, in the pool's directory only", async () => {
    const pool = newPool();
    await filled(pool);
    const before = await readdir(poolDir);
    const pooled = pool.take()!;
    expect(pooled.startsWith(`${poolDir}/`)).toBe(true);
    const ino = (await stat(pooled)).ino;
    const target = join(containersDir, "0123456789ab");
    await moveNetns(pooled, target);
    // The same namespace (nsfs inode), now on the container's file; the pool's file is gone.
    expect(await netnsState(target)).toBe("netns");
    expect((await stat(target)).ino).toBe(ino);
    expect(await netnsState(pooled)).toBe("absent");
    expect(await readdir(containersDir)).toEqual(["0123456789ab"]);
    // The take made the pool make more (new names): the taken file is not among them.
    await pool.settled();
    const after = await readdir(poolDir);
    expect(after).toEqual(expect.arrayContaining(before.filter((n) => join(poolDir, n) !== pooled)));
    expect(after).not.toContain(basename(pooled));
    // Its loopback is up, as a namespace made for the container has it.
    const { execFileSync } = await import("node:child_process");
    const lo = execFileSync("nsenter", [`--net=${target}`, "ip", "-o", "link", "show", "lo"], { encoding: "utf8" });
    expect(lo).toMatch(/[<,]UP[,>]/);
  });

  test("the mount mover moves a namespace's mount with no process of its own, answers errno, and says when it cannot run", async () => {
    const pool = newPool();
    await filled(pool);
    const pooled = pool.take()!;
    const ino = (await stat(pooled)).ino;
    const target = join(containersDir, "0123456789ab");
    const { mkdir, writeFile } = await import("node:fs/promises");
    await mkdir(containersDir, { recursive: true });
    await writeFile(target, "");
    const mover = new MountMover();
    try {
      expect(await mover.move(pooled, target)).toBe(0);
      expect((await stat(target)).ino).toBe(ino);
      expect(await netnsState(pooled)).toBe("file");
      // One process for every move: the same one answers the next.
      expect(await mover.move(join(dir, "missing"), join(dir, "nowhere"))).toBe(2); // ENOENT
      expect(await mover.move(pooled, target)).toBe(22); // EINVAL: a plain file, no mount to move
    } finally {
      mover.close();
      await rm(pooled, { force: true });
    }
    // No perl (or no syscall number for this machine): undefined, the caller runs mount.
    const none = new MountMover("/nonexistent/perl");
    expect(await none.move(join(dir, "a"), join(dir, "b"))).toBeUndefined();
    expect(await new MountMover("perl", null).move(join(dir, "a"), join(dir, "b"))).toBeUndefined();
  });

  test("a closed pool leaves no namespace, file or mount, and makes no more", async () => {
    const pool = newPool();
    await filled(pool);
    // A take that starts a refill, then the close while it is being made.
    while (pool.size >= 3) await deleteNetns(pool.take()!);
    pool.take();
    await pool.close();
    expect(await readdir(poolDir)).toEqual([]);
    expect(await mountsUnder(poolDir)).toEqual([]);
    expect(pool.take()).toBeUndefined();
    await pool.settled();
    expect(await readdir(poolDir)).toEqual([]);
  });

  test("the namespaces a pool left (its process died) are removed by the next pool; its own are kept", async () => {
    const dead = new NetnsPool({ dir: poolDir, log });
    await filled(dead);
    const left = await readdir(poolDir);
    expect(left.length).toBeGreaterThan(0);
    const next = newPool();
    await filled(next);
    const own = (await readdir(poolDir)).filter((n) => !left.includes(n));
    await next.removeStale();
    expect((await readdir(poolDir)).sort()).toEqual(own.sort());
    expect(await mountsUnder(poolDir)).toHaveLength(own.length);
    // The dead pool's shell (this test's process is its parent).
    await dead.close();
  });
});
