// A small DER encoder and reader: just what the join path needs to read a CSR and write a node certificate
// without the ASN.1 library (src/ca/leaf.ts). Definite lengths only (DER has no other), at most 4 length
// bytes; the reader checks every length against its parent and says what it could not read.

/** Tags used here (universal class unless noted). */
export const TAG = {
  BOOLEAN: 0x01,
  INTEGER: 0x02,
  BIT_STRING: 0x03,
  OCTET_STRING: 0x04,
  NULL: 0x05,
  OID: 0x06,
  UTF8_STRING: 0x0c,
  PRINTABLE_STRING: 0x13,
  IA5_STRING: 0x16,
  UTC_TIME: 0x17,
  GENERALIZED_TIME: 0x18,
  SEQUENCE: 0x30,
  SET: 0x31,
} as const;

// ---------------------------------------------------------------------------------------------------
// Encoding

function lengthOctets(n: number): Buffer {
  if (n < 0x80) return Buffer.from([n]);
  if (n <= 0xff) return Buffer.from([0x81, n]);
  if (n <= 0xffff) return Buffer.from([0x82, n >> 8, n & 0xff]);
  if (n <= 0xffffff) return Buffer.from([0x83, n >> 16, (n >> 8) & 0xff, n & 0xff]);
  throw new RangeError(`DER value of ${n} bytes is too long`);
}

/** One TLV: `tag`, then the length of the concatenated `parts`, then the parts. */
export function tlv(tag: number, ...parts: Uint8Array[]): Buffer {
  const body = parts.length === 1 ? (parts[0] as Uint8Array) : Buffer.concat(parts);
  return Buffer.concat([Buffer.from([tag]), lengthOctets(body.length), body]);
}

export const seq = (...parts: Uint8Array[]): Buffer => tlv(TAG.SEQUENCE, ...parts);

/** A non-negative INTEGER from its big-endian bytes: leading zeros dropped, a 0x00 put back if the top bit is set. */
export function unsignedInteger(bytes: Uint8Array): Buffer {
  let i = 0;
  while (i < bytes.length - 1 && bytes[i] === 0) i++;
  let body = Buffer.from(bytes.subarray(i));
  if (body.length === 0) body = Buffer.from([0]);
  if ((body[0] as number) > 0x7f) body = Buffer.concat([Buffer.from([0]), body]);
  return tlv(TAG.INTEGER, body);
}

/** An OBJECT IDENTIFIER from its dotted form. */
export function oid(dotted: string): Buffer {
  const arcs = dotted.split(".").map((a) => Number.parseInt(a, 10));
  if (arcs.length < 2 || arcs.some((a) => !Number.isSafeInteger(a) || a < 0)) throw new TypeError(`bad OID ${dotted}`);
  const out: number[] = [];
  const push = (v: number): void => {
    const base128: number[] = [v & 0x7f];
    for (let x = Math.floor(v / 128); x > 0; x = Math.floor(x / 128)) base128.unshift((x & 0x7f) | 0x80);
    out.push(...base128);
  };
  push((arcs[0] as number) * 40 + (arcs[1] as number));
  for (const a of arcs.slice(2)) push(a);
  return tlv(TAG.OID, Buffer.from(out));
}

const two = (n: number): string => String(n).padStart(2, "0");

/**
 * A certificate validity time as RFC 5280 wants it: UTCTime (YYMMDDHHMMSSZ) through 2049, GeneralizedTime
 * (YYYYMMDDHHMMSSZ) from 2050; whole seconds (milliseconds dropped).
 */
export function time(d: Date): Buffer {
  const y = d.getUTCFullYear();
  const rest = `${two(d.getUTCMonth() + 1)}${two(d.getUTCDate())}${two(d.getUTCHours())}${two(d.getUTCMinutes())}${two(d.getUTCSeconds())}Z`;
  if (y >= 1950 && y <= 2049) return tlv(TAG.UTC_TIME, Buffer.from(`${two(y % 100)}${rest}`, "latin1"));
  return tlv(TAG.GENERALIZED_TIME, Buffer.from(`${String(y).padStart(4, "0")}${rest}`, "latin1"));
}

const PRINTABLE = /^[A-Za-z0-9 '()+,\-./:=?]*$/;

/** A directory string: PrintableString when the value fits its alphabet, else UTF8String. */
export function directoryString(s: string): Buffer {
  return PRINTABLE.test(s) ? tlv(TAG.PRINTABLE_STRING, Buffer.from(s, "latin1")) : tlv(TAG.UTF8_STRING, Buffer.from(s));
}

/** A BIT STRING of whole bytes (no unused bits). */
export const bitString = (bytes: Uint8Array): Buffer => tlv(TAG.BIT_STRING, Buffer.from([0]), bytes);

// ---------------------------------------------------------------------------------------------------
// Reading

/** One element read from a buffer: its tag, where its contents start and end, and where it ends. */
export interface Element {
  tag: number;
  /** Offset of the tag byte. */
  start: number;
  /** Offset of the first content byte. */
  contentStart: number;
  /** Offset just past the element. */
  end: number;
}

export class DerError extends Error {}

/** The element at `offset`, which must end by `limit`. */
export function readElement(buf: Uint8Array, offset: number, limit: number = buf.length): Element {
  if (offset + 2 > limit) throw new DerError(`truncated element at byte ${offset}`);
  const tag = buf[offset] as number;
  if ((tag & 0x1f) === 0x1f) throw new DerError(`multi-byte tag at byte ${offset}`);
  let len = buf[offset + 1] as number;
  let contentStart = offset + 2;
  if (len & 0x80) {
    const n = len & 0x7f;
    if (n === 0 || n > 4) throw new DerError(`unsupported length form at byte ${offset}`);
    if (contentStart + n > limit) throw new DerError(`truncated length at byte ${offset}`);
    len = 0;
    for (let i = 0; i < n; i++) len = len * 256 + (buf[contentStart + i] as number);
    contentStart += n;
  }
  const end = contentStart + len;
  if (end > limit) throw new DerError(`element at byte ${offset} runs past its container`);
  return { tag, start: offset, contentStart, end };
}

/** The elements inside a constructed element, in order. */
export function childrenOf(buf: Uint8Array, parent: Element): Element[] {
  const out: Element[] = [];
  for (let at = parent.contentStart; at < parent.end; ) {
    const el = readElement(buf, at, parent.end);
    out.push(el);
    at = el.end;
  }
  return out;
}

/** The whole element's bytes (tag, length, contents): a view, not a copy. */
export const bytesOf = (buf: Buffer, el: Element): Buffer => buf.subarray(el.start, el.end);

/** The contents' bytes: a view, not a copy. */
export const contentsOf = (buf: Buffer, el: Element): Buffer => buf.subarray(el.contentStart, el.end);

/** `el` must have tag `tag`; `what` names it in the error. */
export function expectTag(el: Element | undefined, tag: number, what: string): Element {
  if (el === undefined) throw new DerError(`${what} is missing`);
  if (el.tag !== tag) throw new DerError(`${what} has tag 0x${el.tag.toString(16)}, expected 0x${tag.toString(16)}`);
  return el;
}
