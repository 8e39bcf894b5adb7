// A node's network attachments: the one NetworkAttacher the container runtime uses. A container joins a
// network in one place, over the node's own session with the managers:
//   1. allocate  Attach over the agent's session: a manager records the endpoint (address, MAC) in the store
//   2. admit     an encrypted network only on a host that can encrypt; its keys taken from the answer
//   3. wire      the overlay (overlays.ts): IPsec first on encrypted networks, then the veth, then the peers
//   4. connect   the embedded DNS server in the container's namespace, and the default route through
//                shoal_gwbridge unless the network is internal
// A failure at any step undoes all of them the one way an endpoint leaves (leave()): out of the overlay,
// off DNS and the gateway if it was the container's last, and back to the managers (a release they have
// not acknowledged is retried, never dropped: releases.ts).
// An endpoint the managers hold for this node that no container here has (its Attach answer was lost, or
// the daemon died between the Attach and saving the container) is given back too: see sweep().

import type { Logger } from "pino";
import { ApiError } from "../api/errors.js";
import { EmbeddedDns } from "../dataplane/dns.js";
import type { Firewall } from "../dataplane/firewall.js";
import { GatewayBridge } from "../dataplane/gwbridge.js";
import type { ReconcileReport } from "../dataplane/overlay.js";
import type { EspSupport } from "../dataplane/xfrm.js";
import type { DispatcherClient } from "../gen/cluster.js";
import { toApiError, unary } from "../manager/grpc-util.js";
import type { EndpointRow } from "../manager/networks.js";
import type { AttachedEndpoint, EndpointSettingsRequest, NetworkAttacher } from "../runtime/types.js";
import type { EndpointRecord, NetworkRecord } from "../store/store.js";
import { decodeAttachResponse, type HeldNetwork } from "./messages.js";
import { HostOverlays, type OverlayHost } from "./overlays.js";
import { EndpointReleases } from "./releases.js";

/** The embedded DNS server's address in every container's namespace. */
export const CONTAINER_DNS_ADDRESS = "127.0.0.11";
/** The resolv.conf of a container on overlay networks. */
export const CONTAINER_RESOLV_CONF = `nameserver ${CONTAINER_DNS_ADDRESS}\noptions ndots:0\n`;

const SESSION_WAIT_MS = 10_000;
const ATTACH_TIMEOUT_MS = 15_000;
const DETACH_TIMEOUT_MS = 10_000;
const ORPHAN_GRACE_MS = 5_000;

type Who = { id: string; name: string; netnsPath: string };

/** A running container's endpoint, as the runtime has it after a restart (ContainerRuntime.runningEndpoints). */
export interface RunningEndpoint extends Who {
  endpoint: AttachedEndpoint;
}

export interface AttachmentsOptions {
  nodeId: () => string;
  /** The dispatcher client of this node's established session with the managers; undefined while none. */
  session: () => InstanceType<typeof DispatcherClient> | undefined;
  /** The overlay data plane, built on first use; throws a clear ApiError while the host cannot have one. */
  host: () => OverlayHost;
  /** Whether this host can encrypt (ESP + a firewall for the guard), probed once. */
  probe: () => Promise<EspSupport>;
  /** The packet filter the gateway bridge's NAT goes into. */
  firewall: Firewall;
  logger: Logger;
  /** How long an attach waits for a session to be established (default 10 s). */
  sessionWaitMs?: number;
  /** The DNS server for containers' names (default: the embedded one, made on first use). */
  dns?: ContainerDns;
  /**
   * How long an endpoint of this node that no container here holds is left (seen at two sweeps this far
   * apart, with no attach under way at either) before it is given back to the managers (default 5 s).
   */
  orphanGraceMs?: number;
}

/** What the attachments need of the embedded DNS server (src/dataplane/dns.ts). */
export type ContainerDns = Pick<EmbeddedDns, "addContainer" | "removeContainer" | "close">;

export class Attachments implements NetworkAttacher {
  readonly overlays: HostOverlays;
  private readonly releases: EndpointReleases;
  private readonly log: Logger;
  private dns: ContainerDns | undefined;
  private gatewayBridge: GatewayBridge | undefined;
  /** Set once the start-up adoption is done: from then on every endpoint of this node is known here. */
  private sweeping = false;
  private closed = false;
  /** Attaches under way: the managers may push an endpoint before its Attach answer arrives. */
  private attaching = 0;
  /** Endpoints on their way out (leave()), whose releases are being sent. */
  private readonly leaving = new Set<string>();
  /** This node's endpoints that no container here held at the last sweep. */
  private suspects = new Set<string>();
  private sweepTimer: NodeJS.Timeout | undefined;

