// The host's IPsec for encrypted overlay networks: keeps the kernel's xfrm states and policies and the
// firewall's guard (see xfrm.ts and firewall.ts for what they are) in line with what this host holds - the encrypted networks
// with a local container, the remote hosts (VTEPs) of those networks, and the keyring from the managers.
//
// The states towards a remote host are per pair of hosts, not per network: two encrypted networks between
// the same two hosts share them. So the wanted state is (keys, remotes = every remote VTEP of every
// encrypted network held here, VNIs = those networks' VNIs), and sync() moves the kernel from what it
// installed last to that, in an order that never lets cleartext out:
//   1. the guard gains new VNIs first (from then on the VNI's VXLAN leaves marked and only through
//      IPsec, or is dropped), and loses VNIs last;
//   2. remotes that left are torn down (policy first);
//   3. a new keyring is rotated in on the remaining remotes in the three ordered steps of renderRotate;
//   4. remotes that joined are installed with the current keys.
// Without keys (the first push has not arrived) nothing is installed and the guard drops the traffic.
//
// A batch that fails half way leaves a pair in an unknown state: that pair is flushed (everything with
// shoal's reqid between the two addresses, and its policy) and installed afresh on the next sync, which a
// timer retries. Key material only ever travels on the `ip -batch` standard input: no log line and no
// error carries it (CommandError would keep the stdin, so it is not used here).

import type { Logger } from "pino";
import pino from "pino";
import { DEFAULT_DATA_PATH_PORT } from "../api/ports.js";
import { Serial } from "../serial.js";
import { normalizeIp } from "./addr.js";
import type { Firewall } from "./firewall.js";
import { batch } from "./render.js";
import type { Runner } from "./runner.js";
import { commandFailure, spawnRunner } from "./runner.js";
import {
  hex32,
  type IcvBits,
  type Key,
  renderFlush,
  renderInstall,
  renderRemove,
  renderRotate,
  spi,
  XFRM_MARK,
  XFRM_REQID,
} from "./xfrm.js";

export interface IpsecOptions {
  /** This host's data-path address (the local end of every state and policy). */
  localAddr: string;
  /** The firewall that holds the guard (nftables or iptables, whichever the host runs). */
  firewall: Firewall;
  port?: number;
  icvBits?: IcvBits;
  runner?: Runner;
  logger?: Logger;
  /** Delay before a failed pair is retried. Default 1 s. */
  retryMs?: number;
}

export interface IpsecWanted {
  /** The keyring (3 keys, ascending), or undefined when none has arrived yet. */
  keys: Key[] | undefined;
  /** The encrypted networks held here: VNI and the remote VTEPs that have endpoints on it. */
  networks: { vni: number; remotes: string[] }[];
}

export interface PeerIpsecStatus {
  /** Remote data-path address. */
  ip: string;
  /** Whether shoal installed this pair's states and policy with the current keys. */
  installed: boolean;
  /** Why it is not installed, if a command failed. */
  error?: string;
}

/** One ESP state as `ip xfrm state list` shows it (the header only: never the key). */
export interface KernelState {
  src: string;
  dst: string;
  spi: number;
  reqid: number;
}

/** One policy as `ip xfrm policy list` shows it. */
export interface KernelPolicy {
  src: string;
  dst: string;
  dport?: number;
  dir: string;
  mark?: number;
  tmpl?: { src: string; dst: string; spi: number; reqid: number };
}

/** What the kernel really holds towards one remote, read back (for `network inspect`). */
export interface PeerKernelView {
  ip: string;
  /** Tags of the inbound states (remote -> here) found, ascending. */
  inbound: number[];
  /** Tag of the outbound state (here -> remote), if one is found. */
  outbound: number | undefined;
  /** Whether the marked outbound policy exists and names the outbound state of the primary key. */
  policy: boolean;
  /** All 3 inbound states, the primary's outbound state and the policy pointing at it. */
  complete: boolean;
}

class IpsecCommandError extends Error {
  constructor(what: string, stderr: string, code: number) {
    super(commandFailure(what, stderr, code));
    this.name = "IpsecCommandError";
  }
}

const sameTags = (a: Key[] | undefined, b: Key[] | undefined): boolean =>
  a !== undefined && b !== undefined && a.length === b.length && a.every((k, i) => k.tag === b[i]!.tag);

