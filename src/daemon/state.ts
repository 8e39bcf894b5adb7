// What a daemon keeps in its data root: which swarm it is in and as what, its certificates, and (on
// managers) the Raft log under raft/, encrypted with the data encryption key in certificates/raft-dek.
// Files are written through src/durable.ts (temporary name, synced, renamed, directory synced), so a crash
// leaves the old or the new file, never half of one.
//
// Autolock (swarm init --autolock, swarm update --autolock=true): a manager's raft-dek is sealed under the
// cluster's key-encryption key, and its TLS key under the DEK (src/ca/unlockkey.ts). Such a data root is
// locked when the daemon starts: nothing in it can be read until unlock() is given the unlock key.

import { randomBytes } from "node:crypto";
import { mkdir, readFile, rm } from "node:fs/promises";
import { dirname, join } from "node:path";
import { isSealedNodeKey, openBytes, openNodeKey, sealBytes, sealNodeKey } from "../ca/unlockkey.js";
import { writeFileDurable } from "../durable.js";
import type { NodeRole } from "../engine/types.js";
import { DEK_BYTES, LevelStorage } from "../raft/level-storage.js";
import type { NodeId } from "../raft/types.js";
import { Serial } from "../serial.js";

/** What a raft-dek file holds: nothing (no file), the DEK in clear, or the DEK sealed under a KEK. */
export type DekState = "none" | "clear" | "sealed";

/** The data root is sealed under an unlock key and unlock() has not been given it. */
export class DataRootLockedError extends Error {
  constructor(file: string) {
    super(`${file} is sealed with the swarm's unlock key: unlock this manager first ("docker swarm unlock")`);
    this.name = "DataRootLockedError";
  }
}

/** Additional data of a sealed raft-dek: the format, so a sealed value cannot be read as anything else. */
const SEALED_DEK_LABEL = "shoal raft-dek v2";

export interface LocalState {
  version: 1;
  nodeId: string;
  clusterId: string;
  role: NodeRole;
  /** This node's Raft id, while it is a Raft member. */
  raftId?: NodeId;
  /** host:port the cluster listener binds (managers). */
  listenAddr: string;
  /** host:port other nodes reach this node's listener at. */
  advertiseAddr: string;
  /** IP address used for the data path (overlay traffic). */
  dataPathAddr: string;
  /** The swarm's VXLAN port, as the managers said at join (absent: 4789, or a state from before). */
  dataPathPort?: number;
  /** The Raft members the leader named when this node joined the Raft group (to find them again). */
  raftPeers?: { raftId: NodeId; nodeId: string; addr: string }[];
  /** The managers this node last knew, to reconnect after a restart without a token. */
  managers: { nodeId: string; addr: string }[];
}

export interface Certificates {
  rootPem: string;
  certPem: string;
  keyPem: string;
}

export class DataRoot {
  /**
   * The DEK once read (in clear) or unsealed (unlock()), and the KEK the file on disk is sealed under
   * (null: in clear). Undefined while locked, or before the DEK was first read.
   */
  private unsealed: { dek: Buffer; kek: Buffer | null } | undefined;
  /** Writes of the node key and the DEK file, one after another (a renewal never races a re-seal). */
  private readonly secrets = new Serial();

  constructor(readonly dir: string) {}

  get raftDir(): string {
    return join(this.dir, "raft");
  }

  /**
   * The Raft data encryption key: DEK_BYTES random bytes that seal the Raft log's entries and snapshots
   * (swarmkit keeps its DEK in the node key's PEM headers; shoal keeps it in a file of its own beside it).
   */
  get raftDekFile(): string {
    return this.certFile("raft-dek");
  }

  private get stateFile(): string {
    return join(this.dir, "swarm", "state.json");
  }

  private certFile(name: string): string {
    return join(this.dir, "certificates", name);
  }

  async loadState(): Promise<LocalState | undefined> {
    const text = await readIfExists(this.stateFile);
    if (text === undefined) return undefined;
    const s = JSON.parse(text) as LocalState;
    if (s.version !== 1) throw new Error(`${this.stateFile}: unsupported state version ${String(s.version)}`);
    return s;
  }

  private saving: Promise<void> = Promise.resolve();

