// Protobuf encoding of the Raft types (proto/raft.proto), for the gRPC transport and level storage.
// The core works with the plain types of ./types.ts; this module is the only place that converts between
// them and the generated ones in src/gen/. Numbers are uint64 on the wire and JS numbers here (a value
// beyond Number.MAX_SAFE_INTEGER fails to decode rather than losing precision).

import { z } from "zod";
import * as pb from "../gen/raft.js";
import {
  type ConfChange,
  ConfChangeType,
  type ConfState,
  type Entry,
  EntryType,
  type HardState,
  isLocalMessage,
  MAX_RAFT_NUMBER,
  type Message,
  MessageType,
  type Snapshot,
  type SnapshotChunk,
  type SnapshotMetadata,
} from "./types.js";

/** A value on the wire that does not fit the Raft types (an unknown enum value, say). */
export class CodecError extends Error {}

// ---- bytes ----
// The generated code (env=node) uses Buffer. The core gets plain Uint8Arrays (Buffer#slice is a view, not
// a copy, and a Buffer compares differently in tests), so convert both ways without copying.

function toBuffer(u: Uint8Array): Buffer {
  return Buffer.isBuffer(u) ? u : Buffer.from(u.buffer, u.byteOffset, u.byteLength);
}

function fromBuffer(b: Uint8Array): Uint8Array {
  return new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
}

// ---- enums (same numbers on both sides; reject what the Raft types do not know) ----

function checkEnum<E extends number>(names: Record<number, string>, what: string, v: number): E {
  if (typeof names[v] !== "string") {
    throw new CodecError(`raft codec: unknown ${what} ${v}`);
  }
  return v as E;
}

const entryTypeFromPb = (v: pb.EntryType): EntryType => checkEnum<EntryType>(EntryType, "entry type", v);
const confChangeTypeFromPb = (v: pb.ConfChangeType): ConfChangeType =>
  checkEnum<ConfChangeType>(ConfChangeType, "conf change type", v);
const messageTypeFromPb = (v: pb.MessageType): MessageType => checkEnum<MessageType>(MessageType, "message type", v);

const entryTypeToPb = (v: EntryType): pb.EntryType => checkEnum<pb.EntryType>(EntryType, "entry type", v);
const confChangeTypeToPb = (v: ConfChangeType): pb.ConfChangeType =>
  checkEnum<pb.ConfChangeType>(ConfChangeType, "conf change type", v);
const messageTypeToPb = (v: MessageType): pb.MessageType => checkEnum<pb.MessageType>(MessageType, "message type", v);

// ---- conversions ----

function entryToPb(e: Entry): pb.Entry {
  return { term: e.term, index: e.index, type: entryTypeToPb(e.type), data: toBuffer(e.data) };
}

function entryFromPb(e: pb.Entry): Entry {
  return { term: e.term, index: e.index, type: entryTypeFromPb(e.type), data: fromBuffer(e.data) };
}

function confStateToPb(c: ConfState): pb.ConfState {
  return { voters: [...c.voters], learners: [...c.learners], removed: [...c.removed] };
}

function confStateFromPb(c: pb.ConfState | undefined): ConfState {
  return { voters: [...(c?.voters ?? [])], learners: [...(c?.learners ?? [])], removed: [...(c?.removed ?? [])] };
}

function metadataToPb(m: SnapshotMetadata): pb.SnapshotMetadata {
  return { index: m.index, term: m.term, confState: confStateToPb(m.confState) };
}

function metadataFromPb(m: pb.SnapshotMetadata | undefined): SnapshotMetadata {
  return { index: m?.index ?? 0, term: m?.term ?? 0, confState: confStateFromPb(m?.confState) };
}

function chunkToPb(c: SnapshotChunk): pb.SnapshotChunk {
  return { metadata: metadataToPb(c.metadata), offset: c.offset, total: c.total, data: toBuffer(c.data) };
}

function chunkFromPb(c: pb.SnapshotChunk): SnapshotChunk {
  return { metadata: metadataFromPb(c.metadata), offset: c.offset, total: c.total, data: fromBuffer(c.data) };
}

export function messageToPb(m: Message): pb.Message {
  const out: pb.Message = {
    type: messageTypeToPb(m.type),
    from: m.from,
    to: m.to,
    term: m.term,
    logTerm: m.logTerm,
    index: m.index,
    entries: m.entries.map(entryToPb),
    commit: m.commit,
    reject: m.reject,
    rejectHint: m.rejectHint,
    context: toBuffer(m.context),
  };
  if (m.snapshot !== undefined) out.snapshot = chunkToPb(m.snapshot);
  return out;
}

function messageFromPb(m: pb.Message): Message {
  const out: Message = {
    type: messageTypeFromPb(m.type),
    from: m.from,
    to: m.to,
    term: m.term,
    logTerm: m.logTerm,
    index: m.index,
    entries: m.entries.map(entryFromPb),
    commit: m.commit,
    reject: m.reject,
    rejectHint: m.rejectHint,
    context: fromBuffer(m.context),
  };
  if (m.snapshot !== undefined) out.snapshot = chunkFromPb(m.snapshot);
  return out;
}

