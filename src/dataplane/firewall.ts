// The host's packet filter rules, for either of the two firewalls Linux hosts run: nftables (its `inet` and
// `ip` families) or legacy iptables (`iptables-legacy`, with xt_u32, xt_policy, xt_mark, MASQUERADE and
// conntrack). Which one is chosen by probing the kernel once at start: nftables where it can load shoal's
// guard, else iptables-legacy (e.g. Debian's User-mode Linux kernel, which has nf_tables without the inet
// and ip families, or hosts that still run iptables-legacy); `--firewall-backend` can force either.
//
// Two programs, each rendered for both backends (pure functions, checked line by line in the unit tests):
//   the guard of encrypted overlays (see xfrm.ts for why): VXLAN of an encrypted VNI leaving this host is
//     marked 0x53484C (so the marked xfrm policy encrypts it), dropped when its route has no xfrm
//     transformation (counter cleartext-out), and dropped on input when it did not come through IPsec
//     (counter cleartext-in);
//   the gateway bridge's NAT (masquerade of 172.18.0.0/16 leaving through another interface) and, for
//     iptables, the forwarding it needs where the FORWARD chain's policy is DROP (as Docker sets it).
//
// nftables: each program is one `nft -f -` transaction that replaces shoal's own table.
// iptables: each program is one `iptables-legacy-restore --noflush` run whose tables are each committed
// atomically. shoal's rules live in its own chains (SHOAL-...), which the program declares (so they are
// flushed and rewritten whole), and one jump from a built-in chain into each, inserted first in that
// chain. The jump is added only where `iptables-legacy-save` shows it missing, so a program applied twice
// leaves one jump; nobody else's rules are touched.

import type { Logger } from "pino";
import pino from "pino";
import { DEFAULT_DATA_PATH_PORT } from "../api/ports.js";
import { batch } from "./render.js";
import type { Runner } from "./runner.js";
import { commandFailure, spawnRunner } from "./runner.js";
import { type EspSupport, hex32, probeXfrm, XFRM_MARK } from "./xfrm.js";

export type FirewallBackend = "nftables" | "iptables";
export type FirewallPreference = FirewallBackend | "auto";

const IPTABLES_SAVE = "iptables-legacy-save";
const IPTABLES_RESTORE = "iptables-legacy-restore";

/** What the probe found: the backend in use, or none, and why nftables (or both) could not be used. */
export type FirewallStatus =
  | { backend: FirewallBackend; forced: boolean; nftablesUnavailable?: string }
  | { backend: null; reason: string };

// ---- the guard: nftables -------------------------------------------------------------------------------

const NFT_TABLE = "shoal-overlay";
const NFT_FAMILY = "inet";

/**
 * The VNI of a VXLAN packet as an nft raw payload expression: the transport header (`@th`) is the 8-byte
 * UDP header, then the 8-byte VXLAN header (flags 8 bits, reserved 24, VNI 24, reserved 8), so the VNI is at
 * bit 64 + 32 = 96, 24 bits long.
 */
const NFT_VNI = "@th,96,24";

function checkGuardArgs(vnis: number[], port: number): number[] {
  if (!Number.isInteger(port) || port < 1 || port > 65_535) throw new Error(`invalid data-path port ${port}`);
  for (const v of vnis) {
    if (!Number.isInteger(v) || v < 1 || v > 0xffffff) throw new Error(`invalid VNI ${v}: must be 1-16777215`);
  }
  return [...new Set(vnis)].sort((a, b) => a - b);
}

/**
 * The nft program (for `nft -f -`, host namespace) that replaces table inet shoal-overlay atomically (the
 * first two lines make sure it exists, then delete it, all in one transaction):
 *   mark-out   route/output: VXLAN of an encrypted VNI gets mark 0x53484C (and is re-routed, so the
 *              marked xfrm policy applies);
 *   guard-out  postrouting: VXLAN of an encrypted VNI whose route has no xfrm transformation is dropped
 *              (counter cleartext-out) - no cleartext leaves, even without a policy or mark;
 *   guard-in   input: VXLAN of an encrypted VNI that did not come through IPsec is dropped (cleartext-in).
 * With no encrypted VNIs the program just deletes the table.
 * Checked with nftables 1.0.6 (which lists `meta secpath` as `meta ipsec`; `rt ipsec` needs an
 * output/postrouting/forward hook).
 */
