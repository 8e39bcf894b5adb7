// The image formats and words, without containerd: references as docker reads them, tar archives, chain
// ids, users in /etc/passwd, -v and --restart parsing, `top` rows, pull's progress bar and registry
// challenges.

import { mkdir, mkdtemp, open, rm, writeFile } from "node:fs/promises";
import os from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { ApiError } from "../../src/api/errors.js";
import { commandOf, parseBind, restartPolicyOf } from "../../src/runtime/create.js";
import { chainIds, sha256 } from "../../src/runtime/images/oci.js";
import { progressBar } from "../../src/runtime/images/pull.js";
import { familiarName, fullName, parseReference } from "../../src/runtime/images/reference.js";
import { parseChallenge } from "../../src/runtime/images/registry.js";
import { indexTar, readEntry, writeTar } from "../../src/runtime/images/tar.js";
import { topOf } from "../../src/runtime/runtime.js";
import { layerDirs, resolveUser } from "../../src/runtime/user.js";

function error(f: () => unknown): ApiError {
  try {
    f();
  } catch (e) {
    if (e instanceof ApiError) return e;
    throw e;
  }
  throw new Error("no error");
}

describe("image references, as docker reads them", () => {
  test("defaults: registry, library/, latest", () => {
    expect(fullName(parseReference("busybox"))).toBe("docker.io/library/busybox:latest");
    expect(fullName(parseReference("busybox:1.36"))).toBe("docker.io/library/busybox:1.36");
    expect(fullName(parseReference("tools/bb"))).toBe("docker.io/tools/bb:latest");
    expect(fullName(parseReference("203.0.113.5:5000/tools/bb:v1"))).toBe("203.0.113.5:5000/tools/bb:v1");
    expect(fullName(parseReference("localhost/bb"))).toBe("localhost/bb:latest");
    const d = `sha256:${"a".repeat(64)}`;
    expect(fullName(parseReference(`busybox@${d}`))).toBe(`docker.io/library/busybox@${d}`);
    expect(familiarName("docker.io/library/busybox:latest")).toBe("busybox:latest");
    expect(familiarName("registry.lab:5000/bb:1")).toBe("registry.lab:5000/bb:1");
  });

  test("bad references in docker's words", () => {
    expect(error(() => parseReference("BusyBox")).message).toBe(
      "invalid reference format: repository name must be lowercase",
    );
    for (const bad of ["", "busy box", "busybox:", "busybox@sha256:12", ":tag", "a//b", "-x"]) {
      const e = error(() => parseReference(bad));
      expect(e.status).toBe(400);
      expect(e.message).toMatch(/^invalid reference format/);
    }
  });
});

describe("tar archives", () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(os.tmpdir(), "shoal-tar-"));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  test("what is written is read back; long names; truncation is refused", async () => {
    const long = `${"d".repeat(80)}/${"f".repeat(60)}.json`;
    const tar = writeTar([
      { name: "manifest.json", data: Buffer.from("[]") },
      { name: "blobs" },
      { name: long, data: Buffer.alloc(1000, 7) },
      { name: "bin/sh", link: "busybox" },
    ]);
    const path = join(dir, "a.tar");
    await writeFile(path, tar);
    const fh = await open(path, "r");
    try {
      const entries = await indexTar(fh);
      expect([...entries.keys()]).toEqual(["manifest.json", long]);
      expect((await readEntry(fh, entries.get(long)!)).equals(Buffer.alloc(1000, 7))).toBe(true);
    } finally {
      await fh.close();
    }
    await writeFile(path, tar.subarray(0, 1200));
    const cut = await open(path, "r");
    try {
      await expect(indexTar(cut)).rejects.toThrow("unexpected EOF");
    } finally {
      await cut.close();
    }
  });
});

