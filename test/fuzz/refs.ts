// Symbolic references to the live cluster's values. A generated case names "the second manager's node id,
// as a 5-character prefix" rather than the id itself, so the same seed means the same requests on any
// cluster, and the case prints the same way in every run. The runner refreshes a FuzzContext before each
// batch and resolves references against it when a request is sent.

import fc from "fast-check";

/** Daemons of the fuzz cluster: 1-3 managers, 4 a worker, 5 a manager demoted during setup. */
export const DAEMONS = [1, 2, 3, 4, 5] as const;
export const MANAGERS = [1, 2, 3] as const;
export const WORKER = 4;
export const EX_MANAGER = 5;

export type Ref =
  /** A node, by index into the context's node list (daemons 1-5 first, then nodes the fuzzer joined). */
  | { r: "node"; i: number; form: "id" | "prefix" | "hostname" | "self" | "upper" | "idNewline" }
  | { r: "net"; i: number; form: "id" | "name" | "prefix" }
  | { r: "swarmVersion"; delta: number }
  | { r: "nodeVersion"; i: number; delta: number }
  | { r: "token"; which: "worker" | "manager"; mutate: "none" | "truncate" | "lastChar" | "lower" | "secretOnly" }
  /** A Raft id: 0-2 the managers', 3 the demoted manager's old one, 4 one that never existed. */
  | { r: "raftId"; who: number; delta: number }
  | { r: "session"; i: number }
  | { r: "endpoint"; i: number }
  | { r: "csr"; i: number }
  | { r: "clusterAddr"; daemon: number }
  | { r: "ip"; daemon: number }
  | { r: "rootPem" }
  | { r: "certPem"; who: "worker" | "exManager" }
  | { r: "unlockKey" };

export interface ContextNode {
  id: string;
  hostname: string;
  version: number;
  role: string;
}

export interface FuzzContext {
  /** Daemons 1-5 in order, then any other node the store has. */
  nodes: ContextNode[];
  networks: { id: string; name: string }[];
  swarmVersion: number;
  tokens: { worker: string; manager: string };
  /** Raft ids of managers 1-3 and the demoted manager's former one. */
  raftIds: bigint[];
  /** Session ids the fuzzer's own sessions were given. */
  sessions: string[];
  /** Endpoints the fuzzer's attaches were given (detached in the batch's cleanup). */
  endpoints: { id: string; identity: string; daemon: number }[];
  /** Certificate requests made at setup: [0] plain, [1] with node 4's id, [2] with node 5's id. */
  csrs: string[];
  clusterAddrs: Map<number, string>;
  rootPem: string;
  certPems: { worker: string; exManager: string };
  unlockKey: string;
}

const pick = <T>(xs: readonly T[], i: number): T | undefined => (xs.length === 0 ? undefined : xs[i % xs.length]);

function mutateToken(t: string, how: Extract<Ref, { r: "token" }>["mutate"]): string {
  switch (how) {
    case "none":
      return t;
    case "truncate":
      return t.slice(0, Math.max(0, t.length - 7));
    case "lastChar":
      return `${t.slice(0, -1)}${t.endsWith("a") ? "b" : "a"}`;
    case "lower":
      return t.toLowerCase();
    case "secretOnly":
      return t.split("-").pop() ?? t;
  }
}

function nodeForm(ctx: FuzzContext, ref: Extract<Ref, { r: "node" }>): string {
  if (ref.form === "self") return "self";
  const n = pick(ctx.nodes, ref.i);
  if (!n) return `no-node-${ref.i}`;
  switch (ref.form) {
    case "id":
      return n.id;
    case "prefix":
      return n.id.slice(0, 5);
    case "hostname":
      return n.hostname;
    case "upper":
      return n.id.toUpperCase();
    case "idNewline":
      return `${n.id}\n`;
  }
}

