// The one place that loads @peculiar/x509. It needs a Reflect polyfill (tsyringe) evaluated before it, and
// a WebCrypto provider; Node's own webcrypto is used. Every file in src/ca imports x509 from here.

import "reflect-metadata";
import { webcrypto } from "node:crypto";
import * as x509 from "@peculiar/x509";

x509.cryptoProvider.set(webcrypto);

export { x509 };
export const subtle: webcrypto.SubtleCrypto = webcrypto.subtle;
export type CryptoKey = webcrypto.CryptoKey;

/** ECDSA P-256 with SHA-256: the only key and signature algorithm shoal issues or accepts. */
export const EC_KEY_PARAMS: webcrypto.EcKeyGenParams = { name: "ECDSA", namedCurve: "P-256" };
export const EC_SIGN_PARAMS: webcrypto.EcdsaParams = { name: "ECDSA", hash: "SHA-256" };

/** Generates an extractable ECDSA P-256 key pair. */
export async function generateEcKeyPair(): Promise<webcrypto.CryptoKeyPair> {
  return (await subtle.generateKey(EC_KEY_PARAMS, true, ["sign", "verify"])) as webcrypto.CryptoKeyPair;
}

/** Exports a private key as PKCS#8 PEM ("-----BEGIN PRIVATE KEY-----"). */
export async function privateKeyToPem(key: CryptoKey): Promise<string> {
  const der = await subtle.exportKey("pkcs8", key);
  return x509.PemConverter.encode(der, "PRIVATE KEY") + "\n";
}

/** PEM with a trailing newline: the form written to disk and hashed for the join-token digest. */
export function certToPem(cert: x509.X509Certificate | x509.Pkcs10CertificateRequest): string {
  const pem = cert.toString("pem");
  return pem.endsWith("\n") ? pem : `${pem}\n`;
}

/**
 * A random positive serial number of at most 16 bytes, as hex: 16 random bytes with the top bit cleared
 * (so the DER INTEGER is positive without a pad byte) and never zero.
 */
export function randomSerialHex(rand: (n: number) => Uint8Array): string {
  const b = Uint8Array.from(rand(16));
  if (b.length !== 16) throw new Error(`random source returned ${b.length} bytes, expected 16`);
  b[0] = (b[0] ?? 0) & 0x7f;
  if (b.every((x) => x === 0)) b[15] = 1;
  return Buffer.from(b).toString("hex");
}
