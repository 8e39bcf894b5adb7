// A shoald restart with a container on an overlay (issue 13): the container keeps running through it and the
// new shoald adopts it with its networking. Two lab hosts; `web` (busybox httpd) on an overlay on h1 (the
// manager), a client on h2. h1's shoald is stopped (SIGTERM, then SIGKILL) and started again: web is the
// same container (id, PID, address), the client still fetches http://web/ by name across the overlay, web
// resolves the client by name, and nothing new appears on h1 (no second overlay namespace, no new link).
// A container that dies while its shoald is down is reported exited and its endpoint released; one whose
// record was never saved (the daemon died in the middle of its start) leaves an endpoint no container on
// h1 holds, which the new shoald gives back. After the last one leaves, nothing of the overlay is left on
// h1. Root only; run under the lock.

import { existsSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildImage, ociArchive } from "../../deploy/busybox-image.js";
import { Lab, type LabHost } from "../../deploy/lab.js";
import { build, docker, isRoot, netnsFiles, ok, overlayNamespaces, run, shoal, waitFor } from "./lab-helpers.js";

const REGISTRY = "192.0.2.2:5000";
const IMAGE = `${REGISTRY}/e2e/busybox:latest`;
const PAGE = "hello from shoal's busybox\n";

interface Inspect {
  Id: string;
  State: { Running: boolean; Pid: number; Status: string };
  NetworkSettings: { Networks: Record<string, { IPAddress: string; EndpointID: string }> };
}

/** The command lines of the processes that name `word` (a shim names its container's id). */
function processesNaming(word: string): string[] {
  const out: string[] = [];
  for (const pid of readdirSync("/proc").filter((p) => /^\d+$/.test(p))) {
    try {
      const cmd = readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").join(" ");
      if (cmd.includes(word)) out.push(cmd);
    } catch {
      /* gone */
    }
  }
  return out;
}

/** Link names in a host's own network namespace. */
async function hostLinks(h: LabHost): Promise<string[]> {
  const { stdout } = await run("ip", ["-n", h.netns, "-o", "link", "show"]);
  return stdout
    .split("\n")
    .map((l) => l.match(/^\d+: ([^:@]+)/)?.[1])
    .filter((x): x is string => !!x)
    .sort();
}

