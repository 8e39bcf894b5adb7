// The store's snapshot: the whole state (a Raft snapshot's data), and its restore. A snapshot is read back
// from disk or received from the leader, so it is parsed like any other input. A record that a manager of
// an older version stored without the checks of today (a label with a number for a value, say) is repaired
// the same way on every manager, so the state stays identical everywhere; a record that cannot be repaired
// is dropped, loudly.
//
// Two formats, both read everywhere:
//   1  one JSON object (encodeSnapshot): written and read in one synchronous call, which at 100 MB holds
//      the event loop for seconds. Written only by tools now (force-new-cluster, tests).
//   2  JSON lines: a header {v: 2, appliedIndex, cluster, members, removed, keyring, nodes: N, networks: N,
//      endpoints: N}, then one line per node, network and endpoint, in that order (JSON.stringify escapes
//      every newline inside a string, so a newline ends a record). The managers write this one
//      (SnapshotWriter): the records' JSON is taken when the capture is made, at the applied index, and
//      the bytes are put together in slices between which the event loop runs. It is read in slices too
//      (decodeSnapshotInSlices), so a manager restoring 100 MB keeps answering its peers.

import { setImmediate as turn } from "node:timers/promises";
import type { Logger } from "pino";
import { z } from "zod";
import {
  ClusterRecordSchema,
  type EndpointRecord,
  EndpointRecordSchema,
  KeyringSchema,
  type NetworkRecord,
  NetworkRecordSchema,
  type NodeRecord,
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

const HeaderSchema = z.object({
  v: z.literal(2),
  appliedIndex: Count,
  cluster: z.unknown().optional(),
  members: z.array(z.unknown()),
  removed: z.array(z.string()),
  keyring: z.unknown().optional(),
  nodes: Count,
  networks: Count,
  endpoints: Count,
});

const enc = new TextEncoder();
const dec = new TextDecoder();
const NEWLINE = 0x0a;

/** Bytes of a snapshot put together or read between two turns of the event loop. */
export const SLICE_BYTES = 1 << 20;

/** Format 1: the whole state as one JSON object, in one synchronous call. */
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

/**
 * The JSON of records, kept from one snapshot to the next: a record's JSON is made again only when the
 * record is another object or its stamp (its version: every change of a record sets it to the index of the
 * entry that changed it) moved.
 */
export class RecordJson {
  private cache = new WeakMap<object, { stamp: number; json: string }>();

  of(rec: object, stamp: number): string {
    const c = this.cache.get(rec);
    if (c !== undefined && c.stamp === stamp) return c.json;
    const json = JSON.stringify(rec);
    this.cache.set(rec, { stamp, json });
    return json;
  }
}

/** The stamp of a record for RecordJson: its version. */
export const nodeStamp = (r: NodeRecord): number => r.node.Version.Index;
export const networkStamp = (r: NetworkRecord): number => r.version;
export const endpointStamp = (r: EndpointRecord): number => r.version;

/**
 * Format 2, captured now: every record's JSON is taken synchronously (from `json` where it has not changed),
 * so the state may change as soon as this returns; the bytes are put together in slices, with a turn of the
 * event loop between two slices.
 */
export function captureSnapshot(s: State, appliedIndex: number, json: RecordJson): Promise<Uint8Array> {
  const lines: string[] = [];
  for (const r of s.nodes.values()) lines.push(json.of(r, nodeStamp(r)));
  for (const r of s.networks.values()) lines.push(json.of(r, networkStamp(r)));
  for (const r of s.endpoints.values()) lines.push(json.of(r, endpointStamp(r)));
  const header = JSON.stringify({
    v: 2,
    appliedIndex,
    cluster: s.cluster ?? null,
    members: [...s.members.values()],
    removed: [...s.removed],
    keyring: s.keyring ?? null,
    nodes: s.nodes.size,
    networks: s.networks.size,
    endpoints: s.endpoints.size,
  });
  return assemble(header, lines);
}

async function assemble(header: string, lines: string[]): Promise<Uint8Array> {
  let total = Buffer.byteLength(header) + 1;
  let slice = 0;
  for (const l of lines) {
    total += Buffer.byteLength(l) + 1;
    slice += l.length;
    if (slice >= SLICE_BYTES) {
      slice = 0;
      await turn();
    }
  }
  const out = Buffer.allocUnsafe(total);
  let off = out.write(header, 0);
  out[off++] = NEWLINE;
  for (const l of lines) {
    off += out.write(l, off);
    out[off++] = NEWLINE;
    slice += l.length;
    if (slice >= SLICE_BYTES) {
      slice = 0;
      await turn();
    }
  }
  if (off !== total) throw new Error(`store snapshot: wrote ${off} bytes of ${total}`);
  return new Uint8Array(out.buffer, out.byteOffset, out.byteLength);
}

/** The state a snapshot (either format) holds, in one synchronous call. Throws only when the snapshot as a
 * whole is not one (a corrupt file). */
export function decodeSnapshot(data: Uint8Array, log: Logger | undefined): State {
  if (data.length === 0) return emptyState();
  if (!isLines(data)) return decodeV1(data, log);
  const steps = decodeV2(data, log);
  for (;;) {
    const r = steps.next();
    if (r.done) return r.value;
  }
}

/** The same, in slices: the event loop turns between two (about SLICE_BYTES each). */
export async function decodeSnapshotInSlices(data: Uint8Array, log: Logger | undefined): Promise<State> {
  if (data.length === 0) return emptyState();
  if (!isLines(data)) return decodeV1(data, log);
  const steps = decodeV2(data, log);
  for (;;) {
    const r = steps.next();
    if (r.done) return r.value;
    await turn();
  }
}

/** Format 1 never holds a newline byte (JSON.stringify without spacing writes none; UTF-8 hides none). */
function isLines(data: Uint8Array): boolean {
  return data.indexOf(NEWLINE) >= 0;
}

function decodeV1(data: Uint8Array, log: Logger | undefined): State {
  const o = SnapshotSchema.parse(JSON.parse(dec.decode(data)));
  if (o.v !== 1) throw new Error(`store snapshot format ${o.v} is not supported`);
  const s = emptyState();
  setSmall(s, o, log);
  for (const v of o.nodes) addNode(s, v, log);
  for (const v of o.networks ?? []) addNetwork(s, v, log);
  for (const v of o.endpoints ?? []) addEndpoint(s, v, log);
  return s;
}

/** Format 2, a slice at a time: yields after about SLICE_BYTES of records, returns the state. */
function* decodeV2(data: Uint8Array, log: Logger | undefined): Generator<void, State, void> {
  const buf = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  let pos = 0;
  const line = (what: string): unknown => {
    if (pos >= buf.length) throw new Error(`store snapshot ends before ${what}`);
    let end = buf.indexOf(NEWLINE, pos);
    if (end < 0) end = buf.length;
    const text = buf.toString("utf8", pos, end);
    pos = end + 1;
    return JSON.parse(text);
  };
  const h = HeaderSchema.parse(line("its header"));
  const s = emptyState();
  setSmall(s, h, log);
  let sliceStart = pos;
  const tables: [number, string, (s: State, v: unknown, log: Logger | undefined) => void][] = [
    [h.nodes, "node", addNode],
    [h.networks, "network", addNetwork],
    [h.endpoints, "endpoint", addEndpoint],
  ];
  for (const [count, what, add] of tables) {
    for (let i = 0; i < count; i++) {
      add(s, line(`${what} ${i + 1} of ${count}`), log);
      if (pos - sliceStart >= SLICE_BYTES) {
        sliceStart = pos;
        yield;
      }
    }
  }
  if (pos < buf.length) throw new Error(`store snapshot has ${buf.length - pos} bytes after its last record`);
  return s;
}

const record = <T>(schema: z.ZodType<T>, value: unknown, what: string, log: Logger | undefined): T | undefined =>
  parseRecord(schema, value, what, log);

function setSmall(
  s: State,
  o: { cluster?: unknown; members: unknown[]; removed: string[]; keyring?: unknown },
  log: Logger | undefined,
): void {
  s.cluster = o.cluster == null ? undefined : record(ClusterRecordSchema, o.cluster, "cluster", log);
  for (const v of o.members) {
    const m = record(RaftMemberSchema, v, "raft member", log);
    if (m) s.members.set(m.raftId, m);
  }
  for (const id of o.removed) s.removed.add(id);
  s.keyring = o.keyring == null ? undefined : record(KeyringSchema, o.keyring, "keyring", log);
}

function addNode(s: State, v: unknown, log: Logger | undefined): void {
  const n = record(NodeRecordSchema, v, "node", log);
  if (n) s.nodes.set(n.node.ID, n);
}

function addNetwork(s: State, v: unknown, log: Logger | undefined): void {
  const n = record(NetworkRecordSchema, v, "network", log);
  if (n) s.networks.set(n.id, n);
}

function addEndpoint(s: State, v: unknown, log: Logger | undefined): void {
  const e = record(EndpointRecordSchema, v, "endpoint", log);
  if (e && s.networks.has(e.networkId)) s.endpoints.set(e.id, e);
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
