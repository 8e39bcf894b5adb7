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
// Server side (raftServiceImplementation): handlers for the daemon's grpc.Server. Only callers whose
// certificate (verified against the swarm root by listenTLS/serverCredentials) has OU=swarm-manager and
// O=<this cluster> may call. The daemon's server must allow 8 MiB messages (RAFT_SERVER_OPTIONS).

import * as grpc from "@grpc/grpc-js";
import type { Logger } from "pino";
import { MANAGER_OU, roleToOU } from "../ca/certs.js";
import { CLIENT_CHANNEL_OPTIONS, type PeerIdentity, peerRole } from "../ca/tls.js";
import * as pb from "../gen/raft.js";
import { messageToPb, parsePing, parseRaftMessage } from "./codec.js";
import type { Transport } from "./node.js";
import { type Message, MessageType, NONE, type NodeId } from "./types.js";

// ---------------------------------------------------------------------------------------------------
// Limits and defaults

/** Largest gRPC message either side accepts or sends. The core bounds App messages (~1 MiB of entries,
 * one entry at most 1.5 MiB) and snapshot chunks (1 MiB); this leaves a wide margin. */
export const MAX_RAFT_MESSAGE_BYTES = 8 << 20;
export const DEFAULT_MAX_QUEUE_MESSAGES = 4096;
export const DEFAULT_MAX_QUEUE_BYTES = 64 << 20;
export const INITIAL_BACKOFF_MS = 100;
export const MAX_BACKOFF_MS = 2000;
export const DEFAULT_CONNECT_TIMEOUT_MS = 2000;
export const DEFAULT_KEEPALIVE_TIME_MS = 1000;
export const DEFAULT_KEEPALIVE_TIMEOUT_MS = 1000;
export const DEFAULT_REACHABLE_WITHIN_MS = 3000;
export const DEFAULT_PROBE_TIMEOUT_MS = 1000;

/**
 * Options for the daemon's :2377 grpc.Server (raft messages up to 8 MiB; gRPC's default receive limit is
 * 4 MiB). Server keepalive is slower than the client's: it only cleans up streams of vanished clients,
 * and the same server carries every worker's session.
 */
export const RAFT_SERVER_OPTIONS: grpc.ServerOptions = {
  "grpc.max_receive_message_length": MAX_RAFT_MESSAGE_BYTES,
  "grpc.max_send_message_length": MAX_RAFT_MESSAGE_BYTES,
  "grpc.keepalive_time_ms": 10_000,
  "grpc.keepalive_timeout_ms": 5_000,
};

function clientChannelOptions(keepaliveTimeMs: number, keepaliveTimeoutMs: number): grpc.ChannelOptions {
  return {
    ...CLIENT_CHANNEL_OPTIONS,
    "grpc.max_send_message_length": MAX_RAFT_MESSAGE_BYTES,
    "grpc.max_receive_message_length": MAX_RAFT_MESSAGE_BYTES,
    "grpc.keepalive_time_ms": keepaliveTimeMs,
    "grpc.keepalive_timeout_ms": keepaliveTimeoutMs,
    "grpc.keepalive_permit_without_calls": 1,
    // Each peer gets its own connection; a channel is never shared with another client in the process.
    "grpc.use_local_subchannel_pool": 1,
    // A failed stream is handled here (report, backoff, reconnect), never retried behind our back.
    "grpc.enable_retries": 0,
    // For a channel kept by probe() while the stream is down: do not back off for minutes.
    "grpc.initial_reconnect_backoff_ms": INITIAL_BACKOFF_MS,
    "grpc.max_reconnect_backoff_ms": MAX_BACKOFF_MS,
  };
}

// ---------------------------------------------------------------------------------------------------
// Wire

/** The generated service definition (StreamRaftMessage, ProcessRaftMessage, Ping), for server.addService. */
export const RaftServiceDefinition = pb.RaftService;

const STREAM_PATH = pb.RaftService.streamRaftMessage.path;
const PING_PATH = pb.RaftService.ping.path;

const passBuffer = (b: Buffer): Buffer => b;
const decodeRaftResponse = (b: Buffer): pb.RaftMessageResponse => pb.RaftMessageResponse.decode(b);
const encodePing = (p: pb.PingRequest): Buffer => {
  const u = pb.PingRequest.encode(p).finish();
  return Buffer.from(u.buffer, u.byteOffset, u.byteLength);
};
const decodePong = (b: Buffer): pb.PingResponse => pb.PingResponse.decode(b);

/** A RaftMessageRequest, encoded once at send() (messages are immutable on the wire from then on). */
function encodeRequest(m: Message): Buffer {
  const u = pb.RaftMessageRequest.encode({ message: messageToPb(m) }).finish();
  return Buffer.from(u.buffer, u.byteOffset, u.byteLength);
}

const hex = (id: NodeId): string => id.toString(16);

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

interface Item {
  type: MessageType;
  buf: Buffer;
}

