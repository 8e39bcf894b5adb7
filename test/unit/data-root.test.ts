// DataRoot and the Raft log's data encryption key: made with the raft directory, kept beside the node key
// (mode 0600), required to open an encrypted raft directory, removed with it.

import { mkdtemp, readFile, rm, stat, unlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { DataRoot } from "../../src/daemon/state.js";
import { LevelStorage, StorageKeyError } from "../../src/raft/level-storage.js";
import { EntryType } from "../../src/raft/types.js";

let dir: string;
let root: DataRoot;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "shoal-data-root-"));
  root = new DataRoot(dir);
});

afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

const data = (s: string) => new TextEncoder().encode(s);

async function writeOne(s: LevelStorage, index: number, text: string): Promise<void> {
  await s.save(
    {
      hardState: { term: 1, vote: 1, commit: index },
      entries: [{ index, term: 1, type: EntryType.Normal, data: data(text) }],
    },
    true,
  );
}

describe("DataRoot raft DEK", () => {
  it("is made with the raft directory, saved 0600 beside the node key, and reused", async () => {
    expect(await root.loadRaftDek()).toBeUndefined();
    let s = await root.openRaftStorage();
    expect(s.encrypted).toBe(true);
    await writeOne(s, 1, "hello");
    await s.close();
    expect(root.raftDekFile).toBe(join(dir, "certificates", "raft-dek"));
    const st = await stat(root.raftDekFile);
    expect(st.mode & 0o777).toBe(0o600);
    const dek = await root.loadRaftDek();
    expect(dek?.length).toBe(32);

    s = await root.openRaftStorage();
    expect(s.mem.entries(1, 2, Infinity)[0]!.data).toEqual(data("hello"));
    await s.close();
    expect(await root.loadRaftDek()).toEqual(dek);
  });

  it("an encrypted raft directory without its DEK file fails to open, naming the file", async () => {
    const s = await root.openRaftStorage();
    await writeOne(s, 1, "hello");
    await s.close();
    const dek = (await readFile(root.raftDekFile, "utf8")).trim();
    await unlink(root.raftDekFile);
    await expect(root.openRaftStorage()).rejects.toThrow(
      `${root.raftDekFile} is missing: the raft log in ${root.raftDir} is encrypted`,
    );
    // Nothing was made in its place.
    expect(await root.loadRaftDek()).toBeUndefined();

    // Another node's key (or a garbled file) is reported as such.
    await root.saveRaftDek(new Uint8Array(32).fill(9));
    const err = await root.openRaftStorage().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(StorageKeyError);
    expect((err as Error).message).toContain(
      `raft log in ${root.raftDir} is encrypted with another data encryption key than the one in ${root.raftDekFile}`,
    );
    await writeFile(root.raftDekFile, "not a key\n");
    await expect(root.openRaftStorage()).rejects.toThrow(
      `${root.raftDekFile} does not hold a raft data encryption key`,
    );

    await writeFile(root.raftDekFile, `${dek}\n`);
    const back = await root.openRaftStorage();
    expect(back.mem.lastIndex()).toBe(1);
    await back.close();
  });

  it("a raft directory from before encryption gets a DEK and is encrypted in place", async () => {
    const clear = await LevelStorage.open(root.raftDir);
    await writeOne(clear, 1, "old");
    await clear.close();
    expect(await LevelStorage.inspect(root.raftDir)).toBe("clear");
    const s = await root.openRaftStorage();
    expect(s.migrated).toBe(true);
    expect(s.mem.entries(1, 2, Infinity)[0]!.data).toEqual(data("old"));
    await s.close();
    expect(await LevelStorage.inspect(root.raftDir)).toBe("encrypted");
    expect(await root.loadRaftDek()).toBeDefined();
  });

  it("wipeRaft and wipe remove the DEK with the log; a new log gets a new key", async () => {
    let s = await root.openRaftStorage();
    await s.close();
    const first = await root.loadRaftDek();
    await root.wipeRaft();
    expect(await LevelStorage.inspect(root.raftDir)).toBe("absent");
    expect(await root.loadRaftDek()).toBeUndefined();
    s = await root.openRaftStorage();
    await s.close();
    expect(await root.loadRaftDek()).not.toEqual(first);
    await root.wipe();
    expect(await root.loadRaftDek()).toBeUndefined();
    expect(await LevelStorage.inspect(root.raftDir)).toBe("absent");
  });
});
