// The network transport of the Raft group: gRPC over mutual TLS on :2377 (proto/raft.proto, service Raft).
//
// Client side (GrpcTransport): one long-lived client stream (StreamRaftMessage) per peer, opened lazily when
// the first message for that peer is sent. send() only encodes and queues; it never waits. Each peer has
// its own bounded outgoing queue (default 4096 messages / 64 MiB), drained into the stream with
// backpressure (write() → false → wait for 'drain'), so a peer that stops reading (half-open TCP, a frozen
// host) stalls only its own queue, and that queue drops its oldest App/Heartbeat/Snap messages instead of
// growing. Raft tolerates lost messages; every loss is reported to the core (onUnreachable) so the leader
// drops back to probing that follower.
//
// Per peer: idle → connecting (a fresh channel must reach READY within connectTimeoutMs, 2 s) → open →
// on any error/end of the stream: report unreachable once, drop the queue, discard the channel, and wait
// in backoff (100 ms doubling to 2 s; reset once a stream has stayed up for 2 s). While in backoff,
// messages for that peer are dropped; the next send() after the backoff reconnects. A new channel is made
// for every connection, so renewed credentials (opts.credentials()) and a changed address (opts.resolve)
// take effect at the next reconnect.
//
// Dead peers: a SIGKILLed process's kernel resets its connections, so the stream fails at once. A peer
// whose host vanished (half-open TCP) is caught by HTTP/2 keepalive: a PING every keepaliveTimeMs (1 s)
// that must be answered within keepaliveTimeoutMs (1 s), so the stream fails within ~2 s; until then
// writes stall on HTTP/2 flow control and the bounded queue sheds load.
//
// Liveness for MANAGER STATUS (reachable()): a peer is reachable if the last thing we learnt about it
// was a success — a message from it arrived (markHeard, called by the server side) or a Ping to it
// was answered (probe()) — and that was within `withinMs`. A failed stream, connection or probe
// counts against it. A write that completed locally does not count: it only means the bytes reached
// our own kernel. The leader hears from every follower (responses); between followers there is no Raft
// traffic, so the daemon should probe() every member about once a second.
//
// The server side (the Raft service's handlers, who may send) is in transport-server.ts; limits and wire
// helpers in transport-wire.ts; the per-peer queue in transport-queue.ts.

import * as grpc from "@grpc/grpc-js";
import type { Logger } from "pino";
import { channelTarget } from "../ca/tls.js";
import type * as pb from "../gen/raft.js";
import type { Transport } from "./node-options.js";
import { type Item, OutQueue } from "./transport-queue.js";
import { REMOVED_MEMBER_DETAILS } from "./transport-server.js";
import {
  clientChannelOptions,
  DEFAULT_CONNECT_TIMEOUT_MS,
  DEFAULT_KEEPALIVE_TIME_MS,
  DEFAULT_KEEPALIVE_TIMEOUT_MS,
  DEFAULT_MAX_QUEUE_BYTES,
  DEFAULT_MAX_QUEUE_MESSAGES,
  DEFAULT_PROBE_TIMEOUT_MS,
  DEFAULT_REACHABLE_WITHIN_MS,
  decodePong,
  decodeRaftResponse,
  encodePing,
  encodeRequest,
  hex,
  INITIAL_BACKOFF_MS,
  MAX_BACKOFF_MS,
  MAX_RAFT_MESSAGE_BYTES,
  PING_PATH,
  passBuffer,
  STREAM_PATH,
} from "./transport-wire.js";
import { type Message, MessageType, NONE, type NodeId } from "./types.js";

export {
  type RaftServiceOptions,
  REMOVED_MEMBER_DETAILS,
  raftServiceImplementation,
  type SenderStatus,
} from "./transport-server.js";
export { MAX_RAFT_MESSAGE_BYTES, RAFT_SERVER_OPTIONS, RaftServiceDefinition } from "./transport-wire.js";

// ---------------------------------------------------------------------------------------------------
// Client side

/** "host:port" of a member's :2377 listener, or undefined if unknown. */
export type PeerResolver = (raftId: NodeId) => string | undefined;

