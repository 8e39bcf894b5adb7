// The server side of the Raft transport: the handlers of the Raft service (StreamRaftMessage,
// ProcessRaftMessage, Ping) for the daemon's grpc.Server on :2377. Only callers whose certificate
// (verified against the swarm root by listenTLS/serverCredentials) has OU=swarm-manager and O=<this
// cluster>, and whose node was not removed, may call (the identity part is ca/peer.ts, shared with the
// control-plane ACL); a message must come from the raft member the caller's node holds, and be addressed
// to this member. Every message is parsed (codec.ts) before it reaches the core.

import * as grpc from "@grpc/grpc-js";
import type { Logger } from "pino";
import { MANAGER_OU, roleToOU } from "../ca/certs.js";
import { checkPeer, type PeerProblem } from "../ca/peer.js";
import type { CallWithAuthContext, PeerIdentity } from "../ca/tls.js";
import type * as pb from "../gen/raft.js";
import { parsePing, parseRaftMessage } from "./codec.js";
import { hex } from "./transport-wire.js";
import { type Message, MessageType, NONE, type NodeId } from "./types.js";

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

const RAFT_NEEDS = `raft traffic is accepted only from swarm managers (a certificate with OU=${MANAGER_OU} from this swarm's CA)`;

/** The caller, if its certificate is a current swarm manager's of this cluster (ca/peer.ts); else why not. */
function authorizeSender(call: CallWithAuthContext, opts: RaftServiceOptions): PeerIdentity | Refusal {
  const checked = checkPeer(call, opts, true);
  if (checked.problem === undefined) return checked.peer;
  if (checked.problem === "no-certificate") {
    return {
      code: grpc.status.UNAUTHENTICATED,
      details: `Permission denied: ${RAFT_NEEDS}, and the caller presented no valid client certificate`,
    };
  }
  const peer = checked.peer;
  return {
    code: grpc.status.PERMISSION_DENIED,
    details: `Permission denied: ${senderProblem(checked.problem, peer, opts)}`,
  };
}

function senderProblem(problem: Exclude<PeerProblem, "no-certificate">, peer: PeerIdentity, opts: RaftServiceOptions) {
  switch (problem) {
    case "not-a-manager":
      return `unauthorized peer role: node ${peer.nodeId} has role ${roleToOU(peer.role)}, and raft traffic requires role ${MANAGER_OU}`;
    case "other-cluster":
      return `node ${peer.nodeId} has a certificate for cluster ${peer.clusterId}, not for this cluster (${opts.clusterId() || "none"})`;
    default:
      return `node ${peer.nodeId} was removed from the swarm`;
  }
}

/**
 * Message types a follower relays to its leader on behalf of another member, keeping that member as the
 * sender (as etcd's raft does): a proposal or read request that reached a manager which has just stopped
 * being the leader goes on to the new one, and the answer to a read goes to the member that asked.
 */
function relayable(type: MessageType): boolean {
  return type === MessageType.Prop || type === MessageType.ReadIndex || type === MessageType.TransferLeader;
}

/**
 * A message or ping from raft id `from` to `to`: addressed to this member, and sent by the node that holds
 * `from` (or, for a `relayed` type, by any current member on behalf of `from`, which must be one too).
 */
function checkMember(
  opts: RaftServiceOptions,
  from: NodeId,
  to: NodeId,
  peer: PeerIdentity,
  relayed = false,
): Refusal | undefined {
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
      if (relayed) return undefined;
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
}

/** What the handlers share: the options, message acceptance and delivery, and the refusal log. */
interface ServiceCtx {
  opts: RaftServiceOptions;
  accept(req: pb.RaftMessageRequest, peer: PeerIdentity): Message | Refusal;
  handle(m: Message): void;
  refused(what: string, r: Refusal, call: { getPeer(): string }): void;
}

