// One tar header block, read as Go's archive/tar reads it (containerd's applier is built on it): ustar,
// GNU (long names 'L'/'K', base-256 numbers, atime) and pax ('x' records; 'g' global records are ignored).
// Everything here is untrusted: a bad checksum, a bad number or an oversized record is a LayerFormatError.

import { LayerFormatError, UnsupportedLayerError } from "./errors.js";

export const BLOCK = 512;
/** The most bytes a GNU long name/link or a pax record may take (Go allows 1 MiB). */
export const MAX_META_BYTES = 1 << 20;

export interface RawHeader {
  name: string;
  linkname: string;
  type: string;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  /** Seconds since the epoch (fractional from pax). */
  mtime: number;
  atime: number;
  devmajor: number;
  devminor: number;
}

/** An entry as the writer sees it: its header with the records before it applied. */
export interface Entry extends RawHeader {
  pax: Map<string, string>;
}

/** Overrides from the 'x', 'L' and 'K' records before an entry. */
export interface Pending {
  name?: string;
  linkname?: string;
  pax: Map<string, string>;
}

/** A NUL-terminated (or full) string field of a tar header, as UTF-8. */
export function cstring(b: Buffer, start: number, length: number): string {
  const raw = b.subarray(start, start + length);
  const nul = raw.indexOf(0);
  return raw.subarray(0, nul < 0 ? raw.length : nul).toString("utf8");
}

function numeric(b: Buffer, start: number, length: number, what: string): number {
  const raw = b.subarray(start, start + length);
  if ((raw[0]! & 0x80) !== 0) {
    // GNU base-256: big-endian two's complement, the first byte's top bit the marker.
    if ((raw[0]! & 0x40) !== 0) throw new LayerFormatError(`negative ${what} in a tar header`);
    let n = raw[0]! & 0x7f;
    for (let i = 1; i < raw.length; i++) {
      n = n * 256 + raw[i]!;
      if (n > Number.MAX_SAFE_INTEGER) throw new LayerFormatError(`${what} in a tar header is too large`);
    }
    return n;
  }
  const text = raw
    .toString("latin1")
    .replace(/[\0 ]+$/, "")
    .replace(/^[ \0]+/, "");
  if (text === "") return 0;
  if (!/^[0-7]+$/.test(text)) throw new LayerFormatError(`invalid ${what} ${JSON.stringify(text)} in a tar header`);
  return Number.parseInt(text, 8);
}

export function isZeroBlock(b: Buffer): boolean {
  for (let i = 0; i < BLOCK; i++) if (b[i] !== 0) return false;
  return true;
}

function checksumOk(b: Buffer): boolean {
  const stored = numeric(b, 148, 8, "checksum");
  let unsigned = 0;
  let signed = 0;
  for (let i = 0; i < BLOCK; i++) {
    const v = i >= 148 && i < 156 ? 32 : b[i]!;
    unsigned += v;
    signed += v > 127 ? v - 256 : v;
  }
  return stored === unsigned || stored === signed;
}

/** Parses a non-zero header block. */
export function parseHeader(b: Buffer): RawHeader {
  if (!checksumOk(b)) throw new LayerFormatError("a tar header's checksum does not match (a corrupt layer?)");
  const magic = b.toString("latin1", 257, 263);
  const version = b.toString("latin1", 263, 265);
  const gnu = magic === "ustar " && version === " \0";
  const ustar = magic === "ustar\0" && version === "00";
  let name = cstring(b, 0, 100);
  if (ustar) {
    const prefix = cstring(b, 345, 155);
    if (prefix !== "") name = `${prefix}/${name}`;
  }
  const type = String.fromCharCode(b[156]!);
  const mtime = numeric(b, 136, 12, "mtime");
  const atime = gnu && b[345] !== 0 ? numeric(b, 345, 12, "atime") : 0;
  return {
    name,
    linkname: cstring(b, 157, 100),
    type,
    mode: numeric(b, 100, 8, "mode"),
    uid: numeric(b, 108, 8, "uid"),
    gid: numeric(b, 116, 8, "gid"),
    size: numeric(b, 124, 12, "size"),
    mtime,
    atime,
    devmajor: ustar || gnu ? numeric(b, 329, 8, "devmajor") : 0,
    devminor: ustar || gnu ? numeric(b, 337, 8, "devminor") : 0,
  };
}

