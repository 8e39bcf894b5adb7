// The exact xfrm (`ip -batch`) programs for encrypted overlays (the guard's are in firewall.test.ts): two hosts (one remote) and
// three hosts (two remotes), before and after a key rotation, plus SPI derivation and uniqueness. The SPIs
// in the expected text were computed independently (a separate FNV-1a-32 implementation over
// src ip16 | tag BE32 | dst ip16), not by the code under test.

import { describe, expect, it } from "vitest";
import type { Runner, RunResult } from "../../src/dataplane/runner.js";
import {
  EncryptionUnsupportedError,
  encryptedMtu,
  encryptionUnsupportedError,
  ip16,
  type Key,
  probeXfrm,
  renderInstall,
  renderRemove,
  renderRotate,
  requireEncryption,
  spi,
} from "../../src/dataplane/xfrm.js";

const A = "10.10.0.1";
const B = "10.10.0.2";
const C = "10.10.0.3";
const key = (tag: number): Key => ({ tag, key: Buffer.alloc(16, tag), salt: Buffer.from([0xa0, 0xa1, 0xa2, tag]) });
const K1 = [key(1), key(2), key(3)];
const K2 = [key(2), key(3), key(4)];
const mat = (tag: number) =>
  `0x${tag.toString(16).padStart(2, "0").repeat(16)}a0a1a2${tag.toString(16).padStart(2, "0")}`;
const AEAD = (tag: number) => `mode transport aead 'rfc4106(gcm(aes))' ${mat(tag)} 128`;
const R = "reqid 0x0053484c";
const lines = (...l: string[]) => `${l.join("\n")}\n`;

// Independently computed SPIs: [tag1, tag2, tag3, tag4]
const S = {
  BA: ["0x0bcc4b1b", "0xcccdb01e", "0x351dac6d", "0x9592d350"],
  AB: ["0xdb4a2dfb", "0x1c48cc1e", "0x8b6ad97d", "0xcff7c1c0"],
  CA: ["0x460d2124", "0x50cbfe3d", "0xedfc89ee", "0x5b346e37"],
  AC: ["0xda4a2c68", "0x1d48cdb1", "0x8a6ad7ea", "0xd0f7c353"],
};
const sp = (pair: keyof typeof S, tag: number) => S[pair][tag - 1]!;
const POL_AB = `src ${A}/32 dst ${B}/32 proto udp dport 4789 dir out mark 0x0053484c`;
const POL_AC = `src ${A}/32 dst ${C}/32 proto udp dport 4789 dir out mark 0x0053484c`;

describe("spi", () => {
  it("is FNV-1a-32 over src ip16 | tag (4 bytes BE) | dst ip16", () => {
    expect(ip16("10.0.0.1").toString("hex")).toBe("00000000000000000000ffff0a000001");
    expect(ip16("fd00::1").toString("hex")).toBe("fd000000000000000000000000000001");
    expect(spi("10.0.0.1", "10.0.0.2", 1)).toBe(0xf9c16827);
    expect(spi("fd00::1", "fd00::2", 7)).toBe(0x8c69a18d);
    expect(`0x${spi(B, A, 2).toString(16).padStart(8, "0")}`).toBe(sp("BA", 2));
  });

  it("never yields a reserved SPI (0-255): such hashes map to hash + 0x100", () => {
    // FNV-1a-32 of (10.10.0.1 | 6532855 | 10.10.0.2) is 254 (found by an exhaustive search in C).
    expect(spi(A, B, 6532855)).toBe(254 + 0x100);
  });

  it("differs per direction and per key for every pair of a 3-host keyring, across a rotation", () => {
    const hosts = [A, B, C];
    const seen = new Set<number>();
    for (const s of hosts)
      for (const d of hosts)
        if (s !== d)
          for (const t of [1, 2, 3, 4]) {
            const v = spi(s, d, t);
            expect(v).toBeGreaterThan(255);
            expect(seen.has(v)).toBe(false);
            seen.add(v);
          }
    expect(seen.size).toBe(6 * 4);
  });

  it("rejects tags that do not fit 4 bytes", () => {
    expect(() => spi(A, B, 2 ** 32)).toThrow(/invalid key tag/);
    expect(() => spi(A, B, -1)).toThrow(/invalid key tag/);
  });
});