export interface GrpcTransportOptions {
  selfId: NodeId;
  resolve: PeerResolver;
  /** Client credentials with this node's manager certificate; called for every new connection, so a
   * renewed certificate is used from the next reconnect on. */
  credentials: () => grpc.ChannelCredentials;
  /** Wire to node.reportUnreachable. */
  onUnreachable: (id: NodeId) => void;
  /** A peer answered that this node's raft id was removed from the group (wire to node.toldRemoved). */
  onToldRemoved?: (by: NodeId) => void;
  logger?: Logger;
  /** Per-peer queue bounds (defaults 4096 messages, 64 MiB). */
  maxQueueMessages?: number;
  maxQueueBytes?: number;
  /** How long a new connection may take to become ready (default 2 s). */
  connectTimeoutMs?: number;
  /** HTTP/2 keepalive (defaults 1 s / 1 s: a dead peer is noticed within ~2 s). On slow links carrying
   * snapshots, raise the timeout: a PING waits behind the data already in the socket buffers. */
  keepaliveTimeMs?: number;
  keepaliveTimeoutMs?: number;
  /** Monotonic clock in ms (default performance.now). */
  now?: () => number;
}

type PeerState = "idle" | "connecting" | "open" | "backoff";

export interface PeerStats {
  id: NodeId;
  state: PeerState;
  address: string | undefined;
  queuedMessages: number;
  queuedBytes: number;
  /** Messages dropped so far (queue overflow, peer in backoff, queue discarded on failure). */
  dropped: number;
  /** Consecutive failed connections/streams (0 once a stream has stayed up). */
  failures: number;
}

interface Peer {
  id: NodeId;
  state: PeerState;
  address: string | undefined;
  client: grpc.Client | undefined;
  call: grpc.ClientWritableStream<Buffer> | undefined;
  /** Resolves when `call` has finished (for close()). */
  callDone: Promise<void> | undefined;
  openedAt: number;
  queue: OutQueue;
  /** The stream's buffer is full; waiting for 'drain'. */
  blocked: boolean;
  retryAt: number;
  nextBackoff: number;
  failures: number;
  /** Overflow already reported since the queue was last empty. */
  overflowing: boolean;
  dropped: number;
  /** Liveness: when we last learnt of a success / failure (monotonic ms; -Infinity = never). */
  lastOk: number;
  lastFail: number;
  probing: Promise<boolean> | undefined;
}

export class GrpcTransport implements Transport {
  private readonly opts: GrpcTransportOptions;
  private readonly log: Logger | undefined;
  private readonly now: () => number;
  private readonly maxQueueMessages: number;
  private readonly maxQueueBytes: number;
  private readonly connectTimeoutMs: number;
  private readonly channelOptions: grpc.ChannelOptions;
  private readonly peers = new Map<NodeId, Peer>();
  private closed = false;

  constructor(opts: GrpcTransportOptions) {
    this.opts = opts;
    this.log = opts.logger;
    this.now = opts.now ?? (() => performance.now());
    this.maxQueueMessages = opts.maxQueueMessages ?? DEFAULT_MAX_QUEUE_MESSAGES;
    this.maxQueueBytes = opts.maxQueueBytes ?? DEFAULT_MAX_QUEUE_BYTES;
    this.connectTimeoutMs = opts.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
    this.channelOptions = clientChannelOptions(
      opts.keepaliveTimeMs ?? DEFAULT_KEEPALIVE_TIME_MS,
      opts.keepaliveTimeoutMs ?? DEFAULT_KEEPALIVE_TIMEOUT_MS,
    );
  }

