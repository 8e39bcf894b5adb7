// Autolock at rest: the unlock key's format, sealing and opening with it, and a manager's data root sealed
// under it (raft-dek sealed under the KEK, the node key under the DEK), locked on a fresh start, opened by
// the right key only, re-sealed under a new key or put back in clear, and readable after a crash between
// any two of the steps.

import { createPrivateKey } from "node:crypto";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { generateNodeKeyAndCSR } from "../../src/ca/certs.js";
import { createRootCA } from "../../src/ca/rootca.js";
import {
  formatUnlockKey,
  generateKek,
  isSealedNodeKey,
  openBytes,
  openNodeKey,
  parseUnlockKey,
  sealBytes,
  sealNodeKey,
  UnlockKeyFormatError,
} from "../../src/ca/unlockkey.js";
import { DataRoot, DataRootLockedError } from "../../src/daemon/state.js";
import { EntryType } from "../../src/raft/types.js";

describe("unlock key format", () => {
  it("is SWMKEY-1- and the 32 key bytes in unpadded standard base64, and parses back", () => {
    const kek = Buffer.from(Array.from({ length: 32 }, (_, i) => i * 7 + 250));
    const text = formatUnlockKey(kek);
    expect(text).toMatch(/^SWMKEY-1-[A-Za-z0-9+/]{43}$/);
    expect(text).toBe(`SWMKEY-1-${kek.toString("base64").replace(/=+$/, "")}`);
    expect(parseUnlockKey(text)).toEqual(kek);
    const fresh = generateKek();
    expect(fresh.length).toBe(32);
    expect(parseUnlockKey(formatUnlockKey(fresh))).toEqual(fresh);
    expect(generateKek()).not.toEqual(fresh);
  });

  it("refuses anything else with dockerd's words, 'invalid key string'", () => {
    const good = formatUnlockKey(generateKek());
    for (const bad of [
      "",
      "SWMKEY-1",
      good.replace("SWMKEY-1-", "SWMKEY-2-"),
      good.replace("SWMKEY-1-", "SWMTKN-1-"),
      `${good}=`,
      `${good.slice(0, -1)}!`,
      `${good.slice(0, -1)} `,
      `SWMKEY-1-${"A".repeat(41)}`,
      // Non-canonical trailing bits (Go's RawStdEncoding refuses them).
      `SWMKEY-1-${"A".repeat(42)}B`,
    ]) {
      expect(() => parseUnlockKey(bad), bad).toThrow(UnlockKeyFormatError);
      expect(() => parseUnlockKey(bad)).toThrow("invalid key string");
    }
    // Right form, wrong length: parsed, and refused later as a wrong key.
    expect(parseUnlockKey("SWMKEY-1-AAAA").length).toBe(3);
  });
});

describe("sealing", () => {
  it("opens only with the same key and label, and any change to the sealed bytes is refused", () => {
    const k = generateKek();
    const sealed = sealBytes(k, Buffer.from("the dek"), "label");
    expect(openBytes(k, sealed, "label")).toEqual(Buffer.from("the dek"));
    expect(openBytes(generateKek(), sealed, "label")).toBeUndefined();
    expect(openBytes(k, sealed, "other")).toBeUndefined();
    expect(openBytes(k.subarray(0, 16), sealed, "label")).toBeUndefined();
    for (let i = 0; i < sealed.length; i++) {
      const t = Buffer.from(sealed);
      t[i] = t[i]! ^ 1;
      expect(openBytes(k, t, "label")).toBeUndefined();
    }
    expect(openBytes(k, sealed.subarray(0, 20), "label")).toBeUndefined();
    // A fresh nonce each time.
    expect(sealBytes(k, Buffer.from("the dek"), "label")).not.toEqual(sealed);
  });

  it("a node key sealed under a DEK is an encrypted PKCS#8 PEM that only that DEK opens", async () => {
    const { keyPem } = await generateNodeKeyAndCSR();
    const dek = generateKek();
    const sealed = sealNodeKey(keyPem, dek);
    expect(sealed).toContain("-----BEGIN ENCRYPTED PRIVATE KEY-----");
    expect(isSealedNodeKey(sealed)).toBe(true);
    expect(isSealedNodeKey(keyPem)).toBe(false);
    expect(() => createPrivateKey(sealed)).toThrow();
    const opened = openNodeKey(sealed, dek);
    expect(createPrivateKey(opened).export({ type: "pkcs8", format: "der" })).toEqual(
      createPrivateKey(keyPem).export({ type: "pkcs8", format: "der" }),
    );
    expect(() => openNodeKey(sealed, generateKek())).toThrow("sealed under another data encryption key");
    expect(() => openNodeKey(sealed, undefined)).toThrow("not available");
    expect(openNodeKey(keyPem, undefined)).toBe(keyPem);
  });
});

// ---------------------------------------------------------------------------------------------------
// A manager's data root

let dir: string;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), "shoal-autolock-"));
});

afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

const text = (s: string) => new TextEncoder().encode(s);

/** A manager's data root: certificates and a raft log holding one entry. */
async function managerRoot(): Promise<{ root: DataRoot; keyPem: string; dek: Buffer }> {
  const root = new DataRoot(dir);
  const ca = await createRootCA();
  const { keyPem } = await generateNodeKeyAndCSR();
  await root.saveCertificates({ rootPem: ca.certPem, certPem: ca.certPem, keyPem });
  const s = await root.openRaftStorage();
  await s.save(
    {
      hardState: { term: 1, vote: 1, commit: 1 },
      entries: [{ index: 1, term: 1, type: EntryType.Normal, data: text("secret state") }],
    },
    true,
  );
  await s.close();
  const dek = (await root.loadRaftDek())!;
  return { root, keyPem, dek };
}

