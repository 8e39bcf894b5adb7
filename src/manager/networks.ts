// Overlay networks on the managers: creating and removing them (allocation happens when the store
// applies the entry), attaching standalone containers (any manager serves it), and the per-network
// state pushed to every node that holds the network.

import { randomBytes } from "node:crypto";
import type { ServerUnaryCall, sendUnaryData, UntypedServiceImplementation } from "@grpc/grpc-js";
import { status } from "@grpc/grpc-js";
import { badRequest, notFound } from "../api/errors.js";
import type { NetworkResource } from "../api/views.js";
import { newNodeId } from "../ca/ids.js";
import { encryptedMtu } from "../dataplane/xfrm.js";
import type {
  AttachRequest,
  AttachResponse,
  DetachRequest,
  DetachResponse,
  NetworkState,
  PeerEndpoint,
  RenameRequest,
  RenameResponse,
} from "../gen/cluster.js";
import type { Command, EndpointRecord, NetworkRecord, NetworkSpec, Store } from "../store/store.js";
import { callerOf } from "./acl.js";
import { asGrpc, GrpcError } from "./grpc-util.js";
import { agentView } from "./keymanager.js";

export const MTU_OPTION = "com.docker.network.driver.mtu";
export const ENCRYPTED_OPTION = "encrypted";
export const VXLANID_OPTION = "com.docker.network.driver.overlay.vxlanid_list";

export function isEncrypted(n: NetworkSpec): boolean {
  return n.options[ENCRYPTED_OPTION] !== undefined;
}

/**
 * The MTU of a network's overlay links: 1500 (or the mtu option) less the VXLAN overhead (50), and on
 * encrypted networks less the ESP overhead too (with the 128-bit ICV: 1416 of 1500, so that a full-size
 * packet never fragments; libnetwork's 1424 assumes a 64-bit ICV).
 */
export function overlayMtu(n: NetworkSpec): number {
  const base = n.options[MTU_OPTION] ? Number(n.options[MTU_OPTION]) : 1500;
  return isEncrypted(n) ? encryptedMtu(128, base) : base - 50;
}

/**
 * The one network-reference resolver, with dockerd's rules: an exact id, else an exact name, else a unique
 * id prefix; several networks by that name or id prefix is an error that says so (400), none is undefined.
 */
export function resolveNetworkRef<T>(
  items: readonly T[],
  ref: string,
  idOf: (t: T) => string,
  nameOf: (t: T) => string,
): T | undefined {
  const byId = items.find((n) => idOf(n) === ref);
  if (byId) return byId;
  const byName = items.filter((n) => nameOf(n) === ref);
  if (byName.length === 1) return byName[0];
  if (byName.length > 1) throw badRequest(`network ${ref} is ambiguous (${byName.length} matches found based on name)`);
  const byPrefix = items.filter((n) => idOf(n).startsWith(ref));
  if (byPrefix.length === 1) return byPrefix[0];
  if (byPrefix.length > 1)
    throw badRequest(`network ${ref} is ambiguous (${byPrefix.length} matches found based on ID prefix)`);
  return undefined;
}

/** A network of the store by reference (resolveNetworkRef's rules). */
export function findNetwork(store: Store, ref: string): NetworkRecord | undefined {
  // Resolved over ids and names, and only the network found is copied: copying every network for each
  // lookup made `network inspect` cost the whole store (10,000 networks with labels: 100 MB per lookup).
  const found = resolveNetworkRef(
    store.networkNames(),
    ref,
    (n) => n.id,
    (n) => n.name,
  );
  return found ? store.network(found.id) : undefined;
}

/** A network by reference, or Docker's 404. */
export function requireNetwork(store: Store, ref: string): NetworkRecord {
  const net = findNetwork(store, ref);
  if (!net) throw networkNotFound(ref);
  return net;
}

export const networkNotFound = (ref: string) => notFound(`network ${ref} not found`);

export function newNetworkId(): string {
  return newNodeId();
}

