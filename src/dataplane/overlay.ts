// The overlay data plane of one host: builds, adopts and tears down the per-network overlay namespaces
// (`1-<netid[:10]>` under execRoot/netns) that Docker's overlay driver builds, lazily: a namespace exists
// while at least one local endpoint is attached.
//
// Processes per operation (each `ip -batch` is one process; stages separated by "->", "||" = parallel):
//   first attach     unshare+ip(overlay ns: br0, veth) -> ip(host: vxlan0) || ip(container: addr, up)
//                    [-> ip(neigh) || bridge(fdb) when peers were already given]
//   ensureNetwork    unshare+ip(overlay ns: br0) -> ip(host: vxlan0)
//   later attach     ip(overlay ns: veth) -> ip(container: addr, up)
//   detach           ip(overlay ns: del veth)            | last one: ip(del veth, vxlan0) -> umount
//   setPeers         ip -json neigh || bridge -json fdb -> ip -batch || bridge -batch (only if needed)
// The vxlan device is created from the host namespace straight into the overlay namespace, already
// enslaved to br0 (by its pinned ifindex, see BRIDGE_INDEX) and up, so no `link set netns` (slow) and no
// extra overlay-namespace process. Teardown deletes vxlan0 explicitly before unmounting: the kernel
// destroys an unmounted namespace asynchronously, and until then its VNI stays taken.
//
// This file is the public face and the restart reconcile; overlay-base.ts holds the operations on one
// namespace that both use.

import { deleteNetns, listNetns } from "./netns.js";
import { OverlayBase, type SetPeersResult } from "./overlay-base.js";
import {
  type Endpoint,
  type FdbEntry,
  type LinkState,
  type NeighEntry,
  normalizePeers,
  nsNameFor,
  type OverlayNetwork,
  type Peer,
  parseFdb,
  parseLinks,
  parseNeigh,
  type ResolvedNetwork,
  resolveNetwork,
  VXLAN,
  validateEndpoint,
  vethNameFor,
} from "./render.js";

export type { OverlayDataplaneOptions, SetPeersResult } from "./overlay-base.js";

export interface DesiredNetwork {
  net: OverlayNetwork;
  /** Local endpoints. A network with none has no namespace on this host. */
  endpoints: Endpoint[];
  /**
   * Remote endpoints. Undefined: keep the FDB and neighbour entries the namespace has (a restart that
   * adopts running containers, before the managers have said who the peers are now; setPeers corrects them).
   */
  peers?: Peer[];
}

export interface ReconcileReport {
  /** Networks whose existing namespace was kept and corrected. */
  adopted: string[];
  /** Networks whose namespace was built. */
  created: string[];
  /** Namespace names deleted (not desired, or desired with no local endpoint). */
  deleted: string[];
  /** Namespace files that had nothing mounted on them, removed. */
  removedStale: string[];
  errors: { netId?: string; namespace?: string; error: string }[];
}

export interface OverlayInspect {
  netId: string;
  namespace: string;
  path: string;
  present: boolean;
  links: LinkState[];
  /** vxlan0's FDB (own entries and the bridge's entries for the port). */
  fdb: FdbEntry[];
  neigh: NeighEntry[];
}

export interface HostNetwork {
  namespace: string;
  path: string;
  /** Full network ID, when this process knows it. */
  netId?: string;
}

/** A desired network, resolved. */
interface Wanted {
  rnet: ResolvedNetwork;
  d: DesiredNetwork;
}

type NetnsEntry = Awaited<ReturnType<typeof listNetns>>[number];

export class OverlayDataplane extends OverlayBase {
  /** Build (or adopt and correct) the overlay namespace of a network. Idempotent. */
  async ensureNetwork(net: OverlayNetwork): Promise<void> {
    const rnet = resolveNetwork(net);
    await this.withLock(rnet.nsName, () => this.ensureLocked(rnet));
  }

  /** Attach a local endpoint (building the network's namespace on the first one). Idempotent. */
  async attach(net: OverlayNetwork, ep: Endpoint): Promise<void> {
    const rnet = resolveNetwork(net);
    const vep = validateEndpoint(ep);
    await this.withLock(rnet.nsName, () => this.attachLocked(rnet, vep));
  }

