// Node certificates on the join path, without the ASN.1 library: a CSR is read and its signature checked
// with a small DER reader and node:crypto, and the certificate's TBSCertificate is written from the same
// fields, in the same order and encodings, as the @peculiar/x509 generator wrote them (RootCA.issue, kept
// for the CA's own certificates): test/unit/ca-leaf.test.ts compares the two byte for byte. A join costs the
// leader one ECDSA verify and one ECDSA sign, not an ASN.1 schema parse and serialise of each.

import { createHash, createPublicKey, type KeyObject, sign, verify } from "node:crypto";
import {
  bitString,
  bytesOf,
  childrenOf,
  contentsOf,
  DerError,
  directoryString,
  type Element,
  expectTag,
  oid,
  readElement,
  seq,
  TAG,
  time,
  tlv,
  unsignedInteger,
} from "./der.js";
import { CAError } from "./errors.js";

const OID_EC_PUBLIC_KEY = "1.2.840.10045.2.1";
/** The ECDSA signature algorithms a CSR may be signed with, and their hash. */
const CSR_SIGNATURE_HASHES = new Map<string, string>([
  [oid("1.2.840.10045.4.3.2").toString("hex"), "sha256"],
  [oid("1.2.840.10045.4.3.3").toString("hex"), "sha384"],
  [oid("1.2.840.10045.4.3.4").toString("hex"), "sha512"],
]);

/** AlgorithmIdentifier ecdsa-with-SHA256 (no parameters): the certificate's signature algorithm. */
export const ECDSA_WITH_SHA256 = seq(oid("1.2.840.10045.4.3.2"));
/** [0] EXPLICIT INTEGER 2: X.509 v3. */
const VERSION_V3 = tlv(0xa0, tlv(TAG.INTEGER, Buffer.from([2])));

const ATTR_O = oid("2.5.4.10");
const ATTR_OU = oid("2.5.4.11");
const ATTR_CN = oid("2.5.4.3");

const critical = tlv(TAG.BOOLEAN, Buffer.from([0xff]));
const extension = (id: string, value: Buffer, isCritical = false): Buffer =>
  isCritical ? seq(oid(id), critical, tlv(TAG.OCTET_STRING, value)) : seq(oid(id), tlv(TAG.OCTET_STRING, value));

/** basicConstraints CA:FALSE, critical (an empty SEQUENCE). */
const EXT_BASIC_CONSTRAINTS = extension("2.5.29.19", seq(), true);
/** keyUsage digitalSignature | keyEncipherment, critical: bits 0 and 2, five unused bits. */
const EXT_KEY_USAGE = extension("2.5.29.15", tlv(TAG.BIT_STRING, Buffer.from([0x05, 0xa0])), true);
/** extKeyUsage serverAuth, clientAuth. */
const EXT_EXT_KEY_USAGE = extension("2.5.29.37", seq(oid("1.3.6.1.5.5.7.3.1"), oid("1.3.6.1.5.5.7.3.2")));

/** A CSR's key, once its signature has been checked. */
export interface CSRKey {
  /** SubjectPublicKeyInfo DER, as the CSR has it. */
  spki: Buffer;
  /** The subject key identifier: SHA-1 of the public key's bits (RFC 5280 4.2.1.2, method 1). */
  keyId: Buffer;
}

const PEM_CSR =
  /^-----BEGIN (NEW )?CERTIFICATE REQUEST-----\r?\n([A-Za-z0-9+/=\r\n]+)-----END \1CERTIFICATE REQUEST-----\s*$/;

const invalid = (why: string, cause?: unknown): CAError =>
  new CAError("invalid-csr", `the certificate signing request ${why}`, cause === undefined ? undefined : { cause });

/**
 * Reads a PEM CSR (PKCS#10) and checks it: an ECDSA P-256 key, and a signature by that key (proof that the
 * node holds it). The subject and attributes are not read: the CA decides the identity. Throws CAError
 * "invalid-csr".
 */
