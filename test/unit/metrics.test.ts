// The metrics endpoint and what it reads: --metrics-addr parsing, GET /metrics in Prometheus' text format
// with the live sources read at scrape time, and 404 for anything else. (test/integration/metrics.test.ts
// scrapes real daemons.)

import http from "node:http";
import { afterEach, describe, expect, test } from "vitest";
import { observe, sources } from "../../src/metrics/metrics.js";
import { listenMetrics, type MetricsServer, parseMetricsAddr } from "../../src/metrics/server.js";

function get(port: number, path: string, method = "GET"): Promise<{ status: number; text: string; type: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: "127.0.0.1", port, path, method }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () =>
        resolve({
          status: res.statusCode ?? 0,
          text: Buffer.concat(chunks).toString("utf8"),
          type: String(res.headers["content-type"]),
        }),
      );
    });
    req.on("error", reject);
    req.end();
  });
}

let server: MetricsServer | undefined;
afterEach(async () => {
  await server?.close();
  server = undefined;
  delete sources.raft;
  delete sources.store;
  delete sources.dispatcher;
});

describe("metrics", () => {
  test("--metrics-addr is HOST:PORT; anything else is refused naming the flag", () => {
    expect(parseMetricsAddr("127.0.0.1:9323")).toEqual({ host: "127.0.0.1", port: 9323 });
    expect(parseMetricsAddr("[::1]:9323")).toEqual({ host: "::1", port: 9323 });
    expect(parseMetricsAddr("localhost:0")).toEqual({ host: "localhost", port: 0 });
    for (const bad of ["9323", "127.0.0.1", "127.0.0.1:99999", ":9323", "a:b"]) {
      expect(() => parseMetricsAddr(bad)).toThrow(/invalid --metrics-addr/);
    }
  });

  test("GET /metrics reads the live sources when scraped; other paths are 404", async () => {
    server = await listenMetrics("127.0.0.1:0");
    sources.raft = () => ({ term: 7, commitIndex: 42, appliedIndex: 41, leader: "1" });
    sources.store = () => ({ counts: { nodes: 5000, networks: 3 }, nodesByState: { ready: 4990, down: 10 } });
    sources.dispatcher = () => ({ sessions: 4990 });
    observe.heartbeatReceived();
    observe.pushed(3, 12);
    const r = await get(server.port, "/metrics");
    expect(r.status).toBe(200);
    expect(r.type).toMatch(/^text\/plain/);
    const lines = r.text.split("\n");
    expect(lines).toContain("shoal_raft_term 7");
    expect(lines).toContain("shoal_raft_commit_index 42");
    expect(lines).toContain("shoal_raft_apply_index 41");
    expect(lines).toContain('shoal_store_objects{type="nodes"} 5000');
    expect(lines).toContain('shoal_dispatcher_nodes{state="down"} 10');
    expect(lines).toContain("shoal_dispatcher_sessions 4990");
    expect(r.text).toMatch(/^shoal_dispatcher_heartbeats_total [1-9]/m);
    expect(r.text).toMatch(/^shoal_dispatcher_push_seconds_count [1-9]/m);
    expect(r.text).toMatch(/^process_resident_memory_bytes [1-9]/m);
    expect(r.text).toMatch(/^nodejs_eventloop_lag_p99_seconds /m);
    // Open descriptors are still counted (off the event loop); no metric lists every handle or resource at
    // each scrape (a leader holds one per node).
    expect(r.text).toMatch(/^process_open_fds [1-9]/m);
    expect(r.text).not.toMatch(/^nodejs_active_(handles|resources)/m);
    // A source that changed is read anew at the next scrape.
    sources.dispatcher = () => ({ sessions: 12 });
    expect((await get(server.port, "/metrics")).text.split("\n")).toContain("shoal_dispatcher_sessions 12");
    expect((await get(server.port, "/")).status).toBe(404);
    expect((await get(server.port, "/metrics", "POST")).status).toBe(404);
  });
});
