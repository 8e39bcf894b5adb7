// The replicated store: the cluster's objects as a deterministic state machine fed by committed Raft
// entries. A write is a command with its own preconditions (an object version, a name that must be
// free...) that every manager checks identically when the entry is applied, so any manager may propose
// (the Raft core forwards proposals to the leader) and the proposer learns the outcome from the apply.
// Object versions are Raft indexes. Watchers see every change, in order, after it is applied.

import { EventEmitter } from "node:events";
import type { ClusterInfo, Node, NodeDescription, NodeRole, NodeSpec, NodeState, SwarmSpec } from "../engine/types.js";
import type { NodeId } from "../raft/types.js";

/** What only managers hold: the CA key and the join tokens. */
export interface ClusterSecrets {
  rootCACertPem: string;
  rootCAKeyPem: string;
  workerToken: string;
  managerToken: string;
}

export interface ClusterRecord {
  info: ClusterInfo;
  secrets: ClusterSecrets;
}

export interface NodeRecord {
  node: Node;
  /** The role the node actually has (its certificate's), as opposed to Spec.Role, the desired one. */
  role: NodeRole;
}

export interface RaftMember {
  raftId: NodeId;
  nodeId: string;
  /** host:port of its cluster listener. */
  addr: string;
}

export type Command =
  | { op: "cluster.create"; info: ClusterInfo; secrets: ClusterSecrets }
  | {
      op: "cluster.update";
      version: number;
      spec: SwarmSpec;
      workerToken?: string;
      managerToken?: string;
    }
  | { op: "node.create"; node: Node; role: NodeRole }
  | { op: "node.update"; id: string; version: number; spec: NodeSpec }
  | { op: "node.status"; id: string; state: NodeState; addr?: string; message?: string }
  | { op: "node.describe"; id: string; description: NodeDescription }
  | { op: "node.role"; id: string; role: NodeRole }
  | { op: "node.remove"; id: string }
  | { op: "member.add"; member: RaftMember }
  | { op: "member.remove"; raftId: NodeId };

/** The outcome of applying a command, returned to whoever proposed it. */
export type Outcome = { ok: true; version: number } | { ok: false; status: number; message: string };

export type StoreEvent =
  | { kind: "cluster"; cluster: ClusterRecord }
  | { kind: "node"; action: "create" | "update" | "remove"; node: NodeRecord }
  | { kind: "member"; action: "add" | "remove"; member: RaftMember }
  | { kind: "restore" };

interface State {
  cluster: ClusterRecord | undefined;
  nodes: Map<string, NodeRecord>;
  members: Map<NodeId, RaftMember>;
  /** Node ids removed from the swarm: their certificates are refused from then on. */
  removed: Set<string>;
  /** Time of the last applied entry (from the entry, so replays give the same objects). */
}

function emptyState(): State {
  return { cluster: undefined, nodes: new Map(), members: new Map(), removed: new Set() };
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
        s.cluster.info.Version = { Index: index };
        s.cluster.info.UpdatedAt = at;
        this.emit({ kind: "cluster", cluster: clone(s.cluster) });
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
        this.emit({ kind: "node", action: "remove", node: clone(rec) });
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
      };
      if (o.v !== 1) throw new Error(`store snapshot format ${o.v} is not supported`);
      this.s = {
        cluster: o.cluster ?? undefined,
        nodes: new Map(o.nodes.map((n) => [n.node.ID, n])),
        members: new Map(o.members.map((m) => [m.raftId, m])),
        removed: new Set(o.removed),
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

function ok(version: number): Outcome {
  return { ok: true, version };
}

function fail(status: number, message: string): Outcome {
  return { ok: false, status, message };
}
