// Issue 9, "No input can stop the cluster", on the cluster protocol (TCP 2377): the requests that once
// stopped the managers' Raft, or gave an old certificate powers it no longer has, are refused cleanly and
// the cluster keeps serving. Each case is a named regression test against 3 real managers and a worker.
//
//   npx vitest run test/integration/hardening.test.ts

import { readFileSync } from "node:fs";
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { generateNodeKeyAndCSR } from "../../src/ca/certs.js";
import { CLIENT_CHANNEL_OPTIONS } from "../../src/ca/tls.js";
import { clientCredentials } from "../../src/ca/tls-client.js";
import { DataRoot } from "../../src/daemon/state.js";
import { CAClient, DispatcherClient, RaftMembershipClient, type SessionRequest } from "../../src/gen/cluster.js";
import { EntryType } from "../../src/raft/types.js";
import { buildOnce, type Formed, Lab } from "./harness.js";

interface NodeTLS {
  rootPem: string;
  certPem: string;
  keyPem: string;
}

function readCerts(lab: Lab, i: number): NodeTLS {
  const dir = join(lab.dataRoot(i), "certificates");
  return {
    rootPem: readFileSync(join(dir, "swarm-root-ca.crt"), "utf8"),
    certPem: readFileSync(join(dir, "swarm-node.crt"), "utf8"),
    keyPem: readFileSync(join(dir, "swarm-node.key"), "utf8"),
  };
}

const creds = (t: NodeTLS) => clientCredentials(t.rootPem, t.certPem, t.keyPem);
const deadline = (ms = 5000) => ({ deadline: new Date(Date.now() + ms) });

interface Outcome {
  code: grpc.status;
  details: string;
}

/** Open a session with `req`; the first message or the error that ends it. */
function session(addr: string, t: NodeTLS, req: SessionRequest): Promise<Outcome> {
  const c = new DispatcherClient(addr, creds(t), CLIENT_CHANNEL_OPTIONS);
  return new Promise<Outcome>((res) => {
    const call = c.session(req, new grpc.Metadata(), deadline());
    call.on("data", () => {
      res({ code: grpc.status.OK, details: "" });
      call.cancel();
    });
    call.on("error", (e: grpc.ServiceError) => res({ code: e.code, details: e.details }));
    call.on("end", () => res({ code: grpc.status.OK, details: "" }));
  }).finally(() => c.close());
}

function unaryOutcome(fn: (cb: (err: grpc.ServiceError | null) => void) => void): Promise<Outcome> {
  return new Promise((res) =>
    fn((err) => res(err ? { code: err.code, details: err.details } : { code: grpc.status.OK, details: "" })),
  );
}

/** The cluster still serves: a leader, `docker node ls` and `network ls` on every manager, a write works. */
async function expectServing(lab: Lab, managers: number[], tag: string): Promise<void> {
  lab.assertAlive(...managers);
  for (const i of managers) {
    await lab.waitFor(
      async () => (await lab.nodeLs(i)).some((r) => r.ManagerStatus === "Leader"),
      15_000,
      `node${i} to see a leader (${tag})`,
    );
    expect((await lab.docker(i, "network", "ls")).code).toBe(0);
  }
  const r = await lab.docker(managers[0]!, "network", "create", "-d", "overlay", `net-${tag}`);
  expect(r.code, r.stderr).toBe(0);
}

