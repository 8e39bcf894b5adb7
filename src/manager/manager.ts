// A manager: one Raft member holding the replicated store, serving the cluster protocol on its listener,
// and, while it is the leader, running the loops that only the leader runs (dispatcher, role manager).
// Writes from any manager are proposed to Raft (the core forwards them to the leader); reads that must
// see every finished write go through a ReadIndex barrier first.

import type { Logger } from "pino";
import { ApiError } from "../api/errors.js";
import type { NodeRole } from "../api/objects.js";
import type { TLSMaterial } from "../ca/tls.js";
import { nodeCredentials } from "../ca/tls-client.js";
import { observe } from "../metrics/metrics.js";
import type { LevelStorage } from "../raft/level-storage.js";
import { NodeStoppedError, RaftNode } from "../raft/node.js";
import { bootstrapSnapshot } from "../raft/rawnode.js";
import { GrpcTransport, type SenderStatus } from "../raft/transport.js";
import {
  type ConfChange,
  ConfChangeType,
  EMPTY,
  ErrProposalDropped,
  ErrProposalOutcomeUnknown,
  ErrProposalTooLarge,
  type NodeId,
  StateType,
} from "../raft/types.js";
import { type Command, DecodedEntry, encodeCommand, type Outcome, type RaftMember, Store } from "../store/store.js";
import type { AclContext } from "./acl.js";
import { AutolockKeeper } from "./autolock.js";
import { RootRotationReconciler } from "./ca-rotation.js";
import { caService } from "./ca-server.js";
import { Dispatcher } from "./dispatcher.js";
import { NO_LEADER_MESSAGE } from "./grpc-util.js";
import { JoinLimiter } from "./join-limiter.js";
import { KeyManager } from "./keymanager.js";
import { ClusterListener } from "./listener.js";
import { encodeMemberContext, memberCommand, membershipService, newRaftId } from "./membership.js";
import { RoleManager } from "./rolemanager.js";
import type { ClusterServices } from "./services.js";

/** Who this manager is: its node, its Raft id, its cluster, and where it listens. */
export interface ManagerIdentity {
  nodeId: string;
  clusterId: string;
  /** Required: a node without one is not a manager yet. */
  raftId?: NodeId;
  /** host:port of the cluster listener. */
  listenAddr: string;
  /** host:port the other managers reach it at. */
  advertiseAddr: string;
}

export interface ManagerOptions {
  /** Opens this manager's Raft log and snapshots (encrypted at rest: the daemon holds the key). */
  openRaftStorage: () => Promise<LevelStorage>;
  state: ManagerIdentity;
  certs: TLSMaterial;
  logger: Logger;
  /** A new cluster: bootstrap Raft with this node as its only voter. */
  bootstrap?: boolean;
  /** Members known before the store has them (a manager that is joining). */
  peers?: RaftMember[];
  tickMs?: number;
  electionTick?: number;
  /** Called when this node learns it is no longer a Raft member. */
  onRemoved?: () => void;
  /** Called when leadership changes (for logs and tests). */
  onLeaderChange?: (leader: NodeId) => void;
  /** --encryption-key-rotation in ms (default: what the store has, 12 h for a new keyring). */
  encryptionKeyRotationMs?: number;
  /**
   * This manager's keys at rest (the daemon's data root): the unlock key they are sealed under now (null:
   * in clear), and how to re-seal them when the cluster's autolock setting or key changes.
   */
  keysAtRest?: { currentKek: () => Buffer | null | undefined; seal: (kek: Buffer | null) => Promise<void> };
}

