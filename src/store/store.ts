// The replicated store: the cluster's objects as a deterministic state machine fed by committed Raft
// entries. A write is a command with its own preconditions (an object version, a name that must be
// free...) that every manager checks identically when the entry is applied, so any manager may propose
// (the Raft core forwards proposals to the leader) and the proposer learns the outcome from the apply.
// Object versions are Raft indexes. Watchers see every change, in order, after it is applied.

import { EventEmitter } from "node:events";
import { ApiError } from "../api/errors.js";
import type {
  ClusterInfo,
  ClusterRecord,
  ClusterSecrets,
  EndpointRecord,
  NetworkRecord,
  NetworkSpec,
  Node,
  NodeDescription,
  NodeRecord,
  NodeRole,
  NodeSpec,
  NodeState,
  RaftMember,
  SwarmSpec,
} from "../api/objects.js";
import { nameConflict, networkInUse, notAttachable } from "../manager/allocator/errors.js";
import {
  allocateIp,
  allocateNetwork,
  INGRESS_VNI,
  macFromIp,
  type NetworkAlloc,
  normalizePoolConfig,
  parseVxlanIdList,
  releaseIp,
} from "../manager/allocator/ipam.js";
import { applyKeys, type Keyring, type KeysCommand, type RedactedKeyring, redact } from "../manager/keymanager.js";
import type { NodeId } from "../raft/types.js";
import { applyCAChange, applyRootRotation, type CAChange, type CACommand, markCertRenew } from "./ca.js";

export type {
  ClusterRecord,
  ClusterSecrets,
  EndpointRecord,
  NetworkRecord,
  NetworkSpec,
  NodeRecord,
  RaftMember,
} from "../api/objects.js";

export type Command =
  | { op: "cluster.create"; info: ClusterInfo; secrets: ClusterSecrets }
  | ({
      op: "cluster.update";
      version: number;
      spec: SwarmSpec;
      workerToken?: string;
      managerToken?: string;
      /** A new unlock key (autolock turned on, or its key rotated); autolock off removes the key. */
      unlockKey?: string;
    } & CAChange)
  | { op: "node.create"; node: Node; role: NodeRole }
  | { op: "node.update"; id: string; version: number; spec: NodeSpec }
  | { op: "node.status"; id: string; state: NodeState; addr?: string; message?: string }
  | { op: "node.describe"; id: string; description: NodeDescription }
  | { op: "node.role"; id: string; role: NodeRole }
  | { op: "node.remove"; id: string }
  | { op: "network.create"; id: string; spec: NetworkSpec }
  | { op: "network.remove"; id: string }
  | {
      op: "endpoint.create";
      id: string;
      networkId: string;
      nodeId: string;
      containerId: string;
      containerName: string;
      aliases: string[];
      /** --ip */
      ip?: string;
      /** A container outside a service: the network must be attachable. */
      standalone: boolean;
    }
  | { op: "endpoint.remove"; id: string }
  | { op: "member.add"; member: RaftMember }
  | { op: "member.remove"; raftId: NodeId }
  | KeysCommand
  | CACommand;

/** The outcome of applying a command, returned to whoever proposed it. */
export type Outcome = { ok: true; version: number } | { ok: false; status: number; message: string };

export type StoreEvent =
  | { kind: "cluster"; cluster: ClusterRecord }
  | { kind: "node"; action: "create" | "update" | "remove"; node: NodeRecord }
  | { kind: "member"; action: "add" | "remove"; member: RaftMember }
  | { kind: "network"; action: "create" | "remove"; network: NetworkRecord }
  | { kind: "endpoint"; action: "create" | "remove"; endpoint: EndpointRecord }
  /** Redacted: events may be logged, keys never. */
  | { kind: "keys"; keyring: RedactedKeyring }
  | { kind: "restore" };

interface State {
  cluster: ClusterRecord | undefined;
  nodes: Map<string, NodeRecord>;
  members: Map<NodeId, RaftMember>;
  /** Node ids removed from the swarm: their certificates are refused from then on. */
  removed: Set<string>;
  networks: Map<string, NetworkRecord>;
  endpoints: Map<string, EndpointRecord>;
  /** The overlay encryption keys (managers only; pushed to nodes holding encrypted networks). */
  keyring: Keyring | undefined;
}

function emptyState(): State {
  return {
    cluster: undefined,
    nodes: new Map(),
    members: new Map(),
    removed: new Set(),
    networks: new Map(),
    endpoints: new Map(),
    keyring: undefined,
  };
}

const enc = new TextEncoder();
const dec = new TextDecoder();

export function encodeCommand(c: Command, at: Date): Uint8Array {
  return enc.encode(JSON.stringify({ ...c, at: at.toISOString() }));
}

