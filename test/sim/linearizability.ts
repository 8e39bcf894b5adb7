/**
 * Linearizability checker for the simulated key-value register used by the
 * deterministic Raft simulation (test/sim).
 *
 * Model: every key is an independent read/write register whose initial value
 * is `opts.initial` (default `null`, i.e. absent). Because linearizability is
 * compositional (Herlihy & Wing's locality / Porcupine's "P-compositionality"),
 * a history is linearizable iff its restriction to every key is, so each key
 * is checked on its own.
 *
 * For one key this is the Wing & Gong search as improved by Lowe (the "WGL"
 * algorithm also used by Porcupine and Knossos):
 *
 *   - every op becomes a call event and a return event; all events are sorted
 *     by time into a doubly linked list. At equal times call events sort
 *     before return events, so an op returning at t and an op invoked at t are
 *     concurrent (real-time order only applies when `a.ret < b.call`).
 *   - depth-first search: walk the list from the front; at a call event, try
 *     to linearize that op next (apply it to the register). If the model
 *     accepts it and the resulting (set of linearized ops, register value)
 *     state has not been seen before, remove the op's two events from the list
 *     (dancing-links style) and restart from the front. Reaching a return
 *     event means that op had to be linearized already, so backtrack: undo the
 *     last linearized op, put its events back and try the next candidate after
 *     it.
 *   - the memo of visited states is sound because a state determines the rest
 *     of the search exactly (the remaining list is the history minus the
 *     linearized set, and the register value is the only model state). A
 *     state that is visited again cannot be on the current DFS path (the path
 *     only holds strictly smaller sets), so it was fully explored and failed.
 *
 * Incomplete ops (`ret === null`):
 *
 *   - gets are dropped: they observed nothing, and a read never constrains
 *     anything else.
 *   - puts get return time +Infinity. The standard WGL search demands that
 *     *every* op be linearized, whereas a pending put may also never have taken
 *     effect. +Infinity alone is nevertheless enough: a put is always accepted
 *     by the register, so a pending put that is "omitted" can instead be
 *     linearized after every other op, where it precedes no get and therefore
 *     changes no observed value. Conversely any linearization that places it
 *     last is a linearization of the history without it. So "may be omitted"
 *     and "may be linearized anywhere after its call, including at the very
 *     end" describe the same set of histories, and +Infinity gives the latter.
 *     For the same reason the search can stop as soon as every *completed* op
 *     has been linearized: the remaining pending puts can all go at the end.
 *
 * Two sound reductions keep pending puts from blowing up the search (each
 * pending put with an unbounded return would otherwise be concurrent with
 * everything after its call, doubling the state space per pending put):
 *
 *   1. A pending put whose value no completed get of that key returns is
 *      removed. If a linearization with it exists, no get can sit between it
 *      and the next put (such a get would return its value), so deleting it
 *      leaves a valid linearization; and the converse is the "put it at the
 *      end" argument above. This holds even if values are not unique.
 *   2. A pending put that is the *only* put of its key writing value v (and v
 *      is not the initial value) must be linearized before every get returning
 *      v, hence before the earliest `ret` of those gets. Its return time is
 *      therefore capped at that `ret` (or at its own `call` if that is later,
 *      which can only happen in a non-linearizable history and keeps the
 *      transformed history non-linearizable). Uniqueness is checked, never
 *      assumed; with duplicate values the put keeps +Infinity.
 *
 * One sound pruning of the search itself: when a get may come next (its call
 * precedes every remaining return) and returns the current register value, it
 * is linearized immediately and no alternative is tried at that point (if
 * that fails, the state fails). Any valid continuation can be rearranged to
 * start with such a get, since nothing must precede it in real time and a get
 * does not change the register. This removes most branching on reads.
 *
 * A completed get returning a value that no put of the key writes (and that
 * is not the initial value) is reported immediately without searching.
 *
 * State-space guard: the number of distinct states visited per key is bounded
 * by `opts.maxStates` (default 1e6). Exceeding it throws, so a test fails
 * loudly instead of passing (or failing) on an inconclusive check.
 */

export type OpKind = "put" | "get";

