// LayerApplier (src/runtime/images/apply): a layer applied by shoald itself is what containerd's Diff.Apply
// makes of it (compared entry by entry against containerd's own apply, upper dirs and merged overlays),
// also while the layer file is still growing; and an untrusted tar writes nothing outside its snapshot.

import { execFileSync } from "node:child_process";
import { randomUUID } from "node:crypto";
import { appendFileSync, existsSync, readdirSync, renameSync, writeFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { gzipSync } from "node:zlib";
import fc from "fast-check";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import type { Mount } from "../../src/gen/containerd/types.js";
import { SNAPSHOTTER } from "../../src/runtime/containerd/client.js";
import { ContentStore } from "../../src/runtime/containerd/content.js";
import {
  type GrowingFile,
  LayerApplier,
  LayerFormatError,
  UnsupportedLayerError,
} from "../../src/runtime/images/apply/applier.js";
import { ensureApplierBuilt, freshDir, layerFileUnder } from "./applier-worker.js";
import { randomEntry } from "./layer-random.js";
import { sha256, type TarItem, tar, tarEntries } from "./layer-tar.js";
import { describeTree, treeDiff } from "./layer-tree.js";
import { CAN_RUN_CONTAINERS, testContainerd } from "./runtime-fixtures.js";

const ROOT = process.getuid?.() === 0;
const OCI_TAR = "application/vnd.oci.image.layer.v1.tar";
const OCI_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip";

function bind(dir: string): Mount[] {
  return [{ type: "bind", source: dir, target: "", options: ["rw", "rbind"] }];
}

/** A GrowingFile the test grows by hand. */
function growing(path: string, size: number) {
  let available = 0;
  const subs = new Set<(n: number) => void>();
  let finish!: () => void;
  let fail!: (err: Error) => void;
  const done = new Promise<void>((res, rej) => {
    finish = res;
    fail = rej;
  });
  done.catch(() => undefined);
  const file: GrowingFile = {
    path,
    size,
    get available() {
      return available;
    },
    onProgress(cb) {
      subs.add(cb);
      return () => subs.delete(cb);
    },
    done,
  };
  return {
    file,
    grow(n: number) {
      available = n;
      for (const cb of subs) cb(n);
    },
    finish,
    fail,
  };
}

/** Writes `data` to path in pieces with pauses, telling g as it goes; leaves `stopAt` bytes unwritten. */
async function dribble(path: string, data: Buffer, g: ReturnType<typeof growing>, stopAt = data.length) {
  let at = 0;
  let i = 0;
  while (at < stopAt) {
    const n = Math.min(stopAt - at, [1, 511, 7000, 65_536, 300_000][i++ % 5]!);
    appendFileSync(path, data.subarray(at, at + n));
    at += n;
    g.grow(at);
    await new Promise((r) => setTimeout(r, 3));
  }
}

const log = pino({ level: "silent" });
let dir: string;
let applier: LayerApplier;

beforeAll(async () => {
  if (ROOT) ensureApplierBuilt(); // every test here needs root
  dir = await mkdtemp(join(tmpdir(), "shoal-layer-apply-"));
  applier = new LayerApplier(log);
  applier.start();
}, 200_000);

afterAll(async () => {
  await applier?.close();
  if (dir) await rm(dir, { recursive: true, force: true, maxRetries: 5 });
});

/** A fresh directory under the test's. */
const fresh = (name: string): string => freshDir(dir, name);
const layerFile = (data: Buffer): GrowingFile => layerFileUnder(dir, data);

const SMALL: TarItem[] = [
  { name: "bin/", mode: 0o755, mtime: 1_500_000_000 },
  { name: "bin/sh", data: Buffer.from("#!busybox\n"), mode: 0o755, uid: 7, gid: 8, mtime: 1_500_000_001 },
  { name: "bin/ls", type: "link", link: "bin/sh" },
  { name: "bin/su", data: Buffer.from("su"), mode: 0o4755 },
  { name: "lib", type: "symlink", link: "usr/lib" },
  { name: "./usr/lib/x.so", data: Buffer.alloc(70_000, 3) },
  { name: "empty", data: Buffer.alloc(0), mode: 0o600 },
];

describe.skipIf(!ROOT)("LayerApplier into a directory (a base layer)", () => {
  test("a layer is written as containerd writes it, and its diff id is the uncompressed tar's sha256", async () => {
    const t = tar(SMALL);
    const out = fresh("base");
    const r = await applier.apply(layerFile(t), OCI_TAR, bind(out), { hash: true });
    expect(r.diffId).toBe(sha256(t));
    const tree = describeTree(out);
    // bin/ls's header (0:0, 0644) applies to the inode the two names share.
    expect(tree.get("bin/sh")).toMatch(/^file 0644 0:0 size=10 \w+ nlink=2 mtime=1600000000$/);
    expect(tree.get("bin/ls")).toBe(tree.get("bin/sh"));
    expect(tree.get("bin/su")).toMatch(/^file 4755 0:0 size=2 /);
    expect(tree.get("lib")).toMatch(/^symlink 0777 0:0 -> usr\/lib /);
    expect(tree.get("usr")).toMatch(/^dir 0755 0:0/); // a parent the layer does not list
    expect(tree.get("empty")).toMatch(/^file 0600 0:0 size=0 /);
    expect(tree.get("bin")).toMatch(/mtime=1500000000$/); // set after its children were written

    const gz = gzipSync(t);
    const out2 = fresh("base-gz");
    expect(await applier.apply(layerFile(gz), OCI_GZIP, bind(out2), { hash: true })).toEqual({ diffId: sha256(t) });
    expect(treeDiff(describeTree(out2, listed(SMALL)), describeTree(out, listed(SMALL)))).toEqual([]);
    expect(await applier.apply(layerFile(t), OCI_TAR, bind(fresh("nohash")), { hash: false })).toEqual({});
  });

  test("a layer whose file is still growing gives the same result; a failed download or an abort rejects", async () => {
    const items: TarItem[] = [...SMALL, { name: "big", data: Buffer.alloc(3_000_000, 7) }];
    const t = tar(items);
    const want = describeTree((await applyComplete(t, OCI_TAR)).out, listed(items));
    for (const [data, type] of [
      [t, OCI_TAR],
      [gzipSync(t), OCI_GZIP],
    ] as const) {
      const path = join(fresh("grow"), "blob");
      const g = growing(path, data.length);
      const out = fresh("grown");
      writeFileSync(path, "");
      const applied = applier.apply(g.file, type, bind(out), { hash: true });
      // The file moves while the apply is under way (the pull puts its ingest file in place): it reads on.
      renameSync(path, `${path}.placed`);
      await dribble(`${path}.placed`, data, g);
      g.finish();
      expect(await applied).toEqual({ diffId: sha256(t) });
      expect(treeDiff(describeTree(out, listed(items)), want)).toEqual([]);
    }
    // The download fails half-way: the apply rejects with its error.
    const path = join(fresh("fail"), "blob");
    const g = growing(path, t.length);
    writeFileSync(path, "");
    const applied = applier.apply(g.file, OCI_TAR, bind(fresh("failed")), { hash: true });
    await dribble(path, t, g, Math.floor(t.length / 2));
    g.fail(new Error("connection reset by peer"));
    await expect(applied).rejects.toThrow("connection reset by peer");
    // Aborted while waiting for bytes.
    const path2 = join(fresh("abort"), "blob");
    const g2 = growing(path2, t.length);
    writeFileSync(path2, "");
    const ac = new AbortController();
    const applied2 = applier.apply(g2.file, OCI_TAR, bind(fresh("aborted")), { hash: true, signal: ac.signal });
    await dribble(path2, t, g2, 100_000);
    ac.abort(new Error("pull cancelled"));
    await expect(applied2).rejects.toThrow("pull cancelled");
    // The worker is free again.
    expect((await applyComplete(t, OCI_TAR)).diffId).toBe(sha256(t));
  });

  test("truncated, corrupt and unsupported layers are refused", async () => {
    const t = tar(SMALL);
    const cut = t.subarray(0, 512 * 3 + 100);
    await expect(applyComplete(cut, OCI_TAR)).rejects.toThrow(LayerFormatError);
    await expect(applyComplete(gzipSync(t).subarray(0, 200), OCI_GZIP)).rejects.toThrow(LayerFormatError);
    const bad = Buffer.from(t);
    bad[0] = 0x41; // the checksum no longer matches
    await expect(applyComplete(bad, OCI_TAR)).rejects.toThrow(/checksum/);
    await expect(applyComplete(t, "application/vnd.oci.image.layer.v1.tar+zstd")).rejects.toThrow(
      UnsupportedLayerError,
    );
    // A name longer than PATH_MAX (containerd fails on it too), in a pax record.
    const deep = tar([{ name: "a/".repeat(3000), data: Buffer.from("x"), longName: "pax" }]);
    await expect(applyComplete(deep, OCI_TAR)).rejects.toThrow(LayerFormatError);
    // Ended at a header boundary (no zero blocks), and one zero block then EOF: accepted, as Go's reader does.
    expect((await applyComplete(tarEntries(SMALL), OCI_TAR)).diffId).toBe(sha256(tarEntries(SMALL)));
    const one = Buffer.concat([tarEntries(SMALL), Buffer.alloc(512)]);
    expect((await applyComplete(one, OCI_TAR)).diffId).toBe(sha256(one));
    // Bytes after the end are ignored (and hashed, as containerd hashes the whole stream).
    const trailing = Buffer.concat([t, Buffer.from("trailing garbage")]);
    expect((await applyComplete(trailing, OCI_TAR)).diffId).toBe(sha256(trailing));
  });

  test("nothing in an untrusted tar writes outside the snapshot", async () => {
    const outside = fresh("sentinel");
    writeFileSync(join(outside, "keep"), "keep");
    const cases: [string, TarItem[], typeof LayerFormatError | typeof UnsupportedLayerError][] = [
      ["../x", [{ name: "../x", data: Buffer.from("x") }], UnsupportedLayerError],
      ["a/../../x", [{ name: "a/../../x", data: Buffer.from("x") }], UnsupportedLayerError],
      [
        "a file through a symlink",
        [
          { name: "link", type: "symlink", link: outside },
          { name: "link/x", data: Buffer.from("x") },
        ],
        UnsupportedLayerError,
      ],
      [
        "a relative symlink out",
        [
          { name: "up", type: "symlink", link: "../../../../../../../../" },
          { name: "up/tmp/x", data: Buffer.from("x") },
        ],
        UnsupportedLayerError,
      ],
      ["a hardlink to /etc/passwd", [{ name: "pw", type: "link", link: "/etc/passwd" }], UnsupportedLayerError],
      ["a hardlink through ..", [{ name: "pw", type: "link", link: "../../../../etc/passwd" }], UnsupportedLayerError],
      [
        "a hardlink through a symlink",
        [
          { name: "l", type: "symlink", link: outside },
          { name: "pw", type: "link", link: "l/keep" },
        ],
        UnsupportedLayerError,
      ],
      ["a whiteout of ..", [{ name: "a/.wh...", data: Buffer.alloc(0) }], LayerFormatError],
    ];
    for (const [what, items, err] of cases) {
      const target = fresh("target");
      await expect(applyComplete(tar(items), OCI_TAR, bind(target)), what).rejects.toThrow(err);
      expect(readdirSync(outside), what).toEqual(["keep"]);
      expect(existsSync(join(dir, "x")), what).toBe(false);
    }
    // An absolute name is under the root, as containerd puts it.
    const target = fresh("abs");
    await applyComplete(tar([{ name: "/etc/abs", data: Buffer.from("a") }]), OCI_TAR, bind(target));
    expect(readdirSync(join(target, "etc"))).toEqual(["abs"]);
  });
});

async function applyComplete(t: Buffer, type: string, mounts?: Mount[]) {
  const out = fresh("out");
  const r = await applier.apply(layerFile(t), type, mounts ?? bind(out), { hash: true });
  return { out, diffId: r.diffId };
}

// ---- against containerd ----------------------------------------------------------------------------

const T = 1_600_000_000;
export const BASE: TarItem[] = [
  { name: "bin/", mtime: T + 1 },
  { name: "bin/sh", data: Buffer.from("sh"), mode: 0o755, mtime: T + 2 },
  { name: "bin/ls", type: "link", link: "bin/sh", mtime: T + 2 },
  { name: "dev/", mtime: T },
  { name: "dev/null", type: "char", major: 1, minor: 3, mode: 0o666 },
  { name: "dev/fifo", type: "fifo", mode: 0o600 },
  { name: "etc/", mode: 0o755, mtime: T + 3 },
  { name: "etc/passwd", data: Buffer.from("root:x:0:0\n"), mtime: T + 4 },
  // Hardlinks whose headers' modes and times differ from their targets': which of them containerd applies
  // depends on whether the link's name exists relative to its working directory (see target.ts).
  { name: "etc/pw2", type: "link", link: "etc/passwd", mode: 0o600, mtime: T + 30 },
  { name: "package.json", data: Buffer.from("{}") },
  { name: "pj2", type: "link", link: "package.json", mode: 0o600, mtime: T + 31 },
  { name: "etc/conf.d/", mode: 0o750, uid: 5, gid: 6, mtime: T + 5, pax: { "SCHILY.xattr.user.dir": "conf" } },
  { name: "etc/conf.d/a.conf", data: Buffer.from("a") },
  { name: "usr/lib/libfoo.so.1", data: Buffer.alloc(5000, 1) },
  { name: "usr/lib/libfoo.so", type: "symlink", link: "libfoo.so.1", mtime: T + 6 },
  { name: "var/lib/olddir/", mtime: T },
  { name: "var/lib/olddir/f", data: Buffer.from("f") },
  { name: "opt/", mtime: T },
  { name: "opt/file-to-dir", data: Buffer.from("file"), mtime: T },
  { name: "data/", mtime: T + 7 },
  { name: "data/keep", data: Buffer.from("keep") },
  { name: "data/gone", data: Buffer.from("gone") },
  { name: "data/opq/", mtime: T + 8 },
  { name: "data/opq/x", data: Buffer.from("x") },
  { name: "home/user/", mode: 0o700, uid: 1000, gid: 1000, mtime: T + 9 },
  { name: ".wh.nothing", data: Buffer.alloc(0) },
];

const LONG = `deep/${"d".repeat(60)}/${"e".repeat(60)}/file-with-a-long-name`;
export const SECOND: TarItem[] = [
  { name: "new/", mtime: T + 10 },
  { name: "new/file.txt", data: Buffer.from("new file\n"), mtime: T + 11 },
  { name: "new/link", type: "symlink", link: "../etc/passwd", uid: 3, gid: 4, mtime: T + 12 },
  { name: "new/abs", type: "symlink", link: "/etc/passwd" },
  { name: "new/h1", data: Buffer.from("hard"), mode: 0o640, uid: 11, gid: 12 },
  { name: "new/h2", type: "link", link: "new/h1" },
  { name: "a/b/c/d/file", data: Buffer.from("nested") }, // parents not listed, absent below
  { name: "etc/conf.d/b.conf", data: Buffer.from("b") }, // parents not listed, present below
  { name: "data/", mtime: T + 20 },
  { name: "data/.wh.gone", data: Buffer.alloc(0) },
  { name: "data/opq/", mtime: T + 21 },
  { name: "data/opq/.wh..wh..opq", data: Buffer.alloc(0) },
  { name: "data/opq/z", data: Buffer.from("z") },
  { name: "var/lib/olddir", data: Buffer.from("now a file"), mtime: T + 22 },
  { name: "opt/file-to-dir/", mode: 0o711, mtime: T + 23 },
  { name: "opt/file-to-dir/inner", data: Buffer.from("inner") },
  { name: "bin/", mtime: T + 24 },
  { name: "bin/su", data: Buffer.from("su"), mode: 0o4755, uid: 0, gid: 0, mtime: T + 25 },
  { name: "usr/share/", mode: 0o2775, gid: 50 },
  { name: "tmp/", mode: 0o1777 },
  { name: "etc/", mtime: T + 26 },
  { name: "etc/shadow", data: Buffer.from("root:*:1::::::\n"), mode: 0o640, gid: 42, mtime: 1_234_567_890 },
  { name: "nobody", data: Buffer.from("n"), uid: 65534, gid: 65534, mode: 0o444, mtime: 1 },
  { name: LONG, data: Buffer.from("long") },
  { name: `${LONG}-pax`, data: Buffer.from("long pax"), longName: "pax" },
  { name: "empty", data: Buffer.alloc(0) },
  { name: "xattr", data: Buffer.from("x"), pax: { "SCHILY.xattr.user.shoal": "yes" } },
  { name: "home/user/.profile", data: Buffer.from("p"), uid: 1000, gid: 1000, mode: 0o600 },
];

/** Directories a layer lists (their mtimes are the layer's; others' are when they were made). */
function listed(items: TarItem[]): (rel: string) => boolean {
  const dirs = new Set(
    items.filter((i) => i.name.endsWith("/")).map((i) => i.name.replace(/^\.?\//, "").replace(/\/$/, "")),
  );
  return (rel) => dirs.has(rel);
}

describe.skipIf(!CAN_RUN_CONTAINERS)("LayerApplier against containerd's Diff.Apply", () => {
  let cd: Awaited<ReturnType<typeof testContainerd>> | undefined;
  const mounted: string[] = [];
  const lease = `shoal-test-${randomUUID()}`;

  beforeAll(async () => {
    cd = await testContainerd(join(dir, "cd"));
    await cd.containerd.call(cd.containerd.leases, cd.containerd.leases.create, { id: lease, labels: {} });
  });

  afterAll(async () => {
    for (const m of mounted.reverse()) execFileSync("umount", [m]);
    await cd?.stop();
  });

  async function prepare(key: string, parent: string): Promise<Mount[]> {
    const c = cd!.containerd;
    const r = await c.call(
      c.snapshots,
      c.snapshots.prepare,
      { snapshotter: SNAPSHOTTER, key, parent, labels: {} },
      { lease },
    );
    return r.mounts;
  }

  async function remove(key: string): Promise<void> {
    const c = cd!.containerd;
    await c.call(c.snapshots, c.snapshots.remove, { snapshotter: SNAPSHOTTER, key });
  }

  async function commit(key: string, name: string): Promise<void> {
    const c = cd!.containerd;
    await c.call(c.snapshots, c.snapshots.commit, { snapshotter: SNAPSHOTTER, name, key, labels: {} }, { lease });
  }

  async function blob(
    t: Buffer,
  ): Promise<{ mediaType: string; digest: string; size: number; annotations: Record<string, string> }> {
    const digest = sha256(t);
    await new ContentStore(cd!.containerd).write({ digest, size: t.length }, t, lease);
    return { mediaType: OCI_TAR, digest, size: t.length, annotations: {} };
  }

  async function containerdApply(t: Buffer, mounts: Mount[]): Promise<string> {
    const c = cd!.containerd;
    const r = await c.call(c.diff, c.diff.apply, { diff: await blob(t), mounts, payloads: {} });
    return r.applied!.digest;
  }

  /** The directory a snapshot's layer is written to. */
  function upper(mounts: Mount[]): string {
    const m = mounts[0]!;
    if (m.type === "bind") return m.source;
    return m.options.find((o) => o.startsWith("upperdir="))!.slice("upperdir=".length);
  }

  function mount(mounts: Mount[]): string {
    const at = fresh("merged");
    execFileSync("mount", ["-t", "overlay", "overlay", "-o", mounts[0]!.options.join(","), at]);
    mounted.push(at);
    return at;
  }

  test("a base layer and a second layer come out as containerd's, upper dirs and merged views", async () => {
    const base = tar(BASE);
    const second = tar(SECOND);
    const id = randomUUID().slice(0, 8);
    // containerd's chain
    const cm1 = await prepare(`cd-1-${id}`, "");
    const cdBaseId = await containerdApply(base, cm1);
    await commit(`cd-1-${id}`, `cd-base-${id}`);
    const cm2 = await prepare(`cd-2-${id}`, `cd-base-${id}`);
    const cdSecondId = await containerdApply(second, cm2);
    // shoald's
    const sm1 = await prepare(`sh-1-${id}`, "");
    const r1 = await applier.apply(layerFile(base), OCI_TAR, sm1, { hash: true });
    await commit(`sh-1-${id}`, `sh-base-${id}`);
    const sm2 = await prepare(`sh-2-${id}`, `sh-base-${id}`);
    expect(sm2[0]!.type).toBe("overlay");
    const r2 = await applier.apply(layerFile(gzipSync(second)), OCI_GZIP, sm2, { hash: true });

    expect([r1.diffId, r2.diffId]).toEqual([cdBaseId, cdSecondId]);
    const cdBase = describeTree(upper(cm1), listed(BASE));
    expect(treeDiff(describeTree(upper(sm1), listed(BASE)), cdBase)).toEqual([]);
    const cdUpper = describeTree(upper(cm2), listed(SECOND));
    expect(treeDiff(describeTree(upper(sm2), listed(SECOND)), cdUpper)).toEqual([]);
    // The cases the layer was made of are in it (the comparison compared something).
    expect(cdUpper.get("data/gone")).toMatch(/^char 0000 0:0 rdev=0:0/);
    expect(cdUpper.get("data/opq")).toMatch(/trusted.overlay.opaque=0x79/);
    expect(cdUpper.get("var/lib/olddir")).toMatch(/^file /);
    expect(cdUpper.get("opt/file-to-dir")).toMatch(/^dir 0711 /);
    expect(cdUpper.get("etc/conf.d")).toMatch(/^dir 0750 5:6 .*user.dir=0x636f6e66/); // copied up from below
    expect(cdUpper.get("bin/su")).toMatch(/^file 4755 /);
    expect(cdUpper.get("new/h2")).toMatch(/nlink=2/);
    expect(cdUpper.get(LONG)).toMatch(/^file /);
    expect(cdUpper.get("xattr")).toMatch(/user.shoal=0x796573/);

    const merged = [describeTree(mount(cm2), listed(SECOND)), describeTree(mount(sm2), listed(SECOND))];
    expect(treeDiff(merged[1]!, merged[0]!)).toEqual([]);
    expect(merged[0]!.has("data/gone")).toBe(false);
    expect(merged[0]!.has("data/opq/x")).toBe(false);
  });

  test("tars GNU tar writes (gnu and posix formats) of real trees come out as containerd's", async () => {
    const gnuTar = (format: string, dir: string, what: string) =>
      execFileSync("tar", [`--format=${format}`, "-C", dir, "-cf", "-", what], { maxBuffer: 1 << 28 });
    const layers = [
      gnuTar("gnu", "/usr/share", "zoneinfo"),
      gnuTar("posix", "/usr/lib/x86_64-linux-gnu", "perl-base"),
      gnuTar("posix", "/usr/share", "zoneinfo/Europe"),
    ].filter((l) => l.length > 10_240);
    const id = randomUUID().slice(0, 8);
    let parents = ["", ""];
    for (const [i, layer] of layers.entries()) {
      const theirs = await prepare(`gt-c-${i}-${id}`, parents[0]!);
      const mine = await prepare(`gt-s-${i}-${id}`, parents[1]!);
      const cdId = await containerdApply(layer, theirs);
      const r = await applier.apply(layerFile(gzipSync(layer)), OCI_GZIP, mine, { hash: true });
      expect(r.diffId).toBe(cdId);
      const theirTree = describeTree(upper(theirs));
      expect(theirTree.size).toBeGreaterThan(10);
      expect(treeDiff(describeTree(upper(mine)), theirTree)).toEqual([]);
      await commit(`gt-c-${i}-${id}`, `gt-c-${i}-${id}-done`);
      await commit(`gt-s-${i}-${id}`, `gt-s-${i}-${id}-done`);
      parents = [`gt-c-${i}-${id}-done`, `gt-s-${i}-${id}-done`];
    }
  }, 120_000);

  test("random layers over a base: the same as containerd's, or left to it", async () => {
    const id = randomUUID().slice(0, 8);
    const base = tar([
      { name: "a/", mode: 0o750, uid: 3 },
      { name: "a/b", data: Buffer.from("ab") },
      { name: "a/d/", mode: 0o700 },
      { name: "a/d/x", data: Buffer.from("adx") },
      { name: "c", type: "symlink", link: "a" },
      { name: "d", data: Buffer.from("d") },
      { name: "e/" },
      { name: "e/f", data: Buffer.from("ef") },
    ]);
    const m = await prepare(`fz-${id}`, "");
    await containerdApply(base, m);
    await commit(`fz-${id}`, `fz-base-${id}`);
    const names = [
      "a",
      "b",
      "d",
      "e",
      "a/b",
      "a/c",
      "a/d",
      "a/d/x",
      "e/f",
      "e/g",
      "f/g",
      "c/x",
      "./a/b",
      "/e/f",
      "a/../b",
    ];
    const whiteouts = [".wh.a", ".wh.d", "a/.wh.b", "a/.wh.d", "e/.wh.f", "a/.wh..wh..opq", "e/.wh..wh..opq", ".wh.zz"];
    const entry = randomEntry({ names, whiteouts, dirMtimes: [T, T + 1], links: ["a", "../x", "/e"], special: true });
    let n = 0;
    const outcomes = new Map<string, number>();
    /** Applies one layer over parents (containerd's chain, the applier's) and compares. */
    const step = async (items: TarItem[], parents: string[], k: string, made: string[]): Promise<string> => {
      const layer = tar(items);
      const theirs = await prepare(`fz-c-${k}`, parents[0]!);
      const mine = await prepare(`fz-s-${k}`, parents[1]!);
      made.push(`fz-c-${k}`, `fz-s-${k}`);
      const cdResult = await containerdApply(layer, theirs).then(
        (d) => ({ ok: true as const, d }),
        (err: Error) => ({ ok: false as const, err }),
      );
      const ours = await applier.apply(layerFile(layer), OCI_TAR, mine, { hash: true }).then(
        (r) => ({ ok: true as const, d: r.diffId }),
        (err: Error) => ({ ok: false as const, err }),
      );
      const what = items.map((i) => `${i.name}${i.type ? `:${i.type}` : ""}${i.link ? `->${i.link}` : ""}`).join(", ");
      if (!ours.ok && ours.err instanceof UnsupportedLayerError)
        return `left: ${ours.err.message.replace(/^[^:]*: /, "")}`;
      if (ours.ok !== cdResult.ok) {
        throw new Error(
          `${what}: ours ${ours.ok ? "applied" : ours.err.message}, containerd ${cdResult.ok ? "applied" : cdResult.err.message}`,
        );
      }
      if (!ours.ok) return "both refused";
      expect(ours.d).toBe(cdResult.ok ? cdResult.d : undefined);
      const noDirTimes = () => false;
      expect(treeDiff(describeTree(upper(mine), noDirTimes), describeTree(upper(theirs), noDirTimes)), what).toEqual(
        [],
      );
      return "the same";
    };
    await fc.assert(
      // A third of the layers are base layers (a bind mount: whiteouts remove, nothing below).
      // One or two random layers, over the base or (a third of the time) with none below (a bind mount:
      // whiteouts remove); the second over the first where that one came out the same.
      fc.asyncProperty(
        fc.array(fc.array(entry, { minLength: 1, maxLength: 6 }), { minLength: 1, maxLength: 2 }),
        fc.boolean(),
        async (chain, over) => {
          const k = `${id}-${n++}`;
          let parents = over || n % 3 !== 0 ? [`fz-base-${id}`, `fz-base-${id}`] : ["", ""];
          const made: string[] = [];
          try {
            for (const [i, items] of chain.entries()) {
              const outcome = await step(items, parents, `${k}-${i}`, made);
              outcomes.set(outcome, (outcomes.get(outcome) ?? 0) + 1);
              if (outcome !== "the same") break;
              await commit(`fz-c-${k}-${i}`, `fz-c-${k}-${i}-done`);
              await commit(`fz-s-${k}-${i}`, `fz-s-${k}-${i}-done`);
              made.splice(-2, 2, `fz-c-${k}-${i}-done`, `fz-s-${k}-${i}-done`); // committed: their new names
              parents = [`fz-c-${k}-${i}-done`, `fz-s-${k}-${i}-done`];
            }
          } finally {
            for (const key of made.reverse()) await remove(key);
          }
        },
      ),
      { numRuns: Number(process.env.LAYER_FUZZ_RUNS ?? 200), seed: Number(process.env.LAYER_FUZZ_SEED ?? 20261208) },
    );
    // The alphabet is adversarial (hardlinks to lower files, paths through the base's symlink c, whiteouts
    // of what the layer wrote: all left to containerd by design); still, a good part is applied here.
    expect(outcomes.get("the same") ?? 0, JSON.stringify([...outcomes])).toBeGreaterThan(40);
  }, 240_000);

  test("what the applier leaves to containerd: a hardlink to a lower layer's file, a file through a lower symlink", async () => {
    const id = randomUUID().slice(0, 8);
    const base = tar([
      { name: "etc/" },
      { name: "etc/passwd", data: Buffer.from("root\n") },
      { name: "lib", type: "symlink", link: "usr/lib" },
      { name: "usr/lib/" },
    ]);
    const m1 = await prepare(`lo-1-${id}`, "");
    await containerdApply(base, m1);
    await commit(`lo-1-${id}`, `lo-base-${id}`);
    // containerd's link() fails on the first; on the second it makes lib a directory in the upper dir (its
    // mkparent), hiding the lower symlink. The fallback gives the same, as it is containerd's.
    const cases: [string, Buffer, RegExp][] = [
      ["hardlink", tar([{ name: "etc/pw2", type: "link", link: "etc/passwd" }]), /^error: .*no such file or directory/],
      ["through a symlink", tar([{ name: "lib/x.so", data: Buffer.from("x") }]), /^lib,dir .*; lib\/x.so,file /],
    ];
    for (const [what, layer, want] of cases) {
      const mine = await prepare(`lo-s-${what.replaceAll(" ", "-")}-${id}`, `lo-base-${id}`);
      await expect(applier.apply(layerFile(layer), OCI_TAR, mine, { hash: true }), what).rejects.toThrow(
        UnsupportedLayerError,
      );
      // What containerd makes of it (the fallback's result).
      const theirs = await prepare(`lo-c-${what.replaceAll(" ", "-")}-${id}`, `lo-base-${id}`);
      const r = await containerdApply(layer, theirs).then(
        () => [...describeTree(upper(theirs)).entries()].join("; "),
        (err: Error) => `error: ${err.message}`,
      );
      expect(r, what).toMatch(want);
    }
  });
});
