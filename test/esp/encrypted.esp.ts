// Encrypted overlay networks end to end, in a kernel that has ESP and AES-GCM (User-mode Linux, booted by
// test/esp/esp.test.ts; this file runs only there). That kernel has no nftables inet family, so shoal's
// firewall is iptables-legacy here.
//
// A 3-host lab (h1 the manager, h2 and h3 workers; for the failover test h2 and h3 are promoted, so that the
// leader can be killed, and demoted again after it: three managers on this guest's one slow CPU make
// everything else crawl), the managers rotating keys every ROTATION, an encrypted and a plain attachable
// overlay, everything through the shoal CLI (inspect is also polled over the Engine API socket, the same
// call the CLI makes, because a CLI process costs a second of CPU in this guest). The tests share the lab
// and run in order; each says what it checks.
//
// Kernel views are read with this file's own readers (readers.ts), never the product's parsers.

import { type ChildProcess, execFile, spawn } from "node:child_process";
import { copyFileSync, existsSync, mkdirSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { isDeepStrictEqual, promisify } from "node:util";
import { pino } from "pino";
import { afterAll, beforeAll, beforeEach, describe, expect, it, onTestFailed } from "vitest";
import { killProcessesNaming, Lab, type LabHost, unmountBelow } from "../../deploy/lab.js";
import { probeEsp } from "../../src/dataplane/firewall.js";
import { encryptedMtu, spi, XFRM_MARK, XFRM_REQID } from "../../src/dataplane/xfrm.js";
import { ContainerdSupervisor } from "../../src/runtime/containerd/supervisor.js";
import { build, docker, ok, overlayNamespaces, shoal, waitFor } from "../e2e/lab-helpers.js";
import {
  apiGet,
  ipSnmp,
  type PolicyView,
  parsePolicies,
  parseSaStats,
  parseTcpdump,
  pingStats,
  type SaStats,
  vxlanEchoRequest,
  type WirePacket,
  withoutKeys,
} from "./readers.js";

const ROTATION = "15s";
const ROTATION_MS = 15_000;
const ENC = "secret";
const PLAIN = "plain";
const PORT = 4789;
/** Waits in this guest are long: every process costs hundreds of ms of its one CPU. */
const SLOW_MS = 180_000;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/**
 * One containerd for the guest, shared by the lab's daemons (shoald --containerd SOCK), as on a machine where
 * containerd is a system service: three of them on this guest's one CPU slowed every container call and
 * every daemon restart. Each daemon still has its own containers (shoal's containerd namespace holds them by
 * id, and each daemon knows its own).
 */
const CONTAINERD_DIR = "/run/shoal-esp-containerd";
const containerd = new ContainerdSupervisor({
  dataRoot: join(CONTAINERD_DIR, "root"),
  execRoot: join(CONTAINERD_DIR, "state"),
  logger: pino({ level: "silent" }),
});
/** A command in the guest's root namespace (where the lab's bridge is). */
const root = async (argv: string[]) => (await promisify(execFile)(argv[0]!, argv.slice(1), { timeout: 60_000 })).stdout;

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
}

interface NetworkInspect {
  Id: string;
  Name: string;
  Options: Record<string, string>;
  Containers: Record<string, { Name: string; IPv4Address: string; MacAddress: string }>;
  Encryption?: Encryption;
}

