// Root CA rotation on the managers (swarm ca --rotate), as swarmkit does it:
//
//  1. A swarm update whose CAConfig asks for a new root (ForceRotate changed, or SigningCACert/Key given)
//     starts a rotation: the new root is cross-signed by the current one, and from then on every
//     certificate the managers issue is signed with the new key and carries the cross-signed intermediate,
//     so it chains to either root. The cluster's TLSInfo names the new issuer; RootRotationInProgress.
//  2. The leader's reconciler tells nodes, up to 30 at a time, to renew (node.certRenew; the dispatcher
//     passes it down their sessions); each node renews and reports its new issuer in its description.
//  3. When every node that is not down reports the new issuer, the rotation finishes: the new root becomes
//     the root, both join tokens are regenerated (they embed the root's digest), and the sessions push the
//     new root, which nodes adopt. Nodes that were down are not waited for: the old root is kept as
//     "retired", its intermediate still appended to new certificates, so such a node, when it returns, can
//     verify the managers with the root it has and recover a certificate with its old one
//     (CA.RecoverNodeCertificate). The retired root is dropped once every node has moved, or been removed.
//
// Managers' listeners trust the current root and the rotation's new root (their own root file only until
// they know the cluster): once a rotation is over, a certificate from the old root opens nothing but
// CA.RecoverNodeCertificate, which does not need one.

import { createPrivateKey } from "node:crypto";
import { status } from "@grpc/grpc-js";
import type { Logger } from "pino";
import { badRequest } from "../api/errors.js";
import type { ClusterRecord, NodeRecord, NodeRole, SwarmSpec, TLSInfo } from "../api/objects.js";
import { parseNodeCert, signNodeCSR } from "../ca/certs.js";
import { chainsToRoot, clusterTLSInfo, splitPemCerts } from "../ca/chain.js";
import { createRootCA, RootCA } from "../ca/rootca.js";
import { generateJoinToken, rootDigest } from "../ca/token.js";
import { x509 } from "../ca/x509.js";
import type { CAChange } from "../store/ca.js";
import type { Command, StoreEvent, View } from "../store/store.js";
import { GrpcError } from "./grpc-util.js";

/** Nodes told to renew at once (swarmkit's IssuanceStateRotateMaxBatchSize). */
export const ROTATE_BATCH_SIZE = 30;
/** A root given with --ca-cert must stay valid at least this long (swarmkit's minRootExpiration). */
const MIN_ROOT_LIFETIME_MS = 365 * 24 * 3600 * 1000;
/** swarm update --cert-expiry: at least an hour (swarmkit's MinNodeCertExpiration). */
const MIN_NODE_CERT_EXPIRY_NS = 3600e9;
const NS_PER_DAY = 86_400e9;
const DEFAULT_NODE_CERT_DAYS = 90;

// ------------------------------------------------------------------ planning (swarm update)

function normalizePem(pem: string): string {
  return splitPemCerts(pem).join("");
}

function sameKey(a: string, b: string): boolean {
  try {
    const der = (k: string) => createPrivateKey(k).export({ type: "pkcs8", format: "der" });
    return der(a).equals(der(b));
  } catch {
    return false;
  }
}

/**
 * What a swarm update's CAConfig changes: nothing, a new rotation (to a root the managers make, or to the
 * given certificate and key), or the abort of the rotation in progress (the current root given again).
 * Anything shoal cannot carry out is refused here, before anything is written.
 */
export async function planRootRotation(cluster: ClusterRecord, spec: SwarmSpec, now = new Date()): Promise<CAChange> {
  const cfg = spec.CAConfig ?? {};
  if (cfg.NodeCertExpiry && cfg.NodeCertExpiry < MIN_NODE_CERT_EXPIRY_NS) {
    throw badRequest("minimum certificate expiry time is: 1h0m0s");
  }
  if (cfg.ExternalCAs && cfg.ExternalCAs.length > 0) {
    throw badRequest(
      "external CAs are not supported: shoal's managers sign with the swarm's own CA key. Rotate with " +
        "--ca-cert and --ca-key, or with --rotate alone to have the managers make a new root CA",
    );
  }
  const certPem = cfg.SigningCACert ? normalizePem(cfg.SigningCACert) : "";
  const keyPem = cfg.SigningCAKey ?? "";
  if (keyPem && !cfg.SigningCACert) {
    throw badRequest("if a signing CA key is provided, the signing CA cert must also be provided");
  }
  if (cfg.SigningCACert && !keyPem) {
    throw badRequest("the signing CA cert needs its key (--ca-key): external CAs are not supported");
  }
  const s = cluster.secrets;
  if (!certPem) {
    if ((cfg.ForceRotate ?? 0) === (s.lastForcedRotation ?? 0)) return {};
    const fresh = await createRootCA();
    return startRotation(cluster, fresh.certPem, fresh.keyPem);
  }
  if (splitPemCerts(cfg.SigningCACert ?? "").length !== 1) {
    throw badRequest("the desired CA certificate cannot contain multiple certificates");
  }
  let next: RootCA;
  try {
    next = await RootCA.fromPem(certPem, keyPem);
  } catch (e) {
    throw badRequest(`invalid CA certificate or key: ${(e as Error).message}`);
  }
  if (next.notAfter.getTime() < now.getTime() + MIN_ROOT_LIFETIME_MS)
    throw badRequest("CA certificate expires too soon");
  if (certPem === normalizePem(s.rootCACertPem)) {
    if (!sameKey(keyPem, s.rootCAKeyPem)) throw badRequest("the CA key does not match the swarm's root CA certificate");
    return s.rootRotation ? { rootRotation: null, tlsInfo: clusterTLSInfo(s.rootCACertPem) } : {};
  }
  if (s.rootRotation && certPem === normalizePem(s.rootRotation.caCertPem)) return {};
  if (sameKey(keyPem, s.rootCAKeyPem)) throw badRequest("Cannot update to a cert with an identical key");
  return startRotation(cluster, certPem, keyPem);
}

