// The exact commands the overlay data plane renders, with a runner that records instead of running and a
// fake namespace probe. No root and no kernel needed; only a temp dir for the (empty) namespace files.

import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { NetnsProbe, NetnsState } from "../../src/dataplane/netns.js";
import { OverlayDataplane } from "../../src/dataplane/overlay.js";
import type { Endpoint, OverlayNetwork } from "../../src/dataplane/render.js";
import type { Runner, RunResult } from "../../src/dataplane/runner.js";

const NET: OverlayNetwork = { id: "abcdef0123456789", vni: 4097, subnet: "10.0.1.0/24", gateway: "10.0.1.1" };
const C1 = "/nonexistent/shoal-render/c1";
const EP: Endpoint = {
  id: "ep1",
  containerNetns: C1,
  ifname: "eth0",
  ip: "10.0.1.2",
  prefixLen: 24,
  mac: "02:42:0A:00:01:02",
};

interface Call {
  cmd: string;
  stdin?: string;
}

class Fake {
  calls: Call[] = [];
  states = new Map<string, NetnsState>([[C1, "netns"]]);
  replies: { match: (cmd: string) => boolean; result: Partial<RunResult> }[] = [];

  probe: NetnsProbe = async (path) => this.states.get(path) ?? "absent";

  runner: Runner = async (argv, opts) => {
    const cmd = argv.join(" ");
    this.calls.push(opts?.stdin === undefined ? { cmd } : { cmd, stdin: opts.stdin });
    if (argv[0] === "unshare") this.states.set(argv[1]!.slice("--net=".length), "netns");
    if (argv[0] === "umount") this.states.set(argv[1]!, "file");
    const i = this.replies.findIndex((r) => r.match(cmd));
    const reply = i >= 0 ? this.replies[i]!.result : {};
    return { stdout: "", stderr: "", code: 0, ...reply };
  };
}

