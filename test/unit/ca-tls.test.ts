// A real grpc-js server on 127.0.0.1 with shoal's TLS helpers, answering with the caller's role.

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
