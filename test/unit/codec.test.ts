import { describe, expect, it, vi } from "vitest";
import * as pb from "../../src/gen/raft.js";
import {
  CodecError,
  decodeConfChange,
  decodeConfState,
  decodeEntry,
  decodeHardState,
  decodeMessage,
  decodeSnapshot,
  encodeConfChange,
  encodeConfState,
  encodeEntry,
  encodeHardState,
  encodeMessage,
  encodeSnapshot,
  MAX_CONTEXT_BYTES,
  MAX_ENTRY_BYTES,
  MAX_MESSAGE_ENTRIES,
  messageSchema,
  messageToPb,
  parseRaftMessage,
} from "../../src/raft/codec.js";
import {
  type ConfChange,
  ConfChangeType,
  type Entry,
  EntryType,
  type Message,
  MessageType,
  newMessage,
  type Snapshot,
} from "../../src/raft/types.js";

const BIG = 2 ** 40;
const bytes = (...xs: number[]): Uint8Array => new Uint8Array(xs);

/** Enum members by name (a numeric TS enum also maps numbers back to names). */
function members(e: Record<string, string | number>): Map<string, number> {
  return new Map(Object.entries(e).filter((kv): kv is [string, number] => typeof kv[1] === "number" && kv[1] >= 0));
}

/** "MESSAGE_TYPE_PRE_VOTE_RESP" -> "prevoteresp"; "PreVoteResp" -> "prevoteresp". */
const norm = (name: string, prefix = ""): string => name.replace(prefix, "").replaceAll("_", "").toLowerCase();

function roundTrip(m: Message): Message {
  const out = decodeMessage(encodeMessage(m));
  expect(out).toEqual(m);
  return out;
}

function sampleMessage(type: MessageType): Message {
  return newMessage({
    type,
    from: 1,
    to: 3,
    term: 7,
    logTerm: 6,
    index: 41,
    commit: 40,
    reject: type === MessageType.AppResp,
    rejectHint: type === MessageType.AppResp ? 12 : 0,
    context: type === MessageType.ReadIndex ? bytes(9, 8, 7) : new Uint8Array(0),
  });
}

