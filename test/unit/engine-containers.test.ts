// src/engine: the /networks, /containers and /exec routes. Raw HTTP against test backends (a recording
// ContainerBackend, an in-memory NetworkBackend) checks the wire: statuses, bodies, Docker's stream framing,
// the early headers of /wait and the hijacked connections of attach and exec. Then the real docker CLI
// runs containers through the real ContainerRuntime (root only: real namespaces).

import { execFile } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { request as httpRequest, type IncomingHttpHeaders } from "node:http";
import { connect } from "node:net";
import os from "node:os";
import { join } from "node:path";
import pino from "pino";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, test } from "vitest";
import { ApiError } from "../../src/engine/errors.js";
import { filterNetworks } from "../../src/engine/routes/networks.js";
import { EngineServer } from "../../src/engine/server.js";
import { frame } from "../../src/engine/streams.js";
import type {
  AttachOptions,
  AttachSession,
  ContainerBackend,
  ContainerCreateRequest,
  ContainerJSON,
  ContainerListOptions,
  ContainerSummary,
  ExecCreateRequest,
  ExecInspect,
  ExecSession,
  LogsOptions,
  NetworkResource,
  OutputChunk,
  OutputStream,
  PendingWait,
  SwarmBackend,
  SwarmInfo,
  WaitCondition,
  WaitResponse,
} from "../../src/engine/types.js";
import { ContainerRuntime } from "../../src/runtime/runtime.js";
import { CAN_RUN_CONTAINERS, TestNetworkBackend, testContainerd, VethAttacher } from "./runtime-fixtures.js";

const CID = "c0ffee0000000000000000000000000000000000000000000000000000000001";

/** Only what /_ping and /info need. */
/** What this node is in the swarm (the network prune's answer depends on it). */
let swarmMode: "inactive" | "manager" | "worker" = "inactive";

const swarm = {
  hostname: () => "testhost",
  async swarmInfo(): Promise<SwarmInfo> {
    return {
      NodeID: "",
      NodeAddr: "",
      LocalNodeState: swarmMode === "inactive" ? "inactive" : "active",
      ControlAvailable: swarmMode === "manager",
      Error: "",
      RemoteManagers: null,
    };
  },
} as unknown as SwarmBackend;

function chunksOf(items: OutputChunk[]): AsyncIterable<OutputChunk> {
  return (async function* () {
    for (const c of items) yield c;
  })();
}

/** Records calls; answers from canned data. */
class FakeContainers implements ContainerBackend {
  calls: { op: string; args: unknown[] }[] = [];
  running = false;
  tty = false;
  waitResolve: ((r: WaitResponse) => void) | undefined;
  cancelled = 0;
  output: OutputChunk[] = [
    { stream: 1, data: Buffer.from("out\n") },
    { stream: 2, data: Buffer.from("err\n") },
  ];
  private rec(op: string, ...args: unknown[]): void {
    this.calls.push({ op, args });
  }
  private find(ref: string): void {
    if (ref !== "c1" && ref !== CID) throw new ApiError(404, `No such container: ${ref}`);
  }
  async containerCreate(name: string | undefined, req: ContainerCreateRequest) {
    this.rec("create", name, req);
    if (req.Image !== "host") throw new ApiError(400, `image "${req.Image}" is not available`);
    return { Id: CID, Warnings: [] };
  }
  async containerStart(ref: string) {
    this.rec("start", ref);
    this.find(ref);
    const was = this.running;
    this.running = true;
    return !was;
  }
  async containerStop(ref: string, opts: { timeout?: number; signal?: string }) {
    this.rec("stop", ref, opts);
    this.find(ref);
    const was = this.running;
    this.running = false;
    return was;
  }
  async containerKill(ref: string, signal: string) {
    this.rec("kill", ref, signal);
    this.find(ref);
  }
  async containerWait(ref: string, condition: WaitCondition): Promise<PendingWait> {
    this.rec("wait", ref, condition);
    this.find(ref);
    return {
      result: new Promise<WaitResponse>((resolve) => {
        this.waitResolve = resolve;
      }),
      cancel: () => {
        this.cancelled++;
      },
    };
  }
  async containerRemove(ref: string, opts: { force: boolean }) {
    this.rec("remove", ref, opts);
    this.find(ref);
  }
  async containerList(opts: ContainerListOptions): Promise<ContainerSummary[]> {
    this.rec("list", opts);
    return [];
  }
  async containerInspect(ref: string): Promise<ContainerJSON> {
    this.find(ref);
    return { Id: CID, Name: "/c1" } as ContainerJSON;
  }
  async containerLogs(ref: string, opts: LogsOptions): Promise<OutputStream> {
    this.rec("logs", ref, opts);
    this.find(ref);
    return { tty: this.tty, chunks: chunksOf(this.output), cancel: () => undefined };
  }
  async containerAttach(ref: string, opts: AttachOptions): Promise<AttachSession> {
    this.rec("attach", ref, opts);
    this.find(ref);
    return { tty: this.tty, chunks: chunksOf(this.output), stdin: undefined, cancel: () => undefined };
  }
  async execCreate(ref: string, req: ExecCreateRequest): Promise<string> {
    this.rec("execCreate", ref, req);
    this.find(ref);
    return "e".repeat(64);
  }
  async execStart(id: string): Promise<ExecSession> {
    this.rec("execStart", id);
    if (id !== "e".repeat(64)) throw new ApiError(404, `No such exec instance: ${id}`);
    return {
      tty: false,
      attachStdin: true,
      run: async (io) => {
        io.output({ stream: 1, data: Buffer.from("hello\n") });
        if (io.stdin) {
          // Echo stdin back on stderr, upper-cased, until the client half-closes.
          let text = "";
          for await (const c of io.stdin) text += (c as Buffer).toString();
          io.output({ stream: 2, data: Buffer.from(text.toUpperCase()) });
        }
        return 3;
      },
    };
  }
  async containerTop(ref: string, psArgs: string): Promise<{ Titles: string[]; Processes: string[][] }> {
    this.rec("containerTop", ref, psArgs);
    this.find(ref);
    return { Titles: ["PID", "CMD"], Processes: [["42", "sleep 1000"]] };
  }

