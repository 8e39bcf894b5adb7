// A host's side of overlay networks: containers here attach through the managers (which allocate the
// endpoint), the data plane wires them in, and the remote endpoints the managers push down the session
// stream are programmed as FDB and neighbour entries. A host holds a network only while a local container
// is attached to it.

import type { ChannelCredentials } from "@grpc/grpc-js";
import type { Logger } from "pino";
import { CHANNEL_OPTIONS } from "../agent/agent.js";
import type { OverlayDataplane } from "../dataplane/overlay.js";
import type { OverlayNetwork, Peer } from "../dataplane/render.js";
import { type EspSupport, encryptionUnsupportedError, probeEsp } from "../dataplane/xfrm.js";
import { ApiError } from "../engine/errors.js";
import type { AttachedEndpoint, EndpointSettingsRequest, NetworkAttacher } from "../engine/types.js";
import { DispatcherClient, type NetworkState, type PeerEndpoint } from "../gen/cluster.js";
import { toApiError, unary } from "../manager/grpc-util.js";
import { isEncrypted, overlayMtu } from "../manager/networks.js";
import type { EndpointRecord, NetworkRecord } from "../store/store.js";

export interface HostNetworkingOptions {
  nodeId: () => string;
  /** The manager to ask (the session's, or this node itself if it is a manager). */
  managerAddr: () => string | undefined;
  credentials: () => ChannelCredentials;
  dataplane: OverlayDataplane;
  logger: Logger;
  /** Called whenever the set of endpoints this host can resolve changes (the DNS server). */
  onNames?: (states: Map<string, NetworkState>) => void;
}

interface LocalEndpoint {
  attached: AttachedEndpoint;
  container: { id: string; name: string; netnsPath: string };
  network: NetworkRecord;
}

const RELEASE_RETRY_MIN_MS = 250;
const RELEASE_RETRY_MAX_MS = 2000;

export class HostNetworking implements NetworkAttacher {
  /** Endpoints of local containers, by endpoint id. */
  private local = new Map<string, LocalEndpoint>();
  /** The latest state of each network this host holds, as the managers pushed it. */
  states = new Map<string, NetworkState>();
  private readonly log: Logger;
  /** Programming the data plane one network change at a time keeps it in step with the pushes. */
  private chain: Promise<void> = Promise.resolve();

  constructor(private readonly opts: HostNetworkingOptions) {
    this.log = opts.logger.child({ component: "networking" });
  }

  private client(): InstanceType<typeof DispatcherClient> {
    const addr = this.opts.managerAddr();
    if (!addr) throw new ApiError(503, "this node has no session with a manager yet; try again in a moment");
    return new DispatcherClient(addr, this.opts.credentials(), CHANNEL_OPTIONS);
  }

  localEndpoints(): LocalEndpoint[] {
    return [...this.local.values()];
  }

  async attach(
    container: { id: string; name: string; netnsPath: string; ifname: string },
    networkRef: string,
    cfg: EndpointSettingsRequest,
  ): Promise<AttachedEndpoint> {
    const client = this.client();
    let res: Awaited<ReturnType<typeof unaryAttach>>;
    try {
      res = await unaryAttach(client, {
        network: networkRef,
        containerId: container.id,
        containerName: container.name,
        aliases: cfg.Aliases ?? [],
        ip: cfg.IPAMConfig?.IPv4Address ?? "",
      });
    } catch (e) {
      throw toApiError(e);
    } finally {
      client.close();
    }
    const ep = JSON.parse(res.endpointJson) as EndpointRecord;
    const net = JSON.parse(res.network!.networkJson) as NetworkRecord;
    if (isEncrypted(net.spec)) {
      // Never a silent cleartext fallback: a host that cannot encrypt builds nothing and sends nothing.
      const support = await this.espSupport();
      if (!support.supported) {
        await this.releaseEndpoint(ep.id).catch(() => undefined);
        throw new ApiError(500, encryptionUnsupportedError(support.reason, net.spec.name).message);
      }
      throw new ApiError(
        501,
        `network ${net.spec.name} is encrypted: this host's kernel can do ESP with AES-GCM, but shoal does not program IPsec for containers yet; the container was not attached`,
      );
    }
    const prefixLen = Number(net.alloc.subnet.split("/")[1]);
    const attached: AttachedEndpoint = {
      networkId: net.id,
      networkName: net.spec.name,
      endpointId: ep.id,
      ip: ep.ip,
      prefixLen,
      mac: ep.mac,
      gateway: net.alloc.gateway,
      aliases: ep.aliases,
    };
    try {
      await this.serialised(async () => {
        await this.opts.dataplane.attach(overlayOf(net), {
          id: ep.id,
          containerNetns: container.netnsPath,
          ifname: container.ifname,
          ip: ep.ip,
          prefixLen,
          mac: ep.mac,
        });
        this.local.set(ep.id, { attached, container, network: net });
        // Program what the managers knew at attach time at once; later pushes keep it exact.
        const known = this.states.get(net.id);
        const state = known && known.endpoints.length >= res.network!.endpoints.length ? known : res.network!;
        this.states.set(net.id, state);
        await this.program(net.id);
      });
    } catch (e) {
      // Give the address back: nothing half-attached stays behind.
      await this.releaseEndpoint(ep.id).catch(() => undefined);
      throw e instanceof ApiError
        ? e
        : new ApiError(500, `could not attach to network ${net.spec.name}: ${(e as Error).message}`);
    }
    this.opts.onNames?.(this.states);
    this.log.info({ network: net.spec.name, container: container.name, ip: ep.ip }, "container attached");
    return attached;
  }

