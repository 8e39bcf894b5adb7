// src/runtime: containers in real namespaces (root only). Networks come from a test attacher that
// puts a veth pair in the container's namespace, so these tests need no overlay. Every test leaves no
// namespace file, process or directory behind.

import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtemp, readdir, readFile, rm, stat, symlink, writeFile } from "node:fs/promises";
import os from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import pino from "pino";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, test } from "vitest";
import { ApiError } from "../../src/api/errors.js";
import { humanDuration } from "../../src/api/humanize.js";
import { Container } from "../../src/runtime/container.js";
import { TaskClient } from "../../src/runtime/containerd/tasks.js";
import { newRecord } from "../../src/runtime/create.js";
import { hostResolvConf, renderHosts } from "../../src/runtime/networks.js";
import { listed } from "../../src/runtime/present.js";
import { ContainerRuntime } from "../../src/runtime/runtime.js";
import { netnsState } from "../../src/runtime/sandbox.js";
import { parseSignal } from "../../src/runtime/signals.js";
import {
  CAN_RUN_CONTAINERS,
  execIn,
  logsOf,
  sh,
  TEST_RESOLV_CONF,
  testContainerd,
  VethAttacher,
} from "./runtime-fixtures.js";

/** What containers left in a state directory (the FIFO pool there is the runtime's own). */
const containerDirs = async (dir: string): Promise<string[]> => (await readdir(dir)).filter((n) => n !== "fifo-pool");

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");

let dir: string;
let execRoot: string;
let stateDir: string;
let attacher: VethAttacher;
let rt: ContainerRuntime;
const logger = pino({ level: "silent" });

async function pidAlive(pid: number): Promise<boolean> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, "utf8");
    return !/\) [ZX] /.test(stat);
  } catch {
    return false;
  }
}

/** Resolves once `cond` holds (asked every 20 ms; the test's own timeout bounds it). */
async function until(cond: () => Promise<boolean>): Promise<void> {
  while (!(await cond())) await new Promise((r) => setTimeout(r, 20));
}

async function expectApiError(p: Promise<unknown>, status: number, message: string | RegExp): Promise<void> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(ApiError);
  expect((err as ApiError).status).toBe(status);
  if (typeof message === "string") expect((err as ApiError).message).toBe(message);
  else expect((err as ApiError).message).toMatch(message);
}

describe("runtime helpers", () => {
  test("hosts file, durations and signals", () => {
    const hosts = renderHosts(
      "abc123def456",
      "c1",
      [
        {
          networkId: "n",
          networkName: "n1",
          endpointId: "e",
          ip: "10.0.0.2",
          prefixLen: 24,
          mac: "",
          gateway: "",
          aliases: [],
        },
      ],
      [["web", "c1"]],
    );
    expect(hosts).toBe(
      "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n10.0.0.2\tabc123def456 c1 web\n",
    );
    expect(humanDuration(400)).toBe("Less than a second");
    expect(humanDuration(5_000)).toBe("5 seconds");
    expect(humanDuration(65_000)).toBe("About a minute");
    expect(humanDuration(3 * 3_600_000)).toBe("3 hours");
    expect(parseSignal("SIGTERM")).toBe(15);
    expect(parseSignal("kill")).toBe(9);
    expect(parseSignal("10")).toBe(10);
    expect(parseSignal("SIGNOPE")).toBeUndefined();
  });

  test("the host's resolv.conf: loopback name servers dropped; read again once the file changed", async () => {
    const d = await mkdtemp(join(os.tmpdir(), "shoal-resolv-"));
    try {
      const path = join(d, "resolv.conf");
      await writeFile(path, "nameserver 127.0.0.53\nnameserver 192.0.2.53\n");
      expect(await hostResolvConf(path)).toBe("nameserver 192.0.2.53\n");
      expect(await hostResolvConf(path)).toBe("nameserver 192.0.2.53\n");
      // Same size, another content: the time of change tells.
      await new Promise((r) => setTimeout(r, 20));
      await writeFile(path, "nameserver 127.0.0.53\nnameserver 192.0.2.54\n");
      expect(await hostResolvConf(path)).toBe("nameserver 192.0.2.54\n");
      await rm(path);
      expect(await hostResolvConf(path)).toBe("");
    } finally {
      await rm(d, { recursive: true, force: true });
    }
  });

  test("ps --filter name= matches a name as dockerd does: exactly, or a regular expression with or without the slash", () => {
    const image = { name: "busybox", id: "sha256:1", rootfs: "snapshot" as const, config: {} };
    const c = new Container(newRecord({ image: "busybox", cmd: ["true"], networks: [] }, "talker", image), "/x");
    const names = (v: string) => listed(c, { name: [v] });
    expect(["talker", "/talker", "^tal", "^/tal", "alk", "ker$"].map(names)).toEqual([
      true,
      true,
      true,
      true,
      true,
      true,
    ]);
    expect(["walker", "^alk", "(", "^/alk"].map(names)).toEqual([false, false, false, false]);
  });
});