  /** Queue messages for their peers and return at once. Order is kept per peer; any message may be lost. */
  send(messages: Message[]): void {
    if (this.closed) return;
    const now = this.now();
    const touched = new Set<Peer>();
    for (const m of messages) {
      if (m.to === NONE || m.to === this.opts.selfId) {
        this.log?.warn(
          { to: hex(m.to), type: MessageType[m.type] },
          "raft transport: dropped a message not for a peer",
        );
        continue;
      }
      const p = this.peer(m.to);
      if (p.state === "backoff" && now >= p.retryAt) p.state = "idle";
      if (p.state === "idle") this.connect(p);
      if (p.state === "backoff") {
        // Already reported when the connection failed; Raft resends what matters after the backoff.
        p.dropped++;
        continue;
      }
      let buf: Buffer;
      try {
        buf = encodeRequest(m);
      } catch (err) {
        this.log?.error({ err, to: hex(m.to), type: MessageType[m.type] }, "raft transport: cannot encode message");
        continue;
      }
      if (buf.length > MAX_RAFT_MESSAGE_BYTES) {
        this.log?.error(
          { to: hex(m.to), type: MessageType[m.type], bytes: buf.length, max: MAX_RAFT_MESSAGE_BYTES },
          "raft transport: dropped a message larger than the gRPC limit",
        );
        continue;
      }
      this.enqueue(p, { type: m.type, buf });
      touched.add(p);
    }
    for (const p of touched) this.pump(p);
  }

  /** Peer liveness for MANAGER STATUS (see the top of this file). */
  reachable(id: NodeId, withinMs = DEFAULT_REACHABLE_WITHIN_MS): boolean {
    const p = this.peers.get(id);
    if (!p) return false;
    return p.lastOk > p.lastFail && this.now() - p.lastOk <= withinMs;
  }

  /** A message from `id` arrived (the server side calls this). */
  markHeard(id: NodeId): void {
    if (this.closed || id === NONE || id === this.opts.selfId) return;
    this.peer(id).lastOk = this.now();
  }

  /**
   * Ping `id` once (unary Ping over the peer's channel, shared with its stream). Resolves true if it
   * answered within `timeoutMs`; updates reachable(). Never rejects. Concurrent probes of one peer share
   * one call.
   */
  probe(id: NodeId, timeoutMs = DEFAULT_PROBE_TIMEOUT_MS): Promise<boolean> {
    if (this.closed || id === NONE || id === this.opts.selfId) return Promise.resolve(false);
    const p = this.peer(id);
    if (p.probing) return p.probing;
    let client: grpc.Client;
    try {
      client = p.client ?? this.newClient(p);
    } catch (err) {
      p.lastFail = this.now();
      this.log?.debug({ peer: hex(id), err }, "raft transport: probe not sent");
      return Promise.resolve(false);
    }
    const probing = new Promise<boolean>((resolve) => {
      client.makeUnaryRequest<pb.PingRequest, pb.PingResponse>(
        PING_PATH,
        encodePing,
        decodePong,
        { from: this.opts.selfId, to: id },
        { deadline: Date.now() + timeoutMs },
        (err) => {
          if (p.probing === probing) p.probing = undefined;
          if (this.closed || this.peers.get(id) !== p) {
            resolve(false);
            return;
          }
          if (err) {
            this.checkToldRemoved(id, err);
            p.lastFail = this.now();
            this.log?.debug(
              { peer: hex(id), code: grpc.status[err.code], details: err.details },
              "raft peer probe failed",
            );
            // Without a stream on it, do not keep a channel that may be stuck connecting to an old socket.
            if (p.state !== "open" && p.state !== "connecting" && p.client === client) {
              client.close();
              p.client = undefined;
            }
            resolve(false);
          } else {
            p.lastOk = this.now();
            resolve(true);
          }
        },
      );
    });
    p.probing = probing;
    return probing;
  }

  /** Close the stream to a member that was removed, and forget it. */
  removePeer(id: NodeId): void {
    const p = this.peers.get(id);
    if (!p) return;
    this.peers.delete(id);
    this.discard(p, true);
    this.log?.info({ peer: hex(id) }, "raft transport: peer removed");
  }

  /** State of one peer's connection and queue (for metrics and tests). */
  peerStats(id: NodeId): PeerStats | undefined {
    const p = this.peers.get(id);
    if (!p) return undefined;
    return {
      id,
      state: p.state,
      address: p.address,
      queuedMessages: p.queue.length,
      queuedBytes: p.queue.bytes,
      dropped: p.dropped,
      failures: p.state === "open" && this.now() - p.openedAt >= MAX_BACKOFF_MS ? 0 : p.failures,
    };
  }