  async execInspect(id: string): Promise<ExecInspect> {
    return { ID: id, Running: false, ExitCode: 3 } as ExecInspect;
  }
  async containerRename(ref: string, newName: string): Promise<void> {
    this.rec("containerRename", ref, newName);
  }
  async containerPause(ref: string): Promise<void> {
    this.rec("containerPause", ref);
  }
  async containerUnpause(ref: string): Promise<void> {
    this.rec("containerUnpause", ref);
  }
  async containerStats(): Promise<never> {
    throw new Error("not faked");
  }
  async containerPrune(): Promise<{ deleted: string[]; reclaimedBytes: number }> {
    this.rec("containerPrune");
    return { deleted: [], reclaimedBytes: 0 };
  }
  containerCounts() {
    return { total: 2, running: 1, paused: 0, stopped: 1 };
  }
}

/** A container create request with nothing asked, as the runtime receives it. */
const ZERO_CREATE = {
  Tty: false,
  OpenStdin: false,
  StdinOnce: false,
  HostConfig: { AutoRemove: false },
  NetworkingConfig: { EndpointsConfig: {} },
};

let dir: string;
let sock: string;
let server: EngineServer | undefined;
let logLines: string[];

async function listen(extra: {
  networks?: TestNetworkBackend;
  containers?: ContainerBackend;
  images?: ContainerRuntime["imageService"];
}): Promise<void> {
  logLines = [];
  const logger = pino({ level: "debug" }, { write: (line: string) => void logLines.push(line) });
  server = await EngineServer.listen({ socketPath: sock, backend: swarm, logger, ...extra });
}

/** The paths the server saw, from its request log. */
function requestedPaths(): string[] {
  return logLines
    .map((l) => JSON.parse(l) as { msg: string; method?: string; path?: string })
    .filter((l) => l.msg === "request" || l.msg === "upgrade request")
    .map((l) => `${l.method} ${l.path}`);
}

beforeEach(async () => {
  swarmMode = "inactive";
  dir = await mkdtemp(join(os.tmpdir(), "shoal-engine-ctr-"));
  sock = join(dir, "shoald.sock");
});

afterEach(async () => {
  await server?.close();
  server = undefined;
  await rm(dir, { recursive: true, force: true });
});

interface Reply {
  status: number;
  headers: IncomingHttpHeaders;
  body: Buffer;
}

function call(method: string, path: string, body?: unknown): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = httpRequest({ socketPath: sock, method, path, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
      res.on("error", reject);
    });
    req.on("error", reject);
    if (body !== undefined) {
      req.setHeader("Content-Type", "application/json");
      req.end(JSON.stringify(body));
    } else req.end();
  });
}

const json = (r: Reply): unknown => JSON.parse(r.body.toString("utf8"));

function expectError(r: Reply, status: number, message: string): void {
  expect(r.status).toBe(status);
  expect(r.headers["content-type"]).toBe("application/json");
  expect(json(r)).toEqual({ message });
}

