// A small, fully deterministic in-memory network for unit tests of the Raft core, in the style of etcd's
// `network` test helper. Nothing happens unless the test asks for it: messages wait in a queue until the
// test delivers them (one "round" at a time, or until the network is quiet), links can be cut or filtered,
// nodes are ticked explicitly, and every node's Ready is handled synchronously the way a real driver does
// it: persist into MemoryStorage, send, apply (conf changes through RawNode.applyConfChange), advance.

import { type Config, Raft } from "../../src/raft/raft.js";
import { SeededRand } from "../../src/raft/rand.js";
import { bootstrapSnapshot, RawNode } from "../../src/raft/rawnode.js";
import { MemoryStorage } from "../../src/raft/storage.js";
import {
  type ConfChange,
  ConfChangeType,
  type ConfState,
  EMPTY,
  type Entry,
  EntryType,
  type Message,
  MessageType,
  type NodeId,
  type ReadState,
  type Snapshot,
  StateType,
} from "../../src/raft/types.js";

export type NodeConfig = Omit<Partial<Config>, "id" | "storage" | "rand">;

export const enc = new TextEncoder();
export const dec = new TextDecoder();

export class TestNode {
  rn: RawNode;
  /** Every committed entry this node applied, in order (entries covered by a snapshot are not listed). */
  applied: Entry[] = [];
  appliedIndex: number;
  readStates: ReadState[] = [];
  /** Snapshots handed to this node by Ready (i.e. received from a leader). */
  snapshots: Snapshot[] = [];
  /** Crashed: it neither receives nor sends until restart(). */
  down = false;

  constructor(
    readonly id: NodeId,
    readonly storage: MemoryStorage,
    readonly cfg: NodeConfig,
    readonly rand: SeededRand,
  ) {
    this.appliedIndex = storage.snapshot().metadata.index;
    this.rn = this.build();
  }

  private build(): RawNode {
    return new RawNode({
      ...this.cfg,
      id: this.id,
      storage: this.storage,
      rand: this.rand,
      applied: this.appliedIndex,
    });
  }

  /** Crash and come back from what was persisted (unpersisted state is lost; nothing was, here). */
  restart(): void {
    this.down = false;
    this.rn = this.build();
  }

  get raft(): Raft {
    return this.rn.raft;
  }
  get state(): StateType {
    return this.rn.raft.state;
  }
  get term(): number {
    return this.rn.raft.term;
  }
  get lead(): NodeId {
    return this.rn.raft.lead;
  }
  get commit(): number {
    return this.rn.raft.raftLog.committed;
  }
  get lastIndex(): number {
    return this.rn.raft.raftLog.lastIndex();
  }
  confState(): ConfState {
    return this.rn.raft.confState();
  }
  /** Term of every entry from the first index the log still holds. */
  logTerms(): Array<[number, number]> {
    const log = this.rn.raft.raftLog;
    const out: Array<[number, number]> = [];
    for (let i = log.firstIndex(); i <= log.lastIndex(); i++) out.push([i, log.term(i)]);
    return out;
  }
  termAt(i: number): number {
    return this.rn.raft.raftLog.zeroTermOnOutOfBounds(i);
  }
  /** The data of the Normal, non-empty entries applied so far, as strings. */
  appliedData(): string[] {
    return this.applied.filter((e) => e.type === EntryType.Normal && e.data.length > 0).map((e) => dec.decode(e.data));
  }
}

export interface NetworkOptions {
  /** The initial voters; each starts from bootstrapSnapshot(voters). */
  voters: NodeId[];
  seed?: number;
  /** Config for every node (electionTick defaults to 10, heartbeatTick to 1). */
  config?: NodeConfig;
  /** Per-node overrides. */
  perNode?: Record<number, NodeConfig>;
}

