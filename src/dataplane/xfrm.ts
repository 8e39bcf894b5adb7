// IPsec (ESP transport mode, AES-GCM) for encrypted overlay networks: pure rendering of the `ip -batch`
// xfrm programs, plus a probe for whether the kernel can do it at all. (The guard against cleartext, in
// nftables or iptables, is firewall.ts.)
//
// Per remote host (VTEP) of an encrypted network, as swarmkit/libnetwork lay it out:
//   - an inbound ESP state (src=remote dst=local) for every key of the keyring (3 keys),
//   - an outbound ESP state (src=local dst=remote) for the primary key only (the middle one: the newest key
//     is installed for receiving one rotation ahead, so when a peer starts sending with it nothing is lost),
//   - one outbound policy `dir out` for UDP to the data-path port between the two host addresses, with
//     mark 0x53484C, whose template names the outbound state (reqid 0x53484C, its SPI).
//
// Why a marked policy (and not a plain selector policy matching all VXLAN between the two hosts): the mark
// is set by the firewall's guard (firewall.ts) only on VXLAN packets of *encrypted* VNIs, so plain overlay networks
// between the same two hosts stay unencrypted (Swarm's semantics, and no ESP cost for them). The usual
// risk of a mark-based policy - no mark or no policy, and the packet silently leaves in clear - is closed
// by the same guard: its postrouting chain drops any VXLAN packet of an encrypted VNI whose route has
// no xfrm transformation (`rt ipsec missing`), and its input chain drops any VXLAN packet of an encrypted
// VNI that did not arrive through IPsec (`meta ipsec missing`). Both guards match on the VNI itself, not
// on the mark, so they hold even if the marking rule or a policy is missing. Never a cleartext fallback.
//
// Rotation order (each step one `ip -batch` process, run in this order, see renderRotate):
//   1. add the inbound states of the new key(s),
//   2. move the outbound side: add the new primary's outbound state, point the policy template at it
//      (`policy update`), delete the old primary's outbound state,
//   3. delete the inbound states of the key(s) that left the keyring.
//
// ICV: 128 bits by default (the issue asks for it; libnetwork uses 64 - see encryptedMtu: with 128 bits the
// overlay MTU must be 1416, not 1424, or every full-size packet is fragmented). Key material for `rfc4106(gcm(aes))` is the
// 16-byte AES key followed by the 4-byte salt (RFC 4106 §8.1).

import { isIPv4 } from "node:net";
import { ipv4Bytes } from "../api/ipv4.js";
import { DEFAULT_DATA_PATH_PORT } from "../api/ports.js";
import { normalizeIp } from "./addr.js";
import { batch } from "./render.js";
import type { Runner } from "./runner.js";
import { spawnRunner } from "./runner.js";

/**
 * reqid of every shoal state/template, and the mark of the outbound policies: "SHL". Not libnetwork's
 * 0x53484C, so that on a host also running Docker's encrypted overlays neither cleans up the other's SAs
 * (shoal's start-up reset deletes everything with its own reqid and mark).
 */
export const XFRM_MARK = 0x53484c;
export const XFRM_REQID = 0x53484c;
const AEAD_ALGO = "rfc4106(gcm(aes))";
/** Default ICV length in bits (the 128; libnetwork uses 64). */
const ICV_BITS = 128;
export type IcvBits = 64 | 96 | 128;

/**
 * The largest overlay MTU whose VXLAN packet still fits the underlay MTU once ESP-encrypted, so nothing is
 * fragmented. The ESP payload is the whole UDP datagram: UDP 8 + VXLAN 8 + inner Ethernet 14 + MTU. ESP
 * transport adds SPI 4 + sequence 4 + IV 8 before it, and after it padding to a multiple of 4 (counting the
 * pad-length and next-header bytes, 2) and the ICV. Over IPv4 (header 20) and a 1500 underlay:
 *   ICV 64 bits  -> 1424 (libnetwork's number: 1500 - 50 - 26)
 *   ICV 128 bits -> 1416 (1424 would make 1508-byte packets)
 */