function clone<T>(v: T): T {
  return structuredClone(v);
}

export class Store {
  private s: State = emptyState();
  readonly events = new EventEmitter();
  /** Index of the last applied entry. */
  appliedIndex = 0;

  constructor() {
    this.events.setMaxListeners(100);
  }

  // ------------------------------------------------------------------ reads (copies)

  cluster(): ClusterRecord | undefined {
    return this.s.cluster ? clone(this.s.cluster) : undefined;
  }

  node(id: string): NodeRecord | undefined {
    const n = this.s.nodes.get(id);
    return n ? clone(n) : undefined;
  }

  nodes(): NodeRecord[] {
    return [...this.s.nodes.values()].map(clone);
  }

  members(): RaftMember[] {
    return [...this.s.members.values()].map((m) => ({ ...m }));
  }

  member(raftId: NodeId): RaftMember | undefined {
    const m = this.s.members.get(raftId);
    return m ? { ...m } : undefined;
  }

  memberByNode(nodeId: string): RaftMember | undefined {
    for (const m of this.s.members.values()) if (m.nodeId === nodeId) return { ...m };
    return undefined;
  }

  isRemoved(nodeId: string): boolean {
    return this.s.removed.has(nodeId);
  }

  keyring(): Keyring | undefined {
    return this.s.keyring ? clone(this.s.keyring) : undefined;
  }

  network(id: string): NetworkRecord | undefined {
    const n = this.s.networks.get(id);
    return n ? clone(n) : undefined;
  }

  networks(): NetworkRecord[] {
    return [...this.s.networks.values()].map(clone);
  }

  endpoint(id: string): EndpointRecord | undefined {
    const e = this.s.endpoints.get(id);
    return e ? clone(e) : undefined;
  }

  /** Endpoints, optionally of one network only. */
  endpoints(networkId?: string): EndpointRecord[] {
    const out: EndpointRecord[] = [];
    for (const e of this.s.endpoints.values()) if (!networkId || e.networkId === networkId) out.push(clone(e));
    return out;
  }

  // ------------------------------------------------------------------ the state machine

