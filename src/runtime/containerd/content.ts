// Blobs in containerd's content store: written through the Write stream (each chunk at its offset, the
// commit naming the digest and size containerd must find), read back as a stream. containerd hashes the
// bytes as it writes them and refuses a commit whose digest is not the one named, before anything is
// committed: that is the blob's check (a second sha256 here cost shoald ~35 ms of its one thread per 50 MB
// pulled); the size is checked here as the bytes go by. The Write stream runs on a plain HTTP/2 stream
// (wire.ts): a chunk goes out as the pieces it arrived in. A blob that streams in (a pulled layer) for a
// containerd shoald manages is put in place in its root instead (blobfile.ts: checked there, with
// Node's sha256, in a worker reading the file back as it grows) and recorded by a commit alone; the file
// it is written into can be handed out as it grows (WriteOptions.onFile, a GrowingFile).

import { randomUUID } from "node:crypto";
import { status } from "@grpc/grpc-js";
import { WriteAction, WriteContentRequest, WriteContentResponse } from "../../gen/containerd/content.js";
import { DigestMismatchError, type IngestFile, placeBlob, SizeMismatchError } from "./blobfile.js";
import { type Containerd, ContainerdError, isAlreadyExists, isNotFound } from "./client.js";
import type { WireStream } from "./wire.js";

export type { GrowingFile, IngestFile } from "./blobfile.js";
export { DigestMismatchError, SizeMismatchError };

/** The size of each Write message (containerd's own client writes 1 MiB at a time). */
const CHUNK_BYTES = 1024 * 1024;
/** How many Write messages may wait for their answer at once. */
const WRITE_WINDOW = 4;

/**
 * containerd's refusal of a commit whose bytes are not the digest it was told (its local store's words:
 * "unexpected commit digest <actual>, expected <expected>"), as a DigestMismatchError; undefined otherwise.
 */
export function digestMismatchOf(err: unknown): DigestMismatchError | undefined {
  if (!(err instanceof ContainerdError) || err.code !== status.FAILED_PRECONDITION) return undefined;
  const m = /unexpected commit digest (sha256:[0-9a-f]{64}), expected (sha256:[0-9a-f]{64})/.exec(err.detail);
  return m ? new DigestMismatchError(m[2]!, m[1]!) : undefined;
}

/** A Write message: its fields, and its data as the pieces it was read in. */
interface OutgoingWrite {
  req: WriteContentRequest;
  data: Buffer[];
  bytes: number;
}

const WRITE_PATH = "/containerd.services.content.v1.Content/Write";
/** The tag of WriteContentRequest's `data` field (6, length-delimited). */
const DATA_TAG = (6 << 3) | 2;

/**
 * A Write message as gRPC frames it, in the buffers it is sent as: one made here (the 5-byte prefix, the
 * other fields encoded by the generated code, `data`'s tag and length: protobuf fields may come in any
 * order), then the data's pieces as they came from the network. Nothing of the data is copied.
 */
export function writeFrames(m: OutgoingWrite): Buffer[] {
  const head = WriteContentRequest.encode(m.req).finish();
  const len: number[] = [];
  if (m.bytes > 0) {
    for (let n = m.bytes; ; n >>>= 7) {
      if (n < 0x80) {
        len.push(n);
        break;
      }
      len.push((n & 0x7f) | 0x80);
    }
  }
  const fields = head.length + (m.bytes > 0 ? 1 + len.length : 0);
  const out = Buffer.allocUnsafe(5 + fields);
  out[0] = 0;
  out.writeUInt32BE(fields + m.bytes, 1);
  out.set(head, 5);
  if (m.bytes > 0) {
    let at = 5 + head.length;
    out[at++] = DATA_TAG;
    for (const b of len) out[at++] = b;
  }
  return [out, ...m.data];
}

/** One Write session: each request answered by one response, in order. */
class WriteSession {
  private readonly waiting: { resolve(r: WriteContentResponse): void; reject(e: Error): void }[] = [];
  private failure: Error | undefined;
  private readonly stream: WireStream;
  /** Resolves when the call has ended (containerd is done with it: its writer closed), well or not. */
  readonly ended: Promise<void>;
  private markEnded: () => void = () => undefined;
  constructor(cd: Containerd, lease: string) {
    this.ended = new Promise((resolve) => {
      this.markEnded = resolve;
    });
    this.stream = cd.wire.open(WRITE_PATH, cd.headers(lease));
    this.stream.onMessage = (b) => {
      let r: WriteContentResponse;
      try {
        r = WriteContentResponse.decode(b);
      } catch {
        this.stream.cancel({ code: status.INTERNAL, detail: "containerd sent a Write response that does not parse" });
        return;
      }
      // containerd answers a commit twice: the second finds no one waiting.
      this.waiting.shift()?.resolve(r);
    };
    this.stream.onEnd = (st) => {
      this.fail(
        st
          ? new ContainerdError(st.code, st.detail, "content.Write")
          : new Error("containerd closed the content write stream"),
      );
      this.markEnded();
    };
  }
  private fail(err: Error): void {
    this.failure ??= err;
    for (const w of this.waiting.splice(0)) w.reject(this.failure);
  }
  send(req: WriteContentRequest, data: Buffer[] = [], bytes = 0): Promise<WriteContentResponse> {
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      this.waiting.push({ resolve, reject });
      this.stream.send(writeFrames({ req, data, bytes }));
    });
  }
  close(): void {
    this.stream.close();
  }
}

