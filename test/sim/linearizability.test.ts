import { describe, expect, it } from "vitest";
import { checkLinearizable, type LinResult, type Op } from "./linearizability.js";

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

let nextId = 1;
function put(client: number, key: string, value: string, call: number, ret: number | null): Op {
  return { id: nextId++, client, key, kind: "put", value, call, ret };
}
function get(client: number, key: string, value: string | null | undefined, call: number, ret: number | null): Op {
  return { id: nextId++, client, key, kind: "get", value, call, ret };
}

function expectOk(r: LinResult): void {
  if (!r.ok) throw new Error(`expected linearizable, got:\n${r.message}`);
}
function expectBad(r: LinResult, key = "k"): Extract<LinResult, { ok: false }> {
  if (r.ok) throw new Error("expected a linearizability violation, checker said ok");
  expect(r.key).toBe(key);
  expect(r.message).toContain(JSON.stringify(key));
  return r;
}

/** Deterministic PRNG (mulberry32). */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

interface GenOpts {
  clients: number;
  keys: number;
  ops: number;
  /** Max op duration relative to max think time between a client's ops. */
  maxDur: number;
  maxGap: number;
  pendingProb: number;
  putProb: number;
}

/**
 * A linearizable history by construction: each client issues ops back to back
 * with random durations; every op takes effect at a random point inside its
 * interval on an atomic register (pending ops: somewhere after the call, or
 * never for a put). Get values come from replaying the effects in order of
 * their linearization points. Integer times, so ties occur often.
 */
function genLinearizable(seed: number, o: GenOpts): Op[] {
  const r = rng(seed);
  const ri = (n: number) => Math.floor(r() * n);
  const ops: (Op & { lp: number })[] = [];
  const clock = new Array<number>(o.clients).fill(0);
  let id = 0;
  let vcount = 0;
  for (let k = 0; k < o.ops; k++) {
    const c = ri(o.clients);
    const call = clock[c]! + ri(o.maxGap);
    const dur = ri(o.maxDur + 1);
    const pending = r() < o.pendingProb;
    const key = `k${ri(o.keys)}`;
    const isPut = r() < o.putProb;
    // Linearization point in [call, ret] (pending: [call, call + 3*maxDur], or never for a put).
    let lp = call + r() * (pending ? 3 * o.maxDur + 1 : dur);
    if (pending && isPut && r() < 0.4) lp = Number.POSITIVE_INFINITY;
    ops.push({
      id: id++,
      client: c,
      key,
      kind: isPut ? "put" : "get",
      value: isPut ? `v${vcount++}` : null,
      call,
      ret: pending ? null : call + dur,
      lp,
    });
    // A client that gave up moves on; the old op may still take effect later.
    clock[c] = call + dur + 1;
  }
  const reg = new Map<string, string | null>();
  for (const op of [...ops].sort((a, b) => a.lp - b.lp)) {
    if (op.lp === Number.POSITIVE_INFINITY) continue;
    if (op.kind === "put") reg.set(op.key, op.value as string);
    else op.value = op.ret === null ? undefined : (reg.get(op.key) ?? null);
  }
  return ops.map(({ lp: _lp, ...op }) => op);
}

/** Exhaustive reference checker for tiny histories: tries every order of every admissible subset. */
function bruteForce(history: Op[], initial: string | null = null): boolean {
  const keys = new Set(history.map((o) => o.key));
  for (const key of keys) {
    const ops = history.filter((o) => o.key === key && !(o.kind === "get" && o.ret === null));
    const used = new Array<boolean>(ops.length).fill(false);
    const seq: Op[] = [];
    const search = (): boolean => {
      // Done if every completed op is placed (pending puts may be omitted).
      if (ops.every((o, i) => used[i] || o.ret === null)) {
        let v = initial;
        for (const o of seq) {
          if (o.kind === "put") v = o.value as string;
          else if (o.value !== v) return false;
        }
        return true;
      }
      for (let i = 0; i < ops.length; i++) {
        if (used[i]) continue;
        const o = ops[i]!;
        // Real time: o may come next only if no unplaced op returned before o was called.
        if (ops.some((p, j) => !used[j] && j !== i && p.ret !== null && p.ret < o.call)) continue;
        used[i] = true;
        seq.push(o);
        const ok = search();
        seq.pop();
        used[i] = false;
        if (ok) return true;
      }
      return false;
    };
    if (!search()) return false;
  }
  return true;
}

