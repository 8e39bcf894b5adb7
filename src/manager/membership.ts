// Raft membership over the cluster protocol: a manager joining asks the leader to add it as a learner
// (the leader promotes it to voter once it has caught up); a manager leaving asks to be removed.

import { randomInt } from "node:crypto";
import type { ServerUnaryCall, sendUnaryData, UntypedServiceImplementation } from "@grpc/grpc-js";
import { status } from "@grpc/grpc-js";
import type { Logger } from "pino";
import type { z } from "zod";
import { RaftMemberSchema } from "../api/objects.js";
import { describeIssues } from "../api/schema.js";
import type { JoinRequest, JoinResponse, LeaveRequest, LeaveResponse } from "../gen/cluster.js";
import { type ConfChange, ConfChangeType, type NodeId } from "../raft/types.js";
import type { Command, Store } from "../store/store.js";
import { callerOf } from "./acl.js";
import { asGrpc, GrpcError, notLeader } from "./grpc-util.js";

/** What the membership service needs of its manager: the store and Raft's membership changes. */
export interface MembershipCluster {
  readonly store: Store;
  readonly log: Logger;
  readonly raftId: NodeId;
  readonly clusterId: string;
  readonly isLeader: boolean;
  leaderAddr(): string | undefined;
  addMember(nodeId: string, addr: string): Promise<NodeId>;
  removeMember(raftId: NodeId): Promise<void>;
}

/**
 * A new Raft id: random in [1, 2^47) (ids travel as JSON numbers, well inside 2^53), drawn again while
 * `taken` says it is in use.
 */
/** The message a joiner's membership request carries in a ConfChange. */
const MemberContextSchema = RaftMemberSchema.pick({ nodeId: true, addr: true });
type MemberContext = z.infer<typeof MemberContextSchema>;

export function encodeMemberContext(c: MemberContext): Uint8Array {
  return new TextEncoder().encode(JSON.stringify(c));
}

/**
 * The store command a committed membership change implies (the members table follows Raft's own
 * configuration): member.add for a learner added with a well-formed context, member.remove for a removal.
 * A context that is not one is reported through `malformed` and adds no member.
 */
export function memberCommand(cc: ConfChange, malformed: (why: string) => void): Command | undefined {
  if (cc.type === ConfChangeType.RemoveNode) return { op: "member.remove", raftId: cc.nodeId };
  if (cc.type !== ConfChangeType.AddLearner) return undefined;
  let raw: unknown;
  try {
    raw = JSON.parse(new TextDecoder().decode(cc.context));
  } catch {
    malformed("the context is not JSON");
    return undefined;
  }
  const ctx = MemberContextSchema.safeParse(raw);
  if (!ctx.success) {
    malformed(describeIssues(ctx.error));
    return undefined;
  }
  return { op: "member.add", member: { raftId: cc.nodeId, nodeId: ctx.data.nodeId, addr: ctx.data.addr } };
}

export function newRaftId(taken: (id: NodeId) => boolean = () => false): NodeId {
  let id: NodeId;
  do {
    id = randomInt(1, 2 ** 47);
  } while (taken(id));
  return id;
}

export function membershipService(m: MembershipCluster): UntypedServiceImplementation {
  return {
    join: (call: ServerUnaryCall<JoinRequest, JoinResponse>, cb: sendUnaryData<JoinResponse>) => {
      void (async () => {
        if (!m.isLeader) throw notLeader(m.leaderAddr());
        const peer = callerOf(call);
        if (!peer) throw new GrpcError(status.PERMISSION_DENIED, "Permission denied");
        // Only a node the swarm wants as a manager joins Raft (its role and its desired role both manager).
        const rec = m.store.node(peer.nodeId);
        if (rec?.node.Spec.Role !== "manager") {
          throw new GrpcError(
            status.PERMISSION_DENIED,
            `Permission denied: node ${peer.nodeId} is not to be a manager`,
          );
        }
        const addr = call.request.addr;
        const raftId = await m.addMember(peer.nodeId, addr);
        m.log.info(
          { node: peer.nodeId, raftId: raftId.toString(16), addr },
          "manager joined the raft group as a learner",
        );
        const members = m.store.members().map((x) => ({ raftId: x.raftId, nodeId: x.nodeId, addr: x.addr }));
        return { raftId, members, clusterId: m.clusterId };
      })().then(
        (res) => cb(null, res),
        (e: unknown) => cb(asGrpc(e)),
      );
    },
    leave: (call: ServerUnaryCall<LeaveRequest, LeaveResponse>, cb: sendUnaryData<LeaveResponse>) => {
      void (async () => {
        if (!m.isLeader) throw notLeader(m.leaderAddr());
        const peer = callerOf(call);
        const target = call.request.nodeId || peer?.nodeId || "";
        // A manager may take only itself out of Raft; others leave through demotion or node rm.
        if (target !== peer?.nodeId) {
          throw new GrpcError(
            status.PERMISSION_DENIED,
            "Permission denied: a manager can only remove itself from the raft",
          );
        }
        const member = m.store.memberByNode(target);
        if (!member) return {};
        if (member.raftId === m.raftId) {
          throw new GrpcError(status.FAILED_PRECONDITION, "the leader cannot remove itself: transfer leadership first");
        }
        await m.removeMember(member.raftId);
        m.log.info({ node: target }, "manager left the raft group");
        return {};
      })().then(
        (res) => cb(null, res),
        (e: unknown) => cb(asGrpc(e)),
      );
    },
  };
}