export function renderNft(encryptedVnis: number[], port: number = DEFAULT_DATA_PATH_PORT): string {
  const vnis = checkGuardArgs(encryptedVnis, port);
  const t = `${NFT_FAMILY} ${NFT_TABLE}`;
  const head = [`table ${t} {}`, `delete table ${t}`];
  if (vnis.length === 0) return batch(head);
  const match = `udp dport ${port} ${NFT_VNI} { ${vnis.join(", ")} }`;
  return batch([
    ...head,
    `table ${t} {`,
    "\tcounter cleartext-in {",
    "\t}",
    "\tcounter cleartext-out {",
    "\t}",
    "\tchain mark-out {",
    "\t\ttype route hook output priority mangle; policy accept;",
    `\t\t${match} meta mark set ${hex32(XFRM_MARK)}`,
    "\t}",
    "\tchain guard-out {",
    "\t\ttype filter hook postrouting priority filter; policy accept;",
    `\t\t${match} rt ipsec missing counter name "cleartext-out" drop`,
    "\t}",
    "\tchain guard-in {",
    "\t\ttype filter hook input priority filter; policy accept;",
    `\t\t${match} meta ipsec missing counter name "cleartext-in" drop`,
    "\t}",
    "}",
  ]);
}

// ---- iptables: what is there ---------------------------------------------------------------------------

/** One table of `iptables-legacy-save -t TABLE`: its chains and its jumps into shoal's chains. */
export interface IptablesTable {
  chains: string[];
  /** Rules `-A FROM -j TO` whose target TO is one of shoal's chains (SHOAL-...). */
  jumps: { from: string; to: string }[];
}

const CHAIN_NAME = /^[A-Za-z0-9_.-]{1,28}$/;

/**
 * Parse one table of `iptables-legacy-save` output: `:NAME POLICY [p:b]` declares a chain, `-A FROM -j
 * SHOAL-X` (nothing else on the line) is a jump into one of shoal's chains. Anything else is ignored; a
 * chain name that iptables could not have printed is an error.
 */
export function parseIptablesSave(text: string, table: string): IptablesTable {
  const out: IptablesTable = { chains: [], jumps: [] };
  let inTable = false;
  for (const line of text.split("\n")) {
    if (line.startsWith("*")) {
      inTable = line.slice(1).trim() === table;
      continue;
    }
    if (!inTable) continue;
    if (line === "COMMIT") break;
    const chain = /^:(\S+) /.exec(line);
    if (chain) {
      if (!CHAIN_NAME.test(chain[1]!)) throw new Error(`${IPTABLES_SAVE} printed a chain named "${chain[1]}"`);
      out.chains.push(chain[1]!);
      continue;
    }
    const jump = /^-A (\S+) -j (SHOAL-\S+)$/.exec(line.trimEnd());
    if (jump) out.jumps.push({ from: jump[1]!, to: jump[2]! });
  }
  return out;
}

/** shoal's chains in one table: each with its rules, and the built-in chain that jumps into it. */
export interface IptablesChain {
  name: string;
  /** The built-in chain whose first rule jumps here (none for a chain only reached from shoal's own). */
  from?: string;
  rules: string[];
}

/**
 * The `iptables-restore --noflush` section for one table that makes shoal's chains exactly `chains`: each
 * declared (created, or flushed if it exists) and filled, the missing jumps inserted first in their
 * built-in chain, and shoal's chains of this table that are no longer wanted unhooked and deleted
 * (`ours`: every chain name shoal uses in this table). Empty when there is nothing to do.
 */
