// Network allocation for overlay networks: subnets carved from the default address pools, VXLAN ids, gateways,
// and endpoint addresses.
//
// The managers call this from the Raft store's apply function, in log order, so everything here is pure and
// deterministic: no randomness, no clock, no hidden state. What it needs is passed in; what it changes is
// either returned or (allocateIp/releaseIp) written into the plain, JSON-serialisable NetworkAlloc it is given.
// The same log therefore yields the same allocations on every manager, and a new leader carries on exactly
// where the old one stopped. Every error is thrown before anything is changed. IPv4 only.
//
// Docker's behaviour this follows (moby libnetwork ipam, swarmkit cnmallocator, overlay driver):
// - subnets: the first free block of the configured size in the default pools, in pool order, that overlaps
//   no network's subnet (default pool 10.0.0.0/8 in /24s; `swarm init` gives ingress the first one);
//   an explicit `--subnet` may be anywhere but must overlap no network's subnet;
// - gateway: the subnet's first host address unless `--gateway` says otherwise;
// - endpoint addresses: handed out serially, like libnetwork's bitmap in serial mode: the search starts after
//   the last address given out and wraps around, so a released address is not reused until the pointer has
//   gone round; `--ip` is honoured when free;
// - VXLAN ids: the lowest free id from 4097 (ingress takes 4096 explicitly), or the requested one.

import { formatIpv4, parseIpv4 } from "../../api/ipv4.js";
import type { NetworkAlloc } from "../../api/objects.js";
import {
  gatewayOutsideSubnet,
  gatewayReserved,
  invalidAddress,
  invalidBasePool,
  invalidCidr,
  invalidVni,
  ipExhausted,
  ipInUse,
  ipOutOfSubnet,
  ipReserved,
  poolExhausted,
  poolOverlap,
  subnetNotCanonical,
  subnetPrefixOutOfRange,
  subnetSizeOutOfRange,
  subnetSizeTooSmall,
  vniExhausted,
  vniInUse,
} from "./errors.js";

// --- constants -------------------------------------------------------------------------------------------

export const DEFAULT_POOL = "10.0.0.0/8";
export const DEFAULT_SUBNET_SIZE = 24;
/** The longest mask `--default-addr-pool-mask-length` accepts (8 addresses; swarmkit's limit). */
const MAX_SUBNET_SIZE = 29;
/** Prefix lengths an explicit `--subnet` may have. */
const MIN_EXPLICIT_PREFIX = 8;
const MAX_EXPLICIT_PREFIX = 30;

/** The ingress network's VXLAN id. */
export const INGRESS_VNI = 4096;
/** The first VXLAN id handed out to other networks. */
export const FIRST_VNI = 4097;
/** VXLAN ids are 24 bits. */
export const MAX_VNI = 0xffffff;

// --- types -----------------------------------------------------------------------------------------------

export interface PoolConfig {
  /** CIDRs to carve networks from, in order (`--default-addr-pool`). Default ["10.0.0.0/8"]. */
  pools: string[];
  /** Prefix length of each carved subnet (`--default-addr-pool-mask-length`). Default 24, at most 29. */
  subnetSize: number;
}

/** A fresh copy of the default configuration: 10.0.0.0/8 in /24s. */
export function defaultPoolConfig(): PoolConfig {
  return { pools: [DEFAULT_POOL], subnetSize: DEFAULT_SUBNET_SIZE };
}

/** A network's address state, as kept in the replicated store. Plain data: JSON round-trips it exactly. */
export type { NetworkAlloc } from "../../api/objects.js";

/** A parsed IPv4 CIDR. Addresses are unsigned 32-bit integers held in plain numbers. */
export interface Cidr {
  /** The network address. */
  base: number;
  prefix: number;
  /** Number of addresses in the block (2^(32-prefix)). */
  size: number;
  /** The last (broadcast) address. */
  last: number;
}

// --- addresses and CIDRs ---------------------------------------------------------------------------------

const PREFIX = /^(?:[0-9]|[12][0-9]|3[0-2])$/;

