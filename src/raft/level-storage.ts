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
// The on-disk format (keys, records, encryption) is in level-format.ts; reading a directory back and
// verifying it, in level-load.ts.

import { mkdir, stat } from "node:fs/promises";
import { setImmediate as turn } from "node:timers/promises";
import { Level } from "level";
import {
  COMPACTION_MARKER_KEY,
  checkU64,
  encodeChunk,
  encodeEntryWith,
  encodeHardState,
  encodeMarker,
  encodeSnapMeta,
  entryKey,
  HARD_STATE_KEY,
  KEY_CHECK_KEY,
  RECORD,
  RecordCipher,
  snapshotChunkKey,
} from "./level-format.js";
import { type Db, encryptInPlace, type Loaded, load, purgeClear } from "./level-load.js";
import { cloneConfState, type MemoryStorage } from "./storage.js";
import {
  type ConfState,
  type Entry,
  ErrSnapOutOfDate,
  type HardState,
  isEmptySnapshot,
  type Snapshot,
} from "./types.js";

export { DEK_BYTES, StorageCorruptError, StorageKeyError } from "./level-format.js";

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
/** Snapshot bytes sealed per turn of the event loop when a snapshot is stored (see snapshotOps). */
const SEAL_SLICE_BYTES = 8 << 20;

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
      // The open's own error is the one to report; a database that could not be loaded is not used again.
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
    // The caller gets run's error; the tail only orders the next operation after this one.
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
      newChunks = await this.snapshotOps(ops, snap);
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

  /**
   * Appends the ops that store `snap` and delete the previous snapshot's chunks; returns the chunk count.
   * The chunks are sealed (checksummed, encrypted) a few MiB at a time with the event loop turning in
   * between: a 100 MB snapshot sealed in one go stopped a manager's heartbeats for over a second.
   */
  private async snapshotOps(ops: Op[], snap: Snapshot): Promise<number> {
    const cs = this.snapshotChunkSize;
    const data = snap.data;
    const chunks = data.length === 0 ? 0 : Math.ceil(data.length / cs);
    const md = snap.metadata;
    checkU64("snapshot index", md.index);
    checkU64("snapshot term", md.term);
    ops.push({
      type: "put",
      key: RECORD.snapMeta.key,
      value: encodeSnapMeta({
        index: md.index,
        term: md.term,
        size: data.length,
        chunkSize: cs,
        chunks,
        confState: md.confState,
      }),
    });
    let sealed = 0;
    for (let n = 0; n < chunks; n++) {
      const part = data.subarray(n * cs, Math.min((n + 1) * cs, data.length));
      const key = snapshotChunkKey(md.index, n);
      ops.push({ type: "put", key, value: encodeChunk(key, part, this.cipher) });
      sealed += part.length;
      if (sealed >= SEAL_SLICE_BYTES && n + 1 < chunks) {
        sealed = 0;
        await turn();
      }
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
    const chunks = await this.snapshotOps(ops, snap);
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
    // The caller gets run's error; the tail only orders the next operation after this one.
    this.tail = run.catch(() => undefined);
    return run;
  }
}
