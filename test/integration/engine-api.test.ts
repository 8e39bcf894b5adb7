// The Engine API boundary against real shoald processes (3 managers + 1 worker on loopback): the cases of
// issue 9 (items 1, 4 and 5) that reach the Engine API, each a named regression test, driven through the
// real docker CLI where it can send the request and through raw HTTP or Docker's Python SDK where it
// cannot; network prune (issue 10 item 4); and the audit of the network, node and swarm endpoints.
//
// After every refused request: the cluster's state is unchanged, and every manager still answers
// `docker node ls` and `docker network ls`.
//
//   flock /tmp/shoal-heavy.lock npx vitest run test/integration/engine-api.test.ts

import { request } from "node:http";
import { connect } from "node:net";
import { afterAll, beforeAll, beforeEach, describe, expect, it, type TestContext } from "vitest";
import { DEFAULT_SWARM_SPEC } from "../../src/api/objects.js";
import { buildOnce, type Formed, Lab, type Result } from "./harness.js";
import { PYTHON, runPython } from "./python-sdk.js";

const MANAGERS = [1, 2, 3];
const WORKER = 4;
/** A daemon outside the swarm, for swarm init with partial specs. */
const SPARE = 5;

function show(r: Result): string {
  return `exit ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`;
}

interface Raw {
  status: number;
  body: string;
  json: unknown;
}

/** Any request, body as given (not necessarily JSON), on daemon i's socket. */
function raw(lab: Lab, i: number, method: string, path: string, body?: string): Promise<Raw> {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? undefined : Buffer.from(body);
    const req = request(
      {
        socketPath: lab.sock(i),
        method,
        path,
        headers: data ? { "Content-Type": "application/json", "Content-Length": data.length } : {},
        timeout: 30_000,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => {
          const text = Buffer.concat(chunks).toString("utf8");
          let json: unknown;
          try {
            json = text ? JSON.parse(text) : undefined;
          } catch {
            json = undefined;
          }
          resolve({ status: res.statusCode ?? 0, body: text, json });
        });
      },
    );
    req.on("timeout", () => req.destroy(new Error(`${method} ${path}: timeout`)));
    // The server may answer (413) and close before the whole body is written.
    req.on("error", (e: NodeJS.ErrnoException) =>
      e.code === "EPIPE" || e.code === "ECONNRESET" ? undefined : reject(e),
    );
    if (data) req.write(data);
    req.end();
  });
}

function expectRefused(r: Raw, status: number, message: string): void {
  expect(r.status, r.body).toBe(status);
  expect((r.json as { message?: string }).message).toBe(message);
}

/** Docker's Python SDK against daemon i: runs `script` (a function body using `client`), its JSON result. */
function python(lab: Lab, i: number, script: string): Promise<unknown> {
  return runPython(lab.host(i), script, lab.env());
}

/** What a refused request must leave as it was: the cluster object, the nodes, the networks. */
async function clusterState(lab: Lab, via: number): Promise<unknown> {
  const swarm = (await lab.api(via, "GET", "/v1.50/swarm")).json as { Version: unknown; Spec: unknown };
  const nodes = ((await lab.api(via, "GET", "/v1.50/nodes")).json as { ID: string; Version: unknown; Spec: unknown }[])
    .map((n) => ({ ID: n.ID, Version: n.Version, Spec: n.Spec }))
    .sort((a, b) => a.ID.localeCompare(b.ID));
  const networks = (
    (await lab.api(via, "GET", "/v1.50/networks")).json as { Id: string; Name: string; Labels: unknown }[]
  )
    .map((n) => ({ Id: n.Id, Name: n.Name, Labels: n.Labels }))
    .sort((a, b) => a.Id.localeCompare(b.Id));
  return { swarm: { Version: swarm.Version, Spec: swarm.Spec }, nodes, networks };
}