/** "10.0.1.2" -> 167772418. Strict dotted quad: no leading zeros, no spaces. Throws IpamError (400). */
export function ipToInt(s: string): number {
  const n = parseIpv4(s);
  if (n === undefined) throw invalidAddress(s);
  return n;
}

const blockSize = (prefix: number): number => 2 ** (32 - prefix);

function cidrOf(addr: number, prefix: number): Cidr {
  const size = blockSize(prefix);
  const base = addr - (addr % size);
  return { base, prefix, size, last: base + size - 1 };
}

/**
 * Parses "a.b.c.d/n". With `strict` (the default) host bits must be zero ("10.0.1.0/24", not "10.0.1.7/24");
 * otherwise they are masked off, as Go's net.ParseCIDR does. Throws IpamError (400).
 */
export function parseCidr(s: string, opts: { strict?: boolean } = {}): Cidr {
  if (typeof s !== "string") throw invalidCidr(String(s));
  const slash = s.indexOf("/");
  if (slash < 0) throw invalidCidr(s);
  const addr = parseIpv4(s.slice(0, slash));
  const p = s.slice(slash + 1);
  if (addr === undefined || !PREFIX.test(p)) throw invalidCidr(s);
  const c = cidrOf(addr, Number(p));
  if ((opts.strict ?? true) && c.base !== addr) throw subnetNotCanonical(s, formatCidr(c));
  return c;
}

function formatCidr(c: Cidr): string {
  return `${formatIpv4(c.base)}/${c.prefix}`;
}

/** The canonical spelling of a CIDR (host bits masked): "10.0.1.7/24" -> "10.0.1.0/24". */
export function canonicalCidr(s: string): string {
  return formatCidr(parseCidr(s, { strict: false }));
}

/** Whether two CIDRs share any address. */
export function cidrOverlaps(a: string | Cidr, b: string | Cidr): boolean {
  const x = typeof a === "string" ? parseCidr(a, { strict: false }) : a;
  const y = typeof b === "string" ? parseCidr(b, { strict: false }) : b;
  return x.base <= y.last && y.base <= x.last;
}

/** Whether `ip` lies in `cidr`. */
export function cidrContains(cidr: string | Cidr, ip: string): boolean {
  const c = typeof cidr === "string" ? parseCidr(cidr, { strict: false }) : cidr;
  const n = ipToInt(ip);
  return n >= c.base && n <= c.last;
}

/** The MAC Docker derives from an IPv4 address: 02:42 and the address's four bytes. 10.0.1.2 -> 02:42:0a:00:01:02. */
export function macFromIp(ip: string): string {
  const n = ipToInt(ip);
  const bytes = [Math.floor(n / 0x1000000), Math.floor(n / 0x10000) % 256, Math.floor(n / 0x100) % 256, n % 256];
  return ["02", "42", ...bytes.map((b) => b.toString(16).padStart(2, "0"))].join(":");
}

// --- pools and subnets -----------------------------------------------------------------------------------

/**
 * Fills in defaults and checks a pool configuration the way dockerd checks `swarm init`'s flags: no pools means
 * ["10.0.0.0/8"], size 0 (or absent) means 24; the size must be at most 29 and at least each pool's own prefix.
 * Pools are returned in canonical spelling. Throws IpamError (400).
 */
export function normalizePoolConfig(cfg: Partial<PoolConfig> = {}): PoolConfig {
  const size = cfg.subnetSize === undefined || cfg.subnetSize === 0 ? DEFAULT_SUBNET_SIZE : cfg.subnetSize;
  if (!Number.isInteger(size) || size < 1 || size > MAX_SUBNET_SIZE) throw subnetSizeOutOfRange(size);
  const given = cfg.pools && cfg.pools.length > 0 ? cfg.pools : [DEFAULT_POOL];
  const pools = given.map((raw) => {
    const p = typeof raw === "string" ? raw.trim() : String(raw);
    let c: Cidr;
    try {
      c = parseCidr(p, { strict: false });
    } catch {
      throw invalidBasePool(p);
    }
    if (size < c.prefix) throw subnetSizeTooSmall(p, size);
    return formatCidr(c);
  });
  return { pools, subnetSize: size };
}

