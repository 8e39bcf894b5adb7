// The firewall programs, exactly, for both backends: the guard of encrypted overlays (nftables' table inet
// shoal-overlay; iptables' SHOAL-* chains in mangle) and the gateway bridge's NAT, plus what is read back
// from iptables-legacy-save, the probe that picks the backend, and the commands each backend runs.

import { describe, expect, it } from "vitest";
import {
  Firewall,
  parseIptablesCleartext,
  parseIptablesSave,
  probeEsp,
  probeFirewall,
  renderIptablesGateway,
  renderIptablesGuard,
  renderNft,
  renderNftGateway,
} from "../../src/dataplane/firewall.js";
import type { Runner, RunOptions, RunResult } from "../../src/dataplane/runner.js";

const lines = (...l: string[]) => `${l.join("\n")}\n`;
const ok = (stdout = ""): RunResult => ({ code: 0, stdout, stderr: "" });
const fail = (stderr: string, code = 1): RunResult => ({ code, stdout: "", stderr });

function recorder(answer: (argv: string[]) => RunResult = () => ok()) {
  const calls: { argv: string[]; stdin?: string }[] = [];
  const runner: Runner = async (argv: string[], opts?: RunOptions) => {
    calls.push({ argv, ...(opts?.stdin !== undefined ? { stdin: opts.stdin } : {}) });
    return answer(argv);
  };
  return { calls, runner };
}

const U32 = (vni: number) => `-m u32 --u32 "0>>22&0x3C@12>>8=${vni}"`;

describe("the guard for nftables (renderNft)", () => {
  it("replaces table inet shoal-overlay atomically: mark, outbound guard, inbound guard on the VNI", () => {
    expect(renderNft([4098, 4097, 4097], 4789)).toBe(
      lines(
        "table inet shoal-overlay {}",
        "delete table inet shoal-overlay",
        "table inet shoal-overlay {",
        "\tcounter cleartext-in {",
        "\t}",
        "\tcounter cleartext-out {",
        "\t}",
        "\tchain mark-out {",
        "\t\ttype route hook output priority mangle; policy accept;",
        "\t\tudp dport 4789 @th,96,24 { 4097, 4098 } meta mark set 0x0053484c",
        "\t}",
        "\tchain guard-out {",
        "\t\ttype filter hook postrouting priority filter; policy accept;",
        '\t\tudp dport 4789 @th,96,24 { 4097, 4098 } rt ipsec missing counter name "cleartext-out" drop',
        "\t}",
        "\tchain guard-in {",
        "\t\ttype filter hook input priority filter; policy accept;",
        '\t\tudp dport 4789 @th,96,24 { 4097, 4098 } meta ipsec missing counter name "cleartext-in" drop',
        "\t}",
        "}",
      ),
    );
  });

  it("with no encrypted VNI it only removes the table; bad VNIs and ports are refused", () => {
    expect(renderNft([])).toBe(lines("table inet shoal-overlay {}", "delete table inet shoal-overlay"));
    expect(() => renderNft([0])).toThrow(/invalid VNI/);
    expect(() => renderNft([0x1000000])).toThrow(/invalid VNI/);
    expect(() => renderNft([1], 0)).toThrow(/invalid data-path port/);
  });
});

