// The store's state and what every table's apply shares: the outcome of a command, and the context an
// apply runs in (its log index, the proposer's time, and the event sink).

import { ApiError } from "../api/errors.js";
import type { ClusterRecord, EndpointRecord, Keyring, NetworkRecord, NodeRecord, RaftMember } from "../api/objects.js";
import type { NodeId } from "../raft/types.js";
import type { RedactedKeyring } from "./keyring.js";

export interface State {
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

export function emptyState(): State {
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

export type StoreEvent =
  | { kind: "cluster"; cluster: ClusterRecord }
  | { kind: "node"; action: "create" | "update" | "remove"; node: NodeRecord }
  | { kind: "member"; action: "add" | "remove"; member: RaftMember }
  | { kind: "network"; action: "create" | "remove"; network: NetworkRecord }
  | { kind: "endpoint"; action: "create" | "update" | "remove"; endpoint: EndpointRecord }
  /** Redacted: events may be logged, keys never. */
  | { kind: "keys"; keyring: RedactedKeyring }
  | { kind: "restore" };

/** The outcome of applying a command, returned to whoever proposed it. */
export type Outcome = { ok: true; version: number } | { ok: false; status: number; message: string };

/** What one apply runs with. */
export interface ApplyContext {
  /** The entry's log index: the version of whatever it changes. */
  index: number;
  /** The proposer's wall clock when it proposed (the same on every manager). */
  at: string;
  emit(e: StoreEvent): void;
}

export function ok(version: number): Outcome {
  return { ok: true, version };
}

export function fail(status: number, message: string): Outcome {
  return { ok: false, status, message };
}

/** A refusal from the allocator (or any ApiError) as an outcome; anything else is a bug and rethrown. */
export function failWith(e: unknown): Outcome {
  if (e instanceof ApiError) return fail(e.status, e.message);
  throw e;
}

export function clone<T>(v: T): T {
  return structuredClone(v);
}

/** A value no one may change: what the store's views hand out. */
export type View<T> = T extends (infer U)[]
  ? readonly View<U>[]
  : T extends object
    ? { readonly [K in keyof T]: View<T[K]> }
    : T;

/** Deep-freeze a value this module owns (a fresh copy); returns it typed as a view. */
export function freeze<T>(v: T): View<T> {
  if (v !== null && typeof v === "object" && !Object.isFrozen(v)) {
    for (const x of Object.values(v)) freeze(x);
    Object.freeze(v);
  }
  return v as View<T>;
}