describe("renderInstall", () => {
  it("two hosts: 3 inbound states, the primary's outbound state, then the marked policy", () => {
    expect(renderInstall(A, [B], K1, { port: 4789 })).toBe(
      lines(
        `xfrm state add src ${B} dst ${A} proto esp spi ${sp("BA", 1)} ${R} ${AEAD(1)}`,
        `xfrm state add src ${B} dst ${A} proto esp spi ${sp("BA", 2)} ${R} ${AEAD(2)}`,
        `xfrm state add src ${B} dst ${A} proto esp spi ${sp("BA", 3)} ${R} ${AEAD(3)}`,
        `xfrm state add src ${A} dst ${B} proto esp spi ${sp("AB", 2)} ${R} ${AEAD(2)}`,
        `xfrm policy add ${POL_AB} tmpl src ${A} dst ${B} proto esp spi ${sp("AB", 2)} ${R} mode transport`,
      ),
    );
  });

  it("three hosts: the same per remote, in the given order", () => {
    expect(renderInstall(A, [B, C], K1, { port: 4789 })).toBe(
      lines(
        `xfrm state add src ${B} dst ${A} proto esp spi ${sp("BA", 1)} ${R} ${AEAD(1)}`,
        `xfrm state add src ${B} dst ${A} proto esp spi ${sp("BA", 2)} ${R} ${AEAD(2)}`,
        `xfrm state add src ${B} dst ${A} proto esp spi ${sp("BA", 3)} ${R} ${AEAD(3)}`,
        `xfrm state add src ${A} dst ${B} proto esp spi ${sp("AB", 2)} ${R} ${AEAD(2)}`,
        `xfrm policy add ${POL_AB} tmpl src ${A} dst ${B} proto esp spi ${sp("AB", 2)} ${R} mode transport`,
        `xfrm state add src ${C} dst ${A} proto esp spi ${sp("CA", 1)} ${R} ${AEAD(1)}`,
        `xfrm state add src ${C} dst ${A} proto esp spi ${sp("CA", 2)} ${R} ${AEAD(2)}`,
        `xfrm state add src ${C} dst ${A} proto esp spi ${sp("CA", 3)} ${R} ${AEAD(3)}`,
        `xfrm state add src ${A} dst ${C} proto esp spi ${sp("AC", 2)} ${R} ${AEAD(2)}`,
        `xfrm policy add ${POL_AC} tmpl src ${A} dst ${C} proto esp spi ${sp("AC", 2)} ${R} mode transport`,
      ),
    );
  });

  it("three hosts after the rotation installs the new keyring (primary = key 3)", () => {
    expect(renderInstall(A, [B, C], K2)).toBe(
      lines(
        `xfrm state add src ${B} dst ${A} proto esp spi ${sp("BA", 2)} ${R} ${AEAD(2)}`,
        `xfrm state add src ${B} dst ${A} proto esp spi ${sp("BA", 3)} ${R} ${AEAD(3)}`,
        `xfrm state add src ${B} dst ${A} proto esp spi ${sp("BA", 4)} ${R} ${AEAD(4)}`,
        `xfrm state add src ${A} dst ${B} proto esp spi ${sp("AB", 3)} ${R} ${AEAD(3)}`,
        `xfrm policy add ${POL_AB} tmpl src ${A} dst ${B} proto esp spi ${sp("AB", 3)} ${R} mode transport`,
        `xfrm state add src ${C} dst ${A} proto esp spi ${sp("CA", 2)} ${R} ${AEAD(2)}`,
        `xfrm state add src ${C} dst ${A} proto esp spi ${sp("CA", 3)} ${R} ${AEAD(3)}`,
        `xfrm state add src ${C} dst ${A} proto esp spi ${sp("CA", 4)} ${R} ${AEAD(4)}`,
        `xfrm state add src ${A} dst ${C} proto esp spi ${sp("AC", 3)} ${R} ${AEAD(3)}`,
        `xfrm policy add ${POL_AC} tmpl src ${A} dst ${C} proto esp spi ${sp("AC", 3)} ${R} mode transport`,
      ),
    );
  });

  it("IPv6 hosts get /128 selectors; the ICV length is an option", () => {
    const out = renderInstall("fd00::1", ["fd00::2"], K1, { port: 4790, icvBits: 64 });
    expect(out).toContain("xfrm policy add src fd00::1/128 dst fd00::2/128 proto udp dport 4790 dir out");
    expect(out).toMatch(/ 64\nxfrm policy/);
  });

  it("rejects bad keyrings and addresses before rendering anything", () => {
    expect(() => renderInstall(A, [B], [key(1), key(2)])).toThrow(/must hold 3 keys/);
    expect(() => renderInstall(A, [B], [key(2), key(1), key(3)])).toThrow(/strictly ascending/);
    expect(() => renderInstall(A, [B], [key(1), { ...key(2), key: Buffer.alloc(32) }, key(3)])).toThrow(/16/);
    expect(() => renderInstall(A, [B], [key(1), { ...key(2), salt: Buffer.alloc(3) }, key(3)])).toThrow(/salt/);
    expect(() => renderInstall(A, [A], K1)).toThrow(/is the local address/);
    expect(() => renderInstall(A, [B, B], K1)).toThrow(/listed twice/);
    expect(() => renderInstall(A, ["fd00::2"], K1)).toThrow(/address family/);
    expect(() => renderInstall(A, ["10.10.0.2\nxfrm state flush"], K1)).toThrow(/invalid remote/);
    expect(() => renderInstall(A, [B], K1, { port: 0 })).toThrow(/port/);
  });
});