describe("raft codec", () => {
  it("generated enums match the Raft types 1:1", () => {
    const pairs: [Record<string, string | number>, Record<string, string | number>, string][] = [
      [MessageType, pb.MessageType, "MESSAGE_TYPE_"],
      [EntryType, pb.EntryType, "ENTRY_TYPE_"],
      [ConfChangeType, pb.ConfChangeType, "CONF_CHANGE_TYPE_"],
    ];
    for (const [ours, gen, prefix] of pairs) {
      const a = [...members(ours)].map(([k, v]) => [norm(k), v]);
      const b = [...members(gen)].map(([k, v]) => [norm(k, prefix), v]);
      expect(b).toEqual(a);
    }
  });

  it("round-trips every message type", () => {
    for (const t of members(MessageType).values()) {
      roundTrip(sampleMessage(t as MessageType));
    }
  });

  it("round-trips an all-defaults message", () => {
    const m = newMessage({ type: MessageType.Hup });
    const wire = encodeMessage(m);
    expect(wire.length).toBe(0);
    expect(decodeMessage(wire)).toEqual(m);
  });

  it("round-trips App with entries, including conf changes and empty no-ops", () => {
    const cc: ConfChange = { type: ConfChangeType.AddLearner, nodeId: 4, context: new TextEncoder().encode("n4:2377") };
    const entries: Entry[] = [
      { term: 5, index: 10, type: EntryType.Normal, data: new Uint8Array(0) },
      { term: 5, index: 11, type: EntryType.Normal, data: bytes(1, 2, 3, 0, 255) },
      { term: 6, index: 12, type: EntryType.ConfChange, data: encodeConfChange(cc) },
    ];
    const m = newMessage({
      type: MessageType.App,
      from: 1,
      to: 2,
      term: 6,
      logTerm: 5,
      index: 9,
      commit: 11,
      entries,
    });
    const out = roundTrip(m);
    expect(out.entries).toHaveLength(3);
    expect(decodeConfChange(out.entries[2]!.data)).toEqual(cc);
  });

  it("round-trips a snapshot chunk with metadata and conf state", () => {
    const data = new Uint8Array(64 * 1024).map((_, i) => i % 251);
    const m = newMessage({
      type: MessageType.Snap,
      from: 1,
      to: 5,
      term: 9,
      snapshot: {
        metadata: { index: 1000, term: 8, confState: { voters: [1, 2, 3], learners: [5], removed: [4] } },
        offset: 128 * 1024,
        total: 1024 * 1024,
        data,
      },
    });
    const out = roundTrip(m);
    expect(out.snapshot?.data).toBeInstanceOf(Uint8Array);
    expect(Buffer.isBuffer(out.snapshot?.data)).toBe(false);
  });

  it("round-trips a snapshot chunk whose metadata is all zero", () => {
    roundTrip(
      newMessage({
        type: MessageType.Snap,
        snapshot: {
          metadata: { index: 0, term: 0, confState: { voters: [], learners: [], removed: [] } },
          offset: 0,
          total: 0,
          data: new Uint8Array(0),
        },
      }),
    );
  });

  it("keeps large numbers exact (2^40 and MAX_SAFE_INTEGER)", () => {
    for (const n of [BIG, BIG + 1, Number.MAX_SAFE_INTEGER]) {
      const m = newMessage({
        type: MessageType.AppResp,
        from: n,
        to: n - 1,
        term: n,
        logTerm: n,
        index: n,
        commit: n,
        rejectHint: n,
        entries: [{ term: n, index: n, type: EntryType.Normal, data: bytes(1) }],
        snapshot: {
          metadata: { index: n, term: n, confState: { voters: [n], learners: [n - 2], removed: [n - 3] } },
          offset: n,
          total: n,
          data: bytes(2),
        },
      });
      roundTrip(m);
    }
  });

  it("round-trips Entry, ConfChange, HardState, ConfState and Snapshot on their own", () => {
    const e: Entry = { term: BIG, index: BIG + 7, type: EntryType.ConfChange, data: bytes(4, 5) };
    expect(decodeEntry(encodeEntry(e))).toEqual(e);

    for (const type of members(ConfChangeType).values()) {
      const c: ConfChange = { type: type as ConfChangeType, nodeId: BIG, context: bytes(1) };
      expect(decodeConfChange(encodeConfChange(c))).toEqual(c);
    }
    const empty: ConfChange = { type: ConfChangeType.AddLearner, nodeId: 0, context: new Uint8Array(0) };
    expect(decodeConfChange(encodeConfChange(empty))).toEqual(empty);

    const h = { term: BIG, vote: 3, commit: BIG - 1 };
    expect(decodeHardState(encodeHardState(h))).toEqual(h);

    const cs = { voters: [1, 2, BIG], learners: [], removed: [7] };
    expect(decodeConfState(encodeConfState(cs))).toEqual(cs);

    const s: Snapshot = {
      metadata: { index: BIG, term: 3, confState: { voters: [1], learners: [2], removed: [] } },
      data: bytes(1, 2, 3),
    };
    expect(decodeSnapshot(encodeSnapshot(s))).toEqual(s);
  });

  it("decoded bytes do not alias the input buffer", () => {
    const wire = encodeEntry({ term: 1, index: 1, type: EntryType.Normal, data: bytes(1, 2, 3) });
    const out = decodeEntry(wire);
    wire.fill(0);
    expect(out.data).toEqual(bytes(1, 2, 3));
  });

  it("encodes Buffer and offset Uint8Array views correctly", () => {
    const backing = bytes(9, 9, 1, 2, 3, 9);
    const view = backing.subarray(2, 5);
    const e: Entry = { term: 1, index: 2, type: EntryType.Normal, data: view };
    expect(decodeEntry(encodeEntry(e)).data).toEqual(bytes(1, 2, 3));
    const b: Entry = { ...e, data: Buffer.from([1, 2, 3]) };
    expect(decodeEntry(encodeEntry(b)).data).toEqual(bytes(1, 2, 3));
  });

  it("rejects unknown enum values and numbers beyond MAX_SAFE_INTEGER", () => {
    const unknownType = pb.Message.encode({ ...pb.Message.fromPartial({}), type: 99 as pb.MessageType }).finish();
    expect(() => decodeMessage(unknownType)).toThrow(CodecError);

    const unknownCc = pb.ConfChange.encode({ type: 42 as pb.ConfChangeType, nodeId: 1, context: Buffer.alloc(0) });
    expect(() => decodeConfChange(unknownCc.finish())).toThrow(CodecError);

    expect(() => encodeMessage(newMessage({ type: 77 as MessageType }))).toThrow(CodecError);

    const huge = pb.HardState.encode({ term: 2 ** 60, vote: 0, commit: 0 }).finish();
    expect(() => decodeHardState(huge)).toThrow(/MAX_SAFE_INTEGER/);
  });

  it("rejects malformed input", () => {
    expect(() => decodeMessage(bytes(0x0a, 0xff, 0xff))).toThrow();
  });
});

