// The FIFO pool a start takes its stdio FIFOs from: FIFOs made a batch per mkfifo, moved into place by a
// rename; what a previous daemon left in the pool is dropped; without a pool (or when a FIFO cannot be
// moved) a start still gets its FIFOs.

import { mkdtemp, readdir, rm, stat, writeFile } from "node:fs/promises";
import os from "node:os";
import { join } from "node:path";
import pino from "pino";
import { afterEach, beforeEach, describe, expect, test } from "vitest";
import { FifoPool, mkfifos } from "../../src/runtime/containerd/tasks.js";

const logger = pino({ level: "silent" });

async function isFifo(path: string): Promise<boolean> {
  return (await stat(path)).isFIFO();
}

describe("FifoPool", () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(os.tmpdir(), "shoal-fifos-"));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  test("FIFOs come from the pool by rename (replacing what is there), and the pool is made again", async () => {
    const poolDir = join(dir, "pool");
    const pool = new FifoPool(poolDir, logger);
    pool.open();
    await pool.ready();
    const before = await readdir(poolDir);
    expect(before.length).toBeGreaterThan(2);
    await writeFile(join(dir, "init-stdout"), "a file left where a FIFO goes");
    await pool.make([join(dir, "init-stdout"), join(dir, "init-stderr")]);
    expect(await isFifo(join(dir, "init-stdout"))).toBe(true);
    expect(await isFifo(join(dir, "init-stderr"))).toBe(true);
    // Two of the pool's FIFOs were moved out (none made for them).
    expect((await readdir(poolDir)).length).toBe(before.length - 2);
    // Many starts: the pool makes more as it runs low.
    for (let i = 0; i < 40; i++) await pool.make([join(dir, `c${i}-stdout`)]);
    await pool.ready();
    for (let i = 0; i < 40; i++) expect(await isFifo(join(dir, `c${i}-stdout`))).toBe(true);
    expect((await readdir(poolDir)).length).toBeGreaterThan(0);
  });

  test("a new pool drops what a previous one left", async () => {
    const poolDir = join(dir, "pool");
    const first = new FifoPool(poolDir, logger);
    first.open();
    await first.ready();
    await writeFile(join(poolDir, "stray"), "");
    const second = new FifoPool(poolDir, logger);
    second.open();
    await second.ready();
    expect(await readdir(poolDir)).not.toContain("stray");
  });

  test("without its directory (or before it is made), a start makes its own FIFOs", async () => {
    const poolDir = join(dir, "pool");
    const pool = new FifoPool(poolDir, logger);
    // Not opened: nothing in the pool.
    await pool.make([join(dir, "a")]);
    expect(await isFifo(join(dir, "a"))).toBe(true);
    pool.open();
    await pool.ready();
    // The pool's FIFOs are gone (a rename fails): made there and then.
    await rm(poolDir, { recursive: true });
    await pool.make([join(dir, "b"), join(dir, "c")]);
    expect(await isFifo(join(dir, "b"))).toBe(true);
    expect(await isFifo(join(dir, "c"))).toBe(true);
    // ...and the pool is made again for the next ones.
    await pool.ready();
    expect((await readdir(poolDir)).length).toBeGreaterThan(0);
    await pool.make([join(dir, "d")]);
    expect(await isFifo(join(dir, "d"))).toBe(true);
  });

  test("mkfifos makes every FIFO with one process, replacing files", async () => {
    await writeFile(join(dir, "x"), "old");
    await mkfifos([join(dir, "x"), join(dir, "y")]);
    expect(await isFifo(join(dir, "x"))).toBe(true);
    expect(await isFifo(join(dir, "y"))).toBe(true);
  });
});
