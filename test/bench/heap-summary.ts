// What holds a V8 heap: a summary of a .heapsnapshot (Chrome DevTools' format), for snapshots too large to
// open in DevTools on this machine (the file is read as bytes, not as one JSON string).
//
//   node dist/test/bench/heap-summary.js FILE.heapsnapshot [--top 30] [--per N]
//
// Prints, per class (an object's constructor, or "(string)", "(closure) name", "(array)", ...): count, self
// size, and retained size (the sum of the retained sizes of its objects that no object of the same class
// dominates, as DevTools' Summary view). `--per N` adds bytes per N (the number of nodes of the swarm).
// Then the largest single retainers with their dominator chains, and the strings that repeat most by bytes
// (grouped by their first 48 characters: one JSON text kept per session shows as one group).

import { readFileSync } from "node:fs";

interface Meta {
  node_fields: string[];
  node_types: [string[], ...string[]];
  edge_fields: string[];
  edge_types: [string[], ...string[]];
}

export interface Snapshot {
  meta: Meta;
  nodes: Uint32Array;
  edges: Uint32Array;
  strings: string[];
}

function findBytes(buf: Buffer, text: string, from = 0): number {
  const at = buf.indexOf(text, from, "latin1");
  if (at < 0) throw new Error(`not a heap snapshot: no ${text}`);
  return at;
}

/** The integers of the JSON array that starts at `at` (its "["). */
function intArray(buf: Buffer, at: number): { values: Uint32Array; end: number } {
  let cap = 1 << 20;
  let out = new Uint32Array(cap);
  let n = 0;
  let cur = 0;
  let inNum = false;
  let i = at + 1;
  for (; i < buf.length; i++) {
    const c = buf[i]!;
    if (c >= 48 && c <= 57) {
      cur = cur * 10 + (c - 48);
      inNum = true;
      continue;
    }
    if (inNum) {
      if (n === cap) {
        cap *= 2;
        const next = new Uint32Array(cap);
        next.set(out);
        out = next;
      }
      out[n++] = cur;
      cur = 0;
      inNum = false;
    }
    if (c === 93) break; // ]
  }
  return { values: out.subarray(0, n), end: i };
}

function stringArray(buf: Buffer, at: number): string[] {
  const out: string[] = [];
  let i = at + 1;
  for (;;) {
    while (buf[i] !== 34 && buf[i] !== 93) i++; // " or ]
    if (buf[i] === 93) return out;
    let j = i + 1;
    while (buf[j] !== 34) j += buf[j] === 92 ? 2 : 1; // skip escapes
    out.push(JSON.parse(buf.toString("utf8", i, j + 1)) as string);
    i = j + 1;
  }
}

export function readSnapshot(file: string): Snapshot {
  const buf = readFileSync(file);
  const nodesAt = findBytes(buf, '"nodes":');
  const head = JSON.parse(`${buf.toString("utf8", 0, buf.lastIndexOf(",", nodesAt))}}`) as {
    snapshot: { meta: Meta };
  };
  const nodes = intArray(buf, findBytes(buf, "[", nodesAt));
  const edgesAt = findBytes(buf, '"edges":', nodes.end);
  const edges = intArray(buf, findBytes(buf, "[", edgesAt));
  const stringsAt = findBytes(buf, '"strings":', edges.end);
  const strings = stringArray(buf, findBytes(buf, "[", stringsAt));
  return { meta: head.snapshot.meta, nodes: nodes.values, edges: edges.values, strings };
}

export interface Analysis {
  count: number;
  className: (i: number) => string;
  selfSize: Float64Array;
  retained: Float64Array;
  dominator: Int32Array;
  /** Retained size per class, not counting objects dominated by one of their own class. */
  classes: Map<string, { count: number; self: number; retained: number }>;
}

