// Who a gRPC caller is, and whether the cluster still knows it: the one place both access checks on :2377
// read a peer's identity. The control-plane ACL (src/manager/acl.ts) and the Raft transport's sender check
// (src/raft/transport-server.ts) each then apply their own rule (the store's role now; Raft membership)
// and say the refusal in their own words.
//
// The certificate (chain-verified by TLS, read by peerRole) proves the node id, role and cluster; the
// checks, in order: a certificate was presented; it is a manager's where one is needed; it belongs to this
// cluster; its node was not removed from the swarm.

import { type CallWithAuthContext, type PeerIdentity, peerRole } from "./tls.js";

/** What the check needs of the cluster now. */
export interface PeerContext {
  /** This node's cluster id: a caller's certificate must have O = clusterId(). */
  clusterId: () => string;
  /** The node (certificate CN) was removed from the swarm. */
  isRemoved?: (nodeId: string) => boolean;
}

export type PeerProblem = "no-certificate" | "not-a-manager" | "other-cluster" | "removed";

export type PeerCheck =
  | { peer: PeerIdentity; problem?: undefined }
  | { peer: null; problem: "no-certificate" }
  | { peer: PeerIdentity; problem: Exclude<PeerProblem, "no-certificate"> };

/**
 * The caller's identity and the first problem with it (none: it may go on to the caller's own rule).
 * `managerCertificate`: only a certificate with the manager role will do.
 */
export function checkPeer(call: CallWithAuthContext, ctx: PeerContext, managerCertificate: boolean): PeerCheck {
  const peer = peerRole(call);
  if (!peer) return { peer: null, problem: "no-certificate" };
  if (managerCertificate && peer.role !== "manager") return { peer, problem: "not-a-manager" };
  if (peer.clusterId !== ctx.clusterId()) return { peer, problem: "other-cluster" };
  if (ctx.isRemoved?.(peer.nodeId)) return { peer, problem: "removed" };
  return { peer };
}
