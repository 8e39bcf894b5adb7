// The cluster listener's accept side: how many TLS handshakes run at once.
//
// After a leader's death every node of the swarm connects to the new leader (and to the others) within
// seconds. Node's TLS server starts a handshake for every connection it accepts, and libuv hands an event-loop
// turn every socket that became readable: a turn of hundreds of handshakes (each a millisecond or two of
// CPU) stalled the new leader for seconds, past Raft's keepalive (1 s) and election timeout, and its peers'
// connections dropped; the Raft connection that had to be made again then waited behind thousands of
// agents' handshakes (its connect limit is 2 s), and the swarm went without a leader.
//
// The gate accepts every connection (paused: its bytes wait in the kernel) and hands at most `maxInFlight`
// at a time to the TLS server; each handshake that ends (done, failed, timed out, or the socket closed) lets
// the next one in. The work a turn can hold is bounded by maxInFlight handshake steps, so timers (Raft's
// ticks, heartbeats' deadlines) and keepalives keep running while the queue drains.
//
// A handshake holds its place at most PLACE_MS: clients that connect and say nothing (or very slowly) must
// not hold the listener for the TLS handshake timeout (10 s); past PLACE_MS the handshake goes on (until that
// timeout) without its place, and the next connection gets one.

import type { Socket } from "node:net";
import type * as tls from "node:tls";

/** Handshakes in flight at once on a listener (about 50 ms of CPU if all advanced in one turn). */
export const MAX_HANDSHAKES_IN_FLIGHT = 32;
/** The longest a handshake holds its place (see above). */
export const PLACE_MS = 2000;

export class HandshakeGate {
  private readonly inFlight = new Map<Socket, NodeJS.Timeout>();
  private readonly queue: Socket[] = [];
  private head = 0;

  /**
   * `tlsServer` is not listening itself: the gate emits its 'connection' events. `placeMs`: a handshake not
   * over by then frees its place (and goes on).
   */
  constructor(
    private readonly tlsServer: tls.Server,
    private readonly maxInFlight = MAX_HANDSHAKES_IN_FLIGHT,
    private readonly placeMs = PLACE_MS,
  ) {
    const done = (socket: tls.TLSSocket): void => this.done(parentOf(socket));
    tlsServer.on("secureConnection", done);
    tlsServer.on("tlsClientError", (_err: Error, socket: tls.TLSSocket) => done(socket));
  }

  /** Connections accepted and not yet handed to TLS. */
  get waiting(): number {
    return this.queue.length - this.head;
  }

  /** Handshakes under way. */
  get running(): number {
    return this.inFlight.size;
  }

  /** A connection accepted (paused): its handshake starts now, or when a place frees. */
  admit(raw: Socket): void {
    raw.on("error", () => {
      // A reset while it waits concerns only that client; the TLS socket reports its own.
    });
    if (this.inFlight.size < this.maxInFlight) this.start(raw);
    else this.queue.push(raw);
  }

  /** Drop every connection still waiting (the listener closes). */
  close(): void {
    for (let i = this.head; i < this.queue.length; i++) this.queue[i]!.destroy();
    this.queue.length = 0;
    this.head = 0;
  }

  private start(raw: Socket): void {
    const timer = setTimeout(() => this.done(raw), this.placeMs);
    timer.unref();
    this.inFlight.set(raw, timer);
    raw.once("close", () => this.done(raw));
    this.tlsServer.emit("connection", raw);
  }

  private done(raw: Socket | undefined): void {
    if (raw === undefined) return;
    const timer = this.inFlight.get(raw);
    if (timer === undefined) return;
    clearTimeout(timer);
    this.inFlight.delete(raw);
    this.next();
  }

  private next(): void {
    while (this.inFlight.size < this.maxInFlight && this.head < this.queue.length) {
      const raw = this.queue[this.head]!;
      this.queue[this.head++] = undefined as unknown as Socket;
      if (this.head > 1024 && this.head * 2 > this.queue.length) {
        this.queue.splice(0, this.head);
        this.head = 0;
      }
      // Gone while it waited (a client that gave up): nothing to hand over.
      if (raw.destroyed) continue;
      this.start(raw);
    }
  }
}

/**
 * The accepted socket a server-side TLS socket wraps. Node keeps it as `_parent` (undocumented, stable since
 * Node 0.x; http2 and the TLS server rely on it).
 */
function parentOf(socket: tls.TLSSocket): Socket | undefined {
  const p = (socket as unknown as { _parent?: unknown })._parent;
  return p !== null && typeof p === "object" ? (p as Socket) : undefined;
}
