// The dispatcher: every node's agent holds a session with the leader and sends heartbeats. The leader
// marks a node Ready when its session starts and Down after three missed heartbeat periods; it pushes the
// node's own object (its desired role among it) and the list of managers down the session stream.
// Managers that are not the leader answer UNAVAILABLE naming the leader, and the agent goes there.

import { randomBytes } from "node:crypto";
import type { ServerUnaryCall, ServerWritableStream, sendUnaryData, UntypedServiceImplementation } from "@grpc/grpc-js";
import { status } from "@grpc/grpc-js";
import type { Logger } from "pino";
import { type NodeDescription, NodeDescriptionSchema } from "../api/objects.js";
import { parse, parseJsonText } from "../api/schema.js";
import type { HeartbeatRequest, HeartbeatResponse, SessionMessage, SessionRequest } from "../gen/cluster.js";
import type { ClusterRecord, NodeRecord, StoreEvent } from "../store/store.js";
import { callerOf } from "./acl.js";
import { failStream, GrpcError, notLeader, peerIp } from "./grpc-util.js";
import { type AttachmentCluster, attachmentHandlers, networkKeysFor, statesForNode } from "./networks.js";
import { acceptableNodeAddr, MAX_DESCRIPTION_JSON_BYTES } from "./wire.js";

interface Session {
  id: string;
  nodeId: string;
  call: ServerWritableStream<SessionRequest, SessionMessage>;
  timer: NodeJS.Timeout | undefined;
  /** The last message sent, to send only what changed. */
  last: string;
}

export const DEFAULT_HEARTBEAT_MS = 5000;
/** Missed heartbeat periods before a node is marked down. */
export const HEARTBEAT_MISSES = 3;

/** What the dispatcher needs of its manager (SwarmKit's dispatcher.Cluster, in shoal's terms). */
export interface DispatcherCluster extends AttachmentCluster {
  readonly log: Logger;
  /** host:port of the leader, for the agents this manager sends there. */
  leaderAddr(): string | undefined;
}

export class Dispatcher {
  private sessions = new Map<string, Session>();
  /** Nodes without a session yet after a leader change: down once their grace runs out. */
  private grace = new Map<string, NodeJS.Timeout>();
  private active = false;
  private readonly onEvent = (e: StoreEvent) => this.storeEvent(e);

  constructor(private readonly m: DispatcherCluster) {}

  heartbeatPeriodMs(): number {
    const ns = this.m.store.cluster()?.info.Spec.Dispatcher.HeartbeatPeriod;
    return ns && ns > 0 ? Math.max(100, Math.round(ns / 1e6)) : DEFAULT_HEARTBEAT_MS;
  }

  becomeLeader(): void {
    if (this.active) return;
    this.active = true;
    this.m.store.events.on("event", this.onEvent);
    // Nodes that were up keep their status while they reconnect to us; those that do not are marked
    // down after the usual number of missed periods, counted from now.
    for (const rec of this.m.store.nodes()) {
      if (rec.node.Status.State === "ready") this.startGrace(rec.node.ID);
    }
  }

  loseLeadership(): void {
    if (!this.active) return;
    this.active = false;
    this.m.store.events.off("event", this.onEvent);
    for (const t of this.grace.values()) clearTimeout(t);
    this.grace.clear();
    const err = notLeader(this.m.leaderAddr());
    for (const s of this.sessions.values()) {
      if (s.timer) clearTimeout(s.timer);
      failStream(s.call, err);
    }
    this.sessions.clear();
  }

  private startGrace(nodeId: string): void {
    if (this.grace.has(nodeId)) return;
    const t = setTimeout(() => {
      this.grace.delete(nodeId);
      if ([...this.sessions.values()].some((s) => s.nodeId === nodeId)) return;
      void this.markDown(nodeId, 'heartbeat failure for node in "unknown" state');
    }, this.heartbeatPeriodMs() * HEARTBEAT_MISSES);
    t.unref();
    this.grace.set(nodeId, t);
  }

  private async markDown(nodeId: string, message: string): Promise<void> {
    const rec = this.m.store.node(nodeId);
    if (!this.active || !rec || rec.node.Status.State === "down") return;
    try {
      await this.m.write({ op: "node.status", id: nodeId, state: "down", message });
      this.m.log.info({ node: nodeId }, "node is down: missed heartbeats");
    } catch (e) {
      this.m.log.warn({ node: nodeId, err: e }, "could not mark node down");
    }
  }

  private resetTimer(s: Session): void {
    if (s.timer) clearTimeout(s.timer);
    s.timer = setTimeout(() => {
      this.sessions.delete(s.id);
      failStream(s.call, new GrpcError(status.DEADLINE_EXCEEDED, "session expired: missed heartbeats"));
      void this.markDown(s.nodeId, "heartbeat failure");
    }, this.heartbeatPeriodMs() * HEARTBEAT_MISSES);
    s.timer.unref();
  }

  private message(s: Session): SessionMessage | undefined {
    const rec = this.m.store.node(s.nodeId);
    if (!rec) return undefined;
    const managers = this.m.store
      .members()
      .map((mm) => ({ nodeId: mm.nodeId, addr: mm.addr }))
      .sort((a, b) => a.nodeId.localeCompare(b.nodeId));
    return {
      sessionId: s.id,
      nodeJson: JSON.stringify(rec.node),
      managers,
      heartbeatPeriodMs: this.heartbeatPeriodMs(),
      role: rec.role,
      networks: statesForNode(this.m.store, s.nodeId),
      networkKeysJson: networkKeysFor(this.m.store, s.nodeId),
      ...rootCAFor(this.m.store.cluster(), rec),
    };
  }