export class Manager {
  readonly store: Store;
  readonly log: Logger;
  readonly raftId: NodeId;
  readonly nodeId: string;
  readonly clusterId: string;
  raft!: RaftNode;
  /** The root logger, for subsystems that carry their own component name. */
  private readonly root: Logger;
  private storage!: LevelStorage;
  transport!: GrpcTransport;
  private listener: ClusterListener | undefined;
  readonly dispatcher: Dispatcher;
  private roleManager: RoleManager;
  /** Leader only: creates the overlay keyring and rotates it on its stored schedule. */
  private keyManager: KeyManager;
  /** Every manager: keeps this manager's keys at rest sealed as the cluster's autolock setting says. */
  private readonly autolock: AutolockKeeper;
  /** Leader only: moves every node to a new root CA, then finishes the rotation. */
  private readonly rootRotation: RootRotationReconciler;
  private certs: TLSMaterial;
  private readonly opts: ManagerOptions;
  /** The members a joining manager was given in its JoinResponse (before its store has them). */
  private peers = new Map<NodeId, RaftMember>();
  private prober: NodeJS.Timeout | undefined;
  private leaderState = false;
  private stopped = false;
  /** Failed join-token attempts per source address: slowed and logged. */
  readonly joinLimiter: JoinLimiter;

  private constructor(opts: ManagerOptions) {
    this.opts = opts;
    this.root = opts.logger;
    this.log = opts.logger.child({ component: "manager" });
    this.store = new Store({ logger: opts.logger.child({ component: "store" }) });
    this.joinLimiter = new JoinLimiter({ logger: opts.logger.child({ component: "ca" }) });
    if (opts.state.raftId === undefined) throw new Error("a manager needs a raft id");
    this.raftId = opts.state.raftId;
    this.nodeId = opts.state.nodeId;
    this.clusterId = opts.state.clusterId;
    this.certs = opts.certs;
    for (const p of opts.peers ?? []) this.peers.set(p.raftId, p);
    this.dispatcher = new Dispatcher(this);
    this.roleManager = new RoleManager(this);
    this.keyManager = new KeyManager({
      now: () => new Date(),
      propose: async (c) => {
        await this.write(c);
      },
      read: () => this.store.keyring(),
      ...(opts.encryptionKeyRotationMs ? { intervalMs: opts.encryptionKeyRotationMs } : {}),
      logger: opts.logger.child({ component: "keymanager" }),
    });
    this.autolock = new AutolockKeeper({
      cluster: () => this.store.cluster(),
      onClusterChange: (f) => {
        const l = (e: { kind: string }) => {
          if (e.kind === "cluster" || e.kind === "restore") f();
        };
        this.store.events.on("event", l);
        return () => this.store.events.off("event", l);
      },
      currentKek: () => opts.keysAtRest?.currentKek() ?? null,
      seal: (kek) => opts.keysAtRest?.seal(kek) ?? Promise.resolve(),
      logger: opts.logger.child({ component: "autolock" }),
    });
    this.rootRotation = new RootRotationReconciler({
      cluster: () => this.store.clusterView(),
      nodes: () => this.store.nodeViews(),
      onEvent: (f) => {
        this.store.events.on("event", f);
        return () => this.store.events.off("event", f);
      },
      write: (c) => this.write(c),
      logger: opts.logger.child({ component: "ca-rotation" }),
    });
    // The listener trusts the rotation's new root as soon as a rotation starts, the new root alone once
    // it is over.
    this.store.events.on("event", (e: { kind: string }) => {
      if (e.kind === "cluster" || e.kind === "restore") this.listener?.refreshTrust(this.store.cluster());
    });
  }

  static async start(opts: ManagerOptions): Promise<Manager> {
    const m = new Manager(opts);
    // The listener first: a busy port is a clear error before anything else has started.
    await m.startServer();
    m.autolock.start();
    try {
      await m.startRaft();
    } catch (e) {
      m.autolock.stop();
      await m.listener?.close();
      throw e;
    }
    m.prober = setInterval(() => m.probePeers(), 1000);
    m.prober.unref();
    return m;
  }

  get tls(): TLSMaterial {
    return this.certs;
  }

  /** After a certificate renewal, or a new root adopted. */
  updateCertificates(c: TLSMaterial): void {
    this.certs = c;
    this.listener?.updateCertificates(c, this.store.cluster());
  }

