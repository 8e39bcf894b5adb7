// The on-disk format of LevelStorage (level-storage.ts): keys, records, their checksums and encryption,
// and the encoders and decoders of every record. level-load.ts reads a directory back with it.
//
// On-disk format (all keys are raw bytes; level orders them bytewise):
//   "c"                      compaction marker: index and term of the entry just before the first stored
//                            entry (MemoryStorage's dummy entry). Absent means (0, 0).
//   "e" + u64be(index)       one log entry
//   "h"                      hard state
//   "k"                      key check (encrypted directories only)
//   "m"                      snapshot metadata (index, term, data size, chunk size, chunk count, conf state)
//   "s" + u64be(index) + u32be(n)   chunk n of the data of the snapshot at `index`
// Every value is  u32be(crc32(payload)) + payload,  and every payload starts with a one-byte format
// version: 1 = clear, 2 = sealed (AES-256-GCM). Integers are big-endian; 64-bit fields hold non-negative
// JS safe integers. sealed(x) = nonce[12] | ciphertext of x | tag[16], with AAD = key | payload header.
//   entry:     ver=1 u8 | type u8 | term u64 | index u64 | data...
//              ver=2 u8 | type u8 | term u64 | index u64 | sealed(data)     AAD "e"+index | 18-byte header
//   hardstate: ver=1 u8 | term u64 | vote u64 | commit u64
//   marker:    ver=1 u8 | index u64 | term u64
//   keycheck:  ver=2 u8 | flags u8 | sealed(KEY_CHECK_PLAINTEXT)           AAD "k" | ver | flags
//              flags bit 0: clear values of a migrated log may remain in level's files (compact them)
//   snapmeta:  ver=1 u8 | index u64 | term u64 | size u64 | chunkSize u32 | chunks u32 |
//              nVoters u32 | voters u64... | nLearners u32 | learners u64... | nRemoved u32 | removed u64...
//   chunk:     ver=1 u8 | data...

import { createCipheriv, createDecipheriv, createSecretKey, type KeyObject, randomFillSync } from "node:crypto";
import * as zlib from "node:zlib";
import type { ConfState, Entry, HardState } from "./types.js";

// crc32 (IEEE, as zlib and Go's hash/crc32): zlib.crc32 where Node has it (>= 20.15), a table otherwise.

let crcTable: Uint32Array | undefined;

/** Table-driven CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320). */
export function crc32Table(data: Uint8Array): number {
  if (crcTable === undefined) {
    crcTable = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      crcTable[n] = c >>> 0;
    }
  }
  const t = crcTable;
  let crc = 0xffffffff;
  for (let i = 0; i < data.length; i++) crc = t[(crc ^ data[i]!) & 0xff]! ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}

const nativeCrc32: ((data: Uint8Array) => number) | undefined =
  typeof (zlib as { crc32?: unknown }).crc32 === "function"
    ? (zlib as unknown as { crc32: (data: Uint8Array) => number }).crc32
    : undefined;

export const crc32: (data: Uint8Array) => number = nativeCrc32 ?? crc32Table;

// ---------------------------------------------------------------------------------------------------
// Keys

const K_MARKER = 0x63; // 'c'
const K_ENTRY = 0x65; // 'e'
const K_HARDSTATE = 0x68; // 'h'
const K_KEYCHECK = 0x6b; // 'k'
const K_SNAPMETA = 0x6d; // 'm'
const K_CHUNK = 0x73; // 's'

export const HARD_STATE_KEY: Buffer = Buffer.from([K_HARDSTATE]);
const SNAPSHOT_META_KEY: Buffer = Buffer.from([K_SNAPMETA]);
export const COMPACTION_MARKER_KEY: Buffer = Buffer.from([K_MARKER]);
export const KEY_CHECK_KEY: Buffer = Buffer.from([K_KEYCHECK]);

/** Format byte, type, term, index: the clear header of an entry record. */
export const ENTRY_HEADER = 1 + 1 + 8 + 8;
/** Format version of a record in clear. */
export const FORMAT_VERSION = 1;
/** Format version of a record whose payload is sealed with AES-256-GCM. */
export const FORMAT_SEALED = 2;
const TWO32 = 0x1_0000_0000;
const MAX_HI = 0x1f_ffff; // high 32 bits of Number.MAX_SAFE_INTEGER

