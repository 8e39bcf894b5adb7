// Issue 14: every daemon serves Prometheus metrics on --metrics-addr. A real swarm of two managers and a
// worker on loopback; /metrics is scraped from the leader and from the worker, and what it says is what
// the swarm is: the Raft term and indexes, the nodes Ready, the sessions the leader holds, the store's
// objects, heartbeats counted on both sides, and the process's own CPU, memory and event-loop lag.
//
//   flock /tmp/shoal-heavy.lock npx vitest run test/integration/metrics.test.ts

import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildOnce, Lab, sleep } from "./harness.js";
import { METRICS_PORT_OFFSET, scrape, value } from "./metrics-scrape.js";

describe("metrics", () => {
  let lab: Lab;
  const mport = (i: number) => lab.port(i) + METRICS_PORT_OFFSET;

  beforeAll(async () => {
    await buildOnce();
    lab = await Lab.create("metrics", 3);
    for (let i = 1; i <= 3; i++) await lab.startDaemon(i, ["--metrics-addr", `${lab.ip(i)}:${mport(i)}`]);
    await lab.form(2, 1, "docker");
  }, 120_000);

  afterAll(async () => {
    await lab?.close();
  });

  it("the leader's /metrics tells the swarm as it is", async () => {
    let text = "";
    // Heartbeats every second: wait until the leader has counted some and every node is Ready.
    for (let t = 0; t < 40; t++) {
      text = (await scrape(lab.ip(1), mport(1))).text;
      if (
        (value(text, "shoal_dispatcher_heartbeats_total") ?? 0) >= 3 &&
        value(text, "shoal_dispatcher_nodes", 'state="ready"') === 3
      )
        break;
      await sleep(250);
    }
    expect(value(text, "shoal_dispatcher_nodes", 'state="ready"')).toBe(3);
    expect(value(text, "shoal_dispatcher_nodes", 'state="down"')).toBe(0);
    expect(value(text, "shoal_dispatcher_sessions")).toBe(3);
    expect(value(text, "shoal_store_objects", 'type="nodes"')).toBe(3);
    expect(value(text, "shoal_store_objects", 'type="members"')).toBe(2);
    expect(value(text, "shoal_raft_term")).toBeGreaterThanOrEqual(1);
    const commit = value(text, "shoal_raft_commit_index")!;
    expect(commit).toBeGreaterThan(3);
    expect(value(text, "shoal_raft_apply_index")).toBeLessThanOrEqual(commit);
    expect(value(text, "shoal_raft_proposal_seconds_count")).toBeGreaterThan(0);
    expect(value(text, "shoal_raft_apply_seconds_count")).toBeGreaterThan(3);
    expect(value(text, "shoal_dispatcher_pushes_total")).toBeGreaterThanOrEqual(3);
    expect(value(text, "process_resident_memory_bytes")).toBeGreaterThan(10 * 1024 * 1024);
    expect(value(text, "process_cpu_seconds_total")).toBeGreaterThan(0);
    expect(value(text, "nodejs_eventloop_lag_p99_seconds")).toBeGreaterThanOrEqual(0);
  });

  it("the follower holds no session; the worker counts its own heartbeats; a node added shows up", async () => {
    const follower = (await scrape(lab.ip(2), mport(2))).text;
    expect(value(follower, "shoal_dispatcher_sessions")).toBe(0);
    expect(value(follower, "shoal_raft_term")).toBeGreaterThanOrEqual(1);
    // The worker joined last: its first heartbeat may still be on its way.
    let worker = "";
    for (let t = 0; t < 40; t++) {
      worker = (await scrape(lab.ip(3), mport(3))).text;
      if ((value(worker, "shoal_agent_heartbeat_seconds_count", 'result="ok"') ?? 0) > 0) break;
      await sleep(250);
    }
    expect(value(worker, "shoal_agent_heartbeat_seconds_count", 'result="ok"')).toBeGreaterThan(0);
    // A worker holds no Raft state and no sessions.
    expect(value(worker, "shoal_raft_term")).toBe(0);
    expect(value(worker, "shoal_dispatcher_sessions")).toBe(0);
    await lab.must("docker", 1, "network", "create", "-d", "overlay", "--attachable", "metrics-net");
    let text = "";
    for (let t = 0; t < 20; t++) {
      text = (await scrape(lab.ip(1), mport(1))).text;
      if ((value(text, "shoal_store_objects", 'type="networks"') ?? 0) >= 1) break;
      await sleep(250);
    }
    expect(value(text, "shoal_store_objects", 'type="networks"')).toBeGreaterThanOrEqual(1);
  });

  it("anything but GET /metrics is a 404", async () => {
    expect((await scrape(lab.ip(1), mport(1), "/")).status).toBe(404);
    expect((await scrape(lab.ip(1), mport(1), "/metrics?x=1")).status).toBe(200);
  });
});