// ---------------------------------------------------------------------------
// Hand-written cases
// ---------------------------------------------------------------------------

describe("checkLinearizable: basics", () => {
  it("accepts the empty history", () => {
    expectOk(checkLinearizable([]));
  });

  it("accepts a sequential history", () => {
    expectOk(
      checkLinearizable([
        get(1, "k", null, 0, 1),
        put(1, "k", "a", 2, 3),
        get(2, "k", "a", 4, 5),
        put(2, "k", "b", 6, 7),
        get(1, "k", "b", 8, 9),
      ]),
    );
  });

  it("rejects a stale read after the newer put returned", () => {
    const r = expectBad(checkLinearizable([put(1, "k", "a", 0, 1), put(2, "k", "b", 2, 3), get(3, "k", "a", 4, 5)]));
    expect(r.ops.map((o) => o.call)).toEqual([0, 2, 4]);
    expect(r.message).toMatch(/put "a"/);
    expect(r.message).toMatch(/get -> "a"/);
  });

  it("reports ops sorted by call time", () => {
    const ops = [get(3, "k", "a", 4, 5), put(2, "k", "b", 2, 3), put(1, "k", "a", 0, 1)];
    const r = expectBad(checkLinearizable(ops));
    expect(r.ops.map((o) => o.call)).toEqual([0, 2, 4]);
    const m = r.message;
    expect(m.indexOf(`#${ops[2]!.id} `)).toBeLessThan(m.lastIndexOf(`#${ops[1]!.id} `));
    expect(m.lastIndexOf(`#${ops[1]!.id} `)).toBeLessThan(m.lastIndexOf(`#${ops[0]!.id} `));
  });

  it("accepts either value for a get concurrent with a put", () => {
    for (const seen of ["a", "b"]) {
      expectOk(checkLinearizable([put(1, "k", "a", 0, 1), put(2, "k", "b", 2, 10), get(3, "k", seen, 3, 5)]));
    }
    // ...but not a value that was overwritten before the get began.
    expectBad(checkLinearizable([put(1, "k", "a", 0, 1), put(2, "k", "b", 2, 10), get(3, "k", null, 3, 5)]));
  });

  it("rejects two concurrent reads that disagree with a single order", () => {
    // r1 sees b then r2 (strictly later) sees a again, while put b overlaps both.
    expectBad(
      checkLinearizable([
        put(1, "k", "a", 0, 1),
        put(2, "k", "b", 2, 20),
        get(3, "k", "b", 3, 5),
        get(4, "k", "a", 6, 8),
      ]),
    );
  });

  it("rejects a get returning a value never written", () => {
    const r = expectBad(checkLinearizable([put(1, "k", "a", 0, 1), get(2, "k", "zzz", 2, 3)]));
    expect(r.message).toContain('"zzz"');
  });

  it("rejects reading a value before its put was invoked", () => {
    expectBad(checkLinearizable([get(1, "k", "a", 0, 1), put(2, "k", "a", 2, 3)]));
  });

  it("treats equal ret/call times as concurrent, strictly smaller as ordered", () => {
    expectOk(checkLinearizable([put(1, "k", "a", 0, 5), get(2, "k", null, 5, 6)]));
    expectBad(checkLinearizable([put(1, "k", "a", 0, 5), get(2, "k", null, 6, 7)]));
  });

  it("honours opts.initial", () => {
    expectOk(checkLinearizable([get(1, "k", "init", 0, 1)], { initial: "init" }));
    expectBad(checkLinearizable([get(1, "k", null, 0, 1)], { initial: "init" }));
    expectBad(checkLinearizable([get(1, "k", "init", 0, 1)]));
  });

  it("rejects malformed input loudly", () => {
    expect(() => checkLinearizable([put(1, "k", "a", 5, 4)])).toThrow(/ret/);
    const a = put(1, "k", "a", 0, 1);
    expect(() => checkLinearizable([a, { ...a }])).toThrow(/duplicate/);
    expect(() => checkLinearizable([get(1, "k", undefined, 0, 1)])).toThrow(/undefined/);
  });
});

