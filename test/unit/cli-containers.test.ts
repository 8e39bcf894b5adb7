// The shoal CLI's network and container commands, run as child processes. First against a stand-in daemon
// with canned answers, side by side with the real docker CLI: shoal must send the same requests and print
// the same output (with "shoal" for "docker"). Then against the real Engine API server with the real
// container runtime (root only): the whole life of a container through shoal.

import { execFile, spawn, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import http from "node:http";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import type { Duplex } from "node:stream";
import { fileURLToPath } from "node:url";
import pino from "pino";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { EngineServer } from "../../src/engine/server.js";
import type { SwarmBackend, SwarmInfo } from "../../src/engine/types.js";
import { ContainerRuntime } from "../../src/runtime/runtime.js";
import { CAN_RUN_CONTAINERS, TestNetworkBackend, testContainerd, VethAttacher } from "./runtime-fixtures.js";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const DOCKER = "/usr/local/bin/docker";
const HAS_DOCKER = existsSync(DOCKER);
/** The CLI is compiled on its own for this file (cli.test.ts builds dist/ at the same time). */
// node_modules/.cache does not exist in a fresh clone after npm ci.
mkdirSync(join(ROOT, "node_modules/.cache"), { recursive: true });
const BUILD = mkdtempSync(join(ROOT, "node_modules/.cache/shoal-cli-containers-"));
const MAIN = join(BUILD, "cli/main.js");
const scratch = mkdtempSync(join(tmpdir(), "shoal-cli-ctr-env-"));

// ---- canned objects --------------------------------------------------------------------------------------

const NOW = Math.floor(Date.now() / 1000);
const C1 = "4a5b6c7d8e9f00112233445566778899aabbccddeeff00112233445566778899";
const C2 = "9f8e7d6c5b4a00112233445566778899aabbccddeeff00112233445566778899";
const N1 = "7obl3n1z5vzk9j6zx8xu3irsd";
const N2 = "cvh3xki82cci0000000000000";
const EXEC = "e".repeat(64);

function network(id: string, name: string, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    Name: name,
    Id: id,
    Created: "2025-08-05T15:12:11.082630937Z",
    Scope: "swarm",
    Driver: "overlay",
    EnableIPv4: true,
    EnableIPv6: false,
    IPAM: { Driver: "default", Options: null, Config: [{ Subnet: "10.0.0.0/24", Gateway: "10.0.0.1" }] },
    Internal: false,
    Attachable: true,
    Ingress: false,
    ConfigFrom: { Network: "" },
    ConfigOnly: false,
    Containers: {
      [C1]: {
        Name: "c1",
        EndpointID: "250b18",
        MacAddress: "02:42:0a:00:00:02",
        IPv4Address: "10.0.0.2/24",
        IPv6Address: "",
      },
    },
    Options: { "com.example.vxlanid_list": "4097", encrypted: "" },
    Labels: { tier: "<front>&back" },
    Peers: [{ Name: "node1-54941c69b81a", IP: "192.0.2.1" }],
    ...extra,
  };
}

function cannedNetworks(): Record<string, unknown>[] {
  return [network(N2, "node10-net"), network(N1, "node2-net", { Labels: {}, Containers: {} })];
}

function summary(id: string, name: string, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    Id: id,
    Names: [`/${name}`],
    Image: "host",
    ImageID: "",
    Command: "sh -c 'while true; do sleep 1; done'",
    Created: NOW - 3 * 3600 - 120,
    Ports: [],
    // (one of each: docker prints maps in Go's random iteration order)
    Labels: { a: "<1>" },
    State: "running",
    Status: "Up 3 hours",
    HostConfig: { NetworkMode: "node2-net" },
    NetworkSettings: { Networks: { "node2-net": {} } },
    Mounts: [],
    ...extra,
  };
}

function cannedContainers(): Record<string, unknown>[] {
  return [
    summary(C1, "c1"),
    summary(C2, "c2", { State: "exited", Status: "Exited (137) 2 hours ago", Command: "sleep 100", Labels: {} }),
  ];
}

