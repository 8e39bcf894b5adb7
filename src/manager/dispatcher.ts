// The dispatcher: every node's agent holds a session with the leader and sends heartbeats. The leader
// marks a node Ready when its session starts and Down after three missed heartbeat periods; it pushes the
// node's own object (its desired role among it), the list of managers and the networks the node holds
// down the session stream. Managers that are not the leader answer UNAVAILABLE naming the leader, and the
// agent goes there (while they know of no leader the agent can use, they hold the request: session-hold.ts).
//
// Cost per event is proportional to the sessions it concerns, not to the cluster's size:
// - heartbeats stay in memory (a time per session, checked by one sweep), never in Raft; they come on one
//   Heartbeats stream per session, a message each (a unary Heartbeat call each, still served for agents
//   without the stream, cost an HTTP/2 stream with headers and trailers: most of a large swarm's leader CPU);
// - a store event marks only the sessions it concerns (the node's own; the holders of a network; everyone
//   only for what everyone gets: the manager list, the heartbeat period, the root CA), and the marked
//   sessions are sent their new state in batches of bounded size per event-loop turn;
// - a message is put together from pieces encoded once and shared (push-parts.ts): a change to a network
//   is encoded once for all its holders, a swarm-wide change once for everyone, a node once per change;
//   an agent that takes deltas is sent only the pieces that changed (a new heartbeat period: a few bytes),
//   the whole state only in its session's first message;
// - node status changes (Ready when a session starts, Down when one is missed) are queued and written in
//   few Raft entries (node.statusBatch); a reconnect of a node that is already Ready writes nothing;
// - a new leader gives every node a grace that grows with the cluster before anything is marked Down.

import { setImmediate as turn } from "node:timers/promises";
import type { UntypedServiceImplementation } from "@grpc/grpc-js";
import { status } from "@grpc/grpc-js";
import type { Logger } from "pino";
import type { NodeDescription, NodeState } from "../api/objects.js";
import type { SessionMessage } from "../gen/cluster.js";
import { observe } from "../metrics/metrics.js";
import { MAX_STATUS_BATCH } from "../store/commands.js";
import type { ClusterRecord, StoreEvent, View } from "../store/store.js";
import { callerOf } from "./acl.js";
import { failStream, GrpcError, notLeader, peerIp } from "./grpc-util.js";
import { heartbeatHandlers } from "./heartbeat-service.js";
import { type AttachmentCluster, attachmentHandlers } from "./networks.js";
import { messageFor, newSessionPieces, PushParts, type SessionCall, type SessionPieces } from "./push-parts.js";
import { SessionHold } from "./session-hold.js";
import { descriptionJsonOf, newSessionId, parseDescription, renewFor } from "./session-request.js";
import { acceptableNodeAddr } from "./wire.js";

interface Session {
  id: string;
  nodeId: string;
  call: SessionCall;
  /** performance.now() of the last heartbeat (or of the session's start). */
  lastSeenMs: number;
  /** The pieces of its messages (to send only what changed). */
  pieces: SessionPieces;
  /**
   * Whether the node's Ready status is committed: until then the session is sent nothing, so that an agent's
   * first message (which ends `swarm join`) means every manager's `node ls` already shows the node Ready.
   */
  registered: boolean;
}

export const DEFAULT_HEARTBEAT_MS = 5000;
/** Missed heartbeat periods before a node is marked down. */
export const HEARTBEAT_MISSES = 3;
/** A new leader's grace before marking nodes down: the usual misses, plus this much per node. */
export const GRACE_PER_NODE_MS = 4;
/**
 * While nodes are still coming back (a session started within the last heartbeat period), the grace goes on,
 * up to this much per node: a new leader takes the sessions of a large swarm back more slowly than the fixed
 * grace assumes (2,500 nodes came back in 37 s on two cores), and a node still waiting its turn is not down.
 */