export interface Op {
  /** Unique per history. */
  id: number;
  client: number;
  key: string;
  kind: OpKind;
  /**
   * put: the value written. get: the value read (null = key absent), or
   * undefined if the get never returned (ret === null).
   */
  value: string | null | undefined;
  /** Simulated time of invocation. */
  call: number;
  /**
   * Simulated time of response; null = no response seen (timed out, client
   * gave up, sim ended): the op may or may not have taken effect, at any time
   * after `call`.
   */
  ret: number | null;
}

export type LinResult =
  | { ok: true }
  | {
      ok: false;
      key: string;
      /** All ops of the offending key, sorted by call time (then id). */
      ops: Op[];
      /** Readable explanation, including the ops of the key sorted by call time. */
      message: string;
    };

export interface CheckOptions {
  /** Initial value of every key (default null = absent). */
  initial?: string | null;
  /** Maximum number of distinct search states per key (default 1e6). */
  maxStates?: number;
}

const DEFAULT_MAX_STATES = 1_000_000;

export function checkLinearizable(history: Op[], opts: CheckOptions = {}): LinResult {
  const initial = opts.initial === undefined ? null : opts.initial;
  const maxStates = opts.maxStates ?? DEFAULT_MAX_STATES;

  const byKey = new Map<string, Op[]>();
  const ids = new Set<number>();
  for (const op of history) {
    validate(op);
    if (ids.has(op.id)) throw new Error(`linearizability: duplicate op id ${op.id}`);
    ids.add(op.id);
    let list = byKey.get(op.key);
    if (list === undefined) {
      list = [];
      byKey.set(op.key, list);
    }
    list.push(op);
  }

  for (const [key, ops] of byKey) {
    const failure = checkKey(key, ops, initial, maxStates);
    if (failure !== null) {
      const sorted = sortByCall(ops);
      return {
        ok: false,
        key,
        ops: sorted,
        message: `history is not linearizable for key ${JSON.stringify(key)}: ${failure}\n` + formatOps(key, sorted),
      };
    }
  }
  return { ok: true };
}

function validate(op: Op): void {
  const where = `linearizability: op #${op.id}`;
  if (op.kind !== "put" && op.kind !== "get") throw new Error(`${where}: unknown kind ${String(op.kind)}`);
  if (!Number.isFinite(op.call)) throw new Error(`${where}: call time ${op.call} is not finite`);
  if (op.ret !== null) {
    if (!Number.isFinite(op.ret)) throw new Error(`${where}: ret time ${op.ret} is not finite`);
    if (op.ret < op.call) throw new Error(`${where}: ret ${op.ret} < call ${op.call}`);
    if (op.value === undefined) throw new Error(`${where}: completed ${op.kind} has undefined value`);
  } else if (op.kind === "put" && op.value === undefined) {
    throw new Error(`${where}: put has undefined value`);
  }
}

// ---------------------------------------------------------------------------
// Per-key WGL search
// ---------------------------------------------------------------------------