  private async startRaft(): Promise<void> {
    this.storage = await this.opts.openRaftStorage();
    if (this.storage.migrated) {
      this.log.info(
        { dir: this.storage.dir },
        "encrypted the raft log at rest with this manager's data encryption key",
      );
    }
    if (this.opts.bootstrap && this.storage.mem.lastIndex() === 0) {
      const b = bootstrapSnapshot([this.raftId]);
      await this.storage.save({ snapshot: b.snapshot, hardState: b.hardState, entries: [] }, true);
    }
    this.transport = new GrpcTransport({
      selfId: this.raftId,
      resolve: (id) => this.store.member(id)?.addr ?? this.peers.get(id)?.addr,
      credentials: () => nodeCredentials(this.certs),
      onUnreachable: (id) => this.raft?.reportUnreachable(id),
      onToldRemoved: (by) => this.raft?.toldRemoved(by),
      logger: this.root.child({ component: "transport" }),
      // Slow keepalive, as the sessions have: a PING not answered within 1 s (the transport's default) also
      // fails when either side's event loop or CPU is busy for a second, and every such failure drops the
      // stream and what was queued on it (heartbeats, read-index answers), so a loaded host loses its
      // leader. Raft needs no keepalive to notice a dead peer (missing heartbeats do), and a killed process's
      // kernel resets its connections at once.
      keepaliveTimeMs: RAFT_KEEPALIVE_MS,
      keepaliveTimeoutMs: RAFT_KEEPALIVE_MS,
      connectTimeoutMs: RAFT_CONNECT_MS,
    });
    this.raft = await RaftNode.start({
      id: this.raftId,
      storage: this.storage,
      stateMachine: {
        apply: (data, index, checked) => {
          const t0 = performance.now();
          const out = this.store.apply(data, index, checked);
          observe.apply(performance.now() - t0);
          return out;
        },
        // Both in slices, the event loop turning in between: at 100 MB either takes seconds.
        snapshot: () => this.store.snapshotInSlices(),
        restore: (data, index) => this.store.restoreInSlices(data, index),
      },
      transport: this.transport,
      ...(this.opts.tickMs !== undefined ? { tickMs: this.opts.tickMs } : {}),
      electionTick: this.opts.electionTick ?? ELECTION_TICKS,
      logger: this.root.child({ component: "raft", raftId: this.raftId.toString(16) }),
      onConfChange: (cc, _cs, index) => this.onConfChange(cc, index),
      onSoftState: (ss) => this.onSoftState(ss.state === StateType.Leader, ss.lead),
      // It applied its own removal, or a member told it: its Raft member has stopped.
      onRemoved: () => {
        this.log.warn({}, "this manager was removed from the raft group");
        this.opts.onRemoved?.();
      },
    });
    // A single-voter cluster need not wait out an election timeout.
    const cs = this.raft.status().confState;
    if (cs.voters.length === 1 && cs.voters[0] === this.raftId) this.raft.campaign();
  }

  private async startServer(): Promise<void> {
    const acl: AclContext = {
      clusterId: () => this.clusterId,
      isRemoved: (id) => this.store.isRemoved(id),
      roleOf: (id) => this.store.roleOf(id),
      readBarrier: () => this.readBarrier(),
      logger: this.root.child({ component: "acl" }),
    };
    const services: ClusterServices = {
      acl,
      raft: {
        deliver: (m) => this.raft?.step(m),
        clusterId: () => this.clusterId,
        onHeard: (id) => this.transport?.markHeard(id),
        selfId: () => this.raftId,
        // Only current members speak, each from the node it was added for.
        member: (from, nodeId) => this.senderStatus(from, nodeId),
        isRemoved: (nodeId) => this.store.isRemoved(nodeId),
        logger: this.root.child({ component: "raft-server" }),
      },
      ca: caService(this),
      membership: membershipService(this),
      dispatcher: this.dispatcher.service(),
    };
    this.listener = await ClusterListener.open({
      listenAddr: this.opts.state.listenAddr,
      services,
      certs: this.certs,
      logger: this.log,
    });
  }

