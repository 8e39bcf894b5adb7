// src/ca/leaf.ts: node certificates signed without the ASN.1 library are the certificates the @peculiar/x509
// generator made before (byte for byte up to the signature, for the same inputs), verify against the root,
// and pass OpenSSL's own checks; CSRs that are not a P-256 key's own are refused. A peer's identity is read
// from its certificate's DER the way the reference parser reads it.

import { execFileSync } from "node:child_process";
import {
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  X509Certificate as NodeX509Certificate,
  sign,
  verify,
  type webcrypto,
} from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import {
  csrForKey,
  generateNodeKeyAndCSR,
  type NodeRole,
  parseNodeCert,
  roleToOU,
  signNodeCSR,
} from "../../src/ca/certs.js";
import { bitString, childrenOf, oid, readElement, seq, TAG, tlv } from "../../src/ca/der.js";
import { CAError } from "../../src/ca/errors.js";
import {
  ECDSA_WITH_SHA256,
  type NodeSubject,
  p256Encodings,
  p256Pkcs8Pem,
  plainNodeSubject,
} from "../../src/ca/leaf.js";
import { createRootCA, RootCA } from "../../src/ca/rootca.js";
import { identityOfDer, type PeerIdentity } from "../../src/ca/tls.js";
import {
  certToPem,
  EC_KEY_PARAMS,
  EC_SIGN_PARAMS,
  generateEcKeyPair,
  privateKeyToPem,
  randomSerialHex,
  subtle,
  x509,
} from "../../src/ca/x509.js";

const HOUR = 3600_000;
const DAY = 24 * HOUR;
const NOW = new Date("2030-01-01T00:00:00.123Z");
const NODE = "n0de1d000000000000000000a";
const CLUSTER = "c1uster000000000000000000";

/**
 * The node certificate as signNodeCSR made it with @peculiar/x509 before src/ca/leaf.ts (same fields, same
 * extensions in the same order, signed by RootCA.issue): the reference the new signer must match.
 */
async function peculiarNodeCert(
  ca: RootCA,
  csrPem: string,
  o: { nodeId: string; role: NodeRole; clusterId: string; days: number; serial: (n: number) => Uint8Array },
): Promise<string> {
  const csr = new x509.Pkcs10CertificateRequest(csrPem);
  let notAfter = new Date(NOW.getTime() + o.days * DAY);
  if (notAfter > ca.notAfter) notAfter = ca.notAfter;
  const ou = roleToOU(o.role);
  const dnsNames = o.role === "manager" ? [ou, o.nodeId, "swarm-ca"] : [ou, o.nodeId];
  const cert = await ca.issue({
    subject: [{ O: [o.clusterId] }, { OU: [ou] }, { CN: [o.nodeId] }],
    publicKey: csr.publicKey,
    notBefore: new Date(NOW.getTime() - HOUR),
    notAfter,
    serialNumber: randomSerialHex(o.serial),
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment, true),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth]),
      new x509.SubjectAlternativeNameExtension(dnsNames.map((value) => ({ type: "dns" as const, value }))),
      await x509.SubjectKeyIdentifierExtension.create(csr.publicKey),
    ],
  });
  return certToPem(cert);
}

/** The TBSCertificate bytes of a PEM certificate: everything the signature covers. */
function tbsOf(pem: string): Buffer {
  const der = Buffer.from(new NodeX509Certificate(pem).raw);
  return Buffer.from(
    der.subarray(childrenOf(der, readElement(der, 0))[0]!.start, childrenOf(der, readElement(der, 0))[0]!.end),
  );
}

/** What Node's X509Certificate reads from a certificate: every field a TLS peer or a user would see. */
function fieldsOf(pem: string) {
  const c = new NodeX509Certificate(pem);
  return {
    subject: c.subject,
    issuer: c.issuer,
    subjectAltName: c.subjectAltName,
    keyUsage: c.keyUsage,
    ca: c.ca,
    validFrom: c.validFrom,
    validTo: c.validTo,
    serialNumber: c.serialNumber,
    publicKey: c.publicKey.export({ type: "spki", format: "der" }).toString("hex"),
    infoAccess: c.infoAccess,
  };
}