/** Returns null if the key's sub-history is linearizable, else an explanation. */
function checkKey(key: string, all: Op[], initial: string | null, maxStates: number): string | null {
  // Completed gets' observed values, and how many puts write each value.
  const observedMinRet = new Map<string | null, number>();
  const writers = new Map<string | null, number>();
  for (const op of all) {
    if (op.kind === "get") {
      if (op.ret === null) continue;
      const v = op.value as string | null;
      const prev = observedMinRet.get(v);
      if (prev === undefined || op.ret < prev) observedMinRet.set(v, op.ret);
    } else {
      const v = op.value as string | null;
      writers.set(v, (writers.get(v) ?? 0) + 1);
    }
  }

  // A completed get returning a value nobody wrote can never be linearized.
  for (const op of all) {
    if (op.kind !== "get" || op.ret === null) continue;
    const v = op.value as string | null;
    if (v !== initial && !writers.has(v)) {
      return `get #${op.id} (client ${op.client}) returned ${fmtVal(v)}, which no put of this key wrote${
        initial === null ? "" : ` and is not the initial value ${fmtVal(initial)}`
      }`;
    }
  }

  // Select the ops that take part in the search, with effective return times.
  const ops: Op[] = [];
  const rets: number[] = [];
  let completed = 0;
  for (const op of all) {
    if (op.ret !== null) {
      ops.push(op);
      rets.push(op.ret);
      completed++;
      continue;
    }
    if (op.kind === "get") continue; // pending get: observed nothing
    const v = op.value as string | null;
    const minRet = observedMinRet.get(v);
    if (minRet === undefined) continue; // reduction 1: unobserved pending put
    ops.push(op);
    // Reduction 2: sole writer of a non-initial value must precede its readers.
    rets.push(writers.get(v) === 1 && v !== initial ? Math.max(op.call, minRet) : Number.POSITIVE_INFINITY);
  }
  const n = ops.length;
  if (completed === 0) return null;

  // Register values as small integers: 0 = initial value.
  const valueIds = new Map<string | null, number>([[initial, 0]]);
  const valueNames: (string | null)[] = [initial];
  const isPut = new Uint8Array(n);
  const val = new Int32Array(n);
  const isCompleted = new Uint8Array(n);
  for (let i = 0; i < n; i++) {
    const op = ops[i]!;
    const v = op.value as string | null;
    let id = valueIds.get(v);
    if (id === undefined) {
      id = valueNames.length;
      valueIds.set(v, id);
      valueNames.push(v);
    }
    val[i] = id;
    isPut[i] = op.kind === "put" ? 1 : 0;
    isCompleted[i] = op.ret !== null ? 1 : 0;
  }

  // Events: call of op i = i, return of op i = n + i; HEAD = 2n sentinel; -1 = end.
  const nEv = 2 * n;
  const HEAD = nEv;
  const evTime = new Float64Array(nEv);
  for (let i = 0; i < n; i++) {
    evTime[i] = ops[i]!.call;
    evTime[n + i] = rets[i]!;
  }
  const order = new Int32Array(nEv);
  for (let e = 0; e < nEv; e++) order[e] = e;
  // Sort by time; calls before returns at equal times (equal times are concurrent).
  order.sort((a, b) => evTime[a]! - evTime[b]! || (a >= n ? 1 : 0) - (b >= n ? 1 : 0) || a - b);
  const next = new Int32Array(nEv + 1);
  const prev = new Int32Array(nEv + 1);
  let last = HEAD;
  for (let k = 0; k < nEv; k++) {
    const e = order[k]!;
    next[last] = e;
    prev[e] = last;
    last = e;
  }
  next[last] = -1;

  const remove = (e: number): void => {
    const p = prev[e]!;
    const q = next[e]!;
    next[p] = q;
    if (q !== -1) prev[q] = p;
  };
  const restore = (e: number): void => {
    const p = prev[e]!;
    const q = next[e]!;
    next[p] = e;
    if (q !== -1) prev[q] = e;
  };

  const words = (n + 31) >>> 5;
  const bits = new Uint32Array(words);
  const zob = zobristTable(n);
  const cache = new StateCache(words, 4 * n);

  const stackOp = new Int32Array(n);
  const stackState = new Int32Array(n);
  const stackForced = new Uint8Array(n);
  let depth = 0;
  let state = 0;
  let hash = 0;
  let doneCompleted = 0;

  // Diagnostics: the deepest partial linearization reached. Snapshotted when
  // the search backtracks from it, so a successful search pays nothing.
  let bestDepth = -1;
  let bestPrefix = new Int32Array(0);
  let bestState = 0;

  // `fresh`: a new state was just entered. `cur`: the next event to try in the
  // current state (only meaningful when !fresh).
  let fresh = true;
  let cur = -1;
  search: for (;;) {
    let i = -1;
    let forced = false;
    if (fresh) {
      fresh = false;
      // Reads first: if some get may come next (its call precedes every
      // remaining return) and returns the current register value, it can be
      // linearized right now without loss of generality: in any valid
      // continuation it can be moved to the front, since no remaining op is
      // required by real time to precede it and a get changes no state. So it
      // is the only choice tried here, and if it fails the state fails.
      for (let e = next[HEAD]!; e >= 0 && e < n; e = next[e]!) {
        if (!isPut[e] && val[e] === state) {
          i = e;
          forced = true;
          break;
        }
      }
      cur = next[HEAD]!;
    }
    if (!forced) {
      // Otherwise only puts can be linearized here (no candidate get matches
      // this state), so skip gets and try the next candidate put.
      while (cur >= 0 && cur < n && !isPut[cur]) cur = next[cur]!;
      if (cur >= 0 && cur < n) i = cur;
    }
    if (i >= 0) {
      const newState = isPut[i] ? val[i]! : state;
      const w = i >>> 5;
      const m = 1 << (i & 31);
      bits[w] = bits[w]! | m;
      const newHash = hash ^ zob[i]!;
      if (cache.insert(bits, newState, newHash)) {
        if (cache.size > maxStates) {
          throw new Error(`linearizability check exceeded ${maxStates} states for key ${JSON.stringify(key)}`);
        }
        stackOp[depth] = i;
        stackState[depth] = state;
        stackForced[depth] = forced ? 1 : 0;
        depth++;
        state = newState;
        hash = newHash;
        if (isCompleted[i] && ++doneCompleted === completed) return null;
        remove(i);
        remove(n + i);
        fresh = true;
        continue;
      }
      // Already visited, hence already known to fail.
      bits[w] = bits[w]! & ~m;
      if (!forced) {
        cur = next[i]!;
        continue;
      }
      // A forced read leads to a failed state: so does this state.
    }
    // No candidate left (we reached a return event: that op had to be
    // linearized already): backtrack.
    if (depth > bestDepth) {
      bestDepth = depth;
      bestPrefix = stackOp.slice(0, depth);
      bestState = state;
    }
    for (;;) {
      if (depth === 0) break search;
      depth--;
      const j = stackOp[depth]!;
      state = stackState[depth]!;
      hash ^= zob[j]!;
      bits[j >>> 5] = bits[j >>> 5]! & ~(1 << (j & 31));
      if (isCompleted[j]) doneCompleted--;
      restore(n + j);
      restore(j);
      // A forced read was the only option of its parent state: keep unwinding.
      if (!stackForced[depth]) {
        cur = next[j]!;
        break;
      }
    }
  }

  return explain(ops, rets, valueNames, bestPrefix, bestState);
}

