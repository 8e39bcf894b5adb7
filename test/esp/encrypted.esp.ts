// Encrypted overlay networks end to end: a 3-host lab (h1 the manager, h2 and h3 workers), an attachable
// overlay created with `--opt encrypted`, and containers on h2 and h3 that reach each other by name. The
// managers rotate the keys every 4 s (--encryption-key-rotation), so rotations happen all through the tests.
//
// What is checked, on a kernel with ESP and AES-GCM:
//   - the traffic between h2 and h3 is ESP: the packet/byte counters of the xfrm states between the two hosts
//     grow while pinging, the product's nft guard counters (cleartext-in, cleartext-out) stay 0, and a scratch
//     netdev counter on h3's underlay device (what arrives on the wire from h2) sees ESP and no UDP/4789;
//   - the kernel holds exactly what `network inspect` says: per peer 3 inbound states (one per key tag), 1
//     outbound state (the primary key) and the marked outbound policy for UDP/4789 naming it;
//   - the overlay MTU is 1416: a full-size don't-fragment ping passes and nothing is fragmented on the underlay;
//   - a ping every 50 ms across several key rotations loses nothing, and afterwards inspect shows the new tags
//     with the SAs installed (and the kernel has dropped the old ones);
//   - no key material in inspect or in the daemons' logs;
//   - the last local detach removes every state with reqid 0x53484c, every policy with mark 0x53484c and the
//     nft table from the host's namespace.
// Those need ESP and GCM in the kernel and run as one test (its steps are functions named after them); where
// probeEsp says no, that one test is skipped with the reason in its title. The first test needs neither and
// runs everywhere (as root): inspect of the encrypted network on the manager, which does not hold it, says
// what this kernel can do and lists no peers.
//
// Every host is a network namespace the lab made; afterAll removes the lab (and with its namespaces every
// state, policy and table in them) also when a test failed. The wire counters' scratch table is removed in
// `finally`.

import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { isDeepStrictEqual } from "node:util";
import { afterAll, beforeAll, describe, expect, it, onTestFailed } from "vitest";
import { Lab, type LabHost } from "../../deploy/lab.js";
import { probeEsp, spi, XFRM_MARK, XFRM_REQID } from "../../src/dataplane/xfrm.js";
import { build, docker, ok, overlayNamespaces, isRoot as root, shoal, waitFor } from "./lab-helpers.js";

const esp = root ? await probeEsp() : ({ supported: false, reason: "not root" } as const);
/** Appended to the title of every test that needs ESP + AES-GCM in the kernel. */
const NEEDS_ESP = esp.supported ? "" : ` (skipped: ${esp.reason})`;

const ROTATION = "4s";
const ROTATION_MS = 4000;
const NET = "secret";
const REQID_TEXT = /5457996|53484c/i; // 0x53484c as `ip xfrm` prints it (decimal, and hex with -s)

// ---- what inspect shows ----------------------------------------------------------------------------------

interface EncryptionPeer {
  Name: string;
  IP: string;
  SAsInstalled: boolean;
  InboundKeyTags: number[];
  OutboundKeyTag: number | null;
  Policy: boolean;
  Error?: string;
}

interface Encryption {
  Encrypted: boolean;
  Kernel: string;
  Held: boolean;
  KeyTags: number[];
  PrimaryKeyTag: number | null;
  LastRotation: string | null;
  RotationInterval: string | null;
  Peers: EncryptionPeer[];
  ClusterKeyTags?: number[];
  ClusterLastRotation?: string;
  ClusterNextRotation?: string;
}

interface NetworkInspect {
  Id: string;
  Name: string;
  Options: Record<string, string>;
  Containers: Record<string, { Name: string; IPv4Address: string }>;
  Encryption?: Encryption;
}

// ---- what the kernel shows (iproute2 has no JSON for xfrm) -----------------------------------------------

interface SaStats {
  src: string;
  dst: string;
  spi: number;
  reqid: number;
  bytes: number;
  packets: number;
}

/**
 * `ip -s xfrm state list`: a record starts with an unindented `src A dst B` line; then
 * `proto esp spi 0x...(dec) reqid N(0x...) mode ...`, and under `lifetime current:` a line
 * `  <n>(bytes), <n>(packets)` (the `lifetime config` lines say `soft (INF)(bytes)`, which does not match).
 */