/** The records of a pax extended header ("%d key=value\n" each). */
export function parsePax(data: Buffer, into: Map<string, string>): void {
  let at = 0;
  while (at < data.length) {
    if (data[at] === 0) break; // padding some writers leave
    const space = data.indexOf(0x20, at);
    if (space < 0) throw new LayerFormatError("a malformed pax record in a tar layer");
    const len = Number(data.toString("latin1", at, space));
    if (!Number.isInteger(len) || len <= space - at + 1 || at + len > data.length || data[at + len - 1] !== 0x0a) {
      throw new LayerFormatError("a malformed pax record in a tar layer");
    }
    const record = data.subarray(space + 1, at + len - 1);
    const eq = record.indexOf(0x3d);
    if (eq <= 0) throw new LayerFormatError("a malformed pax record in a tar layer");
    const key = record.toString("utf8", 0, eq);
    const value = key.startsWith("SCHILY.xattr.")
      ? record.subarray(eq + 1).toString("latin1")
      : record.toString("utf8", eq + 1);
    if (key.startsWith("GNU.sparse.")) throw new UnsupportedLayerError("a GNU sparse file in the layer");
    if (value === "") into.delete(key);
    else into.set(key, value);
    at += len;
  }
}

function paxNumber(v: string, what: string): number {
  if (!/^-?\d+(\.\d+)?$/.test(v)) throw new LayerFormatError(`invalid pax ${what} ${JSON.stringify(v)}`);
  const n = Number(v);
  if (!Number.isFinite(n) || n > Number.MAX_SAFE_INTEGER) throw new LayerFormatError(`invalid pax ${what}`);
  return n;
}

/** The header with the records before it applied. */
export function merge(h: RawHeader, p: Pending): Entry {
  const out: Entry = { ...h, pax: p.pax };
  const pax = p.pax;
  const path = pax.get("path");
  if (path !== undefined) out.name = path;
  const link = pax.get("linkpath");
  if (link !== undefined) out.linkname = link;
  const size = pax.get("size");
  if (size !== undefined) out.size = paxNumber(size, "size");
  const uid = pax.get("uid");
  if (uid !== undefined) out.uid = paxNumber(uid, "uid");
  const gid = pax.get("gid");
  if (gid !== undefined) out.gid = paxNumber(gid, "gid");
  const mtime = pax.get("mtime");
  if (mtime !== undefined) out.mtime = paxNumber(mtime, "mtime");
  const atime = pax.get("atime");
  if (atime !== undefined) out.atime = paxNumber(atime, "atime");
  // GNU long names win over pax ones, as in Go's reader; then a legacy '\0' type is a file or a directory.
  if (p.name !== undefined) out.name = p.name;
  if (p.linkname !== undefined) out.linkname = p.linkname;
  if (out.type === "\0") out.type = out.name.endsWith("/") ? "5" : "0";
  if (!Number.isInteger(out.size) || out.size < 0) throw new LayerFormatError("invalid size in a tar header");
  return out;
}

/** Entry types whose header's size field is not followed by data (Go's isHeaderOnlyType). */
export function headerOnly(type: string): boolean {
  return type === "1" || type === "2" || type === "3" || type === "4" || type === "5" || type === "6";
}

/** The xattrs (SCHILY.xattr.NAME) of a pax header, values as raw bytes. */
export function xattrsOf(pax: Map<string, string>): [string, Buffer][] {
  const out: [string, Buffer][] = [];
  for (const [k, v] of pax) {
    if (k.startsWith("SCHILY.xattr.")) out.push([k.slice("SCHILY.xattr.".length), Buffer.from(v, "latin1")]);
  }
  return out;
}
