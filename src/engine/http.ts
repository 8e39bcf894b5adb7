// The HTTP server's limits: nothing a client does (or fails to do) holds the daemon's memory or
// connections for long.
//   - Connections: at most `maxConnections` at once; one more is answered 503 at once and closed.
//   - Time: a request's head must arrive within `headersTimeoutMs`, the whole request (head and body)
//     within `requestTimeoutMs` (Node answers 408 and closes), an idle keep-alive connection is closed
//     after `keepAliveTimeoutMs`. A long answer (logs -f, wait, attach) is not bounded: it is the client's.
//   - Memory: a body is read with a cap (413 past it, before the rest is read), its nesting is checked as
//     it arrives (a million `[` are refused at the 33rd), and all bodies being read at once share one
//     budget (503 past it). Streamed answers wait for the client to take what was written (backpressure).

import { once } from "node:events";
import { createServer as createHttpServer, type IncomingMessage, type RequestListener, type Server } from "node:http";
import type { Socket } from "node:net";
import type { Duplex, Writable } from "node:stream";
import { MAX_JSON_DEPTH, MAX_REQUEST_BODY_BYTES } from "../api/limits.js";
import { ApiError, badRequest, unavailable } from "./errors.js";

export interface HttpLimits {
  maxConnections: number;
  headersTimeoutMs: number;
  requestTimeoutMs: number;
  keepAliveTimeoutMs: number;
  /** How often Node checks the two timeouts above (its default, 30 s, would let them run late). */
  timeoutCheckMs: number;
  maxBodyBytes: number;
  /** Bytes of all request bodies being read at once. */
  bodyBudgetBytes: number;
  maxJsonDepth: number;
}

export const DEFAULT_HTTP_LIMITS: HttpLimits = {
  maxConnections: 256,
  headersTimeoutMs: 10_000,
  requestTimeoutMs: 30_000,
  keepAliveTimeoutMs: 5_000,
  timeoutCheckMs: 1_000,
  maxBodyBytes: MAX_REQUEST_BODY_BYTES,
  bodyBudgetBytes: 32 * 1024 * 1024,
  maxJsonDepth: MAX_JSON_DEPTH,
};

/** The message of a connection refused because the daemon holds `max` already. */
function tooManyConnectionsMessage(max: number): string {
  return `shoald is serving ${max} connections already (its limit): close some and try again`;
}

/** How long a connection refused at the limit may take to send its request and read the 503. */
const REFUSED_GRACE_MS = 2000;

/**
 * An HTTP server with a connection count: a connection past the limit never reaches a handler; its
 * request is answered 503 saying why, and it is closed (at the latest after REFUSED_GRACE_MS). The request
 * is read first, so a client that writes before it reads (every HTTP client) sees the answer rather than
 * a broken pipe. (Node's own timeouts need the server to listen itself, so the count is kept on its
 * connection event rather than by a listener in front of it.)
 */
export class LimitedServer {
  readonly http: Server;
  private readonly sockets = new Set<Socket>();
  private readonly refused = new WeakSet<Duplex>();

  constructor(
    readonly limits: HttpLimits,
    onRequest: RequestListener,
    onUpgrade: (req: IncomingMessage, socket: Duplex, head: Buffer) => void,
  ) {
    this.http = createHttpServer(
      {
        headersTimeout: limits.headersTimeoutMs,
        requestTimeout: limits.requestTimeoutMs,
        keepAliveTimeout: limits.keepAliveTimeoutMs,
        connectionsCheckingInterval: limits.timeoutCheckMs,
      },
      (req, res) => {
        if (!this.refused.has(req.socket)) return onRequest(req, res);
        const body = refusalBody(tooManyConnectionsMessage(this.limits.maxConnections));
        const answer = (): void => {
          res.writeHead(503, {
            "Content-Type": "application/json",
            "Content-Length": body.length,
            Connection: "close",
          });
          res.end(body);
        };
        answerPastBody(req, answer, true);
      },
    );
    this.http.on("upgrade", (req: IncomingMessage, socket: Duplex, head: Buffer) => {
      if (this.refused.has(socket)) refuseRaw(socket, tooManyConnectionsMessage(this.limits.maxConnections));
      else onUpgrade(req, socket, head);
    });
    // Before the HTTP server's own listener, so a refused connection is marked before it is parsed.
    this.http.prependListener("connection", (socket: Socket) => this.accept(socket));
  }

  private accept(socket: Socket): void {
    if (this.sockets.size >= this.limits.maxConnections) {
      this.refused.add(socket);
      socket.on("error", () => undefined);
      setTimeout(() => socket.destroy(), REFUSED_GRACE_MS).unref();
      return;
    }
    this.sockets.add(socket);
    socket.once("close", () => this.sockets.delete(socket));
  }

  /** Destroys every connection (hijacked ones included). */
  destroyAll(): void {
    for (const s of this.sockets) s.destroy();
  }
}

function refusalBody(message: string): Buffer {
  return Buffer.from(`${JSON.stringify({ message })}\n`);
}

function refuseRaw(socket: Duplex, message: string): void {
  const body = refusalBody(message);
  socket.end(
    Buffer.concat([
      Buffer.from(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n" +
          `Content-Length: ${body.length}\r\nConnection: close\r\n\r\n`,
      ),
      body,
    ]),
  );
}

// ------------------------------------------------------------------ bodies

