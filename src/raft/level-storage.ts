// Durable Raft storage on level (LevelDB). The core reads a MemoryStorage synchronously; LevelStorage
// writes every Ready through to disk in one batch (fsync'd when the Ready must sync) and, on open, loads
// and verifies everything back into a MemoryStorage.
//
// On-disk format (all keys are raw bytes; level orders them bytewise):
//   "c"                      compaction marker: index and term of the entry just before the first stored
//                            entry (MemoryStorage's dummy entry). Absent means (0, 0).
//   "e" + u64be(index)       one log entry
//   "h"                      hard state
//   "m"                      snapshot metadata (index, term, data size, chunk size, chunk count, conf state)
//   "s" + u64be(index) + u32be(n)   chunk n of the data of the snapshot at `index`
// Every value is  u32be(crc32(payload)) + payload,  and every payload starts with a one-byte format
// version. Integers are big-endian; 64-bit fields hold non-negative JS safe integers.
//   entry:     ver u8 | type u8 | term u64 | index u64 | data...
//   hardstate: ver u8 | term u64 | vote u64 | commit u64
//   marker:    ver u8 | index u64 | term u64
//   snapmeta:  ver u8 | index u64 | term u64 | size u64 | chunkSize u32 | chunks u32 |
//              nVoters u32 | voters u64... | nLearners u32 | learners u64... | nRemoved u32 | removed u64...
//   chunk:     ver u8 | data...

import { mkdir } from "node:fs/promises";
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
const K_SNAPMETA = 0x6d; // 'm'
const K_CHUNK = 0x73; // 's'

export const HARD_STATE_KEY: Buffer = Buffer.from([K_HARDSTATE]);
export const SNAPSHOT_META_KEY: Buffer = Buffer.from([K_SNAPMETA]);
export const COMPACTION_MARKER_KEY: Buffer = Buffer.from([K_MARKER]);

const FORMAT_VERSION = 1;
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
function newRecord(payloadLen: number): Buffer {
  const b = Buffer.allocUnsafe(4 + payloadLen);
  b[4] = FORMAT_VERSION;
  return b;
}

function sealRecord(b: Buffer): Buffer {
  b.writeUInt32BE(crc32(b.subarray(4)), 0);
  return b;
}

/** Checks a record's CRC and version; returns the reason it is bad, or undefined if it is good. */
function checkRecord(b: Buffer, minPayload: number): string | undefined {
  if (b.length < 5) return `record is truncated (${b.length} bytes)`;
  if (b.readUInt32BE(0) !== crc32(b.subarray(4))) return "checksum mismatch";
  if (b[4] !== FORMAT_VERSION) return `unknown record format version ${b[4]}`;
  if (b.length < 4 + minPayload) return `record is truncated (${b.length} bytes)`;
  return undefined;
}

const ENTRY_HEADER = 1 + 1 + 8 + 8;

export function encodeEntry(e: Entry): Buffer {
  checkU64("entry term", e.term);
  checkU64("entry index", e.index);
  const b = newRecord(ENTRY_HEADER + e.data.length);
  b[5] = e.type;
  writeU64(b, 6, e.term);
  writeU64(b, 14, e.index);
  b.set(e.data, 4 + ENTRY_HEADER);
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

type Db = Level<Buffer, Buffer>;
type Op = { type: "put"; key: Buffer; value: Buffer } | { type: "del"; key: Buffer };

export interface LevelStorageOptions {
  /** Size of a stored snapshot chunk in bytes (default 1 MiB). */
  snapshotChunkSize?: number;
}

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
  private readonly db: Db;
  /** Number of chunks the stored snapshot has (to delete them when it is replaced). */
  private snapChunks: number;
  /** Serializes writers: each save/createSnapshot/close runs after the previous one has finished. */
  private tail: Promise<unknown> = Promise.resolve();
  private closed = false;

  private constructor(dir: string, db: Db, mem: MemoryStorage, snapChunks: number, chunkSize: number) {
    this.dir = dir;
    this.db = db;
    this.mem = mem;
    this.snapChunks = snapChunks;
    this.snapshotChunkSize = chunkSize;
  }

  /** Opens (creating it if missing) the storage in `dir` and loads and verifies everything it holds. */
  static async open(dir: string, opts?: LevelStorageOptions): Promise<LevelStorage> {
    const chunkSize = opts?.snapshotChunkSize ?? DEFAULT_CHUNK;
    if (!Number.isInteger(chunkSize) || chunkSize < 1 || chunkSize > 0xffff_ffff) {
      throw new RangeError(`snapshotChunkSize must be a positive integer below 4 GiB, got ${chunkSize}`);
    }
    await mkdir(dir, { recursive: true });
    const db: Db = new Level<Buffer, Buffer>(dir, { keyEncoding: "buffer", valueEncoding: "buffer" });
    await db.open();
    try {
      const { mem, snapChunks } = await load(dir, db);
      return new LevelStorage(dir, db, mem, snapChunks, chunkSize);
    } catch (err) {
      await db.close().catch(() => undefined);
      throw err;
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
        for (const e of ents) ops.push({ type: "put", key: entryKey(e.index), value: encodeEntry(e) });
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
      const b = newRecord(1 + part.length);
      b.set(part, 5);
      ops.push({ type: "put", key: snapshotChunkKey(md.index, n), value: sealRecord(b) });
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

async function load(dir: string, db: Db): Promise<{ mem: MemoryStorage; snapChunks: number }> {
  const stale: Buffer[] = [];

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
      const cbad = checkRecord(v, 1);
      if (cbad !== undefined) throw snapErr(`chunk ${cn}: ${cbad}`);
      const len = v.length - 5;
      const want = Math.min(m.chunkSize, m.size - pos);
      if (cn >= m.chunks || len !== want)
        throw snapErr(`chunk ${cn} holds ${len} bytes, expected ${Math.max(want, 0)}`);
      data.set(v.subarray(5), pos);
      pos += len;
      n++;
    }
    if (n !== m.chunks) throw snapErr(`chunk ${n} is missing (expected ${m.chunks} chunks)`);
    if (pos !== m.size) throw snapErr(`data is ${pos} bytes, expected ${m.size}`);
    snap = { metadata: { index: m.index, term: m.term, confState: m.confState }, data };
    snapChunks = m.chunks;
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
    const bad = checkRecord(v, ENTRY_HEADER);
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
    ents.push({ term, index: idx, type: type as EntryType, data: copyOut(v, 4 + ENTRY_HEADER) });
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
  return { mem, snapChunks };
}
