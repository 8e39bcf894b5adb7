// Where a layer's entries go, written as containerd 1.6's archive.Apply writes them (archive/tar.go,
// applyNaive + createTarFile; for an overlay snapshot straight into its upperdir with
// OverlayConvertWhiteout and the lowerdirs as parents). Synchronous: it runs in the applier's worker.
//
// Safety: names are cleaned first (names.ts); every parent directory of an entry is checked to be a real
// directory under the root (lstat, remembered), nothing is opened through a symlink (O_NOFOLLOW, O_EXCL
// after removing what was there), and anything containerd would resolve through a symlink is left to it
// (UnsupportedLayerError).

import { execFile, spawnSync } from "node:child_process";
import {
  chmodSync,
  closeSync,
  constants,
  fchmodSync,
  fchownSync,
  futimesSync,
  lchownSync,
  linkSync,
  lstatSync,
  lutimesSync,
  mkdirSync,
  openSync,
  readdirSync,
  rmSync,
  type Stats,
  symlinkSync,
  writeSync,
} from "node:fs";
import { promisify } from "node:util";
import { LayerFormatError, UnsupportedLayerError } from "./errors.js";
import { type Entry, xattrsOf } from "./header.js";
import { cleanLink, cleanName, dirOf } from "./names.js";

/**
 * Where to write: a bind mount's directory (a base layer) or an overlay's upperdir over its lowerdirs; or,
 * `staged`, a directory standing in for either before the snapshot can be prepared (its parent is not
 * committed yet): the lowers are not known, and the parents made for entries are listed (`implicit`) for
 * place() to give them the lowers' attributes once they are.
 */
export interface TargetSpec {
  kind: "bind" | "overlay";
  root: string;
  /** Top-most first, as in the overlay's lowerdir option. */
  lowers: string[];
  staged?: boolean;
}

const OPEN_FLAGS = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW;
const execFileAsync = promisify(execFile);
const MKNOD = "/usr/bin/mknod";
const SETFATTR = "/usr/bin/setfattr";
const GETFATTR = "/usr/bin/getfattr";

function lstatOrUndefined(p: string): Stats | undefined {
  try {
    return lstatSync(p);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === "ENOENT") return undefined;
    if (code === "ENOTDIR") throw new UnsupportedLayerError(`${p}: a parent is not a directory`);
    throw err;
  }
}

function run(argv: string[], what: string): void {
  const r = spawnSync(argv[0]!, argv.slice(1), { stdio: ["ignore", "ignore", "pipe"] });
  if (r.error !== undefined) throw new UnsupportedLayerError(`${what}: ${argv[0]} could not run (${r.error.message})`);
  if (r.status !== 0) throw new UnsupportedLayerError(`${what}: ${r.stderr.toString().trim()}`);
}

/** A time as containerd bounds it: the epoch if out of range (boundTime). */
function bound(t: number): number {
  return t < 0 || t > 253402300799 ? 0 : t;
}

/** The [atime, mtime] containerd sets: the later of the two, and the entry's mtime. */
function entryTimes(e: Entry): [number, number] {
  return [bound(Math.max(e.mtime, e.atime)), bound(e.mtime)];
}

export class Target {
  /** Relative paths known to be real directories under the root ("" is the root). */
  private readonly dirs = new Set<string>([""]);
  /** Directories of this layer, their times set at the end (writing into them changes them). */
  private readonly dirTimes: [string, number, number][] = [];
  /** What this layer wrote (a base layer's opaque marker hides nothing else). */
  private readonly unpacked = new Set<string>();
  /** Staged: the parents made for entries and not listed by the layer, in the order made (parents first). */
  readonly implicit = new Set<string>();
  private fd: number | undefined;
  private current: { entry: Entry; rel: string; path: string } | undefined;

  constructor(private readonly spec: TargetSpec) {}

  /** Remembers what a base layer wrote (only its opaque markers ask). */
  private wrote(rel: string): void {
    if (this.spec.kind === "bind") this.unpacked.add(rel);
  }

  private abs(rel: string): string {
    return rel === "" ? this.spec.root : `${this.spec.root}/${rel}`;
  }