export const GRACE_CAP_PER_NODE_MS = 30;
/** A sweep this much later than due counts as a stall of the process (see forgiveStall). */
export const STALL_SLACK_MS = 250;
/** Sessions sent their state per event-loop turn. */
export const PUSH_BATCH = 200;
/** How long status changes wait to be written together. */
export const STATUS_FLUSH_MS = 100;
/**
 * Sessions closed per event-loop turn when this manager stops leading. Closing thousands at once freed their
 * streams and connections in one go: one GC pause of 1-1.4 s at 2,500-3,000 sessions (~0.35 ms each), long
 * enough for a manager to miss Raft heartbeats just as the swarm elects a new leader.
 */
export const CLOSE_BATCH = 250;

/** What the dispatcher needs of its manager (SwarmKit's dispatcher.Cluster, in shoal's terms). */
export interface DispatcherCluster extends AttachmentCluster {
  readonly log: Logger;
  /** host:port of the leader, for the agents this manager sends there. */
  leaderAddr(): string | undefined;
  /** Whether the leader this manager knows has not been heard from lately (it may be gone). */
  leaderSilent(): boolean;
}

interface StatusUpdate {
  id: string;
  state: NodeState;
  addr?: string;
  message?: string;
  description?: NodeDescription;
  /** Called once the update is written, refused, or found needless (a session waiting for it). */
  done?: () => void;
}

export class Dispatcher {
  private sessions = new Map<string, Session>();
  private byNode = new Map<string, Session>();
  /** Nodes whose session broke, and when (performance.now()): down if none is back in time. */
  private lost = new Map<string, number>();
  /** After a leader change: until then (performance.now()) nothing is marked down for lack of a session. */
  private graceUntilMs = 0;
  private graceCapMs = 0;
  private graceSwept = true;
  /** performance.now() of the last session started (nodes still coming back extend the grace). */
  private lastSessionAtMs = 0;
  private active = false;
  private readonly onEvent = (e: StoreEvent) => this.storeEvent(e);
  /** Which networks each node holds and which nodes hold each network (from the endpoints). */
  private holds = new Map<string, Map<string, number>>();
  private holders = new Map<string, Map<string, number>>();
  private dirty = new Set<Session>();
  private dirtySinceMs = 0;
  private flushing = false;
  private pending = new Map<string, StatusUpdate>();
  private statusTimer: NodeJS.Timeout | undefined;
  private sweeper: NodeJS.Timeout | undefined;
  private sweepEveryMs = 0;
  /** performance.now() of the last sweep: a sweep much later than that means the process was stalled. */
  private lastSweepMs = 0;
  private commonKey = "";
  private readonly parts: PushParts;
  /** Sessions of a leadership given up, still being closed (a batch per event-loop turn). */
  private closing: Promise<void> = Promise.resolve();
  /** Session requests held while this manager has no useful leader to name (session-hold.ts). */
  private readonly held: SessionHold;

  constructor(
    private readonly m: DispatcherCluster,
    private readonly closeBatch = CLOSE_BATCH,
    holdMs?: number,
  ) {
    this.parts = new PushParts(m.store);
    this.held = new SessionHold({
      leaderAddr: () => m.leaderAddr(),
      leaderSilent: () => m.leaderSilent(),
      leading: () => this.active,
      answer: (call) => this.answer(call),
      ...(holdMs !== undefined ? { holdMs } : {}),
    });
  }

  /** The swarm's leader changed (this manager's Raft says): held session requests get their answer. */
  leaderChanged(): void {
    this.held.leaderChanged();
  }

  /** Session requests held now (tests, metrics). */
  heldRequests(): number {
    return this.held.size;
  }

  /** Pieces of session messages encoded so far (each one serialisation, shared by the sessions it goes to). */
  encodedPieces(): number {
    return this.parts.encoded;
  }

  heartbeatPeriodMs(): number {
    const ns = this.m.store.clusterView()?.info.Spec.Dispatcher.HeartbeatPeriod;
    return ns && ns > 0 ? Math.max(100, Math.round(ns / 1e6)) : DEFAULT_HEARTBEAT_MS;
  }

  /** Sessions held now (metrics). */
  sessionCount(): number {
    return this.sessions.size;
  }