  /**
   * Who raft id `from` is, for a caller holding node `nodeId`'s certificate: members come from the store,
   * and, for a manager that is joining (its store is still empty), from the member list its JoinResponse
   * gave; an id this node's Raft log removed is "removed" whatever else says so.
   */
  private senderStatus(from: NodeId, nodeId: string): SenderStatus {
    if (this.raft?.isRemovedId(from)) return "removed";
    const m = this.store.member(from) ?? this.peers.get(from);
    if (!m) return "unknown";
    return m.nodeId === nodeId ? "member" : "other-node";
  }

  get listenPort(): number {
    return this.listener?.port ?? 0;
  }

  // ------------------------------------------------------------------ raft state

  get isLeader(): boolean {
    return this.raft.isLeader;
  }

  /**
   * Whether the leader this manager follows has not been heard from for LEADER_SILENT_MS (it sends heartbeats
   * every tick: ten of them missed). False while there is no leader, or this manager leads.
   */
  leaderSilent(): boolean {
    const lead = this.raft.leader;
    if (lead === 0 || lead === this.raftId) return false;
    return !this.transport.reachable(lead, LEADER_SILENT_MS);
  }

  /** host:port of the current leader, if known. */
  leaderAddr(): string | undefined {
    const lead = this.raft.leader;
    if (lead === 0) return undefined;
    if (lead === this.raftId) return this.opts.state.advertiseAddr;
    return this.store.member(lead)?.addr ?? this.peers.get(lead)?.addr;
  }

  leaderRaftId(): NodeId {
    return this.raft.leader;
  }

  /** Is a member reachable from here (MANAGER STATUS)? */
  reachable(raftId: NodeId): boolean {
    if (raftId === this.raftId) return true;
    if (raftId === this.raft.leader) return true;
    return this.transport.reachable(raftId, 3000);
  }

  private probePeers(): void {
    for (const m of this.store.members()) if (m.raftId !== this.raftId) void this.transport.probe(m.raftId);
  }

  private onSoftState(isLeader: boolean, lead: NodeId): void {
    this.opts.onLeaderChange?.(lead);
    if (isLeader && !this.leaderState) {
      this.leaderState = true;
      this.log.info({ term: this.raft.status().term }, "this manager is now the leader");
      this.dispatcher.becomeLeader();
      this.roleManager.start();
      this.keyManager.start();
      this.rootRotation.start();
    } else if (!isLeader && this.leaderState) {
      this.leaderState = false;
      this.log.info({ leader: lead.toString(16) }, "this manager is no longer the leader");
      void this.dispatcher.loseLeadership();
      this.roleManager.stop();
      this.keyManager.stop();
      this.rootRotation.stop();
    }
    this.dispatcher.leaderChanged();
  }

  private onConfChange(cc: ConfChange, index: number): void {
    const cmd = memberCommand(cc, (why) =>
      this.log.error(
        { index, raftId: cc.nodeId.toString(16), why },
        "a raft learner was added with a malformed member context: no member recorded",
      ),
    );
    if (cmd) this.store.apply(encodeCommand(cmd, new Date(0)), index);
    if (cc.type === ConfChangeType.RemoveNode) {
      this.transport.removePeer(cc.nodeId);
    }
  }

  // ------------------------------------------------------------------ reads and writes

