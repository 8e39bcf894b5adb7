// The replicated store: the cluster's objects as a deterministic state machine fed by committed Raft
// entries. A write is a command with its own preconditions (an object version, a name that must be
// free...) that every manager checks identically when the entry is applied, so any manager may propose
// and the proposer learns the outcome from the apply. Object versions are Raft indexes. Watchers see every
// change, in order, after it is applied.
//
// The apply is total: an entry is parsed against the command schema first (a malformed one is refused the
// same way on every manager and changes nothing), each table's apply checks its preconditions before it
// changes anything, and a bug that still throws is caught, logged with the entry's index, and the entry
// skipped. Nothing a committed entry says can stop Raft. One table per object type, each with its own
// apply: cluster.ts, nodes.ts, networks.ts, endpoints.ts, members.ts, and the keyring in keyring.ts.

import { EventEmitter } from "node:events";
import { setImmediate as turn } from "node:timers/promises";
import type { Logger } from "pino";
import type {
  ClusterRecord,
  EndpointRecord,
  Keyring,
  NetworkRecord,
  NodeRecord,
  NodeRole,
  RaftMember,
} from "../api/objects.js";
import { describeIssues } from "../api/schema.js";
import type { NodeId } from "../raft/types.js";
import { applyCertRenew, applyRootRotation } from "./ca.js";
import { applyCluster } from "./cluster.js";
import { type Command, CommandSchema, EntryTime } from "./commands.js";
import { applyEndpoint } from "./endpoints.js";
import { applyKeys, nodeNeedsKeys, redact } from "./keyring.js";
import { applyMember } from "./members.js";
import { applyNetwork } from "./networks.js";
import { applyNode, applyStatusBatch } from "./nodes.js";
import {
  captureSnapshot,
  decodeSnapshot,
  decodeSnapshotInSlices,
  encodeSnapshot,
  endpointStamp,
  networkStamp,
  nodeStamp,
  RecordJson,
  SLICE_BYTES,
} from "./snapshot.js";
import {
  type ApplyContext,
  clone,
  emptyState,
  fail,
  freeze,
  type Outcome,
  ok,
  type State,
  type StoreEvent,
  type View,
} from "./state.js";

export type {
  ClusterRecord,
  ClusterSecrets,
  EndpointRecord,
  NetworkRecord,
  NetworkSpec,
  NodeRecord,
  RaftMember,
} from "../api/objects.js";
export type { Command } from "./commands.js";
export type { Outcome, StoreEvent, View } from "./state.js";

const enc = new TextEncoder();
const dec = new TextDecoder();

/** An entry's bytes: the command and the proposer's time. */
export function encodeCommand(c: Command, at: Date): Uint8Array {
  return enc.encode(JSON.stringify({ ...c, at: at.toISOString() }));
}

/** Parse a command against the schema; the reason it is not one, or the command. */
export function checkCommand(c: unknown): { ok: true; command: Command } | { ok: false; reason: string } {
  const r = CommandSchema.safeParse(c);
  return r.success ? { ok: true, command: r.data } : { ok: false, reason: describeIssues(r.error) };
}

/**
 * An entry's bytes as the store decodes them (the command schema, the proposer's time), checked once by the
 * manager that proposes it; its apply of that same entry then uses this instead of decoding it again. Made
 * only by decodeEntry, so it is exactly what apply would have made of those bytes: the apply stays the same
 * on every manager.
 */
export class DecodedEntry {
  private constructor(
    private readonly data: Uint8Array,
    readonly result: Decoded,
  ) {}

  /** The decoding of `data`: the one every manager's apply makes. */
  static of(data: Uint8Array): DecodedEntry {
    return new DecodedEntry(data, decode(data));
  }

  /** Whether this is the decoding of `data` (the same bytes; the Raft log frames a copy of them). */
  isOf(data: Uint8Array): boolean {
    return (
      Buffer.compare(
        Buffer.from(this.data.buffer, this.data.byteOffset, this.data.byteLength),
        Buffer.from(data.buffer, data.byteOffset, data.byteLength),
      ) === 0
    );
  }
}

type Decoded = { ok: true; command: Command; at: string } | { ok: false; reason: string };

/** An entry's bytes parsed: JSON, then the command schema and the proposer's time. */
function decode(data: Uint8Array): Decoded {
  let raw: unknown;
  try {
    raw = JSON.parse(dec.decode(data));
  } catch {
    return { ok: false, reason: "undecodable entry" };
  }
  if (!raw || typeof raw !== "object" || Array.isArray(raw)) return { ok: false, reason: "not a command" };
  const { at, ...rest } = raw as Record<string, unknown>;
  const time = EntryTime.safeParse(at);
  if (!time.success) return { ok: false, reason: `at: ${describeIssues(time.error)}` };
  const c = checkCommand(rest);
  return c.ok ? { ok: true, command: c.command, at: time.data } : c;
}

