// The role manager (leader only): makes each node's actual role follow its desired role (Spec.Role).
// Promotion: the node's role becomes manager, its agent renews its certificate as a manager and joins
// the Raft group. Demotion: the node leaves the Raft group first (the leader hands over leadership if it
// is the one demoted), then its role becomes worker and its agent renews as a worker. Any Raft member
// whose node is not a manager in the store is removed.

import type { Logger } from "pino";
import type { NodeId } from "../raft/types.js";
import type { Command, Store } from "../store/store.js";

/** What the role manager needs of its manager (SwarmKit's newRoleManager(store, raft)). */
export interface RoleCluster {
  readonly store: Store;
  readonly log: Logger;
  readonly raftId: NodeId;
  readonly isLeader: boolean;
  write(cmd: Command): Promise<number>;
  removeMember(raftId: NodeId): Promise<void>;
  /** Hand leadership to a reachable, caught-up voter; false if there is none. */
  transferLeadershipAway(): boolean;
}

export class RoleManager {
  /**
   * Raft membership follows the store's roles: a member whose node is gone or is a worker (a crash between
   * the two steps of a demotion, or a join the store never agreed to) is removed from Raft.
   */
  private async removeStrayMembers(): Promise<void> {
    for (const member of this.m.store.members()) {
      const role = this.m.store.roleOf(member.nodeId);
      if (role === "manager") continue;
      if (member.raftId === this.m.raftId) {
        this.m.transferLeadershipAway();
        return;
      }
      this.m.log.warn(
        { raftId: member.raftId.toString(16), node: member.nodeId, role: role ?? "none" },
        "removing a raft member whose node is not a manager",
      );
      await this.m.removeMember(member.raftId);
      return;
    }
  }

  private timer: NodeJS.Timeout | undefined;
  private busy = false;

  constructor(private readonly m: RoleCluster) {}

  start(): void {
    if (this.timer) return;
    this.timer = setInterval(() => void this.reconcile(), 200);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  private async reconcile(): Promise<void> {
    if (this.busy || !this.m.isLeader) return;
    this.busy = true;
    try {
      // Frozen views: no copy of every node every 200 ms.
      for (const rec of this.m.store.nodeViews()) {
        const id = rec.node.ID;
        const desired = rec.node.Spec.Role;
        if (desired === "manager" && rec.role === "worker") {
          this.m.log.info({ node: id }, "promoting node to manager");
          await this.m.write({ op: "node.role", id, role: "manager" });
          return;
        }
        if (desired === "worker" && rec.role === "manager") {
          const member = this.m.store.memberByNode(id);
          if (member) {
            if (member.raftId === this.m.raftId) {
              // The leader is being demoted: hand over; the next leader finishes the job.
              this.m.transferLeadershipAway();
              return;
            }
            this.m.log.info({ node: id }, "demoting manager: removing it from the raft group");
            await this.m.removeMember(member.raftId);
            return;
          }
          this.m.log.info({ node: id }, "demoting node to worker");
          await this.m.write({ op: "node.role", id, role: "worker" });
          return;
        }
      }
      await this.removeStrayMembers();
    } catch (e) {
      this.m.log.warn({ err: e }, "role reconciliation failed; will retry");
    } finally {
      this.busy = false;
    }
  }
}
