// The shoal CLI, run as a child process (node dist/cli/main.js) against a stand-in daemon: a small HTTP
// server on a unix socket that answers the Engine API calls with canned Docker-shaped JSON and records the
// requests. It tests what the CLI sends and prints, not the daemon. Where the real docker CLI is installed,
// the same commands also run through it against the same stand-in, and shoal must send the same requests
// and print the same output (with "shoal" in place of "docker").

import { execFile, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import http from "node:http";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import type { Node, Swarm, SwarmInfo } from "../../src/engine/types.js";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const MAIN = join(ROOT, "dist/cli/main.js");
const DOCKER = "/usr/local/bin/docker";
const HAS_DOCKER = existsSync(DOCKER);

// ---- canned cluster ------------------------------------------------------------------------------------

const LEADER_ID = "9pq1x6wqb4v3jkn0wc5i2mkvb";
const REACH_ID = "3zc7h0d1l8r2t5y6u9i4o0pqa";
const WORKER_ID = "k2m4n6b8v0c1x3z5a7s9d2f4g";

const TLS = {
  TrustRoot: "-----BEGIN CERTIFICATE-----\nMIIBajCCARCgAwIBAgIUQ==\n-----END CERTIFICATE-----\n",
  CertIssuerSubject: "MBMxETAPBgNVBAMTCHN3YXJtLWNh",
  CertIssuerPublicKey: "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE",
};

function makeNode(id: string, hostname: string, extra: Partial<Node> = {}): Node {
  return {
    ID: id,
    Version: { Index: 12 },
    CreatedAt: "2025-01-02T03:04:05.123456789Z",
    UpdatedAt: "2025-01-02T03:04:06Z",
    Spec: { Labels: { zone: "a" }, Role: "worker", Availability: "active" },
    Description: {
      Hostname: hostname,
      Platform: { Architecture: "x86_64", OS: "linux" },
      Resources: { NanoCPUs: 4_000_000_000, MemoryBytes: 8_254_390_272 },
      Engine: {
        EngineVersion: "0.1.0",
        Plugins: [
          { Type: "Network", Name: "overlay" },
          { Type: "Log", Name: "json-file" },
        ],
      },
      TLSInfo: TLS,
    },
    Status: { State: "ready", Addr: "192.0.2.1" },
    ...extra,
  };
}

function cannedNodes(): Node[] {
  return [
    makeNode(LEADER_ID, "node10", {
      Version: { Index: 41 },
      Spec: { Labels: { zone: "a" }, Role: "manager", Availability: "active" },
      ManagerStatus: { Leader: true, Reachability: "reachable", Addr: "192.0.2.1:2377" },
    }),
    makeNode(REACH_ID, "node2", {
      Version: { Index: 42 },
      Spec: { Labels: {}, Role: "manager", Availability: "pause" },
      Status: { State: "ready", Addr: "192.0.2.2" },
      ManagerStatus: { Reachability: "unreachable", Addr: "192.0.2.2:2377" },
    }),
    makeNode(WORKER_ID, "node1", {
      Version: { Index: 43 },
      Spec: { Labels: { zone: "b", "disk<ssd>": "yes&no" }, Role: "worker", Availability: "drain" },
      Status: { State: "down", Message: "heartbeat failure", Addr: "192.0.2.3" },
    }),
  ];
}

const SWARM_SPEC: Swarm["Spec"] = {
  Name: "default",
  Labels: {},
  Orchestration: { TaskHistoryRetentionLimit: 5 },
  Raft: {
    SnapshotInterval: 10000,
    KeepOldSnapshots: 0,
    LogEntriesForSlowFollowers: 500,
    ElectionTick: 10,
    HeartbeatTick: 1,
  },
  Dispatcher: { HeartbeatPeriod: 5_000_000_000 },
  CAConfig: { NodeCertExpiry: 7_776_000_000_000_000 },
  TaskDefaults: {},
  EncryptionConfig: { AutoLockManagers: false },
};

function cannedSwarm(): Swarm {
  return {
    ID: "qo2dfdig9mmxqkawulggepdih",
    Version: { Index: 7 },
    CreatedAt: "2025-01-01T00:00:00Z",
    UpdatedAt: "2025-01-01T00:00:00Z",
    Spec: SWARM_SPEC,
    TLSInfo: TLS,
    RootRotationInProgress: false,
    DefaultAddrPool: ["10.0.0.0/8"],
    SubnetSize: 24,
    DataPathPort: 4789,
    JoinTokens: { Worker: "SWMTKN-1-0worker", Manager: "SWMTKN-1-0manager" },
  };
}

function cannedInfo(): { ID: string; Name: string; ServerVersion: string; OSType: string; Swarm: SwarmInfo } {
  const { JoinTokens: _tokens, ...cluster } = cannedSwarm();
  return {
    ID: "shoal-node10",
    Name: "node10",
    ServerVersion: "0.1.0",
    OSType: "linux",
    Swarm: {
      NodeID: LEADER_ID,
      NodeAddr: "192.0.2.1",
      LocalNodeState: "active",
      ControlAvailable: true,
      Error: "",
      RemoteManagers: [
        { NodeID: REACH_ID, Addr: "192.0.2.2:2377" },
        { NodeID: LEADER_ID, Addr: "192.0.2.1:2377" },
      ],
      Nodes: 3,
      Managers: 2,
      Cluster: cluster,
    },
  };
}

// ---- the stand-in daemon -------------------------------------------------------------------------------

interface Recorded {
  method: string;
  /** As sent, version prefix and query included. */
  url: string;
  /** Without the /vX.Y prefix and the query. */
  path: string;
  query: Record<string, string>;
  body: string;
  contentType: string | undefined;
}

interface Reply {
  status?: number;
  body?: unknown;
  /** A body sent as it is (for malformed answers). */
  raw?: string;
  contentType?: string;
}

type Handler = (req: Recorded) => Reply | undefined;

class FakeDaemon {
  readonly dir = mkdtempSync(join(tmpdir(), "shoal-cli-test-"));
  readonly socket = join(this.dir, "shoald.sock");
  readonly host = `unix://${this.socket}`;
  requests: Recorded[] = [];
  nodes: Node[] = cannedNodes();
  info = cannedInfo();
  swarm = cannedSwarm();
  apiVersion: string | undefined = "1.50";
  private overrides: Handler[] = [];
  private server = http.createServer((req, res) => this.handle(req, res));

  start(): Promise<void> {
    return new Promise((ok) => this.server.listen(this.socket, ok));
  }

  stop(): Promise<void> {
    return new Promise((ok) => this.server.close(() => ok()));
  }

  reset(): void {
    this.requests = [];
    this.nodes = cannedNodes();
    this.info = cannedInfo();
    this.swarm = cannedSwarm();
    this.apiVersion = "1.50";
    this.overrides = [];
  }

  /** Answer some requests differently (first matching override wins; undefined falls through). */
  override(h: Handler): void {
    this.overrides.push(h);
  }

  /** The recorded calls, without the pings. */
  calls(): Recorded[] {
    return this.requests.filter((r) => r.path !== "/_ping");
  }

  private findNode(ref: string): Node | undefined {
    return (
      this.nodes.find((n) => n.ID === ref || n.Description.Hostname === ref) ??
      this.nodes.find((n) => n.ID.startsWith(ref))
    );
  }

  private route(r: Recorded): Reply {
    for (const h of this.overrides) {
      const reply = h(r);
      if (reply) return reply;
    }
    const p = r.path;
    if (p === "/info") return { body: this.info };
    if (p === "/version") {
      return {
        body: {
          Platform: { Name: "shoal" },
          Version: "0.1.0",
          ApiVersion: "1.50",
          MinAPIVersion: "1.24",
          GitCommit: "c4fae39",
          GoVersion: "node-v20.19.0",
          Os: "linux",
          Arch: "amd64",
          KernelVersion: "6.1.0",
          BuildTime: "2025-05-30T12:07:27.000000000+00:00",
        },
      };
    }
    if (p === "/swarm" && r.method === "GET") return { body: this.swarm };
    if (p === "/swarm/init") return { body: LEADER_ID };
    if (p === "/swarm/join" || p === "/swarm/leave" || p === "/swarm/update") return { status: 200 };
    if (p === "/nodes" && r.method === "GET") return { body: this.nodes };
    const one = /^\/nodes\/([^/]+)$/.exec(p);
    if (one) {
      const ref = decodeURIComponent(one[1]!);
      const node = this.findNode(ref);
      if (!node) return { status: 404, body: { message: `node ${ref} not found` } };
      if (r.method === "DELETE") return { status: 200 };
      return { body: node };
    }
    if (/^\/nodes\/[^/]+\/update$/.test(p)) return { status: 200 };
    return { status: 404, body: { message: "page not found" } };
  }

  private handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    let body = "";
    req.on("data", (c: Buffer) => {
      body += c.toString("utf8");
    });
    req.on("end", () => {
      const url = new URL(req.url ?? "/", "http://daemon");
      const rec: Recorded = {
        method: req.method ?? "",
        url: req.url ?? "",
        path: url.pathname.replace(/^\/v\d+\.\d+/, ""),
        query: Object.fromEntries(url.searchParams),
        body,
        contentType: req.headers["content-type"],
      };
      this.requests.push(rec);
      if (rec.path === "/_ping") {
        const headers: Record<string, string> = {
          "Content-Type": "text/plain; charset=utf-8",
          Swarm: "active/manager",
        };
        if (this.apiVersion) headers["Api-Version"] = this.apiVersion;
        res.writeHead(200, headers);
        res.end(req.method === "HEAD" ? undefined : "OK");
        return;
      }
      const reply = this.route(rec);
      res.writeHead(reply.status ?? 200, { "Content-Type": reply.contentType ?? "application/json" });
      if (reply.raw !== undefined) res.end(reply.raw);
      else res.end(reply.body === undefined ? "" : JSON.stringify(reply.body));
    });
  }
}

