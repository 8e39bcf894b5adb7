// Deterministic simulation of a Raft cluster under faults. One seed fixes everything: message delays,
// loss, duplication and reordering, partitions, crashes (losing whatever was not persisted), membership
// changes, snapshots, and the clients' requests. Safety is checked after every step; linearizability of
// the clients' history and liveness after faults heal are checked at the end.

import { Raft } from "../../src/raft/raft.js";
import { SeededRand } from "../../src/raft/rand.js";
import { bootstrapSnapshot, RawNode } from "../../src/raft/rawnode.js";
import { MemoryStorage } from "../../src/raft/storage.js";
import {
  ConfChangeType,
  EMPTY,
  type Entry,
  EntryType,
  ErrProposalDropped,
  type Message,
  MessageType,
  type NodeId,
  type Ready,
  StateType,
} from "../../src/raft/types.js";
import { checkLinearizable, type Op } from "./linearizability.js";

export interface SimOptions {
  seed: number;
  /** Initial voters: 3, 5 or 7 (default: from the seed). */
  nodes?: number;
  /** Steps of the faulty phase (each step is one event: a tick, a delivery, a fault, a client action). */
  steps?: number;
  /** Break the core on purpose (the simulation's self-test). */
  unsafeCommitAnyTerm?: boolean;
  /** Record a trace of every event (for replaying a failure). */
  trace?: boolean;
}

export interface SimResult {
  seed: number;
  ok: boolean;
  error?: string;
  steps: number;
  stats: SimStats;
  trace?: string[];
}

export interface SimStats {
  nodes: number;
  elections: number;
  committed: number;
  snapshotsSent: number;
  snapshotsTaken: number;
  crashes: number;
  partitions: number;
  confChanges: number;
  ops: number;
  opsCompleted: number;
}

export class SafetyViolation extends Error {}

const TICK = 10; // time units per tick
const CLIENTS = 5;
const KEYS = ["a", "b", "c"];

interface KV {
  data: Map<string, string>;
  /** Per client: the last request sequence applied (sessions make retried puts idempotent). */
  sessions: Map<number, number>;
}

interface Command {
  c: number;
  s: number;
  k: string;
  v: string;
}

interface PendingRead {
  client: number;
  seq: number;
  ctx: string;
  index: number | null;
}

class SimNode {
  rn: RawNode | null = null;
  kv: KV = { data: new Map(), sessions: new Map() };
  applied = 0;
  removed = false;
  reads: PendingRead[] = [];
  /** Crash at a chosen point of the next Ready's handling. */
  crashPoint: "none" | "beforePersist" | "afterPersist" | "afterSend" = "none";

  constructor(
    readonly id: NodeId,
    readonly storage: MemoryStorage,
  ) {}

  get up(): boolean {
    return this.rn !== null;
  }
}

interface Event {
  at: number;
  seq: number;
  kind: "tick" | "deliver" | "fault" | "client";
  node?: NodeId;
  msg?: Message;
  run?: () => void;
}

/** A binary heap of events ordered by (time, insertion). */
class EventQueue {
  private heap: Event[] = [];

  push(e: Event): void {
    const h = this.heap;
    h.push(e);
    let i = h.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (less(h[p]!, e)) break;
      h[i] = h[p]!;
      i = p;
    }
    h[i] = e;
  }

  pop(): Event | undefined {
    const h = this.heap;
    if (h.length === 0) return undefined;
    const top = h[0]!;
    const last = h.pop()!;
    if (h.length > 0) {
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        if (l >= h.length) break;
        const r = l + 1;
        const c = r < h.length && less(h[r]!, h[l]!) ? r : l;
        if (less(last, h[c]!)) break;
        h[i] = h[c]!;
        i = c;
      }
      h[i] = last;
    }
    return top;
  }

  get size(): number {
    return this.heap.length;
  }
}

function less(a: Event, b: Event): boolean {
  return a.at < b.at || (a.at === b.at && a.seq < b.seq);
}