function parseSaStats(text: string): SaStats[] {
  const out: SaStats[] = [];
  let cur: SaStats | undefined;
  for (const line of text.split("\n")) {
    const head = /^src (\S+) dst (\S+)/.exec(line);
    if (head) {
      cur = {
        src: head[1]!,
        dst: head[2]!,
        spi: Number.NaN,
        reqid: Number.NaN,
        bytes: Number.NaN,
        packets: Number.NaN,
      };
      out.push(cur);
      continue;
    }
    if (!cur) continue;
    const id = /^\s+proto esp spi (0x[0-9a-f]+)(?:\(\d+\))? reqid (\d+)/.exec(line);
    if (id) {
      cur.spi = Number.parseInt(id[1]!, 16);
      cur.reqid = Number(id[2]);
    }
    const c = /^\s+(\d+)\(bytes\), (\d+)\(packets\)/.exec(line);
    if (c) {
      cur.bytes = Number(c[1]);
      cur.packets = Number(c[2]);
    }
  }
  return out;
}

interface PolicyView {
  src: string;
  dst: string;
  proto?: string;
  dport?: number;
  dir: string;
  mark?: number;
  tmpl?: { src: string; dst: string; spi: number; reqid: number };
}

/**
 * `ip xfrm policy list`: `src A/n dst B/n proto udp dport P`, then indented `dir out ...`,
 * `mark 0x.../0x...`, `tmpl src X dst Y` and `proto esp spi 0x... reqid N mode transport`.
 */
