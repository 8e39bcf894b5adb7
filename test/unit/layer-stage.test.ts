// A layer staged by LayerApplier before its snapshot exists (a pull applies every layer at once, each into a
// directory of its own, while the layers below it still download), then placed into its snapshot once that
// is prepared, comes out as the same layer applied there directly (which layer-apply.test.ts compares with
// containerd's Diff.Apply): the parents it made take the lowers' attributes, and what the direct apply
// leaves to containerd, the staged one does too (at the latest when placed).

import { readdirSync, writeFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import fc from "fast-check";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import type { Mount } from "../../src/gen/containerd/types.js";
import { type GrowingFile, LayerApplier, UnsupportedLayerError } from "../../src/runtime/images/apply/applier.js";
import { ensureApplierBuilt, freshDir, layerFileUnder } from "./applier-worker.js";
import { randomEntry } from "./layer-random.js";
import { type TarItem, tar } from "./layer-tar.js";
import { describeTree, treeDiff } from "./layer-tree.js";

const ROOT = process.getuid?.() === 0;
const OCI_TAR = "application/vnd.oci.image.layer.v1.tar";
const T = 1_600_000_000;

let dir: string;
let applier: LayerApplier;

beforeAll(async () => {
  ensureApplierBuilt();
  dir = await mkdtemp(join(tmpdir(), "shoal-layer-stage-"));
  applier = new LayerApplier(pino({ level: "silent" }));
  applier.start();
}, 200_000);

afterAll(async () => {
  await applier?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** A fresh directory under the test's. */
const fresh = (name: string): string => freshDir(dir, name);
const layerFile = (data: Buffer): GrowingFile => layerFileUnder(dir, data);

const bind = (d: string): Mount[] => [{ type: "bind", source: d, target: "", options: ["rw", "rbind"] }];

/** What Snapshots.Prepare gives for a snapshot over `lowers`: an overlay with a fresh upperdir. */
function overlay(lowers: string[]): { mounts: Mount[]; upper: string } {
  const upper = fresh("upper");
  const mounts = [
    {
      type: "overlay",
      source: "overlay",
      target: "",
      options: [`workdir=${fresh("work")}`, `upperdir=${upper}`, `lowerdir=${lowers.join(":")}`],
    },
  ];
  return { mounts, upper };
}

/** A base layer applied into a directory of its own: the lower of the layers under test. */
async function base(items: TarItem[]): Promise<string> {
  const d = fresh("base");
  await applier.apply(layerFile(tar(items)), OCI_TAR, bind(d), { hash: false });
  return d;
}

type Outcome = { ok: true; tree: Map<string, string> } | { ok: false; unsupported: boolean; message: string };

/** The layer applied straight into a snapshot over `lower`. */
async function direct(layer: Buffer, lower: string, dirMtimes: (rel: string) => boolean): Promise<Outcome> {
  const { mounts, upper } = overlay([lower]);
  try {
    await applier.apply(layerFile(layer), OCI_TAR, mounts, { hash: false });
    return { ok: true, tree: describeTree(upper, dirMtimes) };
  } catch (err) {
    return { ok: false, unsupported: err instanceof UnsupportedLayerError, message: (err as Error).message };
  }
}

/** The layer staged (no lowers known), then placed into a snapshot over `lower`. */
async function staged(layer: Buffer, lower: string, dirMtimes: (rel: string) => boolean): Promise<Outcome> {
  const { mounts, upper } = overlay([lower]);
  const stage = fresh("stage");
  try {
    const s = await applier.stage(layerFile(layer), OCI_TAR, stage, false, { hash: false });
    await applier.place(s, mounts);
    // Everything moved: the staging directory is left empty.
    expect(readdirSync(stage)).toEqual([]);
    return { ok: true, tree: describeTree(upper, dirMtimes) };
  } catch (err) {
    return { ok: false, unsupported: err instanceof UnsupportedLayerError, message: (err as Error).message };
  }
}

describe.skipIf(!ROOT)("a layer staged before its snapshot exists, then placed into it", () => {
  test("the parents it made take the lowers' attributes and xattrs; the directories it lists keep their own", async () => {
    const lower = await base([
      { name: "usr/", mode: 0o700, uid: 5, gid: 6, mtime: T, pax: { "SCHILY.xattr.user.shoal": "lower" } },
      { name: "usr/lib/", mode: 0o750, uid: 7, gid: 8, mtime: T + 10 },
      { name: "opt/", mode: 0o755, mtime: T },
    ]);
    const layer = tar([
      // usr, usr/lib and usr/lib/new are made as parents (usr/lib/new is in no lower: 0755 root, now).
      { name: "usr/lib/new/file", data: Buffer.from("x"), mtime: T + 20 },
      // opt is made as a parent of opt/z, then listed by the layer: the layer's attributes win.
      { name: "opt/z", data: Buffer.from("z"), mtime: T + 30 },
      { name: "opt/", mode: 0o711, uid: 9, gid: 9, mtime: T + 40 },
    ]);
    // Directories made as parents have the mtime of their last entry's making, on either side.
    const comparable = (rel: string) => rel === "opt";
    const a = await direct(layer, lower, comparable);
    const b = await staged(layer, lower, comparable);
    if (!a.ok || !b.ok) throw new Error(`applied: ${JSON.stringify([a, b])}`);
    expect(treeDiff(b.tree, a.tree)).toEqual([]);
    // The comparison compared what it should.
    // Its xattrs too (copied on shoald's thread by programs run without blocking it).
    expect(b.tree.get("usr")).toBe("dir 0700 5:6 xattrs=user.shoal=0x6c6f776572");
    expect(b.tree.get("usr/lib")).toBe("dir 0750 7:8");
    expect(b.tree.get("usr/lib/new")).toBe("dir 0755 0:0");
    expect(b.tree.get("opt")).toBe(`dir 0711 9:9 mtime=${T + 40}`);
  });

  test("an entry whose parent is a lower's symlink is left to containerd when placed, as when applied directly", async () => {
    const lower = await base([
      { name: "usr/lib/", mode: 0o755 },
      { name: "lib", type: "symlink", link: "usr/lib" },
    ]);
    const layer = tar([{ name: "lib/libx.so", data: Buffer.from("elf") }]);
    const a = await direct(layer, lower, () => true);
    expect(a).toMatchObject({ ok: false, unsupported: true });
    // Staged, the lowers are not known yet: it stages, and place() refuses it before moving anything in.
    const { mounts, upper } = overlay([lower]);
    const s = await applier.stage(layerFile(layer), OCI_TAR, fresh("stage"), false, { hash: false });
    await expect(applier.place(s, mounts)).rejects.toBeInstanceOf(UnsupportedLayerError);
    expect(readdirSync(upper)).toEqual([]);
  });

  test("a snapshot that is not empty, or of the other kind, is refused", async () => {
    const s = await applier.stage(
      layerFile(tar([{ name: "f", data: Buffer.from("1") }])),
      OCI_TAR,
      fresh("stage"),
      true,
      {
        hash: false,
      },
    );
    const { mounts } = overlay([fresh("lower")]);
    await expect(applier.place(s, mounts)).rejects.toThrow(/staged for a bind snapshot/);
    const used = fresh("used");
    writeFileSync(join(used, "there"), "");
    await expect(applier.place(s, bind(used))).rejects.toThrow(/not empty/);
    const empty = fresh("empty");
    await applier.place(s, bind(empty));
    expect(readdirSync(empty)).toEqual(["f"]);
  });

  test("random layers over a base: staged then placed, the same as applied directly", async () => {
    const lower = await base([
      { name: "a/", mode: 0o750, uid: 3, mtime: T },
      { name: "a/b", data: Buffer.from("ab") },
      { name: "a/d/", mode: 0o700, mtime: T + 1 },
      { name: "a/d/x", data: Buffer.from("adx") },
      { name: "c", type: "symlink", link: "a" },
      { name: "d", data: Buffer.from("d") },
      { name: "e/", mode: 0o711, uid: 4, gid: 4, mtime: T + 2 },
      { name: "e/f", data: Buffer.from("ef") },
    ]);
    const names = ["a", "b", "d", "e", "a/b", "a/c", "a/d", "a/d/x", "a/d/y/z", "e/f", "e/g/h", "f/g", "c/x"];
    const whiteouts = [".wh.a", ".wh.d", "a/.wh.b", "a/d/.wh.x", "e/.wh.f", "a/.wh..wh..opq", "e/g/.wh..wh..opq"];
    const entry = randomEntry({ names, whiteouts, dirMtimes: [T + 5, T + 6], links: ["a", "/e"], special: false });
    // Directories made as parents have the mtime of their last entry's making, on either side: only the
    // layer's own directories' mtimes are compared.
    const outcomes = new Map<string, number>();
    await fc.assert(
      fc.asyncProperty(fc.array(entry, { minLength: 1, maxLength: 6 }), async (items) => {
        const layer = tar(items);
        const listed = new Set(items.filter((i) => i.name.endsWith("/")).map((i) => i.name.slice(0, -1)));
        const comparable = (rel: string) => listed.has(rel);
        const a = await direct(layer, lower, comparable);
        const b = await staged(layer, lower, comparable);
        if (a.ok && b.ok) expect(treeDiff(b.tree, a.tree)).toEqual([]);
        else {
          // Refused alike (a corrupt layer), or left to containerd by both (staged: at the latest when placed).
          const kind = (o: Outcome) =>
            o.ok ? "applied" : o.unsupported ? "left to containerd" : `refused: ${o.message}`;
          expect(kind(b)).toBe(kind(a));
        }
        const k = a.ok ? "applied" : a.unsupported ? "left to containerd" : "refused";
        outcomes.set(k, (outcomes.get(k) ?? 0) + 1);
      }),
      { numRuns: 80, seed: 20261208 },
    );
    // Both kinds of outcome were exercised.
    expect(outcomes.get("applied") ?? 0).toBeGreaterThan(20);
    expect(outcomes.get("left to containerd") ?? 0).toBeGreaterThan(0);
  }, 120_000);
});