/**
 * Handlers for the Raft service, to add to the daemon's grpc.Server:
 * `server.addService(RaftServiceDefinition, raftServiceImplementation({...}))`. Every call must come from
 * a swarm manager of this cluster; others get PERMISSION_DENIED (UNAUTHENTICATED without a certificate).
 */
export function raftServiceImplementation(opts: RaftServiceOptions): grpc.UntypedServiceImplementation {
  const log = opts.logger;
  const refusals = new RefusalLog(log);
  const ctx: ServiceCtx = {
    opts,
    accept: (req, peer) => {
      if (!req.message)
        return { code: grpc.status.INVALID_ARGUMENT, details: "raft message request without a message" };
      let m: Message;
      try {
        m = parseRaftMessage(req.message);
      } catch (err) {
        return { code: grpc.status.INVALID_ARGUMENT, details: (err as Error).message };
      }
      return checkMember(opts, m.from, m.to, peer, relayable(m.type)) ?? m;
    },
    handle: (m) => {
      // A relayed message says nothing about whether its named sender is reachable.
      if (!relayable(m.type)) opts.onHeard?.(m.from);
      try {
        opts.deliver(m);
      } catch (err) {
        log?.warn({ err, from: hex(m.from), type: MessageType[m.type] }, "raft: could not step a message from a peer");
      }
    },
    refused: (what, r, call) => {
      refusals.note(
        `${what}|${r.code}|${r.details}`,
        { rpc: what, peer: call.getPeer(), code: grpc.status[r.code], details: r.details },
        "raft rpc refused",
      );
    },
  };
  return { streamRaftMessage: streamHandler(ctx), processRaftMessage: unaryHandler(ctx), ping: pingHandler(ctx) };
}

/** StreamRaftMessage: messages until the peer ends the stream; the first refused one ends it. */
function streamHandler(ctx: ServiceCtx): grpc.handleClientStreamingCall<pb.RaftMessageRequest, pb.RaftMessageResponse> {
  return (call, callback) => {
    const peer = authorizeSender(call, ctx.opts);
    if (isRefusal(peer)) {
      ctx.refused("StreamRaftMessage", peer, call);
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
      const m = ctx.accept(req, peer);
      if (isRefusal(m)) {
        ctx.refused("StreamRaftMessage", m, call);
        finish(m);
        return;
      }
      ctx.handle(m);
    });
    call.on("end", () => finish());
    call.on("error", () => {
      // Cancelled or broken by the peer; nothing to answer.
      done = true;
    });
  };
}

function unaryHandler(ctx: ServiceCtx): grpc.handleUnaryCall<pb.RaftMessageRequest, pb.RaftMessageResponse> {
  return (call, callback) => {
    const peer = authorizeSender(call, ctx.opts);
    if (isRefusal(peer)) {
      ctx.refused("ProcessRaftMessage", peer, call);
      callback(peer);
      return;
    }
    const m = ctx.accept(call.request, peer);
    if (isRefusal(m)) {
      ctx.refused("ProcessRaftMessage", m, call);
      callback(m);
      return;
    }
    ctx.handle(m);
    callback(null, {});
  };
}

/** Ping: a member asks whether this one is there (and is heard by it). */
function pingHandler(ctx: ServiceCtx): grpc.handleUnaryCall<pb.PingRequest, pb.PingResponse> {
  return (call, callback) => {
    const peer = authorizeSender(call, ctx.opts);
    if (isRefusal(peer)) {
      ctx.refused("Ping", peer, call);
      callback(peer);
      return;
    }
    let ids: { from: number; to: number };
    try {
      ids = parsePing(call.request);
    } catch (err) {
      const bad = { code: grpc.status.INVALID_ARGUMENT, details: (err as Error).message };
      ctx.refused("Ping", bad, call);
      callback(bad);
      return;
    }
    const r = checkMember(ctx.opts, ids.from, ids.to, peer);
    if (r) {
      ctx.refused("Ping", r, call);
      callback(r);
      return;
    }
    if (ids.from !== NONE) ctx.opts.onHeard?.(ids.from);
    callback(null, {});
  };
}
