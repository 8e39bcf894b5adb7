// JSON bodies for the fuzzer as a small tree that can say what JSON.stringify cannot: raw text (numbers
// past 2^53, lone surrogates, duplicate keys), "big" values expanded only when sent (a string of 5 MB, a
// million levels of nesting) so a generated case stays small to hold and to print, and symbolic references
// (a node's id, the swarm's version) resolved against the live cluster when the case is sent, so a seed
// replays on a new cluster whose ids differ.

import fc from "fast-check";
import type { Ref } from "./refs.js";

export type J =
  | { k: "lit"; v: null | boolean | number | string }
  | { k: "arr"; items: J[] }
  | { k: "obj"; entries: [string, J][] }
  /** Text put in the body as it is. */
  | { k: "raw"; text: string }
  /** Expanded when sent: a long string, a long array, or deep nesting. */
  | { k: "big"; shape: BigShape; n: number }
  /** A value of the live cluster, as a JSON string (or number for versions). */
  | { k: "ref"; ref: Ref };

export type BigShape = "string" | "array" | "deepArray" | "deepObject" | "manyKeys" | "unicodeString";

/** A marker in a plain template: becomes a `ref` node. */
export interface RefMarker {
  $ref: Ref;
}

export const refOf = (ref: Ref): RefMarker => ({ $ref: ref });

/** A plain JS value (with RefMarkers) as a tree. */
export function j(v: unknown): J {
  if (v === null || typeof v === "boolean" || typeof v === "number" || typeof v === "string") return { k: "lit", v };
  if (Array.isArray(v)) return { k: "arr", items: v.map(j) };
  if (typeof v === "object") {
    const o = v as Record<string, unknown>;
    if ("$ref" in o) return { k: "ref", ref: o.$ref as Ref };
    return { k: "obj", entries: Object.entries(o).map(([key, val]) => [key, j(val)]) };
  }
  throw new Error(`j(): cannot represent ${typeof v}`);
}

// ---------------------------------------------------------------------------------------------------
// Serialization

export type Resolve = (ref: Ref) => string | number | boolean | null;

function expandBig(shape: BigShape, n: number): string {
  switch (shape) {
    case "string":
      return JSON.stringify("x".repeat(n));
    case "unicodeString":
      return JSON.stringify("\u00e9\u4e2d\u{1f600}".repeat(Math.ceil(n / 3)));
    case "array":
      return `[${"0,".repeat(Math.max(0, n - 1))}0]`;
    case "deepArray":
      return `${"[".repeat(n)}${"]".repeat(n)}`;
    case "deepObject":
      return `${'{"a":'.repeat(n)}"x"${"}".repeat(n)}`;
    case "manyKeys": {
      const parts: string[] = [];
      for (let i = 0; i < n; i++) parts.push(`"k${i}":"v"`);
      return `{${parts.join(",")}}`;
    }
  }
}

export function serialize(v: J, resolve: Resolve): string {
  switch (v.k) {
    case "lit":
      return JSON.stringify(v.v) ?? "null";
    case "arr":
      return `[${v.items.map((x) => serialize(x, resolve)).join(",")}]`;
    case "obj":
      return `{${v.entries.map(([key, val]) => `${JSON.stringify(key)}:${serialize(val, resolve)}`).join(",")}}`;
    case "raw":
      return v.text;
    case "big":
      return expandBig(v.shape, v.n);
    case "ref":
      return JSON.stringify(resolve(v.ref)) ?? "null";
  }
}

/** A short, printable form of a tree (big values and long strings abbreviated). */
export function show(v: J, max = 300): string {
  const s = showInner(v);
  return s.length > max ? `${s.slice(0, max)}…(${s.length} chars)` : s;
}

