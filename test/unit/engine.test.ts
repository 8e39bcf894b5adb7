// src/engine: the Docker Engine API server on a unix socket, driven by raw HTTP and by the real docker CLI,
// against an in-memory SwarmBackend (a test double for the HTTP layer; the daemon's backend is tested elsewhere).

import { execFile } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, rm, stat, writeFile } from "node:fs/promises";
import { request as httpRequest, type IncomingHttpHeaders } from "node:http";
import { createServer as createNetServer } from "node:net";
import os from "node:os";
import { join } from "node:path";
import pino from "pino";
import { afterEach, beforeEach, describe, expect, test } from "vitest";
import {
  ApiError,
  alreadyInSwarm,
  conflict,
  MSG_INVALID_UNLOCK_KEY,
  MSG_LOCKED,
  nodeNotFound,
  notManager,
  outOfSequence,
  unavailable,
  workerNode,
} from "../../src/engine/errors.js";
import { parseFilters, validateFilterKeys } from "../../src/engine/filters.js";
import { swarmStatusOf } from "../../src/engine/routes/system.js";
import { EngineServer } from "../../src/engine/server.js";
import type {
  Node,
  NodeListFilters,
  NodeRole,
  NodeSpec,
  Swarm,
  SwarmBackend,
  SwarmInfo,
  SwarmInit,
  SwarmJoin,
  SwarmSpec,
  SwarmUpdateOptions,
} from "../../src/engine/types.js";
import { compareApiVersions } from "../../src/engine/versions.js";
import { API_VERSION, MIN_API_VERSION, VERSION } from "../../src/version.js";

const LEAVE_MANAGER_MSG =
  "You are attempting to leave the swarm on a node that is participating as a manager. Removing the last manager erases all current state of the swarm. Use `--force` to ignore this message.";

const SELF_ID = "n0de1d000000000000000000a";
const BETA_ID = "b3ta0000000000000000000bb";
const GAMMA_ID = "gamma000000000000000000cc";
const TIME = "2030-01-01T00:00:00.000000000Z";
const TLS = {
  TrustRoot: "-----BEGIN CERTIFICATE-----\nMIIBtest\n-----END CERTIFICATE-----\n",
  CertIssuerSubject: "MBMxETAPBgNVBAMTCHN3YXJtLWNh",
  CertIssuerPublicKey: "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE",
};

