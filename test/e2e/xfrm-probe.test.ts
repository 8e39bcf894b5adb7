// Encrypted overlays on this kernel, for real (root): the ESP/AES-GCM probe and its reason, the guard in
// both firewall backends (nftables and iptables-legacy: this kernel has both) loaded and doing its job
// between two scratch "hosts" (network namespaces joined by a veth, VXLAN devices for an encrypted and a
// plain VNI), the gateway NAT in both, the rendered xfrm policy lines installed, updated and removed.
// The encrypted ping itself runs through shoal in encrypted.test.ts. Every namespace a test makes is removed in `finally`, also when the test fails.

import { execFile } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";
import {
  Firewall,
  type FirewallBackend,
  probeEsp,
  probeFirewall,
  renderIptablesGuard,
  renderNft,
} from "../../src/dataplane/firewall.js";
import { IpsecDataplane } from "../../src/dataplane/ipsec.js";
import { createNetns, deleteNetns, runInNetns } from "../../src/dataplane/netns.js";
import { mustRun, netnsRunner, spawnRunner } from "../../src/dataplane/runner.js";
import { encryptedMtu, type Key, renderInstall, renderRemove, renderRotate, spi } from "../../src/dataplane/xfrm.js";

const root = process.getuid?.() === 0;
const nftVersion = root ? (await promisify(execFile)("nft", ["--version"])).stdout.trim() : "nft";

const A = "192.0.2.1";
const B = "192.0.2.2";
const ENC_VNI = 4097;
const PLAIN_VNI = 42;
const key = (tag: number): Key => ({
  tag,
  key: Buffer.from(Array.from({ length: 16 }, (_, i) => (tag * 31 + i * 7) & 0xff)),
  salt: Buffer.from([0x5a, 0x11, 0x0a, tag]),
});
const K1 = [key(1), key(2), key(3)];
const K2 = [key(2), key(3), key(4)];

const execP = promisify(execFile);

/** Run argv in the namespace; throws with the command and its output on failure. */
async function inNs(ns: string, argv: string[], stdin?: string): Promise<string> {
  return (await mustRun(spawnRunner, ["nsenter", `--net=${ns}`, ...argv], stdin === undefined ? {} : { stdin })).stdout;
}

async function pingOk(ns: string, ip: string): Promise<boolean> {
  const r = await runInNetns(ns, ["ping", "-c", "2", "-i", "0.2", "-W", "1", ip]);
  return r.code === 0;
}

/** The firewall of a scratch "host", with the backend given. */
const firewallIn = (ns: string, backend: FirewallBackend) =>
  new Firewall({ runner: netnsRunner(spawnRunner, ns), backend });