export class IpsecDataplane {
  readonly localAddr: string;
  private readonly port: number;
  private readonly icvBits: IcvBits | undefined;
  private readonly runner: Runner;
  private readonly firewall: Firewall;
  private readonly log: Logger;
  private readonly retryMs: number;
  /** The keys the installed pairs use. */
  private keys: Key[] | undefined;
  /** Remotes whose states and policy are installed with `keys`. */
  private installed = new Set<string>();
  /** Remotes wanted but not installed because a command failed, and why. */
  private failed = new Map<string, string>();
  /** VNIs the loaded guard covers. */
  private vnis: number[] = [];
  private wanted: IpsecWanted = { keys: undefined, networks: [] };
  private readonly chain = new Serial();
  private retryTimer: NodeJS.Timeout | undefined;
  private closed = false;
  /** After adopt(): the kernel's states and policies are a previous run's, not yet taken over. */
  private adopting = false;

  constructor(opts: IpsecOptions) {
    this.localAddr = normalizeIp(opts.localAddr, "data path address");
    this.port = opts.port ?? DEFAULT_DATA_PATH_PORT;
    this.icvBits = opts.icvBits;
    this.runner = opts.runner ?? spawnRunner;
    this.firewall = opts.firewall;
    this.log = (opts.logger ?? pino({ level: "silent" })).child({ component: "ipsec" });
    this.retryMs = opts.retryMs ?? 1000;
  }

  private get xopts() {
    return { port: this.port, ...(this.icvBits ? { icvBits: this.icvBits } : {}) };
  }

  /** Bring the kernel in line with `wanted` (serialised with every other change). */
  sync(wanted: IpsecWanted): Promise<void> {
    this.wanted = wanted;
    return this.serialised(() => this.apply());
  }

  /**
   * Remove everything shoal may have left in this namespace (a previous run that crashed): every state with
   * shoal's reqid, every policy with shoal's mark, and the guard (in nftables and in iptables, whichever
   * the previous run used). Run once before the first sync.
   */
  reset(): Promise<void> {
    return this.serialised(async () => {
      // The states go below whatever the listing says. A policy left behind is reported, not fatal: it
      // matches only packets the guard marks (the guard is reset below), and a sync replaces its peers' own.
      const policies = await this.listPolicies().catch((e: unknown) => {
        this.log.warn({ err: (e as Error).message }, "could not list xfrm policies: a previous run's may remain");
        return [];
      });
      const lines = policies.filter((p) => p.mark === XFRM_MARK).map((p) => policyDelete(p));
      lines.push(`xfrm state deleteall reqid ${hex32(XFRM_REQID)}`);
      await this.run(["ip", "-force", "-batch", "-"], batch(lines), "removing a previous run's IPsec states");
      await this.firewall.resetGuard();
      this.installed.clear();
      this.failed.clear();
      this.vnis = [];
      this.keys = undefined;
      this.adopting = false;
    });
  }

  /**
   * A restart that adopts running containers on encrypted networks (`vnis`): what a previous run installed
   * stays, so their traffic goes on; the guard covers exactly `vnis` from now on (cleartext of those VNIs
   * is never let out, whatever the previous run left). The states and policies are taken over at the first
   * sync with keys: a pair complete with those keys towards a wanted remote is kept, every other pair of
   * shoal's is removed (as it is at a sync without any remote). With no VNI this is reset().
   */
  adopt(vnis: number[]): Promise<void> {
    if (vnis.length === 0) return this.reset();
    return this.serialised(async () => {
      const sorted = [...new Set(vnis)].sort((a, b) => a - b);
      await this.firewall.loadGuard(sorted, this.port);
      this.vnis = sorted;
      this.installed.clear();
      this.failed.clear();
      this.keys = undefined;
      this.adopting = true;
    });
  }

  /** Stop retrying (daemon shutdown). Nothing is removed: the guard keeps dropping cleartext. */
  close(): void {
    this.closed = true;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
  }