export interface WriteBlob {
  digest: string;
  size: number;
  /** containerd.io/gc.ref.* labels: the blob's children, kept while it is kept. */
  labels?: Record<string, string>;
}

export interface WriteOptions {
  /** Told the bytes taken from the source so far. */
  onProgress?: (bytes: number) => void;
  /**
   * Given the file the blob is written into as soon as it exists, to read it as it grows (a layer unpacked
   * while it downloads), when the store puts blobs in place itself (`growingFiles`: the containerd shoald
   * manages) and the source is streamed: else never called (the caller reads the blob from the store once
   * the write is done, as before). The receiver must release() it, whatever the outcome of the write: the
   * file stays readable at its path until then. Its `done` resolves once the bytes are all written and their
   * size and digest checked, before the blob is synced, linked in and committed: the write's own promise
   * says when the blob is in the store.
   */
  onFile?: (file: IngestFile) => void;
  /**
   * Told each chunk of a streamed source once it is written and not needed any more (a source reusing its
   * memory takes it back), when the store puts blobs in place itself; a chunk never told of is kept by no one.
   */
  onWritten?: (chunk: Buffer) => void;
  /** Hash a placed blob on shoald's thread, not in a worker (blobfile.ts's PlaceOptions.hashHere). */
  hashHere?: boolean;
}

export class ContentStore {
  /**
   * `root`: the root of a containerd this shoald manages, whose blobs it may put in place itself
   * (blobfile.ts); without it, every blob goes through the content service's Write.
   */
  constructor(
    private readonly cd: Containerd,
    private readonly root?: string,
  ) {}

  /**
   * Whether a streamed write hands out the file it writes (WriteOptions.onFile): true for the containerd
   * shoald manages; a containerd given with --containerd takes its blobs through its Write stream only.
   */
  get growingFiles(): boolean {
    return this.root !== undefined;
  }

  /** Whether the blob is there. */
  async has(digest: string): Promise<boolean> {
    try {
      await this.cd.call(this.cd.content, this.cd.content.info, { digest });
      return true;
    } catch (err) {
      if (isNotFound(err)) return false;
      throw err;
    }
  }

  /**
   * Writes a blob under `lease` from its chunks. The size is checked here as the bytes go by, the digest by
   * containerd at the commit (SizeMismatchError, DigestMismatchError: nothing is committed, and the partial
   * write is dropped); a blob that is there already is kept (and added to the lease). `progress` (or its
   * onProgress) is told the bytes taken from `chunks` so far; its onFile is given the file being written,
   * for a store that writes files (`growingFiles`).
   */
  async write(
    blob: WriteBlob,
    chunks: AsyncIterable<Buffer> | Buffer,
    lease: string,
    progress?: ((bytes: number) => void) | WriteOptions,
  ): Promise<void> {
    const opts: WriteOptions = typeof progress === "function" ? { onProgress: progress } : (progress ?? {});
    const { onProgress } = opts;
    if (this.root !== undefined && !Buffer.isBuffer(chunks)) return this.place(this.root, blob, chunks, lease, opts);
    const ref = `shoal-${randomUUID()}`;
    const session = new WriteSession(this.cd, lease);
    try {
      let offset = 0;
      // Up to WRITE_WINDOW chunks are on their way at once (each answered in order): a blob streams at the
      // speed of the disk, not one round trip per chunk. The first one names the blob (containerd refuses
      // one it has: AlreadyExists); the one that completes it waits for the source's end and goes with the
      // commit, which containerd refuses unless the bytes are the digest named.
      const inflight: Promise<unknown>[] = [];
      let last: { pieces: Buffer[]; bytes: number } | undefined;
      // Progress is the bytes taken from the source (a download's own pace), not the 1 MiB messages sent.
      for await (const c of chunked(chunks, onProgress)) {
        const end = offset + (last?.bytes ?? 0) + c.bytes;
        if (end > blob.size) throw new SizeMismatchError(blob.size, end, blob.digest);
        if (end === blob.size) {
          last = c;
          continue;
        }
        const named = offset === 0 ? { total: blob.size, expected: blob.digest } : {};
        const sent = session.send(this.request(WriteAction.WRITE, ref, { offset, ...named }), c.pieces, c.bytes);
        // Its failure is seen where it is awaited (or by the next send): never an unhandled rejection.
        sent.catch(() => undefined);
        inflight.push(sent);
        if (inflight.length >= WRITE_WINDOW) await inflight.shift();
        offset += c.bytes;
      }
      const final = last ?? { pieces: [], bytes: 0 };
      if (offset + final.bytes !== blob.size) throw new SizeMismatchError(blob.size, offset + final.bytes, blob.digest);
      const commit = session.send(
        this.request(WriteAction.COMMIT, ref, {
          offset,
          total: blob.size,
          expected: blob.digest,
          labels: blob.labels ?? {},
        }),
        final.pieces,
        final.bytes,
      );
      commit.catch(() => undefined);
      await Promise.all([...inflight, commit]);
    } catch (err) {
      if (!isAlreadyExists(err)) {
        // containerd takes what is on its way, and closes the write, before what it wrote is dropped:
        // else the drop could come first and the write make its ingest again, left for good.
        session.close();
        await session.ended;
        await this.abort(ref);
        throw digestMismatchOf(err) ?? err;
      }
      await this.keep(blob.digest, lease);
    } finally {
      session.close();
    }
  }

