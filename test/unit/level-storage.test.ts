import { randomBytes } from "node:crypto";
import { mkdtemp, readdir, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as zlib from "node:zlib";
import { Level } from "level";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import {
  COMPACTION_MARKER_KEY,
  crc32,
  crc32Table,
  encodeEntry,
  entryKey,
  HARD_STATE_KEY,
  KEY_CHECK_KEY,
  snapshotChunkKey,
} from "../../src/raft/level-format.js";
import { LevelStorage, StorageCorruptError, StorageKeyError } from "../../src/raft/level-storage.js";
import { type ConfState, type Entry, EntryType, ErrCompacted, ErrSnapOutOfDate } from "../../src/raft/types.js";

let dir: string;
const open: LevelStorage[] = [];
/** The data encryption key the suite under test opens storage with (undefined: in clear). */
let dek: Uint8Array | undefined;
const DEK = new Uint8Array(randomBytes(32));

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "shoal-level-storage-"));
});

afterEach(async () => {
  for (const s of open.splice(0)) await s.close().catch(() => undefined);
  await rm(dir, { recursive: true, force: true });
});

async function openStorage(opts?: { snapshotChunkSize?: number }): Promise<LevelStorage> {
  const s = await LevelStorage.open(dir, { ...opts, ...(dek ? { dek } : {}) });
  open.push(s);
  return s;
}

async function reopen(s: LevelStorage, opts?: { snapshotChunkSize?: number }): Promise<LevelStorage> {
  await s.close();
  return openStorage(opts);
}

function ent(index: number, term: number, data = `e${index}t${term}`, type = EntryType.Normal): Entry {
  return { index, term, type, data: new TextEncoder().encode(data) };
}

/** An entry record as the storage under test writes it (sealed with `dek` if there is one). */
function rec(e: Entry): Buffer {
  return encodeEntry(e, dek);
}

function ents(from: number, to: number, term: number): Entry[] {
  const out: Entry[] = [];
  for (let i = from; i <= to; i++) out.push(ent(i, term));
  return out;
}

/** Runs `fn` on the raw level database of `dir` (the storage must be closed). */
async function withRaw(fn: (db: Level<Buffer, Buffer>) => Promise<void>): Promise<void> {
  const db = new Level<Buffer, Buffer>(dir, { keyEncoding: "buffer", valueEncoding: "buffer" });
  await db.open();
  try {
    await fn(db);
  } finally {
    await db.close();
  }
}

async function rawKeys(prefix: string): Promise<Buffer[]> {
  const keys: Buffer[] = [];
  await withRaw(async (db) => {
    const p = Buffer.from(prefix);
    for await (const k of db.keys({ gte: p, lt: Buffer.from([p[0]! + 1]) })) keys.push(k);
  });
  return keys;
}

