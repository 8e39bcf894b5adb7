// The Raft transport's wire: limits and defaults, gRPC channel and server options, the generated service
// and the encoders and decoders the client uses (the server's requests are parsed by codec.ts).

import type * as grpc from "@grpc/grpc-js";
import { CLIENT_CHANNEL_OPTIONS } from "../ca/tls.js";
import * as pb from "../gen/raft.js";
import { messageToPb } from "./codec.js";
import type { Message, NodeId } from "./types.js";

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

export function clientChannelOptions(keepaliveTimeMs: number, keepaliveTimeoutMs: number): grpc.ChannelOptions {
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

export const STREAM_PATH = pb.RaftService.streamRaftMessage.path;
export const PING_PATH = pb.RaftService.ping.path;

export const passBuffer = (b: Buffer): Buffer => b;
export const decodeRaftResponse = (b: Buffer): pb.RaftMessageResponse => pb.RaftMessageResponse.decode(b);
export const encodePing = (p: pb.PingRequest): Buffer => {
  const u = pb.PingRequest.encode(p).finish();
  return Buffer.from(u.buffer, u.byteOffset, u.byteLength);
};
export const decodePong = (b: Buffer): pb.PingResponse => pb.PingResponse.decode(b);

/** A RaftMessageRequest, encoded once at send() (messages are immutable on the wire from then on). */
export function encodeRequest(m: Message): Buffer {
  const u = pb.RaftMessageRequest.encode({ message: messageToPb(m) }).finish();
  return Buffer.from(u.buffer, u.byteOffset, u.byteLength);
}

export const hex = (id: NodeId): string => id.toString(16);