function showInner(v: J): string {
  switch (v.k) {
    case "lit": {
      const s = JSON.stringify(v.v) ?? "null";
      return s.length > 80 ? `${s.slice(0, 60)}…"(${s.length})` : s;
    }
    case "arr":
      return `[${v.items.map(showInner).join(",")}]`;
    case "obj":
      return `{${v.entries.map(([key, val]) => `${JSON.stringify(key).slice(0, 40)}:${showInner(val)}`).join(",")}}`;
    case "raw":
      return v.text.length > 60 ? `raw(${JSON.stringify(v.text.slice(0, 40))}…${v.text.length})` : `raw(${v.text})`;
    case "big":
      return `big(${v.shape},${v.n})`;
    case "ref":
      return `$${JSON.stringify(v.ref)}`;
  }
}

// ---------------------------------------------------------------------------------------------------
// Mutations: each names a node of the tree by its position in a depth-first walk (modulo the count), so
// a list of mutations applies the same way to the same template, and shrinks by dropping mutations.

export type Mutation =
  | { at: number; op: "replace"; with: J }
  | { at: number; op: "delete" }
  | { at: number; op: "addKey"; key: string; value: J }
  | { at: number; op: "dupKey"; value: J }
  | { at: number; op: "renameKey"; how: "lower" | "upper" | "suffix" | "empty" }
  | { at: number; op: "wrap"; in: "array" | "object" }
  | { at: number; op: "repeat"; n: number };

interface Slot {
  node: J;
  parent: J | undefined;
  /** Index in the parent's items or entries. */
  index: number;
}

function walk(root: J): Slot[] {
  const out: Slot[] = [];
  const visit = (node: J, parent: J | undefined, index: number) => {
    out.push({ node, parent, index });
    if (node.k === "arr") {
      for (const [i, c] of node.items.entries()) visit(c, node, i);
    } else if (node.k === "obj") {
      for (const [i, [, c]] of node.entries.entries()) visit(c, node, i);
    }
  };
  visit(root, undefined, 0);
  return out;
}

function setChild(parent: J, index: number, value: J): void {
  if (parent.k === "arr") parent.items[index] = value;
  else if (parent.k === "obj") parent.entries[index]![1] = value;
}

function nearestObject(slots: Slot[], at: number): J | undefined {
  const s = slots[at]!;
  if (s.node.k === "obj") return s.node;
  if (s.parent?.k === "obj") return s.parent;
  return slots.find((x) => x.node.k === "obj")?.node;
}

/**
 * The template with the mutations applied in order. Neither the template nor the mutations' values are
 * changed: a value is copied where it goes in (values may be shared constants, and a later mutation that
 * adds a key to a shared value would make a cycle, or change the constant for every later case).
 */
export function applyMutations(template: J, muts: Mutation[]): J {
  let root = structuredClone(template);
  for (const m of muts) root = applyOne(root, m);
  return root;
}

function applyOne(root: J, m: Mutation): J {
  const slots = walk(root);
  const at = m.at % slots.length;
  const s = slots[at]!;
  const replace = (value: J): J => {
    if (!s.parent) return value;
    setChild(s.parent, s.index, value);
    return root;
  };
  switch (m.op) {
    case "replace":
      return replace(structuredClone(m.with));
    case "delete":
      if (!s.parent) return { k: "obj", entries: [] };
      if (s.parent.k === "arr") s.parent.items.splice(s.index, 1);
      else if (s.parent.k === "obj") s.parent.entries.splice(s.index, 1);
      return root;
    case "addKey": {
      const o = nearestObject(slots, at);
      if (o?.k === "obj") o.entries.push([m.key, structuredClone(m.value)]);
      return root;
    }
    case "dupKey": {
      if (s.parent?.k !== "obj") return root;
      const key = s.parent.entries[s.index]![0];
      s.parent.entries.push([key, structuredClone(m.value)]);
      return root;
    }
    case "renameKey": {
      if (s.parent?.k !== "obj") return root;
      const e = s.parent.entries[s.index]!;
      e[0] =
        m.how === "lower"
          ? e[0].toLowerCase()
          : m.how === "upper"
            ? e[0].toUpperCase()
            : m.how === "empty"
              ? ""
              : `${e[0]}_`;
      return root;
    }
    case "wrap":
      return replace(m.in === "array" ? { k: "arr", items: [s.node] } : { k: "obj", entries: [["v", s.node]] });
    case "repeat":
      if (s.node.k === "arr" && s.node.items.length > 0) {
        const items = s.node.items;
        s.node.items = Array.from({ length: m.n }, (_, i) => structuredClone(items[i % items.length]!));
      }
      return root;
  }
}

