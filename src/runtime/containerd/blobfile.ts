// A blob put straight into the local content store of a containerd shoald manages, beside its API: the
// bytes are written to a file of shoald's own on containerd's file system, checked (size as they go by,
// sha256 off shoald's thread, read back from the file as it grows: filehash.ts), synced, and only then
// linked in where containerd's local store keeps blobs (<root>/io.containerd.content.v1.content/blobs/
// sha256/<hex>, the layout every containerd since 1.0 uses). The content service then records it in
// shoal's namespace with one commit naming its digest and size, which containerd takes from the blob it
// finds (its shared content policy, the default: how a blob one namespace wrote is taken by another),
// under the pull's lease. containerd 1.6 hashes the bytes of a Write without SHA instructions (a third of
// its CPU in a pull, and unpacking hashes each byte again): this way each byte is hashed once by
// containerd, not twice.
//
// The file being written can be handed out as it grows (GrowingFile, PlaceOptions.onFile): a reader (a
// layer unpacked while it downloads) reads it up to `available`, and knows from `done` that the bytes it
// read are the blob's. The file stays at its path until the reader releases it, whatever the outcome.
//
// Durability: nothing is named before its bytes are on disk (the fsync before the link, as containerd's
// own writer syncs at its commit). The fdatasync every SYNC_BYTES while the bytes come is not needed for
// that: it is there so the fsync before the link has only the last few MiB left to wait for.
import { createHash, randomUUID } from "node:crypto";
import { type FileHandle, link, mkdir, open, rm, unlink } from "node:fs/promises";
import { join } from "node:path";
import { FileHash } from "./filehash.js";

/** Where a containerd with this root keeps its blobs (its local content store). */
export function blobPath(root: string, digest: string): string {
  return join(root, "io.containerd.content.v1.content", "blobs", "sha256", digest.slice("sha256:".length));
}

/** shoald's own directory on containerd's root, for blobs being written: removed when shoald starts. */
export function ingestDir(root: string): string {
  return join(root, "shoal-ingest");
}

/** What a file write waits for before it is issued: fewer, larger writes (each one a thread pool trip). */
const WRITE_BYTES = 1024 * 1024;
/**
 * How many bytes written start a flush of what is written so far to disk (fdatasync, in the background while
 * the bytes go on): the sync before the blob is named then waits for the last few MiB, not all of them
 * (25 MB on the lab's disk: ~40 ms after the last byte).
 */
const SYNC_BYTES = 4 * 1024 * 1024;

export class DigestMismatchError extends Error {
  constructor(
    readonly expected: string,
    readonly actual: string,
  ) {
    super(`digest mismatch: expected ${expected}, got ${actual}`);
  }
}

export class SizeMismatchError extends Error {
  constructor(expected: number, actual: number, digest: string) {
    super(`size mismatch for ${digest}: expected ${expected} bytes, got ${actual}`);
  }
}

/**
 * `pieces` with neighbours that are one stretch of the same memory made one view: a body read into reused
 * memory (rawget.ts) comes as consecutive views of 1 MiB arenas, written in one piece each.
 */
export function joinAdjacent(pieces: Buffer[]): Buffer[] {
  const out: Buffer[] = [];
  let cur: Buffer | undefined;
  for (const p of pieces) {
    if (cur && p.buffer === cur.buffer && p.byteOffset === cur.byteOffset + cur.length) {
      cur = Buffer.from(cur.buffer, cur.byteOffset, cur.length + p.length);
      continue;
    }
    if (cur) out.push(cur);
    cur = p;
  }
  if (cur) out.push(cur);
  return out;
}

/** Writes every buffer of `pieces` at the file's current end. */
async function writeAll(fh: FileHandle, all: Buffer[], bytes: number): Promise<void> {
  const pieces = joinAdjacent(all);
  const { bytesWritten } = pieces.length === 1 ? await fh.write(pieces[0]!) : await fh.writev(pieces);
  if (bytesWritten !== bytes) {
    // A short write (rare on a regular file): the rest, one piece at a time.
    let skip = bytesWritten;
    for (const p of pieces) {
      if (skip >= p.length) {
        skip -= p.length;
        continue;
      }
      let rest = p.subarray(skip);
      skip = 0;
      while (rest.length > 0) {
        const { bytesWritten: n } = await fh.write(rest);
        rest = rest.subarray(n);
      }
    }
  }
}

