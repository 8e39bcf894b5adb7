// The overlay keyring's pure functions (AES-128-GCM, a 16-byte key and a 4-byte salt per key, three keys
// ascending by tag): creating keys, the deterministic apply of the keys.* store commands, and the views
// agents and users get. The leader loop that rotates on schedule is src/manager/keymanager.ts.
//
// The schedule is part of the stored keyring (lastRotation, intervalMs), so a new leader picks it up where
// the old one left it. A rotation names the newest tag its proposer saw, and the apply refuses it if the
// ring has moved on. Key material is never logged: logs, inspect output and anything user-facing get
// redact(ring), which carries tags and times only.

import { randomBytes as nodeRandomBytes } from "node:crypto";
import type { Keyring, NetworkKey } from "../api/objects.js";

export const KEY_BYTES = 16;
export const SALT_BYTES = 4;
export const KEYRING_SIZE = 3;
export const KEY_ALGORITHM = "AES_128_GCM";
/** The default of --encryption-key-rotation. */
export const DEFAULT_KEY_ROTATION_MS = 12 * 60 * 60 * 1000;
/** The loop re-checks at least this often, whatever the next due time (clock jumps, lost timers). */
export const DEFAULT_MAX_POLL_MS = 60_000;

/** Returns `n` random bytes; production uses node:crypto, tests inject their own. */
export type RandomBytes = (n: number) => Uint8Array;

export type { Keyring, NetworkKey } from "../api/objects.js";

// ------------------------------------------------------------------ store commands

/** Create the keyring (the first leader, once). Refused if one exists. */
export interface KeysInitCommand {
  op: "keys.init";
  ring: Keyring;
}

/**
 * Rotate: append `key`, drop the oldest, lastRotation = rotatedAt. Refused unless the ring's newest tag
 * is still `expectTag` (the newest tag the proposer saw).
 *
 * The rotation time is `rotatedAt`, not `at`: store.encodeCommand stamps every entry with its own
 * `at` (the proposer's wall clock at proposal), which would overwrite a field of that name.
 */
export interface KeysRotateCommand {
  op: "keys.rotate";
  expectTag: number;
  key: NetworkKey;
  rotatedAt: string;
}

/** Change the rotation interval (--encryption-key-rotation); the next due time counts from lastRotation. */
export interface KeysIntervalCommand {
  op: "keys.interval";
  intervalMs: number;
}

export type KeysCommand = KeysInitCommand | KeysRotateCommand | KeysIntervalCommand;

export type KeysApplyResult = { ok: true; ring: Keyring } | { ok: false; reason: string; conflict: boolean };

// ------------------------------------------------------------------ pure keyring functions

function b64(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("base64");
}

function take(rand: RandomBytes, n: number): Uint8Array {
  const b = rand(n);
  if (b.length !== n) throw new Error(`random source returned ${b.length} bytes, expected ${n}`);
  return b;
}

export const cryptoRandomBytes: RandomBytes = (n) => nodeRandomBytes(n);

/** A fresh key with `tag`: 16 random key bytes and 4 random salt bytes. */
export function newKey(tag: number, randomBytes: RandomBytes = cryptoRandomBytes): NetworkKey {
  if (!Number.isSafeInteger(tag) || tag < 1) throw new RangeError(`invalid key tag ${tag}`);
  return { tag, key: b64(take(randomBytes, KEY_BYTES)), salt: b64(take(randomBytes, SALT_BYTES)) };
}

/** The first keyring: three fresh keys, tags 1..3, with `now` as its last rotation. */
export function initialKeyring(
  now: Date,
  intervalMs: number = DEFAULT_KEY_ROTATION_MS,
  randomBytes: RandomBytes = cryptoRandomBytes,
): Keyring {
  checkInterval(intervalMs);
  const keys: NetworkKey[] = [];
  for (let tag = 1; tag <= KEYRING_SIZE; tag++) keys.push(newKey(tag, randomBytes));
  return { keys, lastRotation: now.toISOString(), intervalMs };
}

export function checkInterval(ms: number): void {
  if (!Number.isSafeInteger(ms) || ms <= 0) throw new RangeError(`invalid key rotation interval ${ms} ms`);
}

export function newestTag(ring: Keyring): number {
  const last = ring.keys[ring.keys.length - 1];
  if (!last) throw new Error("keyring is empty");
  return last.tag;
}

