// One gRPC stream to containerd over a plain HTTP/2 session of its own, for the call that carries bulk data
// (content writes): a message goes out as the list of buffers it is made of (its 5-byte gRPC prefix and
// fields, then the data as the pieces a download arrived in), handed to the socket as they are. grpc-js
// takes a message as one buffer and copies it once more to prefix it: two copies of every byte of a pull
// into fresh memory, and the garbage of both. Everything else still goes through grpc-js.
//
// The gRPC wire format (HTTP/2, "application/grpc"): each message is a 1-byte compressed flag (0 here), a
// 4-byte big-endian length and the message; the status comes in the trailers (or, for a call that fails
// at once, in the only headers), grpc-status and a percent-encoded grpc-message.

import http2, { type ClientHttp2Session, type ClientHttp2Stream, type IncomingHttpHeaders } from "node:http2";
import net from "node:net";
import { status } from "@grpc/grpc-js";

/** How a call ended badly: its gRPC status code and the words that came with it. */
export interface WireStatus {
  code: number;
  detail: string;
}

/** The largest message taken from containerd (grpc-js's limit for the other calls). */
const MAX_MESSAGE_BYTES = 16 * 1024 * 1024;
/** Memory (MB) nghttp2 may hold for the session: a content write keeps a few MiB queued per stream. */
const SESSION_MEMORY_MB = 64;

/** The lazily made HTTP/2 session to containerd's socket, made again after it closed or failed. */
export class WireSession {
  private session: ClientHttp2Session | undefined;

  constructor(private readonly socketPath: string) {}

  private current(): ClientHttp2Session {
    const s = this.session;
    if (s && !s.closed && !s.destroyed) return s;
    const fresh = http2.connect("http://localhost", {
      createConnection: () => net.connect(this.socketPath),
      maxSessionMemory: SESSION_MEMORY_MB,
    });
    // A failed session fails its streams (each says so); the next call makes a new one.
    fresh.on("error", () => undefined);
    fresh.on("close", () => {
      if (this.session === fresh) this.session = undefined;
    });
    // An idle session keeps no process alive.
    fresh.unref();
    this.session = fresh;
    return fresh;
  }

  /** Opens a bidirectional stream: `path` a gRPC method path, `headers` its metadata. */
  open(path: string, headers: Record<string, string>): WireStream {
    const stream = this.current().request({
      ":method": "POST",
      ":path": path,
      "content-type": "application/grpc",
      te: "trailers",
      ...headers,
    });
    return new WireStream(stream);
  }

  close(): void {
    this.session?.close();
    this.session = undefined;
  }
}

/** The 5-byte prefix of a gRPC message of `length` bytes (not compressed). */
export function messagePrefix(length: number): Buffer {
  const b = Buffer.allocUnsafe(5);
  b[0] = 0;
  b.writeUInt32BE(length, 1);
  return b;
}

function statusOf(headers: IncomingHttpHeaders): WireStatus | null | undefined {
  const raw = headers["grpc-status"];
  if (raw === undefined) return undefined;
  const code = Number(raw);
  if (code === status.OK) return null;
  let detail = String(headers["grpc-message"] ?? "");
  try {
    detail = decodeURIComponent(detail);
  } catch {
    // Not percent-encoded after all: said as it came.
  }
  return { code: Number.isInteger(code) ? code : status.UNKNOWN, detail: detail || `status ${raw}` };
}

/** A bidirectional gRPC stream: messages out as lists of buffers; messages, the end or an error in. */
export class WireStream {
  private pending: Buffer = Buffer.alloc(0);
  private finished = false;
  onMessage: (m: Buffer) => void = () => undefined;
  /** Told once: null when the call ended well, the error otherwise. */
  onEnd: (err: WireStatus | null) => void = () => undefined;

  constructor(private readonly stream: ClientHttp2Stream) {
    stream.on("response", (headers) => {
      const st = headers[":status"];
      if (st !== 200) this.end({ code: status.UNKNOWN, detail: `containerd answered HTTP ${st}` });
      // A call that fails at once has its status in these (the only) headers.
      else {
        const s = statusOf(headers);
        if (s !== undefined) this.end(s);
      }
    });
    stream.on("data", (chunk: Buffer) => this.take(chunk));
    stream.on("trailers", (headers) => {
      const s = statusOf(headers);
      this.end(s === undefined ? { code: status.UNKNOWN, detail: "no grpc-status in the trailers" } : s);
    });
    stream.on("error", (err: Error) => this.end({ code: status.UNAVAILABLE, detail: err.message }));
    stream.on("close", () => this.end({ code: status.UNAVAILABLE, detail: "the stream closed with no status" }));
  }

  private take(chunk: Buffer): void {
    this.pending = this.pending.length === 0 ? chunk : Buffer.concat([this.pending, chunk]);
    while (this.pending.length >= 5) {
      const length = this.pending.readUInt32BE(1);
      if (length > MAX_MESSAGE_BYTES) {
        this.cancel({ code: status.RESOURCE_EXHAUSTED, detail: `containerd sent a message of ${length} bytes` });
        return;
      }
      if (this.pending.length < 5 + length) return;
      if (this.pending[0] !== 0) {
        this.cancel({ code: status.INTERNAL, detail: "containerd sent a compressed message, which was not asked for" });
        return;
      }
      const message = this.pending.subarray(5, 5 + length);
      this.pending = this.pending.subarray(5 + length);
      this.onMessage(message);
    }
  }

  private end(err: WireStatus | null): void {
    if (this.finished) return;
    this.finished = true;
    this.onEnd(err);
  }

  /** Sends one message made of `parts` (its prefix first), as they are: nothing is copied. */
  send(parts: Buffer[]): void {
    if (this.finished) return;
    this.stream.cork();
    for (const p of parts) this.stream.write(p);
    this.stream.uncork();
  }

  /** Half-closes: no more messages from this side. */
  close(): void {
    if (!this.stream.writableEnded) this.stream.end();
  }

  /** Ends the call from this side (RST_STREAM CANCEL) with `err`. */
  cancel(err: WireStatus): void {
    this.end(err);
    if (!this.stream.closed) this.stream.close(http2.constants.NGHTTP2_CANCEL);
  }
}
