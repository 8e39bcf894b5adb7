// Encrypted networks on this machine's kernel, which has no ESP and no AES-GCM: what a host that cannot
// encrypt shows. (Everything that needs ESP runs inside User-mode Linux: test/esp/encrypted.esp.ts, booted
// by test/esp/esp.test.ts. The refused attach is in overlay.test.ts.)
//
// One lab host, a manager with an encrypted network it does not hold: `network inspect` (shoal's and the
// docker CLI's) says what this kernel can do and why not, lists no peers, shows the cluster's keyring
// (tags and times only) rotating every ROTATION, and holds no key material. afterAll removes the lab.

import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Lab, type LabHost } from "../../deploy/lab.js";
import { probeEsp } from "../../src/dataplane/firewall.js";
import { build, docker, ok, overlayNamespaces, isRoot as root, waitFor } from "./lab-helpers.js";

const esp = root ? await probeEsp() : ({ supported: false, reason: "not root" } as const);
const ROTATION = "4s";
const ROTATION_MS = 4000;
const NET = "secret";

interface Encryption {
  Encrypted: boolean;
  Kernel: string;
  Held: boolean;
  KeyTags: number[];
  Peers: unknown[];
  ClusterKeyTags?: number[];
  ClusterLastRotation?: string;
  ClusterNextRotation?: string;
}

describe.skipIf(!root)("an encrypted network on a host that does not hold it", () => {
  const lab = new Lab({ name: "e2eenc", raftTickMs: 50, daemonArgs: ["--encryption-key-rotation", ROTATION] });
  let h1: LabHost;

  beforeAll(async () => {
    await lab.down();
    await build();
    [h1] = (await lab.up(1)) as [LabHost];
    await ok(h1, "swarm", "init", "--advertise-addr", h1.addr);
    await ok(h1, "network", "create", "-d", "overlay", "--attachable", "--opt", "encrypted", NET);
  }, 180_000);

  afterAll(async () => {
    await lab.down();
  }, 60_000);

  it(`inspect says what this kernel can do (${esp.supported ? "supported" : "unsupported"}), no peers, the cluster's key tags every ${ROTATION}, no key material`, async () => {
    const expected = esp.supported ? "supported" : `unsupported: ${esp.reason}`;
    const inspect = async () =>
      (JSON.parse(await ok(h1, "network", "inspect", NET)) as { Encryption?: Encryption }[])[0]!;
    const e = (await inspect()).Encryption;
    expect(e).toMatchObject({ Encrypted: true, Kernel: expected, Held: false, KeyTags: [], Peers: [] });
    if (!esp.supported) expect(e!.Kernel).toMatch(/^unsupported: this kernel cannot do IPsec ESP with AES-GCM/);
    const ring = await waitFor("the cluster keyring", async () => {
      const x = (await inspect()).Encryption;
      return x?.ClusterKeyTags?.length === 3 ? x : undefined;
    });
    expect([...ring.ClusterKeyTags!].sort((a, b) => a - b)).toEqual(ring.ClusterKeyTags);
    expect(Date.parse(ring.ClusterNextRotation!) - Date.parse(ring.ClusterLastRotation!)).toBe(ROTATION_MS);
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
    const d = await docker(h1, "network", "inspect", NET);
    expect(d.code, d.stderr).toBe(0);
    expect((JSON.parse(d.stdout) as { Encryption?: Encryption }[])[0]!.Encryption).toMatchObject({
      Encrypted: true,
      Kernel: expected,
      Held: false,
      Peers: [],
    });
    expect(overlayNamespaces(h1)).toEqual([]);
  });
});
