// A host's side of overlay networks: containers here attach through the managers (which allocate the
// endpoint), the data plane wires them in, and the remote endpoints the managers push down the session
// stream are programmed as FDB and neighbour entries. A host holds a network only while a local container
// is attached to it.
//
// Encrypted networks: the host must first be able to encrypt (probeEsp; otherwise the attach is refused and
// nothing is built or sent). Then, before the container's namespace is wired, the firewall's guard covers the VNI
// and the IPsec states and policies towards every remote host of the network are installed with the keys
// the managers sent (in the Attach answer, then down the session stream at each rotation). IpsecDataplane
// does the ordering; this class says what is wanted whenever endpoints, peers or keys change.

import type { ChannelCredentials } from "@grpc/grpc-js";
import type { Logger } from "pino";
import { CHANNEL_OPTIONS } from "../agent/agent.js";
import { decodeAttachResponse, type HeldNetwork } from "../agent/messages.js";
import { ApiError } from "../api/errors.js";
import { probeEsp } from "../dataplane/firewall.js";
import type { IpsecDataplane, PeerKernelView } from "../dataplane/ipsec.js";
import type { OverlayDataplane } from "../dataplane/overlay.js";
import type { OverlayNetwork, Peer } from "../dataplane/render.js";
import { type EspSupport, encryptionUnsupportedError, type Key } from "../dataplane/xfrm.js";
import type { AttachedEndpoint, EndpointSettingsRequest, NetworkAttacher } from "../engine/types.js";
import { DispatcherClient, type PeerEndpoint } from "../gen/cluster.js";
import { toApiError, unary } from "../manager/grpc-util.js";
import type { AgentKeys } from "../manager/keymanager.js";
import { isEncrypted, overlayMtu } from "../manager/networks.js";
import { Serial } from "../serial.js";
import type { NetworkRecord } from "../store/store.js";

