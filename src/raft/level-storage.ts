// Durable Raft storage on level (LevelDB). The core reads a MemoryStorage synchronously; LevelStorage
// writes every Ready through to disk in one batch (fsync'd when the Ready must sync) and, on open, loads
// and verifies everything back into a MemoryStorage.
//
// Encryption at rest (as swarmkit encrypts its WAL and snapshots with a per-manager DEK): opened with a
// data encryption key (`dek`, 32 bytes), the payload of every log entry and snapshot chunk is sealed with
// AES-256-GCM under a fresh random 96-bit nonce, with the record's key and clear header as additional
// authenticated data, so a record can be neither read nor altered nor moved to another key without the
// DEK. Hard state, compaction marker and snapshot metadata hold only numbers and member ids, and stay in
// clear. A "k" record (a known constant sealed with the DEK) marks the directory as encrypted: it tells a
// wrong key from corruption, refuses to open without a key, and makes plaintext entries in an encrypted
// log an error (no downgrade). A directory written before encryption (no "k") is read, then encrypted in
// place on the first open with a DEK: its entries and chunks are rewritten sealed in one batch and level
// is compacted so the old clear values leave its files.
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
//              ver=2 u8 | sealed(data)                                     AAD "s"+index+n | ver

import { createCipheriv, createDecipheriv, createSecretKey, type KeyObject, randomFillSync } from "node:crypto";
import { mkdir, stat } from "node:fs/promises";
import * as zlib from "node:zlib";
import { Level } from "level";
import { cloneConfState, MemoryStorage } from "./storage.js";
import {
  type ConfState,
  EMPTY,
  type Entry,
  EntryType,
  ErrSnapOutOfDate,
  emptyHardState,
  emptySnapshot,
  type HardState,
  isEmptySnapshot,
  type Snapshot,
} from "./types.js";

// ---------------------------------------------------------------------------------------------------
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
export const SNAPSHOT_META_KEY: Buffer = Buffer.from([K_SNAPMETA]);
export const COMPACTION_MARKER_KEY: Buffer = Buffer.from([K_MARKER]);
export const KEY_CHECK_KEY: Buffer = Buffer.from([K_KEYCHECK]);

/** Format byte, type, term, index: the clear header of an entry record. */
const ENTRY_HEADER = 1 + 1 + 8 + 8;
/** Format version of a record in clear. */
const FORMAT_VERSION = 1;
/** Format version of a record whose payload is sealed with AES-256-GCM. */
const FORMAT_SEALED = 2;
const TWO32 = 0x1_0000_0000;
const MAX_HI = 0x1f_ffff; // high 32 bits of Number.MAX_SAFE_INTEGER

function writeU64(b: Buffer, off: number, n: number): void {
  b.writeUInt32BE(Math.floor(n / TWO32), off);
  b.writeUInt32BE(n >>> 0, off + 4);
}

/** Reads a u64; returns -1 if it is not a safe integer (the caller reports corruption). */
function readU64(b: Buffer, off: number): number {
  const hi = b.readUInt32BE(off);
  if (hi > MAX_HI) return -1;
  return hi * TWO32 + b.readUInt32BE(off + 4);
}