// ---- running the CLIs ----------------------------------------------------------------------------------

interface Result {
  code: number;
  stdout: string;
  stderr: string;
}

const scratch = mkdtempSync(join(tmpdir(), "shoal-cli-env-"));

/** A clean environment: no SHOAL_HOST / DOCKER_HOST from the caller, docker's config in a scratch dir. */
function cleanEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  return { PATH: process.env.PATH ?? "/usr/bin:/bin", HOME: scratch, DOCKER_CONFIG: scratch, TZ: "UTC", ...extra };
}

function exec(file: string, args: string[], env: NodeJS.ProcessEnv): Promise<Result> {
  return new Promise((ok) => {
    execFile(file, args, { env, encoding: "utf8", timeout: 30_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === "number" ? err.code : 1) : 0;
      ok({ code, stdout, stderr });
    });
  });
}

let daemon: FakeDaemon;

/** shoal -H <stand-in> ARGS */
function shoal(...args: string[]): Promise<Result> {
  return exec(process.execPath, [MAIN, "-H", daemon.host, ...args], cleanEnv());
}

/** shoal ARGS with the given environment (no -H). */
function shoalEnv(env: Record<string, string>, ...args: string[]): Promise<Result> {
  return exec(process.execPath, [MAIN, ...args], cleanEnv(env));
}

/** docker ARGS against the stand-in, with "docker"/"Docker" turned into "shoal" in what it prints. */
async function docker(...args: string[]): Promise<Result> {
  const r = await exec(DOCKER, args, cleanEnv({ DOCKER_HOST: daemon.host }));
  const s = (t: string): string => t.replace(/docker/g, "shoal").replace(/Docker/g, "shoal");
  return { code: r.code, stdout: s(r.stdout), stderr: s(r.stderr) };
}

/** Only what matters of a request for comparing two clients. */
const wire = (r: Recorded): string => `${r.method} ${r.url} ${r.contentType ?? ""} ${r.body}`;

// ---- build once ----------------------------------------------------------------------------------------

beforeAll(async () => {
  // Others may have work in progress elsewhere in the tree: tsc still emits, so only errors in the CLI's
  // own files (or a missing output) fail this suite.
  const build = spawnSync("npm", ["run", "build", "--silent"], { cwd: ROOT, encoding: "utf8" });
  const output = `${build.stdout}\n${build.stderr}`;
  const ours = output.split("\n").filter((l) => /^(cli\/|test\/unit\/cli)/.test(l));
  if (ours.length > 0 || !existsSync(MAIN)) throw new Error(`build failed:\n${ours.join("\n") || output}`);
  daemon = new FakeDaemon();
  await daemon.start();
}, 120_000);

afterAll(async () => {
  await daemon?.stop();
  if (daemon) rmSync(daemon.dir, { recursive: true, force: true });
  rmSync(scratch, { recursive: true, force: true });
});

beforeEach(() => daemon.reset());

// ---- node ls -------------------------------------------------------------------------------------------