  /**
   * A blob put in place in containerd's local store (blobfile.ts), then recorded in shoal's namespace by a
   * commit that names it, under `lease`: containerd finds the blob and takes it without its bytes.
   */
  private async place(
    root: string,
    blob: WriteBlob,
    chunks: AsyncIterable<Buffer>,
    lease: string,
    opts: WriteOptions,
  ): Promise<void> {
    await placeBlob(root, blob, chunks, opts);
    const session = new WriteSession(this.cd, lease);
    try {
      await session.send(
        // At the blob's end: containerd's writer of a blob it has stands there (an offset of 0 would have
        // it start the blob over, and the commit find none of its bytes).
        this.request(WriteAction.COMMIT, `shoal-${randomUUID()}`, {
          offset: blob.size,
          total: blob.size,
          expected: blob.digest,
          labels: blob.labels ?? {},
        }),
      );
    } catch (err) {
      if (!isAlreadyExists(err)) throw err;
      await this.keep(blob.digest, lease);
    } finally {
      session.close();
    }
  }

  /** A blob containerd has already, kept by `lease` (as one written under it would be). */
  private async keep(digest: string, lease: string): Promise<void> {
    await this.cd.call(this.cd.leases, this.cd.leases.addResource, {
      id: lease,
      resource: { id: digest, type: "content" },
    });
  }

  private request(action: WriteAction, ref: string, rest: Partial<WriteContentRequest>): WriteContentRequest {
    return { action, ref, total: 0, expected: "", offset: 0, data: Buffer.alloc(0), labels: {}, ...rest };
  }

  /** Drops a write that did not finish (containerd keeps its partial data until told). */
  private async abort(ref: string): Promise<void> {
    try {
      await this.cd.call(this.cd.content, this.cd.content.abort, { ref });
    } catch (err) {
      // Nothing was written under it yet (or containerd is gone): there is nothing to drop.
      if (!isNotFound(err)) throw err;
    }
  }

  /** A blob's bytes. */
  async read(digest: string): Promise<Buffer> {
    const parts = await this.cd.collect(
      this.cd.content.read({ digest, offset: 0, size: 0 }, this.cd.metadata()),
      "content.Read",
    );
    return Buffer.concat(parts.map((p) => Buffer.from(p.data)));
  }
}

/**
 * The chunks of a blob, CHUNK_BYTES each (the last one shorter), as the pieces they were read in: a body that
 * arrives in the network's small pieces (16 to 64 KiB) costs one Write message per MiB, not one per piece,
 * and no copy until the message is sent.
 */
async function* chunked(
  source: AsyncIterable<Buffer> | Buffer,
  onRead?: (bytes: number) => void,
): AsyncGenerator<{ pieces: Buffer[]; bytes: number }> {
  const all: AsyncIterable<Buffer> | Buffer[] = Buffer.isBuffer(source) ? [source] : source;
  let pieces: Buffer[] = [];
  let held = 0;
  let read = 0;
  for await (const b of all) {
    read += b.length;
    onRead?.(read);
    let rest = b;
    while (held + rest.length >= CHUNK_BYTES) {
      const take = CHUNK_BYTES - held;
      pieces.push(rest.subarray(0, take));
      yield { pieces, bytes: CHUNK_BYTES };
      rest = rest.subarray(take);
      pieces = [];
      held = 0;
    }
    if (rest.length > 0) {
      pieces.push(rest);
      held += rest.length;
    }
  }
  if (held > 0) yield { pieces, bytes: held };
}