export function encryptedMtu(icvBits: IcvBits = ICV_BITS, underlayMtu = 1500, family: 4 | 6 = 4): number {
  const room = underlayMtu - (family === 4 ? 20 : 40) - 16 - icvBits / 8; // for payload + padding + 2
  return Math.floor(room / 4) * 4 - 2 - 30;
}

export interface Key {
  /** Lamport time of the key (ascending within a keyring). Hashed as 4 bytes big-endian. */
  tag: number;
  /** 16 bytes of AES-128 key. */
  key: Buffer;
  /** 4 bytes of GCM salt. */
  salt: Buffer;
}

export interface XfrmOptions {
  /** UDP data-path port. Default 4789. */
  port?: number;
  /** ICV length of the states. Default 128 (see encryptedMtu for what it costs in MTU). */
  icvBits?: IcvBits;
}

// ---- SPI ------------------------------------------------------------------------------------------------

/** An IP address as 16 bytes: IPv4 as IPv4-mapped IPv6 (::ffff:a.b.c.d), like Go's net.ParseIP. */
export function ip16(ip: string): Buffer {
  const a = normalizeIp(ip);
  const out = Buffer.alloc(16);
  if (isIPv4(a)) {
    out[10] = 0xff;
    out[11] = 0xff;
    ipv4Bytes(a).copy(out, 12);
    return out;
  }
  const [head, tail] = a.includes("::") ? a.split("::") : [a, undefined];
  const h = head ? head.split(":") : [];
  const t = tail ? tail.split(":") : [];
  const groups = tail === undefined ? h : [...h, ...Array<string>(8 - h.length - t.length).fill("0"), ...t];
  groups.forEach((g, i) => {
    out.writeUInt16BE(Number.parseInt(g || "0", 16), i * 2);
  });
  return out;
}