describe("issue 9: the cluster protocol refuses what once stopped it", () => {
  let lab: Lab;
  let f: Formed;
  const leaderAddr = () => lab.addr(1);

  beforeAll(async () => {
    await buildOnce();
    lab = await Lab.create("harden", 4);
    f = await lab.form(3, 1, "docker");
  }, 120_000);

  afterAll(async () => {
    await lab?.close();
  });

  it('case 2: a worker\'s session with description "null" is refused on every manager; Raft keeps running', async () => {
    const worker = readCerts(lab, 4);
    for (const i of [1, 2, 3]) {
      const o = await session(lab.addr(i), worker, { descriptionJson: "null", addr: "", acceptsDeltas: false });
      // The leader refuses the description; followers send the worker to the leader first.
      expect([grpc.status.INVALID_ARGUMENT, grpc.status.UNAVAILABLE]).toContain(o.code);
      if (i === 1) expect(o.details).toMatch(/invalid session request: invalid description: /);
    }
    await expectServing(lab, [1, 2, 3], "c2");
  });

  it("case 4: a worker's description with a number for Hostname is refused, and docker node ls stays valid", async () => {
    const worker = readCerts(lab, 4);
    const bad = JSON.stringify({
      Hostname: 5,
      Platform: { Architecture: "x86_64", OS: "linux" },
      Resources: { NanoCPUs: 0, MemoryBytes: 0 },
      Engine: { EngineVersion: "x", Plugins: [] },
    });
    const o = await session(leaderAddr(), worker, { descriptionJson: bad, addr: "", acceptsDeltas: false });
    expect(o.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(o.details).toMatch(/Hostname/);
    const huge = JSON.stringify({ Hostname: "h".repeat(100_000) });
    expect((await session(leaderAddr(), worker, { descriptionJson: huge, addr: "", acceptsDeltas: false })).code).toBe(
      grpc.status.INVALID_ARGUMENT,
    );
    const rows = await lab.nodeLs(1);
    expect(rows.map((r) => r.Hostname).sort()).toEqual(["node1", "node2", "node3", "node4"]);
    await expectServing(lab, [1, 2, 3], "c4");
  });

  it("a worker cannot name a multicast, unspecified or foreign loopback address as its own", async () => {
    const worker = readCerts(lab, 4);
    for (const addr of ["224.0.0.1", "0.0.0.0", "not-an-ip", "10.0.0.1:4789"]) {
      const o = await session(leaderAddr(), worker, { descriptionJson: "", addr, acceptsDeltas: false });
      expect(o.code, addr).toBe(grpc.status.INVALID_ARGUMENT);
    }
    const node4 = (await lab.nodeLs(1)).find((r) => r.Hostname === "node4")!;
    const inspect = JSON.parse(await lab.must("docker", 1, "node", "inspect", node4.ID)) as {
      Status: { Addr: string };
    }[];
    expect(inspect[0]!.Status.Addr).toBe(lab.ip(4));
  });

  it("case 3: a demoted manager's old certificate opens nothing managerial", async () => {
    const old = readCerts(lab, 3);
    const demoted = f.ids.get(3)!;
    expect((await lab.docker(1, "node", "demote", "node3")).code).toBe(0);
    await lab.waitFor(
      async () => (await lab.nodeLs(1)).find((r) => r.ID === demoted)?.ManagerStatus === "",
      20_000,
      "node3 demoted",
    );
    const members = async () => (await lab.info(1)).Managers;
    expect(await members()).toBe(2);
    // Join: would add a learner the store does not know.
    const ms = new RaftMembershipClient(leaderAddr(), creds(old), CLIENT_CHANNEL_OPTIONS);
    const join = await unaryOutcome((cb) => ms.join({ addr: lab.addr(3) }, new grpc.Metadata(), deadline(), cb));
    expect(join.code).toBe(grpc.status.PERMISSION_DENIED);
    expect(join.details).toMatch(/no longer a manager/);
    // Leave: would remove a live manager from Raft.
    const leave = await unaryOutcome((cb) => ms.leave({ nodeId: f.ids.get(2)! }, new grpc.Metadata(), deadline(), cb));
    expect(leave.code).toBe(grpc.status.PERMISSION_DENIED);
    ms.close();
    // Even a current manager may only take itself out of Raft.
    const m1 = new RaftMembershipClient(leaderAddr(), creds(readCerts(lab, 2)), CLIENT_CHANNEL_OPTIONS);
    const other = await unaryOutcome((cb) => m1.leave({ nodeId: f.ids.get(1)! }, new grpc.Metadata(), deadline(), cb));
    m1.close();
    expect(other.code).toBe(grpc.status.PERMISSION_DENIED);
    expect(await members()).toBe(2);
    await expectServing(lab, [1, 2], "c3");
  });

  it("wrong join tokens are slowed and logged: after 10 from one address the next are refused at once", async () => {
    const rootPem = readCerts(lab, 1).rootPem;
    const { csrPem } = await generateNodeKeyAndCSR();
    const ca = new CAClient(leaderAddr(), clientCredentials(rootPem), CLIENT_CHANNEL_OPTIONS);
    const codes: grpc.status[] = [];
    const details: string[] = [];
    for (let i = 0; i < 14; i++) {
      const o = await unaryOutcome((cb) =>
        ca.issueNodeCertificate(
          {
            csrPem,
            token: `SWMTKN-1-${"0".repeat(50)}-${"x".repeat(25)}`,
            availability: "",
            hostname: "h",
            advertiseAddr: "",
            listenAddrError: "",
          },
          new grpc.Metadata(),
          deadline(),
          cb,
        ),
      );
      codes.push(o.code);
      details.push(o.details);
    }
    ca.close();
    expect(codes.slice(0, 10).every((c) => c === grpc.status.INVALID_ARGUMENT)).toBe(true);
    expect(codes.slice(10).every((c) => c === grpc.status.RESOURCE_EXHAUSTED)).toBe(true);
    expect(details[13]).toMatch(/too many failed join attempts from 127\.0\.0\.1: try again in \d+ s/);
    const logged = lab.logRecords(1).filter((r) => r.msg === "refused a join: not a valid join token for this swarm");
    expect(logged.length).toBeGreaterThanOrEqual(1);
    // Not one line per attempt.
    expect(logged.length).toBeLessThan(10);
  });
});

/**
 * Append `command` to manager i's Raft log as a committed entry, the way a former shoald that did not check
 * its writes would have left it (the daemon must be stopped).
 */
async function plantCommitted(lab: Lab, i: number, command: unknown): Promise<void> {
  const storage = await new DataRoot(lab.dataRoot(i)).openRaftStorage();
  try {
    const { hardState } = storage.mem.initialState();
    const index = storage.mem.lastIndex() + 1;
    const payload = new TextEncoder().encode(JSON.stringify({ ...(command as object), at: new Date().toISOString() }));
    // The driver's header (proposer run id and sequence) before the payload: a run that is not this one.
    const data = new Uint8Array(16 + payload.length);
    data.set(payload, 16);
    await storage.save(
      {
        entries: [{ term: hardState.term, index, type: EntryType.Normal, data }],
        hardState: { ...hardState, commit: index },
      },
      true,
    );
  } finally {
    await storage.close();
  }
}

describe("issue 9: a log that already holds a poison entry comes back", () => {
  let lab: Lab;

  beforeAll(async () => {
    await buildOnce();
    lab = await Lab.create("poison", 2);
    await lab.form(1, 1, "docker");
  }, 120_000);

  afterAll(async () => {
    await lab?.close();
  });

  it("case 1: a committed partial swarm spec; the manager restarts, serves, and force-new-cluster works", async () => {
    const swarm = (await lab.api(1, "GET", "/swarm")).json as { Version: { Index: number } };
    await lab.kill(1, "SIGTERM");
    await plantCommitted(lab, 1, { op: "cluster.update", version: swarm.Version.Index, spec: {} });
    await lab.startDaemon(1);
    await expectServing(lab, [1], "p1");
    const after = (await lab.api(1, "GET", "/swarm")).json as { Spec: { Dispatcher: unknown } };
    expect(after.Spec.Dispatcher).toEqual({ HeartbeatPeriod: 1_000_000_000 });
    await lab.waitFor(
      async () => (await lab.nodeLs(1)).every((r) => r.Status === "Ready"),
      15_000,
      "the worker Ready again",
    );
    // Another poison, with a label of the wrong type, then force-new-cluster replays the log.
    await lab.kill(1, "SIGTERM");
    await plantCommitted(lab, 1, {
      op: "network.create",
      id: "p".repeat(25),
      spec: {
        name: "t3",
        driver: "overlay",
        internal: false,
        attachable: false,
        ingress: false,
        options: {},
        labels: { a: 1 },
      },
    });
    await lab.startDaemon(1);
    const out = await lab.must(
      "docker",
      1,
      "swarm",
      "init",
      "--force-new-cluster",
      "--advertise-addr",
      lab.addr(1),
      "--listen-addr",
      lab.addr(1),
    );
    expect(out).toContain("Swarm initialized");
    await expectServing(lab, [1], "p2");
    expect((await lab.must("docker", 1, "network", "ls", "--format", "{{.Name}}")).split("\n")).not.toContain("t3");
  });
});