function confChangeToPb(c: ConfChange): pb.ConfChange {
  return { type: confChangeTypeToPb(c.type), nodeId: c.nodeId, context: toBuffer(c.context) };
}

function confChangeFromPb(c: pb.ConfChange): ConfChange {
  return { type: confChangeTypeFromPb(c.type), nodeId: c.nodeId, context: fromBuffer(c.context) };
}

// ---- bytes in, bytes out ----
// decode* throws CodecError on values the types do not allow, and the protobuf reader's Error on
// malformed input or on numbers beyond Number.MAX_SAFE_INTEGER.

export function encodeMessage(m: Message): Uint8Array {
  return pb.Message.encode(messageToPb(m)).finish();
}

export function decodeMessage(b: Uint8Array): Message {
  return messageFromPb(pb.Message.decode(b));
}

export function encodeEntry(e: Entry): Uint8Array {
  return pb.Entry.encode(entryToPb(e)).finish();
}

export function decodeEntry(b: Uint8Array): Entry {
  return entryFromPb(pb.Entry.decode(b));
}

export function encodeConfChange(c: ConfChange): Uint8Array {
  return pb.ConfChange.encode(confChangeToPb(c)).finish();
}

export function decodeConfChange(b: Uint8Array): ConfChange {
  return confChangeFromPb(pb.ConfChange.decode(b));
}

export function encodeHardState(h: HardState): Uint8Array {
  return pb.HardState.encode({ term: h.term, vote: h.vote, commit: h.commit }).finish();
}

export function decodeHardState(b: Uint8Array): HardState {
  const h = pb.HardState.decode(b);
  return { term: h.term, vote: h.vote, commit: h.commit };
}

export function encodeConfState(c: ConfState): Uint8Array {
  return pb.ConfState.encode(confStateToPb(c)).finish();
}

export function decodeConfState(b: Uint8Array): ConfState {
  return confStateFromPb(pb.ConfState.decode(b));
}

export function encodeSnapshot(s: Snapshot): Uint8Array {
  return pb.Snapshot.encode({ metadata: metadataToPb(s.metadata), data: toBuffer(s.data) }).finish();
}

export function decodeSnapshot(b: Uint8Array): Snapshot {
  const s = pb.Snapshot.decode(b);
  return { metadata: metadataFromPb(s.metadata), data: fromBuffer(s.data) };
}

// ---- the network boundary ----
// Every Raft message that arrives from a peer is parsed against this schema before anything uses it:
// types, ranges and sizes. The limits are far beyond anything a working cluster sends, and keep every
// number well inside the range where the core's arithmetic (term + 1, index + 1) is exact.

/** Entries in one message (the core sends at most ~1 MiB of them, each counted as at least 24 bytes). */
export const MAX_MESSAGE_ENTRIES = 1 << 16;
/** Bytes of one entry (the core refuses proposals over 1.5 MiB). */
export const MAX_ENTRY_BYTES = 2 << 20;
/** Bytes of a message's context (read request ids, the transfer campaign tag). */
export const MAX_CONTEXT_BYTES = 1024;
/** Size of a whole snapshot, and of one chunk of it on the wire. */
const MAX_SNAPSHOT_BYTES = 2 ** 40;
const MAX_SNAPSHOT_CHUNK_BYTES = 8 << 20;
/** Ids in one list of a conf state (members; ids ever removed). */
const MAX_CONF_IDS = 100_000;

const raftNumber = z.number().int().min(0).max(MAX_RAFT_NUMBER);
const raftId = z.number().int().min(1).max(Number.MAX_SAFE_INTEGER);
const bytesUpTo = (max: number) =>
  z.instanceof(Uint8Array).refine((b) => b.length <= max, { message: `must be at most ${max} bytes` });

const entrySchema = z.object({
  term: raftNumber,
  index: raftNumber,
  type: z.enum(EntryType),
  data: bytesUpTo(MAX_ENTRY_BYTES),
});

const idList = z.array(raftId).max(MAX_CONF_IDS);
const confStateSchema = z.object({ voters: idList, learners: idList, removed: idList }).superRefine((c, ctx) => {
  const members = [...c.voters, ...c.learners];
  if (new Set(members).size !== members.length) {
    ctx.addIssue({ code: "custom", message: "a member is listed twice (or as voter and learner)" });
  }
  const removed = new Set(c.removed);
  if (members.some((id) => removed.has(id))) ctx.addIssue({ code: "custom", message: "a member is also removed" });
});

const chunkSchema = z
  .object({
    metadata: z.object({ index: raftNumber.min(1), term: raftNumber.min(1), confState: confStateSchema }),
    offset: z.number().int().min(0).max(MAX_SNAPSHOT_BYTES),
    total: z.number().int().min(0).max(MAX_SNAPSHOT_BYTES),
    data: bytesUpTo(MAX_SNAPSHOT_CHUNK_BYTES),
  })
  .refine((c) => c.offset + c.data.length <= c.total, { message: "chunk runs past the snapshot's total size" });