async function expectCorrupt(index: number, fragment: string | RegExp): Promise<StorageCorruptError> {
  let err: unknown;
  try {
    open.push(await LevelStorage.open(dir, dek ? { dek } : {}));
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(StorageCorruptError);
  const ce = err as StorageCorruptError;
  expect(ce.file).toBe(dir);
  expect(ce.index).toBe(index);
  expect(ce.message).toContain(`raft log in ${dir} is corrupt`);
  expect(ce.message).toMatch(fragment);
  return ce;
}

const cs: ConfState = { voters: [1, 2, 3], learners: [4], removed: [9] };

describe("crc32", () => {
  it("the table implementation matches zlib", () => {
    const samples = [
      new Uint8Array(0),
      new TextEncoder().encode("123456789"),
      new Uint8Array(10_000).map((_, i) => (i * 31) & 0xff),
    ];
    expect(crc32Table(samples[1]!)).toBe(0xcbf43926);
    for (const s of samples) {
      expect(crc32Table(s)).toBe(crc32(s));
      if (typeof (zlib as { crc32?: unknown }).crc32 === "function") {
        expect(crc32Table(s)).toBe((zlib as unknown as { crc32: (d: Uint8Array) => number }).crc32(s));
      }
    }
  });
});

describe.each([
  ["encrypted", DEK],
  ["in clear", undefined],
])("LevelStorage (%s)", (_mode, key) => {
  beforeEach(() => {
    dek = key;
  });

  it("creates the directory if it is missing and starts empty", async () => {
    dir = join(dir, "nested", "raft");
    const s = await openStorage();
    expect(s.dir).toBe(dir);
    expect(s.mem.firstIndex()).toBe(1);
    expect(s.mem.lastIndex()).toBe(0);
    expect(s.mem.term(0)).toBe(0);
    expect(s.mem.initialState()).toEqual({
      hardState: { term: 0, vote: 0, commit: 0 },
      confState: { voters: [], learners: [], removed: [] },
    });
    await s.close();
    await s.close(); // idempotent
    dir = join(dir, "..", ".."); // let afterEach remove the temp dir itself
  });

  it("save/reopen: hard state, entries and the snapshot's conf state survive", async () => {
    let s = await openStorage();
    await s.save({ hardState: { term: 1, vote: 1, commit: 0 }, entries: [] }, true);
    await s.save({ entries: [ent(1, 1, ""), ent(2, 1, "conf", EntryType.ConfChange), ent(3, 1)] }, true);
    await s.save({ hardState: { term: 2, vote: 3, commit: 3 }, entries: ents(4, 10, 2) }, true);
    await s.createSnapshot(5, cs, new Uint8Array([1, 2, 3]), 10);
    s = await reopen(s);

    const m = s.mem;
    expect(m.initialState()).toEqual({ hardState: { term: 2, vote: 3, commit: 3 }, confState: cs });
    expect(m.firstIndex()).toBe(1);
    expect(m.lastIndex()).toBe(10);
    expect(m.term(0)).toBe(0);
    expect(m.term(3)).toBe(1);
    expect(m.term(4)).toBe(2);
    expect(m.term(10)).toBe(2);
    const got = m.entries(1, 11, Number.MAX_SAFE_INTEGER);
    expect(got).toEqual([ent(1, 1, ""), ent(2, 1, "conf", EntryType.ConfChange), ent(3, 1), ...ents(4, 10, 2)]);
    expect(got[1]!.type).toBe(EntryType.ConfChange);
    expect(m.snapshot().metadata).toEqual({ index: 5, term: 2, confState: cs });
    expect(m.snapshot().data).toEqual(new Uint8Array([1, 2, 3]));
  });

  it("an unsynced save is readable after a clean close too", async () => {
    let s = await openStorage();
    await s.save({ hardState: { term: 1, vote: 2, commit: 2 }, entries: ents(1, 3, 1) }, false);
    s = await reopen(s);
    expect(s.mem.lastIndex()).toBe(3);
    expect(s.mem.hardState).toEqual({ term: 1, vote: 2, commit: 2 });
  });

  it("truncates a conflicting suffix, on disk too", async () => {
    let s = await openStorage();
    await s.save({ hardState: { term: 1, vote: 1, commit: 3 }, entries: ents(1, 8, 1) }, true);
    // A new leader at term 2 overwrites from index 5 with a shorter tail.
    await s.save({ hardState: { term: 2, vote: 2, commit: 3 }, entries: ents(5, 6, 2) }, true);
    expect(s.mem.lastIndex()).toBe(6);
    s = await reopen(s);
    expect(s.mem.lastIndex()).toBe(6);
    expect(s.mem.entries(1, 7, Infinity)).toEqual([...ents(1, 4, 1), ...ents(5, 6, 2)]);
    await s.close();
    expect((await rawKeys("e")).map((k) => k.readUInt32BE(5))).toEqual([1, 2, 3, 4, 5, 6]);

    // Overwriting with a longer, conflicting tail also works, and appending after it.
    s = await openStorage();
    await s.save({ entries: ents(4, 9, 3) }, true);
    await s.save({ entries: [ent(10, 3)] }, true);
    s = await reopen(s);
    expect(s.mem.entries(1, 11, Infinity)).toEqual([...ents(1, 3, 1), ...ents(4, 10, 3)]);
  });

  it("ignores entries already covered by the snapshot and rejects a gap without writing anything", async () => {
    let s = await openStorage();
    await s.save({ hardState: { term: 1, vote: 1, commit: 4 }, entries: ents(1, 6, 1) }, true);
    await s.createSnapshot(4, cs, new Uint8Array([7]), 0);
    await s.save({ entries: ents(2, 7, 1) }, true); // 2..4 are compacted: only 5..7 are taken
    expect(s.mem.firstIndex()).toBe(5);
    expect(s.mem.lastIndex()).toBe(7);
    await expect(s.save({ hardState: { term: 9, vote: 9, commit: 4 }, entries: ents(9, 10, 1) }, true)).rejects.toThrow(
      /missing log entry/,
    );
    await expect(s.save({ hardState: { term: 1, vote: 1, commit: 99 }, entries: [] }, true)).rejects.toThrow(
      /commit 99/,
    );
    s = await reopen(s);
    expect(s.mem.lastIndex()).toBe(7);
    expect(s.mem.hardState).toEqual({ term: 1, vote: 1, commit: 4 });
  });

  it("a 40 MiB snapshot is sealed a few MiB at a time, the event loop turning in between, and reads back whole", async () => {
    // Sealed in one go, a 113 MB snapshot stopped a manager's heartbeats for 1.6 s. Count the event-loop
    // turns between the call and the moment the database write is built.
    let s = await openStorage();
    await s.save({ hardState: { term: 2, vote: 1, commit: 10 }, entries: ents(1, 10, 2) }, true);
    const big = new Uint8Array(40 * 1024 * 1024);
    for (let i = 0; i < big.length; i += 4096) big[i] = i % 251;
    let turns = 0;
    let spinning = true;
    const spin = (): void => {
      turns++;
      if (spinning) setImmediate(spin);
    };
    setImmediate(spin);
    const db = (s as unknown as { db: { batch: () => unknown } }).db;
    const batch = db.batch.bind(db);
    let turnsAtWrite = -1;
    db.batch = () => {
      if (turnsAtWrite < 0) turnsAtWrite = turns;
      return batch();
    };
    const start = turns;
    await s.createSnapshot(10, cs, big, 5);
    spinning = false;
    expect(turnsAtWrite - start).toBeGreaterThanOrEqual(4);
    s = await reopen(s);
    expect(Buffer.compare(Buffer.from(s.mem.snapshot().data), Buffer.from(big))).toBe(0);
    await s.close();
  });

  it("createSnapshot compacts keeping the tail; reopen restores firstIndex and a 5 MiB snapshot byte for byte", async () => {
    let s = await openStorage();
    await s.save({ hardState: { term: 3, vote: 1, commit: 100 }, entries: ents(1, 120, 3) }, true);
    const big = new Uint8Array(5 * 1024 * 1024 + 12345);
    for (let i = 0; i < big.length; i++) big[i] = (i * 2654435761) >>> 24;
    const snap = await s.createSnapshot(100, cs, big, 20);
    expect(snap.metadata).toEqual({ index: 100, term: 3, confState: cs });
    expect(s.mem.firstIndex()).toBe(81);
    expect(s.mem.term(80)).toBe(3);
    expect(() => s.mem.term(79)).toThrow(ErrCompacted);

    s = await reopen(s);
    expect(s.mem.firstIndex()).toBe(81);
    expect(s.mem.lastIndex()).toBe(120);
    expect(s.mem.term(80)).toBe(3);
    expect(() => s.mem.term(79)).toThrow(ErrCompacted);
    expect(s.mem.entries(81, 121, Infinity)).toEqual(ents(81, 120, 3));
    const back = s.mem.snapshot();
    expect(back.metadata).toEqual({ index: 100, term: 3, confState: cs });
    expect(back.data.length).toBe(big.length);
    expect(Buffer.compare(Buffer.from(back.data), Buffer.from(big))).toBe(0);
    await s.close();

    const entryKeys = await rawKeys("e");
    expect(entryKeys.length).toBe(40);
    expect(entryKeys[0]!.equals(entryKey(81))).toBe(true);
    const chunkKeys = await rawKeys("s");
    expect(chunkKeys.length).toBe(6); // 5 MiB + a bit in 1 MiB chunks
    expect(chunkKeys.every((k, n) => k.equals(snapshotChunkKey(100, n)))).toBe(true);

    // A newer snapshot replaces the old chunks; keepTail never goes below what is already compacted.
    s = await openStorage();
    await s.createSnapshot(110, cs, new Uint8Array([42]), 1000);
    expect(s.mem.firstIndex()).toBe(81);
    await expect(s.createSnapshot(105, cs, new Uint8Array(0), 0)).rejects.toThrow(ErrSnapOutOfDate);
    s = await reopen(s);
    expect(s.mem.firstIndex()).toBe(81);
    expect(s.mem.snapshot().data).toEqual(new Uint8Array([42]));
    await s.close();
    expect((await rawKeys("s")).map((k) => k.toString("hex"))).toEqual([snapshotChunkKey(110, 0).toString("hex")]);
  });

  it("honours a custom snapshot chunk size and an empty snapshot", async () => {
    let s = await openStorage({ snapshotChunkSize: 3 });
    await s.save({ hardState: { term: 1, vote: 1, commit: 5 }, entries: ents(1, 5, 1) }, true);
    await s.createSnapshot(2, cs, new Uint8Array(0), 0);
    await s.createSnapshot(4, cs, new Uint8Array([1, 2, 3, 4, 5, 6, 7]), 0);
    s = await reopen(s);
    expect(s.mem.snapshot().data).toEqual(new Uint8Array([1, 2, 3, 4, 5, 6, 7]));
    expect(s.mem.firstIndex()).toBe(5);
    expect(s.mem.term(4)).toBe(1);
    await s.close();
    expect((await rawKeys("s")).length).toBe(3);
  });

  it("a follower installing a snapshot from the leader replaces the log", async () => {
    let s = await openStorage();
    await s.save({ hardState: { term: 1, vote: 1, commit: 5 }, entries: ents(1, 10, 1) }, true);
    await s.createSnapshot(3, cs, new Uint8Array([3]), 0);
    const leaderCs: ConfState = { voters: [1, 2, 5], learners: [], removed: [3, 4] };
    const data = new Uint8Array(2500).fill(0xab);
    await s.save(
      {
        hardState: { term: 4, vote: 0, commit: 50 },
        entries: [],
        snapshot: { metadata: { index: 50, term: 4, confState: leaderCs }, data },
      },
      true,
    );
    expect(s.mem.firstIndex()).toBe(51);
    expect(s.mem.lastIndex()).toBe(50);
    // Entries the leader sends next land after the snapshot.
    await s.save({ hardState: { term: 4, vote: 0, commit: 52 }, entries: ents(51, 52, 4) }, true);
    s = await reopen(s);
    expect(s.mem.initialState()).toEqual({ hardState: { term: 4, vote: 0, commit: 52 }, confState: leaderCs });
    expect(s.mem.firstIndex()).toBe(51);
    expect(s.mem.lastIndex()).toBe(52);
    expect(s.mem.term(50)).toBe(4);
    expect(s.mem.entries(51, 53, Infinity)).toEqual(ents(51, 52, 4));
    expect(s.mem.snapshot().data).toEqual(data);
    await expect(
      s.save({ entries: [], snapshot: { metadata: { index: 40, term: 4, confState: leaderCs }, data } }, true),
    ).rejects.toThrow(ErrSnapOutOfDate);
    await s.close();
    expect((await rawKeys("e")).map((k) => k.readUInt32BE(5))).toEqual([51, 52]);
    expect((await rawKeys("s")).every((k) => k.readUInt32BE(5) === 50)).toBe(true);
  });

  it("snapshot and entries in the same Ready are both persisted", async () => {
    let s = await openStorage();
    await s.save({ hardState: { term: 1, vote: 1, commit: 2 }, entries: ents(1, 2, 1) }, true);
    await s.save(
      {
        hardState: { term: 2, vote: 0, commit: 21 },
        entries: ents(19, 22, 2), // 19, 20 are covered by the snapshot
        snapshot: { metadata: { index: 20, term: 2, confState: cs }, data: new Uint8Array([5]) },
      },
      true,
    );
    s = await reopen(s);
    expect(s.mem.firstIndex()).toBe(21);
    expect(s.mem.lastIndex()).toBe(22);
    expect(s.mem.hardState.commit).toBe(21);
  });

  it("deletes entries left behind below the compaction point by a crash", async () => {
    let s = await openStorage();
    await s.save({ hardState: { term: 1, vote: 1, commit: 10 }, entries: ents(1, 10, 1) }, true);
    await s.createSnapshot(8, cs, new Uint8Array([8]), 2);
    await s.close();
    await withRaw(async (db) => {
      await db.put(entryKey(2), rec(ent(2, 1)));
      await db.put(entryKey(6), rec(ent(6, 1)));
    });
    s = await openStorage();
    expect(s.mem.firstIndex()).toBe(7);
    expect(s.mem.lastIndex()).toBe(10);
    await s.close();
    expect((await rawKeys("e")).map((k) => k.readUInt32BE(5))).toEqual([7, 8, 9, 10]);
  });

  it("a crash between storing the snapshot and compacting leaves a valid, uncompacted log", async () => {
    let s = await openStorage();
    await s.save({ hardState: { term: 1, vote: 1, commit: 10 }, entries: ents(1, 10, 1) }, true);
    await s.createSnapshot(8, cs, new Uint8Array([8]), 0);
    await s.close();
    // Undo the compaction batch: put entries 1..8 back and drop the marker.
    await withRaw(async (db) => {
      for (let i = 1; i <= 8; i++) await db.put(entryKey(i), rec(ent(i, 1)));
      await db.del(COMPACTION_MARKER_KEY);
    });
    s = await openStorage();
    expect(s.mem.firstIndex()).toBe(1);
    expect(s.mem.lastIndex()).toBe(10);
    expect(s.mem.snapshot().metadata.index).toBe(8);
  });

  describe("corruption", () => {
    async function seed(): Promise<void> {
      const s = await openStorage();
      await s.save(
        { hardState: { term: 2, vote: 1, commit: 15 }, entries: [...ents(1, 10, 1), ...ents(11, 20, 2)] },
        true,
      );
      await s.close();
    }

    it("a flipped byte in an entry value names the directory and the index", async () => {
      await seed();
      await withRaw(async (db) => {
        const v = Buffer.from(await db.get(entryKey(7)));
        v[v.length - 1]! ^= 0x01;
        await db.put(entryKey(7), v);
      });
      const err = await expectCorrupt(7, /at index 7: checksum mismatch/);
      // The failed open released the database.
      await withRaw(async () => undefined);
      expect(err.name).toBe("StorageCorruptError");
    });

    it("a missing middle entry names the missing index", async () => {
      await seed();
      await withRaw((db) => db.del(entryKey(12)));
      await expectCorrupt(12, /at index 12: entry 12 is missing \(the next stored entry is 13; it was committed\)/);
    });

    it("missing last entries leave commit beyond the last index", async () => {
      await seed();
      await withRaw(async (db) => {
        for (let i = 14; i <= 20; i++) await db.del(entryKey(i));
      });
      await expectCorrupt(14, /at index 14: committed entry 14 is missing \(commit index is 15, the log ends at 13\)/);
    });

    it("a gap in the uncommitted tail is reported, not truncated", async () => {
      await seed();
      await withRaw((db) => db.del(entryKey(18)));
      await expectCorrupt(18, /entry 18 is missing \(the next stored entry is 19, after the commit index 15\)/);
      // Nothing was deleted.
      expect((await rawKeys("e")).length).toBe(19);
    });

    it("an entry stored under the wrong key is reported", async () => {
      await seed();
      await withRaw(async (db) => db.put(entryKey(5), rec(ent(6, 1))));
      await expectCorrupt(5, /at index 5: the entry stored there says index 6/);
    });

    it("decreasing terms are reported", async () => {
      await seed();
      await withRaw(async (db) => db.put(entryKey(12), rec(ent(12, 1))));
      await expectCorrupt(12, /at index 12: term 1 is lower than the term 2 before it/);
      await withRaw(async (db) => {
        await db.put(entryKey(12), rec(ent(12, 2)));
        await db.put(entryKey(4), rec(ent(4, 3)));
      });
      await expectCorrupt(5, /at index 5: term 1 is lower than the term 3 before it/);
    });

    it("a corrupt hard state is reported", async () => {
      await seed();
      await withRaw(async (db) => {
        const v = Buffer.from(await db.get(HARD_STATE_KEY));
        v[10]! ^= 0xff;
        await db.put(HARD_STATE_KEY, v);
      });
      await expectCorrupt(0, /in its hard state: checksum mismatch/);
    });

    it("a corrupt or missing snapshot chunk is reported", async () => {
      let s = await openStorage({ snapshotChunkSize: 1024 });
      await s.save({ hardState: { term: 1, vote: 1, commit: 10 }, entries: ents(1, 10, 1) }, true);
      await s.createSnapshot(9, cs, new Uint8Array(4000).fill(7), 0);
      s = await reopen(s, { snapshotChunkSize: 1024 });
      expect(s.mem.snapshot().data.length).toBe(4000);
      await s.close();

      let chunk2 = Buffer.alloc(0);
      await withRaw(async (db) => {
        chunk2 = Buffer.from(await db.get(snapshotChunkKey(9, 2)));
        const v = Buffer.from(chunk2);
        v[100]! ^= 0x10;
        await db.put(snapshotChunkKey(9, 2), v);
      });
      await expectCorrupt(9, /in the snapshot at index 9: chunk 2: checksum mismatch/);

      await withRaw((db) => db.del(snapshotChunkKey(9, 2)));
      await expectCorrupt(9, /in the snapshot at index 9: chunk 2 is missing/);

      await withRaw((db) => db.del(snapshotChunkKey(9, 3)));
      await withRaw(async (db) => db.put(snapshotChunkKey(9, 2), chunk2));
      await expectCorrupt(9, /in the snapshot at index 9: chunk 3 is missing \(expected 4 chunks\)/);
    });
  });

  it("serializes concurrent saves", async () => {
    let s = await openStorage();
    const ps: Promise<void>[] = [];
    for (let i = 1; i <= 50; i++)
      ps.push(s.save({ hardState: { term: 1, vote: 1, commit: i - 1 }, entries: [ent(i, 1)] }, i % 2 === 0));
    await Promise.all(ps);
    s = await reopen(s);
    expect(s.mem.lastIndex()).toBe(50);
    expect(s.mem.hardState.commit).toBe(49);
  });

  it("throughput: 500 synced saves of one 256-byte entry", async () => {
    const s = await openStorage();
    const data = new Uint8Array(256).fill(1);
    const n = 500;
    const t0 = performance.now();
    for (let i = 1; i <= n; i++) {
      await s.save(
        {
          hardState: { term: 1, vote: 1, commit: i - 1 },
          entries: [{ index: i, term: 1, type: EntryType.Normal, data }],
        },
        true,
      );
    }
    const ms = performance.now() - t0;
    // Reported, not asserted: it depends on the disk.
    console.log(
      `level-storage: ${n} synced saves in ${ms.toFixed(0)} ms = ${Math.round((n * 1000) / ms)} saves/s (${dir})`,
    );
    expect(s.mem.lastIndex()).toBe(n);
  });
});

describe("LevelStorage encryption at rest", () => {
  beforeEach(() => {
    dek = DEK;
  });

  // What must never reach the disk in clear: a keyring key, a CA signing key (stand-ins).
  const MARKER = `SECRET-${randomBytes(12).toString("hex")}`;
  const secret = (i: number) => `{"op":"keys.rotate","key":"${MARKER}","n":${i}}`;

  /** Every file under `dir` (level's .log, .ldb, MANIFEST...), raw. */
  async function rawFiles(): Promise<{ name: string; bytes: Buffer }[]> {
    const out: { name: string; bytes: Buffer }[] = [];
    const walk = async (d: string): Promise<void> => {
      for (const de of await readdir(d, { withFileTypes: true })) {
        const p = join(d, de.name);
        if (de.isDirectory()) await walk(p);
        else out.push({ name: p, bytes: await readFile(p) });
      }
    };
    await walk(dir);
    return out;
  }

  async function filesWithMarker(): Promise<string[]> {
    return (await rawFiles()).filter((f) => f.bytes.includes(MARKER)).map((f) => f.name);
  }

  /** Writes entries, a snapshot (createSnapshot) and a leader's snapshot (save) that all hold MARKER. */
  async function writeSecrets(opts: { dek?: Uint8Array }): Promise<void> {
    const s = await LevelStorage.open(dir, { ...opts, snapshotChunkSize: 4096 });
    open.push(s);
    const e = (i: number, term: number) => ent(i, term, secret(i));
    await s.save(
      { hardState: { term: 1, vote: 1, commit: 20 }, entries: Array.from({ length: 30 }, (_, i) => e(i + 1, 1)) },
      true,
    );
    const snapData = new TextEncoder().encode(`${secret(0)}${"x".repeat(10_000)}${secret(-1)}`);
    await s.createSnapshot(20, cs, snapData, 5);
    await s.save(
      {
        hardState: { term: 2, vote: 0, commit: 40 },
        entries: [e(41, 2), e(42, 2)],
        snapshot: { metadata: { index: 40, term: 2, confState: cs }, data: snapData },
      },
      true,
    );
    await s.save({ entries: [e(43, 2)] }, true);
    await s.close();
  }

  async function expectSecretsBack(s: LevelStorage, last = 43): Promise<void> {
    expect(s.mem.firstIndex()).toBe(41);
    expect(s.mem.lastIndex()).toBe(last);
    expect(s.mem.entries(41, 44, Infinity)).toEqual([
      ent(41, 2, secret(41)),
      ent(42, 2, secret(42)),
      ent(43, 2, secret(43)),
    ]);
    expect(new TextDecoder().decode(s.mem.snapshot().data)).toContain(secret(-1));
    expect(s.mem.snapshot().metadata).toEqual({ index: 40, term: 2, confState: cs });
  }

  it("no file of the level directory holds an entry's or a snapshot's data in clear (and in clear, the scan finds it)", async () => {
    await writeSecrets({ dek: DEK });
    expect(await filesWithMarker()).toEqual([]);
    const s = await openStorage();
    expect(s.encrypted).toBe(true);
    await expectSecretsBack(s);
    await s.close();
    expect(await filesWithMarker()).toEqual([]);

    // The same writes without a key: the scan does find the marker (in level's write-ahead log at least).
    await rm(dir, { recursive: true, force: true });
    await writeSecrets({});
    expect((await filesWithMarker()).length).toBeGreaterThan(0);
  });

  it("a wrong key, or none, is refused with the directory named; a key of the wrong size is an error", async () => {
    await writeSecrets({ dek: DEK });
    const wrong = new Uint8Array(randomBytes(32));
    const err = await LevelStorage.open(dir, { dek: wrong, dekFile: "/var/lib/shoal/certificates/raft-dek" }).catch(
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(StorageKeyError);
    expect((err as StorageKeyError).file).toBe(dir);
    expect((err as Error).message).toContain(`raft log in ${dir} is encrypted with another data encryption key`);
    expect((err as Error).message).toContain("/var/lib/shoal/certificates/raft-dek");
    const none = await LevelStorage.open(dir).catch((e: unknown) => e);
    expect(none).toBeInstanceOf(StorageKeyError);
    expect((none as Error).message).toContain(`raft log in ${dir} is encrypted, and no data encryption key was given`);
    await expect(LevelStorage.open(dir, { dek: new Uint8Array(16) })).rejects.toThrow(/32 bytes, got 16/);
    // The failed opens released the database, and the right key still reads everything.
    const s = await openStorage();
    await expectSecretsBack(s);
  });

  /** Rewrites the value at `key` with `edit`, then fixes its CRC so that only AES-GCM can notice. */
  async function tamper(key: Buffer, edit: (v: Buffer) => void): Promise<void> {
    await withRaw(async (db) => {
      const v = Buffer.from((await db.get(key))!);
      edit(v);
      v.writeUInt32BE(crc32(v.subarray(4)), 0);
      await db.put(key, v);
    });
  }

  it("a flipped ciphertext byte, an altered clear header or a record moved under another key is corruption", async () => {
    let s = await openStorage();
    await s.save({ hardState: { term: 2, vote: 1, commit: 8 }, entries: [...ents(1, 5, 1), ...ents(6, 10, 2)] }, true);
    await s.close();

    // One byte of the ciphertext of entry 7 (the CRC recomputed, so the checksum passes).
    await tamper(entryKey(7), (v) => {
      v[4 + 18 + 12 + 2]! ^= 0x01;
    });
    let ce = await expectCorrupt(7, /at index 7: the encrypted record does not authenticate \(AES-GCM\)/);
    expect(ce.message).toContain(dir);
    await tamper(entryKey(7), (v) => {
      v[4 + 18 + 12 + 2]! ^= 0x01;
    });
    s = await openStorage();
    expect(s.mem.entries(7, 8, Infinity)).toEqual([ent(7, 2)]);
    await s.close();

    // The term in the clear header is authenticated too.
    await tamper(entryKey(4), (v) => {
      v[13]! ^= 0x02; // low byte of the term: 1 -> 3, a term that passes the other checks
    });
    await expectCorrupt(4, /at index 4: the encrypted record does not authenticate/);
    await tamper(entryKey(4), (v) => {
      v[13]! ^= 0x02;
    });

    // Entry 3's sealed data under entry 2's header: the key and header are the AAD.
    await withRaw(async (db) => {
      const v2 = Buffer.from((await db.get(entryKey(2)))!);
      const v3 = (await db.get(entryKey(3)))!;
      v3.copy(v2, 4 + 18, 4 + 18);
      v2.writeUInt32BE(crc32(v2.subarray(4)), 0);
      await db.put(entryKey(2), v2);
    });
    ce = await expectCorrupt(2, /at index 2: the encrypted record does not authenticate/);

    // Without the CRC fixed, the checksum catches it first.
    await withRaw(async (db) => db.put(entryKey(2), rec(ent(2, 1))));
    await withRaw(async (db) => {
      const v = Buffer.from((await db.get(entryKey(9)))!);
      v[v.length - 1]! ^= 0x80;
      await db.put(entryKey(9), v);
    });
    await expectCorrupt(9, /at index 9: checksum mismatch/);
  });

  it("a flipped byte in a sealed snapshot chunk is corruption of that snapshot", async () => {
    let s = await openStorage({ snapshotChunkSize: 1024 });
    await s.save({ hardState: { term: 1, vote: 1, commit: 10 }, entries: ents(1, 10, 1) }, true);
    await s.createSnapshot(9, cs, new Uint8Array(4000).fill(7), 0);
    s = await reopen(s, { snapshotChunkSize: 1024 });
    expect(s.mem.snapshot().data).toEqual(new Uint8Array(4000).fill(7));
    await s.close();
    await tamper(snapshotChunkKey(9, 1), (v) => {
      v[500]! ^= 0x04;
    });
    await expectCorrupt(9, /in the snapshot at index 9: chunk 1: the encrypted record does not authenticate/);
    // Chunk 2's record under chunk 1's key: the chunk key is authenticated.
    await withRaw(async (db) => db.put(snapshotChunkKey(9, 1), (await db.get(snapshotChunkKey(9, 2)))!));
    await expectCorrupt(9, /in the snapshot at index 9: chunk 1: the encrypted record does not authenticate/);
  });

  it("a record in clear in an encrypted log, or an encrypted log without its key check, is corruption", async () => {
    const s = await openStorage();
    await s.save({ hardState: { term: 1, vote: 1, commit: 5 }, entries: ents(1, 6, 1) }, true);
    await s.close();
    await withRaw(async (db) => db.put(entryKey(4), encodeEntry(ent(4, 1))));
    await expectCorrupt(4, /at index 4: a record in clear in an encrypted raft log/);
    await withRaw(async (db) => {
      await db.put(entryKey(4), rec(ent(4, 1)));
      await db.del(KEY_CHECK_KEY);
    });
    await expectCorrupt(1, /at index 1: an encrypted record in a raft log that is not encrypted/);
  });

  it("a log written in clear (before encryption) opens with a key, is encrypted in place and purged from level's files", async () => {
    await writeSecrets({});
    expect((await filesWithMarker()).length).toBeGreaterThan(0);
    // Opened without a key it stays readable and in clear.
    let s = await LevelStorage.open(dir);
    open.push(s);
    expect(s.encrypted).toBe(false);
    await expectSecretsBack(s);
    await s.close();

    s = await openStorage();
    expect(s.migrated).toBe(true);
    expect(s.encrypted).toBe(true);
    await expectSecretsBack(s);
    await s.save({ hardState: { term: 2, vote: 0, commit: 43 }, entries: [ent(44, 2, secret(44))] }, true);
    await s.close();
    expect(await filesWithMarker()).toEqual([]);

    s = await openStorage();
    expect(s.migrated).toBe(false);
    await expectSecretsBack(s, 44);
    expect(s.mem.entries(44, 45, Infinity)).toEqual([ent(44, 2, secret(44))]);
    await s.close();
    await expect(LevelStorage.open(dir)).rejects.toThrow(StorageKeyError);
  });

  it("a crash while purging the clear values is finished by the next open", async () => {
    await writeSecrets({});
    // The encrypting batch is written, then the compaction "crashes".
    const compact = vi
      .spyOn(Level.prototype as unknown as { compactRange: () => Promise<void> }, "compactRange")
      .mockRejectedValueOnce(new Error("killed during compaction"));
    try {
      await expect(openStorage()).rejects.toThrow(/killed during compaction/);
    } finally {
      compact.mockRestore();
    }
    // Usually the clear values are still in the files here; LevelDB's own background compaction may already
    // have dropped them on a loaded machine (seen in full runs), so this is not asserted: what matters is
    // that the next open finishes the purge whatever is left (the last assertion).
    await expect(LevelStorage.open(dir)).rejects.toThrow(StorageKeyError); // it is encrypted already
    const s = await openStorage();
    expect(s.migrated).toBe(false);
    await expectSecretsBack(s);
    await s.close();
    expect(await filesWithMarker()).toEqual([]);
  });
});