const keyFile = () => join(dir, "certificates", "swarm-node.key");
const dekFile = () => join(dir, "certificates", "raft-dek");

async function readsEntry(root: DataRoot): Promise<string> {
  const s = await root.openRaftStorage();
  try {
    return new TextDecoder().decode(s.mem.entries(1, 2, Infinity)[0]!.data);
  } finally {
    await s.close();
  }
}

describe("a manager's data root under autolock", () => {
  it("sealed: nothing readable on disk; a fresh start is locked until the right key unlocks it", async () => {
    const { root, keyPem, dek } = await managerRoot();
    const kek = generateKek();
    await root.sealSecrets(kek);
    expect(root.currentKek()).toEqual(kek);

    const onDisk = await readFile(dekFile(), "utf8");
    expect(JSON.parse(onDisk)).toMatchObject({ version: 2 });
    expect(onDisk).not.toContain(dek.toString("base64"));
    expect(await readFile(keyFile(), "utf8")).toContain("ENCRYPTED PRIVATE KEY");

    // A restart: a new DataRoot over the same directory.
    const again = new DataRoot(dir);
    expect(await again.dekState()).toBe("sealed");
    expect(await again.isLocked()).toBe(true);
    expect(again.currentKek()).toBeUndefined();
    await expect(again.loadCertificates()).rejects.toThrow(DataRootLockedError);
    await expect(again.openRaftStorage()).rejects.toThrow(DataRootLockedError);

    expect(await again.unlock(generateKek())).toBe(false);
    expect(await again.unlock(kek.subarray(0, 31))).toBe(false);
    expect(await again.isLocked()).toBe(true);

    expect(await again.unlock(kek)).toBe(true);
    expect(await again.isLocked()).toBe(false);
    expect((await again.loadCertificates()).keyPem).toBe(keyPem);
    expect(await readsEntry(again)).toBe("secret state");
  });

  it("a new key re-seals the DEK only; the old key no longer opens it", async () => {
    const { root, dek } = await managerRoot();
    const k1 = generateKek();
    const k2 = generateKek();
    await root.sealSecrets(k1);
    const sealedKey = await readFile(keyFile(), "utf8");
    await root.sealSecrets(k2);
    expect(await readFile(keyFile(), "utf8")).toBe(sealedKey);

    const again = new DataRoot(dir);
    expect(await again.unlock(k1)).toBe(false);
    expect(await again.unlock(k2)).toBe(true);
    expect(await again.loadRaftDek()).toEqual(dek);
    expect(await readsEntry(again)).toBe("secret state");
  });

  it("unsealed (autolock off): the DEK and key go back to clear, and a restart is not locked", async () => {
    const { root, keyPem, dek } = await managerRoot();
    await root.sealSecrets(generateKek());
    await root.sealSecrets(null);
    expect(root.currentKek()).toBeNull();
    expect(JSON.parse(await readFile(dekFile(), "utf8"))).toEqual({ version: 1, dek: dek.toString("base64") });
    expect(await readFile(keyFile(), "utf8")).toBe(keyPem);
    const again = new DataRoot(dir);
    expect(await again.isLocked()).toBe(false);
    expect((await again.loadCertificates()).keyPem).toBe(keyPem);
    expect(await readsEntry(again)).toBe("secret state");
  });

  it("a crash between the steps leaves a data root that opens (with the new key where it needs one)", async () => {
    const { keyPem, dek } = await managerRoot();
    // Sealing, crashed after the key and before the DEK: the DEK is still in clear and opens the key.
    await writeFile(keyFile(), sealNodeKey(keyPem, dek));
    let again = new DataRoot(dir);
    expect(await again.isLocked()).toBe(false);
    expect((await again.loadCertificates()).keyPem).toBe(keyPem);
    // ...and finishing the job (the manager re-seals once it runs) gives the sealed state.
    const kek = generateKek();
    await again.sealSecrets(kek);
    again = new DataRoot(dir);
    expect(await again.isLocked()).toBe(true);
    expect(await again.unlock(kek)).toBe(true);

    // Unsealing, crashed after the DEK and before the key: the DEK in clear opens the key.
    await writeFile(dekFile(), `${JSON.stringify({ version: 1, dek: dek.toString("base64") })}\n`);
    again = new DataRoot(dir);
    expect(await again.isLocked()).toBe(false);
    expect((await again.loadCertificates()).keyPem).toBe(keyPem);
    expect(await readsEntry(again)).toBe("secret state");
  });

  it("certificates saved while sealed are sealed; a wiped raft log leaves the node key in clear", async () => {
    const { root } = await managerRoot();
    await root.sealSecrets(generateKek());
    const { keyPem: renewed } = await generateNodeKeyAndCSR();
    const certs = await root.loadCertificates();
    await root.saveCertificates({ ...certs, keyPem: renewed });
    expect(isSealedNodeKey(await readFile(keyFile(), "utf8"))).toBe(true);
    expect((await root.loadCertificates()).keyPem).toBe(renewed);

    // A demotion wipes the raft log and its DEK: the key must not go with them.
    await root.wipeRaft();
    expect(await readFile(keyFile(), "utf8")).toBe(renewed);
    const again = new DataRoot(dir);
    expect(await again.dekState()).toBe("none");
    expect((await again.loadCertificates()).keyPem).toBe(renewed);
  });

  it("a raft-dek file that is neither form of a key is an error that names the file", async () => {
    const root = new DataRoot(dir);
    await root.saveRaftDek(generateKek());
    await writeFile(dekFile(), JSON.stringify({ version: 2, sealed: 5 }));
    await expect(root.dekState()).rejects.toThrow(`${dekFile()} does not hold a raft data encryption key`);
  });
});