/** FIFO of encoded messages with O(1) push/shift and byte accounting. */
class OutQueue {
  private items: Item[] = [];
  private head = 0;
  bytes = 0;

  get length(): number {
    return this.items.length - this.head;
  }

  push(it: Item): void {
    this.items.push(it);
    this.bytes += it.buf.length;
  }

  shift(): Item | undefined {
    if (this.head >= this.items.length) return undefined;
    const it = this.items[this.head]!;
    this.items[this.head] = undefined as unknown as Item;
    this.head++;
    this.bytes -= it.buf.length;
    if (this.head === this.items.length) {
      this.items = [];
      this.head = 0;
    } else if (this.head >= 1024 && this.head * 2 >= this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
    return it;
  }

  /** Drops the oldest message that is safe to lose first (App, Heartbeat, Snap), else the oldest. */
  dropOldest(): void {
    for (let i = this.head; i < this.items.length; i++) {
      const t = this.items[i]!.type;
      if (t === MessageType.App || t === MessageType.Heartbeat || t === MessageType.Snap) {
        if (i === this.head) {
          this.shift();
        } else {
          this.bytes -= this.items[i]!.buf.length;
          this.items.splice(i, 1);
        }
        return;
      }
    }
    this.shift();
  }

  clear(): number {
    const n = this.length;
    this.items = [];
    this.head = 0;
    this.bytes = 0;
    return n;
  }
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
    const client = new grpc.Client(address, this.opts.credentials(), this.channelOptions);
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

// ---------------------------------------------------------------------------------------------------
// Server side

export interface RaftServiceOptions {
  /** Step a message into the local node (node.step). */
  deliver: (m: Message) => void;
  /** This node's cluster id: callers' certificates must have O = clusterId(). */
  clusterId: () => string;
  /** A message or ping from raft member `id` arrived (wire to transport.markHeard). */
  onHeard?: (id: NodeId) => void;
  /** This node's raft id: messages and pings addressed to another member are refused. */
  selfId?: () => NodeId;
  /**
   * Who raft id `from` is, for a caller whose certificate names node `nodeId`: a current member held by
   * that node ("member"), a current member held by another node ("other-node"), an id removed from the
   * group ("removed": the caller is told so, and stops), or none of these ("unknown"). Everything but
   * "member" is refused. Without it (tests of the transport alone) any manager may speak for any id.
   */
  member?: (from: NodeId, nodeId: string) => SenderStatus;
  /** Refuse callers whose node (certificate CN) was removed from the swarm. */
  isRemoved?: (nodeId: string) => boolean;
  logger?: Logger;
}

export type SenderStatus = "member" | "other-node" | "removed" | "unknown";

/** The start of the details of the NOT_FOUND refusal that tells a removed member it was removed. */
export const REMOVED_MEMBER_DETAILS = "raft member removed:";

interface Refusal {
  code: grpc.status;
  details: string;
}

/** Log a refusal at most once per `everyMs` per key, counting the ones not logged. */
class RefusalLog {
  private last = new Map<string, { atMs: number; suppressed: number }>();

  constructor(
    private readonly log: Logger | undefined,
    private readonly everyMs = 10_000,
  ) {}

  note(key: string, fields: Record<string, unknown>, msg: string): void {
    const now = Date.now();
    const e = this.last.get(key);
    if (e && now - e.atMs < this.everyMs) {
      e.suppressed++;
      return;
    }
    if (this.last.size > 1000) this.last.clear();
    this.last.set(key, { atMs: now, suppressed: 0 });
    this.log?.warn({ ...fields, ...(e && e.suppressed > 0 ? { suppressed: e.suppressed } : {}) }, msg);
  }
}

function isRefusal(x: unknown): x is Refusal {
  return typeof x === "object" && x !== null && "code" in x && "details" in x;
}

/**
 * Handlers for the Raft service, to add to the daemon's grpc.Server:
 * `server.addService(RaftServiceDefinition, raftServiceImplementation({...}))`. Every call must come from
 * a swarm manager of this cluster; others get PERMISSION_DENIED (UNAUTHENTICATED without a certificate).
 */
export function raftServiceImplementation(opts: RaftServiceOptions): grpc.UntypedServiceImplementation {
  const log = opts.logger;

  const authorize = (call: Parameters<typeof peerRole>[0]): PeerIdentity | Refusal => {
    const peer = peerRole(call);
    if (!peer) {
      return {
        code: grpc.status.UNAUTHENTICATED,
        details:
          `Permission denied: raft traffic is accepted only from swarm managers (a certificate with ` +
          `OU=${MANAGER_OU} from this swarm's CA), and the caller presented no valid client certificate`,
      };
    }
    if (peer.role !== "manager") {
      return {
        code: grpc.status.PERMISSION_DENIED,
        details:
          `Permission denied: unauthorized peer role: node ${peer.nodeId} has role ${roleToOU(peer.role)}, ` +
          `and raft traffic requires role ${MANAGER_OU}`,
      };
    }
    const cluster = opts.clusterId();
    if (peer.clusterId !== cluster) {
      return {
        code: grpc.status.PERMISSION_DENIED,
        details:
          `Permission denied: node ${peer.nodeId} has a certificate for cluster ${peer.clusterId}, ` +
          `not for this cluster (${cluster || "none"})`,
      };
    }
    if (opts.isRemoved?.(peer.nodeId)) {
      return {
        code: grpc.status.PERMISSION_DENIED,
        details: `Permission denied: node ${peer.nodeId} was removed from the swarm`,
      };
    }
    return peer;
  };

  const checkMember = (from: NodeId, to: NodeId, peer: PeerIdentity): Refusal | undefined => {
    const self = opts.selfId?.();
    if (self !== undefined && self !== NONE && to !== NONE && to !== self) {
      return {
        code: grpc.status.FAILED_PRECONDITION,
        details: `raft message for member ${hex(to)} reached member ${hex(self)}: the peer's address list is stale`,
      };
    }
    if (from === NONE || !opts.member) return undefined;
    switch (opts.member(from, peer.nodeId)) {
      case "member":
        return undefined;
      case "removed":
        return {
          code: grpc.status.NOT_FOUND,
          details: `${REMOVED_MEMBER_DETAILS} raft member ${hex(from)} was removed from the raft group; it must stop`,
        };
      case "other-node":
        return {
          code: grpc.status.PERMISSION_DENIED,
          details: `Permission denied: node ${peer.nodeId} may not send raft messages as member ${hex(from)}, which belongs to another node`,
        };
      default:
        return {
          code: grpc.status.PERMISSION_DENIED,
          details: `Permission denied: ${hex(from)} is not a member of this raft group (caller: node ${peer.nodeId})`,
        };
    }
  };

  const accept = (req: pb.RaftMessageRequest, peer: PeerIdentity): Message | Refusal => {
    if (!req.message) return { code: grpc.status.INVALID_ARGUMENT, details: "raft message request without a message" };
    let m: Message;
    try {
      m = parseRaftMessage(req.message);
    } catch (err) {
      return { code: grpc.status.INVALID_ARGUMENT, details: (err as Error).message };
    }
    return checkMember(m.from, m.to, peer) ?? m;
  };

  const handle = (m: Message): void => {
    opts.onHeard?.(m.from);
    try {
      opts.deliver(m);
    } catch (err) {
      log?.warn({ err, from: hex(m.from), type: MessageType[m.type] }, "raft: could not step a message from a peer");
    }
  };

  const refusals = new RefusalLog(log);
  const refused = (what: string, r: Refusal, call: { getPeer(): string }): void => {
    refusals.note(
      `${what}|${r.code}|${r.details}`,
      { rpc: what, peer: call.getPeer(), code: grpc.status[r.code], details: r.details },
      "raft rpc refused",
    );
  };

  const streamRaftMessage: grpc.handleClientStreamingCall<pb.RaftMessageRequest, pb.RaftMessageResponse> = (
    call,
    callback,
  ) => {
    const peer = authorize(call);
    if (isRefusal(peer)) {
      refused("StreamRaftMessage", peer, call);
      callback(peer);
      return;
    }
    let done = false;
    const finish = (r?: Refusal): void => {
      if (done) return;
      done = true;
      if (r) callback(r);
      else callback(null, {});
    };
    call.on("data", (req: pb.RaftMessageRequest) => {
      if (done) return;
      const m = accept(req, peer);
      if (isRefusal(m)) {
        refused("StreamRaftMessage", m, call);
        finish(m);
        return;
      }
      handle(m);
    });
    call.on("end", () => finish());
    call.on("error", () => {
      // Cancelled or broken by the peer; nothing to answer.
      done = true;
    });
  };

  const processRaftMessage: grpc.handleUnaryCall<pb.RaftMessageRequest, pb.RaftMessageResponse> = (call, callback) => {
    const peer = authorize(call);
    if (isRefusal(peer)) {
      refused("ProcessRaftMessage", peer, call);
      callback(peer);
      return;
    }
    const m = accept(call.request, peer);
    if (isRefusal(m)) {
      refused("ProcessRaftMessage", m, call);
      callback(m);
      return;
    }
    handle(m);
    callback(null, {});
  };

  const ping: grpc.handleUnaryCall<pb.PingRequest, pb.PingResponse> = (call, callback) => {
    const peer = authorize(call);
    if (isRefusal(peer)) {
      refused("Ping", peer, call);
      callback(peer);
      return;
    }
    let ids: { from: number; to: number };
    try {
      ids = parsePing(call.request);
    } catch (err) {
      const bad = { code: grpc.status.INVALID_ARGUMENT, details: (err as Error).message };
      refused("Ping", bad, call);
      callback(bad);
      return;
    }
    const r = checkMember(ids.from, ids.to, peer);
    if (r) {
      refused("Ping", r, call);
      callback(r);
      return;
    }
    if (ids.from !== NONE) opts.onHeard?.(ids.from);
    callback(null, {});
  };

  return { streamRaftMessage, processRaftMessage, ping };
}