const NODE_LS = [
  "ID                            HOSTNAME   STATUS    AVAILABILITY   MANAGER STATUS   ENGINE VERSION",
  `${WORKER_ID}     node1      Down      Drain                           0.1.0`,
  `${REACH_ID}     node2      Ready     Pause          Unreachable      0.1.0`,
  `${LEADER_ID} *   node10     Ready     Active         Leader           0.1.0`,
  "",
].join("\n");

describe("shoal node ls", () => {
  it("prints docker's table: natural hostname order, * on this node, capitalised states", async () => {
    const r = await shoal("node", "ls");
    expect(r).toEqual({ code: 0, stdout: NODE_LS, stderr: "" });
    expect(daemon.requests.map((q) => `${q.method} ${q.url}`)).toEqual([
      "HEAD /_ping",
      "GET /v1.50/nodes",
      "GET /v1.50/info",
    ]);
  });

  it("widens the columns for long hostnames and prints only the header when there are no nodes", async () => {
    daemon.nodes = [makeNode(WORKER_ID, "a-rather-long-hostname.example")];
    let r = await shoal("node", "list");
    expect(r.stdout).toBe(
      [
        "ID                            HOSTNAME                         STATUS    AVAILABILITY   MANAGER STATUS   ENGINE VERSION",
        `${WORKER_ID}     a-rather-long-hostname.example   Ready     Active                          0.1.0`,
        "",
      ].join("\n"),
    );
    daemon.nodes = [];
    daemon.requests = [];
    r = await shoal("node", "ls");
    expect(r.stdout).toBe("ID        HOSTNAME   STATUS    AVAILABILITY   MANAGER STATUS   ENGINE VERSION\n");
    expect(daemon.calls().map((q) => q.path)).toEqual(["/nodes"]);
  });

  it("-q prints the ids only, without asking /info", async () => {
    const r = await shoal("node", "ls", "-q");
    expect(r.stdout).toBe(`${WORKER_ID}\n${REACH_ID}\n${LEADER_ID}\n`);
    expect(daemon.calls().map((q) => q.path)).toEqual(["/nodes"]);
  });

  it("sends filters as docker's JSON (sorted, name lower-cased)", async () => {
    await shoal("node", "ls", "-f", "role=manager", "--filter", "name=b", "-f", "name=a", "-f", " Node.Label = x=y");
    const call = daemon.calls()[0]!;
    expect(call.query.filters).toBe('{"name":{"a":true,"b":true},"node.label":{"x=y":true},"role":{"manager":true}}');
    expect(call.url).toBe(
      "/v1.50/nodes?filters=%7B%22name%22%3A%7B%22a%22%3Atrue%2C%22b%22%3Atrue%7D%2C%22node.label%22%3A%7B%22x%3Dy%22%3Atrue%7D%2C%22role%22%3A%7B%22manager%22%3Atrue%7D%7D",
    );
  });

  it("supports json and simple templates in --format", async () => {
    let r = await shoal("node", "ls", "--format", "{{.Hostname}}: {{.ManagerStatus}} {{.Self}}");
    expect(r.stdout).toBe("node1:  false\nnode2: Unreachable false\nnode10: Leader true\n");
    r = await shoal("node", "ls", "--format", "table {{.Hostname}}\\t{{.Status}}");
    expect(r.stdout).toBe("HOSTNAME   STATUS\nnode1      Down\nnode2      Ready\nnode10     Ready\n");
    r = await shoal("node", "ls", "--format", "json");
    expect(JSON.parse(r.stdout.split("\n")[2]!)).toEqual({
      Availability: "Active",
      EngineVersion: "0.1.0",
      Hostname: "node10",
      ID: LEADER_ID,
      ManagerStatus: "Leader",
      Self: true,
      Status: "Ready",
      TLSStatus: "Ready",
    });
    r = await shoal("node", "ls", "--format", "{{if .Self}}x{{end}}");
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("template parsing error");
  });
});

// ---- swarm init / join / join-token / leave ------------------------------------------------------------