  /** Saves are serialised: the last one called is the one on disk. */
  saveState(s: LocalState): Promise<void> {
    const text = `${JSON.stringify(s, null, 2)}\n`;
    const run = this.saving.then(() => writeRootFile(this.stateFile, text, 0o600));
    // The chain only orders the saves: a failed one is its caller's (it gets `run`), not the next save's.
    this.saving = run.catch(() => undefined);
    return run;
  }

  private get nodeKeyFile(): string {
    return this.certFile("swarm-node.key");
  }

  /** The certificates, with the node key in clear (opened with the DEK if it is sealed). */
  async loadCertificates(): Promise<Certificates> {
    const [rootPem, certPem, storedKey] = await Promise.all([
      readFile(this.certFile("swarm-root-ca.crt"), "utf8"),
      readFile(this.certFile("swarm-node.crt"), "utf8"),
      readFile(this.nodeKeyFile, "utf8"),
    ]);
    const dek = isSealedNodeKey(storedKey) ? await this.loadRaftDek() : undefined;
    return { rootPem, certPem, keyPem: openNodeKey(storedKey, dek) };
  }

  /** Saves the certificates; the key is sealed under the DEK while the DEK is sealed (autolock). */
  saveCertificates(c: Certificates): Promise<void> {
    return this.secrets.run(async () => {
      await writeRootFile(this.certFile("swarm-root-ca.crt"), c.rootPem, 0o644);
      const u = this.unsealed;
      const keyText = u !== undefined && u.kek !== null ? sealNodeKey(c.keyPem, u.dek) : c.keyPem;
      await writeRootFile(this.nodeKeyFile, keyText, 0o600);
      await writeRootFile(this.certFile("swarm-node.crt"), c.certPem, 0o644);
    });
  }

  /** What the raft-dek file holds. A file that is there but neither form of a key is an error. */
  async dekState(): Promise<DekState> {
    const file = await this.readDekFile();
    return file === undefined ? "none" : file.kind;
  }

  /** True if this data root's secrets are sealed and unlock() has not opened them. */
  async isLocked(): Promise<boolean> {
    return this.unsealed === undefined && (await this.dekState()) === "sealed";
  }

  /** The KEK the secrets are sealed under now (null: in clear); undefined while locked or not read yet. */
  currentKek(): Buffer | null | undefined {
    return this.unsealed?.kek;
  }

  /** Opens the sealed DEK with `kek`. False if `kek` does not open it (a wrong unlock key). */
  async unlock(kek: Buffer): Promise<boolean> {
    const file = await this.readDekFile();
    if (file?.kind !== "sealed") return file !== undefined;
    const dek = openBytes(kek, file.sealed, SEALED_DEK_LABEL);
    if (dek === undefined || dek.length !== DEK_BYTES) return false;
    this.unsealed = { dek, kek: Buffer.from(kek) };
    return true;
  }

  /**
   * Seals the DEK under `kek` (and the node key under the DEK), or with null puts both back in clear.
   * Each step replaces one file by rename, in an order that keeps the data root readable after a crash
   * between them: sealing writes the node key first (its seal opens with the DEK, still in clear), then the
   * DEK; unsealing writes the DEK in clear first, then the key. A KEK change rewrites the DEK file only.
   */
  sealSecrets(kek: Buffer | null): Promise<void> {
    return this.secrets.run(async () => {
      const dek = await this.loadRaftDek();
      if (dek === undefined) return;
      const stored = await readIfExists(this.nodeKeyFile);
      if (kek !== null) {
        if (stored !== undefined && !isSealedNodeKey(stored)) {
          await writeRootFile(this.nodeKeyFile, sealNodeKey(stored, dek), 0o600);
        }
        await this.writeDekFile({ version: 2, sealed: sealBytes(kek, dek, SEALED_DEK_LABEL).toString("base64") });
      } else {
        await this.writeDekFile({ version: 1, dek: dek.toString("base64") });
        if (stored !== undefined && isSealedNodeKey(stored)) {
          await writeRootFile(this.nodeKeyFile, openNodeKey(stored, dek), 0o600);
        }
      }
      this.unsealed = { dek, kek: kek === null ? null : Buffer.from(kek) };
    });
  }

  /**
   * The Raft DEK, or undefined if there is none yet. A sealed DEK is the one unlock() opened; without it,
   * DataRootLockedError. A file that is there but not a key is an error.
   */
  async loadRaftDek(): Promise<Buffer | undefined> {
    const file = await this.readDekFile();
    if (file === undefined) return undefined;
    if (file.kind === "clear") {
      this.unsealed = { dek: file.dek, kek: null };
      return file.dek;
    }
    if (this.unsealed === undefined || this.unsealed.kek === null) throw new DataRootLockedError(this.raftDekFile);
    return this.unsealed.dek;
  }