/** Network namespaces as files in a private temp dir; `cleanup` removes all of them (and the dir). */
async function scratch(): Promise<{ ns: (name: string) => Promise<string>; cleanup: () => Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), "shoal-xfrm-"));
  const made: string[] = [];
  return {
    ns: async (name) => {
      const p = join(dir, name);
      made.push(p);
      await createNetns(p, { exec: ["ip", "link", "set", "lo", "up"] });
      return p;
    },
    cleanup: async () => {
      for (const p of made) await deleteNetns(p).catch(() => {});
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/**
 * Two "hosts" A and B joined by a veth (A=192.0.2.1, B=192.0.2.2), each with a VXLAN device for the
 * encrypted VNI (10.9.0.x, encrypted MTU) and one for a plain VNI (10.8.0.x), pointed at each other.
 */
async function twoHosts(s: { ns: (name: string) => Promise<string> }): Promise<[string, string]> {
  const a = await s.ns("a");
  const b = await s.ns("b");
  await mustRun(spawnRunner, ["ip", "link", "add", "ua", "netns", a, "type", "veth", "peer", "name", "ub", "netns", b]);
  const mtu = encryptedMtu();
  for (const [ns, dev, me, peer, n] of [
    [a, "ua", A, B, 1],
    [b, "ub", B, A, 2],
  ] as const) {
    await inNs(
      ns,
      ["ip", "-batch", "-"],
      [
        `addr add ${me}/24 dev ${dev}`,
        `link set ${dev} up`,
        `link add venc mtu ${mtu} type vxlan id ${ENC_VNI} dstport 4789 local ${me} remote ${peer}`,
        `addr add 10.9.0.${n}/24 dev venc`,
        "link set venc up",
        `link add vplain type vxlan id ${PLAIN_VNI} dstport 4789 local ${me} remote ${peer}`,
        `addr add 10.8.0.${n}/24 dev vplain`,
        "link set vplain up",
        "",
      ].join("\n"),
    );
  }
  return [a, b];
}

/** Net namespaces that have a live process, as lsns shows them: inode -> command. */
async function liveNetns(): Promise<Map<string, string>> {
  const { stdout } = await execP("lsns", ["-t", "net", "-n", "-o", "NS,COMMAND"]);
  const m = new Map<string, string>();
  for (const line of stdout.split("\n")) {
    const [ns, ...cmd] = line.trim().split(/\s+/);
    if (ns) m.set(ns, cmd.join(" "));
  }
  return m;
}

async function nsfsMounts(): Promise<string[]> {
  const { stdout } = await execP("cat", ["/proc/self/mountinfo"]);
  return stdout.split("\n").filter((l) => / - nsfs /.test(l));
}

describe.skipIf(!root)("encrypted overlays on this kernel", () => {
  it("probeFirewall: nftables here (its inet family works); forced, iptables-legacy works too", async () => {
    expect(await probeFirewall()).toEqual({ backend: "nftables", forced: false });
    expect(await probeFirewall(spawnRunner, "iptables")).toEqual({ backend: "iptables", forced: true });
  });

  it("probeEsp: unsupported here, with the kernel's own message, and no namespace left behind", async () => {
    const mountsBefore = await nsfsMounts();
    const r = await probeEsp();
    expect(r).toEqual({
      supported: false,
      reason: "this kernel cannot do IPsec ESP with AES-GCM (ip xfrm: Requested AEAD algorithm not found)",
    });
    // The probe's namespaces are anonymous (unshare --net CMD): no bind mount, and no process keeps one.
    const mine = [...(await liveNetns()).values()].filter((c) =>
      /^(unshare --net|ip xfrm state add|nft -f -|iptables-legacy-restore)/.test(c),
    );
    expect(mine).toEqual([]);
    const added = (await nsfsMounts()).filter((l) => !mountsBefore.includes(l));
    expect(added.filter((l) => !/ \/tmp\/| \/var\/| \/run\//.test(l))).toEqual([]);
  });

  it("the rendered install batch reaches the kernel and fails at its first ESP state with the same reason", async () => {
    const s = await scratch();
    try {
      const a = await s.ns("a");
      const r = await runInNetns(a, ["ip", "-batch", "-"], { stdin: renderInstall(A, [B], K1) });
      expect(r.code).not.toBe(0);
      // The quoted 'rfc4106(gcm(aes))' and the key parse (iproute2 would complain first otherwise): the only
      // complaint is the kernel's. (ip's xfrm code exits on the first error, without "Command failed -:N".)
      expect(r.stderr.trim()).toBe("Error: Requested AEAD algorithm not found.");
      expect(await inNs(a, ["ip", "xfrm", "state", "show"])).toBe("");
    } finally {
      await s.cleanup();
    }
  });

  it("the rendered policy lines install, update on rotation and remove in a scratch namespace", async () => {
    const s = await scratch();
    try {
      const a = await s.ns("a");
      const only = (prog: string) =>
        prog
          .split("\n")
          .filter((l) => l.startsWith("xfrm policy"))
          .map((l) => `${l}\n`)
          .join("");
      await inNs(a, ["ip", "-batch", "-"], only(renderInstall(A, [B, "192.0.2.3"], K1)));
      const hex = (n: number) => `0x${n.toString(16).padStart(8, "0")}`;
      let shown = await inNs(a, ["ip", "xfrm", "policy", "show"]);
      expect(shown).toContain(`src ${A}/32 dst ${B}/32 proto udp dport 4789`);
      expect(shown).toContain("mark 0x53484c/0xffffffff");
      expect(shown).toContain(`proto esp spi ${hex(spi(A, B, 2))} reqid 5457996 mode transport`);
      expect(shown).toContain(`proto esp spi ${hex(spi(A, "192.0.2.3", 2))} reqid 5457996 mode transport`);
      expect(shown.match(/dir out/g)).toHaveLength(2);

      await inNs(a, ["ip", "-batch", "-"], only(renderRotate(A, [B, "192.0.2.3"], K1, K2)[1]));
      shown = await inNs(a, ["ip", "xfrm", "policy", "show"]);
      expect(shown.match(/dir out/g)).toHaveLength(2); // updated in place, not added beside
      expect(shown).toContain(`proto esp spi ${hex(spi(A, B, 3))} reqid 5457996`);
      expect(shown).not.toContain(hex(spi(A, B, 2)));

      await inNs(a, ["ip", "-batch", "-"], only(renderRemove(A, [B, "192.0.2.3"], K2)));
      expect(await inNs(a, ["ip", "xfrm", "policy", "show"])).toBe("");
    } finally {
      await s.cleanup();
    }
  });

  it("the host's IPsec controller here: guard loaded, SAs refused with the kernel's reason, nothing half-installed, all removed", async () => {
    const s = await scratch();
    try {
      const a = await s.ns("a");
      const ip = new IpsecDataplane({
        localAddr: A,
        runner: netnsRunner(spawnRunner, a),
        firewall: firewallIn(a, "nftables"),
        retryMs: 60_000,
      });
      try {
        // A previous run's marked policy is removed by reset.
        await inNs(
          a,
          ["ip", "-batch", "-"],
          `${renderInstall(A, [B], K1)
            .split("\n")
            .filter((l) => l.startsWith("xfrm policy"))
            .join("\n")}\n`,
        );
        await ip.reset();
        expect(await inNs(a, ["ip", "xfrm", "policy", "show"])).toBe("");

        await ip.sync({ keys: K1, networks: [{ vni: ENC_VNI, remotes: [B] }] });
        // The guard is in place for the VNI, so its traffic is dropped rather than sent in clear...
        expect(await inNs(a, ["nft", "list", "table", "inet", "shoal-overlay"])).toContain("@th,96,24 0x1001");
        // ...the SAs could not be installed, and the pair was flushed: no policy without its states.
        expect(ip.status().peers).toEqual([
          {
            ip: B,
            installed: false,
            error: `installing IPsec towards ${B} failed (exit 2): Error: Requested AEAD algorithm not found.`,
          },
        ]);
        expect(await inNs(a, ["ip", "xfrm", "policy", "show"])).toBe("");
        expect(await inNs(a, ["ip", "xfrm", "state", "show"])).toBe("");
        expect(await ip.kernelView([B], K1)).toEqual([
          { ip: B, inbound: [], outbound: undefined, policy: false, complete: false },
        ]);

        await ip.sync({ keys: K1, networks: [] });
        expect(await inNs(a, ["nft", "list", "tables"])).toBe("");
      } finally {
        ip.close();
      }
    } finally {
      await s.cleanup();
    }
  });

  it(`the nft program loads (${nftVersion}), replaces itself atomically and is removed`, async () => {
    const s = await scratch();
    try {
      const a = await s.ns("a");
      await inNs(a, ["nft", "-f", "-"], renderNft([ENC_VNI, 4098]));
      await inNs(a, ["nft", "-f", "-"], renderNft([ENC_VNI])); // replace, not append
      const listed = await inNs(a, ["nft", "list", "table", "inet", "shoal-overlay"]);
      expect(listed).toContain("udp dport 4789 @th,96,24 0x1001 meta mark set 0x0053484c");
      expect(listed).toContain('udp dport 4789 @th,96,24 0x1001 rt ipsec missing counter name "cleartext-out" drop');
      expect(listed).toContain('udp dport 4789 @th,96,24 0x1001 meta ipsec missing counter name "cleartext-in" drop');
      expect(listed).not.toContain("0x1002");
      await inNs(a, ["nft", "-f", "-"], renderNft([]));
      expect(await inNs(a, ["nft", "list", "tables"])).toBe("");
    } finally {
      await s.cleanup();
    }
  });

  it("the iptables program loads, replaces itself without a second jump, leaves others' rules alone and is removed", async () => {
    const s = await scratch();
    try {
      const a = await s.ns("a");
      // Someone else's rule in mangle OUTPUT stays where it is; shoal's jump goes before it.
      await inNs(a, ["iptables-legacy", "-w", "-t", "mangle", "-A", "OUTPUT", "-p", "tcp", "-j", "ACCEPT"]);
      const fw = firewallIn(a, "iptables");
      await fw.loadGuard([ENC_VNI, 4098], 4789);
      await fw.loadGuard([ENC_VNI], 4789);
      const saved = await inNs(a, ["iptables-legacy-save", "-t", "mangle"]);
      const rules = saved.split("\n").filter((l) => l.startsWith("-A "));
      expect(rules.filter((l) => l.startsWith("-A OUTPUT "))).toEqual([
        "-A OUTPUT -j SHOAL-OVERLAY-MARK",
        "-A OUTPUT -p tcp -j ACCEPT",
      ]);
      expect(rules).toContain("-A POSTROUTING -j SHOAL-OVERLAY-OUT");
      expect(rules).toContain("-A INPUT -j SHOAL-OVERLAY-IN");
      // As iptables prints them back: the u32 test in hex (0x1001 = 4097), the mark as --set-xmark.
      expect(rules).toContain(
        '-A SHOAL-OVERLAY-MARK -p udp -m udp --dport 4789 -m u32 --u32 "0x0>>0x16&0x3c@0xc>>0x8=0x1001" -j MARK --set-xmark 0x53484c/0xffffffff',
      );
      expect(rules).toContain(
        '-A SHOAL-OVERLAY-IN -p udp -m udp --dport 4789 -m u32 --u32 "0x0>>0x16&0x3c@0xc>>0x8=0x1001" -m policy --dir in --pol none -j SHOAL-CLEARTEXT-IN',
      );
      expect(saved).not.toContain("0x1002");
      expect(await fw.cleartextCounters()).toEqual({ in: 0, out: 0 });
      await fw.loadGuard([], 4789);
      const after = await inNs(a, ["iptables-legacy-save", "-t", "mangle"]);
      expect(after).not.toContain("SHOAL");
      expect(after).toContain("-A OUTPUT -p tcp -j ACCEPT");
      expect(await fw.cleartextCounters()).toBeUndefined();
      // The probe's program is the same renderer's.
      expect(renderIptablesGuard([1])).toContain("-I INPUT 1 -j SHOAL-OVERLAY-IN");
    } finally {
      await s.cleanup();
    }
  });

  it("the gateway NAT loads in both backends and is replaced, not added to, when loaded again", async () => {
    const s = await scratch();
    try {
      const a = await s.ns("a");
      const g = { bridge: "shoal_gwbridge", subnet: "172.18.0.0/16" };
      await firewallIn(a, "nftables").loadGateway(g);
      await firewallIn(a, "nftables").loadGateway(g);
      const nft = await inNs(a, ["nft", "list", "table", "ip", "shoal"]);
      expect(nft.match(/masquerade/g)).toHaveLength(1);
      expect(nft).toContain('ip saddr 172.18.0.0/16 oifname != "shoal_gwbridge" masquerade');
      await firewallIn(a, "iptables").loadGateway(g);
      await firewallIn(a, "iptables").loadGateway(g);
      const ipt = await inNs(a, ["iptables-legacy-save"]);
      expect(ipt.split("\n").filter((l) => /^-A (POSTROUTING|FORWARD) -j SHOAL-/.test(l))).toEqual([
        "-A FORWARD -j SHOAL-FORWARD",
        "-A POSTROUTING -j SHOAL-POSTROUTING",
      ]);
      expect(ipt).toContain("-A SHOAL-POSTROUTING -s 172.18.0.0/16 ! -o shoal_gwbridge -j MASQUERADE");
      expect(ipt).toContain("-A SHOAL-FORWARD -o shoal_gwbridge -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT");
    } finally {
      await s.cleanup();
    }
  });

  for (const backend of ["nftables", "iptables"] as const) {
    it(`the ${backend} guard drops cleartext VXLAN of the encrypted VNI on the way out and on the way in; a plain VNI passes`, async () => {
      const s = await scratch();
      try {
        const [a, b] = await twoHosts(s);
        const fa = firewallIn(a, backend);
        const fb = firewallIn(b, backend);
        expect(await pingOk(a, "10.9.0.2")).toBe(true); // no guard yet: VXLAN works in clear
        // Guard on A only: A's encrypted traffic never leaves in clear (no policy, no state here).
        await fa.loadGuard([ENC_VNI], 4789);
        expect(await pingOk(a, "10.9.0.2")).toBe(false);
        expect(await pingOk(a, "10.8.0.2")).toBe(true);
        expect((await fa.cleartextCounters())?.out).toBeGreaterThan(0);
        // Guard on B only: B refuses A's cleartext for the encrypted VNI.
        await fa.loadGuard([], 4789);
        await fb.loadGuard([ENC_VNI], 4789);
        expect(await pingOk(a, "10.9.0.2")).toBe(false);
        expect(await pingOk(a, "10.8.0.2")).toBe(true);
        expect((await fb.cleartextCounters())?.in).toBeGreaterThan(0);
        // Reset removes it whichever backend loaded it.
        await fb.resetGuard();
        expect(await pingOk(a, "10.9.0.2")).toBe(true);
      } finally {
        await s.cleanup();
      }
    });
  }
});