export interface StoreOptions {
  logger?: Logger;
}

export class Store {
  private s: State = emptyState();
  readonly events = new EventEmitter();
  /** Index of the last applied entry. */
  appliedIndex = 0;
  private readonly log: Logger | undefined;
  /** Each record's JSON, made once per change, so that a snapshot takes no more than copying it. */
  private json = new RecordJson();
  /** Records the apply under way changed (their JSON is made once it is done). */
  private touched: StoreEvent[] = [];

  constructor(opts: StoreOptions = {}) {
    this.log = opts.logger;
    this.events.setMaxListeners(100);
  }

  // ------------------------------------------------------------------ reads without copies
  //
  // Hot paths (every heartbeat, every session push, every RPC's ACL check, `node ls`) read frozen views:
  // one deep-frozen copy per object, made on the first read after the object changed and shared by every
  // reader until it changes again (each apply that changes an object emits an event, which drops its view).

  /** The node's role now, without copying anything (the ACL asks this on every call). */
  roleOf(id: string): NodeRole | undefined {
    return this.s.nodes.get(id)?.role;
  }

  /** The node's state now (frozen; do not keep it across awaits if you need the latest). */
  nodeView(id: string): View<NodeRecord> | undefined {
    let v = this.views.nodes.get(id);
    if (v) return v;
    const n = this.s.nodes.get(id);
    if (!n) return undefined;
    v = freeze(clone(n));
    this.views.nodes.set(id, v);
    return v;
  }

  /** Every node (frozen views; the list itself is shared too, until a node changes). */
  nodeViews(): readonly View<NodeRecord>[] {
    if (this.views.nodeList) return this.views.nodeList;
    const out: View<NodeRecord>[] = [];
    for (const id of this.s.nodes.keys()) out.push(this.nodeView(id)!);
    this.views.nodeList = Object.freeze(out);
    return this.views.nodeList;
  }

  nodeCount(): number {
    return this.s.nodes.size;
  }

  clusterView(): View<ClusterRecord> | undefined {
    if (!this.s.cluster) return undefined;
    this.views.cluster ??= freeze(clone(this.s.cluster));
    return this.views.cluster;
  }

  /** How many objects of each type the store holds (metrics). */
  counts(): Record<"nodes" | "networks" | "endpoints" | "members" | "removed", number> {
    const s = this.s;
    return {
      nodes: s.nodes.size,
      networks: s.networks.size,
      endpoints: s.endpoints.size,
      members: s.members.size,
      removed: s.removed.size,
    };
  }

  private views: {
    nodes: Map<string, View<NodeRecord>>;
    nodeList: readonly View<NodeRecord>[] | undefined;
    cluster: View<ClusterRecord> | undefined;
  } = { nodes: new Map(), nodeList: undefined, cluster: undefined };