describe("shoal swarm", () => {
  it("init sends docker's InitRequest and prints the join command", async () => {
    const r = await shoal("swarm", "init", "--advertise-addr", "192.0.2.1");
    expect(r.code).toBe(0);
    expect(r.stdout).toBe(
      `Swarm initialized: current node (${LEADER_ID}) is now a manager.\n\n` +
        "To add a worker to this swarm, run the following command:\n\n" +
        "    shoal swarm join --token SWMTKN-1-0worker 192.0.2.1:2377\n\n" +
        "To add a manager to this swarm, run 'shoal swarm join-token manager' and follow the instructions.\n",
    );
    const calls = daemon.calls();
    expect(calls.map((c) => `${c.method} ${c.url}`)).toEqual([
      "POST /v1.50/swarm/init",
      `GET /v1.50/nodes/${LEADER_ID}`,
      "GET /v1.50/swarm",
    ]);
    expect(calls[0]!.contentType).toBe("application/json");
    expect(calls[0]!.body).toBe(
      '{"ListenAddr":"0.0.0.0:2377","AdvertiseAddr":"192.0.2.1","DataPathAddr":"","DataPathPort":0,"ForceNewCluster":false,' +
        '"Spec":{"Labels":null,"Orchestration":{},"Raft":{"ElectionTick":0,"HeartbeatTick":0},"Dispatcher":{},"CAConfig":{},' +
        '"TaskDefaults":{},"EncryptionConfig":{"AutoLockManagers":false}},"AutoLockManagers":false,"Availability":"",' +
        '"DefaultAddrPool":[],"SubnetSize":24}\n',
    );
  });

  it("init passes every flag the way docker normalises it", async () => {
    await shoal(
      "swarm",
      "init",
      "--listen-addr",
      "192.0.2.1",
      "--data-path-addr",
      "192.0.2.1",
      "--data-path-port",
      "4790",
      "--default-addr-pool",
      "10.10.0.0/16",
      "--default-addr-pool",
      "10.20.3.4/16",
      "--default-addr-pool-mask-length",
      "26",
      "--force-new-cluster",
      "--availability",
      "DRAIN",
      "--task-history-limit",
      "0",
      "--dispatcher-heartbeat",
      "1m30s",
    );
    const body = JSON.parse(daemon.calls()[0]!.body) as Record<string, unknown>;
    expect(body).toMatchObject({
      ListenAddr: "192.0.2.1:2377",
      DataPathAddr: "192.0.2.1",
      DataPathPort: 4790,
      ForceNewCluster: true,
      Availability: "drain",
      DefaultAddrPool: ["10.10.0.0/16", "10.20.0.0/16"],
      SubnetSize: 26,
      Spec: { Orchestration: { TaskHistoryRetentionLimit: 0 }, Dispatcher: { HeartbeatPeriod: 90_000_000_000 } },
    });
  });

  it("init omits the join hint when the node has no manager status, and explains a missing address", async () => {
    daemon.nodes = [makeNode(LEADER_ID, "node10")];
    let r = await shoal("swarm", "init");
    expect(r.stdout).toBe(
      `Swarm initialized: current node (${LEADER_ID}) is now a manager.\n\n` +
        "To add a manager to this swarm, run 'shoal swarm join-token manager' and follow the instructions.\n",
    );
    daemon.override((q) =>
      q.path === "/swarm/init"
        ? {
            status: 400,
            body: { message: "could not choose an IP address to advertise since this system has multiple addresses" },
          }
        : undefined,
    );
    r = await shoal("swarm", "init");
    expect(r).toEqual({
      code: 1,
      stdout: "",
      stderr:
        "Error response from daemon: could not choose an IP address to advertise since this system has multiple addresses - specify one with --advertise-addr\n",
    });
  });

  it("init refuses a bad availability before sending anything", async () => {
    const r = await shoal("swarm", "init", "--availability", "sleepy");
    expect(r).toEqual({
      code: 1,
      stdout: "",
      stderr: 'invalid availability "sleepy", only active, pause and drain are supported\n',
    });
    expect(daemon.calls()).toEqual([]);
  });

  it("join sends docker's JoinRequest and tells worker from manager by /info", async () => {
    daemon.info.Swarm.ControlAvailable = false;
    let r = await shoal("swarm", "join", "--token", "SWMTKN-1-0worker", "192.0.2.1:2377");
    expect(r).toEqual({ code: 0, stdout: "This node joined a swarm as a worker.\n", stderr: "" });
    expect(daemon.calls().map((c) => `${c.method} ${c.path}`)).toEqual(["POST /swarm/join", "GET /info"]);
    expect(daemon.calls()[0]!.body).toBe(
      '{"ListenAddr":"0.0.0.0:2377","AdvertiseAddr":"","DataPathAddr":"","RemoteAddrs":["192.0.2.1:2377"],' +
        '"JoinToken":"SWMTKN-1-0worker","Availability":""}\n',
    );
    daemon.reset();
    r = await shoal(
      "swarm",
      "join",
      "--token",
      "SWMTKN-1-0manager",
      "--advertise-addr",
      "eth0",
      "--listen-addr",
      ":4000",
      "--data-path-addr",
      "198.51.100.7",
      "--availability",
      "pause",
      "192.0.2.1",
    );
    expect(r.stdout).toBe("This node joined a swarm as a manager.\n");
    expect(JSON.parse(daemon.calls()[0]!.body)).toEqual({
      ListenAddr: "0.0.0.0:4000",
      AdvertiseAddr: "eth0",
      DataPathAddr: "198.51.100.7",
      RemoteAddrs: ["192.0.2.1"],
      JoinToken: "SWMTKN-1-0manager",
      Availability: "pause",
    });
  });

  it("join-token prints the join command (worker or manager) or just the token", async () => {
    let r = await shoal("swarm", "join-token", "worker");
    expect(r.stdout).toBe(
      "To add a worker to this swarm, run the following command:\n\n    shoal swarm join --token SWMTKN-1-0worker 192.0.2.1:2377\n\n",
    );
    expect(daemon.calls().map((c) => c.path)).toEqual(["/swarm", "/info", `/nodes/${LEADER_ID}`, "/swarm"]);
    r = await shoal("swarm", "join-token", "manager");
    expect(r.stdout).toBe(
      "To add a manager to this swarm, run the following command:\n\n    shoal swarm join --token SWMTKN-1-0manager 192.0.2.1:2377\n\n",
    );
    daemon.requests = [];
    r = await shoal("swarm", "join-token", "-q", "manager");
    expect(r.stdout).toBe("SWMTKN-1-0manager\n");
    expect(daemon.calls().map((c) => c.path)).toEqual(["/swarm"]);
    r = await shoal("swarm", "join-token", "admin");
    expect(r).toEqual({ code: 1, stdout: "", stderr: "unknown role admin\n" });
  });

  it("join-token --rotate updates the swarm at the version it read, with the whole spec", async () => {
    daemon.override((q) => {
      if (q.path === "/swarm/update")
        daemon.swarm = { ...daemon.swarm, JoinTokens: { Worker: "SWMTKN-1-1new", Manager: "SWMTKN-1-0manager" } };
      return undefined;
    });
    let r = await shoal("swarm", "join-token", "--rotate", "worker");
    expect(r.stdout).toBe(
      "Successfully rotated worker join token.\n\n" +
        "To add a worker to this swarm, run the following command:\n\n    shoal swarm join --token SWMTKN-1-1new 192.0.2.1:2377\n\n",
    );
    const update = daemon.calls()[1]!;
    expect(`${update.method} ${update.url}`).toBe(
      "POST /v1.50/swarm/update?rotateManagerToken=false&rotateManagerUnlockKey=false&rotateWorkerToken=true&version=7",
    );
    expect(update.body).toBe(
      '{"Name":"default","Labels":{},"Orchestration":{"TaskHistoryRetentionLimit":5},"Raft":{"SnapshotInterval":10000,' +
        '"KeepOldSnapshots":0,"LogEntriesForSlowFollowers":500,"ElectionTick":10,"HeartbeatTick":1},' +
        '"Dispatcher":{"HeartbeatPeriod":5000000000},"CAConfig":{"NodeCertExpiry":7776000000000000},"TaskDefaults":{},' +
        '"EncryptionConfig":{"AutoLockManagers":false}}\n',
    );
    daemon.requests = [];
    r = await shoal("swarm", "join-token", "--rotate", "-q", "manager");
    expect(r.stdout).toBe("SWMTKN-1-0manager\n");
    expect(daemon.calls().map((c) => c.url)).toEqual([
      "/v1.50/swarm",
      "/v1.50/swarm/update?rotateManagerToken=true&rotateManagerUnlockKey=false&rotateWorkerToken=false&version=7",
      "/v1.50/swarm",
    ]);
  });

  it("join-token --rotate reports a stale version as docker does", async () => {
    daemon.override((q) =>
      q.path === "/swarm/update" ? { status: 500, body: { message: "update out of sequence" } } : undefined,
    );
    const r = await shoal("swarm", "join-token", "--rotate", "worker");
    expect(r).toEqual({ code: 1, stdout: "", stderr: "Error response from daemon: update out of sequence\n" });
  });

  it("leave posts /swarm/leave, with force=1 when forced", async () => {
    let r = await shoal("swarm", "leave");
    expect(r).toEqual({ code: 0, stdout: "Node left the swarm.\n", stderr: "" });
    expect(daemon.calls().map((c) => `${c.method} ${c.url}`)).toEqual(["POST /v1.50/swarm/leave"]);
    daemon.requests = [];
    r = await shoal("swarm", "leave", "-f");
    expect(daemon.calls().map((c) => `${c.method} ${c.url}`)).toEqual(["POST /v1.50/swarm/leave?force=1"]);
    daemon.requests = [];
    await shoal("swarm", "leave", "--force");
    expect(daemon.calls()[0]!.query).toEqual({ force: "1" });
  });

  it("leave prints the daemon's refusal and exits 1", async () => {
    const msg =
      "You are attempting to leave the swarm on a node that is participating as a manager. Use `--force` to suppress this message.";
    daemon.override((q) => (q.path === "/swarm/leave" ? { status: 503, body: { message: msg } } : undefined));
    const r = await shoal("swarm", "leave");
    expect(r).toEqual({ code: 1, stdout: "", stderr: `Error response from daemon: ${msg}\n` });
  });

  it("update merges the flags into the current spec; without flags it shows help", async () => {
    let r = await shoal("swarm", "update", "--snapshot-interval", "500", "--cert-expiry", "48h");
    expect(r.stdout).toBe("Swarm updated.\n");
    const update = daemon.calls()[1]!;
    expect(update.query).toEqual({
      rotateManagerToken: "false",
      rotateManagerUnlockKey: "false",
      rotateWorkerToken: "false",
      version: "7",
    });
    expect(JSON.parse(update.body)).toMatchObject({
      Raft: { SnapshotInterval: 500, KeepOldSnapshots: 0 },
      CAConfig: { NodeCertExpiry: 172_800_000_000_000 },
    });
    r = await shoal("swarm", "update");
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("Usage:  shoal swarm update [OPTIONS]");
  });
});