  /** The tags of the keys the installed pairs use (ascending), and each wanted remote's status. */
  status(): { keyTags: number[]; peers: PeerIpsecStatus[]; guardedVnis: number[] } {
    const remotes = wantedRemotes(this.wanted);
    return {
      keyTags: (this.keys ?? []).map((k) => k.tag),
      guardedVnis: [...this.vnis],
      peers: remotes.map((ip) => {
        const error = this.failed.get(ip);
        return {
          ip,
          installed: this.installed.has(ip),
          ...(error ? { error } : !this.installed.has(ip) && !this.wanted.keys ? { error: "no keys yet" } : {}),
        };
      }),
    };
  }

  /** The keyring the installed pairs use (undefined before the first install). */
  installedKeys(): Key[] | undefined {
    return this.keys ? [...this.keys] : undefined;
  }

  /** Read back from the kernel what is installed towards each of `remotes` (states by SPI, the policy). */
  async kernelView(remotes: string[], keys: Key[] | undefined): Promise<PeerKernelView[]> {
    const [states, policies] = await Promise.all([this.listStates(), this.listPolicies()]);
    return this.viewOf(states, policies, remotes, keys);
  }

  private viewOf(
    states: KernelState[],
    policies: KernelPolicy[],
    remotes: string[],
    keys: Key[] | undefined,
  ): PeerKernelView[] {
    const primary = keys?.[1];
    return remotes.map((r) => {
      const ip = normalizeIp(r);
      const inbound: number[] = [];
      let outbound: number | undefined;
      for (const k of keys ?? []) {
        if (states.some((s) => s.src === ip && s.dst === this.localAddr && s.spi === spi(ip, this.localAddr, k.tag)))
          inbound.push(k.tag);
        if (states.some((s) => s.src === this.localAddr && s.dst === ip && s.spi === spi(this.localAddr, ip, k.tag)))
          outbound ??= k.tag;
      }
      const pol = policies.find(
        (p) =>
          p.mark === XFRM_MARK &&
          p.dir === "out" &&
          p.src.split("/")[0] === this.localAddr &&
          p.dst.split("/")[0] === ip,
      );
      const policy =
        pol?.tmpl !== undefined && primary !== undefined && pol.tmpl.spi === spi(this.localAddr, ip, primary.tag);
      return {
        ip,
        inbound,
        outbound,
        policy,
        complete: keys !== undefined && inbound.length === keys.length && outbound === primary?.tag && policy,
      };
    });
  }

  // ---- the work -----------------------------------------------------------------------------------------

  private async apply(): Promise<void> {
    const want = this.wanted;
    const vnis = [...new Set(want.networks.map((n) => n.vni))].sort((a, b) => a - b);
    const remotes = new Set(wantedRemotes(want));
    const keys = want.keys;
    for (const r of this.failed.keys()) if (!remotes.has(r)) this.failed.delete(r);
    if (this.adopting && (keys || remotes.size === 0)) await this.takeOver(keys, remotes);

    // 1. The guard gains VNIs before anything else (it is never left without a VNI still in use).
    const gained = vnis.some((v) => !this.vnis.includes(v));
    if (gained) {
      await this.firewall.loadGuard([...new Set([...this.vnis, ...vnis])], this.port);
      this.vnis = [...new Set([...this.vnis, ...vnis])].sort((a, b) => a - b);
    }

    // 2. Remotes that left.
    const gone = [...this.installed].filter((r) => !remotes.has(r));
    if (gone.length > 0 && this.keys) {
      await this.runPairs(
        gone,
        () => renderRemove(this.localAddr, gone, this.keys!, this.xopts),
        "removing IPsec towards",
      );
      for (const r of gone) this.installed.delete(r);
    }

    // 3. A new keyring on the pairs that stay.
    if (keys && this.keys && !sameTags(keys, this.keys) && this.installed.size > 0) {
      const stay = [...this.installed];
      const old = this.keys;
      const steps = renderRotate(this.localAddr, stay, old, keys, this.xopts);
      const names = ["adding the new inbound keys", "moving the outbound key", "removing the old inbound keys"];
      try {
        for (const [i, step] of steps.entries()) {
          if (step !== "")
            await this.run(["ip", "-batch", "-"], step, `key rotation, ${names[i]}, towards ${stay.join(", ")}`);
        }
        this.log.info(
          { from: old.map((k) => k.tag), to: keys.map((k) => k.tag), peers: stay.length },
          "rotated the IPsec keys",
        );
      } catch (e) {
        // Somewhere half way: flush those pairs and install them afresh below.
        this.log.warn({ err: (e as Error).message }, "key rotation failed; reinstalling the affected peers");
        await this.flush(stay);
        for (const r of stay) this.installed.delete(r);
      }
    }
    if (keys) this.keys = keys;
    else if (this.installed.size === 0) this.keys = undefined;

    // 4. Remotes that joined (or are retried).
    const added = [...remotes].filter((r) => !this.installed.has(r));
    if (added.length > 0 && keys) {
      for (const r of added) {
        try {
          await this.run(
            ["ip", "-batch", "-"],
            renderInstall(this.localAddr, [r], keys, this.xopts),
            `installing IPsec towards ${r}`,
          );
          this.installed.add(r);
          this.failed.delete(r);
        } catch (e) {
          const why = (e as Error).message;
          // Once per reason (it is retried every retryMs): the kernel's message, never a key.
          if (this.failed.get(r) !== why) this.log.warn({ err: why, remote: r }, "could not install IPsec; retrying");
          this.failed.set(r, why);
          await this.flush([r]);
        }
      }
    }

    // 5. The guard loses VNIs last; with none left the table goes.
    if (this.vnis.some((v) => !vnis.includes(v))) {
      await this.firewall.loadGuard(vnis, this.port);
      this.vnis = vnis;
    }
    if (this.failed.size > 0) this.scheduleRetry();
  }