export function readCSR(csrPem: string): CSRKey {
  const m = PEM_CSR.exec(csrPem.trim());
  if (!m) throw invalid("is not a readable PEM CSR");
  const der = Buffer.from(m[2] as string, "base64");
  let info: Buffer;
  let spkiIn: Buffer;
  let hash: string | undefined;
  let signature: Buffer;
  try {
    const outer = expectTag(readElement(der, 0), TAG.SEQUENCE, "the CSR");
    if (outer.end !== der.length) throw new DerError("trailing bytes after the CSR");
    const [cri, alg, sig, ...extra] = childrenOf(der, outer);
    if (extra.length > 0) throw new DerError("the CSR has more than three parts");
    const criEl = expectTag(cri, TAG.SEQUENCE, "the request info");
    const [version, subject, spki] = childrenOf(der, criEl);
    expectTag(version, TAG.INTEGER, "the version");
    expectTag(subject, TAG.SEQUENCE, "the subject");
    spkiIn = bytesOf(der, expectTag(spki, TAG.SEQUENCE, "the public key"));
    const algOid = childrenOf(der, expectTag(alg, TAG.SEQUENCE, "the signature algorithm"))[0];
    hash = CSR_SIGNATURE_HASHES.get(
      bytesOf(der, expectTag(algOid, TAG.OID, "the signature algorithm")).toString("hex"),
    );
    const sigBits = contentsOf(der, expectTag(sig, TAG.BIT_STRING, "the signature"));
    if (sigBits[0] !== 0) throw new DerError("the signature is not whole bytes");
    signature = sigBits.subarray(1);
    info = bytesOf(der, criEl);
  } catch (err) {
    throw invalid("is not a readable PEM CSR", err);
  }
  let key: KeyObject;
  try {
    key = p256PublicKey(spkiIn);
  } catch (err) {
    throw invalid("must be for an ECDSA P-256 key", err);
  }
  if (key.asymmetricKeyType !== "ec" || key.asymmetricKeyDetails?.namedCurve !== "prime256v1") {
    throw invalid("must be for an ECDSA P-256 key");
  }
  if (hash === undefined) throw invalid("signature could not be checked: it is not ECDSA with SHA-2");
  let ok: boolean;
  try {
    ok = verify(hash, info, key, signature);
  } catch (err) {
    throw invalid("signature could not be checked", err);
  }
  if (!ok) throw invalid("signature is invalid");
  // As the CSR has it (the ASN.1 library copied it too): node:crypto would write it back the same.
  const spki = Buffer.from(spkiIn);
  return { spki, keyId: keyIdOf(spki) };
}

/** SubjectPublicKeyInfo of a P-256 key up to its point: id-ecPublicKey, prime256v1, a 66-byte BIT STRING. */
const P256_SPKI_PREFIX = Buffer.from("3059301306072a8648ce3d020106082a8648ce3d030107034200", "hex");

/**
 * The key of a SubjectPublicKeyInfo. The form every node writes (P-256, uncompressed point) is imported as a
 * JWK of its coordinates, which OpenSSL 3 does about three times faster than decoding the DER (its decoder
 * framework), checking the point is on the curve all the same; anything else is decoded from the DER.
 */
function p256PublicKey(spki: Buffer): KeyObject {
  if (
    spki.length === P256_SPKI_PREFIX.length + 65 &&
    spki.subarray(0, P256_SPKI_PREFIX.length).equals(P256_SPKI_PREFIX)
  ) {
    const point = spki.subarray(P256_SPKI_PREFIX.length);
    if (point[0] === 0x04) {
      const x = point.subarray(1, 33).toString("base64url");
      const y = point.subarray(33).toString("base64url");
      return createPublicKey({ key: { kty: "EC", crv: "P-256", x, y }, format: "jwk" });
    }
  }
  return createPublicKey({ key: spki, format: "der", type: "spki" });
}

/**
 * A PKCS#10 CSR (PEM) for `key` (an ECDSA P-256 private key), subject CN=`commonName` or empty, no
 * attributes, signed ECDSA with SHA-256: the request the ASN.1 library's generator wrote, byte for byte up
 * to the signature (test/unit/ca-leaf.test.ts), for a fraction of its CPU (a joining node asks one).
 */
export function csrPem(key: KeyObject, commonName?: string): string {
  return csrPemWithSpki(
    key,
    p256Encodings(key)?.spki ?? createPublicKey(key).export({ type: "spki", format: "der" }),
    commonName,
  );
}

/**
 * A P-256 private key's PKCS#8 (DER) and public key's SubjectPublicKeyInfo, written from its JWK coordinates
 * byte for byte as OpenSSL writes them (test/unit/ca-leaf.test.ts), without OpenSSL 3's encoder framework
 * (a tenth of the CPU: a joining node makes both). Undefined for a key of another kind.
 */