function fnv1a32(data: Buffer): number {
  let h = 0x811c9dc5;
  for (const b of data) {
    h ^= b;
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h >>> 0;
}

function assertTag(tag: number): void {
  if (!Number.isInteger(tag) || tag < 0 || tag > 0xffffffff)
    throw new Error(`invalid key tag ${tag}: must be 0-4294967295`);
}

/**
 * The SPI of the state from `src` to `dst` for the key with `tag`: FNV-1a-32 over src (16 bytes), tag
 * (4 bytes big-endian), dst (16 bytes) - libnetwork's formula. SPIs 0-255 are reserved (RFC 4303 §2.1):
 * a hash in that range is mapped to hash + 0x100 (256-511); every other hash is used unchanged, so shoal's
 * SPIs equal libnetwork's except for 256 of the 2^32 hash values.
 */
export function spi(src: string, dst: string, tag: number): number {
  assertTag(tag);
  const t = Buffer.alloc(4);
  t.writeUInt32BE(tag);
  const h = fnv1a32(Buffer.concat([ip16(src), t, ip16(dst)]));
  return h < 0x100 ? h + 0x100 : h;
}

export const hex32 = (n: number): string => `0x${n.toString(16).padStart(8, "0")}`;

// ---- validation -----------------------------------------------------------------------------------------

interface Ctx {
  local: string;
  remotes: string[];
  plen: number;
  port: number;
  icvBits: IcvBits;
}

function context(local: string, remotes: string[], opts?: XfrmOptions): Ctx {
  const l = normalizeIp(local, "local data-path address");
  const v4 = isIPv4(l);
  const seen = new Set<string>();
  const rs = remotes.map((r) => {
    const a = normalizeIp(r, "remote data-path address");
    if (isIPv4(a) !== v4) throw new Error(`remote ${a} and local ${l} are not the same address family`);
    if (a === l) throw new Error(`remote ${a} is the local address`);
    if (seen.has(a)) throw new Error(`remote ${a} is listed twice`);
    seen.add(a);
    return a;
  });
  const port = opts?.port ?? DEFAULT_DATA_PATH_PORT;
  if (!Number.isInteger(port) || port < 1 || port > 65_535) throw new Error(`invalid data-path port ${port}`);
  const icvBits = opts?.icvBits ?? ICV_BITS;
  if (![64, 96, 128].includes(icvBits))
    throw new Error(`invalid ICV length ${icvBits}: rfc4106 allows 64, 96 or 128 bits`);
  return { local: l, remotes: rs, plen: v4 ? 32 : 128, port, icvBits };
}

/** A keyring: exactly 3 keys, ascending distinct tags, 16-byte keys and 4-byte salts. Returns it unchanged. */
function assertKeyring(keys: Key[], what = "keyring"): Key[] {
  if (keys.length !== 3) throw new Error(`${what} must hold 3 keys (oldest, primary, newest), got ${keys.length}`);
  keys.forEach((k, i) => {
    assertTag(k.tag);
    if (k.key.length !== 16) throw new Error(`${what}: key ${k.tag} is ${k.key.length} bytes, AES-128 needs 16`);
    if (k.salt.length !== 4) throw new Error(`${what}: salt of key ${k.tag} is ${k.salt.length} bytes, needs 4`);
    if (i > 0 && k.tag <= keys[i - 1]!.tag) throw new Error(`${what}: tags must be strictly ascending`);
  });
  return keys;
}

/** The primary (transmit) key: the middle one. */
export function primaryKey(keys: Key[]): Key {
  return assertKeyring(keys)[1]!;
}

/**
 * The kernel identifies a state by (destination, SPI, protocol): two states with the same pair would make
 * the batch fail half way. Hash collisions are unlikely (2^-32 per pair) but checked before anything runs.
 */
function assertUniqueSpis(ctx: Ctx, keys: Key[]): void {
  const seen = new Map<string, string>();
  const check = (src: string, dst: string, tag: number) => {
    const s = spi(src, dst, tag);
    const id = `${dst}/${s}`;
    const what = `${src}->${dst} key ${tag}`;
    const prev = seen.get(id);
    if (prev !== undefined && prev !== what) {
      throw new Error(`SPI collision: ${hex32(s)} for both ${prev} and ${what}; rotate the keyring to resolve it`);
    }
    seen.set(id, what);
  };
  for (const r of ctx.remotes) {
    for (const k of keys) {
      check(r, ctx.local, k.tag);
      check(ctx.local, r, k.tag);
    }
  }
}

// ---- rendering ------------------------------------------------------------------------------------------

function stateAdd(ctx: Ctx, src: string, dst: string, k: Key): string {
  const material = Buffer.concat([k.key, k.salt]).toString("hex");
  return (
    `xfrm state add src ${src} dst ${dst} proto esp spi ${hex32(spi(src, dst, k.tag))} reqid ${hex32(XFRM_REQID)}` +
    ` mode transport aead '${AEAD_ALGO}' 0x${material} ${ctx.icvBits}`
  );
}

function stateDelete(src: string, dst: string, tag: number): string {
  return `xfrm state delete src ${src} dst ${dst} proto esp spi ${hex32(spi(src, dst, tag))}`;
}

function policySelector(ctx: Ctx, remote: string): string {
  return `src ${ctx.local}/${ctx.plen} dst ${remote}/${ctx.plen} proto udp dport ${ctx.port} dir out mark ${hex32(XFRM_MARK)}`;
}

function policy(verb: "add" | "update", ctx: Ctx, remote: string, primary: Key): string {
  return (
    `xfrm policy ${verb} ${policySelector(ctx, remote)}` +
    ` tmpl src ${ctx.local} dst ${remote} proto esp spi ${hex32(spi(ctx.local, remote, primary.tag))}` +
    ` reqid ${hex32(XFRM_REQID)} mode transport`
  );
}

/**
 * The `ip -batch` program that sets up encryption towards `remotes`: per remote, the inbound states of all
 * 3 keys, the outbound state of the primary, then the outbound policy (last, so it never names a state that
 * does not exist yet). Run it in the host namespace (where the VXLAN sockets live).
 */
export function renderInstall(local: string, remotes: string[], keys: Key[], opts?: XfrmOptions): string {
  const ctx = context(local, remotes, opts);
  assertKeyring(keys);
  assertUniqueSpis(ctx, keys);
  const primary = keys[1]!;
  return batch(
    ctx.remotes.flatMap((r) => [
      ...keys.map((k) => stateAdd(ctx, r, ctx.local, k)),
      stateAdd(ctx, ctx.local, r, primary),
      policy("add", ctx, r, primary),
    ]),
  );
}

/**
 * A key rotation from `oldKeys` to `newKeys`, as three `ip -batch` programs to run in order, each only
 * after the previous one succeeded: [add new inbound states, move outbound state + policy to the new
 * primary, delete the inbound states of keys that left]. A step with nothing to do is "" (skip it).
 */
export function renderRotate(
  local: string,
  remotes: string[],
  oldKeys: Key[],
  newKeys: Key[],
  opts?: XfrmOptions,
): [string, string, string] {
  const ctx = context(local, remotes, opts);
  assertKeyring(oldKeys, "old keyring");
  assertKeyring(newKeys, "new keyring");
  const oldTags = new Set(oldKeys.map((k) => k.tag));
  const newTags = new Set(newKeys.map((k) => k.tag));
  for (const k of newKeys) {
    const o = oldKeys.find((x) => x.tag === k.tag);
    if (o && (!o.key.equals(k.key) || !o.salt.equals(k.salt))) {
      throw new Error(`key ${k.tag} changed its material; a tag names one key for its whole life`);
    }
  }
  // During the rotation the old and new keys coexist: check SPIs across their union.
  assertUniqueSpis(ctx, [...oldKeys, ...newKeys.filter((k) => !oldTags.has(k.tag))]);
  const added = newKeys.filter((k) => !oldTags.has(k.tag));
  const removed = oldKeys.filter((k) => !newTags.has(k.tag));
  const oldPrimary = oldKeys[1]!;
  const newPrimary = newKeys[1]!;
  const moved = oldPrimary.tag !== newPrimary.tag;
  return [
    batch(ctx.remotes.flatMap((r) => added.map((k) => stateAdd(ctx, r, ctx.local, k)))),
    batch(
      moved
        ? ctx.remotes.flatMap((r) => [
            stateAdd(ctx, ctx.local, r, newPrimary),
            policy("update", ctx, r, newPrimary),
            stateDelete(ctx.local, r, oldPrimary.tag),
          ])
        : [],
    ),
    batch(ctx.remotes.flatMap((r) => removed.map((k) => stateDelete(r, ctx.local, k.tag)))),
  ];
}

/**
 * Tear down encryption towards `remotes`: per remote the policy first (from then on the guard drops the
 * encrypted VNIs' traffic to that host rather than letting it out in clear), then the outbound state, then
 * the inbound states.
 */
export function renderRemove(local: string, remotes: string[], keys: Key[], opts?: XfrmOptions): string {
  const ctx = context(local, remotes, opts);
  assertKeyring(keys);
  return batch(
    ctx.remotes.flatMap((r) => [
      `xfrm policy delete ${policySelector(ctx, r)}`,
      stateDelete(ctx.local, r, keys[1]!.tag),
      ...keys.map((k) => stateDelete(r, ctx.local, k.tag)),
    ]),
  );
}

/**
 * Forget the pairs with `remotes` whatever state they are in (after a batch failed half way, or a previous
 * run's pairs at a restart): the outbound policy, then each of `states` (as `ip xfrm state list reqid`
 * listed them) between here and a remote, in either direction. For `ip -force -batch` (a line whose object
 * is already gone fails, and the rest still runs).
 *
 * Each state is deleted by its SPI, not with `xfrm state deleteall src .. dst ..`: in one batch iproute2
 * (6.1) carries out only the first deleteall, and the others silently do nothing - a restart that flushed a
 * previous run's pair kept its inbound states, and every install of a keyring sharing one of their tags
 * failed (EEXIST) until the ring had moved past them, the leftovers staying for good.
 */
export function renderFlush(
  local: string,
  remotes: string[],
  states: { src: string; dst: string; spi: number }[],
  opts?: XfrmOptions,
): string {
  const ctx = context(local, remotes, opts);
  const ofPair = (r: string) =>
    states.filter(
      (s) =>
        (normalizeIp(s.src) === ctx.local && normalizeIp(s.dst) === r) ||
        (normalizeIp(s.src) === r && normalizeIp(s.dst) === ctx.local),
    );
  return batch(
    ctx.remotes.flatMap((r) => [
      `xfrm policy delete ${policySelector(ctx, r)}`,
      ...ofPair(r).map(
        (s) => `xfrm state delete src ${normalizeIp(s.src)} dst ${normalizeIp(s.dst)} proto esp spi ${hex32(s.spi)}`,
      ),
    ]),
  );
}

// ---- probe ----------------------------------------------------------------------------------------------

export type EspSupport = { supported: true } | { supported: false; reason: string };

/** What a failed command printed, without iproute2's "Error: " prefix, batch trailer and final period. */
function kernelMessage(stderr: string, stdout: string, code: number): string {
  const lines = `${stderr}\n${stdout}`
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l !== "" && !/^Command failed /.test(l));
  const msg = (lines[0] ?? `exit code ${code}`).replace(/^Error:\s*/, "").replace(/\.$/, "");
  return msg;
}

