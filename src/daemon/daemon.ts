// shoald: one per host. It serves the Engine API on its socket, and once in a swarm runs an agent
// (every node) and a manager (managers). The role can change at run time: a promoted worker renews its
// certificate as a manager and joins the Raft group; a demoted manager leaves it and renews as a worker.
// This class keeps the node's state and sequences its parts: bootstrap.ts (init, join, Raft membership),
// local-manager.ts (this node's manager, retried while its listen address is busy), addresses.ts,
// rotation.ts (root CA rotations), listen.ts (the manager's listen address), and the agent's attachments
// (src/agent) for networks on this host.

import type { ChannelCredentials } from "@grpc/grpc-js";
import type { Logger } from "pino";
import { Agent } from "../agent/agent.js";
import type { DecodedSession } from "../agent/messages.js";
import {
  ApiError,
  alreadyInSwarm,
  badRequest,
  MSG_INVALID_UNLOCK_KEY,
  MSG_LEAVE_LOCKED,
  MSG_LOCKED,
  MSG_WORKER,
  notInSwarm,
  notManager,
  unavailable,
} from "../api/errors.js";
import { DEFAULT_SWARM_SPEC } from "../api/objects.js";
import { DEFAULT_DATA_PATH_PORT } from "../api/ports.js";
import { parseUnlockKey } from "../ca/unlockkey.js";
import { Firewall, type FirewallPreference } from "../dataplane/firewall.js";
import type {
  Node,
  NodeDescription,
  NodeListFilters,
  NodeRole,
  NodeSpec,
  Swarm,
  SwarmBackend,
  SwarmInfo,
  SwarmInit,
  SwarmJoin,
  SwarmSpec,
  SwarmUpdateOptions,
} from "../engine/types.js";
import { newNodeObject } from "../manager/ca-server.js";
import type { Control } from "../manager/control.js";
import { forceNewCluster } from "../manager/force-new-cluster.js";
import { toApiError } from "../manager/grpc-util.js";
import type { Manager } from "../manager/manager.js";
import { Serial } from "../serial.js";
import {
  clusterCreate,
  INGRESS_SPEC,
  joinRaft,
  leaveRaft,
  leaveRefusal,
  newSwarm,
  planInit,
  requestMembership,
  waitFor,
} from "./bootstrap.js";
import { NodeIdentity } from "./identity.js";
import { firewallInfoOf, nodeDescription, swarmInfoOf } from "./info.js";
import { listenAddrError, PromotionBlocked } from "./listen.js";
import { LocalManager } from "./local-manager.js";
import { HostNetworks } from "./networks.js";
import { RootFollower } from "./rotation.js";
import { DataRoot, type LocalState } from "./state.js";

export interface DaemonOptions {
  dataRoot: string;
  /** Run-time state: namespace files (execRoot/netns), container sandboxes. Default /run/shoal. */
  execRoot?: string;
  hostname: string;
  logger: Logger;
  /** Raft tick (ms); default 100. */
  tickMs?: number;
  electionTick?: number;
  /** --encryption-key-rotation (ms). */
  encryptionKeyRotationMs?: number;
  /** --firewall-backend: "auto" (default) probes for nftables, then iptables-legacy. */
  firewallBackend?: FirewallPreference;
}

export const DEFAULT_SPEC: SwarmSpec = DEFAULT_SWARM_SPEC;

const JOIN_TIMEOUT_MS = 20_000;

export class Daemon implements SwarmBackend {
  readonly log: Logger;
  private readonly root: DataRoot;
  private state: LocalState | undefined;
  /** The node's certificates and their renewal. */
  private readonly identity: NodeIdentity;
  /** This node's manager (while it is one), its control API, why it is not running. */
  private readonly local: LocalManager;
  agent: Agent | undefined;
  /** Serialises init/join/leave and role changes. */
  private readonly lock = new Serial();
  /** The Engine API's network calls, the overlay data plane and the containers' NetworkAttacher. */
  readonly networks: HostNetworks;

  /** This host's packet filter (nftables or iptables-legacy, probed once at start). */
  readonly firewall: Firewall;

