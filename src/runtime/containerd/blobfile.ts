// A blob put straight into the local content store of a containerd shoald manages, beside its API: the
// bytes are written to a file of shoald's own on containerd's file system, checked (size as they go by,
// sha256 at the end: Node's, with the CPU's SHA instructions), synced, and only then linked in where
// containerd's local store keeps blobs (<root>/io.containerd.content.v1.content/blobs/sha256/<hex>, the
// layout every containerd since 1.0 uses). The content service then records it in shoal's namespace
// with one commit naming its digest and size, which containerd takes from the blob it finds (its shared
// content policy, the default: how a blob one namespace wrote is taken by another), under the pull's
// lease. containerd 1.6 hashes the bytes of a Write without SHA instructions (a third of its CPU in a
// pull, and unpacking hashes each byte again): this way each byte is hashed once by containerd, not twice.

import { createHash, randomUUID } from "node:crypto";
import { type FileHandle, link, mkdir, open, rm, unlink } from "node:fs/promises";
import { join } from "node:path";

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

/** Writes every buffer of `pieces` at the file's current end. */
async function writeAll(fh: FileHandle, pieces: Buffer[], bytes: number): Promise<void> {
  const { bytesWritten } = await fh.writev(pieces);
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
 * Puts the blob `chunks` make into containerd's local content store at `root`, unless it is there; throws
 * SizeMismatchError or DigestMismatchError (and leaves nothing) when its bytes are not `size` bytes of
 * `digest`. `onProgress` is told the bytes taken so far.
 */
export async function placeBlob(
  root: string,
  blob: { digest: string; size: number },
  chunks: AsyncIterable<Buffer>,
  onProgress?: (bytes: number) => void,
): Promise<void> {
  const dir = ingestDir(root);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const tmp = join(dir, randomUUID());
  const fh = await open(tmp, "wx", 0o644);
  let open_ = true;
  try {
    const hash = createHash("sha256");
    let taken = 0;
    let queued: Buffer[] = [];
    let queuedBytes = 0;
    // One write on its way while the next one's bytes come in, and one flush of those before it.
    let writing: Promise<void> = Promise.resolve();
    let syncing: Promise<void> | undefined;
    let unsynced = 0;
    for await (const c of chunks) {
      taken += c.length;
      if (taken > blob.size) throw new SizeMismatchError(blob.size, taken, blob.digest);
      hash.update(c);
      onProgress?.(taken);
      queued.push(c);
      queuedBytes += c.length;
      if (queuedBytes >= WRITE_BYTES) {
        await writing;
        writing = writeAll(fh, queued, queuedBytes);
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
    if (queuedBytes > 0) await writeAll(fh, queued, queuedBytes);
    await syncing;
    if (taken !== blob.size) throw new SizeMismatchError(blob.size, taken, blob.digest);
    const actual = `sha256:${hash.digest("hex")}`;
    if (actual !== blob.digest) throw new DigestMismatchError(blob.digest, actual);
    // As containerd commits a blob: on disk before it is named, and read-only.
    await fh.sync();
    await fh.chmod(0o444);
    open_ = false;
    await fh.close();
    const target = blobPath(root, blob.digest);
    await mkdir(join(target, ".."), { recursive: true, mode: 0o755 });
    try {
      await link(tmp, target);
    } catch (err) {
      // There already (containerd renames a blob in whole): the same bytes, by their digest.
      if ((err as NodeJS.ErrnoException).code !== "EEXIST") throw err;
    }
  } finally {
    if (open_) await fh.close().catch(() => undefined);
    await unlink(tmp).catch(() => undefined);
  }
}

/** Removes what writes cut short by a crash left in shoald's ingest directory. */
export async function clearIngest(root: string): Promise<void> {
  await rm(ingestDir(root), { recursive: true, force: true });
}
