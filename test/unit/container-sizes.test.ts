// A container's SizeRw as dockerd counts it: the bytes of the files in what it wrote (its snapshot's upper
// directory), hard links once, directories and empty files nothing, symbolic links not followed.

import { link, mkdir, mkdtemp, rm, symlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { diffSize, writtenBytes } from "../../src/runtime/sizes.js";

describe("container sizes", () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), "shoal-sizes-"));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it("counts files once, directories and empty files not, links by their own size", async () => {
    await mkdir(join(dir, "etc", "deep"), { recursive: true });
    await mkdir(join(dir, "empty-dir"));
    await writeFile(join(dir, "blob"), Buffer.alloc(1000));
    await link(join(dir, "blob"), join(dir, "etc", "blob-again"));
    await writeFile(join(dir, "etc", "deep", "x"), Buffer.alloc(500));
    await writeFile(join(dir, "etc", "hosts"), "");
    // A link to a big file elsewhere counts its own bytes (the target's path), not the target's.
    await symlink("/proc/kcore", join(dir, "kcore"));
    expect(await diffSize(dir)).toBe(1000 + 500 + "/proc/kcore".length);
  });

  it("an untouched container is 0 B; one without a snapshot or a directory gone is 0 B", async () => {
    await mkdir(join(dir, "upper", "etc"), { recursive: true });
    await writeFile(join(dir, "upper", "etc", "resolv.conf"), "");
    expect(await writtenBytes({ rootfsDiffDir: async () => join(dir, "upper") }, "c")).toBe(0);
    expect(await writtenBytes({ rootfsDiffDir: async () => undefined }, "c")).toBe(0);
    expect(await diffSize(join(dir, "gone"))).toBe(0);
  });
});