  becomeLeader(): void {
    if (this.active) return;
    this.active = true;
    this.m.store.events.on("event", this.onEvent);
    this.rebuildHolds();
    this.parts.clear();
    this.commonKey = this.commonSignature();
    // Nodes that were up keep their status while they reconnect to us: every one of them at once, so the
    // grace grows with the cluster. Those not back by then are marked down.
    const n = this.m.store.nodeCount();
    const base = performance.now() + this.heartbeatPeriodMs() * HEARTBEAT_MISSES;
    this.graceUntilMs = base + n * GRACE_PER_NODE_MS;
    this.graceCapMs = base + n * GRACE_CAP_PER_NODE_MS;
    this.graceSwept = false;
    const every = Math.max(50, Math.floor(this.heartbeatPeriodMs() / 2));
    this.sweepEveryMs = every;
    this.lastSweepMs = performance.now();
    this.sweeper = setInterval(() => this.sweep(), every);
    this.sweeper.unref();
  }

  /**
   * Stops leading: every session is told the leader's address and closed, `closeBatch` per event-loop turn
   * (the returned promise settles once all are). The dispatcher forgets them at once, so a new leadership may
   * start meanwhile.
   */
  loseLeadership(): Promise<void> {
    if (!this.active) return this.closing;
    this.active = false;
    this.m.store.events.off("event", this.onEvent);
    if (this.sweeper) clearInterval(this.sweeper);
    if (this.statusTimer) clearTimeout(this.statusTimer);
    this.sweeper = undefined;
    this.statusTimer = undefined;
    this.pending.clear();
    this.lost.clear();
    this.dirty.clear();
    const err = notLeader(this.m.leaderAddr());
    const calls = [...this.sessions.values()].map((s) => s.call);
    this.sessions.clear();
    this.byNode.clear();
    const closeAll = async () => {
      for (let i = 0; i < calls.length; i += this.closeBatch) {
        if (i > 0) await turn();
        for (const c of calls.slice(i, i + this.closeBatch)) failStream(c, err);
      }
    };
    this.closing = Promise.all([this.closing, closeAll()]).then(() => undefined);
    return this.closing;
  }

  // ------------------------------------------------------------------ liveness

  /** One pass over the sessions and the lost nodes: expired ones are dropped and their nodes marked down. */
  private sweep(): void {
    if (!this.active) return;
    const now = performance.now();
    this.forgiveStall(now);
    const limitMs = this.heartbeatPeriodMs() * HEARTBEAT_MISSES;
    for (const s of this.sessions.values()) {
      // A session not yet answered (its Ready status still being written) cannot have beaten yet.
      if (!s.registered || now - s.lastSeenMs <= limitMs) continue;
      this.drop(s);
      failStream(s.call, new GrpcError(status.DEADLINE_EXCEEDED, "session expired: missed heartbeats"));
      this.queueDown(s.nodeId, "heartbeat failure");
    }
    for (const [nodeId, at] of this.lost) {
      if (now - at <= limitMs) continue;
      this.lost.delete(nodeId);
      if (!this.byNode.has(nodeId)) this.queueDown(nodeId, "heartbeat failure");
    }
    const stillComing = now - this.lastSessionAtMs < this.heartbeatPeriodMs() && now < this.graceCapMs;
    if (!this.graceSwept && now >= this.graceUntilMs && !stillComing) {
      this.graceSwept = true;
      for (const rec of this.m.store.nodeViews()) {
        if (rec.node.Status.State === "ready" && !this.byNode.has(rec.node.ID)) {
          this.queueDown(rec.node.ID, 'heartbeat failure for node in "unknown" state');
        }
      }
    }
  }