/** The value a reference stands for now. Raft ids are bigints (they are uint64 on the wire). */
export function resolveRef(ctx: FuzzContext, ref: Ref): string | number | bigint {
  switch (ref.r) {
    case "node":
      return nodeForm(ctx, ref);
    case "net": {
      const n = pick(ctx.networks, ref.i);
      if (!n) return `no-net-${ref.i}`;
      return ref.form === "id" ? n.id : ref.form === "name" ? n.name : n.id.slice(0, 4);
    }
    case "swarmVersion":
      return ctx.swarmVersion + ref.delta;
    case "nodeVersion":
      return (pick(ctx.nodes, ref.i)?.version ?? 0) + ref.delta;
    case "token":
      return mutateToken(ref.which === "worker" ? ctx.tokens.worker : ctx.tokens.manager, ref.mutate);
    case "raftId": {
      const id = ref.who < ctx.raftIds.length ? ctx.raftIds[ref.who]! : 0x5eed_0000_0001n;
      return id + BigInt(ref.delta);
    }
    case "session":
      return pick(ctx.sessions, ref.i) ?? "0123456789abcdef01234567";
    case "endpoint":
      return pick(ctx.endpoints, ref.i)?.id ?? "e".repeat(25);
    case "csr":
      return pick(ctx.csrs, ref.i) ?? "";
    case "clusterAddr":
      return ctx.clusterAddrs.get(ref.daemon) ?? "127.0.0.9:2377";
    case "ip":
      return `127.0.0.${ref.daemon}`;
    case "rootPem":
      return ctx.rootPem;
    case "certPem":
      return ctx.certPems[ref.who];
    case "unlockKey":
      return ctx.unlockKey;
  }
}

/** As JSON would carry it: bigints as numbers when they fit, else as strings. */
export function resolveJson(ctx: FuzzContext, ref: Ref): string | number {
  const v = resolveRef(ctx, ref);
  if (typeof v === "bigint") return v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v.toString();
  return v;
}

/** As a string (paths, query values, protobuf strings). */
export function resolveString(ctx: FuzzContext, ref: Ref): string {
  return String(resolveRef(ctx, ref));
}

// ---------------------------------------------------------------------------------------------------
// Arbitraries of references

export const arbNodeRef: fc.Arbitrary<Ref> = fc.record({
  r: fc.constant("node" as const),
  i: fc.nat(6),
  form: fc.constantFrom(
    "id" as const,
    "prefix" as const,
    "hostname" as const,
    "self" as const,
    "upper" as const,
    "idNewline" as const,
  ),
});

export const arbNetRef: fc.Arbitrary<Ref> = fc.record({
  r: fc.constant("net" as const),
  i: fc.nat(20),
  form: fc.constantFrom("id" as const, "name" as const, "prefix" as const),
});

const arbDelta = fc.oneof(
  { arbitrary: fc.constant(0), weight: 6 },
  { arbitrary: fc.constantFrom(-1, 1, -1000, 2 ** 31, -(2 ** 53)), weight: 2 },
);

export const arbSwarmVersion: fc.Arbitrary<Ref> = fc.record({
  r: fc.constant("swarmVersion" as const),
  delta: arbDelta,
});

export const arbNodeVersion = (i: fc.Arbitrary<number>): fc.Arbitrary<Ref> =>
  fc.record({ r: fc.constant("nodeVersion" as const), i, delta: arbDelta });

export const arbToken: fc.Arbitrary<Ref> = fc.record({
  r: fc.constant("token" as const),
  which: fc.constantFrom("worker" as const, "manager" as const),
  mutate: fc.constantFrom(
    "none" as const,
    "truncate" as const,
    "lastChar" as const,
    "lower" as const,
    "secretOnly" as const,
  ),
});

export const arbRaftId: fc.Arbitrary<Ref> = fc.record({
  r: fc.constant("raftId" as const),
  who: fc.nat(4),
  delta: fc.oneof({ arbitrary: fc.constant(0), weight: 8 }, { arbitrary: fc.constantFrom(1, -1), weight: 1 }),
});
