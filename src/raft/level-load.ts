// Reading a LevelStorage directory back (level-format.ts says how it is laid out): every record is
// checked (checksum, format, size, the numbers it holds, its place in the log) before any of it is used,
// one loader per record type, in the order that lets each check the one before: the key check (is the
// directory encrypted, and is this its key), the hard state, the snapshot, the compaction marker, the
// entries. Also the one-time encryption in place of a directory written in clear.

import type { Level } from "level";
import {
  checkRecord,
  chunkAad,
  copyOut,
  decodeSnapMeta,
  ENTRY_HEADER,
  encodeChunk,
  encodeEntryWith,
  encodeKeyCheck,
  entryAad,
  entryKey,
  FORMAT_SEALED,
  FORMAT_VERSION,
  KC_PURGE,
  KEY_CHECK_KEY,
  KEY_CHECK_PLAINTEXT,
  keyCheckAad,
  prefixRange,
  RECORD,
  type RecordCipher,
  readU64,
  SEAL_OVERHEAD,
  type SingletonRecord,
  StorageCorruptError,
  StorageKeyError,
  snapshotChunkKey,
} from "./level-format.js";
import { MemoryStorage } from "./storage.js";
import { EMPTY, type Entry, EntryType, emptyHardState, emptySnapshot, type HardState, type Snapshot } from "./types.js";

export type Db = Level<Buffer, Buffer>;

