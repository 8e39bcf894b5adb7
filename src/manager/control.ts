// The control API: what the Engine API's swarm, node and network calls do on a manager. Reads wait for a
// ReadIndex barrier, so they see every write that finished before; writes are store commands whose
// preconditions (object versions, unique names, the one ingress network) are checked when they are applied.

import { ApiError, badRequest, nodeNotFound } from "../api/errors.js";
import type { Node, NodeSpec, SwarmSpec } from "../api/objects.js";
import { NodeSpecSchema, SwarmSpecSchema } from "../api/objects.js";
import { parse } from "../api/schema.js";
import type { NetworkResource, NodeListFilters, Swarm, SwarmUpdateOptions } from "../api/views.js";
import { generateJoinToken } from "../ca/token.js";
import { formatUnlockKey, generateKek } from "../ca/unlockkey.js";
import type { NodeId } from "../raft/types.js";
import { redact } from "../store/keyring.js";
import type { Command, NetworkRecord, NetworkSpec, NodeRecord, Store, View } from "../store/store.js";
import { planRootRotation } from "./ca-rotation.js";
import { endpointRows, networkMatches, newNetworkId, presentNetwork, requireNetwork } from "./networks.js";

/** What the control API needs of its manager: the store, writes and reads, and the Raft group's view. */
export interface ControlCluster {
  readonly store: Store;
  readonly nodeId: string;
  write(cmd: Command): Promise<number>;
  readBarrier(): Promise<void>;
  leaderRaftId(): NodeId;
  reachable(raftId: NodeId): boolean;
  removalLosesQuorum(raftId: NodeId): boolean;
  removeMember(raftId: NodeId): Promise<void>;
}

export const QUORUM_LOSS_MESSAGE = "can't remove member from the raft: this would result in a loss of quorum";

export class Control {
  constructor(private readonly m: ControlCluster) {}

  /** A node as the Engine API shows it: with ManagerStatus from live Raft state. */
  private present(rec: NodeRecord): Node {
    const node = rec.node;
    delete node.ManagerStatus;
    if (rec.role === "manager") {
      const member = this.m.store.memberByNode(node.ID);
      const leader = member !== undefined && member.raftId === this.m.leaderRaftId();
      node.ManagerStatus = {
        ...(leader ? { Leader: true } : {}),
        Reachability: member && this.m.reachable(member.raftId) ? "reachable" : "unreachable",
        Addr: member?.addr ?? "",
      };
    }
    return node;
  }

  async swarmInspect(): Promise<Swarm> {
    await this.m.readBarrier();
    const c = this.m.store.cluster();
    if (!c) throw new ApiError(503, "the cluster is not initialised yet");
    return { ...c.info, JoinTokens: { Worker: c.secrets.workerToken, Manager: c.secrets.managerToken } };
  }

  async swarmUpdate(spec: SwarmSpec, opts: SwarmUpdateOptions): Promise<void> {
    await this.m.readBarrier();
    const c = this.m.store.cluster();
    if (!c) throw new ApiError(503, "the cluster is not initialised yet");
    // The Engine API decoded it; what is proposed is checked against the stored object's schema too.
    spec = parse(SwarmSpecSchema, spec, "swarm spec");
    // A root CA rotation is planned (new root made and cross-signed) before anything is written; the
    // signing certificate and key never stay in the spec.
    const caChange = await planRootRotation(c, spec);
    if (spec.CAConfig) {
      delete spec.CAConfig.SigningCACert;
      delete spec.CAConfig.SigningCAKey;
    }
    await this.m.write({
      op: "cluster.update",
      version: opts.version,
      spec,
      ...(opts.rotateWorkerToken ? { workerToken: generateJoinToken(c.secrets.rootCACertPem) } : {}),
      ...(opts.rotateManagerToken ? { managerToken: generateJoinToken(c.secrets.rootCACertPem) } : {}),
      ...nextUnlockKey(c.secrets.unlockKey, spec, opts.rotateManagerUnlockKey),
      ...caChange,
    });
  }

  /** The unlock key while autolock is on, "" while it is off (GET /swarm/unlockkey). */
  async unlockKey(): Promise<string> {
    await this.m.readBarrier();
    const c = this.m.store.cluster();
    if (!c) throw new ApiError(503, "the cluster is not initialised yet");
    return c.info.Spec.EncryptionConfig?.AutoLockManagers ? (c.secrets.unlockKey ?? "") : "";
  }