export function newEndpointId(): string {
  return randomBytes(32).toString("hex");
}

/** A network with all its endpoints, for a node that holds it. */
export function networkState(store: Store, networkId: string): NetworkState | undefined {
  const net = store.network(networkId);
  if (!net) return undefined;
  const endpoints: PeerEndpoint[] = store.endpoints(networkId).map((e) => peerOf(store, e));
  return { networkJson: JSON.stringify(net), endpoints };
}

function peerOf(store: Store, e: EndpointRecord): PeerEndpoint {
  const node = store.nodeView(e.nodeId)?.node;
  return {
    endpointId: e.id,
    nodeId: e.nodeId,
    nodeAddr: node?.Status.Addr ?? "",
    ip: e.ip,
    mac: e.mac,
    containerName: e.containerName,
    aliases: e.aliases,
    hostname: node?.Description.Hostname ?? "",
  };
}

/** The networks a node holds (it has an endpoint on them), each with all of its endpoints. */
export function statesForNode(store: Store, nodeId: string): NetworkState[] {
  const ids = new Set(
    store
      .endpoints()
      .filter((e) => e.nodeId === nodeId)
      .map((e) => e.networkId),
  );
  const out: NetworkState[] = [];
  for (const id of [...ids].sort()) {
    const st = networkState(store, id);
    if (st) out.push(st);
  }
  return out;
}

/** The keys a node gets: only if it holds an encrypted network (agentView JSON), else nothing. */
export function networkKeysFor(store: Store, nodeId: string): string {
  const ring = store.nodeNeedsKeys(nodeId) ? store.keyring() : undefined;
  return ring ? JSON.stringify(agentView(ring)) : "";
}

/** What Attach and Detach need of their manager: the store, and writes and reads through Raft. */
export interface AttachmentCluster {
  readonly store: Store;
  write(cmd: Command): Promise<number>;
  readBarrier(): Promise<void>;
}

/** Attach, Detach and Rename, added to the Dispatcher service: any manager serves them (writes go through Raft). */
export function attachmentHandlers(m: AttachmentCluster): UntypedServiceImplementation {
  return {
    attach: (call: ServerUnaryCall<AttachRequest, AttachResponse>, cb: sendUnaryData<AttachResponse>) => {
      void (async () => {
        const peer = callerOf(call);
        if (!peer) throw new GrpcError(status.PERMISSION_DENIED, "Permission denied");
        const req = call.request;
        await m.readBarrier();
        const net = requireNetwork(m.store, req.network);
        const id = newEndpointId();
        await m.write({
          op: "endpoint.create",
          id,
          networkId: net.id,
          nodeId: peer.nodeId,
          containerId: req.containerId,
          containerName: req.containerName,
          aliases: req.aliases,
          ...(req.ip ? { ip: req.ip } : {}),
          standalone: true,
        });
        const ep = m.store.endpoint(id)!;
        return {
          endpointJson: JSON.stringify(ep),
          network: networkState(m.store, net.id)!,
          networkKeysJson: isEncrypted(net.spec) ? networkKeysFor(m.store, peer.nodeId) : "",
        };
      })().then(
        (res) => cb(null, res),
        (e: unknown) => cb(asGrpc(e)),
      );
    },
    detach: (call: ServerUnaryCall<DetachRequest, DetachResponse>, cb: sendUnaryData<DetachResponse>) => {
      void (async () => {
        const peer = callerOf(call);
        const ep = m.store.endpoint(call.request.endpointId);
        if (ep && ep.nodeId !== peer?.nodeId && peer?.effectiveRole !== "manager") {
          throw new GrpcError(status.PERMISSION_DENIED, "Permission denied: the endpoint belongs to another node");
        }
        if (ep) await m.write({ op: "endpoint.remove", id: ep.id });
        return {};
      })().then(
        (res) => cb(null, res),
        (e: unknown) => cb(asGrpc(e)),
      );
    },
    /** A node renames its own container's endpoints (the store refuses another node's). */
    rename: (call: ServerUnaryCall<RenameRequest, RenameResponse>, cb: sendUnaryData<RenameResponse>) => {
      void (async () => {
        const peer = callerOf(call);
        if (!peer) throw new GrpcError(status.PERMISSION_DENIED, "Permission denied");
        const { endpointIds, containerName } = call.request;
        await m.write({ op: "endpoint.rename", ids: endpointIds, nodeId: peer.nodeId, containerName });
        return {};
      })().then(
        (res) => cb(null, res),
        (e: unknown) => cb(asGrpc(e)),
      );
    },
  };
}

