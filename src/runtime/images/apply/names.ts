// Tar names made into paths under a root, as Go's filepath.Clean would make them, without the
// resolution containerd does afterwards: a name that climbs out of the root ("../x") is left to containerd
// (which clamps it to the root), never written here.

import { LayerFormatError, UnsupportedLayerError } from "./errors.js";

/** Linux's PATH_MAX: a longer name fails in containerd too (and is not walked here). */
const MAX_NAME_BYTES = 4096;

function clean(name: string): string | undefined {
  if (name.length > MAX_NAME_BYTES) throw new LayerFormatError(`a tar entry name of ${name.length} characters`);
  if (name.includes("\0")) throw new LayerFormatError(`a tar entry name with a NUL byte: ${JSON.stringify(name)}`);
  const out: string[] = [];
  for (const part of name.split("/")) {
    if (part === "" || part === ".") continue;
    if (part === "..") {
      if (out.length === 0) return undefined;
      out.pop();
    } else {
      out.push(part);
    }
  }
  return out.join("/");
}

/** An entry's path relative to the root ("" for the root itself); a leading "/" is dropped. */
export function cleanName(name: string): string {
  const rel = clean(name);
  if (rel === undefined)
    throw new UnsupportedLayerError(`a tar entry outside the layer's root: ${JSON.stringify(name)}`);
  return rel;
}

/** A hardlink's target relative to the root, or undefined if it names the root or climbs out of it. */
export function cleanLink(name: string): string | undefined {
  const rel = clean(name);
  return rel === "" ? undefined : rel;
}

/** The parent of a relative path ("" for a top-level one). */
export function dirOf(rel: string): string {
  const i = rel.lastIndexOf("/");
  return i < 0 ? "" : rel.slice(0, i);
}
