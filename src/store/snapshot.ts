// The store's snapshot: the whole state as JSON (a Raft snapshot's data), and its restore. A snapshot is
// read back from disk or received from the leader, so it is parsed like any other input. A record that a
// manager of an older version stored without the checks of today (a label with a number for a value, say)
// is repaired the same way on every manager, so the state stays identical everywhere; a record that cannot
// be repaired is dropped, loudly.

import type { Logger } from "pino";
import { z } from "zod";
import {
  ClusterRecordSchema,
  EndpointRecordSchema,
  KeyringSchema,
  NetworkRecordSchema,
  NodeRecordSchema,
  RaftMemberSchema,
} from "../api/objects.js";
import { Count, describeIssues } from "../api/schema.js";
import { emptyState, type State } from "./state.js";

const SnapshotSchema = z.object({
  v: z.number(),
  appliedIndex: Count.optional(),
  cluster: z.unknown().optional(),
  nodes: z.array(z.unknown()),
  members: z.array(z.unknown()),
  removed: z.array(z.string()),
  networks: z.array(z.unknown()).optional(),
  endpoints: z.array(z.unknown()).optional(),
  keyring: z.unknown().optional(),
});

const enc = new TextEncoder();
const dec = new TextDecoder();

export function encodeSnapshot(s: State, appliedIndex: number): Uint8Array {
  return enc.encode(
    JSON.stringify({
      v: 1,
      appliedIndex,
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

/** The state a snapshot holds. Throws only when the snapshot as a whole is not one (a corrupt file). */
export function decodeSnapshot(data: Uint8Array, log: Logger | undefined): State {
  if (data.length === 0) return emptyState();
  const o = SnapshotSchema.parse(JSON.parse(dec.decode(data)));
  if (o.v !== 1) throw new Error(`store snapshot format ${o.v} is not supported`);
  const record = <T>(schema: z.ZodType<T>, value: unknown, what: string): T | undefined =>
    parseRecord(schema, value, what, log);
  const s = emptyState();
  const cluster = o.cluster == null ? undefined : record(ClusterRecordSchema, o.cluster, "cluster");
  s.cluster = cluster;
  for (const v of o.nodes) {
    const n = record(NodeRecordSchema, v, "node");
    if (n) s.nodes.set(n.node.ID, n);
  }
  for (const v of o.members) {
    const m = record(RaftMemberSchema, v, "raft member");
    if (m) s.members.set(m.raftId, m);
  }
  for (const id of o.removed) s.removed.add(id);
  for (const v of o.networks ?? []) {
    const n = record(NetworkRecordSchema, v, "network");
    if (n) s.networks.set(n.id, n);
  }
  for (const v of o.endpoints ?? []) {
    const e = record(EndpointRecordSchema, v, "endpoint");
    if (e && s.networks.has(e.networkId)) s.endpoints.set(e.id, e);
  }
  s.keyring = o.keyring == null ? undefined : record(KeyringSchema, o.keyring, "keyring");
  return s;
}

/** String maps whose entries can be dropped one by one to repair a record. */
const MAP_FIELDS = new Set(["Labels", "labels", "options"]);

function parseRecord<T>(schema: z.ZodType<T>, value: unknown, what: string, log: Logger | undefined): T | undefined {
  let v = value;
  for (let attempt = 0; attempt < 64; attempt++) {
    const r = schema.safeParse(v);
    if (r.success) {
      if (attempt > 0)
        log?.warn({ what, repairs: attempt }, "snapshot: repaired a stored record that broke today's rules");
      return r.data;
    }
    const repaired = dropBadMapEntry(v, r.error);
    if (repaired === undefined) {
      log?.error(
        { what, problem: describeIssues(r.error) },
        "snapshot: dropped a stored record that cannot be repaired",
      );
      return undefined;
    }
    v = repaired;
  }
  return undefined;
}

/** A copy of `v` without the label/option entry the first issue is about, or undefined if it is not one. */
function dropBadMapEntry(v: unknown, err: z.ZodError): unknown {
  for (const issue of err.issues) {
    const path = issue.path;
    const last = path[path.length - 1];
    if (last !== undefined && MAP_FIELDS.has(String(last))) {
      // The map itself is not one: it becomes empty.
      const copy = structuredClone(v) as Record<PropertyKey, unknown>;
      let parent: unknown = copy;
      for (const k of path.slice(0, -1)) parent = (parent as Record<PropertyKey, unknown> | undefined)?.[k];
      if (parent && typeof parent === "object") {
        (parent as Record<PropertyKey, unknown>)[last] = {};
        return copy;
      }
    }
    for (let i = path.length - 2; i >= 0; i--) {
      if (!MAP_FIELDS.has(String(path[i]))) continue;
      const copy = structuredClone(v) as Record<PropertyKey, unknown>;
      let parent: unknown = copy;
      for (const k of path.slice(0, i + 1)) parent = (parent as Record<PropertyKey, unknown> | undefined)?.[k];
      if (parent && typeof parent === "object" && path[i + 1] !== undefined) {
        delete (parent as Record<PropertyKey, unknown>)[path[i + 1]!];
        return copy;
      }
    }
  }
  return undefined;
}
