// A real grpc-js server on 127.0.0.1 with shoal's TLS helpers, answering with the caller's role.

import { connect, type Socket } from "node:net";
import * as tls from "node:tls";
import * as grpc from "@grpc/grpc-js";
import { afterEach, beforeAll, describe, expect, test } from "vitest";
import { generateNodeKeyAndCSR, type NodeRole, signNodeCSR } from "../../src/ca/certs.js";
import { createRootCA, RootCA, type RootCAMaterial } from "../../src/ca/rootca.js";
import {
  CLIENT_CHANNEL_OPTIONS,
  channelTarget,
  listenTLS,
  peerRole,
  reloadableServerCredentials,
  serverCredentials,
  type TLSListener,
  ticketKeysOf,
} from "../../src/ca/tls.js";
import {
  clientCredentials,
  insecureClientCredentials,
  joinCredentials,
  nodeCredentials,
} from "../../src/ca/tls-client.js";

const CLUSTER = "clusterid0000000000000001";

interface NodeMaterial {
  certPem: string;
  keyPem: string;
}

async function issue(ca: RootCA, nodeId: string, role: NodeRole): Promise<NodeMaterial> {
  const { keyPem, csrPem } = await generateNodeKeyAndCSR(nodeId);
  return { keyPem, certPem: await signNodeCSR(ca, csrPem, { nodeId, role, clusterId: CLUSTER }) };
}

const identity = (b: Buffer): Buffer => b;
const WhoAmIService: grpc.ServiceDefinition = {
  WhoAmI: {
    path: "/shoal.test.Who/WhoAmI",
    requestStream: false,
    responseStream: false,
    requestSerialize: identity,
    requestDeserialize: identity,
    responseSerialize: identity,
    responseDeserialize: identity,
    originalName: "whoAmI",
  },
};

function whoAmIImpl(): grpc.UntypedServiceImplementation {
  const handler: grpc.handleUnaryCall<Buffer, Buffer> = (call, callback) => {
    const who = peerRole(call);
    callback(null, Buffer.from(JSON.stringify(who)));
  };
  return { WhoAmI: handler };
}

const WhoClient = grpc.makeGenericClientConstructor(WhoAmIService, "Who");

/** Calls WhoAmI; resolves with the parsed answer (a PeerIdentity or null) or rejects with the gRPC error. */
function whoAmI(port: number, creds: grpc.ChannelCredentials): Promise<unknown> {
  // As the agent and the Raft transport connect: through grpc-js's IP resolver.
  const client = new WhoClient(channelTarget(`127.0.0.1:${port}`), creds, CLIENT_CHANNEL_OPTIONS);
  return new Promise<unknown>((resolve, reject) => {
    client.makeUnaryRequest<Buffer, Buffer>(
      "/shoal.test.Who/WhoAmI",
      identity,
      identity,
      Buffer.alloc(0),
      { deadline: Date.now() + 5000 },
      (err, res) => {
        client.close();
        if (err) reject(err);
        else resolve(JSON.parse((res ?? Buffer.from("null")).toString()));
      },
    );
  });
}

let rootM: RootCAMaterial;
let otherRootM: RootCAMaterial;
let serverNode: NodeMaterial;
let managerNode: NodeMaterial;
let workerNode: NodeMaterial;
let foreignNode: NodeMaterial;
let workerAsServer: NodeMaterial;

beforeAll(async () => {
  rootM = await createRootCA();
  otherRootM = await createRootCA();
  const ca = await RootCA.fromPem(rootM.certPem, rootM.keyPem);
  const other = await RootCA.fromPem(otherRootM.certPem, otherRootM.keyPem);
  serverNode = await issue(ca, "server0000000000000000001", "manager");
  managerNode = await issue(ca, "manager000000000000000001", "manager");
  workerNode = await issue(ca, "worker0000000000000000001", "worker");
  workerAsServer = await issue(ca, "worker0000000000000000002", "worker");
  foreignNode = await issue(other, "foreign000000000000000001", "manager");
});

let servers: grpc.Server[] = [];
let listeners: TLSListener[] = [];

afterEach(async () => {
  await Promise.all(listeners.map((l) => l.close()));
  for (const s of servers) s.forceShutdown();
  servers = [];
  listeners = [];
});

function newServer(): grpc.Server {
  const server = new grpc.Server();
  server.addService(WhoAmIService, whoAmIImpl());
  servers.push(server);
  return server;
}

async function startBound(node: NodeMaterial = serverNode): Promise<number> {
  const server = newServer();
  return new Promise<number>((resolve, reject) => {
    server.bindAsync("127.0.0.1:0", serverCredentials(rootM.certPem, node.certPem, node.keyPem), (err, port) =>
      err ? reject(err) : resolve(port),
    );
  });
}