function writeU64(b: Buffer, off: number, n: number): void {
  b.writeUInt32BE(Math.floor(n / TWO32), off);
  b.writeUInt32BE(n >>> 0, off + 4);
}

/** Reads a u64; returns -1 if it is not a safe integer (the caller reports corruption). */
export function readU64(b: Buffer, off: number): number {
  const hi = b.readUInt32BE(off);
  if (hi > MAX_HI) return -1;
  return hi * TWO32 + b.readUInt32BE(off + 4);
}

export function checkU64(what: string, n: number): void {
  if (!Number.isSafeInteger(n) || n < 0) throw new RangeError(`${what} ${n} is not a non-negative safe integer`);
}

/** Key of the log entry at `index`: "e" + 8-byte big-endian index. */
export function entryKey(index: number): Buffer {
  const k = Buffer.allocUnsafe(9);
  k[0] = K_ENTRY;
  writeU64(k, 1, index);
  return k;
}

/** Key of chunk `n` of the snapshot at `index`: "s" + 8-byte BE index + 4-byte BE chunk number. */
export function snapshotChunkKey(index: number, n: number): Buffer {
  const k = Buffer.allocUnsafe(13);
  k[0] = K_CHUNK;
  writeU64(k, 1, index);
  k.writeUInt32BE(n, 9);
  return k;
}

// ---------------------------------------------------------------------------------------------------
// Records: u32be crc32(payload) + payload

/** Allocates a record with room for `payloadLen` bytes of payload (starting at offset 4). */
function newRecord(payloadLen: number, version = FORMAT_VERSION): Buffer {
  const b = Buffer.allocUnsafe(4 + payloadLen);
  b[4] = version;
  return b;
}

function sealRecord(b: Buffer): Buffer {
  b.writeUInt32BE(crc32(b.subarray(4)), 0);
  return b;
}

/**
 * Checks a record's CRC and format version; returns the reason it is bad, or undefined if it is good.
 * `minPayload` is the smallest payload (format byte included) a record of that format can have.
 */
export function checkRecord(b: Buffer, minPayload: number, version = FORMAT_VERSION): string | undefined {
  if (b.length < 5) return `record is truncated (${b.length} bytes)`;
  if (b.readUInt32BE(0) !== crc32(b.subarray(4))) return "checksum mismatch";
  if (b[4] !== version) {
    if (b[4] === FORMAT_VERSION) return "a record in clear in an encrypted raft log";
    if (b[4] === FORMAT_SEALED)
      return "an encrypted record in a raft log that is not encrypted (its key check record is missing)";
    return `unknown record format version ${b[4]}`;
  }
  if (b.length < 4 + minPayload) return `record is truncated (${b.length} bytes)`;
  return undefined;
}

// ---------------------------------------------------------------------------------------------------
// Encryption: AES-256-GCM, one fresh random 96-bit nonce per record.

/** Length of a data encryption key (AES-256). */
export const DEK_BYTES = 32;
const NONCE_BYTES = 12;
const TAG_BYTES = 16;
/** What sealing adds to a payload: nonce + tag. */
export const SEAL_OVERHEAD = NONCE_BYTES + TAG_BYTES;
/** What the key check record seals. */
export const KEY_CHECK_PLAINTEXT = Buffer.from("shoal raft DEK check v1\n");
const KEY_CHECK_PAYLOAD = 2 + SEAL_OVERHEAD + KEY_CHECK_PLAINTEXT.length;
export const KC_PURGE = 0x01;
/** Nonces are drawn from a buffer of random bytes refilled this many nonces at a time (a syscall each). */
const NONCE_POOL = 512;

/** Seals and opens record payloads with one DEK. */
export class RecordCipher {
  private readonly key: KeyObject;
  private readonly pool = Buffer.allocUnsafe(NONCE_BYTES * NONCE_POOL);
  private poolPos = this.pool.length;

  constructor(dek: Uint8Array) {
    if (!(dek instanceof Uint8Array) || dek.length !== DEK_BYTES) {
      throw new RangeError(`a raft data encryption key is ${DEK_BYTES} bytes, got ${dek?.length ?? typeof dek}`);
    }
    this.key = createSecretKey(dek);
  }

