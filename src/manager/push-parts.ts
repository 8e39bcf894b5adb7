// The pieces a session message is made of, each encoded once and shared by every session it goes to.
//
// A protobuf message is the concatenation of its encoded fields, so a session's message is put together
// from bytes made earlier: its session id (made when the session starts), its node (made when that node
// changes), what every session gets alike (the managers, the heartbeat period, the root CA: made once per
// batch of pushes), each network it holds with all its endpoints (made once per change of that network,
// for all its holders) and the overlay keys (once per key change). A change to one network costs one
// encoding of it plus a copy of bytes per session holding it, never an encoding per session.
//
// A piece whose bytes come out the same as before keeps its old Buffer: a session is sent a message only
// when one of its pieces is not the very Buffer it was last sent.

import type { ServerDuplexStream, ServerWritableStream } from "@grpc/grpc-js";
import type { HeartbeatRequest, ManagerAddr, NetworkState, SessionRequest } from "../gen/cluster.js";
import { DispatcherService, HeartbeatResponse, SessionMessage } from "../gen/cluster.js";
import { agentView, isEncryptedNetwork } from "../store/keyring.js";
import type { ClusterRecord, NodeRecord, Store, View } from "../store/store.js";
import { networkState } from "./networks.js";

const EMPTY = Buffer.alloc(0);

/** A SessionMessage already encoded (the session stream writes these bytes as they are). */
export type EncodedSessionMessage = Buffer;
export type SessionCall = ServerWritableStream<SessionRequest, EncodedSessionMessage>;

/** A HeartbeatResponse already encoded (the heartbeat stream writes these bytes as they are). */
export type EncodedHeartbeatResponse = Buffer;
export type HeartbeatStream = ServerDuplexStream<HeartbeatRequest, EncodedHeartbeatResponse>;

/** The dispatcher's service with session and heartbeat streams that take messages already encoded. */
export const DispatcherServiceEncoded = {
  ...DispatcherService,
  session: {
    ...DispatcherService.session,
    responseSerialize: (value: EncodedSessionMessage): Buffer => value,
  },
  heartbeats: {
    ...DispatcherService.heartbeats,
    responseSerialize: (value: EncodedHeartbeatResponse): Buffer => value,
  },
} as const;

/** The answer to a heartbeat on the stream, encoded once per period (every answer is the same bytes). */
export function encodedHeartbeatResponse(periodMs: number): EncodedHeartbeatResponse {
  if (lastAnswer?.periodMs !== periodMs) {
    lastAnswer = { periodMs, bytes: Buffer.from(HeartbeatResponse.encode({ periodMs }).finish()) };
  }
  return lastAnswer.bytes;
}
let lastAnswer: { periodMs: number; bytes: Buffer } | undefined;

function encode(m: Partial<SessionMessage>): Buffer {
  const w = SessionMessage.encode(SessionMessage.fromPartial(m));
  return Buffer.from(w.finish());
}

/** The same Buffer as `prev` when the bytes are the same (so that sameness is a pointer comparison). */
function keep(prev: Buffer | undefined, next: Buffer): Buffer {
  return prev?.equals(next) ? prev : next;
}

/** What a session keeps of the pieces it was sent. */
export interface SessionPieces {
  /** Field 1 (the session id), made when the session starts. */
  readonly idPart: Buffer;
  /** The node's view its node piece was made from (views are shared and replaced when the node changes). */
  nodeView: View<NodeRecord> | undefined;
  nodeRenew: string;
  nodePart: Buffer;
  /** The pieces of the last message sent, in order. */
  last: readonly Buffer[];
}

export function newSessionPieces(sessionId: string): SessionPieces {
  return { idPart: encode({ sessionId }), nodeView: undefined, nodeRenew: "", nodePart: EMPTY, last: [] };
}

interface NetworkPiece {
  bytes: Buffer;
  encrypted: boolean;
}

export class PushParts {
  /** Pieces encoded so far (each is one serialisation; tests and metrics count them). */
  encoded = 0;
  private common: Buffer | undefined;
  private networks = new Map<string, NetworkPiece | null>();
  private keys: Buffer | undefined;

  constructor(private readonly store: Store) {}

  /** What every session gets alike, as of now: call once per batch of pushes. */
  refreshCommon(managers: ManagerAddr[], heartbeatPeriodMs: number, cluster: View<ClusterRecord> | undefined): void {
    const rootCaPem = cluster?.info.TLSInfo.TrustRoot ?? "";
    this.encoded++;
    this.common = keep(this.common, encode({ managers, heartbeatPeriodMs, rootCaPem }));
  }

  /** A network changed (itself, its endpoints, or a node holding it): its piece is made again when needed. */
  dropNetwork(networkId: string): void {
    this.networks.delete(networkId);
  }

  dropKeys(): void {
    this.keys = undefined;
  }

  clear(): void {
    this.networks.clear();
    this.keys = undefined;
    this.common = undefined;
  }

  private network(id: string): NetworkPiece | null {
    let p = this.networks.get(id);
    if (p !== undefined) return p;
    const st: NetworkState | undefined = networkState(this.store, id);
    const net = st ? this.store.network(id) : undefined;
    if (st && net) {
      this.encoded++;
      p = { bytes: encode({ networks: [st] }), encrypted: isEncryptedNetwork(net) };
    } else p = null;
    this.networks.set(id, p);
    return p;
  }

  private keysPart(): Buffer {
    if (this.keys) return this.keys;
    const ring = this.store.keyring();
    this.encoded++;
    this.keys = ring ? encode({ networkKeysJson: JSON.stringify(agentView(ring)) }) : EMPTY;
    return this.keys;
  }

  /**
   * The pieces of a session's message now (its node, `held` the networks it holds, sorted), or undefined
   * when its node is gone. The node piece is made again only when the node's view changed.
   */
  pieces(s: SessionPieces, rec: View<NodeRecord>, renew: string, held: readonly string[]): Buffer[] {
    if (s.nodeView !== rec || s.nodeRenew !== renew) {
      this.encoded++;
      s.nodePart = keep(
        s.nodePart,
        encode({ nodeJson: JSON.stringify(rec.node), role: rec.role, renewCertificateIssuer: renew }),
      );
      s.nodeView = rec;
      s.nodeRenew = renew;
    }
    const out = [s.idPart, s.nodePart, this.common ?? EMPTY];
    let encrypted = false;
    for (const id of held) {
      const p = this.network(id);
      if (!p) continue;
      out.push(p.bytes);
      encrypted ||= p.encrypted;
    }
    if (encrypted) out.push(this.keysPart());
    return out;
  }
}

/** Whether a session's pieces are the very ones it was last sent. */
export function samePieces(a: readonly Buffer[], b: readonly Buffer[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
