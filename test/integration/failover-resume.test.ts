// Issue 14: after a leader's death the nodes resume, at the new leader, the TLS sessions they had with the
// old one (src/ca/tls.ts, "Session resumption": the managers derive their session tickets' keys from the
// root CA key). Three managers and a worker on loopback; the leader is SIGKILLed; the new leader's /metrics
// counts the handshakes it completed, full and resumed, and the worker's session is back on it.
//
//   flock /tmp/shoal-heavy.lock npx vitest run test/integration/failover-resume.test.ts

import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { buildOnce, Lab } from "./harness.js";
import { METRICS_PORT_OFFSET, scrape, value } from "./metrics-scrape.js";

describe("a leader's SIGKILL: the nodes resume their TLS sessions at the new leader", () => {
  let lab: Lab;
  const mport = (i: number) => lab.port(i) + METRICS_PORT_OFFSET;

  beforeAll(async () => {
    await buildOnce();
    lab = await Lab.create("resume", 4);
    for (let i = 1; i <= 4; i++) await lab.startDaemon(i, ["--metrics-addr", `${lab.ip(i)}:${mport(i)}`]);
    await lab.form(3, 1, "docker");
  }, 180_000);

  afterAll(async () => {
    await lab?.close();
  });

  it("the new leader serves every node's session, the worker's among them, through resumed handshakes", async () => {
    // Every node's session on node1 (the leader) first: 4 sessions, each made with a full handshake.
    await lab.waitFor(
      async () =>
        (value((await scrape(lab.ip(1), mport(1))).text, "shoal_dispatcher_sessions") ?? 0) >= 4 ? true : undefined,
      30_000,
      "4 sessions on node1",
    );
    await lab.kill(1, "SIGKILL");
    const leader = await lab.waitFor(
      async () => {
        for (const i of [2, 3]) {
          const text = await scrape(lab.ip(i), mport(i)).then(
            (r) => r.text,
            () => "",
          );
          // The survivors' agents and the worker's: three sessions on the new leader.
          if ((value(text, "shoal_dispatcher_sessions") ?? 0) >= 3) return i;
        }
        return undefined;
      },
      60_000,
      "the three surviving nodes' sessions on a new leader",
    );
    const { text } = await scrape(lab.ip(leader), mport(leader));
    // Each of the three nodes came to the new leader with a ticket of the old one's.
    expect(value(text, "shoal_tls_handshakes_total", 'kind="resumed"')).toBeGreaterThanOrEqual(3);
  });
});