  /**
   * GET /nodes' body: the bytes of its JSON text. A worker's text is made once per version of its node (kept
   * with the store's frozen view, dropped with it when the node changes), so a list of 5,000 nodes is not
   * serialised per call; a manager's is made per call (its ManagerStatus is live Raft state). The bytes of
   * the whole unfiltered list are kept too, and served again while they would come out the same: the same
   * list of views (the store makes a new one when any node changes) and the same managers' texts.
   */
  async nodeList(filters: NodeListFilters): Promise<Buffer> {
    await this.m.readBarrier();
    const views = this.m.store.nodeViews();
    const filtered = Object.values(filters).some((v) => v !== undefined && v.length > 0);
    if (filtered) return Buffer.from(this.listText(views, (n) => matches(n, filters)));
    const managers = views.filter((r) => r.role === "manager").map((r) => this.nodeText(r));
    const kept = this.listBytes;
    if (kept?.views === views && sameTexts(kept.managers, managers)) return kept.bytes;
    const bytes = Buffer.from(this.listText(views, undefined, managers));
    this.listBytes = { views, managers, bytes };
    return bytes;
  }

  /** The JSON text of the nodes (those `keep` keeps); `managers`: their texts already made, in list order. */
  private listText(views: readonly View<NodeRecord>[], keep?: (n: Node) => boolean, managers?: string[]): string {
    const parts: string[] = [];
    let m = 0;
    for (const rec of views) {
      const text =
        rec.role === "manager" && managers ? managers[m++]! : keep ? this.nodeText(rec, keep) : this.nodeText(rec);
      if (text !== undefined) parts.push(text);
    }
    return `[${parts.join(",")}]`;
  }

  /** A node's JSON text, or undefined when `keep` refuses it (a worker's text is kept per view). */
  private nodeText(rec: View<NodeRecord>): string;
  private nodeText(rec: View<NodeRecord>, keep: (n: Node) => boolean): string | undefined;
  private nodeText(rec: View<NodeRecord>, keep?: (n: Node) => boolean): string | undefined {
    const worker = rec.role !== "manager";
    let text = worker ? this.workerText.get(rec) : undefined;
    if (text !== undefined && !keep) return text;
    // A shallow copy of the frozen view: it is only serialised, never changed.
    const { ManagerStatus: _, ...node } = rec.node;
    const n = this.present({ node: node as Node, role: rec.role });
    if (keep && !keep(n)) return undefined;
    if (text === undefined) {
      text = JSON.stringify(n);
      if (worker) this.workerText.set(rec, text);
    }
    return text;
  }

  /** A worker node's JSON text, per store view (a changed node has a new view). */
  private readonly workerText = new WeakMap<View<NodeRecord>, string>();

  /** The last unfiltered GET /nodes body, and what it was made from. */
  private listBytes: { views: readonly View<NodeRecord>[]; managers: string[]; bytes: Buffer } | undefined;

  /** ref: a full id, a unique id prefix, a hostname, or "self". */
  async resolve(ref: string): Promise<NodeRecord> {
    await this.m.readBarrier();
    const id = ref === "self" ? this.m.nodeId : ref;
    // Over the store's shared views; only the node found is copied (5,000 nodes are not, per inspect).
    const own = (r: { node: { ID: string } }) => this.m.store.node(r.node.ID)!;
    const exact = this.m.store.nodeView(id);
    if (exact) return own(exact);
    const nodes = this.m.store.nodeViews();
    const byName = nodes.filter((r) => r.node.Description.Hostname === ref || r.node.Spec.Name === ref);
    if (byName.length === 1) return own(byName[0]!);
    if (byName.length > 1) throw badRequest(`node ${ref} is ambiguous (${byName.length} matches found)`);
    const byPrefix = nodes.filter((r) => r.node.ID.startsWith(ref));
    if (byPrefix.length === 1) return own(byPrefix[0]!);
    if (byPrefix.length > 1) throw badRequest(`node ${ref} is ambiguous (${byPrefix.length} matches found)`);
    throw nodeNotFound(ref);
  }

  async nodeInspect(ref: string): Promise<Node> {
    return this.present(await this.resolve(ref));
  }

  async nodeUpdate(ref: string, version: number, spec: NodeSpec): Promise<void> {
    const rec = await this.resolve(ref);
    spec = parse(NodeSpecSchema, spec, "node spec");
    if (rec.node.Spec.Role === "manager" && spec.Role === "worker") {
      const managers = this.m.store.nodeViews().filter((r) => r.node.Spec.Role === "manager");
      if (managers.length <= 1) throw badRequest("attempting to demote the last manager of the swarm");
      const member = this.m.store.memberByNode(rec.node.ID);
      if (member && this.m.removalLosesQuorum(member.raftId)) throw badRequest(QUORUM_LOSS_MESSAGE);
    }
    await this.m.write({ op: "node.update", id: rec.node.ID, version, spec });
  }