  /** Detach a local endpoint; the last one takes the overlay namespace with it. Detaching twice is fine. */
  async detach(net: { id: string }, epId: string): Promise<void> {
    const nsName = nsNameFor(net.id);
    await this.withLock(nsName, () => this.detachLocked(net.id, epId));
  }

  /**
   * Make vxlan0's FDB (MAC -> VTEP) and neighbour table (IP -> MAC) exactly `peers` (remote endpoints),
   * reading back what is there. If the network has no namespace here, the set is kept for when it does.
   */
  async setPeers(netId: string, peers: Peer[]): Promise<SetPeersResult> {
    const want = normalizePeers(peers);
    this.wantedPeers.set(netId, want);
    return this.withLock(nsNameFor(netId), () => this.setPeersLocked(netId, want));
  }

  /**
   * After a restart: adopt the overlay namespaces that are desired (correcting links, addresses,
   * endpoints, and peers unless they are left out), build missing ones, and delete every other `1-*`
   * namespace in execRoot/netns. An adopted namespace keeps its bridge, VXLAN device and the veths of the
   * desired endpoints as they are when they are right (a running container's traffic goes on); veths of
   * other endpoints are deleted.
   */
  async reconcile(desired: Map<string, DesiredNetwork>): Promise<ReconcileReport> {
    const report: ReconcileReport = { adopted: [], created: [], deleted: [], removedStale: [], errors: [] };
    const { byNs, untouchable } = this.resolveDesired(desired, report);
    const onDisk = (await listNetns(this.netnsDir, { probe: this.probe })).filter((e) => e.name.startsWith("1-"));
    const seen = new Set<string>();
    for (const entry of onDisk) {
      seen.add(entry.name);
      if (untouchable.has(entry.name)) continue;
      await this.withLock(entry.name, () => this.reconcileEntry(entry, byNs.get(entry.name), report));
    }
    for (const [nsName, want] of byNs) {
      if (seen.has(nsName) || want.d.endpoints.length === 0) continue;
      await this.withLock(nsName, async () => {
        try {
          await this.buildDesired(want.rnet, want.d, report);
        } catch (err) {
          this.log.error({ err, netId: want.rnet.id }, "reconcile failed to build overlay network");
          report.errors.push({ netId: want.rnet.id, error: (err as Error).message });
        }
      });
    }
    for (const [id, st] of this.nets)
      if (!byNs.has(st.net.nsName) && !untouchable.has(st.net.nsName)) this.nets.delete(id);
    this.log.info(
      {
        adopted: report.adopted.length,
        created: report.created.length,
        deleted: report.deleted.length,
        stale: report.removedStale.length,
        errors: report.errors.length,
      },
      "overlay reconcile done",
    );
    return report;
  }

  /** The desired networks by namespace name, checked; those that cannot be acted on are left untouched. */
  private resolveDesired(
    desired: Map<string, DesiredNetwork>,
    report: ReconcileReport,
  ): { byNs: Map<string, Wanted>; untouchable: Set<string> } {
    const byNs = new Map<string, Wanted>();
    // Namespaces of desired networks we cannot act on (a bad spec): left exactly as they are.
    const untouchable = new Set<string>();
    for (const [netId, d] of desired) {
      try {
        if (d.net.id !== netId) throw new Error(`desired network keyed ${netId} has id ${d.net.id}`);
        const rnet = resolveNetwork(d.net);
        const other = byNs.get(rnet.nsName);
        if (other) throw new Error(`networks ${other.rnet.id} and ${rnet.id} share namespace name ${rnet.nsName}`);
        d.endpoints.forEach(validateEndpoint);
        if (d.peers === undefined) {
          byNs.set(rnet.nsName, { rnet, d: { net: d.net, endpoints: d.endpoints } });
        } else {
          const peers = normalizePeers(d.peers);
          byNs.set(rnet.nsName, { rnet, d: { ...d, peers } });
          this.wantedPeers.set(netId, peers);
        }
      } catch (err) {
        untouchable.add(nsNameFor(netId));
        report.errors.push({ netId, error: (err as Error).message });
      }
    }
    for (const ns of untouchable) byNs.delete(ns);
    return { byNs, untouchable };
  }