async function startListener(node: NodeMaterial = serverNode): Promise<number> {
  const l = await listenTLS(newServer(), { host: "127.0.0.1", port: 0, rootPem: rootM.certPem, ...node });
  listeners.push(l);
  return l.port;
}

for (const [name, start] of [
  ["listenTLS", startListener],
  ["serverCredentials + bindAsync", startBound],
] as const) {
  describe(name, () => {
    test("a client with a manager certificate is seen as manager", async () => {
      const port = await start();
      const who = await whoAmI(port, clientCredentials(rootM.certPem, managerNode.certPem, managerNode.keyPem));
      expect(who).toEqual({ nodeId: "manager000000000000000001", role: "manager", clusterId: CLUSTER });
    });

    test("a client with a worker certificate is seen as worker", async () => {
      const port = await start();
      const who = await whoAmI(port, clientCredentials(rootM.certPem, workerNode.certPem, workerNode.keyPem));
      expect(who).toEqual({ nodeId: "worker0000000000000000001", role: "worker", clusterId: CLUSTER });
    });

    test("a client without a certificate connects without verifying the server and is anonymous", async () => {
      const port = await start();
      expect(await whoAmI(port, insecureClientCredentials())).toBeNull();
    });

    test("a client without a certificate that verifies the server is anonymous", async () => {
      const port = await start();
      expect(await whoAmI(port, clientCredentials(rootM.certPem))).toBeNull();
    });

    test("a client that trusts another root refuses the server", async () => {
      const port = await start();
      await expect(whoAmI(port, clientCredentials(otherRootM.certPem))).rejects.toMatchObject({
        code: grpc.status.UNAVAILABLE,
        details: expect.stringContaining("self-signed certificate in certificate chain"),
      });
    });

    test("a client refuses a server whose certificate is a worker certificate", async () => {
      const port = await start(workerAsServer);
      await expect(whoAmI(port, clientCredentials(rootM.certPem))).rejects.toMatchObject({
        code: grpc.status.UNAVAILABLE,
        details: expect.stringContaining("the server is not a swarm manager"),
      });
    });
  });
}

describe("a client with a certificate from another CA", () => {
  test("is refused by listenTLS before any RPC", async () => {
    const port = await startListener();
    await expect(
      whoAmI(port, clientCredentials(rootM.certPem, foreignNode.certPem, foreignNode.keyPem)),
    ).rejects.toMatchObject({ code: grpc.status.UNAVAILABLE });
  });

  test("is anonymous with serverCredentials + bindAsync (Node cannot refuse it from TLS options alone)", async () => {
    const port = await startBound();
    expect(await whoAmI(port, clientCredentials(rootM.certPem, foreignNode.certPem, foreignNode.keyPem))).toBeNull();
  });
});

describe("joinCredentials (the root and the certificate request of a join on one connection)", () => {
  test("connects to any server; trust(root) then checks the certificate that connection presented", async () => {
    const good = joinCredentials();
    expect(await whoAmI(await startListener(), good.credentials)).toBeNull();
    expect(() => good.trust(rootM.certPem)).not.toThrow();

    const worker = joinCredentials();
    expect(await whoAmI(await startListener(workerAsServer), worker.credentials)).toBeNull();
    expect(() => worker.trust(rootM.certPem)).toThrow("the server is not a swarm manager");

    const foreign = joinCredentials();
    expect(await whoAmI(await startListener(foreignNode), foreign.credentials)).toBeNull();
    expect(() => foreign.trust(rootM.certPem)).toThrow("not issued by this swarm's root CA");
  });

  test("once the root is trusted, a new connection must be to a manager of that root", async () => {
    const jc = joinCredentials();
    jc.trust(rootM.certPem);
    await expect(whoAmI(await startListener(foreignNode), jc.credentials)).rejects.toMatchObject({
      code: grpc.status.UNAVAILABLE,
      details: expect.stringContaining("not issued by this swarm's root CA"),
    });
    expect(await whoAmI(await startListener(), jc.credentials)).toBeNull();
  });
});

test("listenTLS.update swaps the server certificate for new connections", async () => {
  const l = await listenTLS(newServer(), { host: "127.0.0.1", port: 0, rootPem: rootM.certPem, ...workerAsServer });
  listeners.push(l);
  await expect(whoAmI(l.port, clientCredentials(rootM.certPem))).rejects.toMatchObject({
    code: grpc.status.UNAVAILABLE,
  });
  l.update({ rootPem: rootM.certPem, ...serverNode });
  expect(await whoAmI(l.port, clientCredentials(rootM.certPem))).toBeNull();
});

