// Flag values parsed the way docker's flags (spf13/pflag and docker/cli/opts) parse them, with the same
// error texts: numbers (strconv), durations (time.ParseDuration), CIDRs, node addresses, filters, labels.

import { CLUSTER_PORT } from "../src/api/ports.js";

/** A flag value that does not parse; the message is the part after `invalid argument "v" for "--flag" flag: `. */
export class FlagValueError extends Error {}

function parseGoUint(s: string, bits: number, fn: string): bigint {
  const syntax = (): FlagValueError => new FlagValueError(`${fn}: parsing ${JSON.stringify(s)}: invalid syntax`);
  let body = s;
  let base = 10;
  if (/^0[xX]/.test(body)) {
    base = 16;
    body = body.slice(2);
  } else if (/^0[bB]/.test(body)) {
    base = 2;
    body = body.slice(2);
  } else if (/^0[oO]/.test(body)) {
    base = 8;
    body = body.slice(2);
  } else if (/^0\d/.test(body)) {
    base = 8;
    body = body.slice(1);
  }
  if (base !== 10) body = body.replace(/_/g, "");
  const digits = { 2: /^[01]+$/, 8: /^[0-7]+$/, 10: /^\d+$/, 16: /^[0-9a-fA-F]+$/ }[base as 2 | 8 | 10 | 16];
  if (!digits.test(body)) throw syntax();
  let n = 0n;
  for (const ch of body.toLowerCase()) n = n * BigInt(base) + BigInt(Number.parseInt(ch, 16));
  if (n >= 1n << BigInt(bits)) throw new FlagValueError(`${fn}: parsing ${JSON.stringify(s)}: value out of range`);
  return n;
}

/** pflag's uint32/uint64 flags (strconv.ParseUint(s, 0, bits)). */
export function parseUint(s: string, bits: 32 | 64): number {
  return Number(parseGoUint(s, bits, "strconv.ParseUint"));
}

/** pflag's int64 flag (strconv.ParseInt(s, 0, 64)). */
export function parseInt64(s: string): number {
  const neg = s.startsWith("-");
  const body = neg || s.startsWith("+") ? s.slice(1) : s;
  let n: bigint;
  try {
    n = parseGoUint(body, 64, "strconv.ParseInt");
  } catch {
    const rangeErr = /^[0-9]+$/.test(body);
    throw new FlagValueError(
      `strconv.ParseInt: parsing ${JSON.stringify(s)}: ${rangeErr ? "value out of range" : "invalid syntax"}`,
    );
  }
  if ((!neg && n > (1n << 63n) - 1n) || (neg && n > 1n << 63n)) {
    throw new FlagValueError(`strconv.ParseInt: parsing ${JSON.stringify(s)}: value out of range`);
  }
  return Number(neg ? -n : n);
}

const DURATION_UNITS: Record<string, number> = {
  ns: 1,
  us: 1e3,
  µs: 1e3,
  μs: 1e3,
  ms: 1e6,
  s: 1e9,
  m: 60e9,
  h: 3600e9,
};

/** time.ParseDuration, in nanoseconds ("1m30s" → 90e9), with Go's error texts. */
export function parseDuration(s: string): number {
  const invalid = (): FlagValueError => new FlagValueError(`time: invalid duration ${JSON.stringify(s)}`);
  let rest = s;
  let sign = 1;
  if (rest.startsWith("-") || rest.startsWith("+")) {
    if (rest[0] === "-") sign = -1;
    rest = rest.slice(1);
  }
  if (rest === "0") return 0;
  if (rest === "") throw invalid();
  let total = 0;
  while (rest !== "") {
    const m = /^(\d*)(\.(\d*))?/.exec(rest)!;
    const pre = m[1]!;
    const post = m[3] ?? "";
    if (pre === "" && post === "") throw invalid();
    rest = rest.slice(m[0].length);
    const u = /^[^\d.]*/.exec(rest)![0];
    if (u === "") throw new FlagValueError(`time: missing unit in duration ${JSON.stringify(s)}`);
    const unit = DURATION_UNITS[u];
    if (unit === undefined) {
      throw new FlagValueError(`time: unknown unit ${JSON.stringify(u)} in duration ${JSON.stringify(s)}`);
    }
    rest = rest.slice(u.length);
    total += Number(pre || "0") * unit + (post ? Number(`0.${post}`) * unit : 0);
  }
  return sign * Math.round(total);
}