export function analyse(s: Snapshot): Analysis {
  const nf = s.meta.node_fields.length;
  const ef = s.meta.edge_fields.length;
  const nType = s.meta.node_fields.indexOf("type");
  const nName = s.meta.node_fields.indexOf("name");
  const nSelf = s.meta.node_fields.indexOf("self_size");
  const nEdges = s.meta.node_fields.indexOf("edge_count");
  const eType = s.meta.edge_fields.indexOf("type");
  const eTo = s.meta.edge_fields.indexOf("to_node");
  const nodeTypes = s.meta.node_types[0];
  const edgeTypes = s.meta.edge_types[0];
  const weak = edgeTypes.indexOf("weak");
  const shortcut = edgeTypes.indexOf("shortcut");
  const count = s.nodes.length / nf;

  const firstEdge = new Uint32Array(count + 1);
  for (let i = 0, e = 0; i < count; i++) {
    firstEdge[i] = e;
    e += s.nodes[i * nf + nEdges]! * ef;
  }
  firstEdge[count] = s.edges.length;
  const selfSize = new Float64Array(count);
  for (let i = 0; i < count; i++) selfSize[i] = s.nodes[i * nf + nSelf]!;
  const strong = (e: number) => {
    const t = s.edges[e + eType]!;
    return t !== weak && t !== shortcut;
  };

  // Post order from the root (node 0), iteratively.
  const order = new Int32Array(count).fill(-1); // post-order number
  const byOrder = new Int32Array(count);
  const stackNode = new Int32Array(count);
  const stackEdge = new Uint32Array(count);
  const seen = new Uint8Array(count);
  let sp = 0;
  let post = 0;
  stackNode[0] = 0;
  stackEdge[0] = firstEdge[0]!;
  seen[0] = 1;
  sp = 1;
  while (sp > 0) {
    const v = stackNode[sp - 1]!;
    const e = stackEdge[sp - 1]!;
    if (e < firstEdge[v + 1]!) {
      stackEdge[sp - 1] = e + ef;
      if (!strong(e)) continue;
      const w = s.edges[e + eTo]! / nf;
      if (seen[w]) continue;
      seen[w] = 1;
      stackNode[sp] = w;
      stackEdge[sp] = firstEdge[w]!;
      sp++;
    } else {
      sp--;
      order[v] = post;
      byOrder[post++] = v;
    }
  }

  // Predecessors (strong edges among reachable nodes), CSR.
  const predCount = new Uint32Array(count + 1);
  for (let v = 0; v < count; v++) {
    if (order[v]! < 0) continue;
    for (let e = firstEdge[v]!; e < firstEdge[v + 1]!; e += ef) {
      if (strong(e)) predCount[s.edges[e + eTo]! / nf]!++;
    }
  }
  const predStart = new Uint32Array(count + 1);
  for (let v = 0; v < count; v++) predStart[v + 1] = predStart[v]! + predCount[v]!;
  const preds = new Int32Array(predStart[count]!);
  const fill = predStart.slice(0, count);
  for (let v = 0; v < count; v++) {
    if (order[v]! < 0) continue;
    for (let e = firstEdge[v]!; e < firstEdge[v + 1]!; e += ef) {
      if (strong(e)) preds[fill[s.edges[e + eTo]! / nf]!++] = v;
    }
  }

  // Dominators (Cooper, Harvey, Kennedy), on post-order numbers.
  const dom = new Int32Array(post).fill(-1);
  const root = order[0]!;
  dom[root] = root;
  for (let changed = true; changed; ) {
    changed = false;
    for (let k = post - 2; k >= 0; k--) {
      const v = byOrder[k]!;
      let idom = -1;
      for (let p = predStart[v]!; p < predStart[v + 1]!; p++) {
        let b = order[preds[p]!]!;
        if (b < 0 || dom[b] === -1) continue;
        if (idom === -1) {
          idom = b;
          continue;
        }
        let a = idom;
        while (a !== b) {
          while (a < b) a = dom[a]!;
          while (b < a) b = dom[b]!;
        }
        idom = a;
      }
      if (idom !== -1 && dom[k] !== idom) {
        dom[k] = idom;
        changed = true;
      }
    }
  }
  const dominator = new Int32Array(count).fill(-1);
  const retained = new Float64Array(count);
  for (let k = 0; k < post; k++) retained[byOrder[k]!] = selfSize[byOrder[k]!]!;
  for (let k = 0; k < post; k++) {
    const v = byOrder[k]!;
    if (k === root) continue;
    const d = byOrder[dom[k]!]!;
    dominator[v] = d;
    retained[d]! += retained[v]!; // children come before their dominator in post order
  }

  const className = (i: number): string => {
    const type = nodeTypes[s.nodes[i * nf + nType]!]!;
    const name = s.strings[s.nodes[i * nf + nName]!]!;
    if (type === "object" || type === "native") return name;
    if (type === "closure") return `(closure) ${name}`;
    return `(${type})`;
  };
  const classes = new Map<string, { count: number; self: number; retained: number }>();
  for (let v = 0; v < count; v++) {
    if (order[v]! < 0) continue;
    const c = className(v);
    let agg = classes.get(c);
    if (!agg) classes.set(c, (agg = { count: 0, self: 0, retained: 0 }));
    agg.count++;
    agg.self += selfSize[v]!;
    let d = dominator[v]!;
    let nested = false;
    for (let hops = 0; d >= 0 && hops < 64; hops++, d = dominator[d]!) {
      if (className(d) === c) {
        nested = true;
        break;
      }
    }
    if (!nested) agg.retained += retained[v]!;
  }
  return { count, className, selfSize, retained, dominator, classes };
}