  /**
   * The first sync after adopt() that can decide: the pairs a previous run left that are complete with
   * `keys` towards a wanted remote count as installed; every other pair of shoal's (another remote, other
   * keys, half there) is flushed, and installed afresh below if wanted.
   */
  private async takeOver(keys: Key[] | undefined, remotes: Set<string>): Promise<void> {
    this.adopting = false;
    const [states, policies] = await Promise.all([this.listStates(), this.listPolicies()]);
    const present = new Set<string>();
    for (const st of states) for (const a of [st.src, st.dst]) if (a !== this.localAddr) present.add(a);
    for (const p of policies) {
      if (p.mark !== XFRM_MARK) continue;
      const dst = normalizeIp(p.dst.split("/")[0]!);
      if (dst !== this.localAddr) present.add(dst);
    }
    if (present.size === 0) return;
    const view = keys ? this.viewOf(states, policies, [...present], keys) : [];
    const kept = view.filter((v) => v.complete && remotes.has(v.ip)).map((v) => v.ip);
    const stale = [...present].filter((ip) => !kept.includes(ip));
    for (const ip of kept) this.installed.add(ip);
    if (keys && kept.length > 0) this.keys = keys;
    if (stale.length > 0) await this.flush(stale, states);
    this.log.info({ kept, removed: stale }, "took over the IPsec pairs a previous run left");
  }

  /** Run one removal for several pairs; on failure flush them (the removal's aim is reached either way). */
  private async runPairs(remotes: string[], render: () => string, what: string): Promise<void> {
    try {
      await this.run(["ip", "-batch", "-"], render(), `${what} ${remotes.join(", ")}`);
    } catch (e) {
      this.log.warn({ err: (e as Error).message }, "IPsec removal failed; flushing the pairs");
      await this.flush(remotes);
    }
  }

  /**
   * Delete every state with shoal's reqid between here and each remote (as listed now, or `listed` when the
   * caller has just read them), and the remote's policy.
   */
  private async flush(remotes: string[], listed?: KernelState[]): Promise<void> {
    try {
      const states = listed ?? (await this.listStates());
      await this.run(
        ["ip", "-force", "-batch", "-"],
        renderFlush(this.localAddr, remotes, states, this.xopts),
        "flushing IPsec pairs",
      );
    } catch (e) {
      this.log.warn({ err: (e as Error).message }, "could not flush IPsec pairs");
    }
  }