  /** Half-close every stream (the peers see a clean end), wait up to 1 s for them, then cut the rest. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const done: Promise<void>[] = [];
    for (const p of this.peers.values()) {
      const call = p.call;
      p.call = undefined;
      p.queue.clear();
      if (call && p.callDone) {
        done.push(p.callDone);
        call.end();
      }
    }
    if (done.length > 0) {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        Promise.all(done),
        new Promise<void>((r) => {
          timer = setTimeout(r, 1000);
          timer.unref();
        }),
      ]);
      if (timer) clearTimeout(timer);
    }
    for (const p of this.peers.values()) this.discard(p, true);
    this.peers.clear();
  }

  // ------------------------------------------------------------------ internals

  private peer(id: NodeId): Peer {
    let p = this.peers.get(id);
    if (!p) {
      p = {
        id,
        state: "idle",
        address: undefined,
        client: undefined,
        call: undefined,
        callDone: undefined,
        openedAt: 0,
        queue: new OutQueue(),
        blocked: false,
        retryAt: 0,
        nextBackoff: INITIAL_BACKOFF_MS,
        failures: 0,
        overflowing: false,
        dropped: 0,
        lastOk: Number.NEGATIVE_INFINITY,
        lastFail: Number.NEGATIVE_INFINITY,
        probing: undefined,
      };
      this.peers.set(id, p);
    }
    return p;
  }

  /** A new channel to the peer's current address, with fresh credentials. Throws if it has no address. */
  private newClient(p: Peer): grpc.Client {
    const address = this.opts.resolve(p.id);
    if (!address) throw new Error(`no address is known for raft member ${hex(p.id)}`);
    p.client?.close();
    p.client = undefined;
    const client = new grpc.Client(channelTarget(address), this.opts.credentials(), this.channelOptions);
    p.client = client;
    p.address = address;
    return client;
  }

  /** idle → connecting: wait (at most connectTimeoutMs) for a new channel to be READY, then open the stream. */
  private connect(p: Peer): void {
    let client: grpc.Client;
    try {
      // Reuse a channel a probe just made only if the address did not change; otherwise start afresh.
      client = p.client && p.address === this.opts.resolve(p.id) ? p.client : this.newClient(p);
    } catch (err) {
      this.fail(p, `cannot connect: ${(err as Error).message}`);
      return;
    }
    p.state = "connecting";
    const channel = client.getChannel();
    const deadline = Date.now() + this.connectTimeoutMs;
    const check = (): void => {
      if (p.client !== client || p.state !== "connecting" || this.closed) return;
      const st = channel.getConnectivityState(true);
      if (st === grpc.connectivityState.READY) {
        this.open(p, client);
      } else if (st === grpc.connectivityState.TRANSIENT_FAILURE || st === grpc.connectivityState.SHUTDOWN) {
        this.fail(p, `could not connect to ${p.address}`);
      } else {
        channel.watchConnectivityState(st, deadline, (err) => {
          if (!err) {
            check();
          } else if (p.client === client && p.state === "connecting" && !this.closed) {
            this.fail(p, `could not connect to ${p.address} within ${this.connectTimeoutMs} ms`);
          }
        });
      }
    };
    check();
  }

  private open(p: Peer, client: grpc.Client): void {
    let finished!: () => void;
    p.callDone = new Promise<void>((r) => {
      finished = r;
    });
    const call: grpc.ClientWritableStream<Buffer> = client.makeClientStreamRequest<Buffer, pb.RaftMessageResponse>(
      STREAM_PATH,
      passBuffer,
      decodeRaftResponse,
      (err) => {
        finished();
        if (p.call !== call) return; // ended or cancelled by us
        if (err) this.checkToldRemoved(p.id, err);
        this.fail(
          p,
          err ? `stream failed: ${grpc.status[err.code] ?? err.code}: ${err.details}` : "the peer ended the stream",
        );
      },
    );
    call.on("error", (err: Error) => {
      if (p.call === call) this.fail(p, `stream failed: ${err.message}`);
    });
    p.call = call;
    p.state = "open";
    p.openedAt = this.now();
    p.blocked = false;
    if (p.failures > 0) {
      this.log?.info({ peer: hex(p.id), address: p.address, after: p.failures }, "raft transport: connected to peer");
    }
    this.pump(p);
  }