describe("image config and run flags", () => {
  test("chain ids are the layers' digests chained", () => {
    const a = `sha256:${"1".repeat(64)}`;
    const b = `sha256:${"2".repeat(64)}`;
    expect(chainIds([a, b])).toEqual([a, sha256(`${a} ${b}`)]);
  });

  test("entrypoint and cmd merge as docker merges them", () => {
    const image = { Entrypoint: ["/bin/ep"], Cmd: ["default"] };
    expect(commandOf({ image: "x", cmd: [], networks: [] }, image)).toEqual(["/bin/ep", "default"]);
    expect(commandOf({ image: "x", cmd: ["mine"], networks: [] }, image)).toEqual(["/bin/ep", "mine"]);
    // A new entrypoint drops the image's cmd.
    expect(commandOf({ image: "x", cmd: [], entrypoint: ["sh"], networks: [] }, image)).toEqual(["sh"]);
    expect(error(() => commandOf({ image: "x", cmd: [], networks: [] }, {})).message).toBe("no command specified");
  });

  test("-v and --restart", () => {
    expect(parseBind("/srv:/data:ro")).toEqual({ source: "/srv", destination: "/data", readonly: true });
    expect(parseBind("/srv:/data")).toEqual({ source: "/srv", destination: "/data", readonly: false });
    expect(error(() => parseBind("vol:/data")).message).toMatch(/named volumes are not supported/);
    expect(restartPolicyOf({ Name: "on-failure", MaximumRetryCount: 3 })).toEqual({
      name: "on-failure",
      maximumRetryCount: 3,
    });
    expect(restartPolicyOf(null)).toEqual({ name: "no", maximumRetryCount: 0 });
    expect(error(() => restartPolicyOf({ Name: "sometimes" })).message).toMatch(/unknown policy 'sometimes'/);
    expect(error(() => restartPolicyOf({ Name: "always", MaximumRetryCount: 2 })).message).toMatch(
      /only be used with 'on-failure'/,
    );
  });

  test("users from the container's /etc/passwd and /etc/group", async () => {
    const dir = await mkdtemp(join(os.tmpdir(), "shoal-user-"));
    try {
      const upper = join(dir, "upper");
      const lower = join(dir, "lower");
      await mkdir(join(upper, "etc"), { recursive: true });
      await mkdir(join(lower, "etc"), { recursive: true });
      await writeFile(join(lower, "etc/passwd"), "root:x:0:0::/root:/bin/sh\nwww:x:33:33::/var/www:/bin/false\n");
      await writeFile(join(upper, "etc/group"), "www:x:33:\nadm:x:4:www\n");
      const dirs = layerDirs([
        { type: "overlay", source: "overlay", options: [`upperdir=${upper}`, `lowerdir=${lower}`] },
      ]);
      expect(dirs).toEqual([upper, lower]);
      expect(await resolveUser("www", dirs)).toEqual({ uid: 33, gid: 33, additionalGids: [4] });
      expect(await resolveUser("1000:adm", dirs)).toEqual({ uid: 1000, gid: 4 });
      expect(await resolveUser("", dirs)).toEqual({ uid: 0, gid: 0 });
      await expect(resolveUser("nobody", dirs)).rejects.toThrow(
        "unable to find user nobody: no matching entries in passwd file",
      );
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  test("top keeps the container's rows of ps", () => {
    const ps =
      "UID  PID  PPID  C STIME TTY TIME CMD\nroot 1 0 0 10:00 ? 00:00:01 /sbin/init\nroot 42 7 0 10:01 ? 00:00:00 sleep 1000\n";
    expect(topOf(ps, new Set(["42"]))).toEqual({
      Titles: ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"],
      Processes: [["root", "42", "7", "0", "10:01", "?", "00:00:00", "sleep 1000"]],
    });
  });
});

describe("pull's words", () => {
  test("progress bars and challenges", () => {
    expect(progressBar(0, 100)).toBe(`[${" ".repeat(50)}]       0B/100B`);
    expect(progressBar(50, 100)).toBe(`[${"=".repeat(24)}>${" ".repeat(25)}]      50B/100B`);
    expect(progressBar(2_500_000, 5_000_000)).toBe(`[${"=".repeat(24)}>${" ".repeat(25)}]    2.5MB/5.0MB`);
    expect(
      parseChallenge('Bearer realm="https://auth.lab/token",service="registry.lab",scope="repository:bb:pull"'),
    ).toEqual({
      scheme: "bearer",
      params: { realm: "https://auth.lab/token", service: "registry.lab", scope: "repository:bb:pull" },
    });
  });
});