describe("overlay data plane: rendered commands", () => {
  let root: string;
  let ns: string;
  let fake: Fake;
  let dp: OverlayDataplane;

  beforeEach(async () => {
    root = await mkdtemp(join(tmpdir(), "shoal-dp-render-"));
    ns = `${root}/netns/1-abcdef0123`;
    fake = new Fake();
    dp = new OverlayDataplane({
      execRoot: root,
      underlayDev: "u0",
      localAddr: "192.0.2.1",
      runner: fake.runner,
      probe: fake.probe,
    });
  });
  afterEach(async () => {
    await rm(root, { recursive: true, force: true });
  });

  it("ensureNetwork: the namespace with br0 in one process, vxlan0 from the host in another", async () => {
    await dp.ensureNetwork(NET);
    expect(fake.calls).toEqual([
      {
        cmd: `unshare --net=${ns} ip -batch -`,
        stdin: "link add br0 index 2 mtu 1450 up type bridge\naddr add 10.0.1.1/24 dev br0\n",
      },
      {
        cmd: "ip -batch -",
        stdin: `link add vxlan0 netns ${ns} master if2 mtu 1450 up type vxlan id 4097 dstport 4789 local 192.0.2.1 dev u0 nolearning proxy\n`,
      },
    ]);
    // Idempotent: nothing more to run.
    await dp.ensureNetwork(NET);
    expect(fake.calls).toHaveLength(2);
  });

  it("attach after ensureNetwork: veth in the overlay namespace, address in the container", async () => {
    await dp.ensureNetwork({ ...NET, mtu: 1400 });
    fake.calls = [];
    await dp.attach({ ...NET, mtu: 1400 }, EP);
    expect(fake.calls).toEqual([
      {
        cmd: `nsenter --net=${ns} ip -batch -`,
        stdin: `link add vethep1 master br0 mtu 1400 up type veth peer name eth0 netns ${C1} address 02:42:0a:00:01:02 mtu 1400\n`,
      },
      { cmd: `nsenter --net=${C1} ip -batch -`, stdin: "addr add 10.0.1.2/24 dev eth0\nlink set eth0 up\n" },
    ]);
    await dp.attach({ ...NET, mtu: 1400 }, EP);
    expect(fake.calls).toHaveLength(2);
  });

  it("first attach: three processes in two stages", async () => {
    await dp.attach(NET, EP);
    expect(fake.calls).toEqual([
      {
        cmd: `unshare --net=${ns} ip -batch -`,
        stdin:
          "link add br0 index 2 mtu 1450 up type bridge\naddr add 10.0.1.1/24 dev br0\n" +
          `link add vethep1 master br0 mtu 1450 up type veth peer name eth0 netns ${C1} address 02:42:0a:00:01:02 mtu 1450\n`,
      },
      {
        cmd: "ip -batch -",
        stdin: `link add vxlan0 netns ${ns} master if2 mtu 1450 up type vxlan id 4097 dstport 4789 local 192.0.2.1 dev u0 nolearning proxy\n`,
      },
      { cmd: `nsenter --net=${C1} ip -batch -`, stdin: "addr add 10.0.1.2/24 dev eth0\nlink set eth0 up\n" },
    ]);
  });

  it("setPeers: reads both tables back, deletes stale, replaces changed, adds missing", async () => {
    await dp.attach(NET, EP);
    fake.calls = [];
    fake.replies.push(
      {
        match: (c) => c.endsWith("bridge -json fdb show dev vxlan0"),
        result: {
          stdout: JSON.stringify([
            { mac: "02:42:0a:00:01:03", flags: [], master: "br0", state: "" },
            { mac: "7a:11:22:33:44:55", flags: [], master: "br0", state: "permanent" },
            { mac: "02:42:0a:00:01:03", dst: "192.0.2.2", linkNetNsId: 0, flags: ["self"], state: "permanent" },
            { mac: "02:42:0a:00:01:04", dst: "192.0.2.9", linkNetNsId: 0, flags: ["self"], state: "permanent" },
            { mac: "02:42:0a:00:01:63", dst: "192.0.2.99", linkNetNsId: 0, flags: ["self"], state: "permanent" },
          ]),
        },
      },
      {
        match: (c) => c.endsWith("ip -json neigh show dev vxlan0"),
        result: {
          stdout: JSON.stringify([
            { dst: "10.0.1.3", lladdr: "02:42:0a:00:01:03", state: ["PERMANENT"] },
            { dst: "10.0.1.4", lladdr: "02:42:0a:00:01:04", state: ["PERMANENT"] },
            { dst: "10.0.1.99", lladdr: "02:42:0a:00:01:63", state: ["PERMANENT"] },
          ]),
        },
      },
    );
    const result = await dp.setPeers(NET.id, [
      { ip: "10.0.1.3", mac: "02:42:0a:00:01:03", vtep: "192.0.2.2" }, // unchanged
      { ip: "10.0.1.4", mac: "02:42:0a:00:01:04", vtep: "192.0.2.3" }, // moved host
      { ip: "10.0.1.5", mac: "02:42:0A:00:01:05", vtep: "192.0.2.2" }, // new
    ]);
    expect(result).toEqual({ applied: true, added: 1, changed: 1, removed: 1 });
    expect(fake.calls).toEqual([
      { cmd: `nsenter --net=${ns} bridge -json fdb show dev vxlan0` },
      { cmd: `nsenter --net=${ns} ip -json neigh show dev vxlan0` },
      {
        cmd: `nsenter --net=${ns} ip -batch -`,
        stdin:
          "neigh del 10.0.1.99 dev vxlan0\n" +
          "neigh replace 10.0.1.5 lladdr 02:42:0a:00:01:05 dev vxlan0 nud permanent\n",
      },
      {
        cmd: `nsenter --net=${ns} bridge -batch -`,
        stdin:
          "fdb del 02:42:0a:00:01:04 dev vxlan0 dst 192.0.2.9 self\n" +
          "fdb del 02:42:0a:00:01:63 dev vxlan0 dst 192.0.2.99 self\n" +
          "fdb replace 02:42:0a:00:01:04 dev vxlan0 dst 192.0.2.3 self permanent\n" +
          "fdb replace 02:42:0a:00:01:05 dev vxlan0 dst 192.0.2.2 self permanent\n",
      },
    ]);
  });

  it("setPeers before the namespace exists: kept, then written (without reads) when it is built", async () => {
    expect(await dp.setPeers(NET.id, [{ ip: "10.0.1.3", mac: "02:42:0a:00:01:03", vtep: "192.0.2.2" }])).toEqual({
      applied: false,
      added: 0,
      changed: 0,
      removed: 0,
    });
    expect(fake.calls).toEqual([]);
    await dp.attach(NET, EP);
    expect(fake.calls.slice(3)).toEqual([
      {
        cmd: `nsenter --net=${ns} ip -batch -`,
        stdin: "neigh replace 10.0.1.3 lladdr 02:42:0a:00:01:03 dev vxlan0 nud permanent\n",
      },
      {
        cmd: `nsenter --net=${ns} bridge -batch -`,
        stdin: "fdb replace 02:42:0a:00:01:03 dev vxlan0 dst 192.0.2.2 self permanent\n",
      },
    ]);
  });

  it("detach: the last endpoint deletes veth and vxlan0 explicitly, then unmounts", async () => {
    const ep2 = { ...EP, id: "ep2", ifname: "eth1", ip: "10.0.1.9", mac: "02:42:0a:00:01:09" };
    await dp.attach(NET, EP);
    await dp.attach(NET, ep2);
    fake.calls = [];
    await dp.detach(NET, "ep2");
    expect(fake.calls).toEqual([{ cmd: `nsenter --net=${ns} ip -batch -`, stdin: "link del vethep2\n" }]);
    fake.calls = [];
    await dp.detach(NET, EP.id);
    expect(fake.calls).toEqual([
      { cmd: `nsenter --net=${ns} ip -force -batch -`, stdin: "link del vethep1\nlink del vxlan0\n" },
      { cmd: `umount ${ns}` },
    ]);
    fake.calls = [];
    await dp.detach(NET, EP.id);
    expect(fake.calls).toEqual([]);
  });

  it("retries vxlan0 while the VNI is still held by a namespace being torn down", async () => {
    let busy = 2;
    fake.replies.push({
      match: (c) => c === "ip -batch -" && busy-- > 0,
      result: { code: 1, stderr: "Error: A VXLAN device with the specified VNI already exists.\nCommand failed -:1\n" },
    });
    await dp.ensureNetwork(NET);
    expect(fake.calls.filter((c) => c.cmd === "ip -batch -")).toHaveLength(3);
  });

  it("falls back to enslaving vxlan0 from inside when `master if2` does not work", async () => {
    fake.replies.push({
      match: (c) => c === "ip -batch -" && fake.calls.filter((x) => x.cmd === "ip -batch -").length === 1,
      result: { code: 2, stderr: "RTNETLINK answers: Operation not supported\nCommand failed -:1\n" },
    });
    await dp.ensureNetwork(NET);
    expect(fake.calls.slice(1)).toEqual([
      {
        cmd: "ip -batch -",
        stdin: `link add vxlan0 netns ${ns} master if2 mtu 1450 up type vxlan id 4097 dstport 4789 local 192.0.2.1 dev u0 nolearning proxy\n`,
      },
      {
        cmd: "ip -batch -",
        stdin: `link add vxlan0 netns ${ns} mtu 1450 type vxlan id 4097 dstport 4789 local 192.0.2.1 dev u0 nolearning proxy\n`,
      },
      { cmd: `nsenter --net=${ns} ip -batch -`, stdin: "link set vxlan0 master br0 mtu 1450 up\n" },
    ]);
  });

  it("a container that cannot be configured leaves nothing behind", async () => {
    fake.replies.push({
      match: (c) => c === `nsenter --net=${C1} ip -batch -`,
      result: { code: 2, stderr: "Error: ipv4: Address already assigned.\nCommand failed -:1\n" },
    });
    await expect(dp.attach(NET, EP)).rejects.toThrow(/Address already assigned/);
    expect(fake.calls.slice(3)).toEqual([
      { cmd: `nsenter --net=${ns} ip -force -batch -`, stdin: "link del vethep1\nlink del vxlan0\n" },
      { cmd: `umount ${ns}` },
    ]);
    expect(await dp.hostNetworks()).toEqual([]);
  });

  it("gives up after the retry budget and leaves no namespace", async () => {
    const quick = new OverlayDataplane({
      execRoot: root,
      underlayDev: "u0",
      localAddr: "192.0.2.1",
      runner: fake.runner,
      probe: fake.probe,
      vniRetryMs: 30,
    });
    fake.replies.push({
      match: (c) => c === "ip -batch -",
      result: { code: 1, stderr: "Error: A VXLAN device with the specified VNI already exists.\n" },
    });
    await expect(quick.ensureNetwork(NET)).rejects.toThrow(/VXLAN ID 4097 of network abcdef0123456789 is still in use/);
    expect(fake.states.get(ns)).toBe("file");
    expect(fake.calls.at(-1)).toEqual({ cmd: `umount ${ns}` });
  });

  it("rejects bad input before running anything", async () => {
    await expect(dp.ensureNetwork({ ...NET, gateway: "10.0.2.1" })).rejects.toThrow(/not in subnet/);
    await expect(dp.ensureNetwork({ ...NET, vni: 0 })).rejects.toThrow(/invalid VNI/);
    await expect(dp.ensureNetwork({ ...NET, id: "../x" })).rejects.toThrow(/invalid network ID/);
    await expect(dp.attach(NET, { ...EP, mac: "01:00:5e:00:00:01" })).rejects.toThrow(/multicast/);
    await expect(dp.attach(NET, { ...EP, ifname: "eth0 up; reboot" })).rejects.toThrow(/interface name/);
    await expect(dp.attach(NET, { ...EP, containerNetns: "/tmp/x\nlink del br0" })).rejects.toThrow(/namespace path/);
    await expect(dp.setPeers(NET.id, [{ ip: "10.0.1.3", mac: "02:42:0a:00:01:03", vtep: "nope" }])).rejects.toThrow(
      /VTEP/,
    );
    await expect(
      dp.setPeers(NET.id, [
        { ip: "10.0.1.3", mac: "02:42:0a:00:01:03", vtep: "192.0.2.2" },
        { ip: "10.0.1.4", mac: "02:42:0a:00:01:03", vtep: "192.0.2.3" },
      ]),
    ).rejects.toThrow(/two hosts/);
    expect(fake.calls).toEqual([]);
  });
});
