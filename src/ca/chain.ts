// Certificate chains and issuers, for root CA rotation. A node's certificate file may hold its leaf and,
// during and after a rotation, the cross-signed intermediate (the new root's key signed by the old root),
// so that the leaf chains to either root. The issuer of a node's certificate (its subject and public key,
// DER in base64 as Go marshals []byte) is what the docker CLI compares with the cluster's desired issuer to
// show the progress of `docker swarm ca --rotate`.

import { X509Certificate as NodeX509Certificate } from "node:crypto";
import type { TLSInfo } from "../api/objects.js";
import { bytesOf, childrenOf, DerError, expectTag, readElement, TAG } from "./der.js";
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
  const leaf = new NodeX509Certificate(leafPem);
  for (const cand of [...chain.slice(1), ...splitPemCerts(rootsPem)]) {
    if (issuedBy(leaf, new NodeX509Certificate(cand))) return cand;
  }
  return undefined;
}

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