export interface HostNetworkingOptions {
  nodeId: () => string;
  /** The manager to ask (the session's, or this node itself if it is a manager). */
  managerAddr: () => string | undefined;
  credentials: () => ChannelCredentials;
  dataplane: OverlayDataplane;
  /** The IPsec of encrypted networks (same data-path address and port as the data plane). */
  ipsec: IpsecDataplane;
  /** Whether this host can encrypt (ESP + a firewall for the guard); default: probeEsp, once. */
  probe?: () => Promise<EspSupport>;
  logger: Logger;
  /** Called whenever the set of endpoints this host can resolve changes (the DNS server). */
  onNames?: (states: Map<string, HeldNetwork>) => void;
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
  states = new Map<string, HeldNetwork>();
  private readonly log: Logger;
  /** Programming the data plane one network change at a time keeps it in step with the pushes. */
  private readonly chain = new Serial();

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
    let answer: ReturnType<typeof decodeAttachResponse>;
    try {
      answer = decodeAttachResponse(res);
    } catch (e) {
      throw new ApiError(500, `could not attach to ${networkRef}: ${e instanceof Error ? e.message : String(e)}`);
    }
    const ep = answer.endpoint;
    const net = answer.network.network;
    const encrypted = isEncrypted(net.spec);
    if (encrypted) {
      // Never a silent cleartext fallback: a host that cannot encrypt builds nothing and sends nothing.
      const support = await this.espSupport();
      if (!support.supported) {
        await this.releaseEndpoint(ep.id).catch(() => undefined);
        throw new ApiError(500, encryptionUnsupportedError(support.reason, net.spec.name).message);
      }
      if (res.networkKeysJson) this.takeKeys(res.networkKeysJson, false);
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
        // Program what the managers knew at attach time at once; later pushes keep it exact.
        const known = this.states.get(net.id);
        const state = known && known.endpoints.length >= answer.network.endpoints.length ? known : answer.network;
        this.states.set(net.id, state);
        // The guard and the SAs come before the first packet can: the namespace is built after them.
        if (encrypted) await this.syncIpsec(net.id);
        await this.opts.dataplane.attach(overlayOf(net), {
          id: ep.id,
          containerNetns: container.netnsPath,
          ifname: container.ifname,
          ip: ep.ip,
          prefixLen,
          mac: ep.mac,
        });
        this.local.set(ep.id, { attached, container, network: net });
        await this.program(net.id);
      });
    } catch (e) {
      // Give the address back: nothing half-attached stays behind.
      await this.releaseEndpoint(ep.id).catch(() => undefined);
      await this.serialised(async () => {
        if (!this.holds(net.id)) this.states.delete(net.id);
        if (encrypted) await this.syncIpsec();
      }).catch(() => undefined);
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
      try {
        await this.opts.dataplane.detach({ id: endpoint.networkId }, endpoint.endpointId);
      } finally {
        if (!this.holds(endpoint.networkId)) this.states.delete(endpoint.networkId);
        await this.syncIpsec();
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
    this.esp ??= (this.opts.probe ?? probeEsp)().then((r) => {
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
    this.opts.ipsec.close();
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
  onSessionNetworks(states: HeldNetwork[]): void {
    void this.serialised(async () => {
      const seen = new Set<string>();
      for (const st of states) {
        const net = st.network;
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

  /** FDB and neighbour entries for every remote endpoint of a network held here (and its IPsec). */
  private async program(networkId: string): Promise<void> {
    const st = this.states.get(networkId);
    if (!st) return;
    const me = this.opts.nodeId();
    const peers: Peer[] = st.endpoints
      .filter((e: PeerEndpoint) => e.nodeId !== me && e.nodeAddr)
      .map((e: PeerEndpoint) => ({ ip: e.ip, mac: e.mac, vtep: e.nodeAddr }));
    // A new remote host gets its SAs before its FDB entry sends it anything; a host that left loses its
    // FDB entries before its SAs (so nothing is sent towards it in between, only to be dropped).
    const encrypted = this.encryptedHeld().has(networkId);
    if (encrypted) await this.syncIpsec(undefined, true);
    await this.opts.dataplane.setPeers(networkId, peers);
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

  /** The remotes of each encrypted network as last given to IpsecDataplane. */
  private ipsecRemotes = new Map<string, string[]>();

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
    if (networks.length === 0 && this.opts.ipsec.status().guardedVnis.length === 0) return;
    this.ipsecRemotes = next;
    await this.opts.ipsec.sync({ keys: this.keys ? keysOf(this.keys) : undefined, networks });
  }

  /** The keys this host holds from the managers (tags and times only are ever shown or logged). */
  private keys: AgentKeys | undefined;

  keyInfo(): { tags: number[]; primaryTag: number | null; lastRotation: string | null; intervalMs: number | null } {
    const k = this.keys;
    return {
      tags: k ? k.keys.map((x) => x.tag) : [],
      primaryTag: k?.primaryTag ?? null,
      lastRotation: k?.lastRotation ?? null,
      intervalMs: k?.intervalMs ?? null,
    };
  }

  /** The managers pushed this node's keys ("" when it holds no encrypted network): rotate if they changed. */
  onSessionKeys(json: string): void {
    this.takeKeys(json, true);
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
    void this.serialised(() => this.syncIpsec()).catch((e: unknown) =>
      this.log.warn({ err: (e as Error).message }, "could not apply the new overlay encryption keys"),
    );
  }

  /** Remove IPsec states, policies and the guard (nftables and iptables) a previous run left (start-up). */
  resetIpsec(): Promise<void> {
    return this.serialised(() => this.opts.ipsec.reset());
  }

  /**
   * The encryption section of `network inspect` for an encrypted network: key tags and times (never keys),
   * whether this kernel can encrypt, and per remote host whether its SAs are installed, read back from the
   * kernel.
   */
  async encryptionInfo(networkId: string): Promise<EncryptionInfo> {
    const held = this.encryptedHeld().has(networkId);
    const support = await this.espSupport();
    const k = this.keyInfo();
    const remotes = held ? this.remotesOf(networkId) : [];
    const names = new Map((this.states.get(networkId)?.endpoints ?? []).map((e) => [e.nodeAddr, e.hostname]));
    const status = new Map(this.opts.ipsec.status().peers.map((p) => [p.ip, p]));
    let kernel: PeerKernelView[] = [];
    let readError: string | undefined;
    if (held && remotes.length > 0) {
      kernel = await this.opts.ipsec
        // Against the keys IpsecDataplane installed: in the middle of a rotation they are the previous ring.
        .kernelView(remotes, this.opts.ipsec.installedKeys())
        .catch((e: unknown) => {
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

  private serialised<T>(f: () => Promise<T>): Promise<T> {
    return this.chain.run(f);
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

/** Go's time.Duration text for whole milliseconds ("12h0m0s", "1m30s", "2s", "1.5s"). */
export function goDuration(ms: number): string {
  const h = Math.floor(ms / 3_600_000);
  const m = Math.floor((ms % 3_600_000) / 60_000);
  const sec = `${(ms % 60_000) / 1000}s`;
  return h > 0 ? `${h}h${m}m${sec}` : m > 0 ? `${m}m${sec}` : sec;
}

/**
 * What to do with a key push (agentView JSON; "" when the managers see this node holding no encrypted
 * network), given the ring held and whether a local container is on an encrypted network:
 *   take      a different, valid ring that is not older than the one held;
 *   keep      the same ring, or an older one (a new leader that has not applied the latest rotation yet
 *             may push the ring before it; a ring made afresh - a new swarm - has lower tags but a later
 *             rotation time, and is taken), or "" while a container here still uses the keys;
 *   drop      "" and nothing here needs keys: forget them (an attach in flight is not hurt: the push
 *             that follows its endpoint carries the keys again);
 *   malformed not a keyring of 3 keys with 16-byte keys and 4-byte salts, ascending tags.
 */
export function keyPush(
  cur: AgentKeys | undefined,
  json: string,
  holding: boolean,
):
  | { action: "take"; keys: AgentKeys }
  | { action: "keep" }
  | { action: "drop" }
  | { action: "malformed"; why: string } {
  if (json === "") return cur && !holding ? { action: "drop" } : { action: "keep" };
  let next: AgentKeys;
  try {
    next = JSON.parse(json) as AgentKeys;
  } catch {
    return { action: "malformed", why: "not JSON" };
  }
  const why = keyringProblem(next);
  if (why) return { action: "malformed", why };
  if (cur) {
    const newest = (k: AgentKeys) => k.keys.at(-1)!.tag;
    if (newest(next) < newest(cur) && next.lastRotation <= cur.lastRotation) return { action: "keep" };
    if (newest(next) === newest(cur) && next.lastRotation === cur.lastRotation) return { action: "keep" };
  }
  return { action: "take", keys: next };
}

function keyringProblem(k: AgentKeys): string | undefined {
  if (typeof k !== "object" || k === null || !Array.isArray(k.keys)) return "no keys";
  if (k.keys.length !== 3) return `${k.keys.length} keys, not 3`;
  for (const [i, x] of k.keys.entries()) {
    if (!Number.isInteger(x.tag) || x.tag < 0) return "a key without a valid tag";
    if (i > 0 && x.tag <= k.keys[i - 1]!.tag) return "tags not ascending";
    if (typeof x.key !== "string" || Buffer.from(x.key, "base64").length !== 16) return `key ${x.tag} is not 16 bytes`;
    if (typeof x.salt !== "string" || Buffer.from(x.salt, "base64").length !== 4)
      return `salt of key ${x.tag} is not 4 bytes`;
  }
  if (typeof k.lastRotation !== "string") return "no rotation time";
  if (!k.keys.some((x) => x.tag === k.primaryTag)) return "the primary is not in the ring";
  return undefined;
}

/** The keyring as xfrm wants it: ascending, raw bytes. */
export function keysOf(k: AgentKeys): Key[] {
  return [...k.keys]
    .sort((a, b) => a.tag - b.tag)
    .map((x) => ({ tag: x.tag, key: Buffer.from(x.key, "base64"), salt: Buffer.from(x.salt, "base64") }));
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
