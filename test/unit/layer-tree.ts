// Describes a directory tree entry by entry, for comparing what two layer appliers wrote: type, mode,
// owner, size, content hash, link target, device numbers, hardlink count, mtimes, xattrs (overlay's own
// trusted.overlay.* ones left out, except the opaque marker).

import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { lstatSync, readdirSync, readFileSync, readlinkSync } from "node:fs";
import { join } from "node:path";

/** xattrs of every entry under root, by path relative to root. */
function xattrs(root: string): Map<string, string[]> {
  const out = new Map<string, string[]>();
  const r = spawnSync("getfattr", ["-R", "-P", "-d", "-m", "-", "-e", "hex", "--absolute-names", root]);
  let file = "";
  for (const line of r.stdout.toString().split("\n")) {
    if (line.startsWith("# file: ")) {
      file = line.slice("# file: ".length).slice(root.length + 1);
    } else if (line.includes("=")) {
      const key = line.slice(0, line.indexOf("="));
      if (key.startsWith("trusted.overlay.") && key !== "trusted.overlay.opaque") continue;
      out.set(file, [...(out.get(file) ?? []), line]);
    }
  }
  return out;
}

/**
 * One line per entry under root. `dirMtimes`: directories whose mtime is compared (a directory the layer
 * does not list is made as a parent, and its mtime is the time of that, on either side).
 */
export function describeTree(root: string, dirMtimes: (rel: string) => boolean = () => true): Map<string, string> {
  const out = new Map<string, string>();
  const xa = xattrs(root);
  const walk = (rel: string): void => {
    for (const name of readdirSync(join(root, rel)).sort()) {
      const r = rel === "" ? name : `${rel}/${name}`;
      const p = join(root, r);
      const st = lstatSync(p, { bigint: false });
      const mode = (st.mode & 0o7777).toString(8).padStart(4, "0");
      let d = `${mode} ${st.uid}:${st.gid}`;
      const mtime = Math.floor(st.mtimeMs / 1000);
      if (st.isDirectory()) d = `dir ${d}${dirMtimes(r) ? ` mtime=${mtime}` : ""}`;
      else if (st.isFile()) {
        const h = createHash("sha256").update(readFileSync(p)).digest("hex").slice(0, 16);
        d = `file ${d} size=${st.size} ${h} nlink=${st.nlink} mtime=${mtime}`;
      } else if (st.isSymbolicLink()) d = `symlink ${d} -> ${readlinkSync(p)} mtime=${mtime}`;
      else if (st.isCharacterDevice() || st.isBlockDevice()) {
        // A whiteout's mtime is when it was made: not compared.
        const rdev = `${Math.floor(st.rdev / 256) & 0xfff}:${(st.rdev & 0xff) | ((st.rdev >> 12) & 0xfff00)}`;
        d = `${st.isCharacterDevice() ? "char" : "block"} ${d} rdev=${rdev}${st.rdev === 0 ? "" : ` mtime=${mtime}`}`;
      } else if (st.isFIFO()) d = `fifo ${d} mtime=${mtime}`;
      const x = xa.get(r);
      if (x !== undefined) d += ` xattrs=${x.join(",")}`;
      out.set(r, d);
      if (st.isDirectory()) walk(r);
    }
  };
  walk("");
  return out;
}

/** The lines where two descriptions differ ("path: a | b"). */
export function treeDiff(a: Map<string, string>, b: Map<string, string>): string[] {
  const diffs: string[] = [];
  for (const k of new Set([...a.keys(), ...b.keys()])) {
    if (a.get(k) !== b.get(k)) diffs.push(`${k}: ${a.get(k) ?? "(absent)"} | ${b.get(k) ?? "(absent)"}`);
  }
  return diffs.sort();
}