function renderIptablesTable(table: string, chains: IptablesChain[], ours: string[], have: IptablesTable): string[] {
  const wanted = new Set(chains.map((c) => c.name));
  const stale = ours.filter((c) => !wanted.has(c) && have.chains.includes(c));
  const staleJumps = have.jumps.filter((j) => stale.includes(j.to));
  const hooks = chains.filter((c) => c.from && !have.jumps.some((j) => j.from === c.from && j.to === c.name));
  if (chains.length === 0 && stale.length === 0 && staleJumps.length === 0) return [];
  return [
    `*${table}`,
    ...chains.map((c) => `:${c.name} - [0:0]`),
    ...chains.flatMap((c) => c.rules.map((r) => `-A ${c.name} ${r}`)),
    ...hooks.map((c) => `-I ${c.from} 1 -j ${c.name}`),
    ...staleJumps.map((j) => `-D ${j.from} -j ${j.to}`),
    ...stale.map((c) => `-F ${c}`),
    ...stale.map((c) => `-X ${c}`),
    "COMMIT",
  ];
}

// ---- the guard: iptables -------------------------------------------------------------------------------

const IPT_GUARD_TABLE = "mangle";
const IPT_MARK = "SHOAL-OVERLAY-MARK";
const IPT_GUARD_OUT = "SHOAL-OVERLAY-OUT";
const IPT_GUARD_IN = "SHOAL-OVERLAY-IN";
const IPT_CLEARTEXT_OUT = "SHOAL-CLEARTEXT-OUT";
const IPT_CLEARTEXT_IN = "SHOAL-CLEARTEXT-IN";
const GUARD_CHAINS = [IPT_MARK, IPT_GUARD_OUT, IPT_GUARD_IN, IPT_CLEARTEXT_OUT, IPT_CLEARTEXT_IN];

/**
 * The VNI of a VXLAN packet as an xt_u32 test: `0>>22&0x3C` is the IP header's length in bytes, `@` moves
 * past it to the UDP header, and the 4 bytes at 12 (8 of UDP, then 4 into the VXLAN header) are the VNI and
 * the reserved byte: `>>8` leaves the VNI.
 */
const u32Vni = (vni: number): string => `"0>>22&0x3C@12>>8=${vni}"`;

/**
 * The guard as one `iptables-legacy-restore --noflush` program, all in the mangle table (so one atomic
 * commit, like nft's one transaction):
 *   SHOAL-OVERLAY-MARK   from OUTPUT: VXLAN of an encrypted VNI gets mark 0x53484C (mangle OUTPUT re-routes a
 *                        packet whose mark changed, so the marked xfrm policy applies);
 *   SHOAL-OVERLAY-OUT    from POSTROUTING: such VXLAN whose route has no xfrm transformation (policy match
 *                        `--dir out --pol none`) goes to SHOAL-CLEARTEXT-OUT, whose one rule drops it (that
 *                        rule's packet counter is cleartext-out);
 *   SHOAL-OVERLAY-IN     from INPUT: such VXLAN that did not come through IPsec (`--dir in --pol none`) goes
 *                        to SHOAL-CLEARTEXT-IN, which drops it (cleartext-in).
 * The jumps are inserted first in their built-in chains, so no earlier ACCEPT can bypass the guard. With no
 * encrypted VNIs the program unhooks and deletes the chains (nothing at all when none exist).
 */
export function renderIptablesGuard(
  encryptedVnis: number[],
  port: number = DEFAULT_DATA_PATH_PORT,
  have: IptablesTable = { chains: [], jumps: [] },
): string {
  const vnis = checkGuardArgs(encryptedVnis, port);
  const udp = `-p udp -m udp --dport ${port} -m u32 --u32`;
  const chains: IptablesChain[] =
    vnis.length === 0
      ? []
      : [
          {
            name: IPT_MARK,
            from: "OUTPUT",
            rules: vnis.map((v) => `${udp} ${u32Vni(v)} -j MARK --set-mark ${hex32(XFRM_MARK)}`),
          },
          {
            name: IPT_GUARD_OUT,
            from: "POSTROUTING",
            rules: vnis.map((v) => `${udp} ${u32Vni(v)} -m policy --dir out --pol none -j ${IPT_CLEARTEXT_OUT}`),
          },
          {
            name: IPT_GUARD_IN,
            from: "INPUT",
            rules: vnis.map((v) => `${udp} ${u32Vni(v)} -m policy --dir in --pol none -j ${IPT_CLEARTEXT_IN}`),
          },
          { name: IPT_CLEARTEXT_OUT, rules: ["-j DROP"] },
          { name: IPT_CLEARTEXT_IN, rules: ["-j DROP"] },
        ];
  return batch(renderIptablesTable(IPT_GUARD_TABLE, chains, GUARD_CHAINS, have));
}

