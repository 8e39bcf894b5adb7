// The daemon's side of networks: the Engine API's network calls (a manager's go to its control API; a
// worker shows the networks it holds, as the managers last told it), the host's overlay data plane (built
// on first use, reconciled at start), and the agent's Attachments, the NetworkAttacher of this host's
// containers.

import type { Logger } from "pino";
import { Attachments, type RunningEndpoint } from "../agent/attachments.js";
import type { OverlayHost } from "../agent/overlays.js";
import { ApiError, MSG_LOCKED, notManager, unavailable } from "../api/errors.js";
import { type Firewall, probeEsp } from "../dataplane/firewall.js";
import { IpsecDataplane } from "../dataplane/ipsec.js";
import { OverlayDataplane } from "../dataplane/overlay.js";
import type { EndpointSettingsRequest, NetworkBackend, NetworkResource } from "../engine/types.js";
import type { DispatcherClient } from "../gen/cluster.js";
import type { Control } from "../manager/control.js";
import { networkMatches, networkNotFound, presentNetwork, resolveNetworkRef } from "../manager/networks.js";
import type { NetworkSpec } from "../store/store.js";
import { interfaceOf } from "./addresses.js";
import type { LocalState } from "./state.js";

export interface HostNetworksOptions {
  execRoot: string;
  firewall: Firewall;
  logger: Logger;
  /** This node's swarm state now (undefined: not in a swarm), and whether its manager is locked. */
  node: () => { state: LocalState | undefined; locked: boolean };
  /** The control API of the manager this node runs, if it runs one now. */
  control: () => Control | undefined;
  /** The control API, or the error that says why this node has none (worker, locked, not in a swarm). */
  requireControl: () => Control;
  /** The dispatcher client of the agent's established session. */
  session: () => InstanceType<typeof DispatcherClient> | undefined;
  /** The swarm's VXLAN port. */
  dataPathPort: () => number;
}

/** The container runtime's network connect and disconnect. */
export interface ContainerNetworking {
  connect(c: string, net: string, cfg: EndpointSettingsRequest): Promise<void>;
  disconnect(c: string, net: string, force: boolean): Promise<void>;
  /** The endpoints of the containers that run now (after a restart: the adopted ones). */
  runningEndpoints(): RunningEndpoint[];
}

export class HostNetworks implements NetworkBackend {
  /** The one NetworkAttacher of this host's containers, over the agent's session (src/agent/attachments.ts). */
  readonly attacher: Attachments;
  /** The container runtime, once it runs (network connect and disconnect). */
  containers: ContainerNetworking | undefined;
  /**
   * Set once the runtime has recovered the containers of a previous run: only then does this host know all
   * of its containers, and may give back endpoints none of them holds (Attachments.startSweeping).
   */
  containersRecovered = false;
  private host: OverlayHost | undefined;
  private readonly log: Logger;

  constructor(private readonly opts: HostNetworksOptions) {
    this.log = opts.logger;
    this.attacher = new Attachments({
      nodeId: () => opts.node().state?.nodeId ?? "",
      session: opts.session,
      host: () => this.overlayHost(),
      probe: () => probeEsp(undefined, () => opts.firewall.status()),
      firewall: opts.firewall,
      logger: opts.logger,
    });
  }

  /** Daemon shutdown: releases stop being retried, the DNS server and IPsec close. */
  close(): Promise<void> {
    return this.attacher.close(this.host);
  }

  /** The overlay data plane of this host, built on first use (it needs the swarm's data-path address). */
  private overlayHost(): OverlayHost {
    this.host ??= this.buildOverlayHost();
    return this.host;
  }

  private buildOverlayHost(): OverlayHost {
    const { state: s, locked } = this.opts.node();
    if (locked) throw unavailable(MSG_LOCKED);
    if (!s) {
      throw new ApiError(503, 'overlay networks need a swarm: run "shoal swarm init" or "shoal swarm join" first');
    }
    const dataplane = new OverlayDataplane({
      execRoot: this.opts.execRoot,
      underlayDev: interfaceOf(s.dataPathAddr),
      localAddr: s.dataPathAddr,
      dataPathPort: this.opts.dataPathPort(),
      logger: this.log,
    });
    const ipsec = new IpsecDataplane({
      localAddr: s.dataPathAddr,
      firewall: this.opts.firewall,
      port: this.opts.dataPathPort(),
      logger: this.log,
    });
    return { dataplane, ipsec };
  }