/** When the next rotation is due: one interval after the last rotation. */
export function nextRotationAt(ring: Keyring): Date {
  return new Date(Date.parse(ring.lastRotation) + ring.intervalMs);
}

/**
 * Due when now - lastRotation >= intervalMs. However long the cluster was down, this is one rotation:
 * the rotation sets lastRotation = now, so the next one is due a full interval later.
 */
export function rotationDue(ring: Keyring, now: Date): boolean {
  return now.getTime() - Date.parse(ring.lastRotation) >= ring.intervalMs;
}

/** The ring after a rotation: `key` appended, the oldest dropped, lastRotation = now. Pure. */
export function rotatedKeyring(ring: Keyring, key: NetworkKey, now: Date): Keyring {
  const keys = [...ring.keys, { ...key }].sort((a, b) => a.tag - b.tag);
  return { keys: keys.slice(-KEYRING_SIZE), lastRotation: now.toISOString(), intervalMs: ring.intervalMs };
}

/** What a proposer sends to rotate `ring` now. */
export function rotateCommand(
  ring: Keyring,
  now: Date,
  randomBytes: RandomBytes = cryptoRandomBytes,
): KeysRotateCommand {
  const expectTag = newestTag(ring);
  return { op: "keys.rotate", expectTag, key: newKey(expectTag + 1, randomBytes), rotatedAt: now.toISOString() };
}

function validBase64(s: unknown, bytes: number): boolean {
  if (typeof s !== "string") return false;
  const b = Buffer.from(s, "base64");
  return b.length === bytes && b.toString("base64") === s;
}

/** Why `k` is not a well-formed key (never echoing its material), or undefined. */
function keyProblem(k: NetworkKey | undefined): string | undefined {
  if (!k || typeof k !== "object") return "missing key";
  if (!Number.isSafeInteger(k.tag) || k.tag < 1) return "invalid key tag";
  if (!validBase64(k.key, KEY_BYTES)) return `key ${k.tag}: the key must be ${KEY_BYTES} bytes, base64`;
  if (!validBase64(k.salt, SALT_BYTES)) return `key ${k.tag}: the salt must be ${SALT_BYTES} bytes, base64`;
  return undefined;
}

function validIso(s: unknown): s is string {
  return typeof s === "string" && !Number.isNaN(Date.parse(s));
}

function refuse(reason: string, conflict = false): KeysApplyResult {
  return { ok: false, reason, conflict };
}

function copyRing(r: Keyring): Keyring {
  return { keys: r.keys.map((k) => ({ ...k })), lastRotation: r.lastRotation, intervalMs: r.intervalMs };
}

/** Apply keys.init. Deterministic; `ring` is not modified. */
export function applyInit(ring: Keyring | undefined, cmd: KeysInitCommand): KeysApplyResult {
  if (ring) return refuse(`the keyring already exists (newest key ${newestTag(ring)})`, true);
  const r = cmd.ring;
  if (!r || !Array.isArray(r.keys) || r.keys.length !== KEYRING_SIZE)
    return refuse(`a keyring holds ${KEYRING_SIZE} keys`);
  for (const k of r.keys) {
    const p = keyProblem(k);
    if (p) return refuse(p);
  }
  for (let i = 1; i < r.keys.length; i++) {
    if ((r.keys[i] as NetworkKey).tag <= (r.keys[i - 1] as NetworkKey).tag)
      return refuse("keyring tags must be strictly ascending");
  }
  if (!validIso(r.lastRotation)) return refuse("invalid lastRotation time");
  if (!Number.isSafeInteger(r.intervalMs) || r.intervalMs <= 0) return refuse("invalid key rotation interval");
  return { ok: true, ring: copyRing(r) };
}

/** Apply keys.rotate. Deterministic; `ring` is not modified. */
export function applyRotate(ring: Keyring | undefined, cmd: KeysRotateCommand): KeysApplyResult {
  if (!ring) return refuse("there is no keyring to rotate");
  const newest = newestTag(ring);
  if (newest !== cmd.expectTag)
    return refuse(`the keyring moved on: newest key is ${newest}, the rotation expected ${cmd.expectTag}`, true);
  const p = keyProblem(cmd.key);
  if (p) return refuse(p);
  if (cmd.key.tag <= newest) return refuse(`the new key's tag ${cmd.key.tag} must be above ${newest}`);
  if (!validIso(cmd.rotatedAt)) return refuse("invalid rotation time");
  return { ok: true, ring: rotatedKeyring(ring, cmd.key, new Date(cmd.rotatedAt)) };
}