  /**
   * Writes sealed(plain) = nonce | ciphertext | tag into `out` at `off` (which must have room for
   * plain.length + SEAL_OVERHEAD bytes), authenticating `aad` along with it.
   */
  sealInto(out: Buffer, off: number, plain: Uint8Array, aad: Uint8Array): void {
    if (this.poolPos + NONCE_BYTES > this.pool.length) {
      randomFillSync(this.pool);
      this.poolPos = 0;
    }
    const nonce = this.pool.subarray(this.poolPos, this.poolPos + NONCE_BYTES);
    this.poolPos += NONCE_BYTES;
    out.set(nonce, off);
    const c = createCipheriv("aes-256-gcm", this.key, nonce);
    c.setAAD(aad);
    const ct = c.update(plain);
    c.final();
    out.set(ct, off + NONCE_BYTES);
    out.set(c.getAuthTag(), off + NONCE_BYTES + ct.length);
  }

  /** Opens sealed bytes; undefined if they do not authenticate (altered, or sealed with another key). */
  open(sealed: Buffer, aad: Uint8Array): Uint8Array | undefined {
    if (sealed.length < SEAL_OVERHEAD) return undefined;
    const tagAt = sealed.length - TAG_BYTES;
    try {
      const d = createDecipheriv("aes-256-gcm", this.key, sealed.subarray(0, NONCE_BYTES));
      d.setAAD(aad);
      d.setAuthTag(sealed.subarray(tagAt));
      const plain = d.update(sealed.subarray(NONCE_BYTES, tagAt));
      d.final();
      // A view of the decrypted bytes (their own memory), as a plain Uint8Array like the rest of mem.
      return plain.byteLength === plain.buffer.byteLength
        ? new Uint8Array(plain.buffer, plain.byteOffset, plain.byteLength)
        : new Uint8Array(plain);
    } catch {
      return undefined;
    }
  }
}

/** AAD of a sealed entry: its key ("e" + index) followed by the record's clear header. */
export function entryAad(b: Buffer): Buffer {
  const aad = Buffer.allocUnsafe(9 + ENTRY_HEADER);
  aad[0] = K_ENTRY;
  b.copy(aad, 1, 14, 22); // index
  b.copy(aad, 9, 4, 4 + ENTRY_HEADER);
  return aad;
}

export function chunkAad(key: Buffer): Buffer {
  const aad = Buffer.allocUnsafe(key.length + 1);
  key.copy(aad, 0);
  aad[key.length] = FORMAT_SEALED;
  return aad;
}

export function keyCheckAad(flags: number): Buffer {
  return Buffer.from([K_KEYCHECK, FORMAT_SEALED, flags]);
}

export function encodeKeyCheck(cipher: RecordCipher, flags: number): Buffer {
  const b = newRecord(KEY_CHECK_PAYLOAD, FORMAT_SEALED);
  b[5] = flags;
  cipher.sealInto(b, 6, KEY_CHECK_PLAINTEXT, keyCheckAad(flags));
  return sealRecord(b);
}

/** Encodes a log entry record: in clear, or sealed with `dek`. Tests write records behind the storage's back. */
export function encodeEntry(e: Entry, dek?: Uint8Array): Buffer {
  return encodeEntryWith(e, dek === undefined ? undefined : new RecordCipher(dek));
}

export function encodeEntryWith(e: Entry, cipher: RecordCipher | undefined): Buffer {
  checkU64("entry term", e.term);
  checkU64("entry index", e.index);
  if (cipher === undefined) {
    const b = newRecord(ENTRY_HEADER + e.data.length);
    b[5] = e.type;
    writeU64(b, 6, e.term);
    writeU64(b, 14, e.index);
    b.set(e.data, 4 + ENTRY_HEADER);
    return sealRecord(b);
  }
  const b = newRecord(ENTRY_HEADER + SEAL_OVERHEAD + e.data.length, FORMAT_SEALED);
  b[5] = e.type;
  writeU64(b, 6, e.term);
  writeU64(b, 14, e.index);
  cipher.sealInto(b, 4 + ENTRY_HEADER, e.data, entryAad(b));
  return sealRecord(b);
}

