// Issue 4 end to end: a 3-host lab (hosts are network namespaces on an underlay bridge, each with its own
// shoald), a swarm across them, an attachable overlay, and containers on two hosts that reach each other
// by IP and by name. Also: a host has no trace of the network until a local container attaches and none
// after the last one leaves; the MTU is 1450; the docker CLI drives the same scenario. The swarm uses data-path
// port 7789, so a worker that did not learn it from the managers would not reach the manager's containers.

import { existsSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Lab, type LabHost } from "../../deploy/lab.js";
import { build, docker, ok, overlayNamespaces, isRoot as root, shoal, waitFor } from "./lab-helpers.js";

describe.skipIf(!root)("overlay networks across lab hosts", () => {
  const lab = new Lab({ name: "e2eov", raftTickMs: 50 });
  let h: LabHost[];
  let netId = "";
  /** The swarm's data-path port (swarm init --data-path-port), not the default 4789. */
  const PORT = 7789;

  beforeAll(async () => {
    await lab.down();
    await build();
    h = await lab.up(3);
    // A data-path port other than 4789: the workers must learn it from the managers, or the manager's
    // containers and theirs would not reach each other.
    await ok(
      h[0]!,
      "swarm",
      "init",
      "--advertise-addr",
      h[0]!.addr,
      "--dispatcher-heartbeat",
      "1s",
      "--data-path-port",
      String(PORT),
    );
    const wt = (await ok(h[0]!, "swarm", "join-token", "-q", "worker")).trim();
    for (const x of [h[1]!, h[2]!])
      await ok(x, "swarm", "join", "--token", wt, "--advertise-addr", x.addr, `${h[0]!.addr}:2377`);
    netId = (await ok(h[0]!, "network", "create", "-d", "overlay", "--attachable", "n1")).trim();
  }, 180_000);

  afterAll(async () => {
    await lab.down();
    expect(existsSync(lab.root)).toBe(false);
  }, 60_000);

  it("a host holds no trace of the network before a local container attaches", () => {
    for (const x of h) expect(overlayNamespaces(x)).toEqual([]);
  });

  it("containers on two hosts reach each other by IP and by name", async () => {
    await ok(h[0]!, "run", "-d", "--name", "c1", "--network", "n1", "host", "sleep", "1000");
    await ok(h[1]!, "run", "-d", "--name", "c2", "--network", "n1", "--network-alias", "web", "host", "sleep", "1000");
    const ns = `1-${netId.slice(0, 10)}`;
    expect(overlayNamespaces(h[0]!)).toEqual([ns]);
    expect(overlayNamespaces(h[1]!)).toEqual([ns]);
    expect(overlayNamespaces(h[2]!)).toEqual([]);
    const inspect = JSON.parse(await ok(h[1]!, "network", "inspect", "n1")) as {
      Containers: Record<string, { Name: string; IPv4Address: string }>;
      Peers: { Name: string; IP: string }[];
    }[];
    const c2 = Object.values(inspect[0]!.Containers)[0]!;
    expect(c2.Name).toBe("c2");
    const ip2 = c2.IPv4Address.split("/")[0]!;
    await waitFor(
      "c1 to reach c2 by IP",
      async () => (await shoal(h[0]!, "exec", "c1", "ping", "-c", "1", "-W", "1", ip2)).code === 0,
    );
    await waitFor(
      "c1 to reach c2 by name",
      async () => (await shoal(h[0]!, "exec", "c1", "ping", "-c", "1", "-W", "1", "c2")).code === 0,
    );
    expect((await shoal(h[0]!, "exec", "c1", "ping", "-c", "1", "-W", "1", "web")).code).toBe(0);
    expect((await shoal(h[1]!, "exec", "c2", "ping", "-c", "1", "-W", "1", "c1")).code).toBe(0);
    expect(inspect[0]!.Peers.map((p) => p.IP).sort()).toEqual([h[0]!.addr, h[1]!.addr].sort());
    // The manager's and the worker's VXLAN devices both use the swarm's data-path port.
    for (const x of [h[0]!, h[1]!]) {
      const r = await lab.exec(x, [
        "nsenter",
        `--net=${join(x.execRoot, "netns", ns)}`,
        "ip",
        "-j",
        "-d",
        "link",
        "show",
        "vxlan0",
      ]);
      const link = (JSON.parse(r.stdout) as { linkinfo: { info_data: { port: number } } }[])[0]!;
      expect(link.linkinfo.info_data.port, x.name).toBe(PORT);
    }
  });

  it("the overlay MTU is 1450: a 1422-byte don't-fragment ping passes, 1423 does not", async () => {
    expect((await shoal(h[0]!, "exec", "c1", "ping", "-c", "1", "-W", "2", "-M", "do", "-s", "1422", "c2")).code).toBe(
      0,
    );
    expect(
      (await shoal(h[0]!, "exec", "c1", "ping", "-c", "1", "-W", "2", "-M", "do", "-s", "1423", "c2")).code,
    ).not.toBe(0);
  });

  it("the docker CLI drives the same network: a container started with docker run on the third host joins in", async () => {
    const r = await docker(h[2]!, "run", "-d", "--name", "c3", "--network", "n1", "host", "sleep", "1000");
    expect(r.code, r.stderr).toBe(0);
    await waitFor(
      "c3 to reach c1 by name",
      async () => (await docker(h[2]!, "exec", "c3", "ping", "-c", "1", "-W", "1", "c1")).code === 0,
    );
    const ls = await docker(h[0]!, "network", "ls", "--filter", "driver=overlay");
    expect(ls.stdout).toMatch(/n1\s+overlay\s+swarm/);
    expect((await docker(h[2]!, "rm", "-f", "c3")).code).toBe(0);
    await waitFor("h3 to drop the network", () => overlayNamespaces(h[2]!).length === 0);
  });

  it("the last local detach removes the network from the host; the other host keeps it", async () => {
    await ok(h[1]!, "rm", "-f", "c2");
    await waitFor("h2 to drop the network", () => overlayNamespaces(h[1]!).length === 0);
    expect(overlayNamespaces(h[0]!)).toHaveLength(1);
    await ok(h[0]!, "rm", "-f", "c1");
    await waitFor("h1 to drop the network", () => overlayNamespaces(h[0]!).length === 0);
  });

  it("external access: a container on an overlay reaches beyond it through shoal_gwbridge; on --internal it cannot", async () => {
    await ok(h[0]!, "network", "create", "-d", "overlay", "--attachable", "open1");
    await ok(h[0]!, "network", "create", "-d", "overlay", "--attachable", "--internal", "closed1");
    await ok(h[0]!, "run", "-d", "--name", "outer", "--network", "open1", "host", "sleep", "1000");
    await ok(h[0]!, "run", "-d", "--name", "inner", "--network", "closed1", "host", "sleep", "1000");
    // h3's underlay address is outside every overlay: only NAT through the gateway bridge reaches it.
    const target = h[2]!.addr;
    expect((await shoal(h[0]!, "exec", "outer", "ping", "-c", "1", "-W", "2", target)).code).toBe(0);
    expect(await ok(h[0]!, "exec", "outer", "ip", "route")).toMatch(/^default via 172\.18\.0\.1 dev gw0/m);
    const inner = await shoal(h[0]!, "exec", "inner", "ping", "-c", "1", "-W", "1", target);
    expect(inner.code).not.toBe(0);
    expect(await ok(h[0]!, "exec", "inner", "ip", "route")).not.toMatch(/default/);
    await ok(h[0]!, "rm", "-f", "outer", "inner");
    // The gateway interfaces went with the containers.
    const { stdout } = await lab.exec(h[0]!, ["ip", "-o", "link", "show"]);
    expect(stdout).not.toMatch(/\bgw[0-9a-f]{12}\b/);
    await ok(h[0]!, "network", "rm", "open1", "closed1");
  });

  it("an encrypted network on a kernel without ESP/AES-GCM: the attach fails saying why, and nothing is built or sent", async () => {
    const { probeEsp } = await import("../../src/dataplane/firewall.js");
    const support = await probeEsp();
    await ok(h[0]!, "network", "create", "-d", "overlay", "--attachable", "--opt", "encrypted", "enc1");
    const r = await shoal(h[0]!, "run", "-d", "--name", "secret1", "--network", "enc1", "host", "sleep", "100");
    expect(r.code).not.toBe(0);
    if (!support.supported) {
      expect(r.stderr).toMatch(/cannot encrypt its traffic/);
      expect(r.stderr).toContain(support.reason);
    }
    // No overlay namespace, no endpoint left on the managers.
    expect(overlayNamespaces(h[0]!)).toEqual([]);
    const inspect = JSON.parse(await ok(h[0]!, "network", "inspect", "enc1")) as {
      Containers: object;
      Options: Record<string, string>;
    }[];
    expect(inspect[0]!.Containers).toEqual({});
    expect(inspect[0]!.Options).toHaveProperty("encrypted");
    await shoal(h[0]!, "rm", "-f", "secret1");
    await ok(h[0]!, "network", "rm", "enc1");
  });

  it("errors: a network still in use cannot be removed; a non-attachable network refuses standalone containers", async () => {
    await ok(h[0]!, "run", "-d", "--name", "busy", "--network", "n1", "host", "sleep", "1000");
    const rm = await shoal(h[0]!, "network", "rm", "n1");
    expect(rm.code).toBe(1);
    expect(rm.stderr).toMatch(/has active endpoints/);
    await ok(h[0]!, "rm", "-f", "busy");
    await ok(h[0]!, "network", "create", "-d", "overlay", "svc");
    const r = await shoal(h[1]!, "run", "-d", "--name", "standalone1", "--network", "svc", "host", "sleep", "10");
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/not manually attachable/);
    await shoal(h[1]!, "rm", "-f", "standalone1");
    expect((await shoal(h[0]!, "network", "rm", "n1")).code).toBe(0);
  });
});