/** Apply keys.interval. Deterministic; `ring` is not modified. */
export function applyInterval(ring: Keyring | undefined, cmd: KeysIntervalCommand): KeysApplyResult {
  if (!ring) return refuse("there is no keyring");
  if (!Number.isSafeInteger(cmd.intervalMs) || cmd.intervalMs <= 0) return refuse("invalid key rotation interval");
  return { ok: true, ring: { ...copyRing(ring), intervalMs: cmd.intervalMs } };
}

/** Apply any keys.* command: the one entry point for Store.apply. */
export function applyKeys(ring: Keyring | undefined, cmd: KeysCommand): KeysApplyResult {
  switch (cmd.op) {
    case "keys.init":
      return applyInit(ring, cmd);
    case "keys.rotate":
      return applyRotate(ring, cmd);
    case "keys.interval":
      return applyInterval(ring, cmd);
    default:
      return refuse("unknown keys command");
  }
}

// ------------------------------------------------------------------ views

/** The key agents encrypt with (tx): the middle one. The newest is receive-only until the next rotation. */
export function primaryKey(ring: Keyring): NetworkKey {
  const sorted = [...ring.keys].sort((a, b) => a.tag - b.tag);
  const k = sorted[Math.floor((sorted.length - 1) / 2)];
  if (!k) throw new Error("keyring is empty");
  return { ...k };
}

export interface AgentKey extends NetworkKey {
  primary: boolean;
}

/** What an agent gets down its session: every key, ascending, the primary one marked. */
export interface AgentKeys {
  algorithm: typeof KEY_ALGORITHM;
  primaryTag: number;
  keys: AgentKey[];
  /** When the ring last rotated (ISO), and the interval: shown by `network inspect` on the host. */
  lastRotation: string;
  intervalMs: number;
}

export function agentView(ring: Keyring): AgentKeys {
  const primaryTag = primaryKey(ring).tag;
  const keys = [...ring.keys].sort((a, b) => a.tag - b.tag).map((k) => ({ ...k, primary: k.tag === primaryTag }));
  return { algorithm: KEY_ALGORITHM, primaryTag, keys, lastRotation: ring.lastRotation, intervalMs: ring.intervalMs };
}

/** The little of a network the key push needs (store.NetworkRecord fits). */
export interface NetworkLike {
  id: string;
  spec: { options: Record<string, string> };
}

/** The little of an endpoint the key push needs (store.EndpointRecord fits). */
export interface EndpointLike {
  nodeId: string;
  networkId: string;
}

/** `--opt encrypted` (any value, as Docker: the option's presence). */
export function isEncryptedNetwork(n: NetworkLike): boolean {
  return n.spec.options.encrypted !== undefined;
}

/** Whether `nodeId` holds an encrypted network (has an endpoint on one): only such nodes get keys. */
export function nodeNeedsKeys(
  nodeId: string,
  networks: Iterable<NetworkLike>,
  endpoints: Iterable<EndpointLike>,
): boolean {
  const encrypted = new Set<string>();
  for (const n of networks) if (isEncryptedNetwork(n)) encrypted.add(n.id);
  if (encrypted.size === 0) return false;
  for (const e of endpoints) if (e.nodeId === nodeId && encrypted.has(e.networkId)) return true;
  return false;
}

/** The keys to push down `nodeId`'s session, or undefined if it must not have them. */
export function keysForNode(
  ring: Keyring | undefined,
  nodeId: string,
  networks: Iterable<NetworkLike>,
  endpoints: Iterable<EndpointLike>,
): AgentKeys | undefined {
  if (!ring || !nodeNeedsKeys(nodeId, networks, endpoints)) return undefined;
  return agentView(ring);
}

/** Safe to log or show in inspect: tags and times, never key material. */
export interface RedactedKeyring {
  algorithm: typeof KEY_ALGORITHM;
  tags: number[];
  primaryTag: number;
  lastRotation: string;
  nextRotation: string;
  intervalMs: number;
}

export function redact(ring: Keyring): RedactedKeyring {
  return {
    algorithm: KEY_ALGORITHM,
    tags: ring.keys.map((k) => k.tag).sort((a, b) => a - b),
    primaryTag: primaryKey(ring).tag,
    lastRotation: ring.lastRotation,
    nextRotation: nextRotationAt(ring).toISOString(),
    intervalMs: ring.intervalMs,
  };
}
