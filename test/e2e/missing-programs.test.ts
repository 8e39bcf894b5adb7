// Issue 10.1 end to end: a host without nftables. Its shoald says at start, in one line, that nft is missing
// and which Debian package provides it; attaching a container to an overlay then fails in the same words
// (it used to fail with "nft -f - exited with code -2: no output").

import { existsSync, mkdtempSync, readFileSync, rmSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Lab, type LabHost } from "../../deploy/lab.js";
import { findOnPath, SHOALD_PROGRAMS } from "../../src/dataplane/programs.js";
import { build, ok, isRoot as root, shoal, waitFor } from "./lab-helpers.js";

const NFT_MISSING = "nft is not installed: install the Debian package nftables (apt-get install nftables)";

describe.skipIf(!root)("a host without nftables", () => {
  // PATH for the daemon: every program shoald runs but nft.
  const bin = mkdtempSync(join(tmpdir(), "shoal-nonft-"));
  for (const p of SHOALD_PROGRAMS) {
    const real = findOnPath(p);
    if (p !== "nft" && real) symlinkSync(real, join(bin, p));
  }
  const lab = new Lab({ name: "e2enft", raftTickMs: 50, daemonEnv: { PATH: bin } });
  let h: LabHost;

  beforeAll(async () => {
    await lab.down();
    await build();
    [h] = (await lab.up(1)) as [LabHost];
  }, 120_000);

  afterAll(async () => {
    await lab.down();
    rmSync(bin, { recursive: true, force: true });
    expect(existsSync(lab.root)).toBe(false);
  }, 60_000);

  it("shoald says at start, in one line, that nft is missing and which package has it", async () => {
    const lines = await waitFor("the start-up check in the log", () => {
      const found = readFileSync(h.log, "utf8")
        .split("\n")
        .filter((l) => l.includes("missing programs"));
      return found.length > 0 ? found : undefined;
    });
    expect(lines).toHaveLength(1);
    const rec = JSON.parse(lines[0]!) as { msg: string; missing: string[] };
    expect(rec.missing).toEqual(["nft"]);
    expect(rec.msg).toBe(
      "missing programs: nft (Debian package nftables); install them with: apt-get install nftables",
    );
  });

  it("attaching a container to an overlay fails saying nft is not installed, never 'code -2'", async () => {
    await ok(h, "swarm", "init", "--advertise-addr", h.addr);
    await ok(h, "network", "create", "-d", "overlay", "--attachable", "n1");
    const r = await shoal(h, "run", "-d", "--name", "c1", "--network", "n1", "host", "sleep", "100");
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain(NFT_MISSING);
    expect(r.stderr).not.toMatch(/code -2/);
    await shoal(h, "rm", "-f", "c1");
  }, 60_000);
});
