// Address parsing and validation for the data plane. Everything that ends up in an `ip -batch` line is
// checked here first, so a bad request fails before any command runs (and cannot inject batch lines).

import { isIP, isIPv4 } from "node:net";
import { parseIpv4 } from "../api/ipv4.js";

export interface Cidr {
  addr: string;
  prefixLen: number;
  family: 4 | 6;
}

/** Canonical text of an IP address (IPv6 compressed, lower case); throws if it is not one. */
export function normalizeIp(ip: string, what = "IP address"): string {
  const fam = isIP(ip);
  if (fam === 4)
    return ip
      .split(".")
      .map((o) => String(Number(o)))
      .join(".");
  if (fam === 6) return new URL(`http://[${ip}]`).hostname.slice(1, -1);
  throw new Error(`invalid ${what} ${JSON.stringify(ip)}`);
}

export function parseCidr(cidr: string, what = "subnet"): Cidr {
  const m = /^([^/]+)\/(\d{1,3})$/.exec(cidr);
  if (!m) throw new Error(`invalid ${what} ${JSON.stringify(cidr)}: expected ADDRESS/PREFIX, e.g. 10.0.1.0/24`);
  const addr = normalizeIp(m[1]!, what);
  const family = isIPv4(addr) ? 4 : 6;
  const prefixLen = Number(m[2]);
  if (prefixLen > (family === 4 ? 32 : 128))
    throw new Error(`invalid ${what} ${JSON.stringify(cidr)}: prefix too long`);
  return { addr, prefixLen, family };
}

function v6ToBigInt(ip: string): bigint {
  const [head, tail] = ip.includes("::") ? ip.split("::") : [ip, undefined];
  const h = head ? head.split(":") : [];
  const t = tail ? tail.split(":") : [];
  const groups = tail === undefined ? h : [...h, ...Array(8 - h.length - t.length).fill("0"), ...t];
  return groups.reduce((acc, g) => (acc << 16n) | BigInt(Number.parseInt(g || "0", 16)), 0n);
}

/** Whether `ip` lies inside `subnet` (same family). IPv4-mapped/embedded IPv4 in IPv6 is not handled. */
export function inSubnet(ip: string, subnet: Cidr): boolean {
  const a = normalizeIp(ip);
  if (isIPv4(a) !== (subnet.family === 4)) return false;
  if (subnet.family === 4) {
    const bits = 32 - subnet.prefixLen;
    const div = 2 ** bits;
    return Math.floor(parseIpv4(a)! / div) === Math.floor(parseIpv4(subnet.addr)! / div);
  }
  const shift = BigInt(128 - subnet.prefixLen);
  return v6ToBigInt(a) >> shift === v6ToBigInt(subnet.addr) >> shift;
}

const MAC_RE = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;

export function normalizeMac(mac: string, what = "MAC address"): string {
  const m = mac.toLowerCase();
  if (!MAC_RE.test(m))
    throw new Error(`invalid ${what} ${JSON.stringify(mac)}: expected six hex pairs, e.g. 02:42:0a:00:01:02`);
  if (Number.parseInt(m.slice(0, 2), 16) & 1) throw new Error(`invalid ${what} ${mac}: a multicast address`);
  return m;
}

/** Linux interface names: 1-15 bytes, no '/', ':', whitespace; we allow a safe subset. */
export function assertIfname(name: string, what = "interface name"): void {
  if (!/^[A-Za-z0-9_.-]{1,15}$/.test(name) || name === "." || name === "..") {
    throw new Error(`invalid ${what} ${JSON.stringify(name)}: 1-15 characters from A-Z a-z 0-9 _ . -`);
  }
}

/** IDs become namespace file names and veth names: keep them to a safe alphabet. */
export function assertId(id: string, what: string): void {
  if (!/^[A-Za-z0-9][A-Za-z0-9_-]*$/.test(id)) {
    throw new Error(`invalid ${what} ${JSON.stringify(id)}: use letters, digits, '_' and '-'`);
  }
}