const hasOpenssl = ((): boolean => {
  try {
    execFileSync("openssl", ["version"], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
})();

let dir: string;
let rootPem: string;
let ca: RootCA;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "shoal-ca-leaf-"));
  const m = await createRootCA({ now: () => NOW });
  rootPem = m.certPem;
  ca = await RootCA.fromPem(m.certPem, m.keyPem);
});

afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** `openssl x509 -text` without the signature value (which ECDSA randomises). */
function opensslText(pem: string): string {
  const f = join(dir, "cert.pem");
  writeFileSync(f, pem);
  const text = execFileSync("openssl", ["x509", "-noout", "-text", "-in", f], { encoding: "utf8" });
  return text.replace(/Signature Value:[\s\S]*$/, "");
}

function opensslVerify(caPem: string, pem: string, purpose: string): string {
  const caFile = join(dir, "ca.pem");
  const f = join(dir, "leaf.pem");
  writeFileSync(caFile, caPem);
  writeFileSync(f, pem);
  const at = String(Math.floor(NOW.getTime() / 1000));
  return execFileSync("openssl", ["verify", "-attime", at, "-purpose", purpose, "-CAfile", caFile, f], {
    encoding: "utf8",
  }).trim();
}

const fixed = (bytes: number[]) => (n: number) => Uint8Array.from({ length: n }, (_, i) => bytes[i % bytes.length]!);

describe("node certificates without the ASN.1 library", () => {
  const cases: { name: string; role: NodeRole; clusterId: string; days: number; serial: (n: number) => Uint8Array }[] =
    [
      { name: "a manager", role: "manager", clusterId: CLUSTER, days: 90, serial: fixed([0x5a, 0x17, 0xc3]) },
      { name: "a worker", role: "worker", clusterId: CLUSTER, days: 30, serial: fixed([0x7f, 0xff]) },
      // randomSerialHex gives 00 00 .. 01: DER drops the leading zeros.
      { name: "serial 1", role: "worker", clusterId: CLUSTER, days: 90, serial: fixed([0]) },
      // 00 ff ..: the zero goes, and comes back as the sign byte.
      { name: "serial with a sign byte", role: "worker", clusterId: CLUSTER, days: 90, serial: fixed([0, 0xff]) },
      // "_" is not in PrintableString's alphabet: UTF8String, as the generator chose.
      { name: "a cluster id with _", role: "manager", clusterId: "my_cluster", days: 90, serial: fixed([1, 2]) },
      // Capped at the root's notAfter, 2050-01-01: a GeneralizedTime.
      { name: "a validity past 2049", role: "worker", clusterId: CLUSTER, days: 9000, serial: fixed([3]) },
    ];

  for (const c of cases) {
    test(`${c.name}: the same TBSCertificate as the @peculiar/x509 generator, and it verifies`, async () => {
      const { csrPem } = await generateNodeKeyAndCSR("ignored");
      const opts = { nodeId: NODE, role: c.role, clusterId: c.clusterId, days: c.days };
      const ours = await signNodeCSR(ca, csrPem, { ...opts, now: () => NOW, randomBytes: c.serial });
      const reference = await peculiarNodeCert(ca, csrPem, { ...opts, serial: c.serial });

      expect(tbsOf(ours).toString("hex")).toBe(tbsOf(reference).toString("hex"));
      expect(fieldsOf(ours)).toEqual(fieldsOf(reference));
      expect(ours).toMatch(
        /^-----BEGIN CERTIFICATE-----\n([A-Za-z0-9+/]{64}\n)*[A-Za-z0-9+/=]{1,64}\n-----END CERTIFICATE-----\n$/,
      );
      const root = new NodeX509Certificate(rootPem);
      const leaf = new NodeX509Certificate(ours);
      expect(leaf.verify(root.publicKey)).toBe(true);
      expect(leaf.checkIssued(root)).toBe(true);
      // The ASN.1 library reads it back as it reads its own.
      const parsed = new x509.X509Certificate(ours);
      expect(parsed.subject).toBe(`O=${c.clusterId}, OU=${roleToOU(c.role)}, CN=${NODE}`);
      expect(await parsed.verify({ publicKey: ca.cert.publicKey, signatureOnly: true })).toBe(true);
      if (hasOpenssl) {
        expect(opensslText(ours)).toBe(opensslText(reference));
        expect(opensslVerify(rootPem, ours, "sslclient")).toMatch(/: OK$/);
        expect(opensslVerify(rootPem, ours, "sslserver")).toMatch(/: OK$/);
      }
    });
  }

  test("a root CA without a subject key identifier: the authority key id is computed from its key", async () => {
    const keys = await generateEcKeyPair();
    const bare = await x509.X509CertificateGenerator.createSelfSigned({
      serialNumber: "01",
      name: [{ CN: ["swarm-ca"] }],
      notBefore: new Date(NOW.getTime() - DAY),
      notAfter: new Date(NOW.getTime() + 365 * DAY),
      keys,
      signingAlgorithm: EC_SIGN_PARAMS,
      extensions: [new x509.BasicConstraintsExtension(true, undefined, true)],
    });
    const pkcs8 = Buffer.from(await subtle.exportKey("pkcs8", keys.privateKey)).toString("base64");
    const keyPem = `-----BEGIN PRIVATE KEY-----\n${pkcs8.match(/.{1,64}/g)!.join("\n")}\n-----END PRIVATE KEY-----\n`;
    const bareCA = await RootCA.fromPem(certToPem(bare), keyPem);
    const { csrPem } = await generateNodeKeyAndCSR();
    const opts = { nodeId: NODE, role: "worker" as const, clusterId: CLUSTER, days: 90 };
    const ours = await signNodeCSR(bareCA, csrPem, { ...opts, now: () => NOW, randomBytes: fixed([9]) });
    const reference = await peculiarNodeCert(bareCA, csrPem, { ...opts, serial: fixed([9]) });
    expect(tbsOf(ours).equals(tbsOf(reference))).toBe(true);
    expect(new NodeX509Certificate(ours).verify(new NodeX509Certificate(certToPem(bare)).publicKey)).toBe(true);
  });
});