  private roleChange: Promise<void> | undefined;
  /** The role the managers want this node in (from the session); changeRole follows it. */
  private desiredRole: NodeRole | undefined;
  private stopped = false;
  /** A manager whose keys are sealed under the swarm's unlock key, waiting for "docker swarm unlock". */
  private locked = false;
  /** Follows root CA rotations: renews when told, adopts the new root, recovers if it missed one. */
  private readonly follower: RootFollower;

  private constructor(private readonly opts: DaemonOptions) {
    this.log = opts.logger;
    this.root = new DataRoot(opts.dataRoot);
    this.firewall = new Firewall({ logger: opts.logger, prefer: opts.firewallBackend ?? "auto" });
    this.identity = new NodeIdentity({
      root: this.root,
      nodeId: () => this.state?.nodeId,
      managerAddr: () => this.agent?.connectedTo ?? this.managerAddrs()[0],
      onCertificates: (c) => this.manager?.updateCertificates(c),
      serial: (f) => this.serial(f),
      log: this.log,
    });
    this.local = new LocalManager({
      root: this.root,
      logger: this.log,
      state: () => this.state,
      certs: () => this.identity.certs!,
      stopped: () => this.stopped,
      serial: (f) => this.serial(f),
      onLateStart: () => this.agent?.reconnect(),
      ...(opts.tickMs !== undefined ? { tickMs: opts.tickMs } : {}),
      ...(opts.electionTick !== undefined ? { electionTick: opts.electionTick } : {}),
      ...(opts.encryptionKeyRotationMs ? { encryptionKeyRotationMs: opts.encryptionKeyRotationMs } : {}),
    });
    this.follower = new RootFollower({
      nodeId: () => this.state?.nodeId ?? "",
      certs: () => this.identity.certs,
      useCertificates: (c) => this.identity.use(c),
      renew: async () => void (await this.identity.renew()),
      reconnect: () => this.agent?.reconnect(),
      serial: (f) => this.serial(f),
      logger: this.log.child({ component: "root-ca" }),
    });
    this.networks = new HostNetworks({
      execRoot: opts.execRoot ?? "/run/shoal",
      firewall: this.firewall,
      logger: this.log,
      node: () => ({ state: this.state, locked: this.locked }),
      control: () => this.control,
      requireControl: () => this.requireControl(),
      session: () => this.agent?.sessionClient(),
      dataPathPort: () => this.dataPathPort(),
    });
  }

  static async start(opts: DaemonOptions): Promise<Daemon> {
    const d = new Daemon(opts);
    // The start log says at once which firewall this host uses (and if none, why).
    await d.firewall.status();
    await d.resume();
    return d;
  }

  hostname(): string {
    return this.opts.hostname;
  }

  /** /info's FirewallBackend: the backend in use, or why there is none (docker info prints it). */
  firewallInfo(): Promise<{ Driver: string; Info: [string, string][] }> {
    return firewallInfoOf(this.firewall);
  }

  /** This node's manager, while it is one and running. */
  get manager(): Manager | undefined {
    return this.local.manager;
  }

  private get control(): Control | undefined {
    return this.local.control;
  }

  get nodeId(): string | undefined {
    return this.state?.nodeId;
  }

  private serial<T>(f: () => Promise<T>): Promise<T> {
    return this.lock.run(f);
  }

  // ------------------------------------------------------------------ lifecycle

  /** Rejoin with whatever the data root holds: no token needed after a restart. */
  private async resume(): Promise<void> {
    const state = await this.root.loadState();
    if (!state) return;
    this.state = state;
    if (state.role === "manager" && (await this.root.isLocked())) {
      this.locked = true;
      this.log.warn(
        { node: state.nodeId },
        "this manager's keys are sealed under the swarm's unlock key: it stays locked until \"docker swarm unlock\"",
      );
      return;
    }
    await this.resumeUnlocked(state);
  }