function defaultSpec(): SwarmSpec {
  return {
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
}

function makeNode(id: string, hostname: string, role: NodeRole, leader: boolean, addr: string): Node {
  return {
    ID: id,
    Version: { Index: 17 },
    CreatedAt: TIME,
    UpdatedAt: TIME,
    Spec: { Labels: {}, Role: role, Availability: "active" },
    Description: {
      Hostname: hostname,
      Platform: { Architecture: "x86_64", OS: "linux" },
      Resources: { NanoCPUs: 4_000_000_000, MemoryBytes: 8 * 1024 ** 3 },
      Engine: { EngineVersion: VERSION, Plugins: [{ Type: "Network", Name: "overlay" }] },
      TLSInfo: TLS,
    },
    Status: { State: "ready", Addr: addr },
    ...(role === "manager"
      ? { ManagerStatus: { Leader: leader, Reachability: "reachable", Addr: `${addr}:2377` } }
      : {}),
  };
}

type Mode = "inactive" | "pending" | "manager" | "worker" | "locked";

/** An in-memory swarm of three nodes (two managers, one worker) seen from "alpha". */
class TestBackend implements SwarmBackend {
  mode: Mode = "inactive";
  readonly calls: { op: string; args: unknown[] }[] = [];
  nodes: Node[] = [
    makeNode(SELF_ID, "alpha", "manager", true, "127.0.0.1"),
    makeNode(BETA_ID, "beta", "manager", false, "127.0.0.2"),
    makeNode(GAMMA_ID, "gamma", "worker", false, "127.0.0.3"),
  ];
  clusterVersion = 42;
  spec = defaultSpec();
  tokens = { Worker: "SWMTKN-1-worker0", Manager: "SWMTKN-1-manager0" };
  /** Makes the next nodeList throw a plain (non-API) error. */
  failNext: Error | undefined;

  private record(op: string, ...args: unknown[]): void {
    this.calls.push({ op, args });
  }
  /** The unlock key while autolock is on. */
  unlockKey = "";

  private requireManager(): void {
    if (this.mode === "locked") throw unavailable(MSG_LOCKED);
    if (this.mode === "worker") throw workerNode();
    if (this.mode !== "manager") throw notManager();
  }
  private cluster() {
    return {
      ID: "c1uster000000000000000000",
      Version: { Index: this.clusterVersion },
      CreatedAt: TIME,
      UpdatedAt: TIME,
      Spec: this.spec,
      TLSInfo: TLS,
      RootRotationInProgress: false,
      DefaultAddrPool: ["10.0.0.0/8"],
      SubnetSize: 24,
      DataPathPort: 4789,
    };
  }

  /** As a host whose kernel lacks nftables' inet family reports it (shoald's Daemon.firewallInfo). */
  async firewallInfo(): Promise<{ Driver: string; Info: [string, string][] }> {
    return {
      Driver: "iptables",
      Info: [
        ["Program", "iptables-legacy"],
        ["nftables", "unavailable (nft: Could not process rule: Operation not supported)"],
      ],
    };
  }

  hostname(): string {
    return "alpha";
  }
  async swarmInfo(): Promise<SwarmInfo> {
    if (this.mode === "inactive" || this.mode === "pending" || this.mode === "locked") {
      return {
        NodeID: "",
        NodeAddr: "",
        LocalNodeState: this.mode,
        ControlAvailable: false,
        Error: this.mode === "locked" ? MSG_LOCKED : "",
        RemoteManagers: null,
      };
    }
    const managers = this.nodes.filter((n) => n.ManagerStatus);
    return {
      NodeID: SELF_ID,
      NodeAddr: "127.0.0.1",
      LocalNodeState: "active",
      ControlAvailable: this.mode === "manager",
      Error: "",
      RemoteManagers: managers.map((n) => ({ NodeID: n.ID, Addr: n.ManagerStatus!.Addr })),
      ...(this.mode === "manager"
        ? { Nodes: this.nodes.length, Managers: managers.length, Cluster: this.cluster() }
        : {}),
    };
  }
  async swarmInspect(): Promise<Swarm> {
    this.requireManager();
    return { ...this.cluster(), JoinTokens: { ...this.tokens } };
  }
  async swarmInit(req: SwarmInit): Promise<string> {
    this.record("swarmInit", req);
    if (this.mode !== "inactive") throw alreadyInSwarm();
    this.mode = "manager";
    return SELF_ID;
  }
  async swarmJoin(req: SwarmJoin): Promise<void> {
    this.record("swarmJoin", req);
    if (this.mode !== "inactive") throw alreadyInSwarm();
    this.mode = "worker";
  }
  async swarmLeave(force: boolean): Promise<void> {
    this.record("swarmLeave", force);
    if (this.mode === "inactive") throw unavailable("This node is not part of a swarm");
    if (this.mode === "manager" && !force) throw unavailable(LEAVE_MANAGER_MSG);
    this.mode = "inactive";
  }
  async swarmUpdate(spec: SwarmSpec, opts: SwarmUpdateOptions): Promise<void> {
    this.record("swarmUpdate", spec, opts);
    this.requireManager();
    if (opts.version !== this.clusterVersion) throw outOfSequence();
    if (opts.rotateWorkerToken) this.tokens.Worker = "SWMTKN-1-worker1";
    if (opts.rotateManagerToken) this.tokens.Manager = "SWMTKN-1-manager1";
    this.spec = spec;
    this.clusterVersion++;
  }
  async swarmUnlockKey(): Promise<string> {
    this.requireManager();
    return this.unlockKey;
  }
  async swarmUnlock(key: string): Promise<void> {
    this.record("swarmUnlock", key);
    if (this.mode !== "locked") throw conflict("swarm is not locked");
    if (key !== this.unlockKey) throw new ApiError(401, MSG_INVALID_UNLOCK_KEY);
    this.mode = "manager";
  }
  async nodeList(filters: NodeListFilters): Promise<Uint8Array> {
    this.record("nodeList", filters);
    if (this.failNext) {
      const err = this.failNext;
      this.failNext = undefined;
      throw err;
    }
    this.requireManager();
    return Buffer.from(JSON.stringify(this.nodes.filter((n) => !filters.role || filters.role.includes(n.Spec.Role))));
  }
  private find(ref: string): Node {
    const id = ref === "self" ? SELF_ID : ref;
    const n =
      this.nodes.find((x) => x.ID === id) ??
      this.nodes.find((x) => x.Description.Hostname === id) ??
      this.nodes.find((x) => x.ID.startsWith(id));
    if (!n) throw nodeNotFound(ref);
    return n;
  }
  async nodeInspect(ref: string): Promise<Node> {
    this.requireManager();
    return this.find(ref);
  }
  async nodeUpdate(ref: string, version: number, spec: NodeSpec): Promise<void> {
    this.record("nodeUpdate", ref, version, spec);
    this.requireManager();
    const n = this.find(ref);
    if (version !== n.Version.Index) throw outOfSequence();
    n.Spec = spec;
    n.Version = { Index: version + 1 };
  }
  async nodeRemove(ref: string, force: boolean): Promise<void> {
    this.record("nodeRemove", ref, force);
    this.requireManager();
    const n = this.find(ref);
    this.nodes = this.nodes.filter((x) => x !== n);
  }

  lastCall(op: string): unknown[] | undefined {
    return this.calls.filter((c) => c.op === op).at(-1)?.args;
  }
}

// ---- fixtures -----------------------------------------------------------------------------------------

let dir: string;
let sock: string;
let backend: TestBackend;
let server: EngineServer;
let logLines: string[];

beforeEach(async () => {
  dir = await mkdtemp(join(os.tmpdir(), "shoal-engine-"));
  sock = join(dir, "run", "shoald.sock"); // "run" does not exist yet: listen creates it
  backend = new TestBackend();
  logLines = [];
  const logger = pino({ level: "debug" }, { write: (line: string) => void logLines.push(line) });
  server = await EngineServer.listen({ socketPath: sock, backend, logger });
});

afterEach(async () => {
  await server?.close();
  await rm(dir, { recursive: true, force: true });
});

interface Reply {
  status: number;
  headers: IncomingHttpHeaders;
  body: string;
}

function call(
  method: string,
  path: string,
  opts: { body?: string; headers?: Record<string, string>; socketPath?: string } = {},
): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      { socketPath: opts.socketPath ?? sock, method, path, agent: false, headers: opts.headers },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () =>
          resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString("utf8") }),
        );
        res.on("error", reject);
      },
    );
    req.on("error", reject);
    if (opts.body !== undefined) {
      req.setHeader("Content-Type", opts.headers?.["Content-Type"] ?? "application/json");
      req.end(opts.body);
    } else {
      req.end();
    }
  });
}

const postJSON = (path: string, value: unknown) => call("POST", path, { body: JSON.stringify(value) });

function expectError(r: Reply, status: number, message: string): void {
  expect(r.status).toBe(status);
  expect(r.headers["content-type"]).toBe("application/json");
  expect(JSON.parse(r.body)).toEqual({ message });
}

// ---- raw HTTP ------------------------------------------------------------------------------------------

