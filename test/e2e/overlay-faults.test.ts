// Faults end to end: a 3-manager lab (hosts are network namespaces on an underlay bridge, each with its own
// shoald). The leader is SIGKILLed while containers on the two other hosts ping each other: the data plane
// does not need the control plane, and a new container still gets an address from the two survivors. Then
// a daemon is SIGKILLed with containers attached, which die while it is down, and restarted: they are
// reported exited, their endpoints released, and no namespace, link, FDB/neighbour entry or mount is left
// behind. And a daemon is SIGTERMed with containers attached: they run on, it adopts them at its restart
// (reachable by name both ways), and once they are removed nothing of theirs is left.

import { execFile } from "node:child_process";
import { cpSync, existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Lab, type LabHost } from "../../deploy/lab.js";
import { build, netnsFiles, ok, overlayNamespaces, isRoot as root, run, shoal, waitFor } from "./lab-helpers.js";

/** Mount points under a host's exec root (namespace files are bind mounts), as this process sees them. */
function mountsUnder(h: LabHost): string[] {
  return readFileSync("/proc/self/mounts", "utf8")
    .split("\n")
    .map((l) => l.split(" ")[1] ?? "")
    .filter((m) => m.startsWith(`${h.execRoot}/`));
}

/** Link names in a host's own network namespace (`ip -n <hostns> link`). */
async function hostLinks(h: LabHost): Promise<string[]> {
  const { stdout } = await run("ip", ["-n", h.netns, "-o", "link", "show"]);
  return stdout
    .split("\n")
    .map((l) => l.match(/^\d+: ([^:@]+)/)?.[1])
    .filter((x): x is string => !!x);
}

/** What a host's namespace has when no container runs there: the lab's links and the gateway bridge. */
const BASE_LINKS = new Set(["lo", "eth0", "shoal_gwbridge"]);

interface Inspect {
  Id: string;
  Containers: Record<string, { Name: string; IPv4Address: string; MacAddress: string; EndpointID: string }>;
  Peers: { Name: string; IP: string }[] | null;
}

async function inspectNet(h: LabHost, net: string): Promise<Inspect> {
  return (JSON.parse(await ok(h, "network", "inspect", net)) as Inspect[])[0]!;
}

/** A local container's endpoint on a network, as its own host's network inspect shows it. */
async function endpointOf(h: LabHost, net: string, name: string): Promise<{ ip: string; mac: string }> {
  const c = Object.values((await inspectNet(h, net)).Containers).find((x) => x.Name === name);
  if (!c) throw new Error(`${name} is not on ${net} on ${h.name}`);
  return { ip: c.IPv4Address.split("/")[0]!, mac: c.MacAddress.toLowerCase() };
}

/** vxlan0's FDB and neighbour table in a host's overlay namespace of a network. */
async function overlayTables(h: LabHost, netId: string): Promise<{ fdb: string; neigh: string }> {
  const ns = join(h.execRoot, "netns", `1-${netId.slice(0, 10)}`);
  const [fdb, neigh] = await Promise.all([
    run("nsenter", [`--net=${ns}`, "bridge", "fdb", "show", "dev", "vxlan0"]),
    run("nsenter", [`--net=${ns}`, "ip", "neigh", "show", "dev", "vxlan0"]),
  ]);
  // Only the entries shoal programs (`<mac> dst <vtep> self permanent`): lines with "master br0" are the
  // bridge's own learned entries for the vxlan0 port, which the kernel ages out by itself.
  const programmed = fdb.stdout
    .toLowerCase()
    .split("\n")
    .filter((l) => / dst /.test(l))
    .join("\n");
  return { fdb: programmed, neigh: neigh.stdout };
}

interface NodeJson {
  Description: { Hostname: string };
  Status: { State: string };
  ManagerStatus?: { Leader?: boolean; Reachability: string } | null;
}

async function nodes(from: LabHost): Promise<NodeJson[] | undefined> {
  const r = await shoal(from, "node", "inspect", "h1", "h2", "h3");
  if (r.code !== 0) return undefined;
  return JSON.parse(r.stdout) as NodeJson[];
}

async function leaderName(from: LabHost): Promise<string | undefined> {
  return (await nodes(from))?.find((n) => n.ManagerStatus?.Leader)?.Description.Hostname;
}

