// A minimal DNS wire codec (RFC 1035, plus the EDNS0 OPT record of RFC 6891 as far as a stub answerer
// needs it): enough to parse the queries a container's resolver sends to the embedded DNS server, to build
// A answers, empty NOERROR / NXDOMAIN / SERVFAIL replies, and to read responses back in tests.
//
// Everything here is pure and never throws on untrusted input: parse functions return a result object,
// and any malformed packet (short, bad label, pointer loop, counts that overrun the buffer) is reported,
// not thrown.

import { ipv4Bytes } from "../api/ipv4.js";

export const TYPE_A = 1;
const TYPE_NS = 2;
export const TYPE_CNAME = 5;
const TYPE_PTR = 12;
export const TYPE_MX = 15;
export const TYPE_AAAA = 28;
export const TYPE_OPT = 41;
export const TYPE_ANY = 255;
export const CLASS_IN = 1;
export const CLASS_ANY = 255;

export const RCODE_NOERROR = 0;
export const RCODE_FORMERR = 1;
export const RCODE_SERVFAIL = 2;
export const RCODE_NXDOMAIN = 3;
export const RCODE_NOTIMP = 4;

export const HEADER_LEN = 12;
/** The classic UDP limit (RFC 1035 4.2.1), used when a query carries no EDNS0 OPT record. */
export const UDP_MIN_SIZE = 512;
/** The UDP payload size we advertise and accept at most (the DNS Flag Day 2020 value: no IP fragmentation). */
export const EDNS_UDP_SIZE = 1232;
export const TCP_MAX_SIZE = 65_535;

const FLAG_QR = 0x8000;
const FLAG_AA = 0x0400;
const FLAG_TC = 0x0200;
const FLAG_RD = 0x0100;
const FLAG_RA = 0x0080;
const MAX_NAME_WIRE = 255;
const MAX_LABEL = 63;

export interface DnsHeader {
  id: number;
  /** The raw 16-bit flags word. */
  flags: number;
  qr: boolean;
  opcode: number;
  aa: boolean;
  tc: boolean;
  rd: boolean;
  ra: boolean;
  rcode: number;
  qdcount: number;
  ancount: number;
  nscount: number;
  arcount: number;
}

export interface DnsName {
  /** Presentation form without the trailing dot ("" for the root); bytes outside [!-~], "." and "\" escaped as \DDD. */
  name: string;
  /** The raw labels, exactly as received (case preserved). */
  labels: Buffer[];
}

export interface DnsQuestion extends DnsName {
  type: number;
  class: number;
}

export interface DnsRecord extends DnsName {
  type: number;
  class: number;
  ttl: number;
  rdata: Buffer;
  /** For A records: the dotted quad; for CNAME/NS/PTR: the target name; otherwise undefined. */
  data?: string;
}

export interface DnsMessage {
  header: DnsHeader;
  questions: DnsQuestion[];
  answers: DnsRecord[];
  authority: DnsRecord[];
  additional: DnsRecord[];
}

export type Parsed<T> = { ok: true; value: T } | { ok: false; error: string };

class DnsFormatError extends Error {
  constructor(
    message: string,
    readonly offset: number,
  ) {
    super(`${message} at offset ${offset}`);
    this.name = "DnsFormatError";
  }
}

// ---- reading ------------------------------------------------------------------------------------------

export function parseHeader(buf: Buffer): Parsed<DnsHeader> {
  if (buf.length < HEADER_LEN) return { ok: false, error: `packet too short (${buf.length} bytes)` };
  const flags = buf.readUInt16BE(2);
  return {
    ok: true,
    value: {
      id: buf.readUInt16BE(0),
      flags,
      qr: (flags & FLAG_QR) !== 0,
      opcode: (flags >> 11) & 0xf,
      aa: (flags & FLAG_AA) !== 0,
      tc: (flags & FLAG_TC) !== 0,
      rd: (flags & FLAG_RD) !== 0,
      ra: (flags & FLAG_RA) !== 0,
      rcode: flags & 0xf,
      qdcount: buf.readUInt16BE(4),
      ancount: buf.readUInt16BE(6),
      nscount: buf.readUInt16BE(8),
      arcount: buf.readUInt16BE(10),
    },
  };
}

function escapeLabel(label: Buffer): string {
  let s = "";
  for (const b of label) {
    if (b > 0x20 && b < 0x7f && b !== 0x2e && b !== 0x5c) s += String.fromCharCode(b);
    else s += `\\${b.toString().padStart(3, "0")}`;
  }
  return s;
}