describe("engine API over the unix socket", () => {
  test("the socket is created with mode 0660 and removed on close", async () => {
    const st = await stat(sock);
    expect(st.isSocket()).toBe(true);
    expect(st.mode & 0o777).toBe(0o660);
    await server.close();
    expect(existsSync(sock)).toBe(false);
    await server.close(); // idempotent
  });

  test("a stale socket file is replaced; a live one or a non-socket is refused", async () => {
    // A live listener on the path: refused, and left alone.
    const livePath = join(dir, "live.sock");
    const live = createNetServer();
    await new Promise<void>((r) => live.listen(livePath, r));
    await expect(EngineServer.listen({ socketPath: livePath, backend })).rejects.toThrow(/in use/);
    await new Promise<void>((r) => live.close(() => r()));
    // The file a killed daemon leaves behind (SIGKILL: nothing unlinks it): taken over.
    const leftover = join(dir, "leftover.sock");
    const script = `require("net").createServer().listen(${JSON.stringify(leftover)}, () => process.kill(process.pid, "SIGKILL"))`;
    await new Promise<void>((resolve) => execFile(process.execPath, ["-e", script], () => resolve()));
    expect((await stat(leftover)).isSocket()).toBe(true);
    const other = await EngineServer.listen({ socketPath: leftover, backend });
    expect((await call("GET", "/_ping", { socketPath: leftover })).body).toBe("OK");
    await other.close();
    // Not a socket: refused rather than deleted.
    const plain = join(dir, "plain.sock");
    await writeFile(plain, "keep me");
    await expect(EngineServer.listen({ socketPath: plain, backend })).rejects.toThrow(/not a socket/);
    expect(existsSync(plain)).toBe(true);
  });

  test("/_ping answers HEAD and GET with dockerd's headers and the Swarm state", async () => {
    for (const method of ["HEAD", "GET"]) {
      const r = await call(method, "/_ping");
      expect(r.status).toBe(200);
      expect(r.body).toBe(method === "GET" ? "OK" : "");
      expect(r.headers["api-version"]).toBe("1.50");
      expect(r.headers.ostype).toBe("linux");
      expect(r.headers["docker-experimental"]).toBe("false");
      expect(r.headers.swarm).toBe("inactive");
      expect(r.headers["cache-control"]).toBe("no-cache, no-store, must-revalidate");
      expect(r.headers.pragma).toBe("no-cache");
      expect(r.headers["builder-version"]).toBe("1");
      expect(r.headers["content-type"]).toMatch(/^text\/plain/);
    }
    const swarmHeader = async (mode: Mode) => {
      backend.mode = mode;
      return (await call("HEAD", "/v1.50/_ping")).headers.swarm;
    };
    expect(await swarmHeader("manager")).toBe("active/manager");
    expect(await swarmHeader("worker")).toBe("active/worker");
    expect(await swarmHeader("pending")).toBe("pending");
    expect(swarmStatusOf("locked", false)).toBe("locked");
  });

  test("paths work unversioned and /v1.24../v1.50; other versions get dockerd's 400s", async () => {
    for (const p of ["/version", "/v1.24/version", "/v1.41/version", "/v1.50/version"]) {
      expect((await call("GET", p)).status).toBe(200);
    }
    expectError(
      await call("GET", "/v1.51/version"),
      400,
      "client version 1.51 is too new. Maximum supported API version is 1.50",
    );
    expectError(
      await call("GET", "/v1.100/info"),
      400,
      "client version 1.100 is too new. Maximum supported API version is 1.50",
    );
    const tooOld = (v: string) =>
      `client version ${v} is too old. Minimum supported API version is 1.24, please upgrade your client to a newer version`;
    expectError(await call("GET", "/v1.23/info"), 400, tooOld("1.23"));
    expectError(await call("GET", "/v1.9/_ping"), 400, tooOld("1.9")); // numeric, not string, comparison
    expect(compareApiVersions("1.9", "1.24")).toBe(-1);
    expect(compareApiVersions("1.50", "1.50")).toBe(0);
    expect(compareApiVersions("2.0", "1.50")).toBe(1);
  });

  test("GET /version describes the engine", async () => {
    const r = await call("GET", "/v1.50/version");
    expect(r.headers["content-type"]).toBe("application/json");
    const v = JSON.parse(r.body);
    expect(v).toMatchObject({
      Platform: { Name: "shoal" },
      Version: VERSION,
      ApiVersion: API_VERSION,
      MinAPIVersion: MIN_API_VERSION,
      Os: "linux",
      Arch: process.arch === "x64" ? "amd64" : expect.any(String),
      KernelVersion: os.release(),
      GoVersion: `node ${process.version}`,
    });
    expect(v.GitCommit).toEqual(expect.any(String));
    expect(v.BuildTime).toEqual(expect.any(String));
    expect(v.Components[0]).toMatchObject({
      Name: "Engine",
      Version: VERSION,
      Details: { ApiVersion: "1.50", MinAPIVersion: "1.24", Os: "linux" },
    });
  });

  test("GET /info is docker-shaped, with the backend's swarm section", async () => {
    let info = JSON.parse((await call("GET", "/info")).body);
    expect(info).toMatchObject({
      Name: "alpha",
      OSType: "linux",
      Architecture: os.machine(),
      Driver: "shoal",
      ServerVersion: VERSION,
      Containers: 0,
      Swarm: { LocalNodeState: "inactive", ControlAvailable: false },
      Plugins: { Volume: [], Network: ["overlay"], Log: [] },
      Warnings: [],
      SecurityOptions: [],
    });
    expect(info.ID).toEqual(expect.any(String));
    expect(info.NCPU).toBeGreaterThan(0);
    expect(info.MemTotal).toBeGreaterThan(0);
    backend.mode = "manager";
    info = JSON.parse((await call("GET", "/v1.50/info")).body);
    expect(info.Swarm).toMatchObject({ NodeID: SELF_ID, LocalNodeState: "active", ControlAvailable: true, Nodes: 3 });
    expect(info.Swarm.Cluster.ID).toBe("c1uster000000000000000000");
  });

  test("unknown routes and wrong methods are 404 page not found, with Content-Type exactly application/json", async () => {
    expectError(await call("GET", "/nope"), 404, "page not found");
    expectError(await call("GET", "/v1.50/containers/json/extra"), 404, "page not found");
    expectError(await call("DELETE", "/swarm"), 404, "page not found");
    expectError(await call("POST", "/v1.50/nodes"), 404, "page not found");
    expectError(await call("GET", "/v1.50/swarm/init"), 404, "page not found");
    expectError(await call("GET", "/nodes/"), 404, "page not found");
    // An unknown path is not found even under an unsupported version, as in dockerd.
    expectError(await call("GET", "/v1.99/nope"), 404, "page not found");
  });

  test("ApiErrors keep their status and message; other errors are 500 with their message", async () => {
    expectError(await call("GET", "/swarm"), 503, notManager().message);
    backend.mode = "worker";
    expectError(await call("GET", "/v1.50/nodes"), 503, workerNode().message);
    backend.mode = "manager";
    expectError(await call("GET", "/v1.50/nodes/xyz"), 404, "node xyz not found");
    backend.failNext = new Error("store exploded");
    expectError(await call("GET", "/v1.50/nodes"), 500, "store exploded");
    // The unexpected error is logged at error level; every request at debug.
    const logs = logLines.map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(logs.some((l) => l.level === 50 && l.msg === "request failed")).toBe(true);
    const reqLog = logs.find((l) => l.msg === "request" && l.path === "/v1.50/nodes/xyz");
    expect(reqLog).toMatchObject({ level: 20, method: "GET", status: 404, component: "engine" });
    expect(reqLog?.ms).toEqual(expect.any(Number));
  });

  test("POST /swarm/init answers the node id as a JSON string", async () => {
    const req = { ListenAddr: "0.0.0.0:2377", AdvertiseAddr: "127.0.0.1", ForceNewCluster: false };
    const r = await postJSON("/v1.50/swarm/init", req);
    expect(r.status).toBe(200);
    expect(r.headers["content-type"]).toBe("application/json");
    expect(r.body.trim()).toBe(`"${SELF_ID}"`);
    expect(JSON.parse(r.body)).toBe(SELF_ID);
    // The request reaches the backend complete: what was left out is its default (the spec too).
    expect(backend.lastCall("swarmInit")).toEqual([
      {
        listenAddr: "0.0.0.0:2377",
        advertiseAddr: "127.0.0.1",
        dataPathAddr: "",
        dataPathPort: 0,
        forceNewCluster: false,
        spec: defaultSpec(),
        availability: "active",
        defaultAddrPool: [],
        subnetSize: 0,
      },
    ]);
    expectError(await postJSON("/v1.50/swarm/init", req), 503, alreadyInSwarm().message);
  });

  test("malformed or non-object bodies, and non-JSON content types, are 400s that reach no backend", async () => {
    let r = await call("POST", "/v1.50/swarm/init", { body: "{not json" });
    expect(r.status).toBe(400);
    expect(r.headers["content-type"]).toBe("application/json");
    expect(JSON.parse(r.body).message).toMatch(/^invalid JSON: /);
    r = await call("POST", "/v1.50/swarm/join", { body: "[1,2]" });
    expectError(r, 400, "invalid JSON: json: cannot unmarshal array into Go value of type swarm.JoinRequest");
    r = await call("POST", "/v1.50/swarm/init", { body: "a=b", headers: { "Content-Type": "text/plain" } });
    expectError(r, 400, "unsupported Content-Type header (text/plain): must be 'application/json'");
    r = await postJSON("/v1.50/swarm/join", { RemoteAddrs: "10.0.0.1:2377", JoinToken: "x" });
    expectError(
      r,
      400,
      "invalid JSON: json: cannot unmarshal string into Go struct field JoinRequest.RemoteAddrs of type []string",
    );
    expect(backend.calls).toEqual([]);
  });

  test("POST /swarm/join and /swarm/leave", async () => {
    const join = { RemoteAddrs: ["192.0.2.1:2377"], JoinToken: "SWMTKN-1-x", ListenAddr: "0.0.0.0:2377" };
    let r = await postJSON("/v1.50/swarm/join", join);
    expect(r.status).toBe(200);
    expect(backend.lastCall("swarmJoin")).toEqual([
      {
        listenAddr: "0.0.0.0:2377",
        advertiseAddr: "",
        dataPathAddr: "",
        remoteAddrs: ["192.0.2.1:2377"],
        joinToken: "SWMTKN-1-x",
        availability: "active",
      },
    ]);
    expect((await call("HEAD", "/_ping")).headers.swarm).toBe("active/worker");
    r = await call("POST", "/v1.50/swarm/leave");
    expect(r.status).toBe(200);
    expect(backend.lastCall("swarmLeave")).toEqual([false]);
    for (const [q, force] of [
      ["?force=1", true],
      ["?force=true", true],
      ["?force=True", true],
      ["?force=0", false],
      ["?force=false", false],
      ["?force=", false],
    ] as const) {
      backend.mode = "manager";
      await call("POST", `/v1.50/swarm/leave${q}`);
      expect(backend.lastCall("swarmLeave")).toEqual([force]);
    }
  });

  test("issue 9 case 1: a partial swarm spec ({}, or the Python SDK's) is the default spec, never half a spec", async () => {
    backend.mode = "manager";
    backend.spec = { ...defaultSpec(), Labels: { old: "x" } };
    for (const body of [{}, { CAConfig: { NodeCertExpiry: 7776000000000000 } }, null]) {
      const r = await call("POST", `/v1.47/swarm/update?version=${backend.clusterVersion}&rotateWorkerToken=True`, {
        body: JSON.stringify(body),
      });
      expect(r.status).toBe(200);
      expect(backend.lastCall("swarmUpdate")?.[0]).toEqual(defaultSpec());
    }
    // An empty body is dockerd's zero Spec too.
    const r = await call("POST", `/v1.50/swarm/update?version=${backend.clusterVersion}`);
    expect(r.status).toBe(200);
    expect(backend.lastCall("swarmUpdate")?.[0]).toEqual(defaultSpec());
  });

  test("issue 9 cases 4 and 5: bodies of the wrong type, unknown fields and oversized values reach no backend", async () => {
    backend.mode = "manager";
    const cases: [string, unknown, string][] = [
      [
        "/v1.50/nodes/beta/update?version=17",
        { Labels: { n: 5 }, Role: "worker", Availability: "active" },
        "invalid JSON: json: cannot unmarshal number into Go struct field NodeSpec.Labels of type string",
      ],
      [
        "/v1.50/nodes/beta/update?version=17",
        { Role: "worker", Availability: "active", Junk: 1 },
        'invalid JSON: json: unknown field "Junk"',
      ],
      [
        "/v1.50/nodes/beta/update?version=17",
        { Labels: { big: "x".repeat(3_900_000 / 4) }, Role: "worker", Availability: "active" },
        "invalid node spec: Labels.big: values must be at most 16384 bytes",
      ],
      ["/v1.50/nodes/beta/update?version=17", { Role: "boss", Availability: "active" }, 'invalid Role: "boss"'],
      [
        "/v1.50/swarm/update?version=42",
        { Dispatcher: { HeartbeatPeriod: "5s" } },
        "invalid JSON: json: cannot unmarshal string into Go struct field DispatcherConfig.Dispatcher.HeartbeatPeriod of type time.Duration",
      ],
      [
        "/v1.50/swarm/update?version=42",
        { Dispatcher: { HeartbeatPeriod: -1 } },
        "invalid swarm spec: Dispatcher.HeartbeatPeriod: heartbeat time period cannot be a negative duration",
      ],
      [
        "/v1.50/swarm/update?version=42",
        { Raft: { SnapshotInterval: 5000 } },
        "Raft.SnapshotInterval (--snapshot-interval) is not supported by shoal: leave it unset",
      ],
      ["/v1.50/swarm/update?version=42", { Name: "other" }, 'swarm spec must be named "default"'],
      [
        "/v1.50/swarm/join",
        { RemoteAddrs: ["192.0.2.1:2377"], JoinToken: "x".repeat(300) },
        "invalid swarm join request: JoinToken: must be at most 256 characters",
      ],
    ];
    for (const [path, body, message] of cases) {
      expectError(await postJSON(path, body), 400, message);
    }
    expect(backend.calls).toEqual([]);
    // Everything still answers.
    expect((await call("GET", "/v1.50/nodes")).status).toBe(200);
    expect((await call("GET", "/v1.50/swarm")).status).toBe(200);
  });

  test("issue 9 case 5: an oversized body is 413; a body nested a million levels deep is a cheap 400", async () => {
    backend.mode = "manager";
    let r = await call("POST", "/v1.50/nodes/beta/update?version=17", {
      body: JSON.stringify({ Labels: { big: "x".repeat(2 * 1024 * 1024) }, Role: "worker", Availability: "active" }),
    });
    expectError(r, 413, "request body is too large: at most 1048576 bytes are accepted");
    const deep = `{"Name":"t","Labels":${'{"a":'.repeat(1_000_000)}"x"${"}".repeat(1_000_000)}}`;
    r = await call("POST", "/v1.50/swarm/update?version=42", { body: deep });
    expectError(r, 400, "invalid JSON: the body nests deeper than 32 levels");
    r = await call("POST", "/v1.50/swarm/update?version=42", { body: `${"[".repeat(100)}${"]".repeat(100)}` });
    expectError(r, 400, "invalid JSON: the body nests deeper than 32 levels");
    expect(backend.calls).toEqual([]);
    expect((await call("GET", "/v1.50/nodes")).status).toBe(200);
  });

  test("POST /swarm/update parses version and rotate flags", async () => {
    backend.mode = "manager";
    const spec = defaultSpec();
    expectError(
      await postJSON("/v1.50/swarm/update", spec),
      400,
      `invalid swarm version '': strconv.ParseUint: parsing "": invalid syntax`,
    );
    expectError(
      await postJSON("/v1.50/swarm/update?version=abc", spec),
      400,
      `invalid swarm version 'abc': strconv.ParseUint: parsing "abc": invalid syntax`,
    );
    expectError(
      await postJSON("/v1.50/swarm/update?version=-1", spec),
      400,
      `invalid swarm version '-1': strconv.ParseUint: parsing "-1": invalid syntax`,
    );
    expectError(
      await postJSON("/v1.50/swarm/update?version=42&rotateWorkerToken=maybe", spec),
      400,
      "invalid value for rotateWorkerToken: maybe",
    );
    expect(backend.calls).toEqual([]);
    const r = await postJSON(
      "/v1.50/swarm/update?rotateWorkerToken=true&rotateManagerToken=false&rotateManagerUnlockKey=false&version=42",
      spec,
    );
    expect(r.status).toBe(200);
    expect(backend.lastCall("swarmUpdate")).toEqual([
      spec,
      { version: 42, rotateWorkerToken: true, rotateManagerToken: false, rotateManagerUnlockKey: false },
    ]);
    expectError(await postJSON("/v1.50/swarm/update?version=42", spec), 500, "update out of sequence");
  });

  test("GET /swarm/unlockkey and POST /swarm/unlock: dockerd's shapes and statuses", async () => {
    backend.mode = "manager";
    let r = await call("GET", "/v1.50/swarm/unlockkey");
    expect(r.status).toBe(200);
    expect(JSON.parse(r.body)).toEqual({ UnlockKey: "" });
    backend.unlockKey = "SWMKEY-1-key";
    expect(JSON.parse((await call("GET", "/v1.50/swarm/unlockkey")).body)).toEqual({ UnlockKey: "SWMKEY-1-key" });
    expectError(await postJSON("/v1.50/swarm/unlock", { UnlockKey: "SWMKEY-1-key" }), 409, "swarm is not locked");

    backend.mode = "locked";
    expectError(await call("GET", "/v1.50/swarm/unlockkey"), 503, MSG_LOCKED);
    expectError(await call("GET", "/v1.50/swarm"), 503, MSG_LOCKED);
    expect((await call("GET", "/_ping")).headers.swarm).toBe("locked");
    expectError(
      await postJSON("/v1.50/swarm/unlock", { UnlockKey: 5 }),
      400,
      "invalid JSON: json: cannot unmarshal number into Go struct field UnlockRequest.UnlockKey of type string",
    );
    expectError(await postJSON("/v1.50/swarm/unlock", { UnlockKey: "SWMKEY-1-bad" }), 401, MSG_INVALID_UNLOCK_KEY);
    expect(backend.lastCall("swarmUnlock")).toEqual(["SWMKEY-1-bad"]);
    r = await postJSON("/v1.50/swarm/unlock", { UnlockKey: "SWMKEY-1-key" });
    expect(r.status).toBe(200);
    expect(backend.mode).toBe("manager");
  });

  test("GET /nodes passes docker's filters in both encodings", async () => {
    backend.mode = "manager";
    const list = async (filters: unknown) => {
      const r = await call("GET", `/v1.50/nodes?filters=${encodeURIComponent(JSON.stringify(filters))}`);
      expect(r.status).toBe(200);
      return (JSON.parse(r.body) as Node[]).map((n) => n.Description.Hostname);
    };
    expect(await list({ role: { manager: true } })).toEqual(["alpha", "beta"]);
    expect(backend.lastCall("nodeList")).toEqual([{ role: ["manager"] }]);
    expect(await list({ role: ["worker"] })).toEqual(["gamma"]);
    expect(backend.lastCall("nodeList")).toEqual([{ role: ["worker"] }]);
    expect(await list({ name: { a: true, b: true }, "node.label": ["x=y"] })).toEqual(["alpha", "beta", "gamma"]);
    expect(backend.lastCall("nodeList")).toEqual([{ name: ["a", "b"], "node.label": ["x=y"] }]);
    expect((await call("GET", "/v1.50/nodes")).status).toBe(200);
    expect(backend.lastCall("nodeList")).toEqual([{}]);
    const calls = backend.calls.length;
    expectError(await call("GET", "/v1.50/nodes?filters=%7Bnope"), 400, "invalid filter '{nope'");
    expectError(
      await call("GET", `/v1.50/nodes?filters=${encodeURIComponent('{"colour":{"red":true}}')}`),
      400,
      "invalid filter 'colour'",
    );
    expect(backend.calls.length).toBe(calls);
  });

  test("nodes: inspect, update, remove", async () => {
    backend.mode = "manager";
    let r = await call("GET", "/v1.50/nodes/beta");
    expect(r.headers["content-type"]).toBe("application/json");
    expect(JSON.parse(r.body).ID).toBe(BETA_ID);
    const spec: NodeSpec = { Labels: { zone: "a" }, Role: "manager", Availability: "drain" };
    expectError(
      await postJSON("/v1.50/nodes/beta/update", spec),
      400,
      `invalid node version '': strconv.ParseUint: parsing "": invalid syntax`,
    );
    r = await postJSON("/v1.50/nodes/beta/update?version=17", spec);
    expect(r.status).toBe(200);
    expect(r.body).toBe("");
    expect(backend.lastCall("nodeUpdate")).toEqual(["beta", 17, spec]);
    r = await call("DELETE", `/v1.50/nodes/${GAMMA_ID}?force=1`);
    expect(r.status).toBe(200);
    expect(backend.lastCall("nodeRemove")).toEqual([GAMMA_ID, true]);
    // Refs are URL-decoded path segments.
    expectError(await call("DELETE", "/v1.50/nodes/no%20such"), 404, "node no such not found");
  });
});