describe("CSRs the signer refuses", () => {
  const opts = { nodeId: NODE, role: "worker", clusterId: CLUSTER, now: () => NOW } as const;

  async function refused(csrPem: string, message: RegExp): Promise<void> {
    const err = await signNodeCSR(ca, csrPem, opts).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(CAError);
    expect((err as CAError).code).toBe("invalid-csr");
    expect((err as CAError).message).toMatch(message);
  }

  test("a P-384 key, a CSR signed by another key, trailing bytes, a truncated CSR", async () => {
    const p384 = (await subtle.generateKey({ name: "ECDSA", namedCurve: "P-384" }, true, [
      "sign",
      "verify",
    ])) as webcrypto.CryptoKeyPair;
    const csr384 = await x509.Pkcs10CertificateRequestGenerator.create({
      name: [{ CN: [NODE] }],
      keys: p384,
      signingAlgorithm: { name: "ECDSA", hash: "SHA-384" },
    });
    await refused(certToPem(csr384), /must be for an ECDSA P-256 key/);

    const a = await generateEcKeyPair();
    const b = await generateEcKeyPair();
    const forged = await x509.Pkcs10CertificateRequestGenerator.create({
      name: [{ CN: [NODE] }],
      keys: { publicKey: a.publicKey, privateKey: b.privateKey },
      signingAlgorithm: EC_SIGN_PARAMS,
    });
    await refused(certToPem(forged), /signature is invalid/);

    const good = await x509.Pkcs10CertificateRequestGenerator.create({
      name: [{ CN: [NODE] }],
      keys: a,
      signingAlgorithm: EC_SIGN_PARAMS,
    });
    const der = Buffer.from(good.rawData);
    const pem = (bytes: Buffer) =>
      `-----BEGIN CERTIFICATE REQUEST-----\n${bytes.toString("base64")}\n-----END CERTIFICATE REQUEST-----\n`;
    expect(await signNodeCSR(ca, pem(der), opts)).toMatch(/^-----BEGIN CERTIFICATE-----/);
    await refused(pem(Buffer.concat([der, Buffer.from([0])])), /not a readable PEM CSR/);
    await refused(pem(der.subarray(0, der.length - 10)), /not a readable PEM CSR/);
    await refused(certToPem(good).replace("CERTIFICATE REQUEST", "CERTIFICATE"), /not a readable PEM CSR/);
  });
});

