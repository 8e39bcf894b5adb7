// External programs: a program that is not installed is reported with its Debian package, both by shoald's
// start-up check and when a command is run (never "exited with code -2").

import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import {
  checkPrograms,
  DEBIAN_PACKAGES,
  findOnPath,
  missingProgramMessage,
  missingPrograms,
  SHOALD_PROGRAMS,
} from "../../src/dataplane/programs.js";
import { CommandError, makeSpawnRunner, mustRun } from "../../src/dataplane/runner.js";
import { runCommand } from "../../src/runtime/sandbox.js";

const NFT_MISSING = "nft is not installed: install the Debian package nftables (apt-get install nftables)";

const dirs: string[] = [];
function tempDir(): string {
  const d = mkdtempSync(join(tmpdir(), "shoal-programs-"));
  dirs.push(d);
  return d;
}
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

/** A directory to use as PATH, holding links to the real programs of `names` (those this machine has). */
function pathWith(...names: string[]): string {
  const dir = tempDir();
  for (const n of names) {
    const real = findOnPath(n);
    if (real) symlinkSync(real, join(dir, n));
  }
  return dir;
}

/** Records what a logger is given. */
function recorder() {
  const lines: { level: string; obj: object; msg: string }[] = [];
  return {
    lines,
    error: (obj: object, msg: string) => lines.push({ level: "error", obj, msg }),
    debug: (obj: object, msg: string) => lines.push({ level: "debug", obj, msg }),
  };
}

describe("a program that is not installed, at run time", () => {
  it("the runner says which Debian package provides it, never 'exited with code -2'", async () => {
    const run = makeSpawnRunner({ path: tempDir() });
    const r = await run(["nft", "-f", "-"], { stdin: "flush ruleset\n" });
    expect(r.code).toBe(127);
    expect(r.missing).toBe(NFT_MISSING);
    expect(r.stderr.trim()).toBe(NFT_MISSING);
    const err = await mustRun(run, ["nft", "-f", "-"], { stdin: "flush ruleset\n" }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(CommandError);
    expect((err as Error).message).toBe(NFT_MISSING);
    expect((err as Error).message).not.toMatch(/code -2/);
  });

  it.skipIf(!findOnPath("setpriv"))("the same when a wrapper (setpriv, nsenter, unshare) cannot find it", async () => {
    const run = makeSpawnRunner({ path: pathWith("setpriv") });
    const err = await mustRun(run, ["setpriv", "--pdeathsig", "KILL", "nft", "-f", "-"], { stdin: "" }).catch(
      (e: unknown) => e,
    );
    expect((err as Error).message).toBe(NFT_MISSING);
  });

  it("a program that runs and fails is reported as before, with its exit code and output", async () => {
    const dir = pathWith("sh");
    writeFileSync(join(dir, "nft"), "#!/bin/sh\necho 'Error: syntax error' >&2\nexit 1\n", { mode: 0o755 });
    const err = await mustRun(makeSpawnRunner({ path: dir }), ["nft", "-f", "-"], { stdin: "x\n" }).catch(
      (e: unknown) => e,
    );
    expect((err as Error).message).toBe("nft -f - exited with code 1: Error: syntax error");
  });

  it("a program exiting 127 by itself is not taken for a missing one", async () => {
    const dir = pathWith("sh");
    writeFileSync(join(dir, "ip"), "#!/bin/sh\necho 'something else' >&2\nexit 127\n", { mode: 0o755 });
    const r = await makeSpawnRunner({ path: dir })(["ip", "link"]);
    expect(r).toMatchObject({ code: 127, stderr: "something else\n" });
    expect(r.missing).toBeUndefined();
  });

  it("the container runtime's commands go through the same runner", async () => {
    const saved = process.env.PATH;
    process.env.PATH = tempDir();
    try {
      const r = await runCommand(["mkfifo", "-m", "600", join(tempDir(), "f")]);
      expect(r.code).toBe(127);
      expect(r.stderr.trim()).toBe(
        "mkfifo is not installed: install the Debian package coreutils (apt-get install coreutils)",
      );
    } finally {
      process.env.PATH = saved;
    }
  });

  it("names every program shoald runs with its package", () => {
    for (const p of SHOALD_PROGRAMS)
      expect(missingProgramMessage(p)).toMatch(
        /^\S+ is not installed: install the Debian package \S+ \(apt-get install \S+\)$/,
      );
    expect(missingProgramMessage("/usr/sbin/nft")).toBe(NFT_MISSING);
  });
});

describe("shoald's start-up check", () => {
  it("logs ONE line naming every missing program and its package (injected lookup)", () => {
    const log = recorder();
    const absent = new Set(["nft", "ip", "bridge"]);
    const missing = checkPrograms(log, { lookup: (n) => (absent.has(n) ? undefined : `/usr/bin/${n}`) });
    expect(missing).toEqual(["ip", "bridge", "nft"]);
    expect(log.lines.filter((l) => l.level === "error")).toHaveLength(1);
    expect(log.lines[0]!.msg).toBe(
      "missing programs: ip (Debian package iproute2), bridge (Debian package iproute2), nft (Debian package nftables); install them with: apt-get install iproute2 nftables",
    );
  });

  it("finds programs on an injected PATH, and says nothing at error level when all are there", () => {
    const dir = tempDir();
    const bin = join(dir, "bin");
    mkdirSync(bin);
    for (const p of SHOALD_PROGRAMS.filter((n) => n !== "nft")) writeFileSync(join(bin, p), "", { mode: 0o755 });
    // A file that is there but not executable does not count.
    writeFileSync(join(bin, "nft"), "", { mode: 0o644 });
    const lookup = (n: string) => findOnPath(n, `${join(dir, "nothing")}:${bin}`);
    expect(missingPrograms(SHOALD_PROGRAMS, lookup)).toEqual(["nft"]);
    const log = recorder();
    expect(checkPrograms(log, { lookup })).toEqual(["nft"]);
    expect(log.lines).toEqual([
      {
        level: "error",
        obj: { missing: ["nft"] },
        msg: "missing programs: nft (Debian package nftables); install them with: apt-get install nftables",
      },
    ]);
    chmodSync(join(bin, "nft"), 0o755);
    const quiet = recorder();
    expect(checkPrograms(quiet, { lookup })).toEqual([]);
    expect(quiet.lines.filter((l) => l.level === "error")).toEqual([]);
  });
});

describe("deploy/apt-packages.txt", () => {
  it("lists the package of every program shoal runs, one package per line", () => {
    const text = readFileSync(join(import.meta.dirname, "../../deploy/apt-packages.txt"), "utf8");
    const listed = text
      .split("\n")
      .map((l) => l.replace(/#.*/, "").trim())
      .filter((l) => l.length > 0);
    for (const l of listed) expect(l).toMatch(/^[a-z0-9][a-z0-9+.-]+$/);
    for (const [program, pkg] of Object.entries(DEBIAN_PACKAGES)) expect(listed, program).toContain(pkg);
  });
});