interface ClientState {
  id: number;
  seq: number;
  op: Op | null;
  cmd: Command | null;
  node: NodeId;
  deadline: number;
  attempt: number;
}

const enc = new TextEncoder();
const dec = new TextDecoder();

export class Simulation {
  readonly rand: SeededRand;
  readonly opts: Required<Omit<SimOptions, "trace">> & { trace: boolean };
  now = 0;
  private seqNo = 0;
  private q = new EventQueue();
  nodes = new Map<NodeId, SimNode>();
  private nextId: NodeId;
  /** Directed links that are cut: `${from}>${to}`. */
  private cut = new Set<string>();
  // Fault rates, fixed per seed.
  private loss: number;
  private dup: number;
  private maxDelay: number;
  private crashRate: number;
  /** Chance that a crash hits the leader rather than any node. */
  private leaderBias: number;
  /** Chance that a leader crashes right after a Ready that advanced its commit index. */
  private crashOnCommit: number;
  private partitionRate: number;
  private confRate: number;
  private snapEvery: number;
  private maxMsg: number;
  private electionTick: number;
  private faultsOn = true;
  // Global knowledge for the safety checks.
  private leaderOfTerm = new Map<number, NodeId>();
  private entryAt = new Map<string, string>(); // `${index}:${term}` -> data
  private prevTermAt = new Map<string, number>(); // `${index}:${term}` -> term of index-1
  private appliedAt: string[] = []; // index -> `${term}:${data}`
  private maxCommitted = 0;
  private clients: ClientState[] = [];
  history: Op[] = [];
  private opId = 0;
  private valueNo = 0;
  stats: SimStats;
  trace: string[] = [];
  private stepNo = 0;

  constructor(options: SimOptions) {
    this.rand = new SeededRand(options.seed);
    const nodes = options.nodes ?? [3, 5, 7][options.seed % 3]!;
    this.opts = {
      seed: options.seed,
      nodes,
      steps: options.steps ?? 2000,
      unsafeCommitAnyTerm: options.unsafeCommitAnyTerm ?? false,
      trace: options.trace ?? false,
    };
    const r = this.rand;
    this.loss = r.pick([0, 0.01, 0.05, 0.1]);
    this.dup = r.pick([0, 0.01, 0.05]);
    this.maxDelay = r.pick([3, 8, 25]);
    // One seed in three is a storm: the leader crashes or is cut off every few hundred steps.
    const storm = r.chance(1 / 3);
    this.crashRate = storm ? r.pick([0.01, 0.02]) : r.pick([0, 0.002, 0.006]);
    this.leaderBias = storm ? 0.8 : 0.3;
    this.crashOnCommit = storm ? r.pick([0.02, 0.1]) : 0;
    this.partitionRate = storm ? r.pick([0.01, 0.02]) : r.pick([0, 0.003, 0.01]);
    this.confRate = r.pick([0, 0.002, 0.005]);
    this.snapEvery = r.pick([8, 20, 50]);
    // 1 byte: one entry per append, so followers often hold part of what the leader sent.
    this.maxMsg = r.pick([1, 256, 4096]);
    // Short election timeouts against long message delays make for contested elections.
    this.electionTick = r.pick([3, 5, 10]);
    this.stats = {
      nodes,
      elections: 0,
      committed: 0,
      snapshotsSent: 0,
      snapshotsTaken: 0,
      crashes: 0,
      partitions: 0,
      confChanges: 0,
      ops: 0,
      opsCompleted: 0,
    };
    const voters: NodeId[] = [];
    for (let i = 1; i <= nodes; i++) voters.push(i);
    this.nextId = nodes + 1;
    const boot = bootstrapSnapshot(voters);
    for (const id of voters) {
      const st = new MemoryStorage();
      st.applySnapshot(boot.snapshot);
      st.setHardState(boot.hardState);
      const n = new SimNode(id, st);
      this.nodes.set(id, n);
      this.start(n);
      // Spread the nodes' tick phases.
      this.schedule({ at: 1 + r.intn(TICK), kind: "tick", node: id });
    }
    for (let c = 1; c <= CLIENTS; c++) {
      this.clients.push({ id: c, seq: 0, op: null, cmd: null, node: 1, deadline: 0, attempt: 0 });
      this.schedule({ at: r.intn(5 * TICK), kind: "client", run: () => this.clientNext(c) });
    }
  }