  /** Apply one committed command. Deterministic: the same entries give the same state on every manager. */
  apply(data: Uint8Array, index: number): Outcome {
    this.appliedIndex = index;
    let c: Command & { at: string };
    try {
      c = JSON.parse(dec.decode(data)) as Command & { at: string };
    } catch {
      return { ok: false, status: 500, message: `store: undecodable entry at index ${index}` };
    }
    const at = c.at;
    const s = this.s;
    switch (c.op) {
      case "cluster.create": {
        if (s.cluster) return fail(409, "the cluster already exists");
        const info = clone(c.info);
        info.Version = { Index: index };
        info.CreatedAt = at;
        info.UpdatedAt = at;
        s.cluster = { info, secrets: clone(c.secrets) };
        this.emit({ kind: "cluster", cluster: clone(s.cluster) });
        return ok(index);
      }
      case "cluster.update": {
        if (!s.cluster) return fail(503, "the cluster does not exist");
        if (s.cluster.info.Version.Index !== c.version) return fail(500, "update out of sequence");
        s.cluster.info.Spec = clone(c.spec);
        if (c.workerToken) s.cluster.secrets.workerToken = c.workerToken;
        if (c.managerToken) s.cluster.secrets.managerToken = c.managerToken;
        applyUnlockKey(s.cluster.secrets, c.spec, c.unlockKey);
        applyCAChange(s.cluster, s.cluster.info.Spec, c);
        s.cluster.info.Version = { Index: index };
        s.cluster.info.UpdatedAt = at;
        this.emit({ kind: "cluster", cluster: clone(s.cluster) });
        return ok(index);
      }
      case "cluster.rootRotation": {
        if (!s.cluster) return fail(503, "the cluster does not exist");
        const refused = applyRootRotation(s.cluster, c);
        if (refused) return fail(refused.status, refused.message);
        s.cluster.info.Version = { Index: index };
        s.cluster.info.UpdatedAt = at;
        this.emit({ kind: "cluster", cluster: clone(s.cluster) });
        return ok(index);
      }
      case "node.certRenew": {
        for (const rec of markCertRenew(s.nodes, c.ids, c.issuer)) this.touchNode(rec, index, at);
        return ok(index);
      }
      case "node.create": {
        if (s.nodes.has(c.node.ID)) return fail(409, `node ${c.node.ID} already exists`);
        if (s.removed.has(c.node.ID)) return fail(409, `node ${c.node.ID} was removed from the swarm`);
        const node = clone(c.node);
        node.Version = { Index: index };
        node.CreatedAt = at;
        node.UpdatedAt = at;
        const rec = { node, role: c.role };
        s.nodes.set(node.ID, rec);
        this.emit({ kind: "node", action: "create", node: clone(rec) });
        return ok(index);
      }
      case "node.update": {
        const rec = s.nodes.get(c.id);
        if (!rec) return fail(404, `node ${c.id} not found`);
        if (rec.node.Version.Index !== c.version) return fail(500, "update out of sequence");
        rec.node.Spec = clone(c.spec);
        return this.touchNode(rec, index, at);
      }
      case "node.status": {
        const rec = s.nodes.get(c.id);
        if (!rec) return fail(404, `node ${c.id} not found`);
        rec.node.Status = {
          State: c.state,
          Addr: c.addr ?? rec.node.Status.Addr,
          ...(c.message !== undefined ? { Message: c.message } : {}),
        };
        return this.touchNode(rec, index, at);
      }
      case "node.describe": {
        const rec = s.nodes.get(c.id);
        if (!rec) return fail(404, `node ${c.id} not found`);
        rec.node.Description = clone(c.description);
        return this.touchNode(rec, index, at);
      }
      case "node.role": {
        const rec = s.nodes.get(c.id);
        if (!rec) return fail(404, `node ${c.id} not found`);
        rec.role = c.role;
        return this.touchNode(rec, index, at);
      }
      case "node.remove": {
        const rec = s.nodes.get(c.id);
        if (!rec) return fail(404, `node ${c.id} not found`);
        s.nodes.delete(c.id);
        s.removed.add(c.id);
        // Its containers' endpoints go with it: the other hosts drop them from their data planes.
        for (const ep of [...s.endpoints.values()]) {
          if (ep.nodeId !== c.id) continue;
          s.endpoints.delete(ep.id);
          const n = s.networks.get(ep.networkId);
          if (n) releaseIp(n.alloc, ep.ip, ep.id);
          this.emit({ kind: "endpoint", action: "remove", endpoint: clone(ep) });
        }
        this.emit({ kind: "node", action: "remove", node: clone(rec) });
        return ok(index);
      }
      case "network.create": {
        if (s.networks.has(c.id)) return fail(409, `network ${c.id} already exists`);
        for (const n of s.networks.values())
          if (n.spec.name === c.spec.name) return failWith(nameConflict(c.spec.name));
        const pool = normalizePoolConfig({
          pools: s.cluster?.info.DefaultAddrPool ?? [],
          subnetSize: s.cluster?.info.SubnetSize ?? 0,
        });
        let alloc: NetworkAlloc;
        try {
          const vniOpt = c.spec.options["com.docker.network.driver.overlay.vxlanid_list"];
          const requestedVni = c.spec.ingress ? INGRESS_VNI : vniOpt ? parseVxlanIdList(vniOpt)[0] : undefined;
          alloc = allocateNetwork(
            {
              subnets: [...s.networks.values()].map((n) => n.alloc.subnet),
              vnis: [...s.networks.values()].map((n) => n.alloc.vni),
            },
            pool,
            {
              ...(c.spec.subnet ? { subnet: c.spec.subnet } : {}),
              ...(c.spec.gateway ? { gateway: c.spec.gateway } : {}),
              ...(requestedVni !== undefined ? { vni: requestedVni } : {}),
            },
          );
        } catch (e) {
          return failWith(e);
        }
        const rec: NetworkRecord = { id: c.id, spec: clone(c.spec), alloc, createdAt: at, version: index };
        s.networks.set(c.id, rec);
        this.emit({ kind: "network", action: "create", network: clone(rec) });
        return ok(index);
      }
      case "network.remove": {
        const n = s.networks.get(c.id);
        if (!n) return fail(404, `network ${c.id} not found`);
        for (const e of s.endpoints.values())
          if (e.networkId === c.id) return failWith(networkInUse(n.spec.name, n.id));
        s.networks.delete(c.id);
        this.emit({ kind: "network", action: "remove", network: clone(n) });
        return ok(index);
      }
      case "endpoint.create": {
        const n = s.networks.get(c.networkId);
        if (!n) return fail(404, `network ${c.networkId} not found`);
        if (s.endpoints.has(c.id)) return fail(409, `endpoint ${c.id} already exists`);
        if (c.standalone && !n.spec.attachable) return failWith(notAttachable(n.spec.name));
        for (const e of s.endpoints.values()) {
          if (e.networkId === c.networkId && e.containerName === c.containerName) {
            return fail(403, `endpoint with name ${c.containerName} already exists in network ${n.spec.name}`);
          }
        }
        let ip: string;
        try {
          ip = allocateIp(n.alloc, c.id, c.ip, { name: n.spec.name, id: n.id });
        } catch (e) {
          return failWith(e);
        }
        n.version = index;
        const ep: EndpointRecord = {
          id: c.id,
          networkId: c.networkId,
          nodeId: c.nodeId,
          containerId: c.containerId,
          containerName: c.containerName,
          aliases: [...c.aliases],
          ip,
          mac: macFromIp(ip),
          version: index,
        };
        s.endpoints.set(c.id, ep);
        this.emit({ kind: "endpoint", action: "create", endpoint: clone(ep) });
        return ok(index);
      }
      case "endpoint.remove": {
        const ep = s.endpoints.get(c.id);
        if (!ep) return ok(index);
        s.endpoints.delete(c.id);
        const n = s.networks.get(ep.networkId);
        if (n) {
          releaseIp(n.alloc, ep.ip, ep.id);
          n.version = index;
        }
        this.emit({ kind: "endpoint", action: "remove", endpoint: clone(ep) });
        return ok(index);
      }
      case "keys.init":
      case "keys.rotate":
      case "keys.interval": {
        const r = applyKeys(s.keyring, c);
        if (!r.ok) return fail(r.conflict ? 409 : 400, r.reason);
        s.keyring = r.ring;
        this.emit({ kind: "keys", keyring: redact(r.ring) });
        return ok(index);
      }
      case "member.add": {
        s.members.set(c.member.raftId, { ...c.member });
        this.emit({ kind: "member", action: "add", member: { ...c.member } });
        return ok(index);
      }
      case "member.remove": {
        const m = s.members.get(c.raftId);
        if (!m) return ok(index);
        s.members.delete(c.raftId);
        this.emit({ kind: "member", action: "remove", member: m });
        return ok(index);
      }
      default:
        return fail(500, `store: unknown command at index ${index}`);
    }
  }