// ---- node promote / demote / update / rm / inspect -----------------------------------------------------

describe("shoal node changes", () => {
  it("promote reads each node and posts its whole spec with Role manager at the version it read", async () => {
    const r = await shoal("node", "promote", "node1");
    expect(r).toEqual({ code: 0, stdout: "Node node1 promoted to a manager in the swarm.\n", stderr: "" });
    const calls = daemon.calls();
    expect(calls.map((c) => `${c.method} ${c.url}`)).toEqual([
      "GET /v1.50/nodes/node1",
      `POST /v1.50/nodes/${WORKER_ID}/update?version=43`,
    ]);
    expect(calls[1]!.contentType).toBe("application/json");
    expect(calls[1]!.body).toBe(
      '{"Labels":{"disk\\u003cssd\\u003e":"yes\\u0026no","zone":"b"},"Role":"manager","Availability":"drain"}\n',
    );
  });

  it("promote of a manager says so and posts nothing; demote flips the role back", async () => {
    let r = await shoal("node", "promote", LEADER_ID, "node2");
    expect(r.stdout).toBe(`Node ${LEADER_ID} is already a manager.\nNode ${REACH_ID} is already a manager.\n`);
    expect(daemon.calls().filter((c) => c.method === "POST")).toEqual([]);
    daemon.requests = [];
    r = await shoal("node", "demote", "node2", "node1");
    expect(r.stdout).toBe(`Manager node2 demoted in the swarm.\nNode ${WORKER_ID} is already a worker.\n`);
    const post = daemon.calls().find((c) => c.method === "POST")!;
    expect(post.url).toBe(`/v1.50/nodes/${REACH_ID}/update?version=42`);
    expect(post.body).toBe('{"Labels":{},"Role":"worker","Availability":"pause"}\n');
  });

  it("promote stops at the first node it cannot find", async () => {
    const r = await shoal("node", "promote", "ghost", "node1");
    expect(r).toEqual({ code: 1, stdout: "", stderr: "Error response from daemon: node ghost not found\n" });
    expect(daemon.calls().map((c) => c.path)).toEqual(["/nodes/ghost"]);
  });

  it("update changes availability, role and labels and prints the reference", async () => {
    const r = await shoal(
      "node",
      "update",
      "--availability",
      "active",
      "--role",
      "manager",
      "--label-add",
      "rack=r1",
      "--label-add",
      "gpu",
      "--label-rm",
      "zone",
      "node1",
    );
    expect(r).toEqual({ code: 0, stdout: "node1\n", stderr: "" });
    const post = daemon.calls()[1]!;
    expect(post.url).toBe(`/v1.50/nodes/${WORKER_ID}/update?version=43`);
    expect(JSON.parse(post.body)).toEqual({
      Labels: { "disk<ssd>": "yes&no", gpu: "", rack: "r1" },
      Role: "manager",
      Availability: "active",
    });
  });

  it("update refuses to remove a label the node does not have", async () => {
    const r = await shoal("node", "update", "--label-rm", "nope", "node1");
    expect(r).toEqual({ code: 1, stdout: "", stderr: "key nope doesn't exist in node's labels\n" });
    expect(daemon.calls().filter((c) => c.method === "POST")).toEqual([]);
  });

  it("rm deletes each node, prints the ones removed and the errors at the end", async () => {
    const r = await shoal("node", "rm", "--force", "node1", "ghost", "node2");
    expect(r).toEqual({
      code: 1,
      stdout: "node1\nnode2\n",
      stderr: "Error response from daemon: node ghost not found\n",
    });
    expect(daemon.calls().map((c) => `${c.method} ${c.url}`)).toEqual([
      "DELETE /v1.50/nodes/node1?force=1",
      "DELETE /v1.50/nodes/ghost?force=1",
      "DELETE /v1.50/nodes/node2?force=1",
    ]);
    daemon.requests = [];
    await shoal("node", "remove", "node1");
    expect(daemon.calls().map((c) => c.url)).toEqual(["/v1.50/nodes/node1"]);
  });
});

