// The host's IPsec controller: which programs run, in which order, as encrypted networks, remote hosts
// and keys come and go - a first attach before the keys arrive, a second network sharing a remote, a
// rotation, peers leaving, the last network going, and failures half way. The programs themselves are
// checked line by line in xfrm.test.ts; here each recorded command is compared with the program for that
// step. Plus the parsers of `ip xfrm state/policy list`, and the read-back that `network inspect` shows.

import { Writable } from "node:stream";
import pino from "pino";
import { describe, expect, it } from "vitest";
import { Firewall, renderIptablesGuard, renderNft } from "../../src/dataplane/firewall.js";
import { IpsecDataplane, parseXfrmPolicies, parseXfrmStates } from "../../src/dataplane/ipsec.js";
import type { Runner, RunOptions, RunResult } from "../../src/dataplane/runner.js";
import { type Key, renderFlush, renderInstall, renderRemove, renderRotate, spi } from "../../src/dataplane/xfrm.js";

const A = "192.0.2.1";
const B = "192.0.2.2";
const C = "192.0.2.3";
const key = (tag: number): Key => ({ tag, key: Buffer.alloc(16, 0x40 + tag), salt: Buffer.from([1, 2, 3, tag]) });
const K1 = [key(1), key(2), key(3)];
const K2 = [key(2), key(3), key(4)];
const K3 = [key(3), key(4), key(5)];

interface Call {
  argv: string[];
  stdin?: string;
}

/** A runner that records every command and answers with `answer` (default: success, no output). */
function recorder(answer?: (c: Call) => Partial<RunResult> | undefined) {
  const calls: Call[] = [];
  const runner = async (argv: string[], opts?: RunOptions): Promise<RunResult> => {
    const c: Call = { argv, ...(opts?.stdin !== undefined ? { stdin: opts.stdin } : {}) };
    calls.push(c);
    return { stdout: "", stderr: "", code: 0, ...answer?.(c) };
  };
  return {
    calls,
    runner,
    take(): Call[] {
      return calls.splice(0);
    },
  };
}

// iproute2's `ip xfrm state list` layout (ipxfrm.c): header line, then the id line; keys follow.
const stateText = (states: { src: string; dst: string; spi: number }[]) =>
  states
    .map((s) =>
      [
        `src ${s.src} dst ${s.dst}`,
        `\tproto esp spi 0x${s.spi.toString(16).padStart(8, "0")} reqid 5457996 mode transport`,
        "\treplay-window 0 ",
        `\taead rfc4106(gcm(aes)) 0x${"ab".repeat(20)} 128`,
        "\tanti-replay context: seq 0x0, oseq 0x0, bitmap 0x00000000",
        "\tsel src 0.0.0.0/0 dst 0.0.0.0/0 ",
      ].join("\n"),
    )
    .join("\n");

const nft = (vnis: number[]): Call => ({ argv: ["nft", "-f", "-"], stdin: renderNft(vnis) });
const ipb = (stdin: string): Call => ({ argv: ["ip", "-batch", "-"], stdin });
/** The firewall of a host whose kernel has nftables' inet family (the probe is not run). */
const nftables = (runner: Runner) => new Firewall({ runner, backend: "nftables" });