  constructor(private readonly opts: AttachmentsOptions) {
    this.log = opts.logger.child({ component: "networking" });
    this.overlays = new HostOverlays({ nodeId: opts.nodeId, host: opts.host, probe: opts.probe, log: this.log });
    this.releases = new EndpointReleases((id) => this.sendRelease(id), this.log);
    this.dns = opts.dns;
  }

  async attach(
    container: Who & { ifname: string },
    networkRef: string,
    cfg: EndpointSettingsRequest,
  ): Promise<AttachedEndpoint> {
    // Outside a swarm there are no networks to attach to, as dockerd says of one it does not know.
    if (this.opts.nodeId() === "") throw new ApiError(404, `network ${networkRef} not found`);
    this.attaching++;
    try {
      return await this.attachNow(container, networkRef, cfg);
    } finally {
      this.attaching--;
    }
  }

  private async attachNow(container: Who & { ifname: string }, networkRef: string, cfg: EndpointSettingsRequest) {
    const answer = await this.allocate(container, networkRef, cfg);
    const net = answer.network.network;
    const attached = attachedOf(net, answer.endpoint, container.ifname);
    try {
      await this.overlays.admit(net, answer.networkKeysJson);
      await this.overlays
        .wire({ attached, container, network: net }, answer.network)
        .catch((e: unknown) => Promise.reject(failure(e, `could not attach to network ${net.spec.name}`)));
      await this.connectHost(container, net).catch((e: unknown) =>
        Promise.reject(failure(e, `could not connect container ${container.name} to ${net.spec.name}`)),
      );
    } catch (e) {
      await this.leave(container, attached).catch((err: unknown) =>
        this.log.warn(
          { err, endpoint: attached.endpointId },
          "could not undo all of a failed attach: the next start's reconcile removes what the kernel keeps",
        ),
      );
      throw e;
    }
    this.log.info({ network: net.spec.name, container: container.name, ip: attached.ip }, "container attached");
    return attached;
  }

  async rename(container: { id: string; name: string }, endpoints: AttachedEndpoint[], newName: string): Promise<void> {
    const client = await this.client(this.opts.sessionWaitMs ?? SESSION_WAIT_MS);
    const req = { endpointIds: endpoints.map((e) => e.endpointId), containerName: newName };
    try {
      await unary(client.rename.bind(client), req, ATTACH_TIMEOUT_MS);
    } catch (e) {
      throw toApiError(e);
    }
    this.log.info({ container: container.id, from: container.name, to: newName }, "container's endpoints renamed");
  }

  async detach(container: Who, endpoint: AttachedEndpoint): Promise<void> {
    await this.leave(container, endpoint);
    this.log.info({ network: endpoint.networkName, container: container.name }, "container detached");
  }

  /** An endpoint whose wiring was saved, allocated to this node (as it is now). */
  adoptable(endpoint: AttachedEndpoint): boolean {
    const w = endpoint.wiring;
    return w !== undefined && w.nodeId === this.opts.nodeId() && w.network.id === endpoint.networkId;
  }

  /**
   * Start-up (HostNetworks.reconcile): take over the endpoints of the containers that kept running through
   * the daemon's restart (ContainerRuntime.runningEndpoints) - overlay, IPsec, names, gateway - and remove
   * what a previous run left for any other. Returns the overlay reconcile's report.
   */
  async adopt(running: RunningEndpoint[]): Promise<ReconcileReport> {
    const eps = running.filter((r) => this.adoptable(r.endpoint));
    const report = await this.overlays.adopt(
      eps.map((r) => ({
        attached: r.endpoint,
        container: { id: r.id, name: r.name, netnsPath: r.netnsPath, ifname: r.endpoint.wiring!.ifname },
        network: r.endpoint.wiring!.network,
      })),
    );
    const containers = new Map<string, { who: Who; external: boolean }>();
    for (const r of eps) {
      const c = containers.get(r.id) ?? { who: { id: r.id, name: r.name, netnsPath: r.netnsPath }, external: false };
      if (!r.endpoint.wiring!.network.spec.internal) c.external = true;
      containers.set(r.id, c);
    }
    for (const { who, external } of containers.values()) {
      try {
        this.dns ??= new EmbeddedDns({ lookup: (id, name) => this.lookupName(id, name), logger: this.log });
        await this.dns.addContainer(who.id, who.netnsPath);
        if (external) await this.gateway().adopt(who.id, who.netnsPath);
        this.log.info({ container: who.name }, "container's networking adopted");
      } catch (e) {
        this.log.warn({ err: e, container: who.name }, "could not take over all of a running container's networking");
      }
    }
    return report;
  }