/** Splits Docker's multiplexed stream into [stream, text] pairs. */
function demux(buf: Buffer): [number, string][] {
  const out: [number, string][] = [];
  let i = 0;
  while (i + 8 <= buf.length) {
    const size = buf.readUInt32BE(i + 4);
    out.push([buf[i]!, buf.subarray(i + 8, i + 8 + size).toString("utf8")]);
    i += 8 + size;
  }
  expect(i).toBe(buf.length);
  return out;
}

/** A hijacking request written by hand, as the docker CLI sends it; resolves to everything it read. */
function hijack(path: string, body: string, stdin?: string): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const s = connect(sock);
    const chunks: Buffer[] = [];
    s.on("data", (c: Buffer) => {
      chunks.push(c);
      // Once the 101 is in, send stdin and half-close, as the CLI does at the end of its input.
      if (stdin !== undefined && Buffer.concat(chunks).includes("\r\n\r\n")) {
        s.end(stdin);
        stdin = undefined;
      }
    });
    s.on("end", () => resolve(Buffer.concat(chunks)));
    s.on("error", reject);
    s.write(
      `POST ${path} HTTP/1.1\r\nHost: api.moby.localhost\r\nUser-Agent: Docker-Client/28.2.2 (linux)\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: Upgrade\r\nContent-Type: application/json\r\nUpgrade: tcp\r\n\r\n${body}`,
    );
  });
}

function splitHead(raw: Buffer): { head: string; body: Buffer } {
  const at = raw.indexOf("\r\n\r\n");
  return { head: raw.subarray(0, at).toString("utf8"), body: raw.subarray(at + 4) };
}

// ---- without backends ------------------------------------------------------------------------------------

describe("a daemon without network or container backends", () => {
  test("answers 503 with a reason, and /info counts no containers", async () => {
    await listen({});
    expectError(
      await call("GET", "/v1.50/networks"),
      503,
      "networks are not available: this daemon runs without a network backend",
    );
    expectError(
      await call("GET", "/v1.50/containers/json"),
      503,
      "containers are not available: this daemon runs without a container runtime",
    );
    expect((json(await call("GET", "/info")) as { Containers: number }).Containers).toBe(0);
  });
});

// ---- networks ---------------------------------------------------------------------------------------------