/** Checks an explicit `--subnet`: canonical, IPv4, prefix /8../30. Returns it parsed. Throws IpamError (400). */
function parseExplicitSubnet(s: string): Cidr {
  const c = parseCidr(s);
  if (c.prefix < MIN_EXPLICIT_PREFIX || c.prefix > MAX_EXPLICIT_PREFIX) {
    throw subnetPrefixOutOfRange(s, MIN_EXPLICIT_PREFIX, MAX_EXPLICIT_PREFIX);
  }
  return c;
}

/**
 * The address blocks the networks hold, sorted by start (then end), kept up to date as networks come and go
 * (TakenSpace), so that a new network's subnet is found without parsing every network's subnet again.
 */
export class TakenBlocks {
  private starts: number[] = [];
  private ends: number[] = [];

  constructor(cidrs: Iterable<string> = []) {
    for (const s of cidrs) this.add(s);
  }

  /** Where [start, end] goes (or is) in the sorted order. */
  private position(start: number, end: number): number {
    let lo = 0;
    let hi = this.starts.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      const s = this.starts[mid]!;
      if (s < start || (s === start && this.ends[mid]! < end)) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  add(cidr: string): void {
    const c = parseCidr(cidr, { strict: false });
    const i = this.position(c.base, c.last);
    this.starts.splice(i, 0, c.base);
    this.ends.splice(i, 0, c.last);
  }

  /** Forget one block of `cidr` (one network's). */
  remove(cidr: string): void {
    const c = parseCidr(cidr, { strict: false });
    const i = this.position(c.base, c.last);
    if (this.starts[i] === c.base && this.ends[i] === c.last) {
      this.starts.splice(i, 1);
      this.ends.splice(i, 1);
    }
  }

  overlaps(c: Cidr): boolean {
    for (let i = 0; i < this.starts.length && this.starts[i]! <= c.last; i++) if (this.ends[i]! >= c.base) return true;
    return false;
  }

  /**
   * The first block of `step` addresses, aligned on `step`, in `pool` that overlaps no block held. The blocks
   * are sorted by start: once past every block that ends before `c`, the next one either overlaps [c, end] or
   * starts after it, and so does every one after it.
   */
  firstFree(pool: Cidr, step: number): number | undefined {
    let i = 0;
    let c = pool.base;
    while (c + step - 1 <= pool.last) {
      const end = c + step - 1;
      while (i < this.starts.length && this.ends[i]! < c) i++;
      if (i === this.starts.length || this.starts[i]! > end) return c;
      // Overlaps block i: jump to the first aligned block after it.
      c = Math.ceil((this.ends[i]! + 1) / step) * step;
    }
    return undefined;
  }
}

/**
 * A subnet for a new network.
 *
 * - `requested` (an explicit `--subnet`): returned in canonical form if it overlaps none of `existing`;
 *   otherwise "Pool overlaps with other one on this address space" (403).
 * - otherwise: the first block of `cfg.subnetSize` in `cfg.pools` (in order) that overlaps none of
 *   `existing`; if there is none, "could not find an available, non-overlapping IPv4 address pool among the
 *   defaults to assign to the network" (404, as dockerd).
 *
 * `existing` are the subnets of all networks (their order does not matter). Pure: nothing is recorded, the
 * caller stores the result with its network.
 */
export function allocateSubnet(existing: string[], cfg?: Partial<PoolConfig>, requested?: string): string {
  return allocateSubnetAmong(new TakenBlocks(existing), cfg, requested);
}

/** allocateSubnet, with the networks' subnets held in `taken`. */
export function allocateSubnetAmong(taken: TakenBlocks, cfg?: Partial<PoolConfig>, requested?: string): string {
  if (requested !== undefined) {
    const want = parseExplicitSubnet(requested);
    if (taken.overlaps(want)) throw poolOverlap();
    return formatCidr(want);
  }
  const { pools, subnetSize } = normalizePoolConfig(cfg);
  const step = blockSize(subnetSize);
  for (const pool of pools) {
    const c = taken.firstFree(parseCidr(pool), step);
    if (c !== undefined) return `${formatIpv4(c)}/${subnetSize}`;
  }
  throw poolExhausted();
}

/**
 * A network's gateway: the first host address of `subnet`, or `requested` (`--gateway`) if it is a host
 * address of the subnet. Throws IpamError (400).
 */
export function gatewayOf(subnet: string, requested?: string): string {
  const c = parseHostSubnet(subnet);
  if (requested === undefined) return formatIpv4(c.base + 1);
  const g = ipToInt(requested);
  if (g < c.base || g > c.last) throw gatewayOutsideSubnet(requested);
  if (g === c.base) throw gatewayReserved(requested, subnet, "network");
  if (g === c.last) throw gatewayReserved(requested, subnet, "broadcast");
  return formatIpv4(g);
}

/** A subnet with at least two host addresses (/30 or shorter). */
function parseHostSubnet(subnet: string): Cidr {
  const c = parseCidr(subnet);
  if (c.prefix > MAX_EXPLICIT_PREFIX) throw subnetPrefixOutOfRange(subnet, 0, MAX_EXPLICIT_PREFIX);
  return c;
}

// --- VXLAN ids -------------------------------------------------------------------------------------------

function checkVni(v: unknown): number {
  if (typeof v !== "number" || !Number.isInteger(v) || v < 1 || v > MAX_VNI) throw invalidVni(v);
  return v;
}

/**
 * A VXLAN id for a new network: `requested` if free (else 403), otherwise the lowest id >= `first` (4097)
 * that `used` does not hold (like libnetwork's id bitmap). `pool` only names the subnet in error messages.
 * Pure. Throws IpamError.
 */
export function allocateVni(used: number[], opts: { first?: number; requested?: number; pool?: string } = {}): number {
  return allocateVniAmong(new Set(used), opts);
}

/** allocateVni, with the ids in use held in `taken`. */
export function allocateVniAmong(
  taken: { has(vni: number): boolean },
  opts: { first?: number; requested?: number; pool?: string } = {},
): number {
  if (opts.requested !== undefined) {
    const v = checkVni(opts.requested);
    if (taken.has(v)) throw vniInUse(v, opts.pool);
    return v;
  }
  const first = checkVni(opts.first ?? FIRST_VNI);
  for (let v = first; v <= MAX_VNI; v++) if (!taken.has(v)) return v;
  throw vniExhausted(opts.pool);
}

/**
 * Parses the overlay driver option com.docker.network.driver.overlay.vxlanid_list ("4097" or "4097,4098"):
 * one id per subnet. Throws IpamError (400) with the driver's wording.
 */
export function parseVxlanIdList(option: string): number[] {
  return option.split(",").map((s) => {
    const t = s.trim();
    if (!/^[0-9]+$/.test(t)) throw invalidVni(s);
    return checkVni(Number(t));
  });
}

// --- networks ----------------------------------------------------------------------------------------------

/** The allocation state of a network with the given subnet, gateway and VXLAN id, and no endpoints. */
export function newNetworkAlloc(subnet: string, gateway: string, vni: number): NetworkAlloc {
  return { subnet, gateway, vni, nextHost: 1, used: {} };
}

export interface NetworkRequest {
  /** `--subnet`. */
  subnet?: string;
  /** `--gateway` (only with `subnet`, as the docker CLI enforces; accepted here either way). */
  gateway?: string;
  /** VXLAN id from com.docker.network.driver.overlay.vxlanid_list. */
  vni?: number;
}

/** What the other networks hold, for allocateNetwork. */
export interface ExistingNetworks {
  subnets: string[];
  vnis: number[];
}

/**
 * Subnet, gateway and VXLAN id for a new network, all checked before any is chosen, as one NetworkAlloc.
 * Pure: `existing` is not changed. `swarm init`'s ingress is `allocateNetwork({subnets: [], vnis: []}, cfg,
 * { vni: INGRESS_VNI })`: the first block of the pool and VNI 4096.
 */
export function allocateNetwork(
  existing: ExistingNetworks,
  cfg?: Partial<PoolConfig>,
  req: NetworkRequest = {},
): NetworkAlloc {
  return allocateNetworkAmong({ subnets: new TakenBlocks(existing.subnets), vnis: new Set(existing.vnis) }, cfg, req);
}

/** What the other networks hold, kept by the caller as networks come and go (the store's network table). */
export interface TakenSpace {
  subnets: TakenBlocks;
  vnis: { has(vni: number): boolean };
}

/** allocateNetwork, with what the other networks hold in `taken` (not changed). */
export function allocateNetworkAmong(
  taken: TakenSpace,
  cfg?: Partial<PoolConfig>,
  req: NetworkRequest = {},
): NetworkAlloc {
  const subnet = allocateSubnetAmong(taken.subnets, cfg, req.subnet);
  const gateway = gatewayOf(subnet, req.gateway);
  const vni = allocateVniAmong(taken.vnis, { requested: req.vni, pool: subnet });
  return newNetworkAlloc(subnet, gateway, vni);
}

// --- endpoint addresses ------------------------------------------------------------------------------------

/**
 * An address on `net` for endpoint `endpointId`, recorded in `net.used`.
 *
 * With `requested` (`--ip`): that address if it is a free host address of the subnet; the serial pointer does
 * not move. Otherwise the first free host address at or after `net.nextHost`, wrapping round to the first
 * host; the gateway, the network and broadcast addresses and held addresses are skipped, and the pointer moves
 * past the address given out (so a released address comes back only after a wrap).
 *
 * Errors (nothing changed): the requested address malformed (400), outside the subnet (400), the network or
 * broadcast address (400), held or the gateway's ("Address already in use", 403); no free address ("no
 * available IPv4 addresses on this network's address pools: <name> (<id>)", 500; `network` names it, else
 * the subnet is named).
 */
export function allocateIp(
  net: NetworkAlloc,
  endpointId: string,
  requested?: string,
  network?: { name: string; id: string },
): string {
  const c = parseHostSubnet(net.subnet);
  const gw = ipToInt(net.gateway);
  const hosts = c.size - 2;

  if (requested !== undefined) {
    const n = ipToInt(requested);
    if (n < c.base || n > c.last) throw ipOutOfSubnet(requested);
    if (n === c.base) throw ipReserved(requested, net.subnet, "network");
    if (n === c.last) throw ipReserved(requested, net.subnet, "broadcast");
    const ip = formatIpv4(n);
    if (n === gw || Object.hasOwn(net.used, ip)) throw ipInUse();
    net.used[ip] = endpointId;
    return ip;
  }

  let start = net.nextHost;
  if (!Number.isInteger(start) || start < 1 || start > hosts) start = 1;
  for (let k = 0; k < hosts; k++) {
    const off = ((start - 1 + k) % hosts) + 1;
    const n = c.base + off;
    if (n === gw) continue;
    const ip = formatIpv4(n);
    if (Object.hasOwn(net.used, ip)) continue;
    net.used[ip] = endpointId;
    net.nextHost = off === hosts ? 1 : off + 1;
    return ip;
  }
  throw ipExhausted(network ?? net.subnet);
}

/**
 * Frees `ip` on `net`. With `endpointId`, only if that endpoint holds it. Returns whether it was freed; freeing
 * an address nobody holds is a no-op. The serial pointer does not move.
 */
export function releaseIp(net: NetworkAlloc, ip: string, endpointId?: string): boolean {
  if (!Object.hasOwn(net.used, ip)) return false;
  if (endpointId !== undefined && net.used[ip] !== endpointId) return false;
  delete net.used[ip];
  return true;
}

/** How many endpoint addresses `net` can still give out. */
export function freeAddresses(net: NetworkAlloc): number {
  const c = parseHostSubnet(net.subnet);
  const gwInside = cidrContains(c, net.gateway) ? 1 : 0;
  return c.size - 2 - gwInside - Object.keys(net.used).length;
}