/**
 * A file being written as it grows, for a reader that follows it (a layer unpacked as it downloads):
 * `available` counts the bytes written to the file (visible to a read of it; not necessarily synced yet).
 */
export interface GrowingFile {
  /** The file being written. */
  readonly path: string;
  /** Bytes written to it so far (visible to a reader of the file: written, not necessarily synced); only grows. */
  readonly available: number;
  /** The blob's full size. */
  readonly size: number;
  /** `cb` is told whenever `available` grows; returns its unsubscribe. */
  onProgress(cb: (available: number) => void): () => void;
  /** Resolves once all bytes are in and their size and digest are verified; rejects if the write failed. */
  readonly done: Promise<void>;
}

/**
 * The GrowingFile a blob's write hands out. Its `path` (the file in shoald's ingest directory) stays until
 * release() is called, whatever the write's outcome: a reader opens it when it likes and reads all of it
 * (after the write, the blob in the content store is the same file, linked in). Until then the file stays
 * in the ingest directory (removed when shoald starts, if shoald dies before).
 */
export interface IngestFile extends GrowingFile {
  /** The reader is done with `path`: it may go (once the write is over). Idempotent. */
  release(): void;
}

class Ingest implements IngestFile {
  available = 0;
  readonly done: Promise<void>;
  private readonly listeners = new Set<(available: number) => void>();
  private settle: { resolve(): void; reject(err: unknown): void } = { resolve() {}, reject() {} };
  private held = false;
  private writing = true;
  private gone = false;

  constructor(
    readonly path: string,
    readonly size: number,
  ) {
    this.done = new Promise<void>((resolve, reject) => {
      this.settle = { resolve, reject };
    });
    // Its failure is the write's, seen where the write is awaited: a reader who never awaits `done` leaves
    // no unhandled rejection.
    this.done.catch(() => undefined);
  }

  onProgress(cb: (available: number) => void): () => void {
    this.listeners.add(cb);
    return () => this.listeners.delete(cb);
  }

  grown(available: number): void {
    this.available = available;
    for (const cb of this.listeners) cb(available);
  }

  verified(): void {
    this.settle.resolve();
  }

  failed(err: unknown): void {
    this.settle.reject(err);
  }

  /** Handed out to a reader: the file stays until it releases it. */
  hold(): void {
    this.held = true;
  }

  release(): void {
    this.held = false;
    void this.remove();
  }

  /** The write is over, well or not (its result is linked in, or not): the file goes unless it is held. */
  writerDone(): Promise<void> {
    this.writing = false;
    return this.remove();
  }

  private async remove(): Promise<void> {
    if (this.held || this.writing || this.gone) return;
    this.gone = true;
    this.listeners.clear();
    await unlink(this.path).catch(() => undefined);
  }
}

export interface PlaceOptions {
  /** Told the bytes taken from the source so far (a download's own pace). */
  onProgress?: (bytes: number) => void;
  /**
   * Given the file being written as soon as it exists (before its first byte): it stays at its path until
   * the receiver calls its release() (which it must, whatever the outcome).
   */
  onFile?: (file: IngestFile) => void;
  /**
   * Told each chunk of `chunks` once it is written to the file (and not needed any more): a source that
   * reuses its memory (rawget.ts's releaseChunk) takes it back.
   */
  onWritten?: (chunk: Buffer) => void;
  /**
   * Hash the bytes on this thread as they come, not in filehash.ts's worker: less CPU in all (the bytes
   * are hashed while they are in the CPU's cache, not read back) and no wait for the worker to catch up after
   * the last byte, but ~35 ms more of this thread per 50 MB. The default: the worker.
   */
  hashHere?: boolean;
}

/** Where a blob's sha256 is taken: told the bytes written so far, then the end. */
interface Hasher {
  grown(written: number): void;
  digest(size: number): Promise<string>;
  drop(): void;
}

/** The sha256 taken on this thread, of the chunks as they come (update() is called with each). */
class HereHash implements Hasher {
  private readonly h = createHash("sha256");
  update(c: Buffer): void {
    this.h.update(c);
  }
  grown(): void {}
  digest(): Promise<string> {
    return Promise.resolve(`sha256:${this.h.digest("hex")}`);
  }
  drop(): void {}
}

