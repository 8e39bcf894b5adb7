// The CA service: the root certificate for anyone, a node certificate for a valid join token, and
// renewal for nodes that have one. Any manager can sign: the root CA key is in the replicated store.
// During a root rotation the managers sign with the new root's key and append the cross-signed
// intermediate (src/manager/ca-rotation.ts); a node left behind by one recovers with its old certificate.

import type { ServerUnaryCall, sendUnaryData, UntypedServiceImplementation } from "@grpc/grpc-js";
import { status } from "@grpc/grpc-js";
import type { Logger } from "pino";
import type { ClusterRecord, Node, NodeAvailability, NodeRole } from "../api/objects.js";
import { DEFAULT_DATA_PATH_PORT } from "../api/ports.js";
import { signNodeCSR } from "../ca/certs.js";
import { newNodeId } from "../ca/ids.js";
import { parseJoinToken, tokensEqual } from "../ca/token.js";
import type {
  GetRootCACertificateRequest,
  GetRootCACertificateResponse,
  IssueNodeCertificateRequest,
  IssueNodeCertificateResponse,
  RecoverNodeCertificateRequest,
  RecoverNodeCertificateResponse,
  RenewNodeCertificateRequest,
  RenewNodeCertificateResponse,
} from "../gen/cluster.js";
import type { Command, Store, View } from "../store/store.js";
import { callerOf } from "./acl.js";
import { nodeCertDays, recoverCertificate, signingCA } from "./ca-rotation.js";
import { GrpcError, peerIp, unaryHandler } from "./grpc-util.js";
import type { JoinLimiter } from "./join-limiter.js";

export const INVALID_TOKEN_MESSAGE = "A valid join token is necessary to join this cluster";

/** What the CA service needs of its manager. */
export interface CAServiceCluster {
  readonly store: Store;
  readonly clusterId: string;
  readonly log: Logger;
  /** The TLS material this manager serves with (its root is what anyone may fetch). */
  readonly tls: { rootPem: string };
  readonly joinLimiter: JoinLimiter;
  readBarrier(): Promise<void>;
  write(cmd: Command): Promise<number>;
}

export function caService(m: CAServiceCluster): UntypedServiceImplementation {
  return {
    getRootCaCertificate: (
      _call: ServerUnaryCall<GetRootCACertificateRequest, GetRootCACertificateResponse>,
      cb: sendUnaryData<GetRootCACertificateResponse>,
    ) => {
      // The swarm's root now (what the join tokens' digest is of), or this manager's own until it knows.
      cb(null, { certificatePem: m.store.clusterView()?.secrets.rootCACertPem ?? m.tls.rootPem });
    },

    issueNodeCertificate: unaryHandler<IssueNodeCertificateRequest, IssueNodeCertificateResponse>(async (call) => {
      const req = call.request;
      const from = peerIp(call.getPeer());
      const waitMs = m.joinLimiter.retryAfterMs(from);
      if (waitMs > 0) {
        throw new GrpcError(
          status.RESOURCE_EXHAUSTED,
          `too many failed join attempts from ${from}: try again in ${Math.ceil(waitMs / 1000)} s with a valid join token`,
        );
      }
      // The tokens must be current: a rotated token is refused at once.
      await m.readBarrier();
      const cluster = m.store.clusterView();
      if (!cluster) throw new GrpcError(status.UNAVAILABLE, "the cluster is not initialised yet");
      const role = tokenRole(m.joinLimiter, cluster, req.token, from);
      // Only a manager listens for cluster traffic: one that could not must not be half-created.
      if (role === "manager" && req.listenAddrError) {
        throw new GrpcError(status.FAILED_PRECONDITION, req.listenAddrError);
      }
      // The ACL parsed the request: availability is one of Docker's three, or empty.
      const availability = (req.availability || "active") as NodeAvailability;
      const nodeId = newNodeId();
      const certificatePem = await signFor(cluster, req.csrPem, { nodeId, role, clusterId: m.clusterId });
      const node: Node = newNodeObject(nodeId, role, availability, req.hostname, from);
      await m.write({ op: "node.create", node, role });
      m.log.info({ node: nodeId, role, hostname: req.hostname }, "issued a certificate to a joining node");
      return {
        nodeId,
        certificatePem,
        role,
        clusterId: m.clusterId,
        dataPathPort: cluster.info.DataPathPort || DEFAULT_DATA_PATH_PORT,
      };
    }),

    renewNodeCertificate: unaryHandler<RenewNodeCertificateRequest, RenewNodeCertificateResponse>(async (call) => {
      const peer = callerOf(call);
      if (!peer) throw new GrpcError(status.PERMISSION_DENIED, "Permission denied: renewal needs a node certificate");
      await m.readBarrier();
      const rec = m.store.node(peer.nodeId);
      if (!rec) throw new GrpcError(status.NOT_FOUND, `node ${peer.nodeId} not found`);
      const cluster = m.store.cluster();
      if (!cluster) throw new GrpcError(status.UNAVAILABLE, "the cluster is not initialised yet");
      const subject = { nodeId: peer.nodeId, role: rec.role, clusterId: m.clusterId };
      return { certificatePem: await signFor(cluster, call.request.csrPem, subject), role: rec.role };
    }),

    recoverNodeCertificate: unaryHandler<RecoverNodeCertificateRequest, RecoverNodeCertificateResponse>(
      async (call) => {
        await m.readBarrier();
        const cluster = m.store.cluster();
        if (!cluster) throw new GrpcError(status.UNAVAILABLE, "the cluster is not initialised yet");
        const out = await recoverCertificate(
          {
            cluster,
            clusterId: m.clusterId,
            node: (id) => m.store.node(id),
            isRemoved: (id) => m.store.isRemoved(id),
          },
          call.request,
        );
        m.log.info({ role: out.role }, "issued a certificate under the new root CA to a node that missed the rotation");
        return out;
      },
    ),
  };
}

