// Autolock: the key-encryption key (KEK) that seals a manager's secrets at rest, shown to people as an
// unlock key in swarmkit's format, SWMKEY-1-<the 32 key bytes in unpadded standard base64>.
//
// What is sealed, and how (a manager's DATA_ROOT/certificates):
//   raft-dek        the Raft data encryption key (DEK), sealed under the KEK with AES-256-GCM
//                   (nonce 12 | ciphertext | tag 16, with a fixed additional-data label)
//   swarm-node.key  the node's TLS key as an encrypted PKCS#8 PEM (PBES2, AES-256-CBC) whose passphrase is
//                   derived from the DEK with HKDF-SHA256, so it opens only once the DEK is unsealed
// Sealing the TLS key under the DEK rather than the KEK itself keeps a KEK change (autolock turned on
// or off, the unlock key rotated) to a single file replaced by rename: a crash at any point leaves a
// manager that opens with either the old or the new key, never one half of each.

import {
  createCipheriv,
  createDecipheriv,
  createPrivateKey,
  hkdfSync,
  type KeyObject,
  randomFillSync,
  timingSafeEqual,
} from "node:crypto";
import { cryptoRandomBytes, type RandomBytes, takeRandom } from "./random.js";

const UNLOCK_KEY_PREFIX = "SWMKEY-1-";
/** The KEK: 32 random bytes (swarmkit's encryption.GenerateSecretKey). */
const KEK_BYTES = 32;

const NONCE_BYTES = 12;
const TAG_BYTES = 16;
const NODE_KEY_INFO = Buffer.from("shoal node TLS key passphrase v1");
const ENCRYPTED_KEY_RE = /-----BEGIN ENCRYPTED PRIVATE KEY-----/;

/** An unlock key that is not of the form SWMKEY-1-<base64>: dockerd's words, a 400. */
export class UnlockKeyFormatError extends Error {
  constructor() {
    super("invalid key string");
    this.name = "UnlockKeyFormatError";
  }
}

/** A new KEK. */
export function generateKek(randomBytes: RandomBytes = cryptoRandomBytes): Buffer {
  return Buffer.from(takeRandom(randomBytes, KEK_BYTES));
}

/** SWMKEY-1-<unpadded standard base64 of the key>. */
export function formatUnlockKey(kek: Uint8Array): string {
  return UNLOCK_KEY_PREFIX + Buffer.from(kek).toString("base64").replace(/=+$/, "");
}

/**
 * The key bytes of an unlock key. Throws UnlockKeyFormatError for a wrong prefix or anything but unpadded
 * standard base64 (as Go's base64.RawStdEncoding). The length is not checked here: a key of the right
 * form but the wrong length is a wrong key, refused when it fails to open what it should open.
 */
export function parseUnlockKey(text: string): Buffer {
  if (typeof text !== "string" || !text.startsWith(UNLOCK_KEY_PREFIX)) throw new UnlockKeyFormatError();
  const b64 = text.slice(UNLOCK_KEY_PREFIX.length);
  if (!/^[A-Za-z0-9+/]*$/.test(b64) || b64.length % 4 === 1) throw new UnlockKeyFormatError();
  const bytes = Buffer.from(b64, "base64");
  // Go rejects non-canonical trailing bits; so do we (the re-encoding must give the same text back).
  if (bytes.toString("base64").replace(/=+$/, "") !== b64) throw new UnlockKeyFormatError();
  return bytes;
}

/** True if two KEKs (or none) are the same key, in constant time for equal lengths. */
export function sameKek(a: Uint8Array | null, b: Uint8Array | null): boolean {
  if (a === null || b === null) return a === b;
  return a.length === b.length && timingSafeEqual(a, b);
}

/** AES-256-GCM under a 32-byte key: nonce | ciphertext | tag, authenticated with `label`. */
export function sealBytes(key: Uint8Array, plaintext: Uint8Array, label: string, randomBytes?: RandomBytes): Buffer {
  checkKey(key);
  const nonce = Buffer.alloc(NONCE_BYTES);
  if (randomBytes) nonce.set(takeRandom(randomBytes, NONCE_BYTES));
  else randomFillSync(nonce);
  const c = createCipheriv("aes-256-gcm", key, nonce, { authTagLength: TAG_BYTES });
  c.setAAD(Buffer.from(label));
  const body = Buffer.concat([c.update(plaintext), c.final()]);
  return Buffer.concat([nonce, body, c.getAuthTag()]);
}

/** Opens what sealBytes() made with the same key and label; undefined for another key, label or any change. */
export function openBytes(key: Uint8Array, sealed: Uint8Array, label: string): Buffer | undefined {
  if (key.length !== 32 || sealed.length < NONCE_BYTES + TAG_BYTES) return undefined;
  const b = Buffer.from(sealed);
  const d = createDecipheriv("aes-256-gcm", key, b.subarray(0, NONCE_BYTES), { authTagLength: TAG_BYTES });
  d.setAAD(Buffer.from(label));
  d.setAuthTag(b.subarray(b.length - TAG_BYTES));
  try {
    return Buffer.concat([d.update(b.subarray(NONCE_BYTES, b.length - TAG_BYTES)), d.final()]);
  } catch {
    return undefined;
  }
}

function checkKey(key: Uint8Array): void {
  if (!(key instanceof Uint8Array) || key.length !== 32) {
    throw new RangeError(`a sealing key is 32 bytes, got ${key?.length ?? typeof key}`);
  }
}

/** The passphrase of a node TLS key sealed under `dek`. */
function nodeKeyPassphrase(dek: Uint8Array): Buffer {
  checkKey(dek);
  return Buffer.from(hkdfSync("sha256", dek, Buffer.alloc(0), NODE_KEY_INFO, 32));
}

/** True for an encrypted PKCS#8 PEM ("ENCRYPTED PRIVATE KEY"). */
export function isSealedNodeKey(pem: string): boolean {
  return ENCRYPTED_KEY_RE.test(pem);
}

/** The node's TLS key (any PEM private key) as an encrypted PKCS#8 PEM that only `dek` opens. */
export function sealNodeKey(keyPem: string, dek: Uint8Array): string {
  const key = createPrivateKey(keyPem);
  return key
    .export({ type: "pkcs8", format: "pem", cipher: "aes-256-cbc", passphrase: nodeKeyPassphrase(dek) })
    .toString();
}

/**
 * The node's TLS key in clear PKCS#8 PEM: `pem` itself if it is not sealed, else opened with `dek`.
 * Throws if it is sealed and `dek` does not open it.
 */
export function openNodeKey(pem: string, dek: Uint8Array | undefined): string {
  if (!isSealedNodeKey(pem)) return pem;
  if (dek === undefined) throw new Error("the node key is sealed and the raft data encryption key is not available");
  let key: KeyObject;
  try {
    key = createPrivateKey({ key: pem, format: "pem", passphrase: nodeKeyPassphrase(dek) });
  } catch (e) {
    throw new Error("the node key is sealed under another data encryption key", { cause: e });
  }
  return key.export({ type: "pkcs8", format: "pem" }).toString();
}