describe("checkLinearizable: pending ops", () => {
  it("accepts a pending put whose value is observed later", () => {
    expectOk(checkLinearizable([put(1, "k", "a", 0, 1), put(2, "k", "x", 2, null), get(3, "k", "x", 50, 51)]));
  });

  it("accepts a pending put that is never observed", () => {
    expectOk(
      checkLinearizable([
        put(1, "k", "a", 0, 1),
        put(2, "k", "x", 2, null),
        get(3, "k", "a", 50, 51),
        get(3, "k", "a", 60, 61),
      ]),
    );
  });

  it("rejects a -> x(pending) -> a", () => {
    expectBad(
      checkLinearizable([
        put(1, "k", "a", 0, 1),
        put(2, "k", "x", 2, null),
        get(3, "k", "x", 10, 11),
        get(3, "k", "a", 12, 13),
      ]),
    );
  });

  it("accepts a pending put observed only after a later put (it took effect late)", () => {
    // put x is pending from t=2; put b completes; then x shows up: x took effect after b.
    expectOk(
      checkLinearizable([
        put(1, "k", "a", 0, 1),
        put(2, "k", "x", 2, null),
        put(1, "k", "b", 3, 4),
        get(3, "k", "b", 5, 6),
        get(3, "k", "x", 7, 8),
        get(4, "k", "x", 9, 10),
      ]),
    );
  });

  it("rejects observing a pending put before it was invoked", () => {
    expectBad(checkLinearizable([get(1, "k", "x", 0, 1), put(2, "k", "x", 2, null)]));
  });

  it("drops gets that never returned", () => {
    expectOk(checkLinearizable([put(1, "k", "a", 0, 1), get(2, "k", undefined, 2, null), get(3, "k", "a", 3, 4)]));
  });

  it("does not rely on unique values", () => {
    // x is written twice; the second (pending) write must take effect after b, i.e. after the
    // first read of x returned. Assuming uniqueness would wrongly reject this.
    expectOk(
      checkLinearizable([
        put(1, "k", "x", 0, 1),
        put(2, "k", "x", 2, null),
        get(3, "k", "x", 3, 4),
        put(1, "k", "b", 5, 6),
        get(3, "k", "x", 7, 8),
      ]),
    );
    // Same, but the second x is a completed put that finished before b: now invalid.
    expectBad(
      checkLinearizable([
        put(1, "k", "x", 0, 1),
        put(2, "k", "x", 2, 3),
        get(3, "k", "x", 3, 4),
        put(1, "k", "b", 5, 6),
        get(3, "k", "x", 7, 8),
      ]),
    );
    // Writing the initial value explicitly.
    expectOk(
      checkLinearizable([put(1, "k", "a", 0, 1), put(2, "k", "i", 2, null), get(3, "k", "i", 3, 4)], {
        initial: "i",
      }),
    );
  });
});