describe("network routes", () => {
  let nets: TestNetworkBackend;
  beforeEach(async () => {
    nets = new TestNetworkBackend(new VethAttacher());
    await listen({ networks: nets });
  });

  test("create, list with filters, inspect, remove", async () => {
    let r = await call("POST", "/v1.50/networks/create", {
      Name: "n1",
      Driver: "overlay",
      Attachable: true,
      Labels: { tier: "front" },
      Options: { encrypted: "" },
    });
    expect(r.status).toBe(201);
    const { Id, Warning } = json(r) as { Id: string; Warning: string };
    expect(Id).toMatch(/^[0-9a-f]{25}$/);
    expect(Warning).toBe("");
    await call("POST", "/v1.50/networks/create", { Name: "n2", Driver: "overlay" });
    expectError(
      await call("POST", "/v1.50/networks/create", { Name: "n1", Driver: "overlay" }),
      409,
      "network with name n1 already exists",
    );
    expectError(
      await call("POST", "/v1.50/networks/create", { Driver: "overlay" }),
      400,
      "network name must not be empty",
    );

    const names = async (filters?: unknown): Promise<string[]> => {
      const q = filters === undefined ? "" : `?filters=${encodeURIComponent(JSON.stringify(filters))}`;
      const res = await call("GET", `/v1.50/networks${q}`);
      expect(res.status).toBe(200);
      return (json(res) as NetworkResource[]).map((n) => n.Name).sort();
    };
    expect(await names()).toEqual(["n1", "n2"]);
    expect(await names({ driver: { overlay: true } })).toEqual(["n1", "n2"]);
    expect(await names({ driver: { bridge: true } })).toEqual([]);
    expect(await names({ name: { "1$": true } })).toEqual(["n1"]);
    expect(await names({ label: ["tier=front"] })).toEqual(["n1"]);
    expect(await names({ label: ["tier"], type: ["custom"] })).toEqual(["n1"]);
    expect(await names({ type: ["builtin"] })).toEqual([]);
    expect(await names({ id: [Id.slice(0, 6)] })).toEqual(["n1"]);
    expect(await names({ scope: ["swarm"] })).toEqual(["n1", "n2"]);
    expectError(
      await call("GET", `/v1.50/networks?filters=${encodeURIComponent('{"colour":["red"]}')}`),
      400,
      "invalid filter 'colour'",
    );
    expectError(
      await call("GET", `/v1.50/networks?filters=${encodeURIComponent('{"type":["odd"]}')}`),
      400,
      "invalid filter: 'type'='odd'",
    );

    r = await call("GET", "/v1.50/networks/n1");
    expect(json(r)).toMatchObject({ Name: "n1", Id, Driver: "overlay", Scope: "swarm", Attachable: true });
    expect((json(await call("GET", `/v1.50/networks/${Id.slice(0, 5)}`)) as NetworkResource).Name).toBe("n1");
    expectError(await call("GET", "/v1.50/networks/nope"), 404, "network nope not found");
    r = await call("DELETE", "/v1.50/networks/n2");
    expect(r.status).toBe(204);
    expectError(await call("DELETE", "/v1.50/networks/n2"), 404, "network n2 not found");
  });

  test("connect and disconnect pass the container and endpoint config to the backend", async () => {
    nets.containers = {
      connect: async () => undefined,
      disconnect: async () => undefined,
    };
    await call("POST", "/v1.50/networks/create", { Name: "n1", Driver: "overlay" });
    let r = await call("POST", "/v1.50/networks/n1/connect", {
      Container: "c1",
      EndpointConfig: { IPAMConfig: { IPv4Address: "10.77.1.9" }, Aliases: ["a1"], Links: null, MacAddress: "" },
    });
    expect(r.status).toBe(200);
    r = await call("POST", "/v1.50/networks/n1/disconnect", { Container: "c1", Force: true });
    expect(r.status).toBe(200);
    expect(nets.calls.filter((c) => c.op !== "networkCreate")).toEqual([
      {
        op: "networkConnect",
        args: ["n1", "c1", { IPAMConfig: { IPv4Address: "10.77.1.9" }, Aliases: ["a1"] }],
      },
      { op: "networkDisconnect", args: ["n1", "c1", true] },
    ]);
    expectError(
      await call("POST", "/v1.50/networks/n1/connect", {}),
      400,
      "invalid network connect request: Container must name the container to connect",
    );
  });

  test("POST /networks/prune: as dockerd, a manager removes the unused networks that match, never ingress", async () => {
    const created = async (body: Record<string, unknown>): Promise<string> =>
      (json(await call("POST", "/v1.50/networks/create", body)) as { Id: string }).Id;
    await created({ Name: "old", Labels: { tier: "front" } });
    await created({ Name: "busy", Labels: { tier: "front" } });
    await created({ Name: "plain" });
    await created({ Name: "keep", Labels: { tier: "front", keep: "yes" } });
    for (const n of nets.attacher.networks.values()) if (n.name === "keep") n.created = "2030-01-01T00:00:00Z";
    nets.inUse.add("busy");
    const prune = async (filters?: unknown) => {
      const q = filters === undefined ? "" : `?filters=${encodeURIComponent(JSON.stringify(filters))}`;
      return call("POST", `/v1.50/networks/prune${q}`);
    };
    // Not a manager (outside a swarm, or a worker): nothing is this node's to remove.
    expect(json(await prune())).toEqual({ NetworksDeleted: null });
    swarmMode = "worker";
    expect(json(await prune())).toEqual({ NetworksDeleted: null });
    expect(nets.calls.filter((c) => c.op === "networkRemove")).toEqual([]);
    swarmMode = "manager";
    // Filters are checked before anything is removed.
    expectError(await prune({ driver: ["overlay"] }), 400, "invalid filter 'driver'");
    expectError(await prune({ until: ["1h", "2h"] }), 400, "more than one until filter specified");
    expectError(await prune({ until: ["soon"] }), 400, 'failed to parse value as time or duration: "soon"');
    expect(nets.calls.filter((c) => c.op === "networkRemove")).toEqual([]);
    // label=tier=front, not label!=keep, older than a minute ago: "old" only ("busy" is in use).
    expect(json(await prune({ label: ["tier=front"], "label!": ["keep"], until: ["1m"] }))).toEqual({
      NetworksDeleted: ["old"],
    });
    expect(json(await prune({ until: ["2029-12-31T00:00:00Z"] }))).toEqual({ NetworksDeleted: ["plain"] });
    expect(json(await prune())).toEqual({ NetworksDeleted: ["keep"] });
    expect([...nets.attacher.networks.values()].map((n) => n.name)).toEqual(["busy"]);
  });

  test("filterNetworks: dangling and type", () => {
    const n = (Name: string, containers: number) =>
      ({
        Name,
        Id: Name,
        Driver: "overlay",
        Scope: "swarm",
        Labels: {},
        Containers: Object.fromEntries(Array.from({ length: containers }, (_, i) => [`c${i}`, {}])),
      }) as unknown as NetworkResource;
    const list = [n("ingress", 0), n("busy", 1), n("idle", 0)];
    expect(filterNetworks(list, { dangling: ["true"] }).map((x) => x.Name)).toEqual(["idle"]);
    expect(filterNetworks(list, { dangling: ["false"] }).map((x) => x.Name)).toEqual(["ingress", "busy"]);
    expect(filterNetworks(list, { type: ["builtin"] }).map((x) => x.Name)).toEqual(["ingress"]);
  });
});