describe("the guard for iptables-legacy (renderIptablesGuard)", () => {
  it("on a host without it: declares shoal's 5 chains in mangle, fills them, and inserts the 3 jumps first", () => {
    expect(renderIptablesGuard([4098, 4097, 4097], 7789)).toBe(
      lines(
        "*mangle",
        ":SHOAL-OVERLAY-MARK - [0:0]",
        ":SHOAL-OVERLAY-OUT - [0:0]",
        ":SHOAL-OVERLAY-IN - [0:0]",
        ":SHOAL-CLEARTEXT-OUT - [0:0]",
        ":SHOAL-CLEARTEXT-IN - [0:0]",
        `-A SHOAL-OVERLAY-MARK -p udp -m udp --dport 7789 ${U32(4097)} -j MARK --set-mark 0x0053484c`,
        `-A SHOAL-OVERLAY-MARK -p udp -m udp --dport 7789 ${U32(4098)} -j MARK --set-mark 0x0053484c`,
        `-A SHOAL-OVERLAY-OUT -p udp -m udp --dport 7789 ${U32(4097)} -m policy --dir out --pol none -j SHOAL-CLEARTEXT-OUT`,
        `-A SHOAL-OVERLAY-OUT -p udp -m udp --dport 7789 ${U32(4098)} -m policy --dir out --pol none -j SHOAL-CLEARTEXT-OUT`,
        `-A SHOAL-OVERLAY-IN -p udp -m udp --dport 7789 ${U32(4097)} -m policy --dir in --pol none -j SHOAL-CLEARTEXT-IN`,
        `-A SHOAL-OVERLAY-IN -p udp -m udp --dport 7789 ${U32(4098)} -m policy --dir in --pol none -j SHOAL-CLEARTEXT-IN`,
        "-A SHOAL-CLEARTEXT-OUT -j DROP",
        "-A SHOAL-CLEARTEXT-IN -j DROP",
        "-I OUTPUT 1 -j SHOAL-OVERLAY-MARK",
        "-I POSTROUTING 1 -j SHOAL-OVERLAY-OUT",
        "-I INPUT 1 -j SHOAL-OVERLAY-IN",
        "COMMIT",
      ),
    );
  });

  it("where the jumps exist it rewrites the chains only; a duplicated stale jump is deleted as often as it is there", () => {
    const have = {
      chains: ["INPUT", "OUTPUT", "POSTROUTING", "SHOAL-OVERLAY-MARK", "SHOAL-OVERLAY-OUT", "SHOAL-OVERLAY-IN"],
      jumps: [
        { from: "OUTPUT", to: "SHOAL-OVERLAY-MARK" },
        { from: "POSTROUTING", to: "SHOAL-OVERLAY-OUT" },
        { from: "INPUT", to: "SHOAL-OVERLAY-IN" },
      ],
    };
    const text = renderIptablesGuard([4097], 4789, have);
    expect(text).not.toMatch(/^-I /m);
    expect(text.split("\n").filter((l) => l.startsWith("-A "))).toHaveLength(5);
    // None wanted: unhook (twice where the jump is there twice), flush, delete - only what exists.
    const twice = { ...have, jumps: [...have.jumps, { from: "INPUT", to: "SHOAL-OVERLAY-IN" }] };
    expect(renderIptablesGuard([], 4789, twice)).toBe(
      lines(
        "*mangle",
        "-D OUTPUT -j SHOAL-OVERLAY-MARK",
        "-D POSTROUTING -j SHOAL-OVERLAY-OUT",
        "-D INPUT -j SHOAL-OVERLAY-IN",
        "-D INPUT -j SHOAL-OVERLAY-IN",
        "-F SHOAL-OVERLAY-MARK",
        "-F SHOAL-OVERLAY-OUT",
        "-F SHOAL-OVERLAY-IN",
        "-X SHOAL-OVERLAY-MARK",
        "-X SHOAL-OVERLAY-OUT",
        "-X SHOAL-OVERLAY-IN",
        "COMMIT",
      ),
    );
    expect(renderIptablesGuard([], 4789, { chains: ["INPUT"], jumps: [] })).toBe("");
    expect(() => renderIptablesGuard([0])).toThrow(/invalid VNI/);
  });

  it("reads iptables-legacy-save: chains and jumps of the one table asked for, and the drop counters", () => {
    const save = [
      "# Generated by iptables-save v1.8.9 on Sun Dec  6 14:20:19 2026",
      "*filter",
      ":INPUT ACCEPT [0:0]",
      "-A INPUT -j SHOAL-OVERLAY-IN",
      "COMMIT",
      "*mangle",
      ":OUTPUT ACCEPT [12:3400]",
      ":SHOAL-OVERLAY-MARK - [0:0]",
      "-A OUTPUT -j SHOAL-OVERLAY-MARK",
      "-A OUTPUT -p tcp -j SHOAL-OVERLAY-MARK",
      "-A OUTPUT -j DOCKER",
      "COMMIT",
      "",
    ].join("\n");
    expect(parseIptablesSave(save, "mangle")).toEqual({
      chains: ["OUTPUT", "SHOAL-OVERLAY-MARK"],
      jumps: [{ from: "OUTPUT", to: "SHOAL-OVERLAY-MARK" }],
    });
    expect(parseIptablesSave(save, "nat")).toEqual({ chains: [], jumps: [] });
    expect(() => parseIptablesSave("*mangle\n:BAD;NAME - [0:0]\nCOMMIT\n", "mangle")).toThrow(/chain named/);
    const counted = "*mangle\n[7:644] -A SHOAL-CLEARTEXT-IN -j DROP\n[0:0] -A SHOAL-CLEARTEXT-OUT -j DROP\nCOMMIT\n";
    expect(parseIptablesCleartext(counted)).toEqual({ in: 7, out: 0 });
    expect(parseIptablesCleartext("*mangle\nCOMMIT\n")).toBeUndefined();
  });
});