/**
 * Read a (possibly compressed) domain name at `offset`. Returns the name and the offset just past it in the
 * original stream (after the first pointer, if any). Pointers must point strictly backwards (before the
 * pointer itself), which makes loops impossible; the expanded name may not exceed 255 octets.
 */
export function readName(buf: Buffer, offset: number): { value: DnsName; end: number } {
  const labels: Buffer[] = [];
  let pos = offset;
  let end = -1;
  let wireLen = 1; // the terminating root label
  for (;;) {
    if (pos >= buf.length) throw new DnsFormatError("name runs past the end of the packet", pos);
    const len = buf[pos]!;
    const kind = len & 0xc0;
    if (kind === 0xc0) {
      if (pos + 1 >= buf.length) throw new DnsFormatError("truncated compression pointer", pos);
      const target = ((len & 0x3f) << 8) | buf[pos + 1]!;
      if (target >= pos) throw new DnsFormatError("compression pointer does not point backwards", pos);
      if (end < 0) end = pos + 2;
      pos = target;
      continue;
    }
    if (kind !== 0) throw new DnsFormatError(`unsupported label type 0x${kind.toString(16)}`, pos);
    if (len === 0) {
      if (end < 0) end = pos + 1;
      break;
    }
    if (pos + 1 + len > buf.length) throw new DnsFormatError("label runs past the end of the packet", pos);
    wireLen += len + 1;
    if (wireLen > MAX_NAME_WIRE) throw new DnsFormatError("name longer than 255 octets", offset);
    labels.push(buf.subarray(pos + 1, pos + 1 + len));
    pos += 1 + len;
  }
  return { value: { labels, name: labels.map(escapeLabel).join(".") }, end };
}

function readQuestion(buf: Buffer, offset: number): { value: DnsQuestion; end: number } {
  const n = readName(buf, offset);
  if (n.end + 4 > buf.length) throw new DnsFormatError("question runs past the end of the packet", n.end);
  return {
    value: { ...n.value, type: buf.readUInt16BE(n.end), class: buf.readUInt16BE(n.end + 2) },
    end: n.end + 4,
  };
}

function readRecord(buf: Buffer, offset: number): { value: DnsRecord; end: number } {
  const n = readName(buf, offset);
  let pos = n.end;
  if (pos + 10 > buf.length) throw new DnsFormatError("record header runs past the end of the packet", pos);
  const type = buf.readUInt16BE(pos);
  const klass = buf.readUInt16BE(pos + 2);
  const ttl = buf.readUInt32BE(pos + 4);
  const rdlen = buf.readUInt16BE(pos + 8);
  pos += 10;
  if (pos + rdlen > buf.length) throw new DnsFormatError("rdata runs past the end of the packet", pos);
  const rdata = buf.subarray(pos, pos + rdlen);
  let data: string | undefined;
  if (type === TYPE_A && rdlen === 4) data = Array.from(rdata).join(".");
  else if (type === TYPE_CNAME || type === TYPE_NS || type === TYPE_PTR) {
    const target = readName(buf, pos);
    if (target.end !== pos + rdlen) throw new DnsFormatError("name in rdata does not fill it", pos);
    data = target.value.name;
  }
  const value: DnsRecord = { ...n.value, type, class: klass, ttl, rdata };
  if (data !== undefined) value.data = data;
  return { value, end: pos + rdlen };
}

/** Parse a whole message (query or response). Trailing bytes after the last record are tolerated. */
export function parseMessage(buf: Buffer): Parsed<DnsMessage> {
  const h = parseHeader(buf);
  if (!h.ok) return h;
  try {
    let pos = HEADER_LEN;
    const questions: DnsQuestion[] = [];
    for (let i = 0; i < h.value.qdcount; i++) {
      const q = readQuestion(buf, pos);
      questions.push(q.value);
      pos = q.end;
    }
    const section = (count: number): DnsRecord[] => {
      const out: DnsRecord[] = [];
      for (let i = 0; i < count; i++) {
        const r = readRecord(buf, pos);
        out.push(r.value);
        pos = r.end;
      }
      return out;
    };
    const answers = section(h.value.ancount);
    const authority = section(h.value.nscount);
    const additional = section(h.value.arcount);
    return { ok: true, value: { header: h.value, questions, answers, authority, additional } };
  } catch (err) {
    if (err instanceof DnsFormatError) return { ok: false, error: err.message };
    throw err;
  }
}

