// The cluster listener's accept side: how many TLS handshakes start in one event-loop turn.
//
// After a leader's death every node of the swarm connects to the new leader (and to the others) within
// seconds. Node's TLS server starts a handshake for every connection it accepts, and libuv hands an event-loop
// turn every socket that became readable: a turn of hundreds of handshakes (each a millisecond or two of
// CPU) stalled the new leader for seconds, past Raft's keepalive (1 s) and election timeout, and its peers'
// connections dropped; the Raft connection that had to be made again then waited behind thousands of
// agents' handshakes, and the swarm went without a leader.
//
// The gate reads a connection's first bytes (a TLS ClientHello) itself, puts them back, and queues the
// connection; each event-loop turn hands at most `perTurn` queued connections to the TLS server, whose
// handshake step on the ClientHello (the server's costly part) then runs at once. A turn thus holds a bounded
// number of those steps, and timers (Raft's ticks, heartbeats' deadlines) and keepalives run between turns
// while the queue drains, in order of arrival.
//
// Nothing is held per handshake, so no client can take the listener away from the others: a connection that
// says nothing occupies only its socket (cut after `firstBytesMs`, the TLS handshake timeout), and one that
// stalls mid-handshake is the TLS server's to time out, as before. (A limit of handshakes in flight, the first
// version of this gate, let a few silent connections hold every place.)

import type { Socket } from "node:net";
import type * as tls from "node:tls";

/** Connections handed to TLS per event-loop turn (their ClientHello steps: tens of ms of CPU at most). */
export const HANDSHAKES_PER_TURN = 32;

export class HandshakeGate {
  /** Connections whose first bytes came, waiting for their turn. */
  private readonly ready: (Socket | undefined)[] = [];
  private head = 0;
  /** Connections that have sent nothing yet. */
  private readonly silent = new Set<Socket>();
  private scheduled = false;
  private closed = false;

  /** `tlsServer` is not listening itself: the gate emits its 'connection' events. */
  constructor(
    private readonly tlsServer: tls.Server,
    private readonly perTurn = HANDSHAKES_PER_TURN,
    private readonly firstBytesMs = 10_000,
  ) {}

  /** Connections that have said something and wait for their turn, and those that have said nothing yet. */
  counts(): { waiting: number; silent: number } {
    return { waiting: this.ready.length - this.head, silent: this.silent.size };
  }

  /** A connection accepted: it is queued once its first bytes come. */
  admit(raw: Socket): void {
    if (this.closed) {
      raw.destroy();
      return;
    }
    raw.on("error", () => {
      // A reset before TLS has it concerns only that client; the TLS socket reports its own.
    });
    this.silent.add(raw);
    const timer = setTimeout(() => raw.destroy(), this.firstBytesMs);
    timer.unref();
    const gone = (): void => {
      clearTimeout(timer);
      this.silent.delete(raw);
    };
    raw.once("close", gone);
    raw.once("data", (first: Buffer) => {
      gone();
      raw.off("close", gone);
      // Back where the TLS socket reads it: it takes what the raw socket holds before its own reads.
      raw.pause();
      raw.unshift(first);
      this.ready.push(raw);
      this.schedule();
    });
  }

  /** Drop every connection not yet handed to TLS (the listener closes). */
  close(): void {
    this.closed = true;
    for (let i = this.head; i < this.ready.length; i++) this.ready[i]?.destroy();
    this.ready.length = 0;
    this.head = 0;
    for (const raw of this.silent) raw.destroy();
    this.silent.clear();
  }

  private schedule(): void {
    if (this.scheduled || this.closed) return;
    this.scheduled = true;
    setImmediate(() => this.drain());
  }

  private drain(): void {
    this.scheduled = false;
    let handed = 0;
    while (handed < this.perTurn && this.head < this.ready.length) {
      const raw = this.ready[this.head]!;
      this.ready[this.head++] = undefined;
      // Gone while it waited (a client that gave up): nothing to hand over.
      if (raw.destroyed) continue;
      handed++;
      this.tlsServer.emit("connection", raw);
    }
    if (this.head === this.ready.length) {
      this.ready.length = 0;
      this.head = 0;
    } else {
      if (this.head > 1024 && this.head * 2 > this.ready.length) {
        this.ready.splice(0, this.head);
        this.head = 0;
      }
      this.schedule();
    }
  }
}