export function p256Encodings(key: KeyObject): { pkcs8: Buffer; spki: Buffer } | undefined {
  if (key.type !== "private" || key.asymmetricKeyType !== "ec") return undefined;
  if (key.asymmetricKeyDetails?.namedCurve !== "prime256v1") return undefined;
  const jwk = key.export({ format: "jwk" });
  const coordinate = (v: string | undefined): Buffer => {
    const b = Buffer.from(v ?? "", "base64url");
    if (b.length > 32) throw new RangeError("a P-256 key component longer than 32 bytes");
    return Buffer.concat([Buffer.alloc(32 - b.length), b]);
  };
  const point = Buffer.concat([Buffer.from([0x04]), coordinate(jwk.x), coordinate(jwk.y)]);
  const spki = Buffer.concat([P256_SPKI_PREFIX, point]);
  // ECPrivateKey (RFC 5915): version 1, the private key, [1] the public key; the curve is in the algorithm.
  const ecPrivateKey = seq(
    tlv(TAG.INTEGER, Buffer.from([1])),
    tlv(TAG.OCTET_STRING, coordinate(jwk.d)),
    tlv(0xa1, bitString(point)),
  );
  const pkcs8 = seq(
    tlv(TAG.INTEGER, Buffer.from([0])),
    seq(oid(OID_EC_PUBLIC_KEY), oid("1.2.840.10045.3.1.7")),
    tlv(TAG.OCTET_STRING, ecPrivateKey),
  );
  return { pkcs8, spki };
}

/** A P-256 private key as PKCS#8 PEM, as `key.export({ type: "pkcs8", format: "pem" })` writes it. */
export function p256Pkcs8Pem(key: KeyObject): string {
  const enc = p256Encodings(key);
  return enc ? pemOf(enc.pkcs8, "PRIVATE KEY") : (key.export({ type: "pkcs8", format: "pem" }) as string);
}

function csrPemWithSpki(key: KeyObject, spki: Buffer, commonName?: string): string {
  const subject = commonName === undefined ? seq() : seq(rdn(ATTR_CN, commonName));
  const info = seq(tlv(TAG.INTEGER, Buffer.from([0])), subject, spki, tlv(0xa0));
  const der = seq(info, ECDSA_WITH_SHA256, bitString(sign("sha256", info, key)));
  return pemOf(der, "CERTIFICATE REQUEST");
}

/** The key identifier of a SubjectPublicKeyInfo (DER): SHA-1 of its public key's bits. */
export function keyIdOf(spki: Buffer): Buffer {
  const [algorithm, bits] = childrenOf(spki, expectTag(readElement(spki, 0), TAG.SEQUENCE, "the public key"));
  const algOid = childrenOf(spki, expectTag(algorithm, TAG.SEQUENCE, "the key algorithm"))[0];
  if (!algOid || !bytesOf(spki, algOid).equals(oid(OID_EC_PUBLIC_KEY))) throw new DerError("not an EC public key");
  return createHash("sha1")
    .update(contentsOf(spki, expectTag(bits, TAG.BIT_STRING, "the public key bits")).subarray(1))
    .digest();
}

/** What varies between two node certificates. */
export interface NodeCertFields {
  /** Big-endian bytes of a positive serial number (leading zeros are dropped, as DER wants). */
  serial: Uint8Array;
  notBefore: Date;
  notAfter: Date;
  /** Subject, written O, OU, CN (Go's pkix.Name order). */
  clusterId: string;
  ou: string;
  nodeId: string;
  dnsNames: string[];
  key: CSRKey;
}

/** One RDN of a single attribute. */
const rdn = (type: Buffer, value: string): Buffer => tlv(TAG.SET, seq(type, directoryString(value)));

/**
 * The TBSCertificate of a node certificate issued by the CA whose subject is `issuerName` (its DER, copied
 * from the CA certificate) and whose key identifier is `authorityKeyId`. Extensions, in this order:
 * basicConstraints CA:FALSE (critical), keyUsage digitalSignature+keyEncipherment (critical), extKeyUsage
 * serverAuth+clientAuth, subjectAltName DNS names, subjectKeyIdentifier, authorityKeyIdentifier.
 */