test("reloadableServerCredentials.update swaps the certificate of a bound server", async () => {
  const server = newServer();
  const creds = reloadableServerCredentials({ rootPem: rootM.certPem, ...workerAsServer });
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", creds.credentials, (err, p) => (err ? reject(err) : resolve(p))),
  );
  await expect(whoAmI(port, clientCredentials(rootM.certPem))).rejects.toMatchObject({
    details: expect.stringContaining("the server is not a swarm manager"),
  });
  creds.update({ rootPem: rootM.certPem, ...serverNode });
  expect(await whoAmI(port, clientCredentials(rootM.certPem))).toBeNull();
});

test("TLS material that does not fit together is refused up front", async () => {
  expect(() => serverCredentials(rootM.certPem, serverNode.certPem, workerNode.keyPem)).toThrow();
  await expect(
    listenTLS(newServer(), {
      host: "127.0.0.1",
      port: 0,
      rootPem: rootM.certPem,
      certPem: serverNode.certPem,
      keyPem: workerNode.keyPem,
    }),
  ).rejects.toThrow();
});

test("channelTarget: an IP address goes to grpc-js's IP resolver, a DNS name to its DNS resolver", () => {
  expect(channelTarget("127.0.0.1:2377")).toBe("ipv4:127.0.0.1:2377");
  expect(channelTarget("[::1]:2377")).toBe("ipv6:[::1]:2377");
  expect(channelTarget("manager-1.example:2377")).toBe("manager-1.example:2377");
});

test("nodeCredentials: one credentials object for a node's TLS material, a new one once it is renewed", () => {
  const m = { rootPem: rootM.certPem, certPem: managerNode.certPem, keyPem: managerNode.keyPem };
  expect(nodeCredentials(m)).toBe(nodeCredentials(m));
  expect(nodeCredentials({ ...m })).not.toBe(nodeCredentials(m));
});

describe("TLS session resumption across managers (tls.ts, 'Session resumption')", () => {
  /** A listener like a manager's: keys from the root CA key, each handshake counted by kind. */
  async function manager(keys: Buffer, seen: boolean[]): Promise<number> {
    const l = await listenTLS(newServer(), {
      host: "127.0.0.1",
      port: 0,
      rootPem: rootM.certPem,
      ...serverNode,
      ticketKeys: keys,
      onHandshake: (resumed) => seen.push(resumed),
    });
    listeners.push(l);
    return l.port;
  }

  test("a node resumes at another manager of the swarm the session it had with one, as the same node", async () => {
    const keys = ticketKeysOf(rootM.keyPem, CLUSTER);
    const [onA, onB] = [[] as boolean[], [] as boolean[]];
    const [a, b] = [await manager(keys, onA), await manager(keys, onB)];
    const creds = clientCredentials(rootM.certPem, workerNode.certPem, workerNode.keyPem);
    const worker = { nodeId: "worker0000000000000000001", role: "worker", clusterId: CLUSTER };
    expect(await whoAmI(a, creds)).toEqual(worker);
    expect(await whoAmI(b, creds)).toEqual(worker);
    expect(await whoAmI(a, creds)).toEqual(worker);
    expect([onA, onB]).toEqual([[false, true], [true]]);
    // Another node's credentials have no session of their own yet: a full handshake, seen as that node.
    const other = clientCredentials(rootM.certPem, managerNode.certPem, managerNode.keyPem);
    expect(await whoAmI(b, other)).toMatchObject({ nodeId: "manager000000000000000001", role: "manager" });
    expect(onB).toEqual([true, false]);
  });

  test("a resumed connection hands its session to OpenSSL once (Node's tls.connect would twice, each decoding it)", async () => {
    const seen: boolean[] = [];
    const port = await manager(ticketKeysOf(rootM.keyPem, CLUSTER), seen);
    const creds = clientCredentials(rootM.certPem, workerNode.certPem, workerNode.keyPem);
    await whoAmI(port, creds);
    // Every TLS socket's native handle shares one prototype: count what reaches it.
    const probe = new tls.TLSSocket(null as unknown as Socket, {});
    const native = Object.getPrototypeOf((probe as unknown as { _handle: object })._handle) as {
      setSession(this: unknown, session: Buffer): void;
    };
    probe.destroy();
    const setSession = native.setSession;
    let decoded = 0;
    native.setSession = function (this: unknown, session: Buffer) {
      decoded++;
      setSession.call(this, session);
    };
    try {
      await whoAmI(port, creds);
    } finally {
      native.setSession = setSession;
    }
    expect(seen).toEqual([false, true]);
    expect(decoded).toBe(1);
  });

  test("a change of the trusted roots (a root rotation started, replaced or ended) makes other keys: no resumption across it", async () => {
    const [onA, onB] = [[] as boolean[], [] as boolean[]];
    const before = ticketKeysOf(rootM.keyPem, CLUSTER, rootM.certPem);
    const during = ticketKeysOf(rootM.keyPem, CLUSTER, rootM.certPem + otherRootM.certPem);
    expect(ticketKeysOf(rootM.keyPem, CLUSTER, rootM.certPem).equals(before)).toBe(true);
    expect(during.equals(before)).toBe(false);
    const [a, b] = [await manager(before, onA), await manager(during, onB)];
    const creds = clientCredentials(rootM.certPem, workerNode.certPem, workerNode.keyPem);
    await whoAmI(a, creds);
    await whoAmI(b, creds);
    expect([onA, onB]).toEqual([[false], [false]]);
  });

  test("a manager under other keys (another root, another swarm) makes a full handshake, checked as always", async () => {
    const [onA, onB, onC] = [[] as boolean[], [] as boolean[], [] as boolean[]];
    const a = await manager(ticketKeysOf(rootM.keyPem, CLUSTER), onA);
    const b = await manager(ticketKeysOf(otherRootM.keyPem, CLUSTER), onB);
    const creds = clientCredentials(rootM.certPem, workerNode.certPem, workerNode.keyPem);
    await whoAmI(a, creds);
    expect(await whoAmI(b, creds)).toMatchObject({ nodeId: "worker0000000000000000001" });
    expect(onB).toEqual([false]);
    // A server without the keys (not a manager: no root CA key to derive them from) cannot resume the
    // node's session, and on a full handshake it has to present a manager certificate of this root: a
    // worker's is refused.
    const l = await listenTLS(newServer(), {
      host: "127.0.0.1",
      port: 0,
      rootPem: rootM.certPem,
      ...workerAsServer,
      onHandshake: (r) => onC.push(r),
    });
    listeners.push(l);
    await expect(whoAmI(l.port, creds)).rejects.toMatchObject({
      details: expect.stringContaining("the server is not a swarm manager"),
    });
  });

  test("setTicketKeys: tickets made under the old keys are refused, new ones resume", async () => {
    const seen: boolean[] = [];
    const l = await listenTLS(newServer(), {
      host: "127.0.0.1",
      port: 0,
      rootPem: rootM.certPem,
      ...serverNode,
      onHandshake: (r) => seen.push(r),
    });
    listeners.push(l);
    const creds = clientCredentials(rootM.certPem, workerNode.certPem, workerNode.keyPem);
    await whoAmI(l.port, creds);
    l.setTicketKeys(ticketKeysOf(rootM.keyPem, CLUSTER));
    await whoAmI(l.port, creds);
    await whoAmI(l.port, creds);
    expect(seen).toEqual([false, false, true]);
  });
});

