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
// when one of its pieces is not the very Buffer it was last sent. An agent that takes deltas is sent only
// those pieces (after its session's first message, the whole state): a new heartbeat period is a message of
// a few bytes to every session, not its node, the managers and the root CA again. Per session that is one
// write either way; what a delta saves is the bytes copied, encrypted and sent, the garbage they leave, and
// the agent's decoding.

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
  /** Field 1 (the session id), made when the session starts: in every message. */
  readonly idPart: Buffer;
  /** Whether the agent applies deltas (SessionRequest.accepts_deltas): then only changed pieces are sent. */
  readonly deltas: boolean;
  /** The node's view its node piece was made from (views are shared and replaced when the node changes). */
  nodeView: View<NodeRecord> | undefined;
  nodeRenew: string;
  nodePart: Buffer;
  /** The pieces of the last message sent, by what they hold (see Pieces); empty before the first. */
  last: Pieces;
}

export function newSessionPieces(sessionId: string, deltas = false): SessionPieces {
  return {
    idPart: encode({ sessionId }),
    deltas,
    nodeView: undefined,
    nodeRenew: "",
    nodePart: EMPTY,
    last: new Map(),
  };
}

/**
 * A session's pieces by what each holds: "node" (its node, role and renewal issuer), "managers", "period",
 * "ca", "net:<id>" for each network it holds, "keys". Only pieces with bytes: one that would be empty (no
 * keys for a node holding no encrypted network) is absent, and its field is then empty.
 */
export type Pieces = Map<string, Buffer>;

/** The field each piece but the node's and the networks' fills: cleared in a delta when the piece goes. */
const FIELD_OF: Record<string, number> = { managers: 3, keys: 7, ca: 8 };
/** SessionMessage.renew_certificate_issuer: cleared in a delta that carries a node piece without one. */
const RENEW_FIELD = 9;
const NETWORK_PREFIX = "net:";
/** The head of a delta that clears nothing and removes no network (most of them). */
const DELTA = encode({ delta: true });

/**
 * The message to send a session whose pieces are now `now`, or undefined when they are the very ones it was
 * last sent. A session's first message, and every message to an agent that does not take deltas, is the
 * whole state; later ones to an agent that does carry the session id and the pieces that changed, with the
 * fields and networks that went (see SessionMessage.delta).
 */
export function messageFor(s: SessionPieces, now: Pieces): Buffer | undefined {
  const last = s.last;
  const changed: Buffer[] = [];
  let nodeChanged = false;
  for (const [key, bytes] of now) {
    if (last.get(key) === bytes) continue;
    changed.push(bytes);
    if (key === "node") nodeChanged = true;
  }
  const gone: string[] = [];
  for (const key of last.keys()) if (!now.has(key)) gone.push(key);
  if (changed.length === 0 && gone.length === 0) return undefined;
  s.last = now;
  if (last.size === 0 || !s.deltas) return Buffer.concat([s.idPart, ...now.values()]);
  const cleared: number[] = [];
  const removedNetworks: string[] = [];
  for (const key of gone) {
    if (key.startsWith(NETWORK_PREFIX)) removedNetworks.push(key.slice(NETWORK_PREFIX.length));
    else if (FIELD_OF[key] !== undefined) cleared.push(FIELD_OF[key]);
  }
  if (nodeChanged && s.nodeRenew === "") cleared.push(RENEW_FIELD);
  const head =
    cleared.length > 0 || removedNetworks.length > 0 ? encode({ delta: true, cleared, removedNetworks }) : DELTA;
  return Buffer.concat([s.idPart, head, ...changed]);
}

interface NetworkPiece {
  bytes: Buffer;
  encrypted: boolean;
}

export class PushParts {
  /** Pieces encoded so far (each is one serialisation; tests and metrics count them). */
  encoded = 0;
  /** What every session gets alike, a piece per field (a change to one sends only it to agents taking deltas). */
  private managersPart: Buffer = EMPTY;
  private periodPart: Buffer = EMPTY;
  private caPart: Buffer = EMPTY;
  private networks = new Map<string, NetworkPiece | null>();
  private keys: Buffer | undefined;

  constructor(private readonly store: Store) {}

  /** What every session gets alike, as of now: call once per batch of pushes. */
  refreshCommon(managers: ManagerAddr[], heartbeatPeriodMs: number, cluster: View<ClusterRecord> | undefined): void {
    const rootCaPem = cluster?.info.TLSInfo.TrustRoot ?? "";
    this.encoded++;
    this.managersPart = keep(this.managersPart, encode({ managers }));
    this.periodPart = keep(this.periodPart, encode({ heartbeatPeriodMs }));
    this.caPart = keep(this.caPart, encode({ rootCaPem }));
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
    this.managersPart = EMPTY;
    this.periodPart = EMPTY;
    this.caPart = EMPTY;
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
   * The pieces of a session's message now (its node, `held` the networks it holds, sorted). The node piece
   * is made again only when the node's view changed.
   */
  pieces(s: SessionPieces, rec: View<NodeRecord>, renew: string, held: readonly string[]): Pieces {
    if (s.nodeView !== rec || s.nodeRenew !== renew) {
      this.encoded++;
      s.nodePart = keep(
        s.nodePart,
        encode({ nodeJson: JSON.stringify(rec.node), role: rec.role, renewCertificateIssuer: renew }),
      );
      s.nodeView = rec;
      s.nodeRenew = renew;
    }
    const out: Pieces = new Map();
    const add = (key: string, bytes: Buffer) => {
      if (bytes.length > 0) out.set(key, bytes);
    };
    add("node", s.nodePart);
    add("managers", this.managersPart);
    add("period", this.periodPart);
    add("ca", this.caPart);
    let encrypted = false;
    for (const id of held) {
      const p = this.network(id);
      if (!p) continue;
      add(NETWORK_PREFIX + id, p.bytes);
      encrypted ||= p.encrypted;
    }
    if (encrypted) add("keys", this.keysPart());
    return out;
  }
}
