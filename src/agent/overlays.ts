// The overlay side of a host's attachments: which networks this host holds (a local container is on
// them), their state as the managers last pushed it, and the data plane kept in line with it: the local
// endpoints' veths, the remote endpoints as FDB and neighbour entries, and on encrypted networks the
// firewall's guard and the IPsec states and policies towards every remote host, with the keys the managers
// sent. A host holds a network only while a local container is attached to it. One change at a time.

import type { Logger } from "pino";
import { ApiError } from "../api/errors.js";
import type { IpsecDataplane, PeerKernelView } from "../dataplane/ipsec.js";
import type { DesiredNetwork, OverlayDataplane, ReconcileReport } from "../dataplane/overlay.js";
import type { OverlayNetwork, Peer } from "../dataplane/render.js";
import { type EspSupport, encryptionUnsupportedError } from "../dataplane/xfrm.js";
import { isEncrypted, overlayMtu } from "../manager/networks.js";
import type { AttachedEndpoint } from "../runtime/types.js";
import { Serial } from "../serial.js";
import type { AgentKeys } from "../store/keyring.js";
import type { NetworkRecord } from "../store/store.js";
import { goDuration, keyInfo, keyPush, keysOf } from "./keys.js";
import type { HeldNetwork } from "./messages.js";

/** The kernel side of the overlays (built once the host's data-path address is known). */
export interface OverlayHost {
  dataplane: OverlayDataplane;
  /** The IPsec of encrypted networks (same data-path address and port as the data plane). */
  ipsec: IpsecDataplane;
}

export interface LocalEndpoint {
  attached: AttachedEndpoint;
  container: { id: string; name: string; netnsPath: string };
  network: NetworkRecord;
}

export interface HostOverlaysOptions {
  nodeId: () => string;
  /** The data plane; throws (a clear ApiError) while the host cannot have one (not in a swarm, locked). */
  host: () => OverlayHost;
  /** Whether this host can encrypt (ESP + a firewall for the guard), probed once. */
  probe: () => Promise<EspSupport>;
  log: Logger;
}

export class HostOverlays {
  /** Endpoints of local containers, by endpoint id. */
  private readonly local = new Map<string, LocalEndpoint>();
  /** The latest state of each network this host holds, as the managers pushed it. */
  readonly states = new Map<string, HeldNetwork>();
  private readonly chain = new Serial();
  private readonly log: Logger;
  private esp: Promise<EspSupport> | undefined;
  /** The keys this host holds from the managers (tags and times only are ever shown or logged). */
  private keys: AgentKeys | undefined;
  /** The remotes of each encrypted network as last given to IpsecDataplane. */
  private ipsecRemotes = new Map<string, string[]>();

  constructor(private readonly opts: HostOverlaysOptions) {
    this.log = opts.log;
  }

  localEndpoints(): LocalEndpoint[] {
    return [...this.local.values()];
  }

  localEndpoint(endpointId: string): LocalEndpoint | undefined {
    return this.local.get(endpointId);
  }

  /** Whether this kernel can do ESP with AES-GCM: probed once, in a scratch namespace. */
  espSupport(): Promise<EspSupport> {
    this.esp ??= this.opts.probe().then((r) => {
      this.log.info(r.supported ? { esp: "supported" } : { esp: "unsupported", reason: r.reason }, "IPsec probe");
      return r;
    });
    return this.esp;
  }

  /** Refuses (building nothing) an encrypted network on a host that cannot encrypt; takes its keys. */
  async admit(net: NetworkRecord, keysJson: string): Promise<void> {
    if (!isEncrypted(net.spec)) return;
    // Never a silent cleartext fallback: a host that cannot encrypt builds nothing and sends nothing.
    const support = await this.espSupport();
    if (!support.supported) throw new ApiError(500, encryptionUnsupportedError(support.reason, net.spec.name).message);
    if (keysJson) this.takeKeys(keysJson, false);
  }

  /**
   * Wire a local endpoint into its network's overlay: the managers' state at attach time is programmed at
   * once (later pushes keep it exact); on an encrypted network the guard and the SAs come before the first
   * packet can (the veth is made after them).
   */
  wire(ep: LocalEndpoint & { container: { ifname: string } }, state: HeldNetwork): Promise<void> {
    const net = ep.network;
    return this.chain.run(async () => {
      const known = this.states.get(net.id);
      this.states.set(net.id, known && known.endpoints.length >= state.endpoints.length ? known : state);
      if (isEncrypted(net.spec)) await this.syncIpsec(net.id);
      await this.opts.host().dataplane.attach(overlayOf(net), {
        id: ep.attached.endpointId,
        containerNetns: ep.container.netnsPath,
        ifname: ep.container.ifname,
        ip: ep.attached.ip,
        prefixLen: ep.attached.prefixLen,
        mac: ep.attached.mac,
      });
      this.local.set(ep.attached.endpointId, { attached: ep.attached, container: ep.container, network: net });
      await this.program(net.id);
    });
  }

