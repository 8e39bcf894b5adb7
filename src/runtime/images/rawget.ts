// A GET over plain HTTP/1.1 for a blob's body, read straight into reused memory: the bytes a registry on the
// LAN sends are shoald's main cost in a pull, and node:http spends most of it around them (a fresh 64 KiB
// buffer per socket read, which the garbage collector then chases, its parser, a stream and its events per
// read: 34 ms of the main thread per 50 MB on the lab's machine, against 8 ms this way). Here the socket
// reads into the free tail of a 1 MiB arena (net's `onread`: no allocation per read), the body's chunks are
// views of it, and an arena whose chunks are all released (written to their file: releaseChunk) is used
// again. A chunk never released keeps its arena from reuse, nothing more: the garbage collector takes it
// as any buffer. The request says `Connection: close`: one connection per blob, its end the body's end.
//
// Only a response with a Content-Length is read this way; one without (chunked) is reported as such, and
// the caller asks again through node:http. Status line and headers are bounded and parsed here.

import { connect, type Socket } from "node:net";

/** Each arena's size: reads land in its free tail, the largest a socket read may take. */
const ARENA_BYTES = 1024 * 1024;
/** A read is given at least this much room: an arena with less left is retired (its tail unused). */
const MIN_READ = 64 * 1024;
/** Arenas kept for reuse (the rest, once released, left to the garbage collector). */
const POOL_MAX = 16;
/** Bytes queued and not yet taken by the body's reader that pause the socket (TCP then holds the sender). */
const HIGH_WATER = 4 * 1024 * 1024;
/** Largest status line and headers read. */
const MAX_HEAD_BYTES = 64 * 1024;

class Arena {
  readonly buf = Buffer.allocUnsafeSlow(ARENA_BYTES);
  /** Bytes of it handed out as chunks (or taken by a head), and of those released. */
  handed = 0;
  released = 0;
  filled = 0;
  retired = false;
}

const pool: Arena[] = [];
const owners = new WeakMap<ArrayBufferLike, Arena>();

function newArena(): Arena {
  const a = pool.pop() ?? new Arena();
  a.handed = 0;
  a.released = 0;
  a.filled = 0;
  a.retired = false;
  owners.set(a.buf.buffer, a);
  return a;
}

function maybeReuse(a: Arena): void {
  if (a.retired && a.released === a.handed && pool.length < POOL_MAX) {
    // Taken out of the map until it is handed out again: a late release of one of its chunks does nothing.
    owners.delete(a.buf.buffer);
    pool.push(a);
  }
}

/**
 * `chunk` (a body chunk of a RawBody) is done with: its bytes are written where they go. Its arena is used
 * again once all its chunks are released. Anything else given here is ignored.
 */
export function releaseChunk(chunk: Buffer): void {
  const a = owners.get(chunk.buffer);
  if (!a) return;
  a.released += chunk.length;
  if (a.released > a.handed) {
    // Released twice: never reused (a chunk of it may still be held).
    owners.delete(a.buf.buffer);
    return;
  }
  maybeReuse(a);
}

export interface RawResponse {
  status: number;
  headers: Record<string, string>;
  body: RawBody;
}

/** The response has no Content-Length (a chunked body): ask again another way. */
export class NotRawError extends Error {}

/** A response's body: its chunks, views of reused arenas, to be released once written (releaseChunk). */
export class RawBody implements AsyncIterable<Buffer> {
  private readonly queue: Buffer[] = [];
  private head = 0;
  private queued = 0;
  private received = 0;
  private ended = false;
  private failure: Error | undefined;
  private wake: (() => void) | undefined;
  private paused = false;

  constructor(
    private readonly socket: Socket,
    readonly length: number,
  ) {}

  /** Bytes received and not yet taken by the reader. */
  get readableLength(): number {
    return this.queued;
  }

  /** @internal A chunk of the body as it came; false when the socket should pause. */
  push(chunk: Buffer): boolean {
    if (this.ended) return true;
    const room = this.length - this.received;
    if (chunk.length > room) {
      this.fail(new Error(`the registry sent more than the ${this.length} bytes it announced`));
      return true;
    }
    if (chunk.length > 0) {
      this.queue.push(chunk);
      this.queued += chunk.length;
      this.received += chunk.length;
    }
    if (this.received === this.length) {
      this.ended = true;
      this.socket.destroy();
    }
    this.wake?.();
    if (this.queued >= HIGH_WATER && !this.ended) {
      this.paused = true;
      return false;
    }
    return true;
  }

  /** @internal The connection ended or broke. */
  closed(err?: Error): void {
    if (this.ended) return;
    this.fail(err ?? new Error(`the registry closed the connection after ${this.received} of ${this.length} bytes`));
  }

  private fail(err: Error): void {
    if (this.ended) return;
    this.failure ??= err;
    this.ended = true;
    this.socket.destroy();
    this.wake?.();
  }

  /** Drops the rest of the body (and the connection). */
  resume(): void {
    this.destroy();
  }