export interface DnsQuery {
  header: DnsHeader;
  question: DnsQuestion;
  /** The requestor's EDNS0 UDP payload size if the query carried an OPT record. */
  edns?: { udpSize: number; version: number };
}

/**
 * What to do with an incoming packet:
 * - query: a well-formed standard query with exactly one question;
 * - error: reply with `rcode` (FORMERR for a malformed query whose header could be read, NOTIMP for an
 *   opcode other than QUERY), echoing `id` and the RD bit;
 * - drop: not worth a reply (shorter than a header, or a response: answering responses invites loops).
 */
export type QueryParse =
  | { kind: "query"; query: DnsQuery }
  | { kind: "error"; header: DnsHeader; rcode: number; reason: string }
  | { kind: "drop"; reason: string };

export function parseQuery(buf: Buffer): QueryParse {
  const h = parseHeader(buf);
  if (!h.ok) return { kind: "drop", reason: h.error };
  const header = h.value;
  if (header.qr) return { kind: "drop", reason: "not a query (QR set)" };
  if (header.opcode !== 0) return { kind: "error", header, rcode: RCODE_NOTIMP, reason: `opcode ${header.opcode}` };
  if (header.qdcount !== 1) {
    return { kind: "error", header, rcode: RCODE_FORMERR, reason: `${header.qdcount} questions` };
  }
  let question: DnsQuestion;
  let pos: number;
  try {
    const q = readQuestion(buf, HEADER_LEN);
    question = q.value;
    pos = q.end;
  } catch (err) {
    if (err instanceof DnsFormatError) return { kind: "error", header, rcode: RCODE_FORMERR, reason: err.message };
    throw err;
  }
  const query: DnsQuery = { header, question };
  // Look for an OPT record in the additional section (skipping any answer/authority records a query
  // should not have). A malformed tail is ignored: the question is what matters.
  try {
    for (let i = 0; i < header.ancount + header.nscount; i++) pos = readRecord(buf, pos).end;
    for (let i = 0; i < header.arcount; i++) {
      const r = readRecord(buf, pos);
      pos = r.end;
      if (r.value.type === TYPE_OPT && r.value.labels.length === 0) {
        query.edns = { udpSize: r.value.class, version: (r.value.ttl >>> 16) & 0xff };
        break;
      }
    }
  } catch (err) {
    if (!(err instanceof DnsFormatError)) throw err;
  }
  return { kind: "query", query };
}

/** Lower-case ASCII only: DNS names compare case-insensitively for A-Z, and for nothing else (RFC 4343). */
export function canonicalName(name: string): string {
  return name.replace(/[A-Z]+/g, (s) => s.toLowerCase());
}

// ---- writing ------------------------------------------------------------------------------------------

/** Wire form of a name given as labels (uncompressed). */
function encodeLabels(labels: Buffer[]): Buffer {
  const parts: Buffer[] = [];
  let len = 1;
  for (const l of labels) {
    if (l.length === 0 || l.length > MAX_LABEL) throw new Error(`invalid DNS label length ${l.length}`);
    parts.push(Buffer.from([l.length]), l);
    len += l.length + 1;
  }
  if (len > MAX_NAME_WIRE) throw new Error("DNS name longer than 255 octets");
  parts.push(Buffer.from([0]));
  return Buffer.concat(parts);
}

/** Wire form of a presentation name ("web.example", trailing dot optional; no escapes). */
export function encodeName(name: string): Buffer {
  const trimmed = name.endsWith(".") ? name.slice(0, -1) : name;
  if (trimmed === "") return Buffer.from([0]);
  return encodeLabels(trimmed.split(".").map((l) => Buffer.from(l, "latin1")));
}

function header(id: number, flags: number, qd: number, an: number, ns: number, ar: number): Buffer {
  const b = Buffer.alloc(HEADER_LEN);
  b.writeUInt16BE(id & 0xffff, 0);
  b.writeUInt16BE(flags & 0xffff, 2);
  b.writeUInt16BE(qd, 4);
  b.writeUInt16BE(an, 6);
  b.writeUInt16BE(ns, 8);
  b.writeUInt16BE(ar, 10);
  return b;
}

