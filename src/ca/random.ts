// Injected randomness and base36 encoding shared by ids and join tokens.

import { randomBytes as nodeRandomBytes } from "node:crypto";

/** Returns `n` random bytes. Tests inject a deterministic source; production uses node:crypto. */
export type RandomBytes = (n: number) => Uint8Array;

export const cryptoRandomBytes: RandomBytes = (n) => nodeRandomBytes(n);

/** Calls `rand(n)` and checks it returned exactly `n` bytes. */
export function takeRandom(rand: RandomBytes, n: number): Uint8Array {
  const b = rand(n);
  if (b.length !== n) throw new Error(`random source returned ${b.length} bytes, expected ${n}`);
  return b;
}

/** Big-endian unsigned integer from bytes. */
export function bytesToBigInt(bytes: Uint8Array): bigint {
  let n = 0n;
  for (const b of bytes) n = (n << 8n) | BigInt(b);
  return n;
}

/** Lower-case base36 of a non-negative integer, left-padded with "0" to `width` (like Go's %0*s of Text(36)). */
export function toBase36Padded(n: bigint, width: number): string {
  if (n < 0n) throw new RangeError("negative");
  return n.toString(36).padStart(width, "0");
}

/** Parses lower-case base36 digits. Returns null for an empty string or any other character. */
export function parseBase36(s: string): bigint | null {
  if (s.length === 0 || !/^[0-9a-z]+$/.test(s)) return null;
  let n = 0n;
  for (const c of s) n = n * 36n + BigInt(Number.parseInt(c, 36));
  return n;
}
