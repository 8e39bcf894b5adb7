// The cluster listener's accept queue: after a leader change every node connects to the new leader within
// seconds, and a connection that finds the kernel's queue full is dropped and tried again only after TCP's
// retransmission backoff (1, 2, 4, 8 s...). The queue must hold far more than Node's default 511.

import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import * as grpc from "@grpc/grpc-js";
import { afterEach, expect, test } from "vitest";
import { generateNodeKeyAndCSR, signNodeCSR } from "../../src/ca/certs.js";
import { createRootCA, RootCA } from "../../src/ca/rootca.js";
import { LISTEN_BACKLOG, listenTLS, type TLSListener } from "../../src/ca/tls.js";

let listener: TLSListener | undefined;

afterEach(async () => {
  await listener?.close();
  listener = undefined;
});

/** The accept queue's size of the TCP socket listening on 127.0.0.1:port (ss shows it as Send-Q). */
function acceptQueueSize(port: number): number {
  const out = execFileSync("ss", ["-Hltn", `sport = :${port}`], { encoding: "utf8" });
  const line = out.split("\n").find((l) => l.includes(`127.0.0.1:${port}`));
  if (!line) throw new Error(`no listening socket on port ${port}: ${out}`);
  return Number(line.trim().split(/\s+/)[2]);
}

test("the cluster listener's accept queue holds a swarm's reconnecting nodes, not Node's default 511", async () => {
  const m = await createRootCA();
  const ca = await RootCA.fromPem(m.certPem, m.keyPem);
  const { keyPem, csrPem } = await generateNodeKeyAndCSR("manager00000000000000001");
  const certPem = await signNodeCSR(ca, csrPem, {
    nodeId: "manager00000000000000001",
    role: "manager",
    clusterId: "clusterid0000000000000001",
  });
  listener = await listenTLS(new grpc.Server(), { host: "127.0.0.1", port: 0, rootPem: m.certPem, certPem, keyPem });
  const somaxconn = Number(readFileSync("/proc/sys/net/core/somaxconn", "utf8"));
  // The kernel caps the queue at somaxconn (4096 by default since Linux 5.4).
  expect(acceptQueueSize(listener.port)).toBe(Math.min(LISTEN_BACKLOG, somaxconn));
  expect(Math.min(LISTEN_BACKLOG, somaxconn)).toBeGreaterThan(511);
}, 30_000);
