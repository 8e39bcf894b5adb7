// The CA service: the root certificate for anyone, a node certificate for a valid join token, and
// renewal for nodes that have one. Any manager can sign: the root CA key is in the replicated store.
// During a root rotation the managers sign with the new root's key and append the cross-signed
// intermediate (src/manager/ca-rotation.ts); a node left behind by one recovers with its old certificate.

import type { ServerUnaryCall, sendUnaryData, UntypedServiceImplementation } from "@grpc/grpc-js";
import { status } from "@grpc/grpc-js";
import { signNodeCSR } from "../ca/certs.js";
import { newNodeId } from "../ca/ids.js";
import { peerRole } from "../ca/tls.js";
import { parseJoinToken, tokensEqual } from "../ca/token.js";
import { ApiError } from "../engine/errors.js";
import type { Node, NodeAvailability, NodeRole } from "../engine/types.js";
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
import { nodeCertDays, recoverCertificate, signingCA } from "./ca-rotation.js";
import { peerIp } from "./dispatcher.js";
import { GrpcError } from "./grpc-util.js";
import type { Manager } from "./manager.js";

export const INVALID_TOKEN_MESSAGE = "A valid join token is necessary to join this cluster";

/** Run a handler, turning errors into gRPC statuses. */
function handle<Req, Res>(fn: (call: ServerUnaryCall<Req, Res>) => Promise<Res>) {
  return (call: ServerUnaryCall<Req, Res>, cb: sendUnaryData<Res>) => {
    fn(call).then(
      (res) => cb(null, res),
      (e: unknown) => cb(asGrpc(e)),
    );
  };
}

export function asGrpc(e: unknown): GrpcError {
  if (e instanceof GrpcError) return e;
  if (e instanceof ApiError) {
    const code =
      e.status === 404
        ? status.NOT_FOUND
        : e.status === 400
          ? status.INVALID_ARGUMENT
          : e.status === 403
            ? status.PERMISSION_DENIED
            : e.status === 409
              ? status.ALREADY_EXISTS
              : e.status === 503
                ? status.UNAVAILABLE
                : status.UNKNOWN;
    return new GrpcError(code, e.message);
  }
  return new GrpcError(status.INTERNAL, e instanceof Error ? e.message : String(e));
}

export function caService(m: Manager): UntypedServiceImplementation {
  return {
    getRootCaCertificate: (
      _call: ServerUnaryCall<GetRootCACertificateRequest, GetRootCACertificateResponse>,
      cb: sendUnaryData<GetRootCACertificateResponse>,
    ) => {
      // The swarm's root now (what the join tokens' digest is of), or this manager's own until it knows.
      cb(null, { certificatePem: m.store.cluster()?.secrets.rootCACertPem ?? m.tls.rootPem });
    },

    issueNodeCertificate: handle<IssueNodeCertificateRequest, IssueNodeCertificateResponse>(async (call) => {
      const req = call.request;
      // The tokens must be current: a rotated token is refused at once.
      await m.readBarrier();
      const cluster = m.store.cluster();
      if (!cluster) throw new GrpcError(status.UNAVAILABLE, "the cluster is not initialised yet");
      let role: NodeRole | undefined;
      try {
        parseJoinToken(req.token);
        if (tokensEqual(req.token, cluster.secrets.managerToken)) role = "manager";
        else if (tokensEqual(req.token, cluster.secrets.workerToken)) role = "worker";
      } catch {
        role = undefined;
      }
      if (!role) throw new GrpcError(status.INVALID_ARGUMENT, INVALID_TOKEN_MESSAGE);
      const availability = (req.availability || "active") as NodeAvailability;
      if (!["active", "pause", "drain"].includes(availability)) {
        throw new GrpcError(status.INVALID_ARGUMENT, `invalid availability "${req.availability}"`);
      }
      const nodeId = newNodeId();
      const { ca, chainPem } = await signingCA(cluster);
      const days = nodeCertDays(cluster);
      const leafPem = await signNodeCSR(ca, req.csrPem, { nodeId, role, clusterId: m.clusterId, days }).catch(
        (e: unknown) => {
          throw new GrpcError(
            status.INVALID_ARGUMENT,
            `invalid certificate request: ${e instanceof Error ? e.message : String(e)}`,
          );
        },
      );
      const certificatePem = leafPem + chainPem;
      const node: Node = newNodeObject(nodeId, role, availability, req.hostname, peerIp(call.getPeer()));
      await m.write({ op: "node.create", node, role });
      m.log.info({ node: nodeId, role, hostname: req.hostname }, "issued a certificate to a joining node");
      return { nodeId, certificatePem, role, clusterId: m.clusterId, dataPathPort: cluster.info.DataPathPort || 4789 };
    }),

    renewNodeCertificate: handle<RenewNodeCertificateRequest, RenewNodeCertificateResponse>(async (call) => {
      const peer = peerRole(call);
      if (!peer) throw new GrpcError(status.PERMISSION_DENIED, "Permission denied: renewal needs a node certificate");
      await m.readBarrier();
      const rec = m.store.node(peer.nodeId);
      if (!rec) throw new GrpcError(status.NOT_FOUND, `node ${peer.nodeId} not found`);
      const cluster = m.store.cluster();
      if (!cluster) throw new GrpcError(status.UNAVAILABLE, "the cluster is not initialised yet");
      const { ca, chainPem } = await signingCA(cluster);
      const leafPem = await signNodeCSR(ca, call.request.csrPem, {
        nodeId: peer.nodeId,
        role: rec.role,
        clusterId: m.clusterId,
        days: nodeCertDays(cluster),
      }).catch((e: unknown) => {
        throw new GrpcError(
          status.INVALID_ARGUMENT,
          `invalid certificate request: ${e instanceof Error ? e.message : String(e)}`,
        );
      });
      return { certificatePem: leafPem + chainPem, role: rec.role };
    }),

    recoverNodeCertificate: handle<RecoverNodeCertificateRequest, RecoverNodeCertificateResponse>(async (call) => {
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
    }),
  };
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