describe.skipIf(!CAN_RUN_CONTAINERS)("container runtime (containerd, real namespaces)", () => {
  let cdDir: string;
  let cd: Awaited<ReturnType<typeof testContainerd>>;

  beforeAll(async () => {
    cdDir = await mkdtemp(join(os.tmpdir(), "shoal-containerd-"));
    cd = await testContainerd(cdDir);
  });

  afterAll(async () => {
    await cd?.stop();
    await rm(cdDir, { recursive: true, force: true });
  });

  beforeEach(async () => {
    dir = await mkdtemp(join(os.tmpdir(), "shoal-runtime-"));
    execRoot = join(dir, "run");
    stateDir = join(dir, "containers");
    attacher = new VethAttacher();
    rt = await ContainerRuntime.open({
      execRoot,
      stateDir,
      attacher,
      logger,
      hostname: () => "testhost",
      containerd: cd.containerd,
    });
  });

  afterEach(async () => {
    // Whatever a failed test left: stop and remove every container, then check nothing leaked.
    for (const c of await rt.containerList({ all: true, filters: {} }))
      await rt.containerRemove(c.Id, { force: true }).catch(() => undefined);
    const leftovers = await rt.containerNetnsFiles();
    await rt.reconcile();
    // The tasks made for starts to come (the runtime's, not a leak) go with it.
    await rt.dropAhead();
    await rm(dir, { recursive: true, force: true });
    expect(leftovers).toEqual([]);
  });

  test("namespaces made ahead live in netns-pool, never among the containers'; a create takes one; the shutdown removes them", async () => {
    const poolDir = join(execRoot, "netns-pool");
    const netnsDir = join(execRoot, "netns");
    // The inodes of the namespaces bind-mounted there (a file being made is not one yet).
    const inodes = async (d: string): Promise<number[]> => {
      const out: number[] = [];
      for (const n of await readdir(d).catch(() => [] as string[])) {
        if ((await netnsState(join(d, n))) === "netns") out.push((await stat(join(d, n))).ino);
      }
      return out;
    };
    // The first create starts the pool (a host that runs no container holds none).
    expect(await inodes(poolDir)).toEqual([]);
    const a = await rt.create({ name: "p1", image: "host", cmd: ["sleep", "1000"], networks: [] });
    await rt.netnsPoolSettled();
    const pooled = await inodes(poolDir);
    expect(pooled.length).toBeGreaterThan(0);
    const b = await rt.create({ name: "p2", image: "host", cmd: ["sleep", "1000"], networks: [] });
    expect(await rt.containerStart("p2")).toBe(true);
    // b's namespace is one the pool made (the same nsfs inode), moved onto b's file.
    const bNetns = join(netnsDir, b.slice(0, 12));
    expect(pooled).toContain((await stat(bNetns)).ino);
    expect((await rt.containerInspect("p2")).NetworkSettings.SandboxKey).toBe(bNetns);
    // The containers' directory holds the containers' namespaces only.
    expect((await readdir(netnsDir)).sort()).toEqual([a.slice(0, 12), b.slice(0, 12)].sort());
    expect(await rt.containerNetnsFiles()).toHaveLength(2);
    expect((await inodes(poolDir)).length).toBeGreaterThan(0);
    // The daemon goes: what it made ahead goes with it; the running container keeps its namespace.
    await rt.dropAhead();
    expect(await readdir(poolDir)).toEqual([]);
    const mounts = (await readFile("/proc/self/mountinfo", "utf8")).split("\n").map((l) => l.split(" ")[4] ?? "");
    expect(mounts.filter((m) => m.startsWith(`${poolDir}/`))).toEqual([]);
    expect(await readdir(netnsDir)).toEqual([b.slice(0, 12)]);
  });

  test("namespaces made ahead by a daemon that died are removed by the next daemon's reconcile", async () => {
    await rt.create({ name: "d1", image: "host", cmd: ["sleep", "1000"], networks: [] });
    const poolDir = join(execRoot, "netns-pool");
    await rt.netnsPoolSettled();
    expect((await readdir(poolDir)).length).toBeGreaterThan(0);
    // A second runtime on the same directories, as the next daemon after a SIGKILL (this one is not closed).
    const next = await ContainerRuntime.open({
      execRoot,
      stateDir,
      attacher,
      logger,
      hostname: () => "testhost",
      containerd: cd.containerd,
    });
    try {
      await next.reconcile();
      expect(await readdir(poolDir)).toEqual([]);
    } finally {
      await next.dropAhead();
    }
  });

  test("run sleep on a network: namespaces, files, exec, stop, rm — nothing left behind", async () => {
    const id = await rt.create({
      name: "c1",
      image: "host",
      cmd: ["sleep", "1000"],
      networks: [{ ref: "n1", cfg: { Aliases: ["web"] } }],
    });
    expect(id).toMatch(/^[0-9a-f]{64}$/);
    expect((await rt.containerInspect("c1")).State.Status).toBe("created");
    expect(await rt.containerStart("c1")).toBe(true);
    expect(await rt.containerStart(id.slice(0, 10))).toBe(false); // already running (a unique prefix works too)

    const info = await rt.containerInspect(id);
    expect(info.State).toMatchObject({ Status: "running", Running: true, ExitCode: 0 });
    const pid = info.State.Pid;
    expect(pid).toBeGreaterThan(0);
    expect(info.Name).toBe("/c1");
    expect(info.Config.Hostname).toBe(id.slice(0, 12));
    expect(info.NetworkSettings.SandboxKey).toBe(join(execRoot, "netns", id.slice(0, 12)));
    const ep = info.NetworkSettings.Networks.n1!;
    expect(ep).toMatchObject({ IPAddress: "10.77.1.2", IPPrefixLen: 24, Gateway: "10.77.1.1", Aliases: ["web"] });
    expect(ep.MacAddress).toMatch(/^([0-9a-f]{2}:){5}[0-9a-f]{2}$/);
    expect(await rt.containerNetnsFiles()).toEqual([id.slice(0, 12)]);
    expect(attacher.calls).toEqual(["attach c1 n1 eth0"]);

    // Inside: its own hostname, resolv.conf, hosts, interfaces and process tree.
    let r = await execIn(rt, "c1", ["hostname"]);
    expect(r).toEqual({ exitCode: 0, stdout: `${id.slice(0, 12)}\n`, stderr: "" });
    r = await execIn(rt, "c1", ["cat", "/etc/resolv.conf"]);
    expect(r.stdout).toBe(TEST_RESOLV_CONF);
    r = await execIn(rt, "c1", ["cat", "/etc/hosts"]);
    expect(r.stdout).toContain(`10.77.1.2\t${id.slice(0, 12)} c1 web\n`);
    expect(r.stdout).toMatch(/^127\.0\.0\.1\tlocalhost\n/);
    r = await execIn(rt, "c1", ["ip", "-o", "-4", "addr"]);
    expect(r.stdout).toMatch(/^1: lo +inet 127\.0\.0\.1\/8/m);
    expect(r.stdout).toMatch(/eth0 +inet 10\.77\.1\.2\/24/);
    r = await execIn(rt, "c1", ["sh", "-c", "cat /proc/1/cmdline | tr '\\0' ' '; echo; ls /proc | grep -c '^[0-9]'"]);
    expect(r.stdout.split("\n")[0]).toBe("sleep 1000 ");
    // The host's files are untouched.
    expect(await readFile("/etc/resolv.conf", "utf8")).not.toBe(TEST_RESOLV_CONF);
    // Exit codes, stderr and commands that do not exist.
    r = await execIn(rt, "c1", ["sh", "-c", "echo oops >&2; exit 7"]);
    expect(r).toEqual({ exitCode: 7, stdout: "", stderr: "oops\n" });
    r = await execIn(rt, "c1", ["no-such-command"]);
    expect(r.exitCode).toBe(127);
    expect(r.stderr).toContain('exec: "no-such-command": executable file not found in $PATH');

    const list = await rt.containerList({ all: false, filters: {} });
    expect(list.map((c) => [c.Names, c.Command, c.State])).toEqual([[["/c1"], "sleep 1000", "running"]]);
    expect(list[0]!.Status).toMatch(/^Up /);

    // sleep is pid 1 and ignores SIGTERM: SIGKILL after the timeout.
    const started = Date.now();
    expect(await rt.containerStop("c1", { timeout: 1 })).toBe(true);
    expect(Date.now() - started).toBeGreaterThanOrEqual(900);
    const after = await rt.containerInspect("c1");
    expect(after.State).toMatchObject({ Status: "exited", Running: false, Pid: 0, ExitCode: 137 });
    expect(after.NetworkSettings.Networks.n1!.IPAddress).toBe("");
    expect(await pidAlive(pid)).toBe(false);
    expect(await rt.containerNetnsFiles()).toEqual([]);
    expect(attacher.calls).toEqual(["attach c1 n1 eth0", "detach c1 n1"]);
    expect(attacher.attachedCount).toBe(0);
    expect(await rt.containerStop("c1", {})).toBe(false);
    expect(await rt.containerList({ all: false, filters: {} })).toEqual([]);
    expect((await rt.containerList({ all: true, filters: {} })).map((c) => c.Status)).toEqual([
      expect.stringMatching(/^Exited \(137\) .* ago$/),
    ]);

    await rt.containerRemove("c1", { force: false });
    await expectApiError(rt.containerInspect("c1"), 404, "No such container: c1");
    expect(await containerDirs(stateDir)).toEqual([]);
  });

  test("output goes to the log by stream; wait sees the exit code; a stop signal handler exits at once", async () => {
    await rt.create({
      name: "job",
      image: "host",
      cmd: ["sh", "-c", "echo out; echo err >&2; printf partial; exit 3"],
      networks: [],
    });
    const waiting = await rt.containerWait("job", "next-exit");
    await rt.containerStart("job");
    expect(await waiting.result).toEqual({ StatusCode: 3 });
    expect((await rt.containerInspect("job")).State).toMatchObject({ Status: "exited", ExitCode: 3 });
    // Within a stream the order is the process's; between stdout and stderr (two pipes, each copied by the
    // shim on its own, as under Docker) it is not fixed.
    expect((await logsOf(rt, "job")).split("\n").sort()).toEqual(["err", "out", "partial"]);
    const stream = await rt.containerLogs("job", {
      stdout: false,
      stderr: true,
      follow: false,
      timestamps: false,
      tail: "all",
      since: 0,
      until: 0,
    });
    const chunks = [];
    for await (const c of stream.chunks) chunks.push([c.stream, c.data.toString()]);
    expect(chunks).toEqual([[2, "err\n"]]);
    // Not running: "not-running" answers at once.
    expect(await (await rt.containerWait("job", "not-running")).result).toEqual({ StatusCode: 3 });

    // A process that handles SIGTERM stops before the timeout, with its own exit code.
    await rt.create({
      name: "polite",
      image: "host",
      cmd: ["sh", "-c", 'trap "echo bye; exit 0" TERM; echo ready; while :; do sleep 0.05; done'],
      networks: [],
    });
    await rt.containerStart("polite");
    // The trap is installed before "ready" is printed: a SIGTERM sent earlier would find no handler (and
    // pid 1 ignores a signal it does not handle), so wait for it, however loaded the machine is.
    for (let i = 0; i < 200 && !(await logsOf(rt, "polite")).includes("ready"); i++)
      await new Promise((r) => setTimeout(r, 25));
    const t0 = Date.now();
    await rt.containerStop("polite", { timeout: 20 });
    expect(Date.now() - t0).toBeLessThan(5000);
    expect((await rt.containerInspect("polite")).State.ExitCode).toBe(0);
    expect(await logsOf(rt, "polite")).toBe("ready\nbye\n");

    // Restart: a stopped container starts again, with a new namespace.
    await rt.containerStart("polite");
    expect((await rt.containerInspect("polite")).State.Running).toBe(true);
    await rt.containerKill("polite", "SIGKILL");
    expect((await rt.containerInspect("polite")).State).toMatchObject({ Status: "exited", ExitCode: 137 });
    await expectApiError(rt.containerKill("polite", "SIGKILL"), 409, /is not running/);
  });

  test("create errors: image, name conflict, bad name, no command", async () => {
    await expectApiError(
      rt.create({ image: "alpine", cmd: ["true"], networks: [] }),
      404,
      "No such image: alpine:latest",
    );
    const id = await rt.create({ name: "dup", image: "host", cmd: ["true"], networks: [] });
    await expectApiError(
      rt.create({ name: "dup", image: "host", cmd: ["true"], networks: [] }),
      409,
      `Conflict. The container name "/dup" is already in use by container "${id}". You have to remove (or rename) that container to be able to reuse that name.`,
    );
    await expectApiError(
      rt.create({ name: "-x", image: "host", cmd: ["true"], networks: [] }),
      400,
      /Invalid container name/,
    );
    await expectApiError(rt.create({ image: "host", cmd: [], networks: [] }), 400, "no command specified");
    // A create begins the namespace and the directory of its container before it looks the image up: a
    // refused one leaves neither.
    expect(await containerDirs(stateDir)).toEqual([id]);
    expect(await rt.containerNetnsFiles()).toEqual([id.slice(0, 12)]);
    const anon = await rt.create({ image: "host", cmd: ["true"], networks: [] });
    expect((await rt.containerInspect(anon)).Name).toMatch(/^\/[a-z]+_[a-z]+\d?$/);
  });

  test("a failed start undoes what it did and leaves the container created", async () => {
    attacher.failOn.add("broken");
    await rt.create({
      name: "half",
      image: "host",
      cmd: ["sleep", "1000"],
      networks: [
        { ref: "good", cfg: {} },
        { ref: "broken", cfg: {} },
      ],
    });
    await expectApiError(rt.containerStart("half"), 500, "could not attach to network broken: test failure");
    expect(attacher.calls).toEqual(["attach half good eth0", "attach half broken eth1", "detach half good"]);
    expect(await rt.containerNetnsFiles()).toEqual([]);
    const info = await rt.containerInspect("half");
    expect(info.State).toMatchObject({
      Status: "created",
      Running: false,
      Error: "could not attach to network broken: test failure",
    });

    await rt.create({ name: "nocmd", image: "host", cmd: ["no-such-program"], networks: [{ ref: "good", cfg: {} }] });
    await expectApiError(
      rt.containerStart("nocmd"),
      400,
      /^failed to create task for container: .*exec: "no-such-program": executable file not found in \$PATH/,
    );
    expect((await rt.containerInspect("nocmd")).State).toMatchObject({ Status: "created", ExitCode: 127 });
    expect(await rt.containerNetnsFiles()).toEqual([]);
    expect(attacher.attachedCount).toBe(0);
  });

  test("a new container's task is made ahead of its start: a removal before the start leaves nothing in containerd; a start that does not come in time finds it gone and makes it", async () => {
    const tasks = new TaskClient(cd.containerd, logger);
    const inContainerd = async (id: string): Promise<boolean> => (await tasks.containerIds()).includes(id);
    const early = await rt.create({ name: "early", image: "host", cmd: ["sleep", "1000"], networks: [] });
    await until(() => inContainerd(early));
    // Made, not started: docker's created container, with no process to show.
    expect((await rt.containerInspect("early")).State).toMatchObject({ Status: "created", Running: false, Pid: 0 });
    await rt.containerRemove("early", { force: false });
    expect(await inContainerd(early)).toBe(false);

    // A runtime whose tasks made ahead wait for no start: the one of "late" is deleted at once.
    const deleted: string[] = [];
    const watching = pino(
      { level: "debug" },
      {
        write: (line: string) => {
          const l = JSON.parse(line) as { msg: string; id?: string };
          if (l.msg.startsWith("deleted the task made ahead")) deleted.push(l.id ?? "");
        },
      },
    );
    const rt3 = await ContainerRuntime.open({
      execRoot: join(dir, "run3"),
      stateDir: join(dir, "containers3"),
      attacher,
      logger: watching,
      containerd: cd.containerd,
      aheadTtlMs: 0,
    });
    try {
      const late = await rt3.create({
        name: "late",
        image: "host",
        cmd: ["sh", "-c", "echo late; sleep 1000"],
        networks: [],
      });
      await until(async () => deleted.includes(late));
      expect(await inContainerd(late)).toBe(false);
      expect(await rt3.containerStart("late")).toBe(true);
      const state = (await rt3.containerInspect("late")).State;
      expect(state).toMatchObject({ Status: "running", Running: true });
      expect(await pidAlive(state.Pid)).toBe(true);
      await until(async () => (await logsOf(rt3, "late")) === "late\n");
      await rt3.containerRemove("late", { force: true });
      expect(await pidAlive(state.Pid)).toBe(false);
      expect(await inContainerd(late)).toBe(false);
      expect(await rt3.containerNetnsFiles()).toEqual([]);
    } finally {
      await rt3.dropAhead();
    }
  });

  test("a root file system no record names (its daemon died between the snapshot and the record) is removed by the next daemon that owns containerd; other snapshots stay", async () => {
    const tasks = new TaskClient(cd.containerd, logger);
    const orphan = randomBytes(32).toString("hex");
    await tasks.prepareRootfs(orphan, "");
    const notAContainer = `kept-${randomBytes(4).toString("hex")}`;
    await tasks.prepareRootfs(notAContainer, "");
    const rt4 = await ContainerRuntime.open({
      execRoot: join(dir, "run4"),
      stateDir: join(dir, "containers4"),
      attacher,
      logger,
      containerd: cd.containerd,
      ownsContainerd: true,
    });
    try {
      const left = await tasks.rootfsIds();
      expect(left).not.toContain(orphan);
      expect(left).toContain(notAContainer);
    } finally {
      await rt4.dropAhead();
      await tasks.removeRootfs(notAContainer);
      await tasks.removeRootfs(orphan);
    }
  });

  test("connect and disconnect a running container; remove -f of a running one", async () => {
    await rt.create({ name: "multi", image: "host", cmd: ["sleep", "1000"], networks: [{ ref: "n1", cfg: {} }] });
    await rt.containerStart("multi");
    await rt.connect("multi", "n2", { IPAMConfig: { IPv4Address: "10.77.2.50" }, Aliases: ["db"] });
    let r = await execIn(rt, "multi", ["ip", "-o", "-4", "addr"]);
    expect(r.stdout).toMatch(/eth1 +inet 10\.77\.2\.50\/24/);
    r = await execIn(rt, "multi", ["cat", "/etc/hosts"]);
    expect(r.stdout).toContain("10.77.2.50\t");
    expect(r.stdout).toContain(" multi db\n");
    expect(Object.keys((await rt.containerInspect("multi")).NetworkSettings.Networks)).toEqual(["n1", "n2"]);
    await expectApiError(rt.connect("multi", "n2", {}), 403, "endpoint with name multi already exists in network n2");
    await rt.disconnect("multi", "n1", false);
    r = await execIn(rt, "multi", ["ip", "-o", "-4", "addr"]);
    expect(r.stdout).not.toMatch(/eth0/);
    await expectApiError(rt.disconnect("multi", "n1", false), 400, /is not connected to network n1/);
    await rt.disconnect("multi", "n1", true);
    expect(Object.keys((await rt.containerInspect("multi")).NetworkSettings.Networks)).toEqual(["n2"]);

    await expectApiError(
      rt.containerRemove("multi", { force: false }),
      409,
      'cannot remove container "/multi": container is running: stop the container before removing or force remove',
    );
    const pid = (await rt.containerInspect("multi")).State.Pid;
    const removed = await rt.containerWait("multi", "removed");
    await rt.containerRemove("multi", { force: true });
    expect(await removed.result).toEqual({ StatusCode: 137 });
    expect(await pidAlive(pid)).toBe(false);
    expect(attacher.attachedCount).toBe(0);
  });

  test("a daemon that dies: its containers keep running under containerd, the next daemon adopts them (those on networks it stops), nothing leaks", async () => {
    // The first daemon is a separate process (the runtime compiled on its own), killed with SIGKILL while
    // its container runs.
    const out = join(dir, "build");
    const tsc = await sh([
      process.execPath,
      join(ROOT, "node_modules/typescript/bin/tsc"),
      "--outDir",
      out,
      "--rootDir",
      ROOT,
      "--module",
      "nodenext",
      "--moduleResolution",
      "nodenext",
      "--target",
      "es2022",
      "--skipLibCheck",
      "--strict",
      "--esModuleInterop",
      "--types",
      "node",
      join(ROOT, "src/runtime/runtime.ts"),
    ]);
    expect(tsc.stdout + tsc.stderr).toBe("");
    // The compiled runtime imports its packages (zod, grpc) from the project's node_modules.
    await symlink(join(ROOT, "node_modules"), join(out, "node_modules"));
    const script = `
      import { ContainerRuntime } from ${JSON.stringify(join(out, "src/runtime/runtime.js"))};
      import { Containerd } from ${JSON.stringify(join(out, "src/runtime/containerd/client.js"))};
      import { TaskClient } from ${JSON.stringify(join(out, "src/runtime/containerd/tasks.js"))};
      const logger = { child: () => logger, debug() {}, info() {}, warn() {}, error() {} };
      const attacher = {
        async attach(c, ref) { return { networkId: "net-" + ref, networkName: ref, endpointId: "ep-" + c.name, ip: "10.9.9.9", prefixLen: 24, mac: "", gateway: "10.9.9.1", aliases: [] }; },
        async detach() {},
        resolvConf() { return "nameserver 192.0.2.1\\n"; },
      };
      const containerd = new Containerd(${JSON.stringify(cd.containerd.socketPath)});
      const rt = await ContainerRuntime.open({ execRoot: ${JSON.stringify(execRoot)}, stateDir: ${JSON.stringify(stateDir)}, attacher, logger, containerd });
      await rt.create({ name: "wired", image: "host", cmd: ["sleep", "1000"], networks: [{ ref: "n9", cfg: {} }] });
      await rt.containerStart("wired");
      const name = "orphan";
      await rt.create({ name, image: "host", cmd: ["sh", "-c", "echo before; sleep 1000"], networks: [] });
      await rt.containerStart(name);
      // Created, not started: its task made ahead of the start is in containerd when the daemon dies.
      const later = await rt.create({ name: "later", image: "host", cmd: ["sh", "-c", "echo later; sleep 1000"], networks: [] });
      const tasks = new TaskClient(containerd, logger);
      while ((await tasks.state(later)).state === "absent") await new Promise((r) => setTimeout(r, 20));
      console.log(JSON.stringify((await rt.containerInspect(name)).State));
      setInterval(() => {}, 1000);
    `;
    const scriptFile = join(out, "daemon.mjs");
    await writeFile(scriptFile, script);
    const d = spawn(process.execPath, [scriptFile], { stdio: ["ignore", "pipe", "pipe"] });
    const line = await new Promise<string>((ok, fail) => {
      let buf = "";
      const onData = (b: Buffer): void => {
        buf += b.toString();
        const m = /^\{.*\}$/m.exec(buf);
        if (m) ok(m[0]);
      };
      d.stdout.on("data", onData);
      d.stderr.on("data", onData);
      d.once("exit", (code) => fail(new Error(`the first daemon exited (${code}): ${buf}`)));
    });
    const state = JSON.parse(line) as { Pid: number; Running: boolean };
    expect(state.Running).toBe(true);
    d.kill("SIGKILL");
    await new Promise((ok) => d.once("exit", ok));
    await new Promise((r) => setTimeout(r, 200));
    // containerd keeps it running without a daemon.
    expect(await pidAlive(state.Pid)).toBe(true);

    const again = new VethAttacher();
    const rt2 = await ContainerRuntime.open({ execRoot, stateDir, attacher: again, logger, containerd: cd.containerd });
    expect((await rt2.containerInspect("orphan")).State).toMatchObject({
      Status: "running",
      Running: true,
      Pid: state.Pid,
    });
    // A container on a network is not taken over (the node's networking rebuilds its overlays): stopped, its
    // endpoint released.
    expect((await rt2.containerInspect("wired")).State).toMatchObject({
      Status: "exited",
      Running: false,
      ExitCode: 137,
    });
    expect(again.calls).toEqual(["detach wired n9"]);
    expect(await logsOf(rt2, "orphan")).toBe("before\n");
    // The adopted container is followed: a stop ends it, its exit is seen.
    expect(await rt2.containerStop("orphan", { timeout: 1 })).toBe(true);
    expect(await pidAlive(state.Pid)).toBe(false);
    expect((await rt2.containerInspect("orphan")).State).toMatchObject({
      Status: "exited",
      Running: false,
      ExitCode: 137,
    });
    expect(await rt2.containerNetnsFiles()).toEqual([]);
    // The container only created stays so; its task made ahead is deleted, and its start makes it again.
    const later = (await rt2.containerInspect("later")).Id;
    expect((await rt2.containerInspect("later")).State).toMatchObject({ Status: "created", Running: false, Pid: 0 });
    expect(await new TaskClient(cd.containerd, logger).containerIds()).not.toContain(later);
    expect(await rt2.containerStart("later")).toBe(true);
    await until(async () => (await logsOf(rt2, "later")) === "later\n");
    await rt2.containerRemove("later", { force: true });
    expect(await rt2.containerNetnsFiles()).toEqual([]);
    await rt2.containerRemove("wired", { force: false });
    await rt2.containerRemove("orphan", { force: false });
    expect(await containerDirs(stateDir)).toEqual([]);
  });
});