export class Network {
  readonly nodes = new Map<NodeId, TestNode>();
  /** Messages sent and not yet delivered, in send order. */
  queue: Message[] = [];
  /** Every message any node sent, in order. */
  readonly sent: Message[] = [];
  readonly delivered: Message[] = [];
  readonly dropped: Message[] = [];
  /** Directed links that are cut: `${from}>${to}`. */
  private readonly cut = new Set<string>();
  /** Return false to drop a message at delivery time. */
  filter: ((m: Message) => boolean) | undefined;
  private readonly seed: number;
  private readonly config: NodeConfig;

  constructor(opts: NetworkOptions) {
    this.seed = opts.seed ?? 1;
    this.config = { electionTick: 10, heartbeatTick: 1, ...opts.config };
    const boot = bootstrapSnapshot(opts.voters);
    for (const id of opts.voters) {
      const st = new MemoryStorage();
      st.applySnapshot(boot.snapshot);
      st.setHardState(boot.hardState);
      this.addNode(id, st, opts.perNode?.[id]);
    }
  }

  /** Add a node with the given storage (a brand-new node: an empty MemoryStorage). */
  addNode(id: NodeId, storage: MemoryStorage = new MemoryStorage(), cfg?: NodeConfig): TestNode {
    const n = new TestNode(id, storage, { ...this.config, ...cfg }, new SeededRand(this.seed * 1000 + id));
    this.nodes.set(id, n);
    return n;
  }

  /** A storage holding the cluster's bootstrap snapshot (a joiner that was given it out of band). */
  static bootstrappedStorage(voters: NodeId[]): MemoryStorage {
    const boot = bootstrapSnapshot(voters);
    const st = new MemoryStorage();
    st.applySnapshot(boot.snapshot);
    st.setHardState(boot.hardState);
    return st;
  }

  node(id: NodeId): TestNode {
    const n = this.nodes.get(id);
    if (!n) throw new Error(`no node ${id}`);
    return n;
  }

  ids(): NodeId[] {
    return [...this.nodes.keys()];
  }

  /** Handle every pending Ready of a node: persist, send, apply, advance. */
  process(id: NodeId): void {
    const n = this.node(id);
    if (n.down) return;
    while (n.rn.hasReady()) {
      const rd = n.rn.ready();
      if (rd.snapshot) {
        n.storage.applySnapshot(rd.snapshot);
        n.snapshots.push(rd.snapshot);
      }
      if (rd.entries.length > 0) n.storage.append(rd.entries);
      if (rd.hardState) n.storage.setHardState(rd.hardState);
      for (const m of rd.messages) {
        const c = copyMessage(m);
        this.sent.push(c);
        this.queue.push(c);
      }
      if (rd.snapshot) n.appliedIndex = rd.snapshot.metadata.index;
      for (const e of rd.committedEntries) {
        if (e.index !== n.appliedIndex + 1) {
          throw new Error(`node ${id} applied ${e.index} after ${n.appliedIndex}: out of order`);
        }
        n.appliedIndex = e.index;
        n.applied.push(e);
        if (e.type === EntryType.ConfChange) n.rn.applyConfChange(Raft.decodeConfChange(e));
      }
      n.readStates.push(...rd.readStates);
      n.rn.advance(rd);
    }
  }

  processAll(): void {
    for (const id of this.ids()) this.process(id);
  }

  private shouldDrop(m: Message): boolean {
    const to = this.nodes.get(m.to);
    if (!to || to.down) return true;
    if (this.nodes.get(m.from)?.down) return true;
    if (this.cut.has(`${m.from}>${m.to}`)) return true;
    return this.filter !== undefined && !this.filter(m);
  }

  /** Deliver one message (or drop it, per cuts and filter) and handle the receiver's Ready. */
  deliver(m: Message): boolean {
    if (this.shouldDrop(m)) {
      this.dropped.push(m);
      return false;
    }
    this.delivered.push(m);
    const n = this.node(m.to);
    n.rn.step(m);
    this.process(m.to);
    return true;
  }

  /** Deliver what is queued now; what that provokes waits for the next round. Returns messages handled. */
  deliverRound(): number {
    const batch = this.queue;
    this.queue = [];
    for (const m of batch) this.deliver(m);
    return batch.length;
  }