function inspectOf(id: string, name: string): Record<string, unknown> {
  return {
    Id: id,
    Created: "2025-08-05T15:12:11.082630937Z",
    Path: "sleep",
    Args: ["100"],
    State: { Status: "running", Running: true, Pid: 42, ExitCode: 0, Error: "", StartedAt: "2025-08-05T15:12:11Z" },
    Name: `/${name}`,
    Config: { Hostname: id.slice(0, 12), Tty: false, Env: ["PATH=/usr/bin"], Labels: { x: "y" } },
    HostConfig: { NetworkMode: "node2-net" },
    NetworkSettings: { Networks: { "node2-net": { IPAddress: "10.0.0.2" } } },
  };
}

function frame(stream: number, text: string): Buffer {
  const data = Buffer.from(text);
  const h = Buffer.alloc(8);
  h[0] = stream;
  h.writeUInt32BE(data.length, 4);
  return Buffer.concat([h, data]);
}

// ---- the stand-in daemon ----------------------------------------------------------------------------------

interface Recorded {
  method: string;
  url: string;
  path: string;
  body: string;
  contentType: string | undefined;
  upgrade: boolean;
}

class FakeEngine {
  readonly dir = mkdtempSync(join(scratch, "engine-"));
  readonly socket = join(this.dir, "d.sock");
  readonly host = `unix://${this.socket}`;
  requests: Recorded[] = [];
  /** What POST /networks/prune reports. */
  pruned: string[] | null = ["node2-net", "node10-net"];
  private started = new Set<string>();
  private waiters: (() => void)[] = [];
  private server = http.createServer((req, res) => this.handle(req, res));

  private sockets = new Set<Duplex>();

  constructor() {
    this.server.on("upgrade", (req: http.IncomingMessage, socket: Duplex, head: Buffer) => {
      this.sockets.add(socket);
      socket.once("close", () => this.sockets.delete(socket));
      this.hijacked(req, socket, head);
    });
  }
  start(): Promise<void> {
    return new Promise((ok) => this.server.listen(this.socket, ok));
  }
  stop(): Promise<void> {
    this.server.closeAllConnections();
    for (const s of this.sockets) s.destroy();
    return new Promise((ok) => this.server.close(() => ok()));
  }
  reset(): void {
    this.requests = [];
    this.pruned = ["node2-net", "node10-net"];
    this.started.clear();
  }
  private record(req: http.IncomingMessage, body: string, upgrade: boolean): Recorded {
    const url = new URL(req.url ?? "/", "http://daemon");
    const rec: Recorded = {
      method: req.method ?? "",
      url: req.url ?? "",
      path: url.pathname.replace(/^\/v\d+\.\d+/, ""),
      body,
      contentType: req.headers["content-type"],
      upgrade,
    };
    this.requests.push(rec);
    return rec;
  }

  private hijacked(req: http.IncomingMessage, socket: Duplex, head: Buffer): void {
    const length = Number(req.headers["content-length"] ?? 0);
    const body = head.subarray(0, length).toString();
    const rec = this.record(req, body, true);
    socket.on("error", () => undefined);
    socket.write(
      "HTTP/1.1 101 UPGRADED\r\nContent-Type: application/vnd.docker.multiplexed-stream\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n",
    );
    if (rec.path.endsWith("/attach")) {
      // The container's output, once it has been started.
      const send = (): void => {
        socket.end(Buffer.concat([frame(1, "attached out\n"), frame(2, "attached err\n")]));
      };
      this.waiters.push(send);
      return;
    }
    socket.end(Buffer.concat([frame(1, "exec out\n"), frame(2, "exec err\n")]));
  }