  /**
   * From now on, endpoints the managers hold for this node that no container here has are given back. Called
   * once the containers that ran on through a restart are adopted (or there were none to adopt).
   */
  startSweeping(): void {
    this.sweeping = true;
    this.scheduleSweep();
  }

  private scheduleSweep(): void {
    if (!this.sweeping || this.closed || this.sweepTimer) return;
    this.sweepTimer = setTimeout(() => {
      this.sweepTimer = undefined;
      this.sweep();
    }, this.opts.orphanGraceMs ?? ORPHAN_GRACE_MS);
    this.sweepTimer.unref();
  }

  /**
   * Endpoints of this node, as the managers last pushed them, that no local container holds. One seen so at
   * two sweeps in a row, with no attach under way at either, is an orphan: its Attach answer was lost (a
   * timeout, a leader change), or the daemon died between the Attach and saving the container. Its address
   * would stay allocated for good; it is given back (retried until the managers take it).
   */
  private sweep(): void {
    if (this.closed) return;
    // An attach's endpoint may be pushed before its answer arrives: look again once none is under way.
    if (this.attaching > 0) {
      this.scheduleSweep();
      return;
    }
    const self = this.opts.nodeId();
    const orphans = new Set<string>();
    for (const st of this.overlays.states.values()) {
      for (const e of st.endpoints) {
        const id = e.endpointId;
        if (e.nodeId !== self || this.overlays.localEndpoint(id) || this.leaving.has(id)) continue;
        if (!this.releases.isPending(id)) orphans.add(id);
      }
    }
    const next = new Set<string>();
    for (const id of orphans) {
      if (!this.suspects.has(id)) {
        next.add(id);
        continue;
      }
      this.log.warn(
        { endpoint: id },
        "giving back an endpoint the managers hold for this node that no container here has (an attach whose answer was lost, or a daemon that stopped in the middle of one)",
      );
      void this.releases.release(id);
    }
    this.suspects = next;
    if (next.size > 0) this.scheduleSweep();
  }

  resolvConf(): string {
    return CONTAINER_RESOLV_CONF;
  }

  /** The networks this host holds, each with its endpoints (a local one with its container's id). */
  heldNetworks(): { network: NetworkRecord; endpoints: EndpointRow[] }[] {
    return [...this.overlays.states.values()].map((st) => ({
      network: st.network,
      endpoints: st.endpoints.map((e) => ({
        nodeId: e.nodeId,
        nodeAddr: e.nodeAddr,
        hostname: e.hostname,
        endpointId: e.endpointId,
        containerId: this.overlays.localEndpoint(e.endpointId)?.container.id ?? e.endpointId,
        containerName: e.containerName,
        ip: e.ip,
        mac: e.mac,
      })),
    }));
  }

  /** The managers pushed the networks this host holds: bring the data plane in line. */
  onSessionNetworks(states: HeldNetwork[]): void {
    this.overlays
      .onSessionNetworks(states)
      .catch((e: unknown) => this.log.warn({ err: e }, "could not program the overlay from the managers' update"))
      .finally(() => this.scheduleSweep());
  }

  onSessionKeys(json: string): void {
    this.overlays.onSessionKeys(json);
  }

  /** Stop retrying releases and close the DNS server (daemon shutdown). */
  async close(host: OverlayHost | undefined): Promise<void> {
    this.closed = true;
    if (this.sweepTimer) clearTimeout(this.sweepTimer);
    this.sweepTimer = undefined;
    this.releases.close();
    this.overlays.close(host);
    await this.dns
      ?.close()
      .catch((e: unknown) => this.log.warn({ err: e }, "could not close the embedded DNS server's sockets"));
  }

