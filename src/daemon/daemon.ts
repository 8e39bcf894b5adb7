// shoald: one per host. It serves the Engine API on its socket, and once in a swarm runs an agent
// (every node) and a manager (managers). The role can change at run time: a promoted worker renews its
// certificate as a manager and joins the Raft group; a demoted manager leaves it and renews as a worker.

// shoald: one per host. It serves the Engine API on its socket, and once in a swarm runs an agent
// (every node) and a manager (managers). The role can change at run time: a promoted worker renews its
// certificate as a manager and joins the Raft group; a demoted manager leaves it and renews as a worker.

import os, { networkInterfaces } from "node:os";
import type { ChannelCredentials } from "@grpc/grpc-js";
import type { Logger } from "pino";
import { Agent, CHANNEL_OPTIONS } from "../agent/agent.js";
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
import { generateNodeKeyAndCSR, parseNodeCert, renewalTime, signNodeCSR } from "../ca/certs.js";
import { clusterTLSInfo, nodeTLSInfo } from "../ca/chain.js";
import { newClusterId, newNodeId } from "../ca/ids.js";
import { createRootCA, RootCA } from "../ca/rootca.js";
import { clientCredentials, insecureClientCredentials } from "../ca/tls.js";
import { generateJoinToken, parseJoinToken, rootDigest, tokenMatchesRoot } from "../ca/token.js";
import { formatUnlockKey, generateKek, parseUnlockKey } from "../ca/unlockkey.js";
import { EmbeddedDns } from "../dataplane/dns.js";
import { Firewall, type FirewallPreference, probeEsp } from "../dataplane/firewall.js";
import { GatewayBridge } from "../dataplane/gwbridge.js";
import { IpsecDataplane } from "../dataplane/ipsec.js";
import { OverlayDataplane } from "../dataplane/overlay.js";
import type {
  AttachedEndpoint,
  ClusterInfo,
  EndpointSettingsRequest,
  NetworkAttacher,
  NetworkBackend,
  NetworkResource,
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
import { CAClient, RaftMembershipClient } from "../gen/cluster.js";
import { newNodeObject } from "../manager/ca-server.js";
import { Control } from "../manager/control.js";
import { leaderHint, toApiError, unary } from "../manager/grpc-util.js";
import { redact } from "../manager/keymanager.js";
import { forceNewCluster, ListenError, Manager, splitHostPort } from "../manager/manager.js";
import { endpointRows, findNetwork, networkMatches, newNetworkId, presentNetwork } from "../manager/networks.js";
import type { NodeId } from "../raft/types.js";
import { Serial } from "../serial.js";
import type { NetworkSpec } from "../store/store.js";
import { VERSION } from "../version.js";
import { LISTEN_RETRY_MS, listenAddrError, PromotionBlocked, restartBlocked } from "./listen.js";
import { HostNetworking } from "./networking.js";
import { RootFollower } from "./rotation.js";
import { type Certificates, DataRoot, type LocalState } from "./state.js";

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

export class Daemon implements SwarmBackend, NetworkBackend {
  readonly log: Logger;
  private readonly root: DataRoot;
  private state: LocalState | undefined;
  private certs: Certificates | undefined;
  manager: Manager | undefined;
  private control: Control | undefined;
  agent: Agent | undefined;
  /** Serialises init/join/leave and role changes. */
  private readonly lock = new Serial();
  private renewTimer: NodeJS.Timeout | undefined;
  /** Overlay networking on this host, built on first use. */
  networking: HostNetworking | undefined;
  private dataplane: OverlayDataplane | undefined;
  private gatewayBridge: GatewayBridge | undefined;

  /** This host's packet filter (nftables or iptables-legacy, probed once at start). */
  readonly firewall: Firewall;

  private get gateway(): GatewayBridge {
    this.gatewayBridge ??= new GatewayBridge({ logger: this.log, firewall: this.firewall });
    return this.gatewayBridge;
  }
  private dns: EmbeddedDns | undefined;
  /** The container runtime, for network connect/disconnect. */
  containers:
    | {
        connect(c: string, net: string, cfg: EndpointSettingsRequest): Promise<void>;
        disconnect(c: string, net: string, force: boolean): Promise<void>;
      }
    | undefined;
  private roleChange: Promise<void> | undefined;
  /** The role the managers want this node in (from the session); changeRole follows it. */
  private desiredRole: NodeRole | undefined;
  /** Why this node, which should be a manager, is not running as one (Swarm.Error in `docker info`). */
  private managerError: string | undefined;
  /** The next try to become a manager (a promotion, a restart) while the listen address cannot be bound. */
  private managerRetry: NodeJS.Timeout | undefined;
  private stopped = false;
  /** A manager whose keys are sealed under the swarm's unlock key, waiting for "docker swarm unlock". */
  private locked = false;
  /** Follows root CA rotations: renews when told, adopts the new root, recovers if it missed one. */
  private readonly follower: RootFollower;

  private constructor(private readonly opts: DaemonOptions) {
    this.log = opts.logger;
    this.root = new DataRoot(opts.dataRoot);
    this.firewall = new Firewall({ logger: opts.logger, prefer: opts.firewallBackend ?? "auto" });
    this.follower = new RootFollower({
      nodeId: () => this.state?.nodeId ?? "",
      certs: () => this.certs,
      useCertificates: async (c) => {
        this.certs = c;
        await this.root.saveCertificates(c);
        this.manager?.updateCertificates(c);
        this.scheduleRenewal();
      },
      renew: async () => {
        const addr = this.agent?.connectedTo ?? this.managerAddrs()[0];
        if (!addr) throw new Error("no manager to renew the certificate with");
        await this.renewCertificate(addr);
      },
      reconnect: () => this.agent?.reconnect(),
      serial: (f) => this.serial(f),
      logger: this.log.child({ component: "root-ca" }),
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
  async firewallInfo(): Promise<{ Driver: string; Info: [string, string][] }> {
    const s = await this.firewall.status();
    if (s.backend === null) return { Driver: "none", Info: [["Reason", s.reason]] };
    const info: [string, string][] = [];
    if (s.backend === "iptables") info.push(["Program", "iptables-legacy"]);
    if (s.forced) info.push(["Chosen", "--firewall-backend"]);
    if (s.nftablesUnavailable) info.push(["nftables", `unavailable (${s.nftablesUnavailable})`]);
    return { Driver: s.backend, Info: info };
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
    this.certs = await this.root.loadCertificates();
    this.log.info({ node: state.nodeId, role: state.role }, "resuming swarm membership from the data root");
    if (state.role === "manager" && state.raftId !== undefined) {
      let peers = state.raftPeers;
      if (await raftLogIsEmpty(this.root)) {
        // Killed after joining Raft but before anything was replicated: ask the leader again.
        const addr = state.managers.map((m) => m.addr).find((x) => x !== state.advertiseAddr);
        if (addr) {
          try {
            const joined = await this.joinRaft(addr);
            state.raftId = joined.raftId;
            peers = joined.members;
          } catch (e) {
            this.log.warn({ err: e }, "could not rejoin the raft group");
          }
        }
      }
      await this.startManagerOrRetry(peers);
    }
    this.startAgent();
    this.scheduleRenewal();
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    this.clearManagerError();
    this.networking?.close();
    await this.dns?.close().catch(() => undefined);
    if (this.renewTimer) clearTimeout(this.renewTimer);
    this.follower.stop();
    await this.agent?.stop();
    this.agent = undefined;
    await this.manager?.stop();
    this.manager = undefined;
  }

  private async startManager(
    bootstrap: boolean,
    peers?: { raftId: NodeId; nodeId: string; addr: string }[],
  ): Promise<void> {
    const state = this.state!;
    this.manager = await Manager.start({
      openRaftStorage: () => this.root.openRaftStorage(),
      keysAtRest: { currentKek: () => this.root.currentKek(), seal: (kek) => this.root.sealSecrets(kek) },
      state,
      certs: this.certs!,
      logger: this.log,
      bootstrap,
      ...(peers ? { peers } : {}),
      ...(this.opts.tickMs !== undefined ? { tickMs: this.opts.tickMs } : {}),
      ...(this.opts.electionTick !== undefined ? { electionTick: this.opts.electionTick } : {}),
      ...(this.opts.encryptionKeyRotationMs ? { encryptionKeyRotationMs: this.opts.encryptionKeyRotationMs } : {}),
    });
    this.control = new Control(this.manager);
  }

  /**
   * Start the manager of a node whose state says manager (a restart, a promotion that joined Raft). If its
   * listen address cannot be bound, the daemon stays up: it says why (log, Swarm.Error) and retries.
   */
  private async startManagerOrRetry(peers?: { raftId: NodeId; nodeId: string; addr: string }[]): Promise<void> {
    try {
      await this.startManager(false, peers);
    } catch (e) {
      if (!(e instanceof ListenError)) throw e;
      this.reportManagerError(restartBlocked(e), e.addr);
      this.retryManager(() =>
        this.serial(async () => {
          const s = this.state;
          if (this.stopped || !s || s.role !== "manager" || this.manager) return;
          await this.startManagerOrRetry(peers);
          if (this.manager) this.agent?.reconnect();
        }),
      );
      return;
    }
    if (this.managerError)
      this.log.info({ addr: this.state?.listenAddr }, "the manager started: its listen address is free now");
    this.clearManagerError();
  }

  /** Log why this node is not a manager yet: at error level once, then at debug level on each retry. */
  private reportManagerError(message: string, addr: string): void {
    if (message !== this.managerError) this.log.error({ addr }, message);
    else this.log.debug({ addr }, message);
    this.managerError = message;
  }

  private retryManager(f: () => Promise<void>): void {
    if (this.managerRetry) clearTimeout(this.managerRetry);
    this.managerRetry = setTimeout(() => {
      this.managerRetry = undefined;
      if (!this.stopped) void f().catch((e: unknown) => this.log.warn({ err: e }, "could not start the manager"));
    }, LISTEN_RETRY_MS);
    this.managerRetry.unref();
  }

  private clearManagerError(): void {
    if (this.managerRetry) clearTimeout(this.managerRetry);
    this.managerRetry = undefined;
    this.managerError = undefined;
  }

  private async stopManager(): Promise<void> {
    const m = this.manager;
    this.manager = undefined;
    this.control = undefined;
    await m?.stop();
  }

  private credentials(): ChannelCredentials {
    const c = this.certs!;
    return clientCredentials(c.rootPem, c.certPem, c.keyPem);
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
    return {
      Hostname: this.opts.hostname,
      Platform: { Architecture: os.arch() === "x64" ? "x86_64" : os.arch(), OS: "linux" },
      Resources: { NanoCPUs: os.cpus().length * 1e9, MemoryBytes: os.totalmem() },
      Engine: { EngineVersion: VERSION, Plugins: [{ Type: "Network", Name: "overlay" }] },
      // The root this node trusts and who issued its certificate: what `docker swarm ca` watches.
      ...(this.certs ? { TLSInfo: nodeTLSInfo(this.certs.rootPem, this.certs.certPem) } : {}),
    };
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
    this.networking?.onSessionNetworks(msg.networks);
    this.networking?.onSessionKeys(msg.networkKeysJson);
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
      if (role === "worker" && this.managerError) this.clearManagerError();
      return;
    }
    this.roleChange = this.serial(() => this.changeRole(role))
      .catch((e: unknown) => {
        if (e instanceof PromotionBlocked) this.reportManagerError(e.message, s.listenAddr);
        else this.log.warn({ err: e }, "role change failed; will retry");
        this.retryManager(async () => this.followRole());
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
      this.clearManagerError();
    }
    this.log.info({ from: s.role, to: role }, "role change");
    const addr = this.agent?.connectedTo ?? this.managerAddrs()[0];
    if (!addr) throw new Error("no manager to renew the certificate with");
    const renewed = await this.renewCertificate(addr);
    if (renewed.role !== role) {
      this.log.warn({ want: role, got: renewed.role }, "the managers have not switched the role yet; will retry");
      return;
    }
    if (role === "manager") {
      const joined = await this.joinRaft(addr);
      s.role = "manager";
      s.raftId = joined.raftId;
      s.raftPeers = joined.members;
      await this.root.wipeRaft();
      await this.root.saveState(s);
      await this.startManagerOrRetry(joined.members);
    } else {
      await this.stopManager();
      await this.root.wipeRaft();
      s.role = "worker";
      delete s.raftId;
      delete s.raftPeers;
      await this.root.saveState(s);
    }
    this.agent?.reconnect();
  }

  private async renewCertificate(addr: string): Promise<{ role: NodeRole }> {
    const s = this.state!;
    const { keyPem, csrPem } = await generateNodeKeyAndCSR(s.nodeId);
    const client = new CAClient(addr, this.credentials(), CHANNEL_OPTIONS);
    try {
      const res = await unary(client.renewNodeCertificate.bind(client), { csrPem }, 10_000);
      this.certs = { rootPem: this.certs!.rootPem, certPem: res.certificatePem, keyPem };
      await this.root.saveCertificates(this.certs);
      this.manager?.updateCertificates(this.certs);
      this.scheduleRenewal();
      return { role: res.role as NodeRole };
    } finally {
      client.close();
    }
  }

  /** Renew the node certificate at a random 50-80 % of its life. */
  private scheduleRenewal(): void {
    if (this.renewTimer) clearTimeout(this.renewTimer);
    if (!this.certs) return;
    const info = parseNodeCert(this.certs.certPem);
    const at = renewalTime(info.notBefore, info.notAfter).getTime();
    const wait = Math.max(1000, Math.min(at - Date.now(), 2 ** 31 - 1));
    this.renewTimer = setTimeout(() => {
      if (Date.now() < at) return this.scheduleRenewal();
      const addr = this.agent?.connectedTo ?? this.managerAddrs()[0];
      if (!addr) return this.scheduleRenewal();
      void this.serial(() => this.renewCertificate(addr)).catch((e: unknown) => {
        this.log.warn({ err: e }, "certificate renewal failed; retrying in a minute");
        this.renewTimer = setTimeout(() => this.scheduleRenewal(), 60_000);
      });
    }, wait);
    this.renewTimer.unref();
  }

  /** Ask the leader (following hints) to add this node to the Raft group. */
  private async joinRaft(
    addr: string,
  ): Promise<{ raftId: NodeId; members: { raftId: NodeId; nodeId: string; addr: string }[] }> {
    const s = this.state!;
    let target = addr;
    for (let attempt = 0; attempt < 20; attempt++) {
      const client = new RaftMembershipClient(target, this.credentials(), CHANNEL_OPTIONS);
      try {
        const res = await unary(client.join.bind(client), { addr: s.advertiseAddr }, 15_000);
        return {
          raftId: res.raftId,
          members: res.members.map((m) => ({ raftId: m.raftId, nodeId: m.nodeId, addr: m.addr })),
        };
      } catch (e) {
        const hint = leaderHint(e);
        if (hint) target = hint;
        else if (attempt >= 5) throw e;
        else await new Promise((r) => setTimeout(r, 300));
      } finally {
        client.close();
      }
    }
    throw unavailable("could not reach the swarm leader to join the raft group");
  }

  // ------------------------------------------------------------------ Engine API: swarm

  async swarmInfo(): Promise<SwarmInfo> {
    const s = this.state;
    if (!s) {
      return {
        NodeID: "",
        NodeAddr: "",
        LocalNodeState: "inactive",
        ControlAvailable: false,
        Error: "",
        RemoteManagers: null,
      };
    }
    if (this.locked) {
      return {
        NodeID: s.nodeId,
        NodeAddr: s.dataPathAddr,
        LocalNodeState: "locked",
        ControlAvailable: false,
        Error: MSG_LOCKED,
        RemoteManagers: s.managers.map((m) => ({ NodeID: m.nodeId, Addr: m.addr })),
      };
    }
    const info: SwarmInfo = {
      NodeID: s.nodeId,
      NodeAddr: s.dataPathAddr,
      LocalNodeState: "active",
      ControlAvailable: s.role === "manager" && this.manager !== undefined,
      Error: this.managerError ?? "",
      RemoteManagers: s.managers.map((m) => ({ NodeID: m.nodeId, Addr: m.addr })),
    };
    const m = this.manager;
    const c = m?.store.cluster();
    if (m && c) {
      const nodes = m.store.nodes();
      info.Nodes = nodes.length;
      info.Managers = nodes.filter((n) => n.role === "manager").length;
      info.Cluster = c.info;
      info.RemoteManagers = m.store.members().map((x) => ({ NodeID: x.nodeId, Addr: x.addr }));
    }
    return info;
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
      void this.reconcileNetworking().catch((e: unknown) =>
        this.log.warn({ err: e }, "could not reconcile overlay namespaces"),
      );
    });
  }

  nodeList(filters: NodeListFilters): Promise<Node[]> {
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

  // ------------------------------------------------------------------ host networking

  get execRoot(): string {
    return this.opts.execRoot ?? "/run/shoal";
  }

  /** What the container runtime calls to put a container on a network (and take it off). */
  readonly attacher: NetworkAttacher = {
    attach: async (c, ref, cfg) => {
      const net = this.ensureNetworking();
      const ep = await net.attach(c, ref, cfg);
      try {
        await this.ensureDns().addContainer(c.id, c.netnsPath);
        // External access (the default route through shoal_gwbridge), unless the network is internal.
        const internal = net.localEndpoints().find((l) => l.attached.endpointId === ep.endpointId)?.network
          .spec.internal;
        if (!internal) await this.gateway.attach(c.id, c.netnsPath);
      } catch (e) {
        await net.detach(c, ep).catch(() => undefined);
        throw new ApiError(500, `could not connect container ${c.name} to ${ep.networkName}: ${(e as Error).message}`);
      }
      return ep;
    },
    detach: async (c, ep: AttachedEndpoint) => {
      const net = this.ensureNetworking();
      await net.detach(c, ep);
      const left = net.localEndpoints().filter((l) => l.container.id === c.id);
      if (!left.some((l) => !l.network.spec.internal)) await this.gateway.detach(c.id);
      if (left.length === 0) await this.dns?.removeContainer(c.id);
    },
    resolvConf: () => "nameserver 127.0.0.11\noptions ndots:0\n",
  };

  /** The swarm's VXLAN port: the managers' store on a manager, what the managers said at join on a worker. */
  private dataPathPort(): number {
    return this.manager?.store.cluster()?.info.DataPathPort || this.state?.dataPathPort || 4789;
  }

  /** The overlay machinery of this host, built on first use (it needs the swarm's data-path address). */
  ensureNetworking(): HostNetworking {
    if (this.networking) return this.networking;
    if (this.locked) throw unavailable(MSG_LOCKED);
    const s = this.state;
    if (!s) {
      throw new ApiError(503, 'overlay networks need a swarm: run "shoal swarm init" or "shoal swarm join" first');
    }
    const dataplane = new OverlayDataplane({
      execRoot: this.execRoot,
      underlayDev: interfaceOf(s.dataPathAddr),
      localAddr: s.dataPathAddr,
      dataPathPort: this.dataPathPort(),
      logger: this.log,
    });
    const ipsec = new IpsecDataplane({
      localAddr: s.dataPathAddr,
      firewall: this.firewall,
      port: this.dataPathPort(),
      logger: this.log,
    });
    this.networking = new HostNetworking({
      nodeId: () => this.state?.nodeId ?? "",
      managerAddr: () =>
        this.agent?.connectedTo ?? (this.manager ? this.state?.advertiseAddr : this.state?.managers[0]?.addr),
      credentials: () => this.credentials(),
      dataplane,
      ipsec,
      probe: () => probeEsp(undefined, () => this.firewall.status()),
      logger: this.log,
    });
    this.dataplane = dataplane;
    return this.networking;
  }

  private ensureDns(): EmbeddedDns {
    this.dns ??= new EmbeddedDns({
      lookup: (containerId, name) => this.lookupName(containerId, name),
      logger: this.log,
    });
    return this.dns;
  }

  /** The addresses a container can resolve `name` to: containers on its networks, by name or alias. */
  private lookupName(containerId: string, name: string): string[] {
    const net = this.networking;
    if (!net) return [];
    const n = name.toLowerCase();
    const out = new Set<string>();
    for (const l of net.localEndpoints()) {
      if (l.container.id !== containerId) continue;
      const st = net.states.get(l.attached.networkId);
      for (const e of st?.endpoints ?? []) {
        const names = [e.containerName, ...e.aliases].map((x) => x.toLowerCase());
        if (names.includes(n) || names.some((x) => `${x}.${l.attached.networkName.toLowerCase()}` === n)) out.add(e.ip);
      }
    }
    return [...out];
  }

  /** After a restart: overlay namespaces of the previous run hold no container of ours any more. */
  async reconcileNetworking(): Promise<void> {
    // A locked manager reconciles once it is unlocked (swarmUnlock).
    if (!this.state || this.locked) return;
    this.ensureNetworking();
    const report = await this.dataplane!.reconcile(new Map());
    // Probe at start (in the background): the log says at once whether encrypted networks can work here.
    void this.networking!.espSupport();
    await this.networking!.resetIpsec().catch((e: unknown) =>
      this.log.warn({ err: (e as Error).message }, "could not remove IPsec state left by a previous run"),
    );
    if (report.deleted.length > 0 || report.removedStale.length > 0) {
      this.log.info(
        { deleted: report.deleted, stale: report.removedStale },
        "removed overlay namespaces left by a previous run",
      );
    }
  }

  // ------------------------------------------------------------------ Engine API: networks

  async networkCreate(spec: NetworkSpec): Promise<{ Id: string; Warning: string }> {
    if (this.state?.role === "worker") {
      throw new ApiError(
        403,
        "Cannot create a multi-host network from a worker node. Please create the network from a manager node.",
      );
    }
    this.requireControl();
    const m = this.manager!;
    const id = newNetworkId();
    await m.write({ op: "network.create", id, spec });
    return { Id: id, Warning: "" };
  }

  async networkList(filters: Record<string, string[]>): Promise<NetworkResource[]> {
    const all = await this.networkResources();
    return all.filter((n) => networkMatches(n, filters));
  }

  async networkInspect(ref: string): Promise<NetworkResource> {
    const all = await this.networkResources();
    const exact = all.find((n) => n.Id === ref) ?? all.find((n) => n.Name === ref);
    const byPrefix = all.filter((n) => n.Id.startsWith(ref));
    if (!exact && byPrefix.length > 1)
      throw badRequest(`network ${ref} is ambiguous (${byPrefix.length} matches found based on ID prefix)`);
    const found = exact ?? byPrefix[0];
    if (!found) throw new ApiError(404, `network ${ref} not found`);
    return this.withEncryption(found);
  }

  /**
   * An encrypted network's inspect gains `Encryption` (shoal's; Swarm users cannot tell, moby #24253): the
   * key tags this host holds and when they last rotated, whether its kernel can encrypt, and per remote
   * host whether the SAs are installed. On a manager also the cluster's keyring (tags and times). Never keys.
   */
  private async withEncryption(n: NetworkResource): Promise<NetworkResource> {
    if (n.Options.encrypted === undefined) return n;
    let info: Record<string, unknown>;
    try {
      info = { ...(await this.ensureNetworking().encryptionInfo(n.Id)) };
    } catch (e) {
      // This host cannot build its overlay side (e.g. its data-path address is on no interface): say so,
      // and still show what the managers know.
      info = { Encrypted: true, Held: false, KeyTags: [], Peers: [], Error: (e as Error).message };
    }
    const ring = this.manager?.store.keyring();
    if (ring) {
      const r = redact(ring);
      info.ClusterKeyTags = r.tags;
      info.ClusterLastRotation = r.lastRotation;
      info.ClusterNextRotation = r.nextRotation;
    }
    return { ...n, Encryption: info };
  }

  async networkRemove(ref: string): Promise<void> {
    if (this.state?.role === "worker") {
      throw new ApiError(
        403,
        "Cannot remove a multi-host network from a worker node. Please remove the network from a manager node.",
      );
    }
    this.requireControl();
    const m = this.manager!;
    await m.readBarrier();
    const net = findNetwork(m.store, ref);
    if (!net) throw new ApiError(404, `network ${ref} not found`);
    if (net.spec.ingress) throw new ApiError(403, `ingress network cannot be removed by shoal while the swarm uses it`);
    await m.write({ op: "network.remove", id: net.id });
  }

  networkConnect(ref: string, container: string, cfg: EndpointSettingsRequest): Promise<void> {
    if (!this.containers) throw new ApiError(503, "this daemon runs no containers");
    return this.containers.connect(container, ref, cfg);
  }

  networkDisconnect(ref: string, container: string, force: boolean): Promise<void> {
    if (!this.containers) throw new ApiError(503, "this daemon runs no containers");
    return this.containers.disconnect(container, ref, force);
  }

  /**
   * Managers see every network; a worker sees the networks it holds (it has a container on them), as
   * the managers last told it.
   */
  private async networkResources(): Promise<NetworkResource[]> {
    const s = this.state;
    if (!s) throw notManager();
    const m = this.manager;
    if (m) {
      await m.readBarrier();
      return m.store.networks().map((n) => presentNetwork(n, endpointRows(m.store, n.id), s.nodeId));
    }
    const out: NetworkResource[] = [];
    for (const st of this.networking?.states.values() ?? []) {
      const net = st.network;
      const rows = st.endpoints.map((e) => ({
        nodeId: e.nodeId,
        nodeAddr: e.nodeAddr,
        hostname: e.hostname,
        endpointId: e.endpointId,
        containerId:
          this.networking?.localEndpoints().find((l) => l.attached.endpointId === e.endpointId)?.container.id ??
          e.endpointId,
        containerName: e.containerName,
        ip: e.ip,
        mac: e.mac,
      }));
      out.push(presentNetwork(net, rows, s.nodeId));
    }
    return out;
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
      const listen = parseListenAddr(req.listenAddr);
      const advertise = resolveAdvertiseAddr(req.advertiseAddr, listen);
      const dataPathAddr = req.dataPathAddr ? resolveAdvertiseAddr(req.dataPathAddr, listen).ip : advertise.ip;
      const spec = req.spec;
      const autolock = spec.EncryptionConfig.AutoLockManagers;
      if (spec.CAConfig.SigningCACert || spec.CAConfig.SigningCAKey || spec.CAConfig.ForceRotate) {
        throw badRequest("a root CA is rotated after init, with docker swarm ca --rotate");
      }
      const pool = req.defaultAddrPool.length > 0 ? req.defaultAddrPool : ["10.0.0.0/8"];
      const subnetSize = req.subnetSize || 24;
      if (subnetSize < 1 || subnetSize > 29)
        throw badRequest(`invalid default address pool mask length ${subnetSize}: it must be between 1 and 29`);
      for (const p of pool)
        if (!/^\d{1,3}(\.\d{1,3}){3}\/\d{1,2}$/.test(p)) throw badRequest(`invalid default address pool ${p}`);
      const dataPathPort = req.dataPathPort || 4789;
      if (dataPathPort < 1024 || dataPathPort > 49151)
        throw badRequest(`invalid data path port ${dataPathPort}: it must be within 1024-49151`);

      if (spec.CAConfig.NodeCertExpiry > 0 && spec.CAConfig.NodeCertExpiry < 3600e9) {
        throw badRequest("minimum certificate expiry time is: 1h0m0s");
      }
      const ca = await createRootCA();
      const clusterId = newClusterId();
      const nodeId = newNodeId();
      const rootCA = await RootCA.fromPem(ca.certPem, ca.keyPem);
      const { keyPem, csrPem } = await generateNodeKeyAndCSR(nodeId);
      const days = spec.CAConfig.NodeCertExpiry / 86_400e9;
      const certPem = await signNodeCSR(rootCA, csrPem, { nodeId, role: "manager", clusterId, days });
      const raftId = 1 + Math.floor(Math.random() * (2 ** 47 - 2));
      this.certs = { rootPem: ca.certPem, certPem, keyPem };
      this.state = {
        version: 1,
        nodeId,
        clusterId,
        role: "manager",
        raftId,
        listenAddr: `${listen.host}:${listen.port}`,
        advertiseAddr: `${advertise.ip}:${advertise.port}`,
        dataPathAddr,
        dataPathPort,
        managers: [],
      };
      try {
        await this.root.saveCertificates(this.certs);
        await this.root.saveState(this.state);
        await this.startManager(true);
        const m = this.manager!;
        await waitFor(() => m.isLeader, 10_000, "this node to become the leader of the new swarm");
        const now = new Date().toISOString();
        const info: ClusterInfo = {
          ID: clusterId,
          Version: { Index: 0 },
          CreatedAt: now,
          UpdatedAt: now,
          Spec: spec,
          TLSInfo: tlsInfo(ca.certPem),
          RootRotationInProgress: false,
          DefaultAddrPool: pool,
          SubnetSize: subnetSize,
          DataPathPort: dataPathPort,
        };
        await m.write({
          op: "cluster.create",
          info,
          secrets: {
            rootCACertPem: ca.certPem,
            rootCAKeyPem: ca.keyPem,
            workerToken: generateJoinToken(ca.certPem),
            managerToken: generateJoinToken(ca.certPem),
            ...(autolock ? { unlockKey: formatUnlockKey(generateKek()) } : {}),
          },
        });
        await m.write({
          op: "network.create",
          id: newNetworkId(),
          spec: {
            name: "ingress",
            driver: "overlay",
            internal: false,
            attachable: false,
            ingress: true,
            options: {},
            labels: {},
          },
        });
        const node = newNodeObject(nodeId, "manager", req.availability, this.opts.hostname, advertise.ip);
        node.Description = this.description();
        await m.write({ op: "node.create", node, role: "manager" });
        await m.write({ op: "member.add", member: { raftId, nodeId, addr: this.state.advertiseAddr } });
        this.state.managers = [{ nodeId, addr: this.state.advertiseAddr }];
        await this.root.saveState(this.state);
        this.startAgent();
        this.scheduleRenewal();
        this.log.info({ node: nodeId, cluster: clusterId }, "swarm initialized");
        return nodeId;
      } catch (e) {
        await this.abandon();
        throw e;
      }
    });
  }

  /** Undo a failed init or join: nothing half-done stays behind. */
  private async abandon(): Promise<void> {
    this.clearManagerError();
    this.desiredRole = undefined;
    await this.agent?.stop().catch(() => {});
    this.agent = undefined;
    await this.stopManager().catch(() => {});
    this.state = undefined;
    this.certs = undefined;
    await this.root.wipe();
  }

  private async forceNew(): Promise<string> {
    const s = this.state!;
    this.log.warn({}, "forcing a new cluster from this manager's state");
    await this.agent?.stop();
    this.agent = undefined;
    await this.stopManager();
    await forceNewCluster(() => this.root.openRaftStorage(), s.raftId!, this.log);
    s.managers = [{ nodeId: s.nodeId, addr: s.advertiseAddr }];
    await this.root.saveState(s);
    await this.startManager(false);
    const m = this.manager!;
    await waitFor(() => m.isLeader, 10_000, "this node to become the leader of the new cluster");
    this.startAgent();
    return s.nodeId;
  }

  swarmJoin(req: SwarmJoin): Promise<void> {
    return this.serial(async () => {
      if (this.state) throw alreadyInSwarm();
      if (!req.joinToken) throw badRequest("invalid join token");
      let parsed: ReturnType<typeof parseJoinToken>;
      try {
        parsed = parseJoinToken(req.joinToken);
      } catch {
        throw badRequest("invalid join token");
      }
      const remotes = req.remoteAddrs;
      if (remotes.length === 0) throw badRequest("at least 1 RemoteAddr is required to join");
      const remote = withPort(remotes[0]!, 2377);
      const listen = parseListenAddr(req.listenAddr);
      // Only a manager listens; a worker keeps the address for a later promotion. Whether it can be bound
      // goes with the certificate request: the managers refuse a manager token then, creating nothing.
      const listenError = await listenAddrError(`${listen.host}:${listen.port}`);

      // 1. The root CA, unverified, checked against the token's digest.
      const anon = new CAClient(remote, insecureClientCredentials(), CHANNEL_OPTIONS);
      let rootPem: string;
      try {
        rootPem = (await unary(anon.getRootCaCertificate.bind(anon), {}, 5000)).certificatePem;
      } catch (e) {
        throw unavailable(`could not reach the manager at ${remote}: ${toApiError(e).message}`);
      } finally {
        anon.close();
      }
      if (!tokenMatchesRoot(parsed, rootPem)) {
        throw badRequest(
          `remote CA does not match fingerprint. Expected: ${parsed.digest}, got ${rootDigest(rootPem)}. Check the join token and the manager address.`,
        );
      }
      // 2. A certificate, for the token.
      const advertise = resolveAdvertiseAddr(req.advertiseAddr, listen, remote);
      const { keyPem, csrPem } = await generateNodeKeyAndCSR();
      const verified = new CAClient(remote, clientCredentials(rootPem), CHANNEL_OPTIONS);
      let issued: { nodeId: string; certificatePem: string; role: string; clusterId: string; dataPathPort: number };
      try {
        issued = await unary(
          verified.issueNodeCertificate.bind(verified),
          {
            csrPem,
            token: req.joinToken,
            availability: req.availability,
            hostname: this.opts.hostname,
            advertiseAddr: `${advertise.ip}:${advertise.port}`,
            listenAddrError: listenError?.message ?? "",
          },
          15_000,
        );
      } catch (e) {
        throw toApiError(e);
      } finally {
        verified.close();
      }
      const role = issued.role as NodeRole;
      this.certs = { rootPem, certPem: issued.certificatePem, keyPem };
      this.state = {
        version: 1,
        nodeId: issued.nodeId,
        clusterId: issued.clusterId,
        role,
        listenAddr: `${listen.host}:${listen.port}`,
        advertiseAddr: `${advertise.ip}:${advertise.port}`,
        dataPathAddr: req.dataPathAddr || advertise.ip,
        ...(issued.dataPathPort ? { dataPathPort: issued.dataPathPort } : {}),
        managers: [{ nodeId: "", addr: remote }],
      };
      try {
        await this.root.saveCertificates(this.certs);
        if (role === "manager") {
          // Again, just before joining Raft: a member must not be added for a manager that cannot listen.
          const busy = await listenAddrError(this.state.listenAddr);
          if (busy) throw busy;
          const joined = await this.joinRaft(remote);
          this.state.raftId = joined.raftId;
          this.state.raftPeers = joined.members;
          await this.root.saveState(this.state);
          await this.startManager(false, joined.members);
          const m = this.manager!;
          await waitFor(
            () => m.store.cluster() !== undefined,
            JOIN_TIMEOUT_MS,
            "the new manager to catch up with the swarm",
          );
        } else {
          await this.root.saveState(this.state);
        }
        this.startAgent();
        await waitFor(() => this.agent?.connectedTo !== undefined, JOIN_TIMEOUT_MS, "a session with the managers");
        this.scheduleRenewal();
        this.log.info({ node: issued.nodeId, role }, "joined the swarm");
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
        const { voters, reachable } = m.quorumView();
        if (!force) {
          // Like dockerd: a manager never leaves without --force; the words depend on what it would cost.
          let msg = "You are attempting to leave the swarm on a node that is participating as a manager. ";
          if (voters.length <= 1) {
            throw unavailable(
              `${msg}Removing the last manager erases all current state of the swarm. Use \`--force\` to ignore this message.`,
            );
          }
          if (m.removalLosesQuorum(m.raftId)) {
            msg += `Removing this node leaves ${reachable.length - 1} managers out of ${voters.length}. Without a Raft quorum your swarm will be inaccessible. `;
          }
          throw unavailable(
            `${msg}The only way to restore a swarm that has lost consensus is to reinitialize it with \`--force-new-cluster\`. Use \`--force\` to suppress this message.`,
          );
        }
        if (voters.length > 1)
          await this.leaveRaft(m).catch((e: unknown) =>
            this.log.warn({ err: e }, "could not leave the raft group cleanly"),
          );
      }
      await this.agent?.stop();
      this.agent = undefined;
      await this.stopManager();
      this.clearManagerError();
      this.desiredRole = undefined;
      if (this.renewTimer) clearTimeout(this.renewTimer);
      this.state = undefined;
      this.certs = undefined;
      await this.root.wipe();
      this.log.info({}, "left the swarm");
    });
  }

  private async leaveRaft(m: Manager): Promise<void> {
    if (m.isLeader) {
      m.transferLeadershipAway();
      await waitFor(() => !m.isLeader && m.leaderAddr() !== undefined, 5000, "leadership to move to another manager");
    }
    let target = m.leaderAddr();
    for (let attempt = 0; attempt < 10 && target; attempt++) {
      const client = new RaftMembershipClient(target, this.credentials(), CHANNEL_OPTIONS);
      try {
        await unary(client.leave.bind(client), { nodeId: this.state!.nodeId }, 10_000);
        return;
      } catch (e) {
        target = leaderHint(e) ?? target;
        await new Promise((r) => setTimeout(r, 200));
      } finally {
        client.close();
      }
    }
  }
}

// ------------------------------------------------------------------ addresses

interface ListenAddr {
  host: string;
  port: number;
}

export function parseListenAddr(a: string | undefined): ListenAddr {
  const text = a && a.length > 0 ? a : "0.0.0.0:2377";
  const [host, portText] = text.includes(":") ? splitHostPort(text) : [text, "2377"];
  const port = Number(portText);
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw badRequest(`invalid listen address ${text}: bad port`);
  if (!isIPv4(host)) throw badRequest(`invalid listen address ${text}: shoal listens on an IPv4 address`);
  return { host, port };
}

/**
 * The address other nodes reach this one at: an IP, IP:port, or an interface name. Without one, the
 * listen address if it is specific, else the only non-loopback IPv4 address, else the address this host
 * uses to reach `remote`; with several candidates, the error Docker gives.
 */
export function resolveAdvertiseAddr(
  given: string | undefined,
  listen: ListenAddr,
  remote?: string,
): { ip: string; port: number } {
  if (given && given.length > 0) {
    const [h, p] = given.includes(":") ? splitHostPort(given) : [given, String(listen.port)];
    const port = Number(p);
    if (isIPv4(h)) return { ip: h, port };
    const iface = networkInterfaces()[h];
    const v4 = iface?.find((x) => x.family === "IPv4");
    if (!v4)
      throw badRequest(
        `advertise address must be a non-zero IP address or network interface (with optional port number)`,
      );
    return { ip: v4.address, port };
  }
  if (listen.host !== "0.0.0.0") return { ip: listen.host, port: listen.port };
  if (remote) {
    const [rh] = splitHostPort(remote);
    if (rh.startsWith("127.")) return { ip: "127.0.0.1", port: listen.port };
  }
  const cands: { name: string; ip: string }[] = [];
  for (const [name, addrs] of Object.entries(networkInterfaces())) {
    for (const a of addrs ?? []) if (a.family === "IPv4" && !a.internal) cands.push({ name, ip: a.address });
  }
  if (cands.length === 1) return { ip: cands[0]!.ip, port: listen.port };
  if (cands.length === 0)
    throw badRequest("could not find the system's IP address - specify one with --advertise-addr");
  throw badRequest(
    `could not choose an IP address to advertise since this system has multiple addresses on different interfaces (${cands
      .map((c) => `${c.ip} on ${c.name}`)
      .join(" and ")}) - specify one with --advertise-addr`,
  );
}

/** The interface that holds `ip` in this network namespace (the VXLAN underlay). */
function interfaceOf(ip: string): string {
  for (const [name, addrs] of Object.entries(networkInterfaces())) {
    if (addrs?.some((a) => a.family === "IPv4" && a.address === ip)) return name;
  }
  throw new ApiError(
    500,
    `no interface of this host has the data-path address ${ip} (--data-path-addr / --advertise-addr)`,
  );
}

function withPort(a: string, port: number): string {
  return /:\d+$/.test(a) ? a : `${a}:${port}`;
}

function isIPv4(s: string): boolean {
  const parts = s.split(".");
  return parts.length === 4 && parts.every((p) => /^\d{1,3}$/.test(p) && Number(p) <= 255);
}

function tlsInfo(rootPem: string): ClusterInfo["TLSInfo"] {
  return clusterTLSInfo(rootPem);
}

async function waitFor(pred: () => boolean, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > deadline) throw unavailable(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
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