/** The role a join token gives (the join limiter counts each try); a wrong or rotated token is refused. */
function tokenRole(limiter: JoinLimiter, cluster: View<ClusterRecord>, token: string, from: string): NodeRole {
  let role: NodeRole | undefined;
  try {
    parseJoinToken(token);
    if (tokensEqual(token, cluster.secrets.managerToken)) role = "manager";
    else if (tokensEqual(token, cluster.secrets.workerToken)) role = "worker";
  } catch {
    role = undefined;
  }
  if (!role) {
    limiter.failed(from, token.startsWith("SWMTKN-") ? "wrong or rotated token" : "not a join token");
    throw new GrpcError(status.INVALID_ARGUMENT, INVALID_TOKEN_MESSAGE);
  }
  limiter.succeeded(from);
  return role;
}

/** A node certificate for a CSR, signed by the swarm's signing CA, with the chain after it. */
async function signFor(
  cluster: View<ClusterRecord>,
  csrPem: string,
  subject: { nodeId: string; role: NodeRole; clusterId: string },
): Promise<string> {
  const { ca, chainPem } = await signingCA(cluster);
  const leafPem = await signNodeCSR(ca, csrPem, { ...subject, days: nodeCertDays(cluster) }).catch((e: unknown) => {
    throw new GrpcError(
      status.INVALID_ARGUMENT,
      `invalid certificate request: ${e instanceof Error ? e.message : String(e)}`,
    );
  });
  return leafPem + chainPem;
}

export function newNodeObject(
  id: string,
  role: NodeRole,
  availability: NodeAvailability,
  hostname: string,
  addr: string,
): Node {
  const now = new Date().toISOString();
  return {
    ID: id,
    Version: { Index: 0 },
    CreatedAt: now,
    UpdatedAt: now,
    Spec: { Labels: {}, Role: role, Availability: availability },
    Description: {
      Hostname: hostname,
      Platform: { Architecture: "", OS: "" },
      Resources: { NanoCPUs: 0, MemoryBytes: 0 },
      Engine: { EngineVersion: "", Plugins: [] },
    },
    Status: { State: "unknown", Addr: addr },
  };
}
