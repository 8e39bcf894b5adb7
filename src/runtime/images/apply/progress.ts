// How the main thread tells the worker about a growing layer file: a SharedArrayBuffer of three BigInt64
// slots. Every change bumps GEN and notifies it, so a worker waiting on GEN (Atomics.wait[Async]) cannot
// miss one.

export const GEN = 0;
export const AVAILABLE = 1;
export const STATUS = 2;

export const RUNNING = 0;
/** All bytes are in and verified. */
export const DONE = 1;
/** The download failed. */
export const FAILED = 2;
/** The caller aborted the apply. */
export const ABORTED = 3;

export function newProgress(): BigInt64Array {
  return new BigInt64Array(new SharedArrayBuffer(3 * 8));
}

export function publish(state: BigInt64Array, change: { available?: number; status?: number }): void {
  if (change.available !== undefined) Atomics.store(state, AVAILABLE, BigInt(Math.floor(change.available)));
  if (change.status !== undefined) Atomics.store(state, STATUS, BigInt(change.status));
  Atomics.add(state, GEN, 1n);
  Atomics.notify(state, GEN);
}

/** What the worker is asked to do. */
export interface Job {
  id: number;
  /** The layer file, opened by the main thread (a descriptor is the process's: the file may be renamed or
   *  unlinked by the pull meanwhile) and closed by it once the worker answers. */
  fd: number;
  size: number;
  gzip: boolean;
  hash: boolean;
  target: { kind: "bind" | "overlay"; root: string; lowers: string[]; staged?: boolean };
  progress: BigInt64Array;
}

export type ErrorKind = "unsupported" | "format" | "aborted" | "failed" | "source";

/** What it answers. */
export type Result =
  | { id: number; ok: true; diffId?: string; stats: { bytes: number }; implicit: string[] }
  | { id: number; ok: false; kind: ErrorKind; message: string };