  private handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    let body = "";
    req.on("data", (c: Buffer) => {
      body += c.toString();
    });
    req.on("end", () => {
      const r = this.record(req, body, false);
      const p = r.path;
      const send = (status: number, value?: unknown): void => {
        res.writeHead(status, value === undefined ? {} : { "Content-Type": "application/json" });
        res.end(value === undefined ? undefined : JSON.stringify(value));
      };
      if (p === "/_ping") {
        res.writeHead(200, { "Api-Version": "1.50", "Content-Type": "text/plain; charset=utf-8" });
        res.end(req.method === "HEAD" ? undefined : "OK");
        return;
      }
      const nets = cannedNetworks();
      const findNet = (ref: string) => nets.find((n) => n.Name === ref || String(n.Id).startsWith(ref));
      const ctrs = cannedContainers();
      const findCtr = (ref: string) =>
        ctrs.find((c) => (c.Names as string[])[0] === `/${ref}` || String(c.Id).startsWith(ref));
      let m: RegExpExecArray | null;
      if (p === "/networks" && r.method === "GET") return send(200, nets);
      if (p === "/networks/create") return send(201, { Id: N1, Warning: "" });
      if (p === "/networks/prune") return send(200, { NetworksDeleted: this.pruned });
      if ((m = /^\/networks\/([^/]+)$/.exec(p))) {
        const n = findNet(decodeURIComponent(m[1]!));
        if (!n) return send(404, { message: `network ${decodeURIComponent(m[1]!)} not found` });
        return r.method === "DELETE" ? send(204) : send(200, n);
      }
      if (/^\/networks\/[^/]+\/(connect|disconnect)$/.test(p)) {
        const c = JSON.parse(body) as { Container: string };
        if (!findCtr(c.Container)) return send(404, { message: `No such container: ${c.Container}` });
        return send(200);
      }
      if (p === "/containers/json") return send(200, ctrs);
      if (p === "/containers/create") {
        const image = (JSON.parse(body) as { Image: string }).Image;
        if (image !== "host") {
          return send(400, {
            message: `image "${image}" is not available: shoal runs containers on the host's file system; use the image name "host"`,
          });
        }
        return send(201, { Id: C1, Warnings: [] });
      }
      if ((m = /^\/containers\/([^/]+)\/wait$/.exec(p))) {
        res.writeHead(200, { "Content-Type": "application/json" });
        res.flushHeaders();
        const done = (): void => void setTimeout(() => res.end('{"StatusCode":3}\n'), 50);
        if (this.started.has(m[1]!)) done();
        else this.waiters.push(done);
        return;
      }
      if ((m = /^\/containers\/([^/]+)\/start$/.exec(p))) {
        const c = findCtr(m[1]!);
        if (!c) return send(404, { message: `No such container: ${m[1]}` });
        this.started.add(m[1]!);
        for (const w of this.waiters.splice(0)) w();
        return send(204);
      }
      if ((m = /^\/containers\/([^/]+)\/json$/.exec(p))) {
        const c = findCtr(m[1]!);
        if (!c) return send(404, { message: `No such container: ${m[1]}` });
        return send(200, inspectOf(String(c.Id), (c.Names as string[])[0]!.slice(1)));
      }
      if ((m = /^\/containers\/([^/]+)\/logs$/.exec(p))) {
        res.writeHead(200, { "Content-Type": "application/vnd.docker.multiplexed-stream" });
        res.end(Buffer.concat([frame(1, "line 1\n"), frame(2, "warning\n"), frame(1, "line 2\n")]));
        return;
      }
      if ((m = /^\/containers\/([^/]+)\/exec$/.exec(p))) {
        if (!findCtr(m[1]!)) return send(404, { message: `No such container: ${m[1]}` });
        return send(201, { Id: EXEC });
      }
      if (p === `/exec/${EXEC}/start`) return send(200);
      if (p === `/exec/${EXEC}/json`) return send(200, { ID: EXEC, Running: false, ExitCode: 3 });
      if ((m = /^\/containers\/([^/]+)(\/stop|\/kill)?$/.exec(p))) {
        if (!findCtr(decodeURIComponent(m[1]!))) return send(404, { message: `No such container: ${m[1]}` });
        return send(204);
      }
      send(404, { message: "page not found" });
    });
  }
}

// ---- running the CLIs -------------------------------------------------------------------------------------

interface Result {
  code: number;
  stdout: string;
  stderr: string;
}

function cleanEnv(host: string): NodeJS.ProcessEnv {
  return {
    PATH: process.env.PATH ?? "/usr/bin:/bin",
    HOME: scratch,
    DOCKER_CONFIG: scratch,
    TZ: "UTC",
    DOCKER_HOST: host,
  };
}

