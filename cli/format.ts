// Text formatting that has to come out exactly as the docker CLI's: elastic tab stops (Go's text/tabwriter),
// natural sort order, "PrettyPrint" capitalisation, human sizes and durations, Go's %v of values, and a
// small subset of Go templates for --format.

import { humanDuration as humanDurationMs } from "../src/api/humanize.js";
import { encodeGo, GoBytes, GoMap, GoStruct, GoTime, type GoValue, goTimeString } from "./gojson.js";

/** Display width of a cell: one column per code point (docker's hostnames and ids are ASCII). */
function cellWidth(s: string): number {
  let n = 0;
  for (const _ of s) n++;
  return n;
}

/**
 * Align tab-terminated cells into columns like Go's tabwriter (elastic tab stops): a column is a run of
 * consecutive lines that all have a tab-terminated cell at that position; its width is the widest cell plus
 * `padding`, at least `minwidth`. Text after the last tab of a line is not part of any column.
 */
export function tabwrite(text: string, minwidth: number, padding: number): string {
  const lines = text.split("\n").map((l) => l.split("\t"));
  const out: string[] = [];
  const render = (cells: string[], widths: number[]): string =>
    cells.map((c, j) => (j < widths.length ? c + " ".repeat(Math.max(0, widths[j]! - cellWidth(c))) : c)).join("");
  const walk = (start: number, end: number, widths: number[]): void => {
    const col = widths.length;
    let i = start;
    while (i < end) {
      if (lines[i]!.length - 1 > col) {
        let j = i;
        let w = minwidth;
        while (j < end && lines[j]!.length - 1 > col) {
          w = Math.max(w, cellWidth(lines[j]![col]!) + padding);
          j++;
        }
        walk(i, j, [...widths, w]);
        i = j;
      } else {
        out.push(render(lines[i]!, widths));
        i++;
      }
    }
  };
  walk(0, lines.length, []);
  return out.join("\n");
}

/** The table writer docker's formatter uses: minwidth 10, padding 3. */
export function table(text: string): string {
  return tabwrite(text, 10, 3);
}

const isDigit = (b: number): boolean => b >= 0x30 && b <= 0x39;

/**
 * Natural order (github.com/fvbommel/sortorder NaturalLess, which `docker node ls` sorts hostnames with):
 * runs of digits compare as numbers, digits sort before other bytes, everything else bytewise.
 */
export function naturalLess(a: string, b: string): boolean {
  const s1 = Buffer.from(a);
  const s2 = Buffer.from(b);
  let i1 = 0;
  let i2 = 0;
  while (i1 < s1.length && i2 < s2.length) {
    const c1 = s1[i1]!;
    const c2 = s2[i2]!;
    const d1 = isDigit(c1);
    const d2 = isDigit(c2);
    if (d1 !== d2) return d1;
    if (!d1) {
      if (c1 !== c2) return c1 < c2;
      i1++;
      i2++;
      continue;
    }
    while (i1 < s1.length && s1[i1] === 0x30) i1++;
    while (i2 < s2.length && s2[i2] === 0x30) i2++;
    const nz1 = i1;
    const nz2 = i2;
    while (i1 < s1.length && isDigit(s1[i1]!)) i1++;
    while (i2 < s2.length && isDigit(s2[i2]!)) i2++;
    const len1 = i1 - nz1;
    const len2 = i2 - nz2;
    if (len1 !== len2) return len1 < len2;
    const cmp = Buffer.compare(s1.subarray(nz1, i1), s2.subarray(nz2, i2));
    if (cmp !== 0) return cmp < 0;
    if (nz1 !== nz2) return nz1 < nz2;
  }
  // Identical so far and at least one has ended: the longer sorts last.
  return s1.length < s2.length;
}

/** A comparator for Array.prototype.sort (which is stable, like the small-slice case of Go's sort.Slice). */
export function naturalCompare(a: string, b: string): number {
  if (naturalLess(a, b)) return -1;
  if (naturalLess(b, a)) return 1;
  return 0;
}

/** docker's formatter.PrettyPrint for strings: first letter upper case, the rest lower case. */
export function prettyPrint(s: string): string {
  if (s.length === 0) return s;
  if (s.length === 1) return s.toLowerCase();
  return s[0]!.toUpperCase() + s.slice(1).toLowerCase();
}