  destroy(err?: Error): void {
    this.fail(err ?? new Error("the body was dropped"));
    for (let i = this.head; i < this.queue.length; i++) releaseChunk(this.queue[i]!);
    this.queue.length = 0;
    this.head = 0;
    this.queued = 0;
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<Buffer> {
    try {
      for (;;) {
        if (this.head < this.queue.length) {
          const c = this.queue[this.head]!;
          this.queue[this.head++] = undefined as unknown as Buffer;
          if (this.head > 1024 && this.head * 2 > this.queue.length) {
            this.queue.splice(0, this.head);
            this.head = 0;
          }
          this.queued -= c.length;
          if (this.paused && this.queued < HIGH_WATER / 2) {
            this.paused = false;
            this.socket.resume();
          }
          yield c;
          continue;
        }
        if (this.failure) throw this.failure;
        if (this.ended) return;
        await new Promise<void>((resolve) => {
          this.wake = resolve;
        });
        this.wake = undefined;
      }
    } finally {
      // The reader stopped early (or the body is over): nothing more is read.
      if (!this.ended || this.head < this.queue.length) this.destroy();
    }
  }
}

function parseHead(head: string): { status: number; headers: Record<string, string> } {
  const lines = head.split("\r\n");
  const m = /^HTTP\/1\.[01] (\d{3})(?: .*)?$/.exec(lines[0] ?? "");
  if (!m) throw new Error("the registry's answer is not HTTP/1.1");
  const headers: Record<string, string> = {};
  for (const line of lines.slice(1)) {
    if (line === "") continue;
    const colon = line.indexOf(":");
    if (colon <= 0) throw new Error("the registry's answer has a malformed header");
    const k = line.slice(0, colon).trim().toLowerCase();
    const v = line.slice(colon + 1).trim();
    headers[k] = headers[k] === undefined ? v : `${headers[k]}, ${v}`;
  }
  return { status: Number(m[1]), headers };
}

/**
 * GET `url` (http:) with `headers`: resolves with the status, headers and body once the head is in; rejects
 * with NotRawError when the body has no Content-Length (nothing of it is read), or the connection's error.
 */
export function rawGet(url: URL, headers: Record<string, string>, timeoutMs: number): Promise<RawResponse> {
  if (url.protocol !== "http:") return Promise.reject(new Error(`rawGet: ${url.protocol} is not plain HTTP`));
  for (const [k, v] of Object.entries(headers))
    if (/[\r\n]/.test(k) || /[\r\n]/.test(v)) return Promise.reject(new Error(`a header ${k} with a line break`));
  return new Promise((resolve, reject) => {
    let arena = newArena();
    let headBytes: Buffer[] = [];
    let headLength = 0;
    let body: RawBody | undefined;
    let settled = false;
    const fail = (err: Error): void => {
      if (!settled) {
        settled = true;
        reject(err);
      }
      body?.closed(err);
      socket.destroy();
    };
    /** Where the next read lands: the current arena's free tail, or a fresh arena's. */
    const region = (): Buffer => {
      if (ARENA_BYTES - arena.filled < MIN_READ) {
        arena.retired = true;
        maybeReuse(arena);
        arena = newArena();
      }
      return arena.buf.subarray(arena.filled);
    };
    const onRead = (n: number): boolean => {
      const chunk = arena.buf.subarray(arena.filled, arena.filled + n);
      arena.filled += n;
      arena.handed += n;
      if (body) return body.push(chunk);
      // Still in the head: gathered until its blank line.
      headBytes.push(chunk);
      headLength += n;
      const all = headBytes.length === 1 ? chunk : Buffer.concat(headBytes);
      const end = all.indexOf("\r\n\r\n");
      if (end < 0) {
        if (headLength > MAX_HEAD_BYTES)
          fail(new Error(`the registry's answer has more than ${MAX_HEAD_BYTES} bytes of headers`));
        return true;
      }
      // The head's bytes are released (copied out as text); the body's go on as chunks: in one read, a view
      // of the arena; in several, of the gathered copy (not an arena's: released as nothing).
      const pieces = headBytes;
      headBytes = [];
      const rest = all.subarray(end + 4);
      if (pieces.length === 1) releaseChunk(chunk.subarray(0, end + 4));
      else for (const p of pieces) releaseChunk(p);
      let head: { status: number; headers: Record<string, string> };
      try {
        head = parseHead(all.subarray(0, end).toString("latin1"));
      } catch (err) {
        fail(err as Error);
        return true;
      }
      const te = head.headers["transfer-encoding"];
      const cl = head.headers["content-length"];
      if ((te !== undefined && te.toLowerCase() !== "identity") || cl === undefined || !/^\d{1,15}$/.test(cl)) {
        fail(new NotRawError("the registry's answer has no Content-Length"));
        return true;
      }
      body = new RawBody(socket, Number(cl));
      settled = true;
      resolve({ ...head, body });
      return body.push(rest);
    };
    const socket = connect({
      host: url.hostname.replace(/^\[(.*)\]$/, "$1"),
      port: Number(url.port) || 80,
      onread: { buffer: region, callback: onRead },
    });
    socket.setNoDelay(true);
    socket.setTimeout(timeoutMs, () => fail(new Error(`no answer from ${url.host} in ${timeoutMs} ms`)));
    socket.on("error", (err) => fail(err));
    socket.on("close", () => {
      if (!settled) fail(new Error(`${url.host} closed the connection before answering`));
      else body?.closed();
    });
    const lines = [`GET ${url.pathname}${url.search} HTTP/1.1`, `Host: ${url.host}`];
    for (const [k, v] of Object.entries(headers)) lines.push(`${k}: ${v}`);
    lines.push("Connection: close", "", "");
    socket.write(lines.join("\r\n"));
  });
}