  /** Starts an entry; for a regular file, its data follows through write() and finish(). */
  begin(e: Entry): void {
    if (e.type === "g") return; // a pax global header: nothing to write
    const rel = cleanName(e.name);
    if (rel === "") return; // the root itself: containerd ignores it
    const parent = dirOf(rel);
    const base = parent === "" ? rel : rel.slice(parent.length + 1);
    this.ensureDir(parent);
    if (base.startsWith(".wh.")) {
      this.whiteout(parent, base, e);
      return;
    }
    const path = this.abs(rel);
    const existing = lstatOrUndefined(path);
    if (existing !== undefined && !(existing.isDirectory() && e.type === "5")) this.remove(rel, existing);
    switch (e.type) {
      case "0":
        this.fd = openSync(path, OPEN_FLAGS, e.mode & 0o777);
        this.current = { entry: e, rel, path };
        return; // attributes once the data is in
      case "5":
        if (existing === undefined || !existing.isDirectory()) mkdirSync(path, e.mode & 0o777);
        this.dirs.add(rel);
        // Listed now: its own attributes, not a lower's.
        this.implicit.delete(rel);
        this.dirTimes.push([rel, ...entryTimes(e)]);
        break;
      case "2":
        symlinkSync(e.linkname, path);
        break;
      case "1":
        this.hardlink(e, rel, path);
        break;
      case "3":
      case "4":
        run([MKNOD, "-m", "0", "--", path, e.type === "3" ? "c" : "b", `${e.devmajor}`, `${e.devminor}`], rel);
        break;
      case "6":
        run([MKNOD, "-m", "0", "--", path, "p"], rel);
        break;
      default:
        throw new UnsupportedLayerError(`${rel}: tar entry type ${JSON.stringify(e.type)}`);
    }
    this.attributes(e, rel, path);
  }

  /** Writes the regular file's next bytes. */
  write(b: Buffer): void {
    let at = 0;
    while (at < b.length) at += writeSync(this.fd!, b, at, b.length - at);
  }

  /** Ends a regular file. */
  finish(): void {
    const c = this.current;
    if (c === undefined) return;
    const fd = this.fd!;
    this.fd = undefined;
    this.current = undefined;
    try {
      // The fd is the file created: ownership then mode (chown clears setuid), then the xattrs and times.
      fchownSync(fd, c.entry.uid, c.entry.gid);
      this.xattrs(c.entry, c.rel, c.path);
      fchmodSync(fd, c.entry.mode & 0o7777);
      const [atime, mtime] = entryTimes(c.entry);
      futimesSync(fd, atime, mtime);
    } finally {
      closeSync(fd);
    }
    this.wrote(c.rel);
  }

  /** Sets the directories' times, last (as containerd does). */
  end(): void {
    for (const [rel, atime, mtime] of this.dirTimes) {
      // A directory a later entry replaced (or put under a symlink): containerd sets these times on
      // whatever the name resolves to now, or fails; let it.
      if (!this.dirs.has(rel)) throw new UnsupportedLayerError(`${rel}: a directory of this layer replaced in it`);
      lutimesSync(this.abs(rel), atime, mtime);
    }
  }

  /** Closes a file left open by a failed apply. */
  abandon(): void {
    if (this.fd !== undefined) closeSync(this.fd);
    this.fd = undefined;
  }

  private attributes(e: Entry, rel: string, path: string): void {
    lchownSync(path, e.uid, e.gid);
    this.xattrs(e, rel, path);
    // No lchmod: a symlink keeps its mode. The path was just made (or lstat'd as a directory) by this
    // writer, in a directory checked to be real: no symlink for chmod to follow (nor an open(), which
    // would open a device node's driver).
    // A hardlink's header changes the inode it shares with its target, unless that is a symlink: containerd
    // (its handleLChmod: os.Lstat(linkname), measured to resolve in the layer's root) skips those.
    const touch = e.type !== "1" || !lstatSync(path).isSymbolicLink();
    if (e.type !== "2" && touch) chmodSync(path, e.mode & 0o7777);
    const [atime, mtime] = entryTimes(e);
    if (touch) lutimesSync(path, atime, mtime);
    this.wrote(rel);
  }

  private xattrs(e: Entry, rel: string, path: string): void {
    for (const [key, value] of xattrsOf(e.pax)) {
      run([SETFATTR, "-h", "-n", key, "-v", `0s${value.toString("base64")}`, "--", path], `${rel}: xattr ${key}`);
    }
  }