/** Exact decimal digits of a finite, non-negative double: [digits, position of the decimal point]. */
function exactDecimal(x: number): { digits: string; point: number } {
  const buf = new DataView(new ArrayBuffer(8));
  buf.setFloat64(0, x);
  const hi = buf.getUint32(0);
  const lo = buf.getUint32(4);
  const exp = (hi >>> 20) & 0x7ff;
  let mant = (BigInt(hi & 0xfffff) << 32n) | BigInt(lo);
  let e: number;
  if (exp === 0) e = -1074;
  else {
    mant |= 1n << 52n;
    e = exp - 1075;
  }
  if (mant === 0n) return { digits: "0", point: 1 };
  if (e >= 0) {
    const digits = (mant << BigInt(e)).toString();
    return { digits, point: digits.length };
  }
  // mant * 2^e = mant * 5^-e / 10^-e
  const digits = (mant * 5n ** BigInt(-e)).toString();
  return { digits, point: digits.length + e };
}

/** Go's fmt "%.<prec>g" for non-negative numbers below 10^prec (round half to even on exact ties). */
export function formatG(x: number, prec: number): string {
  if (x === 0) return "0";
  let { digits, point } = exactDecimal(x);
  const lead = digits.search(/[1-9]/);
  digits = digits.slice(lead);
  point -= lead;
  if (digits.length > prec) {
    const keep = digits.slice(0, prec);
    const rest = digits.slice(prec);
    const first = rest.charCodeAt(0) - 48;
    const tail = /[1-9]/.test(rest.slice(1));
    const odd = (keep.charCodeAt(prec - 1) - 48) % 2 === 1;
    let n = BigInt(keep);
    if (first > 5 || (first === 5 && (tail || odd))) n += 1n;
    let s = n.toString();
    if (s.length > prec) {
      point++;
      s = s.slice(0, prec);
    }
    digits = s;
  }
  digits = digits.replace(/0+$/, "");
  if (digits === "") return "0";
  if (point <= 0) return `0.${"0".repeat(-point)}${digits}`;
  if (digits.length <= point) return digits + "0".repeat(point - digits.length);
  return `${digits.slice(0, point)}.${digits.slice(point)}`;
}

/** go-units BytesSize: binary units with four significant digits ("7.688GiB"). */
export function bytesSize(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB"];
  let size = n;
  let i = 0;
  while (size >= 1024 && i < units.length - 1) {
    size /= 1024;
    i++;
  }
  return formatG(size, 4) + units[i];
}

/** go-units HumanDuration of a duration in nanoseconds ("5 seconds", "3 months"). */
export function humanDuration(ns: number): string {
  return humanDurationMs(ns / 1e6);
}

/** An RFC 3339 time as Go's time.ANSIC ("Fri May 30 12:07:27 2025") in its own zone; unparsable text as is. */
export function ansic(rfc3339: string): string {
  const m = /^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})$/.exec(rfc3339);
  if (!m) return rfc3339;
  const [y, mo, d, h, mi, s] = m.slice(1).map(Number) as [number, number, number, number, number, number];
  const date = new Date(Date.UTC(y, mo - 1, d, h, mi, s));
  const day = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"][date.getUTCDay()];
  const mon = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"][mo - 1];
  const p2 = (n: number): string => String(n).padStart(2, "0");
  return `${day} ${mon} ${String(d).padStart(2, " ")} ${p2(h)}:${p2(mi)}:${p2(s)} ${m[1]}`;
}

// ---- values as Go's fmt prints them (%v) -----------------------------------------------------------------

/** Marks a map lookup that found nothing; text/template prints it as "<no value>". */
export const NO_VALUE = Symbol("no value");
export type TemplateValue = GoValue | typeof NO_VALUE;

function bytesOf(b: GoBytes): number[] {
  return [...Buffer.from(b.base64, "base64")];
}

/** fmt's %v, as text/template prints a value. */
export function formatValue(v: TemplateValue): string {
  if (v === NO_VALUE) return "<no value>";
  if (v === null) return "<nil>";
  if (typeof v === "string") return v;
  if (typeof v === "number" || typeof v === "boolean") return String(v);
  if (v instanceof GoTime) return goTimeString(v);
  if (v instanceof GoBytes) return `[${bytesOf(v).join(" ")}]`;
  if (Array.isArray(v)) return `[${v.map(formatValue).join(" ")}]`;
  if (v instanceof GoMap) return `map[${v.entries.map(([k, x]) => `${k}:${formatValue(x)}`).join(" ")}]`;
  if (v.stringer) return v.stringer();
  return `{${v.fields.map((f) => formatValue(f.value)).join(" ")}}`;
}

// ---- a subset of Go's text/template ---------------------------------------------------------------------

export class TemplateError extends Error {}

type Piece =
  | { kind: "text"; text: string }
  | { kind: "field"; path: string[]; pos: number; fn?: "json" | undefined; src: string };