/**
 * The packets dropped by the guard's two `-j DROP` rules, from `iptables-legacy-save -c -t mangle` (lines
 * `[packets:bytes] -A SHOAL-CLEARTEXT-IN -j DROP`). Undefined when the guard is not loaded.
 */
export function parseIptablesCleartext(text: string): { in: number; out: number } | undefined {
  const count = (chain: string): number | undefined => {
    const m = new RegExp(`^\\[(\\d+):\\d+\\] -A ${chain} -j DROP\\s*$`, "m").exec(text);
    return m ? Number(m[1]) : undefined;
  };
  const i = count(IPT_CLEARTEXT_IN);
  const o = count(IPT_CLEARTEXT_OUT);
  return i === undefined || o === undefined ? undefined : { in: i, out: o };
}

// ---- the gateway bridge's NAT --------------------------------------------------------------------------

export interface GatewayNat {
  bridge: string;
  subnet: string;
}

const NFT_GATEWAY_TABLE = "shoal";
const IPT_GATEWAY_NAT = "SHOAL-POSTROUTING";
const IPT_GATEWAY_FORWARD = "SHOAL-FORWARD";

/** nftables: table ip shoal, replaced whole, masquerading the bridge's subnet leaving by another interface. */
export function renderNftGateway(g: GatewayNat): string {
  return batch([
    `table ip ${NFT_GATEWAY_TABLE} {}`,
    `delete table ip ${NFT_GATEWAY_TABLE}`,
    `table ip ${NFT_GATEWAY_TABLE} {`,
    "\tchain postrouting {",
    "\t\ttype nat hook postrouting priority srcnat; policy accept;",
    `\t\tip saddr ${g.subnet} oifname != "${g.bridge}" masquerade`,
    "\t}",
    "}",
  ]);
}

/**
 * iptables: SHOAL-POSTROUTING in nat (the masquerade), and SHOAL-FORWARD in filter: containers' traffic
 * out of the bridge, and the replies back in, are accepted before a FORWARD policy of DROP (Docker's) could
 * drop them. `have` is what `iptables-legacy-save` shows of each table.
 */
export function renderIptablesGateway(g: GatewayNat, have: { nat: IptablesTable; filter: IptablesTable }): string {
  return batch([
    ...renderIptablesTable(
      "nat",
      [{ name: IPT_GATEWAY_NAT, from: "POSTROUTING", rules: [`-s ${g.subnet} ! -o ${g.bridge} -j MASQUERADE`] }],
      [IPT_GATEWAY_NAT],
      have.nat,
    ),
    ...renderIptablesTable(
      "filter",
      [
        {
          name: IPT_GATEWAY_FORWARD,
          from: "FORWARD",
          rules: [
            `-i ${g.bridge} ! -o ${g.bridge} -j ACCEPT`,
            `-o ${g.bridge} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT`,
          ],
        },
      ],
      [IPT_GATEWAY_FORWARD],
      have.filter,
    ),
  ]);
}

// ---- the probe -----------------------------------------------------------------------------------------

/** What a failed command printed, first line, without nft's/iptables' prefixes. */
function firstLine(stderr: string, stdout: string, code: number): string {
  const line = `${stderr}\n${stdout}`
    .split("\n")
    .map((l) => l.trim())
    .find((l) => l !== "");
  return (line ?? `exit code ${code}`).replace(/^Error:\s*/, "").replace(/\.$/, "");
}

/**
 * Which firewall this kernel can run shoal's guard with, tried in an anonymous scratch network namespace
 * (`unshare --net`: gone when the command exits, nothing on the host touched): nftables first, then
 * iptables-legacy. `prefer` forces one (it is still probed, so a forced backend that cannot work says why).
 */