describe("the gateway bridge's NAT", () => {
  const g = { bridge: "shoal_gwbridge", subnet: "172.18.0.0/16" };
  it("nftables: table ip shoal replaced whole, masquerading the subnet leaving by another interface", () => {
    expect(renderNftGateway(g)).toBe(
      lines(
        "table ip shoal {}",
        "delete table ip shoal",
        "table ip shoal {",
        "\tchain postrouting {",
        "\t\ttype nat hook postrouting priority srcnat; policy accept;",
        '\t\tip saddr 172.18.0.0/16 oifname != "shoal_gwbridge" masquerade',
        "\t}",
        "}",
      ),
    );
  });

  it("iptables: SHOAL-POSTROUTING in nat and SHOAL-FORWARD in filter, each hooked once", () => {
    const none = { chains: [], jumps: [] };
    expect(renderIptablesGateway(g, { nat: none, filter: none })).toBe(
      lines(
        "*nat",
        ":SHOAL-POSTROUTING - [0:0]",
        "-A SHOAL-POSTROUTING -s 172.18.0.0/16 ! -o shoal_gwbridge -j MASQUERADE",
        "-I POSTROUTING 1 -j SHOAL-POSTROUTING",
        "COMMIT",
        "*filter",
        ":SHOAL-FORWARD - [0:0]",
        "-A SHOAL-FORWARD -i shoal_gwbridge ! -o shoal_gwbridge -j ACCEPT",
        "-A SHOAL-FORWARD -o shoal_gwbridge -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        "-I FORWARD 1 -j SHOAL-FORWARD",
        "COMMIT",
      ),
    );
    const hooked = renderIptablesGateway(g, {
      nat: { chains: ["SHOAL-POSTROUTING"], jumps: [{ from: "POSTROUTING", to: "SHOAL-POSTROUTING" }] },
      filter: { chains: ["SHOAL-FORWARD"], jumps: [{ from: "FORWARD", to: "SHOAL-FORWARD" }] },
    });
    expect(hooked).not.toContain("-I ");
    expect(hooked).toContain(":SHOAL-FORWARD - [0:0]\n");
  });
});