  /**
   * After a restart: the containers that kept running keep their networking (the agent's attachments take
   * their endpoints over: overlay namespaces, veths, peers, IPsec, names, gateway); whatever else a previous
   * run left (overlay namespaces, IPsec state) goes.
   */
  async reconcile(): Promise<void> {
    // A locked manager reconciles once it is unlocked (swarmUnlock); its containers run on meanwhile.
    const { state, locked } = this.opts.node();
    if (locked) return;
    if (!state) {
      this.sweepOrphans();
      return;
    }
    // Probe at start (in the background): the log says at once whether encrypted networks can work here.
    void this.attacher.overlays.espSupport();
    const report = await this.attacher.adopt(this.containers?.runningEndpoints() ?? []);
    if (report.deleted.length > 0 || report.removedStale.length > 0) {
      this.log.info(
        { deleted: report.deleted, stale: report.removedStale },
        "removed overlay namespaces left by a previous run",
      );
    }
    if (report.adopted.length > 0 || report.created.length > 0) {
      this.log.info(
        { adopted: report.adopted, rebuilt: report.created },
        "kept the overlay namespaces of containers that run on",
      );
    }
    if (report.errors.length > 0)
      this.log.warn({ errors: report.errors }, "could not reconcile all overlay namespaces");
    this.sweepOrphans();
  }

  private sweepOrphans(): void {
    if (this.containersRecovered) this.attacher.startSweeping();
    else this.log.warn({}, "the containers of a previous run were not recovered: endpoints no container holds stay");
  }

  /** Cluster writes go through a manager's control API: a worker is told where to go. */
  private networkControl(verb: "create" | "remove"): Control {
    if (this.opts.node().state?.role === "worker") {
      throw new ApiError(
        403,
        `Cannot ${verb} a multi-host network from a worker node. Please ${verb} the network from a manager node.`,
      );
    }
    return this.opts.requireControl();
  }

  networkCreate(spec: NetworkSpec): Promise<{ Id: string; Warning: string }> {
    return this.networkControl("create").networkCreate(spec);
  }

  networkRemove(ref: string): Promise<void> {
    return this.networkControl("remove").networkRemove(ref);
  }

  async networkList(filters: Record<string, string[]>): Promise<NetworkResource[]> {
    const control = this.opts.control();
    if (control) return control.networkList(filters);
    return this.heldNetworks().filter((n) => networkMatches(n, filters));
  }

  /** ref: a full id, a name, or a unique id prefix (the manager's resolver, on a worker too). */
  async networkInspect(ref: string): Promise<NetworkResource> {
    let found: NetworkResource | undefined;
    const control = this.opts.control();
    if (control) found = await control.networkInspect(ref);
    else {
      found = resolveNetworkRef(
        this.heldNetworks(),
        ref,
        (n) => n.Id,
        (n) => n.Name,
      );
    }
    if (!found) throw networkNotFound(ref);
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
      info = { ...(await this.attacher.overlays.encryptionInfo(n.Id)) };
    } catch (e) {
      // This host cannot build its overlay side (e.g. its data-path address is on no interface): say so,
      // and still show what the managers know.
      info = { Encrypted: true, Held: false, KeyTags: [], Peers: [], Error: (e as Error).message };
    }
    const r = this.opts.control()?.networkKeyring();
    if (r) {
      info.ClusterKeyTags = r.tags;
      info.ClusterLastRotation = r.lastRotation;
      info.ClusterNextRotation = r.nextRotation;
    }
    return { ...n, Encryption: info };
  }

  networkConnect(ref: string, container: string, cfg: EndpointSettingsRequest): Promise<void> {
    if (!this.containers) throw new ApiError(503, "this daemon runs no containers");
    return this.containers.connect(container, ref, cfg);
  }

  networkDisconnect(ref: string, container: string, force: boolean): Promise<void> {
    if (!this.containers) throw new ApiError(503, "this daemon runs no containers");
    return this.containers.disconnect(container, ref, force);
  }

  /** A worker sees the networks it holds (it has a container on them), as the managers last told it. */
  private heldNetworks(): NetworkResource[] {
    const s = this.opts.node().state;
    if (!s) throw notManager();
    return this.attacher.heldNetworks().map((h) => presentNetwork(h.network, h.endpoints, s.nodeId));
  }
}