/** One endpoint of a network as presentNetwork shows it. */
export interface EndpointRow {
  nodeId: string;
  nodeAddr: string;
  hostname: string;
  endpointId: string;
  containerId: string;
  containerName: string;
  ip: string;
  mac: string;
}

/** Docker's NetworkResource for a network: `Containers` are this host's, `Peers` the hosts holding it. */
export function presentNetwork(net: NetworkRecord, endpoints: EndpointRow[], localNodeId: string): NetworkResource {
  const prefix = net.alloc.subnet.split("/")[1];
  const containers: NetworkResource["Containers"] = {};
  for (const e of endpoints) {
    if (e.nodeId !== localNodeId) continue;
    containers[e.containerId] = {
      Name: e.containerName,
      EndpointID: e.endpointId,
      MacAddress: e.mac,
      IPv4Address: `${e.ip}/${prefix}`,
      IPv6Address: "",
    };
  }
  const peers = new Map<string, { Name: string; IP: string }>();
  for (const e of endpoints) if (e.nodeAddr) peers.set(e.nodeId, { Name: e.hostname || e.nodeId, IP: e.nodeAddr });
  const options: Record<string, string> = { ...net.spec.options, [VXLANID_OPTION]: String(net.alloc.vni) };
  return {
    Name: net.spec.name,
    Id: net.id,
    Created: net.createdAt,
    Scope: "swarm",
    Driver: "overlay",
    EnableIPv4: true,
    EnableIPv6: false,
    IPAM: { Driver: "default", Options: null, Config: [{ Subnet: net.alloc.subnet, Gateway: net.alloc.gateway }] },
    Internal: net.spec.internal,
    Attachable: net.spec.attachable,
    Ingress: net.spec.ingress,
    ConfigFrom: { Network: "" },
    ConfigOnly: false,
    Containers: containers,
    Options: options,
    Labels: net.spec.labels,
    Peers: [...peers.values()].sort((a, b) => a.Name.localeCompare(b.Name)),
  };
}

/** Endpoint rows for presentNetwork, from the store (managers). */
export function endpointRows(store: Store, networkId: string): EndpointRow[] {
  return store.endpoints(networkId).map((e) => {
    const node = store.nodeView(e.nodeId)?.node;
    return {
      nodeId: e.nodeId,
      nodeAddr: node?.Status.Addr ?? "",
      hostname: node?.Description.Hostname ?? "",
      endpointId: e.id,
      containerId: e.containerId,
      containerName: e.containerName,
      ip: e.ip,
      mac: e.mac,
    };
  });
}

/** Docker's network filters: driver, name (substring), id (prefix), label, scope, type. */
export function networkMatches(n: NetworkResource, f: Record<string, string[]>): boolean {
  const any = (vals: string[] | undefined, pred: (v: string) => boolean) =>
    !vals || vals.length === 0 || vals.some(pred);
  return (
    any(f.driver, (v) => v === n.Driver) &&
    any(f.name, (v) => n.Name.includes(v)) &&
    any(f.id, (v) => n.Id.startsWith(v)) &&
    any(f.scope, (v) => v === n.Scope) &&
    any(f.type, (v) => v === "custom" || (v === "builtin" && n.Ingress)) &&
    any(f.label, (v) => {
      const i = v.indexOf("=");
      return i < 0 ? v in n.Labels : n.Labels[v.slice(0, i)] === v.slice(i + 1);
    })
  );
}
