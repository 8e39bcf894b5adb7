// What the Raft driver and transport tests share: polling for a condition, and, for the gRPC transport,
// certificates of one test cluster, a bare Raft service that records what it is delivered, and a TCP relay
// that can hold or drop the bytes between two managers.

import * as net from "node:net";
import * as grpc from "@grpc/grpc-js";
import { generateNodeKeyAndCSR, type NodeRole, signNodeCSR } from "../../src/ca/certs.js";
import type { RootCA } from "../../src/ca/rootca.js";
import { listenTLS } from "../../src/ca/tls.js";
import { RAFT_SERVER_OPTIONS, RaftServiceDefinition, raftServiceImplementation } from "../../src/raft/transport.js";
import type { Message, NodeId } from "../../src/raft/types.js";

export const CLUSTER = "clusterid0000000000000001";

/** Teardown steps a test registers; the file's afterEach runs them. */
export type Cleanups = (() => unknown)[];

/** Polls `f` every `pollMs` until it returns something truthy; fails naming `what` after `ms`. */
export async function waitFor<T>(what: string, f: () => T | undefined | false, ms = 5000, pollMs = 10): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = f();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, pollMs));
  }
}

export interface Material {
  certPem: string;
  keyPem: string;
}

/** The node id the tests give the manager with raft id `id`. */
export const managerNodeId = (id: NodeId): string => `manager${String(id).padStart(18, "0")}`;

/** A key and a certificate signed by `ca` for `nodeId` in `role`. */
export async function issue(ca: RootCA, nodeId: string, role: NodeRole, clusterId = CLUSTER): Promise<Material> {
  const { keyPem, csrPem } = await generateNodeKeyAndCSR(nodeId);
  return { keyPem, certPem: await signNodeCSR(ca, csrPem, { nodeId, role, clusterId }) };
}

/** A bare Raft service (no node) behind mutual TLS that records what it is delivered. */
export async function startSink(
  selfId: NodeId,
  rootPem: string,
  own: Material,
  cleanups: Cleanups,
): Promise<{ port: number; delivered: Message[] }> {
  const delivered: Message[] = [];
  const server = new grpc.Server(RAFT_SERVER_OPTIONS);
  server.addService(
    RaftServiceDefinition,
    raftServiceImplementation({ deliver: (m) => delivered.push(m), clusterId: () => CLUSTER, selfId: () => selfId }),
  );
  const listener = await listenTLS(server, { host: "127.0.0.1", port: 0, rootPem, ...own });
  cleanups.push(async () => {
    server.forceShutdown();
    await listener.close();
  });
  return { port: listener.port, delivered };
}

export interface Relay {
  port: number;
  /** Hold every byte in both directions (nothing lost), as a busy peer does. */
  pause(): void;
  /** Deliver what was held, in order, and relay again. */
  resume(): void;
  /** Drop every byte in both directions while the connections stay open, as when a host dies. */
  freeze(): void;
  /** Relay again; the connections that lost bytes are broken, so they are cut (new ones are relayed). */
  thaw(): void;
  /** The connections accepted so far. */
  connections(): number;
}

/** A TCP relay on 127.0.0.1 to `targetPort`. */
export async function startRelay(targetPort: number, cleanups: Cleanups): Promise<Relay> {
  let paused = false;
  let frozen = false;
  const held: (() => void)[] = [];
  const sockets = new Set<net.Socket>();
  let accepted = 0;
  const srv = net.createServer((down) => {
    accepted++;
    const up = net.connect(targetPort, "127.0.0.1");
    const close = (): void => {
      down.destroy();
      up.destroy();
      sockets.delete(down);
      sockets.delete(up);
    };
    for (const s of [down, up]) {
      sockets.add(s);
      s.on("error", close);
      s.on("close", close);
    }
    const relay = (to: net.Socket) => (d: Buffer) => {
      if (frozen) return;
      if (paused) held.push(() => to.write(d));
      else to.write(d);
    };
    down.on("data", relay(up));
    up.on("data", relay(down));
  });
  await new Promise<void>((r) => srv.listen(0, "127.0.0.1", r));
  cleanups.push(
    () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy();
        srv.close(() => r());
      }),
  );
  return {
    port: (srv.address() as net.AddressInfo).port,
    pause: () => {
      paused = true;
    },
    resume: () => {
      paused = false;
      for (const f of held.splice(0)) f();
    },
    freeze: () => {
      frozen = true;
    },
    thaw: () => {
      frozen = false;
      for (const s of sockets) s.destroy();
    },
    connections: () => accepted,
  };
}