describe("probeFirewall and probeEsp", () => {
  it("nftables where the kernel loads the guard; otherwise iptables-legacy, saying why not nftables", async () => {
    const both = recorder();
    expect(await probeFirewall(both.runner)).toEqual({ backend: "nftables", forced: false });
    expect(both.calls).toEqual([{ argv: ["unshare", "--net", "nft", "-f", "-"], stdin: renderNft([1]) }]);

    const uml = recorder((argv) =>
      argv[2] === "nft" ? fail("Error: Could not process rule: Operation not supported\nadd table inet x\n") : ok(),
    );
    expect(await probeFirewall(uml.runner)).toEqual({
      backend: "iptables",
      forced: false,
      nftablesUnavailable: "nft: Could not process rule: Operation not supported",
    });
    expect(uml.calls[1]).toEqual({
      argv: ["unshare", "--net", "iptables-legacy-restore", "-w", "--noflush"],
      stdin: renderIptablesGuard([1]),
    });
  });

  it("neither: no backend, and both reasons; a forced backend is probed alone", async () => {
    const none = recorder((argv) => fail(`${argv[2]}: not found`, 127));
    const s = await probeFirewall(none.runner);
    expect(s).toEqual({
      backend: null,
      reason:
        "neither nftables (nft: nft: not found) nor iptables-legacy (iptables-legacy-restore: iptables-legacy-restore: not found) can filter packets here",
    });
    const forced = recorder();
    expect(await probeFirewall(forced.runner, "iptables")).toEqual({ backend: "iptables", forced: true });
    expect(forced.calls.map((c) => c.argv[2])).toEqual(["iptables-legacy-restore"]);
    const bad = recorder(() => fail("iptables-legacy-restore: line 2 failed"));
    expect(await probeFirewall(bad.runner, "iptables")).toEqual({
      backend: null,
      reason:
        "the iptables firewall backend cannot be used (iptables-legacy-restore: iptables-legacy-restore: line 2 failed)",
    });
  });

  it("probeEsp needs both ESP with AES-GCM and a firewall for the guard, and says which is missing", async () => {
    const espOk = async () => ok();
    const fw = async () => ({ backend: "iptables", forced: false }) as const;
    expect(await probeEsp(espOk, fw)).toEqual({ supported: true });
    const noGcm = async () => fail("Error: Requested AEAD algorithm not found.\n", 2);
    expect(await probeEsp(noGcm, fw)).toEqual({
      supported: false,
      reason: "this kernel cannot do IPsec ESP with AES-GCM (ip xfrm: Requested AEAD algorithm not found)",
    });
    expect(await probeEsp(espOk, async () => ({ backend: null, reason: "neither ..." }))).toEqual({
      supported: false,
      reason: "the guard against cleartext cannot be loaded: neither ...",
    });
  });
});

describe("Firewall: the commands each backend runs", () => {
  it("nftables: one nft -f - per program; counters from nft list counter", async () => {
    const r = recorder((argv) =>
      argv[1] === "list"
        ? ok(`table inet shoal-overlay {\n\tcounter ${argv[5]} {\n\t\tpackets 3 bytes 150\n\t}\n}\n`)
        : ok(),
    );
    const fw = new Firewall({ runner: r.runner, backend: "nftables" });
    await fw.loadGuard([4097], 4789);
    await fw.loadGateway({ bridge: "br", subnet: "172.18.0.0/16" });
    expect(await fw.cleartextCounters()).toEqual({ in: 3, out: 3 });
    expect(r.calls.slice(0, 2)).toEqual([
      { argv: ["nft", "-f", "-"], stdin: renderNft([4097], 4789) },
      { argv: ["nft", "-f", "-"], stdin: renderNftGateway({ bridge: "br", subnet: "172.18.0.0/16" }) },
    ]);
  });

  it("iptables: save, then one restore --noflush; a failed restore is an error naming the backend", async () => {
    const r = recorder((argv) =>
      argv[0] === "iptables-legacy-restore" ? fail("iptables-restore: line 7 failed\n") : ok("*mangle\nCOMMIT\n"),
    );
    const fw = new Firewall({ runner: r.runner, backend: "iptables" });
    await expect(fw.loadGuard([4097], 4789)).rejects.toThrow(
      "loading the cleartext guard (iptables) failed (exit 1): iptables-restore: line 7 failed",
    );
    expect(r.calls).toEqual([
      { argv: ["iptables-legacy-save", "-t", "mangle"] },
      {
        argv: ["iptables-legacy-restore", "-w", "--noflush"],
        stdin: renderIptablesGuard([4097], 4789, { chains: [], jumps: [] }),
      },
    ]);
  });

  it("with no backend, loading says why; resetting both never throws", async () => {
    const r = recorder(() => fail("not found", 127));
    const fw = new Firewall({ runner: r.runner });
    await expect(fw.loadGuard([1], 4789)).rejects.toThrow(/loading the cleartext guard: neither nftables/);
    await fw.resetGuard();
    expect(r.calls.slice(-2).map((c) => c.argv.join(" "))).toEqual(["nft -f -", "iptables-legacy-save -t mangle"]);
  });
});