  /**
   * Propose a store command and wait for its outcome; a refused command becomes an ApiError. The answer is
   * true: success only once applied; "not applied" only when Raft is certain it never will be (then it is
   * proposed again, for a while, so that most writes simply succeed across a failover); and "may still take
   * effect" when this manager cannot know (it is cut off).
   */
  async write(cmd: Command): Promise<number> {
    if (!this.raft) throw new ApiError(503, "this manager is still starting; try again in a moment");
    const start = Date.now();
    // The leader-only loops write only while this manager leads: what one of them asked for is not proposed
    // again once this manager has lost the leadership (the new leader's loops decide afresh).
    const ledAtStart = this.leaderState;
    for (let attempt = 0; ; attempt++) {
      const leftMs = Math.max(WRITE_TIMEOUT_MS - (Date.now() - start), 1000);
      let res: { index: number; result: unknown };
      const data = encodeCommand(cmd, new Date());
      const checked = checkBeforeProposing(cmd, data);
      try {
        res = await this.raft.proposeWithResult(data, leftMs, checked);
      } catch (e) {
        const retry =
          e instanceof ErrProposalDropped &&
          !(e instanceof ErrProposalTooLarge) &&
          !(ledAtStart && !this.leaderState) &&
          Date.now() - start < WRITE_RETRY_MS;
        if (retry && (await this.waitForLeader(start + WRITE_RETRY_MS))) {
          // At once the first time (a new leader is known); then not in a tight loop.
          if (attempt > 0) await new Promise((r) => setTimeout(r, 25));
          continue;
        }
        throw writeError(e);
      }
      const out = res.result as Outcome;
      observe.proposal(Date.now() - start);
      if (!out.ok) throw new ApiError(out.status, out.message);
      return out.version;
    }
  }

  /** Wait until a leader is known (polling: elections take a few ticks); false if `untilMs` passes first. */
  private async waitForLeader(untilMs: number): Promise<boolean> {
    while (this.raft.leader === 0) {
      if (this.stopped || this.raft.isRemovedId(this.raftId) || Date.now() >= untilMs) return false;
      await new Promise((r) => setTimeout(r, 20));
    }
    return true;
  }

  /** Wait until this manager has applied every write that finished before the call. */
  async readBarrier(): Promise<void> {
    if (!this.raft) throw new ApiError(503, "this manager is still starting; try again in a moment");
    try {
      await this.raft.readBarrier(5000);
    } catch (e) {
      if (e instanceof ErrProposalDropped) throw new ApiError(503, NO_LEADER_MESSAGE);
      throw e;
    }
  }

  /** Add a manager to the Raft group as a learner; resolves once applied here (leader only). */
  async addMember(nodeId: string, addr: string): Promise<NodeId> {
    const existing = this.store.memberByNode(nodeId);
    if (existing) return existing.raftId;
    const cs = this.raft.status().confState;
    const raftId = newRaftId((id) => cs.voters.includes(id) || cs.learners.includes(id) || cs.removed.includes(id));
    await this.confChange({
      type: ConfChangeType.AddLearner,
      nodeId: raftId,
      context: encodeMemberContext({ nodeId, addr }),
    });
    return raftId;
  }

  async removeMember(raftId: NodeId): Promise<void> {
    await this.confChange({ type: ConfChangeType.RemoveNode, nodeId: raftId, context: EMPTY });
  }