describe("shoal node inspect", () => {
  it("prints a 4-space indented JSON array in docker's field order", async () => {
    const r = await shoal("node", "inspect", "node2");
    expect(r.code).toBe(0);
    expect(r.stdout).toBe(`[
    {
        "ID": "${REACH_ID}",
        "Version": {
            "Index": 42
        },
        "CreatedAt": "2025-01-02T03:04:05.123456789Z",
        "UpdatedAt": "2025-01-02T03:04:06Z",
        "Spec": {
            "Labels": {},
            "Role": "manager",
            "Availability": "pause"
        },
        "Description": {
            "Hostname": "node2",
            "Platform": {
                "Architecture": "x86_64",
                "OS": "linux"
            },
            "Resources": {
                "NanoCPUs": 4000000000,
                "MemoryBytes": 8254390272
            },
            "Engine": {
                "EngineVersion": "0.1.0",
                "Plugins": [
                    {
                        "Type": "Network",
                        "Name": "overlay"
                    },
                    {
                        "Type": "Log",
                        "Name": "json-file"
                    }
                ]
            },
            "TLSInfo": {
                "TrustRoot": "-----BEGIN CERTIFICATE-----\\nMIIBajCCARCgAwIBAgIUQ==\\n-----END CERTIFICATE-----\\n",
                "CertIssuerSubject": "MBMxETAPBgNVBAMTCHN3YXJtLWNh",
                "CertIssuerPublicKey": "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE"
            }
        },
        "Status": {
            "State": "ready",
            "Addr": "192.0.2.2"
        },
        "ManagerStatus": {
            "Reachability": "unreachable",
            "Addr": "192.0.2.2:2377"
        }
    }
]
`);
  });

  it("resolves self through /info, and prints what it found before the errors", async () => {
    let r = await shoal(
      "node",
      "inspect",
      "-f",
      "{{.ID}} {{.Spec.Role}} {{.Description.Hostname}}",
      "self",
      "ghost",
      "node1",
    );
    expect(r).toEqual({
      code: 1,
      stdout: `${LEADER_ID} manager node10\n${WORKER_ID} worker node1\n`,
      stderr: "Error response from daemon: node ghost not found\n",
    });
    expect(daemon.calls().map((c) => c.path)).toEqual(["/info", `/nodes/${LEADER_ID}`, "/nodes/ghost", "/nodes/node1"]);
    r = await shoal("node", "inspect", "ghost");
    expect(r).toEqual({ code: 1, stdout: "[]\n", stderr: "Error response from daemon: node ghost not found\n" });
  });

  it("--pretty prints docker's human-friendly text", async () => {
    const r = await shoal("node", "inspect", "--pretty", "self", "node1");
    expect(r.code).toBe(0);
    const trust = TLS.TrustRoot;
    const tail = (s: string): string =>
      `Platform:\n Operating System:\tlinux\n Architecture:\t\tx86_64\nResources:\n CPUs:\t\t\t4\n Memory:\t\t7.688GiB\n` +
      `Plugins:\n Log:\t\tjson-file\n Network:\t\toverlay\nEngine Version:\t\t0.1.0\n` +
      `TLS Info:\n TrustRoot:\n${trust}\n Issuer Subject:\t${TLS.CertIssuerSubject}\n Issuer Public Key:\t${TLS.CertIssuerPublicKey}\n${s}`;
    expect(r.stdout).toBe(
      `ID:\t\t\t${LEADER_ID}\nLabels:\n - zone=a\nHostname:              \tnode10\n` +
        "Joined at:             \t2025-01-02 03:04:05.123456789 +0000 utc\n" +
        "Status:\n State:\t\t\tReady\n Availability:         \tActive\n Address:\t\t192.0.2.1\n" +
        "Manager Status:\n Address:\t\t192.0.2.1:2377\n Raft Status:\t\tReachable\n Leader:\t\tYes\n" +
        tail("") +
        `ID:\t\t\t${WORKER_ID}\nLabels:\n - disk<ssd>=yes&no\n - zone=b\nHostname:              \tnode1\n` +
        "Joined at:             \t2025-01-02 03:04:05.123456789 +0000 utc\n" +
        "Status:\n State:\t\t\tDown\n Message:              \tHeartbeat failure\n Availability:         \tDrain\n" +
        " Address:\t\t192.0.2.3\n" +
        tail(""),
    );
  });

  it("--pretty prints nothing when a node is missing", async () => {
    const r = await shoal("node", "inspect", "--pretty", "node1", "ghost", "node2");
    expect(r).toEqual({ code: 1, stdout: "", stderr: "Error response from daemon: node ghost not found\n" });
  });
});

// ---- errors, hosts, versions ---------------------------------------------------------------------------