function run(file: string, args: string[], env: NodeJS.ProcessEnv, stdin?: string): Promise<Result> {
  return new Promise((ok) => {
    const child = execFile(file, args, { env, encoding: "utf8", timeout: 30_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === "number" ? err.code : 1) : 0;
      ok({ code, stdout, stderr });
    });
    child.stdin!.end(stdin);
  });
}

let host = "";

function shoal(...args: string[]): Promise<Result> {
  return run(process.execPath, [MAIN, ...args], cleanEnv(host));
}
function shoalIn(stdin: string, ...args: string[]): Promise<Result> {
  return run(process.execPath, [MAIN, ...args], cleanEnv(host), stdin);
}
async function docker(...args: string[]): Promise<Result> {
  const r = await dockerRaw(...args);
  const s = (t: string): string => t.replace(/docker/g, "shoal").replace(/Docker/g, "shoal");
  return { code: r.code, stdout: s(r.stdout), stderr: s(r.stderr) };
}

async function dockerIn(stdin: string, ...args: string[]): Promise<Result> {
  const r = await run(DOCKER, args, cleanEnv(host), stdin);
  const s = (t: string): string => t.replace(/docker/g, "shoal").replace(/Docker/g, "shoal");
  return { code: r.code, stdout: s(r.stdout), stderr: s(r.stderr) };
}

/** docker ARGS, its output as it is. */
function dockerRaw(...args: string[]): Promise<Result> {
  return run(DOCKER, args, cleanEnv(host));
}

const wire = (r: Recorded): string =>
  `${r.method} ${r.url} ${r.contentType ?? ""} ${r.upgrade ? "upgrade " : ""}${r.body}`;

beforeAll(() => {
  const tsc = spawnSync(
    process.execPath,
    [
      join(ROOT, "node_modules/typescript/bin/tsc"),
      "--outDir",
      BUILD,
      "--rootDir",
      ROOT,
      "--module",
      "nodenext",
      "--moduleResolution",
      "nodenext",
      "--target",
      "es2022",
      "--skipLibCheck",
      "--types",
      "node",
      join(ROOT, "cli/main.ts"),
    ],
    { cwd: ROOT, encoding: "utf8" },
  );
  if (!existsSync(MAIN)) throw new Error(`build failed:\n${tsc.stdout}${tsc.stderr}`);
}, 120_000);

afterAll(() => {
  rmSync(BUILD, { recursive: true, force: true });
  rmSync(scratch, { recursive: true, force: true });
});

// ---- against the stand-in ---------------------------------------------------------------------------------