  /** Start the parts of a swarm member whose keys are readable (after a restart, or an unlock). */
  private async resumeUnlocked(state: LocalState): Promise<void> {
    this.identity.certs = await this.root.loadCertificates();
    this.log.info({ node: state.nodeId, role: state.role }, "resuming swarm membership from the data root");
    if (state.role === "manager" && state.raftId !== undefined) {
      let peers = state.raftPeers;
      if (await raftLogIsEmpty(this.root)) {
        // Killed after joining Raft but before anything was replicated: ask the leader again.
        const addr = state.managers.map((m) => m.addr).find((x) => x !== state.advertiseAddr);
        if (addr) {
          try {
            const joined = await joinRaft(addr, state.advertiseAddr, this.credentials());
            state.raftId = joined.raftId;
            peers = joined.members;
          } catch (e) {
            this.log.warn({ err: e }, "could not rejoin the raft group");
          }
        }
      }
      await this.local.startOrRetry(peers);
    }
    this.startAgent();
    this.identity.schedule();
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    this.local.clearError();
    await this.networks.close();
    this.identity.stop();
    this.follower.stop();
    await this.agent?.stop();
    this.agent = undefined;
    await this.local.manager?.stop();
    this.local.manager = undefined;
  }

  private credentials(): ChannelCredentials {
    return this.identity.credentials();
  }

  private managerAddrs(): string[] {
    const s = this.state!;
    const list = s.managers.map((m) => m.addr);
    if (s.role === "manager" && this.manager) list.unshift(s.advertiseAddr);
    return [...new Set(list)];
  }

  private startAgent(): void {
    const s = this.state!;
    this.agent = new Agent({
      nodeId: s.nodeId,
      managers: () => this.managerAddrs(),
      credentials: () => this.credentials(),
      description: () => this.description(),
      addr: s.dataPathAddr,
      logger: this.log,
      onMessage: (msg) => this.onSessionMessage(msg),
      onSessionFailure: (addr, _err, consecutive) => this.follower.onSessionFailure(addr, consecutive),
    });
    this.agent.start();
  }

  description(): NodeDescription {
    return nodeDescription(this.opts.hostname, this.identity.certs);
  }

  private onSessionMessage(msg: DecodedSession): void {
    const s = this.state;
    if (!s) return;
    const managers = msg.managers.map((m) => ({ nodeId: m.nodeId, addr: m.addr }));
    if (managers.length > 0 && JSON.stringify(managers) !== JSON.stringify(s.managers)) {
      s.managers = managers;
      void this.root.saveState(s).catch((e: unknown) => this.log.warn({ err: e }, "could not save the manager list"));
    }
    this.follower.onSessionMessage(msg);
    this.networks.attacher.onSessionNetworks(msg.networks);
    this.networks.attacher.onSessionKeys(msg.networkKeysJson);
    this.desiredRole = msg.role;
    this.followRole();
  }

  /** Change to the role the managers want, unless a change is under way; a failed change is retried. */
  private followRole(): void {
    const s = this.state;
    const role = this.desiredRole;
    if (this.stopped || !s || !role || this.roleChange) return;
    if (role === s.role) {
      // Demoted again before the promotion could finish: nothing to retry any more.
      if (role === "worker" && this.local.error) this.local.clearError();
      return;
    }
    this.roleChange = this.serial(() => this.changeRole(role))
      .catch((e: unknown) => {
        if (e instanceof PromotionBlocked) this.local.reportError(e.message, s.listenAddr);
        else this.log.warn({ err: e }, "role change failed; will retry");
        this.local.retry(async () => this.followRole());
      })
      .finally(() => {
        this.roleChange = undefined;
      });
  }

  /** Follow a role change decided by the managers: renew the certificate, then start or stop the manager. */
  private async changeRole(role: NodeRole): Promise<void> {
    const s = this.state;
    if (!s || s.role === role) return;
    // Only a manager listens: check the address before anything changes (no certificate, no Raft member).
    if (role === "manager") {
      const busy = await listenAddrError(s.listenAddr);
      if (busy) throw new PromotionBlocked(busy, this.opts.hostname);
    } else {
      this.local.clearError();
    }
    this.log.info({ from: s.role, to: role }, "role change");
    const addr = this.agent?.connectedTo ?? this.managerAddrs()[0];
    if (!addr) throw new Error("no manager to renew the certificate with");
    const renewed = await this.identity.renew(addr);
    if (renewed.role !== role) {
      this.log.warn({ want: role, got: renewed.role }, "the managers have not switched the role yet; will retry");
      return;
    }
    if (role === "manager") {
      const joined = await joinRaft(addr, s.advertiseAddr, this.credentials());
      s.role = "manager";
      s.raftId = joined.raftId;
      s.raftPeers = joined.members;
      await this.root.wipeRaft();
      await this.root.saveState(s);
      await this.local.startOrRetry(joined.members);
    } else {
      await this.local.stop();
      await this.root.wipeRaft();
      s.role = "worker";
      delete s.raftId;
      delete s.raftPeers;
      await this.root.saveState(s);
    }
    this.agent?.reconnect();
  }