  private log(s: string): void {
    if (this.opts.trace) this.trace.push(`[${this.stepNo} t=${this.now}] ${s}`);
  }

  private schedule(e: Omit<Event, "seq">): void {
    this.q.push({ ...e, seq: this.seqNo++ });
  }

  private start(n: SimNode): void {
    const snap = n.storage.snapshot();
    n.kv = decodeKV(snap.data);
    n.applied = snap.metadata.index;
    n.reads = [];
    n.rn = new RawNode({
      id: n.id,
      storage: n.storage,
      rand: this.rand,
      applied: n.applied,
      maxSnapshotChunk: 64,
      snapshotWindow: 2,
      maxSizePerMsg: this.maxMsg,
      electionTick: this.electionTick,
      maxInflightMsgs: 4,
      unsafeCommitAnyTerm: this.opts.unsafeCommitAnyTerm,
    });
  }

  // ------------------------------------------------------------------ the loop

  /** Run the faulty phase, then heal and check liveness and linearizability. Throws on any violation. */
  run(): SimResult {
    try {
      for (this.stepNo = 0; this.stepNo < this.opts.steps; this.stepNo++) {
        this.step();
        if (this.faultsOn) this.maybeFault();
      }
      this.healAndCheckLiveness();
      const lin = checkLinearizable(this.history);
      if (!lin.ok) throw new SafetyViolation(`history not linearizable: ${lin.message}`);
      return {
        seed: this.opts.seed,
        ok: true,
        steps: this.stepNo,
        stats: this.stats,
        ...(this.opts.trace ? { trace: this.trace } : {}),
      };
    } catch (e) {
      const error =
        e instanceof Error ? `${e.message}\n${e instanceof SafetyViolation ? "" : (e.stack ?? "")}` : String(e);
      return {
        seed: this.opts.seed,
        ok: false,
        error,
        steps: this.stepNo,
        stats: this.stats,
        ...(this.opts.trace ? { trace: this.trace } : {}),
      };
    }
  }

  step(): void {
    const e = this.q.pop();
    if (!e) throw new Error("event queue ran dry");
    this.now = e.at;
    switch (e.kind) {
      case "tick": {
        const n = this.nodes.get(e.node!)!;
        if (n.removed) return;
        this.schedule({ at: this.now + TICK, kind: "tick", node: n.id });
        if (!n.rn) return;
        n.rn.tick();
        this.handleReady(n);
        return;
      }
      case "deliver": {
        const m = e.msg!;
        const n = this.nodes.get(m.to);
        if (!n?.rn || n.removed || this.cut.has(`${m.from}>${m.to}`)) return;
        this.log(
          `deliver ${MessageType[m.type]} ${m.from}->${m.to} term=${m.term} idx=${m.index} lt=${m.logTerm} n=${m.entries.length} commit=${m.commit}${m.reject ? ` reject hint=${m.rejectHint}` : ""}${m.snapshot ? ` snap=${m.snapshot.metadata.index}/${m.snapshot.metadata.term} off=${m.snapshot.offset}/${m.snapshot.total}` : ""}`,
        );
        n.rn.step(m);
        this.handleReady(n);
        return;
      }
      default:
        e.run!();
    }
  }

