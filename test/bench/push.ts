// The dispatcher's own cost of a fan-out, without the network: N sessions on the real Dispatcher (real
// store, real ACL and node certificates; only the gRPC stream objects are stand-ins that count writes),
// then the time and CPU until every session concerned has been written its new state.
//
//   node dist/test/bench/push.js [--sessions 2000] [--holders 200] [--rounds 3] [--deltas]
//   (--deltas: the sessions' agents take deltas, as this tree's do; an older build ignores it)
//
//   swarm-wide   a cluster.update (heartbeat period): every session
//   network      an endpoint added to a network that --holders nodes hold: those sessions (each message
//                carries the network with all its endpoints)
// Runs against any build of the dispatcher (an older one writes message objects: they are encoded here,
// as grpc-js would).
// Prints ms and CPU µs per session written (the median of --rounds).

import { EventEmitter } from "node:events";
import type { ServerWritableStream } from "@grpc/grpc-js";
import pino from "pino";
import { DEFAULT_SWARM_SPEC } from "../../src/api/objects.js";
import { generateNodeKeyAndCSR, signNodeCSR } from "../../src/ca/certs.js";
import { createRootCA, RootCA } from "../../src/ca/rootca.js";
import { SessionMessage } from "../../src/gen/cluster.js";
import { type AclContext, withAcl } from "../../src/manager/acl.js";
import { newNodeObject } from "../../src/manager/ca-server.js";
import { Dispatcher } from "../../src/manager/dispatcher.js";
import { requestSchemas } from "../../src/manager/wire.js";
import { type Command, encodeCommand, Store } from "../../src/store/store.js";

const CLUSTER = "c0000000000000000000000001";
const at = new Date("2026-12-01T00:00:00Z");

function arg(name: string, d: number): number {
  const i = process.argv.indexOf(name);
  const v = i >= 0 ? Number(process.argv[i + 1]) : d;
  if (!Number.isInteger(v) || v < 1) {
    console.error("usage: node dist/test/bench/push.js [--sessions N] [--holders H] [--rounds R]");
    process.exit(2);
  }
  return v;
}

class FakeStream extends EventEmitter {
  writes = 0;
  bytes = 0;
  constructor(
    readonly request: { descriptionJson: string; addr: string; acceptsDeltas: boolean },
    private readonly der: Buffer,
    private readonly onWrite: () => void,
  ) {
    super();
    this.on("error", () => undefined);
  }
  getPeer(): string {
    return "127.0.0.1:40000";
  }
  getAuthContext() {
    return { sslPeerCertificate: { raw: this.der } };
  }
  /** What grpc-js does with what the dispatcher writes: a message object is encoded here (older builds). */
  write(m: SessionMessage | Uint8Array): boolean {
    this.writes++;
    this.bytes += (m instanceof Uint8Array ? m : SessionMessage.encode(m).finish()).byteLength;
    this.onWrite();
    return true;
  }
  end(): void {}
}