  /**
   * Time this process could not listen is not held against the nodes: when the sweep runs late (the event
   * loop was blocked, or the process got no CPU), the heartbeats of that time are still unread in the
   * sockets, and this timer fires before they are read. Every clock that a missing heartbeat or session
   * runs against is moved on by the delay. Without it, a leader stalled for a few seconds under a storm of
   * reconnecting nodes marked hundreds of live nodes down.
   */
  private forgiveStall(now: number): void {
    const late = now - this.lastSweepMs - this.sweepEveryMs;
    this.lastSweepMs = now;
    if (late <= STALL_SLACK_MS) return;
    for (const s of this.sessions.values()) s.lastSeenMs = Math.min(now, s.lastSeenMs + late);
    for (const [nodeId, at] of this.lost) this.lost.set(nodeId, Math.min(now, at + late));
    this.graceUntilMs += late;
    this.graceCapMs += late;
    this.lastSessionAtMs = Math.min(now, this.lastSessionAtMs + late);
    const fields = { stalledMs: Math.round(late) };
    const msg = "dispatcher: this manager was stalled; heartbeat deadlines moved on by as much";
    if (late >= 1000) this.m.log.warn(fields, msg);
    else this.m.log.debug(fields, msg);
  }

  private drop(s: Session): void {
    this.sessions.delete(s.id);
    if (this.byNode.get(s.nodeId) === s) this.byNode.delete(s.nodeId);
    this.dirty.delete(s);
  }

  private queueDown(nodeId: string, message: string): void {
    this.queueStatus({ id: nodeId, state: "down", message });
  }

  private queueStatus(u: StatusUpdate): void {
    const prev = this.pending.get(u.id);
    // A description waiting to be written is kept when a later change to the status comes; so is whoever
    // waits for the earlier change.
    const next = prev?.description && !u.description ? { ...u, description: prev.description } : { ...u };
    const waiting = [prev?.done, u.done].filter((f): f is () => void => f !== undefined);
    if (waiting.length > 0)
      next.done = () => {
        for (const f of waiting) f();
      };
    this.pending.set(u.id, next);
    if (this.pending.size >= MAX_STATUS_BATCH) this.flushStatus();
    else this.statusTimer ??= setTimeout(() => this.flushStatus(), STATUS_FLUSH_MS);
  }

  /** Write the queued status changes that still hold, in entries of at most MAX_STATUS_BATCH. */
  private flushStatus(): void {
    if (this.statusTimer) clearTimeout(this.statusTimer);
    this.statusTimer = undefined;
    if (!this.active) return;
    const updates: StatusUpdate[] = [];
    for (const u of this.pending.values()) {
      const rec = this.m.store.nodeView(u.id);
      const needless =
        !rec ||
        // Down only if the node still has no session; nothing if the store already says it.
        (u.state === "down" && (this.byNode.has(u.id) || rec.node.Status.State === "down")) ||
        (u.state === "ready" && !this.byNode.has(u.id));
      if (needless) u.done?.();
      else updates.push(u);
    }
    this.pending.clear();
    for (let i = 0; i < updates.length; i += MAX_STATUS_BATCH) {
      const batch = updates.slice(i, i + MAX_STATUS_BATCH);
      observe.statusWritten(batch.length);
      const op = { op: "node.statusBatch" as const, updates: batch.map(({ done: _, ...u }) => u) };
      void this.m
        .write(op)
        .then(
          () => {
            const down = batch.filter((u) => u.state === "down").length;
            if (down > 0) this.m.log.info({ nodes: down }, "nodes are down: missed heartbeats");
          },
          (e: unknown) => this.m.log.warn({ nodes: batch.length, err: e }, "could not record node status"),
        )
        .finally(() => {
          for (const u of batch) u.done?.();
        });
    }
  }

  // ------------------------------------------------------------------ pushes

  /** What every session gets alike; a change to it concerns every session. */
  private commonSignature(): string {
    const c = this.m.store.clusterView();
    return JSON.stringify([
      this.managers(),
      this.heartbeatPeriodMs(),
      c?.info.TLSInfo.TrustRoot,
      c?.info.TLSInfo.CertIssuerPublicKey,
      c?.secrets.rootRotation !== undefined,
    ]);
  }

  private managers(): SessionMessage["managers"] {
    return this.m.store
      .members()
      .map((mm) => ({ nodeId: mm.nodeId, addr: mm.addr }))
      .sort((a, b) => a.nodeId.localeCompare(b.nodeId));
  }