export interface Template {
  pieces: Piece[];
}

const SUPPORTED = "shoal supports {{.Field}}, {{.Field.Sub}}, {{.}} and {{json .Field}} in templates";

/**
 * Parse a template. Supported: text, {{.}}, {{.Field.Path}}, {{json .Field.Path}} and the {{- -}} trim
 * markers; anything else (if, range, pipes, other functions) is refused with a clear error.
 */
export function parseTemplate(src: string): Template {
  const pieces: Piece[] = [];
  let i = 0;
  let text = "";
  while (i < src.length) {
    const open = src.indexOf("{{", i);
    if (open < 0) {
      text += src.slice(i);
      break;
    }
    text += src.slice(i, open);
    const close = src.indexOf("}}", open + 2);
    if (close < 0) throw new TemplateError(`template: :1: unclosed action`);
    let inner = src.slice(open + 2, close);
    let innerStart = open + 2;
    if (/^-\s/.test(inner)) {
      text = text.replace(/\s+$/, "");
      inner = inner.slice(1);
      innerStart++;
    }
    let trimAfter = false;
    if (/\s-$/.test(inner)) {
      trimAfter = true;
      inner = inner.slice(0, -1);
    }
    if (text) pieces.push({ kind: "text", text });
    text = "";
    const lead = inner.length - inner.trimStart().length;
    const expr = inner.trim();
    const exprPos = innerStart + lead;
    if (expr === "") throw new TemplateError(`template: :1: missing value for command`);
    const words = expr.split(/\s+/);
    let fn: "json" | undefined;
    let arg = words[0]!;
    let argPos = exprPos;
    if (words.length === 2 && words[0] === "json") {
      fn = "json";
      arg = words[1]!;
      argPos = exprPos + expr.indexOf(arg, 4);
    } else if (words.length !== 1) {
      throw new TemplateError(`template: :1: unsupported action {{${expr}}}: ${SUPPORTED}`);
    }
    if (!/^\.$|^(\.[A-Za-z_][A-Za-z0-9_]*)+$/.test(arg)) {
      if (/^[A-Za-z_]\w*$/.test(arg)) {
        const keyword = ["if", "else", "end", "range", "with", "define", "template", "block", "break", "continue"];
        if (keyword.includes(arg))
          throw new TemplateError(`template: :1: unsupported action {{${expr}}}: ${SUPPORTED}`);
        throw new TemplateError(`template: :1: function "${arg}" not defined`);
      }
      throw new TemplateError(`template: :1: unsupported action {{${expr}}}: ${SUPPORTED}`);
    }
    const path = arg === "." ? [] : arg.slice(1).split(".");
    // Go reports the position of the last field of a chain.
    const pos = path.length > 1 ? argPos + arg.lastIndexOf(".") : argPos;
    pieces.push({ kind: "field", path, pos, fn, src: arg });
    i = close + 2;
    if (trimAfter) {
      const rest = src.slice(i);
      i += rest.length - rest.trimStart().length;
    }
  }
  if (text) pieces.push({ kind: "text", text });
  return { pieces };
}

function lookup(root: GoValue, piece: Extract<Piece, { kind: "field" }>): TemplateValue {
  let v: TemplateValue = root;
  let typeName = root instanceof GoStruct ? root.typeName : "";
  for (const name of piece.path) {
    const at = `template: :1:${piece.pos}: executing "" at <${piece.src}>`;
    if (v instanceof GoStruct) {
      const f = v.get(name);
      if (!f) throw new TemplateError(`${at}: can't evaluate field ${name} in type ${v.typeName}`);
      typeName = f.ptrType ?? "";
      v = f.value;
    } else if (v instanceof GoMap) {
      const x = v.get(name);
      v = x === undefined ? NO_VALUE : x;
    } else if (v === null) {
      throw new TemplateError(`${at}: nil pointer evaluating *${typeName || "interface {}"}.${name}`);
    } else {
      const t = typeof v === "string" ? "string" : typeof v === "number" ? "int" : typeof v === "boolean" ? "bool" : "";
      throw new TemplateError(`${at}: can't evaluate field ${name} in type ${t || "interface {}"}`);
    }
  }
  return v;
}

/** Run a template against a value. */
export function executeTemplate(t: Template, root: GoValue): string {
  let out = "";
  for (const p of t.pieces) {
    if (p.kind === "text") {
      out += p.text;
      continue;
    }
    const v = lookup(root, p);
    if (p.fn === "json") out += v === NO_VALUE ? "null" : encodeGo(v, { escapeHTML: false });
    else out += formatValue(v);
  }
  return out;
}