  /** Reconcile: one `1-*` namespace found on disk (stale, desired, or to delete). */
  private async reconcileEntry(entry: NetnsEntry, want: Wanted | undefined, report: ReconcileReport): Promise<void> {
    try {
      if (!entry.mounted) {
        await deleteNetns(entry.path, { runner: this.runner, probe: this.probe });
        report.removedStale.push(entry.name);
        if (want && want.d.endpoints.length > 0) {
          await this.buildDesired(want.rnet, want.d, report);
        }
        return;
      }
      if (want && want.d.endpoints.length > 0) {
        await this.adoptDesired(want.rnet, want.d, report);
        report.adopted.push(want.rnet.id);
      } else {
        await this.teardown(entry.path, undefined);
        for (const [id, st] of this.nets) if (st.net.nsName === entry.name) this.nets.delete(id);
        report.deleted.push(entry.name);
      }
    } catch (err) {
      this.log.error({ err, namespace: entry.name }, "reconcile failed for overlay namespace");
      report.errors.push({
        namespace: entry.name,
        error: (err as Error).message,
        ...(want ? { netId: want.rnet.id } : {}),
      });
    }
  }

  /** What is actually in a network's overlay namespace: links (with addresses), vxlan0 FDB and neighbours. */
  async inspect(netId: string): Promise<OverlayInspect> {
    const namespace = nsNameFor(netId);
    const path = this.nsPathFor(netId);
    const empty: OverlayInspect = { netId, namespace, path, present: false, links: [], fdb: [], neigh: [] };
    if ((await this.probe(path)) !== "netns") return empty;
    const [links, fdb, neigh] = await Promise.all([
      this.runIn(path, ["ip", "-json", "-details", "addr", "show"]),
      this.runIn(path, ["bridge", "-json", "fdb", "show", "dev", VXLAN]),
      this.runIn(path, ["ip", "-json", "neigh", "show", "dev", VXLAN]),
    ]);
    return {
      ...empty,
      present: true,
      links: parseLinks(links.stdout),
      fdb: fdb.code === 0 ? parseFdb(fdb.stdout) : [],
      neigh: neigh.code === 0 ? parseNeigh(neigh.stdout) : [],
    };
  }

  /** The overlay namespaces that exist on this host. */
  async hostNetworks(): Promise<HostNetwork[]> {
    const entries = await listNetns(this.netnsDir, { probe: this.probe });
    return entries
      .filter((e) => e.mounted && e.name.startsWith("1-"))
      .map((e) => {
        const st = [...this.nets.values()].find((s) => s.net.nsName === e.name);
        return st ? { namespace: e.name, path: e.path, netId: st.net.id } : { namespace: e.name, path: e.path };
      });
  }

  /** Reconcile: an existing namespace that is desired. */
  private async adoptDesired(rnet: ResolvedNetwork, d: DesiredNetwork, report: ReconcileReport): Promise<void> {
    const eps = d.endpoints.map(validateEndpoint);
    const st = await this.adoptNetwork(rnet, new Set(eps.map((e) => vethNameFor(e.id))));
    const ovlLinks = parseLinks((await this.mustIn(st.nsPath, ["ip", "-json", "link", "show"])).stdout);
    const missing: Endpoint[] = [];
    await Promise.all(
      eps.map(async (ep) => {
        try {
          const ok = await this.adoptEndpoint(st, ep, ovlLinks);
          if (!ok) missing.push(ep);
        } catch (err) {
          report.errors.push({ netId: rnet.id, error: `endpoint ${ep.id}: ${(err as Error).message}` });
        }
      }),
    );
    for (const ep of missing) {
      try {
        await this.addEndpoint(st, ep);
      } catch (err) {
        report.errors.push({ netId: rnet.id, error: `endpoint ${ep.id}: ${(err as Error).message}` });
      }
    }
    if (d.peers !== undefined) await this.setPeersLocked(rnet.id, d.peers);
  }

  /** Reconcile: a desired network with local endpoints and no namespace. */
  private async buildDesired(rnet: ResolvedNetwork, d: DesiredNetwork, report: ReconcileReport): Promise<void> {
    const eps = d.endpoints.map(validateEndpoint);
    this.nets.delete(rnet.id);
    const [first, ...rest] = eps;
    await this.attachLocked(rnet, first!);
    for (const ep of rest) {
      try {
        await this.attachLocked(rnet, ep);
      } catch (err) {
        report.errors.push({ netId: rnet.id, error: `endpoint ${ep.id}: ${(err as Error).message}` });
      }
    }
    report.created.push(rnet.id);
  }
}