// ---- containers (HTTP level) --------------------------------------------------------------------------------

describe("container routes", () => {
  let ctrs: FakeContainers;
  beforeEach(async () => {
    ctrs = new FakeContainers();
    await listen({ containers: ctrs });
  });

  test("create, start/stop with 204 and 304, kill, remove, list, inspect, /info counts", async () => {
    let r = await call("POST", "/v1.50/containers/create?name=c1", { Image: "host", Cmd: ["sleep", "1"] });
    expect(r.status).toBe(201);
    expect(json(r)).toEqual({ Id: CID, Warnings: [] });
    expectError(
      await call("POST", "/v1.50/containers/create", { Image: "alpine" }),
      400,
      'image "alpine" is not available',
    );
    expectError(
      await call("POST", "/v1.50/containers/create"),
      400,
      "config cannot be empty in order to create a container",
    );
    expect((await call("POST", "/v1.50/containers/c1/start")).status).toBe(204);
    expect((await call("POST", "/v1.50/containers/c1/start")).status).toBe(304);
    expect((await call("POST", "/v1.50/containers/c1/stop?t=3")).status).toBe(204);
    expect((await call("POST", "/v1.50/containers/c1/stop")).status).toBe(304);
    expectError(await call("POST", "/v1.50/containers/c1/stop?t=x"), 400, "invalid value for t: x");
    expect((await call("POST", "/v1.50/containers/c1/kill?signal=SIGHUP")).status).toBe(204);
    expect((await call("DELETE", "/v1.50/containers/c1?force=1")).status).toBe(204);
    expectError(await call("DELETE", "/v1.50/containers/nope"), 404, "No such container: nope");
    r = await call("GET", `/v1.50/containers/json?all=1&filters=${encodeURIComponent('{"status":{"exited":true}}')}`);
    expect(json(r)).toEqual([]);
    expect((json(await call("GET", "/v1.50/containers/c1/json")) as { Name: string }).Name).toBe("/c1");
    const info = json(await call("GET", "/info")) as Record<string, number>;
    expect([info.Containers, info.ContainersRunning, info.ContainersStopped]).toEqual([2, 1, 1]);
    expect(ctrs.calls.map((c) => [c.op, ...c.args])).toEqual([
      // What the runtime gets: the request decoded, with its zero values.
      ["create", "c1", { ...ZERO_CREATE, Image: "host", Cmd: ["sleep", "1"] }],
      ["create", undefined, { ...ZERO_CREATE, Image: "alpine" }],
      ["start", "c1"],
      ["start", "c1"],
      ["stop", "c1", { timeout: 3 }],
      ["stop", "c1", {}],
      ["kill", "c1", "SIGHUP"],
      ["remove", "c1", { force: true }],
      ["remove", "nope", { force: false }],
      ["list", { all: true, filters: { status: ["exited"] }, size: false }],
    ]);
  });

  test("wait sends its headers at once and the result when the condition is met", async () => {
    const headers = await new Promise<{ status: number; ct: string | undefined; body: Promise<string> }>(
      (resolve, reject) => {
        const req = httpRequest(
          { socketPath: sock, method: "POST", path: `/v1.50/containers/${CID}/wait?condition=next-exit`, agent: false },
          (res) => {
            let text = "";
            res.on("data", (c: Buffer) => {
              text += c.toString();
            });
            resolve({
              status: res.statusCode ?? 0,
              ct: res.headers["content-type"],
              body: new Promise((ok) => res.on("end", () => ok(text))),
            });
          },
        );
        req.on("error", reject);
        req.end();
      },
    );
    // The response has begun while the container has not exited yet.
    expect(headers).toMatchObject({ status: 200, ct: "application/json" });
    expect(ctrs.calls.at(-1)).toEqual({ op: "wait", args: [CID, "next-exit"] });
    ctrs.waitResolve!({ StatusCode: 137 });
    expect(JSON.parse(await headers.body)).toEqual({ StatusCode: 137 });
    expectError(await call("POST", "/v1.50/containers/nope/wait"), 404, "No such container: nope");
    expectError(await call("POST", "/v1.50/containers/c1/wait?condition=soon"), 400, 'invalid condition: "soon"');
  });

  test("a client that goes away stops waiting", async () => {
    const req = httpRequest({ socketPath: sock, method: "POST", path: "/v1.50/containers/c1/wait", agent: false });
    req.on("error", () => undefined);
    await new Promise<void>((resolve) => {
      req.on("response", () => resolve());
      req.end();
    });
    req.destroy();
    for (let i = 0; i < 50 && ctrs.cancelled === 0; i++) await new Promise((r) => setTimeout(r, 20));
    expect(ctrs.cancelled).toBe(1);
  });

  test("logs: multiplexed frames without a TTY (API 1.42+), raw bytes with one", async () => {
    let r = await call("GET", "/v1.50/containers/c1/logs?stdout=1&stderr=1&tail=all&timestamps=1&since=1700000000.5");
    expect(r.status).toBe(200);
    expect(r.headers["content-type"]).toBe("application/vnd.docker.multiplexed-stream");
    expect(demux(r.body)).toEqual([
      [1, "out\n"],
      [2, "err\n"],
    ]);
    expect(ctrs.calls.at(-1)!.args[1]).toEqual({
      stdout: true,
      stderr: true,
      follow: false,
      timestamps: true,
      tail: "all",
      since: 1700000000.5,
      until: 0,
    });
    r = await call("GET", "/v1.41/containers/c1/logs?stdout=1");
    expect(r.headers["content-type"]).toBe("application/vnd.docker.raw-stream");
    ctrs.tty = true;
    r = await call("GET", "/v1.50/containers/c1/logs?stdout=1");
    expect(r.headers["content-type"]).toBe("application/vnd.docker.raw-stream");
    expect(r.body.toString()).toBe("out\nerr\n");
    expectError(
      await call("GET", "/v1.50/containers/c1/logs"),
      400,
      "Bad parameters: you must choose at least one stream",
    );
    expect(frame(2, Buffer.from("ab"))).toEqual(Buffer.from([2, 0, 0, 0, 0, 0, 0, 2, 0x61, 0x62]));
  });

  test("exec: create, then start hijacks the connection (101 UPGRADED) and carries stdin both ways", async () => {
    const r = await call("POST", "/v1.50/containers/c1/exec", { Cmd: ["cat"], AttachStdin: true, AttachStdout: true });
    expect(r.status).toBe(201);
    const id = (json(r) as { Id: string }).Id;
    const raw = await hijack(`/v1.50/exec/${id}/start`, '{"Detach":false,"Tty":false}', "some input");
    const { head, body } = splitHead(raw);
    expect(head.split("\r\n")).toEqual([
      "HTTP/1.1 101 UPGRADED",
      "Content-Type: application/vnd.docker.multiplexed-stream",
      "Connection: Upgrade",
      "Upgrade: tcp",
    ]);
    expect(demux(body)).toEqual([
      [1, "hello\n"],
      [2, "SOME INPUT"],
    ]);
    expect(json(await call("GET", `/v1.50/exec/${id}/json`))).toMatchObject({ ExitCode: 3, Running: false });

    // Without an upgrade: a plain 200 with the stream.
    const plain = await call("POST", `/v1.50/exec/${id}/start`, { Detach: false });
    expect(plain.status).toBe(200);
    expect(demux(plain.body)).toEqual([[1, "hello\n"]]);

    // Errors before the hijack are ordinary HTTP answers on the raw connection.
    const missing = splitHead(await hijack("/v1.50/exec/nope/start", "{}"));
    expect(missing.head).toMatch(/^HTTP\/1\.1 404 Not Found\r\n/);
    expect(JSON.parse(missing.body.toString())).toEqual({ message: "No such exec instance: nope" });
    const elsewhere = splitHead(await hijack("/v1.50/containers/c1/json", ""));
    expect(elsewhere.head).toMatch(/^HTTP\/1\.1 404 Not Found\r\n/);
  });

  test("attach hijacks too and sends what the backend streams", async () => {
    const raw = await hijack("/v1.50/containers/c1/attach?stderr=1&stdout=1&stream=1", "");
    const { head, body } = splitHead(raw);
    expect(head).toMatch(/^HTTP\/1\.1 101 UPGRADED\r\n/);
    expect(demux(body)).toEqual([
      [1, "out\n"],
      [2, "err\n"],
    ]);
    expect(ctrs.calls.at(-1)).toEqual({
      op: "attach",
      args: ["c1", { stream: true, logs: false, stdin: false, stdout: true, stderr: true }],
    });
  });
});

