// Join tokens, in swarmkit's format:
//   SWMTKN-1-<sha256(root CA PEM) in base36, padded to 50>-<16 random bytes in base36, padded to 25>
// The digest lets a joiner check the root CA it fetched over an unverified connection; the secret
// authorises it (one secret per role). Rotation regenerates the secret only.

import { createHash, timingSafeEqual } from "node:crypto";
import { InvalidJoinTokenError } from "./errors.js";
import {
  bytesToBigInt,
  cryptoRandomBytes,
  parseBase36,
  type RandomBytes,
  takeRandom,
  toBase36Padded,
} from "./random.js";

const JOIN_TOKEN_PREFIX = "SWMTKN";
const JOIN_TOKEN_VERSION = 1;
const DIGEST_BASE36_LENGTH = 50;
const SECRET_BASE36_LENGTH = 25;
const SECRET_BYTES = 16;
/** "SWMTKN-1-" + 50 + "-" + 25 */
const JOIN_TOKEN_LENGTH = 9 + DIGEST_BASE36_LENGTH + 1 + SECRET_BASE36_LENGTH;

const MAX_DIGEST = (1n << 256n) - 1n;
const MAX_SECRET = (1n << BigInt(SECRET_BYTES * 8)) - 1n;

export interface ParsedJoinToken {
  /** Token format version (1). */
  version: number;
  /** sha256 of the root CA PEM bundle, 64 lower-case hex digits (same form as RootCA.digest()). */
  digest: string;
  /** The secret part exactly as it appears in the token (25 base36 characters). */
  secret: string;
}

/** sha256 of the root CA PEM bundle exactly as given (no normalisation), as 64 hex digits. */
export function rootDigest(rootPem: string): string {
  return createHash("sha256").update(rootPem, "utf8").digest("hex");
}

/** A new join token for the cluster whose root CA PEM bundle is `rootPem`. */
export function generateJoinToken(rootPem: string, randomBytes: RandomBytes = cryptoRandomBytes): string {
  const digest = toBase36Padded(BigInt(`0x${rootDigest(rootPem)}`), DIGEST_BASE36_LENGTH);
  const secret = toBase36Padded(bytesToBigInt(takeRandom(randomBytes, SECRET_BYTES)), SECRET_BASE36_LENGTH);
  return `${JOIN_TOKEN_PREFIX}-${JOIN_TOKEN_VERSION}-${digest}-${secret}`;
}

/** Parses a join token; throws InvalidJoinTokenError ("invalid join token") for anything malformed. */
export function parseJoinToken(token: string): ParsedJoinToken {
  if (typeof token !== "string") throw new InvalidJoinTokenError("not a string");
  if (token.length !== JOIN_TOKEN_LENGTH) throw new InvalidJoinTokenError("wrong length");
  const parts = token.split("-");
  if (parts.length !== 4) throw new InvalidJoinTokenError("wrong number of fields");
  const [prefix, version, digestPart, secretPart] = parts as [string, string, string, string];
  if (prefix !== JOIN_TOKEN_PREFIX) throw new InvalidJoinTokenError("wrong prefix");
  if (version !== String(JOIN_TOKEN_VERSION)) throw new InvalidJoinTokenError("unsupported version");
  if (digestPart.length !== DIGEST_BASE36_LENGTH) throw new InvalidJoinTokenError("wrong digest length");
  if (secretPart.length !== SECRET_BASE36_LENGTH) throw new InvalidJoinTokenError("wrong secret length");
  const digest = parseBase36(digestPart);
  if (digest === null || digest > MAX_DIGEST) throw new InvalidJoinTokenError("malformed digest");
  const secret = parseBase36(secretPart);
  if (secret === null || secret > MAX_SECRET) throw new InvalidJoinTokenError("malformed secret");
  return { version: JOIN_TOKEN_VERSION, digest: digest.toString(16).padStart(64, "0"), secret: secretPart };
}

/** True if the token was made for the root CA bundle `rootPem` (the digest is public: no constant time). */
export function tokenMatchesRoot(parsed: ParsedJoinToken, rootPem: string): boolean {
  return parsed.digest === rootDigest(rootPem);
}

/**
 * Constant-time comparison of two tokens (or secrets). Strings of different byte length are unequal
 * without comparing content; equal-length strings are compared with crypto.timingSafeEqual.
 */
export function tokensEqual(a: string, b: string): boolean {
  const ab = Buffer.from(a, "utf8");
  const bb = Buffer.from(b, "utf8");
  if (ab.length !== bb.length) return false;
  return timingSafeEqual(ab, bb);
}