/** Builds the failure explanation from the deepest partial linearization. */
function explain(ops: Op[], rets: number[], valueNames: (string | null)[], prefix: Int32Array, state: number): string {
  const n = ops.length;
  const done = new Uint8Array(n);
  for (const i of prefix) done[i] = 1;
  const parts: string[] = [];
  parts.push(`no valid linearization exists (searched all orders consistent with real time).`);
  if (prefix.length === 0) {
    parts.push(`No op can be linearized first.`);
  } else {
    const seq = Array.from(prefix, (i) => shortOp(ops[i]!)).join(", ");
    parts.push(
      `Longest partial linearization found (${prefix.length} of ${n} ops): ${seq}; register then holds ${fmtVal(valueNames[state]!)}.`,
    );
  }
  // Ops that could come next by real time: those invoked no later than the
  // earliest (effective) return among the remaining ops.
  let minRet = Number.POSITIVE_INFINITY;
  for (let i = 0; i < n; i++) if (!done[i] && rets[i]! < minRet) minRet = rets[i]!;
  const cands: string[] = [];
  for (let i = 0; i < n; i++) if (!done[i] && ops[i]!.call <= minRet) cands.push(shortOp(ops[i]!));
  if (cands.length > 0) parts.push(`It cannot be extended by any of the ops that may come next: ${cands.join(", ")}.`);
  return parts.join(" ");
}

// ---------------------------------------------------------------------------
// Visited-state cache: open addressing over typed arrays, exact comparison.
// ---------------------------------------------------------------------------

class StateCache {
  size = 0;
  private mask: number;
  private table: Int32Array; // slot -> entry index + 1 (0 = empty)
  private hashes: Int32Array;
  private states: Int32Array;
  private pool: Uint32Array; // entry e's bitset at [e*words, (e+1)*words)
  private readonly words: number;