  private send(m: Message): void {
    const dest = this.nodes.get(m.to);
    if (this.cut.has(`${m.from}>${m.to}`) || !dest?.rn) {
      // A real transport notices a dead peer or a broken link, sometimes: it tells the sender.
      if (this.rand.chance(0.5)) {
        this.schedule({
          at: this.now + 1 + this.rand.intn(5),
          kind: "fault",
          run: () => {
            const from = this.nodes.get(m.from);
            if (!from?.rn) return;
            this.log(`node ${m.from} told ${m.to} is unreachable`);
            from.rn.reportUnreachable(m.to);
            this.handleReady(from);
          },
        });
      }
      return;
    }
    if (this.rand.chance(this.loss)) return;
    const copies = this.rand.chance(this.dup) ? 2 : 1;
    for (let i = 0; i < copies; i++) {
      // Each delivery gets its own copy, as from a real wire.
      this.schedule({ at: this.now + 1 + this.rand.intn(this.maxDelay), kind: "deliver", msg: copyMessage(m) });
    }
  }

  /** Persist, send, apply, advance: with a crash possible at any point of it. */
  private handleReady(n: SimNode): void {
    while (n.rn?.hasReady()) {
      const rn = n.rn;
      const rd = rn.ready();
      const isLeader = rn.raft.state === StateType.Leader;
      if (rd.softState?.state === StateType.Leader) this.onLeader(n);
      // The most dangerous moment for a leader to die: it has just committed (and will apply), and what
      // it wrote to its sockets in this last turn is lost with it.
      const dieAfterCommit =
        isLeader && rd.hardState !== undefined && this.faultsOn && this.rand.chance(this.crashOnCommit);
      const send = (m: Message) => {
        if (!dieAfterCommit) this.send(m);
      };
      // A leader may send its appends before its own entries are on disk (thesis 10.2.1).
      if (isLeader) {
        for (const m of rd.messages) if (m.type === MessageType.App || m.type === MessageType.Snap) send(m);
      }
      if (n.crashPoint === "beforePersist") {
        this.crash(n);
        return;
      }
      this.persist(n, rd);
      if (n.crashPoint === "afterPersist") {
        this.crash(n);
        return;
      }
      for (const m of rd.messages) {
        if (!isLeader || (m.type !== MessageType.App && m.type !== MessageType.Snap)) send(m);
        if (m.type === MessageType.Snap && m.snapshot?.offset === 0) this.stats.snapshotsSent++;
      }
      if (n.crashPoint === "afterSend") {
        this.crash(n);
        return;
      }
      this.apply(n, rd);
      rn.advance(rd);
      this.serveReads(n, rd);
      this.maybeSnapshot(n);
      if (dieAfterCommit) {
        this.crash(n);
        this.schedule({ at: this.now + this.rand.intn(40 * TICK), kind: "fault", run: () => this.restart(n) });
        return;
      }
    }
    this.noteRemoval(n);
  }

  /** A node that applied its own removal, or was told of it by a member, stops for good. */
  private noteRemoval(n: SimNode): void {
    if (!n.rn?.raft.isRemoved()) return;
    this.log(`node ${n.id} knows it was removed; it stops`);
    n.removed = true;
    n.rn = null;
  }

  private persist(n: SimNode, rd: Ready): void {
    if (rd.snapshot) n.storage.applySnapshot(rd.snapshot);
    if (rd.entries.length > 0) {
      this.checkLogMatching(n, rd.entries);
      n.storage.append(rd.entries);
    }
    if (rd.hardState) n.storage.setHardState(rd.hardState);
  }

  private apply(n: SimNode, rd: Ready): void {
    if (rd.snapshot) {
      const s = rd.snapshot;
      n.kv = decodeKV(s.data);
      n.applied = s.metadata.index;
      this.log(`node ${n.id} installed snapshot @${s.metadata.index}`);
    }
    for (const e of rd.committedEntries) {
      if (e.index !== n.applied + 1) {
        throw new SafetyViolation(`node ${n.id} applied index ${e.index} after ${n.applied}: out of order`);
      }
      this.checkApplied(n, e);
      n.applied = e.index;
      if (e.type === EntryType.ConfChange) {
        const cc = Raft.decodeConfChange(e);
        n.rn!.applyConfChange(cc);
      } else if (e.data.length > 0) {
        const cmd = JSON.parse(dec.decode(e.data)) as Command;
        const last = n.kv.sessions.get(cmd.c) ?? 0;
        if (cmd.s > last) {
          n.kv.sessions.set(cmd.c, cmd.s);
          n.kv.data.set(cmd.k, cmd.v);
        }
        this.completePut(n, cmd);
      }
    }
  }

