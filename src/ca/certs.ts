// Node certificates: key + CSR generation on the node, CSR signing on a manager, parsing, verification,
// and the renewal schedule. The CA decides the identity (CN node id, OU role, O cluster id); the
// subject a node puts in its CSR is ignored, but the CSR's signature must prove key possession.

import { createPrivateKey, generateKeyPair, X509Certificate as NodeX509Certificate } from "node:crypto";
import { promisify } from "node:util";
import { CAError } from "./errors.js";
import { csrPem, p256Pkcs8Pem, readCSR } from "./leaf.js";
import { cryptoRandomBytes, type RandomBytes } from "./random.js";
import { BACKDATE_MS, ROOT_CA_CN, type RootCA } from "./rootca.js";
import { randomSerialHex, x509 } from "./x509.js";

export type NodeRole = "manager" | "worker";

export const MANAGER_OU = "swarm-manager";
const WORKER_OU = "swarm-worker";
/** Extra DNS SAN on manager certificates: the name a joiner uses for "the CA". */
const CA_SAN = ROOT_CA_CN;
export const DEFAULT_NODE_CERT_DAYS = 90;
const DAY_MS = 24 * 60 * 60 * 1000;

/** Node and cluster ids become DN attributes and DNS SANs: keep them to a safe, short alphabet. */
const ID_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

export function roleToOU(role: NodeRole): string {
  return role === "manager" ? MANAGER_OU : WORKER_OU;
}

/** The role an OU stands for, or null for an OU shoal does not issue. */
export function ouToRole(ou: string): NodeRole | null {
  if (ou === MANAGER_OU) return "manager";
  if (ou === WORKER_OU) return "worker";
  return null;
}

const generateEcKey = promisify(generateKeyPair);

export interface NodeKeyAndCSR {
  /** PKCS#8 PEM, ECDSA P-256. */
  keyPem: string;
  csrPem: string;
}

/** A new ECDSA P-256 key and a CSR signed with it (subject CN=<nodeId> if given; the CA ignores it). */
export async function generateNodeKeyAndCSR(nodeId?: string): Promise<NodeKeyAndCSR> {
  const { privateKey } = await generateEcKey("ec", { namedCurve: "P-256" });
  return { keyPem: p256Pkcs8Pem(privateKey), csrPem: csrPem(privateKey, nodeId) };
}

/**
 * A CSR for a key the node already has (PEM): what a node that missed a root rotation sends with its old
 * certificate, the CSR's signature proving it holds that certificate's key.
 */
export async function csrForKey(keyPem: string, nodeId?: string): Promise<string> {
  return csrPem(createPrivateKey(keyPem), nodeId);
}

export interface SignNodeCSROptions {
  nodeId: string;
  role: NodeRole;
  clusterId: string;
  now?: () => Date;
  /** Validity from now; default 90. The certificate never outlives the root CA certificate. */
  days?: number;
  randomBytes?: RandomBytes;
}

/**
 * Signs a node's CSR with the cluster root CA (managers only). Subject CN=<nodeId>, OU=swarm-manager|
 * swarm-worker, O=<clusterId> (in ASN.1 order O, OU, CN, as Go's pkix.Name; printed CN=..., OU=..., O=...);
 * DNS SANs OU, CN (and swarm-ca for managers); serverAuth+clientAuth; valid from now-1h to now+days.
 * Throws CAError "invalid-csr" if the CSR cannot be read, its signature does not verify, or its key is not
 * ECDSA P-256. The join path: no ASN.1 library, one ECDSA verify and one sign (src/ca/leaf.ts).
 */
export async function signNodeCSR(rootCA: RootCA, csrPem: string, opts: SignNodeCSROptions): Promise<string> {
  if (!ID_RE.test(opts.nodeId)) throw new CAError("invalid-node-id", `invalid node id ${JSON.stringify(opts.nodeId)}`);
  if (!ID_RE.test(opts.clusterId)) {
    throw new CAError("invalid-node-id", `invalid cluster id ${JSON.stringify(opts.clusterId)}`);
  }
  if (opts.role !== "manager" && opts.role !== "worker") {
    throw new CAError("invalid-node-id", `invalid role ${JSON.stringify(opts.role)}`);
  }
  const days = opts.days ?? DEFAULT_NODE_CERT_DAYS;
  if (!(days > 0)) throw new RangeError(`days must be positive, got ${days}`);
  if (!rootCA.canSign) {
    throw new CAError("no-ca-key", "This node is not a swarm manager: it does not hold the cluster CA key.");
  }

  const key = readCSR(csrPem);

  const now = (opts.now ?? (() => new Date()))();
  const notBefore = new Date(now.getTime() - BACKDATE_MS);
  let notAfter = new Date(now.getTime() + days * DAY_MS);
  if (notAfter > rootCA.notAfter) notAfter = rootCA.notAfter;

  const ou = roleToOU(opts.role);
  return rootCA.signNodeCertificate({
    serial: Buffer.from(randomSerialHex(opts.randomBytes ?? cryptoRandomBytes), "hex"),
    notBefore,
    notAfter,
    clusterId: opts.clusterId,
    ou,
    nodeId: opts.nodeId,
    dnsNames: opts.role === "manager" ? [ou, opts.nodeId, CA_SAN] : [ou, opts.nodeId],
    key,
  });
}

