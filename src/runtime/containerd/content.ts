// Blobs in containerd's content store: written through the Write stream (each chunk at its offset, the
// commit naming the digest and size containerd must find), with the digest also checked here as the bytes
// go by, so a blob that is not what it claims is refused before it is committed; read back as a stream.

import { createHash, randomUUID } from "node:crypto";
import type { ClientDuplexStream, ServiceError } from "@grpc/grpc-js";
import { WriteAction, type WriteContentRequest, type WriteContentResponse } from "../../gen/containerd/content.js";
import { type Containerd, fromServiceError, isAlreadyExists, isNotFound } from "./client.js";

/** The size of each Write message (containerd's own client writes 1 MiB at a time). */
const CHUNK_BYTES = 1024 * 1024;
/** How many Write messages may wait for their answer at once. */
const WRITE_WINDOW = 4;

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

/** One Write session: each request answered by one response, in order. */
class WriteSession {
  private readonly waiting: { resolve(r: WriteContentResponse): void; reject(e: Error): void }[] = [];
  private failure: Error | undefined;
  constructor(private readonly stream: ClientDuplexStream<WriteContentRequest, WriteContentResponse>) {
    stream.on("data", (r: WriteContentResponse) => this.waiting.shift()?.resolve(r));
    stream.on("error", (err: ServiceError) => this.fail(fromServiceError(err, "content.Write")));
    stream.on("end", () => this.fail(new Error("containerd closed the content write stream")));
  }
  private fail(err: Error): void {
    this.failure ??= err;
    for (const w of this.waiting.splice(0)) w.reject(this.failure);
  }
  send(req: WriteContentRequest): Promise<WriteContentResponse> {
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      this.waiting.push({ resolve, reject });
      this.stream.write(req);
    });
  }
  close(): void {
    this.stream.end();
  }
}

export interface WriteBlob {
  digest: string;
  size: number;
  /** containerd.io/gc.ref.* labels: the blob's children, kept while it is kept. */
  labels?: Record<string, string>;
}

export class ContentStore {
  constructor(private readonly cd: Containerd) {}

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
   * Writes a blob under `lease` from its chunks. The digest and size are checked as the bytes go by
   * (DigestMismatchError, SizeMismatchError: nothing is committed); a blob that is there already is kept
   * (and added to the lease). `onProgress` is told the bytes taken from `chunks` so far.
   */
  async write(
    blob: WriteBlob,
    chunks: AsyncIterable<Buffer> | Buffer,
    lease: string,
    onProgress?: (bytes: number) => void,
  ): Promise<void> {
    const ref = `shoal-${randomUUID()}`;
    const session = new WriteSession(this.cd.content.write(this.cd.metadata(lease)));
    try {
      await session.send(this.request(WriteAction.STAT, ref, { total: blob.size, expected: blob.digest }));
      const hash = createHash("sha256");
      let offset = 0;
      // Up to WRITE_WINDOW chunks are on their way at once (each answered in order): a blob streams at the
      // speed of the disk, not one round trip per chunk.
      const inflight: Promise<unknown>[] = [];
      // Progress is the bytes taken from the source (a download's own pace), not the 1 MiB messages sent.
      for await (const chunk of chunked(chunks, onProgress)) {
        hash.update(chunk);
        if (offset + chunk.length > blob.size)
          throw new SizeMismatchError(blob.size, offset + chunk.length, blob.digest);
        const sent = session.send(this.request(WriteAction.WRITE, ref, { offset, data: chunk }));
        // Its failure is seen where it is awaited (or by the next send): never an unhandled rejection.
        sent.catch(() => undefined);
        inflight.push(sent);
        if (inflight.length >= WRITE_WINDOW) await inflight.shift();
        offset += chunk.length;
      }
      await Promise.all(inflight);
      if (offset !== blob.size) throw new SizeMismatchError(blob.size, offset, blob.digest);
      const actual = `sha256:${hash.digest("hex")}`;
      if (actual !== blob.digest) throw new DigestMismatchError(blob.digest, actual);
      await session.send(
        this.request(WriteAction.COMMIT, ref, {
          offset,
          total: blob.size,
          expected: blob.digest,
          labels: blob.labels ?? {},
        }),
      );
    } catch (err) {
      if (!isAlreadyExists(err)) {
        await this.abort(ref);
        throw err;
      }
      await this.cd.call(this.cd.leases, this.cd.leases.addResource, {
        id: lease,
        resource: { id: blob.digest, type: "content" },
      });
    } finally {
      session.close();
    }
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
 * The chunks of a blob, CHUNK_BYTES each (the last one shorter): a body that arrives in the network's small
 * pieces (16 to 64 KiB) is gathered, so a blob costs one Write message per MiB, not one per piece.
 */
async function* chunked(
  source: AsyncIterable<Buffer> | Buffer,
  onRead?: (bytes: number) => void,
): AsyncGenerator<Buffer> {
  const all: AsyncIterable<Buffer> | Buffer[] = Buffer.isBuffer(source) ? [source] : source;
  let parts: Buffer[] = [];
  let held = 0;
  let read = 0;
  for await (const b of all) {
    read += b.length;
    onRead?.(read);
    let rest = b;
    while (held + rest.length >= CHUNK_BYTES) {
      const take = CHUNK_BYTES - held;
      parts.push(rest.subarray(0, take));
      yield parts.length === 1 ? parts[0]! : Buffer.concat(parts, CHUNK_BYTES);
      rest = rest.subarray(take);
      parts = [];
      held = 0;
    }
    if (rest.length > 0) {
      parts.push(rest);
      held += rest.length;
    }
  }
  if (held > 0) yield parts.length === 1 ? parts[0]! : Buffer.concat(parts, held);
}