/**
 * Puts the blob `chunks` make into containerd's local content store at `root`, unless it is there; throws
 * SizeMismatchError or DigestMismatchError (and leaves nothing) when its bytes are not `size` bytes of
 * `digest`. The bytes are hashed off this thread, read back from the file as it is written (filehash.ts),
 * unless `hashHere`. A GrowingFile's `done` resolves once the digest is checked, before the file is synced
 * and linked in (its reader need not wait for the disk).
 */
export async function placeBlob(
  root: string,
  blob: { digest: string; size: number },
  chunks: AsyncIterable<Buffer>,
  opts: PlaceOptions = {},
): Promise<void> {
  const { onProgress, onFile, onWritten, hashHere } = opts;
  const dir = ingestDir(root);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const tmp = join(dir, randomUUID());
  const fh = await open(tmp, "wx", 0o644);
  const file = new Ingest(tmp, blob.size);
  let open_ = true;
  const here = hashHere ? new HereHash() : undefined;
  const hash: Hasher = here ?? new FileHash(tmp);
  let hashed = false;
  // The directory the blob is linked into, made beside the download.
  const target = blobPath(root, blob.digest);
  const targetDir = mkdir(join(target, ".."), { recursive: true, mode: 0o755 });
  targetDir.catch(() => undefined);
  try {
    if (onFile) {
      file.hold();
      onFile(file);
    }
    let taken = 0;
    let written = 0;
    let queued: Buffer[] = [];
    let queuedBytes = 0;
    // One write on its way while the next one's bytes come in, and one flush of those before it.
    let writing: Promise<void> = Promise.resolve();
    let syncing: Promise<void> | undefined;
    let unsynced = 0;
    const write = (pieces: Buffer[], bytes: number): Promise<void> =>
      writeAll(fh, pieces, bytes).then(() => {
        if (onWritten) for (const p of pieces) onWritten(p);
        written += bytes;
        hash.grown(written);
        file.grown(written);
      });
    for await (const c of chunks) {
      taken += c.length;
      if (taken > blob.size) throw new SizeMismatchError(blob.size, taken, blob.digest);
      onProgress?.(taken);
      here?.update(c);
      queued.push(c);
      queuedBytes += c.length;
      if (queuedBytes >= WRITE_BYTES) {
        await writing;
        writing = write(queued, queuedBytes);
        // Its failure is seen where it is awaited: never an unhandled rejection.
        writing.catch(() => undefined);
        unsynced += queuedBytes;
        queued = [];
        queuedBytes = 0;
        if (unsynced >= SYNC_BYTES && syncing === undefined) {
          unsynced = 0;
          const flush = fh.datasync().finally(() => {
            syncing = undefined;
          });
          flush.catch(() => undefined);
          syncing = flush;
        }
      }
    }
    await writing;
    if (queuedBytes > 0) await write(queued, queuedBytes);
    if (taken !== blob.size) throw new SizeMismatchError(blob.size, taken, blob.digest);
    hashed = true;
    // Read-only, as containerd leaves a blob: set while the hash is finished.
    const readOnly = fh.chmod(0o444);
    readOnly.catch(() => undefined);
    const [actual] = await Promise.all([hash.digest(blob.size), syncing, readOnly]);
    if (actual !== blob.digest) throw new DigestMismatchError(blob.digest, actual);
    file.verified();
    // As containerd commits a blob: on disk (bytes and mode) before it is named.
    await fh.sync();
    await targetDir;
    try {
      await link(tmp, target);
    } catch (err) {
      // There already (containerd renames a blob in whole): the same bytes, by their digest.
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
    }
    open_ = false;
    await fh.close();
  } catch (err) {
    if (!hashed) hash.drop();
    file.failed(err);
    throw err;
  } finally {
    if (open_) await fh.close().catch(() => undefined);
    await file.writerDone();
  }
}

/** Removes what writes cut short by a crash left in shoald's ingest directory. */
export async function clearIngest(root: string): Promise<void> {
  await rm(ingestDir(root), { recursive: true, force: true });
}