export interface NodeCertInfo {
  nodeId: string;
  role: NodeRole;
  clusterId: string;
  notBefore: Date;
  notAfter: Date;
}

function singleField(name: x509.Name, field: string, what: string): string {
  const values = name.getField(field);
  if (values.length !== 1 || values[0] === undefined || values[0] === "") {
    throw new CAError(
      "invalid-certificate",
      `the node certificate has ${values.length} ${what} (${field}) values, expected 1`,
    );
  }
  return values[0];
}

/**
 * Reads the identity of a node certificate (PEM, or DER bytes as TLS hands them over). Does not check
 * who signed it: see verifyNodeCert. Throws CAError "invalid-certificate" for an unreadable
 * certificate or an OU that is not swarm-manager / swarm-worker.
 */
export function parseNodeCert(cert: string | Uint8Array): NodeCertInfo {
  let parsed: x509.X509Certificate;
  try {
    parsed = new x509.X509Certificate(typeof cert === "string" ? cert : Uint8Array.from(cert));
  } catch (err) {
    throw new CAError("invalid-certificate", "the node certificate is not a readable certificate", { cause: err });
  }
  const subject = parsed.subjectName;
  const nodeId = singleField(subject, "CN", "node id");
  const ou = singleField(subject, "OU", "role");
  const clusterId = singleField(subject, "O", "cluster id");
  const role = ouToRole(ou);
  if (role === null) {
    throw new CAError("invalid-certificate", `the node certificate has unknown role OU=${JSON.stringify(ou)}`);
  }
  return { nodeId, role, clusterId, notBefore: parsed.notBefore, notAfter: parsed.notAfter };
}

/**
 * Checks that `cert` was issued and signed by `rootCA`, is a node (not CA) certificate with a known
 * role, and that both it and its issuer are valid at `now`. Returns the node identity; throws CAError
 * "invalid-certificate" | "untrusted-certificate" | "certificate-not-yet-valid" | "certificate-expired".
 * Synchronous (node:crypto), so it can run inside a TLS checkServerIdentity callback.
 */
export function verifyNodeCert(rootCA: RootCA, cert: string | Uint8Array, now: Date = new Date()): NodeCertInfo {
  const info = parseNodeCert(cert);
  let leaf: NodeX509Certificate;
  try {
    leaf = new NodeX509Certificate(typeof cert === "string" ? cert : Buffer.from(cert));
  } catch (err) {
    throw new CAError("invalid-certificate", "the node certificate is not a readable certificate", { cause: err });
  }
  if (leaf.ca) throw new CAError("invalid-certificate", "a CA certificate is not a node certificate");
  const issuer = rootCA.issuerOf(leaf);
  if (issuer === null) {
    throw new CAError(
      "untrusted-certificate",
      `the certificate of node ${info.nodeId} was not issued by this swarm's root CA (the node may belong to another swarm)`,
    );
  }
  const t = now.getTime();
  if (t < info.notBefore.getTime()) {
    throw new CAError(
      "certificate-not-yet-valid",
      `the certificate of node ${info.nodeId} is not valid before ${info.notBefore.toISOString()}; check the clocks of both nodes`,
    );
  }
  if (t > info.notAfter.getTime()) {
    throw new CAError(
      "certificate-expired",
      `the certificate of node ${info.nodeId} expired at ${info.notAfter.toISOString()}; the node must leave and join the swarm again`,
    );
  }
  const rootFrom = Date.parse(issuer.validFrom);
  const rootTo = Date.parse(issuer.validTo);
  if (t < rootFrom || t > rootTo) {
    throw new CAError(
      t > rootTo ? "certificate-expired" : "certificate-not-yet-valid",
      `the swarm root CA certificate is valid only from ${new Date(rootFrom).toISOString()} to ${new Date(rootTo).toISOString()}`,
    );
  }
  return info;
}

/**
 * When to renew a certificate: at a random point between 50 % and 80 % of its validity (swarmkit's
 * schedule), so that a cluster's nodes do not all renew at once. `rand` returns a number in [0, 1).
 */
export function renewalTime(notBefore: Date, notAfter: Date, rand: () => number = Math.random): Date {
  const start = notBefore.getTime();
  const validity = notAfter.getTime() - start;
  if (!(validity > 0)) throw new RangeError("notAfter must be after notBefore");
  const r = Math.min(Math.max(rand(), 0), 1);
  return new Date(start + Math.floor(validity * (0.5 + 0.3 * r)));
}