  private touchNode(rec: NodeRecord, index: number, at: string): Outcome {
    rec.node.Version = { Index: index };
    rec.node.UpdatedAt = at;
    this.emit({ kind: "node", action: "update", node: clone(rec) });
    return ok(index);
  }

  private emit(e: StoreEvent): void {
    this.events.emit("event", e);
  }

  /** Serialise the whole state (a Raft snapshot's data). */
  snapshot(): Uint8Array {
    const s = this.s;
    return enc.encode(
      JSON.stringify({
        v: 1,
        appliedIndex: this.appliedIndex,
        cluster: s.cluster ?? null,
        nodes: [...s.nodes.values()],
        members: [...s.members.values()],
        removed: [...s.removed],
        networks: [...s.networks.values()],
        endpoints: [...s.endpoints.values()],
        keyring: s.keyring ?? null,
      }),
    );
  }

  restore(data: Uint8Array, index: number): void {
    if (data.length === 0) {
      this.s = emptyState();
    } else {
      const o = JSON.parse(dec.decode(data)) as {
        v: number;
        cluster: ClusterRecord | null;
        nodes: NodeRecord[];
        members: RaftMember[];
        removed: string[];
        networks?: NetworkRecord[];
        endpoints?: EndpointRecord[];
        keyring?: Keyring | null;
      };
      if (o.v !== 1) throw new Error(`store snapshot format ${o.v} is not supported`);
      this.s = {
        cluster: o.cluster ?? undefined,
        nodes: new Map(o.nodes.map((n) => [n.node.ID, n])),
        members: new Map(o.members.map((m) => [m.raftId, m])),
        removed: new Set(o.removed),
        networks: new Map((o.networks ?? []).map((n) => [n.id, n])),
        endpoints: new Map((o.endpoints ?? []).map((e) => [e.id, e])),
        keyring: o.keyring ?? undefined,
      };
    }
    this.appliedIndex = index;
    this.emit({ kind: "restore" });
  }

  /** force-new-cluster: keep every object, but only `self` stays a Raft member. */
  keepOnlyMember(raftId: NodeId): void {
    for (const id of [...this.s.members.keys()]) if (id !== raftId) this.s.members.delete(id);
  }
}

/** The unlock key follows the spec: kept (or replaced) while autolock is on, gone when it is off. */
function applyUnlockKey(secrets: ClusterSecrets, spec: SwarmSpec, unlockKey: string | undefined): void {
  if (!spec.EncryptionConfig?.AutoLockManagers) delete secrets.unlockKey;
  else if (unlockKey) secrets.unlockKey = unlockKey;
}

function ok(version: number): Outcome {
  return { ok: true, version };
}

function fail(status: number, message: string): Outcome {
  return { ok: false, status, message };
}

/** A refusal from the allocator (or any ApiError) as an outcome; anything else is a bug and rethrown. */
function failWith(e: unknown): Outcome {
  if (e instanceof ApiError) return fail(e.status, e.message);
  throw e;
}