  /** Deliver until no message is in flight. Returns the number of rounds it took. */
  stabilize(maxRounds = 200): number {
    this.processAll();
    let rounds = 0;
    while (this.queue.length > 0) {
      if (++rounds > maxRounds) throw new Error(`network did not quiesce within ${maxRounds} rounds`);
      this.deliverRound();
    }
    return rounds;
  }

  /** Tick the given nodes (all by default) `n` times, delivering everything after every tick. */
  tick(n = 1, ids: NodeId[] = this.ids(), deliver = true): void {
    for (let i = 0; i < n; i++) {
      for (const id of ids) {
        const node = this.node(id);
        if (node.down) continue;
        node.rn.tick();
        this.process(id);
      }
      if (deliver) this.stabilize();
    }
  }

  /** Tick until `pred` holds (checked after each tick round); returns the ticks used, or -1. */
  tickUntil(pred: () => boolean, max: number, ids: NodeId[] = this.ids()): number {
    for (let i = 1; i <= max; i++) {
      this.tick(1, ids);
      if (pred()) return i;
    }
    return -1;
  }

  cutLink(a: NodeId, b: NodeId): void {
    this.cut.add(`${a}>${b}`);
    this.cut.add(`${b}>${a}`);
  }

  /** Cut every link between `id` and the other nodes. */
  isolate(id: NodeId): void {
    for (const o of this.ids()) if (o !== id) this.cutLink(id, o);
  }

  /**
   * `id` dies: down, cut off, and each of `witnesses` learns it from its transport (the connection to it
   * broke: reportUnreachable), then handles that.
   */
  crash(id: NodeId, witnesses: NodeId[]): void {
    this.node(id).down = true;
    this.isolate(id);
    for (const w of witnesses) {
      this.node(w).rn.reportUnreachable(id);
      this.process(w);
    }
  }

  /** Split the cluster into groups that cannot talk to each other. */
  partition(...groups: NodeId[][]): void {
    for (const g of groups)
      for (const h of groups) if (g !== h) for (const a of g) for (const b of h) this.cutLink(a, b);
  }

  heal(): void {
    this.cut.clear();
    this.filter = undefined;
  }

  /** Nodes that believe they are leader (and are up). */
  leaders(): TestNode[] {
    return [...this.nodes.values()].filter((n) => !n.down && n.state === StateType.Leader);
  }

  /** The one leader; throws unless exactly one node is leader. */
  leader(): TestNode {
    const ls = this.leaders();
    if (ls.length !== 1) throw new Error(`expected exactly one leader, found [${ls.map((l) => l.id)}]`);
    return ls[0]!;
  }

  /** Campaign on `id` and deliver until quiet; returns it. */
  elect(id: NodeId): TestNode {
    const n = this.node(id);
    n.rn.campaign();
    this.stabilize();
    return n;
  }

  propose(id: NodeId, data: string): void {
    this.node(id).rn.propose(enc.encode(data));
    this.process(id);
  }

  proposeConfChange(id: NodeId, type: ConfChangeType, nodeId: NodeId): void {
    const cc: ConfChange = { type, nodeId, context: EMPTY };
    this.node(id).rn.proposeConfChange(cc);
    this.process(id);
  }

  /** Messages sent so far matching `pred`. */
  count(pred: (m: Message) => boolean, from = 0): number {
    let c = 0;
    for (let i = from; i < this.sent.length; i++) if (pred(this.sent[i]!)) c++;
    return c;
  }
}

export function copyMessage(m: Message): Message {
  const c: Message = { ...m, entries: m.entries.map((e) => ({ ...e })) };
  if (m.snapshot) c.snapshot = { ...m.snapshot, data: m.snapshot.data.slice() };
  return c;
}

export function isType(t: MessageType, from?: NodeId, to?: NodeId): (m: Message) => boolean {
  return (m) => m.type === t && (from === undefined || m.from === from) && (to === undefined || m.to === to);
}

export { ConfChangeType, EntryType, MessageType, StateType };