// ---------------------------------------------------------------------------------------------------
// Arbitraries

/** `arb`'s value `percent`% of the time, else undefined. */
export function sometimes<T>(arb: fc.Arbitrary<T>, percent: number): fc.Arbitrary<T | undefined> {
  return fc.oneof({ arbitrary: fc.constant(undefined), weight: 100 - percent }, { arbitrary: arb, weight: percent });
}

/** A fraction in [0, 1) in thousandths (a double would be biased towards tiny values). */
export const arbFraction: fc.Arbitrary<number> = fc.integer({ min: 0, max: 999 }).map((n) => n / 1000);

const lit = (v: null | boolean | number | string): J => ({ k: "lit", v });
const raw = (text: string): J => ({ k: "raw", text });

/** Numbers JSON can carry that a parser may mishandle. */
const arbOddNumber: fc.Arbitrary<J> = fc.oneof(
  fc.constantFrom(
    lit(0),
    lit(-1),
    lit(1.5),
    lit(-0.000001),
    lit(2 ** 31),
    lit(2 ** 32),
    lit(2 ** 53),
    lit(-(2 ** 53)),
    lit(1e308),
    lit(Number.MAX_SAFE_INTEGER),
    raw("9007199254740993"),
    raw("18446744073709551615"),
    raw("18446744073709551616"),
    raw("-9223372036854775809"),
    raw("1e400"),
    raw("-1e400"),
    raw("1e-400"),
    raw("-0"),
    raw("0.0"),
    raw("1E2"),
    raw("00"),
    raw("+1"),
    raw(".5"),
    raw("NaN"),
    raw("Infinity"),
    raw("0x10"),
  ),
  fc.integer().map(lit),
  fc.double({ noNaN: true, noDefaultInfinity: true }).map(lit),
);

/** Strings that names, ids and addresses rarely expect. */
const arbOddString: fc.Arbitrary<J> = fc.oneof(
  fc.constantFrom(
    lit(""),
    lit(" "),
    lit("\u0000"),
    lit("a\u0000b"),
    lit("\n"),
    lit("\t x"),
    lit("\u202e\u200b\ufeff"),
    lit("\u{1f600}"),
    lit("../../etc/passwd"),
    lit("a/b"),
    lit("%00"),
    lit("%2F"),
    lit("self"),
    lit("host"),
    lit("ingress"),
    lit("bridge"),
    lit("overlay"),
    lit("manager"),
    lit("worker"),
    lit("drain"),
    lit("Manager"),
    lit("true"),
    lit("0"),
    lit("-1"),
    lit("9007199254740993"),
    lit("null"),
    lit("{}"),
    lit("0.0.0.0:2377"),
    lit("127.0.0.1:0"),
    lit("[::1]:2377"),
    lit("10.0.0.0/8"),
    lit("10.255.0.0/33"),
    lit("255.255.255.255"),
    lit("224.0.0.1"),
    lit("::"),
    lit("SWMTKN-1-"),
    lit("__proto__"),
    lit("constructor"),
    raw('"\\ud800"'),
    raw('"\\udfff\\ud800"'),
    raw('"\\u0000"'),
    raw('"\\x41"'),
    raw('"unterminated'),
  ),
  fc.string({ unit: "grapheme", maxLength: 40 }).map(lit),
  fc.string({ unit: "binary", maxLength: 40 }).map(lit),
  fc.string({ unit: "grapheme-ascii", minLength: 1, maxLength: 300 }).map(lit),
);

