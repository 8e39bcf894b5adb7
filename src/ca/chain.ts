// Certificate chains and issuers, for root CA rotation. A node's certificate file may hold its leaf and,
// during and after a rotation, the cross-signed intermediate (the new root's key signed by the old root),
// so that the leaf chains to either root. The issuer of a node's certificate (its subject and public key,
// DER in base64 as Go marshals []byte) is what the docker CLI compares with the cluster's desired issuer to
// show the progress of `docker swarm ca --rotate`.

import { createPublicKey, type KeyObject, X509Certificate as NodeX509Certificate, verify } from "node:crypto";
import type { TLSInfo } from "../api/objects.js";
import { bytesOf, childrenOf, contentsOf, DerError, expectTag, readElement, TAG } from "./der.js";
import { x509 } from "./x509.js";

/** Chains longer than this (leaf, intermediates, root) are not followed. */
const MAX_CHAIN_DEPTH = 4;

/** The PEM CERTIFICATE blocks of a bundle, each with a trailing newline, in order. */
export function splitPemCerts(pem: string): string[] {
  return (pem.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? []).map((b) => `${b}\n`);
}

/** The subject and public key of a CA certificate, as docker shows a TLSInfo's issuer. */
export interface IssuerInfo {
  /** Base64 of the DER subject name. */
  subject: string;
  /** Base64 of the DER SubjectPublicKeyInfo. */
  publicKey: string;
}

/**
 * The issuer info of the first certificate of `pem`: its subject Name and SubjectPublicKeyInfo as they are
 * in the certificate, read with the DER reader (~20 us). The ASN.1 library took ~1.5 ms, on every session a
 * node starts (its description's TLSInfo) and on every simulated node of the scale bench; it still reads a
 * certificate the DER reader cannot, and says what is wrong with one that is not a certificate.
 */
export function issuerInfoOf(pem: string): IssuerInfo {
  const first = splitPemCerts(pem)[0];
  if (first !== undefined) {
    const der = Buffer.from(first.replace(/-----(BEGIN|END) CERTIFICATE-----/g, ""), "base64");
    try {
      const { subject, spki } = subjectAndKeyOf(der);
      return { subject: subject.toString("base64"), publicKey: spki.toString("base64") };
    } catch (e) {
      if (!(e instanceof DerError)) throw e;
    }
  }
  const cert = new x509.X509Certificate(pem);
  return {
    subject: Buffer.from(cert.subjectName.toArrayBuffer()).toString("base64"),
    publicKey: Buffer.from(cert.publicKey.rawData).toString("base64"),
  };
}

/** A certificate's (DER) subject Name and SubjectPublicKeyInfo, each element's bytes as they are. */
function subjectAndKeyOf(der: Buffer): { subject: Buffer; spki: Buffer } {
  const outer = expectTag(readElement(der, 0), TAG.SEQUENCE, "the certificate");
  if (outer.end !== der.length) throw new DerError("bytes after the certificate");
  const tbs = expectTag(childrenOf(der, outer)[0], TAG.SEQUENCE, "the TBSCertificate");
  const fields = childrenOf(der, tbs);
  // [0] version (absent in v1), serial, signature, issuer, validity, subject, subjectPublicKeyInfo
  const at = fields[0]?.tag === 0xa0 ? 5 : 4;
  const subject = expectTag(fields[at], TAG.SEQUENCE, "the subject");
  const spki = expectTag(fields[at + 1], TAG.SEQUENCE, "the subjectPublicKeyInfo");
  return { subject: Buffer.from(bytesOf(der, subject)), spki: Buffer.from(bytesOf(der, spki)) };
}

/** A cluster's TLSInfo: its trust root, and the issuer nodes' certificates should have. */
export function clusterTLSInfo(rootPem: string, issuerPem: string = rootPem): TLSInfo {
  const issuer = issuerInfoOf(issuerPem);
  return { TrustRoot: rootPem, CertIssuerSubject: issuer.subject, CertIssuerPublicKey: issuer.publicKey };
}

function issuedBy(child: NodeX509Certificate, parent: NodeX509Certificate): boolean {
  return child.checkIssued(parent) && child.verify(parent.publicKey);
}

function validAt(c: NodeX509Certificate, now: Date): boolean {
  const t = now.getTime();
  return Date.parse(c.validFrom) <= t && t <= Date.parse(c.validTo);
}

function parseAll(pem: string): NodeX509Certificate[] {
  return splitPemCerts(pem).map((b) => new NodeX509Certificate(b));
}

