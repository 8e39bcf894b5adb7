// A protobuf writer for the fuzzer: messages as lists of fields that may be anything the wire format can
// carry (any varint up to 2^64-1, wrong wire types, unknown and repeated fields, truncated lengths), so the
// requests are not limited to what a generated encoder would write. String fields may hold references to
// the live cluster and JSON trees, resolved when the request is encoded.

import { type J, type Resolve, serialize } from "./json.js";
import type { Ref } from "./refs.js";

export type PbText =
  | { s: string }
  | { ref: Ref }
  | { json: J }
  | { bytes: number[] }
  /** A store command as the managers frame it in a Raft entry: a 16-byte header, then the JSON. */
  | { framed: J };

export type PbField =
  | { f: number; t: "varint"; v: bigint | { ref: Ref } }
  | { f: number; t: "text"; v: PbText }
  | { f: number; t: "msg"; v: PbField[] }
  | { f: number; t: "packed"; v: bigint[] }
  | { f: number; t: "fixed32"; v: number }
  | { f: number; t: "fixed64"; v: bigint }
  /** A tag with a wire type protobuf does not define (or a group), and nothing after it. */
  | { f: number; t: "badwire"; wire: 3 | 4 | 6 | 7 };

export interface PbResolve {
  string: (ref: Ref) => string;
  bigint: (ref: Ref) => bigint;
  json: Resolve;
}

const U64 = (1n << 64n) - 1n;

export function varint(n: bigint): number[] {
  let v = n < 0n ? n & U64 : n & U64;
  const out: number[] = [];
  do {
    let b = Number(v & 0x7fn);
    v >>= 7n;
    if (v > 0n) b |= 0x80;
    out.push(b);
  } while (v > 0n);
  return out;
}

const tag = (f: number, wire: number): number[] => varint(BigInt(f) * 8n + BigInt(wire));

function textBytes(v: PbText, r: PbResolve): number[] {
  if ("s" in v) return [...Buffer.from(v.s, "utf8")];
  if ("ref" in v) return [...Buffer.from(r.string(v.ref), "utf8")];
  if ("json" in v) return [...Buffer.from(serialize(v.json, r.json), "utf8")];
  if ("framed" in v) return [...Buffer.alloc(16), ...Buffer.from(serialize(v.framed, r.json), "utf8")];
  return v.bytes;
}

export function encode(fields: PbField[], r: PbResolve): Buffer {
  const out: number[] = [];
  const lenDelimited = (f: number, bytes: number[]) => {
    out.push(...tag(f, 2), ...varint(BigInt(bytes.length)));
    for (const b of bytes) out.push(b);
  };
  for (const x of fields) {
    switch (x.t) {
      case "varint":
        out.push(...tag(x.f, 0), ...varint(typeof x.v === "bigint" ? x.v : r.bigint(x.v.ref)));
        break;
      case "text":
        lenDelimited(x.f, textBytes(x.v, r));
        break;
      case "msg":
        lenDelimited(x.f, [...encode(x.v, r)]);
        break;
      case "packed":
        lenDelimited(
          x.f,
          x.v.flatMap((n) => varint(n)),
        );
        break;
      case "fixed32": {
        const b = Buffer.alloc(4);
        b.writeUInt32LE(x.v >>> 0);
        out.push(...tag(x.f, 5), ...b);
        break;
      }
      case "fixed64": {
        const b = Buffer.alloc(8);
        b.writeBigUInt64LE(x.v & U64);
        out.push(...tag(x.f, 1), ...b);
        break;
      }
      case "badwire":
        out.push(...tag(x.f, x.wire));
        break;
    }
  }
  return Buffer.from(out);
}

/** A short printable form. */
export function showPb(fields: PbField[], max = 300): string {
  const s = fields.map(showField).join(" ");
  return s.length > max ? `${s.slice(0, max)}…` : s;
}

function showField(x: PbField): string {
  switch (x.t) {
    case "varint":
      return `${x.f}=${typeof x.v === "bigint" ? x.v.toString() : `$${JSON.stringify(x.v.ref)}`}`;
    case "text": {
      const v = x.v;
      const s =
        "s" in v
          ? JSON.stringify(v.s.length > 60 ? `${v.s.slice(0, 40)}…(${v.s.length})` : v.s)
          : "ref" in v
            ? `$${JSON.stringify(v.ref)}`
            : "json" in v
              ? "json(…)"
              : "framed" in v
                ? "entry(…)"
                : `bytes(${v.bytes.length})`;
      return `${x.f}:${s}`;
    }
    case "msg":
      return `${x.f}{${x.v.map(showField).join(" ")}}`;
    case "packed":
      return `${x.f}[${x.v.join(",")}]`;
    case "fixed32":
    case "fixed64":
      return `${x.f}#${x.v}`;
    case "badwire":
      return `${x.f}!w${x.wire}`;
  }
}