  private maybeSnapshot(n: SimNode): void {
    const st = n.storage;
    if (!n.rn || n.applied - st.snapshot().metadata.index < this.snapEvery) return;
    // Only what is persisted can be snapshotted (applied entries always are).
    st.createSnapshot(n.applied, n.rn.raft.confState(), encodeKV(n.kv));
    const keep = 3;
    if (n.applied - keep > st.firstIndex()) st.compact(n.applied - keep);
    this.stats.snapshotsTaken++;
  }

  private crash(n: SimNode): void {
    this.log(`crash node ${n.id} (${n.crashPoint})`);
    n.crashPoint = "none";
    n.rn = null;
    n.reads = [];
    this.stats.crashes++;
  }

  private onLeader(n: SimNode): void {
    const term = n.rn!.raft.term;
    const prev = this.leaderOfTerm.get(term);
    if (prev !== undefined && prev !== n.id) {
      throw new SafetyViolation(`election safety: nodes ${prev} and ${n.id} are both leaders of term ${term}`);
    }
    this.leaderOfTerm.set(term, n.id);
    this.stats.elections++;
    this.log(`node ${n.id} became leader of term ${term}`);
    // Leader completeness: the new leader holds every entry known to be committed.
    const log = n.rn!.raft.raftLog;
    const i = this.maxCommitted;
    if (i >= log.firstIndex()) {
      const want = this.appliedAt[i]!;
      let have: number;
      try {
        have = log.term(i);
      } catch {
        throw new SafetyViolation(`leader completeness: leader ${n.id} of term ${term} lacks committed entry ${i}`);
      }
      if (`${have}` !== want.slice(0, want.indexOf(":"))) {
        throw new SafetyViolation(
          `leader completeness: leader ${n.id} of term ${term} has term ${have} at committed index ${i}, committed was ${want}`,
        );
      }
    }
  }

  /** Same index and term means the same entry, and the same predecessor term: by induction, the same prefix. */
  private checkLogMatching(n: SimNode, ents: Entry[]): void {
    let prevTerm: number | undefined;
    try {
      prevTerm = n.storage.term(ents[0]!.index - 1);
      if (ents[0]!.index - 1 > n.storage.lastIndex()) prevTerm = undefined;
    } catch {
      prevTerm = undefined;
    }
    for (const e of ents) {
      const key = `${e.index}:${e.term}`;
      const data = dataKey(e);
      const seen = this.entryAt.get(key);
      if (seen === undefined) this.entryAt.set(key, data);
      else if (seen !== data)
        throw new SafetyViolation(
          `log matching: two different entries at index ${e.index} term ${e.term} (node ${n.id})`,
        );
      if (prevTerm !== undefined) {
        const seenPrev = this.prevTermAt.get(key);
        if (seenPrev === undefined) this.prevTermAt.set(key, prevTerm);
        else if (seenPrev !== prevTerm) {
          throw new SafetyViolation(
            `log matching: entry ${key} follows term ${prevTerm} on node ${n.id} but term ${seenPrev} elsewhere`,
          );
        }
      }
      prevTerm = e.term;
    }
  }

  private checkApplied(n: SimNode, e: Entry): void {
    const v = `${e.term}:${dataKey(e)}`;
    const seen = this.appliedAt[e.index];
    if (seen === undefined) {
      this.appliedAt[e.index] = v;
      if (e.index > this.maxCommitted) this.maxCommitted = e.index;
      this.stats.committed = this.maxCommitted;
    } else if (seen !== v) {
      throw new SafetyViolation(
        `state machine safety: node ${n.id} applied ${v} at index ${e.index}, another node applied ${seen}`,
      );
    }
  }