  /** Removes what an entry replaces (in the root only: a lower's entry is hidden by the new one). */
  private remove(rel: string, st: Stats): void {
    rmSync(this.abs(rel), { recursive: true, force: true });
    if (st.isDirectory()) {
      for (const d of this.dirs) if (d === rel || d.startsWith(`${rel}/`)) this.dirs.delete(d);
      for (const d of this.implicit) if (d === rel || d.startsWith(`${rel}/`)) this.implicit.delete(d);
    }
  }

  private hardlink(e: Entry, rel: string, path: string): void {
    const target = cleanLink(e.linkname);
    if (target === undefined) throw new UnsupportedLayerError(`${rel}: a hardlink to ${JSON.stringify(e.linkname)}`);
    this.checkDir(dirOf(target));
    const st = lstatOrUndefined(this.abs(target));
    // A target only in a lower layer, or a directory: containerd's link() decides (it fails).
    if (st === undefined || st.isDirectory()) {
      throw new UnsupportedLayerError(`${rel}: a hardlink to ${target}, which this layer has not written`);
    }
    linkSync(this.abs(target), path);
  }

  private whiteout(parent: string, base: string, e: Entry): void {
    if (base === ".wh..wh..opq") {
      if (this.spec.kind === "overlay") {
        run([SETFATTR, "-n", "trusted.overlay.opaque", "-v", "y", "--", this.abs(parent)], `${parent}: opaque`);
      } else {
        // A base layer: containerd removes what this layer did not write (only directories it made as parents).
        for (const child of readdirSync(this.abs(parent))) {
          const rel = parent === "" ? child : `${parent}/${child}`;
          if (!this.unpacked.has(rel)) throw new UnsupportedLayerError(`${parent}: an opaque marker over ${rel}`);
        }
      }
      return;
    }
    const orig = base.slice(4);
    if (orig === "" || orig === "." || orig === "..") throw new LayerFormatError(`invalid whiteout name ${base}`);
    if (orig.startsWith(".wh.")) throw new UnsupportedLayerError(`whiteout ${base}`);
    const rel = parent === "" ? orig : `${parent}/${orig}`;
    const path = this.abs(rel);
    if (this.spec.kind === "bind") {
      const st = lstatOrUndefined(path);
      if (st !== undefined) this.remove(rel, st);
      return;
    }
    // Overlay's whiteout: a 0:0 character device, owned as the marker's header says.
    run([MKNOD, "-m", "0", "--", path, "c", "0", "0"], `whiteout ${rel}`);
    lchownSync(path, e.uid, e.gid);
  }

  /** Makes sure rel is a real directory under the root, creating it (and its parents) as containerd's
   *  mkparent does: with the attributes of the first lower that has it. */
  private ensureDir(rel: string): void {
    if (this.dirs.has(rel)) return;
    this.ensureDir(dirOf(rel));
    const path = this.abs(rel);
    const st = lstatOrUndefined(path);
    if (st !== undefined) {
      if (st.isSymbolicLink()) throw new UnsupportedLayerError(`${rel}: a symlink on an entry's path`);
      if (!st.isDirectory()) throw new LayerFormatError(`${rel} is not a directory, yet the layer writes into it`);
      this.dirs.add(rel);
      return;
    }
    mkdirSync(path, 0o755);
    this.dirs.add(rel);
    if (this.spec.staged) {
      this.implicit.add(rel);
      return;
    }
    fromLowers(rel, path, this.spec.lowers);
  }

  /** Checks that rel is a real directory under the root (a hardlink target's parent), creating nothing. */
  private checkDir(rel: string): void {
    if (this.dirs.has(rel)) return;
    this.checkDir(dirOf(rel));
    const st = lstatOrUndefined(this.abs(rel));
    if (st === undefined || !st.isDirectory()) {
      throw new UnsupportedLayerError(`${rel}: not a directory of this layer (a hardlink's target)`);
    }
    this.dirs.add(rel);
  }
}

/** The first lower that has rel, and what it has there (a directory, or what hides the path); undefined if
 *  none has it. UnsupportedLayerError if the path goes through a symlink. */