  private async readDekFile(): Promise<
    { kind: "clear"; dek: Buffer } | { kind: "sealed"; sealed: Buffer } | undefined
  > {
    const text = await readIfExists(this.raftDekFile);
    if (text === undefined) return undefined;
    try {
      const j = JSON.parse(text) as { version?: unknown; dek?: unknown; sealed?: unknown };
      if (j.version === 1 && typeof j.dek === "string") {
        const dek = Buffer.from(j.dek, "base64");
        if (dek.length === DEK_BYTES) return { kind: "clear", dek };
      }
      if (j.version === 2 && typeof j.sealed === "string")
        return { kind: "sealed", sealed: Buffer.from(j.sealed, "base64") };
    } catch {
      /* reported below */
    }
    throw new Error(
      `${this.raftDekFile} does not hold a raft data encryption key (version 1, ${DEK_BYTES} bytes in base64, ` +
        "or version 2, sealed with the unlock key). " +
        "Restore it from a backup, or move the raft directory and this file aside and rejoin this manager.",
    );
  }

  private async writeDekFile(content: { version: 1; dek: string } | { version: 2; sealed: string }): Promise<void> {
    await writeRootFile(this.raftDekFile, `${JSON.stringify(content)}\n`, 0o600);
  }

  /** Writes a new DEK in clear (a new raft log; autolock seals it once the manager runs). */
  async saveRaftDek(dek: Uint8Array): Promise<void> {
    await this.writeDekFile({ version: 1, dek: Buffer.from(dek).toString("base64") });
    this.unsealed = { dek: Buffer.from(dek), kek: null };
  }

  /**
   * Opens the Raft log, encrypted with this node's DEK. The DEK is made (and saved, before anything is
   * sealed with it) when there is none and the raft directory is new or from before encryption (which is
   * then encrypted in place); an encrypted raft directory without its DEK fails to open.
   */
  async openRaftStorage(): Promise<LevelStorage> {
    let dek = await this.loadRaftDek();
    if (dek === undefined) {
      if ((await LevelStorage.inspect(this.raftDir)) === "encrypted") {
        throw new Error(
          `${this.raftDekFile} is missing: the raft log in ${this.raftDir} is encrypted with the data ` +
            "encryption key that file held, and cannot be read without it. Restore the file from a backup of " +
            "this node, or move the raft directory aside and rejoin this manager to the swarm so that it " +
            "receives the log from the other managers.",
        );
      }
      dek = randomBytes(DEK_BYTES);
      await this.saveRaftDek(dek);
    }
    return LevelStorage.open(this.raftDir, { dek, dekFile: this.raftDekFile });
  }

  /** Forget the swarm: state, the Raft log and its key, certificates. */
  async wipe(): Promise<void> {
    await rm(join(this.dir, "swarm"), { recursive: true, force: true });
    await this.wipeRaft();
    await rm(join(this.dir, "certificates"), { recursive: true, force: true });
  }

  /**
   * Removes the Raft log, then its key (a crash in between leaves a key that a new log reuses). A node
   * key sealed under that DEK is put back in clear first, so that it outlives the DEK.
   */
  async wipeRaft(): Promise<void> {
    await this.secrets.run(async () => {
      const stored = await readIfExists(this.nodeKeyFile);
      if (stored !== undefined && isSealedNodeKey(stored) && this.unsealed !== undefined) {
        await writeRootFile(this.nodeKeyFile, openNodeKey(stored, this.unsealed.dek), 0o600);
      }
      await rm(this.raftDir, { recursive: true, force: true });
      await rm(this.raftDekFile, { force: true });
      this.unsealed = undefined;
    });
  }
}

/** A durable write into the data root, whose directories are made (0700) by the first write into them. */
async function writeRootFile(path: string, data: string, mode: number): Promise<void> {
  await mkdir(dirname(path), { recursive: true, mode: 0o700 });
  await writeFileDurable(path, data, mode);
}

/** A file's text, or undefined if it does not exist (any other error is thrown). */
async function readIfExists(file: string): Promise<string | undefined> {
  try {
    return await readFile(file, "utf8");
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw e;
  }
}