  private async confChange(cc: ConfChange): Promise<void> {
    // One membership change at a time: retry briefly while another is being applied.
    for (let attempt = 0; ; attempt++) {
      try {
        await this.raft.proposeConfChange(cc);
        return;
      } catch (e) {
        const busy = e instanceof ErrProposalDropped && /already in progress/.test(e.message);
        if (!busy || attempt >= 50) {
          if (e instanceof ErrProposalDropped)
            throw new ApiError(503, e.message.includes("leader") ? NO_LEADER_MESSAGE : e.message);
          throw e;
        }
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  }

  /** The voters, and which of them this manager can reach now. */
  quorumView(): { voters: NodeId[]; reachable: NodeId[] } {
    const voters = this.raft.status().confState.voters;
    return { voters, reachable: voters.filter((v) => this.reachable(v)) };
  }

  /** Would removing `raftId` (a voter) leave the group without a reachable quorum? */
  removalLosesQuorum(raftId: NodeId): boolean {
    const { voters, reachable } = this.quorumView();
    if (!voters.includes(raftId)) return false;
    const after = voters.length - 1;
    if (after === 0) return true;
    const reachableAfter = reachable.filter((v) => v !== raftId).length;
    return reachableAfter < Math.floor(after / 2) + 1;
  }

  roleOf(nodeId: string): NodeRole | undefined {
    return this.store.node(nodeId)?.role;
  }

  transferLeadershipAway(): boolean {
    const st = this.raft.status();
    let best: NodeId = 0;
    let bestMatch = -1;
    for (const [id, p] of st.progress) {
      if (id === this.raftId || p.isLearner || !this.reachable(id)) continue;
      if (p.match > bestMatch) {
        best = id;
        bestMatch = p.match;
      }
    }
    if (best === 0) return false;
    this.log.info({ to: best.toString(16) }, "transferring leadership");
    this.raft.transferLeadership(best);
    return true;
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    if (this.prober) clearInterval(this.prober);
    this.roleManager.stop();
    this.keyManager.stop();
    this.rootRotation.stop();
    this.autolock.stop();
    await this.dispatcher.loseLeadership();
    await this.raft.stop();
    await this.autolock.settled();
    await this.transport.close();
    await this.listener?.close();
    await this.storage.close();
  }
}

/**
 * Nothing malformed reaches the log: an entry is decoded as the store's apply decodes it (the command schema)
 * before it is proposed; this manager's apply of it then uses that decoding instead of making it again.
 */
function checkBeforeProposing(cmd: Command, data: Uint8Array): DecodedEntry {
  const d = DecodedEntry.of(data);
  if (!d.result.ok) throw new ApiError(400, `invalid ${cmd.op}: ${d.result.reason}`);
  return d;
}

/**
 * A follower that hears nothing from its leader for 30 to 60 ticks (3 to 6 s at the 100 ms tick) starts an
 * election; a leader that hears no quorum for 30 ticks steps down. A leader that dies is noticed sooner: its
 * connections close, and a follower that loses its leader's connection campaigns within 1 to 3 ticks. The
 * timeout is for a leader that is alive but silent, and it must outlast a pause of a busy leader: with 1 s
 * (10 ticks), a 1.6 s garbage collection of a leader holding 5,000 nodes on a loaded 2-core machine cost
 * it the leadership. SwarmKit's is 10 to 20 s. The swarm spec's ElectionTick stays Docker's 10 (a fixed
 * setting the docker CLI sends back on every update).
 */
export const ELECTION_TICKS = 30;
/** A leader not heard from for this long may be gone (session-hold.ts). */
export const LEADER_SILENT_MS = 1000;

/** HTTP/2 keepalive of the Raft streams to the other managers (interval and answer timeout). */
export const RAFT_KEEPALIVE_MS = 10_000;
/**
 * How long a new connection to another manager may take (the transport's default is 2 s). After a leader's
 * death, a connection a survivor must make waits at the peer's listener behind the nodes' handshakes
 * (src/ca/handshake-gate.ts): given up after 2 s, it was made again from the back of that queue, again and
 * again, and the survivors went without a leader for as long as the storm lasted. A dead peer's kernel
 * refuses at once; only a vanished host is noticed this much later.
 */
export const RAFT_CONNECT_MS = 10_000;
/** How long a write may wait for its outcome before it is reported unknown. */
const WRITE_TIMEOUT_MS = 10_000;
/**
 * How long a write that certainly was not applied is proposed again while a leader is being elected: longer
 * than the longest election timeout (60 ticks, 6 s at the 100 ms tick), so that a write made while a silent
 * leader is replaced waits for the new one instead of failing.
 */
const WRITE_RETRY_MS = 8_000;

/** The error a client gets for a write that did not succeed, in words that say whether it took effect. */
function writeError(e: unknown): unknown {
  if (e instanceof ErrProposalTooLarge) return new ApiError(400, `the request is too large to store: ${e.message}`);
  if (e instanceof ErrProposalOutcomeUnknown) {
    return new ApiError(
      503,
      "the request timed out and may still take effect; check before retrying (this manager could not learn " +
        "the outcome from the swarm's leader, possibly because too few managers are online)",
    );
  }
  if (e instanceof ErrProposalDropped || e instanceof NodeStoppedError) {
    if (/no leader/.test(e.message)) return new ApiError(503, `${NO_LEADER_MESSAGE} The request was not applied.`);
    return new ApiError(503, `The request was not applied (${e.message}); it is safe to try again.`);
  }
  return e;
}