describe("IpsecDataplane.sync", () => {
  it("guard first, SAs once keys arrive, shared remotes once, rotation in 3 steps, teardown policy-first then the guard", async () => {
    const r = recorder();
    const ip = new IpsecDataplane({ localAddr: A, runner: r.runner, firewall: nftables(r.runner) });

    // A container attaches before any key has arrived: only the guard (traffic of the VNI is dropped).
    await ip.sync({ keys: undefined, networks: [{ vni: 4097, remotes: [B] }] });
    expect(r.take()).toEqual([nft([4097])]);
    expect(ip.status().peers).toEqual([{ ip: B, installed: false, error: "no keys yet" }]);

    // The keys arrive: B's states and policy.
    await ip.sync({ keys: K1, networks: [{ vni: 4097, remotes: [B] }] });
    expect(r.take()).toEqual([ipb(renderInstall(A, [B], K1))]);
    expect(ip.status()).toEqual({ keyTags: [1, 2, 3], guardedVnis: [4097], peers: [{ ip: B, installed: true }] });

    // Nothing changed: nothing runs.
    await ip.sync({ keys: K1, networks: [{ vni: 4097, remotes: [B] }] });
    expect(r.take()).toEqual([]);

    // A second encrypted network with B and C: the guard gains its VNI first, then only C is new.
    const both = [
      { vni: 4097, remotes: [B] },
      { vni: 4098, remotes: [B, C] },
    ];
    await ip.sync({ keys: K1, networks: both });
    expect(r.take()).toEqual([nft([4097, 4098]), ipb(renderInstall(A, [C], K1))]);

    // A rotation: new inbound, then outbound + policy, then the oldest inbound - for every remote, in order.
    await ip.sync({ keys: K2, networks: both });
    const [add, move, drop] = renderRotate(A, [B, C], K1, K2);
    expect(r.take()).toEqual([ipb(add), ipb(move), ipb(drop)]);
    expect(ip.status().keyTags).toEqual([2, 3, 4]);

    // The network with C goes: C is torn down (policy first, see renderRemove), then the guard shrinks.
    await ip.sync({ keys: K2, networks: [{ vni: 4097, remotes: [B] }] });
    expect(r.take()).toEqual([ipb(renderRemove(A, [C], K2)), nft([4097])]);

    // The last one goes: B torn down, then the table removed.
    await ip.sync({ keys: K2, networks: [] });
    expect(r.take()).toEqual([ipb(renderRemove(A, [B], K2)), nft([])]);
    expect(ip.status()).toEqual({ keyTags: [2, 3, 4], guardedVnis: [], peers: [] });

    // Nothing held: nothing runs.
    await ip.sync({ keys: K2, networks: [] });
    expect(r.take()).toEqual([]);
  });

  it("a remote joining while keys rotate gets the new keys; a ring two rotations ahead rotates in one go", async () => {
    const r = recorder();
    const ip = new IpsecDataplane({ localAddr: A, runner: r.runner, firewall: nftables(r.runner) });
    await ip.sync({ keys: K1, networks: [{ vni: 7, remotes: [B] }] });
    r.take();
    await ip.sync({ keys: K3, networks: [{ vni: 7, remotes: [B, C] }] });
    const [add, move, drop] = renderRotate(A, [B], K1, K3);
    expect(r.take()).toEqual([ipb(add), ipb(move), ipb(drop), ipb(renderInstall(A, [C], K3))]);
    // Tags 1 and 2 left, 4 and 5 came: both show in the steps.
    expect(add.match(/state add/g)).toHaveLength(2);
    expect(drop.match(/state delete/g)).toHaveLength(2);
  });

  it("keys going missing (a stale push) tear nothing down", async () => {
    const r = recorder();
    const ip = new IpsecDataplane({ localAddr: A, runner: r.runner, firewall: nftables(r.runner) });
    await ip.sync({ keys: K1, networks: [{ vni: 7, remotes: [B] }] });
    r.take();
    await ip.sync({ keys: undefined, networks: [{ vni: 7, remotes: [B] }] });
    expect(r.take()).toEqual([]);
    expect(ip.status().peers).toEqual([{ ip: B, installed: true }]);
  });

  it("an install that fails is flushed, reported per peer, and retried until it works", async () => {
    let fail = 2;
    // What the failed batch left: C's first inbound state (its second failed), and B's pair.
    const left = [
      { src: C, dst: A, spi: spi(C, A, 1) },
      ...K1.map((k) => ({ src: B, dst: A, spi: spi(B, A, k.tag) })),
      { src: A, dst: B, spi: spi(A, B, 2) },
    ];
    const r = recorder((c) => {
      if (c.stdin?.includes(`xfrm state add src ${C} dst ${A}`) && fail-- > 0) {
        return { code: 1, stderr: "Error: Requested AEAD algorithm not found.\nCommand failed -:1\n" };
      }
      if (c.argv.join(" ") === "ip xfrm state list reqid 0x0053484c") return { stdout: stateText(left) };
      return undefined;
    });
    const ip = new IpsecDataplane({ localAddr: A, runner: r.runner, firewall: nftables(r.runner), retryMs: 20 });
    try {
      await ip.sync({ keys: K1, networks: [{ vni: 7, remotes: [B, C] }] });
      const calls = r.take();
      expect(calls.slice(0, 3)).toEqual([nft([7]), ipb(renderInstall(A, [B], K1)), ipb(renderInstall(A, [C], K1))]);
      // The half-installed pair is flushed: its policy and every shoal state in both directions, each by its
      // SPI as the kernel lists them (one batch carries out only its first `deleteall`); B's pair stays.
      expect(calls[3]).toEqual({ argv: ["ip", "xfrm", "state", "list", "reqid", "0x0053484c"] });
      expect(calls[4]).toEqual({
        argv: ["ip", "-force", "-batch", "-"],
        stdin:
          `xfrm policy delete src ${A}/32 dst ${C}/32 proto udp dport 4789 dir out mark 0x0053484c\n` +
          `xfrm state delete src ${C} dst ${A} proto esp spi 0x${spi(C, A, 1).toString(16).padStart(8, "0")}\n`,
      });
      const st = ip.status().peers;
      expect(st[0]).toEqual({ ip: B, installed: true });
      expect(st[1]).toMatchObject({ ip: C, installed: false });
      expect(st[1]!.error).toBe(
        `installing IPsec towards ${C} failed (exit 1): Error: Requested AEAD algorithm not found.; Command failed -:1`,
      );
      // Retried on a timer: once more failing, then installed.
      await expect.poll(() => ip.status().peers[1]?.installed, { timeout: 2000, interval: 10 }).toBe(true);
      expect(ip.status().peers[1]).toEqual({ ip: C, installed: true });
      const installsOfC = r.calls.filter((c) => c.stdin === renderInstall(A, [C], K1));
      expect(installsOfC).toHaveLength(2);
    } finally {
      ip.close();
    }
  });

  it("a rotation failing half way flushes the pairs and installs them afresh with the new keys", async () => {
    let failMove = true;
    const r = recorder((c) => {
      if (failMove && c.stdin?.includes("xfrm policy update")) {
        failMove = false;
        return { code: 2, stderr: "Error: something broke.\n" };
      }
      // Half way: K1's inbound states, K2's new one, K1's outbound state.
      if (c.argv.join(" ") === "ip xfrm state list reqid 0x0053484c")
        return {
          stdout: stateText([
            ...[1, 2, 3, 4].map((t) => ({ src: B, dst: A, spi: spi(B, A, t) })),
            { src: A, dst: B, spi: spi(A, B, 2) },
          ]),
        };
      return undefined;
    });
    const ip = new IpsecDataplane({ localAddr: A, runner: r.runner, firewall: nftables(r.runner) });
    await ip.sync({ keys: K1, networks: [{ vni: 7, remotes: [B] }] });
    r.take();
    await ip.sync({ keys: K2, networks: [{ vni: 7, remotes: [B] }] });
    const [add, move] = renderRotate(A, [B], K1, K2);
    const calls = r.take();
    expect(calls.map((c) => c.argv.join(" "))).toEqual([
      "ip -batch -",
      "ip -batch -",
      "ip xfrm state list reqid 0x0053484c",
      "ip -force -batch -",
      "ip -batch -",
    ]);
    expect(calls[0]!.stdin).toBe(add);
    expect(calls[1]!.stdin).toBe(move);
    // Every state of the pair goes, by its SPI: all 4 inbound, the outbound one.
    expect(calls[3]!.stdin!.match(/^xfrm state delete src /gm)).toHaveLength(5);
    expect(calls[3]!.stdin).toContain(`xfrm state delete src ${A} dst ${B} proto esp spi`);
    expect(calls[4]!.stdin).toBe(renderInstall(A, [B], K2));
    expect(ip.status()).toMatchObject({ keyTags: [2, 3, 4], peers: [{ ip: B, installed: true }] });
  });

  it("no key material in anything it logs or any error it reports", async () => {
    const lines: string[] = [];
    const sink = new Writable({
      write(chunk, _enc, cb) {
        lines.push(String(chunk));
        cb();
      },
    });
    const logger = pino({ level: "debug" }, sink);
    const r = recorder((c) =>
      c.stdin?.includes("state add") ? { code: 1, stderr: "Error: Requested AEAD algorithm not found.\n" } : undefined,
    );
    const ip = new IpsecDataplane({
      localAddr: A,
      runner: r.runner,
      firewall: nftables(r.runner),
      logger,
      retryMs: 60_000,
    });
    try {
      await ip.sync({ keys: K1, networks: [{ vni: 7, remotes: [B] }] });
      await ip.sync({ keys: K2, networks: [{ vni: 7, remotes: [B] }] });
      const text = lines.join("") + JSON.stringify(ip.status());
      expect(r.calls.some((c) => c.stdin?.includes(K1[0]!.key.toString("hex")))).toBe(true); // it was used...
      for (const k of [...K1, ...K2]) expect(text).not.toContain(k.key.toString("hex")); // ...never shown
    } finally {
      ip.close();
    }
  });

  it("reset removes a previous run's marked policies, every state with shoal's reqid, and the table", async () => {
    const listing = [
      `src ${A}/32 dst ${B}/32 proto udp dport 4789 `,
      "\tdir out priority 0 ptype main ",
      "\tmark 0x53484c/0xffffffff ",
      `\ttmpl src ${A} dst ${B}`,
      "\t\tproto esp spi 0x00000100 reqid 5457996 mode transport",
      `src ${A}/32 dst ${C}/32 proto udp dport 4789 `,
      "\tdir out priority 0 ptype main ",
      `\ttmpl src ${A} dst ${C}`,
      "\t\tproto esp spi 0x00000100 reqid 5 mode transport",
      "",
    ].join("\n");
    const r = recorder((c) => (c.argv.join(" ") === "ip xfrm policy list" ? { stdout: listing } : undefined));
    const ip = new IpsecDataplane({ localAddr: A, runner: r.runner, firewall: nftables(r.runner) });
    await ip.reset();
    expect(r.take()).toEqual([
      { argv: ["ip", "xfrm", "policy", "list"] },
      {
        argv: ["ip", "-force", "-batch", "-"],
        stdin:
          `xfrm policy delete src ${A}/32 dst ${B}/32 proto udp dport 4789 dir out mark 0x0053484c\n` +
          "xfrm state deleteall reqid 0x0053484c\n",
      },
      // The guard of a previous run is removed from both backends: nftables' table, and iptables' chains
      // when iptables-legacy-save shows any (here it shows none, so no restore runs).
      nft([]),
      { argv: ["iptables-legacy-save", "-t", "mangle"] },
    ]);
  });
});