describe("checkLinearizable: keys", () => {
  it("checks keys independently", () => {
    expectOk(
      checkLinearizable([
        put(1, "k1", "a", 0, 1),
        put(1, "k2", "b", 2, 3),
        get(2, "k1", "a", 4, 5),
        get(2, "k2", "b", 4, 5),
        get(2, "k3", null, 4, 5),
      ]),
    );
    // A value from another key is not visible.
    expectBad(checkLinearizable([put(1, "k1", "a", 0, 1), get(2, "k2", "a", 4, 5)]), "k2");
    // A stale read on k2 is reported for k2 even though k1 is fine.
    const r = expectBad(
      checkLinearizable([
        put(1, "k1", "a", 0, 1),
        get(2, "k1", "a", 2, 3),
        put(1, "k2", "a", 0, 1),
        put(1, "k2", "b", 2, 3),
        get(2, "k2", "a", 4, 5),
      ]),
      "k2",
    );
    expect(r.ops.every((o) => o.key === "k2")).toBe(true);
  });
});

describe("checkLinearizable: state-space guard", () => {
  it("throws rather than silently passing when maxStates is exceeded", () => {
    // 16 mutually concurrent puts followed by reads that no order satisfies (b then a, both after all puts).
    const ops: Op[] = [];
    for (let i = 0; i < 16; i++) ops.push(put(i, "k", `v${i}`, 0, 10));
    ops.push(get(20, "k", "v0", 11, 12), get(20, "k", "v1", 13, 14));
    expect(() => checkLinearizable(ops, { maxStates: 1000 })).toThrow(/exceeded 1000 states for key "k"/);
  });
});

// ---------------------------------------------------------------------------
// Randomized
// ---------------------------------------------------------------------------

const MID: GenOpts = { clients: 4, keys: 2, ops: 40, maxDur: 6, maxGap: 4, pendingProb: 0.1, putProb: 0.5 };

describe("checkLinearizable: randomized", () => {
  it("accepts 200 random linearizable histories and flags obviously invalid mutations", () => {
    let flagged = 0;
    for (let seed = 1; seed <= 200; seed++) {
      const h = genLinearizable(seed, MID);
      const r = checkLinearizable(h);
      if (!r.ok) throw new Error(`seed ${seed}: ${r.message}`);

      // Mutation: make a completed get read the value of a put that is certainly not
      // visible to it: a put invoked after the get returned, or a completed put P
      // followed (strictly, in real time) by another completed put Q of the key
      // that returned before the get was invoked.
      const rand = rng(seed * 7919);
      const gets = h.filter((o) => o.kind === "get" && o.ret !== null);
      const candidates: [Op, string][] = [];
      for (const g of gets) {
        const puts = h.filter((o) => o.kind === "put" && o.key === g.key);
        for (const p of puts) {
          if (p.value === g.value) continue;
          const future = p.call > (g.ret as number);
          const overwritten =
            p.ret !== null && puts.some((q) => q !== p && q.ret !== null && p.ret! < q.call && q.ret < g.call);
          if (future || overwritten) candidates.push([g, p.value as string]);
        }
      }
      if (candidates.length === 0) continue;
      const [g, v] = candidates[Math.floor(rand() * candidates.length)]!;
      const mutated = h.map((o) => (o === g ? { ...o, value: v } : o));
      const m = checkLinearizable(mutated);
      if (m.ok) throw new Error(`seed ${seed}: mutation of get #${g.id} to ${v} not flagged`);
      expect(m.key).toBe(g.key);
      flagged++;
    }
    expect(flagged).toBeGreaterThan(150);
  });

  it("agrees with a brute-force checker on small random (mostly invalid) histories", () => {
    let bad = 0;
    for (let seed = 1; seed <= 600; seed++) {
      const r = rng(seed);
      const ri = (n: number) => Math.floor(r() * n);
      const n = 3 + ri(5);
      const vals = ["a", "b", "c"]; // deliberately reused values
      const h: Op[] = [];
      for (let i = 0; i < n; i++) {
        const call = ri(10);
        const pending = r() < 0.2;
        const ret = pending ? null : call + ri(5);
        const key = r() < 0.8 ? "k" : "j";
        if (r() < 0.5) h.push({ id: i, client: i, key, kind: "put", value: vals[ri(3)]!, call, ret });
        else {
          const v = r() < 0.25 ? null : vals[ri(3)]!;
          h.push({ id: i, client: i, key, kind: "get", value: pending ? undefined : v, call, ret });
        }
      }
      const expected = bruteForce(h);
      const got = checkLinearizable(h).ok;
      if (got !== expected) {
        throw new Error(`seed ${seed}: checker=${got} brute=${expected}\n${JSON.stringify(h)}`);
      }
      if (!expected) bad++;
    }
    // Make sure both outcomes were exercised.
    expect(bad).toBeGreaterThan(50);
    expect(bad).toBeLessThan(550);
  });

  it("agrees with brute force on small generated histories with single-value mutations", () => {
    for (let seed = 1; seed <= 300; seed++) {
      const h = genLinearizable(seed, { ...MID, ops: 7, keys: 1, pendingProb: 0.25 });
      expect(bruteForce(h)).toBe(true);
      expectOk(checkLinearizable(h));
      const r = rng(seed);
      const gets = h.filter((o) => o.kind === "get" && o.ret !== null);
      const puts = h.filter((o) => o.kind === "put");
      if (gets.length === 0) continue;
      const g = gets[Math.floor(r() * gets.length)]!;
      const choices: (string | null)[] = [null, ...puts.map((p) => p.value as string)];
      const v = choices[Math.floor(r() * choices.length)]!;
      const mutated = h.map((o) => (o === g ? { ...o, value: v } : o));
      expect(checkLinearizable(mutated).ok).toBe(bruteForce(mutated));
    }
  });
});