  private rebuildHolds(): void {
    this.holds.clear();
    this.holders.clear();
    for (const e of this.m.store.endpoints()) this.countHold(e.nodeId, e.networkId, 1);
  }

  private countHold(nodeId: string, networkId: string, by: number): void {
    const bump = (m: Map<string, Map<string, number>>, k: string, v: string) => {
      let inner = m.get(k);
      if (!inner) m.set(k, (inner = new Map()));
      const n = (inner.get(v) ?? 0) + by;
      if (n > 0) inner.set(v, n);
      else inner.delete(v);
      if (inner.size === 0) m.delete(k);
    };
    bump(this.holds, nodeId, networkId);
    bump(this.holders, networkId, nodeId);
  }

  private markNode(nodeId: string): void {
    const s = this.byNode.get(nodeId);
    if (s) this.markSession(s);
  }

  private markNetwork(networkId: string): void {
    for (const nodeId of this.holders.get(networkId)?.keys() ?? []) this.markNode(nodeId);
  }

  private markAll(): void {
    for (const s of this.sessions.values()) this.markSession(s);
  }

  private markSession(s: Session): void {
    if (!s.registered) return;
    if (this.dirty.size === 0) this.dirtySinceMs = performance.now();
    this.dirty.add(s);
    if (!this.flushing) {
      this.flushing = true;
      setImmediate(() => this.flushPushes());
    }
  }

  /** Send marked sessions their state: at most PUSH_BATCH per turn, from pieces encoded once. */
  private flushPushes(): void {
    this.flushing = false;
    if (!this.active || this.dirty.size === 0) return;
    const cluster = this.m.store.clusterView();
    this.parts.refreshCommon(this.managers(), this.heartbeatPeriodMs(), cluster);
    let sent = 0;
    for (const s of this.dirty) {
      if (sent >= PUSH_BATCH) break;
      this.dirty.delete(s);
      if (this.push(s, cluster)) sent++;
    }
    if (sent > 0) observe.pushed(sent, performance.now() - this.dirtySinceMs);
    if (this.dirty.size > 0) {
      this.flushing = true;
      setImmediate(() => this.flushPushes());
    }
  }

  /** Send the session its current state, if anything changed since the last message. */
  private push(s: Session, cluster: View<ClusterRecord> | undefined): boolean {
    if (!this.sessions.has(s.id)) return false;
    const rec = this.m.store.nodeView(s.nodeId);
    if (!rec) return false;
    const held = [...(this.holds.get(s.nodeId)?.keys() ?? [])].sort();
    const message = messageFor(s.pieces, this.parts.pieces(s.pieces, rec, renewFor(cluster, rec), held));
    if (!message) return false;
    // Bytes already encoded: the service's serializer passes them through (services.ts).
    s.call.write(message);
    return true;
  }

  private storeEvent(e: StoreEvent): void {
    switch (e.kind) {
      case "node": {
        const id = e.node.node.ID;
        if (e.action === "remove") {
          const s = this.byNode.get(id);
          if (s) {
            this.drop(s);
            failStream(s.call, new GrpcError(status.PERMISSION_DENIED, `node ${id} was removed from the swarm`));
          }
          this.pending.delete(id);
          this.lost.delete(id);
          return;
        }
        this.markNode(id);
        // A node's address and hostname are in every peer's view of the networks it holds.
        for (const net of this.holds.get(id)?.keys() ?? []) {
          this.parts.dropNetwork(net);
          this.markNetwork(net);
        }
        return;
      }
      case "endpoint":
        if (e.action !== "update") {
          this.countHold(e.endpoint.nodeId, e.endpoint.networkId, e.action === "create" ? 1 : -1);
        }
        this.parts.dropNetwork(e.endpoint.networkId);
        this.markNode(e.endpoint.nodeId);
        this.markNetwork(e.endpoint.networkId);
        return;
      case "network":
        this.parts.dropNetwork(e.network.id);
        this.markNetwork(e.network.id);
        return;
      case "keys":
        this.parts.dropKeys();
        for (const nodeId of this.holds.keys()) this.markNode(nodeId);
        return;
      case "member":
      case "cluster": {
        const key = this.commonSignature();
        // Nothing every session gets changed (a token rotation, say): nobody is sent anything. A node told
        // to renew its certificate learns it from its own node event.
        if (key !== this.commonKey) {
          this.commonKey = key;
          this.markAll();
        }
        return;
      }
      case "restore":
        this.rebuildHolds();
        this.parts.clear();
        this.commonKey = this.commonSignature();
        this.markAll();
        return;
    }
  }