function main(): void {
  const args = process.argv.slice(2);
  const file = args.find((a) => !a.startsWith("--"));
  if (!file) {
    console.error("usage: node dist/test/bench/heap-summary.js FILE.heapsnapshot [--top 30] [--per N]");
    process.exit(2);
  }
  const opt = (name: string, d: number) => {
    const i = args.indexOf(name);
    return i >= 0 ? Number(args[i + 1]) : d;
  };
  const top = opt("--top", 30);
  const per = opt("--per", 0);
  const s = readSnapshot(file);
  const a = analyse(s);
  const mb = (x: number) => `${(x / 2 ** 20).toFixed(1).padStart(8)} MiB`;
  const perN = (x: number) => (per > 0 ? `${(x / per / 1024).toFixed(1).padStart(8)} KiB/N` : "");
  const total = a.retained[0]!;
  console.log(`${a.count} objects, ${mb(total)} reachable${per > 0 ? `, ${perN(total)}` : ""}`);
  console.log("\nby retained size (class: count, self, retained):");
  const rows = [...a.classes.entries()].sort((x, y) => y[1].retained - x[1].retained).slice(0, top);
  for (const [c, v] of rows) {
    console.log(
      `${String(v.count).padStart(9)} ${mb(v.self)} ${mb(v.retained)} ${perN(v.retained)}  ${c.slice(0, 80)}`,
    );
  }
  console.log("\nby self size:");
  for (const [c, v] of [...a.classes.entries()].sort((x, y) => y[1].self - x[1].self).slice(0, top)) {
    console.log(`${String(v.count).padStart(9)} ${mb(v.self)} ${perN(v.self)}  ${c.slice(0, 80)}`);
  }
  // The largest retainers that are not just the root's chain: objects retaining >= 1 % of the heap whose
  // children each retain less than half of them.
  console.log("\nlargest retainers (retained, class, dominator chain):");
  const big: number[] = [];
  for (let v = 1; v < a.count; v++) if (a.retained[v]! >= total / 100) big.push(v);
  const hasBigChild = new Set<number>();
  for (const v of big) {
    const d = a.dominator[v]!;
    if (d >= 0 && a.retained[v]! >= a.retained[d]! / 2) hasBigChild.add(d);
  }
  for (const v of big.filter((x) => !hasBigChild.has(x)).sort((x, y) => a.retained[y]! - a.retained[x]!)) {
    const chain: string[] = [];
    for (let d = a.dominator[v]!, hops = 0; d > 0 && hops < 8; d = a.dominator[d]!, hops++) chain.push(a.className(d));
    console.log(`${mb(a.retained[v]!)}  ${a.className(v)}  <- ${chain.join(" <- ")}`);
  }
  // One class in detail: its largest instances and what dominates them.
  const detail = args.indexOf("--class");
  if (detail >= 0) {
    const c = args[detail + 1] ?? "";
    const xs: number[] = [];
    for (let v = 0; v < a.count; v++) if (a.className(v) === c) xs.push(v);
    xs.sort((x, y) => a.retained[y]! - a.retained[x]!);
    const byChain = new Map<string, { count: number; bytes: number }>();
    for (const v of xs) {
      const chain: string[] = [];
      for (let d = a.dominator[v]!, hops = 0; d > 0 && hops < 4; d = a.dominator[d]!, hops++)
        chain.push(a.className(d));
      const k = chain.join(" <- ");
      let g = byChain.get(k);
      if (!g) byChain.set(k, (g = { count: 0, bytes: 0 }));
      g.count++;
      g.bytes += a.retained[v]!;
    }
    console.log(`\n${c} by dominator chain (count, retained):`);
    for (const [k, g] of [...byChain.entries()].sort((x, y) => y[1].bytes - x[1].bytes).slice(0, top)) {
      console.log(`${String(g.count).padStart(9)} ${mb(g.bytes)} ${perN(g.bytes)}  <- ${k}`);
    }
  }
  // What the instances of one class hold: the objects they dominate, by the edge that leads there.
  const kids = args.indexOf("--children");
  if (kids >= 0) {
    const c = args[kids + 1] ?? "";
    const nf2 = s.meta.node_fields.length;
    const ef = s.meta.edge_fields.length;
    const nEdges = s.meta.node_fields.indexOf("edge_count");
    const eType = s.meta.edge_fields.indexOf("type");
    const eName = s.meta.edge_fields.indexOf("name_or_index");
    const eTo = s.meta.edge_fields.indexOf("to_node");
    const edgeTypes = s.meta.edge_types[0];
    const groups2 = new Map<string, { count: number; bytes: number }>();
    for (let v = 0, e = 0; v < a.count; v++) {
      const end = e + s.nodes[v * nf2 + nEdges]! * ef;
      if (a.className(v) === c) {
        for (let k = e; k < end; k += ef) {
          const w = s.edges[k + eTo]! / nf2;
          if (a.dominator[w] !== v) continue;
          const t = edgeTypes[s.edges[k + eType]!];
          const name = t === "element" || t === "hidden" ? `[${t}]` : s.strings[s.edges[k + eName]!];
          const key = `.${name} ${a.className(w)}`;
          let g = groups2.get(key);
          if (!g) groups2.set(key, (g = { count: 0, bytes: 0 }));
          g.count++;
          g.bytes += a.retained[w]!;
        }
      }
      e = end;
    }
    console.log(`\nwhat ${c} holds (edge, class: count, retained):`);
    for (const [k, g] of [...groups2.entries()].sort((x, y) => y[1].bytes - x[1].bytes).slice(0, top)) {
      console.log(`${String(g.count).padStart(9)} ${mb(g.bytes)} ${perN(g.bytes)}  ${k.slice(0, 90)}`);
    }
  }
  // Strings by their first characters.
  const nf = s.meta.node_fields.length;
  const nType = s.meta.node_fields.indexOf("type");
  const nName = s.meta.node_fields.indexOf("name");
  const nodeTypes = s.meta.node_types[0];
  const groups = new Map<string, { count: number; bytes: number }>();
  for (let v = 0; v < a.count; v++) {
    const t = nodeTypes[s.nodes[v * nf + nType]!];
    if (t !== "string" && t !== "concatenated string" && t !== "sliced string") continue;
    const k = (s.strings[s.nodes[v * nf + nName]!] ?? "").slice(0, 48).replace(/\s+/g, " ");
    let g = groups.get(k);
    if (!g) groups.set(k, (g = { count: 0, bytes: 0 }));
    g.count++;
    g.bytes += a.selfSize[v]!;
  }
  console.log("\nstrings by first 48 characters (count, bytes):");
  for (const [k, g] of [...groups.entries()].sort((x, y) => y[1].bytes - x[1].bytes).slice(0, top)) {
    console.log(`${String(g.count).padStart(9)} ${mb(g.bytes)} ${perN(g.bytes)}  ${JSON.stringify(k)}`);
  }
}

if (process.argv[1]?.endsWith("heap-summary.js")) main();
