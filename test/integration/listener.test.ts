// Issue 10.2: the cluster listener belongs to managers only. Three managers on 127.0.0.11-13 share one port;
// a worker joins with the default kind of listen address (0.0.0.0 on that port, which the managers hold)
// and must be accepted, holding no listener. The address is bound when the node becomes a manager: a
// promotion (or a restart as manager) whose port is busy says so clearly, visibly in `docker info`, keeps
// the daemon up, and succeeds by itself once the port is free.
//
//   flock /tmp/shoal-heavy.lock npx vitest run test/integration/listener.test.ts

import { readdirSync, readFileSync, readlinkSync } from "node:fs";
import { createServer, type Server } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildOnce, Lab, type Result } from "./harness.js";

function show(r: Result): string {
  return `exit ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`;
}

function must(r: Result): string {
  expect(r.code, show(r)).toBe(0);
  return r.stdout;
}

/** A TCP port that nothing listens on, on any address (so 0.0.0.0:port is free too). */
async function freePort(): Promise<number> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const port = 20_000 + Math.floor(Math.random() * 10_000);
    const ok = await new Promise<boolean>((resolve) => {
      const s = createServer();
      s.once("error", () => resolve(false));
      s.listen(port, "0.0.0.0", () => s.close(() => resolve(true)));
    });
    if (ok) return port;
  }
  throw new Error("no free port");
}

function listen(host: string, port: number): Promise<Server> {
  return new Promise((resolve, reject) => {
    const s = createServer((sock) => sock.destroy());
    s.once("error", reject);
    s.listen(port, host, () => resolve(s));
  });
}

/** "127.0.0.11:P" of every listening IPv4 TCP socket on `port` (from /proc/net/tcp), with its inode. */
function listeners(port: number): { addr: string; inode: string }[] {
  const out: { addr: string; inode: string }[] = [];
  for (const line of readFileSync("/proc/net/tcp", "utf8").split("\n").slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length < 10 || f[3] !== "0A") continue; // 0A: LISTEN
    const [hexIp, hexPort] = f[1]!.split(":") as [string, string];
    if (Number.parseInt(hexPort, 16) !== port) continue;
    const ip = [3, 2, 1, 0].map((i) => Number.parseInt(hexIp.slice(i * 2, i * 2 + 2), 16)).join(".");
    out.push({ addr: `${ip}:${port}`, inode: f[9]! });
  }
  return out;
}