describe("parseFilters", () => {
  test("both encodings, empty input, and errors", () => {
    expect(parseFilters(undefined)).toEqual({});
    expect(parseFilters("")).toEqual({});
    expect(parseFilters("{}")).toEqual({});
    expect(parseFilters('{"role":{"manager":true,"worker":false}}')).toEqual({ role: ["manager", "worker"] });
    expect(parseFilters('{"role":["manager","manager"],"id":[]}')).toEqual({ role: ["manager"], id: [] });
    const proto = parseFilters('{"__proto__":["x"]}');
    expect(Object.getPrototypeOf(proto)).toBe(Object.prototype);
    expect(Object.keys(proto)).toEqual(["__proto__"]);
    for (const bad of ["{", "[]", "null", '"x"', '{"a":"b"}', '{"a":[1]}', '{"a":{"b":"yes"}}']) {
      let err: unknown;
      try {
        parseFilters(bad);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(ApiError);
      expect((err as ApiError).status).toBe(400);
      expect((err as ApiError).message).toBe(`invalid filter '${bad}'`);
    }
    expect(() => validateFilterKeys({ role: [], zone: [] }, ["role"])).toThrow("invalid filter 'zone'");
  });
});

// ---- the real docker CLI -------------------------------------------------------------------------------

const DOCKER = [process.env.DOCKER_BIN, "/usr/local/bin/docker", "/usr/bin/docker"].find(
  (p): p is string => !!p && existsSync(p),
);

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function docker(...args: string[]): Promise<Run> {
  return new Promise((resolve, reject) => {
    execFile(
      DOCKER!,
      args,
      {
        timeout: 20_000,
        env: {
          PATH: process.env.PATH ?? "/usr/bin:/bin",
          HOME: dir,
          DOCKER_HOST: `unix://${sock}`,
          DOCKER_CONFIG: join(dir, "docker-config"), // no user contexts, credentials or CLI plugins
        },
      },
      (err, stdout, stderr) => {
        if (err && typeof err.code !== "number") {
          reject(err); // timeout, spawn failure
          return;
        }
        resolve({ code: err ? (err.code as number) : 0, stdout, stderr });
      },
    );
  });
}

function expectOk(r: Run): void {
  if (r.code !== 0) throw new Error(`docker exited ${r.code}: ${r.stderr}`);
}

describe.skipIf(!DOCKER)("the real docker CLI against the engine API", () => {
  test("docker version", async () => {
    const r = await docker("version");
    expectOk(r);
    expect(r.stdout).toMatch(/^Server: shoal$/m);
    expect(r.stdout).toMatch(/API version:\s+1\.50 \(minimum version 1\.24\)/);
    expect(r.stdout).toContain(`Version:          ${VERSION}`);
  });

  test("docker info, with the swarm inactive and active", async () => {
    let r = await docker("info");
    expectOk(r);
    expect(r.stdout).toMatch(/^ Swarm: inactive$/m);
    expect(r.stdout).toMatch(/^ Name: alpha$/m);
    expect(r.stdout).toMatch(/^ Storage Driver: shoal$/m);
    expect(r.stdout).toMatch(/^ OSType: linux$/m);
    // The firewall backend, under the storage driver (what this docker CLI prints of /info's DriverStatus).
    expect(r.stdout).toContain(
      " Storage Driver: shoal\n  Firewall Backend: iptables\n  Program: iptables-legacy\n" +
        "  nftables: unavailable (nft: Could not process rule: Operation not supported)\n",
    );
    const fw = await docker("info", "--format", "{{.FirewallBackend.Driver}}");
    expectOk(fw);
    expect(fw.stdout.trim()).toBe("iptables");
    expect(r.stderr).not.toMatch(/ERROR|WARNING/);
    backend.mode = "manager";
    r = await docker("info");
    expectOk(r);
    expect(r.stdout).toMatch(/^ Swarm: active$/m);
    expect(r.stdout).toMatch(/^ {2}NodeID: n0de1d000000000000000000a$/m);
    expect(r.stdout).toMatch(/^ {2}Is Manager: true$/m);
    expect(r.stdout).toMatch(/^ {2}ClusterID: c1uster000000000000000000$/m);
    expect(r.stdout).toMatch(/^ {2}Managers: 2$/m);
    expect(r.stdout).toMatch(/^ {2}Nodes: 3$/m);
    expect(r.stdout).toMatch(/^ {3}Heartbeat Period: 5 seconds$/m);
    expect(r.stdout).toMatch(/^ {3}127\.0\.0\.1:2377$/m);
    expect(r.stderr).not.toMatch(/ERROR/);
    backend.mode = "worker";
    r = await docker("info", "--format", "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}");
    expectOk(r);
    expect(r.stdout.trim()).toBe("active false");
  });

  test("docker swarm init prints the manager line and the worker join command", async () => {
    const r = await docker("swarm", "init", "--advertise-addr", "127.0.0.1");
    expectOk(r);
    expect(r.stdout).toContain(`Swarm initialized: current node (${SELF_ID}) is now a manager.`);
    expect(r.stdout).toContain("docker swarm join --token SWMTKN-1-worker0 127.0.0.1:2377");
    expect(backend.lastCall("swarmInit")?.[0]).toMatchObject({
      advertiseAddr: "127.0.0.1",
      listenAddr: "0.0.0.0:2377",
      spec: defaultSpec(),
    });
    const again = await docker("swarm", "init", "--advertise-addr", "127.0.0.1");
    expect(again.code).toBe(1);
    expect(again.stderr.trim()).toBe(`Error response from daemon: ${alreadyInSwarm().message}`);
  });

  test("docker node ls marks self and shows manager status", async () => {
    backend.mode = "manager";
    const r = await docker("node", "ls");
    expectOk(r);
    const lines = r.stdout.trimEnd().split("\n");
    expect(lines[0]).toMatch(/^ID\s+HOSTNAME\s+STATUS\s+AVAILABILITY\s+MANAGER STATUS\s+ENGINE VERSION$/);
    expect(lines[1]).toMatch(new RegExp(`^${SELF_ID} \\*\\s+alpha\\s+Ready\\s+Active\\s+Leader\\s+${VERSION}$`));
    expect(lines[2]).toMatch(new RegExp(`^${BETA_ID}\\s+beta\\s+Ready\\s+Active\\s+Reachable\\s+${VERSION}$`));
    expect(lines[3]).toMatch(new RegExp(`^${GAMMA_ID}\\s+gamma\\s+Ready\\s+Active\\s+${VERSION}$`));
    const managers = await docker("node", "ls", "-q", "--filter", "role=manager");
    expectOk(managers);
    expect(managers.stdout.trim().split("\n")).toEqual([SELF_ID, BETA_ID]);
    expect(backend.lastCall("nodeList")).toEqual([{ role: ["manager"] }]);
  });

  test("docker node inspect self and --pretty <hostname>", async () => {
    backend.mode = "manager";
    let r = await docker("node", "inspect", "self");
    expectOk(r);
    const [node] = JSON.parse(r.stdout) as Node[];
    expect(node?.ID).toBe(SELF_ID);
    expect(node?.ManagerStatus).toEqual({ Leader: true, Reachability: "reachable", Addr: "127.0.0.1:2377" });
    r = await docker("node", "inspect", "--pretty", "beta");
    expectOk(r);
    expect(r.stdout).toMatch(new RegExp(`^ID:\\s+${BETA_ID}$`, "m"));
    expect(r.stdout).toMatch(/^Hostname:\s+beta$/m);
    expect(r.stdout).toMatch(/^ State:\s+Ready$/m);
    expect(r.stdout).toMatch(
      /^Manager Status:\n Address:\s+127\.0\.0\.2:2377\n Raft Status:\s+Reachable\n Leader:\s+No$/m,
    );
    expect(r.stdout).toMatch(/^ CPUs:\s+4$/m);
    expect(r.stdout).toMatch(/^ Memory:\s+8GiB$/m);
    expect(r.stdout).toMatch(/^ Issuer Subject:\s+MBMxETAPBgNVBAMTCHN3YXJtLWNh$/m);
  });

  test("docker node update --availability drain sends the whole spec with the version", async () => {
    backend.mode = "manager";
    backend.nodes[2]!.Spec.Labels = { zone: "b" };
    const r = await docker("node", "update", "--availability", "drain", GAMMA_ID);
    expectOk(r);
    expect(r.stdout.trim()).toBe(GAMMA_ID);
    expect(backend.lastCall("nodeUpdate")).toEqual([
      GAMMA_ID,
      17,
      { Labels: { zone: "b" }, Role: "worker", Availability: "drain" },
    ]);
    const ls = await docker("node", "ls", "--format", "{{.Hostname}} {{.Availability}}");
    expect(ls.stdout).toContain("gamma Drain");
  });

  test("docker node rm, and a node that does not exist", async () => {
    backend.mode = "manager";
    let r = await docker("node", "rm", "gamma");
    expectOk(r);
    expect(r.stdout.trim()).toBe("gamma");
    expect(backend.lastCall("nodeRemove")).toEqual(["gamma", false]);
    r = await docker("node", "rm", "--force", BETA_ID);
    expectOk(r);
    expect(backend.lastCall("nodeRemove")).toEqual([BETA_ID, true]);
    r = await docker("node", "inspect", "xyz");
    expect(r.code).toBe(1);
    expect(r.stderr.trim()).toBe("Error response from daemon: node xyz not found");
    r = await docker("node", "rm", "xyz");
    expect(r.code).toBe(1);
    expect(r.stderr.trim()).toBe("Error response from daemon: node xyz not found");
  });

  test("docker swarm join-token worker, -q, and --rotate", async () => {
    backend.mode = "manager";
    let r = await docker("swarm", "join-token", "worker");
    expectOk(r);
    expect(r.stdout).toContain("To add a worker to this swarm, run the following command:");
    expect(r.stdout).toContain("docker swarm join --token SWMTKN-1-worker0 127.0.0.1:2377");
    r = await docker("swarm", "join-token", "-q", "worker");
    expectOk(r);
    expect(r.stdout).toBe("SWMTKN-1-worker0\n");
    r = await docker("swarm", "join-token", "--rotate", "worker");
    expectOk(r);
    expect(r.stdout).toContain("Successfully rotated worker join token.");
    expect(r.stdout).toContain("docker swarm join --token SWMTKN-1-worker1 127.0.0.1:2377");
    const [spec, opts] = backend.lastCall("swarmUpdate") ?? [];
    expect(opts).toEqual({
      version: 42,
      rotateWorkerToken: true,
      rotateManagerToken: false,
      rotateManagerUnlockKey: false,
    });
    expect(spec).toMatchObject({ Name: "default", Raft: { ElectionTick: 10, HeartbeatTick: 1 } });
  });

  test("docker node ps, service ls, secret ls, config ls: shoal runs no services, so there are none", async () => {
    backend.mode = "manager";
    let r = await docker("node", "ps", "self");
    expectOk(r);
    expect(r.stdout.trim()).toMatch(/^ID\s+NAME\s+IMAGE\s+NODE\s+DESIRED STATE\s+CURRENT STATE\s+ERROR\s+PORTS$/);
    r = await docker("service", "ls", "-q");
    expectOk(r);
    expect(r.stdout).toBe("");
    for (const what of ["secret", "config"]) {
      r = await docker(what, "ls", "-q");
      expectOk(r);
      expect(r.stdout).toBe("");
    }
    r = await docker("service", "create", "--name", "web", "nginx");
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(
      "Error response from daemon: shoal runs no services: it manages nodes and overlay networks, and containers started with docker run",
    );
    r = await docker("service", "rm", "web");
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("service web not found");
    backend.mode = "worker";
    r = await docker("service", "ls");
    expect(r.code).toBe(1);
    expect(r.stderr.trim()).toBe(`Error response from daemon: ${workerNode().message}`);
  });

  test("docker swarm leave: a manager without --force gets dockerd's 503; with --force it leaves", async () => {
    backend.mode = "manager";
    let r = await docker("swarm", "leave");
    expect(r.code).toBe(1);
    expect(r.stderr.trim()).toBe(`Error response from daemon: ${LEAVE_MANAGER_MSG}`);
    expect(backend.mode).toBe("manager");
    r = await docker("swarm", "leave", "--force");
    expectOk(r);
    expect(r.stdout.trim()).toBe("Node left the swarm.");
    expect(backend.lastCall("swarmLeave")).toEqual([true]);
  });

  test("docker swarm join reports the role from /info", async () => {
    const r = await docker("swarm", "join", "--token", "SWMTKN-1-x", "192.0.2.1:2377");
    expectOk(r);
    expect(r.stdout.trim()).toBe("This node joined a swarm as a worker.");
    expect(backend.lastCall("swarmJoin")?.[0]).toMatchObject({
      remoteAddrs: ["192.0.2.1:2377"],
      joinToken: "SWMTKN-1-x",
    });
  });

  test("docker on a node outside a swarm gets dockerd's not-a-manager message", async () => {
    const r = await docker("node", "ls");
    expect(r.code).toBe(1);
    expect(r.stderr.trim()).toBe(`Error response from daemon: ${notManager().message}`);
  });
});