  // ------------------------------------------------------------------ Engine API: swarm

  async swarmInfo(): Promise<SwarmInfo> {
    return swarmInfoOf({
      state: this.state,
      locked: this.locked,
      managerError: this.local.error,
      manager: this.manager,
    });
  }

  private requireControl(): Control {
    if (!this.state) throw notManager();
    if (this.locked) throw unavailable(MSG_LOCKED);
    if (this.state.role !== "manager") throw new ApiError(503, MSG_WORKER);
    if (!this.control) throw notManager();
    return this.control;
  }

  swarmInspect(): Promise<Swarm> {
    return this.requireControl().swarmInspect();
  }

  swarmUpdate(spec: SwarmSpec, opts: SwarmUpdateOptions): Promise<void> {
    return this.requireControl().swarmUpdate(spec, opts);
  }

  /** GET /swarm/unlockkey: the unlock key while autolock is on, else "". */
  swarmUnlockKey(): Promise<string> {
    return this.requireControl().unlockKey();
  }

  /** POST /swarm/unlock: open this manager's sealed keys with the unlock key, then start it. */
  swarmUnlock(keyText: string): Promise<void> {
    return this.serial(async () => {
      const s = this.state;
      if (!s) throw notManager();
      if (!this.locked) {
        if (s.role === "manager") throw new ApiError(409, "swarm is not locked");
        throw new ApiError(503, MSG_WORKER);
      }
      let kek: Buffer;
      try {
        kek = parseUnlockKey(keyText);
      } catch {
        throw badRequest("invalid key string");
      }
      if (!(await this.root.unlock(kek))) {
        this.log.warn({}, "unlock refused: the key does not open this manager's raft key");
        throw new ApiError(401, MSG_INVALID_UNLOCK_KEY);
      }
      this.locked = false;
      try {
        await this.resumeUnlocked(s);
      } catch (e) {
        this.locked = true;
        throw e;
      }
      this.log.info({ node: s.nodeId }, "unlocked: this manager's keys are open");
      void this.networks
        .reconcile()
        .catch((e: unknown) => this.log.warn({ err: e }, "could not reconcile overlay namespaces"));
    });
  }

  nodeList(filters: NodeListFilters): Promise<Uint8Array> {
    return this.requireControl().nodeList(filters);
  }

  nodeInspect(ref: string): Promise<Node> {
    return this.requireControl().nodeInspect(ref);
  }

  nodeUpdate(ref: string, version: number, spec: NodeSpec): Promise<void> {
    return this.requireControl().nodeUpdate(ref, version, spec);
  }

  nodeRemove(ref: string, force: boolean): Promise<void> {
    return this.requireControl().nodeRemove(ref, force);
  }

  /** The swarm's VXLAN port: the managers' store on a manager, what the managers said at join on a worker. */
  private dataPathPort(): number {
    return this.manager?.store.cluster()?.info.DataPathPort || this.state?.dataPathPort || DEFAULT_DATA_PATH_PORT;
  }

  swarmInit(req: SwarmInit): Promise<string> {
    return this.serial(async () => {
      if (this.state) {
        if (req.forceNewCluster && this.state.role === "manager" && this.state.raftId !== undefined) {
          if (this.locked) throw unavailable(MSG_LOCKED);
          return this.forceNew();
        }
        throw alreadyInSwarm();
      }
      const plan = planInit(req);
      const { ca, certs, state } = await newSwarm(plan);
      this.identity.certs = certs;
      this.state = state;
      try {
        await this.root.saveCertificates(certs);
        await this.root.saveState(state);
        await this.local.start(true);
        const m = this.manager!;
        await waitFor(() => m.isLeader, 10_000, "this node to become the leader of the new swarm");
        await m.write(clusterCreate(plan, state.clusterId, ca));
        await this.control!.networkCreate(INGRESS_SPEC);
        const node = newNodeObject(state.nodeId, "manager", req.availability, this.opts.hostname, plan.advertise.ip);
        node.Description = this.description();
        await m.write({ op: "node.create", node, role: "manager" });
        const self = { nodeId: state.nodeId, addr: state.advertiseAddr };
        await m.write({ op: "member.add", member: { raftId: state.raftId!, ...self } });
        state.managers = [self];
        await this.root.saveState(state);
        this.startAgent();
        this.identity.schedule();
        this.log.info({ node: state.nodeId, cluster: state.clusterId }, "swarm initialized");
        return state.nodeId;
      } catch (e) {
        await this.abandon();
        throw e;
      }
    });
  }

