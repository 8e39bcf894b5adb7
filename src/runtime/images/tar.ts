// Tar archives, as `docker save` writes them and `docker load` reads them: a reader that indexes an
// archive's regular files (POSIX ustar, with GNU long names and pax path records) without reading their
// contents, and a writer of ustar archives. A truncated or malformed archive is refused whole.

import type { FileHandle } from "node:fs/promises";
import { cstring } from "./apply/header.js";

const BLOCK = 512;

export interface TarEntry {
  /** The path, without a leading "./". */
  name: string;
  /** Where the content starts in the archive, and its length in bytes. */
  offset: number;
  size: number;
}

export class TarError extends Error {}

function octal(block: Buffer, start: number, length: number, what: string): number {
  const raw = block.subarray(start, start + length);
  if ((raw[0]! & 0x80) !== 0) {
    // GNU base-256 for sizes over 8 GiB: far beyond any image layer shoal loads.
    throw new TarError(`${what} is too large`);
  }
  const text = cstring(block, start, length).trim();
  if (text === "") return 0;
  if (!/^[0-7]+$/.test(text)) throw new TarError(`invalid ${what} ${JSON.stringify(text)} in a tar header`);
  return Number.parseInt(text, 8);
}

function checksumOk(block: Buffer): boolean {
  const stored = octal(block, 148, 8, "checksum");
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 32 : block[i]!;
  return sum === stored;
}

function cleanName(name: string): string {
  let n = name;
  while (n.startsWith("./")) n = n.slice(2);
  return n;
}

/** The "path" record of a pax extended header, if it has one. */
function paxPath(data: Buffer): string | undefined {
  let pos = 0;
  while (pos < data.length) {
    const space = data.indexOf(0x20, pos);
    if (space < 0) break;
    const len = Number(data.subarray(pos, space).toString("ascii"));
    if (!Number.isInteger(len) || len <= 0) break;
    const record = data.subarray(space + 1, pos + len - 1).toString("utf8");
    const eq = record.indexOf("=");
    if (eq > 0 && record.slice(0, eq) === "path") return record.slice(eq + 1);
    pos += len;
  }
  return undefined;
}

async function readExactly(fh: FileHandle, position: number, length: number): Promise<Buffer> {
  const buf = Buffer.alloc(length);
  let got = 0;
  while (got < length) {
    const { bytesRead } = await fh.read(buf, got, length - got, position + got);
    if (bytesRead === 0) throw new TarError("unexpected EOF");
    got += bytesRead;
  }
  return buf;
}

/** The regular files of an archive, indexed by name. Throws TarError for a truncated or malformed one. */
export async function indexTar(fh: FileHandle): Promise<Map<string, TarEntry>> {
  const { size: total } = await fh.stat();
  const entries = new Map<string, TarEntry>();
  let pos = 0;
  let longName: string | undefined;
  for (;;) {
    if (pos + BLOCK > total) throw new TarError("unexpected EOF");
    const header = await readExactly(fh, pos, BLOCK);
    if (header.every((b) => b === 0)) break;
    if (!checksumOk(header)) throw new TarError("invalid tar header checksum");
    const size = octal(header, 124, 12, "size");
    const type = String.fromCharCode(header[156]!);
    const dataStart = pos + BLOCK;
    const next = dataStart + Math.ceil(size / BLOCK) * BLOCK;
    if (dataStart + size > total) throw new TarError("unexpected EOF");
    if (type === "L" || type === "x") {
      const data = await readExactly(fh, dataStart, size);
      longName = type === "L" ? cstring(data, 0, data.length) : (paxPath(data) ?? longName);
    } else {
      const prefix = cstring(header, 345, 155);
      const base = cstring(header, 0, 100);
      const name = cleanName(longName ?? (prefix ? `${prefix}/${base}` : base));
      longName = undefined;
      if (type === "0" || type === "\0") entries.set(name, { name, offset: dataStart, size });
    }
    pos = next;
  }
  return entries;
}

/** A file's content from an indexed archive. */
export function readEntry(fh: FileHandle, e: TarEntry): Promise<Buffer> {
  return readExactly(fh, e.offset, e.size);
}

/** A file's content from an indexed archive, in chunks (for blobs too large to hold at once). */
export async function* entryChunks(fh: FileHandle, e: TarEntry, chunkBytes = 1024 * 1024): AsyncGenerator<Buffer> {
  for (let pos = 0; pos < e.size; pos += chunkBytes) {
    yield await readExactly(fh, e.offset + pos, Math.min(chunkBytes, e.size - pos));
  }
}

// ---- writing -------------------------------------------------------------------------------------------

export interface TarFile {
  name: string;
  /** A regular file's content; absent for a directory or a symlink. */
  data?: Buffer;
  /** A symlink's target. */
  link?: string;
  mode?: number;
  /** Seconds since the epoch. */
  mtime?: number;
}

function writeField(block: Buffer, start: number, length: number, text: string): void {
  block.write(text, start, length, "utf8");
}

function writeOctal(block: Buffer, start: number, length: number, n: number): void {
  writeField(block, start, length - 1, n.toString(8).padStart(length - 1, "0"));
}

function header(name: string, type: string, size: number, mode: number, mtime: number, link = ""): Buffer {
  const block = Buffer.alloc(BLOCK);
  writeField(block, 0, 100, name);
  writeOctal(block, 100, 8, mode);
  writeOctal(block, 108, 8, 0);
  writeOctal(block, 116, 8, 0);
  writeOctal(block, 124, 12, size);
  writeOctal(block, 136, 12, mtime);
  block.fill(0x20, 148, 156);
  block.write(type, 156, 1, "ascii");
  writeField(block, 157, 100, link);
  writeField(block, 257, 6, "ustar");
  writeField(block, 263, 2, "00");
  let sum = 0;
  for (const b of block) sum += b;
  writeField(block, 148, 7, `${sum.toString(8).padStart(6, "0")}\0`);
  return block;
}

function longNameRecord(name: string, mtime: number): Buffer[] {
  const data = Buffer.from(`${name}\0`, "utf8");
  return [
    header("././@LongLink", "L", data.length, 0o644, mtime),
    data,
    Buffer.alloc((BLOCK - (data.length % BLOCK)) % BLOCK),
  ];
}

/** A ustar archive of `files`, in order (names over 100 bytes get a GNU long-name record). */
export function writeTar(files: TarFile[]): Buffer {
  const parts: Buffer[] = [];
  for (const f of files) {
    const mtime = f.mtime ?? 0;
    const name = f.data === undefined && f.link === undefined && !f.name.endsWith("/") ? `${f.name}/` : f.name;
    const stored = Buffer.byteLength(name) > 100 ? name.slice(0, 99) : name;
    if (stored !== name) parts.push(...longNameRecord(name, mtime));
    if (f.link !== undefined) {
      parts.push(header(stored, "2", 0, f.mode ?? 0o777, mtime, f.link));
    } else if (f.data === undefined) {
      parts.push(header(stored, "5", 0, f.mode ?? 0o755, mtime));
    } else {
      parts.push(header(stored, "0", f.data.length, f.mode ?? 0o644, mtime), f.data);
      parts.push(Buffer.alloc((BLOCK - (f.data.length % BLOCK)) % BLOCK));
    }
  }
  parts.push(Buffer.alloc(BLOCK * 2));
  return Buffer.concat(parts);
}