  /** Send the session its current state, if anything changed since the last message. */
  private push(s: Session): void {
    const msg = this.message(s);
    if (!msg) return;
    const text = JSON.stringify(msg);
    if (text === s.last) return;
    s.last = text;
    s.call.write(msg);
  }

  private storeEvent(e: StoreEvent): void {
    if (e.kind === "node") {
      for (const s of this.sessions.values()) {
        if (s.nodeId !== e.node.node.ID) continue;
        if (e.action === "remove") {
          failStream(s.call, new GrpcError(status.PERMISSION_DENIED, `node ${s.nodeId} was removed from the swarm`));
          this.sessions.delete(s.id);
          if (s.timer) clearTimeout(s.timer);
        }
      }
      // A node's address is every peer's VTEP: all sessions may need it.
      for (const s of this.sessions.values()) this.push(s);
    } else if (
      e.kind === "member" ||
      e.kind === "cluster" ||
      e.kind === "network" ||
      e.kind === "endpoint" ||
      e.kind === "keys"
    ) {
      for (const s of this.sessions.values()) this.push(s);
    }
  }

  service(): UntypedServiceImplementation {
    return {
      ...attachmentHandlers(this.m),
      session: (call: ServerWritableStream<SessionRequest, SessionMessage>) => {
        void this.session(call).catch((e) => failStream(call, e instanceof Error ? e : new Error(String(e))));
      },
      heartbeat: (call: ServerUnaryCall<HeartbeatRequest, HeartbeatResponse>, cb: sendUnaryData<HeartbeatResponse>) => {
        const s = this.sessions.get(call.request.sessionId);
        if (!this.active) return cb(notLeader(this.m.leaderAddr()));
        if (!s) return cb(new GrpcError(status.NOT_FOUND, "session invalid"));
        this.resetTimer(s);
        cb(null, { periodMs: this.heartbeatPeriodMs() });
      },
    };
  }

  private async session(call: ServerWritableStream<SessionRequest, SessionMessage>): Promise<void> {
    if (!this.active) throw notLeader(this.m.leaderAddr());
    const peer = callerOf(call);
    if (!peer) throw new GrpcError(status.PERMISSION_DENIED, "Permission denied: a session needs a node certificate");
    const rec = this.m.store.node(peer.nodeId);
    if (!rec) throw new GrpcError(status.NOT_FOUND, `node ${peer.nodeId} not found`);
    const observed = peerIp(call.getPeer());
    const addr = call.request.addr || observed;
    if (!acceptableNodeAddr(addr, observed)) {
      throw new GrpcError(status.INVALID_ARGUMENT, `invalid session request: addr: ${addr} cannot be a node's address`);
    }
    const description = parseDescription(call.request.descriptionJson);
    const s: Session = { id: randomBytes(12).toString("hex"), nodeId: peer.nodeId, call, timer: undefined, last: "" };
    // One session per node: a reconnecting agent replaces its old session.
    for (const old of [...this.sessions.values()]) {
      if (old.nodeId === s.nodeId) {
        if (old.timer) clearTimeout(old.timer);
        this.sessions.delete(old.id);
        old.call.end();
      }
    }
    this.sessions.set(s.id, s);
    const g = this.grace.get(s.nodeId);
    if (g) {
      clearTimeout(g);
      this.grace.delete(s.nodeId);
    }
    call.on("cancelled", () => {
      const cur = this.sessions.get(s.id);
      if (cur) {
        // Keep the timer: a node whose session broke is down after the usual missed heartbeats.
        this.sessions.delete(s.id);
        const t = setTimeout(() => {
          if (![...this.sessions.values()].some((x) => x.nodeId === s.nodeId))
            void this.markDown(s.nodeId, "heartbeat failure");
        }, this.heartbeatPeriodMs() * HEARTBEAT_MISSES);
        t.unref();
        if (cur.timer) clearTimeout(cur.timer);
      }
    });
    this.resetTimer(s);
    if (description && JSON.stringify(description) !== JSON.stringify(rec.node.Description)) {
      try {
        await this.m.write({ op: "node.describe", id: s.nodeId, description });
      } catch (e) {
        this.m.log.warn({ node: s.nodeId, err: e }, "could not record node description");
      }
    }
    const cur = this.m.store.node(s.nodeId);
    if (cur && (cur.node.Status.State !== "ready" || cur.node.Status.Addr !== addr)) {
      await this.m.write({ op: "node.status", id: s.nodeId, state: "ready", addr });
      this.m.log.info({ node: s.nodeId, addr }, "node is ready");
    }
    if (!this.sessions.has(s.id)) return;
    this.push(s);
  }
}

/**
 * What a session says about the root CA: the root every node should hold, and, during a rotation, the
 * issuer this node should renew to once the reconciler has told it to (node.certRenew).
 */
function rootCAFor(
  c: ClusterRecord | undefined,
  rec: NodeRecord,
): { rootCaPem: string; renewCertificateIssuer: string } {
  const want = c?.info.TLSInfo.CertIssuerPublicKey;
  const renew = c?.secrets.rootRotation !== undefined && rec.certRenew !== undefined && rec.certRenew === want;
  return { rootCaPem: c?.info.TLSInfo.TrustRoot ?? "", renewCertificateIssuer: renew ? rec.certRenew! : "" };
}

/** A session's description: absent, or a NodeDescription (anything else is refused, naming the field). */
function parseDescription(text: string): NodeDescription | undefined {
  if (!text) return undefined;
  try {
    return parse(NodeDescriptionSchema, parseJsonText(text, "description", MAX_DESCRIPTION_JSON_BYTES), "description");
  } catch (e) {
    throw new GrpcError(
      status.INVALID_ARGUMENT,
      `invalid session request: ${e instanceof Error ? e.message : String(e)}`,
    );
  }
}