/** The schema of a Raft message from a peer (exported for tests). */
export const messageSchema = z
  .object({
    type: z.enum(MessageType).refine((t) => !isLocalMessage(t), { message: "is a local message type" }),
    from: raftId,
    to: raftId,
    term: raftNumber,
    logTerm: raftNumber,
    index: raftNumber,
    entries: z.array(entrySchema).max(MAX_MESSAGE_ENTRIES),
    commit: raftNumber,
    reject: z.boolean(),
    rejectHint: raftNumber,
    context: bytesUpTo(MAX_CONTEXT_BYTES),
    snapshot: chunkSchema.optional(),
  })
  .superRefine((m, ctx) => {
    if ((m.type === MessageType.Snap) !== (m.snapshot !== undefined)) {
      ctx.addIssue({ code: "custom", path: ["snapshot"], message: "a snapshot chunk goes with Snap messages only" });
    }
    if (m.entries.length > 0 && m.type !== MessageType.App && m.type !== MessageType.Prop) {
      ctx.addIssue({ code: "custom", path: ["entries"], message: "only App and Prop messages carry entries" });
    }
    if (m.type === MessageType.Prop && m.entries.length === 0) {
      ctx.addIssue({ code: "custom", path: ["entries"], message: "a proposal without entries" });
    }
  });

function describeIssues(e: z.ZodError): string {
  return e.issues
    .slice(0, 3)
    .map((i) => `${i.path.length > 0 ? `${i.path.join(".")}: ` : ""}${i.message}`)
    .join("; ");
}

/**
 * A Raft message from a peer, decoded by gRPC, checked against the schema and converted. Throws
 * CodecError naming the offending field.
 */
export function parseRaftMessage(m: unknown): Message {
  const plain = plainMessage(m);
  if (plain) return plain;
  const r = messageSchema.safeParse(m);
  if (!r.success) throw new CodecError(`invalid raft message: ${describeIssues(r.error)}`);
  const v = r.data;
  const out: Message = {
    type: v.type,
    from: v.from,
    to: v.to,
    term: v.term,
    logTerm: v.logTerm,
    index: v.index,
    entries: v.entries.map((e) => ({ term: e.term, index: e.index, type: e.type, data: fromBuffer(e.data) })),
    commit: v.commit,
    reject: v.reject,
    rejectHint: v.rejectHint,
    context: fromBuffer(v.context),
  };
  if (v.snapshot) {
    const c = v.snapshot;
    out.snapshot = {
      metadata: { index: c.metadata.index, term: c.metadata.term, confState: c.metadata.confState },
      offset: c.offset,
      total: c.total,
      data: fromBuffer(c.data),
    };
  }
  return out;
}

const isRaftNumber = (x: unknown): x is number =>
  typeof x === "number" && Number.isSafeInteger(x) && x >= 0 && x <= MAX_RAFT_NUMBER;
const isRaftId = (x: unknown): x is number => typeof x === "number" && Number.isSafeInteger(x) && x >= 1;
const MESSAGE_TYPES: ReadonlySet<unknown> = new Set(Object.values(MessageType).filter((v) => typeof v === "number"));

/**
 * Most messages (heartbeats, votes and every response: what a leader receives) carry no entries and no
 * snapshot. For those, messageSchema's rules are checked here directly, field by field, which costs a
 * fraction of the schema's generic walk: the same rules (a test compares the two on every shape), and only
 * for acceptance. Anything else, or anything that breaks a rule, goes to messageSchema, which says why.
 */
function plainMessage(m: unknown): Message | undefined {
  if (typeof m !== "object" || m === null) return undefined;
  const v = m as Record<string, unknown>;
  const { type, entries, context } = v;
  if (v.snapshot !== undefined || !Array.isArray(entries) || entries.length !== 0) return undefined;
  if (!MESSAGE_TYPES.has(type)) return undefined;
  const t = type as MessageType;
  if (isLocalMessage(t) || t === MessageType.Snap || t === MessageType.Prop) return undefined;
  if (!isRaftId(v.from) || !isRaftId(v.to) || typeof v.reject !== "boolean") return undefined;
  if (!isRaftNumber(v.term) || !isRaftNumber(v.logTerm) || !isRaftNumber(v.index)) return undefined;
  if (!isRaftNumber(v.commit) || !isRaftNumber(v.rejectHint)) return undefined;
  if (!(context instanceof Uint8Array) || context.length > MAX_CONTEXT_BYTES) return undefined;
  return {
    type: t,
    from: v.from,
    to: v.to,
    term: v.term,
    logTerm: v.logTerm,
    index: v.index,
    entries: [],
    commit: v.commit,
    reject: v.reject,
    rejectHint: v.rejectHint,
    context: fromBuffer(context),
  };
}

const pingSchema = z.object({
  from: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER),
  to: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER),
});

/** A Ping's ids, checked. Throws CodecError. */
export function parsePing(p: unknown): { from: number; to: number } {
  const r = pingSchema.safeParse(p);
  if (!r.success) throw new CodecError(`invalid ping: ${describeIssues(r.error)}`);
  return r.data;
}