  private scheduleRetry(): void {
    if (this.retryTimer || this.closed) return;
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      void this.serialised(() => this.apply()).catch((e: unknown) =>
        this.log.warn({ err: (e as Error).message }, "IPsec retry failed"),
      );
    }, this.retryMs);
    this.retryTimer.unref();
  }

  private async run(argv: string[], stdin: string, what: string): Promise<void> {
    if (stdin === "") return;
    const r = await this.runner(argv, { stdin });
    // -force batches report failed lines (a policy already gone) but carry on: that is what they are for.
    if (r.code !== 0 && !argv.includes("-force")) throw new IpsecCommandError(what, r.stderr || r.stdout, r.code);
  }

  private async listStates(): Promise<KernelState[]> {
    const r = await this.runner(["ip", "xfrm", "state", "list", "reqid", hex32(XFRM_REQID)]);
    if (r.code !== 0) throw new IpsecCommandError("listing the xfrm states", r.stderr, r.code);
    return parseXfrmStates(r.stdout);
  }

  private async listPolicies(): Promise<KernelPolicy[]> {
    const r = await this.runner(["ip", "xfrm", "policy", "list"]);
    if (r.code !== 0) throw new IpsecCommandError("listing the xfrm policies", r.stderr, r.code);
    return parseXfrmPolicies(r.stdout);
  }

  private serialised(f: () => Promise<void>): Promise<void> {
    return this.chain.run(f);
  }
}

function wantedRemotes(w: IpsecWanted): string[] {
  return [...new Set(w.networks.flatMap((n) => n.remotes.map((r) => normalizeIp(r))))].sort();
}

function policyDelete(p: KernelPolicy): string {
  const sel = `src ${p.src} dst ${p.dst} proto udp${p.dport !== undefined ? ` dport ${p.dport}` : ""}`;
  return `xfrm policy delete ${sel} dir ${p.dir}${p.mark !== undefined ? ` mark ${hex32(p.mark)}` : ""}`;
}

// ---- parsing `ip xfrm ... list` (iproute2 has no JSON for xfrm) -----------------------------------------

/**
 * The states of `ip xfrm state list`: a record starts with an unindented `src A dst B` line, then an indented
 * `proto esp spi 0x... reqid N mode ...` line. Only those fields are read; the key lines are skipped.
 */
export function parseXfrmStates(text: string): KernelState[] {
  const out: KernelState[] = [];
  let cur: { src: string; dst: string } | undefined;
  for (const line of text.split("\n")) {
    const head = /^src (\S+) dst (\S+)/.exec(line);
    if (head) {
      cur = { src: normalizeIp(head[1]!), dst: normalizeIp(head[2]!) };
      continue;
    }
    const id = /^\s+proto esp spi (0x[0-9a-f]+)(?:\([0-9]+\))? reqid (\d+)/.exec(line);
    if (id && cur) {
      out.push({ ...cur, spi: Number.parseInt(id[1]!, 16), reqid: Number(id[2]) });
      cur = undefined;
    }
  }
  return out;
}

/**
 * The policies of `ip xfrm policy list`: a record starts with an unindented selector line
 * `src A/n dst B/n [proto udp] [dport P]`, then indented `dir D ...`, `mark M/MASK`, `tmpl src X dst Y`
 * and `proto esp spi S reqid R ...` lines.
 */
export function parseXfrmPolicies(text: string): KernelPolicy[] {
  const out: KernelPolicy[] = [];
  let cur: KernelPolicy | undefined;
  let tmpl: { src: string; dst: string } | undefined;
  for (const line of text.split("\n")) {
    const head = /^src (\S+) dst (\S+)(.*)$/.exec(line);
    if (head) {
      const dport = /\bdport (\d+)/.exec(head[3]!);
      cur = { src: head[1]!, dst: head[2]!, dir: "", ...(dport ? { dport: Number(dport[1]) } : {}) };
      tmpl = undefined;
      out.push(cur);
      continue;
    }
    if (!cur) continue;
    const dir = /^\s+dir (\S+)/.exec(line);
    if (dir) cur.dir = dir[1]!;
    const mark = /^\s+mark (0x[0-9a-f]+)/.exec(line);
    if (mark) cur.mark = Number.parseInt(mark[1]!, 16);
    const t = /^\s+tmpl src (\S+) dst (\S+)/.exec(line);
    if (t) tmpl = { src: normalizeIp(t[1]!), dst: normalizeIp(t[2]!) };
    const id = /^\s+proto esp spi (0x[0-9a-f]+)(?:\([0-9]+\))? reqid (\d+)/.exec(line);
    if (id && tmpl) cur.tmpl = { ...tmpl, spi: Number.parseInt(id[1]!, 16), reqid: Number(id[2]) };
  }
  return out;
}
