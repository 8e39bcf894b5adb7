// src/ca: join tokens, ids, root CA, node certificates, verification, renewal schedule.

import { createHash, createPrivateKey, createPublicKey, X509Certificate as NodeX509Certificate } from "node:crypto";
import { beforeAll, describe, expect, test } from "vitest";
import { generateNodeKeyAndCSR, parseNodeCert, renewalTime, signNodeCSR, verifyNodeCert } from "../../src/ca/certs.js";
import { CAError, InvalidJoinTokenError } from "../../src/ca/errors.js";
import { isGeneratedId, newClusterId, newNodeId } from "../../src/ca/ids.js";
import { createRootCA, RootCA, type RootCAMaterial } from "../../src/ca/rootca.js";
import { generateJoinToken, parseJoinToken, tokenMatchesRoot, tokensEqual } from "../../src/ca/token.js";
import { certToPem, EC_SIGN_PARAMS, generateEcKeyPair, x509 } from "../../src/ca/x509.js";

const HOUR = 3600_000;
const DAY = 24 * HOUR;
const NOW = new Date("2030-01-01T00:00:00Z");
const now = (): Date => new Date(NOW);
const NODE = "n0de1d000000000000000000a";
const CLUSTER = "c1uster000000000000000000";
const TOKEN_RE = /^SWMTKN-1-[0-9a-z]{50}-[0-9a-z]{25}$/;

const fill = (byte: number) => (n: number) => new Uint8Array(n).fill(byte);