describe("renderRotate", () => {
  it("two hosts: new inbound, then move outbound state + policy, then drop the oldest - three batches", () => {
    expect(renderRotate(A, [B], K1, K2, { port: 4789 })).toEqual([
      lines(`xfrm state add src ${B} dst ${A} proto esp spi ${sp("BA", 4)} ${R} ${AEAD(4)}`),
      lines(
        `xfrm state add src ${A} dst ${B} proto esp spi ${sp("AB", 3)} ${R} ${AEAD(3)}`,
        `xfrm policy update ${POL_AB} tmpl src ${A} dst ${B} proto esp spi ${sp("AB", 3)} ${R} mode transport`,
        `xfrm state delete src ${A} dst ${B} proto esp spi ${sp("AB", 2)}`,
      ),
      lines(`xfrm state delete src ${B} dst ${A} proto esp spi ${sp("BA", 1)}`),
    ]);
  });

  it("three hosts: each batch covers every remote before the next batch starts", () => {
    expect(renderRotate(A, [B, C], K1, K2)).toEqual([
      lines(
        `xfrm state add src ${B} dst ${A} proto esp spi ${sp("BA", 4)} ${R} ${AEAD(4)}`,
        `xfrm state add src ${C} dst ${A} proto esp spi ${sp("CA", 4)} ${R} ${AEAD(4)}`,
      ),
      lines(
        `xfrm state add src ${A} dst ${B} proto esp spi ${sp("AB", 3)} ${R} ${AEAD(3)}`,
        `xfrm policy update ${POL_AB} tmpl src ${A} dst ${B} proto esp spi ${sp("AB", 3)} ${R} mode transport`,
        `xfrm state delete src ${A} dst ${B} proto esp spi ${sp("AB", 2)}`,
        `xfrm state add src ${A} dst ${C} proto esp spi ${sp("AC", 3)} ${R} ${AEAD(3)}`,
        `xfrm policy update ${POL_AC} tmpl src ${A} dst ${C} proto esp spi ${sp("AC", 3)} ${R} mode transport`,
        `xfrm state delete src ${A} dst ${C} proto esp spi ${sp("AC", 2)}`,
      ),
      lines(
        `xfrm state delete src ${B} dst ${A} proto esp spi ${sp("BA", 1)}`,
        `xfrm state delete src ${C} dst ${A} proto esp spi ${sp("CA", 1)}`,
      ),
    ]);
  });

  it("a no-op rotation renders three empty steps; a key cannot change its material", () => {
    expect(renderRotate(A, [B], K1, K1)).toEqual(["", "", ""]);
    const changed = [key(2), { ...key(3), key: Buffer.alloc(16, 0xee) }, key(4)];
    expect(() => renderRotate(A, [B], K1, changed)).toThrow(/changed its material/);
  });
});

