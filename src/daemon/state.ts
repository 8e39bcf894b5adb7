// What a daemon keeps in its data root: which swarm it is in and as what, its certificates, and (on
// managers) the Raft log under raft/, encrypted with the data encryption key in certificates/raft-dek.
// Files are written to a temporary name, synced and renamed, so a crash leaves the old or the new file,
// never half of one.

import { randomBytes } from "node:crypto";
import { mkdir, open, readFile, rename, rm } from "node:fs/promises";
import { dirname, join } from "node:path";
import type { NodeRole } from "../engine/types.js";
import { DEK_BYTES, LevelStorage } from "../raft/level-storage.js";
import type { NodeId } from "../raft/types.js";

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
    const run = this.saving.then(() => writeFileAtomic(this.stateFile, text, 0o600));
    this.saving = run.catch(() => undefined);
    return run;
  }

  async loadCertificates(): Promise<Certificates> {
    const [rootPem, certPem, keyPem] = await Promise.all([
      readFile(this.certFile("swarm-root-ca.crt"), "utf8"),
      readFile(this.certFile("swarm-node.crt"), "utf8"),
      readFile(this.certFile("swarm-node.key"), "utf8"),
    ]);
    return { rootPem, certPem, keyPem };
  }

  async saveCertificates(c: Certificates): Promise<void> {
    await writeFileAtomic(this.certFile("swarm-root-ca.crt"), c.rootPem, 0o644);
    await writeFileAtomic(this.certFile("swarm-node.key"), c.keyPem, 0o600);
    await writeFileAtomic(this.certFile("swarm-node.crt"), c.certPem, 0o644);
  }

  /** The Raft DEK, or undefined if there is none yet. A file that is there but not a key is an error. */
  async loadRaftDek(): Promise<Buffer | undefined> {
    const text = await readIfExists(this.raftDekFile);
    if (text === undefined) return undefined;
    let dek: Buffer | undefined;
    try {
      const j = JSON.parse(text) as { version?: unknown; dek?: unknown };
      if (j.version === 1 && typeof j.dek === "string") dek = Buffer.from(j.dek, "base64");
    } catch {
      /* reported below */
    }
    if (dek === undefined || dek.length !== DEK_BYTES) {
      throw new Error(
        `${this.raftDekFile} does not hold a raft data encryption key (version 1, ${DEK_BYTES} bytes in base64). ` +
          "Restore it from a backup, or move the raft directory and this file aside and rejoin this manager.",
      );
    }
    return dek;
  }

  async saveRaftDek(dek: Uint8Array): Promise<void> {
    const text = `${JSON.stringify({ version: 1, dek: Buffer.from(dek).toString("base64") })}\n`;
    await writeFileAtomic(this.raftDekFile, text, 0o600);
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

  /** Removes the Raft log, then its key (a crash in between leaves a key that a new log reuses). */
  async wipeRaft(): Promise<void> {
    await rm(this.raftDir, { recursive: true, force: true });
    await rm(this.raftDekFile, { force: true });
  }
}

let tmpSeq = 0;

export async function writeFileAtomic(path: string, data: string, mode: number): Promise<void> {
  await mkdir(dirname(path), { recursive: true, mode: 0o700 });
  // A name of its own for every write: two writes of the same file at once must not share a temp file.
  const tmp = `${path}.tmp-${process.pid}-${++tmpSeq}`;
  const fh = await open(tmp, "w", mode);
  try {
    await fh.writeFile(data);
    await fh.sync();
  } finally {
    await fh.close();
  }
  await rename(tmp, path);
  const dh = await open(dirname(path), "r");
  try {
    await dh.sync();
  } finally {
    await dh.close();
  }
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
