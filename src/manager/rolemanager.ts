// The role manager (leader only): makes each node's actual role follow its desired role (Spec.Role).
// Promotion: the node's role becomes manager, its agent renews its certificate as a manager and joins
// the Raft group. Demotion: the node leaves the Raft group first (the leader hands over leadership if it
// is the one demoted), then its role becomes worker and its agent renews as a worker. Any Raft member
// whose node is not a manager in the store is removed.

import type { Logger } from "pino";
import type { NodeId } from "../raft/types.js";
import type { Command, NodeRecord, Store, StoreEvent, View } from "../store/store.js";

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
  private async removeStrayMembers(): Promise<boolean> {
    for (const member of this.m.store.members()) {
      const role = this.m.store.roleOf(member.nodeId);
      if (role === "manager") continue;
      if (member.raftId === this.m.raftId) {
        this.m.transferLeadershipAway();
        return true;
      }
      this.m.log.warn(
        { raftId: member.raftId.toString(16), node: member.nodeId, role: role ?? "none" },
        "removing a raft member whose node is not a manager",
      );
      await this.m.removeMember(member.raftId);
      return true;
    }
    return false;
  }

  private timer: NodeJS.Timeout | undefined;
  private busy = false;
  /**
   * What changed since the last pass: the nodes to look at again, or everything (at start, after a member
   * change, a restore or a failed pass). Nodes that did not change are not walked: at 5,000 nodes a walk of
   * every node each 200 ms was 3 % of the leader's time while nodes joined.
   */
  private everything = true;
  private changed = new Set<string>();
  private readonly onEvent = (e: StoreEvent): void => {
    if (e.kind === "node") this.changed.add(e.node.node.ID);
    else if (e.kind === "member" || e.kind === "restore") this.everything = true;
  };

  constructor(private readonly m: RoleCluster) {}

  start(): void {
    if (this.timer) return;
    this.everything = true;
    this.m.store.events.on("event", this.onEvent);
    this.timer = setInterval(() => void this.reconcile(), 200);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    this.m.store.events.off("event", this.onEvent);
  }

  private async reconcile(): Promise<void> {
    if (this.busy || !this.m.isLeader || (!this.everything && this.changed.size === 0)) return;
    this.busy = true;
    // Taken before the pass: changes meanwhile are for the next one. A node acted on is looked at again
    // (its write or the member change brings it back anyway; a hand-over that found no voter does not);
    // after a failure, everything is.
    const everything = this.everything;
    const changed = this.changed;
    this.everything = false;
    this.changed = new Set();
    try {
      const nodes = everything
        ? this.m.store.nodeViews()
        : [...changed].flatMap((id) => this.m.store.nodeView(id) ?? []);
      const again = await this.pass(nodes);
      if (again === "everything") this.everything = true;
      else if (again !== undefined) this.changed.add(again);
    } catch (e) {
      this.everything = true;
      this.m.log.warn({ err: e }, "role reconciliation failed; will retry");
    } finally {
      this.busy = false;
    }
  }

  /** One step towards the desired roles: what to look at again for it (nothing if there was nothing to do). */
  private async pass(nodes: readonly View<NodeRecord>[]): Promise<string | "everything" | undefined> {
    // Frozen views: no copies.
    for (const rec of nodes) {
      const id = rec.node.ID;
      const desired = rec.node.Spec.Role;
      if (desired === "manager" && rec.role === "worker") {
        this.m.log.info({ node: id }, "promoting node to manager");
        await this.m.write({ op: "node.role", id, role: "manager" });
        return id;
      }
      if (desired === "worker" && rec.role === "manager") {
        const member = this.m.store.memberByNode(id);
        if (member) {
          if (member.raftId === this.m.raftId) {
            // The leader is being demoted: hand over; the next leader finishes the job.
            this.m.transferLeadershipAway();
            return id;
          }
          this.m.log.info({ node: id }, "demoting manager: removing it from the raft group");
          await this.m.removeMember(member.raftId);
          return id;
        }
        this.m.log.info({ node: id }, "demoting node to worker");
        await this.m.write({ op: "node.role", id, role: "worker" });
        return id;
      }
    }
    return (await this.removeStrayMembers()) ? "everything" : undefined;
  }
}