/** The certificate (of the chain's intermediates, then of the roots) that signed the chain's leaf. */
function leafIssuer(chainPem: string, rootsPem: string): string | undefined {
  const chain = splitPemCerts(chainPem);
  const leafPem = chain[0];
  if (leafPem === undefined) return undefined;
  const candidates = [...chain.slice(1), ...splitPemCerts(rootsPem)];
  const fast = leafIssuerFromDer(leafPem, candidates);
  if (fast !== FALLBACK) return fast;
  const leaf = new NodeX509Certificate(leafPem);
  for (const cand of candidates) {
    if (issuedBy(leaf, new NodeX509Certificate(cand))) return cand;
  }
  return undefined;
}

const FALLBACK = Symbol("fallback");

/** ECDSA signature algorithms (the keys shoal's CAs have) and their hash, by the OID's DER contents (hex). */
const ECDSA_HASHES = new Map<string, string>([
  ["2a8648ce3d040302", "sha256"],
  ["2a8648ce3d040303", "sha384"],
  ["2a8648ce3d040304", "sha512"],
]);

/**
 * leafIssuer read with the DER reader: the first candidate whose subject is the leaf's issuer name and whose
 * key verifies the leaf's signature, as X509Certificate's checkIssued and verify found it. A node does this at
 * every session it starts (its description's TLSInfo), a simulator of the scale bench for each of its nodes:
 * Node's X509Certificate parses the whole leaf and each candidate (OpenSSL 3.0 decodes each one's key through
 * its decoders), and makes a new key object of each candidate for each check (~0.5 ms in all). The candidates
 * (the roots, the cross-signed intermediate) are the same every time: each one's subject and key are read
 * once. FALLBACK for what this does not read (not DER it knows, a signature other than ECDSA with SHA-2), and
 * when no candidate is found.
 */
function leafIssuerFromDer(leafPem: string, candidates: string[]): string | typeof FALLBACK {
  let leaf: { tbs: Buffer; issuer: Buffer; hash: string | undefined; signature: Buffer };
  try {
    leaf = signedPartsOf(derOfPem(leafPem));
  } catch (e) {
    if (e instanceof DerError) return FALLBACK;
    throw e;
  }
  if (leaf.hash === undefined) return FALLBACK;
  for (const cand of candidates) {
    const issuer = candidateOf(cand);
    if (issuer === undefined) return FALLBACK;
    if (!issuer.subject.equals(leaf.issuer) || issuer.key.asymmetricKeyType !== "ec") continue;
    let ok = false;
    try {
      ok = verify(leaf.hash, leaf.tbs, issuer.key, leaf.signature);
    } catch {
      ok = false;
    }
    if (ok) return cand;
  }
  // None: X509Certificate says so (it compares names in their canonical form, not byte for byte).
  return FALLBACK;
}

function derOfPem(pem: string): Buffer {
  return Buffer.from(pem.replace(/-----(BEGIN|END) CERTIFICATE-----/g, ""), "base64");
}

/** A certificate's signed bytes (TBSCertificate), its issuer Name, its signature and the signature's hash. */
function signedPartsOf(der: Buffer): { tbs: Buffer; issuer: Buffer; hash: string | undefined; signature: Buffer } {
  const outer = expectTag(readElement(der, 0), TAG.SEQUENCE, "the certificate");
  if (outer.end !== der.length) throw new DerError("bytes after the certificate");
  const [tbsEl, algEl, sigEl, ...extra] = childrenOf(der, outer);
  if (extra.length > 0) throw new DerError("the certificate has more than three parts");
  const tbs = expectTag(tbsEl, TAG.SEQUENCE, "the TBSCertificate");
  const fields = childrenOf(der, tbs);
  // [0] version (absent in v1), serial, signature, issuer, ...
  const issuer = expectTag(fields[fields[0]?.tag === 0xa0 ? 3 : 2], TAG.SEQUENCE, "the issuer");
  const algOid = childrenOf(der, expectTag(algEl, TAG.SEQUENCE, "the signature algorithm"))[0];
  const hash = ECDSA_HASHES.get(contentsOf(der, expectTag(algOid, TAG.OID, "the signature algorithm")).toString("hex"));
  const bits = contentsOf(der, expectTag(sigEl, TAG.BIT_STRING, "the signature"));
  if (bits[0] !== 0) throw new DerError("the signature is not whole bytes");
  return { tbs: bytesOf(der, tbs), issuer: bytesOf(der, issuer), hash, signature: bits.subarray(1) };
}

