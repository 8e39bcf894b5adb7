// The managers' Raft streams survive a peer that answers late: a host whose CPU is busy (a loaded machine,
// a one-CPU guest running several daemons) may not read its sockets for a couple of seconds. With the
// transport's 1 s keepalive such a pause fails the stream and drops what was queued on it (heartbeats,
// read-index answers: the cluster then looks leaderless); with the keepalive the managers use, the stream
// stays up and every message arrives, in order, once the peer reads again.

import { afterEach, beforeAll, describe, expect, it } from "vitest";
import { createRootCA, RootCA, type RootCAMaterial } from "../../src/ca/rootca.js";
import { clientCredentials } from "../../src/ca/tls-client.js";
import { RAFT_KEEPALIVE_MS } from "../../src/manager/manager.js";
import { GrpcTransport } from "../../src/raft/transport.js";
import { type Message, MessageType, type NodeId, newMessage } from "../../src/raft/types.js";
import { issue, type Material, managerNodeId, startRelay, startSink } from "./raft-fixtures.js";

const PAUSE_MS = 2500;

let rootM: RootCAMaterial;
const creds = new Map<NodeId, Material>();
let cleanups: (() => unknown)[] = [];

beforeAll(async () => {
  rootM = await createRootCA();
  const ca = await RootCA.fromPem(rootM.certPem, rootM.keyPem);
  for (const id of [1, 2]) {
    creds.set(id, await issue(ca, managerNodeId(id), "manager"));
  }
});

afterEach(async () => {
  for (const c of cleanups.reverse()) await c();
  cleanups = [];
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Heartbeats to a peer that stops reading for PAUSE_MS and then catches up; what the sender saw. */
async function busyPeer(keepalive?: number): Promise<{ failures: number; unreachable: number; delivered: number[] }> {
  const sink = await startSink(2, rootM.certPem, creds.get(2)!, cleanups);
  const relay = await startRelay(sink.port, cleanups);
  let unreachable = 0;
  const t = new GrpcTransport({
    selfId: 1,
    resolve: (id) => (id === 2 ? `127.0.0.1:${relay.port}` : undefined),
    credentials: () => clientCredentials(rootM.certPem, creds.get(1)!.certPem, creds.get(1)!.keyPem),
    onUnreachable: () => unreachable++,
    ...(keepalive !== undefined ? { keepaliveTimeMs: keepalive, keepaliveTimeoutMs: keepalive } : {}),
  });
  cleanups.push(() => t.close());
  let i = 0;
  const hb = (): Message => newMessage({ type: MessageType.Heartbeat, from: 1, to: 2, term: 1, index: ++i });
  const beat = setInterval(() => t.send([hb()]), 100);
  cleanups.push(() => clearInterval(beat));
  // Up and delivering, long enough for keepalive pings to be under way.
  for (let n = 0; n < 100 && sink.delivered.length < 10; n++) await sleep(50);
  await sleep(1200);
  relay.pause();
  await sleep(PAUSE_MS);
  relay.resume();
  await sleep(1500);
  clearInterval(beat);
  await sleep(500);
  return { failures: t.peerStats(2)?.failures ?? 0, unreachable, delivered: sink.delivered.map((m) => m.index) };
}

describe("Raft streams between managers and a busy peer", () => {
  it("the transport's 1 s keepalive fails the stream of a peer that reads nothing for 2.5 s", async () => {
    const r = await busyPeer();
    expect(r.unreachable).toBeGreaterThan(0);
  }, 30_000);

  it(`the managers' keepalive (${RAFT_KEEPALIVE_MS} ms) keeps it: no failure, every heartbeat delivered in order`, async () => {
    const r = await busyPeer(RAFT_KEEPALIVE_MS);
    expect(r.failures).toBe(0);
    expect(r.unreachable).toBe(0);
    expect(r.delivered.length).toBeGreaterThan(40);
    expect(r.delivered).toEqual(Array.from({ length: r.delivered.length }, (_, k) => k + 1));
  }, 30_000);
});