  // ------------------------------------------------------------------ the service

  service(): UntypedServiceImplementation {
    return {
      ...attachmentHandlers(this.m),
      session: (call: SessionCall) => {
        if (!this.active && this.held.hold(call)) return;
        this.answer(call);
      },
      ...heartbeatHandlers({
        active: () => this.active,
        leaderAddr: () => this.m.leaderAddr(),
        beat: (sessionId, nodeId) => {
          const s = this.sessions.get(sessionId);
          if (!s || (nodeId !== undefined && s.nodeId !== nodeId)) return false;
          s.lastSeenMs = performance.now();
          return true;
        },
        heartbeatPeriodMs: () => this.heartbeatPeriodMs(),
      }),
    };
  }

  private answer(call: SessionCall): void {
    try {
      this.session(call);
    } catch (e) {
      failStream(call, e instanceof Error ? e : new Error(String(e)));
    }
  }

  private session(call: SessionCall): void {
    if (!this.active) throw notLeader(this.m.leaderAddr());
    const peer = callerOf(call);
    if (!peer) throw new GrpcError(status.PERMISSION_DENIED, "Permission denied: a session needs a node certificate");
    const rec = this.m.store.nodeView(peer.nodeId);
    if (!rec) throw new GrpcError(status.NOT_FOUND, `node ${peer.nodeId} not found`);
    const observed = peerIp(call.getPeer());
    const addr = call.request.addr || observed;
    if (!acceptableNodeAddr(addr, observed)) {
      throw new GrpcError(status.INVALID_ARGUMENT, `invalid session request: addr: ${addr} cannot be a node's address`);
    }
    // The description the node sends is most often, after a failover always, the one the store holds: the
    // very text of it is taken as is (it was checked when it was stored); any other is parsed and checked.
    const stored = descriptionJsonOf(rec);
    const text = call.request.descriptionJson;
    const description = text === "" || text === stored ? undefined : parseDescription(text);
    const id = newSessionId();
    const s: Session = {
      id,
      nodeId: peer.nodeId,
      call,
      lastSeenMs: performance.now(),
      pieces: newSessionPieces(id, call.request.acceptsDeltas === true),
      registered: false,
    };
    // One session per node: a reconnecting agent replaces its old session.
    const old = this.byNode.get(s.nodeId);
    if (old) {
      this.drop(old);
      old.call.end();
    }
    this.sessions.set(s.id, s);
    this.byNode.set(s.nodeId, s);
    this.lastSessionAtMs = performance.now();
    this.lost.delete(s.nodeId);
    call.on("cancelled", () => {
      if (this.sessions.get(s.id) !== s) return;
      // A node whose session broke is down after the usual missed heartbeats, unless it is back by then.
      this.drop(s);
      this.lost.set(s.nodeId, s.lastSeenMs);
    });
    // Written only if something changed: a reconnect of a node that is Ready, same address, same
    // description, writes nothing.
    const describe = description && JSON.stringify(description) !== stored ? description : undefined;
    const register = () => {
      s.registered = true;
      s.lastSeenMs = performance.now();
      this.markSession(s);
    };
    // As SwarmKit's dispatcher: the session answers once the node's status is written (a refused write
    // still answers: the node's next session writes it again).
    if (describe || rec.node.Status.State !== "ready" || rec.node.Status.Addr !== addr) {
      this.queueStatus({
        id: s.nodeId,
        state: "ready",
        addr,
        ...(describe ? { description: describe } : {}),
        done: register,
      });
    } else register();
  }
}