describe("reading the kernel back", () => {
  it("parses states (never reading the key line) and policies", () => {
    expect(parseXfrmStates(stateText([{ src: B, dst: A, spi: 0x1234 }]))).toEqual([
      { src: B, dst: A, spi: 0x1234, reqid: 5457996 },
    ]);
    expect(parseXfrmStates("")).toEqual([]);
    const pol = parseXfrmPolicies(
      [
        `src ${A}/32 dst ${B}/32 proto udp dport 4789 `,
        "\tdir out priority 0 ptype main ",
        "\tmark 0x53484c/0xffffffff ",
        `\ttmpl src ${A} dst ${B}`,
        "\t\tproto esp spi 0x0000abcd reqid 5457996 mode transport",
        "src ::/0 dst ::/0 ",
        "\tsocket in priority 0 ptype main ",
      ].join("\n"),
    );
    expect(pol).toEqual([
      {
        src: `${A}/32`,
        dst: `${B}/32`,
        dport: 4789,
        dir: "out",
        mark: 0x53484c,
        tmpl: { src: A, dst: B, spi: 0xabcd, reqid: 5457996 },
      },
      { src: "::/0", dst: "::/0", dir: "" },
    ]);
  });

  /** What `ip xfrm policy list` prints for A's outbound policy towards `dst`, naming the SA of key `tag`. */
  const policy = (dst: string, tag: number) =>
    [
      `src ${A}/32 dst ${dst}/32 proto udp dport 4789 `,
      "\tdir out priority 0 ptype main ",
      "\tmark 0x53484c/0xffffffff ",
      `\ttmpl src ${A} dst ${dst}`,
      `\t\tproto esp spi 0x${spi(A, dst, tag).toString(16).padStart(8, "0")} reqid 5457996 mode transport`,
    ].join("\n");

  it("a peer is complete with 3 inbound states, the primary's outbound state and a policy naming it", async () => {
    const all = [
      ...K2.map((k) => ({ src: B, dst: A, spi: spi(B, A, k.tag) })),
      { src: A, dst: B, spi: spi(A, B, 3) },
      // C: the oldest inbound key is missing, and the policy still names the old primary.
      ...K2.slice(1).map((k) => ({ src: C, dst: A, spi: spi(C, A, k.tag) })),
      { src: A, dst: C, spi: spi(A, C, 3) },
    ];
    const r = recorder((c) => {
      if (c.argv[2] === "state") return { stdout: stateText(all) };
      if (c.argv[2] === "policy") return { stdout: `${policy(B, 3)}\n${policy(C, 2)}\n` };
      return undefined;
    });
    const ip = new IpsecDataplane({ localAddr: A, runner: r.runner, firewall: nftables(r.runner) });
    const view = await ip.kernelView([B, C, "192.0.2.9"], K2);
    expect(view).toEqual([
      { ip: B, inbound: [2, 3, 4], outbound: 3, policy: true, complete: true },
      { ip: C, inbound: [3, 4], outbound: 3, policy: false, complete: false },
      { ip: "192.0.2.9", inbound: [], outbound: undefined, policy: false, complete: false },
    ]);
    expect(r.calls.map((c) => c.argv.join(" "))).toEqual([
      "ip xfrm state list reqid 0x0053484c",
      "ip xfrm policy list",
    ]);
  });

  it("adopt (a restart with containers on an encrypted network running on): the guard covers their VNIs at once, nothing is removed; at the first sync with keys a complete pair towards a wanted remote is kept, every other pair flushed, the wanted ones installed afresh", async () => {
    const D = "192.0.2.4";
    // A previous run left B complete with K2, C without its oldest inbound key, D (no longer a peer) complete.
    const all = [
      ...K2.map((k) => ({ src: B, dst: A, spi: spi(B, A, k.tag) })),
      { src: A, dst: B, spi: spi(A, B, 3) },
      ...K2.slice(1).map((k) => ({ src: C, dst: A, spi: spi(C, A, k.tag) })),
      { src: A, dst: C, spi: spi(A, C, 3) },
      ...K2.map((k) => ({ src: D, dst: A, spi: spi(D, A, k.tag) })),
      { src: A, dst: D, spi: spi(A, D, 3) },
    ];
    const r = recorder((c) => {
      if (c.argv[1] === "xfrm" && c.argv[2] === "state") return { stdout: stateText(all) };
      if (c.argv[1] === "xfrm" && c.argv[2] === "policy") return { stdout: `${policy(B, 3)}\n${policy(D, 3)}\n` };
      return undefined;
    });
    const ip = new IpsecDataplane({ localAddr: A, runner: r.runner, firewall: nftables(r.runner) });
    await ip.adopt([4097]);
    expect(r.take()).toEqual([nft([4097])]);
    expect(ip.status().guardedVnis).toEqual([4097]);

    // The managers' first push (before its keys): nothing is touched, the guard stays.
    const wanted = [{ vni: 4097, remotes: [B, C] }];
    await ip.sync({ keys: undefined, networks: wanted });
    expect(r.take()).toEqual([]);

    // The keys: B is kept as it is; C (incomplete) and D (not wanted) are flushed; C is installed afresh.
    await ip.sync({ keys: K2, networks: wanted });
    expect(r.take()).toEqual([
      { argv: ["ip", "xfrm", "state", "list", "reqid", "0x0053484c"] },
      { argv: ["ip", "xfrm", "policy", "list"] },
      { argv: ["ip", "-force", "-batch", "-"], stdin: renderFlush(A, [C, D], all, { port: 4789 }) },
      ipb(renderInstall(A, [C], K2)),
    ]);
    expect(ip.status()).toEqual({
      keyTags: [2, 3, 4],
      guardedVnis: [4097],
      peers: [
        { ip: B, installed: true },
        { ip: C, installed: true },
      ],
    });
    ip.close();
  });

  it("adopt without a VNI is reset", async () => {
    const r = recorder();
    const ip = new IpsecDataplane({ localAddr: A, runner: r.runner, firewall: nftables(r.runner) });
    await ip.adopt([]);
    expect(r.take().map((c) => c.argv.join(" "))).toEqual([
      "ip xfrm policy list",
      "ip -force -batch -",
      "nft -f -",
      "iptables-legacy-save -t mangle",
    ]);
  });
});