describe("shoal network and container commands against a stand-in daemon", () => {
  let fake: FakeEngine;
  beforeAll(async () => {
    fake = new FakeEngine();
    await fake.start();
    host = fake.host;
  });
  afterAll(async () => {
    await fake.stop();
    rmSync(fake.dir, { recursive: true, force: true });
  });
  beforeEach(() => {
    host = fake.host;
    fake.reset();
  });

  it("network ls: docker's table, sorted by name, 12-character ids", async () => {
    const r = await shoal("network", "ls");
    expect(r).toEqual({
      code: 0,
      stdout: [
        "NETWORK ID     NAME         DRIVER    SCOPE",
        `${N1.slice(0, 12)}   node2-net    overlay   swarm`,
        `${N2.slice(0, 12)}   node10-net   overlay   swarm`,
        "",
      ].join("\n"),
      stderr: "",
    });
  });

  it("network create sends docker's request and prints the id", async () => {
    const r = await shoal(
      "network",
      "create",
      "--attachable",
      "--subnet",
      "10.9.0.0/24",
      "--gateway",
      "10.9.0.1",
      "--internal",
      "--opt",
      "encrypted",
      "-o",
      "com.docker.network.driver.mtu=1400",
      "--label",
      "k=v",
      "n9",
    );
    expect(r).toEqual({ code: 0, stdout: `${N1}\n`, stderr: "" });
    expect(JSON.parse(fake.requests.at(-1)!.body)).toEqual({
      Driver: "overlay",
      Scope: "",
      IPAM: { Driver: "default", Options: {}, Config: [{ Subnet: "10.9.0.0/24", Gateway: "10.9.0.1" }] },
      Internal: true,
      Attachable: true,
      Ingress: false,
      ConfigOnly: false,
      ConfigFrom: null,
      Options: { "com.docker.network.driver.mtu": "1400", encrypted: "" },
      Labels: { k: "v" },
      Name: "n9",
    });
  });

  it("run -d prints the full id; exec returns the command's exit code", async () => {
    let r = await shoal("run", "-d", "--name", "c1", "--network", "n1", "host", "sleep", "100");
    expect(r).toEqual({ code: 0, stdout: `${C1}\n`, stderr: "" });
    expect(fake.requests.filter((q) => q.path !== "/_ping").map((q) => `${q.method} ${q.url}`)).toEqual([
      "POST /v1.50/containers/create?name=c1",
      `POST /v1.50/containers/${C1}/wait?condition=next-exit`,
      `POST /v1.50/containers/${C1}/start`,
    ]);
    const create = JSON.parse(fake.requests.find((q) => q.path === "/containers/create")!.body);
    expect(create).toMatchObject({ Image: "host", Cmd: ["sleep", "100"], HostConfig: { NetworkMode: "n1" } });
    r = await shoal("exec", "c1", "hostname");
    expect(r).toEqual({ code: 3, stdout: "exec out\n", stderr: "exec err\n" });
  });

  it.skipIf(!HAS_DOCKER)(
    "network prune asks first, as docker does; with nothing pruned it prints nothing",
    async () => {
      for (const [answer, pruned] of [
        ["y\n", ["node2-net"]],
        ["Y\n", null],
        ["n\n", ["node2-net"]],
        ["", ["node2-net"]],
      ] as const) {
        fake.reset();
        fake.pruned = pruned === null ? null : [...pruned];
        const theirs = await dockerIn(answer, "network", "prune");
        const theirRequests = fake.requests.map(wire);
        expect(theirs.stdout).toContain("Are you sure you want to continue? [y/N] ");
        fake.reset();
        fake.pruned = pruned === null ? null : [...pruned];
        const ours = await shoalIn(answer, "network", "prune");
        expect(ours).toEqual(theirs);
        expect(fake.requests.map(wire)).toEqual(theirRequests);
      }
    },
  );

  it.skipIf(!HAS_DOCKER)("network prune's usage errors: the same words and exit codes as docker's", async () => {
    for (const args of [
      ["network", "prune", "--filter", "nonsense"],
      ["network", "prune", "extra"],
    ]) {
      const theirs = await docker(...args);
      expect(theirs.code).not.toBe(0);
      expect(await shoal(...args)).toEqual(theirs);
    }
  });

  const commands: string[][] = [
    ["network", "ls"],
    ["network", "ls", "-q"],
    ["network", "ls", "--no-trunc"],
    ["network", "ls", "--format", "json"],
    ["network", "ls", "--format", "table {{.Name}}\\t{{.Labels}}\\t{{.CreatedAt}}\\t{{.Internal}}"],
    ["network", "ls", "-f", "driver=overlay", "-f", "name=node"],
    ["network", "inspect", "node2-net", "ghost", "node10-net"],
    ["network", "inspect", "-f", "{{.Name}} {{.Driver}} {{json .Labels}}", "node10-net"],
    ["network", "inspect", "--format", "json", "node10-net"],
    [
      "network",
      "create",
      "-d",
      "overlay",
      "--attachable",
      "--subnet",
      "10.9.0.0/24",
      "--ip-range",
      "10.9.0.128/25",
      "--gateway",
      "10.9.0.1",
      "--internal",
      "--opt",
      "encrypted",
      "-o",
      "com.docker.network.driver.mtu=1400",
      "--label",
      "k=v",
      "--label",
      "a",
      "n9",
    ],
    ["network", "create", "-d", "overlay", "--gateway", "10.9.0.1", "n9"],
    ["network", "create", "-d", "overlay", "--subnet", "10.9.0.0/24", "--gateway", "10.8.0.1", "n9"],
    ["network", "rm", "node2-net", "ghost", "node10-net"],
    ["network", "rm", "-f", "ghost"],
    ["network", "prune", "-f"],
    ["network", "prune", "-f", "--filter", "until=24h", "--filter", "label=k=v", "--filter", "label!=tier"],
    ["network", "connect", "--ip", "10.0.0.9", "--alias", "a1", "--alias", "a2", "node2-net", "c1"],
    ["network", "connect", "node2-net", "c1"],
    ["network", "connect", "node2-net", "ghost"],
    ["network", "disconnect", "-f", "node2-net", "c1"],
    ["network", "disconnect", "node2-net", "c1"],
    [
      "run",
      "-d",
      "--name",
      "c9",
      "--network",
      "n1",
      "--ip",
      "10.9.0.7",
      "--network-alias",
      "x1",
      "host",
      "sleep",
      "100",
    ],
    [
      "run",
      "-d",
      "-e",
      "A=B",
      "-w",
      "/tmp",
      "-h",
      "h1",
      "-l",
      "k=v",
      "-l",
      "z",
      "--rm",
      "--entrypoint",
      "sh",
      "host",
      "-c",
      "x",
    ],
    ["run", "-d", "--stop-signal", "SIGINT", "--stop-timeout", "5", "-i", "host", "cat"],
    ["run", "-d", "alpine"],
    ["run", "host", "echo", "hi"],
    ["run", "--rm", "host", "echo", "hi"],
    ["ps"],
    ["ps", "-a", "--no-trunc"],
    ["ps", "-q"],
    ["ps", "--format", "json"],
    ["ps", "--format", "table {{.Names}}\\t{{.Labels}}\\t{{.Networks}}\\t{{.State}}\\t{{.CreatedAt}}"],
    ["ps", "-n", "1", "-f", "status=running"],
    ["container", "ls", "-l"],
    ["exec", "c1", "hostname"],
    ["exec", "-e", "X=1", "-w", "/tmp", "c1", "sh", "-c", "echo $X"],
    ["exec", "-d", "c1", "sleep", "1"],
    ["exec", "ghost", "true"],
    ["logs", "c1"],
    ["logs", "-n", "1", "-t", "--since", "1700000000", "c1"],
    ["logs", "ghost"],
    ["stop", "c1", "ghost", "c2"],
    ["stop", "-t", "3", "-s", "SIGINT", "c1"],
    ["rm", "c1", "ghost"],
    ["rm", "-f", "-v", "ghost", "c2"],
    ["kill", "-s", "HUP", "c1"],
    ["start", "c1", "ghost"],
    ["container", "inspect", "c1", "ghost"],
    ["container", "inspect", "-f", "{{.Name}} {{.State.Pid}} {{json .Config.Labels}}", "c1"],
    ["inspect", "c1", "node2-net"],
  ];
  /** Refused by the CLI before any request. */
  const local = (args: string[]): boolean =>
    args.includes("--gateway") && (!args.includes("--subnet") || args.includes("10.8.0.1"));
  /**
   * docker stops and removes containers in parallel: the order of those requests is not fixed. For exec,
   * the stand-in records the hijacked start when the upgrade completes, which a loaded machine can let the
   * next request overtake: the same requests, recorded in either order.
   */
  const parallel = (args: string[]): boolean => ["stop", "rm", "kill", "start", "exec"].includes(args[0]!);
  for (const args of commands) {
    it.skipIf(!HAS_DOCKER)(
      `${args.join(" ")}: same output, exit code and requests as docker`,
      // exec's hijacked stream makes the stand-in's capture timing-dependent on a loaded machine (seen in
      // full-suite runs, not reproduced alone): exec gets reruns, with the same assertions.
      { retry: args[0] === "exec" ? 2 : 0 },
      async () => {
        const theirs = await docker(...args);
        const theirRequests = fake.requests.map(wire);
        if (parallel(args)) theirRequests.sort();
        // (guards against a vacuous pass: docker must have talked to the stand-in)
        if (!local(args)) expect(theirRequests.filter((q) => !q.includes("/_ping")).length).toBeGreaterThan(0);
        fake.reset();
        const ours = await shoal(...args);
        expect(ours).toEqual(theirs);
        const ourRequests = fake.requests.map(wire);
        if (parallel(args)) ourRequests.sort();
        expect(ourRequests).toEqual(theirRequests);
      },
    );
  }
});