  /** Take a local endpoint out of its overlay (the last one takes the namespace and the SAs with it). */
  unwire(endpoint: AttachedEndpoint): Promise<void> {
    return this.chain.run(async () => {
      this.local.delete(endpoint.endpointId);
      try {
        await this.opts.host().dataplane.detach({ id: endpoint.networkId }, endpoint.endpointId);
      } finally {
        if (!this.holds(endpoint.networkId)) this.states.delete(endpoint.networkId);
        await this.syncIpsec();
      }
    });
  }

  /** The managers pushed the networks this host holds: bring the data plane in line. */
  async onSessionNetworks(states: HeldNetwork[]): Promise<void> {
    await this.chain.run(async () => {
      const seen = new Set<string>();
      for (const st of states) {
        seen.add(st.network.id);
        this.states.set(st.network.id, st);
        if (this.holds(st.network.id)) await this.program(st.network.id);
      }
      for (const id of [...this.states.keys()]) if (!seen.has(id) && !this.holds(id)) this.states.delete(id);
    });
  }

  /** The managers pushed this node's keys ("" when it holds no encrypted network): rotate if they changed. */
  onSessionKeys(json: string): void {
    this.takeKeys(json, true);
  }

  /**
   * Start-up: take over the endpoints of containers that kept running through the daemon's restart (from
   * their saved wiring), and remove everything else a previous run left. Their overlay namespaces, veths and
   * peer entries are kept as they are (corrected where wrong; built again where gone) until the managers'
   * next push says who the peers are; every other overlay namespace goes. On encrypted networks the guard
   * keeps covering their VNIs and the previous run's SAs stay until the keys arrive (IpsecDataplane.adopt);
   * with none, IPsec state and the guard are removed.
   */
  adopt(eps: (LocalEndpoint & { container: { ifname: string } })[]): Promise<ReconcileReport> {
    return this.chain.run(async () => {
      const host = this.opts.host();
      const desired = new Map<string, DesiredNetwork>();
      for (const ep of eps) {
        const net = ep.network;
        const d = desired.get(net.id) ?? { net: overlayOf(net), endpoints: [] };
        d.endpoints.push({
          id: ep.attached.endpointId,
          containerNetns: ep.container.netnsPath,
          ifname: ep.container.ifname,
          ip: ep.attached.ip,
          prefixLen: ep.attached.prefixLen,
          mac: ep.attached.mac,
        });
        desired.set(net.id, d);
      }
      const report = await host.dataplane.reconcile(desired);
      for (const ep of eps) {
        this.local.set(ep.attached.endpointId, {
          attached: ep.attached,
          container: { id: ep.container.id, name: ep.container.name, netnsPath: ep.container.netnsPath },
          network: ep.network,
        });
      }
      const vnis = [...this.encryptedHeld().values()].map((n) => n.alloc.vni);
      await host.ipsec
        .adopt(vnis)
        .catch((e: unknown) =>
          this.log.warn({ err: (e as Error).message }, "could not take over the IPsec state a previous run left"),
        );
      // A push that came before (the session started first): programmed now.
      for (const id of desired.keys()) if (this.states.has(id)) await this.program(id);
      if (vnis.length > 0 && this.keys) await this.syncIpsec();
      return report;
    });
  }

  close(host: OverlayHost | undefined): void {
    host?.ipsec.close();
  }

  /** FDB and neighbour entries for every remote endpoint of a network held here (and its IPsec). */
  private async program(networkId: string): Promise<void> {
    const st = this.states.get(networkId);
    if (!st) return;
    const me = this.opts.nodeId();
    const peers: Peer[] = st.endpoints
      .filter((e) => e.nodeId !== me && e.nodeAddr)
      .map((e) => ({ ip: e.ip, mac: e.mac, vtep: e.nodeAddr }));
    // A new remote host gets its SAs before its FDB entry sends it anything; a host that left loses its
    // FDB entries before its SAs (so nothing is sent towards it in between, only to be dropped).
    const encrypted = this.encryptedHeld().has(networkId);
    if (encrypted) await this.syncIpsec(undefined, true);
    await this.opts.host().dataplane.setPeers(networkId, peers);
    if (encrypted) await this.syncIpsec();
  }

  private holds(networkId: string): boolean {
    return [...this.local.values()].some((l) => l.attached.networkId === networkId);
  }

  /** The encrypted networks held here (a local container is attached), by id. */
  private encryptedHeld(): Map<string, NetworkRecord> {
    const out = new Map<string, NetworkRecord>();
    for (const l of this.local.values()) if (isEncrypted(l.network.spec)) out.set(l.network.id, l.network);
    return out;
  }

  /** The remote VTEPs of a network, from the managers' latest state. */
  private remotesOf(networkId: string): string[] {
    const me = this.opts.nodeId();
    const st = this.states.get(networkId);
    return [...new Set((st?.endpoints ?? []).filter((e) => e.nodeId !== me && e.nodeAddr).map((e) => e.nodeAddr))];
  }