describe("renderRemove", () => {
  it("policy first, then the outbound state, then the inbound states", () => {
    expect(renderRemove(A, [B, C], K2)).toBe(
      lines(
        `xfrm policy delete ${POL_AB}`,
        `xfrm state delete src ${A} dst ${B} proto esp spi ${sp("AB", 3)}`,
        `xfrm state delete src ${B} dst ${A} proto esp spi ${sp("BA", 2)}`,
        `xfrm state delete src ${B} dst ${A} proto esp spi ${sp("BA", 3)}`,
        `xfrm state delete src ${B} dst ${A} proto esp spi ${sp("BA", 4)}`,
        `xfrm policy delete ${POL_AC}`,
        `xfrm state delete src ${A} dst ${C} proto esp spi ${sp("AC", 3)}`,
        `xfrm state delete src ${C} dst ${A} proto esp spi ${sp("CA", 2)}`,
        `xfrm state delete src ${C} dst ${A} proto esp spi ${sp("CA", 3)}`,
        `xfrm state delete src ${C} dst ${A} proto esp spi ${sp("CA", 4)}`,
      ),
    );
  });
});

describe("encryptedMtu", () => {
  // Outer IPv4 packet of an encrypted VXLAN frame carrying `mtu` bytes of inner IP packet.
  const outer = (mtu: number, icv: number) => {
    const payload = 8 + 8 + 14 + mtu; // UDP + VXLAN + inner Ethernet + inner packet
    return 20 + 8 + 8 + Math.ceil((payload + 2) / 4) * 4 + icv / 8;
  };
  it("is the largest MTU whose encrypted packet fits 1500: 1424 with a 64-bit ICV, 1416 with 128", () => {
    expect(encryptedMtu(64)).toBe(1424);
    expect(encryptedMtu(128)).toBe(1416);
    expect(encryptedMtu()).toBe(1416);
    for (const icv of [64, 96, 128] as const) {
      const m = encryptedMtu(icv);
      expect(outer(m, icv)).toBeLessThanOrEqual(1500);
      expect(outer(m + 1, icv)).toBeGreaterThan(1500);
    }
    expect(outer(1424, 128)).toBe(1508);
  });
});

describe("probeXfrm and the refusal", () => {
  const result = (code: number, stderr = ""): RunResult => ({ code, stderr, stdout: "" });

  it("tries one ESP/AES-GCM state in an anonymous scratch namespace, and gives the kernel's reason", async () => {
    const calls: string[] = [];
    const runner: Runner = async (argv) => {
      calls.push(argv.join(" "));
      return result(2, "Error: Requested AEAD algorithm not found.\n");
    };
    expect(await probeXfrm(runner)).toBe(
      "this kernel cannot do IPsec ESP with AES-GCM (ip xfrm: Requested AEAD algorithm not found)",
    );
    expect(calls).toEqual([
      "unshare --net ip xfrm state add src 192.0.2.1 dst 192.0.2.2 proto esp spi 0x00000100 reqid 0x0053484c" +
        ` mode transport aead rfc4106(gcm(aes)) 0x${"00".repeat(20)} 128`,
    ]);
    expect(await probeXfrm(async () => result(0))).toBeUndefined();
  });

  it("the refusal says which network, why, that there is no cleartext fallback, and what to do", () => {
    const reason = "this kernel cannot do IPsec ESP with AES-GCM (ip xfrm: Requested AEAD algorithm not found)";
    const err = encryptionUnsupportedError(reason, "secret-net");
    expect(err).toBeInstanceOf(EncryptionUnsupportedError);
    expect(err.message).toBe(
      `network secret-net is encrypted, but this host cannot encrypt its traffic: ${reason}. ` +
        "shoal never sends an encrypted network's traffic in clear; attach this container on a host whose kernel " +
        "has ESP and AES-GCM (CONFIG_INET_ESP, CONFIG_CRYPTO_GCM)",
    );
    expect(() => requireEncryption({ supported: false, reason }, "secret-net")).toThrow(err.message);
    expect(() => requireEncryption({ supported: true }, "secret-net")).not.toThrow();
  });
});