function inLowers(rel: string, lowers: string[]): { lower: string; st: Stats } | undefined {
  for (const lower of lowers) {
    const st = lowerStat(lower, rel);
    if (st === undefined) continue;
    if (st.isSymbolicLink()) throw new UnsupportedLayerError(`${rel}: a symlink in a lower layer on an entry's path`);
    return { lower, st };
  }
  return undefined;
}

/** A made parent's owner, mode and times from the lower's directory (`filled`: its mtime is kept). */
function takeAttributes(path: string, l: Stats, filled: boolean): void {
  lchownSync(path, l.uid, l.gid);
  chmodSync(path, l.mode & 0o7777);
  lutimesSync(path, l.atime, filled ? lstatSync(path).mtime : l.mtime);
}

/**
 * A parent made for an entry (at `path`) takes the attributes of the same directory in the first lower
 * that has it, as containerd's mkparent makes it; UnsupportedLayerError if the path goes through a symlink.
 */
export function fromLowers(rel: string, path: string, lowers: string[]): void {
  const l = inLowers(rel, lowers);
  if (!l?.st.isDirectory()) return;
  takeAttributes(path, l.st, false);
  copyXattrs(`${l.lower}/${rel}`, path, rel);
}

/**
 * The same for a parent a staged layer made, placed (on shoald's thread: its programs run without blocking
 * it). Its entries are in it already: it keeps the mtime they gave it, as the directory made before them
 * ends up with.
 */
export async function fromLowersPlaced(rel: string, path: string, lowers: string[]): Promise<void> {
  const l = inLowers(rel, lowers);
  if (!l?.st.isDirectory()) return;
  takeAttributes(path, l.st, true);
  const what = `${rel}: the xattrs of the lower directory`;
  const out = await execFileAsync(GETFATTR, getfattrArgs(`${l.lower}/${rel}`)).catch((err: Error) => {
    throw new UnsupportedLayerError(`${what} could not be read (${err.message})`);
  });
  for (const argv of setfattrCalls(out.stdout, path)) {
    await execFileAsync(argv[0]!, argv.slice(1)).catch((err: Error) => {
      throw new UnsupportedLayerError(`${what} could not be copied (${err.message})`);
    });
  }
}

const getfattrArgs = (from: string): string[] => [
  "-h",
  "-d",
  "-m",
  "-",
  "-e",
  "base64",
  "--absolute-names",
  "--",
  from,
];

/** The setfattr calls that give `to` the xattrs getfattr printed of a lower directory, but overlay's own
 *  (containerd's copyUpXAttrs). */
function setfattrCalls(printed: string, to: string): string[][] {
  const calls: string[][] = [];
  for (const line of printed.split("\n")) {
    const eq = line.indexOf("=");
    if (line.startsWith("#") || eq <= 0 || line.startsWith("trusted.overlay.")) continue;
    const key = line.slice(0, eq);
    let value = line.slice(eq + 1);
    if (value.startsWith('"')) value = `0s${Buffer.from(value.slice(1, -1)).toString("base64")}`;
    calls.push([SETFATTR, "-h", "-n", key, "-v", value, "--", to]);
  }
  return calls;
}

/** Copies a lower directory's xattrs through getfattr and setfattr (Node has neither call): one spawn per
 *  parent made, which layers that list their directories (as docker's do) never need. */
function copyXattrs(from: string, to: string, rel: string): void {
  const r = spawnSync(GETFATTR, getfattrArgs(from));
  if (r.error !== undefined || r.status !== 0) {
    throw new UnsupportedLayerError(`${rel}: the xattrs of the lower directory could not be read`);
  }
  for (const argv of setfattrCalls(r.stdout.toString(), to)) run(argv, `${rel}: xattr ${argv[4]}`);
}

/** lstat of rel in a lower layer, every component before the last a real directory; undefined if absent. */
export function lowerStat(lower: string, rel: string): Stats | undefined {
  const parts = rel.split("/");
  let path = lower;
  for (let i = 0; i < parts.length; i++) {
    path = `${path}/${parts[i]}`;
    const st = lstatOrUndefined(path);
    if (st === undefined || i === parts.length - 1) return st;
    if (st.isSymbolicLink()) throw new UnsupportedLayerError(`${rel}: a symlink in a lower layer on an entry's path`);
    if (!st.isDirectory()) throw new UnsupportedLayerError(`${rel}: a lower layer has a file on an entry's path`);
  }
  return undefined;
}