describe("listenTLS's handshake gate (handshake-gate.ts)", () => {
  /** Opens `n` TCP connections to the listener that never say anything. */
  function silentClients(port: number, n: number): Promise<Socket[]> {
    return Promise.all(
      Array.from(
        { length: n },
        () =>
          new Promise<Socket>((resolve, reject) => {
            const s = connect(port, "127.0.0.1", () => resolve(s));
            s.on("error", () => {
              // The listener cuts it: seen through 'close'.
            });
            s.once("error", reject);
          }),
      ),
    );
  }

  test("connections that say nothing hold nothing: a node handshakes past them, one per turn", async () => {
    const l = await listenTLS(newServer(), {
      host: "127.0.0.1",
      port: 0,
      rootPem: rootM.certPem,
      ...serverNode,
      handshakesPerTurn: 1,
    });
    listeners.push(l);
    const silent = await silentClients(l.port, 64);
    try {
      await until(() => l.handshakes().silent === 64);
      const creds = clientCredentials(rootM.certPem, workerNode.certPem, workerNode.keyPem);
      // Several at once: one per turn, all in the end.
      const answers = await Promise.all([0, 1, 2, 3].map(() => whoAmI(l.port, creds)));
      for (const a of answers) expect(a).toMatchObject({ nodeId: "worker0000000000000000001" });
      expect(l.handshakes()).toEqual({ waiting: 0, silent: 64 });
    } finally {
      for (const s of silent) s.destroy();
    }
  });

  test("a connection that says nothing is cut at the handshake timeout", async () => {
    const l = await listenTLS(newServer(), {
      host: "127.0.0.1",
      port: 0,
      rootPem: rootM.certPem,
      ...serverNode,
      handshakeTimeoutMs: 200,
    });
    listeners.push(l);
    const [s] = await silentClients(l.port, 1);
    const closed = new Promise<void>((resolve) => s!.once("close", () => resolve()));
    await closed;
    await until(() => l.handshakes().silent === 0);
  });
});

async function until(f: () => boolean): Promise<void> {
  for (let i = 0; i < 500 && !f(); i++) await new Promise((r) => setTimeout(r, 10));
  expect(f()).toBe(true);
}