const arbBig: fc.Arbitrary<J> = fc.oneof(
  {
    arbitrary: fc.record({
      k: fc.constant("big" as const),
      shape: fc.constantFrom<BigShape>("string", "unicodeString", "array", "manyKeys"),
      n: fc.constantFrom(256, 1024, 4097, 16_385, 65_537, 300_000),
    }),
    weight: 6,
  },
  {
    arbitrary: fc.record({
      k: fc.constant("big" as const),
      shape: fc.constantFrom<BigShape>("deepArray", "deepObject"),
      n: fc.constantFrom(64, 1000, 10_000, 100_000, 600_000),
    }),
    weight: 4,
  },
  {
    // Past the body limit (4 MiB), now and then.
    arbitrary: fc.record({
      k: fc.constant("big" as const),
      shape: fc.constantFrom<BigShape>("string", "array"),
      n: fc.constant(5_000_000),
    }),
    weight: 1,
  },
);

/** Objects that reach for the prototype, and maps with values of the wrong type. */
const arbOddObject: fc.Arbitrary<J> = fc.constantFrom(
  j({}),
  j({ a: 1 }),
  j({ a: null }),
  j({ a: { b: "c" } }),
  j({ a: ["b"] }),
  j({ "": "" }),
  j(["a=b"]),
  raw('{"__proto__":{"polluted":"yes"}}'),
  raw('{"constructor":{"prototype":{"polluted":"yes"}}}'),
  raw('{"toString":"x","hasOwnProperty":1,"valueOf":null}'),
  raw('{"a":"1","a":2}'),
);

export const arbWeird: fc.Arbitrary<J> = fc.oneof(
  { arbitrary: fc.constantFrom(lit(null), lit(true), lit(false), j([]), j({})), weight: 4 },
  { arbitrary: arbOddNumber, weight: 4 },
  { arbitrary: arbOddString, weight: 5 },
  { arbitrary: arbOddObject, weight: 2 },
  { arbitrary: arbBig, weight: 1 },
  { arbitrary: fc.jsonValue({ maxDepth: 3 }).map((v) => j(v)), weight: 2 },
);

/** Keys worth adding: unknown ones, case variants of known ones, and ones that reach for the prototype. */
export const arbKey: fc.Arbitrary<string> = fc.oneof(
  fc.constantFrom(
    "Junk",
    "__proto__",
    "constructor",
    "prototype",
    "name",
    "NAME",
    "Labels",
    "Spec",
    "Role",
    "Availability",
    "Driver",
    "IPAM",
    "Options",
    "Attachable",
    "Internal",
    "Ingress",
    "Scope",
    "ConfigFrom",
    "Container",
    "EndpointConfig",
    "Version",
    "ID",
    "Id",
    "",
  ),
  fc.string({ maxLength: 12 }),
);

export const arbMutation: fc.Arbitrary<Mutation> = fc.oneof(
  { arbitrary: fc.record({ at: fc.nat(), op: fc.constant("replace" as const), with: arbWeird }), weight: 8 },
  { arbitrary: fc.record({ at: fc.nat(), op: fc.constant("delete" as const) }), weight: 3 },
  {
    arbitrary: fc.record({ at: fc.nat(), op: fc.constant("addKey" as const), key: arbKey, value: arbWeird }),
    weight: 3,
  },
  { arbitrary: fc.record({ at: fc.nat(), op: fc.constant("dupKey" as const), value: arbWeird }), weight: 1 },
  {
    arbitrary: fc.record({
      at: fc.nat(),
      op: fc.constant("renameKey" as const),
      how: fc.constantFrom("lower" as const, "upper" as const, "suffix" as const, "empty" as const),
    }),
    weight: 1,
  },
  {
    arbitrary: fc.record({
      at: fc.nat(),
      op: fc.constant("wrap" as const),
      in: fc.constantFrom("array" as const, "object" as const),
    }),
    weight: 1,
  },
  {
    arbitrary: fc.record({ at: fc.nat(), op: fc.constant("repeat" as const), n: fc.constantFrom(2, 100, 5000) }),
    weight: 1,
  },
);