  private enqueue(p: Peer, it: Item): void {
    p.queue.push(it);
    let dropped = 0;
    while (p.queue.length > this.maxQueueMessages || (p.queue.bytes > this.maxQueueBytes && p.queue.length > 1)) {
      p.queue.dropOldest();
      dropped++;
    }
    if (dropped === 0) return;
    p.dropped += dropped;
    if (!p.overflowing) {
      p.overflowing = true;
      this.log?.warn(
        { peer: hex(p.id), queued: p.queue.length, bytes: p.queue.bytes, state: p.state },
        "raft transport: peer is not keeping up; dropping its oldest messages",
      );
      this.reportUnreachable(p.id);
    }
  }

  /** Move queued messages into the stream until it pushes back. */
  private pump(p: Peer): void {
    const call = p.call;
    if (p.state !== "open" || !call || p.blocked) return;
    while (p.queue.length > 0) {
      const it = p.queue.shift()!;
      if (!call.write(it.buf)) {
        p.blocked = true;
        call.once("drain", () => {
          if (p.call !== call) return;
          p.blocked = false;
          this.pump(p);
        });
        break;
      }
    }
    if (p.queue.length === 0) p.overflowing = false;
  }

  /** The connection or stream failed: report once, drop the queue and the channel, back off. */
  private fail(p: Peer, reason: string): void {
    if (this.closed || this.peers.get(p.id) !== p) return;
    const now = this.now();
    const longLived = p.state === "open" && now - p.openedAt >= MAX_BACKOFF_MS;
    const dropped = this.discard(p, false);
    p.dropped += dropped;
    if (longLived) {
      p.failures = 0;
      p.nextBackoff = INITIAL_BACKOFF_MS;
    }
    const wait = p.nextBackoff;
    p.nextBackoff = Math.min(wait * 2, MAX_BACKOFF_MS);
    p.failures++;
    p.state = "backoff";
    p.retryAt = now + wait;
    p.lastFail = now;
    const fields = { peer: hex(p.id), address: p.address, reason, dropped, retryInMs: wait, failures: p.failures };
    if (p.failures === 1) this.log?.warn(fields, "raft transport: lost connection to peer");
    else this.log?.debug(fields, "raft transport: peer still unreachable");
    this.reportUnreachable(p.id);
  }

  /** Cancel the stream, close the channel and empty the queue; returns how many queued messages were lost. */
  private discard(p: Peer, cancelProbe: boolean): number {
    const call = p.call;
    p.call = undefined;
    p.blocked = false;
    p.overflowing = false;
    call?.cancel();
    if (cancelProbe || !p.probing) {
      p.client?.close();
      p.client = undefined;
    } else {
      // Let an in-flight probe finish on its channel; it is closed when the probe ends or at the next connect.
      const client = p.client;
      p.client = undefined;
      void p.probing.finally(() => client?.close());
    }
    p.state = "idle";
    return p.queue.clear();
  }

  /** The peer refused us because our raft id was removed from the group: tell the node (it stops). */
  private checkToldRemoved(peer: NodeId, err: grpc.ServiceError): void {
    if (err.code !== grpc.status.NOT_FOUND || !err.details?.startsWith(REMOVED_MEMBER_DETAILS)) return;
    this.log?.warn({ peer: hex(peer), details: err.details }, "raft transport: a peer says this member was removed");
    try {
      this.opts.onToldRemoved?.(peer);
    } catch (e) {
      this.log?.error({ err: e, peer: hex(peer) }, "raft transport: onToldRemoved threw");
    }
  }

  private reportUnreachable(id: NodeId): void {
    try {
      this.opts.onUnreachable(id);
    } catch (err) {
      this.log?.error({ err, peer: hex(id) }, "raft transport: onUnreachable threw");
    }
  }
}