/** The ping summary: "N packets transmitted, M received". */
function pingCounts(out: string): { sent: number; received: number } {
  const m = out.match(/(\d+) packets transmitted, (\d+) (?:packets )?received/);
  if (!m) throw new Error(`no ping summary in: ${out}`);
  return { sent: Number(m[1]), received: Number(m[2]) };
}

async function psLine(h: LabHost, name: string): Promise<string | undefined> {
  const out = await ok(h, "ps", "-a");
  return out.split("\n").find((l) => new RegExp(`\\s${name}\\s*$`).test(l));
}

describe.skipIf(!root)("overlay faults: leader failover, daemon restarts", () => {
  const lab = new Lab({ name: "e2eflt", raftTickMs: 50 });
  let h: LabHost[];
  let netId = "";
  /** Hosts without the leader (containers live there), and the leader. */
  let hA: LabHost;
  let hB: LabHost;
  let leader: LabHost;
  const t0 = Date.now();
  const times: Record<string, number> = {};
  const log = (what: string) => {
    times[what] = Date.now() - t0;
  };

  beforeAll(async () => {
    await lab.down();
    await build();
    h = await lab.up(3);
    await ok(h[0]!, "swarm", "init", "--advertise-addr", h[0]!.addr, "--dispatcher-heartbeat", "1s");
    const mt = (await ok(h[0]!, "swarm", "join-token", "-q", "manager")).trim();
    for (const x of [h[1]!, h[2]!])
      await ok(x, "swarm", "join", "--token", mt, "--advertise-addr", x.addr, `${h[0]!.addr}:2377`);
    netId = (await ok(h[0]!, "network", "create", "-d", "overlay", "--attachable", "n1")).trim();
    log("setup");
  }, 180_000);

  afterAll(async () => {
    // SHOAL_E2E_LOGS=<dir> keeps the daemons' logs for a post-mortem.
    const keep = process.env.SHOAL_E2E_LOGS;
    if (keep) for (const x of lab.hosts()) cpSync(x.log, join(keep, `${lab.name}-${x.name}.log`), { force: true });
    try {
      await lab.down();
    } finally {
      // Nothing of the lab is left: namespaces, links, mounts, files.
      const ns = (await run("ip", ["netns", "list"])).stdout;
      expect(ns).not.toMatch(/sl-e2eflt-/);
      const links = (await run("ip", ["-o", "link", "show"])).stdout;
      expect(links).not.toMatch(/sl-e2eflt-/);
      expect(readFileSync("/proc/self/mounts", "utf8")).not.toContain(lab.root);
      expect(existsSync(lab.root)).toBe(false);
      log("down");
      console.log("overlay-faults timings (ms since start):", times);
    }
  }, 60_000);

  it("three managers: every node is a Ready, reachable manager", async () => {
    const all = await waitFor(
      "three ready managers",
      async () => {
        const n = await nodes(h[0]!);
        return n?.length === 3 &&
          n.every((x) => x.Status.State === "ready" && x.ManagerStatus?.Reachability === "reachable")
          ? n
          : undefined;
      },
      20_000,
    );
    expect(all.filter((n) => n.ManagerStatus?.Leader)).toHaveLength(1);
    const lname = all.find((n) => n.ManagerStatus?.Leader)!.Description.Hostname;
    leader = h.find((x) => x.name === lname)!;
    [hA, hB] = h.filter((x) => x !== leader) as [LabHost, LabHost];
  });

  it("SIGKILL of the leader: pings between containers on the two other hosts keep flowing; a new container gets an address and a name", async () => {
    await ok(hA, "run", "-d", "--name", "ca", "--network", "n1", "host", "sleep", "1000");
    await ok(hB, "run", "-d", "--name", "cb", "--network", "n1", "host", "sleep", "1000");
    await waitFor(
      "a to reach b by name",
      async () => (await shoal(hA, "exec", "ca", "ping", "-c", "1", "-W", "1", "cb")).code === 0,
    );
    // 200 pings, 50 ms apart (10 s); the leader dies 1.5 s in.
    const pinging = shoal(hA, "exec", "ca", "ping", "-n", "-i", "0.05", "-c", "200", "-W", "1", "cb");
    await new Promise((r) => setTimeout(r, 1500));
    const killedAt = Date.now();
    await lab.stopDaemon(leader, "SIGKILL");
    log("leader killed");

    // A new leader among the two survivors.
    const newLeader = await waitFor(
      "a new leader",
      async () => {
        const l = await leaderName(hA);
        return l && l !== leader.name ? l : undefined;
      },
      15_000,
    );
    const electedMs = Date.now() - killedAt;
    log("new leader");
    expect([hA.name, hB.name]).toContain(newLeader);

    // While the old leader is still down: a new container on hB gets an address and is reachable by name.
    let attempts = 0;
    await waitFor(
      "c to start on the surviving managers",
      async () => {
        attempts++;
        const r = await shoal(hB, "run", "-d", "--name", "cc", "--network", "n1", "host", "sleep", "1000");
        if (r.code !== 0) await shoal(hB, "rm", "-f", "cc");
        return r.code === 0;
      },
      20_000,
    );
    const c = await endpointOf(hB, "n1", "cc");
    expect(c.ip).toMatch(/^\d+\.\d+\.\d+\.\d+$/);
    await waitFor(
      "a to reach c by name",
      async () => (await shoal(hA, "exec", "ca", "ping", "-c", "1", "-W", "1", "cc")).code === 0,
      15_000,
    );
    log("c reachable");
    expect(lab.pid(leader)).toBeUndefined();

    const ping = await pinging;
    const counts = pingCounts(ping.stdout);
    console.log(
      `failover: new leader ${newLeader} after ${electedMs} ms; pings ca->cb ${counts.received}/${counts.sent}; ` +
        `run cc took ${attempts} attempt(s)`,
    );
    expect(counts.sent).toBe(200);
    expect(counts.sent - counts.received).toBeLessThanOrEqual(3);
    expect(attempts).toBe(1);

    // The old leader comes back and is a Ready, reachable manager again.
    await lab.startDaemon(leader);
    await waitFor(
      `${leader.name} Ready again`,
      async () => {
        const n = (await nodes(hA))?.find((x) => x.Description.Hostname === leader.name);
        return n?.Status.State === "ready" && n.ManagerStatus?.Reachability === "reachable";
      },
      30_000,
    );
    const ls = await ok(hA, "node", "ls");
    expect(ls.split("\n").find((l) => /\sh\d\s/.test(l) && l.includes(` ${leader.name} `))).toMatch(/Ready/);
    log("old leader ready");
  }, 90_000);

  // ---- daemon restarts -----------------------------------------------------------------------------------

  /** Containers per host (by host name), kept up to date by the tests below. */
  const ctrs = new Map<string, string[]>();
  interface Victim {
    x: LabHost;
    gone: string[];
    eps: { ip: string; mac: string }[];
    other: LabHost;
    otherCtr: string;
  }

  /**
   * Stop x's daemon with `signal` with its containers attached; with `killContainers` they die while it is
   * down. A clean stop leaves the containers and their networking as they are.
   */
  async function stopWithContainers(x: LabHost, signal: NodeJS.Signals, killContainers = false): Promise<Victim> {
    const gone = ctrs.get(x.name) ?? [];
    expect(gone.length).toBeGreaterThan(0);
    const other = h.find((y) => y !== x && (ctrs.get(y.name) ?? []).length > 0)!;
    const otherCtr = ctrs.get(other.name)![0]!;
    const eps = await Promise.all(gone.map((n) => endpointOf(x, "n1", n)));
    // Before: the other host holds the entries of x's endpoints.
    const before = await overlayTables(other, netId);
    for (const ep of eps) {
      expect(before.fdb).toContain(ep.mac);
      expect(before.neigh).toContain(`${ep.ip} `);
    }
    expect(overlayNamespaces(x)).toHaveLength(1);
    const pids = await Promise.all(
      gone.map(async (n) => (JSON.parse(await ok(x, "inspect", n)) as { State: { Pid: number } }[])[0]!.State.Pid),
    );
    const beforeStop = { netns: netnsFiles(x), links: await hostLinks(x) };

    await lab.stopDaemon(x, signal, signal === "SIGKILL" ? 0 : 15_000);
    const afterStop = { netns: netnsFiles(x), links: await hostLinks(x) };
    console.log(`${x.name} after ${signal}: ls netns = ${JSON.stringify(afterStop.netns)}; links = ${afterStop.links}`);
    // The containers run on without their daemon, in their namespaces, on their overlay.
    expect(afterStop).toEqual(beforeStop);
    if (killContainers) for (const pid of pids) process.kill(pid, "SIGKILL");
    log(`${x.name} ${signal}`);
    return { x, gone, eps, other, otherCtr };
  }

  /** Restart x's daemon; its containers of the previous run are gone and nothing is left on x itself. */
  async function restartClean(v: Victim, signal: NodeJS.Signals): Promise<void> {
    const { x, gone } = v;
    await lab.startDaemon(x);
    await waitFor("the restarted daemon to answer", async () => (await shoal(x, "ps", "-a")).code === 0, 15_000);
    log(`${x.name} restarted after ${signal}`);
    // The containers of the previous run are gone.
    for (const n of gone) expect(await psLine(x, n)).toMatch(/Exited/);
    ctrs.set(x.name, []);
    // Nothing left on x: no namespace file (overlay or container), no mount, no stray link (gw…, veth, vxlan).
    await waitFor(`${x.name}'s namespace files to go`, () => netnsFiles(x).length === 0, 10_000).catch(() => undefined);
    expect(netnsFiles(x)).toEqual([]);
    expect(mountsUnder(x)).toEqual([]);
    await waitFor(
      `${x.name}'s host links to settle`,
      async () => (await hostLinks(x)).every((l) => BASE_LINKS.has(l)),
      10_000,
    ).catch(() => undefined);
    expect((await hostLinks(x)).filter((l) => !BASE_LINKS.has(l))).toEqual([]);
  }

  /** The managers released x's endpoints of the previous run; the other host dropped their entries. */
  async function endpointsReleased(v: Victim, ms: number): Promise<void> {
    const { x, eps, other } = v;
    for (const m of h.filter((y) => y !== x)) {
      await waitFor(
        `${m.name} to show no endpoint of ${x.name} (Peers)`,
        async () => !((await inspectNet(m, "n1")).Peers ?? []).some((p) => p.Name === x.name || p.IP === x.addr),
        ms,
      );
    }
    await waitFor(
      `${other.name} to drop the FDB/neighbour entries of ${x.name}'s old endpoints`,
      async () => {
        const t = await overlayTables(other, netId);
        return eps.every((ep) => !t.fdb.includes(ep.mac) && !t.neigh.includes(`${ep.ip} `));
      },
      ms,
    );
  }

  /** A new container on x works: it reaches the other host's container by name, and back. */
  async function newContainerWorks(v: Victim, fresh: string): Promise<void> {
    const { x, other, otherCtr } = v;
    await waitFor(
      `${fresh} to start on ${x.name}`,
      async () => {
        const r = await shoal(x, "run", "-d", "--name", fresh, "--network", "n1", "host", "sleep", "1000");
        if (r.code !== 0) await shoal(x, "rm", "-f", fresh);
        return r.code === 0;
      },
      20_000,
    );
    ctrs.set(x.name, [fresh]);
    await waitFor(
      `${fresh} to reach ${otherCtr} by name`,
      async () => (await shoal(x, "exec", fresh, "ping", "-c", "1", "-W", "1", otherCtr)).code === 0,
      15_000,
    );
    expect((await shoal(other, "exec", otherCtr, "ping", "-c", "1", "-W", "1", fresh)).code).toBe(0);
  }

  /** Reject TCP to and from port 2377 (the managers' gRPC) in a host's namespace. */
  async function blockSwarmPort(x: LabHost): Promise<void> {
    const rules = [
      "table inet e2eflt {",
      "  chain out { type filter hook output priority 0; tcp dport 2377 reject with tcp reset; }",
      "  chain in { type filter hook input priority 0; tcp dport 2377 reject with tcp reset; }",
      "}",
      "",
    ].join("\n");
    await new Promise<void>((resolve, reject) => {
      const p = execFile("nsenter", [`--net=/run/netns/${x.netns}`, "nft", "-f", "-"], (e) =>
        e ? reject(e) : resolve(),
      );
      p.stdin?.end(rules);
    });
  }

  async function unblockSwarmPort(x: LabHost): Promise<void> {
    await lab.exec(x, ["nft", "delete", "table", "inet", "e2eflt"]).catch(() => undefined);
  }

  let killed: Victim;

  it("SIGKILL of the leading manager's daemon with containers that die while it is down, then restart: they are exited, no namespace, mount or link is left", async () => {
    ctrs.set(hA.name, ["ca"]);
    ctrs.set(hB.name, ["cb", "cc"]);
    ctrs.set(leader.name, []);
    // Kill the host that leads now (it restarts as a manager whose Raft has no leader yet); it needs a container.
    const lname = await waitFor("a leader", () => leaderName(hA), 10_000);
    const x = h.find((y) => y.name === lname)!;
    if ((ctrs.get(x.name) ?? []).length === 0) {
      await ok(x, "run", "-d", "--name", "cl", "--network", "n1", "host", "sleep", "1000");
      ctrs.set(x.name, ["cl"]);
    }
    killed = await stopWithContainers(x, "SIGKILL", true);
    // The managers are unreachable while it restarts (TCP to and from the swarm port rejected in its
    // namespace; the VXLAN data path is untouched): its one attempt to release the dead endpoints fails
    // for certain, not only when it loses the race with its own Raft (see the bug below).
    await blockSwarmPort(x);
    try {
      await restartClean(killed, "SIGKILL");
    } finally {
      await unblockSwarmPort(x);
    }
    log(`${x.name} clean after SIGKILL`);
  }, 90_000);

  // Regression: a restarted daemon releases the endpoints of its dead containers at startup, before it has
  // a session with the managers (and, on the old leader, before its own manager has a leader), so the first
  // Detach call fails. It used to give up there: the dead endpoints stayed in the store, the host stayed in
  // Peers, and the other hosts kept FDB and neighbour entries for them. Releases are now retried with
  // backoff until the managers take them back. The managers are kept unreachable during the restart here,
  // so the first attempt certainly fails.
  it("...and the managers release its old endpoints; the other host drops their FDB and neighbour entries", async () => {
    // Releases now go over the agent's own session: after the managers were unreachable through the whole
    // restart, the session's backoff (up to 8 s between attempts) comes first, then the release (within 2 s).
    await endpointsReleased(killed, 15_000);
  }, 30_000);

  it("...and a new container on the restarted host reaches the other host's container by name, and back", async () => {
    await newContainerWorks(killed, `${killed.gone[0]}2`);
    log(`${killed.x.name} new container after SIGKILL`);
  }, 60_000);

  let stopped: Victim;

  it("SIGTERM of a daemon with containers: they run on; after its restart it adopts them, reachable by name both ways", async () => {
    const x = h.find((y) => y !== killed.x && (ctrs.get(y.name) ?? []).length > 0)!;
    stopped = await stopWithContainers(x, "SIGTERM");
    const files = netnsFiles(x);
    await lab.startDaemon(x);
    await waitFor("the restarted daemon to answer", async () => (await shoal(x, "ps", "-a")).code === 0, 15_000);
    for (const n of stopped.gone) expect(await psLine(x, n)).toMatch(/Up /);
    for (const n of stopped.gone) {
      await waitFor(
        `${n} to reach ${stopped.otherCtr} by name`,
        async () => (await shoal(x, "exec", n, "ping", "-c", "1", "-W", "1", stopped.otherCtr)).code === 0,
        15_000,
      );
      expect((await shoal(stopped.other, "exec", stopped.otherCtr, "ping", "-c", "1", "-W", "1", n)).code).toBe(0);
    }
    expect(netnsFiles(x)).toEqual(files);
    log(`${x.name} adopted after SIGTERM`);
  }, 90_000);

  it("...and once they are removed, their endpoints are released; the other host drops their entries; nothing is left", async () => {
    const x = stopped.x;
    await ok(x, "rm", "-f", ...stopped.gone);
    ctrs.set(x.name, []);
    await endpointsReleased(stopped, 15_000);
    await waitFor(`${x.name}'s namespace files to go`, () => netnsFiles(x).length === 0, 10_000).catch(() => undefined);
    expect(netnsFiles(x)).toEqual([]);
    expect(mountsUnder(x)).toEqual([]);
    expect((await hostLinks(x)).filter((l) => !BASE_LINKS.has(l))).toEqual([]);
  }, 60_000);

  it("...and a new container on the restarted host reaches the other host's container by name, and back", async () => {
    await newContainerWorks(stopped, `${stopped.gone[0]}2`);
    log(`${stopped.x.name} new container after SIGTERM`);
  }, 60_000);
});