async function startRotation(cluster: ClusterRecord, caCertPem: string, caKeyPem: string): Promise<CAChange> {
  const current = await RootCA.fromPem(cluster.secrets.rootCACertPem, cluster.secrets.rootCAKeyPem);
  const crossSignedPem = await current.crossSign(caCertPem);
  return {
    rootRotation: { caCertPem, caKeyPem, crossSignedPem },
    tlsInfo: clusterTLSInfo(cluster.secrets.rootCACertPem, caCertPem),
  };
}

// ------------------------------------------------------------------ signing and trust

/** The key managers sign node certificates with now, and the intermediate to append to them. */
export async function signingCA(cluster: View<ClusterRecord>): Promise<{ ca: RootCA; chainPem: string }> {
  const s = cluster.secrets;
  if (s.rootRotation) {
    return {
      ca: await RootCA.fromPemCached(s.rootRotation.caCertPem, s.rootRotation.caKeyPem),
      chainPem: s.rootRotation.crossSignedPem,
    };
  }
  return {
    ca: await RootCA.fromPemCached(s.rootCACertPem, s.rootCAKeyPem),
    chainPem: s.retiredRoot?.crossSignedPem ?? "",
  };
}

/** How long node certificates are valid, in days (swarm init/update --cert-expiry; default 90). */
export function nodeCertDays(cluster: View<ClusterRecord>): number {
  const ns = cluster.info.Spec.CAConfig?.NodeCertExpiry ?? 0;
  return ns > 0 ? ns / NS_PER_DAY : DEFAULT_NODE_CERT_DAYS;
}

/**
 * What a manager's listener trusts: the swarm's root and, during a rotation, the new root; before this
 * manager knows the cluster (joining, starting), its own root file.
 */
export function listenerTrust(localRootPem: string, cluster: ClusterRecord | undefined): string {
  const pems = cluster ? [cluster.secrets.rootCACertPem, cluster.secrets.rootRotation?.caCertPem] : [localRootPem];
  const out: string[] = [];
  for (const p of pems) for (const b of splitPemCerts(p ?? "")) if (!out.includes(b)) out.push(b);
  return out.join("");
}

/** Does the node report the issuer `want` (its certificate was signed by that key)? */
export function hasIssuer(rec: View<NodeRecord>, want: View<TLSInfo>): boolean {
  const t = rec.node.Description.TLSInfo;
  return (
    t !== undefined &&
    t.CertIssuerPublicKey === want.CertIssuerPublicKey &&
    t.CertIssuerSubject === want.CertIssuerSubject
  );
}

// ------------------------------------------------------------------ recovery (nodes that were down)

export interface RecoverDeps {
  cluster: ClusterRecord;
  clusterId: string;
  node: (id: string) => NodeRecord | undefined;
  isRemoved: (id: string) => boolean;
}

/**
 * A certificate for a node whose own certificate comes from the retired root: the old certificate names
 * the node, and the CSR, signed by the same key, proves the caller holds it.
 */
export async function recoverCertificate(
  deps: RecoverDeps,
  req: { csrPem: string; certificatePem: string },
  now = new Date(),
): Promise<{ certificatePem: string; role: NodeRole; rootCaPem: string }> {
  const retired = deps.cluster.secrets.retiredRoot;
  const leafPem = splitPemCerts(req.certificatePem)[0];
  if (!retired || leafPem === undefined || !chainsToRoot(leafPem, retired.caCertPem, now)) {
    throw new GrpcError(
      status.PERMISSION_DENIED,
      "Permission denied: this certificate was not issued by a root CA this swarm rotated away from; the node " +
        'must leave the swarm ("docker swarm leave --force") and join it again',
    );
  }
  const id = parseNodeCert(leafPem);
  if (id.clusterId !== deps.clusterId)
    throw new GrpcError(status.PERMISSION_DENIED, "Permission denied: another swarm");
  if (deps.isRemoved(id.nodeId) || !deps.node(id.nodeId)) {
    throw new GrpcError(status.PERMISSION_DENIED, `Permission denied: node ${id.nodeId} was removed from the swarm`);
  }
  let csrKey: ArrayBuffer;
  try {
    csrKey = new x509.Pkcs10CertificateRequest(req.csrPem).publicKey.rawData;
  } catch {
    throw new GrpcError(status.INVALID_ARGUMENT, "invalid certificate request: not a readable PEM CSR");
  }
  const certKey = new x509.X509Certificate(leafPem).publicKey.rawData;
  if (!Buffer.from(csrKey).equals(Buffer.from(certKey))) {
    throw new GrpcError(status.PERMISSION_DENIED, "Permission denied: the CSR is not for the certificate's key");
  }
  const role = deps.node(id.nodeId)!.role;
  const { ca, chainPem } = await signingCA(deps.cluster);
  const leaf = await signNodeCSR(ca, req.csrPem, {
    nodeId: id.nodeId,
    role,
    clusterId: deps.clusterId,
    days: nodeCertDays(deps.cluster),
  });
  return { certificatePem: leaf + chainPem, role, rootCaPem: deps.cluster.secrets.rootCACertPem };
}