// ---- the real docker CLI and the real runtime -----------------------------------------------------------

const DOCKER = [process.env.DOCKER_BIN, "/usr/local/bin/docker", "/usr/bin/docker"].find(
  (p): p is string => !!p && existsSync(p),
);

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function docker(...args: string[]): Promise<Run> {
  return dockerIn(undefined, ...args);
}

function dockerIn(stdin: string | undefined, ...args: string[]): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = execFile(
      DOCKER!,
      args,
      {
        timeout: 30_000,
        env: {
          PATH: process.env.PATH ?? "/usr/bin:/bin",
          HOME: dir,
          DOCKER_HOST: `unix://${sock}`,
          DOCKER_CONFIG: join(dir, "docker-config"),
        },
      },
      (err, stdout, stderr) => {
        if (err && typeof err.code !== "number") {
          reject(err);
          return;
        }
        resolve({ code: err ? (err.code as number) : 0, stdout, stderr });
      },
    );
    if (stdin !== undefined) child.stdin!.end(stdin);
    else child.stdin!.end();
  });
}

function ok(r: Run): Run {
  if (r.code !== 0) throw new Error(`docker exited ${r.code}: ${r.stderr}`);
  return r;
}

describe.skipIf(!DOCKER || !CAN_RUN_CONTAINERS)("the real docker CLI with the real container runtime", () => {
  let cdDir: string;
  let cd: Awaited<ReturnType<typeof testContainerd>>;

  beforeAll(async () => {
    cdDir = mkdtempSync(join(os.tmpdir(), "shoal-containerd-"));
    cd = await testContainerd(cdDir);
  });

  afterAll(async () => {
    await cd?.stop();
    rmSync(cdDir, { recursive: true, force: true });
  });

  let runtime: ContainerRuntime;
  let attacher: VethAttacher;

  beforeEach(async () => {
    attacher = new VethAttacher();
    attacher.strict = true; // networks exist only once created
    const networks = new TestNetworkBackend(attacher);
    runtime = await ContainerRuntime.open({
      execRoot: join(dir, "run"),
      containerd: cd.containerd,
      stateDir: join(dir, "containers"),
      attacher,
      logger: pino({ level: "silent" }),
    });
    networks.containers = runtime;
    await listen({ networks, containers: runtime, images: runtime.imageService });
  });

  afterEach(async () => {
    for (const c of await runtime.containerList({ all: true, filters: {} }))
      await runtime.containerRemove(c.Id, { force: true }).catch(() => undefined);
    const leaked = await runtime.containerNetnsFiles();
    // The namespaces made for containers to come (the runtime's, not a leak) go with it.
    await runtime.dropAhead();
    expect(leaked).toEqual([]);
    expect(attacher.attachedCount).toBe(0);
  });

  test("network create/ls/inspect/rm, run -d, ps, exec, logs, stop, rm", async () => {
    const id = ok(await docker("network", "create", "-d", "overlay", "--attachable", "n1")).stdout.trim();
    expect(id).toMatch(/^[0-9a-f]{25}$/);
    let r = ok(await docker("network", "ls"));
    expect(r.stdout).toBe(`NETWORK ID     NAME      DRIVER    SCOPE\n${id.slice(0, 12)}   n1        overlay   swarm\n`);
    r = ok(await docker("network", "ls", "--filter", "driver=bridge", "-q"));
    expect(r.stdout).toBe("");
    r = ok(await docker("network", "inspect", "n1"));
    const [net] = JSON.parse(r.stdout) as NetworkResource[];
    expect(net).toMatchObject({ Name: "n1", Id: id, Driver: "overlay", Attachable: true });

    r = ok(
      await docker(
        "run",
        "-d",
        "--name",
        "c1",
        "--network",
        "n1",
        "host",
        "sh",
        "-c",
        "echo hello; echo oops >&2; exec sleep 100",
      ),
    );
    const cid = r.stdout.trim();
    expect(cid).toMatch(/^[0-9a-f]{64}$/);
    r = ok(await docker("ps"));
    const lines = r.stdout.split("\n");
    expect(lines[0]).toMatch(/^CONTAINER ID +IMAGE +COMMAND +CREATED +STATUS +PORTS +NAMES$/);
    expect(lines[1]).toMatch(new RegExp(`^${cid.slice(0, 12)} +host +"sh -c 'echo hello; …" +.* ago +Up .* +c1$`));
    r = ok(await docker("exec", "c1", "hostname"));
    expect(r.stdout).toBe(`${cid.slice(0, 12)}\n`);
    r = await docker("exec", "c1", "sh", "-c", "ip -o -4 addr show eth0; exit 4");
    expect(r.code).toBe(4);
    expect(r.stdout).toMatch(/eth0 +inet 10\.77\.1\.2\/24/);
    r = ok(await dockerIn("typed input\n", "exec", "-i", "c1", "cat"));
    expect(r.stdout).toBe("typed input\n");
    r = ok(await docker("logs", "c1"));
    expect([r.stdout, r.stderr]).toEqual(["hello\n", "oops\n"]);
    r = ok(await docker("stop", "-t", "1", "c1"));
    expect(r.stdout).toBe("c1\n");
    r = ok(await docker("ps", "-a", "--format", "{{.Names}} {{.Status}}"));
    expect(r.stdout).toMatch(/^c1 Exited \(137\) .* ago\n$/);
    expect(await runtime.containerNetnsFiles()).toEqual([]);
    r = ok(await docker("rm", "c1"));
    expect(r.stdout).toBe("c1\n");
    r = ok(await docker("ps", "-a", "-q"));
    expect(r.stdout).toBe("");
    r = ok(await docker("network", "rm", "n1"));
    expect(r.stdout).toBe("n1\n");
    r = await docker("network", "rm", "n1");
    // (docker reports each failure at once, then its status)
    expect(r).toMatchObject({ code: 1, stderr: "Error response from daemon: network n1 not found\nexit status 1\n" });
  });

  test("run -d of an image that is not here: docker pulls it first; a registry that is not there is an error, nothing created", async () => {
    const r = await docker("run", "-d", "127.0.0.1:1/alpine", "true");
    expect(r.code).toBe(125);
    expect(r.stderr).toContain("Unable to find image '127.0.0.1:1/alpine:latest' locally");
    expect(r.stderr).toContain(
      'docker: Error response from daemon: Get "http://127.0.0.1:1/v2/": connect ECONNREFUSED 127.0.0.1:1',
    );
    expect(requestedPaths()).toContain("POST /v1.50/containers/create");
    expect(requestedPaths().some((p) => p.startsWith("POST /v1.50/images/create"))).toBe(true);
    expect(await runtime.containerList({ all: true, filters: {} })).toEqual([]);
  });

  test("attached run, --rm, and the errors docker users know", async () => {
    let r = await docker("run", "--name", "job", "host", "sh", "-c", "echo out; echo err >&2; exit 5");
    expect(r).toEqual({ code: 5, stdout: "out\n", stderr: "err\n" });
    r = await docker("run", "--name", "job", "host", "true");
    expect(r.code).toBe(125);
    expect(r.stderr).toContain(`Conflict. The container name "/job" is already in use by container`);
    r = await docker("exec", "job", "true");
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^Error response from daemon: container [0-9a-f]{64} is not running\n$/);
    r = await docker("run", "--rm", "host", "echo", "gone");
    expect(r).toEqual({ code: 0, stdout: "gone\n", stderr: "" });
    r = await docker("run", "-d", "--network", "nonet", "host", "true");
    expect(r.code).toBe(125);
    expect(r.stderr).toContain("Error response from daemon: network nonet not found");
    r = await docker("run", "host", "no-such-program");
    expect(r.code).toBe(127);
    expect(r.stderr).toContain('exec: "no-such-program": executable file not found in $PATH');
    r = await docker("stop", "ghost");
    expect(r).toMatchObject({ code: 1, stderr: "Error response from daemon: No such container: ghost\n" });
    expect((await runtime.containerList({ all: true, filters: {} })).map((c) => c.Names[0]).sort()).toHaveLength(3); // job, nonet's, no-such-program's
  });

  test("network connect and disconnect a running container", async () => {
    ok(await docker("network", "create", "-d", "overlay", "n1"));
    ok(await docker("network", "create", "-d", "overlay", "n2"));
    ok(await docker("run", "-d", "--name", "c1", "--network", "n1", "--network-alias", "web", "host", "sleep", "100"));
    let r = ok(await docker("network", "connect", "--ip", "10.77.2.40", "--alias", "db", "n2", "c1"));
    expect(r.stdout).toBe("");
    r = ok(await docker("exec", "c1", "cat", "/etc/hosts"));
    expect(r.stdout).toMatch(/^10\.77\.1\.2\t[0-9a-f]{12} c1 web$/m);
    expect(r.stdout).toMatch(/^10\.77\.2\.40\t[0-9a-f]{12} c1 db$/m);
    r = ok(
      await docker(
        "inspect",
        "-f",
        "{{range $k, $v := .NetworkSettings.Networks}}{{$k}}={{$v.IPAddress}} {{end}}",
        "c1",
      ),
    );
    expect(r.stdout).toBe("n1=10.77.1.2 n2=10.77.2.40 \n");
    ok(await docker("network", "disconnect", "n1", "c1"));
    r = ok(await docker("exec", "c1", "ip", "-o", "-4", "addr"));
    expect(r.stdout).not.toContain("10.77.1.2");
    expect(r.stdout).toContain("10.77.2.40");
    r = await docker("network", "disconnect", "n1", "c1");
    expect(r.code).toBe(1);
    ok(await docker("network", "disconnect", "-f", "n1", "c1"));
    ok(await docker("rm", "-f", "c1"));
  });
});