export function encodeChunk(key: Buffer, part: Uint8Array, cipher: RecordCipher | undefined): Buffer {
  if (cipher === undefined) {
    const b = newRecord(1 + part.length);
    b.set(part, 5);
    return sealRecord(b);
  }
  const b = newRecord(1 + SEAL_OVERHEAD + part.length, FORMAT_SEALED);
  cipher.sealInto(b, 5, part, chunkAad(key));
  return sealRecord(b);
}

export function encodeHardState(hs: HardState): Buffer {
  checkU64("hard state term", hs.term);
  checkU64("hard state vote", hs.vote);
  checkU64("hard state commit", hs.commit);
  const b = newRecord(1 + 24);
  writeU64(b, 5, hs.term);
  writeU64(b, 13, hs.vote);
  writeU64(b, 21, hs.commit);
  return sealRecord(b);
}

export function encodeMarker(index: number, term: number): Buffer {
  const b = newRecord(1 + 16);
  writeU64(b, 5, index);
  writeU64(b, 13, term);
  return sealRecord(b);
}

export interface SnapMeta {
  index: number;
  term: number;
  size: number;
  chunkSize: number;
  chunks: number;
  confState: ConfState;
}

export function encodeSnapMeta(m: SnapMeta): Buffer {
  const cs = m.confState;
  for (const id of [...cs.voters, ...cs.learners, ...cs.removed]) checkU64("member id", id);
  const len = 1 + 8 + 8 + 8 + 4 + 4 + 12 + 8 * (cs.voters.length + cs.learners.length + cs.removed.length);
  const b = newRecord(len);
  let o = 5;
  writeU64(b, o, m.index);
  o += 8;
  writeU64(b, o, m.term);
  o += 8;
  writeU64(b, o, m.size);
  o += 8;
  b.writeUInt32BE(m.chunkSize, o);
  o += 4;
  b.writeUInt32BE(m.chunks, o);
  o += 4;
  for (const ids of [cs.voters, cs.learners, cs.removed]) {
    b.writeUInt32BE(ids.length, o);
    o += 4;
    for (const id of ids) {
      writeU64(b, o, id);
      o += 8;
    }
  }
  return sealRecord(b);
}

/** Decodes checked snapshot metadata; returns a reason string if it is malformed. */
export function decodeSnapMeta(b: Buffer): SnapMeta | string {
  let o = 5;
  const index = readU64(b, o);
  const term = readU64(b, o + 8);
  const size = readU64(b, o + 16);
  const chunkSize = b.readUInt32BE(o + 24);
  const chunks = b.readUInt32BE(o + 28);
  o += 32;
  if (index < 0 || term < 0 || size < 0) return "snapshot metadata holds an out-of-range number";
  const lists: number[][] = [];
  for (let l = 0; l < 3; l++) {
    if (o + 4 > b.length) return "snapshot metadata is truncated";
    const n = b.readUInt32BE(o);
    o += 4;
    if (o + 8 * n > b.length) return "snapshot metadata is truncated";
    const ids: number[] = [];
    for (let i = 0; i < n; i++, o += 8) {
      const id = readU64(b, o);
      if (id < 0) return "snapshot metadata holds an out-of-range member id";
      ids.push(id);
    }
    lists.push(ids);
  }
  if (o !== b.length) return "snapshot metadata has trailing bytes";
  if (chunkSize === 0 && size > 0) return "snapshot metadata has a zero chunk size";
  const want = size === 0 ? 0 : Math.ceil(size / chunkSize);
  if (chunks !== want) return `snapshot metadata says ${chunks} chunks for ${size} bytes in chunks of ${chunkSize}`;
  return {
    index,
    term,
    size,
    chunkSize,
    chunks,
    confState: { voters: lists[0]!, learners: lists[1]!, removed: lists[2]! },
  };
}

export function copyOut(b: Buffer, start: number): Uint8Array {
  const out = new Uint8Array(b.length - start);
  out.set(b.subarray(start));
  return out;
}

// ---------------------------------------------------------------------------------------------------

