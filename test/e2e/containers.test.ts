// Real containers on the lab, through shoald and its own containerd: an image pulled from a registry on
// another lab host by the docker CLI and by shoal's; containers on an overlay that reach each other by
// name; a shoald restart that leaves a container running and adopts it; and a shoald without containerd,
// which says so in one line (and every container call says the same). Root only; run under the lock.

import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildImage, ociArchive } from "../../deploy/busybox-image.js";
import { Lab, type LabHost } from "../../deploy/lab.js";
import { build, docker, isRoot, ok, run, shoal, waitFor } from "./lab-helpers.js";

const REGISTRY = "192.0.2.3:5000";
const IMAGE = `${REGISTRY}/e2e/busybox:latest`;

describe.skipIf(!isRoot)("containers from images on the lab (containerd per shoald)", () => {
  const lab = new Lab({ name: "ctrs", raftTickMs: 50, daemonArgs: ["--insecure-registry", REGISTRY] });
  let h1: LabHost;
  let h2: LabHost;
  let h3: LabHost;

  beforeAll(async () => {
    await build();
    await lab.down();
    [h1, h2, h3] = (await lab.up(3)) as [LabHost, LabHost, LabHost];
    const archive = join(lab.root, "busybox.tar");
    writeFileSync(archive, ociArchive(buildImage()));
    await lab.startRegistry(h3);
    await lab.pushImage(h3, archive, IMAGE);
    await ok(h1, "swarm", "init", "--advertise-addr", h1.addr);
    const token = (await ok(h1, "swarm", "join-token", "-q", "worker")).trim();
    await ok(h2, "swarm", "join", "--token", token, "--advertise-addr", h2.addr, `${h1.addr}:2377`);
    await ok(h1, "network", "create", "-d", "overlay", "--attachable", "appnet");
  }, 180_000);

  afterAll(async () => {
    await lab.down();
  }, 60_000);

  it("docker run pulls the image from the lab registry; a web server on h1 answers h2 by name", async () => {
    const web = await docker(
      h1,
      "run",
      "-d",
      "--name",
      "web",
      "--network",
      "appnet",
      IMAGE,
      "httpd",
      "-f",
      "-p",
      "80",
      "-h",
      "/var/www",
    );
    expect(web.code, web.stderr).toBe(0);
    expect(web.stderr).toContain(`Unable to find image '${IMAGE}' locally`);
    const page = await waitFor("web's page from h2", async () => {
      const r = await shoal(h2, "run", "--rm", "--network", "appnet", IMAGE, "wget", "-qO-", "http://web/");
      return r.code === 0 ? r.stdout : undefined;
    });
    expect(page).toBe("hello from shoal's busybox\n");
    const images = await ok(h2, "images", "--format", "{{.Repository}}:{{.Tag}}");
    expect(images).toBe(`${REGISTRY}/e2e/busybox:latest\n`);
    const ps = await docker(h1, "ps", "--format", "{{.Names}} {{.Image}} {{.Status}}");
    expect(ps.stdout).toMatch(new RegExp(`^web ${IMAGE.replace(/[.]/g, "\\.")} Up `));
    expect((await docker(h1, "rm", "-f", "web")).code).toBe(0);
  });

  it("a shoald restart leaves the container running and adopts it; bad input changes nothing", async () => {
    await ok(h2, "run", "-d", "--name", "keeper", IMAGE, "sh", "-c", "echo one; while :; do sleep 1; done");
    const before = JSON.parse(await ok(h2, "inspect", "keeper")) as { State: { Pid: number } }[];
    await lab.stopDaemon(h2);
    await lab.startDaemon(h2);
    const after = await waitFor("h2's daemon back", async () => {
      const r = await shoal(h2, "inspect", "keeper");
      return r.code === 0 ? (JSON.parse(r.stdout) as { State: { Pid: number; Running: boolean } }[]) : undefined;
    });
    expect(after[0]!.State).toMatchObject({ Running: true, Pid: before[0]!.State.Pid });
    expect(await ok(h2, "logs", "keeper")).toBe("one\n");
    expect((await ok(h2, "exec", "keeper", "echo", "inside")).trim()).toBe("inside");
    const dup = await shoal(h2, "run", "-d", "--name", "keeper", IMAGE, "true");
    expect(dup.code).toBe(125);
    expect(dup.stderr).toContain('Conflict. The container name "/keeper" is already in use');
    const noNet = await docker(h2, "run", "-d", "--network", "nonet", IMAGE, "true");
    expect(noNet.code).toBe(125);
    expect(noNet.stderr).toMatch(/network nonet not found/);
    const badRef = await docker(h2, "run", "--rm", "Bad:Ref", "true");
    expect(badRef.code).toBe(125);
    expect(badRef.stderr).toContain("invalid reference format");
    await ok(h2, "stop", "-t", "1", "keeper");
    await ok(h2, "rm", "keeper");
  }, 120_000);

  it("without containerd, shoald says so in one line and container calls answer the same", async () => {
    await lab.stopDaemon(h3);
    const { stdout } = await run("sh", ["-c", "command -v containerd"]);
    const bin = join(lab.root, "bin-without-containerd");
    // A PATH whose containerd is missing: the other programs stay reachable.
    await run("mkdir", ["-p", bin]);
    for (const p of [
      "ip",
      "bridge",
      "nft",
      "nsenter",
      "unshare",
      "setpriv",
      "umount",
      "sysctl",
      "mkfifo",
      "true",
      "sh",
      "ps",
      "runc",
      "containerd-shim-runc-v2",
      "node",
    ]) {
      const where = (await run("sh", ["-c", `command -v ${p} || true`])).stdout.trim();
      if (where) await run("ln", ["-sf", where, join(bin, p)]);
    }
    expect(stdout.trim()).not.toBe("");
    const lab3 = new Lab({ name: "ctrs", raftTickMs: 50, daemonEnv: { PATH: bin } });
    await lab3.startDaemon(h3);
    await waitFor("h3's socket", async () => (await shoal(h3, "version")).code === 0);
    const r = await docker(h3, "run", "--rm", IMAGE, "true");
    expect(r.code).toBe(125);
    expect(r.stderr).toContain("containerd is not available at");
    expect(r.stderr).toContain("apt-get install containerd runc");
  }, 60_000);
});