export async function probeFirewall(
  runner: Runner = spawnRunner,
  prefer: FirewallPreference = "auto",
): Promise<FirewallStatus> {
  const tryNft = async () => {
    const r = await runner(["unshare", "--net", "nft", "-f", "-"], { stdin: renderNft([1]) });
    return r.code === 0 ? undefined : `nft: ${firstLine(r.stderr, r.stdout, r.code)}`;
  };
  const tryIpt = async () => {
    const r = await runner(["unshare", "--net", IPTABLES_RESTORE, "-w", "--noflush"], {
      stdin: renderIptablesGuard([1]),
    });
    return r.code === 0 ? undefined : `${IPTABLES_RESTORE}: ${firstLine(r.stderr, r.stdout, r.code)}`;
  };
  if (prefer !== "auto") {
    const why = await (prefer === "nftables" ? tryNft() : tryIpt());
    return why === undefined
      ? { backend: prefer, forced: true }
      : { backend: null, reason: `the ${prefer} firewall backend cannot be used (${why})` };
  }
  const nft = await tryNft();
  if (nft === undefined) return { backend: "nftables", forced: false };
  const ipt = await tryIpt();
  if (ipt === undefined) return { backend: "iptables", forced: false, nftablesUnavailable: nft };
  return { backend: null, reason: `neither nftables (${nft}) nor iptables-legacy (${ipt}) can filter packets here` };
}

/**
 * Whether this host can carry encrypted overlays: the kernel can install an ESP AES-GCM state (probeXfrm)
 * and a firewall can load the guard against cleartext (`firewall`, by default probeFirewall). The two are
 * probed in parallel.
 */
export async function probeEsp(
  runner: Runner = spawnRunner,
  firewall: () => Promise<FirewallStatus> = () => probeFirewall(runner),
): Promise<EspSupport> {
  const [xfrm, fw] = await Promise.all([probeXfrm(runner), firewall()]);
  const reasons: string[] = [];
  if (xfrm !== undefined) reasons.push(xfrm);
  if (fw.backend === null) reasons.push(`the guard against cleartext cannot be loaded: ${fw.reason}`);
  return reasons.length === 0 ? { supported: true } : { supported: false, reason: reasons.join("; ") };
}

// ---- the firewall of a host ----------------------------------------------------------------------------

class FirewallError extends Error {
  constructor(what: string, stderr: string, code: number) {
    super(commandFailure(what, stderr, code));
    this.name = "FirewallError";
  }
}

export interface FirewallOptions {
  runner?: Runner;
  logger?: Logger;
  /** "auto" (default) probes; a backend name forces it (still probed once, for the reason if it fails). */
  prefer?: FirewallPreference;
  /** Use this backend without probing (tests). */
  backend?: FirewallBackend;
}

/** The firewall of one host (network namespace): the probe's choice and shoal's programs applied with it. */
export class Firewall {
  private readonly runner: Runner;
  private readonly log: Logger;
  private readonly prefer: FirewallPreference;
  private probed: Promise<FirewallStatus> | undefined;

  constructor(opts: FirewallOptions = {}) {
    this.runner = opts.runner ?? spawnRunner;
    this.log = (opts.logger ?? pino({ level: "silent" })).child({ component: "firewall" });
    this.prefer = opts.prefer ?? "auto";
    if (opts.backend) this.probed = Promise.resolve({ backend: opts.backend, forced: true });
  }

  /** The backend in use (probed once, logged once). */
  status(): Promise<FirewallStatus> {
    this.probed ??= probeFirewall(this.runner, this.prefer).then((s) => {
      if (s.backend === null)
        this.log.warn({ reason: s.reason }, "no firewall backend: encrypted overlays are refused");
      else
        this.log.info(
          {
            backend: s.backend,
            forced: s.forced,
            ...(s.nftablesUnavailable ? { nftables: s.nftablesUnavailable } : {}),
          },
          `firewall backend: ${s.backend}`,
        );
      return s;
    });
    return this.probed;
  }

  private async backend(what: string): Promise<FirewallBackend> {
    const s = await this.status();
    if (s.backend === null) throw new Error(`${what}: ${s.reason}`);
    return s.backend;
  }