describe("parseRaftMessage: the schema every message from a peer passes", () => {
  const ok = messageToPb(
    newMessage({
      type: MessageType.App,
      from: 1,
      to: 2,
      term: 5,
      logTerm: 4,
      index: 10,
      commit: 9,
      entries: [{ term: 5, index: 11, type: EntryType.Normal, data: bytes(1, 2) }],
    }),
  );

  it("accepts a well-formed message and converts it to the core's types", () => {
    const m = parseRaftMessage(ok);
    expect(m).toMatchObject({ type: MessageType.App, from: 1, to: 2, term: 5, index: 10, commit: 9 });
    expect(m.entries[0]!.data).toEqual(bytes(1, 2));
    expect(Buffer.isBuffer(m.entries[0]!.data)).toBe(false);
  });

  it("refuses out-of-range numbers, local and unknown types, and oversized parts, naming the field", () => {
    const entry = (data: Buffer) => ({ term: 5, index: 11, type: pb.EntryType.ENTRY_TYPE_NORMAL, data });
    const cases: [Partial<pb.Message>, RegExp][] = [
      [{ term: 2 ** 53 - 1 }, /^invalid raft message: term: /],
      [{ index: 2 ** 48 + 1 }, /index/],
      [{ commit: -1 }, /commit/],
      [{ term: 1.5 }, /term/],
      [{ from: 0 }, /from/],
      [{ type: pb.MessageType.MESSAGE_TYPE_HUP }, /local message type/],
      [{ type: 99 as pb.MessageType }, /type/],
      [{ context: Buffer.alloc(MAX_CONTEXT_BYTES + 1) }, /context/],
      [{ entries: [entry(Buffer.alloc(MAX_ENTRY_BYTES + 1))] }, /entries\.0\.data/],
      [{ entries: Array.from({ length: MAX_MESSAGE_ENTRIES + 1 }, () => entry(Buffer.alloc(0))) }, /entries/],
      [{ type: pb.MessageType.MESSAGE_TYPE_HEARTBEAT }, /only App and Prop messages carry entries/],
      [{ type: pb.MessageType.MESSAGE_TYPE_PROP, entries: [] }, /without entries/],
    ];
    for (const [patch, want] of cases) {
      expect(() => parseRaftMessage({ ...ok, ...patch }), String(want)).toThrow(want);
    }
    expect(() => parseRaftMessage(null)).toThrow(CodecError);
    expect(() => parseRaftMessage({})).toThrow(CodecError);
  });

  it("a message without entries or snapshot (heartbeats, votes, responses) is checked field by field, exactly as the schema", () => {
    const hb = messageToPb(
      newMessage({ type: MessageType.HeartbeatResp, from: 2, to: 1, term: 5, commit: 9, context: bytes(7) }),
    );
    const schema = vi.spyOn(messageSchema, "safeParse");
    try {
      expect(parseRaftMessage(hb)).toMatchObject({ type: MessageType.HeartbeatResp, from: 2, to: 1, term: 5 });
      // Not through the schema's generic walk.
      expect(schema).not.toHaveBeenCalled();
    } finally {
      schema.mockRestore();
    }
    // Accepted exactly when the schema accepts, with the same value, over every field and many values.
    const values: unknown[] = [0, 1, -1, -0, 1.5, 2 ** 48, 2 ** 48 + 1, 2 ** 53, Number.NaN, Number.POSITIVE_INFINITY];
    values.push("1", null, undefined, true, false, {}, [], Buffer.alloc(0), Buffer.alloc(MAX_CONTEXT_BYTES));
    values.push(Buffer.alloc(MAX_CONTEXT_BYTES + 1), new Uint8Array(3), [
      { term: 1, index: 1, type: 0, data: bytes() },
    ]);
    values.push(...Object.values(pb.MessageType));
    const fields = ["type", "from", "to", "term", "logTerm", "index", "commit", "reject", "rejectHint", "context"];
    let accepted = 0;
    for (const field of [...fields, "entries", "snapshot"]) {
      for (const value of values) {
        const x = { ...hb, [field]: value };
        const want = messageSchema.safeParse(x);
        let got: Message | undefined;
        try {
          got = parseRaftMessage(x);
        } catch {
          got = undefined;
        }
        expect(got !== undefined, `${field} = ${String(value)}`).toBe(want.success);
        if (!got || !want.success) continue;
        accepted++;
        const { entries: _e, snapshot: _s, context, ...rest } = want.data;
        expect(got).toEqual({ ...rest, entries: [], context: new Uint8Array(context) });
      }
    }
    expect(accepted).toBeGreaterThan(40);
  });

  it("checks a snapshot chunk: only on Snap, within its total, with a sound conf state", () => {
    const snap = (over: Partial<pb.SnapshotChunk>, cs = { voters: [1, 2], learners: [3], removed: [4] }) => ({
      ...ok,
      entries: [],
      type: pb.MessageType.MESSAGE_TYPE_SNAP,
      snapshot: { metadata: { index: 7, term: 2, confState: cs }, offset: 0, total: 4, data: Buffer.alloc(4), ...over },
    });
    expect(parseRaftMessage(snap({})).snapshot).toMatchObject({ offset: 0, total: 4, metadata: { index: 7 } });
    expect(() => parseRaftMessage(snap({ offset: 2 }))).toThrow(/past the snapshot's total/);
    expect(() => parseRaftMessage(snap({}, { voters: [1, 2], learners: [2], removed: [] }))).toThrow(/listed twice/);
    expect(() => parseRaftMessage(snap({}, { voters: [1], learners: [], removed: [1] }))).toThrow(/also removed/);
    expect(() => parseRaftMessage(snap({ metadata: undefined }))).toThrow(/metadata/);
    expect(() => parseRaftMessage({ ...snap({}), type: pb.MessageType.MESSAGE_TYPE_HEARTBEAT })).toThrow(
      /Snap messages only/,
    );
  });
});