  /** Undo a failed init or join: nothing half-done stays behind. */
  private async abandon(): Promise<void> {
    this.local.clearError();
    this.desiredRole = undefined;
    // Undoing goes on past a part that will not stop (the data root is wiped below either way); it is logged.
    await this.agent
      ?.stop()
      .catch((e: unknown) => this.log.warn({ err: e }, "could not stop the agent of a failed init or join"));
    this.agent = undefined;
    await this.local
      .stop()
      .catch((e: unknown) => this.log.warn({ err: e }, "could not stop the manager of a failed init or join"));
    this.state = undefined;
    this.identity.forget();
    await this.root.wipe();
  }

  private async forceNew(): Promise<string> {
    const s = this.state!;
    this.log.warn({}, "forcing a new cluster from this manager's state");
    await this.agent?.stop();
    this.agent = undefined;
    await this.local.stop();
    await forceNewCluster(() => this.root.openRaftStorage(), s.raftId!, this.log);
    s.managers = [{ nodeId: s.nodeId, addr: s.advertiseAddr }];
    await this.root.saveState(s);
    await this.local.start(false);
    const m = this.manager!;
    await waitFor(() => m.isLeader, 10_000, "this node to become the leader of the new cluster");
    this.startAgent();
    return s.nodeId;
  }

  swarmJoin(req: SwarmJoin): Promise<void> {
    return this.serial(async () => {
      if (this.state) throw alreadyInSwarm();
      const { certs, state, role, remote } = await requestMembership(req, this.opts.hostname);
      this.identity.certs = certs;
      this.state = state;
      try {
        await this.root.saveCertificates(certs);
        if (role === "manager") {
          // Again, just before joining Raft: a member must not be added for a manager that cannot listen.
          const busy = await listenAddrError(state.listenAddr);
          if (busy) throw busy;
          const joined = await joinRaft(remote, state.advertiseAddr, this.credentials());
          state.raftId = joined.raftId;
          state.raftPeers = joined.members;
          await this.root.saveState(state);
          await this.local.start(false, joined.members);
          const m = this.manager!;
          await waitFor(
            () => m.store.cluster() !== undefined,
            JOIN_TIMEOUT_MS,
            "the new manager to catch up with the swarm",
          );
        } else {
          await this.root.saveState(state);
        }
        this.startAgent();
        await waitFor(() => this.agent?.connectedTo !== undefined, JOIN_TIMEOUT_MS, "a session with the managers");
        this.identity.schedule();
        this.log.info({ node: state.nodeId, role }, "joined the swarm");
      } catch (e) {
        await this.abandon();
        throw toApiError(e);
      }
    });
  }

  swarmLeave(force: boolean): Promise<void> {
    return this.serial(async () => {
      const s = this.state;
      if (!s) throw notInSwarm();
      if (this.locked && !force) throw unavailable(MSG_LEAVE_LOCKED);
      const m = this.manager;
      if (s.role === "manager" && m) {
        if (!force) throw leaveRefusal(m);
        if (m.quorumView().voters.length > 1)
          await leaveRaft(m, s.nodeId, () => this.credentials()).catch((e: unknown) =>
            this.log.warn({ err: e }, "could not leave the raft group cleanly"),
          );
      }
      await this.agent?.stop();
      this.agent = undefined;
      await this.local.stop();
      this.local.clearError();
      this.desiredRole = undefined;
      this.identity.stop();
      this.state = undefined;
      this.identity.forget();
      await this.root.wipe();
      this.log.info({}, "left the swarm");
    });
  }
}

async function raftLogIsEmpty(root: DataRoot): Promise<boolean> {
  const st = await root.openRaftStorage();
  try {
    return st.mem.lastIndex() === 0 && st.mem.snapshot().metadata.index === 0;
  } finally {
    await st.close();
  }
}