// ---- against the real engine and runtime -------------------------------------------------------------------

const swarm = {
  hostname: () => "testhost",
  async swarmInfo(): Promise<SwarmInfo> {
    return {
      NodeID: "",
      NodeAddr: "",
      LocalNodeState: "inactive",
      ControlAvailable: false,
      Error: "",
      RemoteManagers: null,
    };
  },
} as unknown as SwarmBackend;

describe.skipIf(!CAN_RUN_CONTAINERS)("shoal with the real engine and container runtime", () => {
  let cdDir: string;
  let cd: Awaited<ReturnType<typeof testContainerd>>;

  beforeAll(async () => {
    cdDir = mkdtempSync(join(tmpdir(), "shoal-containerd-"));
    cd = await testContainerd(cdDir);
  });

  afterAll(async () => {
    await cd?.stop();
    rmSync(cdDir, { recursive: true, force: true });
  });

  let dir: string;
  let server: EngineServer;
  let runtime: ContainerRuntime;
  let attacher: VethAttacher;
  let paths: string[];

  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), "shoal-cli-real-"));
    attacher = new VethAttacher();
    attacher.strict = true;
    const networks = new TestNetworkBackend(attacher);
    runtime = await ContainerRuntime.open({
      execRoot: join(dir, "run"),
      containerd: cd.containerd,
      stateDir: join(dir, "containers"),
      attacher,
      logger: pino({ level: "silent" }),
    });
    networks.containers = runtime;
    paths = [];
    const logger = pino(
      { level: "debug" },
      {
        write: (line: string) => {
          const l = JSON.parse(line) as { msg: string; method?: string; path?: string };
          if (l.msg === "request" || l.msg === "upgrade request") paths.push(`${l.method} ${l.path}`);
        },
      },
    );
    server = await EngineServer.listen({
      socketPath: join(dir, "shoald.sock"),
      backend: swarm,
      logger,
      networks,
      containers: runtime,
      images: runtime.imageService,
    });
    host = `unix://${join(dir, "shoald.sock")}`;
  });

  afterEach(async () => {
    for (const c of await runtime.containerList({ all: true, filters: {} }))
      await runtime.containerRemove(c.Id, { force: true }).catch(() => undefined);
    const leaked = await runtime.containerNetnsFiles();
    // The namespaces made for containers to come (the runtime's, not a leak) go with it.
    await runtime.dropAhead();
    await server.close();
    rmSync(dir, { recursive: true, force: true });
    expect(leaked).toEqual([]);
    expect(attacher.attachedCount).toBe(0);
  });

  it("network create, ls, inspect; run -d, ps, exec, logs, stop, rm; network rm", async () => {
    let r = await shoal("network", "create", "-d", "overlay", "--attachable", "n1");
    expect(r.code).toBe(0);
    const netId = r.stdout.trim();
    r = await shoal("network", "ls");
    expect(r.stdout).toBe(
      `NETWORK ID     NAME      DRIVER    SCOPE\n${netId.slice(0, 12)}   n1        overlay   swarm\n`,
    );
    r = await shoal("network", "inspect", "n1");
    expect(JSON.parse(r.stdout)).toMatchObject([{ Name: "n1", Id: netId, Attachable: true, Driver: "overlay" }]);
    if (HAS_DOCKER) expect(r).toEqual(await dockerRaw("network", "inspect", "n1"));

    r = await shoal(
      "run",
      "-d",
      "--name",
      "c1",
      "--network",
      "n1",
      "--network-alias",
      "web",
      "host",
      "sh",
      "-c",
      "echo started; exec sleep 100",
    );
    expect(r.code).toBe(0);
    const id = r.stdout.trim();
    expect(id).toMatch(/^[0-9a-f]{64}$/);
    r = await shoal("ps");
    expect(r.stdout).toMatch(
      new RegExp(
        `^CONTAINER ID   IMAGE     COMMAND                  CREATED +STATUS +PORTS     NAMES\n${id.slice(0, 12)}   host      "sh -c 'echo started…"   .* ago +Up .* +c1\n$`,
      ),
    );
    r = await shoal("exec", "c1", "hostname");
    expect(r).toEqual({ code: 0, stdout: `${id.slice(0, 12)}\n`, stderr: "" });
    r = await shoal("exec", "c1", "sh", "-c", "grep -c web /etc/hosts; cat /etc/resolv.conf >&2; exit 6");
    expect(r).toEqual({
      code: 6,
      stdout: "1\n",
      stderr: "nameserver 192.0.2.53\nsearch shoal.test\noptions ndots:0\n",
    });
    r = await shoalIn("line one\nline two\n", "exec", "-i", "c1", "wc", "-l");
    expect({ ...r, stdout: r.stdout.trim() }).toEqual({ code: 0, stdout: "2", stderr: "" });
    r = await shoal("logs", "c1");
    expect(r).toEqual({ code: 0, stdout: "started\n", stderr: "" });
    r = await shoal("stop", "-t", "1", "c1");
    expect(r).toEqual({ code: 0, stdout: "c1\n", stderr: "" });
    r = await shoal("ps", "-a", "--format", "{{.Names}} {{.Status}}");
    expect(r.stdout).toMatch(/^c1 Exited \(137\) .* ago\n$/);
    expect(await runtime.containerNetnsFiles()).toEqual([]);
    r = await shoal("rm", "c1");
    expect(r).toEqual({ code: 0, stdout: "c1\n", stderr: "" });
    r = await shoal("network", "rm", "n1");
    expect(r).toEqual({ code: 0, stdout: "n1\n", stderr: "" });
    r = await shoal("network", "ls", "-q");
    expect(r.stdout).toBe("");
  });

  it("run -d of an image that is not here: pulled first, in docker's words; a registry that is not there is an error and nothing is created", async () => {
    const r = await shoal("run", "-d", "127.0.0.1:1/alpine");
    expect(r.code).toBe(125);
    expect(r.stdout).toBe("");
    expect(r.stderr).toContain("Unable to find image '127.0.0.1:1/alpine:latest' locally\n");
    expect(r.stderr).toContain(
      'shoal: Error response from daemon: Get "http://127.0.0.1:1/v2/": connect ECONNREFUSED 127.0.0.1:1',
    );
    expect(paths.some((p) => p.startsWith("POST /v1.50/images/create"))).toBe(true);
    expect(await runtime.containerList({ all: true, filters: {} })).toEqual([]);
  });

  it("attached run: output by stream, the exit code, stdin with -i, --rm", async () => {
    let r = await shoal("run", "--name", "job", "host", "sh", "-c", "echo out; echo err >&2; exit 3");
    expect(r).toEqual({ code: 3, stdout: "out\n", stderr: "err\n" });
    r = await shoalIn("typed\n", "run", "-i", "--rm", "host", "sh", "-c", "cat; echo done");
    expect(r).toEqual({ code: 0, stdout: "typed\ndone\n", stderr: "" });
    expect((await runtime.containerList({ all: true, filters: {} })).map((c) => c.Names[0])).toEqual(["/job"]);
    r = await shoal("run", "host", "no-such-program");
    expect(r.code).toBe(127);
    expect(r.stderr).toContain('exec: "no-such-program": executable file not found in $PATH');
  });

  it("logs -f follows until the container exits", async () => {
    await shoal(
      "run",
      "-d",
      "--name",
      "ticker",
      "host",
      "sh",
      "-c",
      "for i in 1 2 3; do echo tick $i; sleep 0.2; done",
    );
    const child = spawn(process.execPath, [MAIN, "logs", "-f", "ticker"], { env: cleanEnv(host) });
    let out = "";
    child.stdout.on("data", (d: Buffer) => {
      out += d.toString();
    });
    const code = await new Promise<number | null>((ok) => child.once("exit", ok));
    expect(code).toBe(0);
    expect(out).toBe("tick 1\ntick 2\ntick 3\n");
  });
});