/** The probe's state: documentation addresses, an SPI outside the reserved range, a fixed test key. */
const PROBE_STATE_ARGS = [
  "xfrm",
  "state",
  "add",
  "src",
  "192.0.2.1",
  "dst",
  "192.0.2.2",
  "proto",
  "esp",
  "spi",
  "0x00000100",
  "reqid",
  hex32(XFRM_REQID),
  "mode",
  "transport",
  "aead",
  AEAD_ALGO,
  `0x${"00".repeat(20)}`,
  String(ICV_BITS),
];

/**
 * Whether this kernel can install an ESP transport state with rfc4106(gcm(aes)): tried in an anonymous
 * scratch network namespace (`unshare --net CMD`: the kernel destroys it when that command exits, so it is
 * gone afterwards even if we crash, and nothing on the host is touched). Undefined when it can, else why not.
 * (Whether the host can also guard against cleartext is the firewall's probe: probeEsp in firewall.ts.)
 */
export async function probeXfrm(runner: Runner = spawnRunner): Promise<string | undefined> {
  const r = await runner(["unshare", "--net", "ip", ...PROBE_STATE_ARGS]);
  return r.code === 0
    ? undefined
    : `this kernel cannot do IPsec ESP with AES-GCM (ip xfrm: ${kernelMessage(r.stderr, r.stdout, r.code)})`;
}

// ---- refusal --------------------------------------------------------------------------------------------

export class EncryptionUnsupportedError extends Error {
  constructor(
    readonly reason: string,
    readonly network?: string,
  ) {
    super(
      `network ${network ?? "(unnamed)"} is encrypted, but this host cannot encrypt its traffic: ${reason}. ` +
        "shoal never sends an encrypted network's traffic in clear; attach this container on a host whose kernel " +
        "has ESP and AES-GCM (CONFIG_INET_ESP, CONFIG_CRYPTO_GCM)",
    );
    this.name = "EncryptionUnsupportedError";
  }
}

/** The error for attaching to an encrypted network on a host where probeEsp said no. Throw it before any command runs. */
export function encryptionUnsupportedError(reason: string, network?: string): EncryptionUnsupportedError {
  return new EncryptionUnsupportedError(reason, network);
}

/** Guard for the attach path: resolves when encryption is possible, otherwise throws the clear error. */
export function requireEncryption(support: EspSupport, network: string): void {
  if (!support.supported) throw encryptionUnsupportedError(support.reason, network);
}