/** The socket inodes process `pid` holds open. */
function socketInodes(pid: number): Set<string> {
  const inodes = new Set<string>();
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`));
      if (m) inodes.add(m[1]!);
    } catch {
      // closed meanwhile
    }
  }
  return inodes;
}

/** The addresses on `port` that daemon `pid` listens on. */
function listensOn(pid: number, port: number): string[] {
  const mine = socketInodes(pid);
  return listeners(port)
    .filter((l) => mine.has(l.inode))
    .map((l) => l.addr)
    .sort();
}

describe("the cluster listener is a manager's only (one port, several managers on one machine)", () => {
  let lab: Lab;
  let port = 0;
  const ip = (i: number) => `127.0.0.${i}`;
  const at = (i: number) => `${ip(i)}:${port}`;
  let workerToken = "";

  beforeAll(async () => {
    await buildOnce();
    lab = await Lab.create("listen", 0);
    port = await freePort();
    for (const i of [11, 12, 13, 14, 15]) await lab.startDaemon(i);
    must(
      await lab.docker(
        11,
        "swarm",
        "init",
        "--advertise-addr",
        at(11),
        "--listen-addr",
        at(11),
        "--dispatcher-heartbeat",
        "1s",
      ),
    );
    const managerToken = must(await lab.docker(11, "swarm", "join-token", "-q", "manager")).trim();
    workerToken = must(await lab.docker(11, "swarm", "join-token", "-q", "worker")).trim();
    for (const i of [12, 13]) {
      must(
        await lab.docker(
          i,
          "swarm",
          "join",
          "--token",
          managerToken,
          "--advertise-addr",
          at(i),
          "--listen-addr",
          at(i),
          at(11),
        ),
      );
    }
  }, 120_000);

  afterAll(async () => {
    await lab?.close();
  });

  it("three managers listen on the same port of three addresses", () => {
    for (const i of [11, 12, 13]) expect(listensOn(lab.pid(i)!, port)).toEqual([at(i)]);
  });

  it("a worker joins with a listen address the managers' port makes busy, and holds no listener", async () => {
    // As `docker swarm join --token <worker token> --advertise-addr 127.0.0.14 127.0.0.11:2377`, whose
    // listen address is 0.0.0.0:2377: busy, since the managers listen on that port.
    const r = await lab.docker(
      14,
      "swarm",
      "join",
      "--token",
      workerToken,
      "--advertise-addr",
      ip(14),
      "--listen-addr",
      `0.0.0.0:${port}`,
      at(11),
    );
    expect(r.stdout, show(r)).toContain("This node joined a swarm as a worker.");
    expect(r.code, show(r)).toBe(0);
    expect(listensOn(lab.pid(14)!, port)).toEqual([]);
    const nodes = await lab.nodeMap(11);
    expect(nodes.get("node14")).toMatchObject({ Status: "Ready", ManagerStatus: "" });
  }, 60_000);

  it("a worker promoted while its port is busy says so, stays up, and becomes a manager once it is free", async () => {
    must(
      await lab.docker(
        15,
        "swarm",
        "join",
        "--token",
        workerToken,
        "--advertise-addr",
        at(15),
        "--listen-addr",
        at(15),
        at(11),
      ),
    );
    expect(listensOn(lab.pid(15)!, port)).toEqual([]);
    const blocker = await listen(ip(15), port);
    let blocked = true;
    try {
      must(await lab.docker(11, "node", "promote", "node15"));
      const busy = `listen address ${at(15)} is already in use`;
      // Visible where a user looks: docker info, and the daemon's log at error level.
      const info = await lab.waitFor(
        async () => {
          const text = must(await lab.docker(15, "info", "--format", "{{.Swarm.Error}}")).trim();
          return text.includes(busy) ? text : undefined;
        },
        20_000,
        "docker info on node15 to report the busy listen address",
      );
      expect(info).toMatch(/cannot become a manager/);
      expect(must(await lab.docker(15, "info"))).toContain(` Error: ${info}`);
      expect(lab.logRecords(15).some((r) => r.level === 50 && typeof r.msg === "string" && r.msg.includes(busy))).toBe(
        true,
      );
      // It keeps trying, and keeps working as a worker meanwhile.
      const tries = () => lab.logRecords(15).filter((r) => typeof r.msg === "string" && r.msg.includes(busy)).length;
      const before = tries();
      await lab.waitFor(() => tries() > before, 15_000, "node15 to retry");
      lab.assertAlive(15);
      expect((await lab.info(15)).ControlAvailable).toBe(false);
      expect((await lab.nodeMap(11)).get("node15")?.Status).toBe("Ready");

      await new Promise<void>((resolve) => blocker.close(() => resolve()));
      blocked = false;
      await lab.waitFor(async () => (await lab.info(15)).ControlAvailable, 30_000, "node15 to become a manager");
      expect(listensOn(lab.pid(15)!, port)).toEqual([at(15)]);
      await lab.waitFor(
        async () => (await lab.nodeMap(11)).get("node15")?.ManagerStatus === "Reachable",
        30_000,
        "node15 to be a reachable manager",
      );
      expect(must(await lab.docker(15, "info", "--format", "{{.Swarm.Error}}")).trim()).toBe("");
    } finally {
      if (blocked) blocker.close();
    }
  }, 120_000);

  it("a manager restarted while its port is busy stays up, says so, and starts its manager once it is free", async () => {
    await lab.kill(15, "SIGKILL");
    const blocker = await listen(ip(15), port);
    let blocked = true;
    try {
      await lab.startDaemon(15);
      const busy = `listen address ${at(15)} is already in use`;
      await lab.waitFor(
        async () => must(await lab.docker(15, "info", "--format", "{{.Swarm.Error}}")).includes(busy),
        20_000,
        "docker info on node15 to report the busy listen address",
      );
      lab.assertAlive(15);
      await new Promise<void>((resolve) => blocker.close(() => resolve()));
      blocked = false;
      await lab.waitFor(async () => (await lab.info(15)).ControlAvailable, 30_000, "node15's manager to start");
      expect(listensOn(lab.pid(15)!, port)).toEqual([at(15)]);
      expect(must(await lab.docker(15, "info", "--format", "{{.Swarm.Error}}")).trim()).toBe("");
    } finally {
      if (blocked) blocker.close();
    }
  }, 90_000);

  it("a manager join whose listen address is busy is refused before anything is created", async () => {
    // node14 leaves (a worker), then tries to come back as a manager on the busy 0.0.0.0:port.
    must(await lab.docker(14, "swarm", "leave"));
    const before = (await lab.nodeLs(11)).length;
    const managerToken = must(await lab.docker(11, "swarm", "join-token", "-q", "manager")).trim();
    const r = await lab.docker(
      14,
      "swarm",
      "join",
      "--token",
      managerToken,
      "--advertise-addr",
      ip(14),
      "--listen-addr",
      `0.0.0.0:${port}`,
      at(11),
    );
    expect(r.code, show(r)).toBe(1);
    expect(r.stderr).toContain(`listen address 0.0.0.0:${port} is already in use: choose another with --listen-addr`);
    expect((await lab.info(14)).LocalNodeState).toBe("inactive");
    expect(await lab.nodeLs(11)).toHaveLength(before);
  }, 60_000);
});
