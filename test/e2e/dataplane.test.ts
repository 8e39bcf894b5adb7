// The overlay data plane on a real kernel (root only): two "hosts" as network namespaces joined by a veth
// pair on 192.0.2.0/24, each running its own OverlayDataplane inside its namespace; "containers" are bare
// network namespace files. Every namespace, mount and temp dir is under one unique temp dir (see Lab) and
// removed in afterAll, whatever happened. Needs root and ip/bridge (iproute2), nsenter/unshare/umount
// (util-linux) and ping (iputils-ping); skipped when not root.

import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { deleteNetns, statProbe } from "../../src/dataplane/netns.js";
import { OverlayDataplane } from "../../src/dataplane/overlay.js";
import type { Endpoint, OverlayNetwork, Peer } from "../../src/dataplane/render.js";
import { parseLinks } from "../../src/dataplane/render.js";
import { spawnRunner } from "../../src/dataplane/runner.js";
import { countingRunner, Lab, type LabHost, median, mountsUnder } from "./dataplane-lab.js";

const isRoot = process.getuid?.() === 0;

const NET_A: OverlayNetwork = {
  id: "neta00000000000000000000a1",
  vni: 4097,
  subnet: "10.0.1.0/24",
  gateway: "10.0.1.1",
};
const NET_B: OverlayNetwork = {
  id: "netb00000000000000000000b2",
  vni: 4098,
  subnet: "10.0.1.0/24",
  gateway: "10.0.1.1",
};

function ep(id: string, containerNetns: string, ip: string, mac: string): Endpoint {
  return { id, containerNetns, ifname: "eth0", ip, prefixLen: 24, mac };
}
function peerOf(e: Endpoint, host: LabHost): Peer {
  return { ip: e.ip, mac: e.mac, vtep: host.addr };
}

async function rootLinks(): Promise<string[]> {
  const r = await spawnRunner(["ip", "-json", "link", "show"]);
  return parseLinks(r.stdout)
    .map((l) => l.name)
    .sort();
}

/** vxlan0's own FDB entries and the neighbour table, as comparable sorted lists. */
async function peerTables(dp: OverlayDataplane, netId: string) {
  const ins = await dp.inspect(netId);
  return {
    fdb: ins.fdb
      .filter((e) => e.self)
      .map((e) => `${e.mac}>${e.dst}:${e.state}`)
      .sort(),
    neigh: ins.neigh.map((n) => `${n.ip}>${n.lladdr}:${n.state.join(",")}`).sort(),
  };
}
const expectTables = (peers: Peer[]) => ({
  fdb: peers.map((p) => `${p.mac}>${p.vtep}:permanent`).sort(),
  neigh: peers.map((p) => `${p.ip}>${p.mac}:PERMANENT`).sort(),
});