describe.skipIf(!isRoot)("a shoald restart adopts a running container on an overlay, with its networking", () => {
  const lab = new Lab({ name: "adopt", raftTickMs: 50, daemonArgs: ["--insecure-registry", REGISTRY] });
  let h1: LabHost;
  let h2: LabHost;

  const inspect = async (name: string): Promise<Inspect> =>
    (JSON.parse(await ok(h1, "inspect", name)) as Inspect[])[0]!;
  /** The endpoints on appnet as h1's manager has them. */
  const endpoints = async () => {
    const net = JSON.parse(await ok(h1, "network", "inspect", "appnet")) as {
      Containers: Record<string, { Name: string; EndpointID: string }>;
    }[];
    return Object.values(net[0]!.Containers);
  };
  /** Endpoint `ep` is gone from appnet, and web's is still there. */
  const releasedButWeb = async (ep: string): Promise<boolean> => {
    const eps = await endpoints();
    return !eps.some((e) => e.EndpointID === ep) && eps.some((e) => e.Name === "web");
  };
  /** The client on h2 fetches web's page by name (undefined while it cannot). */
  const fetchWeb = async (): Promise<string | undefined> => {
    const r = await shoal(h2, "exec", "client", "timeout", "5", "wget", "-qO-", "http://web/");
    return r.code === 0 ? r.stdout : undefined;
  };

  beforeAll(async () => {
    await build();
    await lab.down();
    [h1, h2] = (await lab.up(2)) as [LabHost, LabHost];
    const archive = join(lab.root, "busybox.tar");
    writeFileSync(archive, ociArchive(buildImage()));
    await lab.startRegistry(h2);
    await lab.pushImage(h2, archive, IMAGE);
    await ok(h1, "swarm", "init", "--advertise-addr", h1.addr);
    const token = (await ok(h1, "swarm", "join-token", "-q", "worker")).trim();
    await ok(h2, "swarm", "join", "--token", token, "--advertise-addr", h2.addr, `${h1.addr}:2377`);
    await ok(h1, "network", "create", "-d", "overlay", "--attachable", "appnet");
    await ok(
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
    await ok(h2, "run", "-d", "--name", "client", "--network", "appnet", IMAGE, "sleep", "1000");
    expect(await waitFor("web's page from h2", fetchWeb)).toBe(PAGE);
  }, 180_000);

  afterAll(async () => {
    await lab.down();
    // Nothing of the lab is left.
    expect((await run("ip", ["netns", "list"])).stdout).not.toMatch(/sl-adopt-/);
  }, 60_000);

  for (const signal of ["SIGTERM", "SIGKILL"] as const) {
    it(`${signal} of h1's shoald: web runs on as the same container, reachable by name both ways; nothing new on h1`, async () => {
      const before = await inspect("web");
      expect(before.State.Running).toBe(true);
      const ip = before.NetworkSettings.Networks.appnet!.IPAddress;
      const overlays = overlayNamespaces(h1);
      expect(overlays).toHaveLength(1);
      const files = netnsFiles(h1);
      const links = await hostLinks(h1);

      await lab.stopDaemon(h1, signal, signal === "SIGKILL" ? 0 : 15_000);
      // While h1 has no shoald: web and its networking are there; the data plane needs no control plane.
      expect(netnsFiles(h1)).toEqual(files);
      expect(await fetchWeb()).toBe(PAGE);

      await lab.startDaemon(h1);
      await waitFor("h1's shoald to answer", async () => (await docker(h1, "ps")).code === 0, 30_000);
      const ps = await docker(h1, "ps", "--no-trunc", "--format", "{{.ID}} {{.Names}} {{.Status}}");
      expect(ps.stdout).toMatch(new RegExp(`^${before.Id} web Up `, "m"));
      const after = await inspect("web");
      expect(after.State).toMatchObject({ Running: true, Pid: before.State.Pid });
      expect(after.NetworkSettings.Networks.appnet).toMatchObject({
        IPAddress: ip,
        EndpointID: before.NetworkSettings.Networks.appnet!.EndpointID,
      });
      // By name across the overlay, from h2 (h2's names) and from h1 (the adopted container's names).
      expect(await waitFor("web's page from h2 after the restart", fetchWeb, 30_000)).toBe(PAGE);
      await waitFor(
        "web to reach the client by name",
        async () => (await shoal(h1, "exec", "web", "ping", "-c", "1", "-W", "1", "client")).code === 0,
        30_000,
      );
      // The same namespaces and links: the overlay and the gateway interface were kept, not built again.
      expect(overlayNamespaces(h1)).toEqual(overlays);
      expect(netnsFiles(h1)).toEqual(files);
      expect(await hostLinks(h1)).toEqual(links);
    }, 120_000);
  }

  it("a container that dies while its shoald is down is reported exited, its endpoint released", async () => {
    await ok(h1, "run", "-d", "--name", "brief", "--network", "appnet", IMAGE, "sleep", "1000");
    const brief = await inspect("brief");
    const ep = brief.NetworkSettings.Networks.appnet!.EndpointID;
    await lab.stopDaemon(h1, "SIGKILL", 0);
    process.kill(brief.State.Pid, "SIGKILL");
    await lab.startDaemon(h1);
    await waitFor("h1's shoald to answer", async () => (await docker(h1, "ps")).code === 0, 30_000);
    expect((await inspect("brief")).State).toMatchObject({ Running: false, Status: "exited" });
    // The managers no longer have its endpoint; web's is still there.
    await waitFor("brief's endpoint to be released", () => releasedButWeb(ep), 30_000);
    expect(await waitFor("web's page from h2", fetchWeb, 30_000)).toBe(PAGE);
    await ok(h1, "rm", "brief");
  }, 120_000);

  it("an endpoint no container on h1 holds (the daemon died before it saved the container) is given back after the restart", async () => {
    await ok(h1, "run", "-d", "--name", "ghost", "--network", "appnet", IMAGE, "sleep", "1000");
    const ghost = await inspect("ghost");
    const ep = ghost.NetworkSettings.Networks.appnet!.EndpointID;
    await lab.stopDaemon(h1, "SIGKILL", 0);
    // As if the daemon had died between the Attach and saving the container: no record, no process.
    process.kill(ghost.State.Pid, "SIGKILL");
    rmSync(join(h1.dataRoot, "containers", ghost.Id, "state.json"));
    await lab.startDaemon(h1);
    await waitFor("h1's shoald to answer", async () => (await docker(h1, "ps")).code === 0, 30_000);
    expect((await docker(h1, "inspect", "ghost")).code).not.toBe(0);
    expect((await endpoints()).some((e) => e.EndpointID === ep)).toBe(true);
    await waitFor("ghost's endpoint to be given back", () => releasedButWeb(ep), 45_000);
    expect(await waitFor("web's page from h2", fetchWeb, 30_000)).toBe(PAGE);
    // What containerd kept of it (its container, its task's shim, its root file system) is gone too.
    expect(processesNaming(ghost.Id), "no shim is left for ghost's task").toEqual([]);
    expect(existsSync(join(h1.dataRoot, "containers", ghost.Id)), "ghost's directory is removed").toBe(false);
  }, 120_000);

  it("after web leaves, nothing of the overlay is left on h1: no namespace, no veth, no vxlan, no gateway link", async () => {
    await ok(h1, "rm", "-f", "web");
    await waitFor("h1's namespaces to go", () => netnsFiles(h1).length === 0, 15_000).catch(() => undefined);
    expect(netnsFiles(h1)).toEqual([]);
    expect((await hostLinks(h1)).filter((l) => !["lo", "eth0", "shoal_gwbridge"].includes(l))).toEqual([]);
    const net = JSON.parse(await ok(h2, "network", "inspect", "appnet")) as {
      Peers: { Name: string }[] | null;
    }[];
    await waitFor(
      "h2 to show no endpoint of h1",
      async () => {
        const n = JSON.parse(await ok(h2, "network", "inspect", "appnet")) as { Peers: { Name: string }[] | null }[];
        return !(n[0]!.Peers ?? []).some((p) => p.Name === "h1");
      },
      15_000,
    );
    expect(net).toHaveLength(1);
  }, 60_000);
});