  async detach(container: { id: string; name: string; netnsPath: string }, endpoint: AttachedEndpoint): Promise<void> {
    await this.serialised(async () => {
      this.local.delete(endpoint.endpointId);
      await this.opts.dataplane.detach({ id: endpoint.networkId }, endpoint.endpointId);
      if (![...this.local.values()].some((l) => l.attached.networkId === endpoint.networkId)) {
        this.states.delete(endpoint.networkId);
      }
    });
    await this.releaseEndpoint(endpoint.endpointId).catch((e: unknown) => {
      // A daemon restarting after a crash releases its dead containers' endpoints before it has a session
      // (or before its own manager has a leader): keep trying until the managers take them back.
      this.log.warn(
        { err: (e as Error).message, endpoint: endpoint.endpointId },
        "could not release the endpoint yet; retrying in the background",
      );
      this.pendingRelease.add(endpoint.endpointId);
      this.scheduleRelease(RELEASE_RETRY_MIN_MS);
    });
    this.opts.onNames?.(this.states);
    this.log.info({ network: endpoint.networkName, container: container.name }, "container detached");
  }

  private esp: Promise<EspSupport> | undefined;

  /** Whether this kernel can do ESP with AES-GCM: probed once, in a scratch namespace. */
  espSupport(): Promise<EspSupport> {
    this.esp ??= probeEsp().then((r) => {
      this.log.info(r.supported ? { esp: "supported" } : { esp: "unsupported", reason: r.reason }, "IPsec probe");
      return r;
    });
    return this.esp;
  }

  /** Endpoints whose release the managers have not acknowledged yet. */
  private pendingRelease = new Set<string>();
  private releaseTimer: NodeJS.Timeout | undefined;
  private releaseBackoff = RELEASE_RETRY_MIN_MS;

  private scheduleRelease(ms: number): void {
    if (this.releaseTimer || this.closed) return;
    this.releaseTimer = setTimeout(() => void this.flushReleases(), ms);
    this.releaseTimer.unref();
  }

  private async flushReleases(): Promise<void> {
    this.releaseTimer = undefined;
    for (const id of [...this.pendingRelease]) {
      try {
        await this.releaseEndpoint(id);
        this.pendingRelease.delete(id);
        this.releaseBackoff = RELEASE_RETRY_MIN_MS;
        this.log.info({ endpoint: id }, "released the endpoint");
      } catch {
        this.releaseBackoff = Math.min(RELEASE_RETRY_MAX_MS, this.releaseBackoff * 2);
        this.scheduleRelease(this.releaseBackoff);
        return;
      }
    }
  }

  private closed = false;

  /** Stop retrying releases (daemon shutdown). */
  close(): void {
    this.closed = true;
    if (this.releaseTimer) clearTimeout(this.releaseTimer);
    this.releaseTimer = undefined;
  }

  private async releaseEndpoint(endpointId: string): Promise<void> {
    const client = this.client();
    try {
      await unary(client.detach.bind(client), { endpointId }, 10_000);
    } finally {
      client.close();
    }
  }

  resolvConf(): string {
    return "nameserver 127.0.0.11\noptions ndots:0\n";
  }

  /** The managers pushed the networks this host holds: bring the data plane in line. */
  onSessionNetworks(states: NetworkState[]): void {
    void this.serialised(async () => {
      const seen = new Set<string>();
      for (const st of states) {
        const net = JSON.parse(st.networkJson) as NetworkRecord;
        seen.add(net.id);
        this.states.set(net.id, st);
        if ([...this.local.values()].some((l) => l.attached.networkId === net.id)) await this.program(net.id);
      }
      for (const id of [...this.states.keys()])
        if (!seen.has(id) && ![...this.local.values()].some((l) => l.attached.networkId === id)) this.states.delete(id);
    }).then(
      () => this.opts.onNames?.(this.states),
      (e: unknown) => this.log.warn({ err: e }, "could not program the overlay from the managers' update"),
    );
  }

  /** FDB and neighbour entries for every remote endpoint of a network held here. */
  private async program(networkId: string): Promise<void> {
    const st = this.states.get(networkId);
    if (!st) return;
    const me = this.opts.nodeId();
    const peers: Peer[] = st.endpoints
      .filter((e: PeerEndpoint) => e.nodeId !== me && e.nodeAddr)
      .map((e: PeerEndpoint) => ({ ip: e.ip, mac: e.mac, vtep: e.nodeAddr }));
    await this.opts.dataplane.setPeers(networkId, peers);
  }

  private serialised<T>(f: () => Promise<T>): Promise<T> {
    const run = this.chain.then(f, f);
    this.chain = run.then(
      () => undefined,
      () => undefined,
    );
    return run;
  }
}

export function overlayOf(net: NetworkRecord): OverlayNetwork {
  return {
    id: net.id,
    vni: net.alloc.vni,
    subnet: net.alloc.subnet,
    gateway: net.alloc.gateway,
    mtu: overlayMtu(net.spec),
  };
}

function unaryAttach(
  client: InstanceType<typeof DispatcherClient>,
  req: { network: string; containerId: string; containerName: string; aliases: string[]; ip: string },
) {
  return unary(client.attach.bind(client), req, 15_000);
}