  // ------------------------------------------------------------------ clients

  private clientNext(c: number): void {
    const cl = this.clients[c - 1]!;
    if (!this.faultsOn) return; // no new requests once faults heal; pending ones still retry
    cl.seq++;
    const key = this.rand.pick(KEYS);
    const isPut = this.rand.chance(0.6);
    const op: Op = {
      id: this.opId++,
      client: c,
      key,
      kind: isPut ? "put" : "get",
      value: isPut ? `v${this.valueNo++}` : null,
      call: this.now,
      ret: null,
    };
    cl.op = op;
    cl.cmd = isPut ? { c, s: cl.seq, k: key, v: op.value! } : null;
    cl.attempt = 0;
    this.history.push(op);
    this.stats.ops++;
    this.clientSend(cl);
  }

  private clientSend(cl: ClientState): void {
    const op = cl.op!;
    cl.attempt++;
    const live = [...this.nodes.values()].filter((n) => n.rn && !n.removed);
    const leader = live.find((n) => n.rn!.raft.state === StateType.Leader);
    const target = leader && this.rand.chance(0.7) ? leader : live.length > 0 ? this.rand.pick(live) : undefined;
    cl.deadline = this.now + 30 * TICK;
    const attempt = cl.attempt;
    this.schedule({ at: cl.deadline, kind: "client", run: () => this.clientTimeout(cl, op, attempt) });
    if (!target) return;
    cl.node = target.id;
    try {
      if (op.kind === "put") {
        target.rn!.propose(enc.encode(JSON.stringify(cl.cmd)));
      } else {
        const ctx = `${cl.id}:${cl.seq}:${cl.attempt}`;
        target.reads.push({ client: cl.id, seq: cl.seq, ctx, index: null });
        target.rn!.readIndex(enc.encode(ctx));
      }
      this.handleReady(target);
    } catch (e) {
      if (!(e instanceof ErrProposalDropped)) throw e;
      // Rejected at once (no leader): the client will retry on its timeout.
    }
  }

  private clientTimeout(cl: ClientState, op: Op, attempt: number): void {
    if (cl.op !== op || cl.attempt !== attempt) return;
    this.clientSend(cl);
  }

  private completePut(n: SimNode, cmd: Command): void {
    const cl = this.clients[cmd.c - 1]!;
    if (cl.op && cl.op.kind === "put" && cl.seq === cmd.s && cl.node === n.id) this.finish(cl);
  }

  private serveReads(n: SimNode, rd: Ready): void {
    for (const rs of rd.readStates) {
      const ctx = dec.decode(rs.ctx);
      for (const r of n.reads) if (r.ctx === ctx) r.index = rs.index;
    }
    if (n.reads.length === 0) return;
    const keep: PendingRead[] = [];
    for (const r of n.reads) {
      if (r.index === null || r.index > n.applied) {
        keep.push(r);
        continue;
      }
      const cl = this.clients[r.client - 1]!;
      if (cl.op && cl.op.kind === "get" && cl.seq === r.seq && cl.node === n.id) {
        cl.op.value = n.kv.data.get(cl.op.key) ?? null;
        this.finish(cl);
      }
    }
    n.reads = keep;
  }

  private finish(cl: ClientState): void {
    const op = cl.op!;
    op.ret = this.now;
    this.log(`client ${cl.id} ${op.kind} ${op.key}=${op.value} done`);
    cl.op = null;
    this.stats.opsCompleted++;
    this.schedule({ at: this.now + 1 + this.rand.intn(3 * TICK), kind: "client", run: () => this.clientNext(cl.id) });
  }

  // ------------------------------------------------------------------ faults

