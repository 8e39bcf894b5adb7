// The driver's framing of a proposal inside a Normal log entry, so that a proposer can recognise its own
// entries and learn, from the log alone, whether a proposal was applied or can no longer be.
//
// Version 2 (written now), 24 bytes before the payload:
//   [-runId f64][seq f64][term f64]
//   runId: random per RaftNode instance (>= 1), stored negated: a negative first field marks version 2.
//   seq:   the proposal's number within that run.
//   term:  the term the proposer was in when it stepped the proposal into the core. The leader of that term
//          is the only one that can append it at that term.
// Version 1 (logs written before; still read), 16 bytes: [runId f64][seq f64], runId positive.
//
// The rule that makes outcomes decidable: a version-2 entry whose log term differs from its stamped term
// is not applied (every manager skips it the same way; its proposer is told "not applied"). So a proposal
// stamped with term T can only ever be applied at term T; log terms never decrease along the log; hence
// once a node applies any entry of a term above T, every entry of term T that will ever commit is behind
// it, and a proposal of term T still pending there will never be applied.

import { type Entry, EntryType } from "./types.js";

export const FRAME_V1_BYTES = 16;
export const FRAME_V2_BYTES = 24;

export interface Frame {
  proposer: number;
  seq: number;
  /** The stamped term (version 2); undefined for a version-1 entry. */
  term: number | undefined;
  payload: Uint8Array;
}

/** Frame `payload` as version 2 with term 0; the term is stamped when the proposal is stepped. */
export function encodeFrame(runId: number, seq: number, payload: Uint8Array): Uint8Array {
  const framed = new Uint8Array(FRAME_V2_BYTES + payload.length);
  const dv = new DataView(framed.buffer);
  dv.setFloat64(0, -runId);
  dv.setFloat64(8, seq);
  framed.set(payload, FRAME_V2_BYTES);
  return framed;
}

export function stampTerm(framed: Uint8Array, term: number): void {
  new DataView(framed.buffer, framed.byteOffset, framed.byteLength).setFloat64(16, term);
}

/** The frame of a Normal entry, or undefined if the entry carries none (the leader's no-op, say). */
export function parseFrame(e: Entry): Frame | undefined {
  if (e.type !== EntryType.Normal || e.data.length < FRAME_V1_BYTES) return undefined;
  const dv = new DataView(e.data.buffer, e.data.byteOffset, e.data.byteLength);
  const first = dv.getFloat64(0);
  const seq = dv.getFloat64(8);
  if (first > 0) return { proposer: first, seq, term: undefined, payload: e.data.subarray(FRAME_V1_BYTES) };
  if (!(first < 0) || e.data.length < FRAME_V2_BYTES) return undefined;
  return { proposer: -first, seq, term: dv.getFloat64(16), payload: e.data.subarray(FRAME_V2_BYTES) };
}

/** Whether the state machine gets this frame's payload: not if it was appended at another term. */
export function frameApplies(f: Frame, e: Entry): boolean {
  return f.term === undefined || f.term === e.term;
}

/**
 * What the state machine gets from an entry, with the driver's framing stripped (for tools that read the
 * log directly): undefined for an entry the driver does not apply (no frame, or appended at another term).
 */
export function entryPayload(e: Entry): Uint8Array | undefined {
  const f = parseFrame(e);
  return f && frameApplies(f, e) ? f.payload : undefined;
}