  /** Load the guard for exactly `vnis` (none: remove it). */
  async loadGuard(vnis: number[], port: number): Promise<void> {
    const what = vnis.length > 0 ? "loading the cleartext guard" : "removing the cleartext guard";
    if ((await this.backend(what)) === "nftables") {
      await this.must(["nft", "-f", "-"], renderNft(vnis, port), `${what} (nftables)`);
      return;
    }
    const have = await this.iptablesTable(IPT_GUARD_TABLE);
    await this.must([IPTABLES_RESTORE, "-w", "--noflush"], renderIptablesGuard(vnis, port, have), `${what} (iptables)`);
  }

  /**
   * Remove the guard a previous run left, in both backends whichever is in use (a backend whose tool is
   * missing or whose kernel side is absent has nothing to remove). Never throws.
   */
  async resetGuard(): Promise<void> {
    const nft = await this.runner(["nft", "-f", "-"], { stdin: renderNft([]) });
    if (nft.code !== 0 && !isMissingTool(nft.stderr))
      this.log.debug({ err: nft.stderr.trim() }, "no nftables guard to remove");
    // No iptables-save, or no iptables in the kernel: no iptables guard can be there.
    const have = await this.iptablesTable(IPT_GUARD_TABLE).catch((e: unknown) => {
      this.log.debug({ err: (e as Error).message }, "no iptables guard to remove");
      return undefined;
    });
    const program = have ? renderIptablesGuard([], DEFAULT_DATA_PATH_PORT, have) : "";
    if (program !== "") {
      const r = await this.runner([IPTABLES_RESTORE, "-w", "--noflush"], { stdin: program });
      if (r.code !== 0) this.log.warn({ err: r.stderr.trim() }, "could not remove a previous run's iptables guard");
    }
  }

  /** The guard's drop counters, or undefined when it is not loaded. */
  async cleartextCounters(): Promise<{ in: number; out: number } | undefined> {
    if ((await this.backend("reading the guard's counters")) === "iptables") {
      const r = await this.runner([IPTABLES_SAVE, "-c", "-t", IPT_GUARD_TABLE]);
      if (r.code !== 0) throw new FirewallError(`${IPTABLES_SAVE} -c`, r.stderr, r.code);
      return parseIptablesCleartext(r.stdout);
    }
    const read = async (name: string) => {
      const r = await this.runner(["nft", "list", "counter", NFT_FAMILY, NFT_TABLE, name]);
      return r.code === 0 ? Number(/packets (\d+)/.exec(r.stdout)?.[1]) : undefined;
    };
    const i = await read("cleartext-in");
    const o = await read("cleartext-out");
    return i === undefined || o === undefined || Number.isNaN(i) || Number.isNaN(o) ? undefined : { in: i, out: o };
  }

  /** The gateway bridge's NAT (and, with iptables, its forwarding), replaced whole. */
  async loadGateway(g: GatewayNat): Promise<void> {
    if ((await this.backend("setting up the gateway bridge's NAT")) === "nftables") {
      await this.must(["nft", "-f", "-"], renderNftGateway(g), "loading the gateway NAT (nftables)");
      return;
    }
    const have = { nat: await this.iptablesTable("nat"), filter: await this.iptablesTable("filter") };
    await this.must(
      [IPTABLES_RESTORE, "-w", "--noflush"],
      renderIptablesGateway(g, have),
      "loading the gateway NAT (iptables)",
    );
  }

  private async iptablesTable(table: string): Promise<IptablesTable> {
    const r = await this.runner([IPTABLES_SAVE, "-t", table]);
    if (r.code !== 0) throw new FirewallError(`${IPTABLES_SAVE} -t ${table}`, r.stderr, r.code);
    return parseIptablesSave(r.stdout, table);
  }

  private async must(argv: string[], stdin: string, what: string): Promise<void> {
    if (stdin === "") return;
    const r = await this.runner(argv, { stdin });
    if (r.code !== 0) throw new FirewallError(what, r.stderr || r.stdout, r.code);
  }
}

const isMissingTool = (stderr: string): boolean => /ENOENT|not found/.test(stderr);