describe("encrypted overlay networks on lab hosts, in a kernel with ESP (iptables firewall)", () => {
  const lab = new Lab({
    name: "esp",
    // Long ticks: this guest has one slow CPU, and short ones make followers call elections.
    raftTickMs: 300,
    daemonArgs: ["--encryption-key-rotation", ROTATION, "--containerd", containerd.socket],
    startTimeoutMs: 180_000,
  });
  let h: LabHost[] = [];
  const h1 = () => h[0]!;
  const h2 = () => h[1]!;
  const h3 = () => h[2]!;

  // ---- reading hosts --------------------------------------------------------------------------------------

  const inNs = async (x: LabHost, argv: string[]) => (await lab.exec(x, argv, { timeoutMs: 60_000 })).stdout;

  async function inspect(x: LabHost, ref: string): Promise<NetworkInspect> {
    return (await apiGet(x.socket, `/networks/${ref}`)) as NetworkInspect;
  }

  async function encryption(x: LabHost): Promise<Encryption> {
    const e = (await inspect(x, ENC)).Encryption;
    if (!e) throw new Error(`inspect of ${ENC} on ${x.name} has no Encryption section`);
    return e;
  }

  async function states(x: LabHost): Promise<SaStats[]> {
    const text = await inNs(x, ["ip", "-s", "xfrm", "state", "list"]);
    return parseSaStats(text).filter((s) => s.reqid === XFRM_REQID);
  }

  async function policies(x: LabHost): Promise<PolicyView[]> {
    return parsePolicies(await inNs(x, ["ip", "xfrm", "policy", "list"])).filter((p) => p.mark === XFRM_MARK);
  }

  /** The packets the guard's two DROP rules counted (iptables-legacy-save -c), or undefined if not loaded. */
  async function cleartext(x: LabHost): Promise<{ in: number; out: number } | undefined> {
    const text = await inNs(x, ["iptables-legacy-save", "-c", "-t", "mangle"]);
    const n = (chain: string) => {
      const m = new RegExp(`^\\[(\\d+):\\d+\\] -A ${chain} -j DROP`, "m").exec(text);
      return m ? Number(m[1]) : undefined;
    };
    const i = n("SHOAL-CLEARTEXT-IN");
    const o = n("SHOAL-CLEARTEXT-OUT");
    return i === undefined || o === undefined ? undefined : { in: i, out: o };
  }

  /** Everything of shoal's in a host's kernel: states, marked policies, SHOAL chains in mangle. */
  async function leftovers(x: LabHost): Promise<string[]> {
    const out: string[] = [];
    for (const s of await states(x)) out.push(`state ${s.src}->${s.dst} spi 0x${s.spi.toString(16)}`);
    for (const p of await policies(x)) out.push(`policy ${p.src}->${p.dst}`);
    const mangle = await inNs(x, ["iptables-legacy-save", "-t", "mangle"]);
    for (const l of mangle.split("\n")) if (/SHOAL/.test(l)) out.push(`iptables ${l}`);
    return out;
  }

  /**
   * What differs between x's kernel and x's inspect towards `peer`: the 3 inbound states of inspect's
   * KeyTags, the outbound state of its primary key and nothing else between the two, and the marked policy
   * for UDP/PORT naming that outbound state. "" when they agree.
   */
  async function kernelDiff(x: LabHost, peer: LabHost, e: Encryption): Promise<string> {
    const st = await states(x);
    const pol = await policies(x);
    const hex = (n: number) => `0x${n.toString(16)}`;
    const have = {
      inbound: st
        .filter((s) => s.src === peer.addr && s.dst === x.addr)
        .map((s) => hex(s.spi))
        .sort(),
      outbound: st.filter((s) => s.src === x.addr && s.dst === peer.addr).map((s) => hex(s.spi)),
      policies: pol
        .filter((p) => p.dst === `${peer.addr}/32`)
        .map((p) => ({
          src: p.src,
          proto: p.proto,
          dport: p.dport,
          dir: p.dir,
          tmpl: p.tmpl && { ...p.tmpl, spi: hex(p.tmpl.spi) },
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
          dport: PORT,
          dir: "out",
          tmpl: { src: x.addr, dst: peer.addr, spi: hex(spi(x.addr, peer.addr, primary)), reqid: XFRM_REQID },
        },
      ],
    };
    return isDeepStrictEqual(have, want)
      ? ""
      : `${x.name} towards ${peer.name}: kernel ${JSON.stringify(have)}, inspect's keys ${JSON.stringify(want)}`;
  }

  /**
   * Wait until x's inspect lists `peers` (and only them) with SAs installed under its current keys, and x's
   * kernel holds exactly that towards each. Returns the inspect it agreed with.
   */
  async function settled(x: LabHost, peers: LabHost[]): Promise<Encryption> {
    let last = "";
    try {
      return await waitFor(
        `${x.name}'s kernel to match its inspect towards ${peers.map((p) => p.name).join(", ")}`,
        async () => {
          // A manager without a leader (during a failover) answers 503 for a while: try again.
          const e = await encryption(x).catch((err: Error) => {
            last = err.message;
            return undefined;
          });
          if (!e) return undefined;
          last = JSON.stringify(e);
          const ips = e.Peers.map((p) => p.IP).sort();
          if (e.KeyTags.length !== 3 || !isDeepStrictEqual(ips, peers.map((p) => p.addr).sort())) return undefined;
          if (!e.Peers.every((p) => p.SAsInstalled && p.Policy && p.OutboundKeyTag === e.PrimaryKeyTag))
            return undefined;
          for (const p of peers) {
            const d = await kernelDiff(x, p, e);
            if (d !== "") {
              last = d;
              return undefined;
            }
          }
          // Not in the middle of a rotation: the same keys before and after reading the kernel.
          const again = await encryption(x).catch(() => undefined);
          return again && isDeepStrictEqual(again.KeyTags, e.KeyTags) ? e : undefined;
        },
        SLOW_MS,
      );
    } catch (err) {
      throw new Error(`${(err as Error).message}; last seen: ${last}`);
    }
  }

  /** tcpdump on the lab's underlay bridge while `f` runs: every UDP and ESP packet between the hosts. */
  async function capture<T>(f: () => Promise<T>): Promise<{ result: T; packets: WirePacket[] }> {
    const file = `/tmp/esp-capture-${Date.now()}.pcap`;
    const p: ChildProcess = spawn(
      "tcpdump",
      ["-i", lab.bridge, "-nn", "-U", "-B", "16384", "-s", "96", "-w", file, "udp or esp"],
      {
        stdio: ["ignore", "ignore", "pipe"],
      },
    );
    let err = "";
    await new Promise<void>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`tcpdump did not start: ${err}`)), 30_000);
      p.stderr!.on("data", (d: Buffer) => {
        err += d.toString();
        if (/listening on/.test(err)) {
          clearTimeout(t);
          resolve();
        }
      });
      p.on("exit", () => reject(new Error(`tcpdump exited: ${err}`)));
    });
    let result: T;
    try {
      result = await f();
      await sleep(500);
    } finally {
      const closed = new Promise((r) => p.once("close", r));
      p.kill("SIGINT");
      await closed;
    }
    // tcpdump's closing counts: a packet the kernel dropped before tcpdump read it is not in the file.
    const dropped = Number(/(\d+) packets? dropped by kernel/.exec(err)?.[1] ?? 0);
    if (dropped > 0) process.stderr.write(`capture on ${lab.bridge}: ${dropped} packets dropped by the kernel\n`);
    const text = await root(["tcpdump", "-nn", "-r", file]);
    await root(["rm", "-f", file]);
    return { result, packets: parseTcpdump(text) };
  }

  const between = (pk: WirePacket[], a: LabHost, b: LabHost) =>
    pk.filter((x) => (x.src === a.addr && x.dst === b.addr) || (x.src === b.addr && x.dst === a.addr));

  async function ping(from: LabHost, c: string, to: string, count: number, extra: string[] = []) {
    const r = await shoal(from, "exec", c, "ping", "-q", "-c", String(count), "-i", "0.05", "-W", "2", ...extra, to);
    return { ...pingStats(r.stdout), out: r.stdout + r.stderr };
  }

  /**
   * `c` on x runs on the encrypted network: kept if it already does (an earlier test started it), else
   * started afresh. Every container removed and run again costs a detach and an attach on every host, with
   * their SAs, on the guest's one CPU.
   */
  async function encryptedContainer(x: LabHost, c: string): Promise<void> {
    const r = await shoal(x, "inspect", "--format", "{{.State.Running}} {{json .NetworkSettings.Networks}}", c);
    if (r.code === 0 && r.stdout.startsWith("true ") && r.stdout.includes(`"${ENC}"`)) return;
    await shoal(x, "rm", "-f", c);
    await ok(x, "run", "-d", "--name", c, "--network", ENC, "host", "sleep", "100000");
  }

  interface NodeView {
    Description: { Hostname: string };
    Status: { State: string };
    ManagerStatus?: { Leader?: boolean; Reachability?: string };
  }

  /**
   * `node ls` on manager x, through the Engine API (the call the CLI makes, without a CLI process on the
   * guest's one CPU); undefined while x cannot answer (no leader yet, restarting), so waits try again.
   */
  async function nodes(x: LabHost): Promise<NodeView[] | undefined> {
    return (await apiGet(x.socket, "/nodes").catch(() => undefined)) as NodeView[] | undefined;
  }

  /** The leader's hostname, as manager `x` sees it ("" when it knows none). */
  async function leader(x: LabHost): Promise<string> {
    const ns = (await apiGet(x.socket, "/nodes")) as NodeView[];
    return ns.find((n) => n.ManagerStatus?.Leader)?.Description.Hostname ?? "";
  }

  /** Whether x's daemon answers on its socket (docker info). */
  const answers = async (x: LabHost) => (await apiGet(x.socket, "/info").catch(() => undefined)) !== undefined;

  /** A running container's id and init PID on x (fails if it does not run). */
  async function runningAs(x: LabHost, c: string): Promise<{ id: string; pid: number }> {
    const out = await ok(x, "inspect", "--format", "{{.Id}} {{.State.Pid}} {{.State.Running}}", c);
    const [id, pid, running] = out.trim().split(" ");
    expect(running, `${c} on ${x.name}: ${out}`).toBe("true");
    return { id: id!, pid: Number(pid) };
  }

  /** States and marked policies of shoal's on x that involve neither x and one of `peers`. */
  async function strayed(x: LabHost, peers: LabHost[]): Promise<string[]> {
    const allowed = new Set([x.addr, ...peers.map((p) => p.addr)]);
    const out: string[] = [];
    for (const s of await states(x))
      if (!allowed.has(s.src) || !allowed.has(s.dst)) out.push(`state ${s.src}->${s.dst} spi 0x${s.spi.toString(16)}`);
    for (const p of await policies(x))
      if (!peers.some((q) => p.dst === `${q.addr}/32`)) out.push(`policy ${p.src}->${p.dst}`);
    return out;
  }

  /**
   * c2 on h2 and c3 on h3 on the encrypted network, both kernels settled: h3's daemon is stopped with
   * `signal` and started again while the underlay is captured. c3 runs on throughout (the same container,
   * the same PID) and c2 reaches it by name while h3's daemon is down and once it is back; h3's kernel keeps
   * its pair and its guard while no daemon runs; afterwards both kernels hold exactly what inspect says,
   * nothing else of shoal's; and on the wire between h2 and h3 there is ESP and never cleartext VXLAN of the
   * encrypted VNI (nor any VXLAN but the plain network's).
   */
  async function restartedEncrypted(signal: "SIGKILL" | "SIGTERM", before: { id: string; pid: number }) {
    let started = false;
    const { packets } = await capture(async () => {
      await lab.stopDaemon(h3(), signal, 90_000);
      expect(await answers(h3())).toBe(false);
      // No daemon on h3: c2 still reaches c3 by name (h2's DNS), through the pair h3's kernel kept.
      const down = await ping(h2(), "c2", "c3", 3);
      expect(down.received, `with h3's daemon down: ${down.out}`).toBe(3);
      expect(await cleartext(h3()), "h3's guard while its daemon is down").toBeDefined();
      // Its pair towards h2 (3 inbound states, 1 outbound, the policy) stays in its kernel meanwhile.
      const kept = await states(h3());
      expect(kept.filter((s) => s.src === h2().addr).length, "h3's inbound SAs while its daemon is down").toBe(3);
      expect(kept.filter((s) => s.dst === h2().addr).length, "h3's outbound SA while its daemon is down").toBe(1);
      expect((await policies(h3())).filter((p) => p.dst === `${h2().addr}/32`)).toHaveLength(1);
      started = true;
      await lab.startDaemon(h3());
      await waitFor("h3's daemon", () => answers(h3()), SLOW_MS);
      expect(await cleartext(h3()), "h3's guard once its daemon is back").toBeDefined();
      await waitFor(
        "c2 to reach c3 by name after the restart",
        async () => (await ping(h2(), "c2", "c3", 1)).received === 1,
        SLOW_MS,
      );
      await settled(h3(), [h2()]);
      await settled(h2(), [h3()]);
      expect((await ping(h2(), "c2", "c3", 5)).received).toBe(5);
      expect((await ping(h3(), "c3", "c2", 5)).received).toBe(5);
    }).finally(async () => {
      // Back also when a check above failed: the later tests need h3.
      if (!started) await lab.startDaemon(h3());
    });
    expect(await runningAs(h3(), "c3"), "c3 after h3's restart").toEqual(before);
    expect(await strayed(h3(), [h2()])).toEqual([]);
    expect(await strayed(h2(), [h3()])).toEqual([]);
    const wire = between(packets, h2(), h3());
    expect(wire.filter((p) => p.kind === "esp").length).toBeGreaterThanOrEqual(16);
    expect(
      wire.filter((p) => p.kind === "vxlan" && p.vni === vni.enc),
      "cleartext VXLAN of the encrypted VNI between h2 and h3",
    ).toEqual([]);
    expect(
      wire.filter((p) => p.kind !== "esp" && !(p.kind === "vxlan" && p.vni === vni.plain)),
      "other packets between h2 and h3",
    ).toEqual([]);
  }

  let vni = { enc: 0, plain: 0 };
  let anyFailed = false;

  /** On a failure: the end of every daemon's log (key material is never logged; that is tested below). */
  beforeEach(() => {
    onTestFailed(() => {
      anyFailed = true;
      for (const x of h) {
        let log = "(no log)";
        try {
          log = readFileSync(x.log, "utf8").split("\n").slice(-25).join("\n");
        } catch {}
        process.stderr.write(`==== ${x.name}'s log, last lines\n${log}\n`);
      }
    });
  });

  beforeAll(async () => {
    await lab.down();
    await build();
    rmSync(CONTAINERD_DIR, { recursive: true, force: true });
    (await containerd.start()).close();
    h = await lab.up(3);
    await ok(h1(), "swarm", "init", "--advertise-addr", h1().addr, "--dispatcher-heartbeat", "2s");
    const wt = (await ok(h1(), "swarm", "join-token", "-q", "worker")).trim();
    for (const x of [h2(), h3()])
      await ok(x, "swarm", "join", "--token", wt, "--advertise-addr", x.addr, `${h1().addr}:2377`);
    await ok(h1(), "network", "create", "-d", "overlay", "--attachable", "--opt", "encrypted", ENC);
    await ok(h1(), "network", "create", "-d", "overlay", "--attachable", PLAIN);
    vni = {
      enc: Number((await inspect(h1(), ENC)).Options["com.docker.network.driver.overlay.vxlanid_list"]),
      plain: Number((await inspect(h1(), PLAIN)).Options["com.docker.network.driver.overlay.vxlanid_list"]),
    };
  }, 600_000);

  afterAll(async () => {
    // The daemons' whole logs, for a failed run (SHOAL_ESP_KEEP=1 on the host keeps the job directory).
    const job = process.env.SHOAL_JOB;
    if (job && (anyFailed || process.env.SHOAL_ESP_KEEP === "1")) {
      for (const x of h) {
        const dir = join(job, "lab-logs", x.name);
        mkdirSync(dir, { recursive: true });
        if (existsSync(x.log)) copyFileSync(x.log, join(dir, "shoald.log"));
      }
      const ctrdLog = join(CONTAINERD_DIR, "state", "containerd", "containerd.log");
      if (existsSync(ctrdLog)) copyFileSync(ctrdLog, join(job, "lab-logs", "containerd.log"));
    }
    await lab.down();
    await containerd.stop();
    // The shims of containers the daemons did not remove (a crashed one's) outlive containerd and hold
    // their rootfs mounts: without this the directory cannot be removed (EBUSY).
    killProcessesNaming(CONTAINERD_DIR);
    await unmountBelow(CONTAINERD_DIR);
    rmSync(CONTAINERD_DIR, { recursive: true, force: true });
  }, 120_000);

  it("this kernel does ESP with AES-GCM; the firewall is iptables, and shoal info, docker info and the start log say so", async () => {
    expect(await probeEsp()).toEqual({ supported: true });
    const info = await ok(h1(), "info");
    expect(info).toContain(" Storage Driver: shoal\n  Firewall Backend: iptables\n  Program: iptables-legacy\n");
    expect(info).toMatch(/\n {2}nftables: unavailable \(nft: .*Operation not supported\)\n/);
    const d = await docker(h1(), "info");
    expect(d.code, d.stderr).toBe(0);
    expect(d.stdout).toContain(" Storage Driver: shoal\n  Firewall Backend: iptables\n");
    const f = await docker(h1(), "info", "--format", "{{.FirewallBackend.Driver}}");
    expect(f.stdout.trim()).toBe("iptables");
    const log = readFileSync(h1().log, "utf8");
    expect(log).toMatch(/"backend":"iptables".*"msg":"firewall backend: iptables"/);
    expect(vni.enc).toBeGreaterThan(0);
    expect(vni.plain).toBeGreaterThan(0);
  });

  it("containers on two hosts reach each other by name; on the underlay every packet between them is ESP, the SA counters move, and each kernel holds what inspect says", async () => {
    for (const [x, c] of [
      [h2(), "c2"],
      [h3(), "c3"],
    ] as const) {
      const t = Date.now();
      await ok(x, "run", "-d", "--name", c, "--network", ENC, "host", "sleep", "100000");
      process.stderr.write(`shoal run ${c} on ${x.name} (the first encrypted attach there): ${Date.now() - t} ms\n`);
    }
    expect(overlayNamespaces(h1())).toEqual([]);
    await waitFor("c2 to reach c3 by name", async () => (await ping(h2(), "c2", "c3", 1)).received === 1, SLOW_MS);
    expect((await ping(h3(), "c3", "c2", 1)).received).toBe(1);
    await settled(h2(), [h3()]);
    await settled(h3(), [h2()]);

    // Measured in a window without a rotation (h2's outbound state is replaced at each one, and a new state
    // counts from 0): tried again if h2's outbound SPI changed while pinging.
    const COUNT = 20;
    const out = (x: SaStats[]) => x.filter((st) => st.src === h2().addr && st.dst === h3().addr);
    let measured = false;
    for (let attempt = 1; attempt <= 12 && !measured; attempt++) {
      const before = await states(h2());
      const { result, packets } = await capture(() => ping(h2(), "c2", "c3", COUNT));
      const after = await states(h2());
      expect(result.received, result.out).toBe(COUNT);
      const wire = between(packets, h2(), h3());
      // Every captured packet between the hosts is ESP (tcpdump in this guest may miss some under load:
      // the SA counters below count every one).
      expect(wire.filter((p) => p.kind === "esp").length).toBeGreaterThanOrEqual(COUNT);
      expect(
        wire.filter((p) => p.kind !== "esp"),
        "cleartext between h2 and h3",
      ).toEqual([]);
      if (out(before).length !== 1 || out(after).length !== 1 || out(before)[0]!.spi !== out(after)[0]!.spi) continue;
      measured = true;
      // The outbound SA counted every request; h2's inbound SAs (whichever h3 used) every reply.
      expect(out(after)[0]!.packets - out(before)[0]!.packets).toBeGreaterThanOrEqual(COUNT);
      const inbound = (x: SaStats[]) => x.filter((st) => st.src === h3().addr && st.dst === h2().addr);
      const grown = inbound(after).reduce(
        (n, st) => n + st.packets - (inbound(before).find((b) => b.spi === st.spi)?.packets ?? 0),
        0,
      );
      expect(grown).toBeGreaterThanOrEqual(COUNT);
    }
    expect(measured, "h2's outbound SA changed during every measurement window").toBe(true);
    expect(await cleartext(h2())).toEqual({ in: 0, out: 0 });
    expect(await cleartext(h3())).toEqual({ in: 0, out: 0 });
  });

  it(`the encrypted MTU: eth0 has ${encryptedMtu()}, the largest don't-fragment ping that passes is exactly that, and nothing is fragmented`, async () => {
    const mtu = encryptedMtu();
    const link = await ok(h2(), "exec", "c2", "ip", "-o", "link", "show", "dev", "eth0");
    expect(/\bmtu (\d+)/.exec(link)?.[1], link).toBe(String(mtu));
    const frag = async () => ipSnmp(await inNs(h2(), ["cat", "/proc/net/snmp"])).FragCreates;
    const f2 = await frag();
    const largest = mtu - 28; // ICMP payload: MTU - 20 (IP) - 8 (ICMP)
    const big = await ping(h2(), "c2", "c3", 3, ["-M", "do", "-s", String(largest)]);
    expect(big.received, big.out).toBe(3);
    const over = await ping(h2(), "c2", "c3", 1, ["-M", "do", "-s", String(largest + 1)]);
    expect(over.received ?? 0, over.out).toBe(0);
    expect(await frag()).toBe(f2);
    expect(await cleartext(h2())).toEqual({ in: 0, out: 0 });
  });

  it("a cleartext VXLAN packet injected for the encrypted VNI is dropped by the guard, and no reply leaves; for a plain VNI the same packet is answered", async () => {
    await ok(h2(), "run", "-d", "--name", "p2", "--network", PLAIN, "host", "sleep", "100000");
    await ok(h3(), "run", "-d", "--name", "p3", "--network", PLAIN, "host", "sleep", "100000");
    await waitFor("p2 to reach p3", async () => (await ping(h2(), "p2", "p3", 1)).received === 1, SLOW_MS);
    // An intruder on the underlay (not a swarm host) sends VXLAN to h3 as if from h2's container.
    const x = `sl-${lab.name}-x`;
    await root(["ip", "netns", "add", x]);
    try {
      await root(["ip", "link", "add", `sl-${lab.name}-vx`, "type", "veth", "peer", "name", "eth0", "netns", x]);
      await root(["ip", "link", "set", `sl-${lab.name}-vx`, "master", lab.bridge, "up"]);
      await root(["ip", "-n", x, "addr", "add", "192.0.2.99/24", "dev", "eth0"]);
      await root(["ip", "-n", x, "link", "set", "eth0", "up"]);
      const inject = async (net: string, vniOf: number, src: string, dst: string, seq: number) => {
        // Inspect lists the containers of the host asked (as docker's does): ask both.
        const on = async (x: LabHost) =>
          Object.values((await inspect(x, net).catch(() => undefined))?.Containers ?? {});
        const local = [...(await on(h2())), ...(await on(h3()))];
        const ep = (name: string) => {
          const c = local.find((v) => v.Name === name);
          if (!c) throw new Error(`${name} is not on ${net}: ${JSON.stringify(local)}`);
          return { ip: c.IPv4Address.split("/")[0]!, mac: c.MacAddress };
        };
        const s = ep(src);
        const d = ep(dst);
        const payload = vxlanEchoRequest(vniOf, {
          srcMac: s.mac,
          dstMac: d.mac,
          srcIp: s.ip,
          dstIp: d.ip,
          id: 0x5348,
          seq,
        }).toString("hex");
        const js =
          "const s=require('dgram').createSocket('udp4');const b=Buffer.from(process.argv[1],'hex');" +
          `let n=3;const go=()=>s.send(b,${PORT},'${h3().addr}',()=>{if(--n)setTimeout(go,100);else s.close()});go();`;
        const { result, packets } = await capture(async () => {
          await root(["ip", "netns", "exec", x, process.execPath, "-e", js, payload]);
          await sleep(1500);
        });
        return { result, packets };
      };
      // The plain VNI first: the injector works, and h3's container answers towards h2 (in clear).
      const plain = await inject(PLAIN, vni.plain, "p2", "p3", 1);
      const answered = plain.packets.filter((p) => p.src === h3().addr && p.kind === "vxlan" && p.vni === vni.plain);
      expect(answered.length, JSON.stringify(plain.packets)).toBeGreaterThanOrEqual(1);
      // The encrypted VNI: dropped on input, counted, and nothing at all leaves h3 for it.
      const c0 = await cleartext(h3());
      const enc = await inject(ENC, vni.enc, "c2", "c3", 2);
      const c1 = await cleartext(h3());
      expect(enc.packets.filter((p) => p.src === "192.0.2.99" && p.kind === "vxlan" && p.vni === vni.enc)).toHaveLength(
        3,
      );
      expect(c1!.in - c0!.in).toBe(3);
      expect(
        enc.packets.filter((p) => p.src === h3().addr),
        "h3 answered the injected packet",
      ).toEqual([]);
    } finally {
      await root(["ip", "link", "del", `sl-${lab.name}-vx`]).catch(() => undefined);
      await root(["ip", "netns", "del", x]).catch(() => undefined);
    }
  });

  it("an unencrypted overlay on the same hosts stays cleartext and unaffected", async () => {
    const { result, packets } = await capture(() => ping(h2(), "p2", "p3", 20));
    expect(result.received, result.out).toBe(20);
    const wire = between(packets, h2(), h3());
    const plain = wire.filter((p) => p.kind === "vxlan" && p.vni === vni.plain);
    expect(plain.length).toBeGreaterThanOrEqual(20);
    expect(wire.filter((p) => p.kind === "vxlan" && p.vni !== vni.plain)).toEqual([]);
    expect(wire.filter((p) => p.kind === "esp")).toEqual([]);
    // The plain network's MTU is the unencrypted one.
    const link = await ok(h2(), "exec", "p2", "ip", "-o", "link", "show", "dev", "eth0");
    expect(/\bmtu (\d+)/.exec(link)?.[1]).toBe("1450");
    expect(await cleartext(h2())).toEqual({ in: 0, out: 0 });
  });

  it("containers on three hosts reach each other by name, and every host's kernel holds what inspect says towards both others", async () => {
    for (const [x, c] of [
      [h1(), "c1"],
      [h2(), "c2"],
      [h3(), "c3"],
    ] as const)
      await encryptedContainer(x, c);
    await waitFor("c1 to reach c2 by name", async () => (await ping(h1(), "c1", "c2", 1)).received === 1, SLOW_MS);
    expect((await ping(h1(), "c1", "c3", 1)).received).toBe(1);
    expect((await ping(h3(), "c3", "c1", 1)).received).toBe(1);
    await settled(h1(), [h2(), h3()]);
    await settled(h2(), [h1(), h3()]);
    await settled(h3(), [h1(), h2()]);
    const { packets } = await capture(async () => {
      for (const [x, c, to] of [
        [h1(), "c1", "c2"],
        [h2(), "c2", "c3"],
        [h3(), "c3", "c1"],
      ] as const)
        expect((await ping(x, c, to, 5)).received).toBe(5);
    });
    const hosts = new Set([h1().addr, h2().addr, h3().addr]);
    const mesh = packets.filter((p) => hosts.has(p.src) && hosts.has(p.dst));
    expect(mesh.filter((p) => p.kind === "esp").length).toBeGreaterThanOrEqual(15);
    expect(mesh.filter((p) => p.kind === "vxlan" && p.vni === vni.enc)).toEqual([]);
  });

  it("no key material in network inspect or in any daemon's log", async () => {
    // The keys as h2's kernel holds them (never printed): 16 bytes of AES key, then 4 of salt.
    const text = await inNs(h2(), ["ip", "xfrm", "state", "list"]);
    const material = [...text.matchAll(/aead \S+ 0x([0-9a-f]{40})\b/g)].map((m) => m[1]!);
    expect(material.length).toBeGreaterThanOrEqual(8); // 3 inbound + 1 outbound towards each of 2 peers
    const needles = material.flatMap((hex) => {
      const key = Buffer.from(hex.slice(0, 32), "hex");
      return [hex.slice(0, 32), key.toString("base64").replace(/=+$/, ""), key.toString("base64url")];
    });
    const haystacks: [string, string][] = [
      ...(await Promise.all(
        h.map(async (x): Promise<[string, string]> => [`inspect on ${x.name}`, await ok(x, "network", "inspect", ENC)]),
      )),
      ...h.map((x): [string, string] => [`${x.name}'s log`, readFileSync(x.log, "utf8")]),
    ];
    for (const [where, hay] of haystacks) {
      const leaked = needles.filter((n) => hay.toLowerCase().includes(n.toLowerCase()));
      expect(leaked.length, `key material found in ${where}`).toBe(0);
    }
    expect(withoutKeys(text)).not.toMatch(/aead/);
  });

  it("a host whose last container goes takes its SAs and policies with it, on itself and every other host", async () => {
    await ok(h1(), "rm", "-f", "c1");
    await waitFor("h1 to hold nothing of shoal's", async () => (await leftovers(h1())).length === 0, SLOW_MS);
    expect(overlayNamespaces(h1())).toEqual([]);
    await settled(h2(), [h3()]);
    await settled(h3(), [h2()]);
    for (const x of [h2(), h3()]) {
      expect((await states(x)).filter((s) => s.src === h1().addr || s.dst === h1().addr)).toEqual([]);
      expect((await policies(x)).filter((p) => p.dst === `${h1().addr}/32`)).toEqual([]);
    }
    expect((await ping(h2(), "c2", "c3", 3)).received).toBe(3);
  });

  it("three key rotations and a leader failover between two of them, under a ping every 50 ms: no packet lost, and after each rotation both kernels hold what inspect says", async () => {
    // Three managers: h2 and h3 are promoted. The two hosts that do not lead ping each other; the leader
    // (whose containers would die with it) is killed after the first rotation. c2 and c3 leave first, so
    // the hosts hold only this pair's containers.
    await ok(h2(), "rm", "-f", "c2");
    await ok(h3(), "rm", "-f", "c3");
    await ok(h1(), "node", "promote", "h2", "h3");
    await waitFor(
      "h2 and h3 to be reachable managers",
      async () =>
        (await nodes(h1()))?.filter((n) => !n.ManagerStatus?.Leader && n.ManagerStatus?.Reachability === "reachable")
          .length === 2,
      SLOW_MS,
    );
    // As a user would before using the new managers: every manager names the same leader (each answers
    // node ls through its own Raft member, so each has caught up and hears the leader).
    const lead = await waitFor(
      "every manager to name the same leader",
      async () => {
        const seen = await Promise.all(h.map((x) => leader(x).catch(() => "")));
        return seen[0] && seen.every((s) => s === seen[0]) ? seen[0] : undefined;
      },
      SLOW_MS,
    );
    const [a, b] = h.filter((x) => x.name !== lead) as [LabHost, LabHost];
    const killed = h.find((x) => x.name === lead)!;
    await ok(a, "run", "-d", "--name", "ra", "--network", ENC, "host", "sleep", "100000");
    await ok(b, "run", "-d", "--name", "rb", "--network", ENC, "host", "sleep", "100000");
    await waitFor("ra to reach rb by name", async () => (await ping(a, "ra", "rb", 1)).received === 1, SLOW_MS);
    const first = await settled(a, [b]);
    await settled(b, [a]);
    // Five intervals of pings: the first rotation comes up to one interval in, three take two more, and a
    // check that outlasts the time to the next rotation (below) lets that one pass unseen: one more.
    const COUNT = Math.ceil((5 * ROTATION_MS) / 50);
    let done = false;
    const pinging = ping(a, "ra", "rb", COUNT).finally(() => {
      done = true;
    });
    /** Per rotation: the ring that set the check off, the ring a settled on (both kernels checked), problems. */
    const seen: { detected: number[]; tags: number[]; diffs: string[] }[] = [];
    let killedAt: number | undefined;
    // A rotation is a ring other than the one the last check settled on (not the one that set that check
    // off): in this guest a check takes most of an interval (13 of 15 s seen), so the ring often moves on
    // during it and the check settles on the next ring; compared with the ring that set it off, that next
    // ring would be counted as a rotation a second time.
    let primary = first.PrimaryKeyTag;
    while (!done && seen.length < 3) {
      const e = await encryption(a).catch(() => undefined);
      if (e && e.PrimaryKeyTag !== primary) {
        // A rotation: both hosts must settle on it (or a later one) with their kernels matching inspect.
        const diffs: string[] = [];
        const sa = await settled(a, [b]).catch((err: Error) => diffs.push(err.message));
        await settled(b, [a]).catch((err: Error) => diffs.push(err.message));
        seen.push({ detected: e.KeyTags, tags: typeof sa === "object" ? sa.KeyTags : [], diffs });
        primary = typeof sa === "object" ? sa.PrimaryKeyTag : e.PrimaryKeyTag;
        if (seen.length === 1) {
          await lab.stopDaemon(killed, "SIGKILL");
          killedAt = Date.now();
        }
      }
      await sleep(1000);
    }
    const r = await pinging;
    try {
      expect(killedAt, "the leader was never killed").toBeDefined();
      expect(seen.flatMap((x) => x.diffs)).toEqual([]);
      expect(seen, "fewer than 3 rotations during the ping").toHaveLength(3);
      expect(r.transmitted, r.out).toBe(COUNT);
      expect(r.received, r.out).toBe(COUNT);
      const newLeader = await waitFor(
        "a new leader",
        async () => ((await leader(a).catch(() => "")) || undefined) as string | undefined,
        SLOW_MS,
      );
      expect([a.name, b.name]).toContain(newLeader);
      // Every rotation moved the ring on, also the ones after the failover.
      const newest = seen.map((x) => x.tags[2]!);
      expect(newest[1]!, JSON.stringify(seen)).toBeGreaterThan(newest[0]!);
      expect(newest[2]!, JSON.stringify(seen)).toBeGreaterThan(newest[1]!);
      expect(await cleartext(a)).toEqual({ in: 0, out: 0 });
      expect(await cleartext(b)).toEqual({ in: 0, out: 0 });
    } finally {
      // The killed host comes back (also when a check above failed: the later tests need it).
      if (killedAt !== undefined) await lab.startDaemon(killed);
    }
    // The killed host comes back; the pair leaves; h2 and h3 are workers again.
    await waitFor(`${killed.name} to be back`, async () => (await nodes(killed)) !== undefined, SLOW_MS);
    await ok(a, "rm", "-f", "ra");
    await ok(b, "rm", "-f", "rb");
    await waitFor(
      "h2 and h3 to be demoted",
      async () => (await shoal(h1(), "node", "demote", "h2", "h3")).code === 0,
      SLOW_MS,
    );
    await waitFor(
      "h1 to be the only manager",
      async () => (await nodes(h1()))?.filter((n) => n.ManagerStatus !== undefined).length === 1,
      SLOW_MS,
    );
  });

  it("a daemon that crashes (SIGKILL) and restarts adopts its container on the encrypted network: it runs on, reached by name and encrypted all along (no cleartext for the VNI ever leaves), both kernels then hold exactly what inspect says, and a rotation after it works", async () => {
    for (const [x, c] of [
      [h2(), "c2"],
      [h3(), "c3"],
    ] as const) {
      await shoal(x, "rm", "-f", c);
      await ok(x, "run", "-d", "--name", c, "--network", ENC, "host", "sleep", "100000");
    }
    await waitFor("c2 to reach c3", async () => (await ping(h2(), "c2", "c3", 1)).received === 1, SLOW_MS);
    await settled(h2(), [h3()]);
    await settled(h3(), [h2()]);
    const before = await runningAs(h3(), "c3");
    await restartedEncrypted("SIGKILL", before);
    // A rotation after the restart: h3 (whose adopted pair the new run took over) moves with it.
    const e = await encryption(h3());
    await waitFor(
      "a key rotation after the restart",
      async () => (await encryption(h3()).catch(() => undefined))?.PrimaryKeyTag !== e.PrimaryKeyTag,
      SLOW_MS,
    );
    await settled(h3(), [h2()]);
    await settled(h2(), [h3()]);
    expect((await ping(h2(), "c2", "c3", 3)).received).toBe(3);
    expect(await strayed(h3(), [h2()])).toEqual([]);
  });

  it("a daemon stopped cleanly (SIGTERM) and started again adopts its container the same way; that container removed, the host holds nothing of shoal's and every other host drops it", async () => {
    const before = await runningAs(h3(), "c3");
    await restartedEncrypted("SIGTERM", before);
    // Its last container on the network goes: its kernel is clean, and h2 drops its pair towards it.
    await ok(h3(), "rm", "-f", "c3");
    await waitFor("h3 to hold nothing of shoal's", async () => (await leftovers(h3())).length === 0, SLOW_MS);
    await waitFor(
      "h2 to drop its SAs towards h3",
      async () => (await states(h2())).every((s) => s.src !== h3().addr && s.dst !== h3().addr),
      SLOW_MS,
    );
    expect((await policies(h2())).filter((p) => p.dst === `${h3().addr}/32`)).toEqual([]);
    expect((await encryption(h2())).Peers).toEqual([]);
  });

  it("a host that is removed from the swarm (after a crash) takes its SAs and policies with it on every other host", async () => {
    await shoal(h3(), "rm", "-f", "c3");
    await ok(h3(), "run", "-d", "--name", "c3", "--network", ENC, "host", "sleep", "100000");
    await waitFor("c2 to reach c3", async () => (await ping(h2(), "c2", "c3", 1)).received === 1, SLOW_MS);
    await settled(h2(), [h3()]);
    await lab.stopDaemon(h3(), "SIGKILL");
    // A crashed host's endpoint stays until the node is removed: h2 keeps its SAs meanwhile.
    expect((await states(h2())).some((s) => s.dst === h3().addr)).toBe(true);
    await waitFor(
      "h3 to be down",
      async () => (await nodes(h1()))?.some((n) => n.Description.Hostname === "h3" && n.Status.State === "down"),
      SLOW_MS,
    );
    await ok(h1(), "node", "rm", "--force", "h3");
    await waitFor(
      "h2 to drop h3",
      async () => (await states(h2())).every((s) => s.src !== h3().addr && s.dst !== h3().addr),
      SLOW_MS,
    );
    expect((await policies(h2())).filter((p) => p.dst === `${h3().addr}/32`)).toEqual([]);
    expect((await encryption(h2())).Peers).toEqual([]);
  });
});