  private members(): SimNode[] {
    return [...this.nodes.values()].filter((n) => !n.removed);
  }

  private leader(): SimNode | undefined {
    let best: SimNode | undefined;
    for (const n of this.nodes.values()) {
      if (n.rn && !n.removed && n.rn.raft.state === StateType.Leader && (!best || n.rn.raft.term > best.rn!.raft.term))
        best = n;
    }
    return best;
  }

  private maybeFault(): void {
    const r = this.rand;
    if (r.chance(this.crashRate)) {
      const l = this.leader();
      const n = l && r.chance(this.leaderBias) ? l : r.pick(this.members());
      if (n.rn) {
        n.crashPoint = r.pick(["beforePersist", "afterPersist", "afterSend"] as const);
        // The crash hits during its next Ready; if it has none pending, it happens now.
        if (!n.rn.hasReady()) this.crash(n);
        else this.handleReady(n);
        this.schedule({ at: this.now + r.intn(40 * TICK), kind: "fault", run: () => this.restart(n) });
      }
    }
    if (r.chance(this.partitionRate) && this.cut.size === 0) this.partition();
    if (r.chance(this.confRate)) this.changeMembership();
  }

  private restart(n: SimNode): void {
    if (n.rn || n.removed) return;
    this.log(`restart node ${n.id}`);
    this.start(n);
  }

  private partition(): void {
    const r = this.rand;
    const ids = this.members().map((n) => n.id);
    const kind = r.pick(["split", "leader", "asym", "flap"] as const);
    const heal = this.now + TICK * (5 + r.intn(60));
    this.stats.partitions++;
    let side: NodeId[];
    if (kind === "leader") {
      const l = this.leader();
      side = l ? [l.id] : [r.pick(ids)];
    } else {
      const size = 1 + r.intn(Math.max(1, Math.floor(ids.length / 2)));
      side = shuffle(r, ids).slice(0, size);
    }
    const other = ids.filter((i) => !side.includes(i));
    this.log(`partition ${kind}: [${side}] | [${other}]`);
    const apply = () => {
      for (const a of side) {
        for (const b of other) {
          this.cut.add(`${a}>${b}`);
          if (kind !== "asym") this.cut.add(`${b}>${a}`);
        }
      }
    };
    apply();
    if (kind === "flap") {
      for (let t = this.now + 3 * TICK; t < heal; t += 3 * TICK) {
        const on = ((t - this.now) / (3 * TICK)) % 2 === 0;
        this.schedule({ at: t, kind: "fault", run: () => (on ? apply() : this.cut.clear()) });
      }
    }
    this.schedule({ at: heal, kind: "fault", run: () => this.cut.clear() });
  }

  private changeMembership(): void {
    const l = this.leader();
    if (!l) return;
    const r = this.rand;
    const cs = l.rn!.raft.confState();
    const members = cs.voters.length + cs.learners.length;
    try {
      if (r.chance(0.5) && members < 7) {
        const id = this.nextId++;
        this.log(`propose add learner ${id}`);
        l.rn!.proposeConfChange({ type: ConfChangeType.AddLearner, nodeId: id, context: EMPTY });
        const n = new SimNode(id, new MemoryStorage());
        this.nodes.set(id, n);
        this.start(n);
        this.schedule({ at: this.now + 1 + r.intn(TICK), kind: "tick", node: id });
      } else if (cs.voters.length > 3) {
        const victim = r.pick(cs.voters);
        this.log(`propose remove ${victim}`);
        l.rn!.proposeConfChange({ type: ConfChangeType.RemoveNode, nodeId: victim, context: EMPTY });
      } else {
        return;
      }
      this.stats.confChanges++;
      this.handleReady(l);
    } catch (e) {
      if (!(e instanceof ErrProposalDropped)) throw e;
    }
  }