  constructor(words: number, expected: number) {
    this.words = words;
    let slots = 64;
    while (slots < 2 * expected) slots *= 2;
    this.mask = slots - 1;
    this.table = new Int32Array(slots);
    this.hashes = new Int32Array(slots >>> 1);
    this.states = new Int32Array(slots >>> 1);
    this.pool = new Uint32Array((slots >>> 1) * words);
  }

  /** Inserts (bits, state); returns false if it was already present. */
  insert(bits: Uint32Array, state: number, zhash: number): boolean {
    const h = fmix32(zhash ^ Math.imul(state + 1, 0x9e3779b1));
    const words = this.words;
    let slot = h & this.mask;
    for (;;) {
      const e1 = this.table[slot]!;
      if (e1 === 0) break;
      const e = e1 - 1;
      if (this.hashes[e] === h && this.states[e] === state) {
        const base = e * words;
        let same = true;
        for (let w = 0; w < words; w++) {
          if (this.pool[base + w] !== bits[w]) {
            same = false;
            break;
          }
        }
        if (same) return false;
      }
      slot = (slot + 1) & this.mask;
    }
    const e = this.size;
    if (e >= this.hashes.length) {
      this.grow();
      return this.insert(bits, state, zhash);
    }
    this.hashes[e] = h;
    this.states[e] = state;
    this.pool.set(bits, e * words);
    this.table[slot] = e + 1;
    this.size = e + 1;
    return true;
  }

  /** Doubles capacity (load factor stays <= 1/2). */
  private grow(): void {
    const slots = this.table.length * 2;
    const cap = slots >>> 1;
    const hashes = new Int32Array(cap);
    hashes.set(this.hashes);
    const states = new Int32Array(cap);
    states.set(this.states);
    const pool = new Uint32Array(cap * this.words);
    pool.set(this.pool);
    const table = new Int32Array(slots);
    const mask = slots - 1;
    for (let e = 0; e < this.size; e++) {
      let slot = hashes[e]! & mask;
      while (table[slot] !== 0) slot = (slot + 1) & mask;
      table[slot] = e + 1;
    }
    this.hashes = hashes;
    this.states = states;
    this.pool = pool;
    this.table = table;
    this.mask = mask;
  }
}

function fmix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h | 0;
}

/** Deterministic per-op-index random words for incremental (Zobrist) hashing of the linearized set. */
let zobrist = new Int32Array(0);
let zobristSeed = 0x2545f491;
function zobristTable(n: number): Int32Array {
  if (zobrist.length < n) {
    const t = new Int32Array(Math.max(n, zobrist.length * 2, 64));
    t.set(zobrist);
    for (let i = zobrist.length; i < t.length; i++) {
      // splitmix32
      zobristSeed = (zobristSeed + 0x9e3779b9) | 0;
      let z = zobristSeed;
      z = Math.imul(z ^ (z >>> 16), 0x21f0aaad);
      z = Math.imul(z ^ (z >>> 15), 0x735a2d97);
      t[i] = z ^ (z >>> 15);
    }
    zobrist = t;
  }
  return zobrist;
}

// ---------------------------------------------------------------------------
// Formatting
// ---------------------------------------------------------------------------

function sortByCall(ops: Op[]): Op[] {
  return [...ops].sort((a, b) => a.call - b.call || a.id - b.id);
}

function fmtVal(v: string | null | undefined): string {
  if (v === undefined) return "?";
  return v === null ? "null" : JSON.stringify(v);
}

function shortOp(op: Op): string {
  return op.kind === "put" ? `#${op.id} put ${fmtVal(op.value)}` : `#${op.id} get->${fmtVal(op.value)}`;
}

function formatOps(key: string, sorted: Op[]): string {
  const lines = [`ops of key ${JSON.stringify(key)} by call time:`];
  for (const op of sorted) {
    const what = op.kind === "put" ? `put ${fmtVal(op.value)}` : `get -> ${fmtVal(op.value)}`;
    const span = `[${op.call}, ${op.ret === null ? "pending" : op.ret}]`;
    lines.push(`  #${op.id} client ${op.client} ${what.padEnd(24)} ${span}`);
  }
  return lines.join("\n");
}