function parsePolicies(text: string): PolicyView[] {
  const out: PolicyView[] = [];
  let cur: PolicyView | undefined;
  let tmpl: { src: string; dst: string } | undefined;
  for (const line of text.split("\n")) {
    const head = /^src (\S+) dst (\S+)(.*)$/.exec(line);
    if (head) {
      const proto = /\bproto (\S+)/.exec(head[3]!);
      const dport = /\bdport (\d+)/.exec(head[3]!);
      cur = {
        src: head[1]!,
        dst: head[2]!,
        dir: "",
        ...(proto ? { proto: proto[1]! } : {}),
        ...(dport ? { dport: Number(dport[1]) } : {}),
      };
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
    if (t) tmpl = { src: t[1]!, dst: t[2]! };
    const id = /^\s+proto esp spi (0x[0-9a-f]+)(?:\(\d+\))? reqid (\d+)/.exec(line);
    if (id && tmpl) cur.tmpl = { ...tmpl, spi: Number.parseInt(id[1]!, 16), reqid: Number(id[2]) };
  }
  return out;
}

/** `N packets transmitted, M received` (iputils; busybox says `M packets received`). */
function pingStats(out: string): { transmitted: number; received: number } | undefined {
  const m = /(\d+) packets transmitted, (\d+) (?:packets )?received/.exec(out);
  return m ? { transmitted: Number(m[1]), received: Number(m[2]) } : undefined;
}

/** The `Ip:` row of /proc/net/snmp as name -> value. */
function ipSnmp(text: string): Record<string, number> {
  const rows = text.split("\n").filter((l) => l.startsWith("Ip:"));
  const names = (rows[0] ?? "").split(/\s+/).slice(1);
  const values = (rows[1] ?? "").split(/\s+/).slice(1);
  return Object.fromEntries(names.map((n, i) => [n, Number(values[i])]));
}

/** `ip xfrm state` output without the lines that carry key material (for failure diagnostics). */
function withoutKeys(text: string): string {
  return text
    .split("\n")
    .filter((l) => !/^\s+(aead|enc|auth|auth-trunc|comp)\s/.test(l))
    .join("\n");
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// ---- the pure helpers above, checked here against iproute2's own output format --------------------------

describe("the encrypted e2e test's readers of iproute2 and ping output", () => {
  it("parse `ip -s xfrm state`, `ip xfrm policy`, ping's summary and /proc/net/snmp", () => {
    // Laid out as iproute2 6.1 prints a state with -s (xfrm_state_info_print, xfrm_lifetime_print);
    // the key is a made-up one.
    const states = [
      "src 192.0.2.2 dst 192.0.2.3",
      "\tproto esp spi 0x1a2b3c4d(439041101) reqid 5457996(0x0053484c) mode transport",
      "\treplay-window 0 seq 0x00000000 flag  (0x00000000)",
      `\taead rfc4106(gcm(aes)) 0x${"ab".repeat(20)} (160 bits) 128`,
      "\tanti-replay context: seq 0x0, oseq 0x2a, bitmap 0x00000000",
      "\tsel src 0.0.0.0/0 dst 0.0.0.0/0 uid 0",
      "\tlifetime config:",
      "\t  limit: soft (INF)(bytes), hard (INF)(bytes)",
      "\t  limit: soft (INF)(packets), hard (INF)(packets)",
      "\t  expire add: soft 0(sec), hard 0(sec)",
      "\t  expire use: soft 0(sec), hard 0(sec)",
      "\tlifetime current:",
      "\t  5208(bytes), 42(packets)",
      "\t  add 2025-01-01 00:00:00 use 2025-01-01 00:00:01",
      "\tstats:",
      "\t  replay-window 0 replay 0 failed 0",
      "src 192.0.2.3 dst 192.0.2.2",
      "\tproto esp spi 0x00000100(256) reqid 5457996(0x0053484c) mode transport",
      "\tlifetime current:",
      "\t  0(bytes), 0(packets)",
      "",
    ].join("\n");
    expect(parseSaStats(states)).toEqual([
      { src: "192.0.2.2", dst: "192.0.2.3", spi: 0x1a2b3c4d, reqid: XFRM_REQID, bytes: 5208, packets: 42 },
      { src: "192.0.2.3", dst: "192.0.2.2", spi: 0x100, reqid: XFRM_REQID, bytes: 0, packets: 0 },
    ]);
    expect(withoutKeys(states)).not.toContain("abab");
    // As `ip xfrm policy list` (and, the second, `ip -s`) printed policies like the product's in a scratch
    // namespace (iproute2 6.1).
    const policies = [
      "src 192.0.2.2/32 dst 192.0.2.3/32 proto udp dport 4789 ",
      "\tdir out priority 0 ptype main ",
      "\tmark 0x53484c/0xffffffff ",
      "\ttmpl src 192.0.2.2 dst 192.0.2.3",
      "\t\tproto esp spi 0x1a2b3c4d reqid 5457996 mode transport",
      "src 192.0.2.2/32 dst 192.0.2.4/32 proto udp dport 4789 uid 0",
      "\tdir out action allow index 9 priority 0 ptype main share any flag  (0x00000000)",
      "\tmark 0x53484c/0xffffffff ",
      "\ttmpl src 192.0.2.2 dst 192.0.2.4",
      "\t\tproto esp spi 0x00000100(256) reqid 5457996(0x0053484c) mode transport",
      "\t\tlevel required share any ",
      "",
    ].join("\n");
    expect(parsePolicies(policies)).toEqual([
      {
        src: "192.0.2.2/32",
        dst: "192.0.2.3/32",
        proto: "udp",
        dport: 4789,
        dir: "out",
        mark: XFRM_MARK,
        tmpl: { src: "192.0.2.2", dst: "192.0.2.3", spi: 0x1a2b3c4d, reqid: XFRM_REQID },
      },
      {
        src: "192.0.2.2/32",
        dst: "192.0.2.4/32",
        proto: "udp",
        dport: 4789,
        dir: "out",
        mark: XFRM_MARK,
        tmpl: { src: "192.0.2.2", dst: "192.0.2.4", spi: 0x100, reqid: XFRM_REQID },
      },
    ]);
    expect(
      pingStats(
        "--- c3 ping statistics ---\n240 packets transmitted, 239 received, 0.416667% packet loss, time 12000ms\n",
      ),
    ).toEqual({ transmitted: 240, received: 239 });
    expect(pingStats("3 packets transmitted, 3 packets received, 0% packet loss")).toEqual({
      transmitted: 3,
      received: 3,
    });
    expect(
      ipSnmp(
        "Ip: Forwarding DefaultTTL InReceives FragOKs FragFails FragCreates\nIp: 1 64 100 0 0 7\nIcmp: InMsgs\nIcmp: 3\n",
      ),
    ).toMatchObject({ InReceives: 100, FragCreates: 7 });
  });
});

// ---- the lab ---------------------------------------------------------------------------------------------

describe.skipIf(!root)("encrypted overlay networks across lab hosts", () => {
  const lab = new Lab({ name: "e2eenc", raftTickMs: 50, daemonArgs: ["--encryption-key-rotation", ROTATION] });
  let h: LabHost[] = [];
  let netId = "";
  // Lab hosts h1 (manager), h2 and h3 (workers).
  const h1 = () => h[0]!;
  const h2 = () => h[1]!;
  const h3 = () => h[2]!;

  async function inspect(x: LabHost, ref = NET): Promise<NetworkInspect> {
    const all = JSON.parse(await ok(x, "network", "inspect", ref)) as NetworkInspect[];
    expect(all).toHaveLength(1);
    return all[0]!;
  }

  async function encryption(x: LabHost): Promise<Encryption> {
    const e = (await inspect(x)).Encryption;
    if (!e) throw new Error(`network inspect ${NET} on ${x.name} has no Encryption section`);
    return e;
  }

  async function inNs(x: LabHost, argv: string[]): Promise<string> {
    return (await lab.exec(x, argv)).stdout;
  }

  /** The ESP states with shoal's reqid in a host's namespace, with their counters. */
  async function states(x: LabHost): Promise<SaStats[]> {
    const text = await inNs(x, ["ip", "-s", "xfrm", "state", "list", "reqid", `0x${XFRM_REQID.toString(16)}`]);
    return parseSaStats(text).filter((s) => s.reqid === XFRM_REQID);
  }

  async function policies(x: LabHost): Promise<PolicyView[]> {
    return parsePolicies(await inNs(x, ["ip", "xfrm", "policy", "list"]));
  }

  async function nftTables(x: LabHost): Promise<string> {
    return inNs(x, ["nft", "list", "tables"]);
  }

  /** Packets of a named nft counter in a host's namespace. */
  async function nftCounter(x: LabHost, family: string, table: string, name: string): Promise<number> {
    const out = JSON.parse(await inNs(x, ["nft", "-j", "list", "counter", family, table, name])) as {
      nftables: { counter?: { packets: number } }[];
    };
    const n = out.nftables.find((e) => e.counter)?.counter?.packets;
    if (n === undefined) throw new Error(`no counter ${family} ${table} ${name} on ${x.name}`);
    return n;
  }

  async function cleartext(x: LabHost): Promise<{ in: number; out: number }> {
    return {
      in: await nftCounter(x, "inet", "shoal-overlay", "cleartext-in"),
      out: await nftCounter(x, "inet", "shoal-overlay", "cleartext-out"),
    };
  }

  async function snmp(x: LabHost): Promise<Record<string, number>> {
    return ipSnmp(await inNs(x, ["cat", "/proc/net/snmp"]));
  }

  /**
   * Whether host `x`'s kernel holds exactly what the keys `e` (x's inspect) call for towards `peer`: the 3
   * inbound states of e.KeyTags, the outbound state of the primary key and nothing else between the two
   * hosts, and the marked UDP/4789 policy naming that outbound state. Returns what differs, or "".
   */
  async function kernelDiff(x: LabHost, peer: LabHost, e: Encryption): Promise<string> {
    const st = await states(x);
    const pol = (await policies(x)).filter((p) => p.mark === XFRM_MARK);
    const hex = (n: number) => `0x${n.toString(16)}`;
    const inbound = st.filter((s) => s.src === peer.addr && s.dst === x.addr).map((s) => hex(s.spi));
    const outbound = st.filter((s) => s.src === x.addr && s.dst === peer.addr).map((s) => hex(s.spi));
    const towards = pol.filter((p) => p.dst === `${peer.addr}/32`);
    const have = {
      inbound: inbound.sort(),
      outbound,
      policies: towards.map((p) => ({
        src: p.src,
        proto: p.proto,
        dport: p.dport,
        dir: p.dir,
        tmpl: p.tmpl ? { ...p.tmpl, spi: hex(p.tmpl.spi) } : undefined,
      })),
    };
    const primary = e.PrimaryKeyTag ?? -1;
    const want = {
      inbound: e.KeyTags.map((t) => hex(spi(peer.addr, x.addr, t))).sort(),
      outbound: [hex(spi(x.addr, peer.addr, primary))],
      policies: [
        {
          src: `${x.addr}/32`,
          proto: "udp",
          dport: 4789,
          dir: "out",
          tmpl: { src: x.addr, dst: peer.addr, spi: hex(spi(x.addr, peer.addr, primary)), reqid: XFRM_REQID },
        },
      ],
    };
    return isDeepStrictEqual(have, want)
      ? ""
      : `${x.name} towards ${peer.name}: kernel has ${JSON.stringify(have)}, inspect's keys call for ${JSON.stringify(want)}`;
  }

  /**
   * x's inspect once it is settled towards `peer`: 3 key tags, the peer listed with its SAs installed (all
   * inbound tags, the primary outbound, the policy), and the kernel agreeing. Keys rotate every few seconds,
   * and between a new keyring arriving and its SAs being rotated in inspect says "not installed" for a few
   * milliseconds: hence the wait.
   */
  async function settled(x: LabHost, peer: LabHost): Promise<Encryption> {
    let last = "";
    try {
      return await waitFor(
        `${x.name}'s SAs towards ${peer.name} to match its keys`,
        async () => {
          const e = await encryption(x);
          const p = e.Peers.find((q) => q.IP === peer.addr);
          last = JSON.stringify(e);
          if (e.KeyTags.length !== 3 || !p?.SAsInstalled) return undefined;
          const diff = await kernelDiff(x, peer, e);
          // A rotation between the two reads: read both again.
          const again = await encryption(x);
          if (JSON.stringify(again.KeyTags) !== JSON.stringify(e.KeyTags)) return undefined;
          last = diff || last;
          return diff === "" ? e : undefined;
        },
        15_000,
      );
    } catch (err) {
      throw new Error(`${(err as Error).message}; last seen: ${last}`);
    }
  }

  /** On failure: the tail of h2's and h3's logs and what their kernels hold (never key material). */
  function diagnoseOnFailure(): void {
    onTestFailed(async () => {
      for (const x of [h2(), h3()]) {
        if (!x) continue;
        const out: string[] = [`==== ${x.name} (${x.addr})`];
        try {
          out.push(readFileSync(x.log, "utf8").split("\n").slice(-40).join("\n"));
        } catch {
          out.push("(no log)");
        }
        for (const argv of [
          ["ip", "xfrm", "state", "list"],
          ["ip", "xfrm", "policy", "list"],
          ["nft", "list", "ruleset"],
          ["cat", "/proc/net/xfrm_stat"],
        ]) {
          const text = await inNs(x, argv).catch((e: unknown) => `(${(e as Error).message})`);
          out.push(`---- ${argv.join(" ")}`, withoutKeys(text));
        }
        process.stderr.write(`${out.join("\n")}\n`);
      }
    });
  }

  beforeAll(async () => {
    await lab.down();
    await build();
    h = await lab.up(3);
    await ok(h1(), "swarm", "init", "--advertise-addr", h1().addr, "--dispatcher-heartbeat", "1s");
    const wt = (await ok(h1(), "swarm", "join-token", "-q", "worker")).trim();
    for (const x of [h2(), h3()])
      await ok(x, "swarm", "join", "--token", wt, "--advertise-addr", x.addr, `${h1().addr}:2377`);
    netId = (await ok(h1(), "network", "create", "-d", "overlay", "--attachable", "--opt", "encrypted", NET)).trim();
  }, 180_000);

  afterAll(async () => {
    // Removing the namespaces removes every xfrm state, policy and nft table in them.
    await lab.down();
  }, 60_000);

  it(`inspect on a host that does not hold the network: what this kernel can do (${
    esp.supported ? "supported" : "unsupported"
  }), no peers, the cluster's key tags every ${ROTATION}, no key material`, async () => {
    const expected = esp.supported ? "supported" : `unsupported: ${esp.reason}`;
    const n = await inspect(h1());
    expect(n.Options).toHaveProperty("encrypted");
    const e = n.Encryption;
    expect(e).toBeDefined();
    expect(e!.Encrypted).toBe(true);
    expect(e!.Kernel).toBe(expected);
    if (!esp.supported) expect(e!.Kernel).toMatch(/^unsupported: /);
    expect(e!.Held).toBe(false);
    expect(e!.Peers).toEqual([]);
    // The manager holds no encrypted network, so it was given no keys of its own...
    expect(e!.KeyTags).toEqual([]);
    // ...but shows the cluster's keyring: 3 tags, rotated every ROTATION.
    const ring = await waitFor("the cluster keyring", async () => {
      const x = (await inspect(h1())).Encryption;
      return x?.ClusterKeyTags?.length === 3 ? x : undefined;
    });
    expect([...ring.ClusterKeyTags!].sort((a, b) => a - b)).toEqual(ring.ClusterKeyTags);
    expect(Date.parse(ring.ClusterNextRotation!) - Date.parse(ring.ClusterLastRotation!)).toBe(ROTATION_MS);
    // Tags and times only: no field anywhere in it that could hold a key.
    const fields: string[] = [];
    const walk = (v: unknown) => {
      if (v && typeof v === "object")
        for (const [k, x] of Object.entries(v)) {
          fields.push(k);
          walk(x);
        }
    };
    walk(ring);
    expect(fields.filter((f) => /^(key|keys|salt|material|secret)$/i.test(f))).toEqual([]);
    // The docker CLI shows the same section (it prints the daemon's JSON as it is).
    const d = await docker(h1(), "network", "inspect", NET);
    expect(d.code, d.stderr).toBe(0);
    const de = (JSON.parse(d.stdout) as NetworkInspect[])[0]!.Encryption;
    expect(de).toMatchObject({ Encrypted: true, Kernel: expected, Held: false, Peers: [] });
    // No host holds the network yet (on a kernel without ESP none ever can: the attach is refused, which
    // overlay.test.ts checks).
    for (const x of h) expect(overlayNamespaces(x)).toEqual([]);
  });

  /** containers on h2 and h3 reach each other by name over the encrypted network */
  async function reachByName(): Promise<void> {
    await ok(h2(), "run", "-d", "--name", "c2", "--network", NET, "host", "sleep", "1000");
    await ok(h3(), "run", "-d", "--name", "c3", "--network", NET, "host", "sleep", "1000");
    const ns = `1-${netId.slice(0, 10)}`;
    expect(overlayNamespaces(h1())).toEqual([]);
    expect(overlayNamespaces(h2())).toEqual([ns]);
    expect(overlayNamespaces(h3())).toEqual([ns]);
    await waitFor(
      "c2 to reach c3 by name",
      async () => (await shoal(h2(), "exec", "c2", "ping", "-c", "1", "-W", "1", "c3")).code === 0,
    );
    const back = await shoal(h3(), "exec", "c3", "ping", "-c", "1", "-W", "1", "c2");
    expect(back.code, back.stdout + back.stderr).toBe(0);
  }

  /** on the wire it is ESP: the SA counters grow, nothing is dropped as cleartext, no UDP/4789 reaches h3 from h2; inspect matches the kernel */
  async function espOnTheWire(): Promise<void> {
    // Inspect on h2 (a worker holding the network), checked against its kernel; the same on h3.
    const e2 = await settled(h2(), h3());
    expect(e2).toMatchObject({ Encrypted: true, Kernel: "supported", Held: true, RotationInterval: ROTATION });
    expect(e2.KeyTags).toHaveLength(3);
    expect(e2.PrimaryKeyTag).toBe(e2.KeyTags[1]);
    expect(e2.LastRotation).not.toBeNull();
    expect(e2.Peers).toHaveLength(1);
    const p = e2.Peers[0]!;
    expect(p).toMatchObject({ Name: "h3", IP: h3().addr, SAsInstalled: true, Policy: true });
    expect(p.InboundKeyTags).toEqual(e2.KeyTags);
    expect(p.OutboundKeyTag).toBe(e2.PrimaryKeyTag);
    expect(p.Error).toBeUndefined();
    const e3 = await settled(h3(), h2());
    expect(e3.Peers.map((q) => [q.Name, q.IP])).toEqual([["h2", h2().addr]]);
    // The guard: table inet shoal-overlay with its three chains, in the host's namespace.
    const table = await inNs(h2(), ["nft", "list", "table", "inet", "shoal-overlay"]);
    for (const chain of ["mark-out", "guard-out", "guard-in"]) expect(table).toContain(`chain ${chain} {`);

    // A scratch counter on h3's underlay device, at ingress (before IPsec): what h2 puts on the wire.
    const wire = [
      "table netdev e2e-wire {",
      "\tcounter wire-esp {",
      "\t}",
      "\tcounter wire-vxlan {",
      "\t}",
      "\tchain ingress {",
      '\t\ttype filter hook ingress device "eth0" priority filter; policy accept;',
      `\t\tip saddr ${h2().addr} ip protocol esp counter name "wire-esp"`,
      `\t\tip saddr ${h2().addr} udp dport 4789 counter name "wire-vxlan"`,
      "\t}",
      "}",
      "",
    ].join("\n");
    const wireFile = join(lab.root, "e2e-wire.nft");
    writeFileSync(wireFile, wire);
    await lab.exec(h3(), ["nft", "-f", wireFile]);
    try {
      // Measure in a window without a rotation on h2 (its outbound SA is replaced at each one, and a new
      // state counts from 0): retry if the outbound SPI changed while pinging.
      const COUNT = 20;
      let measured = false;
      for (let attempt = 1; attempt <= 6 && !measured; attempt++) {
        const before = await states(h2());
        const esp0 = await nftCounter(h3(), "netdev", "e2e-wire", "wire-esp");
        const r = await shoal(h2(), "exec", "c2", "ping", "-q", "-c", String(COUNT), "-i", "0.05", "-W", "2", "c3");
        const after = await states(h2());
        const esp1 = await nftCounter(h3(), "netdev", "e2e-wire", "wire-esp");
        expect(pingStats(r.stdout), r.stdout + r.stderr).toEqual({ transmitted: COUNT, received: COUNT });
        const out0 = before.filter((s) => s.src === h2().addr && s.dst === h3().addr);
        const out1 = after.filter((s) => s.src === h2().addr && s.dst === h3().addr);
        if (out0.length !== 1 || out1.length !== 1 || out0[0]!.spi !== out1[0]!.spi) continue;
        measured = true;
        // Outbound (h2 -> h3): the echo requests, encrypted with the one outbound state.
        expect(out1[0]!.packets - out0[0]!.packets).toBeGreaterThanOrEqual(COUNT);
        expect(out1[0]!.bytes - out0[0]!.bytes).toBeGreaterThanOrEqual(COUNT * 84);
        // Inbound (h3 -> h2): the replies, over whichever of h2's inbound states h3 used (a state that
        // appeared in the window counts from 0; inbound states outlive one rotation).
        const grown = (dir: (s: SaStats) => boolean, f: "packets" | "bytes") =>
          after.filter(dir).reduce((n, s) => n + s[f] - (before.find((b) => dir(b) && b.spi === s.spi)?.[f] ?? 0), 0);
        const fromH3 = (s: SaStats) => s.src === h3().addr && s.dst === h2().addr;
        expect(grown(fromH3, "packets")).toBeGreaterThanOrEqual(COUNT);
        expect(grown(fromH3, "bytes")).toBeGreaterThanOrEqual(COUNT * 84);
        // On h3's wire: ESP from h2.
        expect(esp1 - esp0).toBeGreaterThanOrEqual(COUNT);
      }
      expect(measured, "h2's outbound SA changed during every measurement window").toBe(true);
      // Never any VXLAN in clear from h2 on h3's wire, and the guards never had anything to drop.
      expect(await nftCounter(h3(), "netdev", "e2e-wire", "wire-vxlan")).toBe(0);
      expect(await cleartext(h2())).toEqual({ in: 0, out: 0 });
      expect(await cleartext(h3())).toEqual({ in: 0, out: 0 });
    } finally {
      await lab.exec(h3(), ["nft", "delete", "table", "netdev", "e2e-wire"]).catch(() => undefined);
    }
  }

  /** the encrypted overlay MTU is 1416: a 1388-byte don't-fragment ping passes unfragmented, 1389 does not */
  async function mtuIs1416(): Promise<void> {
    // (ip, not /sys: the container's /sys is the machine's, not its namespace's.)
    const link = await ok(h2(), "exec", "c2", "ip", "-o", "link", "show", "dev", "eth0");
    expect(/\bmtu (\d+)/.exec(link)?.[1], link).toBe("1416");
    const f2 = (await snmp(h2())).FragCreates;
    const f3 = (await snmp(h3())).FragCreates;
    // 1388 + 8 (ICMP) + 20 (IP) = 1416; ESP-wrapped VXLAN of that is exactly 1500 bytes on the underlay.
    const big = await shoal(
      h2(),
      "exec",
      "c2",
      "ping",
      "-c",
      "3",
      "-i",
      "0.2",
      "-W",
      "2",
      "-M",
      "do",
      "-s",
      "1388",
      "c3",
    );
    expect(pingStats(big.stdout), big.stdout + big.stderr).toEqual({ transmitted: 3, received: 3 });
    const over = await shoal(h2(), "exec", "c2", "ping", "-c", "1", "-W", "2", "-M", "do", "-s", "1389", "c3");
    expect(over.code).not.toBe(0);
    // Neither host fragmented anything on the underlay (requests from h2, replies from h3).
    expect((await snmp(h2())).FragCreates).toBe(f2);
    expect((await snmp(h3())).FragCreates).toBe(f3);
    expect(await cleartext(h2())).toEqual({ in: 0, out: 0 });
  }

  /** a ping every 50 ms across several key rotations loses nothing; afterwards inspect shows the new tags with the SAs installed */
  async function noLossAcrossRotations(): Promise<void> {
    const before2 = await settled(h2(), h3());
    const COUNT = 240; // 12 s at 50 ms: about 3 rotations at 4 s
    const outSpis = { h2: new Set<number>(), h3: new Set<number>() };
    const sample = async () => {
      for (const s of await states(h2())) if (s.src === h2().addr && s.dst === h3().addr) outSpis.h2.add(s.spi);
      for (const s of await states(h3())) if (s.src === h3().addr && s.dst === h2().addr) outSpis.h3.add(s.spi);
    };
    let done = false;
    const pinging = shoal(h2(), "exec", "c2", "ping", "-q", "-c", String(COUNT), "-i", "0.05", "-W", "2", "c3").finally(
      () => {
        done = true;
      },
    );
    // Watch the outbound SAs change while the ping runs: proof that rotations happened under it.
    while (!done) {
      await sample();
      await sleep(200);
    }
    const r = await pinging;
    expect(pingStats(r.stdout), r.stdout + r.stderr).toEqual({ transmitted: COUNT, received: COUNT });
    expect(outSpis.h2.size, "h2's outbound SA never changed during the ping").toBeGreaterThanOrEqual(2);
    expect(outSpis.h3.size, "h3's outbound SA never changed during the ping").toBeGreaterThanOrEqual(2);

    // Inspect: newer tags, a later rotation, SAs installed; the kernel holds the new keys' states only.
    const after2 = await settled(h2(), h3());
    expect(after2.KeyTags).toHaveLength(3);
    expect(after2.KeyTags[2]!).toBeGreaterThanOrEqual(before2.KeyTags[2]! + 2);
    expect(Date.parse(after2.LastRotation!)).toBeGreaterThan(Date.parse(before2.LastRotation!));
    expect(after2.Peers[0]).toMatchObject({ IP: h3().addr, SAsInstalled: true, Policy: true });
    const after3 = await settled(h3(), h2());
    expect(after3.KeyTags[2]!).toBeGreaterThanOrEqual(before2.KeyTags[2]! + 2);
    // Rotations never let anything out in clear or in unchecked.
    expect(await cleartext(h2())).toEqual({ in: 0, out: 0 });
    expect(await cleartext(h3())).toEqual({ in: 0, out: 0 });
  }

  /** no key material in network inspect or in any daemon's log */
  async function noKeyMaterial(): Promise<void> {
    await settled(h2(), h3());
    // The keys as the kernel holds them on h2 (never printed): 16 bytes of AES key, then 4 of salt.
    const text = await inNs(h2(), ["ip", "xfrm", "state", "list", "reqid", `0x${XFRM_REQID.toString(16)}`]);
    const material = [...text.matchAll(/aead \S+ 0x([0-9a-f]{40})\b/g)].map((m) => m[1]!);
    expect(material.length).toBeGreaterThanOrEqual(4);
    // Each key as hex (any case), base64 and base64url (as the managers' JSON carries it).
    const needles = material.flatMap((hex) => {
      const key = Buffer.from(hex.slice(0, 32), "hex");
      return [new RegExp(hex.slice(0, 32), "i"), key.toString("base64").replace(/=+$/, ""), key.toString("base64url")];
    });
    const haystacks: [string, string][] = [
      ["inspect on h1", await ok(h1(), "network", "inspect", NET)],
      ["inspect on h2", await ok(h2(), "network", "inspect", NET)],
      ["inspect on h3", await ok(h3(), "network", "inspect", NET)],
      ...h.map((x): [string, string] => [`${x.name}'s log`, readFileSync(x.log, "utf8")]),
    ];
    for (const [where, hay] of haystacks) {
      const leaked = needles.filter((n) => (typeof n === "string" ? hay.includes(n) : n.test(hay)));
      expect(leaked.length, `key material found in ${where}`).toBe(0);
    }
  }

  /** the last local detach removes every state and policy with reqid/mark 0x53484c and the nft table from the host */
  async function detachRemovesEverything(): Promise<void> {
    const clean = async (x: LabHost) => {
      const st = await inNs(x, ["ip", "xfrm", "state", "list"]);
      const pol = await inNs(x, ["ip", "xfrm", "policy", "list"]);
      const tables = await nftTables(x);
      return !REQID_TEXT.test(st) && !REQID_TEXT.test(pol) && !tables.includes("shoal-overlay");
    };
    await ok(h2(), "rm", "-f", "c2");
    await waitFor("h2 to drop the network", () => overlayNamespaces(h2()).length === 0);
    await waitFor("h2's IPsec states, policies and nft guard to go", () => clean(h2()), 15_000).catch(() => undefined);
    expect((await states(h2())).map((s) => `${s.src}->${s.dst}`)).toEqual([]);
    expect((await policies(h2())).filter((p) => p.mark === XFRM_MARK)).toEqual([]);
    expect(withoutKeys(await inNs(h2(), ["ip", "xfrm", "state", "list"]))).not.toMatch(REQID_TEXT);
    expect(await inNs(h2(), ["ip", "xfrm", "policy", "list"])).not.toMatch(REQID_TEXT);
    expect(await nftTables(h2())).not.toContain("shoal-overlay");

    // h3 still holds the network (c3): it keeps its guard but drops everything towards h2.
    expect(overlayNamespaces(h3())).toHaveLength(1);
    await waitFor("h3 to list no peers", async () => (await encryption(h3())).Peers.length === 0);
    await waitFor("h3 to drop its SAs and policy towards h2", async () => {
      const st = (await states(h3())).filter((s) => s.src === h2().addr || s.dst === h2().addr);
      const pol = (await policies(h3())).filter((p) => p.mark === XFRM_MARK);
      return st.length === 0 && pol.length === 0;
    });
    expect(await nftTables(h3())).toContain("table inet shoal-overlay");

    // And the last container on h3 leaves h3 clean too; the network can then be removed.
    await ok(h3(), "rm", "-f", "c3");
    await waitFor("h3 to drop the network", () => overlayNamespaces(h3()).length === 0);
    await waitFor("h3's IPsec states, policies and nft guard to go", () => clean(h3()), 15_000).catch(() => undefined);
    expect((await states(h3())).map((s) => `${s.src}->${s.dst}`)).toEqual([]);
    expect((await policies(h3())).filter((p) => p.mark === XFRM_MARK)).toEqual([]);
    expect(await nftTables(h3())).not.toContain("shoal-overlay");
    // (The managers release the endpoints just after the containers go.)
    await waitFor("the network to be removed", async () => (await shoal(h1(), "network", "rm", NET)).code === 0);
  }

  // One test, so that on a kernel without ESP exactly one test reports the skip (with the reason); each step
  // below is a function named after what it checks, run in order on the same lab.
  it.skipIf(!esp.supported)(
    `an encrypted ping between two lab hosts: ESP on the wire, inspect true to the kernel, MTU 1416, no loss across rotations, no key material, all removed on detach${NEEDS_ESP}`,
    async () => {
      diagnoseOnFailure();
      await reachByName();
      await espOnTheWire();
      await mtuIs1416();
      await noLossAcrossRotations();
      await noKeyMaterial();
      await detachRemovesEverything();
    },
    400_000,
  );
});
