// The cluster protocol's services on a manager's listener (:2377) and who may call each method: Raft
// (current members only, checked by the Raft server itself), the CA, Raft membership and the dispatcher,
// each method behind the ACL (a role from the store now, and the request's schema).

import type { Server, UntypedServiceImplementation } from "@grpc/grpc-js";
import type { NodeRole } from "../api/objects.js";
import { CAService, RaftMembershipService } from "../gen/cluster.js";
import { RaftServiceDefinition, raftServiceImplementation } from "../raft/transport.js";
import { type AclContext, type Allowed, type Rule, withAcl } from "./acl.js";
import { DispatcherServiceEncoded } from "./push-parts.js";
import { type RpcName, requestSchemas } from "./wire.js";

export interface ClusterServices {
  acl: AclContext;
  raft: Parameters<typeof raftServiceImplementation>[0];
  ca: UntypedServiceImplementation;
  membership: UntypedServiceImplementation;
  dispatcher: UntypedServiceImplementation;
}

const rule = (allowed: Allowed, name: RpcName): Rule => ({ allowed, request: requestSchemas[name] });
const NODES: NodeRole[] = ["worker", "manager"];

export function addClusterServices(server: Server, s: ClusterServices): void {
  server.addService(RaftServiceDefinition, raftServiceImplementation(s.raft));
  const ca = {
    getRootCaCertificate: rule("anyone", "getRootCaCertificate"),
    issueNodeCertificate: rule("anyone", "issueNodeCertificate"),
    renewNodeCertificate: rule(NODES, "renewNodeCertificate"),
    // Proof of identity is the retired root's certificate in the request (ca-rotation.ts).
    recoverNodeCertificate: rule("anyone", "recoverNodeCertificate"),
  };
  server.addService(CAService, withAcl(s.ca, ca, s.acl));
  const membership = { join: rule(["manager"], "join"), leave: rule(["manager"], "leave") };
  server.addService(RaftMembershipService, withAcl(s.membership, membership, s.acl));
  const dispatcher = {
    session: rule(NODES, "session"),
    heartbeat: rule(NODES, "heartbeat"),
    heartbeats: { ...rule(NODES, "heartbeat"), stream: true },
    attach: rule(NODES, "attach"),
    detach: rule(NODES, "detach"),
    rename: rule(NODES, "rename"),
  };
  server.addService(DispatcherServiceEncoded, withAcl(s.dispatcher, dispatcher, s.acl));
}