/** The raft directory holds data that fails verification. Never repaired silently. */
export class StorageCorruptError extends Error {
  /** The storage directory. */
  file: string;
  /** The log index the problem is at (the snapshot's index for a snapshot problem, 0 for the hard state). */
  index: number;
  constructor(file: string, index: number, reason: string, where?: string) {
    super(
      `raft log in ${file} is corrupt ${where ?? `at index ${index}`}: ${reason}. ` +
        "shoal does not repair a raft log on its own: restore the directory from a backup, or move it aside " +
        "and rejoin this manager to the swarm so that it receives the log from the other managers.",
    );
    this.name = "StorageCorruptError";
    this.file = file;
    this.index = index;
  }
}

/**
 * The raft directory is encrypted and cannot be opened with the key given (or with none): a wrong or
 * missing data encryption key, not a damaged log.
 */
export class StorageKeyError extends Error {
  /** The storage directory. */
  file: string;
  /** Where the key came from (a file name), if the caller said. */
  keyFile: string | undefined;
  constructor(file: string, reason: "missing" | "wrong", keyFile?: string) {
    const from = keyFile === undefined ? " given" : ` in ${keyFile}`;
    super(
      reason === "missing"
        ? `raft log in ${file} is encrypted, and no data encryption key was given to open it: open it with ` +
            "the key it was encrypted with."
        : `raft log in ${file} is encrypted with another data encryption key than the one${from}: its key ` +
            "check record does not authenticate (AES-GCM). shoal will not read it: put back the key file that " +
            "belongs to this raft directory, or move the directory aside and rejoin this manager to the swarm so " +
            "that it receives the log from the other managers.",
    );
    this.name = "StorageKeyError";
    this.file = file;
    this.keyFile = keyFile;
  }
}

// ---------------------------------------------------------------------------------------------------
// The record layout, in one table: each record's key (or key prefix and key length), the smallest payload
// it has (format byte included; `exact`: it has exactly that), the format version it is written in, the
// value offsets of its fields (after the 4-byte crc), and the words an error in it is reported with.

export const RECORD = {
  keyCheck: {
    key: KEY_CHECK_KEY,
    payload: KEY_CHECK_PAYLOAD,
    exact: true,
    version: FORMAT_SEALED,
    at: { flags: 5, sealed: 6 },
    where: "in its key check record",
    wrongSize: "record has the wrong size",
  },
  hardState: {
    key: HARD_STATE_KEY,
    payload: 1 + 24,
    exact: true,
    version: FORMAT_VERSION,
    at: { term: 5, vote: 13, commit: 21 },
    where: "in its hard state",
    wrongSize: "hard state record has the wrong size",
  },
  marker: {
    key: COMPACTION_MARKER_KEY,
    payload: 1 + 16,
    exact: true,
    version: FORMAT_VERSION,
    at: { index: 5, term: 13 },
    where: "in its compaction marker",
    wrongSize: "record has the wrong size",
  },
  snapMeta: {
    key: SNAPSHOT_META_KEY,
    payload: 1 + 32 + 12,
    exact: false,
    version: FORMAT_VERSION,
    at: { index: 5 },
    where: "in its snapshot metadata",
    wrongSize: "record has the wrong size",
  },
  /** Key "e" + u64 index; value: ver | type | term | index | data (sealed when encrypted). */
  entry: {
    prefix: K_ENTRY,
    keyBytes: 9,
    payload: ENTRY_HEADER,
    at: { type: 5, term: 6, index: 14, data: 4 + ENTRY_HEADER },
  },
  /** Key "s" + u64 snapshot index + u32 chunk number; value: ver | data (sealed when encrypted). */
  chunk: { prefix: K_CHUNK, keyBytes: 13, payload: 1, keyAt: { index: 1, n: 9 }, at: { data: 5 } },
} as const;

/** One of the records stored under a single key. */
export type SingletonRecord = (typeof RECORD)["keyCheck" | "hardState" | "marker" | "snapMeta"];

/** The keys of all records with one prefix (entries or chunks): for level's iterators. */
export function prefixRange(prefix: number): { gte: Buffer; lt: Buffer } {
  return { gte: Buffer.from([prefix]), lt: Buffer.from([prefix + 1]) };
}