/** A standard query (RD set), optionally with an EDNS0 OPT record advertising `ednsUdpSize`. */
export function buildQuery(id: number, name: string, type = TYPE_A, opts: { ednsUdpSize?: number } = {}): Buffer {
  const q = Buffer.alloc(4);
  q.writeUInt16BE(type, 0);
  q.writeUInt16BE(CLASS_IN, 2);
  const parts = [header(id, FLAG_RD, 1, 0, 0, opts.ednsUdpSize === undefined ? 0 : 1), encodeName(name), q];
  if (opts.ednsUdpSize !== undefined) parts.push(optRecord(opts.ednsUdpSize));
  return Buffer.concat(parts);
}

function optRecord(udpSize: number): Buffer {
  const b = Buffer.alloc(11);
  b[0] = 0; // root name
  b.writeUInt16BE(TYPE_OPT, 1);
  b.writeUInt16BE(udpSize, 3); // CLASS = requestor's UDP payload size
  b.writeUInt32BE(0, 5); // extended rcode 0, version 0, no flags
  b.writeUInt16BE(0, 9); // no options
  return b;
}

export interface ResponseOptions {
  rcode?: number;
  /** IPv4 addresses answered as A records for the question name. */
  addresses?: string[];
  ttl?: number;
  /** Authoritative answer (names the embedded server owns). */
  aa?: boolean;
  /** Largest message allowed: the transport's limit (UDP: 512 or the EDNS0 size; TCP: 65535). */
  maxSize?: number;
}

/**
 * The reply to `query`: its id, opcode and RD echoed, QR and RA set, the question echoed exactly as asked
 * (same case, for resolvers that use 0x20 randomisation), then one A record per address, each naming the
 * question by a compression pointer. An EDNS0 OPT record is added when the query had one. If the records
 * do not all fit in `maxSize`, as many as fit are kept and TC is set, so the client retries over TCP.
 */
export function buildResponse(query: DnsQuery, opts: ResponseOptions = {}): Buffer {
  const rcode = opts.rcode ?? RCODE_NOERROR;
  const ttl = opts.ttl ?? 0;
  const addresses = opts.addresses ?? [];
  const maxSize = Math.max(UDP_MIN_SIZE, opts.maxSize ?? UDP_MIN_SIZE);
  const qname = encodeLabels(query.question.labels);
  const qtail = Buffer.alloc(4);
  qtail.writeUInt16BE(query.question.type, 0);
  qtail.writeUInt16BE(query.question.class, 2);
  const opt = query.edns ? optRecord(EDNS_UDP_SIZE) : undefined;
  const fixed = HEADER_LEN + qname.length + 4 + (opt?.length ?? 0);
  const records: Buffer[] = [];
  let size = fixed;
  let truncated = false;
  for (const ip of addresses) {
    const rr = Buffer.alloc(16);
    rr.writeUInt16BE(0xc000 | HEADER_LEN, 0); // pointer to the question name
    rr.writeUInt16BE(TYPE_A, 2);
    rr.writeUInt16BE(CLASS_IN, 4);
    rr.writeUInt32BE(ttl >>> 0, 6);
    rr.writeUInt16BE(4, 10);
    ipv4Bytes(ip).copy(rr, 12);
    if (size + rr.length > maxSize) {
      truncated = true;
      break;
    }
    records.push(rr);
    size += rr.length;
  }
  let flags = FLAG_QR | (query.header.opcode << 11) | FLAG_RA | (rcode & 0xf);
  if (query.header.rd) flags |= FLAG_RD;
  if (opts.aa) flags |= FLAG_AA;
  if (truncated) flags |= FLAG_TC;
  const parts = [header(query.header.id, flags, 1, records.length, 0, opt ? 1 : 0), qname, qtail, ...records];
  if (opt) parts.push(opt);
  return Buffer.concat(parts);
}

/**
 * A bare error reply (no question section) for a packet whose question could not be used: the header's
 * id, opcode and RD echoed, QR and RA set, and `rcode`.
 */
export function buildErrorResponse(h: Pick<DnsHeader, "id" | "opcode" | "rd">, rcode: number): Buffer {
  let flags = FLAG_QR | ((h.opcode & 0xf) << 11) | FLAG_RA | (rcode & 0xf);
  if (h.rd) flags |= FLAG_RD;
  return header(h.id, flags, 0, 0, 0, 0);
}

/** A copy of `packet` with its 16-bit id replaced (relaying a forwarded answer under the client's id). */
export function withId(packet: Buffer, id: number): Buffer {
  const out = Buffer.from(packet);
  if (out.length >= 2) out.writeUInt16BE(id & 0xffff, 0);
  return out;
}