// ---------------------------------------------------------------------------
// Performance
// ---------------------------------------------------------------------------

describe("checkLinearizable: performance", () => {
  const HEAVY: GenOpts = { clients: 8, keys: 4, ops: 400, maxDur: 40, maxGap: 3, pendingProb: 0.05, putProb: 0.5 };

  it("checks a 400-op, 8-client, 4-key heavily concurrent history quickly", () => {
    const h = genLinearizable(42, HEAVY);
    const t0 = performance.now();
    expectOk(checkLinearizable(h));
    const dt = performance.now() - t0;
    expect(dt).toBeLessThan(200);
  });

  it("handles 400 write-heavy ops on a single key with 8 overlapping clients", () => {
    const h = genLinearizable(7, {
      clients: 8,
      keys: 1,
      ops: 400,
      maxDur: 60,
      maxGap: 1,
      pendingProb: 0.1,
      putProb: 0.9,
    });
    const t0 = performance.now();
    expectOk(checkLinearizable(h));
    expect(performance.now() - t0).toBeLessThan(500);
  });

  it("stays fast across many seeds, valid and invalid", () => {
    const histories = Array.from({ length: 100 }, (_, s) => genLinearizable(1000 + s, HEAVY));
    const t0 = performance.now();
    for (const h of histories) expectOk(checkLinearizable(h));
    // Invalid variant: a late get re-reads the very first value written to k0.
    let flagged = 0;
    for (const h of histories) {
      const first = h.find((o) => o.kind === "put" && o.key === "k0" && o.ret !== null);
      const lastRet = Math.max(...h.map((o) => o.ret ?? o.call));
      if (first === undefined) continue;
      const bad: Op[] = [
        ...h,
        { id: 1_000_000, client: 99, key: "k0", kind: "put", value: "fresh", call: lastRet + 1, ret: lastRet + 2 },
        { id: 1_000_001, client: 99, key: "k0", kind: "get", value: first.value, call: lastRet + 3, ret: lastRet + 4 },
      ];
      if (!checkLinearizable(bad).ok) flagged++;
    }
    const dt = performance.now() - t0;
    expect(flagged).toBe(100);
    expect(dt).toBeLessThan(2000);
  });
});