function checkU64(what: string, n: number): void {
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
function checkRecord(b: Buffer, minPayload: number, version = FORMAT_VERSION): string | undefined {
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
const SEAL_OVERHEAD = NONCE_BYTES + TAG_BYTES;
/** What the key check record seals. */
const KEY_CHECK_PLAINTEXT = Buffer.from("shoal raft DEK check v1\n");
const KEY_CHECK_PAYLOAD = 2 + SEAL_OVERHEAD + KEY_CHECK_PLAINTEXT.length;
const KC_PURGE = 0x01;
/** Nonces are drawn from a buffer of random bytes refilled this many nonces at a time (a syscall each). */
const NONCE_POOL = 512;

/** Seals and opens record payloads with one DEK. */
class RecordCipher {
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
function entryAad(b: Buffer): Buffer {
  const aad = Buffer.allocUnsafe(9 + ENTRY_HEADER);
  aad[0] = K_ENTRY;
  b.copy(aad, 1, 14, 22); // index
  b.copy(aad, 9, 4, 4 + ENTRY_HEADER);
  return aad;
}

function chunkAad(key: Buffer): Buffer {
  const aad = Buffer.allocUnsafe(key.length + 1);
  key.copy(aad, 0);
  aad[key.length] = FORMAT_SEALED;
  return aad;
}

function keyCheckAad(flags: number): Buffer {
  return Buffer.from([K_KEYCHECK, FORMAT_SEALED, flags]);
}

function encodeKeyCheck(cipher: RecordCipher, flags: number): Buffer {
  const b = newRecord(KEY_CHECK_PAYLOAD, FORMAT_SEALED);
  b[5] = flags;
  cipher.sealInto(b, 6, KEY_CHECK_PLAINTEXT, keyCheckAad(flags));
  return sealRecord(b);
}

/** Encodes a log entry record: in clear, or sealed with `dek`. Tests write records behind the storage's back. */
export function encodeEntry(e: Entry, dek?: Uint8Array): Buffer {
  return encodeEntryWith(e, dek === undefined ? undefined : new RecordCipher(dek));
}

function encodeEntryWith(e: Entry, cipher: RecordCipher | undefined): Buffer {
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

function encodeChunk(key: Buffer, part: Uint8Array, cipher: RecordCipher | undefined): Buffer {
  if (cipher === undefined) {
    const b = newRecord(1 + part.length);
    b.set(part, 5);
    return sealRecord(b);
  }
  const b = newRecord(1 + SEAL_OVERHEAD + part.length, FORMAT_SEALED);
  cipher.sealInto(b, 5, part, chunkAad(key));
  return sealRecord(b);
}

function encodeHardState(hs: HardState): Buffer {
  checkU64("hard state term", hs.term);
  checkU64("hard state vote", hs.vote);
  checkU64("hard state commit", hs.commit);
  const b = newRecord(1 + 24);
  writeU64(b, 5, hs.term);
  writeU64(b, 13, hs.vote);
  writeU64(b, 21, hs.commit);
  return sealRecord(b);
}

function encodeMarker(index: number, term: number): Buffer {
  const b = newRecord(1 + 16);
  writeU64(b, 5, index);
  writeU64(b, 13, term);
  return sealRecord(b);
}

interface SnapMeta {
  index: number;
  term: number;
  size: number;
  chunkSize: number;
  chunks: number;
  confState: ConfState;
}

function encodeSnapMeta(m: SnapMeta): Buffer {
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
function decodeSnapMeta(b: Buffer): SnapMeta | string {
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

function copyOut(b: Buffer, start: number): Uint8Array {
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

type Db = Level<Buffer, Buffer>;
type Op = { type: "put"; key: Buffer; value: Buffer } | { type: "del"; key: Buffer };

export interface LevelStorageOptions {
  /** Size of a stored snapshot chunk in bytes (default 1 MiB). */
  snapshotChunkSize?: number;
  /**
   * Data encryption key (DEK_BYTES random bytes): entries and snapshot chunks are sealed with it, and a
   * log written in clear is encrypted on open. Without one the log is written in clear (tests and tools
   * only: managers always pass their DEK), and an encrypted directory fails to open.
   */
  dek?: Uint8Array;
  /** Where `dek` is kept (a file name), for error messages. */
  dekFile?: string;
}

/** What a raft directory holds, as far as encryption goes. */
export type StorageKind = "absent" | "clear" | "encrypted";

export interface SaveRequest {
  hardState?: HardState;
  entries: Entry[];
  snapshot?: Snapshot;
}

const DEFAULT_CHUNK = 1 << 20;

export class LevelStorage {
  readonly mem: MemoryStorage;
  readonly dir: string;
  readonly snapshotChunkSize: number;
  /** Entries and snapshot chunks are sealed with the DEK. */
  readonly encrypted: boolean;
  /** This open found the log in clear (written before encryption) and encrypted it in place. */
  readonly migrated: boolean;
  private readonly db: Db;
  private readonly cipher: RecordCipher | undefined;
  /** Number of chunks the stored snapshot has (to delete them when it is replaced). */
  private snapChunks: number;
  /** Serializes writers: each save/createSnapshot/close runs after the previous one has finished. */
  private tail: Promise<unknown> = Promise.resolve();
  private closed = false;

  private constructor(
    dir: string,
    db: Db,
    loaded: Loaded,
    chunkSize: number,
    cipher: RecordCipher | undefined,
    migrated: boolean,
  ) {
    this.dir = dir;
    this.db = db;
    this.mem = loaded.mem;
    this.snapChunks = loaded.snapChunks;
    this.snapshotChunkSize = chunkSize;
    this.cipher = cipher;
    this.encrypted = cipher !== undefined;
    this.migrated = migrated;
  }

  /**
   * Opens (creating it if missing) the storage in `dir` and loads and verifies everything it holds. With
   * `opts.dek`, a new directory is created encrypted and one in clear is encrypted before this returns.
   */
  static async open(dir: string, opts?: LevelStorageOptions): Promise<LevelStorage> {
    const chunkSize = opts?.snapshotChunkSize ?? DEFAULT_CHUNK;
    if (!Number.isInteger(chunkSize) || chunkSize < 1 || chunkSize > 0xffff_ffff) {
      throw new RangeError(`snapshotChunkSize must be a positive integer below 4 GiB, got ${chunkSize}`);
    }
    const cipher = opts?.dek === undefined ? undefined : new RecordCipher(opts.dek);
    await mkdir(dir, { recursive: true });
    const db: Db = new Level<Buffer, Buffer>(dir, { keyEncoding: "buffer", valueEncoding: "buffer" });
    await db.open();
    try {
      const loaded = await load(dir, db, cipher, opts?.dekFile);
      let migrated = false;
      if (cipher !== undefined && !loaded.encrypted) {
        migrated = await encryptInPlace(db, loaded, cipher);
      } else if (loaded.purgePending && cipher !== undefined) {
        await purgeClear(db, cipher); // a crash interrupted the compaction after an encryption in place
      }
      return new LevelStorage(dir, db, loaded, chunkSize, cipher, migrated);
    } catch (err) {
      await db.close().catch(() => undefined);
      throw err;
    }
  }

  /** What `dir` holds: nothing, a raft log in clear, or an encrypted one. Opens and closes level. */
  static async inspect(dir: string): Promise<StorageKind> {
    try {
      await stat(dir);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "ENOENT") return "absent";
      throw e;
    }
    const db: Db = new Level<Buffer, Buffer>(dir, { keyEncoding: "buffer", valueEncoding: "buffer" });
    await db.open();
    try {
      return (await db.get(KEY_CHECK_KEY)) === undefined ? "clear" : "encrypted";
    } finally {
      await db.close();
    }
  }

  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.tail.then(() => {
      if (this.closed) throw new Error(`raft storage in ${this.dir} is closed`);
      return fn();
    });
    this.tail = run.catch(() => undefined);
    return run;
  }

  /**
   * Persist one Ready: snapshot first (if any), then entries (truncating a conflicting suffix on disk
   * too), then hard state; one level batch, written with { sync: true } when `sync` is true. Then
   * updates `mem` (applySnapshot / append / setHardState). Nothing is written if the request is invalid.
   */
  save(rd: SaveRequest, sync: boolean): Promise<void> {
    return this.serial(() => this.doSave(rd, sync));
  }

  private async doSave(rd: SaveRequest, sync: boolean): Promise<void> {
    const mem = this.mem;
    const ops: Op[] = [];
    const snap = isEmptySnapshot(rd.snapshot) ? undefined : rd.snapshot;

    // The log as it will be after the snapshot: entries (offset, last].
    let offset = mem.ents[0]!.index;
    let last = mem.lastIndex();
    let newChunks = this.snapChunks;
    if (snap !== undefined) {
      if (snap.metadata.index <= mem.snap.metadata.index) throw new ErrSnapOutOfDate();
      newChunks = this.snapshotOps(ops, snap);
      // Installing a snapshot replaces the whole log.
      for (let i = offset + 1; i <= last; i++) ops.push({ type: "del", key: entryKey(i) });
      ops.push({
        type: "put",
        key: COMPACTION_MARKER_KEY,
        value: encodeMarker(snap.metadata.index, snap.metadata.term),
      });
      offset = snap.metadata.index;
      last = offset;
    }

    let ents = rd.entries;
    if (ents.length > 0) {
      for (let k = 1; k < ents.length; k++) {
        if (ents[k]!.index !== ents[0]!.index + k) {
          throw new Error(`entries to save are not contiguous: index ${ents[k]!.index} follows ${ents[k - 1]!.index}`);
        }
      }
      const first = offset + 1;
      if (ents[0]!.index < first) ents = ents.slice(Math.min(first - ents[0]!.index, ents.length));
      if (ents.length > 0) {
        const start = ents[0]!.index;
        if (start > last + 1) throw new Error(`missing log entry [last: ${last}, append at: ${start}]`);
        const newLast = start + ents.length - 1;
        // A conflicting suffix beyond the new entries goes; the new entries overwrite the rest.
        for (let i = newLast + 1; i <= last; i++) ops.push({ type: "del", key: entryKey(i) });
        for (const e of ents) ops.push({ type: "put", key: entryKey(e.index), value: encodeEntryWith(e, this.cipher) });
        last = newLast;
      }
    }

    if (rd.hardState !== undefined) {
      if (rd.hardState.commit > last) {
        throw new Error(`hard state commit ${rd.hardState.commit} is beyond the last log index ${last}`);
      }
      ops.push({ type: "put", key: HARD_STATE_KEY, value: encodeHardState(rd.hardState) });
    }

    if (ops.length === 0) return;
    await this.writeOps(ops, sync);

    this.snapChunks = newChunks;
    if (snap !== undefined) mem.applySnapshot(snap);
    if (ents.length > 0) mem.append(ents);
    if (rd.hardState !== undefined) mem.setHardState(rd.hardState);
  }

  /** One atomic write. A chained batch costs a third of an array batch per op in classic-level. */
  private async writeOps(ops: Op[], sync: boolean): Promise<void> {
    const b = this.db.batch();
    for (const op of ops) {
      if (op.type === "put") b.put(op.key, op.value);
      else b.del(op.key);
    }
    await b.write({ sync });
  }

  /** Appends the ops that store `snap` and delete the previous snapshot's chunks; returns the chunk count. */
  private snapshotOps(ops: Op[], snap: Snapshot): number {
    const cs = this.snapshotChunkSize;
    const data = snap.data;
    const chunks = data.length === 0 ? 0 : Math.ceil(data.length / cs);
    const md = snap.metadata;
    checkU64("snapshot index", md.index);
    checkU64("snapshot term", md.term);
    ops.push({
      type: "put",
      key: SNAPSHOT_META_KEY,
      value: encodeSnapMeta({
        index: md.index,
        term: md.term,
        size: data.length,
        chunkSize: cs,
        chunks,
        confState: md.confState,
      }),
    });
    for (let n = 0; n < chunks; n++) {
      const part = data.subarray(n * cs, Math.min((n + 1) * cs, data.length));
      const key = snapshotChunkKey(md.index, n);
      ops.push({ type: "put", key, value: encodeChunk(key, part, this.cipher) });
    }
    const old = this.mem.snap.metadata.index;
    if (old !== 0 && old !== md.index) {
      for (let n = 0; n < this.snapChunks; n++) ops.push({ type: "del", key: snapshotChunkKey(old, n) });
    }
    return chunks;
  }

  /**
   * The state machine was snapshotted at applied index `index`: store the snapshot (synced), then compact
   * the log keeping `keepTail` entries up to `index` (firstIndex becomes index-keepTail+1, never lower
   * than it already is). Updates mem (createSnapshot + compact).
   */
  createSnapshot(index: number, confState: ConfState, data: Uint8Array, keepTail: number): Promise<Snapshot> {
    return this.serial(() => this.doCreateSnapshot(index, confState, data, keepTail));
  }

  private async doCreateSnapshot(
    index: number,
    confState: ConfState,
    data: Uint8Array,
    keepTail: number,
  ): Promise<Snapshot> {
    const mem = this.mem;
    if (!Number.isSafeInteger(keepTail) || keepTail < 0) throw new RangeError(`keepTail must be >= 0, got ${keepTail}`);
    if (index <= mem.snap.metadata.index) throw new ErrSnapOutOfDate();
    if (index > mem.lastIndex()) throw new Error(`snapshot ${index} is out of bound lastindex(${mem.lastIndex()})`);
    const snap: Snapshot = { metadata: { index, term: mem.term(index), confState: cloneConfState(confState) }, data };

    const ops: Op[] = [];
    const chunks = this.snapshotOps(ops, snap);
    await this.writeOps(ops, true);
    this.snapChunks = chunks;
    mem.createSnapshot(index, confState, data);

    const offset = mem.ents[0]!.index;
    const compactIndex = index - keepTail;
    if (compactIndex > offset) {
      // The marker first (synced): entries at or below it are stale from then on, and open() removes any
      // left behind by a crash. Then one range delete, not one op per entry.
      await this.writeOps(
        [{ type: "put", key: COMPACTION_MARKER_KEY, value: encodeMarker(compactIndex, mem.term(compactIndex)) }],
        true,
      );
      mem.compact(compactIndex);
      await this.db.clear({ gt: entryKey(offset), lte: entryKey(compactIndex) });
    }
    return mem.snap;
  }

  /** Waits for pending writes, then closes the database. Idempotent. */
  close(): Promise<void> {
    const run = this.tail.then(async () => {
      if (this.closed) return;
      this.closed = true;
      await this.db.close();
    });
    this.tail = run.catch(() => undefined);
    return run;
  }
}

// ---------------------------------------------------------------------------------------------------
// Loading and verification

interface Loaded {
  mem: MemoryStorage;
  /** Chunks of the stored snapshot, and the chunk size it was stored with. */
  snapChunks: number;
  snapChunkSize: number;
  /** The directory has a key check record: its entries and chunks are sealed. */
  encrypted: boolean;
  /** The key check record says clear values may remain in level's files. */
  purgePending: boolean;
}

const NOT_AUTHENTIC =
  "the encrypted record does not authenticate (AES-GCM): it was altered, or sealed with another key";

async function load(dir: string, db: Db, cipher: RecordCipher | undefined, dekFile?: string): Promise<Loaded> {
  const stale: Buffer[] = [];

  // Key check: is the directory encrypted, and is this its key? Checked first, so that a wrong key is
  // reported as such and not as a corrupt record.
  let rc: RecordCipher | undefined; // the cipher to read records with: set iff the directory is encrypted
  let purgePending = false;
  const kcRaw = await db.get(KEY_CHECK_KEY);
  if (kcRaw !== undefined) {
    const bad = checkRecord(kcRaw, KEY_CHECK_PAYLOAD, FORMAT_SEALED);
    if (bad !== undefined || kcRaw.length !== 4 + KEY_CHECK_PAYLOAD) {
      throw new StorageCorruptError(dir, 0, bad ?? "record has the wrong size", "in its key check record");
    }
    if (cipher === undefined) throw new StorageKeyError(dir, "missing", dekFile);
    const flags = kcRaw[5]!;
    const plain = cipher.open(kcRaw.subarray(6), keyCheckAad(flags));
    if (plain === undefined) throw new StorageKeyError(dir, "wrong", dekFile);
    if (!KEY_CHECK_PLAINTEXT.equals(plain)) {
      throw new StorageCorruptError(dir, 0, "it seals an unexpected value", "in its key check record");
    }
    rc = cipher;
    purgePending = (flags & KC_PURGE) !== 0;
  }
  const recVersion = rc === undefined ? FORMAT_VERSION : FORMAT_SEALED;
  const sealOverhead = rc === undefined ? 0 : SEAL_OVERHEAD;

  // Hard state.
  let hardState = emptyHardState();
  const hsRaw = await db.get(HARD_STATE_KEY);
  if (hsRaw !== undefined) {
    const bad = checkRecord(hsRaw, 1 + 24);
    if (bad !== undefined || hsRaw.length !== 4 + 25) {
      throw new StorageCorruptError(dir, 0, bad ?? "hard state record has the wrong size", "in its hard state");
    }
    const term = readU64(hsRaw, 5);
    const vote = readU64(hsRaw, 13);
    const commit = readU64(hsRaw, 21);
    if (term < 0 || vote < 0 || commit < 0) {
      throw new StorageCorruptError(dir, 0, "hard state holds an out-of-range number", "in its hard state");
    }
    hardState = { term, vote, commit };
  }

  // Snapshot: metadata, then all chunks.
  let snap = emptySnapshot();
  let snapChunks = 0;
  let snapChunkSize = 0;
  const metaRaw = await db.get(SNAPSHOT_META_KEY);
  if (metaRaw !== undefined) {
    const bad = checkRecord(metaRaw, 1 + 32 + 12);
    if (bad !== undefined) throw new StorageCorruptError(dir, 0, bad, "in its snapshot metadata");
    const m = decodeSnapMeta(metaRaw);
    if (typeof m === "string") throw new StorageCorruptError(dir, 0, m, "in its snapshot metadata");
    const snapErr = (reason: string) =>
      new StorageCorruptError(dir, m.index, reason, `in the snapshot at index ${m.index}`);
    const data = new Uint8Array(m.size);
    let n = 0;
    let pos = 0;
    for await (const [k, v] of db.iterator({ gte: Buffer.from([K_CHUNK]), lt: Buffer.from([K_CHUNK + 1]) })) {
      const idx = k.length === 13 ? readU64(k, 1) : -1;
      if (idx !== m.index) {
        stale.push(k); // a chunk of a snapshot that has been replaced
        continue;
      }
      const cn = k.readUInt32BE(9);
      if (cn !== n) throw snapErr(n < m.chunks ? `chunk ${n} is missing` : `unexpected chunk ${cn}`);
      const cbad = checkRecord(v, 1 + sealOverhead, recVersion);
      if (cbad !== undefined) throw snapErr(`chunk ${cn}: ${cbad}`);
      const len = v.length - 5 - sealOverhead;
      const want = Math.min(m.chunkSize, m.size - pos);
      if (cn >= m.chunks || len !== want)
        throw snapErr(`chunk ${cn} holds ${len} bytes, expected ${Math.max(want, 0)}`);
      let part: Uint8Array = v.subarray(5);
      if (rc !== undefined) {
        const plain = rc.open(v.subarray(5), chunkAad(k));
        if (plain === undefined) throw snapErr(`chunk ${cn}: ${NOT_AUTHENTIC}`);
        part = plain;
      }
      data.set(part, pos);
      pos += len;
      n++;
    }
    if (n !== m.chunks) throw snapErr(`chunk ${n} is missing (expected ${m.chunks} chunks)`);
    if (pos !== m.size) throw snapErr(`data is ${pos} bytes, expected ${m.size}`);
    snap = { metadata: { index: m.index, term: m.term, confState: m.confState }, data };
    snapChunks = m.chunks;
    snapChunkSize = m.chunkSize;
  } else {
    for await (const k of db.keys({ gte: Buffer.from([K_CHUNK]), lt: Buffer.from([K_CHUNK + 1]) })) stale.push(k);
  }
  const snapIndex = snap.metadata.index;

  // Compaction marker: the log holds entries (marker.index, last].
  let offset = 0;
  let offsetTerm = 0;
  const markerRaw = await db.get(COMPACTION_MARKER_KEY);
  if (markerRaw !== undefined) {
    const bad = checkRecord(markerRaw, 1 + 16);
    if (bad !== undefined || markerRaw.length !== 4 + 17) {
      throw new StorageCorruptError(dir, 0, bad ?? "record has the wrong size", "in its compaction marker");
    }
    offset = readU64(markerRaw, 5);
    offsetTerm = readU64(markerRaw, 13);
    if (offset < 0 || offsetTerm < 0) {
      throw new StorageCorruptError(
        dir,
        0,
        "compaction marker holds an out-of-range number",
        "in its compaction marker",
      );
    }
  }
  if (offset > snapIndex) {
    throw new StorageCorruptError(
      dir,
      snapIndex + 1,
      `the log was compacted up to index ${offset} but the snapshot only covers up to ${snapIndex}`,
    );
  }
  if (offset === snapIndex && snapIndex > 0 && offsetTerm !== snap.metadata.term) {
    throw new StorageCorruptError(
      dir,
      snapIndex,
      `the compaction marker says term ${offsetTerm}, the snapshot says term ${snap.metadata.term}`,
    );
  }

  // Entries, in index order.
  const ents: Entry[] = [{ term: offsetTerm, index: offset, type: EntryType.Normal, data: EMPTY }];
  let expect = offset + 1;
  let prevTerm = offsetTerm;
  for await (const [k, v] of db.iterator({ gte: Buffer.from([K_ENTRY]), lt: Buffer.from([K_ENTRY + 1]) })) {
    const idx = k.length === 9 ? readU64(k, 1) : -1;
    if (idx < 0) throw new StorageCorruptError(dir, expect, `malformed entry key ${k.toString("hex")}`);
    if (idx <= offset) {
      stale.push(k); // left behind by a crash during compaction
      continue;
    }
    if (idx !== expect) {
      throw new StorageCorruptError(
        dir,
        expect,
        `entry ${expect} is missing (the next stored entry is ${idx}${expect <= hardState.commit ? "; it was committed" : ", after the commit index " + hardState.commit})`,
      );
    }
    const bad = checkRecord(v, ENTRY_HEADER + sealOverhead, recVersion);
    if (bad !== undefined) throw new StorageCorruptError(dir, idx, bad);
    const type = v[5]!;
    const term = readU64(v, 6);
    const vIdx = readU64(v, 14);
    if (vIdx !== idx) throw new StorageCorruptError(dir, idx, `the entry stored there says index ${vIdx}`);
    if (type !== EntryType.Normal && type !== EntryType.ConfChange)
      throw new StorageCorruptError(dir, idx, `unknown entry type ${type}`);
    if (term < prevTerm)
      throw new StorageCorruptError(dir, idx, `term ${term} is lower than the term ${prevTerm} before it`);
    if (idx === snapIndex && term !== snap.metadata.term) {
      throw new StorageCorruptError(
        dir,
        idx,
        `entry term ${term} differs from the snapshot's term ${snap.metadata.term}`,
      );
    }
    let data: Uint8Array;
    if (rc === undefined) data = copyOut(v, 4 + ENTRY_HEADER);
    else {
      const plain = rc.open(v.subarray(4 + ENTRY_HEADER), entryAad(v));
      if (plain === undefined) throw new StorageCorruptError(dir, idx, NOT_AUTHENTIC);
      data = plain;
    }
    ents.push({ term, index: idx, type: type as EntryType, data });
    prevTerm = term;
    expect++;
  }
  const last = expect - 1;
  if (last < snapIndex) {
    throw new StorageCorruptError(
      dir,
      expect,
      `entry ${expect} is missing (the log must reach the snapshot index ${snapIndex})`,
    );
  }
  if (hardState.commit > last) {
    throw new StorageCorruptError(
      dir,
      last + 1,
      `committed entry ${last + 1} is missing (commit index is ${hardState.commit}, the log ends at ${last})`,
    );
  }

  if (stale.length > 0) {
    await db.batch(
      stale.map((key) => ({ type: "del" as const, key })),
      { sync: true },
    );
  }

  const mem = new MemoryStorage();
  mem.hardState = hardState;
  mem.snap = snap;
  mem.ents = ents;
  return { mem, snapChunks, snapChunkSize, encrypted: rc !== undefined, purgePending };
}

/**
 * Encrypts a directory loaded in clear: its entries and snapshot chunks are rewritten sealed and the key
 * check record added, in one synced batch (a crash leaves it all in clear or all encrypted); then, unless
 * the directory was new, level is compacted so that the clear values (also of records deleted before)
 * leave its files. Returns whether the directory held anything.
 */
async function encryptInPlace(db: Db, loaded: Loaded, cipher: RecordCipher): Promise<boolean> {
  const mem = loaded.mem;
  const hadClear = (await db.keys({ limit: 1 }).all()).length > 0;
  const b = db.batch();
  for (let i = 1; i < mem.ents.length; i++) {
    const e = mem.ents[i]!;
    b.put(entryKey(e.index), encodeEntryWith(e, cipher));
  }
  const data = mem.snap.data;
  const cs = loaded.snapChunkSize;
  for (let n = 0; n < loaded.snapChunks; n++) {
    const key = snapshotChunkKey(mem.snap.metadata.index, n);
    b.put(key, encodeChunk(key, data.subarray(n * cs, Math.min((n + 1) * cs, data.length)), cipher));
  }
  b.put(KEY_CHECK_KEY, encodeKeyCheck(cipher, hadClear ? KC_PURGE : 0));
  await b.write({ sync: true });
  if (hadClear) await purgeClear(db, cipher);
  return hadClear;
}

/**
 * Compacts the whole key range, so that level rewrites its tables without the overwritten clear values
 * and deletes the files (log and tables) that held them; then clears the key check's purge flag.
 */
async function purgeClear(db: Db, cipher: RecordCipher): Promise<void> {
  const compact = (db as unknown as { compactRange?: (start: Buffer, end: Buffer) => Promise<void> }).compactRange;
  if (typeof compact === "function") await compact.call(db, Buffer.from([0x00]), Buffer.from([0xff]));
  await db.put(KEY_CHECK_KEY, encodeKeyCheck(cipher, 0), { sync: true });
}
