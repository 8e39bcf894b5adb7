// The Engine API's streams. Logs, attach and exec output use Docker's framing when the container has no
// TTY: each chunk is an 8-byte header [stream, 0, 0, 0, size as big-endian uint32] and the bytes. Attach
// and exec start are "hijacked" when the client asks for an upgrade (`Connection: Upgrade`, `Upgrade:
// tcp`): the answer is `101 UPGRADED` and the connection then carries the stream out and the client's
// stdin in.

import { type IncomingMessage, type ServerResponse, STATUS_CODES } from "node:http";
import type { Socket } from "node:net";
import { type Duplex, PassThrough } from "node:stream";
import { ApiError, badRequest } from "./errors.js";
import { bodyTooLarge, writeWithBackpressure } from "./http.js";
import type { Upgrade } from "./router.js";
import { compareApiVersions } from "./versions.js";

const MEDIA_RAW_STREAM = "application/vnd.docker.raw-stream";
const MEDIA_MULTIPLEXED_STREAM = "application/vnd.docker.multiplexed-stream";

/** dockerd's media type of a stream: multiplexed frames without a TTY (API 1.42+ says so). */
export function streamMediaType(tty: boolean, version: string): string {
  return !tty && compareApiVersions(version, "1.42") >= 0 ? MEDIA_MULTIPLEXED_STREAM : MEDIA_RAW_STREAM;
}

/** One chunk of Docker's multiplexed stream: [stream, 0, 0, 0, size (BE32)] then the bytes. */
export function frame(stream: 0 | 1 | 2, data: Buffer): Buffer {
  const header = Buffer.alloc(8);
  header[0] = stream;
  header.writeUInt32BE(data.length, 4);
  return Buffer.concat([header, data]);
}

/** An answer written straight on a connection (one that asked for an upgrade). */
export function writeRawResponse(
  socket: Duplex,
  status: number,
  reason: string,
  headers: Record<string, string>,
  body: string,
): void {
  if (socket.destroyed) return;
  const bytes = Buffer.from(body, "utf8");
  const head = [`HTTP/1.1 ${status} ${reason}`];
  for (const [k, v] of Object.entries({ ...headers, "Content-Length": String(bytes.length), Connection: "close" })) {
    head.push(`${k}: ${v}`);
  }
  // Closed once the answer is out, as Node's server closes a `Connection: close` answer: a client that
  // never closes its side of a hijacked connection must not hold it (and a connection slot) for ever.
  socket.end(Buffer.concat([Buffer.from(`${head.join("\r\n")}\r\n\r\n`), bytes]), () => socket.destroy());
}

export function writeRawError(socket: Duplex, err: ApiError): void {
  writeRawResponse(
    socket,
    err.status,
    STATUS_CODES[err.status] ?? "Error",
    { "Content-Type": "application/json" },
    `${JSON.stringify({ message: err.message })}\n`,
  );
}

/** The error of a request whose body did not arrive in time (Node's server answers its own 408 alike). */
export function bodyTimedOut(timeoutMs: number): ApiError {
  return new ApiError(408, `the request body did not arrive within ${timeoutMs} ms`);
}

/**
 * The body of an upgrade request (Content-Length bytes after the head) and, after it, what the client
 * sends next: its stdin. The body must arrive within `timeoutMs` (the request timeout: the connection has
 * left the HTTP server, whose timeouts no longer apply to it).
 */
export async function upgradeInput(
  req: IncomingMessage,
  up: Upgrade,
  limits: { maxBodyBytes: number; requestTimeoutMs: number },
): Promise<{ body: string; stream: PassThrough }> {
  const length = Number(req.headers["content-length"] ?? "0");
  if (!Number.isSafeInteger(length) || length < 0) throw badRequest("invalid Content-Length");
  if (length > limits.maxBodyBytes) throw bodyTooLarge(limits.maxBodyBytes);
  const buf = up.head.length < length ? await readAtLeast(up, length, limits.requestTimeoutMs) : up.head;
  const stream = new PassThrough();
  const rest = buf.subarray(length);
  if (rest.length > 0) stream.write(rest);
  up.socket.pipe(stream);
  return { body: buf.subarray(0, length).toString("utf8"), stream };
}

/** The head's bytes and what follows on the connection, until there are `length` of them (or `timeoutMs`). */
function readAtLeast(up: Upgrade, length: number, timeoutMs: number): Promise<Buffer> {
  return new Promise<Buffer>((resolve, reject) => {
    const chunks: Buffer[] = [up.head];
    let size = up.head.length;
    const timer = setTimeout(() => {
      cleanup();
      reject(bodyTimedOut(timeoutMs));
    }, timeoutMs);
    const onData = (c: Buffer): void => {
      chunks.push(c);
      size += c.length;
      if (size >= length) {
        cleanup();
        resolve(Buffer.concat(chunks));
      }
    };
    const onEnd = (): void => {
      cleanup();
      reject(badRequest("the request body ended early"));
    };
    const cleanup = (): void => {
      clearTimeout(timer);
      up.socket.off("data", onData);
      up.socket.off("end", onEnd);
      up.socket.pause();
    };
    up.socket.on("data", onData);
    up.socket.once("end", onEnd);
    up.socket.resume();
  });
}

export interface StreamOut {
  readonly closed: boolean;
  /** Resolves once the client has taken the bytes (false: the stream is closed). */
  write(b: Buffer): Promise<boolean>;
  end(): void;
  onClose(f: () => void): void;
}

/** Starts a stream answer: 101 on a hijacked connection, 200 otherwise. */
export function openStream(res: ServerResponse, up: Upgrade | undefined, mediaType: string): StreamOut {
  return up ? openHijackedStream(up.socket, mediaType) : openResponseStream(res, mediaType);
}

/** How long a client may keep its side of a hijacked connection open after the stream ended. */
const HIJACKED_CLOSE_GRACE_MS = 5000;

function openHijackedStream(socket: Duplex, mediaType: string): StreamOut {
  let closed = socket.destroyed;
  const onClose: (() => void)[] = [];
  socket.once("close", () => {
    closed = true;
    for (const f of onClose) f();
  });
  (socket as Socket).setNoDelay?.(true);
  socket.write(`HTTP/1.1 101 UPGRADED\r\nContent-Type: ${mediaType}\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n`);
  return {
    get closed() {
      return closed;
    },
    write: (b) => (closed ? Promise.resolve(false) : writeWithBackpressure(socket, b)),
    end: () => {
      if (closed) return;
      // The client reads to the end and then closes; one that keeps its side open is closed after a grace.
      socket.end();
      setTimeout(() => socket.destroy(), HIJACKED_CLOSE_GRACE_MS).unref();
    },
    onClose: (f) => onClose.push(f),
  };
}

function openResponseStream(res: ServerResponse, mediaType: string): StreamOut {
  let closed = false;
  res.writeHead(200, { "Content-Type": mediaType });
  res.flushHeaders();
  res.once("close", () => {
    closed = true;
  });
  return {
    get closed() {
      return closed;
    },
    write: (b) => (closed ? Promise.resolve(false) : writeWithBackpressure(res, b)),
    end: () => {
      if (!closed) res.end();
    },
    onClose: (f) => res.once("close", f),
  };
}