describe("errors and connection", () => {
  it("prints the daemon's message for any status >= 400 and exits 1", async () => {
    const msg =
      'This node is not a swarm manager. Use "docker swarm init" or "docker swarm join" to connect this node to swarm and try again.';
    daemon.override((q) => (q.path === "/nodes" ? { status: 503, body: { message: msg } } : undefined));
    const r = await shoal("node", "ls");
    expect(r).toEqual({ code: 1, stdout: "", stderr: `Error response from daemon: ${msg}\n` });
  });

  it("words odd error answers the way docker does", async () => {
    daemon.override((q) => {
      if (q.path === "/nodes/empty") return { status: 500, raw: "" };
      if (q.path === "/nodes/nomsg") return { status: 404, raw: "{}" };
      if (q.path === "/nodes/text") return { status: 500, raw: "boom\n", contentType: "text/plain" };
      if (q.path === "/nodes/charset")
        return { status: 500, raw: '{"message":"x"}', contentType: "application/json; charset=utf-8" };
      return undefined;
    });
    const err = async (ref: string): Promise<string> => (await shoal("node", "inspect", ref)).stderr;
    expect(await err("empty")).toBe(
      `request returned 500 Internal Server Error for API route and version http://${encodeURIComponent(daemon.socket)}/v1.50/nodes/empty, check if the server supports the requested API version\n`,
    );
    expect(await err("nomsg")).toBe(
      "Error response from daemon: API returned a 404 (Not Found) but provided no error-message\n",
    );
    expect(await err("text")).toBe("Error response from daemon: boom\n");
    expect(await err("charset")).toBe('Error response from daemon: {"message":"x"}\n');
  });

  it("says the daemon is not running when the socket is missing", async () => {
    const sock = join(daemon.dir, "absent.sock");
    const r = await exec(process.execPath, [MAIN, "-H", `unix://${sock}`, "node", "ls"], cleanEnv());
    expect(r).toEqual({
      code: 1,
      stdout: "",
      stderr: `Cannot connect to the shoal daemon at unix://${sock}. Is the shoal daemon running?\n`,
    });
  });

  it("finds the daemon through SHOAL_HOST, else a unix DOCKER_HOST", async () => {
    let r = await shoalEnv({ SHOAL_HOST: daemon.host, DOCKER_HOST: "unix:///nonexistent.sock" }, "node", "ls", "-q");
    expect(r.code).toBe(0);
    r = await shoalEnv({ DOCKER_HOST: daemon.host }, "node", "ls", "-q");
    expect(r.code).toBe(0);
    expect(r.stdout.split("\n")).toHaveLength(4);
  });

  it.skipIf(existsSync("/run/shoal/shoald.sock"))("ignores a tcp DOCKER_HOST and uses the default socket", async () => {
    const r = await shoalEnv({ DOCKER_HOST: "tcp://192.0.2.1:2375" }, "node", "ls");
    expect(r.stderr).toBe(
      "Cannot connect to the shoal daemon at unix:///run/shoal/shoald.sock. Is the shoal daemon running?\n",
    );
  });

  it("negotiates the API version with HEAD /_ping: an older daemon's, or 1.24 when it says nothing", async () => {
    daemon.apiVersion = "1.44";
    await shoal("node", "ls", "-q");
    expect(daemon.requests.map((q) => `${q.method} ${q.url}`)).toEqual(["HEAD /_ping", "GET /v1.44/nodes"]);
    daemon.requests = [];
    daemon.apiVersion = undefined;
    await shoal("node", "ls", "-q");
    expect(daemon.requests.map((q) => `${q.method} ${q.url}`)).toEqual(["HEAD /_ping", "GET /v1.24/nodes"]);
    daemon.requests = [];
    daemon.apiVersion = "1.99";
    await shoal("node", "ls", "-q");
    expect(daemon.requests[1]!.url).toBe("/v1.50/nodes");
  });

  it("version prints the client, then the server from GET /version", async () => {
    const r = await shoal("version");
    expect(r.code).toBe(0);
    const arch = process.arch === "x64" ? "amd64" : process.arch;
    expect(r.stdout).toBe(
      "Client:\n" +
        " Version:           0.1.0\n" +
        " API version:       1.50\n" +
        ` Node version:      ${process.version}\n` +
        ` OS/Arch:           ${process.platform}/${arch}\n` +
        "\n" +
        "Server: shoal\n" +
        " Engine:\n" +
        "  Version:          0.1.0\n" +
        "  API version:      1.50 (minimum version 1.24)\n" +
        "  Go version:       node-v20.19.0\n" +
        "  Git commit:       c4fae39\n" +
        "  Built:            Fri May 30 12:07:27 2025\n" +
        "  OS/Arch:          linux/amd64\n" +
        "  Experimental:     false\n",
    );
  });

  it("version prints the client part and the connection error when the daemon is down", async () => {
    const sock = join(daemon.dir, "absent.sock");
    const r = await exec(process.execPath, [MAIN, "-H", `unix://${sock}`, "version"], cleanEnv());
    expect(r.code).toBe(1);
    expect(r.stdout).toMatch(/^Client:\n Version: {11}0\.1\.0\n API version: {7}1\.50\n/);
    expect(r.stdout).not.toContain("Server");
    expect(r.stderr).toBe(`Cannot connect to the shoal daemon at unix://${sock}. Is the shoal daemon running?\n`);
  });

  it("info prints the swarm section like docker info", async () => {
    const r = await shoal("info");
    expect(r.code).toBe(0);
    expect(r.stdout).toBe(
      [
        "Client:",
        " Version:    0.1.0",
        " Debug Mode: false",
        "",
        "Server:",
        " Server Version: 0.1.0",
        " Swarm: active",
        `  NodeID: ${LEADER_ID}`,
        "  Is Manager: true",
        "  ClusterID: qo2dfdig9mmxqkawulggepdih",
        "  Managers: 2",
        "  Nodes: 3",
        "  Default Address Pool: 10.0.0.0/8  ",
        "  SubnetSize: 24",
        "  Data Path Port: 4789",
        "  Orchestration:",
        "   Task History Retention Limit: 5",
        "  Raft:",
        "   Snapshot Interval: 10000",
        "   Number of Old Snapshots to Retain: 0",
        "   Heartbeat Tick: 1",
        "   Election Tick: 10",
        "  Dispatcher:",
        "   Heartbeat Period: 5 seconds",
        "  CA Configuration:",
        "   Expiry Duration: 3 months",
        "   Force Rotate: 0",
        "  Autolock Managers: false",
        "  Root Rotation In Progress: false",
        "  Node Address: 192.0.2.1",
        "  Manager Addresses:",
        "   192.0.2.1:2377",
        "   192.0.2.2:2377",
        " OSType: linux",
        " Name: node10",
        " ID: shoal-node10",
        "",
        "",
      ].join("\n"),
    );
  });

  it("info prints the driver's status pairs (the firewall backend) under the storage driver, like docker info", async () => {
    Object.assign(daemon.info, {
      Driver: "shoal",
      DriverStatus: [
        ["Firewall Backend", "iptables"],
        ["nftables", "unavailable (nft: Operation not supported)"],
      ],
    });
    const r = await shoal("info");
    expect(r.stdout).toContain(
      " Server Version: 0.1.0\n Storage Driver: shoal\n  Firewall Backend: iptables\n" +
        "  nftables: unavailable (nft: Operation not supported)\n Swarm: active\n",
    );
  });

  it("info of a node outside any swarm says inactive", async () => {
    daemon.info.Swarm = {
      NodeID: "",
      NodeAddr: "",
      LocalNodeState: "inactive",
      ControlAvailable: false,
      Error: "",
      RemoteManagers: null,
    };
    const r = await shoal("info");
    expect(r.stdout).toContain("Server:\n Server Version: 0.1.0\n Swarm: inactive\n OSType: linux\n");
  });
});