describe("a CSR for a compressed point", () => {
  test("is accepted: the certificate holds the key as the CSR has it, as the ASN.1 library wrote it", async () => {
    const { publicKey, privateKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
    const jwk = publicKey.export({ format: "jwk" });
    const x = Buffer.from(jwk.x!, "base64url");
    const y = Buffer.from(jwk.y!, "base64url");
    const point = Buffer.concat([Buffer.from([2 + (y[y.length - 1]! & 1)]), x]);
    const spki = seq(seq(oid("1.2.840.10045.2.1"), oid("1.2.840.10045.3.1.7")), bitString(point));
    const info = seq(tlv(TAG.INTEGER, Buffer.from([0])), seq(), spki, tlv(0xa0));
    const csr = seq(info, ECDSA_WITH_SHA256, bitString(sign("sha256", info, privateKey)));
    const csrPem = `-----BEGIN CERTIFICATE REQUEST-----\n${csr.toString("base64")}\n-----END CERTIFICATE REQUEST-----\n`;
    const opts = { nodeId: NODE, role: "worker", clusterId: CLUSTER } as const;
    const pem = await signNodeCSR(ca, csrPem, { ...opts, now: () => NOW, randomBytes: fixed([0x11]) });
    const leaf = new NodeX509Certificate(pem);
    expect(leaf.verify(new NodeX509Certificate(rootPem).publicKey)).toBe(true);
    const probe = Buffer.from("the node's own key");
    expect(verify("sha256", probe, leaf.publicKey, sign("sha256", probe, privateKey))).toBe(true);
    expect(tbsOf(pem).includes(spki)).toBe(true);
    const reference = await peculiarNodeCert(ca, csrPem, { ...opts, days: 90, serial: fixed([0x11]) });
    expect(tbsOf(pem).equals(tbsOf(reference))).toBe(true);
  });
});

describe("a node's key written without OpenSSL's encoders", () => {
  test("PKCS#8 and SubjectPublicKeyInfo are byte for byte what OpenSSL writes, and read back as the same key", () => {
    for (let i = 0; i < 200; i++) {
      const { privateKey, publicKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
      const enc = p256Encodings(privateKey)!;
      expect(enc.pkcs8.equals(privateKey.export({ type: "pkcs8", format: "der" }))).toBe(true);
      expect(enc.spki.equals(publicKey.export({ type: "spki", format: "der" }))).toBe(true);
      const pem = p256Pkcs8Pem(privateKey);
      expect(pem).toBe(privateKey.export({ type: "pkcs8", format: "pem" }));
      expect(createPrivateKey(pem).export({ format: "jwk" })).toEqual(privateKey.export({ format: "jwk" }));
    }
  });

  test("a key of another curve is written by OpenSSL", () => {
    const { privateKey } = generateKeyPairSync("ec", { namedCurve: "P-384" });
    expect(p256Encodings(privateKey)).toBeUndefined();
    expect(p256Pkcs8Pem(privateKey)).toBe(privateKey.export({ type: "pkcs8", format: "pem" }));
  });
});

describe("a CSR for an uncompressed point (the form every node writes, read without decoding the DER)", () => {
  test("a point that is not on the curve is refused, as the DER decoder refuses it", async () => {
    const { privateKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
    const point = Buffer.concat([Buffer.from([4]), Buffer.alloc(32, 1), Buffer.alloc(32, 2)]);
    const spki = seq(seq(oid("1.2.840.10045.2.1"), oid("1.2.840.10045.3.1.7")), bitString(point));
    expect(() => createPublicKey({ key: spki, format: "der", type: "spki" })).toThrow();
    const info = seq(tlv(TAG.INTEGER, Buffer.from([0])), seq(), spki, tlv(0xa0));
    const csr = seq(info, ECDSA_WITH_SHA256, bitString(sign("sha256", info, privateKey)));
    const csrPem = `-----BEGIN CERTIFICATE REQUEST-----\n${csr.toString("base64")}\n-----END CERTIFICATE REQUEST-----\n`;
    const err = await signNodeCSR(ca, csrPem, { nodeId: NODE, role: "worker", clusterId: CLUSTER }).catch(
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(CAError);
    expect((err as CAError).message).toMatch(/must be for an ECDSA P-256 key/);
  });
});

describe("CSRs a joining node writes without the ASN.1 library", () => {
  /** The CertificationRequestInfo of a PEM CSR: everything its signature covers. */
  function requestInfoOf(pem: string): Buffer {
    const der = Buffer.from(pem.replace(/-----[A-Z ]+-----|\s/g, ""), "base64");
    const info = childrenOf(der, readElement(der, 0))[0]!;
    return Buffer.from(der.subarray(info.start, info.end));
  }

  for (const nodeId of [NODE, undefined]) {
    test(`subject ${nodeId === undefined ? "empty" : "CN=<node id>"}: the library's request, and the CA takes it`, async () => {
      const { keyPem, csrPem } = await generateNodeKeyAndCSR(nodeId);
      const key = createPrivateKey(keyPem);
      expect(key.asymmetricKeyDetails?.namedCurve).toBe("prime256v1");
      // The key's PEM as the library's exporter wrote it.
      const cryptoKey = await subtle.importKey(
        "pkcs8",
        key.export({ type: "pkcs8", format: "der" }),
        EC_KEY_PARAMS,
        true,
        ["sign"],
      );
      expect(keyPem).toBe(await privateKeyToPem(cryptoKey));
      const publicKey = await subtle.importKey(
        "spki",
        createPublicKey(key).export({ type: "spki", format: "der" }),
        EC_KEY_PARAMS,
        true,
        ["verify"],
      );
      const reference = await x509.Pkcs10CertificateRequestGenerator.create({
        name: nodeId === undefined ? [] : [{ CN: [nodeId] }],
        keys: { privateKey: cryptoKey, publicKey },
        signingAlgorithm: EC_SIGN_PARAMS,
      });
      expect(requestInfoOf(csrPem).toString("hex")).toBe(requestInfoOf(certToPem(reference)).toString("hex"));
      expect(csrPem).toMatch(
        /^-----BEGIN CERTIFICATE REQUEST-----\n([A-Za-z0-9+/]{64}\n)*[A-Za-z0-9+/=]{1,64}\n-----END CERTIFICATE REQUEST-----\n$/,
      );
      expect(await new x509.Pkcs10CertificateRequest(csrPem).verify()).toBe(true);
      expect(await csrForKey(keyPem, nodeId)).toMatch(/^-----BEGIN CERTIFICATE REQUEST-----/);
      expect(requestInfoOf(await csrForKey(keyPem, nodeId)).equals(requestInfoOf(csrPem))).toBe(true);
      if (hasOpenssl) {
        const f = join(dir, "req.pem");
        writeFileSync(f, csrPem);
        expect(
          execFileSync("openssl", ["req", "-verify", "-noout", "-in", f], { encoding: "utf8", stdio: "pipe" }),
        ).toBe("");
      }
      const pem = await signNodeCSR(ca, csrPem, { nodeId: NODE, role: "worker", clusterId: CLUSTER, now: () => NOW });
      expect(new NodeX509Certificate(pem).publicKey.export({ type: "spki", format: "der" })).toEqual(
        createPublicKey(key).export({ type: "spki", format: "der" }),
      );
    });
  }
});

describe("a peer's identity read straight from its certificate", () => {
  async function certWith(subject: x509.JsonName): Promise<Buffer> {
    const keys = await generateEcKeyPair();
    const cert = await ca.issue({
      subject,
      publicKey: await x509.PublicKey.create(keys.publicKey),
      notBefore: NOW,
      notAfter: new Date(NOW.getTime() + DAY),
      serialNumber: "01",
      extensions: [],
    });
    return Buffer.from(cert.rawData);
  }

  /** What parseNodeCert, the reference, says: the identity, or null where it refuses the certificate. */
  function reference(der: Buffer): PeerIdentity | null {
    try {
      const info = parseNodeCert(der);
      return { nodeId: info.nodeId, role: info.role, clusterId: info.clusterId };
    } catch {
      return null;
    }
  }

  test("shoal's own certificates: the subject from the DER, the identity the reference parser reads", async () => {
    for (const [role, clusterId] of [
      ["manager", CLUSTER],
      ["worker", "my_cluster"],
    ] as const) {
      const { csrPem } = await generateNodeKeyAndCSR();
      const pem = await signNodeCSR(ca, csrPem, { nodeId: NODE, role, clusterId, now: () => NOW });
      const der = Buffer.from(new NodeX509Certificate(pem).raw);
      expect(plainNodeSubject(der)).toEqual({ cn: NODE, ou: roleToOU(role), o: clusterId });
      expect(identityOfDer(der)).toEqual({ nodeId: NODE, role, clusterId });
      expect(identityOfDer(der)).toEqual(reference(der));
    }
  });

  test("other subjects: plain ones read from the DER, the rest by the reference parser, with the same result", async () => {
    const plain: [x509.JsonName, NodeSubject][] = [
      [[{ CN: [NODE] }, { OU: ["swarm-worker"] }, { O: [CLUSTER] }], { cn: NODE, ou: "swarm-worker", o: CLUSTER }],
      [
        [{ C: ["US"] }, { O: [CLUSTER] }, { OU: ["swarm-manager"] }, { CN: [NODE] }],
        { cn: NODE, ou: "swarm-manager", o: CLUSTER },
      ],
      // Read plainly, refused by role: an OU shoal does not issue.
      [[{ O: [CLUSTER] }, { OU: ["swarm-admin"] }, { CN: [NODE] }], { cn: NODE, ou: "swarm-admin", o: CLUSTER }],
    ];
    for (const [subject, want] of plain) {
      const der = await certWith(subject);
      expect(plainNodeSubject(der)).toEqual(want);
      expect(identityOfDer(der)).toEqual(reference(der));
    }
    const notPlain: x509.JsonName[] = [
      // Repeated, missing, or several attributes in one RDN.
      [{ O: [CLUSTER] }, { OU: ["swarm-worker"] }, { OU: ["swarm-manager"] }, { CN: [NODE] }],
      [{ O: [CLUSTER] }, { CN: [NODE] }],
      [{ O: [CLUSTER], OU: ["swarm-worker"] }, { CN: [NODE] }],
      // Another string type.
      [
        { O: [CLUSTER] },
        { OU: ["swarm-worker"] },
        { CN: [`#16${NODE.length.toString(16).padStart(2, "0")}${Buffer.from(NODE).toString("hex")}`] },
      ],
    ];
    for (const subject of notPlain) {
      const der = await certWith(subject);
      expect(plainNodeSubject(der)).toBeNull();
      expect(identityOfDer(der)).toEqual(reference(der));
    }
    // A value in a form the DER path does not trust goes to the reference too.
    const odd = await certWith([{ O: ["a,b"] }, { OU: ["swarm-worker"] }, { CN: [NODE] }]);
    expect(plainNodeSubject(odd)).toEqual({ cn: NODE, ou: "swarm-worker", o: "a,b" });
    expect(identityOfDer(odd)).toEqual(reference(odd));
    expect(plainNodeSubject(Buffer.from("not a certificate"))).toBeNull();
    expect(identityOfDer(Buffer.from("not a certificate, either"))).toBeNull();
  });
});