async function main(): Promise<void> {
  const n = arg("--sessions", 2000);
  const holders = Math.min(n, arg("--holders", 200));
  const rounds = arg("--rounds", 3);
  const store = new Store();
  let index = 0;
  const apply = (c: Command) => {
    const out = store.apply(encodeCommand(c, at), ++index);
    if (!out.ok) throw new Error(out.message);
  };
  const m = await createRootCA();
  const root = await RootCA.fromPem(m.certPem, m.keyPem);
  apply({
    op: "cluster.create",
    info: {
      ID: CLUSTER.slice(0, 25),
      Version: { Index: 0 },
      CreatedAt: at.toISOString(),
      UpdatedAt: at.toISOString(),
      Spec: DEFAULT_SWARM_SPEC,
      TLSInfo: { TrustRoot: m.certPem, CertIssuerSubject: "", CertIssuerPublicKey: "" },
      RootRotationInProgress: false,
      DefaultAddrPool: ["10.0.0.0/8"],
      SubnetSize: 24,
      DataPathPort: 4789,
    },
    secrets: { rootCACertPem: "", rootCAKeyPem: "", workerToken: "w", managerToken: "m" },
  });
  const ids: string[] = [];
  const certs: Buffer[] = [];
  process.stdout.write(`making ${n} node certificates... `);
  for (let i = 0; i < n; i++) {
    const id = `n${String(i).padStart(24, "0")}`;
    const { csrPem } = await generateNodeKeyAndCSR(id);
    const pem = await signNodeCSR(root, csrPem, { nodeId: id, role: "worker", clusterId: CLUSTER });
    ids.push(id);
    certs.push(Buffer.from(pem.replace(/-----[A-Z ]+-----|\s/g, ""), "base64"));
    apply({ op: "node.create", node: newNodeObject(id, "worker", "active", `host${i}`, "127.0.0.1"), role: "worker" });
    apply({ op: "node.status", id, state: "ready", addr: "127.0.0.1" });
  }
  console.log("done");
  const netId = "net000000000000000000000a";
  const spec = { driver: "overlay" as const, internal: false, attachable: true, ingress: false, options: {} };
  apply({ op: "network.create", id: netId, spec: { name: "web", ...spec, labels: {}, subnet: "10.128.0.0/16" } });
  let eps = 0;
  const endpoint = (nodeId: string): Command => {
    const k = String(eps++).padStart(6, "0");
    return {
      op: "endpoint.create",
      id: k.padEnd(64, "e"),
      networkId: netId,
      nodeId,
      containerId: k.padEnd(64, "c"),
      containerName: `web${k}`,
      aliases: [],
      standalone: true,
    };
  };
  for (let i = 0; i < holders; i++) apply(endpoint(ids[i]!));

  const dispatcher = new Dispatcher({
    store,
    log: pino({ level: "silent" }),
    leaderAddr: () => "127.0.0.1:2377",
    leaderSilent: () => false,
    write: async (c) => {
      apply(c);
      return index;
    },
    readBarrier: async () => undefined,
  });
  const acl: AclContext = {
    clusterId: () => CLUSTER,
    isRemoved: (id) => store.isRemoved(id),
    roleOf: (id) => store.roleOf(id),
    readBarrier: async () => undefined,
  };
  const rule = (name: "session" | "heartbeat") => ({ allowed: ["worker" as const], request: requestSchemas[name] });
  const service = withAcl(
    dispatcher.service(),
    { session: rule("session"), heartbeat: rule("heartbeat"), attach: rule("session"), detach: rule("session") },
    acl,
  );
  dispatcher.becomeLeader();
  let written = 0;
  let waiter: { want: number; done: () => void } | undefined;
  const onWrite = () => {
    written++;
    if (waiter && written >= waiter.want) waiter.done();
  };
  const until = (want: number) =>
    new Promise<void>((resolve) => {
      if (written >= want) return resolve();
      waiter = { want, done: resolve };
    });
  const streams = certs.map(
    (der) =>
      new FakeStream({ descriptionJson: "", addr: "", acceptsDeltas: process.argv.includes("--deltas") }, der, onWrite),
  );
  for (const s of streams) {
    (service.session as (c: ServerWritableStream<unknown, unknown>) => void)(
      s as unknown as ServerWritableStream<unknown, unknown>,
    );
  }
  await until(n);

  const measure = async (what: string, expect: number, change: () => void) => {
    const wall: number[] = [];
    const cpu: number[] = [];
    let bytes = 0;
    for (let r = 0; r < rounds; r++) {
      const want = written + expect;
      const b0 = streams.reduce((a, s) => a + s.bytes, 0);
      const c0 = process.cpuUsage();
      const t0 = performance.now();
      change();
      await until(want);
      wall.push(performance.now() - t0);
      const c = process.cpuUsage(c0);
      cpu.push(c.user + c.system);
      bytes = streams.reduce((a, s) => a + s.bytes, 0) - b0;
      await new Promise((res) => setTimeout(res, 50));
    }
    const med = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
    console.log(
      `${what.padEnd(12)} ${String(expect).padStart(6)} sessions: ${med(wall).toFixed(1).padStart(8)} ms, ` +
        `${(med(cpu) / expect).toFixed(1).padStart(7)} µs CPU per session` +
        `, ${(bytes / expect / 1024).toFixed(1)} KiB per message`,
    );
  };
  let period = 5;
  await measure("swarm-wide", n, () => {
    const cl = store.cluster()!;
    period = period === 5 ? 6 : 5;
    const p = { Dispatcher: { HeartbeatPeriod: period * 1e9 } };
    apply({ op: "cluster.update", version: cl.info.Version.Index, spec: { ...cl.info.Spec, ...p } });
  });
  await measure("network", holders, () => {
    // One more endpoint on a node that already holds the network: every holder is written.
    apply(endpoint(ids[0]!));
  });
  dispatcher.loseLeadership();
}

await main();