  /** The addresses a container can resolve `name` to: containers on its networks, by name or alias. */
  lookupName(containerId: string, name: string): string[] {
    const n = name.toLowerCase();
    const out = new Set<string>();
    for (const l of this.overlays.localEndpoints()) {
      if (l.container.id !== containerId) continue;
      const netName = l.attached.networkName.toLowerCase();
      for (const e of this.overlays.states.get(l.attached.networkId)?.endpoints ?? []) {
        const names = [e.containerName, ...e.aliases].map((x) => x.toLowerCase());
        if (names.includes(n) || names.some((x) => `${x}.${netName}` === n)) out.add(e.ip);
      }
    }
    return [...out];
  }

  /** Step 1: the managers record the endpoint; what they answer is checked before anything uses it. */
  private async allocate(container: Who, networkRef: string, cfg: EndpointSettingsRequest) {
    const client = await this.client(this.opts.sessionWaitMs ?? SESSION_WAIT_MS);
    const req = {
      network: networkRef,
      containerId: container.id,
      containerName: container.name,
      aliases: cfg.Aliases ?? [],
      ip: cfg.IPAMConfig?.IPv4Address ?? "",
    };
    let res: Awaited<ReturnType<typeof unaryAttach>>;
    try {
      res = await unaryAttach(client, req);
    } catch (e) {
      throw toApiError(e);
    }
    try {
      return decodeAttachResponse(res);
    } catch (e) {
      throw new ApiError(500, `could not attach to ${networkRef}: ${e instanceof Error ? e.message : String(e)}`);
    }
  }

  /** Step 4: DNS, and external access through shoal_gwbridge unless the network is internal. */
  private async connectHost(container: Who, net: NetworkRecord): Promise<void> {
    this.dns ??= new EmbeddedDns({ lookup: (id, name) => this.lookupName(id, name), logger: this.log });
    await this.dns.addContainer(container.id, container.netnsPath);
    if (!net.spec.internal) await this.gateway().attach(container.id, container.netnsPath);
  }

  private gateway(): GatewayBridge {
    this.gatewayBridge ??= new GatewayBridge({ logger: this.log, firewall: this.opts.firewall });
    return this.gatewayBridge;
  }

  /** The one way an endpoint leaves (a detach, or the undoing of a failed attach). */
  private async leave(container: Who, endpoint: AttachedEndpoint): Promise<void> {
    this.leaving.add(endpoint.endpointId);
    try {
      await this.overlays.unwire(endpoint);
    } finally {
      try {
        const left = this.overlays.localEndpoints().filter((l) => l.container.id === container.id);
        if (!left.some((l) => !l.network.spec.internal)) await this.gatewayBridge?.detach(container.id);
        if (left.length === 0) await this.dns?.removeContainer(container.id);
      } finally {
        // Even if the kernel side failed: the address goes back to the managers (retried until they take it).
        await this.releases.release(endpoint.endpointId);
        this.leaving.delete(endpoint.endpointId);
      }
    }
  }

  /** The session's client, waiting up to `waitMs` for one to be established. */
  private async client(waitMs: number): Promise<InstanceType<typeof DispatcherClient>> {
    const deadline = Date.now() + waitMs;
    for (;;) {
      const c = this.opts.session();
      if (c) return c;
      if (Date.now() >= deadline)
        throw new ApiError(503, "this node has no session with a manager yet; try again in a moment");
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  private async sendRelease(endpointId: string): Promise<void> {
    const client = await this.client(0);
    await unary(client.detach.bind(client), { endpointId }, DETACH_TIMEOUT_MS);
  }
}

function attachedOf(net: NetworkRecord, ep: EndpointRecord, ifname: string): AttachedEndpoint {
  return {
    wiring: { nodeId: ep.nodeId, ifname, network: net },
    networkId: net.id,
    networkName: net.spec.name,
    endpointId: ep.id,
    ip: ep.ip,
    prefixLen: Number(net.alloc.subnet.split("/")[1]),
    mac: ep.mac,
    gateway: net.alloc.gateway,
    aliases: ep.aliases,
  };
}

/** An ApiError as it is; anything else as a 500 that says what was being done. */
function failure(e: unknown, doing: string): ApiError {
  return e instanceof ApiError ? e : new ApiError(500, `${doing}: ${e instanceof Error ? e.message : String(e)}`);
}

function unaryAttach(
  client: InstanceType<typeof DispatcherClient>,
  req: { network: string; containerId: string; containerName: string; aliases: string[]; ip: string },
) {
  return unary(client.attach.bind(client), req, ATTACH_TIMEOUT_MS);
}