// ------------------------------------------------------------------ the reconciler (leader only)

export interface RotationDeps {
  /** The store's shared views, not copies: a pass runs after every burst of node changes. */
  cluster: () => View<ClusterRecord> | undefined;
  nodes: () => readonly View<NodeRecord>[];
  /** Subscribe to store events; returns the unsubscribe function. */
  onEvent: (f: (e: StoreEvent) => void) => () => void;
  write: (c: Command) => Promise<unknown>;
  logger: Logger;
  /** Re-check at least this often (a failed write is retried then). */
  pollMs?: number;
}

export class RootRotationReconciler {
  private unsubscribe: (() => void) | undefined;
  private poll: NodeJS.Timeout | undefined;
  private soon: NodeJS.Timeout | undefined;
  private running = false;
  private again = false;

  constructor(private readonly deps: RotationDeps) {}

  start(): void {
    if (this.poll) return;
    this.unsubscribe = this.deps.onEvent((e) => {
      if (e.kind === "cluster" || e.kind === "node" || e.kind === "restore") this.schedule();
    });
    this.poll = setInterval(() => this.schedule(), this.deps.pollMs ?? 1000);
    this.poll.unref();
    this.schedule();
  }

  stop(): void {
    this.unsubscribe?.();
    this.unsubscribe = undefined;
    if (this.poll) clearInterval(this.poll);
    if (this.soon) clearTimeout(this.soon);
    this.poll = undefined;
    this.soon = undefined;
  }

  /** Coalesce bursts of events into one pass (a pass reads every node: at most a few per second). */
  private schedule(): void {
    if (!this.poll || this.soon) return;
    this.soon = setTimeout(() => {
      this.soon = undefined;
      void this.pass();
    }, 50);
    this.soon.unref();
  }

  private async pass(): Promise<void> {
    if (this.running) {
      this.again = true;
      return;
    }
    this.running = true;
    try {
      await this.reconcile();
    } catch (e) {
      this.deps.logger.warn({ err: e }, "root rotation step failed; will retry");
    } finally {
      this.running = false;
      if (this.again) {
        this.again = false;
        this.schedule();
      }
    }
  }

  private async reconcile(): Promise<void> {
    const c = this.deps.cluster();
    if (!c) return;
    const r = c.secrets.rootRotation;
    if (r) {
      const want = c.info.TLSInfo;
      const waiting = this.deps.nodes().filter((n) => n.node.Status.State !== "down" && !hasIssuer(n, want));
      if (waiting.length === 0) return this.finish(c);
      const told = waiting.filter((n) => n.certRenew === want.CertIssuerPublicKey).length;
      const next = waiting
        .filter((n) => n.certRenew !== want.CertIssuerPublicKey)
        .slice(0, Math.max(0, ROTATE_BATCH_SIZE - told))
        .map((n) => n.node.ID);
      if (next.length > 0) {
        await this.deps.write({ op: "node.certRenew", ids: next, issuer: want.CertIssuerPublicKey });
        this.deps.logger.info({ nodes: next, waiting: waiting.length }, "root rotation: nodes told to renew");
      }
      return;
    }
    const retired = c.secrets.retiredRoot;
    if (retired && this.deps.nodes().every((n) => hasIssuer(n, c.info.TLSInfo))) {
      await this.deps.write({ op: "cluster.rootRotation.retire", retired: rootDigest(retired.caCertPem) });
      this.deps.logger.info({}, "every node has moved to the new root CA: the old root is no longer accepted");
    }
  }

  private async finish(c: View<ClusterRecord>): Promise<void> {
    const r = c.secrets.rootRotation!;
    const down = this.deps.nodes().filter((n) => n.node.Status.State === "down" && !hasIssuer(n, c.info.TLSInfo));
    await this.deps.write({
      op: "cluster.rootRotation.finish",
      target: rootDigest(r.caCertPem),
      workerToken: generateJoinToken(r.caCertPem),
      managerToken: generateJoinToken(r.caCertPem),
      tlsInfo: clusterTLSInfo(r.caCertPem),
    });
    this.deps.logger.info(
      { down: down.map((n) => n.node.ID) },
      down.length > 0
        ? "root CA rotation finished; nodes that are down get the new root when they come back"
        : "root CA rotation finished",
    );
  }
}
