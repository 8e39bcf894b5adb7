// The store's part of root CA rotation and autolock: what a swarm update changes of the root CA and of the
// unlock key, finishing and retiring a rotation, and marking nodes to renew their certificates. Deterministic,
// like every apply: the proposer computed the certificates, tokens and TLSInfo; apply checks preconditions
// (which rotation it concerns) and records.

import type { ClusterRecord, ClusterSecrets, RootRotation, SwarmSpec, TLSInfo } from "../api/objects.js";
import { rootDigest } from "../ca/token.js";
import type { Command } from "./commands.js";
import { type ApplyContext, clone, fail, type Outcome, ok, type State } from "./state.js";

/** What a swarm update changes of the root CA (src/manager/ca-rotation.ts planRootRotation). */
export interface CAChange {
  /** A new rotation; null: abort the one in progress; absent: no change. */
  rootRotation?: RootRotation | null;
  /** The cluster's TLSInfo after the change. */
  tlsInfo?: TLSInfo;
}

/**
 * Part of cluster.update, after the spec is set: the unlock key follows autolock (kept or replaced while on,
 * dropped when off); the spec never keeps a signing key or certificate; a rotation starts or stops.
 */
export function applySecretsChange(cluster: ClusterRecord, c: { unlockKey?: string | undefined } & CAChange): void {
  const spec = cluster.info.Spec;
  applyUnlockKey(cluster.secrets, spec, c.unlockKey);
  if (spec.CAConfig) {
    delete spec.CAConfig.SigningCACert;
    delete spec.CAConfig.SigningCAKey;
    if (!spec.CAConfig.ExternalCAs?.length) delete spec.CAConfig.ExternalCAs;
  }
  // As swarmkit's LastForcedRotation: the ForceRotate this spec was planned with (a different one next time
  // starts a rotation).
  cluster.secrets.lastForcedRotation = spec.CAConfig?.ForceRotate ?? 0;
  if (c.rootRotation === undefined) return;
  if (c.rootRotation === null) delete cluster.secrets.rootRotation;
  else cluster.secrets.rootRotation = clone(c.rootRotation);
  cluster.info.RootRotationInProgress = c.rootRotation !== null;
  if (c.tlsInfo) cluster.info.TLSInfo = clone(c.tlsInfo);
}

function applyUnlockKey(secrets: ClusterSecrets, spec: SwarmSpec, unlockKey: string | undefined): void {
  if (!spec.EncryptionConfig?.AutoLockManagers) delete secrets.unlockKey;
  else if (unlockKey) secrets.unlockKey = unlockKey;
}

type RotationCommand = Extract<Command, { op: "cluster.rootRotation.finish" | "cluster.rootRotation.retire" }>;

/** Finish a rotation (the new root becomes the root, the tokens are replaced), or forget the retired root. */
export function applyRootRotation(s: State, c: RotationCommand, ctx: ApplyContext): Outcome {
  const cluster = s.cluster;
  if (!cluster) return fail(503, "the cluster does not exist");
  const secrets = cluster.secrets;
  if (c.op === "cluster.rootRotation.finish") {
    const r = secrets.rootRotation;
    if (!r) return fail(409, "no root CA rotation is in progress");
    if (rootDigest(r.caCertPem) !== c.target) return fail(409, "the root CA rotation has changed");
    secrets.retiredRoot = { caCertPem: secrets.rootCACertPem, crossSignedPem: r.crossSignedPem };
    secrets.rootCACertPem = r.caCertPem;
    secrets.rootCAKeyPem = r.caKeyPem;
    secrets.workerToken = c.workerToken;
    secrets.managerToken = c.managerToken;
    delete secrets.rootRotation;
    cluster.info.TLSInfo = clone(c.tlsInfo);
    cluster.info.RootRotationInProgress = false;
  } else {
    if (!secrets.retiredRoot || rootDigest(secrets.retiredRoot.caCertPem) !== c.retired) {
      return fail(409, "that root CA is not retired here");
    }
    delete secrets.retiredRoot;
  }
  cluster.info.Version = { Index: ctx.index };
  cluster.info.UpdatedAt = ctx.at;
  ctx.emit({ kind: "cluster", cluster: clone(cluster) });
  return ok(ctx.index);
}

/** node.certRenew: the nodes (those that still exist) are told to renew to `issuer`. */
export function applyCertRenew(s: State, c: Extract<Command, { op: "node.certRenew" }>, ctx: ApplyContext): Outcome {
  for (const id of c.ids) {
    const rec = s.nodes.get(id);
    if (!rec || rec.certRenew === c.issuer) continue;
    rec.certRenew = c.issuer;
    rec.node.Version = { Index: ctx.index };
    rec.node.UpdatedAt = ctx.at;
    ctx.emit({ kind: "node", action: "update", node: clone(rec) });
  }
  return ok(ctx.index);
}