/** Bytes of request bodies in memory at once, shared by every connection. */
export class BodyBudget {
  private used = 0;
  constructor(private readonly maxBytes: number) {}
  take(n: number): boolean {
    if (this.used + n > this.maxBytes) return false;
    this.used += n;
    return true;
  }
  give(n: number): void {
    this.used = Math.max(0, this.used - n);
  }
}

/** Tracks how deeply a JSON text nests while it arrives, chunk by chunk (UTF-8 never hides a bracket). */
class JsonDepthScanner {
  private depth = 0;
  private inString = false;
  private escaped = false;
  constructor(private readonly maxDepth: number) {}

  /** false when the text nests deeper than allowed. */
  feed(buf: Uint8Array): boolean {
    for (let i = 0; i < buf.length; i++) {
      const c = buf[i]!;
      if (this.inString) {
        if (this.escaped) this.escaped = false;
        else if (c === 0x5c) this.escaped = true;
        else if (c === 0x22) this.inString = false;
      } else if (c === 0x22) this.inString = true;
      else if (c === 0x7b || c === 0x5b) {
        if (++this.depth > this.maxDepth) return false;
      } else if (c === 0x7d || c === 0x5d) this.depth--;
    }
    return true;
  }
}

/** How much of a refused body is read and dropped before its connection is closed instead. */
export const DISCARD_MAX_BYTES = 32 * 1024 * 1024;

/**
 * Reads the rest of a body that will not be used, and drops it (nothing is kept): a client writes its whole
 * request before it reads the answer, so closing on unread bytes would break its pipe (EPIPE) before it saw
 * why. The parser frames the body by its length, so the next request on the connection starts where this
 * one ends. Past `maxBytes` the connection is closed; a body that stops coming is closed by the request
 * timeout.
 */
export function discardBody(req: IncomingMessage, maxBytes = DISCARD_MAX_BYTES): void {
  let dropped = 0;
  req.on("data", (chunk: Buffer) => {
    dropped += chunk.length;
    if (dropped > maxBytes) req.socket.destroy();
  });
  req.resume();
}

/**
 * Answers a request whose body (or what is left of it) will not be used: the rest is read and dropped
 * (discardBody) rather than the connection closed on it. An answer after which the connection is closed
 * (`closes`; the client sent "Connection: close", or the answer says so) waits for the body's end: sent at
 * once, it would close the connection while the client still writes, and the client would see a broken pipe,
 * not the answer.
 */
export function answerPastBody(req: IncomingMessage, answer: () => void, closes: boolean): void {
  if (req.complete) {
    answer();
    return;
  }
  discardBody(req);
  if (closes) req.once("end", answer);
  else answer();
}

export function bodyTooLarge(max: number): ApiError {
  return new ApiError(413, `request body is too large: at most ${max} bytes are accepted`);
}

/**
 * Reads a request body within the limits. The bytes are charged to `budget` until `release` is called
 * (when the answer is done). Stops reading at the first limit passed; the caller answers and closes.
 */
export function readBody(
  req: IncomingMessage,
  limits: HttpLimits,
  budget: BodyBudget,
): Promise<{ body: Buffer; release: () => void }> {
  // A declared length past the cap is not refused before the first bytes: what is wrong with them (a
  // million `{`) is the clearer answer, and reading stops at the cap either way.
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    const scanner = new JsonDepthScanner(limits.maxJsonDepth);
    let size = 0;
    let charged = 0;
    const release = (): void => {
      budget.give(charged);
      charged = 0;
    };
    const stop = (err: Error): void => {
      cleanup();
      req.pause();
      release();
      reject(err);
    };
    const problem = (chunk: Buffer): ApiError | undefined => {
      size += chunk.length;
      if (size > limits.maxBodyBytes) return bodyTooLarge(limits.maxBodyBytes);
      if (!budget.take(chunk.length)) {
        return unavailable("shoald is reading too many large requests at once: try again in a moment");
      }
      charged += chunk.length;
      if (!scanner.feed(chunk)) {
        return badRequest(`invalid JSON: the body nests deeper than ${limits.maxJsonDepth} levels`);
      }
      return undefined;
    };
    const onData = (chunk: Buffer): void => {
      const err = problem(chunk);
      if (err) stop(err);
      else chunks.push(chunk);
    };
    const onEnd = (): void => {
      cleanup();
      resolve({ body: Buffer.concat(chunks), release });
    };
    const onAbort = (): void => stop(badRequest("the request body ended early"));
    const cleanup = (): void => {
      req.off("data", onData);
      req.off("end", onEnd);
      req.off("aborted", onAbort);
      req.off("error", onAbort);
    };
    req.on("data", onData);
    req.once("end", onEnd);
    req.once("aborted", onAbort);
    req.once("error", onAbort);
  });
}

/**
 * Writes to a stream and waits until the client has taken it (or is gone): a client that reads slowly
 * holds one chunk of ours, never an unbounded buffer. false once the stream is closed.
 */
export async function writeWithBackpressure(out: Writable, chunk: Uint8Array): Promise<boolean> {
  if (out.destroyed || out.writableEnded) return false;
  if (out.write(chunk)) return true;
  // once() rejects when the stream emits "error": the client is gone, which the return value reports.
  await Promise.race([once(out, "drain"), once(out, "close")]).catch(() => undefined);
  return !out.destroyed;
}