export interface Loaded {
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

/** What every loader is given: the directory (for errors), level, and keys found stale on the way. */
interface LoadCtx {
  dir: string;
  db: Db;
  /** Keys left behind (a replaced snapshot's chunks, entries compacted away): deleted once all is read. */
  stale: Buffer[];
  /** The cipher to read records with: set iff the directory is encrypted. */
  rc: RecordCipher | undefined;
}

export async function load(dir: string, db: Db, cipher: RecordCipher | undefined, dekFile?: string): Promise<Loaded> {
  const kc = await loadKeyCheck(dir, db, cipher, dekFile);
  const ctx: LoadCtx = { dir, db, stale: [], rc: kc.rc };
  const hardState = await loadHardState(ctx);
  const { snap, snapChunks, snapChunkSize } = await loadSnapshot(ctx);
  const marker = await loadMarker(ctx, snap);
  const ents = await loadEntries(ctx, marker, snap, hardState);
  if (ctx.stale.length > 0) {
    await db.batch(
      ctx.stale.map((key) => ({ type: "del" as const, key })),
      { sync: true },
    );
  }
  const mem = new MemoryStorage();
  mem.hardState = hardState;
  mem.snap = snap;
  mem.ents = ents;
  return { mem, snapChunks, snapChunkSize, encrypted: kc.rc !== undefined, purgePending: kc.purgePending };
}

/** A record stored under one key, checked against its row of RECORD; undefined if absent. */
async function readSingleton(dir: string, db: Db, rec: SingletonRecord): Promise<Buffer | undefined> {
  const raw = await db.get(rec.key);
  if (raw === undefined) return undefined;
  const bad = checkRecord(raw, rec.payload, rec.version);
  if (bad !== undefined || (rec.exact && raw.length !== 4 + rec.payload)) {
    throw new StorageCorruptError(dir, 0, bad ?? rec.wrongSize, rec.where);
  }
  return raw;
}

/**
 * Key check: is the directory encrypted, and is this its key? Checked first, so that a wrong key is
 * reported as such and not as a corrupt record.
 */
async function loadKeyCheck(
  dir: string,
  db: Db,
  cipher: RecordCipher | undefined,
  dekFile: string | undefined,
): Promise<{ rc: RecordCipher | undefined; purgePending: boolean }> {
  const rec = RECORD.keyCheck;
  const raw = await readSingleton(dir, db, rec);
  if (raw === undefined) return { rc: undefined, purgePending: false };
  if (cipher === undefined) throw new StorageKeyError(dir, "missing", dekFile);
  const flags = raw[rec.at.flags]!;
  const plain = cipher.open(raw.subarray(rec.at.sealed), keyCheckAad(flags));
  if (plain === undefined) throw new StorageKeyError(dir, "wrong", dekFile);
  if (!KEY_CHECK_PLAINTEXT.equals(plain)) {
    throw new StorageCorruptError(dir, 0, "it seals an unexpected value", rec.where);
  }
  return { rc: cipher, purgePending: (flags & KC_PURGE) !== 0 };
}

async function loadHardState({ dir, db }: LoadCtx): Promise<HardState> {
  const rec = RECORD.hardState;
  const raw = await readSingleton(dir, db, rec);
  if (raw === undefined) return emptyHardState();
  const term = readU64(raw, rec.at.term);
  const vote = readU64(raw, rec.at.vote);
  const commit = readU64(raw, rec.at.commit);
  if (term < 0 || vote < 0 || commit < 0) {
    throw new StorageCorruptError(dir, 0, "hard state holds an out-of-range number", rec.where);
  }
  return { term, vote, commit };
}

interface LoadedSnapshot {
  snap: Snapshot;
  snapChunks: number;
  snapChunkSize: number;
}

/** Snapshot: metadata, then all chunks (chunks of a snapshot that was replaced are stale). */
async function loadSnapshot(ctx: LoadCtx): Promise<LoadedSnapshot> {
  const { dir, db } = ctx;
  const raw = await readSingleton(dir, db, RECORD.snapMeta);
  if (raw === undefined) {
    for await (const k of db.keys(prefixRange(RECORD.chunk.prefix))) ctx.stale.push(k);
    return { snap: emptySnapshot(), snapChunks: 0, snapChunkSize: 0 };
  }
  const m = decodeSnapMeta(raw);
  if (typeof m === "string") throw new StorageCorruptError(dir, 0, m, RECORD.snapMeta.where);
  const snapErr = (reason: string) =>
    new StorageCorruptError(dir, m.index, reason, `in the snapshot at index ${m.index}`);
  const sealOverhead = ctx.rc === undefined ? 0 : SEAL_OVERHEAD;
  const version = ctx.rc === undefined ? FORMAT_VERSION : FORMAT_SEALED;
  const data = new Uint8Array(m.size);
  let n = 0;
  let pos = 0;
  for await (const [k, v] of db.iterator(prefixRange(RECORD.chunk.prefix))) {
    const idx = k.length === RECORD.chunk.keyBytes ? readU64(k, RECORD.chunk.keyAt.index) : -1;
    if (idx !== m.index) {
      ctx.stale.push(k); // a chunk of a snapshot that has been replaced
      continue;
    }
    const cn = k.readUInt32BE(RECORD.chunk.keyAt.n);
    if (cn !== n) throw snapErr(n < m.chunks ? `chunk ${n} is missing` : `unexpected chunk ${cn}`);
    const cbad = checkRecord(v, RECORD.chunk.payload + sealOverhead, version);
    if (cbad !== undefined) throw snapErr(`chunk ${cn}: ${cbad}`);
    const len = v.length - RECORD.chunk.at.data - sealOverhead;
    const want = Math.min(m.chunkSize, m.size - pos);
    if (cn >= m.chunks || len !== want) throw snapErr(`chunk ${cn} holds ${len} bytes, expected ${Math.max(want, 0)}`);
    let part: Uint8Array = v.subarray(RECORD.chunk.at.data);
    if (ctx.rc !== undefined) {
      const plain = ctx.rc.open(v.subarray(RECORD.chunk.at.data), chunkAad(k));
      if (plain === undefined) throw snapErr(`chunk ${cn}: ${NOT_AUTHENTIC}`);
      part = plain;
    }
    data.set(part, pos);
    pos += len;
    n++;
  }
  if (n !== m.chunks) throw snapErr(`chunk ${n} is missing (expected ${m.chunks} chunks)`);
  if (pos !== m.size) throw snapErr(`data is ${pos} bytes, expected ${m.size}`);
  const snap = { metadata: { index: m.index, term: m.term, confState: m.confState }, data };
  return { snap, snapChunks: m.chunks, snapChunkSize: m.chunkSize };
}

/** Compaction marker: the log holds entries (marker.index, last]; it must agree with the snapshot. */
async function loadMarker({ dir, db }: LoadCtx, snap: Snapshot): Promise<{ offset: number; offsetTerm: number }> {
  const rec = RECORD.marker;
  const raw = await readSingleton(dir, db, rec);
  const offset = raw === undefined ? 0 : readU64(raw, rec.at.index);
  const offsetTerm = raw === undefined ? 0 : readU64(raw, rec.at.term);
  if (offset < 0 || offsetTerm < 0) {
    throw new StorageCorruptError(dir, 0, "compaction marker holds an out-of-range number", rec.where);
  }
  const snapIndex = snap.metadata.index;
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
  return { offset, offsetTerm };
}

/** Entries, in index order, none missing, from the marker to at least the snapshot and the commit index. */
async function loadEntries(
  ctx: LoadCtx,
  marker: { offset: number; offsetTerm: number },
  snap: Snapshot,
  hardState: HardState,
): Promise<Entry[]> {
  const { dir, db } = ctx;
  const { offset, offsetTerm } = marker;
  const snapIndex = snap.metadata.index;
  const ents: Entry[] = [{ term: offsetTerm, index: offset, type: EntryType.Normal, data: EMPTY }];
  let expect = offset + 1;
  for await (const [k, v] of db.iterator(prefixRange(RECORD.entry.prefix))) {
    const idx = k.length === RECORD.entry.keyBytes ? readU64(k, 1) : -1;
    if (idx < 0) throw new StorageCorruptError(dir, expect, `malformed entry key ${k.toString("hex")}`);
    if (idx <= offset) {
      ctx.stale.push(k); // left behind by a crash during compaction
      continue;
    }
    if (idx !== expect) {
      throw new StorageCorruptError(
        dir,
        expect,
        `entry ${expect} is missing (the next stored entry is ${idx}${expect <= hardState.commit ? "; it was committed" : ", after the commit index " + hardState.commit})`,
      );
    }
    ents.push(readEntry(ctx, idx, v, ents[ents.length - 1]!.term, snap));
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
  return ents;
}

/** The entry record at `idx`: checked, its term not below `prevTerm` and agreeing with the snapshot. */
function readEntry({ dir, rc }: LoadCtx, idx: number, v: Buffer, prevTerm: number, snap: Snapshot): Entry {
  const at = RECORD.entry.at;
  const bad = checkRecord(
    v,
    ENTRY_HEADER + (rc === undefined ? 0 : SEAL_OVERHEAD),
    rc === undefined ? FORMAT_VERSION : FORMAT_SEALED,
  );
  if (bad !== undefined) throw new StorageCorruptError(dir, idx, bad);
  const type = v[at.type]!;
  const term = readU64(v, at.term);
  const vIdx = readU64(v, at.index);
  if (vIdx !== idx) throw new StorageCorruptError(dir, idx, `the entry stored there says index ${vIdx}`);
  if (type !== EntryType.Normal && type !== EntryType.ConfChange)
    throw new StorageCorruptError(dir, idx, `unknown entry type ${type}`);
  if (term < prevTerm)
    throw new StorageCorruptError(dir, idx, `term ${term} is lower than the term ${prevTerm} before it`);
  if (idx === snap.metadata.index && term !== snap.metadata.term) {
    throw new StorageCorruptError(
      dir,
      idx,
      `entry term ${term} differs from the snapshot's term ${snap.metadata.term}`,
    );
  }
  let data: Uint8Array;
  if (rc === undefined) data = copyOut(v, at.data);
  else {
    const plain = rc.open(v.subarray(at.data), entryAad(v));
    if (plain === undefined) throw new StorageCorruptError(dir, idx, NOT_AUTHENTIC);
    data = plain;
  }
  return { term, index: idx, type: type as EntryType, data };
}

/**
 * Encrypts a directory loaded in clear: its entries and snapshot chunks are rewritten sealed and the key
 * check record added, in one synced batch (a crash leaves it all in clear or all encrypted); then, unless
 * the directory was new, level is compacted so that the clear values (also of records deleted before)
 * leave its files. Returns whether the directory held anything.
 */
export async function encryptInPlace(db: Db, loaded: Loaded, cipher: RecordCipher): Promise<boolean> {
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
export async function purgeClear(db: Db, cipher: RecordCipher): Promise<void> {
  const compact = (db as unknown as { compactRange?: (start: Buffer, end: Buffer) => Promise<void> }).compactRange;
  if (typeof compact === "function") await compact.call(db, Buffer.from([0x00]), Buffer.from([0xff]));
  await db.put(KEY_CHECK_KEY, encodeKeyCheck(cipher, 0), { sync: true });
}
