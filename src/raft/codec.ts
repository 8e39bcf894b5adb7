// Protobuf encoding of the Raft types (proto/raft.proto), for the gRPC transport and level storage.
// The core works with the plain types of ./types.ts; this module is the only place that converts between
// them and the generated ones in src/gen/. Numbers are uint64 on the wire and JS numbers here (a value
// beyond Number.MAX_SAFE_INTEGER fails to decode rather than losing precision).

import * as pb from "../gen/raft.js";
import {
  type ConfChange,
  ConfChangeType,
  type ConfState,
  type Entry,
  EntryType,
  type HardState,
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

export function entryToPb(e: Entry): pb.Entry {
  return { term: e.term, index: e.index, type: entryTypeToPb(e.type), data: toBuffer(e.data) };
}

export function entryFromPb(e: pb.Entry): Entry {
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

export function messageFromPb(m: pb.Message): Message {
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

export function confChangeToPb(c: ConfChange): pb.ConfChange {
  return { type: confChangeTypeToPb(c.type), nodeId: c.nodeId, context: toBuffer(c.context) };
}

export function confChangeFromPb(c: pb.ConfChange): ConfChange {
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