  /** Stop all faults, restart everything, and require a leader and every pending request to finish. */
  private healAndCheckLiveness(): void {
    this.faultsOn = false;
    this.cut.clear();
    this.loss = 0;
    this.dup = 0;
    for (const n of this.nodes.values()) if (!n.rn && !n.removed) this.start(n);
    const deadline = this.now + 400 * TICK;
    while (this.now < deadline) {
      const pending = this.clients.some((c) => c.op !== null);
      const l = this.leader();
      if (!pending && l && this.caughtUp(l)) return;
      this.step();
      this.stepNo++;
    }
    const l = this.leader();
    const lcs = l?.rn ? l.rn.raft.confState() : undefined;
    const unaware = lcs ? lcs.removed.filter((id) => this.unawareOfRemoval(id, lcs)) : [];
    throw new SafetyViolation(
      `liveness: ${400} ticks after faults healed: leader=${l?.id ?? "none"}, removed but unaware=[${unaware}], pending requests=${this.clients
        .filter((c) => c.op)
        .map((c) => `${c.id}:${c.op!.kind}`)
        .join(",")}, nodes=${[...this.nodes.values()]
        .map(
          (n) =>
            `${n.id}${n.removed ? "(removed)" : ""}:${n.rn ? StateType[n.rn.raft.state] : "down"}@${n.rn?.raft.term}/${n.applied}`,
        )
        .join(" ")}`,
    );
  }

  /**
   * A node the leader removed that has not learnt it, though it could: it knows a voter that is still a
   * member (it asks the voters it knows). A node whose log ends before any of today's members joined (a
   * brand-new node removed before anything reached it, or one whose every known voter was removed too) has
   * no one to ask, and is left out.
   */
  private unawareOfRemoval(id: NodeId, leaderCs: { voters: NodeId[]; learners: NodeId[] }): boolean {
    const n = this.nodes.get(id);
    if (!n || n.removed) return false;
    const cs = n.rn ? n.rn.raft.confState() : n.storage.snapshot().metadata.confState;
    return cs.voters.some((v) => v !== id && (leaderCs.voters.includes(v) || leaderCs.learners.includes(v)));
  }

  /** Every member of the leader's configuration has applied what it committed, no learner is left
   * waiting for promotion, and every node the leader removed knows it (and has stopped). */
  private caughtUp(l: SimNode): boolean {
    const commit = l.rn!.raft.raftLog.committed;
    const cs = l.rn!.raft.confState();
    if (cs.learners.length > 0) return false;
    if (cs.removed.some((id) => this.unawareOfRemoval(id, cs))) return false;
    for (const id of cs.voters) {
      const n = this.nodes.get(id);
      if (!n?.rn || n.applied < commit) return false;
    }
    return true;
  }
}

function copyMessage(m: Message): Message {
  const c: Message = { ...m, entries: m.entries.map((e) => ({ ...e })) };
  if (m.snapshot) c.snapshot = { ...m.snapshot, data: m.snapshot.data.slice() };
  return c;
}

function dataKey(e: Entry): string {
  return `${e.type}/${dec.decode(e.data)}`;
}

function encodeKV(kv: KV): Uint8Array {
  return enc.encode(JSON.stringify({ d: [...kv.data], s: [...kv.sessions] }));
}

function decodeKV(b: Uint8Array): KV {
  if (b.length === 0) return { data: new Map(), sessions: new Map() };
  const o = JSON.parse(dec.decode(b)) as { d: [string, string][]; s: [number, number][] };
  return { data: new Map(o.d), sessions: new Map(o.s) };
}

function shuffle<T>(r: SeededRand, xs: T[]): T[] {
  const a = xs.slice();
  for (let i = a.length - 1; i > 0; i--) {
    const j = r.intn(i + 1);
    [a[i], a[j]] = [a[j]!, a[i]!];
  }
  return a;
}

export function runSeed(options: SimOptions): SimResult {
  return new Simulation(options).run();
}

export function replayCommand(seed: number, extra = ""): string {
  return `npm run sim -- --seeds 1 --from ${seed}${extra}`;
}
