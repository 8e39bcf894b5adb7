// The store's part of root CA rotation: starting (with a swarm update), finishing and retiring a rotation,
// and marking nodes to renew their certificates. Deterministic, like every apply: the proposer computed the
// certificates, tokens and TLSInfo; apply checks preconditions (which rotation it concerns) and records.

import type { ClusterRecord, NodeRecord, RootRotation, SwarmSpec, TLSInfo } from "../api/objects.js";
import { rootDigest } from "../ca/token.js";

export type CACommand =
  | {
      op: "cluster.rootRotation";
      action: "finish";
      /** rootDigest of the rotation's new root: the rotation this finishes. */
      target: string;
      workerToken: string;
      managerToken: string;
      /** The cluster's TLSInfo with the new root. */
      tlsInfo: TLSInfo;
    }
  | {
      op: "cluster.rootRotation";
      action: "retire";
      /** rootDigest of the retired root to forget. */
      retired: string;
    }
  | { op: "node.certRenew"; ids: string[]; issuer: string };

/** What a swarm update changes of the root CA (src/manager/ca-rotation.ts planRootRotation). */
export interface CAChange {
  /** A new rotation; null: abort the one in progress; absent: no change. */
  rootRotation?: RootRotation | null;
  /** The cluster's TLSInfo after the change. */
  tlsInfo?: TLSInfo;
}

export type CARefusal = { status: number; message: string };

/** Part of cluster.update: the spec never keeps a signing key or certificate; a rotation starts or stops. */
export function applyCAChange(cluster: ClusterRecord, spec: SwarmSpec, change: CAChange): void {
  if (spec.CAConfig) {
    delete spec.CAConfig.SigningCACert;
    delete spec.CAConfig.SigningCAKey;
    if (!spec.CAConfig.ExternalCAs?.length) delete spec.CAConfig.ExternalCAs;
  }
  // As swarmkit's LastForcedRotation: the ForceRotate this spec was planned with (a different one next time
  // starts a rotation).
  cluster.secrets.lastForcedRotation = spec.CAConfig?.ForceRotate ?? 0;
  if (change.rootRotation === undefined) return;
  if (change.rootRotation === null) delete cluster.secrets.rootRotation;
  else cluster.secrets.rootRotation = structuredClone(change.rootRotation);
  cluster.info.RootRotationInProgress = change.rootRotation !== null;
  if (change.tlsInfo) cluster.info.TLSInfo = structuredClone(change.tlsInfo);
}

/** cluster.rootRotation: finish (the new root becomes the root, tokens regenerated) or retire. */
export function applyRootRotation(
  cluster: ClusterRecord,
  c: Extract<CACommand, { op: "cluster.rootRotation" }>,
): CARefusal | undefined {
  const s = cluster.secrets;
  if (c.action === "finish") {
    const r = s.rootRotation;
    if (!r) return { status: 409, message: "no root CA rotation is in progress" };
    if (rootDigest(r.caCertPem) !== c.target) return { status: 409, message: "the root CA rotation has changed" };
    s.retiredRoot = { caCertPem: s.rootCACertPem, crossSignedPem: r.crossSignedPem };
    s.rootCACertPem = r.caCertPem;
    s.rootCAKeyPem = r.caKeyPem;
    s.workerToken = c.workerToken;
    s.managerToken = c.managerToken;
    delete s.rootRotation;
    cluster.info.TLSInfo = structuredClone(c.tlsInfo);
    cluster.info.RootRotationInProgress = false;
    return undefined;
  }
  if (!s.retiredRoot || rootDigest(s.retiredRoot.caCertPem) !== c.retired) {
    return { status: 409, message: "that root CA is not retired here" };
  }
  delete s.retiredRoot;
  return undefined;
}

/** node.certRenew: the nodes (those that still exist) are told to renew to `issuer`. */
export function markCertRenew(nodes: Map<string, NodeRecord>, ids: string[], issuer: string): NodeRecord[] {
  const out: NodeRecord[] = [];
  for (const id of ids) {
    const rec = nodes.get(id);
    if (!rec || rec.certRenew === issuer) continue;
    rec.certRenew = issuer;
    out.push(rec);
  }
  return out;
}