  /**
   * Bring IPsec in line with the encrypted networks held here (plus `attaching`, about to be held). With
   * `addOnly`, remotes are added but none removed (the first half of a peer change).
   */
  private async syncIpsec(attaching?: string, addOnly = false): Promise<void> {
    const held = this.encryptedHeld();
    const ids = new Set(held.keys());
    if (attaching) ids.add(attaching);
    const next = new Map<string, string[]>();
    const networks = [...ids].map((id) => {
      const net = held.get(id) ?? this.states.get(id)!.network;
      let remotes = this.remotesOf(id);
      if (addOnly) remotes = [...new Set([...remotes, ...(this.ipsecRemotes.get(id) ?? [])])];
      next.set(id, remotes);
      return { vni: net.alloc.vni, remotes };
    });
    if (addOnly) for (const [id, r] of this.ipsecRemotes) if (!next.has(id)) next.set(id, r);
    const ipsec = this.opts.host().ipsec;
    if (networks.length === 0 && ipsec.status().guardedVnis.length === 0) return;
    this.ipsecRemotes = next;
    await ipsec.sync({ keys: this.keys ? keysOf(this.keys) : undefined, networks });
  }

  private takeKeys(json: string, sync: boolean): void {
    const d = keyPush(this.keys, json, this.encryptedHeld().size > 0);
    if (d.action === "malformed") {
      // Not the parser's message: it may quote the text, which would be key material.
      this.log.warn({ bytes: json.length, why: d.why }, "ignored a malformed key push");
      return;
    }
    if (d.action === "keep") return;
    if (d.action === "drop") {
      this.keys = undefined;
      this.log.info("overlay encryption keys dropped: no encrypted network is held here");
      return;
    }
    this.keys = d.keys;
    this.log.info(
      { tags: d.keys.keys.map((k) => k.tag), primary: d.keys.primaryTag, lastRotation: d.keys.lastRotation },
      "overlay encryption keys received",
    );
    if (!sync) return;
    void this.chain
      .run(() => this.syncIpsec())
      .catch((e: unknown) =>
        this.log.warn({ err: (e as Error).message }, "could not apply the new overlay encryption keys"),
      );
  }

  /**
   * The encryption section of `network inspect` for an encrypted network: key tags and times (never keys),
   * whether this kernel can encrypt, and per remote host whether its SAs are installed, read back from the
   * kernel.
   */
  async encryptionInfo(networkId: string): Promise<EncryptionInfo> {
    const ipsec = this.opts.host().ipsec;
    const held = this.encryptedHeld().has(networkId);
    const support = await this.espSupport();
    const k = keyInfo(this.keys);
    const remotes = held ? this.remotesOf(networkId) : [];
    const names = new Map((this.states.get(networkId)?.endpoints ?? []).map((e) => [e.nodeAddr, e.hostname]));
    const status = new Map(ipsec.status().peers.map((p) => [p.ip, p]));
    let kernel: PeerKernelView[] = [];
    let readError: string | undefined;
    if (held && remotes.length > 0) {
      // Against the keys IpsecDataplane installed: in the middle of a rotation they are the previous ring.
      kernel = await ipsec.kernelView(remotes, ipsec.installedKeys()).catch((e: unknown) => {
        readError = (e as Error).message;
        return [];
      });
    }
    return {
      Encrypted: true,
      Protocol: "IPsec ESP transport, rfc4106(gcm(aes)), AES-128, 128-bit ICV",
      Kernel: support.supported ? "supported" : `unsupported: ${support.reason}`,
      Held: held,
      KeyTags: k.tags,
      PrimaryKeyTag: k.primaryTag,
      LastRotation: k.lastRotation,
      RotationInterval: k.intervalMs === null ? null : goDuration(k.intervalMs),
      Peers: remotes.map((ip) => {
        const v = kernel.find((x) => x.ip === ip);
        const err = readError ?? status.get(ip)?.error;
        return {
          Name: names.get(ip) ?? "",
          IP: ip,
          SAsInstalled: v?.complete ?? false,
          InboundKeyTags: v?.inbound ?? [],
          OutboundKeyTag: v?.outbound ?? null,
          Policy: v?.policy ?? false,
          ...(err && !v?.complete ? { Error: err } : {}),
        };
      }),
    };
  }
}

export interface EncryptionInfo {
  Encrypted: true;
  Protocol: string;
  Kernel: string;
  /** Whether this host holds the network (a local container is attached): only then are SAs installed. */
  Held: boolean;
  KeyTags: number[];
  PrimaryKeyTag: number | null;
  LastRotation: string | null;
  RotationInterval: string | null;
  Peers: {
    Name: string;
    IP: string;
    SAsInstalled: boolean;
    InboundKeyTags: number[];
    OutboundKeyTag: number | null;
    Policy: boolean;
    Error?: string;
  }[];
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