function parseIPv4(s: string): number[] | null {
  const parts = s.split(".");
  if (parts.length !== 4) return null;
  const bytes = parts.map((p) => (/^(0|[1-9]\d{0,2})$/.test(p) ? Number(p) : 256));
  return bytes.every((b) => b < 256) ? bytes : null;
}

function parseIPv6(s: string): number[] | null {
  if (!/^[0-9a-fA-F:.]+$/.test(s)) return null;
  const halves = s.split("::");
  if (halves.length > 2) return null;
  const groups = (part: string): number[] | null => {
    if (part === "") return [];
    const out: number[] = [];
    const items = part.split(":");
    for (let i = 0; i < items.length; i++) {
      const it = items[i]!;
      if (i === items.length - 1 && it.includes(".")) {
        const v4 = parseIPv4(it);
        if (!v4) return null;
        out.push((v4[0]! << 8) | v4[1]!, (v4[2]! << 8) | v4[3]!);
      } else if (/^[0-9a-fA-F]{1,4}$/.test(it)) out.push(Number.parseInt(it, 16));
      else return null;
    }
    return out;
  };
  const head = groups(halves[0]!);
  const tail = halves.length === 2 ? groups(halves[1]!) : [];
  if (!head || !tail) return null;
  let words: number[];
  if (halves.length === 2) {
    const fill = 8 - head.length - tail.length;
    if (fill < 1) return null;
    words = [...head, ...new Array<number>(fill).fill(0), ...tail];
  } else words = head;
  if (words.length !== 8) return null;
  return words.flatMap((w) => [w >> 8, w & 0xff]);
}

