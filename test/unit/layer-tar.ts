// A tar writer for layer tests and benchmarks: every entry type a layer may hold, owners, modes, times,
// GNU long names ('L'/'K') and pax records (path, xattrs). Not for src: the daemon never writes layers.

import { createHash } from "node:crypto";

export interface TarItem {
  name: string;
  type?: "file" | "dir" | "symlink" | "link" | "char" | "block" | "fifo";
  data?: Buffer;
  /** A symlink's or a hardlink's target. */
  link?: string;
  mode?: number;
  uid?: number;
  gid?: number;
  /** Seconds since the epoch. */
  mtime?: number;
  major?: number;
  minor?: number;
  /** pax records written before the entry (e.g. { "SCHILY.xattr.user.x": "1" }). */
  pax?: Record<string, string>;
  /** How a name over 100 bytes is carried: a GNU 'L' record (default) or a pax path record. */
  longName?: "gnu" | "pax";
}

const TYPES = { file: "0", link: "1", symlink: "2", char: "3", block: "4", dir: "5", fifo: "6" } as const;

function octal(b: Buffer, at: number, len: number, n: number): void {
  b.write(n.toString(8).padStart(len - 1, "0"), at, len - 1, "latin1");
}

export function tarHeader(
  name: string,
  type: string,
  o: {
    size?: number;
    mode?: number;
    uid?: number;
    gid?: number;
    mtime?: number;
    link?: string;
    major?: number;
    minor?: number;
  },
): Buffer {
  const b = Buffer.alloc(512);
  b.write(name, 0, 100, "utf8");
  octal(b, 100, 8, o.mode ?? 0o644);
  octal(b, 108, 8, o.uid ?? 0);
  octal(b, 116, 8, o.gid ?? 0);
  octal(b, 124, 12, o.size ?? 0);
  octal(b, 136, 12, o.mtime ?? 1_600_000_000);
  b.fill(0x20, 148, 156);
  b.write(type, 156, 1, "latin1");
  b.write(o.link ?? "", 157, 100, "utf8");
  b.write("ustar\u000000", 257, 8, "latin1");
  octal(b, 329, 8, o.major ?? 0);
  octal(b, 337, 8, o.minor ?? 0);
  let sum = 0;
  for (const x of b) sum += x;
  b.write(`${sum.toString(8).padStart(6, "0")}\0 `, 148, 8, "latin1");
  return b;
}

function padded(data: Buffer): Buffer[] {
  return [data, Buffer.alloc((512 - (data.length % 512)) % 512)];
}

function paxData(records: Record<string, string>): Buffer {
  const parts: Buffer[] = [];
  for (const [k, v] of Object.entries(records)) {
    const body = Buffer.concat([
      Buffer.from(` ${k}=`),
      Buffer.from(v, k.startsWith("SCHILY.xattr.") ? "latin1" : "utf8"),
      Buffer.from("\n"),
    ]);
    let len = body.length + 1;
    while (String(len).length + body.length !== len) len++;
    parts.push(Buffer.from(String(len)), body);
  }
  return Buffer.concat(parts);
}

/** The entries of a tar, without its end (two zero blocks). */
export function tarEntries(items: TarItem[]): Buffer {
  const parts: Buffer[] = [];
  for (const it of items) {
    const type = it.type ?? (it.data !== undefined ? "file" : it.name.endsWith("/") ? "dir" : "file");
    const pax: Record<string, string> = { ...(it.pax ?? {}) };
    let name = it.name;
    if (Buffer.byteLength(name) > 100) {
      if (it.longName === "pax") pax.path = name;
      else
        parts.push(
          tarHeader("././@LongLink", "L", { size: Buffer.byteLength(name) + 1 }),
          ...padded(Buffer.from(`${name}\0`)),
        );
      name = name.slice(0, 99);
    }
    let link = it.link ?? "";
    if (Buffer.byteLength(link) > 100) {
      parts.push(
        tarHeader("././@LongLink", "K", { size: Buffer.byteLength(link) + 1 }),
        ...padded(Buffer.from(`${link}\0`)),
      );
      link = link.slice(0, 99);
    }
    if (Object.keys(pax).length > 0) {
      const d = paxData(pax);
      parts.push(tarHeader("PaxHeaders/x", "x", { size: d.length }), ...padded(d));
    }
    const data = type === "file" ? (it.data ?? Buffer.alloc(0)) : Buffer.alloc(0);
    const mode = it.mode ?? (type === "dir" ? 0o755 : type === "symlink" ? 0o777 : 0o644);
    parts.push(tarHeader(name, TYPES[type], { ...it, size: data.length, mode, link }));
    if (data.length > 0) parts.push(...padded(data));
  }
  return Buffer.concat(parts);
}

/** A complete tar of items. */
export function tar(items: TarItem[]): Buffer {
  return Buffer.concat([tarEntries(items), Buffer.alloc(1024)]);
}

export function sha256(b: Buffer): string {
  return `sha256:${createHash("sha256").update(b).digest("hex")}`;
}