export function nodeTbsCertificate(f: NodeCertFields, issuerName: Buffer, authorityKeyId: Buffer): Buffer {
  const san = seq(...f.dnsNames.map((n) => tlv(0x82, Buffer.from(n, "latin1"))));
  const extensions = [
    EXT_BASIC_CONSTRAINTS,
    EXT_KEY_USAGE,
    EXT_EXT_KEY_USAGE,
    extension("2.5.29.17", san),
    extension("2.5.29.14", tlv(TAG.OCTET_STRING, f.key.keyId)),
    extension("2.5.29.35", seq(tlv(0x80, authorityKeyId))),
  ];
  return seq(
    VERSION_V3,
    unsignedInteger(f.serial),
    ECDSA_WITH_SHA256,
    issuerName,
    seq(time(f.notBefore), time(f.notAfter)),
    seq(rdn(ATTR_O, f.clusterId), rdn(ATTR_OU, f.ou), rdn(ATTR_CN, f.nodeId)),
    f.key.spki,
    tlv(0xa3, seq(...extensions)),
  );
}

/** A whole certificate from its TBSCertificate and an ECDSA-with-SHA256 signature (DER) over it. */
export function certificateDer(tbs: Buffer, signature: Buffer): Buffer {
  return seq(tbs, ECDSA_WITH_SHA256, bitString(signature));
}

/** PEM as certToPem writes it: 64-character lines, "\n" endings, a trailing newline. */
export const certificatePem = (der: Buffer): string => pemOf(der, "CERTIFICATE");

function pemOf(der: Buffer, label: string): string {
  const b64 = der.toString("base64");
  const lines: string[] = [];
  for (let i = 0; i < b64.length; i += 64) lines.push(b64.slice(i, i + 64));
  return `-----BEGIN ${label}-----\n${lines.join("\n")}\n-----END ${label}-----\n`;
}

/** The subject Name of a certificate (DER), as an element of `cert`. */
function subjectElement(cert: Buffer): Element {
  const outer = expectTag(readElement(cert, 0), TAG.SEQUENCE, "the certificate");
  const tbs = expectTag(childrenOf(cert, outer)[0], TAG.SEQUENCE, "the TBSCertificate");
  const fields = childrenOf(cert, tbs);
  const at = fields[0]?.tag === 0xa0 ? 5 : 4; // version, serial, signature, issuer, validity, subject
  return expectTag(fields[at], TAG.SEQUENCE, "the subject");
}

/** The subject Name (DER) of a certificate (DER): what a certificate it issues names as its issuer. */
export function subjectNameOf(cert: Buffer): Buffer {
  return Buffer.from(bytesOf(cert, subjectElement(cert)));
}

/** A node certificate's subject: its CN, OU and O values. */
export interface NodeSubject {
  cn: string;
  ou: string;
  o: string;
}

const SUBJECT_KEYS = new Map<string, keyof NodeSubject>([
  [ATTR_CN.toString("hex"), "cn"],
  [ATTR_OU.toString("hex"), "ou"],
  [ATTR_O.toString("hex"), "o"],
]);

/**
 * The CN, OU and O of a certificate (DER) in the plain form shoal issues them: each once, in an RDN of its
 * own, a PrintableString or UTF8String. Anything else (an unreadable certificate, a repeated or missing
 * attribute, a multi-valued RDN, another string type) gives null: the caller then asks the full parser,
 * which says what is wrong. About 20 µs, where Node's X509Certificate takes about 170.
 */
export function plainNodeSubject(cert: Buffer): NodeSubject | null {
  const found: Partial<NodeSubject> = {};
  try {
    for (const rdnEl of childrenOf(cert, subjectElement(cert))) {
      const attrs = childrenOf(cert, expectTag(rdnEl, TAG.SET, "an RDN"));
      if (attrs.length !== 1) return null;
      const [type, value, ...rest] = childrenOf(cert, expectTag(attrs[0], TAG.SEQUENCE, "an attribute"));
      if (!type || !value || rest.length > 0 || type.tag !== TAG.OID) return null;
      const key = SUBJECT_KEYS.get(bytesOf(cert, type).toString("hex"));
      if (key === undefined) continue;
      if (found[key] !== undefined) return null;
      if (value.tag !== TAG.PRINTABLE_STRING && value.tag !== TAG.UTF8_STRING) return null;
      found[key] = contentsOf(cert, value).toString("utf8");
    }
  } catch {
    return null;
  }
  const { cn, ou, o } = found;
  return cn === undefined || ou === undefined || o === undefined ? null : { cn, ou, o };
}