  private dropViews(e: StoreEvent): void {
    if (e.kind === "node") {
      this.views.nodes.delete(e.node.node.ID);
      this.views.nodeList = undefined;
    } else if (e.kind === "cluster") this.views.cluster = undefined;
    else if (e.kind === "restore") this.views = { nodes: new Map(), nodeList: undefined, cluster: undefined };
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

  /** Every network's id and name, nothing copied beyond them (to resolve a reference). */
  networkNames(): { id: string; name: string }[] {
    const out: { id: string; name: string }[] = [];
    for (const n of this.s.networks.values()) out.push({ id: n.id, name: n.spec.name });
    return out;
  }

  /** Whether the node has an endpoint on an encrypted network (only such nodes get the overlay keys); nothing copied. */
  nodeNeedsKeys(nodeId: string): boolean {
    return nodeNeedsKeys(nodeId, this.s.networks.values(), this.s.endpoints.values());
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

  /**
   * Apply one committed entry. Total and deterministic: the same entries give the same state everywhere.
   * `checked`: the entry as its proposer decoded it before proposing (used if it is of these bytes).
   */
  apply(data: Uint8Array, index: number, checked?: unknown): Outcome {
    this.appliedIndex = index;
    const entry = checked instanceof DecodedEntry && checked.isOf(data) ? checked.result : decode(data);
    if (!entry.ok) {
      this.log?.warn({ index, reason: entry.reason }, "store: refused a malformed entry (nothing changed)");
      return fail(400, `store: refused the entry at index ${index}: ${entry.reason}`);
    }
    const ctx: ApplyContext = { index, at: entry.at, emit: (e) => this.emit(e) };
    try {
      return this.applyCommand(entry.command, ctx);
    } catch (e) {
      // A bug: the same on every manager (the same code on the same entry), so skipping stays deterministic.
      this.log?.error(
        { index, op: entry.command.op, err: e },
        "store: BUG: applying an entry threw; the entry was skipped on every manager",
      );
      return fail(500, `store: internal error applying the entry at index ${index}`);
    } finally {
      this.warmJson();
    }
  }

  /** The JSON of the records the last apply changed, made now that it is done (see RecordJson). */
  private warmJson(): void {
    const s = this.s;
    for (const e of this.touched) {
      if (e.kind === "node") {
        const r = s.nodes.get(e.node.node.ID);
        if (r) this.json.of(r, nodeStamp(r));
      } else if (e.kind === "network") {
        const r = s.networks.get(e.network.id);
        if (r) this.json.of(r, networkStamp(r));
      } else if (e.kind === "endpoint") {
        const r = s.endpoints.get(e.endpoint.id);
        if (r) this.json.of(r, endpointStamp(r));
      }
    }
    this.touched = [];
  }

  private applyCommand(c: Command, ctx: ApplyContext): Outcome {
    const s = this.s;
    switch (c.op) {
      case "cluster.create":
      case "cluster.update":
        return applyCluster(s, c, ctx);
      case "cluster.rootRotation.finish":
      case "cluster.rootRotation.retire":
        return applyRootRotation(s, c, ctx);
      case "node.certRenew":
        return applyCertRenew(s, c, ctx);
      case "node.statusBatch":
        return applyStatusBatch(s, c, ctx);
      case "node.create":
      case "node.update":
      case "node.status":
      case "node.describe":
      case "node.role":
      case "node.remove":
        return applyNode(s, c, ctx);
      case "network.create":
      case "network.remove":
        return applyNetwork(s, c, ctx);
      case "endpoint.create":
      case "endpoint.remove":
      case "endpoint.rename":
        return applyEndpoint(s, c, ctx);
      case "member.add":
      case "member.remove":
        return applyMember(s, c, ctx);
      case "keys.init":
      case "keys.rotate":
      case "keys.interval": {
        const r = applyKeys(s.keyring, c);
        if (!r.ok) return fail(r.conflict ? 409 : 400, r.reason);
        s.keyring = r.ring;
        ctx.emit({ kind: "keys", keyring: redact(r.ring) });
        return ok(ctx.index);
      }
    }
  }

  /** Tell every watcher; a watcher that throws is logged and never reaches the apply (or Raft). */
  private emit(e: StoreEvent): void {
    this.dropViews(e);
    if ((e.kind === "node" || e.kind === "network" || e.kind === "endpoint") && e.action !== "remove") {
      this.touched.push(e);
    }
    for (const listener of this.events.listeners("event")) {
      try {
        (listener as (e: StoreEvent) => void)(e);
      } catch (err) {
        this.log?.error({ err, event: e.kind }, "store: a watcher failed on an event");
      }
    }
  }

  /** Serialise the whole state (a Raft snapshot's data) in one synchronous call (format 1: tools, tests). */
  snapshot(): Uint8Array {
    return encodeSnapshot(this.s, this.appliedIndex);
  }

  /**
   * The whole state as of now (a Raft snapshot's data, format 2): captured before this returns (the state
   * may change right after), the bytes put together in slices with the event loop turning in between.
   */
  snapshotInSlices(): Promise<Uint8Array> {
    return captureSnapshot(this.s, this.appliedIndex, this.json);
  }

  restore(data: Uint8Array, index: number): void {
    this.s = decodeSnapshot(data, this.log);
    this.appliedIndex = index;
    this.json = new RecordJson();
    this.emit({ kind: "restore" });
  }

  /**
   * restore() in slices, with the event loop turning in between (a 100 MB snapshot takes seconds to read):
   * the state is replaced at once at the end. Nothing else may change the store meanwhile (the Raft loop
   * applies nothing while it waits for this).
   */
  async restoreInSlices(data: Uint8Array, index: number): Promise<void> {
    const s = await decodeSnapshotInSlices(data, this.log);
    // The records' JSON for the next snapshot, made now, in slices too.
    const json = new RecordJson();
    let slice = 0;
    const warm = async (rec: object, stamp: number): Promise<void> => {
      slice += json.of(rec, stamp).length;
      if (slice >= SLICE_BYTES) {
        slice = 0;
        await turn();
      }
    };
    for (const r of s.nodes.values()) await warm(r, nodeStamp(r));
    for (const r of s.networks.values()) await warm(r, networkStamp(r));
    for (const r of s.endpoints.values()) await warm(r, endpointStamp(r));
    this.s = s;
    this.appliedIndex = index;
    this.json = json;
    this.emit({ kind: "restore" });
  }

  /** force-new-cluster: keep every object, but only `self` stays a Raft member. */
  keepOnlyMember(raftId: NodeId): void {
    for (const id of [...this.s.members.keys()]) if (id !== raftId) this.s.members.delete(id);
  }
}