describe("usage errors", () => {
  const cases: [string[], number, string][] = [
    [
      ["node", "rm"],
      1,
      "shoal: 'shoal node rm' requires at least 1 argument\n\nUsage:  shoal node rm [OPTIONS] NODE [NODE...]\n\nSee 'shoal node rm --help' for more information\n",
    ],
    [
      ["node", "ls", "x"],
      1,
      "shoal: 'shoal node ls' accepts no arguments\n\nUsage:  shoal node ls [OPTIONS]\n\nRun 'shoal node ls --help' for more information\n",
    ],
    [
      ["swarm", "join"],
      1,
      "shoal: 'shoal swarm join' requires 1 argument\n\nUsage:  shoal swarm join [OPTIONS] HOST:PORT\n\nRun 'shoal swarm join --help' for more information\n",
    ],
    [
      ["node", "ls", "--foo"],
      125,
      "unknown flag: --foo\n\nUsage:  shoal node ls [OPTIONS]\n\nRun 'shoal node ls --help' for more information\n",
    ],
    [
      ["node", "ls", "-x"],
      125,
      "unknown shorthand flag: 'x' in -x\n\nUsage:  shoal node ls [OPTIONS]\n\nRun 'shoal node ls --help' for more information\n",
    ],
    [
      ["node", "inspect", "-f"],
      125,
      "flag needs an argument: 'f' in -f\n\nUsage:  shoal node inspect [OPTIONS] self|NODE [NODE...]\n\nRun 'shoal node inspect --help' for more information\n",
    ],
    [
      ["swarm", "init", "--data-path-port", "x"],
      125,
      'invalid argument "x" for "--data-path-port" flag: strconv.ParseUint: parsing "x": invalid syntax\n\nUsage:  shoal swarm init [OPTIONS]\n\nRun \'shoal swarm init --help\' for more information\n',
    ],
    [
      ["node", "ls", "-f", "role"],
      125,
      'invalid argument "role" for "-f, --filter" flag: bad format of filter (expected name=value)\n\nUsage:  shoal node ls [OPTIONS]\n\nRun \'shoal node ls --help\' for more information\n',
    ],
    [
      ["swarm", "frobnicate"],
      1,
      "shoal: unknown command: shoal swarm frobnicate\n\nUsage:  shoal swarm\n\nRun 'shoal swarm --help' for more information\n",
    ],
    [["frobnicate"], 1, "shoal: unknown command: shoal frobnicate\n\nRun 'shoal --help' for more information\n"],
  ];
  for (const [args, code, stderr] of cases) {
    it(`shoal ${args.join(" ")}`, async () => {
      const r = await shoal(...args);
      expect(r).toEqual({ code, stdout: "", stderr });
      expect(daemon.calls()).toEqual([]);
    });
  }

  it("help goes to stdout with --help, to stderr for a bare group, both exit 0", async () => {
    let r = await shoal("node", "ls", "--help");
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(
      /^Usage: {2}shoal node ls \[OPTIONS\]\n\nList nodes in the swarm\n\nAliases:\n {2}shoal node ls, shoal node list\n/,
    );
    expect(r.stdout).toContain("  -f, --filter filter   Filter output based on conditions provided\n");
    r = await shoal("node");
    expect(r.code).toBe(0);
    expect(r.stdout).toBe("");
    expect(r.stderr).toMatch(/^Usage: {2}shoal node COMMAND\n/);
  });
});

// ---- the real docker CLI on the same stand-in ----------------------------------------------------------

describe.skipIf(!HAS_DOCKER)("compatibility with docker 28 on the same stand-in daemon", () => {
  const commands: string[][] = [
    ["node", "ls"],
    ["node", "ls", "-q"],
    ["node", "ls", "-f", "role=manager", "-f", "name=node1"],
    ["node", "ls", "--format", "json"],
    ["node", "ls", "--format", "table {{.Hostname}}\\t{{.TLSStatus}}\\t{{.Self}}"],
    ["node", "inspect", "self", "node1", "ghost"],
    ["node", "inspect", "--pretty", "node10", "node1"],
    ["node", "inspect", "-f", "{{.Spec}} {{.ManagerStatus}} {{.Version}} {{json .Spec}} {{.CreatedAt}}", "node10"],
    ["node", "promote", "node1", "node10"],
    ["node", "demote", "node2"],
    ["node", "update", "--availability", "drain", "--label-add", "k=v", "--label-rm", "zone", "node10"],
    ["node", "rm", "-f", "node1", "ghost"],
    [
      "swarm",
      "init",
      "--advertise-addr",
      "192.0.2.1",
      "--listen-addr",
      "192.0.2.1",
      "--default-addr-pool",
      "10.20.3.4/16",
    ],
    ["swarm", "join", "--token", "SWMTKN-1-0worker", "--availability", "drain", "192.0.2.1:2377"],
    ["swarm", "join-token", "worker"],
    ["swarm", "join-token", "--rotate", "manager"],
    ["swarm", "join-token", "-q", "worker"],
    ["swarm", "leave", "--force"],
    ["swarm", "update", "--task-history-limit", "10", "--dispatcher-heartbeat", "10s"],
  ];
  for (const args of commands) {
    it(`${args.join(" ")}: same output, exit code and requests`, async () => {
      const theirs = await docker(...args);
      // (guards against a vacuous pass: docker must have talked to the stand-in)
      expect(theirs.code).toBe(args.includes("ghost") ? 1 : 0);
      const theirRequests = daemon.requests.map(wire);
      expect(theirRequests.length).toBeGreaterThan(1);
      daemon.reset();
      const ours = await shoal(...args);
      const ourRequests = daemon.requests.map(wire);
      expect(ours).toEqual(theirs);
      expect(ourRequests).toEqual(theirRequests);
    });
  }

  it("node ls with long hostnames, odd states and no manager statuses: same table", async () => {
    const set = (): void => {
      daemon.nodes = [
        makeNode(WORKER_ID, "a-rather-long-hostname.example"),
        makeNode(REACH_ID, "host-007", { Status: { State: "disconnected", Addr: "" } }),
        makeNode(LEADER_ID, "host-7", { Spec: { Labels: {}, Role: "worker", Availability: "pause" } }),
      ];
    };
    set();
    const theirs = await docker("node", "ls");
    expect(theirs.stdout).toContain("host-007");
    daemon.reset();
    set();
    const ours = await shoal("node", "ls");
    expect(ours).toEqual(theirs);
  });

  it("node inspect of odd values (rounding, offsets, missing parts): same JSON and pretty text", async () => {
    const odd = makeNode(WORKER_ID, "odd", {
      CreatedAt: "2025-01-02T03:04:05.120+02:00",
      UpdatedAt: "2025-01-02T03:04:05+00:00",
      Spec: { Name: "named", Labels: { "9": "x", "10": "" }, Role: "worker", Availability: "active" },
      Description: {
        Hostname: "odd",
        Platform: { Architecture: "aarch64", OS: "linux" },
        Resources: { NanoCPUs: 2_500_000_000, MemoryBytes: 1_140_850_688 },
        Engine: { EngineVersion: "0.1.0", Labels: { b: "2", a: "" }, Plugins: [] },
      },
      Status: { State: "unknown", Addr: "" },
    });
    for (const args of [
      ["node", "inspect", "odd"],
      ["node", "inspect", "--pretty", "odd"],
    ]) {
      daemon.reset();
      daemon.nodes = [odd];
      const theirs = await docker(...args);
      expect(theirs.code).toBe(0);
      expect(theirs.stdout).toContain("named");
      daemon.reset();
      daemon.nodes = [odd];
      expect(await shoal(...args)).toEqual(theirs);
    }
  });

  it("node ls: the table rows are identical", async () => {
    const theirs = await docker("node", "ls");
    expect(theirs.stdout).toBe(NODE_LS);
  });
});