  async nodeRemove(ref: string, force: boolean): Promise<void> {
    const rec = await this.resolve(ref);
    const id = rec.node.ID;
    if (id === this.m.nodeId) {
      throw badRequest(
        `node ${id} is a cluster manager and is a member of the raft cluster. It must be demoted to worker before removal`,
      );
    }
    const member = this.m.store.memberByNode(id);
    if (rec.role === "manager" || member) {
      if (!force) {
        throw badRequest(
          `node ${id} is a cluster manager and is a member of the raft cluster. It must be demoted to worker before removal`,
        );
      }
      if (member) {
        if (this.m.removalLosesQuorum(member.raftId)) throw badRequest(QUORUM_LOSS_MESSAGE);
        await this.m.removeMember(member.raftId);
      }
    } else if (!force && rec.node.Status.State !== "down") {
      throw badRequest(`node ${id} is not down and can't be removed`);
    }
    await this.m.write({ op: "node.remove", id });
  }

  // ---- networks

  /** A network as the Engine API shows it from this manager: `Containers` are this node's. */
  private presentNetwork(net: NetworkRecord): NetworkResource {
    return presentNetwork(net, endpointRows(this.m.store, net.id), this.m.nodeId);
  }

  /** The store's apply allocates the network, and refuses a taken name or a second ingress network. */
  async networkCreate(spec: NetworkSpec): Promise<{ Id: string; Warning: string }> {
    const id = newNetworkId();
    await this.m.write({ op: "network.create", id, spec });
    return { Id: id, Warning: "" };
  }

  async networkList(filters: Record<string, string[]>): Promise<NetworkResource[]> {
    await this.m.readBarrier();
    return this.m.store
      .networks()
      .map((n) => this.presentNetwork(n))
      .filter((n) => networkMatches(n, filters));
  }

  /** ref: a full id, a name, or a unique id prefix. */
  async networkInspect(ref: string): Promise<NetworkResource> {
    await this.m.readBarrier();
    return this.presentNetwork(requireNetwork(this.m.store, ref));
  }

  /** The store's apply refuses a network that still has endpoints. */
  async networkRemove(ref: string): Promise<void> {
    await this.m.readBarrier();
    const net = requireNetwork(this.m.store, ref);
    if (net.spec.ingress) throw new ApiError(403, `ingress network cannot be removed by shoal while the swarm uses it`);
    await this.m.write({ op: "network.remove", id: net.id });
  }

  /** The cluster's overlay keyring as `network inspect` may show it: tags and times, never keys. */
  networkKeyring(): ReturnType<typeof redact> | undefined {
    const ring = this.m.store.keyring();
    return ring ? redact(ring) : undefined;
  }
}

/**
 * A new unlock key when autolock is being turned on, or rotated (swarm unlock-key --rotate) while on; none
 * otherwise (the store keeps the key while autolock stays on, and drops it when it is turned off).
 */
function nextUnlockKey(current: string | undefined, spec: SwarmSpec, rotate: boolean): { unlockKey?: string } {
  if (!spec.EncryptionConfig?.AutoLockManagers) return {};
  if (current !== undefined && !rotate) return {};
  return { unlockKey: formatUnlockKey(generateKek()) };
}

function sameTexts(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

function matches(n: Node, f: NodeListFilters): boolean {
  const any = (vals: string[] | undefined, pred: (v: string) => boolean) =>
    !vals || vals.length === 0 || vals.some(pred);
  return (
    any(f.id, (v) => n.ID.startsWith(v)) &&
    any(f.name, (v) => n.Description.Hostname === v || n.Spec.Name === v) &&
    any(f.role, (v) => (n.ManagerStatus ? "manager" : "worker") === v || n.Spec.Role === v) &&
    any(f.membership, (v) => v === "accepted") &&
    any(f["node.label"], (v) => labelMatch(n.Spec.Labels, v)) &&
    any(f.label, (v) => labelMatch(n.Description.Engine.Labels ?? {}, v))
  );
}

function labelMatch(labels: Record<string, string>, f: string): boolean {
  const i = f.indexOf("=");
  if (i < 0) return f in labels;
  return labels[f.slice(0, i)] === f.slice(i + 1);
}