/** Every manager answers docker node ls and docker network ls, and every daemon still runs. */
async function expectServing(lab: Lab): Promise<void> {
  lab.assertAlive(...MANAGERS, WORKER);
  for (const i of MANAGERS) {
    for (const args of [
      ["node", "ls"],
      ["network", "ls"],
    ]) {
      const r = await lab.docker(i, ...args);
      expect(r.code, `docker ${args.join(" ")} on node${i}: ${show(r)}`).toBe(0);
    }
  }
}

describe("the Engine API of a 3-manager swarm", () => {
  let lab: Lab;
  let f: Formed;
  const id = (i: number) => f.ids.get(i)!;

  beforeEach((ctx: TestContext) => {
    lab?.touched.clear();
    ctx.onTestFailed(() => {
      process.stderr.write(`\n===== "${ctx.task.name}" failed: daemon log tails =====\n`);
      lab?.dumpRelevant(50);
    });
  });

  beforeAll(async () => {
    await buildOnce();
    lab = await Lab.create("engine", 6);
    f = await lab.form(3, 1, "docker");
    await lab.startDaemon(SPARE);
  }, 120_000);

  afterAll(async () => {
    await lab?.close();
  });

  describe("issue 9 item 1: a partial swarm spec", () => {
    it("POST /v1.47/swarm/update with {} stores the default spec; every manager keeps serving", async () => {
      const before = (await lab.api(1, "GET", "/v1.50/swarm")).json as { Version: { Index: number } };
      const r = await raw(lab, 1, "POST", `/v1.47/swarm/update?version=${before.Version.Index}`, "{}");
      expect(r.status, r.body).toBe(200);
      for (const i of MANAGERS) {
        await lab.waitFor(
          async () => {
            const s = (await lab.api(i, "GET", "/v1.50/swarm")).json as { Version: { Index: number }; Spec: unknown };
            return s.Version.Index > before.Version.Index ? s : undefined;
          },
          10_000,
          `node${i} to see the update`,
        );
        const s = (await lab.api(i, "GET", "/v1.50/swarm")).json as { Spec: unknown };
        // (The lab was formed with a 1 s heartbeat: a spec without one is the default, 5 s, as in dockerd.)
        expect(s.Spec).toEqual(DEFAULT_SWARM_SPEC);
      }
      await expectServing(lab);
      // A normal write still goes through.
      expect((await lab.docker(2, "network", "create", "-d", "overlay", "after-partial-spec")).code).toBe(0);
      expect((await lab.docker(2, "network", "rm", "after-partial-spec")).code).toBe(0);
    });

    it.skipIf(!PYTHON)(
      "the Python SDK's swarm.update(rotate_worker_token=True) rotates the token, nothing else",
      async () => {
        // The SDK sends a spec of its defaults only (as dockerd, what it leaves out becomes the default): the
        // swarm starts from the default spec, whatever ran before, so that only the token can differ.
        const current = (await lab.api(1, "GET", "/v1.50/swarm")).json as { Version: { Index: number } };
        expect((await raw(lab, 1, "POST", `/v1.47/swarm/update?version=${current.Version.Index}`, "{}")).status).toBe(
          200,
        );
        const before = (await lab.api(1, "GET", "/v1.50/swarm")).json as {
          Version: { Index: number };
          Spec: unknown;
          JoinTokens: { Worker: string; Manager: string };
          UpdatedAt: string;
        };
        const out = await python(
          lab,
          1,
          "client.swarm.reload()\nclient.swarm.update(rotate_worker_token=True)\nreturn docker.__version__",
        );
        process.stderr.write(`(docker SDK for Python ${String(out)})\n`);
        const after = (await lab.api(1, "GET", "/v1.50/swarm")).json as typeof before;
        expect(after.JoinTokens.Worker).not.toBe(before.JoinTokens.Worker);
        expect(after.JoinTokens.Manager).toBe(before.JoinTokens.Manager);
        expect(after.Spec).toEqual(before.Spec);
        expect(after.Version.Index).toBeGreaterThan(before.Version.Index);
        await expectServing(lab);
        f = { ...f, workerToken: after.JoinTokens.Worker };
      },
    );

    it.skipIf(!PYTHON)("swarm init with partial specs (Python SDK, raw {}): the rest is the default", async () => {
      const addr = lab.addr(SPARE);
      const spec = await python(
        lab,
        SPARE,
        [
          `client.swarm.init(advertise_addr=${JSON.stringify(addr)}, listen_addr=${JSON.stringify(addr)},`,
          "                  dispatcher_heartbeat_period=2000000000, labels={'tier': 'test'})",
          "return client.api.inspect_swarm()['Spec']",
        ].join("\n"),
      );
      expect(spec).toEqual({ ...DEFAULT_SWARM_SPEC, Labels: { tier: "test" }, Dispatcher: { HeartbeatPeriod: 2e9 } });
      expect((await lab.docker(SPARE, "swarm", "leave", "--force")).code).toBe(0);
      const r = await raw(
        lab,
        SPARE,
        "POST",
        "/v1.47/swarm/init",
        JSON.stringify({ ListenAddr: addr, AdvertiseAddr: addr, Spec: {} }),
      );
      expect(r.status, r.body).toBe(200);
      expect(((await lab.api(SPARE, "GET", "/v1.50/swarm")).json as { Spec: unknown }).Spec).toEqual(
        DEFAULT_SWARM_SPEC,
      );
      expect((await lab.docker(SPARE, "swarm", "leave", "--force")).code).toBe(0);
    });
  });

  describe("issue 9 item 4: values of the wrong type", () => {
    it("network create with Labels {a: 1} is refused in Go's words and stores nothing", async () => {
      const before = await clusterState(lab, 1);
      const r = await raw(lab, 1, "POST", "/v1.50/networks/create", '{"Name":"t3","Labels":{"a":1}}');
      expectRefused(
        r,
        400,
        "invalid JSON: json: cannot unmarshal number into Go struct field NetworkCreateRequest.Labels of type string",
      );
      expect(await clusterState(lab, 1)).toEqual(before);
      await expectServing(lab);
    });

    it("node update with Labels {n: 5} is refused in Go's words and stores nothing", async () => {
      const node = (await lab.api(1, "GET", `/v1.50/nodes/${id(WORKER)}`)).json as { Version: { Index: number } };
      const before = await clusterState(lab, 1);
      const r = await raw(
        lab,
        1,
        "POST",
        `/v1.50/nodes/${id(WORKER)}/update?version=${node.Version.Index}`,
        '{"Labels":{"n":5},"Role":"worker","Availability":"active"}',
      );
      expectRefused(
        r,
        400,
        "invalid JSON: json: cannot unmarshal number into Go struct field NodeSpec.Labels of type string",
      );
      expect(await clusterState(lab, 1)).toEqual(before);
      await expectServing(lab);
    });
  });

  describe("issue 9 item 5: sizes, depth, mistyped and unknown fields", () => {
    const refusals: [string, string, string, number, string][] = [
      [
        "a 3.9 MB label: the body's size limit, not 'no leader'",
        "/v1.50/networks/create",
        JSON.stringify({ Name: "big", Labels: { big: "x".repeat(3_900_000) } }),
        413,
        "request body is too large: at most 1048576 bytes are accepted",
      ],
      [
        "a 100 kB label: the label's bound",
        "/v1.50/networks/create",
        JSON.stringify({ Name: "big", Labels: { big: "x".repeat(100_000) } }),
        400,
        "invalid network create request: Labels.big: values must be at most 16384 bytes",
      ],
      [
        "labels nested a million levels deep",
        "/v1.50/networks/create",
        `{"Name":"deep","Labels":${'{"a":'.repeat(1_000_000)}"x"${"}".repeat(1_000_000)}}`,
        400,
        "invalid JSON: the body nests deeper than 32 levels",
      ],
      [
        'IPAM.Config: "x"',
        "/v1.50/networks/create",
        '{"Name":"t5","IPAM":{"Config":"x"}}',
        400,
        "invalid JSON: json: cannot unmarshal string into Go struct field IPAM.IPAM.Config of type []network.IPAMConfig",
      ],
      [
        'Internal: "yes"',
        "/v1.50/networks/create",
        '{"Name":"t5","Internal":"yes"}',
        400,
        "invalid JSON: json: cannot unmarshal string into Go struct field NetworkCreateRequest.Internal of type bool",
      ],
      [
        "Attachable: 1",
        "/v1.50/networks/create",
        '{"Name":"t5","Attachable":1}',
        400,
        "invalid JSON: json: cannot unmarshal number into Go struct field NetworkCreateRequest.Attachable of type bool",
      ],
      [
        "an extra Junk",
        "/v1.50/networks/create",
        '{"Name":"t5","Junk":true}',
        400,
        'invalid JSON: json: unknown field "Junk"',
      ],
      [
        "a Docker field shoal does not carry out",
        "/v1.50/networks/create",
        '{"Name":"t5","IPAM":{"Config":[{"Subnet":"10.99.0.0/24","IPRange":"10.99.0.0/25"}]}}',
        400,
        "IPAM.Config[0].IPRange (--ip-range) is not supported by shoal: leave it unset",
      ],
      [
        "65 aliases on a connect",
        "/v1.50/networks/ingress/connect",
        JSON.stringify({ Container: "c", EndpointConfig: { Aliases: Array.from({ length: 65 }, (_, i) => `a${i}`) } }),
        400,
        "invalid network connect request: EndpointConfig.Aliases: at most 64 entries (65 given)",
      ],
    ];
    for (const [name, path, body, status, message] of refusals) {
      it(`${name}: refused (${status}), nothing changes`, async () => {
        const before = await clusterState(lab, 1);
        expectRefused(await raw(lab, 1, "POST", path, body), status, message);
        expect(await clusterState(lab, 1)).toEqual(before);
        await expectServing(lab);
      });
    }

    it("a 10,000-character network name, through the docker CLI", async () => {
      const before = await clusterState(lab, 2);
      const r = await lab.docker(2, "network", "create", "-d", "overlay", "n".repeat(10_000));
      expect(r.code, show(r)).toBe(1);
      expect(r.stderr).toContain(
        "Error response from daemon: invalid network name: it must be at most 255 characters (10000 given)",
      );
      expect(await clusterState(lab, 2)).toEqual(before);
      await expectServing(lab);
    });

    it("settings shoal does not carry out, through the docker CLI: refused, not stored and ignored", async () => {
      const before = await clusterState(lab, 1);
      for (const [args, message] of [
        [
          ["swarm", "update", "--task-history-limit", "3"],
          "Orchestration.TaskHistoryRetentionLimit (--task-history-limit) is not supported by shoal",
        ],
        [
          ["swarm", "update", "--max-snapshots", "3"],
          "Raft.KeepOldSnapshots (--max-snapshots) is not supported by shoal",
        ],
        [
          ["swarm", "update", "--snapshot-interval", "500"],
          "Raft.SnapshotInterval (--snapshot-interval) is not supported by shoal",
        ],
      ] as const) {
        const r = await lab.docker(1, ...args);
        expect(r.code, show(r)).toBe(1);
        expect(r.stderr).toContain(`Error response from daemon: ${message}`);
      }
      expect(await clusterState(lab, 1)).toEqual(before);
      // What shoal does carry out still works.
      const r = await lab.docker(1, "swarm", "update", "--dispatcher-heartbeat", "2s");
      expect(r.code, show(r)).toBe(0);
      const spec = (
        (await lab.api(1, "GET", "/v1.50/swarm")).json as { Spec: { Dispatcher: { HeartbeatPeriod: number } } }
      ).Spec;
      expect(spec.Dispatcher.HeartbeatPeriod).toBe(2e9);
      expect((await lab.docker(1, "swarm", "update", "--dispatcher-heartbeat", "1s")).code).toBe(0);
    });

    it("a half-sent request is closed after a bounded time, not minutes", async () => {
      const socket = connect(lab.sock(3));
      socket.on("error", () => undefined);
      let received = "";
      socket.on("data", (d: Buffer) => {
        received += d.toString();
      });
      const closed = new Promise<void>((r) => socket.once("close", () => r()));
      await new Promise<void>((r) => socket.once("connect", () => r()));
      // The head never ends: shoald's header timeout is 10 s (Node's default would be a minute, and a
      // request's whole receipt five).
      socket.write("POST /v1.50/networks/create HTTP/1.1\r\nHost: shoal\r\nContent-Length: 100\r\n");
      await Promise.race([
        closed,
        new Promise((_, reject) => setTimeout(() => reject(new Error("still open")), 45_000)),
      ]);
      expect(received).toMatch(/^HTTP\/1\.1 408 /);
      await expectServing(lab);
    });
  });

  describe("issue 10 item 4: network prune", () => {
    it("docker network prune -f on a manager removes the unused networks (not ingress), as dockerd reports", async () => {
      for (const n of ["prune-a", "prune-b"]) {
        expect((await lab.docker(1, "network", "create", "-d", "overlay", "--label", "prune=yes", n)).code).toBe(0);
      }
      expect(
        (await lab.docker(1, "network", "create", "-d", "overlay", "--label", "keep=yes", "prune-keep")).code,
      ).toBe(0);
      // On the worker: nothing is its to remove.
      let r = await lab.docker(WORKER, "network", "prune", "-f");
      expect(r, show(r)).toEqual({ code: 0, stdout: "", stderr: "" });
      // until=-1m: created before a minute from now (a negative duration ago), so every network so far.
      r = await lab.docker(2, "network", "prune", "-f", "--filter", "label=prune=yes", "--filter", "until=-1m");
      expect(r.code, show(r)).toBe(0);
      const lines = r.stdout.split("\n");
      expect(lines[0]).toBe("Deleted Networks:");
      expect(lines.slice(1, 3).sort()).toEqual(["prune-a", "prune-b"]);
      expect(r.stdout.endsWith("\n\n")).toBe(true);
      const names = ((await lab.api(3, "GET", "/v1.50/networks")).json as { Name: string }[]).map((n) => n.Name);
      expect(names).toContain("prune-keep");
      expect(names).toContain("ingress");
      expect(names).not.toContain("prune-a");
    });

    it.skipIf(!PYTHON)("the Python SDK's client.networks.prune() reports what it removed", async () => {
      expect((await lab.docker(1, "network", "create", "-d", "overlay", "prune-py")).code).toBe(0);
      const report = (await python(lab, 3, "return client.networks.prune()")) as { NetworksDeleted: string[] };
      expect(report.NetworksDeleted).toContain("prune-py");
      expect(report.NetworksDeleted).not.toContain("ingress");
      const again = (await python(lab, 3, "return client.networks.prune()")) as { NetworksDeleted: unknown };
      expect(again.NetworksDeleted).toBeNull();
      await expectServing(lab);
    });

    it("shoal network prune -f matches docker's output", async () => {
      expect((await lab.docker(1, "network", "create", "-d", "overlay", "prune-shoal")).code).toBe(0);
      const r = await lab.shoal(1, "network", "prune", "-f");
      expect(r, show(r)).toEqual({ code: 0, stdout: "Deleted Networks:\nprune-shoal\n\n", stderr: "" });
    });
  });

  describe("the network, node and swarm endpoints of API 1.24 to 1.50 (audit)", () => {
    it("no route a client uses answers 404 page not found; each answers as dockerd would", async () => {
      const sw = (await lab.api(1, "GET", "/v1.50/swarm")).json as { Version: { Index: number } };
      const node = (await lab.api(1, "GET", `/v1.50/nodes/${id(WORKER)}`)).json as { Version: { Index: number } };
      const calls: [number, string, string, string | undefined, number, string?][] = [
        [1, "GET", "/v1.24/swarm", undefined, 200],
        [1, "GET", "/v1.50/nodes", undefined, 200],
        [1, "GET", `/v1.50/nodes/${id(WORKER)}`, undefined, 200],
        [1, "GET", "/v1.50/networks", undefined, 200],
        [1, "GET", "/v1.50/networks/", undefined, 200],
        [1, "GET", "/v1.50/networks/ingress?verbose=true&scope=swarm", undefined, 200],
        [1, "GET", "/v1.50/networks/ingress?scope=local", undefined, 404, "network ingress not found"],
        [1, "GET", "/v1.50/networks/ingress?verbose=maybe", undefined, 400, "invalid value for verbose: maybe"],
        [
          1,
          "POST",
          "/v1.50/networks/prune?filters=%7B%22driver%22%3A%5B%22x%22%5D%7D",
          undefined,
          400,
          "invalid filter 'driver'",
        ],
        [1, "GET", "/v1.50/tasks", undefined, 200],
        [1, "GET", "/v1.50/services", undefined, 200],
        [1, "GET", "/v1.50/secrets", undefined, 200],
        [1, "GET", "/v1.50/configs", undefined, 200],
        [1, "GET", "/v1.50/services/web", undefined, 404, "service web not found"],
        [
          1,
          "POST",
          "/v1.50/swarm/init",
          "{}",
          503,
          'This node is already part of a swarm. Use "docker swarm leave" to leave this swarm and join another one.',
        ],
        [
          1,
          "POST",
          "/v1.50/swarm/join",
          '{"RemoteAddrs":["127.0.0.1:1"],"JoinToken":"x"}',
          503,
          'This node is already part of a swarm. Use "docker swarm leave" to leave this swarm and join another one.',
        ],
        [1, "POST", `/v1.50/swarm/update?version=${sw.Version.Index - 1}`, "{}", 500, "update out of sequence"],
        [
          1,
          "POST",
          `/v1.50/nodes/${id(WORKER)}/update?version=${node.Version.Index - 1}`,
          '{"Role":"worker","Availability":"active"}',
          500,
          "update out of sequence",
        ],
        [1, "DELETE", "/v1.50/nodes/nosuchnode", undefined, 404, "node nosuchnode not found"],
        // A worker answers in dockerd's words why not.
        [
          WORKER,
          "GET",
          "/v1.50/swarm",
          undefined,
          503,
          "This node is not a swarm manager. Worker nodes can't be used to view or modify cluster state. Please run this command on a manager node or promote the current node to a manager.",
        ],
        [
          WORKER,
          "GET",
          "/v1.50/nodes",
          undefined,
          503,
          "This node is not a swarm manager. Worker nodes can't be used to view or modify cluster state. Please run this command on a manager node or promote the current node to a manager.",
        ],
        [
          WORKER,
          "GET",
          "/v1.50/tasks",
          undefined,
          503,
          "This node is not a swarm manager. Worker nodes can't be used to view or modify cluster state. Please run this command on a manager node or promote the current node to a manager.",
        ],
        [
          WORKER,
          "POST",
          "/v1.50/networks/create",
          '{"Name":"w1","Driver":"overlay"}',
          403,
          "Cannot create a multi-host network from a worker node. Please create the network from a manager node.",
        ],
        [WORKER, "POST", "/v1.50/networks/prune", undefined, 200],
        [WORKER, "GET", "/v1.50/networks", undefined, 200],
      ];
      for (const [i, method, path, body, status, message] of calls) {
        const r = await raw(lab, i, method, path, body);
        expect(r.status, `${method} ${path} on node${i}: ${r.body}`).toBe(status);
        if (message !== undefined) expect((r.json as { message?: string }).message, `${method} ${path}`).toBe(message);
      }
      const ps = await lab.docker(1, "node", "ps", "self");
      expect(ps.code, show(ps)).toBe(0);
    });
  });
});