describe("IpsecDataplane on a host whose firewall is iptables-legacy", () => {
  // What iptables-legacy-save -t mangle prints once the guard is loaded (jumps first in their chains).
  const loaded = [
    "# Generated by iptables-save v1.8.9",
    "*mangle",
    ":PREROUTING ACCEPT [0:0]",
    ":INPUT ACCEPT [0:0]",
    ":FORWARD ACCEPT [0:0]",
    ":OUTPUT ACCEPT [0:0]",
    ":POSTROUTING ACCEPT [0:0]",
    ":SHOAL-CLEARTEXT-IN - [0:0]",
    ":SHOAL-CLEARTEXT-OUT - [0:0]",
    ":SHOAL-OVERLAY-IN - [0:0]",
    ":SHOAL-OVERLAY-MARK - [0:0]",
    ":SHOAL-OVERLAY-OUT - [0:0]",
    "-A INPUT -j SHOAL-OVERLAY-IN",
    "-A OUTPUT -j SHOAL-OVERLAY-MARK",
    "-A POSTROUTING -j SHOAL-OVERLAY-OUT",
    '-A SHOAL-OVERLAY-MARK -p udp -m udp --dport 4789 -m u32 --u32 "0x0>>0x16&0x3c@0xc>>0x8=0x1001" -j MARK --set-xmark 0x53484c/0xffffffff',
    "-A SHOAL-CLEARTEXT-IN -j DROP",
    "-A SHOAL-CLEARTEXT-OUT -j DROP",
    "COMMIT",
    "",
  ].join("\n");

  it("reads the mangle table, then loads the guard with one restore; jumps are inserted once; the last VNI unhooks it", async () => {
    let have = "*mangle\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n";
    const r = recorder((c) => (c.argv[0] === "iptables-legacy-save" ? { stdout: have } : undefined));
    const ip = new IpsecDataplane({
      localAddr: A,
      runner: r.runner,
      firewall: new Firewall({ runner: r.runner, backend: "iptables" }),
    });
    const save: Call = { argv: ["iptables-legacy-save", "-t", "mangle"] };
    const restore = (stdin: string): Call => ({ argv: ["iptables-legacy-restore", "-w", "--noflush"], stdin });

    await ip.sync({ keys: K1, networks: [{ vni: 4097, remotes: [B] }] });
    const first = renderIptablesGuard([4097], 4789, { chains: ["OUTPUT"], jumps: [] });
    expect(first).toContain("-I OUTPUT 1 -j SHOAL-OVERLAY-MARK\n");
    expect(r.take()).toEqual([save, restore(first), ipb(renderInstall(A, [B], K1))]);

    // A second VNI: the chains are rewritten whole, and the jumps (already there) are not added again.
    have = loaded;
    await ip.sync({
      keys: K1,
      networks: [
        { vni: 4097, remotes: [B] },
        { vni: 4098, remotes: [B] },
      ],
    });
    const second = r.take();
    expect(second).toEqual([
      save,
      restore(
        renderIptablesGuard([4097, 4098], 4789, {
          chains: ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING", ...loadedChains],
          jumps: loadedJumps,
        }),
      ),
    ]);
    expect(second[1]!.stdin).not.toContain("-I ");

    // The last network goes: its peer is torn down, then the guard is unhooked and deleted.
    await ip.sync({ keys: K1, networks: [] });
    const last = r.take();
    expect(last[0]).toEqual(ipb(renderRemove(A, [B], K1)));
    expect(last[1]).toEqual(save);
    expect(last[2]!.stdin).toBe(
      [
        "*mangle",
        "-D INPUT -j SHOAL-OVERLAY-IN",
        "-D OUTPUT -j SHOAL-OVERLAY-MARK",
        "-D POSTROUTING -j SHOAL-OVERLAY-OUT",
        ...loadedChainsInOrder.map((c) => `-F ${c}`),
        ...loadedChainsInOrder.map((c) => `-X ${c}`),
        "COMMIT",
        "",
      ].join("\n"),
    );
  });
});

const loadedChains = [
  "SHOAL-CLEARTEXT-IN",
  "SHOAL-CLEARTEXT-OUT",
  "SHOAL-OVERLAY-IN",
  "SHOAL-OVERLAY-MARK",
  "SHOAL-OVERLAY-OUT",
];
const loadedJumps = [
  { from: "INPUT", to: "SHOAL-OVERLAY-IN" },
  { from: "OUTPUT", to: "SHOAL-OVERLAY-MARK" },
  { from: "POSTROUTING", to: "SHOAL-OVERLAY-OUT" },
];
/** shoal's guard chains in the order the removal names them (firewall.ts's own order). */
const loadedChainsInOrder = [
  "SHOAL-OVERLAY-MARK",
  "SHOAL-OVERLAY-OUT",
  "SHOAL-OVERLAY-IN",
  "SHOAL-CLEARTEXT-OUT",
  "SHOAL-CLEARTEXT-IN",
];