/** Expects `p` to reject (or `f` to throw) a CAError with `code`. */
async function expectCAError(p: Promise<unknown> | (() => unknown), code: string): Promise<CAError> {
  let err: unknown;
  try {
    await (typeof p === "function" ? p() : p);
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(CAError);
  expect((err as CAError).code).toBe(code);
  return err as CAError;
}

let rootM: RootCAMaterial;
let otherM: RootCAMaterial;
let ca: RootCA;
let other: RootCA;

beforeAll(async () => {
  rootM = await createRootCA({ now });
  otherM = await createRootCA({ now });
  ca = await RootCA.fromPem(rootM.certPem, rootM.keyPem);
  other = await RootCA.fromPem(otherM.certPem, otherM.keyPem);
});

describe("join tokens", () => {
  test("format: SWMTKN-1-<50 base36 digest>-<25 base36 secret>, 85 characters", () => {
    for (let i = 0; i < 50; i++) {
      const t = generateJoinToken(rootM.certPem);
      expect(t).toHaveLength(85);
      expect(t).toMatch(TOKEN_RE);
    }
  });

  test("the digest is sha256 of the root PEM in base36, the secret is the random bytes in base36, both padded", () => {
    const sha = createHash("sha256").update(rootM.certPem).digest("hex");
    const zero = generateJoinToken(rootM.certPem, fill(0));
    expect(zero).toBe(`SWMTKN-1-${BigInt(`0x${sha}`).toString(36).padStart(50, "0")}-${"0".repeat(25)}`);
    const max = generateJoinToken(rootM.certPem, fill(0xff));
    expect(max.slice(-25)).toBe(((1n << 128n) - 1n).toString(36));
    expect(max.slice(-25)).toHaveLength(25);
    expect(generateJoinToken(rootM.certPem)).not.toBe(generateJoinToken(rootM.certPem));
  });

  test("parse round trip", () => {
    const t = generateJoinToken(rootM.certPem);
    const p = parseJoinToken(t);
    expect(p).toEqual({ version: 1, digest: ca.digest(), secret: t.slice(-25) });
    expect(p.digest).toMatch(/^[0-9a-f]{64}$/);
    // A digest with leading zeros survives the trip (base36 padding both ways).
    const small = `SWMTKN-1-${"0".repeat(49)}1-${"0".repeat(24)}2`;
    expect(parseJoinToken(small)).toEqual({ version: 1, digest: `${"0".repeat(63)}1`, secret: `${"0".repeat(24)}2` });
  });

  test("a token for another root, or for a differently stored PEM, does not match", () => {
    const p = parseJoinToken(generateJoinToken(rootM.certPem));
    expect(tokenMatchesRoot(p, rootM.certPem)).toBe(true);
    expect(tokenMatchesRoot(p, otherM.certPem)).toBe(false);
    expect(tokenMatchesRoot(p, rootM.certPem.trimEnd())).toBe(false);
  });

  test("malformed tokens are rejected with 'invalid join token', without echoing the token", () => {
    const good = generateJoinToken(rootM.certPem);
    const digest = good.slice(9, 59);
    const secret = good.slice(60);
    const bad: unknown[] = [
      "",
      "SWMTKN-1-",
      good.slice(0, -1),
      `${good}0`,
      good.toUpperCase(),
      `SWMTKN-2-${digest}-${secret}`,
      `SWMTKX-1-${digest}-${secret}`,
      `SWMTKN-1-${digest}${secret}-`,
      `SWMTKN-1-${digest.slice(1)}-0${secret}`,
      `SWMTKN-1-${digest}_${secret}`,
      `SWMTKN-1-${digest.slice(0, -1)}!-${secret}`,
      `SWMTKN-1-${"z".repeat(50)}-${secret}`, // > 2^256
      `SWMTKN-1-${digest}-${"z".repeat(25)}`, // > 2^128
      ` ${good.slice(1)}`,
      undefined,
      42,
    ];
    for (const t of bad) {
      let err: unknown;
      try {
        parseJoinToken(t as string);
      } catch (e) {
        err = e;
      }
      expect(err, String(t)).toBeInstanceOf(InvalidJoinTokenError);
      expect((err as Error).message).toBe("invalid join token");
      expect((err as CAError).code).toBe("invalid-join-token");
      expect((err as Error).message).not.toContain(secret);
    }
  });

  test("tokensEqual compares exactly, and unequal byte lengths are simply unequal", () => {
    const a = generateJoinToken(rootM.certPem);
    const b = generateJoinToken(rootM.certPem);
    expect(tokensEqual(a, a)).toBe(true);
    expect(tokensEqual(a, `${a}`)).toBe(true);
    expect(tokensEqual(a, b)).toBe(false);
    expect(tokensEqual(a, `${a.slice(0, -1)}${a.endsWith("0") ? "1" : "0"}`)).toBe(false);
    expect(tokensEqual(a, a.slice(0, -1))).toBe(false);
    expect(tokensEqual("", a)).toBe(false);
    expect(tokensEqual("", "")).toBe(true);
    // Same character count, different byte length: must not throw from timingSafeEqual.
    expect(tokensEqual("é", "e")).toBe(false);
    expect(tokensEqual("é", "ab")).toBe(false);
  });
});

describe("ids", () => {
  test("25 base36 characters from 128 random bits, left-padded", () => {
    const ids = new Set<string>();
    for (let i = 0; i < 100; i++) {
      const id = newNodeId();
      expect(id).toMatch(/^[0-9a-z]{25}$/);
      expect(isGeneratedId(id)).toBe(true);
      ids.add(id);
    }
    expect(ids.size).toBe(100);
    expect(newClusterId()).toMatch(/^[0-9a-z]{25}$/);
    expect(newNodeId(fill(0))).toBe("0".repeat(25));
    expect(newClusterId(fill(0xff))).toBe("f5lxx1zz5pnorynqglhzmsp33");
    expect(() => newNodeId(() => new Uint8Array(8))).toThrow(/expected 16/);
  });
});

describe("root CA", () => {
  test("self-signed, CN swarm-ca, ECDSA P-256, CA:true critical, keyCertSign+cRLSign, 20 years, backdated 1 h", async () => {
    const cert = new x509.X509Certificate(rootM.certPem);
    expect(cert.subject).toBe("CN=swarm-ca");
    expect(cert.issuer).toBe("CN=swarm-ca");
    expect(await cert.isSelfSigned()).toBe(true);
    expect(cert.publicKey.algorithm).toMatchObject({ name: "ECDSA", namedCurve: "P-256" });
    expect(cert.signatureAlgorithm).toMatchObject({ name: "ECDSA", hash: { name: "SHA-256" } });
    const bc = cert.getExtension(x509.BasicConstraintsExtension);
    expect(bc?.ca).toBe(true);
    expect(bc?.critical).toBe(true);
    const ku = cert.getExtension(x509.KeyUsagesExtension);
    expect(ku?.usages).toBe(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign);
    expect(ku?.critical).toBe(true);
    expect(cert.notBefore).toEqual(new Date(NOW.getTime() - HOUR));
    expect(cert.notAfter).toEqual(new Date("2050-01-01T00:00:00Z"));
    expect(new NodeX509Certificate(rootM.certPem).ca).toBe(true);
    const key = createPrivateKey(rootM.keyPem);
    expect(rootM.keyPem).toMatch(/^-----BEGIN PRIVATE KEY-----\n/);
    expect(key.asymmetricKeyDetails?.namedCurve).toBe("prime256v1");

    const short = new x509.X509Certificate((await createRootCA({ now, years: 5 })).certPem);
    expect(short.notAfter).toEqual(new Date("2035-01-01T00:00:00Z"));
  });

  test("RootCA: digest is sha256 of the PEM as stored; workers load it without the key", async () => {
    expect(ca.digest()).toBe(createHash("sha256").update(rootM.certPem).digest("hex"));
    expect(ca.canSign).toBe(true);
    const workerView = await RootCA.fromPem(rootM.certPem);
    expect(workerView.canSign).toBe(false);
    expect(workerView.digest()).toBe(ca.digest());
    const { csrPem } = await generateNodeKeyAndCSR();
    await expectCAError(
      signNodeCSR(workerView, csrPem, { nodeId: NODE, role: "worker", clusterId: CLUSTER }),
      "no-ca-key",
    );
  });

  test("RootCA refuses a key that does not match, a non-CA certificate, and garbage", async () => {
    await expectCAError(RootCA.fromPem(rootM.certPem, otherM.keyPem), "invalid-root-ca");
    const { keyPem, csrPem } = await generateNodeKeyAndCSR();
    const nodeCert = await signNodeCSR(ca, csrPem, { nodeId: NODE, role: "manager", clusterId: CLUSTER, now });
    await expectCAError(RootCA.fromPem(nodeCert, keyPem), "invalid-root-ca");
    await expectCAError(RootCA.fromPem("not a certificate"), "invalid-root-ca");
    await expectCAError(RootCA.fromPem(rootM.certPem, "not a key"), "invalid-root-ca");
  });
});

describe("node certificates", () => {
  test("a manager certificate: subject, SANs, EKU, validity 90 days from the injected clock", async () => {
    const { keyPem, csrPem } = await generateNodeKeyAndCSR(NODE);
    const pem = await signNodeCSR(ca, csrPem, { nodeId: NODE, role: "manager", clusterId: CLUSTER, now });
    const cert = new x509.X509Certificate(pem);
    expect(cert.subject).toBe(`O=${CLUSTER}, OU=swarm-manager, CN=${NODE}`);
    expect(cert.issuer).toBe("CN=swarm-ca");
    const node = new NodeX509Certificate(pem);
    expect(node.subject).toBe(`O=${CLUSTER}\nOU=swarm-manager\nCN=${NODE}`);
    expect(node.subjectAltName).toBe(`DNS:swarm-manager, DNS:${NODE}, DNS:swarm-ca`);
    expect(node.ca).toBe(false);
    expect(node.verify(new NodeX509Certificate(rootM.certPem).publicKey)).toBe(true);
    expect(node.keyUsage?.sort()).toEqual(["1.3.6.1.5.5.7.3.1", "1.3.6.1.5.5.7.3.2"]);
    expect(cert.notBefore).toEqual(new Date(NOW.getTime() - HOUR));
    expect(cert.notAfter).toEqual(new Date(NOW.getTime() + 90 * DAY));
    // Serial: positive, at most 16 bytes.
    const serial = BigInt(`0x${cert.serialNumber}`);
    expect(serial > 0n && serial < 1n << 127n).toBe(true);
    // The certificate is for the CSR's key.
    const spki = createPublicKey(createPrivateKey(keyPem)).export({ type: "spki", format: "der" });
    expect(Buffer.from(cert.publicKey.rawData).equals(spki)).toBe(true);
    expect(parseNodeCert(pem)).toEqual({
      nodeId: NODE,
      role: "manager",
      clusterId: CLUSTER,
      notBefore: new Date(NOW.getTime() - HOUR),
      notAfter: new Date(NOW.getTime() + 90 * DAY),
    });
  });

  test("a worker certificate has OU swarm-worker and no swarm-ca SAN; the CSR subject is ignored", async () => {
    const { csrPem } = await generateNodeKeyAndCSR("i-claim-to-be-someone-else");
    const pem = await signNodeCSR(ca, csrPem, { nodeId: NODE, role: "worker", clusterId: CLUSTER, now, days: 30 });
    const node = new NodeX509Certificate(pem);
    expect(node.subject).toBe(`O=${CLUSTER}\nOU=swarm-worker\nCN=${NODE}`);
    expect(node.subjectAltName).toBe(`DNS:swarm-worker, DNS:${NODE}`);
    const info = parseNodeCert(pem);
    expect(info.role).toBe("worker");
    expect(info.notAfter).toEqual(new Date(NOW.getTime() + 30 * DAY));
  });

  test("a certificate never outlives the root CA", async () => {
    const shortM = await createRootCA({ now, years: 1 });
    const short = await RootCA.fromPem(shortM.certPem, shortM.keyPem);
    const { csrPem } = await generateNodeKeyAndCSR();
    const pem = await signNodeCSR(short, csrPem, { nodeId: NODE, role: "worker", clusterId: CLUSTER, now, days: 400 });
    expect(parseNodeCert(pem).notAfter).toEqual(short.notAfter);
  });

  test("a CSR with a bad signature, a CSR that is not PEM, and bad ids are refused", async () => {
    const a = await generateEcKeyPair();
    const b = await generateEcKeyPair();
    const forged = await x509.Pkcs10CertificateRequestGenerator.create({
      name: [{ CN: [NODE] }],
      keys: { publicKey: a.publicKey, privateKey: b.privateKey },
      signingAlgorithm: EC_SIGN_PARAMS,
    });
    const opts = { nodeId: NODE, role: "worker", clusterId: CLUSTER, now } as const;
    const err = await expectCAError(signNodeCSR(ca, certToPem(forged), opts), "invalid-csr");
    expect(err.message).toMatch(/signature is invalid/);
    await expectCAError(
      signNodeCSR(ca, "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", opts),
      "invalid-csr",
    );
    await expectCAError(signNodeCSR(ca, "hello", opts), "invalid-csr");
    const { csrPem } = await generateNodeKeyAndCSR();
    await expectCAError(signNodeCSR(ca, csrPem, { ...opts, nodeId: "a,OU=swarm-manager" }), "invalid-node-id");
    await expectCAError(signNodeCSR(ca, csrPem, { ...opts, clusterId: "" }), "invalid-node-id");
  });

  test("verifyNodeCert accepts our certificate and refuses another root's, expired and not-yet-valid ones", async () => {
    const { csrPem } = await generateNodeKeyAndCSR();
    const opts = { nodeId: NODE, role: "manager", clusterId: CLUSTER, now } as const;
    const ours = await signNodeCSR(ca, csrPem, opts);
    const theirs = await signNodeCSR(other, csrPem, opts);

    expect(verifyNodeCert(ca, ours, NOW)).toMatchObject({ nodeId: NODE, role: "manager", clusterId: CLUSTER });
    expect(verifyNodeCert(await RootCA.fromPem(rootM.certPem), ours, NOW).nodeId).toBe(NODE);
    // DER works too (what TLS hands over).
    expect(verifyNodeCert(ca, new NodeX509Certificate(ours).raw, NOW).nodeId).toBe(NODE);

    await expectCAError(() => verifyNodeCert(ca, theirs, NOW), "untrusted-certificate");
    await expectCAError(() => verifyNodeCert(other, ours, NOW), "untrusted-certificate");
    await expectCAError(
      () => verifyNodeCert(ca, ours, new Date(NOW.getTime() + 90 * DAY + 1000)),
      "certificate-expired",
    );
    await expectCAError(
      () => verifyNodeCert(ca, ours, new Date(NOW.getTime() - 2 * HOUR)),
      "certificate-not-yet-valid",
    );
    // The root certificate itself is not a node certificate.
    await expectCAError(() => verifyNodeCert(ca, rootM.certPem, NOW), "invalid-certificate");
    await expectCAError(() => verifyNodeCert(ca, "garbage", NOW), "invalid-certificate");
  });

  test("parseNodeCert refuses an OU shoal does not issue", async () => {
    const keys = await generateEcKeyPair();
    const cert = await ca.issue({
      subject: [{ O: [CLUSTER] }, { OU: ["swarm-admin"] }, { CN: [NODE] }],
      publicKey: await x509.PublicKey.create(keys.publicKey),
      notBefore: NOW,
      notAfter: new Date(NOW.getTime() + DAY),
      serialNumber: "01",
      extensions: [],
    });
    const err = await expectCAError(() => parseNodeCert(certToPem(cert)), "invalid-certificate");
    expect(err.message).toMatch(/unknown role OU="swarm-admin"/);
  });
});

describe("renewalTime", () => {
  const nb = new Date(NOW.getTime() - HOUR);
  const na = new Date(NOW.getTime() + 90 * DAY);
  const validity = na.getTime() - nb.getTime();

  test("is at 50 % for rand 0, 65 % for rand 0.5, and below 80 % for rand just under 1", () => {
    expect(renewalTime(nb, na, () => 0).getTime()).toBe(nb.getTime() + validity * 0.5);
    expect(renewalTime(nb, na, () => 0.5).getTime()).toBe(nb.getTime() + Math.floor(validity * 0.65));
    const late = renewalTime(nb, na, () => 0.999999).getTime();
    expect(late).toBeLessThanOrEqual(nb.getTime() + validity * 0.8);
    expect(late).toBeGreaterThan(nb.getTime() + validity * 0.79);
  });

  test("always falls within [50 %, 80 %] of the validity", () => {
    for (let i = 0; i < 1000; i++) {
      const t = renewalTime(nb, na).getTime();
      expect(t).toBeGreaterThanOrEqual(nb.getTime() + validity * 0.5);
      expect(t).toBeLessThanOrEqual(nb.getTime() + validity * 0.8);
    }
    expect(() => renewalTime(na, nb)).toThrow(RangeError);
  });
});