/** A candidate issuer's subject and key, by its PEM (bounded; oldest forgotten first); undefined if unread. */
function candidateOf(pem: string): { subject: Buffer; key: KeyObject } | undefined {
  const known = candidates.get(pem);
  if (known !== undefined) return known ?? undefined;
  let out: { subject: Buffer; key: KeyObject } | null;
  try {
    const { subject, spki } = subjectAndKeyOf(derOfPem(pem));
    out = { subject, key: createPublicKey({ key: spki, format: "der", type: "spki" }) };
  } catch {
    out = null;
  }
  if (candidates.size >= 16) candidates.delete(candidates.keys().next().value!);
  candidates.set(pem, out);
  return out ?? undefined;
}
const candidates = new Map<string, { subject: Buffer; key: KeyObject } | null>();

/**
 * A node's certificate PEM as its TLS contexts take it: a lone leaf followed by the root (of `rootsPem`) that
 * issued it; anything else as it is. What a handshake sends is the same either way: with no chain of its own,
 * OpenSSL builds one from the context's trusted roots at every handshake (X509_verify_cert on its own
 * certificate: a signature check and the store's lookups, ~0.1 ms of each side's CPU a handshake) and sends
 * the leaf and that root. Given the chain, it sends it as it is.
 */
export function withIssuerChain(certPem: string, rootsPem: string): string {
  const last = lastWithIssuer;
  if (last?.certPem === certPem && last.rootsPem === rootsPem) return last.out;
  const blocks = splitPemCerts(certPem);
  let out = certPem;
  if (blocks.length === 1) {
    const issuer = leafIssuer(certPem, rootsPem);
    if (issuer !== undefined && issuer !== blocks[0]) out = `${blocks[0]}${issuer}`;
  }
  lastWithIssuer = { certPem, rootsPem, out };
  return out;
}
let lastWithIssuer: { certPem: string; rootsPem: string; out: string } | undefined;

/** The issuer of a node certificate chain (found among its intermediates and `rootsPem`), if any. */
export function chainIssuer(chainPem: string, rootsPem: string): IssuerInfo | undefined {
  const issuer = leafIssuer(chainPem, rootsPem);
  return issuer === undefined ? undefined : issuerInfoOf(issuer);
}

/**
 * A node's TLSInfo (its description's): the root it trusts, and who issued its certificate. A node describes
 * itself in every session request, so at every reconnect: the last answer is kept, by the very PEM texts it
 * was made from (finding the issuer parses the chain and the roots and checks a signature; the answer
 * depends on nothing else).
 */
export function nodeTLSInfo(rootPem: string, chainPem: string): TLSInfo {
  const last = lastTLSInfo;
  if (last?.rootPem === rootPem && last.chainPem === chainPem) return { ...last.info };
  const issuer = chainIssuer(chainPem, rootPem);
  const info = {
    TrustRoot: rootPem,
    CertIssuerSubject: issuer?.subject ?? "",
    CertIssuerPublicKey: issuer?.publicKey ?? "",
  };
  lastTLSInfo = { rootPem, chainPem, info };
  return { ...info };
}
let lastTLSInfo: { rootPem: string; chainPem: string; info: TLSInfo } | undefined;

/**
 * True if the chain's leaf, through the chain's other (CA) certificates, leads to one of the roots in
 * `rootsPem`, every signature checking and every certificate valid at `now`.
 */
export function chainsToRoot(chainPem: string, rootsPem: string, now: Date = new Date()): boolean {
  return chainLeadsTo(parseAll(chainPem), parseAll(rootsPem), now);
}

/** chainsToRoot for parsed certificates: `chain` is the leaf and the certificates presented with it. */
export function chainLeadsTo(
  chain: NodeX509Certificate[],
  roots: NodeX509Certificate[],
  now: Date = new Date(),
): boolean {
  const leaf = chain[0];
  if (leaf === undefined || !validAt(leaf, now)) return false;
  const intermediates = chain.slice(1).filter((c) => c.ca && validAt(c, now));
  const reach = (c: NodeX509Certificate, depth: number): boolean => {
    if (roots.some((r) => validAt(r, now) && issuedBy(c, r))) return true;
    if (depth + 1 >= MAX_CHAIN_DEPTH) return false;
    return intermediates.some((i) => i !== c && issuedBy(c, i) && reach(i, depth + 1));
  };
  return reach(leaf, 0);
}