function formatIPv6(bytes: number[]): string {
  const words: number[] = [];
  for (let i = 0; i < 16; i += 2) words.push((bytes[i]! << 8) | bytes[i + 1]!);
  let bestStart = -1;
  let bestLen = 0;
  for (let i = 0; i < 8; ) {
    if (words[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && words[j] === 0) j++;
    if (j - i > bestLen && j - i >= 2) {
      bestStart = i;
      bestLen = j - i;
    }
    i = j;
  }
  const hex = (ws: number[]): string => ws.map((w) => w.toString(16)).join(":");
  if (bestStart < 0) return hex(words);
  return `${hex(words.slice(0, bestStart))}::${hex(words.slice(bestStart + bestLen))}`;
}

/** net.ParseCIDR, written back as Go's IPNet.String(): the network address and prefix ("10.20.0.0/16"). */
export function parseCIDR(s: string): string {
  const invalid = (): FlagValueError => new FlagValueError(`invalid string being converted to CIDR: ${s}`);
  const slash = s.indexOf("/");
  if (slash < 0) throw invalid();
  const addr = s.slice(0, slash);
  const lenText = s.slice(slash + 1);
  if (!/^\d{1,3}$/.test(lenText)) throw invalid();
  const prefix = Number(lenText);
  const v4 = parseIPv4(addr);
  const bytes = v4 ?? parseIPv6(addr);
  if (!bytes || prefix > bytes.length * 8) throw invalid();
  const masked = bytes.map((b, i) => {
    const bitsHere = Math.min(8, Math.max(0, prefix - i * 8));
    return b & ((0xff << (8 - bitsHere)) & 0xff);
  });
  return v4 ? `${masked.join(".")}/${prefix}` : `${formatIPv6(masked)}/${prefix}`;
}

/** pflag's ipNetSlice: each value may hold several CIDRs separated by commas. */
export function parseCIDRList(s: string): string[] {
  return s
    .split(",")
    .map((x) => x.trim())
    .filter((x) => x !== "")
    .map(parseCIDR);
}

/** Go's net.SplitHostPort; null where Go reports an error. */
function splitHostPort(hostport: string): [string, string] | null {
  if (hostport.startsWith("[")) {
    const end = hostport.indexOf("]");
    if (end < 0 || hostport[end + 1] !== ":") return null;
    const host = hostport.slice(1, end);
    if (/[[\]]/.test(host)) return null;
    return [host, hostport.slice(end + 2)];
  }
  const colon = hostport.lastIndexOf(":");
  if (colon < 0) return null;
  const host = hostport.slice(0, colon);
  if (/[:[\]]/.test(host)) return null;
  return [host, hostport.slice(colon + 1)];
}

const joinHostPort = (host: string, port: string): string =>
  host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;

/**
 * docker's NodeAddrOption (--listen-addr), i.e. opts.ParseTCPAddr without the "tcp://": "<ip|interface>[:port]"
 * completed from a default ("192.0.2.1" → "192.0.2.1:2377", ":4000" → "0.0.0.0:4000").
 */
export function parseNodeAddr(value: string, defaultAddr = `0.0.0.0:${CLUSTER_PORT}`): string {
  if (value === "" || value === "tcp://") return defaultAddr;
  let addr = value.startsWith("tcp://") ? value.slice("tcp://".length) : value;
  if (addr.includes("://") || addr === "") throw new FlagValueError(`invalid proto, expected tcp: ${value}`);
  const [defHost, defPort] = splitHostPort(defaultAddr)!;
  if (addr.endsWith("]:")) addr += defPort;
  // url.Parse("tcp://" + addr): the authority runs to the first "/", "?" or "#"; the path follows.
  const cut = addr.search(/[/?#]/);
  const authority = cut < 0 ? addr : addr.slice(0, cut);
  const path = cut < 0 ? "" : /^[^?#]*/.exec(addr.slice(cut))![0];
  const portPart = authority.startsWith("[")
    ? authority.slice(authority.indexOf("]") + 1)
    : (/:[^:]*$/.exec(authority)?.[0] ?? "");
  if (portPart !== "" && !/^:\d*$/.test(portPart)) {
    throw new FlagValueError(`parse "tcp://${addr}": invalid port ${JSON.stringify(portPart)} after host`);
  }
  const hp = splitHostPort(authority) ?? splitHostPort(joinHostPort(authority, defPort));
  if (!hp) throw new FlagValueError(`invalid bind address format: ${value}`);
  const host = hp[0] === "" ? defHost! : hp[0];
  const port = hp[1] === "" ? defPort! : hp[1];
  return `${joinHostPort(host, port)}${path}`;
}

/** docker's filter flag: "name=value"; the name is lower-cased, both are trimmed. */
export function parseFilter(s: string): [string, string] {
  const eq = s.indexOf("=");
  if (eq < 0) throw new FlagValueError("bad format of filter (expected name=value)");
  return [s.slice(0, eq).trim().toLowerCase(), s.slice(eq + 1).trim()];
}

/** The filters query parameter: {"name":{"value":true}} with sorted keys, as docker's filters.ToJSON writes it. */
export function filtersJSON(filters: [string, string][]): string {
  const byName = new Map<string, Set<string>>();
  for (const [k, v] of filters) {
    if (!byName.has(k)) byName.set(k, new Set());
    byName.get(k)!.add(v);
  }
  const cmp = (a: string, b: string): number => Buffer.compare(Buffer.from(a), Buffer.from(b));
  const names = [...byName.keys()].sort(cmp);
  const q = (s: string): string =>
    JSON.stringify(s).replace(/</g, "\\u003c").replace(/>/g, "\\u003e").replace(/&/g, "\\u0026");
  return `{${names
    .map(
      (n) =>
        `${q(n)}:{${[...byName.get(n)!]
          .sort(cmp)
          .map((v) => `${q(v)}:true`)
          .join(",")}}`,
    )
    .join(",")}}`;
}

/** "key=value" → [key, value]; "key" → [key, ""] (docker's ConvertKVStringsToMap). */
export function splitKV(s: string): [string, string] {
  const eq = s.indexOf("=");
  return eq < 0 ? [s, ""] : [s.slice(0, eq), s.slice(eq + 1)];
}

/** --availability for swarm init and join: case-insensitive, one of active, pause, drain. */
export function checkAvailability(value: string): "active" | "pause" | "drain" | null {
  const a = value.toLowerCase();
  return a === "active" || a === "pause" || a === "drain" ? a : null;
}