describe.skipIf(!isRoot)("overlay data plane on a real kernel", () => {
  let lab: Lab;
  let h1: LabHost;
  let h2: LabHost;
  let rootBefore: string[];
  // Net A: c1 on host1, c2 on host2.
  let a1: Endpoint;
  let a2: Endpoint;

  beforeAll(async () => {
    const missing: string[] = [];
    for (const tool of ["ip", "bridge", "nsenter", "unshare", "umount", "ping"]) {
      const r = await spawnRunner(["sh", "-c", `command -v ${tool}`]);
      if (r.code !== 0) missing.push(tool);
    }
    if (missing.length > 0) {
      throw new Error(
        `missing tools for the data-plane e2e tests: ${missing.join(", ")} (apt-get install iproute2 util-linux iputils-ping)`,
      );
    }
    rootBefore = await rootLinks();
    lab = await Lab.create();
    [h1, h2] = lab.hosts as [LabHost, LabHost];
    a1 = ep("epa1", await lab.container("c1"), "10.0.1.2", "02:42:0a:00:01:02");
    a2 = ep("epa2", await lab.container("c2"), "10.0.1.3", "02:42:0a:00:01:03");
  });

  afterAll(async () => {
    if (!lab) return;
    await lab.cleanup();
    expect(await mountsUnder(lab.dir)).toEqual([]);
  });

  it("builds the overlay namespace lazily and containers on two hosts ping each other", async () => {
    const nsPath = h1.dataplane.nsPathFor(NET_A.id);
    expect(nsPath.endsWith("/netns/1-neta000000")).toBe(true);
    expect(await h1.dataplane.hostNetworks()).toEqual([]);
    expect(await statProbe(nsPath)).toBe("absent");

    await h1.dataplane.attach(NET_A, a1);
    await h2.dataplane.attach(NET_A, a2);
    expect(await h1.dataplane.hostNetworks()).toEqual([{ namespace: "1-neta000000", path: nsPath, netId: NET_A.id }]);
    expect(await lab.ping(a1.containerNetns, a2.ip)).toBe(false); // no peers yet

    expect(await h1.dataplane.setPeers(NET_A.id, [peerOf(a2, h2)])).toEqual({
      applied: true,
      added: 1,
      changed: 0,
      removed: 0,
    });
    expect(await h2.dataplane.setPeers(NET_A.id, [peerOf(a1, h1)])).toMatchObject({ applied: true, added: 1 });
    expect(await lab.reaches(a1.containerNetns, a2.ip)).toBe(true);
    expect(await lab.reaches(a2.containerNetns, a1.ip)).toBe(true);

    // What is there is what we meant.
    const ins = await h1.dataplane.inspect(NET_A.id);
    const br0 = ins.links.find((l) => l.name === "br0")!;
    expect(br0).toMatchObject({ kind: "bridge", mtu: 1450, up: true });
    expect(br0.addresses.filter((a) => a.scope === "global")).toEqual([
      { family: "inet", local: "10.0.1.1", prefixLen: 24, scope: "global" },
    ]);
    expect(ins.links.find((l) => l.name === "vxlan0")).toMatchObject({
      kind: "vxlan",
      mtu: 1450,
      up: true,
      master: "br0",
      vxlan: { id: 4097, port: 4789, local: "192.0.2.1", learning: false, proxy: true },
    });
    expect(ins.links.find((l) => l.name === "vethepa1")).toMatchObject({
      kind: "veth",
      mtu: 1450,
      up: true,
      master: "br0",
    });
    expect(ins.links.map((l) => l.name).sort()).toEqual(["br0", "lo", "vethepa1", "vxlan0"]);
    expect(await peerTables(h1.dataplane, NET_A.id)).toEqual(expectTables([peerOf(a2, h2)]));

    const c1 = await spawnRunner([
      "nsenter",
      `--net=${a1.containerNetns}`,
      "ip",
      "-json",
      "-details",
      "addr",
      "show",
      "dev",
      "eth0",
    ]);
    const eth0 = parseLinks(c1.stdout)[0]!;
    expect(eth0).toMatchObject({ kind: "veth", mtu: 1450, up: true, mac: "02:42:0a:00:01:02" });
    expect(eth0.addresses.filter((a) => a.scope === "global").map((a) => `${a.local}/${a.prefixLen}`)).toEqual([
      "10.0.1.2/24",
    ]);
    const routes = await spawnRunner([
      "nsenter",
      `--net=${a1.containerNetns}`,
      "ip",
      "-json",
      "route",
      "show",
      "default",
    ]);
    expect(JSON.parse(routes.stdout)).toEqual([]);

    // Attaching the same endpoint again changes nothing.
    const before = h1.runner.calls.length;
    await h1.dataplane.attach(NET_A, a1);
    expect(h1.runner.calls.length).toBe(before);
  });

  it("carries 1450-byte packets with DF set and refuses 1451", async () => {
    expect(await lab.reaches(a1.containerNetns, a2.ip, ["-M", "do", "-s", "1422"])).toBe(true);
    // 1423 + 28 > 1450: refused for its size (not lost on the way).
    const r = await spawnRunner([
      "nsenter",
      `--net=${a1.containerNetns}`,
      "ping",
      "-n",
      "-c",
      "1",
      "-W",
      "1",
      "-M",
      "do",
      "-s",
      "1423",
      a2.ip,
    ]);
    expect(r.stdout + r.stderr).toMatch(/message too long, mtu=1450/);
  });

  it("setPeers makes the FDB and neighbour table exactly the given set", async () => {
    const dp = h1.dataplane;
    const ns = dp.nsPathFor(NET_A.id);
    // Stale entries left behind by someone else (moby #50232).
    await lab.inHost(h1, [
      "nsenter",
      `--net=${ns}`,
      "ip",
      "neigh",
      "add",
      "10.0.1.99",
      "lladdr",
      "02:42:0a:00:01:63",
      "dev",
      "vxlan0",
      "nud",
      "permanent",
    ]);
    await lab.inHost(h1, [
      "nsenter",
      `--net=${ns}`,
      "bridge",
      "fdb",
      "add",
      "02:42:0a:00:01:63",
      "dev",
      "vxlan0",
      "dst",
      "192.0.2.99",
      "self",
      "permanent",
    ]);
    const extra: Peer = { ip: "10.0.1.50", mac: "02:42:0a:00:01:32", vtep: h2.addr };

    expect(await dp.setPeers(NET_A.id, [peerOf(a2, h2), extra])).toEqual({
      applied: true,
      added: 1,
      changed: 0,
      removed: 1,
    });
    expect(await peerTables(dp, NET_A.id)).toEqual(expectTables([peerOf(a2, h2), extra]));

    // A changed VTEP is replaced (and traffic follows it).
    const moved = { ...peerOf(a2, h2), vtep: "192.0.2.77" };
    expect(await dp.setPeers(NET_A.id, [moved, extra])).toMatchObject({ changed: 1, added: 0, removed: 0 });
    expect(await peerTables(dp, NET_A.id)).toEqual(expectTables([moved, extra]));
    expect(await lab.ping(a1.containerNetns, a2.ip)).toBe(false);

    expect(await dp.setPeers(NET_A.id, [peerOf(a2, h2)])).toEqual({ applied: true, added: 0, changed: 1, removed: 1 });
    expect(await peerTables(dp, NET_A.id)).toEqual(expectTables([peerOf(a2, h2)]));
    expect(await lab.reaches(a1.containerNetns, a2.ip)).toBe(true);

    // Nothing to do: two reads, no writes.
    const before = h1.runner.calls.length;
    expect(await dp.setPeers(NET_A.id, [peerOf(a2, h2)])).toEqual({ applied: true, added: 0, changed: 0, removed: 0 });
    expect(h1.runner.calls.length - before).toBe(2);
  });

  it("isolates two overlays with the same subnet and different VNIs", async () => {
    // Net B mirrors net A's addresses: b1 on host1 has a2's IP.
    const b1 = ep("epb1", await lab.container("cb1"), "10.0.1.3", "02:42:0b:00:01:03");
    const b2 = ep("epb2", await lab.container("cb2"), "10.0.1.7", "02:42:0b:00:01:07");
    await h1.dataplane.attach(NET_B, b1);
    await h2.dataplane.attach(NET_B, b2);
    await h1.dataplane.setPeers(NET_B.id, [peerOf(b2, h2)]);
    await h2.dataplane.setPeers(NET_B.id, [peerOf(b1, h1)]);
    expect(await lab.reaches(b1.containerNetns, b2.ip)).toBe(true);
    expect(await lab.reaches(b2.containerNetns, b1.ip)).toBe(true);

    // c1 (net A) reaches 10.0.1.3 on host2 (a2), not b1 beside it on host1.
    expect(await lab.reaches(a1.containerNetns, "10.0.1.3")).toBe(true);
    const n = await spawnRunner(["nsenter", `--net=${a1.containerNetns}`, "ip", "-json", "neigh", "show", "10.0.1.3"]);
    expect(JSON.parse(n.stdout)[0].lladdr).toBe(a2.mac);
    // 10.0.1.7 exists only on net B.
    expect(await lab.ping(a1.containerNetns, b2.ip)).toBe(false);
    // Even if net A were told about b2 (a control-plane leak), VNI 4097 frames never reach net B.
    await h1.dataplane.setPeers(NET_A.id, [peerOf(a2, h2), peerOf(b2, h2)]);
    expect(await lab.ping(a1.containerNetns, b2.ip)).toBe(false);
    await h1.dataplane.setPeers(NET_A.id, [peerOf(a2, h2)]);
    expect(await h1.dataplane.hostNetworks()).toHaveLength(2);
  });

  it("deletes the namespace with the last endpoint and re-creates the same VNI at once", async () => {
    const net: OverlayNetwork = {
      id: "netc00000000000000000000c3",
      vni: 5000,
      subnet: "10.0.3.0/24",
      gateway: "10.0.3.1",
    };
    const dp = h1.dataplane;
    const ns = dp.nsPathFor(net.id);
    const cont = await lab.container("cc1");
    const cont2 = await lab.container("cc2");
    const e1 = ep("epc1", cont, "10.0.3.2", "02:42:0a:00:03:02");
    const e2 = ep("epc2", cont2, "10.0.3.3", "02:42:0a:00:03:03");
    await dp.attach(net, e1);
    await dp.attach(net, e2);
    await dp.detach(net, e1.id);
    expect(await statProbe(ns)).toBe("netns");
    await dp.detach(net, e2.id);
    expect(await statProbe(ns)).toBe("absent");
    // The container's end went with it, synchronously.
    const gone = await spawnRunner(["nsenter", `--net=${cont}`, "ip", "link", "show", "eth0"]);
    expect(gone.code).not.toBe(0);
    await dp.detach(net, e2.id); // twice is fine

    // Same VNI right away: teardown deleted vxlan0 before unmounting, so the first try succeeds.
    const vxlanTries = () => h1.runner.calls.filter((c) => c.stdin?.includes("type vxlan id 5000")).length;
    let t0 = vxlanTries();
    await dp.attach(net, e1);
    expect(vxlanTries() - t0).toBe(1);

    // The pitfall: a namespace dropped without deleting its links (a crash, `ip netns del`) is destroyed
    // asynchronously and keeps the VNI for a while. Re-creating retries until it is free.
    const cont3 = await lab.container("cc3");
    await deleteNetns(ns, { runner: h1.runner });
    t0 = vxlanTries();
    const start = performance.now();
    await dp.attach(net, { ...e1, containerNetns: cont3 });
    const tries = vxlanTries() - t0;
    console.log(
      `[dataplane] re-create VNI 5000 right after an unmount-only teardown: ${tries} vxlan create tries, ${(performance.now() - start).toFixed(1)} ms`,
    );
    expect(tries).toBeGreaterThanOrEqual(1);
    const ins = await dp.inspect(net.id);
    expect(ins.links.find((l) => l.name === "vxlan0")?.vxlan?.id).toBe(5000);
    await dp.detach(net, e1.id);
    expect(await statProbe(ns)).toBe("absent");
  });

  it("still builds when the host has a link named if2 (the master-by-index shortcut falls back)", async () => {
    const net: OverlayNetwork = {
      id: "netf00000000000000000000f6",
      vni: 4200,
      subnet: "10.0.6.0/24",
      gateway: "10.0.6.1",
    };
    await lab.inHost(
      h1,
      ["ip", "-batch", "-"],
      "link add if2 type veth peer name if2peer\nlink add if2x type veth peer name if2y\n",
    );
    try {
      const e = ep("epf1", await lab.container("cf1"), "10.0.6.2", "02:42:0a:00:06:02");
      await h1.dataplane.attach(net, e);
      // The first vxlan0 request named the host's if2 as master and failed; the second went without.
      expect(
        h1.runner.calls
          .filter((c) => c.stdin?.includes("type vxlan id 4200"))
          .map((c) => c.stdin?.includes("master if2")),
      ).toEqual([true, false]);
      const ins = await h1.dataplane.inspect(net.id);
      expect(ins.links.find((l) => l.name === "vxlan0")).toMatchObject({
        master: "br0",
        up: true,
        vxlan: { id: 4200 },
      });
      expect(ins.links.find((l) => l.name === "vethepf1")).toMatchObject({ master: "br0", up: true });
      await h1.dataplane.detach(net, e.id);
    } finally {
      await lab.inHost(h1, ["ip", "-batch", "-"], "link del if2\nlink del if2x\n");
    }
  });

  it("reconciles after a restart: adopts desired networks, fixes them, deletes the rest", async () => {
    const nsA = h1.dataplane.nsPathFor(NET_A.id);
    // Damage while the agent is down: a stale neighbour, a lost container address, a stray link, a stale
    // namespace file, and an undesired network (B) still built.
    await lab.inHost(h1, [
      "nsenter",
      `--net=${nsA}`,
      "ip",
      "neigh",
      "add",
      "10.0.1.98",
      "lladdr",
      "02:42:0a:00:01:62",
      "dev",
      "vxlan0",
      "nud",
      "permanent",
    ]);
    await lab.inHost(h1, [
      "nsenter",
      `--net=${nsA}`,
      "ip",
      "link",
      "add",
      "vethstray",
      "type",
      "veth",
      "peer",
      "name",
      "vethstray2",
    ]);
    await lab.inHost(h1, ["nsenter", `--net=${nsA}`, "ip", "link", "set", "vxlan0", "nomaster"]);
    await spawnRunner(["nsenter", `--net=${a1.containerNetns}`, "ip", "addr", "flush", "dev", "eth0"]);
    const { writeFile } = await import("node:fs/promises");
    await writeFile(`${h1.execRoot}/netns/1-stale00000`, "");
    expect(await lab.ping(a1.containerNetns, a2.ip)).toBe(false);

    // A new net D with an endpoint but no namespace yet.
    const netD: OverlayNetwork = {
      id: "netd00000000000000000000d4",
      vni: 4100,
      subnet: "10.0.4.0/24",
      gateway: "10.0.4.1",
    };
    const d1 = ep("epd1", await lab.container("cd1"), "10.0.4.2", "02:42:0a:00:04:02");

    const runner = countingRunner(h1.runner);
    const restarted = new OverlayDataplane({ execRoot: h1.execRoot, underlayDev: "u0", localAddr: h1.addr, runner });
    const report = await restarted.reconcile(
      new Map([
        [NET_A.id, { net: NET_A, endpoints: [a1], peers: [peerOf(a2, h2)] }],
        [netD.id, { net: netD, endpoints: [d1], peers: [] }],
      ]),
    );
    expect(report).toEqual({
      adopted: [NET_A.id],
      created: [netD.id],
      deleted: ["1-netb000000"],
      removedStale: ["1-stale00000"],
      errors: [],
    });
    expect((await restarted.hostNetworks()).map((n) => n.namespace)).toEqual(["1-neta000000", "1-netd000000"]);
    expect(await peerTables(restarted, NET_A.id)).toEqual(expectTables([peerOf(a2, h2)]));
    const ins = await restarted.inspect(NET_A.id);
    expect(ins.links.map((l) => l.name).sort()).toEqual(["br0", "lo", "vethepa1", "vxlan0"]);
    expect(ins.links.find((l) => l.name === "vxlan0")?.master).toBe("br0");
    expect(await lab.reaches(a1.containerNetns, a2.ip)).toBe(true);
    expect(await lab.reaches(a2.containerNetns, a1.ip)).toBe(true);

    // Reconciling again finds nothing to fix: only reads.
    runner.calls.length = 0;
    const again = await restarted.reconcile(
      new Map([
        [NET_A.id, { net: NET_A, endpoints: [a1], peers: [peerOf(a2, h2)] }],
        [netD.id, { net: netD, endpoints: [d1], peers: [] }],
      ]),
    );
    expect(again).toMatchObject({ adopted: [NET_A.id, netD.id], deleted: [], errors: [] });
    const writes = runner.calls.filter((c) => c.argv.includes("-batch"));
    expect(writes).toEqual([]);

    await restarted.detach(netD, d1.id);
    expect((await restarted.hostNetworks()).map((n) => n.namespace)).toEqual(["1-neta000000"]);
  });

  it("times a first attach (ensureNetwork + attach)", async () => {
    const dp = h1.dataplane;
    const cont = await lab.container("ct");
    const fmt = (xs: number[]) =>
      `median ${median(xs).toFixed(1)} ms (min ${Math.min(...xs).toFixed(1)}, max ${Math.max(...xs).toFixed(1)})`;
    const results: Record<string, { ms: number[]; procs: number }> = {};
    const note = (k: string, ms: number, procs: number) => {
      results[k] ??= { ms: [], procs };
      results[k].ms.push(ms);
      results[k].procs = procs;
    };
    const timed = async (k: string, fn: () => Promise<void>) => {
      const c0 = h1.runner.calls.length;
      const t0 = performance.now();
      await fn();
      note(k, performance.now() - t0, h1.runner.calls.length - c0);
    };
    for (let i = 0; i < 20; i++) {
      // Alternate the two ways an agent can do a first attach.
      const separate = i % 2 === 0;
      const net: OverlayNetwork = {
        id: `nett${i}000000000000000000`,
        vni: 6000 + i,
        subnet: "10.0.9.0/24",
        gateway: "10.0.9.1",
      };
      const e = ep(`ept${i}`, cont, "10.0.9.2", "02:42:0a:00:09:02");
      const e2 = { ...e, id: `epu${i}`, ifname: "eth1", ip: "10.0.9.3", mac: "02:42:0a:00:09:03" };
      if (separate) {
        await timed("ensureNetwork + attach", async () => {
          await dp.ensureNetwork(net);
          await dp.attach(net, e);
        });
      } else {
        const c0 = h1.runner.calls.length;
        await timed("attach alone (builds the network)", () => dp.attach(net, e));
        if (i === 19) {
          const t0 = h1.runner.calls[c0]!.start;
          for (const c of h1.runner.calls.slice(c0)) {
            const what = c.argv.filter((a) => !a.startsWith("--net=/tmp")).join(" ");
            console.log(`[dataplane]   +${(c.start - t0).toFixed(1)} ms  ${c.ms!.toFixed(1)} ms  ${what}`);
          }
        }
      }
      await timed("second endpoint attach", () => dp.attach(net, e2));
      await timed("setPeers (5 new peers)", async () => {
        const peers = [1, 2, 3, 4, 5].map((k) => ({
          ip: `10.0.9.${10 + k}`,
          mac: `02:42:0a:00:09:${(10 + k).toString(16).padStart(2, "0")}`,
          vtep: h2.addr,
        }));
        await dp.setPeers(net.id, peers);
      });
      await timed("detach (not last)", () => dp.detach(net, e2.id));
      await timed("detach (last: deletes the namespace)", () => dp.detach(net, e.id));
      await dp.setPeers(net.id, []);
      // Let the kernel finish destroying the namespace (it does so asynchronously, holding RTNL), so each
      // first attach is timed on a quiet host rather than racing the previous teardown.
      await new Promise((r) => setTimeout(r, 150));
    }
    for (const [k, v] of Object.entries(results)) {
      console.log(`[dataplane] ${k}: ${fmt(v.ms)} over ${v.ms.length} runs, ${v.procs} processes`);
    }
    expect(median(results["ensureNetwork + attach"]!.ms)).toBeLessThan(200);
    expect(await dp.hostNetworks()).toHaveLength(1); // only net A is left
  });

  it("leaves nothing behind outside the lab", async () => {
    await h1.dataplane.detach(NET_A, a1.id);
    await h2.dataplane.detach(NET_A, a2.id);
    await h2.dataplane.detach(NET_B, "epb2");
    expect(await h1.dataplane.hostNetworks()).toEqual([]);
    expect(await h2.dataplane.hostNetworks()).toEqual([]);
    expect(await rootLinks()).toEqual(rootBefore);
  });
});
